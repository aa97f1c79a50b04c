//! Deciding one order: read it, ask its gateway, act, and commit the state change, its
//! audit row and its event together. Shared by the worker and the reconcile command; the
//! rules themselves are pure code in [`table`] and [`retry_or_park`], without any I/O.
//!
//! Reads and decision writes of concurrent tasks are grouped (one statement per group,
//! see [`order_closer_core::db::batch`] and [`write`]), so a burst of due orders costs a few round
//! trips per group instead of several per order.

mod consult;
mod duplicates;
#[cfg(test)]
mod fixtures;
pub mod order_table;
pub mod quick_retry;
mod record;
pub mod refund;
pub mod refund_plan;
mod refund_send;
pub mod retry_or_park;
mod settle;
pub mod table;
mod write;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::metrics::Metrics;
pub use duplicates::Found as DuplicatesFound;
use order_closer_core::config::{DecisionSettings, PaidAfterClose};
use order_closer_core::db::batch::Batcher;
use order_closer_core::db::orders::FindById;
use order_closer_core::db::trades::TradesOf;
use order_closer_core::db::{DbError, DbPool};
use order_closer_core::message::{CloseMessage, Job};
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::retry::RetryPolicy;
use order_closer_core::trade::{Trade, TradeStatus};
use order_closer_gateway::TradeState;
pub use order_closer_gateway::registry::Gateways;
use order_table::TradeVerdict;
use quick_retry::QuickRetry;
use table::{Action, Precheck, QueryStage};
use write::WriteDecisions;

/// Most reads or decisions run as one group.
pub const MAX_GROUP: usize = 256;

/// Whether to act or only to say what would be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Close at the gateway, write the decision.
    Apply,
    /// Query only; change nothing.
    DryRun,
}

/// Which attempt this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptInfo {
    /// Failed attempts before this one.
    pub number: u32,
    /// When the first attempt happened (None on the first).
    pub first_seen: Option<DateTime<Utc>>,
    /// The message's own earliest moment (retries).
    pub not_before: Option<DateTime<Utc>>,
}

/// What happened to the order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No such order.
    Missing,
    /// Already PAID or CLOSED; nothing done.
    Settled(OrderStatus),
    /// Not due yet; come back after this long.
    NotDue {
        /// Time left.
        wait: Duration,
        /// The order's deadline.
        deadline: DateTime<Utc>,
    },
    /// We moved the order to this status (the decision's id is the event id).
    Decided {
        /// New status.
        status: OrderStatus,
        /// The decision row.
        decision_id: i64,
        /// Decision commit time minus deadline.
        lateness: Duration,
    },
    /// Another actor (callback, worker, reconcile) changed the order first.
    LostRace(OrderStatus),
    /// Transient failure: try again after `delay` (at `not_before`) as attempt `attempt`.
    Retry {
        /// Back-off.
        delay: Duration,
        /// The moment the retry is due (recorded with the order, so the janitor knows the
        /// order is on schedule until then).
        not_before: DateTime<Utc>,
        /// The next attempt number.
        attempt: u32,
        /// Failure code.
        code: String,
        /// Explanation.
        detail: String,
    },
    /// Cannot be decided automatically: park for an operator.
    Park {
        /// Reason code.
        code: String,
        /// Explanation.
        detail: String,
    },
    /// Dry run: what would be done.
    WouldDo(Action),
    /// The order's refund is confirmed by the gateway now (the decision's id is the
    /// `order.refunded` event id).
    Refunded {
        /// The audit row.
        decision_id: i64,
    },
    /// Dry run: the order's refund would be sent.
    WouldRefund {
        /// The amount, in minor units.
        amount_minor: i64,
    },
    /// The order's message waits in the parking queue and this decision could not settle
    /// it (the gateway failed, or still gives a reason to park): nothing was recorded, so
    /// the order stays parked once, with its one message, for the operator
    /// ([`Decider::decide_parked`]).
    StillParked {
        /// What the decision would have retried or parked for.
        code: String,
        /// Explanation.
        detail: String,
    },
}

/// What a decision that leaves the order NEW (a retry, a park) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Records it with the order's next look ([`Recheck`]): the message that carries the
    /// order on (a retry through the tiers, the parking queue) is published by the caller.
    Record,
    /// Records nothing: the order's message is parked already and stays where it is.
    LeaveParked,
}

/// A failure that is neither the order's nor the gateway's: the database is unreachable.
/// The caller should try again later without counting an attempt.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct Unavailable(#[from] pub DbError);

