//! The pipeline run: N orders due at the same moment a few seconds ahead, a share of
//! them paid at the simulator, decided by a worker child process. Measures decisions
//! per second, lateness, worker CPU per decision and peak RSS. [`run_batch`] is shared
//! with the classic run.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer_core::closer::{Due, NewOrder};
use order_closer_core::db::decisions::DecisionOutcome;
use order_closer_core::db::schema::{decisions, orders};
use order_closer_core::db::{self, DbPool};
use order_closer_core::order::OrderStatus;
use order_closer_sim::SimState;
use serde::Serialize;

use super::stats::{self, Percentiles};
use super::worker_proc::{ProcSample, WorkerProcess};
use super::{BenchEnv, Plan, fan_out, progress};

/// Tasks creating orders at once.
pub const CREATE_TASKS: usize = 64;
/// Creation rate assumed for planning the deadline when none was measured.
const DEFAULT_CREATE_RATE: f64 = 500.0;
/// Shortest time between the start of creation and the common deadline.
const MIN_LEAD: Duration = Duration::from_secs(3);

/// What a simulated buyer did with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Buyer {
    /// Paid before the deadline (the callback is lost): one query, then PAID.
    Paid,
    /// Scanned and left: query, close at the gateway, then CLOSED.
    Scanned,
    /// Never scanned: one query ("no such trade"), then CLOSED.
    NeverScanned,
}

impl Buyer {
    /// Order `i`'s buyer: a low-discrepancy sequence, so every prefix has the mix.
    pub fn pick(i: usize, paid_share: f64) -> Self {
        let f = (i as f64 * 0.618_033_988_749_894_9).fract();
        if f < paid_share {
            Self::Paid
        } else if f < paid_share + (1.0 - paid_share) / 2.0 {
            Self::Scanned
        } else {
            Self::NeverScanned
        }
    }

    /// The status the order must end in.
    pub fn expected(self) -> OrderStatus {
        match self {
            Self::Paid => OrderStatus::Paid,
            Self::Scanned | Self::NeverScanned => OrderStatus::Closed,
        }
    }

    /// Signed calls our side makes for this order (query; query + close).
    pub fn signed_calls(self) -> u32 {
        match self {
            Self::Paid | Self::NeverScanned => 1,
            Self::Scanned => 2,
        }
    }

    /// Acts at the simulator right after the order is created.
    pub fn act(self, sim: &SimState, channel: &str, no: &str, amount: i64) -> anyhow::Result<()> {
        match self {
            Self::Paid => {
                sim.buyer(no).at(channel).scans(amount).pays().send()?;
            }
            Self::Scanned => {
                sim.buyer(no).at(channel).scans(amount).send()?;
            }
            Self::NeverScanned => {}
        }
        Ok(())
    }
}

/// One created order.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    /// `orders.id`.
    pub id: i64,
    /// What its buyer did.
    pub buyer: Buyer,
}

/// The figures of one batch (pipeline or classic).
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    /// `pipeline` or `classic`.
    pub label: String,
    /// Orders created.
    pub orders: usize,
    /// Orders per buyer behaviour.
    pub mix: BTreeMap<Buyer, usize>,
    /// Worker concurrency.
    pub concurrency: u32,
    /// Worker prefetch.
    pub prefetch: u16,
    /// Seconds from the start of creation to the common deadline.
    pub deadline_lead_seconds: f64,
    /// Seconds creation took.
    pub creation_seconds: f64,
    /// Whether creation ended after the deadline (lateness then includes creation).
    pub creation_overran_deadline: bool,
    /// Orders decided (closed or paid).
    pub decided: usize,
    /// Orders still NEW when the bench stopped waiting.
    pub undecided: usize,
    /// Orders marked PAID.
    pub paid: usize,
    /// Orders closed.
    pub closed: usize,
    /// Retry decisions recorded.
    pub retries: usize,
    /// Park decisions recorded.
    pub parked: usize,
    /// Orders whose final status is not what their buyer implies.
    pub mismatches: usize,
    /// Decisions per second, from the first to the last decision's `decided_at`.
    pub decisions_per_second: f64,
    /// Seconds from the first to the last decision.
    pub decision_span_seconds: f64,
    /// Lateness (`decided_at` minus deadline), milliseconds.
    pub lateness_ms: Percentiles,
    /// Lateness quantiles p0..p100, milliseconds.
    pub lateness_quantiles_ms: Vec<f64>,
    /// Decisions in each second after the first decision.
    pub decisions_per_second_series: Vec<u32>,
    /// Worker CPU seconds (user + system) over its whole life.
    pub worker_cpu_seconds: f64,
    /// Worker CPU milliseconds per decision.
    pub worker_cpu_ms_per_decision: f64,
    /// Worker CPU seconds until the deadline (start-up and forwarding early hops).
    pub worker_cpu_seconds_before_deadline: f64,
    /// Worker CPU milliseconds per decision after the deadline (deciding only).
    pub worker_cpu_ms_per_decision_after_deadline: f64,
    /// Worker peak RSS (VmHWM), MiB.
    pub worker_peak_rss_mib: f64,
}

