//! The gateway simulator: a real HTTP server on loopback that speaks each gateway's own
//! protocol (signed requests, signed answers, signed notifications), keeps trades in
//! memory, and lets a test or the demo act as the buyer (scan, pay, race a close).
//!
//! Shared by every gateway: the trade store (`state/`), the fault plan and one-shots
//! (`faults.rs`), the buyer ([`Buyer`], one builder for every buyer behaviour, in process
//! or over HTTP: `buy.rs`), the buyer and admin API under `/sim/` (`buyer_api.rs`, and
//! [`BuyerClient`] to call it), the notifier's scheduling and its faults (`notifier.rs`).
//! Each gateway is a folder (`alipay/`, `wechat/`) implementing [`SimGateway`]: its wire protocol,
//! keys, notifications, bill files and trade numbers; [`GATEWAYS`] lists them.
//!
//! Start it with [`start_local`] (fresh keys for every gateway: tests, the demo, the
//! benchmark) or [`start`]; [`RunningSim::client_vars`] (also `GET /sim/client-vars`)
//! gives the variables that configure a client to reach and trust it.
//!
//! Faults can be injected at run time, for every request ([`FaultPlan`]: latency and a
//! rate per [`FaultKind`], set with `PUT /sim/faults`, [`BuyerClient::set_faults`] or
//! [`SimState::set_faults`]) or for one trade's next answers (`POST
//! /sim/trades/{no}/fail-next`, [`BuyerClient::fail_next`]); each gateway shows a fault as
//! that gateway would. Counts of injected faults are in [`SimStats::faults_injected`].
//!
//! A trade can be created with a `time_expire` ([`Buyer::expiring_at`]): from
//! that moment it can no longer be scanned and a trade still unpaid is closed, as the
//! gateway's expiry job would leave it. A paid trade can be refunded in parts
//! ([`BuyerClient::refund`]); fully refunded, it reads closed. Each gateway serves its
//! daily bill of the trades at it; unlike the real gateways, which serve only past days,
//! the simulator also serves today's bill so far. A test can make the next download serve
//! arbitrary bytes ([`BuyerClient::override_bill`]).

pub mod alipay;
pub mod buy;
pub mod buyer;
mod buyer_api;
mod faults;
pub mod gateway;
mod key_dir;
pub mod notifier;
pub(crate) mod shared;
pub mod state;
pub mod wechat;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use order_closer_gateway::rsa::KeyError;

pub use buy::{Buyer, Pays};
pub use buyer::{BuyerClient, BuyerError};
pub use gateway::{Forge, Outgoing, SimGateway, SimMethod, SimPlugin, TradeRules};
pub use notifier::{NotifyPlan, NotifyStats, SimNotifier};
pub use state::{
    BuyerOpError, DEFAULT_BILL_URL_TTL, DEFAULT_TIMEOUT_HOLD, FailNext, FaultDecision, FaultKind,
    FaultPlan, FaultPlanError, MAX_FAULT_MS, RefundNumberScope, SimRefund, SimState, SimStats,
    SimTradeStatus, SimTradeView, UnknownFaultKind,
};

/// Every gateway the simulator speaks; a new gateway's simulator joins this list.
pub const GATEWAYS: &[SimPlugin] = &[alipay::PLUGIN, wechat::PLUGIN];

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
    /// The gateways to speak (the first is the buyer API's default).
    pub gateways: Vec<Arc<dyn SimGateway>>,
    /// Payment notifications (none unless it names a URL); changeable at run time.
    pub notify: NotifyPlan,
}

impl SimConfig {
    /// One gateway, on a free loopback port.
    pub fn one(gateway: impl SimGateway + 'static) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateways: vec![Arc::new(gateway)],
            notify: NotifyPlan::default(),
        }
    }

    /// Every gateway of [`GATEWAYS`] with fresh keys, on a free loopback port.
    pub fn local() -> Result<Self, SimError> {
        Ok(Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateways: GATEWAYS
                .iter()
                .map(|plugin| (plugin.generate)())
                .collect::<Result<_, _>>()?,
            notify: NotifyPlan::default(),
        })
    }
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
    /// A key could not be generated.
    #[error("simulator key: {0}")]
    Key(#[from] KeyError),
    /// A key file could not be read or written (the message names it, never its content).
    #[error("simulator keys: {0}")]
    Keys(String),
    /// The HTTP server failed.
    #[error("simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The notification plan is invalid.
    #[error("notify plan: {0}")]
    Notify(String),
    /// No gateway to speak, or one twice.
    #[error("simulator gateways: {0}")]
    Gateways(String),
    /// The server task panicked or was cancelled.
    #[error("simulator server task ended abnormally: {0}")]
    Task(String),
}

