//! Payments after close, and requesting their refunds (sending them is in
//! `refund_send.rs`).
//!
//! A payment the gateway took on an order we had closed (a QR code scanned after the
//! close, a bill row, a late notification) is recorded once as a `paid_after_close`
//! anomaly and announced. The policy ([`PaidAfterClose`]) then holds it for an operator or
//! requests its refund in the same transaction: a `refunds` row (status `requested`, no
//! amount yet) and a refund message in the outbox, due at once. What reported the
//! payment is not believed about its amount: the worker asks the gateway (a signed query)
//! when it sends the refund, and sends what the gateway says was paid, under a number
//! derived from the gateway's trade number ([`super::refund_plan`]), recorded before the
//! call, so that no retry, redelivery, second request or other deployment on the same
//! merchant account can refund twice. It records every attempt, retries transient
//! failures through the delay tiers with the retry steps, and on success marks the refund
//! `succeeded` with an audit row and the `order.refunded` event; a permanent refusal or
//! the last step marks it `failed`, announces `order.refund_failed` and parks the message.
//! An operator asks again with `reconcile anomalies --refund <order>`, which reopens a
//! failed refund; its dry run plans through the same code as the send.

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;

use super::refund_plan::{self, NotSendable, PlannedRefund};
use super::{Decider, Mode, Unavailable, write};
use order_closer_core::config::PaidAfterClose;
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision};
use order_closer_core::db::refunds::{self, RefundProgress, RefundRow, RefundStatus};
use order_closer_core::db::trades::{self, TradeMove};
use order_closer_core::db::{self, outbox};
use order_closer_core::message::CloseMessage;
use order_closer_core::money::format_minor;
use order_closer_core::order::{CloseReason, Order};
use order_closer_core::trade::Trade;
use order_closer_gateway::GatewayError;

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

