//! The `decisions` audit table: one row per decision, so every outcome can be explained.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::prepared::{column, prepared};
use super::schema::decisions;

crate::text_enum! {
    /// What a decision did: the `decisions.outcome` vocabulary.
    DecisionOutcome {
        /// NEW -> PAID.
        Paid => "paid",
        /// NEW -> CLOSED.
        Closed => "closed",
        /// Trades of an order closed (or found paid) at their gateways while the order
        /// itself did not move: a PAID order's other trades, or a NEW order's trades
        /// closed while another one still fails.
        TradesSettled => "trades_settled",
        /// A transient failure; tried again later.
        Retry => "retry",
        /// Parked for an operator.
        Parked => "parked",
        /// The buyer or the shop asked to cancel; decided at once by a worker.
        CancelRequested => "cancel_requested",
        /// The deadline moved later.
        DeadlineExtended => "deadline_extended",
        /// A refund of a payment after close was requested.
        RefundRequested => "refund_requested",
        /// A refund call failed transiently; sent again later.
        RefundRetry => "refund_retry",
        /// The gateway confirmed the refund.
        Refunded => "refunded",
        /// The refund was refused for good or ran out of retry steps.
        RefundFailed => "refund_failed",
    }
}

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = decisions)]
pub struct NewDecision<'a> {
    /// The order decided.
    pub order_id: i64,
    /// Attempt number (0 for the first).
    pub attempt: i32,
    /// What was done.
    pub outcome: DecisionOutcome,
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

/// When an order that stays NEW is next looked at by its own schedule (the janitor
/// re-drives it only well past that moment; see `orders.recheck_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Its retry is due then.
    At(DateTime<Utc>),
    /// Its message is parked for an operator: the janitor leaves it alone.
    Parked,
}

/// Records a decision that leaves the order NEW (a retry, a park) and, in the same
/// statement, when the order's schedule next looks at it. Returns the decision's id.
pub async fn insert_pending(
    conn: &mut AsyncPgConnection,
    row: &NewDecision<'_>,
    recheck: Recheck,
) -> QueryResult<i64> {
    use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let (at, parked) = match recheck {
        Recheck::At(at) => (Some(at), false),
        Recheck::Parked => (None, true),
    };
    let inserted: Vec<Inserted> = prepared(
        "WITH d AS (
             INSERT INTO decisions (order_id, attempt, outcome, gateway_answer, detail, actor)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, order_id
         ), o AS (
             UPDATE orders
             SET recheck_at = CASE WHEN $7 THEN 'infinity'::timestamptz ELSE $8 END
             FROM d
             WHERE orders.id = d.order_id
               AND (orders.status = 'NEW' OR orders.open_trades > 0)
         )
         SELECT id FROM d",
    )
    .bind::<BigInt, _>(row.order_id)
    .bind::<Integer, _>(row.attempt)
    .bind::<Text, _>(row.outcome)
    .bind::<Nullable<Text>, _>(row.gateway_answer)
    .bind::<Text, _>(row.detail)
    .bind::<Text, _>(row.actor)
    .bind::<Bool, _>(parked)
    .bind::<Nullable<Timestamptz>, _>(at)
    .load(conn)
    .await?;
    inserted
        .into_iter()
        .next()
        .map(|i| i.id)
        .ok_or(diesel::result::Error::NotFound)
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

/// Reserves `n` decision ids from the table's sequence (so that an event naming its
/// decision can be written in the same statement as the decision).
pub async fn reserve_ids(conn: &mut AsyncPgConnection, n: usize) -> QueryResult<Vec<i64>> {
    super::next_ids(conn, "decisions_id_seq", n).await
}

