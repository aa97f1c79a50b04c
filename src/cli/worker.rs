//! `order-closer worker`: the long-running close-queue consumer.

use secrecy::ExposeSecret;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use order_closer::config::Settings;
use order_closer::decide::{Decider, Gateways};
use order_closer::worker::{Worker, WorkerConfig, shutdown_on_signal};
use order_closer::{db, health};

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
        settings.concurrency = c as usize;
    }
    if let Some(p) = args.prefetch {
        settings.prefetch = p;
    }
    let gateways = Gateways::from_settings(&settings, order_closer::gateway::ALL)
        .context("invalid configuration")?;
    // A database that cannot be used stops the worker here, naming the cause, instead of
    // every message being delayed for ever.
    let pool = db::ready_pool(settings.database_url.expose_secret(), settings.db_pool_size)
        .await
        .context("cannot use the database (DATABASE_URL)")?;
    let decider = Decider::configured(pool.clone(), gateways, &settings, super::actor("worker"));
    let shutdown = shutdown_on_signal();
    let worker = Worker::new(decider, WorkerConfig::from_settings(&settings));
    if let Some(addr) = settings.http_listen {
        let routes = health::router(worker.metrics(), worker.readiness(), pool);
        let bound = health::serve(addr, routes, shutdown.clone())
            .await
            .context("ORDER_CLOSER_HTTP_LISTEN")?;
        tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    }
    worker.run(shutdown).await.context("the worker stopped")?;
    Ok(ExitCode::SUCCESS)
}
