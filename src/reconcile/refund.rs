//! `reconcile anomalies --refund <order>`: an operator gives back a payment the gateway
//! took after we closed the order (under the `hold` policy, or a refund that failed).
//!
//! The gateway is asked first: only a CLOSED order whose trade the gateway reports paid
//! is refunded, for the amount the gateway says was paid. The payment is recorded as a
//! `paid_after_close` anomaly if it was not yet, and the refund requested through the same
//! code the `refund` policy uses (one refund per order, `out_request_no` derived from the
//! order); the worker sends it. A dry run asks the gateway and says what would be done.

use serde::Serialize;
use thiserror::Error;

use crate::db::anomalies::AnomalyKind;
use crate::db::{self, orders, refunds};
use crate::decide::refund::{RefundRequestResult, refundable};
use crate::decide::{Decider, Unavailable};
use crate::gateway::{GatewayError, TradeState};
use crate::money::format_minor;

/// Why the refund was not requested.
#[derive(Debug, Error)]
pub enum RefundError {
    /// No order has this number.
    #[error("no order {0:?}")]
    NoSuchOrder(String),
    /// The order is not one a payment after close can be on.
    #[error("{0}")]
    NotClosed(String),
    /// No gateway serves the order's channel.
    #[error("no gateway is configured for channel {0:?}")]
    NoGateway(String),
    /// The gateway could not be asked (try again later).
    #[error("the gateway could not be asked: {0}")]
    Gateway(#[from] GatewayError),
    /// The gateway reports no payment to give back.
    #[error("the gateway reports the trade {state}: nothing was paid, nothing to refund")]
    NotPaid {
        /// What the gateway says.
        state: String,
    },
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
    /// What the gateway says was paid, in minor units.
    pub paid_minor: i64,
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
    let mut conn = db::conn(decider.pool()).await.map_err(Unavailable::from)?;
    let order = orders::find_by_out_trade_no(&mut conn, out_trade_no)
        .await
        .map_err(Unavailable::from)?
        .ok_or_else(|| RefundError::NoSuchOrder(out_trade_no.to_owned()))?;
    refundable(&order).map_err(RefundError::NotClosed)?;
    let answer = decider
        .query_gateway(&order)
        .await
        .ok_or_else(|| RefundError::NoGateway(order.channel.clone()))??;
    let (paid_minor, trade_no) = match answer.state {
        TradeState::Paid {
            amount_minor,
            trade_no,
            ..
        } => (amount_minor, trade_no),
        other => {
            // A refund made before leaves the trade closed at the gateway.
            let earlier = refunds::for_order(&mut conn, order.id)
                .await
                .map_err(Unavailable::from)?
                .filter(|r| r.status() == refunds::RefundStatus::Succeeded);
            return match earlier {
                Some(row) => Ok(RefundReport {
                    out_trade_no: order.out_trade_no,
                    paid_minor: row.amount_minor,
                    result: RefundRequestResult::AlreadyRefunded {
                        out_request_no: row.out_request_no,
                    },
                }),
                None => Err(RefundError::NotPaid {
                    state: format!("{other:?}"),
                }),
            };
        }
    };
    drop(conn);
    if !dry_run {
        let detail = format!(
            "the gateway reports a payment of {} (trade {trade_no}) on an order we closed; an operator asked for its refund",
            format_minor(paid_minor)
        );
        decider
            .record_anomaly(&order, AnomalyKind::PaidAfterClose, &detail)
            .await?;
    }
    let result = decider.request_refund(&order, paid_minor, dry_run).await?;
    Ok(RefundReport {
        out_trade_no: order.out_trade_no,
        paid_minor,
        result,
    })
}
