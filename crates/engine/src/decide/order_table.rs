//! The whole order from its trades: once the deadline protocol ([`super::table`]) has run
//! at each open trade's gateway, what happens to each trade and to the order. Pure code,
//! no I/O; the rows of the table are the tests below.
//!
//! | the trades' answers | the order | the trades | the message |
//! |---|---|---|---|
//! | none open (no trade at all, or all closed) | NEW -> CLOSED | - | done |
//! | one paid | NEW -> PAID, naming it | paid; the others as answered | done, or retried for the others |
//! | two paid | NEW -> PAID, naming the first | both paid; the second a `duplicate_payment` | as above |
//! | a paid one, order PAID through another | stays PAID | paid, a `duplicate_payment` | as above |
//! | all closed | NEW -> CLOSED | closed | done |
//! | some closed, one to retry or park | stays NEW | the closed ones closed | retried (parked when none can be retried) |
//!
//! A PAID order with open trades left is decided the same way: its open trades are closed
//! at their gateways (each one is a chance to pay twice), and one found paid is a
//! duplicate payment.

use chrono::{DateTime, Utc};

use super::table::{Action, AmountMismatch, CloseReason};
use order_closer_core::db::trades::TradeMove;
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::{Trade, TradeStatus};

/// What the deadline protocol came to at one open trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeVerdict {
    /// The trade.
    pub trade_id: i64,
    /// The protocol's last action for it.
    pub action: Action,
}

/// The order's own move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderMove {
    /// NEW -> PAID through this trade.
    Paid {
        /// The trade.
        trade_id: i64,
        /// The gateway's trade number.
        trade_no: String,
        /// When, if the gateway says.
        paid_at: Option<DateTime<Utc>>,
        /// Set when the paid amount is not the order's.
        mismatch: Option<AmountMismatch>,
    },
    /// NEW -> CLOSED: no trade can be paid any more.
    Closed(CloseReason),
}

/// A trade that failed to settle: the order's message stays for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    /// The trade.
    pub trade_id: i64,
    /// Whether retrying may help (false: only an operator can).
    pub retryable: bool,
    /// Short code.
    pub code: String,
    /// Explanation.
    pub detail: String,
}

/// The decision about a whole order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderDecision {
    /// The order's move, if it moves.
    pub order: Option<OrderMove>,
    /// Each settled trade's move, in the trades' order.
    pub trades: Vec<(i64, TradeMove)>,
    /// Trades found paid besides the one that pays the order: `duplicate_payment`.
    pub duplicates: Vec<i64>,
    /// Trades found paid and given back before the deadline: `refunded_before_deadline`.
    pub refunded: Vec<(i64, String, i64)>,
    /// The first trade that did not settle, if any (the message stays for it). A
    /// retryable one comes before one that can only be parked: another try may settle
    /// the rest, and the park still follows once the retries are over.
    pub unsettled: Option<Unsettled>,
}

/// How strongly a close reason speaks for the order: a refunded trade is named before a
/// trade we closed, which comes before one the gateway had closed, before none at all.
fn rank(reason: CloseReason) -> u8 {
    match reason {
        CloseReason::RefundedAtGateway => 3,
        CloseReason::ClosedByUs => 2,
        CloseReason::ClosedAtGateway => 1,
        CloseReason::NoTrade => 0,
    }
}

