//! `order-closer notify`: the public-facing endpoint for the gateways' payment
//! notifications (`POST /notify/{channel}`), a separate deployment of the same binary;
//! the worker stays internal. Health and metrics are served on ORDER_CLOSER_HTTP_LISTEN,
//! which should not be exposed.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use order_closer::App;
use order_closer::config::Settings;
use order_closer::worker::shutdown_on_signal;

/// Flags of `notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Where to serve POST /notify/{channel} (put it behind the TLS proxy the gateways
    /// reach).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(settings: Settings, args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    App::build(settings)
        .serve_notify(args.listen, &super::actor("notify"), shutdown.clone())
        .await?;
    shutdown.cancelled().await;
    Ok(ExitCode::SUCCESS)
}
