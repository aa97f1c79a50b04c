//! The `anomalies` table: places where money and orders disagree, kept for an operator.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::anomalies;

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = anomalies)]
pub struct NewAnomaly<'a> {
    /// The order, when it exists locally.
    pub order_id: Option<i64>,
    /// The merchant order number.
    pub out_trade_no: &'a str,
    /// `amount_mismatch`, `paid_after_close`, ...
    pub kind: &'a str,
    /// What exactly disagrees.
    pub detail: &'a str,
}

/// Records an anomaly once per (order, kind); returns false if it was already recorded.
pub async fn record(conn: &mut AsyncPgConnection, row: &NewAnomaly<'_>) -> QueryResult<bool> {
    let inserted = diesel::insert_into(anomalies::table)
        .values(row)
        .on_conflict((anomalies::out_trade_no, anomalies::kind))
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
