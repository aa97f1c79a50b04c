//! The `refunds` table: one refund per paid trade to give back (a payment after we closed
//! the order, or the second payment of an order paid twice), its progress, and
//! what was sent for it. A request stores neither amount nor number: the worker decides
//! both from the gateway's answer when it sends the refund (`decide::refund_plan`) and
//! records them here before the call ([`prepare_send`]), so that a call whose answer is
//! lost can be sent again unchanged.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::refunds;

crate::text_enum! {
    /// Where a refund stands: the `refunds.status` vocabulary.
    RefundStatus {
        /// Asked for; the worker is (or will be) sending it to the gateway.
        Requested => "requested",
        /// The gateway confirmed it.
        Succeeded => "succeeded",
        /// Refused for good, or every retry step used: an operator looks.
        Failed => "failed",
    }
}

/// A refund's progress, as counted in `order_closer_refunds_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundProgress {
    /// A refund was requested (by the policy or an operator).
    Requested,
    /// The gateway confirmed it.
    Succeeded,
    /// A transient failure; it is sent again later.
    Retried,
    /// Refused for good or out of retry steps: an operator looks.
    Failed,
}

impl RefundProgress {
    /// Every value (the metric's labels start at 0).
    pub const ALL: [Self; 4] = [
        Self::Requested,
        Self::Succeeded,
        Self::Retried,
        Self::Failed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// A stored refund.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = refunds, check_for_backend(diesel::pg::Pg))]
pub struct RefundRow {
    /// Row id.
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// Its merchant order number.
    pub out_trade_no: String,
    /// The idempotency key at the gateway (`out_request_no`, `out_refund_no`) as last
    /// sent; None until the first send decides it. Rows of earlier versions may
    /// hold the old `RF-<order id>`.
    pub out_request_no: Option<String>,
    /// How much, in minor units, as last sent: what the gateway reported paid then. None
    /// until the first send.
    pub amount_minor: Option<i64>,
    status: RefundStatus,
    /// Gateway calls made so far.
    pub attempts: i32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The gateway's answer that settled it.
    pub gateway_answer: Option<String>,
    /// Who asked for it.
    pub requested_by: String,
    /// When it was asked for.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// When its amount and number were last handed to the gateway (None: never sent).
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The trade whose payment it gives back.
    pub trade_id: i64,
}

impl RefundRow {
    /// Where it stands.
    pub fn status(&self) -> RefundStatus {
        self.status
    }

    /// What was sent for it before, if anything: `(amount_minor, out_request_no)`.
    pub fn sent(&self) -> Option<(i64, &str)> {
        self.sent_at?;
        Some((self.amount_minor?, self.out_request_no.as_deref()?))
    }
}

/// What [`prepare_send`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Recorded: send it.
    Ready,
    /// The refund is not `requested` any more (another worker settled it meanwhile).
    Settled,
    /// Another refund has this number already (two trades the gateway reports under one
    /// trade number): not sent.
    NumberTaken,
}

/// Records a requested refund of a trade's payment unless it has one (its amount and
/// number are decided when it is sent); returns the row and whether it is new.
pub async fn request(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    trade_id: i64,
    out_trade_no: &str,
    requested_by: &str,
) -> QueryResult<(RefundRow, bool)> {
    let inserted = diesel::insert_into(refunds::table)
        .values((
            refunds::order_id.eq(order_id),
            refunds::trade_id.eq(trade_id),
            refunds::out_trade_no.eq(out_trade_no),
            refunds::requested_by.eq(requested_by),
        ))
        .on_conflict(refunds::trade_id)
        .do_nothing()
        .returning(RefundRow::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match inserted {
        Some(row) => Ok((row, true)),
        None => Ok((
            for_trade(conn, trade_id).await?.ok_or(diesel::NotFound)?,
            false,
        )),
    }
}

/// The refund of a trade's payment, if any.
pub async fn for_trade(
    conn: &mut AsyncPgConnection,
    trade_id: i64,
) -> QueryResult<Option<RefundRow>> {
    refunds::table
        .filter(refunds::trade_id.eq(trade_id))
        .select(RefundRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The refund of an order that most needs doing, if any: a requested one first (oldest
/// first), then a failed one, then a succeeded one (newest first). A refund message names
/// the order; it sends its requested refunds one at a time.
pub async fn for_order(
    conn: &mut AsyncPgConnection,
    order_id: i64,
) -> QueryResult<Option<RefundRow>> {
    use diesel::dsl::sql;
    use diesel::sql_types::Integer;
    refunds::table
        .filter(refunds::order_id.eq(order_id))
        .order((
            sql::<Integer>("CASE status WHEN 'requested' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END")
                .asc(),
            refunds::id.asc(),
        ))
        .select(RefundRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Moves a failed refund back to `requested` (an operator asked again); returns whether
/// it moved.
pub async fn reopen(conn: &mut AsyncPgConnection, trade_id: i64, actor: &str) -> QueryResult<bool> {
    diesel::update(refunds::table)
        .filter(refunds::trade_id.eq(trade_id))
        .filter(refunds::status.eq(RefundStatus::Failed))
        .set((
            refunds::status.eq(RefundStatus::Requested),
            refunds::requested_by.eq(actor),
            refunds::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|n| n == 1)
}

/// Records what a requested refund is about to send (the gateway's amount, the number
/// derived from its trade number), before the call: a later send finding the trade no
/// longer paid sends exactly this again.
pub async fn prepare_send(
    conn: &mut AsyncPgConnection,
    trade_id: i64,
    amount_minor: i64,
    out_request_no: &str,
) -> QueryResult<Prepared> {
    let updated = diesel::update(refunds::table)
        .filter(refunds::trade_id.eq(trade_id))
        .filter(refunds::status.eq(RefundStatus::Requested))
        .set((
            refunds::amount_minor.eq(amount_minor),
            refunds::out_request_no.eq(out_request_no),
            refunds::sent_at.eq(diesel::dsl::now),
            refunds::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await;
    match updated {
        Ok(1) => Ok(Prepared::Ready),
        Ok(_) => Ok(Prepared::Settled),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(Prepared::NumberTaken),
        Err(e) => Err(e),
    }
}

/// Records one gateway call on a requested refund: its new status (still `requested`
/// after a transient failure), the error or the settling answer. Returns false when the
/// refund was not `requested` any more (another worker settled it first).
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    trade_id: i64,
    status: RefundStatus,
    last_error: Option<&str>,
    gateway_answer: Option<&str>,
) -> QueryResult<bool> {
    diesel::update(refunds::table)
        .filter(refunds::trade_id.eq(trade_id))
        .filter(refunds::status.eq(RefundStatus::Requested))
        .set((
            refunds::status.eq(status),
            refunds::attempts.eq(refunds::attempts + 1),
            refunds::last_error.eq(last_error),
            refunds::gateway_answer.eq(gateway_answer),
            refunds::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|n| n == 1)
}

/// Refunds not yet succeeded, oldest first.
pub async fn open(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<RefundRow>> {
    refunds::table
        .filter(refunds::status.ne(RefundStatus::Succeeded))
        .order(refunds::created_at.asc())
        .limit(limit)
        .select(RefundRow::as_select())
        .load(conn)
        .await
}
