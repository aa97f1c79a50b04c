//! The decisions section of the settings: what every decider (the worker's, the notify
//! endpoint's, `reconcile`'s) does with a gateway that fails for now, and with a payment
//! taken after the order was closed.

use super::{ConfigError, Vars};
use crate::retry::RetryPolicy;

/// How orders are decided, whichever process decides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionSettings {
    /// Back-off steps for transient failures (`ORDER_CLOSER_RETRY_STEPS`).
    pub retry: RetryPolicy,
    /// A payment after close: held for an operator or refunded
    /// (`ORDER_CLOSER_PAID_AFTER_CLOSE`: `hold`, the default, or `refund`).
    pub paid_after_close: PaidAfterClose,
}

impl DecisionSettings {
    /// Reads `ORDER_CLOSER_RETRY_STEPS` and `ORDER_CLOSER_PAID_AFTER_CLOSE`; an invalid
    /// value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let retry = vars
            .retry_steps("ORDER_CLOSER_RETRY_STEPS")?
            .unwrap_or_default();
        let paid_after_close = match vars.get("ORDER_CLOSER_PAID_AFTER_CLOSE") {
            None => PaidAfterClose::default(),
            Some(text) => text
                .parse()
                .map_err(|e| ConfigError::invalid("ORDER_CLOSER_PAID_AFTER_CLOSE", &text, e))?,
        };
        Ok(Self {
            retry,
            paid_after_close,
        })
    }
}

/// What to do with a payment the gateway took after we closed the order
/// (`ORDER_CLOSER_PAID_AFTER_CLOSE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PaidAfterClose {
    /// Record the anomaly and announce it; an operator decides
    /// (`order-closer reconcile anomalies --refund <order>`). The default: money moves
    /// back only when someone chose so.
    #[default]
    Hold,
    /// Record and announce it, and give the money back at once: what the gateway says
    /// was paid, asked when the refund is sent, idempotent by a refund number derived
    /// from the gateway's trade number.
    Refund,
}

impl PaidAfterClose {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Refund => "refund",
        }
    }
}

impl std::str::FromStr for PaidAfterClose {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "hold" => Ok(Self::Hold),
            "refund" => Ok(Self::Refund),
            _ => Err("expected hold or refund".into()),
        }
    }
}
