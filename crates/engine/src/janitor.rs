//! The janitor: the worker's own safety net for close messages lost on the way.
//!
//! Every order's schedule says when it should be decided: its deadline, or its last
//! retry's `not_before` (`orders.recheck_at`). A NEW order still undecided well past that
//! moment (`after`, default 2 minutes) has no message driving it any more: the broker
//! dropped it (a classic queue dead-letters at most once), or it was purged, or a
//! publisher never sent it. The janitor re-drives such orders through the same decision
//! code as `reconcile overdue` and counts them in `order_closer_redriven_total`, which a
//! healthy system keeps at 0.
//!
//! It does not fight the message path:
//! - an order waiting in its retry schedule is on schedule until its `not_before`;
//! - an order whose message is parked waits for an operator (`recheck_at = infinity`);
//! - a pass is skipped while the close queue has messages waiting (the workers are
//!   behind, so overdue orders may still have their message; see `worker::janitor_loop`);
//! - orders are claimed with `FOR UPDATE SKIP LOCKED` and leased for [`LEASE`], so several
//!   workers' janitors never take the same order, and a janitor that dies mid-pass leaves
//!   its orders to the next one after the lease.
//!
//! A re-driven order that needs a retry stays with the janitor (its retry row moves
//! `recheck_at`, and a later pass takes it again); one that must be parked is published to
//! the parking queue like the worker's, so the operator's path is the same.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use tracing::{Instrument, info_span, warn};

use crate::decide::{AttemptInfo, Decider, Mode, Outcome};
use crate::reconcile::Verdict;
use order_closer_core::broker::publisher::{ParkNote, Publisher};
use order_closer_core::db::{self, DbError, orders};
use order_closer_core::message::CloseMessage;
use order_closer_core::time;

/// Most orders one pass claims.
pub const BATCH: i64 = 100;
/// Orders of one pass decided at once.
pub const CONCURRENCY: usize = 8;
/// How long a claimed order is left to the janitor that claimed it.
pub const LEASE: Duration = Duration::from_secs(600);

pub use order_closer_core::config::janitor::JanitorConfig;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Orders re-driven, by verdict.
    pub redriven: BTreeMap<Verdict, u64>,
}

impl PassReport {
    /// Orders re-driven in all.
    pub fn total(&self) -> u64 {
        self.redriven.values().sum()
    }
}

/// Finds and re-drives overdue orders.
pub struct Janitor {
    decider: Decider,
    publisher: Publisher,
    config: JanitorConfig,
}

impl Janitor {
    /// A janitor deciding with `decider` and parking through `publisher`.
    pub fn new(decider: Decider, publisher: Publisher, config: JanitorConfig) -> Self {
        Self {
            decider,
            publisher,
            config,
        }
    }

    /// The janitor's settings.
    pub fn config(&self) -> JanitorConfig {
        self.config
    }

    /// One pass: claims up to [`BATCH`] overdue orders and re-drives each.
    pub async fn pass(&self) -> Result<PassReport, DbError> {
        let now = Utc::now();
        let cutoff = time::earlier(now, self.config.after);
        let lease_until = time::later(now, LEASE);
        let claimed = {
            let mut conn = db::conn(self.decider.pool()).await?;
            orders::claim_overdue(&mut conn, cutoff, BATCH, lease_until).await?
        };
        let mut report = PassReport::default();
        let verdicts = futures_util::stream::iter(claimed)
            .map(|order| {
                let span = info_span!(
                    "janitor",
                    order_id = order.id,
                    out_trade_no = %order.out_trade_no
                );
                self.redrive(order).instrument(span)
            })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(verdicts);
        while let Some(verdict) = verdicts.next().await {
            self.decider.metrics().redriven(verdict.as_str());
            *report.redriven.entry(verdict).or_default() += 1;
        }
        Ok(report)
    }

    async fn redrive(&self, order: orders::Overdue) -> Verdict {
        let overdue_s = (Utc::now() - order.scheduled).num_seconds();
        warn!(
            scheduled = %order.scheduled,
            overdue_s,
            attempts = order.attempts,
            "re-driving an order overdue past its schedule: no close message decided it"
        );
        let attempt = AttemptInfo {
            number: u32::try_from(order.attempts).unwrap_or(0),
            first_seen: order.first_seen,
            not_before: None,
        };
        let outcome = self
            .decider
            .decide(order.id, Some(&order.out_trade_no), attempt, Mode::Apply)
            .await;
        let verdict = match &outcome {
            Ok(o) => Verdict::from(o),
            Err(_) => Verdict::DatabaseUnavailable,
        };
        if let Ok(Outcome::Park { code, detail }) = outcome {
            let order = ParkedOrder {
                id: order.id,
                out_trade_no: &order.out_trade_no,
                deadline: order.deadline,
            };
            park_redriven(
                &self.publisher,
                &self.decider,
                order,
                attempt,
                &code,
                &detail,
            )
            .await;
        }
        verdict
    }
}

/// An order that a re-drive (the janitor's, or `reconcile overdue`'s) decided to park.
#[derive(Debug, Clone, Copy)]
pub struct ParkedOrder<'a> {
    /// Our id.
    pub id: i64,
    /// Merchant order number.
    pub out_trade_no: &'a str,
    /// Its deadline.
    pub deadline: chrono::DateTime<Utc>,
}

/// Publishes the parked message an operator works from, for an order a re-drive parked
/// (it had no message left, so the decision's park row alone would leave the operator
/// nothing to work from). If that fails, the order is given back to the janitor's next
/// pass: it must not wait for an operator who cannot see it.
pub async fn park_redriven(
    publisher: &Publisher,
    decider: &Decider,
    order: ParkedOrder<'_>,
    attempt: AttemptInfo,
    code: &str,
    detail: &str,
) {
    let mut message = CloseMessage::new(order.id, order.out_trade_no.to_owned(), order.deadline);
    message.attempt = attempt.number;
    message.first_seen = attempt.first_seen;
    let note = ParkNote {
        reason: code,
        last_error: detail,
        attempts: attempt.number + 1,
        first_seen: attempt.first_seen.unwrap_or_else(Utc::now),
    };
    if let Err(e) = publisher.park(&message.encode(), &note).await {
        warn!(error = %e, "could not park the re-driven order; the janitor takes it again");
        release(decider, order.id).await;
    }
}

/// Gives a NEW order back to the janitor's next pass (its schedule: its deadline).
pub async fn release(decider: &Decider, order_id: i64) {
    let released = async {
        let mut conn = db::conn(decider.pool()).await?;
        orders::set_recheck(&mut conn, order_id, None)
            .await
            .map_err(DbError::from)
    }
    .await;
    if let Err(e) = released {
        warn!(error = %e, "could not give the order back; it returns after its lease");
    }
}
