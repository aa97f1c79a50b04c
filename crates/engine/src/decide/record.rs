//! Recording what a decision found: the guarded state change of a PAID or CLOSED order
//! (grouped with other tasks' writes, `write.rs`) with its audit row, event and anomaly,
//! and the audit row of a decision that leaves the order NEW (a retry, a park), with
//! when its schedule next looks at it. Which of them a failure leads to is
//! [`retry_or_park`]'s to say; this file only writes it down.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use tracing::{info, warn};

use super::retry_or_park::{Failure, NextStep, retry_or_park};
use super::table::{self, CloseReason};
use super::write::{self, DecisionWrite};
use super::{AttemptInfo, Cause, Decider, Outcome, Pending, Unavailable, attempt_column};
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision, Recheck};
use order_closer_core::db::{self, DbError};
use order_closer_core::order::{Order, OrderStatus};

impl Decider {
    /// Retries or parks an order after a failed attempt, as [`retry_or_park`] says with
    /// the retry steps of its channel: records the retry with the moment it is due, or
    /// parks the order (under [`Pending::LeaveParked`], records neither).
    pub(super) async fn after_failure(
        &self,
        order: Order,
        attempt: AttemptInfo,
        failure: Failure,
        answer: Option<String>,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        match retry_or_park(failure, attempt.number, self.retry_for(&order.channel)) {
            NextStep::Retry {
                delay,
                attempt: next,
                code,
                detail,
            } => {
                let not_before = order_closer_core::time::later(Utc::now(), delay);
                if pending == Pending::Record {
                    self.audit_only(
                        &order,
                        attempt,
                        DecisionOutcome::Retry,
                        &format!("{code}: {detail}"),
                        answer.as_deref(),
                        Some(Recheck::At(not_before)),
                    )
                    .await;
                }
                Ok(Outcome::Retry {
                    delay,
                    not_before,
                    attempt: next,
                    code,
                    detail,
                })
            }
            NextStep::Park { code, detail } => {
                self.park_pending(
                    &order,
                    attempt,
                    &code,
                    &detail,
                    answer.as_deref(),
                    Some(Recheck::Parked),
                    pending,
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_paid(
        &self,
        order: Order,
        attempt: AttemptInfo,
        trade_no: String,
        paid_at: Option<DateTime<Utc>>,
        mismatch: Option<table::AmountMismatch>,
        answer: Option<String>,
        cause: Cause,
    ) -> Result<Outcome, Unavailable> {
        let detail = match mismatch {
            None => cause.detail().to_owned(),
            Some(m) => format!(
                "paid at the gateway with amount {} but the order says {}",
                order_closer_core::money::format_minor(m.paid),
                order_closer_core::money::format_minor(m.expected)
            ),
        };
        let anomaly = mismatch.map(|_| (AnomalyKind::AmountMismatch, detail.clone()));
        let has_anomaly = anomaly.is_some();
        let outcome = self
            .commit(DecisionWrite {
                order,
                status: OrderStatus::Paid,
                close_reason: None,
                trade_no: Some(trade_no),
                paid_at: Some(paid_at.unwrap_or_else(Utc::now)),
                attempt: attempt_column(attempt),
                answer,
                detail,
                reason: "paid_at_gateway",
                anomaly,
            })
            .await;
        if has_anomaly && matches!(outcome, Ok(Outcome::Decided { .. })) {
            self.metrics.anomaly(AnomalyKind::AmountMismatch);
        }
        outcome
    }

    pub(super) async fn apply_closed(
        &self,
        order: Order,
        attempt: AttemptInfo,
        reason: CloseReason,
        answer: Option<String>,
    ) -> Result<Outcome, Unavailable> {
        self.commit(DecisionWrite {
            order,
            status: OrderStatus::Closed,
            close_reason: Some(reason.as_str()),
            trade_no: None,
            paid_at: None,
            attempt: attempt_column(attempt),
            answer,
            detail: reason.as_str().to_owned(),
            reason: reason.as_str(),
            anomaly: None,
        })
        .await
    }

    /// Closes an order whose trade was paid and then given back at the gateway, with its
    /// `refunded_before_deadline` anomaly and event in the same transaction.
    pub(super) async fn apply_closed_refunded(
        &self,
        order: Order,
        attempt: AttemptInfo,
        trade_no: String,
        paid_minor: i64,
        answer: Option<String>,
    ) -> Result<Outcome, Unavailable> {
        let reason = CloseReason::RefundedAtGateway;
        let detail = format!(
            "the gateway reports trade {trade_no} paid {} and given back before the deadline \
             (by hand in the merchant portal, or by its risk control): closed, no goods for \
             money that went back; check whether any of it was kept",
            order_closer_core::money::format_minor(paid_minor)
        );
        let outcome = self
            .commit(DecisionWrite {
                order,
                status: OrderStatus::Closed,
                close_reason: Some(reason.as_str()),
                trade_no: Some(trade_no),
                paid_at: None,
                attempt: attempt_column(attempt),
                answer,
                detail: detail.clone(),
                reason: reason.as_str(),
                anomaly: Some((AnomalyKind::RefundedBeforeDeadline, detail)),
            })
            .await;
        if matches!(outcome, Ok(Outcome::Decided { .. })) {
            self.metrics.anomaly(AnomalyKind::RefundedBeforeDeadline);
        }
        outcome
    }

    /// Writes a decision (grouped with other tasks' decisions) and turns the committed, or
    /// lost, guarded update into an outcome.
    pub(super) async fn commit(&self, write: DecisionWrite) -> Result<Outcome, Unavailable> {
        let status = write.status;
        let order_id = write.order.id;
        let deadline = write.order.deadline;
        match self.writes.submit(write).await? {
            Some(decision_id) => {
                let lateness = (Utc::now() - deadline).to_std().unwrap_or_default();
                info!(%status, decision_id, lateness_ms = lateness.as_millis() as u64, "decided");
                Ok(Outcome::Decided {
                    status,
                    decision_id,
                    lateness,
                })
            }
            None => {
                let now = self.reads.submit(order_id).await?.map(|o| o.status());
                let theirs = now.unwrap_or(OrderStatus::New);
                info!(ours = %status, theirs = %theirs, "another actor decided this order first");
                Ok(Outcome::LostRace(theirs))
            }
        }
    }

    /// Records a park; `recheck` is `Parked` when the order itself waits for an operator
    /// (None when only the message is wrong).
    pub(super) async fn park(
        &self,
        order: &Order,
        attempt: AttemptInfo,
        code: &str,
        detail: &str,
        answer: Option<&str>,
        recheck: Option<Recheck>,
    ) -> Result<Outcome, Unavailable> {
        self.park_pending(
            order,
            attempt,
            code,
            detail,
            answer,
            recheck,
            Pending::Record,
        )
        .await
    }

    /// [`Self::park`], except under [`Pending::LeaveParked`], where the order is parked
    /// already: nothing is recorded a second time.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn park_pending(
        &self,
        order: &Order,
        attempt: AttemptInfo,
        code: &str,
        detail: &str,
        answer: Option<&str>,
        recheck: Option<Recheck>,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        if pending == Pending::LeaveParked {
            info!(code, detail, "still parked: left for the operator");
            return Ok(Outcome::Park {
                code: code.to_owned(),
                detail: detail.to_owned(),
            });
        }
        warn!(code, detail, "parking the order for an operator");
        self.audit_only(
            order,
            attempt,
            DecisionOutcome::Parked,
            &format!("{code}: {detail}"),
            answer,
            recheck,
        )
        .await;
        Ok(Outcome::Park {
            code: code.to_owned(),
            detail: detail.to_owned(),
        })
    }

    /// Records a decision that changes no state (retry, park), with when the order's
    /// schedule next looks at it. A failure to record is logged, not fatal: the message
    /// itself still goes where it must (and the janitor, finding the order overdue, only
    /// re-drives it).
    pub(super) async fn audit_only(
        &self,
        order: &Order,
        attempt: AttemptInfo,
        outcome: DecisionOutcome,
        detail: &str,
        answer: Option<&str>,
        recheck: Option<Recheck>,
    ) {
        let result = async {
            let mut conn = db::conn(&self.pool).await?;
            let row = NewDecision {
                order_id: order.id,
                attempt: attempt_column(attempt),
                outcome,
                gateway_answer: answer,
                detail,
                actor: &self.actor,
            };
            match recheck {
                Some(recheck) => decisions::insert_pending(&mut conn, &row, recheck).await,
                None => decisions::insert(&mut conn, &row).await,
            }
            .map_err(DbError::from)
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, %outcome, "could not record the decision");
        }
    }

    /// Records an anomaly about an order and announces it, in one transaction; returns
    /// whether it was new (each anomaly is announced once).
    pub async fn record_anomaly(
        &self,
        order: &Order,
        kind: AnomalyKind,
        detail: &str,
    ) -> Result<bool, Unavailable> {
        let mut conn = db::conn(&self.pool).await?;
        let new = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                write::record_anomaly(
                    tx,
                    order,
                    kind,
                    detail,
                    order.status(),
                    order.gateway_trade_no.as_deref(),
                )
                .await
            })
            .await?;
        if new {
            self.metrics.anomaly(kind);
        }
        Ok(new)
    }
}
