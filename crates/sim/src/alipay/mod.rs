//! Alipay in the simulator: its keys (the app's public key to check requests, the
//! simulator's key to sign answers and notifications), its wire protocol (`server.rs`;
//! requests read in `request.rs`, answered in `answers.rs`), its notifications
//! (`notify.rs`) and its bill files (`bill.rs`).

mod answers;
pub mod bill;
pub mod notify;
mod request;
mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use rand::Rng as _;

use super::SimError;
use super::gateway::{Forge, Outgoing, SimGateway, SimPlugin, TradeRules};
use super::key_dir::KeyDir;
use super::shared::Shared;
use super::state::SimTradeView;
pub use notify::{RESEND_SCHEDULE, SIM_SELLER_ID, notification_form};
use order_closer_alipay::CHANNEL;
use order_closer_alipay::config::DEFAULT_APP_ID;
use order_closer_alipay::format_china_time;
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};

/// The merchant account named in the simulator's Alipay bills (file names and the
/// `#账号：[…]` line): as on Alipay, the merchant's partner id ([`SIM_SELLER_ID`], which
/// `client.env` sets as `ALIPAY_SELLER_ID`) followed by the CNY account code `0156`.
pub const SIM_BILL_ACCOUNT: &str = "20880000000001560156";

/// An app id that is not the simulated merchant's (forged notifications).
const OTHER_APP_ID: &str = "2021999999999999";

/// Alipay as the simulator speaks it.
#[derive(Debug)]
pub struct AlipaySim {
    /// The only app id accepted.
    pub(crate) app_id: String,
    /// The app's public key: requests must be signed with its private key.
    pub(crate) app_public_key: RsaPublicKey,
    /// The simulator's signing key ("Alipay's" key).
    pub(crate) sim_key: Arc<RsaPrivateKey>,
    /// The app's private key, when the simulator made it (handed to clients).
    app_private_key: Option<Arc<RsaPrivateKey>>,
    /// Where the keys are, when they live in files (`gateway-sim --keys-dir`): clients
    /// are given the file names instead of the keys.
    files: Option<KeyFiles>,
    /// A key that is not the simulator's, for `bad_signature` answers and forged
    /// notifications; made on first use.
    other: OnceLock<RsaPrivateKey>,
}

/// The key files of `--keys-dir`.
#[derive(Debug, Clone)]
struct KeyFiles {
    app_private: Option<PathBuf>,
    sim_public: PathBuf,
}

impl AlipaySim {
    /// Accepts `app_id` requests signed with the key of `app_public_key`, signing with
    /// `sim_key`; `app_private_key` is handed to clients when given.
    pub fn new(
        app_id: impl Into<String>,
        app_public_key: RsaPublicKey,
        sim_key: RsaPrivateKey,
        app_private_key: Option<RsaPrivateKey>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            app_public_key,
            sim_key: Arc::new(sim_key),
            app_private_key: app_private_key.map(Arc::new),
            files: None,
            other: OnceLock::new(),
        }
    }

    /// With fresh keys for the app and for the simulator.
    pub fn generate() -> Result<Self, SimError> {
        let app = RsaPrivateKey::generate()?;
        Ok(Self::new(
            DEFAULT_APP_ID,
            app.public_key().clone(),
            RsaPrivateKey::generate()?,
            Some(app),
        ))
    }

    /// With the keys in `dir`: `app_public.pem` (the app's, with `app_private.pem` when
    /// the app's key was made here) and `sim_private.pem`; what is missing is made and
    /// written, and `sim_public.pem` is written for clients.
    pub fn from_dir(dir: &Path) -> Result<Self, SimError> {
        let keys = KeyDir::open(dir)?;
        let (app_public, app_private) = keys.merchant_pair("app_public.pem", "app_private.pem")?;
        let sim_key = keys.signing_key("sim_private.pem", "sim_public.pem")?;
        let mut sim = Self::new(DEFAULT_APP_ID, app_public, sim_key, None);
        sim.files = Some(KeyFiles {
            app_private,
            sim_public: keys.path("sim_public.pem"),
        });
        Ok(sim)
    }

    /// The simulator's public key: what clients trust as "Alipay's public key".
    pub fn public_key(&self) -> &RsaPublicKey {
        self.sim_key.public_key()
    }

    /// The key that is not the simulator's, made (once) on the calling thread.
    fn other_key_now(&self) -> Option<&RsaPrivateKey> {
        if self.other.get().is_none() {
            let made = RsaPrivateKey::generate().ok()?;
            let _ = self.other.set(made);
        }
        self.other.get()
    }

    /// The key that is not the simulator's, made (once) off the async threads.
    pub(crate) async fn other_key(&self) -> Option<&RsaPrivateKey> {
        if self.other.get().is_none() {
            match tokio::task::spawn_blocking(RsaPrivateKey::generate).await {
                Ok(Ok(key)) => {
                    let _ = self.other.set(key);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "simulator could not make its second key")
                }
                Err(e) => tracing::error!(error = %e, "simulator could not make its second key"),
            }
        }
        self.other.get()
    }
}

