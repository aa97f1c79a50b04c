//! The `decisions` audit table: one row per decision, so every outcome can be explained.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::decisions;

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = decisions)]
pub struct NewDecision<'a> {
    /// The order decided.
    pub order_id: i64,
    /// Attempt number (0 for the first).
    pub attempt: i32,
    /// `closed`, `paid`, `retry`, `parked`, `discarded`, ...
    pub outcome: &'a str,
    /// What the gateway answered (the signed raw object, or the error).
    pub gateway_answer: Option<&'a str>,
    /// Human explanation.
    pub detail: &'a str,
    /// Who decided (`worker:<host>:<pid>`, `reconcile`, ...).
    pub actor: &'a str,
}

/// A stored decision.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = decisions, check_for_backend(diesel::pg::Pg))]
pub struct Decision {
    /// Row id (also the event id of the event it produced).
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// Attempt number.
    pub attempt: i32,
    /// What was done.
    pub outcome: String,
    /// What the gateway said.
    pub gateway_answer: Option<String>,
    /// Explanation.
    pub detail: String,
    /// Who decided.
    pub actor: String,
    /// When (commit time of the decision's transaction, to the microsecond).
    pub decided_at: DateTime<Utc>,
}

/// Records a decision and returns its id.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewDecision<'_>) -> QueryResult<i64> {
    diesel::insert_into(decisions::table)
        .values(row)
        .returning(decisions::id)
        .get_result(conn)
        .await
}

/// The decision history of an order, oldest first.
pub async fn for_order(conn: &mut AsyncPgConnection, order_id: i64) -> QueryResult<Vec<Decision>> {
    decisions::table
        .filter(decisions::order_id.eq(order_id))
        .order(decisions::id.asc())
        .select(Decision::as_select())
        .load(conn)
        .await
}
