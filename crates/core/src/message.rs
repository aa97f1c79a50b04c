//! The close message contract: what travels through the delay tiers to the workers.
//!
//! JSON, `content_type: application/json`, versioned by `v`. A publisher in another
//! language may publish it directly (see docs/contract.md). Unknown fields are ignored so that
//! a newer publisher can add fields without breaking older workers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The only version this worker understands.
pub const VERSION: u32 = 1;
/// Largest body accepted; anything longer is not one of ours.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest merchant order number (Alipay's limit).
pub const MAX_OUT_TRADE_NO: usize = 64;
/// Highest `attempt` a message may carry: retry schedules have at most 100 steps, so
/// anything far above is a broken publisher (and must not wrap when counted on).
pub const MAX_ATTEMPT: u32 = 1000;

/// A body that was over [`MAX_BODY`] and was cut to its first [`MAX_BODY`] bytes: no close
/// message is that long, so what it held is unreadable anyway, and keeping (or parking) it
/// whole would let whoever can publish to the close queue decide how much memory the
/// worker and `reconcile parked` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The body's length before the cut.
    pub original_bytes: usize,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body was {} bytes, over the contract's {MAX_BODY}: only its first {MAX_BODY} bytes are kept",
            self.original_bytes
        )
    }
}

/// Cuts a body over [`MAX_BODY`] down to its first [`MAX_BODY`] bytes and gives the rest of
/// its memory back at once; None (and the body untouched) when it is within the limit.
pub fn cut_oversized(body: &mut Vec<u8>) -> Option<Cut> {
    if body.len() <= MAX_BODY {
        return None;
    }
    let cut = Cut {
        original_bytes: body.len(),
    };
    // A fresh allocation of the kept part: truncating alone would keep the capacity.
    *body = body[..MAX_BODY].to_vec();
    Some(cut)
}

/// What a message asks the worker to do once it is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Decide the order at its deadline: close it, or find it paid (the default; a
    /// message without `job` is this).
    #[default]
    Close,
    /// Send the order's requested refund to its gateway (a payment after close under the
    /// `refund` policy, or an operator's request), retrying through the delay tiers.
    Refund,
}

impl Job {
    /// Whether this is the default job (then it is left out of the JSON).
    pub fn is_close(&self) -> bool {
        *self == Self::Close
    }
}

/// "Decide this order once it is due."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseMessage {
    /// Contract version, always 1.
    pub v: u32,
    /// Our order id (`orders.id`).
    pub order_id: i64,
    /// The merchant order number, as sent to the gateway.
    pub out_trade_no: String,
    /// The order's payment deadline when the message was published (the database row
    /// is the authority: an extended deadline is honoured).
    pub deadline: DateTime<Utc>,
    /// How many attempts failed transiently before this one (0 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    /// Earliest moment to act (set on retries); absent means "at the deadline".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// When a worker first tried to decide this order (set on retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<DateTime<Utc>>,
    /// What to do; absent means [`Job::Close`]. A job this worker does not know makes
    /// the message malformed (parked, never guessed at).
    #[serde(default, skip_serializing_if = "Job::is_close")]
    pub job: Job,
}

/// Why a message body is not a close message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    /// The body is empty.
    #[error("empty message body")]
    Empty,
    /// The body is larger than any close message can be.
    #[error("message body of {0} bytes exceeds the {MAX_BODY} byte limit")]
    TooLarge(usize),
    /// The body is not JSON, or JSON of the wrong shape or types.
    #[error("not a close message: {0}")]
    Malformed(String),
    /// A `v` this worker does not understand.
    #[error("unsupported message version v={0} (this worker understands v={VERSION})")]
    UnsupportedVersion(u64),
    /// Well-formed JSON with a value that cannot be right.
    #[error("invalid close message: {0}")]
    Invalid(String),
}

impl CloseMessage {
    /// The first message for an order.
    pub fn new(order_id: i64, out_trade_no: impl Into<String>, deadline: DateTime<Utc>) -> Self {
        Self {
            v: VERSION,
            order_id,
            out_trade_no: out_trade_no.into(),
            deadline,
            attempt: 0,
            not_before: None,
            first_seen: None,
            job: Job::Close,
        }
    }

    /// The message that sends an order's requested refund, due at once (`now`).
    pub fn refund(order_id: i64, out_trade_no: impl Into<String>, now: DateTime<Utc>) -> Self {
        Self {
            job: Job::Refund,
            ..Self::new(order_id, out_trade_no, now)
        }
    }

    /// When this message should be acted on: the later of the deadline and `not_before`.
    pub fn due_at(&self) -> DateTime<Utc> {
        match self.not_before {
            Some(nb) if nb > self.deadline => nb,
            _ => self.deadline,
        }
    }

