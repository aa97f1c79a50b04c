//! The gateway simulator: a real HTTP server on loopback that speaks Alipay's classic
//! OpenAPI (signed requests, signed answers), keeps trades in memory, and lets a test or
//! the demo act as the buyer (scan, pay, race a close).
//!
//! Start it with [`start`] (tests, the demo) or [`serve_until`] (the `gateway-sim`
//! subcommand). The worker must be configured with the simulator's public key
//! ([`RunningSim::public_key`], also served at `GET /sim/public-key`), and the simulator
//! with the app's public key.
//!
//! Faults can be injected at run time, for the whole gateway ([`FaultPlan`]: latency and a
//! rate per [`FaultKind`], set with `PUT /sim/faults`, [`BuyerClient::set_faults`] or
//! [`SimState::set_faults`]) or for one trade's next answers (`POST
//! /sim/trades/{no}/fail-next`, [`BuyerClient::fail_next`]). Counts of injected faults are
//! in [`SimStats::faults_injected`].
//!
//! A trade can be created with Alipay's `time_expire` ([`BuyerClient::scan_with_expiry`],
//! [`SimState::scan_with_expiry`]): from that moment the QR code can no longer be scanned
//! and a trade still unpaid is `TRADE_CLOSED`, as Alipay's expiry job would leave it.
//!
//! A paid trade can be refunded in parts ([`BuyerClient::refund`]); fully refunded, it reads
//! `TRADE_CLOSED`. `alipay.data.dataservice.bill.downloadurl.query` hands out a download
//! URL (on this server, valid 30 s) for the day's trade bill in Alipay's format (see
//! [`crate::bill`]): the payments and refunds of that China-time day. Unlike Alipay, which
//! serves only past days, the simulator also serves today's bill so far. A test can make
//! the next download serve arbitrary bytes ([`BuyerClient::override_bill`]).

pub mod alipay;
pub mod buyer;
mod buyer_api;
mod faults;
mod methods;
pub mod notifier;
mod server;
mod shared;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gateway::rsa::{KeyError, RsaPrivateKey, RsaPublicKey};

pub use buyer::{BuyerClient, BuyerError};
pub use notifier::{
    NotifyPlan, NotifyStats, RESEND_SCHEDULE, SIM_SELLER_ID, SimNotifier, notification_form,
};
pub use state::{
    BILL_URL_METHOD, BuyerOpError, DEFAULT_BILL_URL_TTL, DEFAULT_TIMEOUT_HOLD, FailNext,
    FaultDecision, FaultKind, FaultPlan, FaultPlanError, MAX_FAULT_MS, REFUND_METHOD,
    SIM_BILL_ACCOUNT, SIM_METHODS, SimRefund, SimState, SimStats, SimTradeStatus, SimTradeView,
    UnknownFaultKind,
};

/// Sleeps `d` unless `stop` is cancelled first (then `false`): the simulator's latency,
/// timeout holds and notification resends all end at once when it stops.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    if d.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

/// How long [`RunningSim::shutdown`] waits for in-flight requests before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the simulator needs to start.
#[derive(Debug)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The only app id accepted.
    pub app_id: String,
    /// The app's public key: requests must be signed with its private key.
    pub app_public_key: RsaPublicKey,
    /// The simulator's own signing key ("Alipay's" key); generated when `None`.
    pub sim_private_key: Option<RsaPrivateKey>,
    /// Payment notifications (none unless it names a URL); changeable at run time.
    pub notify: NotifyPlan,
    /// The app's private key, when the simulator made the app's keys itself: handed to
    /// clients in [`RunningSim::client_vars`].
    pub app_private_key: Option<Arc<RsaPrivateKey>>,
}

/// Why the simulator could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The simulator key could not be generated.
    #[error("simulator key: {0}")]
    Key(#[from] KeyError),
    /// The HTTP server failed.
    #[error("simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The notification plan is invalid.
    #[error("notify plan: {0}")]
    Notify(String),
    /// The server task panicked or was cancelled.
    #[error("simulator server task ended abnormally: {0}")]
    Task(String),
}

