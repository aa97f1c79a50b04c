//! Sending a requested refund (the worker, on a refund message; the replay of a parked
//! one): the gateway is asked about the trade and the refund planned from its answer
//! ([`Decider::plan_refund`], the code every dry run uses too), what is about to be sent is
//! recorded, then sent; every attempt gets an audit row, a transient failure a retry
//! through the delay tiers, a permanent one (or the last retry step) the `failed` status,
//! `order.refund_failed` and the parking queue; success the `succeeded` status and
//! `order.refunded`. Requesting a refund is in `refund.rs`.

use chrono::Utc;
use diesel_async::AsyncConnection;
use tracing::{info, warn};

use super::refund::PlanFailure;
use super::refund_plan::PlannedRefund;
use super::retry_or_park::{Failure, NextStep, retry_or_park};
use super::table::Action;
use super::{AttemptInfo, Decider, Mode, Outcome, Unavailable, attempt_column};
use crate::relay;
use order_closer_core::db;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision};
use order_closer_core::db::refunds::{self, Prepared, RefundProgress, RefundRow, RefundStatus};
use order_closer_core::db::trades;
use order_closer_core::events::{self, OrderEvent};
use order_closer_core::money::format_minor;
use order_closer_core::order::Order;
use order_closer_core::trade::Trade;
use order_closer_gateway::{GatewayError, GatewayMethod, RefundAnswer, RefundRequest, TradeRef};

