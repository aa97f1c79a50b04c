//! What each row of a gateway's daily bill is, against our orders, as pure code: the
//! reconciliation in `bill.rs` reads the orders, asks the gateway and records what these
//! functions decide, and nothing here touches the database or the network.
//!
//! Two steps, because the bill is only a hint:
//! 1. [`classify_row`], from the row and our order alone: a refund, an order we do not
//!    have, a payment that agrees with a PAID order, or one that would change an order
//!    or record an anomaly, which the gateway is asked about first;
//! 2. [`judge_row`], from the gateway's answer: whether it contradicts the row, and what
//!    it calls for (mark PAID, a payment after close, an amount mismatch, nothing).
//!
//! Orders PAID on the bill's day that it lacks ([`absent_from_bill`]) are asked about
//! too, and [`judge_absent`] says whether they are missing from it.

use std::collections::{BTreeMap, BTreeSet};

use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::{Trade, TradeStatus};
use order_closer_gateway::TradeState;
use order_closer_gateway::bill::{BillRow, BillRowKind};

/// What a bill row is, before the gateway is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowClass<'a> {
    /// A refund row: reported, with our order when we have it.
    Refund(Option<&'a Known>),
    /// A payment naming no order of the bill's channel: reported.
    UnknownOrder,
    /// A payment that agrees with a PAID order of the same amount: counted.
    Agrees,
    /// A payment that would change this order or record an anomaly: the gateway is asked
    /// first, and its answer judged ([`judge_row`]).
    Ask(&'a Known),
}

/// An order of ours as a bill row names it: the trade at the bill's gateway, with its
/// order.
pub type Known = (Order, Trade);

/// What a row is, given the trades its bill names (`known`, by merchant trade number) and
/// the bill's channel: a trade of another channel is not this gateway's, so its row names
/// no trade of ours. A payment agrees when its trade is the one that paid the order, for
/// the order's amount; a payment of any other trade is asked about (a second payment).
pub fn classify_row<'a>(
    row: &BillRow,
    known: &'a BTreeMap<String, Known>,
    channel: &str,
) -> RowClass<'a> {
    let found = known
        .get(&row.out_trade_no)
        .filter(|(_, trade)| trade.channel == channel);
    match (row.kind, found) {
        (BillRowKind::Refund, found) => RowClass::Refund(found),
        (BillRowKind::Payment, None) => RowClass::UnknownOrder,
        (BillRowKind::Payment, Some((order, trade)))
            if order.status() == OrderStatus::Paid
                && trade.status == TradeStatus::Paid
                && row.amount_minor == order.amount_minor
                && order.paid_trade_id.is_none_or(|id| id == trade.id) =>
        {
            RowClass::Agrees
        }
        (BillRowKind::Payment, Some(k)) => RowClass::Ask(k),
    }
}

/// What the gateway's answer about a payment row's order calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowJudgement<'a> {
    /// The answer contradicts the row (not paid, another amount or trade, given back
    /// since): reported, and nothing is done on the bill's word.
    pub contradicts: bool,
    /// What the answer itself calls for.
    pub act: RowAct<'a>,
}

/// What a payment the gateway confirms calls for, by our order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowAct<'a> {
    /// Nothing: the gateway says it is not paid, or it agrees with the PAID order (and
    /// not with the bill).
    Nothing,
    /// NEW here: mark it PAID, with the answer as evidence.
    MarkPaid {
        /// The gateway's paid amount differs from the order's (reported, and recorded
        /// with the payment).
        amount_differs: bool,
    },
    /// CLOSED here: a payment after close, then the policy.
    PaidAfterClose {
        /// The gateway's trade number.
        trade_no: &'a str,
        /// What the gateway says was paid.
        paid_minor: i64,
    },
    /// PAID here for another amount than the gateway's: an amount mismatch.
    AmountMismatch {
        /// What the gateway says was paid.
        paid_minor: i64,
    },
}

/// Judges a payment row about `order` by the gateway's answer `state`: the gateway's word
/// is what is acted on, never the row's.
pub fn judge_row<'a>(row: &BillRow, known: &Known, state: &'a TradeState) -> RowJudgement<'a> {
    let (order, trade) = known;
    let contradicts = contradicts(row, state);
    let TradeState::Paid {
        trade_no,
        amount_minor: paid_minor,
        ..
    } = state
    else {
        return RowJudgement {
            contradicts,
            act: RowAct::Nothing,
        };
    };
    let act = match order.status() {
        OrderStatus::New => RowAct::MarkPaid {
            amount_differs: *paid_minor != order.amount_minor,
        },
        OrderStatus::Closed => RowAct::PaidAfterClose {
            trade_no,
            paid_minor: *paid_minor,
        },
        // PAID through another trade, and this one is paid too: the buyer paid twice.
        OrderStatus::Paid if order.paid_trade_id.is_some_and(|id| id != trade.id) => {
            RowAct::MarkPaid {
                amount_differs: *paid_minor != order.amount_minor,
            }
        }
        OrderStatus::Paid if *paid_minor != order.amount_minor => RowAct::AmountMismatch {
            paid_minor: *paid_minor,
        },
        OrderStatus::Paid => RowAct::Nothing,
    };
    RowJudgement { contradicts, act }
}

/// Whether the gateway's answer contradicts a payment row: not paid, or paid another
/// amount, or under another trade number, or paid and given back since (the money is not
/// with us: nothing to mark PAID, and no payment after close to act on).
pub fn contradicts(row: &BillRow, state: &TradeState) -> bool {
    !matches!(
        state,
        TradeState::Paid { trade_no, amount_minor, .. }
            if *amount_minor == row.amount_minor && *trade_no == row.trade_no
    )
}

/// The trades paid on the bill's day (`paid_that_day`) that no payment row of the bill
/// names (a refund row does not count: it is not the payment).
pub fn absent_from_bill<'a>(paid_that_day: &'a [Known], rows: &[BillRow]) -> Vec<&'a Known> {
    let paid_in_bill: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.kind == BillRowKind::Payment)
        .map(|r| r.out_trade_no.as_str())
        .collect();
    paid_that_day
        .iter()
        .filter(|(_, t)| !paid_in_bill.contains(t.out_trade_no.as_str()))
        .collect()
}

/// What an order PAID here but absent from the bill is, by the gateway's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// The gateway says it is paid: the bill is wrong, not the order (reported, no
    /// anomaly).
    PaidAtGateway,
    /// The gateway does not say it is paid: a `paid_missing_from_bill` anomaly.
    MissingFromBill,
}

/// Judges an order absent from the bill by the gateway's answer `state`.
pub fn judge_absent(state: &TradeState) -> Absence {
    match state {
        TradeState::Paid { .. } => Absence::PaidAtGateway,
        _ => Absence::MissingFromBill,
    }
}

#[cfg(test)]
#[path = "bill_classify_tests.rs"]
mod tests;
