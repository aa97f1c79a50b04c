//! [`App`]: the engine wired from the settings, the one way every process builds it.
//!
//! `order-closer worker`, `notify` and `reconcile`, the demo, the benchmark and the test
//! sandbox all get their gateways, deciders, notifiers, workers and closers here, so
//! what a test or a benchmark runs is what a deployment runs, and the gateway list
//! ([`crate::gateways::ALL`]) is read in this one place.

use std::net::SocketAddr;
use std::sync::Arc;

use order_closer_core::broker::publisher::Publisher;
use order_closer_core::closer::{Closer, ConnectError};
use order_closer_core::config::{ConfigError, Settings};
use order_closer_core::db::{self, DbError, DbPool};
use order_closer_engine::decide::Decider;
use order_closer_engine::decide::quick_retry::QuickRetry;
use order_closer_engine::health::{self, Readiness};
use order_closer_engine::metrics::Metrics;
use order_closer_engine::notify::{self, Notifier, NotifySettings};
use order_closer_engine::worker::{Worker, WorkerConfig};
use order_closer_gateway::quota::{Priority, QuotaPlan, QuotaSettings};
use order_closer_gateway::registry::{Gateways, RegistryError};
use secrecy::ExposeSecret;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::gateways::{ALL, CHANNELS};

