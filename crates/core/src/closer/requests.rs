//! Changing an order on request: cancelling it now, or giving the buyer more time.
//!
//! A cancel runs the same decision as the deadline, at once: the order's deadline moves to
//! now, a close message due now is scheduled (outbox row, then a publish, as at creation),
//! and a worker decides it: close at the gateway first, or, when the gateway says the
//! buyer paid, PAID. The caller waits (bounded) and is told which. No gateway code runs in
//! the shop's process, so the library stays lean.
//!
//! An extension moves a NEW order's deadline later; the close message already scheduled
//! arrives at the old deadline, finds the later one in the row, and waits again.
//!
//! An order settled by other means (store credit, a voucher, a gift card) is marked PAID
//! at once through no trade; its open trades, if any, are closed at their gateways by a
//! worker right away (a close message due now), so the buyer cannot pay as well.
//!
//! All leave an audit row (`cancel_requested`, `deadline_extended`, `paid`, actor
//! `closer`), so the order's history explains its end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use thiserror::Error;

use super::{Closer, MAX_TIME_TO_PAY, PendingClose};
use crate::db::decisions::{self, DecisionOutcome, NewDecision};
use crate::db::outbox;
use crate::db::schema::orders;
use crate::db::{self, DbError};
use crate::message::CloseMessage;
use crate::order::CloseReason;
use crate::order::{Order, OrderStatus};

/// How long [`Closer::cancel_order`] waits for the worker's decision.
pub const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// An order closer to its deadline than this can no longer be extended: a worker may be
/// deciding it already (clocks differ by less than this).
pub const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// The actor of the audit rows written here.
const ACTOR: &str = "closer";

/// What a cancel came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Closed at the gateway first, then here: the buyer can no longer pay.
    Closed,
    /// Closed here, but the gateway had no trade yet (the buyer never scanned): closing a
    /// trade that does not exist proves nothing, so a QR code shown to the buyer stays
    /// scannable until its own expiry, which the shop set to the original deadline. A
    /// payment made by then is caught as `paid_after_close` (by the notify endpoint, or
    /// the bill) and held or refunded.
    ClosedBeforeScan {
        /// The original deadline: the QR code's expiry.
        qr_valid_until: DateTime<Utc>,
    },
    /// The buyer had paid: the order is PAID (deliver, or refund).
    Paid,
    /// Requested, but no worker decided within the wait (a gateway error being retried, or
    /// no worker running): a worker will; read the order later.
    Pending,
}

/// Why an order could not be changed.
#[derive(Debug, Error)]
pub enum ChangeError {
    /// No such order.
    #[error("no order with out_trade_no {0:?}")]
    NotFound(String),
    /// The order is PAID or CLOSED already.
    #[error("order {out_trade_no:?} is {status} already")]
    Settled {
        /// The order.
        out_trade_no: String,
        /// Its status.
        status: OrderStatus,
    },
    /// The extension is not possible (too late, not later, too far).
    #[error("cannot extend order {out_trade_no:?}: {reason}")]
    NotExtendable {
        /// The order.
        out_trade_no: String,
        /// Why.
        reason: String,
    },
    /// The database failed; nothing was changed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ChangeError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// The order, locked for the rest of the transaction, if it is still NEW.
async fn lock_new(conn: &mut AsyncPgConnection, out_trade_no: &str) -> Result<Order, ChangeError> {
    let order = orders::table
        .filter(orders::out_trade_no.eq(out_trade_no))
        .select(Order::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ChangeError::NotFound(out_trade_no.to_owned()))?;
    match order.status() {
        OrderStatus::New => Ok(order),
        status => Err(ChangeError::Settled {
            out_trade_no: out_trade_no.to_owned(),
            status,
        }),
    }
}

/// Moves the deadline and records why, in the caller's transaction.
async fn move_deadline(
    conn: &mut AsyncPgConnection,
    order: &Order,
    to: DateTime<Utc>,
    outcome: DecisionOutcome,
    why: &str,
) -> QueryResult<Order> {
    let moved: Order = diesel::update(orders::table.find(order.id))
        .set((orders::deadline.eq(to), orders::updated_at.eq(Utc::now())))
        .returning(Order::as_returning())
        .get_result(conn)
        .await?;
    let detail = format!(
        "{why}: deadline moved from {} to {}",
        order.deadline.to_rfc3339(),
        to.to_rfc3339()
    );
    decisions::insert(
        conn,
        &NewDecision {
            order_id: order.id,
            attempt: 0,
            outcome,
            gateway_answer: None,
            detail: &detail,
            actor: ACTOR,
        },
    )
    .await?;
    Ok(moved)
}

impl Closer {
    /// Cancels a NEW order now (the buyer or the shop gave up): the deadline decision runs
    /// at once in a worker, closing the trade at the gateway first; if the buyer paid, the
    /// order ends PAID and the result says so. Waits up to [`CANCEL_WAIT`] for it.
    pub async fn cancel_order(&self, out_trade_no: &str) -> Result<Cancelled, ChangeError> {
        self.cancel_order_within(out_trade_no, CANCEL_WAIT).await
    }

