//! `order-closer notify`: the public-facing endpoint for the gateways' payment
//! notifications (`POST /notify/{channel}`), a separate deployment of the same binary;
//! the worker stays internal. Health and metrics are served on ORDER_CLOSER_HTTP_LISTEN,
//! which should not be exposed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use order_closer::config::Settings;
use order_closer::db::{self, DbPool};
use order_closer::decide::{Decider, Gateways};
use order_closer::health::{self, Readiness};
use order_closer::notify::{self, Notifier, NotifySettings};
use order_closer::worker::shutdown_on_signal;
use secrecy::ExposeSecret;

/// Flags of `notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Where to serve POST /notify/{channel} (put it behind the TLS proxy the gateways
    /// reach).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

/// The notifier for `gateways` (each channel's verifier), deciding with `pool` as `actor`.
pub fn notifier(gateways: Gateways, settings: &Settings, pool: DbPool, actor: &str) -> Notifier {
    Notifier::new(Decider::configured(pool, gateways, settings, actor))
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(settings: Settings, args: NotifyArgs) -> anyhow::Result<ExitCode> {
    // The configuration first: a half-configured gateway stops the process at once.
    let gateways = Gateways::from_settings(&settings, order_closer::gateway::ALL)
        .context("invalid configuration")?;
    let own = NotifySettings::from_vars(&settings.vars).context("invalid configuration")?;
    let pool = db::ready_pool(settings.database_url.expose_secret(), settings.db_pool_size)
        .await
        .context("cannot use the database (DATABASE_URL)")?;
    let notifier = Arc::new(
        notifier(gateways, &settings, pool.clone(), &super::actor("notify"))
            .with_hint_budget(own.hint_budget()),
    );
    let shutdown = shutdown_on_signal();
    if let Some(addr) = settings.http_listen {
        let readiness = Arc::new(Readiness::default());
        // No broker here: readiness is the database's.
        readiness.set_broker(true);
        let routes = health::router(Arc::clone(notifier.metrics()), readiness, pool);
        let bound = health::serve(addr, routes, shutdown.clone())
            .await
            .context("ORDER_CLOSER_HTTP_LISTEN")?;
        tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    }
    let bound = notify::http::serve_with(args.listen, notifier, own.limits(), shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(%bound, "serving POST /notify/{{channel}}");
    shutdown.cancelled().await;
    Ok(ExitCode::SUCCESS)
}