/// Why a part of the product could not be built or started. Each names the variable or
/// the address at fault, never a secret.
#[derive(Debug, Error)]
pub enum AppError {
    /// A gateway is configured wrongly, or none is.
    #[error("invalid configuration: {0}")]
    Gateways(#[from] RegistryError),
    /// A variable of the component is wrong.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The database cannot be used.
    #[error("cannot use the database (DATABASE_URL): {0}")]
    Db(#[from] DbError),
    /// The broker cannot be used.
    #[error("cannot use the broker (AMQP_URL): {0}")]
    Broker(#[from] ConnectError),
    /// An address could not be listened on (`what` names its variable or flag).
    #[error("{what}: {source}")]
    Listen {
        /// The variable or flag that gave the address.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The worker stopped on a broker failure it could not recover from.
    #[error("the worker stopped: {0}")]
    Worker(#[source] order_closer_core::broker::BrokerError),
}

/// Connections of the pool the gateway quotas are booked through (apart from the
/// process's own, so that a booking never waits behind a group of decisions).
const QUOTA_POOL_SIZE: usize = 2;

/// The product assembled from its settings.
#[derive(Debug, Clone)]
pub struct App {
    settings: Settings,
    /// The quick retries every decider it builds shares: one retry budget per process.
    quick: QuickRetry,
    priority: Priority,
}

impl App {
    /// The product as `settings` configure it. Nothing is connected yet: each part is
    /// built when asked for, so a command that needs no gateway (`migrate`, `orders`)
    /// runs without one configured. Its gateway requests are deadline work
    /// ([`Priority::Deadline`]) unless [`App::with_priority`] says otherwise.
    pub fn build(settings: Settings) -> Self {
        let quick = QuickRetry::new(settings.decisions.quick_retries);
        Self {
            settings,
            quick,
            priority: Priority::Deadline,
        }
    }

    /// The same product, its gateway requests booked at `priority` on the merchant
    /// accounts' quotas: `reconcile` is bulk work, which leaves the burst to the
    /// workers' and `notify`'s deadline work.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every configured gateway (a half-configured one, or none, is an error naming the
    /// variable), each behind its merchant account's quota: shared with every process
    /// through the database unless `ORDER_CLOSER_GATEWAY_QUOTA=local`, at this process's
    /// priority.
    pub fn gateways(&self) -> Result<Gateways, AppError> {
        let gateways = Gateways::from_settings(&self.settings, ALL)?;
        Ok(gateways.with_quotas(&self.quota_plan()?))
    }

    /// How this process's gateway quotas are shared, read from `ORDER_CLOSER_GATEWAY_*`.
    /// A shared quota books through a small pool of its own, connected when first used.
    pub fn quota_plan(&self) -> Result<QuotaPlan, AppError> {
        let own = QuotaSettings::from_vars(&self.settings.vars)?;
        let pool = db::pool(self.settings.database.url.expose_secret(), QUOTA_POOL_SIZE)?;
        Ok(QuotaPlan::from_settings(own, Some(pool), self.priority))
    }

    /// A pool on the database, without checking it yet.
    pub fn pool(&self) -> Result<DbPool, DbError> {
        let database = &self.settings.database;
        db::pool(database.url.expose_secret(), database.pool_size)
    }

    /// A pool on the database, checked with one connection: a database that cannot be
    /// used stops a long-running process at start, naming the cause, instead of every
    /// message being delayed for ever.
    pub async fn ready_pool(&self) -> Result<DbPool, DbError> {
        let database = &self.settings.database;
        db::ready_pool(database.url.expose_secret(), database.pool_size).await
    }

    /// The decider every process decides with: the configured gateways, retry steps and
    /// paid-after-close policy, signing its audit rows as `actor`.
    pub fn decider(&self, pool: DbPool, actor: impl Into<String>) -> Result<Decider, AppError> {
        Ok(self.decider_over(pool, self.gateways()?, actor))
    }

    /// The notify endpoint's handler (each channel's verifier), with the configured hint
    /// budget.
    pub fn notifier(&self, pool: DbPool, actor: impl Into<String>) -> Result<Notifier, AppError> {
        let own = NotifySettings::from_vars(&self.settings.vars)?;
        Ok(notifier_over(self.decider(pool, actor)?, &own))
    }

    /// A close-queue worker as configured.
    pub fn worker(&self, pool: DbPool, actor: impl Into<String>) -> Result<Worker, AppError> {
        Ok(self.worker_over(self.decider(pool, actor)?))
    }

    /// A decider over gateways already built (a test's, with one gateway wrapped or
    /// configured otherwise), with the configured quick retries (drawing on the app's one
    /// retry budget, whichever decider makes the call), retry steps and paid-after-close
    /// policy.
    pub fn decider_over(
        &self,
        pool: DbPool,
        gateways: Gateways,
        actor: impl Into<String>,
    ) -> Decider {
        Decider::configured(pool, gateways, &self.settings.decisions, actor)
            .with_quick_retry(self.quick.clone())
    }

    /// A worker running `decider`.
    fn worker_over(&self, decider: Decider) -> Worker {
        Worker::new(decider, WorkerConfig::from_settings(&self.settings))
    }

    /// The shop's entry point, connected to the configured database and broker, checking
    /// orders against every gateway's rules.
    pub async fn closer(&self) -> Result<Closer, ConnectError> {
        Closer::connect(&self.settings, CHANNELS).await
    }

    /// The shop's entry point on `pool`, publishing with `publisher` (without one, the
    /// relay publishes what it writes).
    pub fn closer_on(&self, pool: DbPool, publisher: Option<Publisher>) -> Closer {
        Closer::new(pool, publisher, CHANNELS)
    }

    /// `order-closer worker`: the worker, its health and metrics on
    /// `ORDER_CLOSER_HTTP_LISTEN`, until `shutdown`.
    pub async fn run_worker(
        self,
        actor: &str,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        // The configuration first: a half-configured gateway stops the process at once.
        let gateways = self.gateways()?;
        let pool = self.ready_pool().await?;
        let worker = self.worker_over(self.decider_over(pool.clone(), gateways, actor));
        self.serve_health(worker.metrics(), worker.readiness(), pool, &shutdown)
            .await?;
        worker.run(shutdown).await.map_err(AppError::Worker)
    }

    /// `order-closer notify`: the gateways' payment notifications on `listen` (public,
    /// behind the TLS proxy), health and metrics on `ORDER_CLOSER_HTTP_LISTEN`
    /// (internal), until `shutdown`. Returns once both listen.
    pub async fn serve_notify(
        self,
        listen: SocketAddr,
        actor: &str,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, AppError> {
        // The configuration first: a half-configured gateway stops the process at once.
        let gateways = self.gateways()?;
        let own = NotifySettings::from_vars(&self.settings.vars)?;
        let pool = self.ready_pool().await?;
        let notifier = Arc::new(notifier_over(
            self.decider_over(pool.clone(), gateways, actor),
            &own,
        ));
        // No broker here: readiness is the database's.
        let readiness = Arc::new(Readiness::default());
        readiness.set_broker(true);
        self.serve_health(Arc::clone(notifier.metrics()), readiness, pool, &shutdown)
            .await?;
        let bound = notify::http::serve_with(listen, notifier, own.limits(), shutdown)
            .await
            .map_err(|e| AppError::Listen {
                what: "--listen",
                source: std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")),
            })?;
        tracing::info!(%bound, "serving POST /notify/{{channel}}");
        Ok(bound)
    }

    /// Health and metrics on `ORDER_CLOSER_HTTP_LISTEN` (internal), unless it is `off`.
    async fn serve_health(
        &self,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        pool: DbPool,
        shutdown: &CancellationToken,
    ) -> Result<(), AppError> {
        let Some(addr) = self.settings.http_listen else {
            return Ok(());
        };
        let routes = health::router(metrics, readiness, pool);
        let bound = health::serve(addr, routes, shutdown.clone())
            .await
            .map_err(|source| AppError::Listen {
                what: "ORDER_CLOSER_HTTP_LISTEN",
                source,
            })?;
        tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
        Ok(())
    }
}

/// The notify endpoint's handler over `decider`, with the hint budget `own` configures.
fn notifier_over(decider: Decider, own: &NotifySettings) -> Notifier {
    Notifier::new(decider).with_hint_budget(own.hint_budget())
}
