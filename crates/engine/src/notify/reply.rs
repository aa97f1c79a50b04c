//! The reply to a payment notification, as one pure function of what became of it: a
//! gateway resends until it hears its "handled" reply, so which of its two replies is
//! sent (and with which status) decides whether a notification comes again. The endpoint
//! says what it found ([`Finding`]); [`answer`] gives the outcome counted and the reply
//! ([`Verdict`]), and the gateway's own rule words it ([`Verdict::worded`]: its verifier's
//! "handled" and "send it again" replies, given through the port; the engine names no
//! gateway).
//!
//! The README's table of notification replies is this function's test
//! (`reply_tests.rs` reads the table and checks every row against it).

use order_closer_gateway::notice::{NotifyVerifier, Reply};

use super::hints::Refusal;
use super::outcome::NotifyOutcome;

/// Whether a notification checked out (signature, our merchant, its age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Verified: the gateway's own word.
    Verified,
    /// Names our merchant but cannot be trusted by itself.
    Unverified,
}

/// What became of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// No gateway's notifications are taken at the channel the URL names.
    NoSuchChannel,
    /// Refused before its body was read (a head that cannot be a notification, a body
    /// over the limit or too slow), with this status.
    Unread {
        /// The HTTP status the refusal carries.
        status: u16,
    },
    /// A body over the limit.
    TooLarge,
    /// Not a notification: not the gateway's format, no order number or one no order can
    /// have, a signature probe.
    Malformed,
    /// Addressed to another merchant, or to none (signed or not).
    NotOurs,
    /// It names no order of ours.
    UnknownOrder(Trust),
    /// The database could not be used.
    DatabaseDown,
    /// A verified payment notification, applied to the order.
    Verified(Applied),
    /// Not trusted by itself: a hint, and what asking the gateway gave.
    Hint(Hint),
}

/// What applying a payment the gateway vouches for did to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// NEW -> PAID.
    Paid,
    /// PAID already (before, or by another actor meanwhile): nothing written.
    AlreadyPaid,
    /// CLOSED: recorded as a payment after close, and the policy applied.
    PaidAfterClose,
    /// Closed meanwhile, then gone when read again.
    Vanished,
    /// The decision gave an outcome it never gives for a payment.
    Unexpected,
}

/// What an untrusted notification led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// The order is PAID already: nothing left to learn, no query.
    OrderPaid,
    /// The hint-query budget refused a query.
    Refused(Refusal),
    /// No gateway serves the order's channel: no query.
    NoGateway,
    /// The gateway could not be asked.
    QueryFailed,
    /// The gateway says the trade is not paid: nothing to apply.
    NothingToApply,
    /// The gateway says it is paid: its answer was applied.
    Applied(Applied),
}

/// Which of the gateway's two replies is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// "Handled": the gateway stops sending it.
    Handled,
    /// "Send it again", with this status: 4xx for a request we will never accept, 5xx for
    /// one we could not handle now.
    SendAgain(u16),
}

/// The outcome counted and the reply chosen for one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The outcome (`order_closer_notifications_total{outcome}`).
    pub outcome: NotifyOutcome,
    /// The reply.
    pub verdict: Verdict,
}

/// The reply table: the outcome counted and the reply sent for what became of a
/// notification.
pub fn answer(finding: Finding) -> Answer {
    use NotifyOutcome as O;
    use Verdict::{Handled, SendAgain};
    let (outcome, verdict) = match finding {
        Finding::NoSuchChannel => (O::Rejected, SendAgain(404)),
        Finding::Unread { status } => (O::Rejected, SendAgain(status)),
        Finding::TooLarge => (O::Rejected, SendAgain(413)),
        Finding::Malformed | Finding::NotOurs => (O::Rejected, SendAgain(400)),
        // A verified notification about an order we do not have is another system's on
        // the same merchant account: resending cannot change that. An unverified one is
        // refused.
        Finding::UnknownOrder(Trust::Verified) => (O::UnknownOrder, Handled),
        Finding::UnknownOrder(Trust::Unverified) => (O::UnknownOrder, SendAgain(404)),
        Finding::DatabaseDown => (O::DatabaseUnavailable, SendAgain(503)),
        Finding::Verified(applied) => match applied {
            Applied::Paid => (O::Paid, Handled),
            Applied::AlreadyPaid => (O::AlreadyPaid, Handled),
            Applied::PaidAfterClose => (O::PaidAfterClose, Handled),
            Applied::Vanished => (O::UnknownOrder, SendAgain(404)),
            Applied::Unexpected => (O::Rejected, SendAgain(500)),
        },
        Finding::Hint(hint) => match hint {
            Hint::OrderPaid => (O::AlreadyPaid, Handled),
            Hint::Refused(refusal) => (O::Rejected, SendAgain(refused(refusal))),
            Hint::NoGateway => (O::Rejected, SendAgain(404)),
            Hint::QueryFailed => (O::Queried, SendAgain(503)),
            Hint::NothingToApply => (O::Queried, Handled),
            // The gateway's answer applied: replied as a verified notification would be,
            // counted as a query (a refusal stays one).
            Hint::Applied(applied) => match answer(Finding::Verified(applied)) {
                Answer {
                    outcome: kept @ (O::Rejected | O::DatabaseUnavailable),
                    verdict,
                } => (kept, verdict),
                Answer { verdict, .. } => (O::Queried, verdict),
            },
        },
    };
    Answer { outcome, verdict }
}

/// The status of a hint query the budget refused: too soon is the caller's doing (429),
/// the rest is ours being busy (503); a notification not naming our merchant never
/// reaches the budget, and is refused as [`Finding::NotOurs`] is.
fn refused(refusal: Refusal) -> u16 {
    match refusal {
        Refusal::TooSoon => 429,
        Refusal::Busy | Refusal::RateLimited => 503,
        Refusal::NotOurMerchant => 400,
    }
}

impl Verdict {
    /// The reply in the gateway's words (`rule`: its verifier); without a gateway for the
    /// channel, a plain-text refusal (there is nobody to tell "handled": 404).
    pub fn worded(self, rule: Option<&dyn NotifyVerifier>) -> Reply {
        match (self, rule) {
            (Self::Handled, Some(rule)) => rule.acknowledge(),
            (Self::SendAgain(status), Some(rule)) => rule.refuse(status),
            (Self::Handled, None) => no_gateway(404),
            (Self::SendAgain(status), None) => no_gateway(status),
        }
    }
}

/// The reply at a channel no gateway serves: there are no gateway's words to use.
fn no_gateway(status: u16) -> Reply {
    Reply {
        status,
        content_type: "text/plain",
        body: "no such channel".into(),
    }
}

/// The reply to a notification in the gateway's words, and the outcome it is counted as.
pub fn reply(finding: Finding, rule: Option<&dyn NotifyVerifier>) -> (NotifyOutcome, Reply) {
    let Answer { outcome, verdict } = answer(finding);
    (outcome, verdict.worded(rule))
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