impl SimGateway for AlipaySim {
    fn routes(self: Arc<Self>, shared: Arc<Shared>) -> Router {
        server::routes(shared, self)
    }

    fn client_vars(&self, base_url: &str) -> Vec<(String, String)> {
        let mut vars = vec![
            ("ALIPAY_GATEWAY_URL".to_owned(), base_url.to_owned()),
            ("ALIPAY_APP_ID".to_owned(), self.app_id.clone()),
            ("ALIPAY_SELLER_ID".to_owned(), SIM_SELLER_ID.to_owned()),
        ];
        match &self.files {
            Some(files) => {
                vars.push((
                    "ALIPAY_PUBLIC_KEY".to_owned(),
                    files.sim_public.display().to_string(),
                ));
                if let Some(private) = &files.app_private {
                    vars.push((
                        "ALIPAY_APP_PRIVATE_KEY".to_owned(),
                        private.display().to_string(),
                    ));
                }
            }
            None => {
                vars.push((
                    "ALIPAY_PUBLIC_KEY".to_owned(),
                    self.public_key().to_spki_pem(),
                ));
                if let Some(key) = &self.app_private_key {
                    vars.push(("ALIPAY_APP_PRIVATE_KEY".to_owned(), key.to_pkcs8_pem()));
                }
            }
        }
        vars
    }

    fn notification(
        &self,
        trade: &SimTradeView,
        notify_id: &str,
        forge: Forge,
    ) -> Option<Outgoing> {
        let key = match (forge.unsigned, forge.stranger_key) {
            (true, _) => None,
            (false, true) => Some(self.other_key_now()?),
            (false, false) => Some(self.sim_key.as_ref()),
        };
        let app_id = if forge.other_merchant {
            OTHER_APP_ID
        } else {
            &self.app_id
        };
        let body = notification_form(key, app_id, trade, notify_id, forge.sent_at)?;
        Some(Outgoing {
            content_type: "application/x-www-form-urlencoded; charset=utf-8",
            headers: Vec::new(),
            body,
        })
    }

    fn acknowledged(&self, status: u16, body: &[u8]) -> bool {
        (200..300).contains(&status) && body == b"success"
    }

    fn resend_schedule(&self) -> &'static [Duration] {
        &RESEND_SCHEDULE
    }
}

impl TradeRules for AlipaySim {
    fn channel(&self) -> &'static str {
        CHANNEL
    }

    /// An Alipay-like 28-digit trade number: China date, `22001`, 4 random digits, and an
    /// 11-digit sequence.
    fn trade_no(&self, now: DateTime<Utc>, seq: u64) -> String {
        let date: String = format_china_time(now)
            .chars()
            .filter(char::is_ascii_digit)
            .take(8)
            .collect();
        let salt: u16 = rand::rng().random_range(0..10_000);
        format!("{date}22001{salt:04}{:011}", seq % 100_000_000_000)
    }
}

/// Alipay in the simulator's list ([`crate::GATEWAYS`]).
pub const PLUGIN: SimPlugin = SimPlugin {
    channel: CHANNEL,
    generate: || Ok(Arc::new(AlipaySim::generate()?)),
    from_dir: |dir| Ok(Arc::new(AlipaySim::from_dir(dir)?)),
    resend_schedule: &RESEND_SCHEDULE,
};
