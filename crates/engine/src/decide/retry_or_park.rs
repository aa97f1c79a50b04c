//! Retry or park: after a failure, whether an order's message goes round the delay tiers
//! again or waits in the parking queue for an operator. A close and a refund follow the
//! same rule, so it is one pure function ([`retry_or_park`]), with no I/O: the caller
//! records and publishes what it says.
//!
//! | the failure | the retry steps | next |
//! |---|---|---|
//! | transient | a step is left for this attempt | retry after that step, as the next attempt |
//! | transient | every step used (the last one included) | park, `attempts_exhausted` |
//! | permanent (retrying cannot help) | any | park, with the failure's own code |

use std::time::Duration;

use order_closer_core::retry::{RetryPolicy, RetryStep};
use order_closer_gateway::{FaultClass, GatewayError};

/// The park code of a transient failure that outlasted every retry step.
pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";

/// A failure of one attempt: of the gateway, or of the decision table's reading of what
/// the gateway said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Transient (worth another try) or permanent (an operator must look).
    pub class: FaultClass,
    /// Short code for the audit row and metrics.
    pub code: String,
    /// Explanation.
    pub detail: String,
}

impl Failure {
    /// A failure that may heal: the gateway busy or slow, the buyer paying right now.
    pub fn transient(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Retryable,
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// A failure that never heals by itself.
    pub fn permanent(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Permanent,
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl From<&GatewayError> for Failure {
    fn from(error: &GatewayError) -> Self {
        Self {
            class: error.class,
            code: error.code.clone(),
            detail: error.message.clone(),
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Try again after `delay`, as attempt number `attempt`.
    Retry {
        /// How long to wait (the retry step of the failed attempt).
        delay: Duration,
        /// The next attempt number.
        attempt: u32,
        /// Failure code.
        code: String,
        /// Explanation.
        detail: String,
    },
    /// Give up: park the message for an operator.
    Park {
        /// Reason code: the failure's own, or [`ATTEMPTS_EXHAUSTED`].
        code: String,
        /// Explanation.
        detail: String,
    },
}

/// What follows `failure` on attempt `attempt` (0 for the first try, counting failed
/// attempts before it), under the retry steps `retry`.
pub fn retry_or_park(failure: Failure, attempt: u32, retry: &RetryPolicy) -> NextStep {
    let Failure {
        class,
        code,
        detail,
    } = failure;
    match (class, retry.after_failure(attempt)) {
        (FaultClass::Retryable, RetryStep::Retry { delay, attempt }) => NextStep::Retry {
            delay,
            attempt,
            code,
            detail,
        },
        (FaultClass::Retryable, RetryStep::Exhausted) => NextStep::Park {
            code: ATTEMPTS_EXHAUSTED.to_owned(),
            detail: format!(
                "gave up after {} attempts; last error {code}: {detail}",
                attempt.saturating_add(1)
            ),
        },
        (FaultClass::Permanent, _) => NextStep::Park { code, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn retry(delay: u64, attempt: u32) -> NextStep {
        NextStep::Retry {
            delay: secs(delay),
            attempt,
            code: "timeout".into(),
            detail: "no answer".into(),
        }
    }

    fn park(code: &str, detail: &str) -> NextStep {
        NextStep::Park {
            code: code.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn retry_or_park_rows() {
        let three = RetryPolicy::new(vec![secs(3), secs(30), secs(60)]).unwrap();
        let one = RetryPolicy::new(vec![secs(5)]).unwrap();
        let busy = || Failure::transient("timeout", "no answer");
        let refused = || Failure::permanent("ACQ.TRADE_STATUS_ERROR", "not paid");
        let exhausted = |n: &str| {
            park(
                ATTEMPTS_EXHAUSTED,
                &format!("gave up after {n} attempts; last error timeout: no answer"),
            )
        };
        let rows: [(&str, Failure, u32, &RetryPolicy, NextStep); 12] = [
            // Transient: walk the steps, one per failed attempt.
            ("first failure", busy(), 0, &three, retry(3, 1)),
            ("second failure", busy(), 1, &three, retry(30, 2)),
            ("the last step", busy(), 2, &three, retry(60, 3)),
            // The last step used: park, saying how many attempts were made.
            ("past the last step", busy(), 3, &three, exhausted("4")),
            ("far past it", busy(), 40, &three, exhausted("41")),
            ("a single step, first failure", busy(), 0, &one, retry(5, 1)),
            ("a single step, used", busy(), 1, &one, exhausted("2")),
            // An attempt count at its limit neither overflows nor retries.
            (
                "attempt count at u32::MAX",
                busy(),
                u32::MAX,
                &three,
                exhausted("4294967295"),
            ),
            (
                "attempt count one short of it",
                busy(),
                u32::MAX - 1,
                &one,
                exhausted("4294967295"),
            ),
            // Permanent: park at once with its own code, whatever steps are left.
            (
                "permanent, first try",
                refused(),
                0,
                &three,
                park("ACQ.TRADE_STATUS_ERROR", "not paid"),
            ),
            (
                "permanent, steps left",
                refused(),
                2,
                &three,
                park("ACQ.TRADE_STATUS_ERROR", "not paid"),
            ),
            (
                "permanent, past the steps",
                refused(),
                u32::MAX,
                &one,
                park("ACQ.TRADE_STATUS_ERROR", "not paid"),
            ),
        ];
        for (name, failure, attempt, policy, expected) in rows {
            assert_eq!(retry_or_park(failure, attempt, policy), expected, "{name}");
        }
    }

    #[test]
    fn the_default_steps_retry_six_times_then_park() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (0..6)
            .map(
                |n| match retry_or_park(Failure::transient("t", "d"), n, &policy) {
                    NextStep::Retry { delay, attempt, .. } => {
                        assert_eq!(attempt, n + 1);
                        delay.as_secs()
                    }
                    park => panic!("attempt {n} parked: {park:?}"),
                },
            )
            .collect();
        assert_eq!(delays, [3, 30, 60, 120, 180, 300]);
        assert!(matches!(
            retry_or_park(Failure::transient("t", "d"), 6, &policy),
            NextStep::Park { code, .. } if code == ATTEMPTS_EXHAUSTED
        ));
    }

    #[test]
    fn a_gateway_error_keeps_its_class_code_and_message() {
        for (error, class) in [
            (
                GatewayError::retryable("timeout", "no answer"),
                FaultClass::Retryable,
            ),
            (
                GatewayError::permanent("bad_key", "refused"),
                FaultClass::Permanent,
            ),
        ] {
            let failure = Failure::from(&error);
            assert_eq!(failure.class, class);
            assert_eq!((failure.code, failure.detail), (error.code, error.message));
        }
    }
}
