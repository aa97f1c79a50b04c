//! Payments after close, and their refunds.
//!
//! A payment the gateway took on an order we had closed (a QR code scanned after the
//! close, a bill row, a late notification) is recorded once as a `paid_after_close`
//! anomaly and announced. The policy ([`PaidAfterClose`]) then holds it for an operator or
//! requests its refund in the same transaction: a `refunds` row (status `requested`) and a
//! refund message in the outbox, due at once. The worker sends it (`alipay.trade.refund`
//! with `out_request_no` derived from the order, so no retry, redelivery or second request
//! can refund twice), records every attempt, retries transient failures through the delay
//! tiers with the retry steps, and on success marks it `succeeded` with an audit row and
//! the `order.refunded` event; a permanent refusal or the last step marks it `failed`,
//! announces `order.refund_failed` and parks the message. An operator asks again with
//! `reconcile anomalies --refund <order>`, which reopens a failed refund.

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;
use tracing::{info, warn};

use super::table::{self, RefundAction};
use super::{Decider, Mode, Outcome, Unavailable, attempt_column, write};
use crate::config::PaidAfterClose;
use crate::db::anomalies::AnomalyKind;
use crate::db::decisions::{self, DecisionOutcome, NewDecision};
use crate::db::refunds::{self, RefundProgress, RefundRow, RefundStatus};
use crate::db::{self, outbox};
use crate::decide::AttemptInfo;
use crate::events::{self, OrderEvent};
use crate::gateway::{GatewayMethod, RefundRequest, TradeRef};
use crate::message::CloseMessage;
use crate::money::format_minor;
use crate::order::{Order, OrderStatus};
use crate::relay;

/// What recording a payment after close did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterClose {
    /// The anomaly is new (false: recorded and announced before).
    pub new_anomaly: bool,
    /// What the policy did.
    pub policy: PolicyEffect,
}

/// What the paid-after-close policy did about one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyEffect {
    /// Held for an operator (the `hold` policy), or its refund was requested before.
    Nothing,
    /// Its refund was requested now.
    RefundRequested,
    /// Dry run under the `refund` policy: its refund would be requested.
    WouldRequestRefund,
}

/// What an operator's refund request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum RefundRequestResult {
    /// Dry run: this refund would be requested (or sent again).
    WouldRequest {
        /// The amount, in minor units.
        amount_minor: i64,
        /// The idempotency key.
        out_request_no: String,
    },
    /// Requested now (new, reopened after a failure, or sent again while requested).
    Requested {
        /// The amount, in minor units.
        amount_minor: i64,
        /// The idempotency key.
        out_request_no: String,
    },
    /// The refund succeeded before: nothing to do.
    AlreadyRefunded {
        /// The idempotency key.
        out_request_no: String,
    },
}

