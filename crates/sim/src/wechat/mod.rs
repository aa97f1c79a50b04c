//! WeChat Pay API v3 in the simulator: its keys (the merchant's public key and
//! certificate serial to check requests, the platform key and its id to sign answers and
//! notifications, the APIv3 key to encrypt them), its wire protocol (`server.rs`;
//! requests read in `request.rs`, answered in `answers.rs`), its notifications
//! (`notify.rs`) and its bill files (`bill.rs`).
//!
//! By default the simulator is a "new merchant": it signs with the WeChat Pay public key
//! under its id `PUB_KEY_ID_...`. [`WechatSim::with_platform_serial`] makes it sign as a
//! platform certificate of that serial instead (the older mode).

mod answers;
pub mod bill;
pub mod notify;
mod request;
mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::SimError;
use super::gateway::{Forge, Outgoing, SimGateway, SimMethod, SimPlugin, TradeRules};
use super::key_dir::{self, KeyDir};
use super::shared::Shared;
use super::state::{FaultKind, RefundNumberScope, SimTradeStatus, SimTradeView};
use notify::{RESEND_SCHEDULE, envelope};
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};
use order_closer_wechat::aead::ApiV3Key;
use order_closer_wechat::config::DEFAULT_MCH_ID;
use order_closer_wechat::sign;
use order_closer_wechat::{CHANNEL, format_time};

/// The simulated merchant's API certificate serial.
pub const SIM_MERCHANT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";

/// The simulated WeChat Pay public key's id.
pub const SIM_PUBLIC_KEY_ID: &str = "PUB_KEY_ID_0119000001092026120300000000000001";

/// A merchant id that is not the simulated merchant's (forged notifications).
const OTHER_MCH_ID: &str = "1900000999";

/// The simulated app id.
const APP_ID: &str = "wxd678efh567hg6787";

/// How long a bill kept for its download lives.
const BILL_MEMORY: Duration = Duration::from_secs(600);

/// WeChat Pay as the simulator speaks it.
#[derive(Debug)]
pub struct WechatSim {
    pub(crate) mchid: String,
    /// The merchant's public key: requests must be signed with its private key.
    pub(crate) merchant_public_key: RsaPublicKey,
    /// The serial requests must name (`serial_no`).
    pub(crate) merchant_serial: String,
    /// The WeChat Pay key answers and notifications are signed with.
    pub(crate) platform_key: Arc<RsaPrivateKey>,
    /// The serial the signatures name (`Wechatpay-Serial`): the public key's id, or a
    /// platform certificate's serial.
    pub(crate) platform_serial: String,
    api_v3_key: ApiV3Key,
    api_v3_text: SecretString,
    merchant_private_key: Option<Arc<RsaPrivateKey>>,
    files: Option<KeyFiles>,
    other: OnceLock<RsaPrivateKey>,
    /// Bills made when applied for, kept for their download (its digest must match).
    pub(crate) bills: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
}

/// The key files of `--keys-dir`.
#[derive(Debug, Clone)]
struct KeyFiles {
    merchant_private: Option<PathBuf>,
    platform_public: PathBuf,
    api_v3_key: PathBuf,
}

impl WechatSim {
    /// Accepts requests of `mchid` signed with the key of `merchant_public_key` under
    /// `merchant_serial`; signs with `platform_key` as the public key `SIM_PUBLIC_KEY_ID`;
    /// encrypts notifications with `api_v3_key` (32 characters).
    pub fn new(
        mchid: impl Into<String>,
        merchant_public_key: RsaPublicKey,
        platform_key: RsaPrivateKey,
        api_v3_key: &str,
        merchant_private_key: Option<RsaPrivateKey>,
    ) -> Result<Self, SimError> {
        Ok(Self {
            mchid: mchid.into(),
            merchant_public_key,
            merchant_serial: SIM_MERCHANT_SERIAL.into(),
            platform_key: Arc::new(platform_key),
            platform_serial: SIM_PUBLIC_KEY_ID.into(),
            api_v3_key: ApiV3Key::new(api_v3_key).map_err(|e| SimError::Keys(e.to_string()))?,
            api_v3_text: SecretString::from(api_v3_key.to_owned()),
            merchant_private_key: merchant_private_key.map(Arc::new),
            files: None,
            other: OnceLock::new(),
            bills: Mutex::new(HashMap::new()),
        })
    }

    /// With fresh keys for the merchant and for WeChat Pay.
    pub fn generate() -> Result<Self, SimError> {
        let merchant = RsaPrivateKey::generate()?;
        Self::new(
            DEFAULT_MCH_ID,
            merchant.public_key().clone(),
            RsaPrivateKey::generate()?,
            &random_api_v3_key(),
            Some(merchant),
        )
    }