/// A simulator running in the background of the current tokio runtime.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    public_key: RsaPublicKey,
    sim_key: Arc<RsaPrivateKey>,
    app_id: String,
    app_private_key: Option<Arc<RsaPrivateKey>>,
    state: SimState,
    notifier: Arc<SimNotifier>,
    /// Ends latency and `timeout` holds so that shutdown does not wait for them.
    holds: CancellationToken,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningSim {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL for the Alipay client and the buyer client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator's public key: what the worker must trust as "Alipay's public key".
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }

    /// The variables a client needs to reach and trust this simulator (its URL, the app
    /// id, its public key; the app's private key when the simulator made it).
    pub fn client_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("ALIPAY_GATEWAY_URL".to_owned(), self.base_url()),
            ("ALIPAY_APP_ID".to_owned(), self.app_id.clone()),
            (
                "ALIPAY_PUBLIC_KEY".to_owned(),
                self.public_key.to_spki_pem(),
            ),
            ("ALIPAY_SELLER_ID".to_owned(), SIM_SELLER_ID.to_owned()),
        ];
        if let Some(key) = &self.app_private_key {
            vars.push(("ALIPAY_APP_PRIVATE_KEY".to_owned(), key.to_pkcs8_pem()));
        }
        vars
    }

    /// The notification the simulator would send about `trade` at `sent_at`, signed with
    /// its key; for another app id when `app_id` is given (a test's forgeries and
    /// replays). None for a trade still waiting for payment.
    pub fn notification(
        &self,
        app_id: Option<&str>,
        trade: &SimTradeView,
        notify_id: &str,
        sent_at: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        notification_form(
            &self.sim_key,
            app_id.unwrap_or(&self.app_id),
            trade,
            notify_id,
            sent_at,
        )
    }

    /// A handle on the trades and counters.
    pub fn state(&self) -> SimState {
        self.state.clone()
    }

    /// The payment notifier (its plan and counters).
    pub fn notifier(&self) -> &Arc<SimNotifier> {
        &self.notifier
    }

    /// Stops accepting connections, lets in-flight requests finish (up to 5 s), and
    /// waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.stop().await {
            tracing::warn!(error = %e, "simulator ended abnormally");
        }
    }

    /// Serves until `shutdown` completes or the server fails, then stops gracefully.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        tokio::select! {
            () = shutdown => {}
            result = &mut task => return join_result(result),
        }
        self.task = Some(task);
        self.stop().await
    }

    async fn stop(&mut self) -> Result<(), SimError> {
        self.holds.cancel();
        if let Some(tx) = self.shutdown_tx.take() {
            // The server may already be gone; nothing to signal then.
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(result) => join_result(result),
            Err(_) => {
                task.abort();
                tracing::warn!("simulator did not stop within {SHUTDOWN_GRACE:?}; aborted");
                Ok(())
            }
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        // Dropped without `shutdown`: do not leave a server running in the background.
        self.holds.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn join_result(
    result: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), SimError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SimError::Serve(e)),
        Err(e) => Err(SimError::Task(e.to_string())),
    }
}

/// Starts a simulator on a free loopback port with fresh keys of its own and of the app
/// (the demo, the benchmark, the tests): [`RunningSim::client_vars`] configures a client.
pub async fn start_local() -> Result<RunningSim, SimError> {
    let app_key = tokio::task::spawn_blocking(RsaPrivateKey::generate)
        .await
        .map_err(|e| SimError::Task(e.to_string()))??;
    start(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        app_id: crate::gateway::alipay::config::DEFAULT_APP_ID.to_owned(),
        app_public_key: app_key.public_key().clone(),
        sim_private_key: None,
        notify: NotifyPlan::default(),
        app_private_key: Some(Arc::new(app_key)),
    })
    .await
}

/// Binds the listen address and starts serving in a background task.
pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
    let sim_key = match config.sim_private_key {
        Some(key) => key,
        None => tokio::task::spawn_blocking(RsaPrivateKey::generate)
            .await
            .map_err(|e| SimError::Task(e.to_string()))??,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.listen,
        source,
    })?;
    config.notify.validate().map_err(SimError::Notify)?;
    let sim_key = Arc::new(sim_key);
    let shared_key = Arc::clone(&sim_key);
    let public_key = sim_key.public_key().clone();
    let state = SimState::new();
    let holds = CancellationToken::new();
    let notifier = SimNotifier::new(
        config.notify,
        Arc::clone(&sim_key),
        config.app_id.clone(),
        holds.clone(),
    );
    Arc::clone(&notifier).run(state.subscribe_notices());
    let app_id = config.app_id.clone();
    let shared = Arc::new(server::Shared {
        state: state.clone(),
        addr,
        app_id: config.app_id,
        app_public_key: config.app_public_key,
        sim_key,
        shutdown: holds.clone(),
        other_key: tokio::sync::OnceCell::new(),
        notifier: Arc::clone(&notifier),
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let app = server::router(shared);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        // Either an explicit signal or the handle being dropped stops the server.
        let _ = shutdown_rx.await;
        stopper.cancel();
    });
    let task = tokio::spawn(async move {
        crate::http_server::serve(listener, app, crate::http_server::Limits::SIMULATOR, stop).await;
        Ok(())
    });
    tracing::info!(%addr, sim_key = ?public_key, "gateway simulator listening");
    Ok(RunningSim {
        addr,
        public_key,
        sim_key: Arc::clone(&shared_key),
        app_id,
        app_private_key: config.app_private_key,
        state,
        notifier,
        holds,
        shutdown_tx: Some(shutdown_tx),
        task: Some(task),
    })
}

/// Starts the simulator and serves until `shutdown` completes (for the `gateway-sim`
/// subcommand: pass a Ctrl-C future). Logs the address and the simulator's public key.
pub async fn serve_until(
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let sim = start(config).await?;
    tracing::info!(
        base_url = %sim.base_url(),
        public_key = %sim.public_key().to_spki_base64(),
        "trust this key as the Alipay public key"
    );
    sim.run_until(shutdown).await
}