/// Decides the order from its trades (every one it has, any state) and the protocol's
/// verdict for each open one (a verdict for a trade not open is ignored; an open trade
/// without a verdict is unsettled).
pub fn decide(order: &Order, trades: &[Trade], verdicts: &[TradeVerdict]) -> OrderDecision {
    let mut decision = OrderDecision::default();
    let mut retry: Option<Unsettled> = None;
    let mut park: Option<Unsettled> = None;
    let mut paid_through: Option<OrderMove> = None;
    let mut close_reason: Option<CloseReason> = None;
    let mut order_paid = order.status() == OrderStatus::Paid;
    for trade in trades.iter().filter(|t| t.status == TradeStatus::Open) {
        let Some(verdict) = verdicts.iter().find(|v| v.trade_id == trade.id) else {
            retry.get_or_insert(Unsettled {
                trade_id: trade.id,
                retryable: true,
                code: "not_asked".into(),
                detail: format!("trade {} was not asked about", trade.out_trade_no),
            });
            continue;
        };
        match &verdict.action {
            Action::MarkPaid {
                trade_no,
                paid_at,
                mismatch,
            } => {
                decision.trades.push((
                    trade.id,
                    TradeMove::Paid {
                        gateway_trade_no: trade_no.clone(),
                        paid_minor: mismatch.map_or(order.amount_minor, |m| m.paid),
                        paid_at: *paid_at,
                    },
                ));
                if order_paid {
                    if !order.paid_through(trade.id, Some(trade_no)) {
                        decision.duplicates.push(trade.id);
                    }
                } else {
                    order_paid = true;
                    paid_through = Some(OrderMove::Paid {
                        trade_id: trade.id,
                        trade_no: trade_no.clone(),
                        paid_at: *paid_at,
                        mismatch: *mismatch,
                    });
                }
            }
            Action::Close(reason) => {
                decision.trades.push((
                    trade.id,
                    TradeMove::Closed {
                        reason: reason.as_str(),
                    },
                ));
                close_reason = close_reason.max_by_key_rank(*reason);
            }
            Action::CloseRefunded {
                trade_no,
                paid_minor,
            } => {
                let reason = CloseReason::RefundedAtGateway;
                decision.trades.push((
                    trade.id,
                    TradeMove::Closed {
                        reason: reason.as_str(),
                    },
                ));
                decision
                    .refunded
                    .push((trade.id, trade_no.clone(), *paid_minor));
                close_reason = close_reason.max_by_key_rank(reason);
            }
            Action::Retry { code, detail } => {
                retry.get_or_insert(unsettled(trade, true, code, detail));
            }
            Action::Park { code, detail } => {
                park.get_or_insert(unsettled(trade, false, code, detail));
            }
            // The protocol resolves these itself; were one to reach here, trying again
            // later is the safe reading, never closing.
            Action::CloseAtGateway | Action::QueryAgain => {
                retry.get_or_insert(unsettled(
                    trade,
                    true,
                    "internal",
                    &format!("unresolved action {:?}", verdict.action),
                ));
            }
        }
    }
    decision.unsettled = retry.or(park);
    decision.order = match (order.status(), paid_through) {
        (OrderStatus::New, Some(paid)) => Some(paid),
        (OrderStatus::New, None) if decision.unsettled.is_none() => Some(OrderMove::Closed(
            close_reason.unwrap_or(CloseReason::NoTrade),
        )),
        _ => None,
    };
    decision
}

fn unsettled(trade: &Trade, retryable: bool, code: &str, detail: &str) -> Unsettled {
    Unsettled {
        trade_id: trade.id,
        retryable,
        code: code.to_owned(),
        detail: format!("{} trade {}: {detail}", trade.channel, trade.out_trade_no),
    }
}

/// Keeps the strongest close reason seen.
trait StrongestReason {
    fn max_by_key_rank(self, reason: CloseReason) -> Option<CloseReason>;
}

impl StrongestReason for Option<CloseReason> {
    fn max_by_key_rank(self, reason: CloseReason) -> Option<CloseReason> {
        match self {
            Some(seen) if rank(seen) >= rank(reason) => Some(seen),
            _ => Some(reason),
        }
    }
}

/// One action standing for the whole order, for a dry run's report: a payment first,
/// then what would keep the order NEW, then a close at a gateway, then a local close.
pub fn summary(verdicts: &[TradeVerdict]) -> Action {
    let weight = |a: &Action| match a {
        Action::MarkPaid { .. } => 0,
        Action::Retry { .. } => 1,
        Action::Park { .. } => 2,
        Action::CloseAtGateway | Action::QueryAgain => 3,
        Action::CloseRefunded { .. } => 4,
        Action::Close(r) => 10 - rank(*r),
    };
    verdicts
        .iter()
        .map(|v| &v.action)
        .min_by_key(|a| weight(a))
        .cloned()
        .unwrap_or(Action::Close(CloseReason::NoTrade))
}

#[cfg(test)]
#[path = "order_table_tests.rs"]
mod tests;