    /// [`Closer::cancel_order`], waiting at most `wait` for the decision.
    #[tracing::instrument(skip(self), fields(out_trade_no = %out_trade_no))]
    pub async fn cancel_order_within(
        &self,
        out_trade_no: &str,
        wait: Duration,
    ) -> Result<Cancelled, ChangeError> {
        let mut conn = db::conn(&self.pool).await?;
        let no = out_trade_no.to_owned();
        let requested: Result<(PendingClose, DateTime<Utc>), ChangeError> = conn
            .transaction::<_, ChangeError, _>(async |tx| {
                let order = lock_new(tx, &no).await?;
                let original_deadline = order.deadline;
                let now = Utc::now();
                let order = if order.deadline > now {
                    move_deadline(
                        tx,
                        &order,
                        now,
                        DecisionOutcome::CancelRequested,
                        "cancel requested",
                    )
                    .await?
                } else {
                    order
                };
                let message =
                    CloseMessage::new(order.id, order.out_trade_no.clone(), order.deadline);
                let outbox_id = outbox::insert_close(tx, &message).await?;
                Ok((PendingClose { order, outbox_id }, original_deadline))
            })
            .await;
        drop(conn);
        let (pending, original_deadline) = match requested {
            Ok(pending) => pending,
            Err(ChangeError::Settled { status, .. }) => return Ok(settled_as(status, None)),
            Err(e) => return Err(e),
        };
        self.publish(&pending).await;
        let until = tokio::time::Instant::now() + wait;
        loop {
            // The cancel is committed: from here a failure to read is "not known yet",
            // never "nothing changed".
            let now = match db::conn(&self.pool).await {
                Ok(mut conn) => db::orders::find(&mut conn, pending.order.id).await.ok(),
                Err(_) => None,
            };
            if let Some(order) = now.flatten()
                && order.status() != OrderStatus::New
            {
                return Ok(settled_as(
                    order.status(),
                    Some((&order, original_deadline)),
                ));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Cancelled::Pending);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves a NEW order's deadline later, to `to` (at most a year away). Refused for an
    /// order already settled, one within [`EXTEND_MARGIN`] of its deadline (a worker may
    /// be deciding it), and a `to` that is not later than the current deadline.
    #[tracing::instrument(skip(self), fields(out_trade_no = %out_trade_no))]
    pub async fn extend_deadline(
        &self,
        out_trade_no: &str,
        to: DateTime<Utc>,
    ) -> Result<Order, ChangeError> {
        let not_extendable = |reason: String| ChangeError::NotExtendable {
            out_trade_no: out_trade_no.to_owned(),
            reason,
        };
        let now = Utc::now();
        if to > crate::time::later(now, MAX_TIME_TO_PAY) {
            return Err(not_extendable(format!(
                "{} is more than a year away",
                to.to_rfc3339()
            )));
        }
        let mut conn = db::conn(&self.pool).await?;
        let no = out_trade_no.to_owned();
        conn.transaction::<_, ChangeError, _>(async |tx| {
            let order = lock_new(tx, &no).await?;
            if order.deadline <= crate::time::later(Utc::now(), EXTEND_MARGIN) {
                return Err(not_extendable(format!(
                    "its deadline {} is less than {EXTEND_MARGIN:?} away: it is being decided",
                    order.deadline.to_rfc3339()
                )));
            }
            if to <= order.deadline {
                return Err(not_extendable(format!(
                    "{} is not later than its deadline {}",
                    to.to_rfc3339(),
                    order.deadline.to_rfc3339()
                )));
            }
            Ok(move_deadline(
                tx,
                &order,
                to,
                DecisionOutcome::DeadlineExtended,
                "deadline extended",
            )
            .await?)
        })
        .await
    }
}

impl Closer {
    /// Marks a NEW order PAID by other means than its trades (store credit, a voucher, a
    /// gift card): audited (a `paid` decision naming `how`, actor `closer`) and announced
    /// (`order.paid`, naming no trade, reason `settled_otherwise`). Its open trades are
    /// closed at their gateways by a worker at once. Refused for an order already settled.
    #[tracing::instrument(skip(self), fields(out_trade_no = %out_trade_no))]
    pub async fn settle_otherwise(
        &self,
        out_trade_no: &str,
        how: &str,
    ) -> Result<Order, ChangeError> {
        let how = crate::text::shortened(how, 200);
        let mut conn = db::conn(&self.pool).await?;
        let no = out_trade_no.to_owned();
        let (order, pending) = conn
            .transaction::<_, ChangeError, _>(async |tx| {
                let order = lock_new(tx, &no).await?;
                let paid: Order = diesel::update(orders::table.find(order.id))
                    .set((
                        orders::status.eq(OrderStatus::Paid.as_str()),
                        orders::paid_at.eq(Utc::now()),
                        orders::updated_at.eq(Utc::now()),
                    ))
                    .returning(Order::as_returning())
                    .get_result(tx)
                    .await?;
                let detail = format!("settled by the shop otherwise: {how}");
                let decision_id = decisions::insert(
                    tx,
                    &NewDecision {
                        order_id: order.id,
                        attempt: 0,
                        outcome: DecisionOutcome::Paid,
                        gateway_answer: None,
                        detail: &detail,
                        actor: ACTOR,
                    },
                )
                .await?;
                let key = crate::events::ORDER_PAID;
                let event = crate::events::OrderEvent::about(
                    &paid,
                    None,
                    key,
                    format!("{key}:{decision_id}"),
                    OrderStatus::Paid,
                    None,
                    "settled_otherwise",
                );
                outbox::insert(
                    tx,
                    &outbox::NewOutboxRow {
                        kind: outbox::KIND_EVENT,
                        routing_key: key,
                        payload: &event.to_json(),
                    },
                )
                .await?;
                // The close of its open trades is due now, not at the deadline: the message
                // (and the order it is published for) carry this moment as their deadline.
                let now = Order {
                    deadline: Utc::now(),
                    ..paid.clone()
                };
                let message = CloseMessage::new(now.id, now.out_trade_no.clone(), now.deadline);
                let pending = outbox::insert_close_if_open_trades(tx, paid.id, &message)
                    .await?
                    .map(|outbox_id| PendingClose {
                        order: now,
                        outbox_id,
                    });
                Ok((paid, pending))
            })
            .await?;
        drop(conn);
        if let Some(pending) = pending {
            // The relay publishes it if this cannot (its outbox row stays until then).
            self.publish(&pending).await;
        }
        Ok(order)
    }
}

/// The answer for an order that is settled; `cancelled` is the order this cancel closed,
/// with its deadline before the cancel.
fn settled_as(status: OrderStatus, cancelled: Option<(&Order, DateTime<Utc>)>) -> Cancelled {
    match (status, cancelled) {
        (OrderStatus::Paid, _) => Cancelled::Paid,
        (OrderStatus::Closed, Some((order, qr_valid_until)))
            if order.close_reason.as_deref() == Some(CloseReason::NoTrade.as_str())
                && qr_valid_until > Utc::now() =>
        {
            Cancelled::ClosedBeforeScan { qr_valid_until }
        }
        (OrderStatus::Closed, _) => Cancelled::Closed,
        (OrderStatus::New, _) => Cancelled::Pending,
    }
}
