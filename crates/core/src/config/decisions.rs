//! The decisions section of the settings: what every decider (the worker's, the notify
//! endpoint's, `reconcile`'s) does with a gateway that fails for now (quick retries in
//! the process first, then the delay tiers' retry steps), and with a payment taken after
//! the order was closed.

use super::{ConfigError, Vars};
use crate::retry::RetryPolicy;

/// Quick retries of one failed gateway call when `ORDER_CLOSER_QUICK_RETRIES` is unset: a
/// timeout or a 502 usually clears well within the few hundred milliseconds three of them
/// take, and a fourth failure in a row says the fault lasts: the delay tiers wait better.
pub const DEFAULT_QUICK_RETRIES: u32 = 3;
/// Most quick retries of one call that can be asked for: each is bounded by the retry
/// budget and the decision's time cap anyway, so more only spends budget on one trade.
pub const MAX_QUICK_RETRIES: u32 = 10;
/// The retry budget's share when `ORDER_CLOSER_RETRY_BUDGET` is unset: quick retries may be
/// at most a tenth of the process's gateway requests (gRPC's and Finagle's defaults are of
/// this order), so that a gateway failing everything sees at most 10% more requests.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.1;

/// How orders are decided, whichever process decides them.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionSettings {
    /// Back-off steps for transient failures (`ORDER_CLOSER_RETRY_STEPS`).
    pub retry: RetryPolicy,
    /// Quick retries in the process before the delay tiers
    /// (`ORDER_CLOSER_QUICK_RETRIES`, `ORDER_CLOSER_RETRY_BUDGET`).
    pub quick_retries: QuickRetrySettings,
    /// A payment after close: held for an operator or refunded
    /// (`ORDER_CLOSER_PAID_AFTER_CLOSE`: `hold`, the default, or `refund`).
    pub paid_after_close: PaidAfterClose,
}

/// How a transient gateway error is retried in the process, before the message goes back
/// through the delay tiers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuickRetrySettings {
    /// Most quick retries of one failed gateway call (`ORDER_CLOSER_QUICK_RETRIES`, 0 to
    /// [`MAX_QUICK_RETRIES`]; 0 turns quick retries off).
    pub attempts: u32,
    /// Quick retries as a share of the process's gateway requests over the budget's
    /// window (`ORDER_CLOSER_RETRY_BUDGET`, 0.0 to 1.0; a small floor comes on top).
    pub budget: f64,
}

impl Default for QuickRetrySettings {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_QUICK_RETRIES,
            budget: DEFAULT_RETRY_BUDGET,
        }
    }
}

impl QuickRetrySettings {
    /// No quick retry: every transient error goes through the delay tiers.
    pub fn off() -> Self {
        Self {
            attempts: 0,
            ..Self::default()
        }
    }

    /// Reads `ORDER_CLOSER_QUICK_RETRIES` and `ORDER_CLOSER_RETRY_BUDGET`.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let attempts = vars.number(
            "ORDER_CLOSER_QUICK_RETRIES",
            DEFAULT_QUICK_RETRIES as usize,
            0,
            MAX_QUICK_RETRIES as usize,
        )?;
        let budget = vars.share("ORDER_CLOSER_RETRY_BUDGET", DEFAULT_RETRY_BUDGET)?;
        Ok(Self {
            // At most MAX_QUICK_RETRIES: it fits.
            attempts: u32::try_from(attempts).unwrap_or(MAX_QUICK_RETRIES),
            budget,
        })
    }
}

impl DecisionSettings {
    /// Reads `ORDER_CLOSER_RETRY_STEPS`, `ORDER_CLOSER_QUICK_RETRIES`,
    /// `ORDER_CLOSER_RETRY_BUDGET` and `ORDER_CLOSER_PAID_AFTER_CLOSE`; an invalid value is
    /// an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let retry = vars
            .retry_steps("ORDER_CLOSER_RETRY_STEPS")?
            .unwrap_or_default();
        let quick_retries = QuickRetrySettings::from_vars(vars)?;
        let paid_after_close = match vars.get("ORDER_CLOSER_PAID_AFTER_CLOSE") {
            None => PaidAfterClose::default(),
            Some(text) => text
                .parse()
                .map_err(|e| ConfigError::invalid("ORDER_CLOSER_PAID_AFTER_CLOSE", &text, e))?,
        };
        Ok(Self {
            retry,
            quick_retries,
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