    /// Encodes the message as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every field is a plain value.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Encodes the message as JSON text (an outbox row's payload).
    pub fn encode_text(&self) -> String {
        // As above: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes and validates a message body.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(MessageError::Empty);
        }
        if body.len() > MAX_BODY {
            return Err(MessageError::TooLarge(body.len()));
        }
        #[derive(Deserialize)]
        struct Version {
            v: Option<serde_json::Value>,
        }
        let version: Version =
            serde_json::from_slice(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
        match version.v {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
            Some(serde_json::Value::Number(n)) => {
                return Err(n.as_u64().map_or_else(
                    || MessageError::Invalid(format!("v={n} is not a version")),
                    MessageError::UnsupportedVersion,
                ));
            }
            Some(other) => {
                return Err(MessageError::Malformed(format!(
                    "v must be a number, got {other}"
                )));
            }
            None => return Err(MessageError::Malformed("missing field `v`".into())),
        }
        let msg: CloseMessage =
            serde_json::from_slice(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if msg.order_id <= 0 {
            return Err(MessageError::Invalid(format!(
                "order_id {} is not positive",
                msg.order_id
            )));
        }
        if msg.out_trade_no.is_empty() || msg.out_trade_no.len() > MAX_OUT_TRADE_NO {
            return Err(MessageError::Invalid(format!(
                "out_trade_no must be 1 to {MAX_OUT_TRADE_NO} bytes"
            )));
        }
        if msg.out_trade_no.chars().any(char::is_control) {
            return Err(MessageError::Invalid(
                "out_trade_no contains control characters".into(),
            ));
        }
        if msg.attempt > MAX_ATTEMPT {
            return Err(MessageError::Invalid(format!(
                "attempt {} is above {MAX_ATTEMPT}",
                msg.attempt
            )));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips() {
        let mut m = CloseMessage::new(7, "ORD-7", at("2026-11-22T10:00:00Z"));
        assert_eq!(CloseMessage::decode(&m.encode()), Ok(m.clone()));
        m.attempt = 3;
        m.not_before = Some(at("2026-11-22T10:05:00Z"));
        assert_eq!(CloseMessage::decode(&m.encode()), Ok(m.clone()));
        assert_eq!(m.due_at(), at("2026-11-22T10:05:00Z"));
        // A close message says nothing of its job; a refund message does.
        assert!(!m.encode_text().contains("job"));
        let r = CloseMessage::refund(7, "ORD-7", at("2026-11-22T10:00:00Z"));
        assert!(r.encode_text().contains(r#""job":"refund""#));
        assert_eq!(CloseMessage::decode(&r.encode()), Ok(r.clone()));
        assert_eq!(r.job, Job::Refund);
    }

    #[test]
    fn accepts_the_documented_minimal_form_and_ignores_unknown_fields() {
        let body = br#"{"v":1,"order_id":1,"out_trade_no":"A","deadline":"2026-11-22T10:00:00+08:00","extra":true}"#;
        let m = CloseMessage::decode(body).unwrap();
        assert_eq!(m.attempt, 0);
        assert_eq!(m.deadline, at("2026-11-22T02:00:00Z"));
    }

    type Case<'a> = (&'a [u8], fn(&MessageError) -> bool);

    #[test]
    fn names_what_is_wrong() {
        let cases: &[Case] = &[
            (b"", |e| *e == MessageError::Empty),
            (b"  \n", |e| *e == MessageError::Empty),
            (b"not json", |e| matches!(e, MessageError::Malformed(_))),
            (b"[1,2]", |e| matches!(e, MessageError::Malformed(_))),
            (br#"{"order_id":1}"#, |e| {
                matches!(e, MessageError::Malformed(_))
            }),
            (br#"{"v":"1"}"#, |e| matches!(e, MessageError::Malformed(_))),
            (br#"{"v":2,"order_id":1}"#, |e| {
                *e == MessageError::UnsupportedVersion(2)
            }),
            (br#"{"v":-1}"#, |e| matches!(e, MessageError::Invalid(_))),
            (
                br#"{"v":1,"order_id":"x","out_trade_no":"A","deadline":"2026-11-22T10:00:00Z"}"#,
                |e| matches!(e, MessageError::Malformed(_)),
            ),
            (
                br#"{"v":1,"order_id":1,"out_trade_no":"A","deadline":"tomorrow"}"#,
                |e| matches!(e, MessageError::Malformed(_)),
            ),
            (
                br#"{"v":1,"order_id":0,"out_trade_no":"A","deadline":"2026-11-22T10:00:00Z"}"#,
                |e| matches!(e, MessageError::Invalid(_)),
            ),
            (
                br#"{"v":1,"order_id":1,"out_trade_no":"","deadline":"2026-11-22T10:00:00Z"}"#,
                |e| matches!(e, MessageError::Invalid(_)),
            ),
            (
                br#"{"v":1,"order_id":1,"out_trade_no":"A\nforged line","deadline":"2026-11-22T10:00:00Z"}"#,
                |e| matches!(e, MessageError::Invalid(m) if m.contains("control")),
            ),
            (
                br#"{"v":1,"order_id":1,"out_trade_no":"A","deadline":"2026-11-22T10:00:00Z","attempt":4294967295}"#,
                |e| matches!(e, MessageError::Invalid(m) if m.contains("attempt")),
            ),
            (
                br#"{"v":1,"order_id":1,"out_trade_no":"A","deadline":"2026-11-22T10:00:00Z","attempt":4294967296}"#,
                |e| matches!(e, MessageError::Malformed(_)),
            ),
        ];
        for (body, check) in cases {
            let err = CloseMessage::decode(body).unwrap_err();
            assert!(
                check(&err),
                "{:?} -> {err:?}",
                String::from_utf8_lossy(body)
            );
        }
        let unknown_job = br#"{"v":1,"order_id":1,"out_trade_no":"A","deadline":"2026-11-22T10:00:00Z","job":"ship"}"#;
        assert!(matches!(
            CloseMessage::decode(unknown_job),
            Err(MessageError::Malformed(_))
        ));
        let big = vec![b' '; MAX_BODY + 1];
        let mut big_json = big.clone();
        big_json[0] = b'{';
        assert_eq!(
            CloseMessage::decode(&big_json),
            Err(MessageError::TooLarge(MAX_BODY + 1))
        );
    }
}