impl Decider {
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
        // The refund and its trade (a foreign key: a refund always has one), on one
        // connection.
        let found = {
            let mut conn = db::conn(&self.pool).await?;
            match refunds::for_order(&mut conn, order_id).await? {
                Some(row) => trades::find(&mut conn, row.trade_id)
                    .await?
                    .map(|trade| (row, trade)),
                None => None,
            }
        };
        let Some((row, trade)) = found else {
            warn!("a refund message for an order with no requested refund; nothing sent");
            return Ok(Outcome::Missing);
        };
        let settled = match mode {
            Mode::DryRun => row.status() == RefundStatus::Succeeded,
            Mode::Apply => row.status() != RefundStatus::Requested,
        };
        if settled {
            info!(
                status = row.status().as_str(),
                "the refund is settled already"
            );
            return Ok(Outcome::Settled(order.status()));
        }
        let planned = match self.plan_refund(&trade).await? {
            Ok(planned) => planned,
            Err(failure) => {
                let error = failure.as_gateway_error(&trade.channel);
                return match mode {
                    Mode::DryRun => Ok(Outcome::WouldDo(
                        match retry_or_park(
                            Failure::from(&error),
                            attempt.number,
                            self.retry_for(&trade.channel),
                        ) {
                            NextStep::Retry { code, detail, .. } => Action::Retry { code, detail },
                            NextStep::Park { code, detail } => Action::Park { code, detail },
                        },
                    )),
                    Mode::Apply => {
                        self.refund_not_made(&order, &trade, &row, attempt, &error)
                            .await
                    }
                };
            }
        };
        if mode == Mode::DryRun {
            return Ok(Outcome::WouldRefund {
                amount_minor: planned.amount_minor,
            });
        }
        let prepared = {
            let mut conn = db::conn(&self.pool).await?;
            refunds::prepare_send(
                &mut conn,
                trade.id,
                planned.amount_minor,
                &planned.out_request_no,
            )
            .await?
        };
        match prepared {
            Prepared::Ready => {}
            Prepared::Settled => return Ok(Outcome::Settled(order.status())),
            Prepared::NumberTaken => {
                let detail = format!(
                    "another order's refund has the number {} already: not sent",
                    planned.out_request_no
                );
                return self
                    .refund_failed(
                        &order,
                        &trade,
                        &row,
                        attempt,
                        "refund_number_taken",
                        &detail,
                    )
                    .await;
            }
        }
        let Some(gateway) = self.gateways.get(&trade.channel) else {
            // Asked a moment ago: the configuration cannot have changed.
            let error = PlanFailure::NoGateway.as_gateway_error(&trade.channel);
            return self
                .refund_not_made(&order, &trade, &row, attempt, &error)
                .await;
        };
        let request = RefundRequest {
            trade: TradeRef::of(&trade),
            out_request_no: &planned.out_request_no,
            amount_minor: planned.amount_minor,
            // The whole payment is given back.
            total_minor: planned.amount_minor,
            currency: &order.currency,
        };
        let answer = self
            .timed(
                &trade.channel,
                GatewayMethod::Refund,
                gateway.refund(&request),
            )
            .await;
        match answer {
            Ok(answer) => {
                self.refund_succeeded(&order, &trade, &row, attempt, &planned, answer)
                    .await
            }
            Err(error) => {
                self.refund_not_made(&order, &trade, &row, attempt, &error)
                    .await
            }
        }
    }

    /// Moves an order's failed refund back to `requested` (an operator replays its
    /// parked message, or asks again); returns whether it moved.
    pub async fn reopen_refund(&self, order_id: i64) -> Result<bool, Unavailable> {
        let mut conn = db::conn(&self.pool).await?;
        let Some(row) = refunds::for_order(&mut conn, order_id).await? else {
            return Ok(false);
        };
        Ok(refunds::reopen(&mut conn, row.trade_id, &self.actor).await?)
    }

    /// A refund not made on this attempt: retried after a transient failure, failed (and
    /// parked) after a permanent one or the last retry step.
    async fn refund_not_made(
        &self,
        order: &Order,
        trade: &Trade,
        row: &RefundRow,
        attempt: AttemptInfo,
        error: &GatewayError,
    ) -> Result<Outcome, Unavailable> {
        match retry_or_park(
            Failure::from(error),
            attempt.number,
            self.retry_for(&trade.channel),
        ) {
            NextStep::Retry {
                delay,
                attempt: next,
                code,
                detail,
            } => {
                let error = format!("{code}: {detail}");
                let recorded = self
                    .record_refund(
                        order,
                        trade,
                        row,
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
                    not_before: order_closer_core::time::later(Utc::now(), delay),
                    attempt: next,
                    code,
                    detail,
                })
            }
            NextStep::Park { code, detail } => {
                self.refund_failed(order, trade, row, attempt, &code, &detail)
                    .await
            }
        }
    }

    async fn refund_succeeded(
        &self,
        order: &Order,
        trade: &Trade,
        row: &RefundRow,
        attempt: AttemptInfo,
        planned: &PlannedRefund,
        answer: RefundAnswer,
    ) -> Result<Outcome, Unavailable> {
        let detail = format!(
            "refunded {} ({})",
            planned.describe(),
            if answer.fund_change {
                "money moved now"
            } else {
                "made by an earlier request"
            },
        );
        let event = (events::ORDER_REFUNDED, detail.as_str());
        match self
            .record_refund(
                order,
                trade,
                row,
                attempt,
                RefundStatus::Succeeded,
                &detail,
                Some(&answer.raw),
                Some(event),
            )
            .await?
        {
            Some(decision_id) => {
                info!(decision_id, amount = %format_minor(planned.amount_minor), "refunded");
                self.metrics.refund(RefundProgress::Succeeded);
                Ok(Outcome::Refunded { decision_id })
            }
            None => Ok(Outcome::Settled(order.status())),
        }
    }

    async fn refund_failed(
        &self,
        order: &Order,
        trade: &Trade,
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
                trade,
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
        trade: &Trade,
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
                if !refunds::record_attempt(tx, row.trade_id, status, error, answer).await? {
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
                    let event_id = format!("{key}:{id}");
                    let body = OrderEvent::about(
                        order,
                        Some(trade),
                        key,
                        event_id,
                        order.status(),
                        trade.gateway_trade_no.as_deref(),
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