/// Runs the pipeline batch with the plan's concurrency and prefetch.
pub async fn run(
    env: &BenchEnv,
    plan: &Plan,
    create_rate_hint: Option<f64>,
) -> anyhow::Result<BatchResult> {
    let count = plan.orders as usize;
    let lead = plan
        .lead()
        .unwrap_or_else(|| planned_lead(count, create_rate_hint));
    run_batch(
        env,
        "pipeline",
        count,
        plan.paid_share,
        (plan.concurrency, plan.prefetch),
        lead,
    )
    .await
}

/// Time from the start of creation to the common deadline: creation must be over by
/// then, so it is planned from the measured creation rate (creating while the worker
/// forwards early hops is slower than the create measurement, hence the margin).
pub fn planned_lead(count: usize, create_rate_hint: Option<f64>) -> Duration {
    let create_rate = create_rate_hint
        .filter(|r| *r > 0.0)
        .unwrap_or(DEFAULT_CREATE_RATE);
    MIN_LEAD.max(Duration::from_secs_f64(
        count as f64 / (0.6 * create_rate) + 2.0,
    ))
}

/// Creates `count` orders all due `lead` after creation starts, lets a worker with
/// `(concurrency, prefetch)` decide them, and measures.
pub async fn run_batch(
    env: &BenchEnv,
    label: &str,
    count: usize,
    paid_share: f64,
    (concurrency, prefetch): (u32, u16),
    lead: Duration,
) -> anyhow::Result<BatchResult> {
    let mut worker = WorkerProcess::start(env, label, concurrency, prefetch).await?;
    let started = Utc::now();
    let deadline = started + chrono::Duration::from_std(lead)?;
    let clock = Instant::now();
    let bar = progress(count as u64, &format!("{label}: orders created"));
    let created = create_orders(env, label, count, paid_share, Due::At(deadline), &bar).await?;
    bar.finish_and_clear();
    let creation = clock.elapsed();
    let overran = Utc::now() > deadline;
    if overran {
        eprintln!(
            "warning: creating {count} orders took {:.1} s, past the common deadline ({:.1} s); \
             lateness includes creation",
            creation.as_secs_f64(),
            lead.as_secs_f64()
        );
    }
    // Until the deadline the worker only forwards early hops; sample its CPU there to
    // split forwarding from deciding.
    let until_deadline = (deadline - Utc::now()).to_std().unwrap_or_default();
    eprintln!(
        "  {count} orders created in {:.1} s; due in {:.1} s",
        creation.as_secs_f64(),
        until_deadline.as_secs_f64()
    );
    tokio::time::sleep(until_deadline).await;
    let at_deadline = worker.sample()?;
    let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
    let limit = lead + Duration::from_secs_f64((count as f64 / 20.0).max(120.0));
    let undecided = wait_decided(env, &mut worker, &ids, label, clock + limit).await?;
    wait_outbox(&env.pool, Duration::from_secs(60)).await;
    let sample = worker.sample()?;
    let status = worker.stop().await?;
    if !status.success() {
        eprintln!("warning: the {label} worker exited with {status}");
    }
    let mut result = analyse(&env.pool, label, &created, sample).await?;
    result.concurrency = concurrency;
    result.prefetch = prefetch;
    result.deadline_lead_seconds = lead.as_secs_f64();
    result.creation_seconds = creation.as_secs_f64();
    result.creation_overran_deadline = overran;
    result.undecided = undecided;
    result.worker_cpu_seconds_before_deadline = at_deadline.cpu_seconds;
    if result.decided > 0 {
        result.worker_cpu_ms_per_decision_after_deadline =
            (sample.cpu_seconds - at_deadline.cpu_seconds) * 1000.0 / result.decided as f64;
    }
    Ok(result)
}

