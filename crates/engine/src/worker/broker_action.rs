//! What the worker does with a delivery from the close queue, as pure code: before
//! deciding, from the message and the clock ([`before_deciding`]: park a deadline out of
//! range, forward an early hop, or decide); after, from the decision's outcome
//! ([`after_decision`]). The handler only carries out the [`BrokerAction`] and then
//! acknowledges the delivery; a follow-up it could not publish hands the delivery back to
//! the broker instead (nack and requeue), whatever the action was.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::decide::{Outcome, Unavailable};
use order_closer_core::broker::tiers::SMALLEST_TIER;
use order_closer_core::closer::MAX_TIME_TO_PAY;
use order_closer_core::message::CloseMessage;

/// How long to wait before trying again when the database is unreachable (not counted
/// as an attempt: an outage alone never parks a message).
pub const DB_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What is done with a delivery; each ends with its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAction {
    /// Acknowledge it: nothing follows.
    Ack(Finished),
    /// Publish the message, as given, to the delay tier its due moment needs (or straight
    /// back to the close queue), then acknowledge.
    Schedule {
        /// The message to publish.
        message: CloseMessage,
        /// Why it comes round again.
        why: Reschedule,
    },
    /// Publish the message to the parking queue for an operator, then acknowledge.
    Park {
        /// The message to park, as it was delivered.
        message: CloseMessage,
        /// The parking note.
        note: Parking,
    },
}

/// Why a delivery is simply acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Decided, settled before, lost to another actor, refunded (or a dry run's answer).
    Done,
    /// The message names no order we have (logged).
    OrderMissing,
}

/// Why a message is published through the delay tiers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reschedule {
    /// Not due for a while: an early hop, forwarded without touching the database.
    EarlyHop {
        /// Time left until it is due.
        remaining: Duration,
    },
    /// The order's deadline was extended: the message carries the new one.
    NotDue,
    /// A transient failure: the message carries the next attempt and when it is due.
    Retry {
        /// Failure code.
        code: String,
        /// The back-off.
        delay: Duration,
    },
    /// The database is unreachable: again after [`DB_RETRY_DELAY`], not counted as an
    /// attempt.
    DatabaseUnavailable {
        /// What failed.
        error: String,
    },
}

/// What the parking note says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parking {
    /// Why it is parked.
    pub reason: ParkReason,
    /// The last error, in words.
    pub last_error: String,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// When a worker first took the message up.
    pub first_seen: DateTime<Utc>,
}

/// Why a message is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkReason {
    /// Due further ahead than any order can be: a broken publisher (counted here: no
    /// decision counted it).
    DeadlineOutOfRange,
    /// The decision parked the order, with this code (the decider counted it).
    Decision(String),
}

impl ParkReason {
    /// The reason as the parking note writes it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::DeadlineOutOfRange => "deadline_out_of_range",
            Self::Decision(code) => code,
        }
    }
}

/// What to do with a message before any decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// Park or forward it, without touching the database.
    Act(BrokerAction),
    /// It is due (or due within the smallest tier): decide it.
    Decide(CloseMessage),
}

/// Whether a message taken up at `now` is decided now, forwarded through the tiers, or
/// parked because no order can be due that far ahead (forwarding would hide it in the
/// largest tier for ever).
pub fn before_deciding(message: CloseMessage, now: DateTime<Utc>) -> Triage {
    let remaining = (message.due_at() - now).to_std().unwrap_or_default();
    if remaining > MAX_TIME_TO_PAY {
        let note = Parking {
            reason: ParkReason::DeadlineOutOfRange,
            last_error: format!(
                "due at {}, more than {MAX_TIME_TO_PAY:?} ahead",
                message.due_at()
            ),
            attempts: message.attempt,
            first_seen: message.first_seen.unwrap_or(now),
        };
        return Triage::Act(BrokerAction::Park { message, note });
    }
    if remaining >= SMALLEST_TIER {
        return Triage::Act(BrokerAction::Schedule {
            message,
            why: Reschedule::EarlyHop { remaining },
        });
    }
    Triage::Decide(message)
}

/// What follows the decision of `message`, taken up at `started` and decided by `now`.
pub fn after_decision(
    mut message: CloseMessage,
    outcome: &Result<Outcome, Unavailable>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> BrokerAction {
    let first_seen = message.first_seen.unwrap_or(started);
    match outcome {
        Ok(
            Outcome::Decided { .. }
            | Outcome::Settled(_)
            | Outcome::LostRace(_)
            | Outcome::Refunded { .. }
            | Outcome::WouldDo(_)
            | Outcome::WouldRefund { .. },
        ) => BrokerAction::Ack(Finished::Done),
        Ok(Outcome::Missing) => BrokerAction::Ack(Finished::OrderMissing),
        Ok(Outcome::NotDue { deadline, .. }) => {
            message.deadline = *deadline;
            BrokerAction::Schedule {
                message,
                why: Reschedule::NotDue,
            }
        }
        Ok(Outcome::Retry {
            delay,
            not_before,
            attempt,
            code,
            ..
        }) => {
            message.attempt = *attempt;
            message.first_seen = Some(first_seen);
            message.not_before = Some(*not_before);
            BrokerAction::Schedule {
                message,
                why: Reschedule::Retry {
                    code: code.clone(),
                    delay: *delay,
                },
            }
        }
        // A worker never decides with `decide_parked`; were it to, parking is the safe
        // reading of "still parked".
        Ok(Outcome::Park { code, detail } | Outcome::StillParked { code, detail }) => {
            let note = Parking {
                reason: ParkReason::Decision(code.clone()),
                last_error: detail.clone(),
                attempts: message.attempt.saturating_add(1),
                first_seen,
            };
            BrokerAction::Park { message, note }
        }
        Err(unavailable) => {
            message.first_seen = Some(first_seen);
            message.not_before = Some(order_closer_core::time::later(now, DB_RETRY_DELAY));
            BrokerAction::Schedule {
                message,
                why: Reschedule::DatabaseUnavailable {
                    error: unavailable.to_string(),
                },
            }
        }
    }
}

#[cfg(test)]
#[path = "broker_action_tests.rs"]
mod tests;
