//! `order-closer worker`: the long-running close-queue consumer.

use std::process::ExitCode;

use clap::Args;
use order_closer::App;
use order_closer::config::Settings;
use order_closer::worker::shutdown_on_signal;

/// Flags of `worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Orders decided at once (overrides ORDER_CLOSER_CONCURRENCY).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: Option<u32>,
    /// Broker prefetch window (overrides ORDER_CLOSER_PREFETCH).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: Option<u16>,
}

/// Runs the worker until SIGTERM or SIGINT.
pub async fn run(mut settings: Settings, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(c) = args.concurrency {
        settings.worker.concurrency = c as usize;
    }
    if let Some(p) = args.prefetch {
        settings.worker.prefetch = p;
    }
    App::build(settings)
        .run_worker(&super::actor("worker"), shutdown_on_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
