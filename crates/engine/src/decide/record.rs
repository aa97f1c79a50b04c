//! Recording what a decision found: the guarded state change of a PAID or CLOSED order
//! (grouped with other tasks' writes, `write.rs`) with its audit row, event and anomaly,
//! and the audit row of a decision that leaves the order NEW (a retry, a park), with
//! when its schedule next looks at it. Which of them a failure leads to is
//! [`retry_or_park`]'s to say; this file only writes it down.

use chrono::Utc;
use diesel_async::AsyncConnection;
use tracing::{info, warn};

use super::retry_or_park::{Failure, NextStep, retry_or_park};
use super::write::{self, DecisionWrite};
use super::{AttemptInfo, Decider, Outcome, Pending, Unavailable, attempt_column};
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision, Recheck};
use order_closer_core::db::{self, DbError};
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::Trade;

/// The retry code of a close that found a trade added while the order was decided.
pub const TRADE_ADDED: &str = "trade_added";

impl Decider {
    /// Retries or parks an order after a failed attempt, as [`retry_or_park`] says with
    /// the retry steps of the failing trade's channel (the common ones when none): records
    /// the retry with the moment it is due, or parks the order (under
    /// [`Pending::LeaveParked`], records neither).
    pub(super) async fn after_failure(
        &self,
        order: Order,
        channel: Option<&str>,
        attempt: AttemptInfo,
        failure: Failure,
        answer: Option<String>,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        let channel = channel.map(str::to_owned);
        let steps = match channel.as_deref() {
            Some(channel) => self.retry_for(channel),
            None => &self.retry,
        };
        match retry_or_park(failure, attempt.number, steps) {
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

    /// Writes a decision (grouped with other tasks' decisions) and turns the committed, or
    /// lost, guarded update into an outcome.
    pub(super) async fn commit(
        &self,
        write: DecisionWrite,
        attempt: AttemptInfo,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        let status = write.status;
        let order_id = write.order.id;
        let deadline = write.order.deadline;
        let order = write.order.clone();
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
                let now = self.reads.submit(order_id).await?;
                match now.as_ref().map(Order::status) {
                    // Still NEW: the close found a trade open that the decision did not
                    // know (added meanwhile). It is decided again, that trade with it.
                    Some(OrderStatus::New) => {
                        info!("a trade was added while the order was decided; deciding again");
                        let failure = Failure::transient(
                            TRADE_ADDED,
                            "a trade was added while the order was decided: decided again, that trade with it",
                        );
                        let order = now.unwrap_or(order);
                        self.after_failure(order, None, attempt, failure, None, pending)
                            .await
                    }
                    theirs => {
                        let theirs = theirs.unwrap_or(OrderStatus::New);
                        info!(ours = %status, theirs = %theirs, "another actor decided this order first");
                        Ok(Outcome::LostRace(theirs))
                    }
                }
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

    /// Records an anomaly about an order (and one of its trades) and announces it, in one
    /// transaction; returns whether it was new (each anomaly is announced once).
    pub async fn record_anomaly(
        &self,
        order: &Order,
        trade: Option<&Trade>,
        kind: AnomalyKind,
        detail: &str,
    ) -> Result<bool, Unavailable> {
        let mut conn = db::conn(&self.pool).await?;
        let new = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                write::record_anomaly(
                    tx,
                    order,
                    trade,
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