impl From<diesel::result::Error> for Unavailable {
    fn from(e: diesel::result::Error) -> Self {
        Self(DbError::Query(e))
    }
}

/// Decides orders.
#[derive(Clone)]
pub struct Decider {
    pool: DbPool,
    /// Reads orders, grouped with other tasks' reads.
    reads: Batcher<FindById>,
    /// Reads orders' trades, likewise.
    trades: Batcher<TradesOf>,
    /// Writes decisions, grouped with other tasks' decisions.
    writes: Batcher<WriteDecisions>,
    gateways: Gateways,
    retry: RetryPolicy,
    actor: String,
    metrics: Arc<Metrics>,
    /// What a payment after close leads to.
    paid_after_close: PaidAfterClose,
    /// Quick retries of transient gateway errors, within the process's budget (shared by
    /// the clones of this decider, and by every decider given the same one).
    quick: QuickRetry,
}

impl Decider {
    /// A decider writing with `pool`, asking `gateways`, backing off by `retry`, and
    /// signing audit rows as `actor`.
    pub fn new(
        pool: DbPool,
        gateways: Gateways,
        retry: RetryPolicy,
        actor: impl Into<String>,
    ) -> Self {
        let actor = actor.into();
        Self {
            reads: Batcher::new(pool.clone(), FindById, MAX_GROUP),
            trades: Batcher::new(pool.clone(), TradesOf, MAX_GROUP),
            writes: Self::writes(&pool, &actor, PaidAfterClose::default(), &Arc::default()),
            pool,
            gateways,
            retry,
            actor,
            metrics: Arc::new(Metrics::default()),
            paid_after_close: PaidAfterClose::default(),
            quick: QuickRetry::default(),
        }
    }

    /// A decider as the settings configure it: their quick retries (with a budget of its
    /// own: [`Decider::with_quick_retry`] shares one), retry steps and paid-after-close
    /// policy (the worker, the notify endpoint, reconcile and the demo all build it so).
    pub fn configured(
        pool: DbPool,
        gateways: Gateways,
        settings: &DecisionSettings,
        actor: impl Into<String>,
    ) -> Self {
        Self::new(pool, gateways, settings.retry.clone(), actor)
            .with_paid_after_close(settings.paid_after_close)
            .with_quick_retry(QuickRetry::new(settings.quick_retries))
    }

    /// Retries transient gateway errors quickly as `quick` says, drawing on its budget
    /// (the process's: every decider of a process is given the same).
    pub fn with_quick_retry(mut self, quick: QuickRetry) -> Self {
        self.quick = quick;
        self
    }

    /// Its quick retries and their budget.
    pub fn quick_retry(&self) -> &QuickRetry {
        &self.quick
    }

    /// Holds or refunds payments after close as `policy` says (default: hold).
    pub fn with_paid_after_close(mut self, policy: PaidAfterClose) -> Self {
        self.paid_after_close = policy;
        self.writes = Self::writes(&self.pool, &self.actor, policy, &self.metrics);
        self
    }

