//! WeChat Pay's payment notification: a JSON POST whose headers are signed like an answer
//! (`Wechatpay-*`, timestamp within 5 minutes) and whose `resource` is the transaction,
//! encrypted with the merchant's APIv3 key (AEAD_AES_256_GCM). Verified here: the
//! signature (a `WECHATPAY/SIGNTEST/` probe is refused with a 4xx, as WeChat expects),
//! the event type (`TRANSACTION.SUCCESS`), the currency of our orders, a state we act on;
//! a resource that does not name our `mchid` is not ours, whatever its signature
//! ([`Claim::NotOurs`]); the amount is checked against the order by the notify endpoint.
//! The body and the decrypted resource are refused when an object in them repeats a key
//! (`serde_json` would keep the last silently). The reply is judged by its status
//! alone: 2xx once handled (sent only after the commit), 4xx/5xx with
//! `{"code":"FAIL","message":...}` to have it sent again (up to 15 times over about 24
//! hours).

use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::aead::ApiV3Key;
use super::response::classify_transaction;
use super::sign::{self, SignedBy, VerifyError, WechatKeys};
use order_closer_gateway::TradeState;
use order_closer_gateway::json::{self, StrictJsonError};
use order_closer_gateway::notice::{self, Claim, Notice, NoticeError, NotifyVerifier, Reply, echo};

/// The event of a payment.
pub const PAID_EVENT: &str = "TRANSACTION.SUCCESS";

/// Verifies WeChat Pay notifications for one merchant.
pub struct WechatNotify {
    mchid: String,
    keys: Arc<WechatKeys>,
    api_v3_key: ApiV3Key,
    now: fn() -> DateTime<Utc>,
}

impl WechatNotify {
    /// A verifier for `mchid` trusting `keys`, opening resources with `api_v3_key`.
    pub fn new(mchid: impl Into<String>, keys: Arc<WechatKeys>, api_v3_key: ApiV3Key) -> Self {
        Self {
            mchid: mchid.into(),
            keys,
            api_v3_key,
            now: Utc::now,
        }
    }

    /// The same verifier with another clock (tests).
    pub fn with_clock(mut self, now: fn() -> DateTime<Utc>) -> Self {
        self.now = now;
        self
    }
}

/// The envelope's decrypted transaction, as text and parsed.
fn open(key: &ApiV3Key, envelope: &Value) -> Result<(String, Value), NoticeError> {
    let resource = envelope
        .get("resource")
        .ok_or_else(|| NoticeError::Malformed("no resource".into()))?;
    let text = |name: &str| resource.get(name).and_then(Value::as_str);
    if text("algorithm") != Some("AEAD_AES_256_GCM") {
        return Err(NoticeError::Malformed(format!(
            "resource algorithm {:?} is not AEAD_AES_256_GCM",
            echo(text("algorithm").unwrap_or(""))
        )));
    }
    let (Some(ciphertext), Some(nonce)) = (text("ciphertext"), text("nonce")) else {
        return Err(NoticeError::Malformed(
            "the resource lacks ciphertext or nonce".into(),
        ));
    };
    let plain = key
        .decrypt(ciphertext, nonce, text("associated_data").unwrap_or(""))
        .map_err(|e| NoticeError::Malformed(e.to_string()))?;
    let value = json::parse(plain.as_bytes())
        .map_err(|e| NoticeError::Malformed(format!("the decrypted resource: {e}")))?;
    Ok((plain, value))
}

impl NotifyVerifier for WechatNotify {
    fn read(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notice, NoticeError> {
        let signed = SignedBy::from_headers(headers);
        let checked = sign::verify(&self.keys, signed, body, (self.now)());
        if checked == Err(VerifyError::Probe) {
            return Err(NoticeError::Probe);
        }
        let envelope = match json::parse(body) {
            Ok(value) if value.is_object() => value,
            Ok(_) | Err(StrictJsonError::Syntax(_)) => {
                return Err(NoticeError::Malformed(
                    "the body is not a JSON object".into(),
                ));
            }
            Err(e) => return Err(NoticeError::Malformed(format!("the body: {e}"))),
        };
        let (plain, transaction) = open(&self.api_v3_key, &envelope)?;
        let out_trade_no =
            notice::order_number(transaction.get("out_trade_no").and_then(Value::as_str))?;
        let event = envelope
            .get("event_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mchid = transaction.get("mchid").and_then(Value::as_str);
        let claim = match checked {
            _ if mchid != Some(self.mchid.as_str()) => Claim::NotOurs {
                reason: format!("mchid {:?} is not ours", echo(mchid.unwrap_or(""))),
            },
            Err(e) => Claim::Unverified {
                reason: e.to_string(),
            },
            Ok(()) if event != PAID_EVENT => Claim::Unverified {
                reason: format!("event_type {:?} is not one we act on", echo(event)),
            },
            Ok(()) => match classify_transaction(&transaction, &out_trade_no, &self.mchid) {
                Ok(state @ TradeState::Paid { .. }) => Claim::Verified { state },
                Ok(other) => Claim::Unverified {
                    reason: format!("it reports {other:?}, which we do not act on"),
                },
                Err(e) => Claim::Unverified { reason: e.message },
            },
        };
        Ok(Notice {
            out_trade_no,
            claim,
            raw: plain,
        })
    }

    fn acknowledge(&self) -> Reply {
        Reply {
            status: 204,
            content_type: "application/json",
            body: String::new(),
        }
    }

    fn refuse(&self, status: u16) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: r#"{"code":"FAIL","message":"failed"}"#.into(),
        }
    }
}

#[cfg(test)]
#[path = "notify_resource_tests.rs"]
mod resource_tests;
