//! The `anomalies` table: places where money and orders disagree, kept for an operator.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::anomalies;

crate::text_enum! {
    /// Where money and orders disagree: the `anomalies.kind` vocabulary.
    AnomalyKind {
        /// The gateway says another amount was paid than the order's.
        AmountMismatch => "amount_mismatch",
        /// The gateway took a payment on an order we had closed.
        PaidAfterClose => "paid_after_close",
        /// PAID here, absent from the gateway's bill of that day.
        PaidMissingFromBill => "paid_missing_from_bill",
        /// The trade was paid and the payment given back (in whole or in part) before the
        /// deadline: the order is closed, and an operator checks what, if anything, was
        /// kept.
        RefundedBeforeDeadline => "refunded_before_deadline",
        /// A second trade of an order was paid: the buyer paid twice (held for an
        /// operator, or refunded under the `refund` policy).
        DuplicatePayment => "duplicate_payment",
    }
}

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = anomalies)]
pub struct NewAnomaly<'a> {
    /// The order, when it exists locally.
    pub order_id: Option<i64>,
    /// The trade it is about, when there is one.
    pub trade_id: Option<i64>,
    /// The merchant order number.
    pub out_trade_no: &'a str,
    /// The kind.
    pub kind: AnomalyKind,
    /// What exactly disagrees.
    pub detail: &'a str,
}

/// Records an anomaly once per (order number, kind, trade); returns its id when it is
/// new, None when it was already recorded.
pub async fn record(
    conn: &mut AsyncPgConnection,
    row: &NewAnomaly<'_>,
) -> QueryResult<Option<i64>> {
    diesel::insert_into(anomalies::table)
        .values(row)
        // The unique index `anomalies_once` is on an expression of the trade id, which
        // `ON CONFLICT` cannot name as columns; it is the table's only unique key besides
        // the id.
        .on_conflict_do_nothing()
        .returning(anomalies::id)
        .get_result(conn)
        .await
        .optional()
}

/// A stored anomaly.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = anomalies, check_for_backend(diesel::pg::Pg))]
pub struct Anomaly {
    /// Row id.
    pub id: i64,
    /// The order, when it exists locally.
    pub order_id: Option<i64>,
    /// Merchant order number.
    pub out_trade_no: String,
    /// Kind.
    pub kind: String,
    /// What disagrees.
    pub detail: String,
    /// When it was first recorded.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The trade it is about, when there is one.
    pub trade_id: Option<i64>,
}

/// Lists anomalies, newest first, optionally of one kind.
pub async fn list(
    conn: &mut AsyncPgConnection,
    kind: Option<AnomalyKind>,
    limit: i64,
) -> QueryResult<Vec<Anomaly>> {
    let mut query = anomalies::table
        .select(Anomaly::as_select())
        .order(anomalies::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(kind) = kind {
        query = query.filter(anomalies::kind.eq(kind));
    }
    query.load(conn).await
}