    /// Records into these metrics instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self.writes = Self::writes(
            &self.pool,
            &self.actor,
            self.paid_after_close,
            &self.metrics,
        );
        self
    }

    /// The lane writing decisions: signed by `actor`, giving duplicate payments back when
    /// the policy is `refund`, counting what it finds into `metrics`.
    fn writes(
        pool: &DbPool,
        actor: &str,
        policy: PaidAfterClose,
        metrics: &Arc<Metrics>,
    ) -> Batcher<WriteDecisions> {
        Batcher::new(
            pool.clone(),
            WriteDecisions {
                actor: actor.to_owned(),
                refund_duplicates: policy == PaidAfterClose::Refund,
                metrics: Arc::clone(metrics),
            },
            MAX_GROUP,
        )
    }

    /// The gateways it asks.
    pub fn gateways(&self) -> &Gateways {
        &self.gateways
    }

    /// The database pool.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The metrics this decider records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The retry steps of a channel: its gateway's own, or the common ones.
    pub(crate) fn retry_for(&self, channel: &str) -> &RetryPolicy {
        self.gateways.retry(channel).unwrap_or(&self.retry)
    }

    /// Counts an outcome in the metrics.
    fn observe(&self, outcome: &Outcome) {
        let m = &self.metrics;
        match outcome {
            Outcome::Missing => {
                m.missing_order();
                m.decision("missing");
            }
            Outcome::Settled(_) => m.decision("already_settled"),
            Outcome::NotDue { .. } => m.decision("not_due"),
            Outcome::Decided {
                status, lateness, ..
            } => {
                m.decision(&status.as_str().to_ascii_lowercase());
                m.lateness(*lateness);
            }
            Outcome::LostRace(_) => m.decision("lost_race"),
            Outcome::Retry { attempt, .. } => {
                m.retry(*attempt);
                m.decision("retry");
            }
            Outcome::Park { code, .. } => {
                m.parked(code);
                m.decision("parked");
            }
            Outcome::WouldDo(_) => m.decision("dry_run"),
            Outcome::Refunded { .. } => m.decision("refunded"),
            Outcome::WouldRefund { .. } => m.decision("dry_run"),
            Outcome::StillParked { .. } => m.decision("still_parked"),
        }
    }

    /// Decides one order, end to end.
    #[tracing::instrument(name = "decide", skip_all, fields(order_id, out_trade_no, attempt = attempt.number))]
    /// `expected_out_trade_no` is what the message says: a message whose order number
    /// disagrees with the row is parked, never acted on.
    pub async fn decide(
        &self,
        order_id: i64,
        expected_out_trade_no: Option<&str>,
        attempt: AttemptInfo,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        let outcome = self
            .decide_inner(
                order_id,
                expected_out_trade_no,
                attempt,
                mode,
                Pending::Record,
            )
            .await;
        self.observed(outcome)
    }

    /// Decides an order whose message waits in the parking queue (`reconcile overdue`
    /// finds it overdue): settles it when the gateway allows (PAID; CLOSED, closing the
    /// trade at the gateway first), but an outcome that would leave it NEW (a retry, a
    /// park) is only reported as [`Outcome::StillParked`]. Nothing is recorded then, so the
    /// order is never parked twice and never pulled back into the janitor's schedule while
    /// its message still waits for the operator (`reconcile parked`).
    #[tracing::instrument(name = "decide_parked", skip_all, fields(order_id, out_trade_no))]
    pub async fn decide_parked(
        &self,
        order_id: i64,
        expected_out_trade_no: Option<&str>,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        let attempt = AttemptInfo {
            number: 0,
            first_seen: None,
            not_before: None,
        };
        let outcome = self
            .decide_inner(
                order_id,
                expected_out_trade_no,
                attempt,
                mode,
                Pending::LeaveParked,
            )
            .await;
        self.observed(outcome)
    }

    /// Does what a close-queue message asks, when it is due: decides the order
    /// ([`Job::Close`]) or sends its requested refund ([`Job::Refund`]). The worker and
    /// the replay of parked messages both run messages through here.
    pub async fn act_on(
        &self,
        message: &CloseMessage,
        attempt: AttemptInfo,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        match message.job {
            Job::Close => {
                self.decide(message.order_id, Some(&message.out_trade_no), attempt, mode)
                    .await
            }
            Job::Refund => {
                self.refund(message.order_id, &message.out_trade_no, attempt, mode)
                    .await
            }
        }
    }

    /// Counts an outcome (or the database being unavailable) and hands it on.
    fn observed(&self, outcome: Result<Outcome, Unavailable>) -> Result<Outcome, Unavailable> {
        match &outcome {
            Ok(o) => self.observe(o),
            Err(_) => self.metrics.decision("database_unavailable"),
        }
        outcome
    }

    async fn decide_inner(
        &self,
        order_id: i64,
        expected_out_trade_no: Option<&str>,
        attempt: AttemptInfo,
        mode: Mode,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        let outcome = self
            .decide_order(order_id, expected_out_trade_no, attempt, mode, pending)
            .await?;
        Ok(match outcome {
            Outcome::Retry { code, detail, .. } | Outcome::Park { code, detail }
                if pending == Pending::LeaveParked =>
            {
                Outcome::StillParked { code, detail }
            }
            other => other,
        })
    }

    async fn decide_order(
        &self,
        order_id: i64,
        expected_out_trade_no: Option<&str>,
        attempt: AttemptInfo,
        mode: Mode,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        let order = self.reads.submit(order_id).await?;
        if let Some(o) = &order {
            tracing::Span::current().record("out_trade_no", o.out_trade_no.as_str());
        }
        tracing::Span::current().record("order_id", order_id);
        if let Some((order, expected)) = order
            .as_ref()
            .zip(expected_out_trade_no)
            .filter(|(o, e)| o.out_trade_no != *e)
        {
            let detail = format!(
                "message names out_trade_no {expected:?} but order {order_id} is {:?}",
                order.out_trade_no
            );
            // The message is wrong, not the order: the order's own schedule is untouched.
            return self
                .park_pending(
                    order,
                    attempt,
                    "order_mismatch",
                    &detail,
                    None,
                    None,
                    pending,
                )
                .await;
        }
        let open = order.as_ref().is_some_and(|o| o.open_trades > 0);
        let order = match table::precheck(order.as_ref(), open, attempt.not_before, Utc::now()) {
            Precheck::Missing => return Ok(Outcome::Missing),
            Precheck::Settled(status) => return Ok(Outcome::Settled(status)),
            Precheck::NotDue(wait) => {
                let deadline = order.map(|o| o.deadline).unwrap_or_else(Utc::now);
                return Ok(Outcome::NotDue { wait, deadline });
            }
            Precheck::Due => match order {
                Some(order) => order,
                None => return Ok(Outcome::Missing),
            },
        };
        // Read only once due: an early hop or a redelivery of a settled order costs no read.
        let trades = self.trades.submit(order.id).await?;
        let verdicts = self.consult_all(&order, &trades, mode).await;
        if mode == Mode::DryRun {
            let verdicts: Vec<TradeVerdict> = verdicts.into_iter().map(|(v, _)| v).collect();
            return Ok(Outcome::WouldDo(order_table::summary(&verdicts)));
        }
        let (verdicts, transcripts): (Vec<TradeVerdict>, Vec<String>) =
            verdicts.into_iter().unzip();
        let decision = order_table::decide(&order, &trades, &verdicts);
        let answer = (!transcripts.is_empty()).then(|| transcripts.join("\n"));
        let context = settle::Context {
            attempt,
            pending,
            cause: Cause::Query,
        };
        self.settle(order, &trades, decision, answer, context).await
    }

    /// Decides an order on evidence about one of its trades gathered elsewhere (a bill
    /// row, a verified payment notification, a query a notification prompted) instead of
    /// the deadline's queries: the same tables, the same guarded updates, audit row and
    /// event. Only a payment is acted on: the trade is paid, and so is the order if it was
    /// NEW (a second paid trade is a duplicate payment). Evidence of a closed or waiting
    /// trade is left to the deadline, which asks every trade's gateway. `source` is the
    /// evidence as received, kept in the audit row.
    pub async fn apply_evidence(
        &self,
        order: &Order,
        trade: &Trade,
        evidence: &TradeState,
        source: &str,
        cause: Cause,
        mode: Mode,
    ) -> Result<Outcome, Unavailable> {
        let action = table::after_query(order, QueryStage::First, Ok(evidence));
        let paid_before = trade.status == TradeStatus::Paid;
        if mode == Mode::DryRun || !matches!(action, Action::MarkPaid { .. }) || paid_before {
            let outcome = Outcome::WouldDo(action);
            self.observe(&outcome);
            return Ok(outcome);
        }
        // A payment on a trade we had closed is a payment all the same (`closed -> paid`):
        // it is decided as the payment of an open trade would be.
        let trade = &Trade {
            status: TradeStatus::Open,
            ..trade.clone()
        };
        let attempt = AttemptInfo {
            number: 0,
            first_seen: None,
            not_before: None,
        };
        let verdict = TradeVerdict {
            trade_id: trade.id,
            action,
        };
        let decision = order_table::decide(order, std::slice::from_ref(trade), &[verdict]);
        let outcome = self
            .settle(
                order.clone(),
                std::slice::from_ref(trade),
                decision,
                Some(source.to_owned()),
                settle::Context {
                    attempt,
                    pending: Pending::Record,
                    cause,
                },
            )
            .await?;
        self.observe(&outcome);
        Ok(outcome)
    }
}

/// How a payment became known, for the decision's audit detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Our own query at the deadline (the notification never came or came too late).
    Query,
    /// A verified payment notification.
    Notification,
    /// Our query, prompted by a notification we could not trust by itself.
    NotificationHint,
    /// Our query, prompted by the gateway's daily bill (a hint, never evidence by itself).
    Bill,
}

impl Cause {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::Query => "paid at the gateway; the payment notification was missed",
            Self::Notification => "paid: the gateway's verified payment notification",
            Self::NotificationHint => {
                "paid at the gateway: asked because of a notification that could not be trusted by itself"
            }
            Self::Bill => "paid at the gateway: asked because its daily bill shows the payment",
        }
    }
}

/// The audit table's attempt column.
fn attempt_column(attempt: AttemptInfo) -> i32 {
    i32::try_from(attempt.number).unwrap_or(i32::MAX)
}