    /// Signs as the platform certificate `serial` instead of the public key (clients
    /// then need the certificate: `WECHAT_PLATFORM_CERTS`).
    pub fn with_platform_serial(mut self, serial: impl Into<String>) -> Self {
        self.platform_serial = serial.into();
        self
    }

    /// With the keys in `dir`: `merchant_public.pem` (with `merchant_private.pem` when
    /// the merchant's key was made here), `platform_private.pem` and `api_v3_key`; what
    /// is missing is made and written, and `platform_public.pem` is written for clients.
    pub fn from_dir(dir: &Path) -> Result<Self, SimError> {
        let keys = KeyDir::open(dir)?;
        let (merchant_public, merchant_private) =
            keys.merchant_pair("merchant_public.pem", "merchant_private.pem")?;
        let platform = keys.signing_key("platform_private.pem", "platform_public.pem")?;
        let api_v3 = keys.secret("api_v3_key", random_api_v3_key)?;
        let mut sim = Self::new(DEFAULT_MCH_ID, merchant_public, platform, &api_v3, None)
            .map_err(|e| key_dir::fail(&keys.path("api_v3_key"), &e))?;
        sim.files = Some(KeyFiles {
            merchant_private,
            platform_public: keys.path("platform_public.pem"),
            api_v3_key: keys.path("api_v3_key"),
        });
        Ok(sim)
    }

    /// The WeChat Pay public key clients verify with.
    pub fn platform_public_key(&self) -> &RsaPublicKey {
        self.platform_key.public_key()
    }

    /// The key that is not WeChat Pay's, made (once).
    pub(crate) fn other_key(&self) -> Option<&RsaPrivateKey> {
        if self.other.get().is_none() {
            let made = RsaPrivateKey::generate().ok()?;
            let _ = self.other.set(made);
        }
        self.other.get()
    }

