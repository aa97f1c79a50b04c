//! Paid twice: a trade found paid that is not the one its PAID order was paid through is a
//! `duplicate_payment`, recorded and announced once (the anomaly's unique key is per
//! trade), and, under the `refund` policy, its refund requested in the same transaction
//! (one refund per trade, whatever the number of notifications, bill runs and workers that
//! find it).
//!
//! Which trade paid the order is read from the order's row inside the transaction that
//! moved the trades, not taken from the decision: a decision that lost the race to
//! another actor (a notification paying the order through the other trade) still finds
//! the one payment that is the duplicate.

use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::refund;
use super::write;
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::money::format_minor;
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::Trade;

/// What recording the duplicates of one write found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// Duplicate payments newly recorded (each announced once).
    pub new_anomalies: usize,
    /// Refunds newly requested for them.
    pub refunds_requested: usize,
}

#[derive(QueryableByName)]
struct Duplicate {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    trade_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    gateway_trade_no: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    paid_minor: Option<i64>,
}

/// Records, among the trades just moved to paid (`paid_now`), those that did not pay
/// their order, inside the caller's transaction. `orders` and `trades` are the rows as the
/// decision read them (for the anomaly's words and event); `refund` says whether the
/// policy gives duplicates back.
pub async fn record(
    tx: &mut AsyncPgConnection,
    paid_now: &[i64],
    orders: &[&Order],
    trades: &[&Trade],
    refund: bool,
    actor: &str,
) -> QueryResult<Found> {
    use diesel::sql_types::{Array, BigInt};
    let mut found = Found::default();
    if paid_now.is_empty() {
        return Ok(found);
    }
    // A trade is the order's own payment when the order names it, or (an order paid
    // before trades were recorded) when it kept that trade's number.
    let duplicates: Vec<Duplicate> = diesel::sql_query(
        "SELECT t.id AS trade_id, t.gateway_trade_no, t.paid_minor
         FROM trades t JOIN orders o ON o.id = t.order_id
         WHERE t.id = ANY($1) AND t.status = 'paid' AND o.status = 'PAID'
           AND o.paid_trade_id IS DISTINCT FROM t.id
           AND NOT (o.paid_trade_id IS NULL
                    AND o.gateway_trade_no IS NOT DISTINCT FROM t.gateway_trade_no)
         ORDER BY t.id",
    )
    .bind::<Array<BigInt>, _>(paid_now)
    .load(tx)
    .await?;
    for d in duplicates {
        let Some(trade) = trades.iter().find(|t| t.id == d.trade_id) else {
            continue;
        };
        let Some(order) = orders.iter().find(|o| o.id == trade.order_id) else {
            continue;
        };
        let trade_no = d.gateway_trade_no.as_deref().unwrap_or("?");
        let paid = d.paid_minor.unwrap_or(order.amount_minor);
        let detail = format!(
            "order {} was paid through another trade; {} trade {} (gateway trade {trade_no}) was paid {} too: the buyer paid twice",
            order.out_trade_no,
            trade.channel,
            trade.out_trade_no,
            format_minor(paid)
        );
        let new = write::record_anomaly(
            tx,
            order,
            Some(trade),
            AnomalyKind::DuplicatePayment,
            &detail,
            OrderStatus::Paid,
            d.gateway_trade_no.as_deref(),
        )
        .await?;
        found.new_anomalies += usize::from(new);
        if refund {
            let why = format!(
                "the paid_after_close policy is refund: the second payment of the order, {} trade {}, is given back",
                trade.channel, trade.out_trade_no
            );
            let (_, requested) = refund::request_in(tx, order, trade, actor, &why).await?;
            found.refunds_requested += usize::from(requested);
        }
    }
    Ok(found)
}
