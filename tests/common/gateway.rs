//! A simulator and an Alipay client trusting it, without database or broker: for tests
//! of the gateway protocol alone.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use order_closer::gateway::alipay::{AlipayClient, AlipayConfig, AppPrivateKey};
use order_closer::sim::{self, BuyerClient, RunningSim, SimConfig};

/// The app id the simulator accepts in these tests.
pub const APP_ID: &str = "2021000000000077";

/// (app key, simulator key): RSA key generation is slow, share them.
fn keys() -> &'static (Arc<AppPrivateKey>, AppPrivateKey) {
    static KEYS: OnceLock<(Arc<AppPrivateKey>, AppPrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            Arc::new(AppPrivateKey::generate().unwrap()),
            AppPrivateKey::generate().unwrap(),
        )
    })
}

/// The simulator, a buyer and a client.
pub struct GatewayEnv {
    pub sim: RunningSim,
    pub buyer: BuyerClient,
    pub client: AlipayClient,
}

/// Starts a simulator on a free port and a client whose requests time out after `timeout`.
pub async fn gateway_env(timeout: Duration) -> GatewayEnv {
    let (app, sim_key) = keys();
    let sim = sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        app_id: APP_ID.into(),
        app_public_key: app.public_key().clone(),
        sim_private_key: Some(AppPrivateKey::parse(&sim_key.to_pkcs8_pem()).unwrap()),
        notify: order_closer::sim::NotifyPlan::default(),
    })
    .await
    .unwrap();
    let mut config = AlipayConfig::new(
        sim.base_url(),
        APP_ID,
        Arc::clone(app),
        Arc::new(sim.public_key().clone()),
    );
    config.timeout = timeout;
    let client = AlipayClient::new(config).unwrap();
    let buyer = BuyerClient::new(sim.base_url()).unwrap();
    GatewayEnv { sim, buyer, client }
}