impl Decider {
    /// Records a payment on a CLOSED order (its anomaly and event, once however often it
    /// is reported: a finding, recorded even in a dry run) and, under the `refund` policy,
    /// requests its refund of `paid_minor` in the same transaction (a dry run only says it
    /// would).
    pub async fn paid_after_close(
        &self,
        order: &Order,
        paid_minor: i64,
        trade_no: Option<&str>,
        detail: &str,
        mode: Mode,
    ) -> Result<AfterClose, Unavailable> {
        let refund = self.paid_after_close == PaidAfterClose::Refund;
        let mut conn = db::conn(&self.pool).await?;
        let actor = self.actor.as_str();
        let done = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                let new_anomaly = write::record_anomaly(
                    tx,
                    order,
                    AnomalyKind::PaidAfterClose,
                    detail,
                    order.status(),
                    trade_no,
                )
                .await?;
                let policy = match (refund, mode) {
                    (false, _) => PolicyEffect::Nothing,
                    (true, Mode::DryRun) => PolicyEffect::WouldRequestRefund,
                    (true, Mode::Apply) => {
                        let why = "the paid_after_close policy is refund";
                        let (_, new) = request_in(tx, order, paid_minor, actor, why).await?;
                        if new {
                            PolicyEffect::RefundRequested
                        } else {
                            PolicyEffect::Nothing
                        }
                    }
                };
                Ok(AfterClose {
                    new_anomaly,
                    policy,
                })
            })
            .await?;
        if done.new_anomaly {
            self.metrics.anomaly(AnomalyKind::PaidAfterClose);
        }
        if done.policy == PolicyEffect::RefundRequested {
            self.metrics.refund(RefundProgress::Requested);
        }
        Ok(done)
    }

    /// An operator's refund of a CLOSED order that the gateway reports paid: requested
    /// (a failed one reopened, a requested one sent again) unless it succeeded before.
    /// The caller has asked the gateway: `paid_minor` is what it says was paid.
    pub async fn request_refund(
        &self,
        order: &Order,
        paid_minor: i64,
        dry_run: bool,
    ) -> Result<RefundRequestResult, Unavailable> {
        let out_request_no = refunds::out_request_no(order.id);
        let mut conn = db::conn(&self.pool).await?;
        if let Some(row) = refunds::for_order(&mut conn, order.id).await?
            && row.status() == RefundStatus::Succeeded
        {
            return Ok(RefundRequestResult::AlreadyRefunded {
                out_request_no: row.out_request_no,
            });
        }
        if dry_run {
            return Ok(RefundRequestResult::WouldRequest {
                amount_minor: paid_minor,
                out_request_no,
            });
        }
        let actor = self.actor.as_str();
        let amount_minor = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                let (row, new) =
                    request_in(tx, order, paid_minor, actor, "an operator asked").await?;
                if !new {
                    // Failed before: reopened; requested: sent again (the same request).
                    refunds::reopen(tx, order.id, actor).await?;
                    enqueue(
                        tx,
                        order,
                        row.amount_minor,
                        actor,
                        "an operator asked again",
                    )
                    .await?;
                }
                Ok(row.amount_minor)
            })
            .await?;
        self.metrics.refund(RefundProgress::Requested);
        Ok(RefundRequestResult::Requested {
            amount_minor,
            out_request_no,
        })
    }

    /// Sends an order's requested refund to its gateway (the worker, on a refund
    /// message) and records the answer.
    /// A dry run says what would be sent (a failed refund too: a replay reopens it).
    #[tracing::instrument(name = "refund", skip_all, fields(order_id, out_trade_no = expected_out_trade_no, attempt = attempt.number))]
    pub async fn refund(
        &self,
        order_id: i64,
        expected_out_trade_no: &str,
        attempt: AttemptInfo,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        let outcome = self
            .refund_inner(order_id, expected_out_trade_no, attempt, mode)
            .await;
        self.observed(outcome)
    }

    async fn refund_inner(
        &self,
        order_id: i64,
        expected_out_trade_no: &str,
        attempt: AttemptInfo,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        let Some(order) = self.reads.submit(order_id).await? else {
            return Ok(Outcome::Missing);
        };
        if order.out_trade_no != expected_out_trade_no {
            let detail = format!(
                "message names out_trade_no {expected_out_trade_no:?} but order {order_id} is {:?}",
                order.out_trade_no
            );
            return self
                .park(&order, attempt, "order_mismatch", &detail, None, None)
                .await;
        }
        let row = {
            let mut conn = db::conn(&self.pool).await?;
            refunds::for_order(&mut conn, order_id).await?
        };
        let Some(row) = row else {
            warn!("a refund message for an order with no requested refund; nothing sent");
            return Ok(Outcome::Missing);
        };
        if mode == Mode::DryRun {
            return Ok(match row.status() {
                RefundStatus::Succeeded => Outcome::Settled(order.status()),
                _ => Outcome::WouldRefund {
                    amount_minor: row.amount_minor,
                },
            });
        }
        if row.status() != RefundStatus::Requested {
            info!(
                status = row.status().as_str(),
                "the refund is settled already"
            );
            return Ok(Outcome::Settled(order.status()));
        }
        let Some(gateway) = self.gateways.get(&order.channel) else {
            let detail = format!("no gateway is configured for channel {:?}", order.channel);
            return self
                .refund_failed(&order, &row, attempt, "unknown_channel", &detail)
                .await;
        };
        let request = RefundRequest {
            trade: TradeRef::of(&order),
            out_request_no: &row.out_request_no,
            amount_minor: row.amount_minor,
            total_minor: order.amount_minor,
            currency: &order.currency,
        };
        let answer = self
            .timed(
                &order.channel,
                GatewayMethod::Refund,
                gateway.refund(&request),
            )
            .await;
        match table::after_refund(
            answer.as_ref(),
            attempt.number,
            self.retry_for(&order.channel),
        ) {
            RefundAction::Succeeded => {
                let raw = answer.map(|a| (a.raw, a.fund_change)).unwrap_or_default();
                self.refund_succeeded(&order, &row, attempt, &raw.0, raw.1)
                    .await
            }
            RefundAction::Retry {
                delay,
                attempt: next,
                code,
                detail,
            } => {
                let error = format!("{code}: {detail}");
                let recorded = self
                    .record_refund(
                        &order,
                        &row,
                        attempt,
                        RefundStatus::Requested,
                        &error,
                        None,
                        None,
                    )
                    .await?;
                if recorded.is_none() {
                    // Settled meanwhile by another worker: no retry.
                    return Ok(Outcome::Settled(order.status()));
                }
                self.metrics.refund(RefundProgress::Retried);
                Ok(Outcome::Retry {
                    delay,
                    not_before: crate::time::later(Utc::now(), delay),
                    attempt: next,
                    code,
                    detail,
                })
            }
            RefundAction::Fail { code, detail } => {
                self.refund_failed(&order, &row, attempt, &code, &detail)
                    .await
            }
        }
    }

    /// Moves a failed refund back to `requested` (an operator replays its parked
    /// message, or asks again); returns whether it moved.
    pub async fn reopen_refund(&self, order_id: i64) -> Result<bool, Unavailable> {
        let mut conn = db::conn(&self.pool).await?;
        Ok(refunds::reopen(&mut conn, order_id, &self.actor).await?)
    }

    async fn refund_succeeded(
        &self,
        order: &Order,
        row: &RefundRow,
        attempt: AttemptInfo,
        raw: &str,
        fund_change: bool,
    ) -> Result<Outcome, Unavailable> {
        let detail = format!(
            "refunded {} ({}, request {})",
            format_minor(row.amount_minor),
            if fund_change {
                "money moved now"
            } else {
                "made by an earlier request"
            },
            row.out_request_no
        );
        let event = (events::ORDER_REFUNDED, detail.as_str());
        match self
            .record_refund(
                order,
                row,
                attempt,
                RefundStatus::Succeeded,
                &detail,
                Some(raw),
                Some(event),
            )
            .await?
        {
            Some(decision_id) => {
                info!(decision_id, amount = %format_minor(row.amount_minor), "refunded");
                self.metrics.refund(RefundProgress::Succeeded);
                Ok(Outcome::Refunded { decision_id })
            }
            None => Ok(Outcome::Settled(order.status())),
        }
    }

    async fn refund_failed(
        &self,
        order: &Order,
        row: &RefundRow,
        attempt: AttemptInfo,
        code: &str,
        detail: &str,
    ) -> Result<Outcome, Unavailable> {
        let error = format!("{code}: {detail}");
        let event = (events::ORDER_REFUND_FAILED, error.as_str());
        let recorded = self
            .record_refund(
                order,
                row,
                attempt,
                RefundStatus::Failed,
                &error,
                None,
                Some(event),
            )
            .await?;
        if recorded.is_none() {
            // Another worker settled the refund meanwhile (a duplicate message): its
            // outcome stands, and there is nothing to park.
            return Ok(Outcome::Settled(order.status()));
        }
        warn!(code, detail, "the refund failed; an operator must look");
        self.metrics.refund(RefundProgress::Failed);
        Ok(Outcome::Park {
            code: "refund_failed".into(),
            detail: error,
        })
    }

    /// Records one refund attempt: the refund row, an audit row and, when it settles the
    /// refund, its event, in one transaction. Returns the audit row's id, or None when
    /// another worker settled the refund first.
    #[allow(clippy::too_many_arguments)]
    async fn record_refund(
        &self,
        order: &Order,
        row: &RefundRow,
        attempt: AttemptInfo,
        status: RefundStatus,
        detail: &str,
        answer: Option<&str>,
        event: Option<(&str, &str)>,
    ) -> Result<Option<i64>, Unavailable> {
        let outcome = match status {
            RefundStatus::Requested => DecisionOutcome::RefundRetry,
            RefundStatus::Succeeded => DecisionOutcome::Refunded,
            RefundStatus::Failed => DecisionOutcome::RefundFailed,
        };
        let error = (status != RefundStatus::Succeeded).then_some(detail);
        let actor = self.actor.as_str();
        let mut conn = db::conn(&self.pool).await?;
        let id = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                if !refunds::record_attempt(tx, row.order_id, status, error, answer).await? {
                    return Ok(None);
                }
                let id = decisions::insert(
                    tx,
                    &NewDecision {
                        order_id: order.id,
                        attempt: attempt_column(attempt),
                        outcome,
                        gateway_answer: answer,
                        detail,
                        actor,
                    },
                )
                .await?;
                if let Some((key, reason)) = event {
                    let body = OrderEvent::about(
                        order,
                        key,
                        format!("{key}:{id}"),
                        order.status(),
                        order.gateway_trade_no.as_deref(),
                        reason,
                    );
                    relay::enqueue_event(tx, key, &body.to_json()).await?;
                }
                Ok(Some(id))
            })
            .await?;
        Ok(id)
    }
}

