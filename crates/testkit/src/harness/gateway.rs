//! A simulator and an Alipay client trusting it, without database or broker: for tests
//! of the gateway protocol alone.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use order_closer_app::gateways::alipay::{AlipayClient, AlipayConfig};

use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_gateway::{
    CloseAnswer, Gateway, GatewayError, GatewayMethod, QueryAnswer, RefundAnswer, RefundRequest,
    TradeRef,
};
use order_closer_sim::alipay::AlipaySim;
use order_closer_sim::{self as sim, BuyerClient, RunningSim, SimConfig};
use tokio::sync::oneshot;

/// The app id the simulator accepts in these tests.
pub const APP_ID: &str = "2021000000000077";

/// (app key, simulator key): RSA key generation is slow, share them.
fn keys() -> &'static (Arc<RsaPrivateKey>, RsaPrivateKey) {
    static KEYS: OnceLock<(Arc<RsaPrivateKey>, RsaPrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            Arc::new(RsaPrivateKey::generate().unwrap()),
            RsaPrivateKey::generate().unwrap(),
        )
    })
}

/// The simulator, a buyer and a client.
pub struct GatewayEnv {
    /// The simulator.
    pub sim: RunningSim,
    /// Its buyer API.
    pub buyers: BuyerClient,
    /// A client trusting it.
    pub client: AlipayClient,
}

/// Starts a simulator on a free port and a client whose requests time out after `timeout`.
pub async fn gateway_env(timeout: Duration) -> GatewayEnv {
    let (app, sim_key) = keys();
    let sim = sim::start(SimConfig::one(AlipaySim::new(
        APP_ID,
        app.public_key().clone(),
        RsaPrivateKey::parse(&sim_key.to_pkcs8_pem()).unwrap(),
        None,
    )))
    .await
    .unwrap();
    let mut config = AlipayConfig::new(
        sim.base_url(),
        APP_ID,
        Arc::clone(app),
        Arc::new(sim_key.public_key().clone()),
    );
    config.timeout = timeout;
    let client = AlipayClient::new(config).unwrap();
    let buyers = BuyerClient::new(sim.base_url()).unwrap();
    GatewayEnv {
        sim,
        buyers,
        client,
    }
}

/// Where a [`HeldGateway`] holds a call: before it reaches the gateway, or after the
/// gateway applied it and before its answer is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAt {
    /// Before the call is sent.
    Before,
    /// After its answer came back.
    After,
}

/// One armed hold: the `nth` call (from 1) of `method` waits at `at` until released.
struct Hold {
    method: GatewayMethod,
    nth: usize,
    at: HoldAt,
    reached: Option<oneshot::Sender<()>>,
    release: Option<oneshot::Receiver<()>>,
}

/// The test's side of a hold: `reached` resolves when the call is held; sending on
/// `release` lets it go on.
pub struct HoldHandle {
    /// Fires when the held call is reached.
    pub reached: oneshot::Receiver<()>,
    /// Lets it go on.
    pub release: oneshot::Sender<()>,
}

/// A gateway that forwards every call and can hold one chosen call, so that a test puts
/// another actor (a notification, a buyer) exactly between two steps of a decision,
/// instead of hoping a race falls one way.
pub struct HeldGateway {
    inner: Arc<dyn Gateway>,
    calls: Mutex<HashMap<&'static str, usize>>,
    /// Every call: (method, out_trade_no, gateway_ref).
    log: Mutex<Vec<(&'static str, String, Option<String>)>>,
    hold: Mutex<Option<Hold>>,
}

impl HeldGateway {
    /// Holds no call until one is asked for.
    pub fn new(inner: Arc<dyn Gateway>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Default::default(),
            log: Default::default(),
            hold: Default::default(),
        })
    }

    /// Holds the `nth` call of `method` at `at`.
    pub fn hold(&self, method: GatewayMethod, nth: usize, at: HoldAt) -> HoldHandle {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.hold.lock().unwrap() = Some(Hold {
            method,
            nth,
            at,
            reached: Some(reached_tx),
            release: Some(release_rx),
        });
        HoldHandle { reached, release }
    }

    /// The hold this call meets at `at`, if any.
    fn take(
        &self,
        method: GatewayMethod,
        n: usize,
        at: HoldAt,
    ) -> Option<(oneshot::Sender<()>, oneshot::Receiver<()>)> {
        let mut hold = self.hold.lock().unwrap();
        let h = hold.as_mut()?;
        if h.method != method || h.nth != n || h.at != at {
            return None;
        }
        let taken = (h.reached.take()?, h.release.take()?);
        *hold = None;
        Some(taken)
    }

    async fn wait(&self, method: GatewayMethod, n: usize, at: HoldAt) {
        if let Some((reached, release)) = self.take(method, n, at) {
            let _ = reached.send(());
            let _ = release.await;
        }
    }

    fn count(&self, method: GatewayMethod) -> usize {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(method.as_str()).or_default();
        *n += 1;
        *n
    }

    /// Every call so far: (method, out_trade_no, gateway_ref).
    pub fn log(&self) -> Vec<(&'static str, String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }

    async fn around<T>(
        &self,
        method: GatewayMethod,
        trade: TradeRef<'_>,
        call: impl Future<Output = T>,
    ) -> T {
        self.log.lock().unwrap().push((
            method.as_str(),
            trade.out_trade_no.to_owned(),
            trade.gateway_ref.map(str::to_owned),
        ));
        let n = self.count(method);
        self.wait(method, n, HoldAt::Before).await;
        let answer = call.await;
        self.wait(method, n, HoldAt::After).await;
        answer
    }
}

#[async_trait::async_trait]
impl Gateway for HeldGateway {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        let method = GatewayMethod::Query;
        self.around(method, trade, self.inner.query(trade)).await
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        let method = GatewayMethod::Close;
        self.around(method, trade, self.inner.close(trade)).await
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        let method = GatewayMethod::Refund;
        self.around(method, request.trade, self.inner.refund(request))
            .await
    }
}