/// Creates orders concurrently with `Closer::create_order`, each followed by its buyer's
/// action at the simulator.
pub async fn create_orders(
    env: &BenchEnv,
    label: &str,
    count: usize,
    paid_share: f64,
    due: Due,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Created>> {
    let closer = env
        .app()
        .closer_on(env.pool.clone(), Some(env.publisher.clone()));
    let sim = env.sim_state.clone();
    let prefix = format!("B{}-{label}", env.tag);
    let channel = env.channel;
    fan_out(CREATE_TASKS, count, bar, move |i| {
        let closer = closer.clone();
        let sim = sim.clone();
        let no = format!("{prefix}-{i}");
        async move {
            let buyer = Buyer::pick(i, paid_share);
            let amount = 100 + (i as i64 % 9_900);
            let created = closer
                .create_order(NewOrder::new(channel, &no, amount, due))
                .await
                .with_context(|| format!("creating order {no}"))?;
            buyer.act(&sim, channel, &no, amount)?;
            Ok(Created {
                id: created.order.id,
                buyer,
            })
        }
    })
    .await
}

/// Waits until none of `ids` is NEW or `until` passes; returns how many are still NEW.
pub async fn wait_decided(
    env: &BenchEnv,
    worker: &mut WorkerProcess,
    ids: &[i64],
    label: &str,
    until: Instant,
) -> anyhow::Result<usize> {
    let bar = progress(ids.len() as u64, &format!("{label}: decided"));
    loop {
        worker.ensure_alive()?;
        let open = count_new(&env.pool, ids).await?;
        bar.set_position((ids.len() - open) as u64);
        if open == 0 {
            bar.finish_and_clear();
            return Ok(0);
        }
        if Instant::now() > until {
            bar.abandon();
            eprintln!("warning: {open} {label} orders still open; giving up waiting");
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count_new(pool: &DbPool, ids: &[i64]) -> anyhow::Result<usize> {
    let mut conn = db::conn(pool).await?;
    let open: i64 = orders::table
        .filter(orders::id.eq_any(ids))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(open as usize)
}

/// Waits (up to `limit`) for the relay to publish every event, so that the worker's CPU
/// time includes announcing its decisions.
pub async fn wait_outbox(pool: &DbPool, limit: Duration) {
    if !db::outbox::wait_drained(pool, limit).await {
        eprintln!("warning: the outbox did not drain within {limit:?}");
    }
}

/// One decided order: when it was due and when it was decided.
#[derive(Debug, Clone, Copy)]
pub struct Decided {
    /// The order's deadline.
    pub deadline: DateTime<Utc>,
    /// The decision's `decided_at`.
    pub at: DateTime<Utc>,
}

impl Decided {
    /// Lateness in milliseconds.
    pub fn lateness_ms(&self) -> f64 {
        (self.at - self.deadline)
            .num_microseconds()
            .map_or(f64::MAX, |us| us as f64 / 1000.0)
    }
}

/// What the database says about a batch.
pub struct Outcomes {
    /// Decided orders (closed or paid decisions).
    pub decided: Vec<Decided>,
    /// Orders PAID / CLOSED.
    pub paid: usize,
    /// Orders closed.
    pub closed: usize,
    /// Retry decisions.
    pub retries: usize,
    /// Park decisions.
    pub parked: usize,
    /// Orders whose status disagrees with their buyer.
    pub mismatches: usize,
}

/// Reads the batch's orders and decisions.
pub async fn outcomes(pool: &DbPool, created: &[Created]) -> anyhow::Result<Outcomes> {
    let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
    let mut conn = db::conn(pool).await?;
    let rows: Vec<(i64, String, DateTime<Utc>)> = orders::table
        .filter(orders::id.eq_any(&ids))
        .select((orders::id, orders::status, orders::deadline))
        .load(&mut conn)
        .await?;
    let history: Vec<(i64, DecisionOutcome, DateTime<Utc>)> = decisions::table
        .filter(decisions::order_id.eq_any(&ids))
        .select((
            decisions::order_id,
            decisions::outcome,
            decisions::decided_at,
        ))
        .load(&mut conn)
        .await?;
    let by_id: HashMap<i64, (Option<OrderStatus>, DateTime<Utc>)> = rows
        .iter()
        .map(|(id, status, deadline)| (*id, (OrderStatus::parse(status), *deadline)))
        .collect();
    let mut out = Outcomes {
        decided: Vec::new(),
        paid: 0,
        closed: 0,
        retries: 0,
        parked: 0,
        mismatches: 0,
    };
    for c in created {
        match by_id.get(&c.id).map(|(s, _)| *s) {
            Some(Some(s)) if s == c.buyer.expected() => {}
            _ => out.mismatches += 1,
        }
    }
    for (status, _) in by_id.values() {
        match status {
            Some(OrderStatus::Paid) => out.paid += 1,
            Some(OrderStatus::Closed) => out.closed += 1,
            Some(OrderStatus::New) | None => {}
        }
    }
    for (id, outcome, at) in &history {
        match outcome {
            DecisionOutcome::Closed | DecisionOutcome::Paid => {
                if let Some((_, deadline)) = by_id.get(id) {
                    out.decided.push(Decided {
                        deadline: *deadline,
                        at: *at,
                    });
                }
            }
            DecisionOutcome::Retry => out.retries += 1,
            DecisionOutcome::Parked => out.parked += 1,
            _ => {}
        }
    }
    Ok(out)
}

async fn analyse(
    pool: &DbPool,
    label: &str,
    created: &[Created],
    sample: ProcSample,
) -> anyhow::Result<BatchResult> {
    let o = outcomes(pool, created).await?;
    let mut lateness: Vec<f64> = o.decided.iter().map(Decided::lateness_ms).collect();
    stats::sort(&mut lateness);
    let first = o.decided.iter().map(|d| d.at).min();
    let last = o.decided.iter().map(|d| d.at).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => 0.0,
    };
    let mut series: Vec<u32> = Vec::new();
    if let Some(first) = first {
        for d in &o.decided {
            let second = ((d.at - first).num_milliseconds().max(0) / 1000) as usize;
            if series.len() <= second {
                series.resize(second + 1, 0);
            }
            series[second] += 1;
        }
    }
    let mut mix: BTreeMap<Buyer, usize> = BTreeMap::new();
    for c in created {
        *mix.entry(c.buyer).or_default() += 1;
    }
    let decided = o.decided.len();
    Ok(BatchResult {
        label: label.to_owned(),
        orders: created.len(),
        mix,
        concurrency: 0,
        prefetch: 0,
        deadline_lead_seconds: 0.0,
        creation_seconds: 0.0,
        creation_overran_deadline: false,
        decided,
        undecided: 0,
        paid: o.paid,
        closed: o.closed,
        retries: o.retries,
        parked: o.parked,
        mismatches: o.mismatches,
        decisions_per_second: stats::rate(decided.saturating_sub(1) as f64, span),
        decision_span_seconds: span,
        lateness_ms: Percentiles::of(&lateness),
        lateness_quantiles_ms: stats::quantiles(&lateness),
        decisions_per_second_series: series,
        worker_cpu_seconds: sample.cpu_seconds,
        worker_cpu_ms_per_decision: if decided > 0 {
            sample.cpu_seconds * 1000.0 / decided as f64
        } else {
            0.0
        },
        worker_cpu_seconds_before_deadline: 0.0,
        worker_cpu_ms_per_decision_after_deadline: 0.0,
        worker_peak_rss_mib: sample.peak_rss_mib,
    })
}

/// Signatures per decision on our side and in total (the simulator signs each answer),
/// for this mix of buyers.
pub fn signatures_per_decision(mix: &BTreeMap<Buyer, usize>) -> (f64, f64) {
    let orders: usize = mix.values().sum();
    if orders == 0 {
        return (0.0, 0.0);
    }
    let calls: u64 = mix
        .iter()
        .map(|(b, n)| u64::from(b.signed_calls()) * *n as u64)
        .sum();
    let ours = calls as f64 / orders as f64;
    (ours, 2.0 * ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyer_mix_follows_the_paid_share() {
        let mut mix: BTreeMap<Buyer, usize> = BTreeMap::new();
        for i in 0..10_000 {
            *mix.entry(Buyer::pick(i, 0.3)).or_default() += 1;
        }
        let share = |b| mix.get(&b).copied().unwrap_or(0) as f64 / 10_000.0;
        assert!((share(Buyer::Paid) - 0.30).abs() < 0.01);
        assert!((share(Buyer::Scanned) - 0.35).abs() < 0.01);
        assert!((share(Buyer::NeverScanned) - 0.35).abs() < 0.01);
        let (ours, total) = signatures_per_decision(&mix);
        assert!((ours - 1.35).abs() < 0.01, "{ours}");
        assert!((total - 2.7).abs() < 0.02, "{total}");
    }
}
