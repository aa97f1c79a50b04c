//! [`InvalidOrder`]: why an order is refused before anything is written, as a vocabulary
//! a shop's code can match on (show "amount too large" to the buyer, alert on an unknown
//! channel), with a message that names the value at fault.

use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::money::format_minor;

/// Why an order is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidOrder {
    /// No gateway of that name is among the channels the closer accepts.
    #[error("unknown channel {channel:?} (supported: {})", .supported.join(", "))]
    UnknownChannel {
        /// The channel asked for.
        channel: String,
        /// The channels accepted.
        supported: Vec<&'static str>,
    },
    /// The merchant order number is too short, too long or has a character the gateway
    /// refuses.
    #[error(
        "out_trade_no {out_trade_no:?} must be {min} to {max} characters from \
         [A-Za-z0-9{extra_chars}] for channel {channel}"
    )]
    OutTradeNo {
        /// The number given.
        out_trade_no: String,
        /// Its channel.
        channel: &'static str,
        /// Shortest allowed.
        min: usize,
        /// Longest allowed.
        max: usize,
        /// The characters allowed besides ASCII letters and digits.
        extra_chars: &'static str,
    },
    /// The gateway does not take the currency.
    #[error("channel {channel} takes currency {}, got {currency:?}", .accepted.join(" or "))]
    Currency {
        /// The currency given.
        currency: String,
        /// Its channel.
        channel: &'static str,
        /// The currencies the channel takes.
        accepted: &'static [&'static str],
    },
    /// Zero or a negative amount.
    #[error("amount must be positive, got {0} minor units")]
    AmountNotPositive(i64),
    /// More than the gateway takes in one payment.
    #[error(
        "amount {} is above channel {channel}'s single-payment limit of {}",
        format_minor(*.amount_minor),
        format_minor(*.limit_minor)
    )]
    AmountAboveLimit {
        /// The amount given, in minor units.
        amount_minor: i64,
        /// Its channel.
        channel: &'static str,
        /// The channel's limit, in minor units.
        limit_minor: i64,
    },
    /// The number of an order created without a trade is empty, too long, or has a
    /// space or a control character (its trades' numbers are checked by their gateways'
    /// rules when they are added).
    #[error(
        "order number {out_trade_no:?} must be 1 to {max} characters, without spaces or control characters"
    )]
    OrderNumber {
        /// The number given.
        out_trade_no: String,
        /// Longest allowed.
        max: usize,
    },
    /// An order created without a trade names a currency none of the accepted channels
    /// takes (or none at all).
    #[error("currency {currency:?} is taken by none of the channels ({})", .supported.join(", "))]
    CurrencyNotTaken {
        /// The currency given.
        currency: String,
        /// The channels accepted.
        supported: Vec<&'static str>,
    },
    /// The gateway reference is empty, too long or has control characters.
    #[error("gateway_ref must be 1 to 255 printable characters, got {bytes} bytes")]
    GatewayRef {
        /// Its length in bytes.
        bytes: usize,
    },
    /// A time to pay over the longest allowed.
    #[error("time to pay {given:?} is longer than {max:?}")]
    TimeToPayTooLong {
        /// The time to pay given.
        given: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// A deadline further ahead than the longest time to pay.
    #[error("deadline {0} is more than a year away")]
    DeadlineTooFar(DateTime<Utc>),
    /// A deadline further in the past than a late create may be.
    #[error("deadline {deadline} is more than {max_age:?} in the past")]
    DeadlineTooOld {
        /// The deadline given.
        deadline: DateTime<Utc>,
        /// How far in the past a deadline may be.
        max_age: Duration,
    },
    /// More orders in one call than a batch may hold.
    #[error("{count} orders at once; at most {max}")]
    TooMany {
        /// Orders given.
        count: usize,
        /// The largest batch.
        max: usize,
    },
    /// One order of a batch is refused (the whole batch is).
    #[error("order #{index} ({out_trade_no:?}): {reason}")]
    InBatch {
        /// Its place in the batch, from 0.
        index: usize,
        /// Its merchant order number.
        out_trade_no: String,
        /// Why.
        reason: Box<InvalidOrder>,
    },
}

impl InvalidOrder {
    /// The refusal itself, through a batch's wrapping.
    pub fn reason(&self) -> &InvalidOrder {
        match self {
            Self::InBatch { reason, .. } => reason.reason(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_names_the_value_at_fault() {
        let at: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        let cases = [
            (
                InvalidOrder::UnknownChannel {
                    channel: "paypal".into(),
                    supported: vec!["alipay", "wechat"],
                },
                "unknown channel \"paypal\" (supported: alipay, wechat)",
            ),
            (
                InvalidOrder::OutTradeNo {
                    out_trade_no: "a b".into(),
                    channel: "shop",
                    min: 1,
                    max: 64,
                    extra_chars: "_-",
                },
                "out_trade_no \"a b\" must be 1 to 64 characters from [A-Za-z0-9_-] for channel shop",
            ),
            (
                InvalidOrder::Currency {
                    currency: "USD".into(),
                    channel: "shop",
                    accepted: &["CNY", "HKD"],
                },
                "channel shop takes currency CNY or HKD, got \"USD\"",
            ),
            (
                InvalidOrder::AmountNotPositive(0),
                "amount must be positive, got 0 minor units",
            ),
            (
                InvalidOrder::AmountAboveLimit {
                    amount_minor: 1001,
                    channel: "shop",
                    limit_minor: 1000,
                },
                "amount 10.01 is above channel shop's single-payment limit of 10.00",
            ),
            (
                InvalidOrder::GatewayRef { bytes: 0 },
                "gateway_ref must be 1 to 255 printable characters, got 0 bytes",
            ),
            (
                InvalidOrder::DeadlineTooFar(at),
                "deadline 2026-01-02 03:04:05 UTC is more than a year away",
            ),
            (
                InvalidOrder::TooMany { count: 5, max: 4 },
                "5 orders at once; at most 4",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        let batch = InvalidOrder::InBatch {
            index: 3,
            out_trade_no: "B-3".into(),
            reason: Box::new(InvalidOrder::AmountNotPositive(-1)),
        };
        assert_eq!(
            batch.to_string(),
            "order #3 (\"B-3\"): amount must be positive, got -1 minor units"
        );
        assert_eq!(batch.reason(), &InvalidOrder::AmountNotPositive(-1));
    }
}