/// One guarded `NEW -> PAID | CLOSED` transition with its audit row and its event row.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    /// The order.
    pub order_id: i64,
    /// The decision row's id (from [`reserve_ids`]).
    pub decision_id: i64,
    /// `PAID` or `CLOSED`.
    pub status: &'a str,
    /// The trade that paid it (payments through a trade only).
    pub paid_trade_id: Option<i64>,
    /// Why it was closed (closes only).
    pub close_reason: Option<&'a str>,
    /// The gateway's trade number (payments only).
    pub trade_no: Option<&'a str>,
    /// When it was paid (payments only).
    pub paid_at: Option<DateTime<Utc>>,
    /// The audit row.
    pub decision: NewDecision<'a>,
    /// The event's routing key.
    pub event_key: &'a str,
    /// The event's exact bytes.
    pub event_payload: &'a str,
}

/// Applies transitions in one statement: each order still NEW moves to its new status
/// and gets its audit row and its event outbox row; an order no longer NEW, or one to be
/// CLOSED that still has an open trade (`orders.open_trades`: a trade added meanwhile),
/// is left alone and gets neither. Returns the ids of the orders that moved. At most one transition per
/// order may be given.
pub async fn apply_transitions(
    conn: &mut AsyncPgConnection,
    rows: &[Transition<'_>],
) -> QueryResult<Vec<i64>> {
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let moved: Vec<Moved> = prepared(TRANSITIONS_SQL)
        .bind::<Array<BigInt>, _>(column(rows, |r| r.order_id))
        .bind::<Array<BigInt>, _>(column(rows, |r| r.decision_id))
        .bind::<Array<Text>, _>(column(rows, |r| r.status))
        .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.close_reason))
        .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.trade_no))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(rows, |r| r.paid_at))
        .bind::<Array<Integer>, _>(column(rows, |r| r.decision.attempt))
        .bind::<Array<Text>, _>(column(rows, |r| r.decision.outcome))
        .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.decision.gateway_answer))
        .bind::<Array<Text>, _>(column(rows, |r| r.decision.detail))
        .bind::<Array<Text>, _>(column(rows, |r| r.decision.actor))
        .bind::<Array<Text>, _>(column(rows, |r| r.event_key))
        .bind::<Array<Text>, _>(column(rows, |r| r.event_payload))
        .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.paid_trade_id))
        .bind::<Text, _>(super::outbox::KIND_EVENT)
        .load(conn)
        .await?;
    Ok(moved.into_iter().map(|m| m.id).collect())
}

/// The guarded update, the audit rows and the event rows of [`apply_transitions`]: data-
/// modifying CTEs run once each, in one snapshot, and commit together.
const TRANSITIONS_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::text[], $14::bigint[])
        AS t(order_id, decision_id, status, close_reason, trade_no, paid_at, attempt,
             outcome, gateway_answer, detail, actor, event_key, event_payload,
             paid_trade_id)
),
moved AS (
    UPDATE orders o SET
        status = i.status,
        close_reason = COALESCE(i.close_reason, o.close_reason),
        closed_at = CASE WHEN i.status = 'CLOSED' THEN now() ELSE o.closed_at END,
        gateway_trade_no = COALESCE(i.trade_no, o.gateway_trade_no),
        paid_at = COALESCE(i.paid_at, o.paid_at),
        paid_trade_id = COALESCE(i.paid_trade_id, o.paid_trade_id),
        updated_at = now()
    FROM input i
    WHERE o.id = i.order_id AND o.status = 'NEW'
      AND (i.status <> 'CLOSED' OR o.open_trades = 0)
    RETURNING o.id
),
audit AS (
    INSERT INTO decisions (id, order_id, attempt, outcome, gateway_answer, detail, actor)
    SELECT i.decision_id, i.order_id, i.attempt, i.outcome, i.gateway_answer, i.detail, i.actor
    FROM input i JOIN moved m ON m.id = i.order_id
),
announced AS (
    INSERT INTO outbox (kind, routing_key, payload)
    SELECT $15, i.event_key, i.event_payload
    FROM input i JOIN moved m ON m.id = i.order_id
    ORDER BY i.decision_id
)
SELECT id FROM moved";