    /// The transaction as WeChat Pay shows it (a query answer, a notification's
    /// resource), for merchant `mchid`.
    pub(crate) fn transaction(&self, trade: &SimTradeView, mchid: &str) -> Value {
        let refunded = !trade.refunds.is_empty();
        let (state, desc) = match trade.status {
            SimTradeStatus::WaitBuyerPay => ("NOTPAY", "未支付"),
            SimTradeStatus::TradeSuccess if refunded => ("REFUND", "转入退款"),
            SimTradeStatus::TradeSuccess => ("SUCCESS", "支付成功"),
            SimTradeStatus::TradeClosed if refunded => ("REFUND", "转入退款"),
            SimTradeStatus::TradeClosed => ("CLOSED", "已关闭"),
        };
        let mut t = json!({
            "appid": APP_ID,
            "mchid": mchid,
            "out_trade_no": trade.out_trade_no,
            "trade_type": "NATIVE",
            "trade_state": state,
            "trade_state_desc": desc,
            "amount": {"total": trade.amount_minor, "currency": "CNY"},
        });
        if let Some(paid_at) = trade.paid_at
            && let Some(object) = t.as_object_mut()
        {
            object.insert("transaction_id".into(), json!(trade.trade_no));
            object.insert("bank_type".into(), json!("OTHERS"));
            object.insert("success_time".into(), json!(format_time(paid_at)));
            object.insert(
                "payer".into(),
                json!({"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}),
            );
            object.insert(
                "amount".into(),
                json!({"total": trade.amount_minor, "payer_total": trade.amount_minor,
                       "currency": "CNY", "payer_currency": "CNY"}),
            );
        }
        t
    }

    /// Keeps a bill for its download; forgets those long gone.
    pub(crate) fn keep_bill(&self, token: &str, gz: Vec<u8>) {
        if let Ok(mut bills) = self.bills.lock() {
            let now = Instant::now();
            bills.retain(|_, (at, _)| now.duration_since(*at) < BILL_MEMORY);
            bills.insert(token.to_owned(), (now, gz));
        }
    }
}

/// A random 32-character APIv3 key.
fn random_api_v3_key() -> String {
    sign::nonce()
}

impl SimGateway for WechatSim {
    fn routes(self: Arc<Self>, shared: Arc<Shared>) -> Router {
        server::routes(shared, self)
    }

    fn client_vars(&self, base_url: &str) -> Vec<(String, String)> {
        let mut vars = vec![
            ("WECHAT_GATEWAY_URL".to_owned(), base_url.to_owned()),
            ("WECHAT_MCH_ID".to_owned(), self.mchid.clone()),
            ("WECHAT_MCH_SERIAL".to_owned(), self.merchant_serial.clone()),
        ];
        let public_key_mode = self.platform_serial == SIM_PUBLIC_KEY_ID;
        if public_key_mode {
            vars.push((
                "WECHAT_PUBLIC_KEY_ID".to_owned(),
                SIM_PUBLIC_KEY_ID.to_owned(),
            ));
        }
        match &self.files {
            Some(files) => {
                if public_key_mode {
                    vars.push((
                        "WECHAT_PUBLIC_KEY".to_owned(),
                        files.platform_public.display().to_string(),
                    ));
                }
                vars.push((
                    "WECHAT_API_V3_KEY_FILE".to_owned(),
                    files.api_v3_key.display().to_string(),
                ));
                if let Some(private) = &files.merchant_private {
                    vars.push((
                        "WECHAT_MCH_PRIVATE_KEY".to_owned(),
                        private.display().to_string(),
                    ));
                }
            }
            None => {
                if public_key_mode {
                    vars.push((
                        "WECHAT_PUBLIC_KEY".to_owned(),
                        self.platform_public_key().to_spki_pem(),
                    ));
                }
                vars.push((
                    "WECHAT_API_V3_KEY".to_owned(),
                    self.api_v3_text.expose_secret().to_owned(),
                ));
                if let Some(key) = &self.merchant_private_key {
                    vars.push(("WECHAT_MCH_PRIVATE_KEY".to_owned(), key.to_pkcs8_pem()));
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
        let mchid = if forge.other_merchant {
            OTHER_MCH_ID
        } else {
            &self.mchid
        };
        let fully_refunded =
            trade.status == SimTradeStatus::TradeClosed && !trade.refunds.is_empty();
        let body = match trade.status {
            SimTradeStatus::TradeSuccess => envelope(
                &self.api_v3_key,
                notify_id,
                "TRANSACTION.SUCCESS",
                "transaction",
                &self.transaction(trade, mchid),
                forge.sent_at,
            ),
            _ if fully_refunded => {
                let refund = trade.refunds.last()?;
                let resource = json!({
                    "mchid": mchid,
                    "out_trade_no": trade.out_trade_no,
                    "transaction_id": trade.trade_no,
                    "out_refund_no": refund.out_request_no.clone().unwrap_or_else(|| refund.refund_no.clone()),
                    "refund_id": refund.refund_no,
                    "refund_status": "SUCCESS",
                    "success_time": format_time(refund.refunded_at),
                    "amount": {"total": trade.amount_minor, "refund": refund.amount_minor,
                               "payer_total": trade.amount_minor, "payer_refund": refund.amount_minor},
                });
                envelope(
                    &self.api_v3_key,
                    notify_id,
                    "REFUND.SUCCESS",
                    "refund",
                    &resource,
                    forge.sent_at,
                )
            }
            _ => return None,
        }
        .ok()?;
        let headers = if forge.unsigned {
            Vec::new()
        } else {
            let key = if forge.stranger_key {
                self.other_key()?
            } else {
                self.platform_key.as_ref()
            };
            sign::signature_headers(key, &self.platform_serial, body.as_bytes(), forge.sent_at)
                .ok()?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        Some(Outgoing {
            content_type: "application/json",
            headers,
            body,
        })
    }

    fn acknowledged(&self, status: u16, _body: &[u8]) -> bool {
        (200..300).contains(&status)
    }

    fn resend_schedule(&self) -> &'static [Duration] {
        &RESEND_SCHEDULE
    }
}

impl TradeRules for WechatSim {
    fn channel(&self) -> &'static str {
        CHANNEL
    }

    /// A close answer (204) carries no body: it cannot name another order, nor be cut.
    fn can_show(&self, kind: FaultKind, method: SimMethod) -> bool {
        !(method == SimMethod::Close
            && matches!(kind, FaultKind::WrongOrder | FaultKind::TruncatedJson))
    }

    /// A WeChat-like 28-digit `transaction_id`: `4200`, the China date, a 16-digit
    /// sequence.
    fn trade_no(&self, now: DateTime<Utc>, seq: u64) -> String {
        let date: String = order_closer_core::time::format_china_time(now)
            .chars()
            .filter(char::is_ascii_digit)
            .take(8)
            .collect();
        format!("4200{date}{:016}", seq % 10_000_000_000_000_000)
    }

    /// `out_refund_no` is unique per merchant: used on one trade, it is refused on any
    /// other.
    fn refund_numbers(&self) -> RefundNumberScope {
        RefundNumberScope::Merchant
    }
}

/// WeChat Pay in the simulator's list ([`crate::GATEWAYS`]).
pub const PLUGIN: SimPlugin = SimPlugin {
    channel: CHANNEL,
    generate: || Ok(Arc::new(WechatSim::generate()?)),
    from_dir: |dir| Ok(Arc::new(WechatSim::from_dir(dir)?)),
    resend_schedule: &RESEND_SCHEDULE,
};