/// Requests the refund of an order inside the caller's transaction: a new one gets its
/// row, an audit row and its message; one requested before is returned as it stands.
/// Returns the row and whether it is new.
async fn request_in(
    tx: &mut AsyncPgConnection,
    order: &Order,
    amount_minor: i64,
    actor: &str,
    why: &str,
) -> diesel::QueryResult<(RefundRow, bool)> {
    let (row, new) =
        refunds::request(tx, order.id, &order.out_trade_no, amount_minor, actor).await?;
    if new {
        enqueue(tx, order, amount_minor, actor, why).await?;
    }
    Ok((row, new))
}

/// The audit row of a refund request and its message, inside the caller's transaction.
async fn enqueue(
    tx: &mut AsyncPgConnection,
    order: &Order,
    amount_minor: i64,
    actor: &str,
    why: &str,
) -> diesel::QueryResult<()> {
    let detail = format!(
        "refund of {} requested ({why}; request {})",
        format_minor(amount_minor),
        refunds::out_request_no(order.id)
    );
    decisions::insert(
        tx,
        &NewDecision {
            order_id: order.id,
            attempt: 0,
            outcome: DecisionOutcome::RefundRequested,
            gateway_answer: None,
            detail: &detail,
            actor,
        },
    )
    .await?;
    let message = CloseMessage::refund(order.id, order.out_trade_no.clone(), Utc::now());
    outbox::insert_close(tx, &message).await?;
    Ok(())
}

/// An order that is not CLOSED cannot be paid after close.
pub fn refundable(order: &Order) -> Result<(), String> {
    match order.status() {
        OrderStatus::Closed => Ok(()),
        other => Err(format!(
            "order {} is {other}: only a CLOSED order that the gateway reports paid is refunded",
            order.out_trade_no
        )),
    }
}
