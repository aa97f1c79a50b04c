//! `reconcile anomalies --refund <order>`: an operator gives back a payment the gateway
//! took after we closed the order, or the second payment of an order paid twice (under
//! the `hold` policy, or a refund that failed). The order's own payment (the trade a PAID
//! order was paid through) is never refunded here.
//!
//! The gateway is asked first, and what to send is decided by the code the worker's send
//! uses ([`Decider::plan_refund`]): only a CLOSED order whose trade the gateway reports
//! paid is refunded, for the amount the gateway says was paid, under the number derived
//! from its trade number (or a refund sent before, whose trade the gateway reports closed
//! now, is sent again unchanged to be confirmed). The payment is recorded as a
//! `paid_after_close` anomaly if it was not yet, and the refund requested through the same
//! code the `refund` policy uses (one refund per order); the worker asks the gateway again
//! and sends it. A dry run asks the gateway and says what the real run will send.

use serde::Serialize;
use thiserror::Error;

use crate::decide::refund::{PlanFailure, RefundRequestResult};
use crate::decide::refund_plan::{Basis, NotSendable};
use crate::decide::{Decider, Unavailable};
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::{self, orders, refunds, trades};
use order_closer_core::money::format_minor;
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::{Trade, TradeStatus};
use order_closer_gateway::GatewayError;

/// Why the refund was not requested.
#[derive(Debug, Error)]
pub enum RefundError {
    /// No order has this number.
    #[error("no order {0:?}")]
    NoSuchOrder(String),
    /// The order is not one a payment after close can be on.
    #[error("{0}")]
    NotClosed(String),
    /// No gateway serves the trade's channel.
    #[error("no gateway is configured for channel {0:?}")]
    NoGateway(String),
    /// The order has no trade whose payment could be given back, or several and none
    /// says which.
    #[error("{0}")]
    WhichTrade(String),
    /// The gateway could not be asked (try again later).
    #[error("the gateway could not be asked: {0}")]
    Gateway(#[from] GatewayError),
    /// The gateway reports no payment to give back (and none was sent before).
    #[error(transparent)]
    NotPaid(NotSendable),
    /// The database could not be used.
    #[error(transparent)]
    Database(#[from] Unavailable),
}

impl RefundError {
    /// Whether trying again later may help (the gateway or the database was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Gateway(_) | Self::Database(_))
    }
}

/// What was done, for the operator.
#[derive(Debug, Clone, Serialize)]
pub struct RefundReport {
    /// The order.
    pub out_trade_no: String,
    /// What the gateway reports paid now, in minor units (None: it reports no payment
    /// now, and the refund sent before is sent again to be confirmed; or the refund
    /// succeeded before and the gateway was not asked).
    pub paid_minor: Option<i64>,
    /// The result.
    #[serde(flatten)]
    pub result: RefundRequestResult,
}

/// Requests the refund of `out_trade_no`'s payment after close (or, with `dry_run`, says
/// what would be requested).
pub async fn request(
    decider: &Decider,
    out_trade_no: &str,
    dry_run: bool,
) -> Result<RefundReport, RefundError> {
    let (order, row, trades) = {
        let mut conn = db::conn(decider.pool()).await.map_err(Unavailable::from)?;
        let order = orders::find_by_out_trade_no(&mut conn, out_trade_no)
            .await
            .map_err(Unavailable::from)?
            .ok_or_else(|| RefundError::NoSuchOrder(out_trade_no.to_owned()))?;
        let row = refunds::for_order(&mut conn, order.id)
            .await
            .map_err(Unavailable::from)?;
        let trades = trades::for_order(&mut conn, order.id)
            .await
            .map_err(Unavailable::from)?;
        (order, row, trades)
    };
    let trade = refund_target(&order, &trades, row.as_ref())?;
    if let Some(row) = row
        .as_ref()
        .filter(|r| r.status() == refunds::RefundStatus::Succeeded)
    {
        return Ok(RefundReport {
            out_trade_no: order.out_trade_no,
            paid_minor: None,
            result: RefundRequestResult::AlreadyRefunded {
                out_request_no: row.out_request_no.clone().unwrap_or_default(),
            },
        });
    }
    let planned = decider
        .plan_refund(trade)
        .await?
        .map_err(|failure| match failure {
            PlanFailure::NoGateway => RefundError::NoGateway(trade.channel.clone()),
            PlanFailure::Query(e) => RefundError::Gateway(e),
            PlanFailure::NotSendable(NotSendable::BuyerPaying) => {
                RefundError::Gateway(NotSendable::BuyerPaying.as_gateway_error())
            }
            PlanFailure::NotSendable(why) => RefundError::NotPaid(why),
        })?;
    let result = if dry_run {
        RefundRequestResult::WouldRequest {
            amount_minor: planned.amount_minor,
            out_request_no: planned.out_request_no.clone(),
        }
    } else {
        if let Basis::Paid { trade_no } = &planned.basis {
            let (kind, on) = match order.status() {
                OrderStatus::Paid => (
                    AnomalyKind::DuplicatePayment,
                    "an order paid through another trade",
                ),
                _ => (AnomalyKind::PaidAfterClose, "an order we closed"),
            };
            let detail = format!(
                "the gateway reports a payment of {} (trade {trade_no}) on {on}; an operator asked for its refund",
                format_minor(planned.amount_minor)
            );
            decider
                .record_anomaly(&order, Some(trade), kind, &detail)
                .await?;
        }
        decider.request_refund(&order, trade, &planned).await?
    };
    Ok(RefundReport {
        out_trade_no: order.out_trade_no,
        paid_minor: planned.paid_minor(),
        result,
    })
}

/// The trade whose payment an operator's refund gives back: the one its refund was
/// requested for; else, of a CLOSED order, its one trade recorded paid (or its only
/// trade: the gateway is asked before anything is sent); of a PAID order, its one paid
/// trade that did not pay it (a duplicate payment). A NEW order has nothing to give back.
fn refund_target<'a>(
    order: &Order,
    trades: &'a [Trade],
    row: Option<&refunds::RefundRow>,
) -> Result<&'a Trade, RefundError> {
    let status = order.status();
    if status == OrderStatus::New {
        return Err(RefundError::NotClosed(format!(
            "order {} is NEW: only a payment on a CLOSED order, or the second payment of a PAID one, is refunded",
            order.out_trade_no
        )));
    }
    if let Some(t) = row.and_then(|r| trades.iter().find(|t| t.id == r.trade_id)) {
        return Ok(t);
    }
    let paid: Vec<&Trade> = trades
        .iter()
        .filter(|t| {
            t.status == TradeStatus::Paid
                && !order.paid_through(t.id, t.gateway_trade_no.as_deref())
        })
        .collect();
    match (status, paid.as_slice(), trades) {
        (_, [one], _) => Ok(one),
        (OrderStatus::Closed, [], [only]) => Ok(only),
        (OrderStatus::Paid, [], _) => Err(RefundError::NotClosed(format!(
            "order {} is PAID and no other trade of it is recorded paid: its own payment is never refunded here",
            order.out_trade_no
        ))),
        (_, [], []) => Err(RefundError::WhichTrade(format!(
            "order {} has no trade: nothing was paid on it",
            order.out_trade_no
        ))),
        _ => Err(RefundError::WhichTrade(format!(
            "order {} has {} trades and none or several recorded paid: refund one by its trade with `reconcile bill`, or ask the gateway which was paid",
            order.out_trade_no,
            trades.len()
        ))),
    }
}
