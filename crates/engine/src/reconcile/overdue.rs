//! `reconcile overdue`: orders still NEW past their deadline plus a grace period (their
//! message was lost, parked, or never published), and PAID orders with a trade still
//! open (its close was lost), decided one by one through the
//! worker's decision code. Streams the table in keyset pages, so memory stays flat over
//! millions of rows; safe beside running workers (guarded updates).
//!
//! Who carries an order the sweep cannot settle:
//! - an order whose message waits in the parking queue stays parked, once: the sweep
//!   settles it if the gateway allows, and otherwise records nothing
//!   ([`Decider::decide_parked`]), so it is never parked twice nor pulled back into the
//!   janitor's schedule while its message waits for `reconcile parked`;
//! - any other order that must be parked gets its parked message published, as the
//!   janitor's does (without a broker it is given back to the janitor), and a retry stays
//!   with the janitor (its retry row moves `recheck_at`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;

use super::{Finding, Verdict};
use crate::decide::{AttemptInfo, Decider, Mode, Outcome};
use crate::janitor::{self, ParkedOrder};
use order_closer_core::broker::publisher::Publisher;
use order_closer_core::db::{self, DbError, orders};

/// Rows read per page.
pub const PAGE: i64 = 500;
/// Most per-order lines kept for the report (counts are always complete).
pub const MAX_LISTED: usize = 1000;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct OverdueOptions {
    /// Only orders whose deadline is at least this far in the past.
    pub older_than: Duration,
    /// Only this channel.
    pub channel: Option<String>,
    /// Stop after this many orders.
    pub limit: Option<u64>,
    /// Orders decided at once.
    pub concurrency: usize,
    /// Apply, or only say what would be done.
    pub mode: Mode,
}

/// One order's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct OverdueLine {
    /// Our id.
    pub order_id: i64,
    /// Merchant order number.
    pub out_trade_no: String,
    /// Its deadline.
    pub deadline: DateTime<Utc>,
    /// What happened.
    pub verdict: Verdict,
    /// Details (the gateway code of a failure, the action of a dry run).
    pub detail: String,
}

/// The result of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct OverdueReport {
    /// Dry run or not.
    pub dry_run: bool,
    /// The cutoff: deadlines before it were considered.
    pub cutoff: DateTime<Utc>,
    /// Orders looked at.
    pub scanned: u64,
    /// Orders per verdict.
    pub counts: BTreeMap<Verdict, u64>,
    /// Per-order lines (the first [`MAX_LISTED`]).
    pub orders: Vec<OverdueLine>,
    /// What cron should conclude.
    pub finding: Finding,
}

/// Sweeps overdue orders; `progress` is called with the count done after each order.
/// `parking` publishes the parked message of an order the sweep parks (None: no broker;
/// such an order is given back to the janitor, which parks it).
pub async fn sweep(
    decider: &Decider,
    options: &OverdueOptions,
    parking: Option<&Publisher>,
    progress: impl Fn(u64),
) -> Result<OverdueReport, DbError> {
    let cutoff = order_closer_core::time::earlier(Utc::now(), options.older_than);
    let mut report = OverdueReport {
        dry_run: options.mode == Mode::DryRun,
        cutoff,
        scanned: 0,
        counts: BTreeMap::new(),
        orders: Vec::new(),
        finding: Finding::Clean,
    };
    let mut after = None;
    loop {
        let remaining = options.limit.map(|l| l.saturating_sub(report.scanned));
        if remaining == Some(0) {
            break;
        }
        let size = remaining.map_or(PAGE, |r| PAGE.min(i64::try_from(r).unwrap_or(PAGE)));
        let page = {
            let mut conn = db::conn(decider.pool()).await?;
            orders::overdue_page(&mut conn, cutoff, options.channel.as_deref(), after, size).await?
        };
        let Some(last) = page.last() else { break };
        after = Some((last.order.deadline, last.order.id));
        let done = futures_util::stream::iter(page.into_iter().map(|row| async move {
            let outcome = redrive(decider, &row, options.mode, parking).await;
            (row.order, outcome)
        }))
        .buffer_unordered(options.concurrency.max(1));
        futures_util::pin_mut!(done);
        while let Some((order, outcome)) = done.next().await {
            let (verdict, detail) = match &outcome {
                Ok(o) => (Verdict::from(o), describe(o)),
                Err(e) => (Verdict::DatabaseUnavailable, e.to_string()),
            };
            report.scanned += 1;
            *report.counts.entry(verdict).or_default() += 1;
            if report.orders.len() < MAX_LISTED {
                report.orders.push(OverdueLine {
                    order_id: order.id,
                    out_trade_no: order.out_trade_no,
                    deadline: order.deadline,
                    verdict,
                    detail,
                });
            }
            progress(report.scanned);
        }
    }
    report.finding = Finding::of(report.counts.keys().copied());
    Ok(report)
}

/// Decides one overdue order, leaving a parked one parked unless it settles, and parking
/// (with its message) one that must be.
async fn redrive(
    decider: &Decider,
    row: &orders::OverdueOrder,
    mode: Mode,
    parking: Option<&Publisher>,
) -> Result<Outcome, crate::decide::Unavailable> {
    let order = &row.order;
    if row.parked {
        return decider
            .decide_parked(order.id, Some(&order.out_trade_no), mode)
            .await;
    }
    let attempt = AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    };
    let outcome = decider
        .decide(order.id, Some(&order.out_trade_no), attempt, mode)
        .await?;
    if let Outcome::Park { code, detail } = &outcome {
        match parking {
            Some(publisher) => {
                let parked = ParkedOrder {
                    id: order.id,
                    out_trade_no: &order.out_trade_no,
                    deadline: order.deadline,
                };
                janitor::park_redriven(publisher, decider, parked, attempt, code, detail).await;
            }
            None => janitor::release(decider, order.id).await,
        }
    }
    Ok(outcome)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Retry { code, detail, .. } | Outcome::Park { code, detail } => {
            format!("{code}: {detail}")
        }
        Outcome::WouldDo(action) => format!("{action:?}"),
        Outcome::Decided { lateness, .. } => format!("{}s after the deadline", lateness.as_secs()),
        Outcome::Settled(status) | Outcome::LostRace(status) => format!("already {status}"),
        Outcome::NotDue { deadline, .. } => format!("due at {deadline}"),
        Outcome::Missing => "no such order".into(),
        Outcome::Refunded { decision_id } => format!("refunded (decision {decision_id})"),
        Outcome::WouldRefund { amount_minor } => {
            format!(
                "would refund {}",
                order_closer_core::money::format_minor(*amount_minor)
            )
        }
        Outcome::StillParked { code, detail } => {
            format!("still parked ({code}: {detail}); see reconcile parked")
        }
    }
}