/// What an operator's refund request did. The amount and number are what the worker
/// sends as the gateway's answer stands now ([`refund_plan::plan`]; the worker asks
/// again when it sends).
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
    /// requests its refund in the same transaction (a dry run only says it would).
    /// `reported_minor` is what the report says was paid: kept in the audit trail, never
    /// the refund's amount (the worker asks the gateway when it sends the refund).
    pub async fn paid_after_close(
        &self,
        order: &Order,
        trade: &Trade,
        reported_minor: i64,
        trade_no: Option<&str>,
        detail: &str,
        mode: Mode,
    ) -> Result<AfterClose, Unavailable> {
        // The order was closed because this very payment had been given back before the
        // deadline (a late resend of its notification): its `refunded_before_deadline`
        // anomaly already says all there is, and there is nothing left to refund.
        if order.close_reason.as_deref() == Some(CloseReason::RefundedAtGateway.as_str())
            && trade_no.is_some()
            && trade_no == order.gateway_trade_no.as_deref()
        {
            return Ok(AfterClose {
                new_anomaly: false,
                policy: PolicyEffect::Nothing,
            });
        }
        let refund = self.paid_after_close == PaidAfterClose::Refund;
        let mut conn = db::conn(&self.pool).await?;
        let actor = self.actor.as_str();
        let why = format!(
            "the paid_after_close policy is refund; reported paid {}",
            format_minor(reported_minor)
        );
        let done = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                // The trade is paid, whatever the order says: `closed -> paid`.
                if let Some(gateway_trade_no) = trade_no {
                    let paid = TradeMove::Paid {
                        gateway_trade_no: gateway_trade_no.to_owned(),
                        paid_minor: reported_minor,
                        paid_at: None,
                    };
                    trades::apply_moves(tx, &[(trade.id, paid)]).await?;
                }
                let new_anomaly = write::record_anomaly(
                    tx,
                    order,
                    Some(trade),
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
                        let (_, new) = request_in(tx, order, trade, actor, &why).await?;
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

    /// Asks the gateway about the order's trade and decides what its refund sends now
    /// ([`refund_plan::plan`], given what its refund row says was sent before): the one
    /// path behind the worker's send and every dry run.
    ///
    /// The row is read after the gateway answered, never before: what is about to be sent
    /// is recorded before it is sent ([`refunds::prepare_send`]), so an answer showing a
    /// refund made by another worker's send of the same request (a message delivered
    /// twice) always comes with that send's record, and the same request is confirmed
    /// instead of the refund being taken for one that is not ours.
    pub async fn plan_refund(
        &self,
        trade: &Trade,
    ) -> Result<Result<PlannedRefund, PlanFailure>, Unavailable> {
        let answer = match self.query_gateway(trade).await {
            None => return Ok(Err(PlanFailure::NoGateway)),
            Some(Err(e)) => return Ok(Err(PlanFailure::Query(e))),
            Some(Ok(answer)) => answer,
        };
        let row = {
            let mut conn = db::conn(&self.pool).await?;
            refunds::for_trade(&mut conn, trade.id).await?
        };
        Ok(
            refund_plan::plan(&answer.state, row.as_ref().and_then(RefundRow::sent))
                .map_err(PlanFailure::NotSendable),
        )
    }

    /// An operator's refund of a CLOSED order: requested (a failed one reopened, a
    /// requested one sent again) unless it succeeded before. The caller has planned it
    /// ([`Decider::plan_refund`]); the worker plans again when it sends it.
    pub async fn request_refund(
        &self,
        order: &Order,
        trade: &Trade,
        planned: &PlannedRefund,
    ) -> Result<RefundRequestResult, Unavailable> {
        let mut conn = db::conn(&self.pool).await?;
        let actor = self.actor.as_str();
        let why = format!(
            "an operator asked; the gateway's answer now makes it {}",
            planned.describe()
        );
        let done = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                let (row, new) = request_in(tx, order, trade, actor, &why).await?;
                if !new {
                    if row.status() == RefundStatus::Succeeded {
                        return Ok(RefundRequestResult::AlreadyRefunded {
                            out_request_no: row.out_request_no.unwrap_or_default(),
                        });
                    }
                    // Failed before: reopened; requested: sent again (the same request).
                    refunds::reopen(tx, trade.id, actor).await?;
                    enqueue(tx, order, actor, &format!("{why}; asked again")).await?;
                }
                Ok(RefundRequestResult::Requested {
                    amount_minor: planned.amount_minor,
                    out_request_no: planned.out_request_no.clone(),
                })
            })
            .await?;
        if matches!(done, RefundRequestResult::Requested { .. }) {
            self.metrics.refund(RefundProgress::Requested);
        }
        Ok(done)
    }
}

/// Why a refund could not be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanFailure {
    /// No gateway serves the order's channel.
    NoGateway,
    /// The gateway could not be asked (or its answer was not believed).
    Query(GatewayError),
    /// The gateway's answer leaves nothing to send.
    NotSendable(NotSendable),
}

impl PlanFailure {
    /// As a gateway failure, for the refund's retry rules.
    pub fn as_gateway_error(&self, channel: &str) -> GatewayError {
        match self {
            Self::NoGateway => GatewayError::permanent(
                "unknown_channel",
                format!("no gateway is configured for channel {channel:?}"),
            ),
            Self::Query(error) => error.clone(),
            Self::NotSendable(why) => why.as_gateway_error(),
        }
    }
}

/// Requests the refund of a trade's payment inside the caller's transaction: a new one gets its
/// row, an audit row and its message; one requested before is returned as it stands.
/// Returns the row and whether it is new.
pub(super) async fn request_in(
    tx: &mut AsyncPgConnection,
    order: &Order,
    trade: &Trade,
    actor: &str,
    why: &str,
) -> diesel::QueryResult<(RefundRow, bool)> {
    let (row, new) = refunds::request(tx, order.id, trade.id, &trade.out_trade_no, actor).await?;
    if new {
        enqueue(tx, order, actor, why).await?;
    }
    Ok((row, new))
}

/// The audit row of a refund request and its message, inside the caller's transaction.
async fn enqueue(
    tx: &mut AsyncPgConnection,
    order: &Order,
    actor: &str,
    why: &str,
) -> diesel::QueryResult<()> {
    let detail = format!(
        "refund requested ({why}); the worker sends what the gateway reports paid when it sends it"
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
