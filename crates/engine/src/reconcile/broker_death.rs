//! What RabbitMQ says about a message it dead-lettered itself, and the headers a message
//! `reconcile parked` keeps is parked again with.
//!
//! A close message the close queue hands out more often than its delivery limit reaches
//! the parking queue from the broker, not from us: it has none of our `oc-*` headers, only
//! the broker's account of its deaths. Every version writes `x-death`, an array with the
//! most recent death first (`reason`, `queue`, `count`, `time`, `exchange`,
//! `routing-keys`), and `x-first-death-reason` / `-queue` / `-exchange`; 4.x adds
//! `x-last-death-*`. The first death of a parked close message is its tier's `expired`,
//! so the reason it was parked is the most recent one.
//!
//! A re-parked copy carries our headers with that account written into them, and no
//! `x-*` header at all: those are the broker's, and 3.x reads an `x-death` a client
//! published as its own record (the count, and cycle detection: a copy carrying
//! "dead-lettered from the close queue" that went through a tier to the close queue again
//! would be dropped as a cycle), where 4.x ignores it.

use std::fmt;

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable};

use order_closer_core::broker::publisher::{HEADER_LAST_ERROR, HEADER_PARKED_AT, HEADER_REASON};
use order_closer_core::message::Cut;

/// Why the broker dead-lettered a message (the `reason` of an `x-death` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathReason {
    /// Its TTL ran out (a delay tier's, on its way to the close queue).
    Expired,
    /// A consumer rejected or nacked it without requeue.
    Rejected,
    /// The queue was over its length limit.
    MaxLen,
    /// A quorum queue handed it out more often than its delivery limit.
    DeliveryLimit,
    /// A reason this code does not know (a later broker's).
    Other(String),
}

impl DeathReason {
    fn parse(text: &str) -> Self {
        match text {
            "expired" => Self::Expired,
            "rejected" => Self::Rejected,
            "maxlen" => Self::MaxLen,
            "delivery_limit" => Self::DeliveryLimit,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The broker's word for it, which the parked view shows as the park reason.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Expired => "expired",
            Self::Rejected => "rejected",
            Self::MaxLen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
            Self::Other(text) => text,
        }
    }
}

/// The most recent time the broker dead-lettered a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDeath {
    /// Why.
    pub reason: DeathReason,
    /// The queue it left.
    pub queue: Option<String>,
    /// How many times it left that queue for that reason.
    pub count: Option<i64>,
    /// When (to the second).
    pub time: Option<DateTime<Utc>>,
}

impl BrokerDeath {
    /// The most recent death the headers record, if the broker dead-lettered the message.
    pub fn of(headers: &FieldTable) -> Option<Self> {
        let latest = match get(headers, "x-death") {
            Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().first().and_then(|d| {
                let AMQPValue::FieldTable(death) = d else {
                    return None;
                };
                Some(Self {
                    reason: DeathReason::parse(&text(death, "reason")?),
                    queue: text(death, "queue"),
                    count: integer(death, "count"),
                    time: match get(death, "time") {
                        Some(AMQPValue::Timestamp(seconds)) => i64::try_from(*seconds)
                            .ok()
                            .and_then(|s| DateTime::from_timestamp(s, 0)),
                        _ => None,
                    },
                })
            }),
            _ => None,
        };
        latest.or_else(|| {
            ["x-last-death", "x-first-death"]
                .into_iter()
                .find_map(|prefix| {
                    Some(Self {
                        reason: DeathReason::parse(&text(headers, &format!("{prefix}-reason"))?),
                        queue: text(headers, &format!("{prefix}-queue")),
                        count: None,
                        time: None,
                    })
                })
        })
    }
}

impl fmt::Display for BrokerDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dead-lettered by RabbitMQ ({})", self.reason.as_str())?;
        if let Some(queue) = &self.queue {
            write!(f, " from {queue}")?;
        }
        if let Some(count) = self.count {
            write!(f, ", {count} time{}", if count == 1 { "" } else { "s" })?;
        }
        if self.reason == DeathReason::DeliveryLimit {
            write!(
                f,
                ": handed out more often than its delivery limit (workers that lost their \
                 connection or handed it back each time)"
            )?;
        }
        Ok(())
    }
}

/// The headers of a re-parked copy: the message's own without the broker's `x-*` ones,
/// plus, when we never parked it (no `oc-park-reason`), the broker's account of why it is
/// here; and, when `cut` says its body was cut on the way, that.
pub fn reparked_headers(headers: &FieldTable, cut: Option<Cut>) -> FieldTable {
    let mut kept: FieldTable = headers
        .inner()
        .iter()
        .filter(|(key, _)| !key.as_str().starts_with("x-"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    let long = |s: String| AMQPValue::LongString(s.into());
    if !headers.contains_key(HEADER_REASON)
        && let Some(death) = BrokerDeath::of(headers)
    {
        kept.insert(HEADER_REASON.into(), long(death.reason.as_str().to_owned()));
        kept.insert(HEADER_LAST_ERROR.into(), long(death.to_string()));
        if let Some(time) = death
            .time
            .filter(|_| !headers.contains_key(HEADER_PARKED_AT))
        {
            kept.insert(HEADER_PARKED_AT.into(), long(time.to_rfc3339()));
        }
    }
    if let Some(cut) = cut {
        let before = match get(&kept, HEADER_LAST_ERROR) {
            Some(AMQPValue::LongString(s)) => format!("{s}; "),
            _ => String::new(),
        };
        kept.insert(
            HEADER_LAST_ERROR.into(),
            long(format!("{before}re-parked cut: {cut}")),
        );
    }
    kept
}

fn get<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table.inner().get(key)
}

fn text(table: &FieldTable, key: &str) -> Option<String> {
    match get(table, key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn integer(table: &FieldTable, key: &str) -> Option<i64> {
    match get(table, key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "broker_death_tests.rs"]
mod tests;