/// A simulator running in the background of the current tokio runtime.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    gateways: Vec<Arc<dyn SimGateway>>,
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

    /// `http://<addr>`, the base URL for the gateway clients and the buyer client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The variables that configure a client to reach and trust every gateway here.
    pub fn client_vars(&self) -> Vec<(String, String)> {
        client_vars(&self.gateways, &self.base_url())
    }

    /// The channels spoken, the buyer API's default first.
    pub fn channels(&self) -> Vec<&'static str> {
        self.gateways.iter().map(|g| g.channel()).collect()
    }

    /// One gateway's simulator.
    pub fn gateway(&self, channel: &str) -> Option<&Arc<dyn SimGateway>> {
        self.gateways.iter().find(|g| g.channel() == channel)
    }

    /// The notification `trade`'s gateway would send about it now, made as `forge` says
    /// (a test's forgeries and replays). None for a trade with nothing to announce.
    pub fn notification(
        &self,
        trade: &SimTradeView,
        notify_id: &str,
        forge: Forge,
    ) -> Option<Outgoing> {
        self.gateway(&trade.channel)?
            .notification(trade, notify_id, forge)
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

fn client_vars(gateways: &[Arc<dyn SimGateway>], base_url: &str) -> Vec<(String, String)> {
    gateways
        .iter()
        .flat_map(|g| g.client_vars(base_url))
        .collect()
}

/// Starts a simulator of every gateway, with fresh keys, on a free loopback port (the
/// demo, the benchmark, the tests): [`RunningSim::client_vars`] configures a client.
pub async fn start_local() -> Result<RunningSim, SimError> {
    let config = tokio::task::spawn_blocking(SimConfig::local)
        .await
        .map_err(|e| SimError::Task(e.to_string()))??;
    start(config).await
}

/// Binds the listen address and starts serving in a background task.
pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
    let gateways = config.gateways;
    if gateways.is_empty() {
        return Err(SimError::Gateways("none to speak".into()));
    }
    let mut channels: Vec<&str> = gateways.iter().map(|g| g.channel()).collect();
    channels.sort_unstable();
    if let Some(twice) = channels.windows(2).find(|w| w[0] == w[1]) {
        return Err(SimError::Gateways(format!("{} given twice", twice[0])));
    }
    config.notify.validate().map_err(SimError::Notify)?;
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
    let state = SimState::for_gateways(
        gateways
            .iter()
            .map(|g| Arc::clone(g) as Arc<dyn TradeRules>)
            .collect(),
    );
    let holds = CancellationToken::new();
    let notifier = SimNotifier::new(config.notify, gateways.clone(), holds.clone());
    Arc::clone(&notifier).run(state.subscribe_notices());
    let shared = Arc::new(shared::Shared {
        state: state.clone(),
        addr,
        shutdown: holds.clone(),
    });
    let mut app = buyer_api::routes().with_state(buyer_api::Desk {
        shared: Arc::clone(&shared),
        notifier: Arc::clone(&notifier),
        client_vars: Arc::new(client_vars(&gateways, &format!("http://{addr}"))),
    });
    for gateway in &gateways {
        app = app.merge(Arc::clone(gateway).routes(Arc::clone(&shared)));
    }
    let app = app.layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES));
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        // Either an explicit signal or the handle being dropped stops the server.
        let _ = shutdown_rx.await;
        stopper.cancel();
    });
    let task = tokio::spawn(async move {
        order_closer_http_server::serve(
            listener,
            app,
            order_closer_http_server::Limits::SIMULATOR,
            stop,
        )
        .await;
        Ok(())
    });
    tracing::info!(%addr, channels = ?channels, "gateway simulator listening");
    Ok(RunningSim {
        addr,
        gateways,
        state,
        notifier,
        holds,
        shutdown_tx: Some(shutdown_tx),
        task: Some(task),
    })
}

/// Largest request body the simulator accepts (the bill override has its own, larger).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
