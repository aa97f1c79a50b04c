//! A payment notification as a gateway's verifier reads it, gateway-neutral: which order
//! it names and, if its signature and fields check out, what it says about the trade.
//!
//! Following hyperswitch's rule, a verified notification is used as the gateway's answer
//! and an unverified one is only a hint that makes us ask the gateway ourselves. The
//! checks that need our order (the amount, the channel) are the notify endpoint's; the
//! verifier checks what the notification alone can prove (signature, our merchant ids,
//! its age). A notification that does not even name our merchant is [`Claim::NotOurs`]:
//! the cheap check forged traffic must pass before it may cost a gateway query.

use axum::http::HeaderMap;
use thiserror::Error;

use crate::TradeState;

/// What a notification claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Signature, merchant and age check out: the gateway says this about the trade.
    Verified {
        /// The state it reports.
        state: TradeState,
    },
    /// It names our merchant but cannot be trusted (bad signature, too old, a state we
    /// do not know): at most a reason to ask the gateway.
    Unverified {
        /// Why not.
        reason: String,
    },
    /// It names another merchant, or none (signed or not): not addressed to us, so not
    /// even a reason to ask the gateway. Forms naming real order numbers cost a signed
    /// query each before this check.
    NotOurs {
        /// Which merchant id it names instead of ours.
        reason: String,
    },
}

/// A readable notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The order it names.
    pub out_trade_no: String,
    /// What it claims.
    pub claim: Claim,
    /// The notification as received (form text or JSON), for the audit row.
    pub raw: String,
}

/// A request that is not a notification at all (answered with a 4xx, nothing queried).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NoticeError {
    /// Not the body type the gateway sends.
    #[error("not a notification: {0}")]
    Malformed(String),
    /// No order number to act on.
    #[error("the notification names no order (out_trade_no)")]
    NoOrder,
    /// The gateway's signature self-test (WeChat's `WECHATPAY/SIGNTEST/`).
    #[error("a signature probe")]
    Probe,
}

/// The HTTP answer a gateway expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

/// Reads one gateway's payment notifications.
pub trait NotifyVerifier: Send + Sync {
    /// Reads a request's headers and raw body.
    fn read(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notice, NoticeError>;
    /// The reply that tells the gateway the notification was handled (sent only after the
    /// transaction committed).
    fn acknowledge(&self) -> Reply;
    /// A reply that makes the gateway send the notification again later (`status`: 4xx
    /// for a request we will never accept, 5xx for one we could not handle now).
    fn refuse(&self, status: u16) -> Reply;
}

/// Most characters of a notification's own text echoed in a reason or an error.
const MAX_ECHO: usize = 64;

/// A notification's text fit to echo in a reason or a log line: at most `MAX_ECHO` (64)
/// characters, control characters escaped ([`order_closer_core::text::shortened`]).
pub fn echo(text: &str) -> String {
    order_closer_core::text::shortened(text, MAX_ECHO)
}

/// The order number a notification names (`None` or empty: [`NoticeError::NoOrder`]). One
/// that is too long or holds control characters is never one of ours, so it is refused
/// as malformed without a database read.
pub fn order_number(named: Option<&str>) -> Result<String, NoticeError> {
    let no = named
        .filter(|v| !v.is_empty())
        .ok_or(NoticeError::NoOrder)?;
    if no.len() > order_closer_core::message::MAX_OUT_TRADE_NO || no.chars().any(char::is_control) {
        return Err(NoticeError::Malformed(
            "out_trade_no is not an order number (too long or control characters)".into(),
        ));
    }
    Ok(no.to_owned())
}
