//! The sustained run: orders arrive at a steady rate, each due about 2 s after it is
//! created, for a while, with the worker running; lateness is reported per 10 s window
//! (by deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use order_closer_core::closer::{Due, NewOrder};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::pipeline::{self, Buyer, Created};
use super::stats::{self, Percentiles};
use super::worker_proc::WorkerProcess;
use super::{BenchEnv, Plan};

/// Time to pay of every sustained order.
const DUE_AFTER: Duration = Duration::from_secs(2);
/// Width of a reporting window.
const WINDOW: Duration = Duration::from_secs(10);
/// Creations in flight at most; beyond it arrivals wait (and the achieved rate drops).
const MAX_IN_FLIGHT: usize = 1024;
/// Arrival clock tick.
const TICK: Duration = Duration::from_millis(10);

/// Lateness in one window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Window start, seconds after the run started (by deadline).
    pub start_seconds: f64,
    /// Lateness of the orders due in this window, milliseconds.
    pub lateness_ms: Percentiles,
}

/// The sustained run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SustainedResult {
    /// Seconds of arrivals.
    pub duration_seconds: f64,
    /// Orders per second asked for.
    pub target_rate: f64,
    /// Orders per second created.
    pub achieved_rate: f64,
    /// Orders created.
    pub orders: usize,
    /// Creations that failed.
    pub create_errors: usize,
    /// Orders decided.
    pub decided: usize,
    /// Orders still NEW when the bench stopped waiting.
    pub undecided: usize,
    /// Retry decisions (through the delay tiers).
    pub retries: usize,
    /// Park decisions.
    pub parked: usize,
    /// Quick retries (transient errors retried in the process).
    pub quick_retries: usize,
    /// Queries and closes per decided order, as counted by the simulator.
    pub gateway_calls_per_decision: f64,
    /// Orders whose status disagrees with their buyer.
    pub mismatches: usize,
    /// Lateness over the whole run, milliseconds.
    pub lateness_ms: Percentiles,
    /// Lateness per 10 s window.
    pub windows: Vec<Window>,
    /// Worker CPU milliseconds per decision.
    pub worker_cpu_ms_per_decision: f64,
    /// Worker peak RSS, MiB.
    pub worker_peak_rss_mib: f64,
}

/// Runs arrivals at `rate` per second for `duration`.
pub async fn run(
    env: &BenchEnv,
    plan: &Plan,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<SustainedResult> {
    let mut worker =
        WorkerProcess::start(env, "sustained", plan.concurrency, plan.prefetch).await?;
    let calls_before = env.sim_state.stats();
    let closer = env
        .app()
        .closer_on(env.pool.clone(), Some(env.publisher.clone()));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks: JoinSet<anyhow::Result<Created>> = JoinSet::new();
    let mut created = Vec::new();
    let mut errors = 0usize;
    let mut reap = |r: Result<anyhow::Result<Created>, tokio::task::JoinError>,
                    created: &mut Vec<Created>| match r {
        Ok(Ok(c)) => created.push(c),
        Ok(Err(e)) => {
            if errors == 0 {
                eprintln!("warning: a sustained order could not be created: {e:#}");
            }
            errors += 1;
        }
        Err(_) => errors += 1,
    };

    let started_utc = Utc::now();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let mut issued = 0usize;
    let bar = super::progress(
        (rate * duration.as_secs_f64()) as u64,
        "sustained: orders created",
    );
    while started.elapsed() < duration {
        ticker.tick().await;
        worker.ensure_alive()?;
        let due = (started.elapsed().min(duration).as_secs_f64() * rate) as usize;
        while issued < due {
            let permit = permits.clone().acquire_owned().await?;
            let i = issued;
            issued += 1;
            let closer = closer.clone();
            let sim = env.sim_state.clone();
            let no = format!("B{}-sustained-{i}", env.tag);
            let paid_share = plan.paid_share;
            let channel = env.channel;
            tasks.spawn(async move {
                let buyer = Buyer::pick(i, paid_share);
                let amount = 100 + (i as i64 % 9_900);
                let order = closer
                    .create_order(NewOrder::new(channel, &no, amount, Due::After(DUE_AFTER)))
                    .await?;
                buyer.act(&sim, channel, &no, amount)?;
                drop(permit);
                Ok(Created {
                    id: order.order.id,
                    buyer,
                })
            });
        }
        while let Some(r) = tasks.try_join_next() {
            reap(r, &mut created);
        }
        bar.set_position(issued as u64);
    }
    while let Some(r) = tasks.join_next().await {
        reap(r, &mut created);
    }
    bar.finish_and_clear();
    let arrivals = started.elapsed();

    let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
    let until = Instant::now() + DUE_AFTER + Duration::from_secs(120);
    let undecided = pipeline::wait_decided(env, &mut worker, &ids, "sustained", until).await?;
    pipeline::wait_outbox(&env.pool, Duration::from_secs(60)).await;
    let sample = worker.sample()?;
    let status = worker.stop().await?;
    if !status.success() {
        eprintln!("warning: the sustained worker exited with {status}");
    }

    let calls_after = env.sim_state.stats();
    let calls = (calls_after.queries + calls_after.closes)
        .saturating_sub(calls_before.queries + calls_before.closes);
    let o = pipeline::outcomes(env, &created).await?;
    let mut all: Vec<f64> = o.decided.iter().map(|d| d.lateness_ms()).collect();
    stats::sort(&mut all);
    let mut by_window: Vec<Vec<f64>> = Vec::new();
    for d in &o.decided {
        let offset = (d.deadline - started_utc).num_milliseconds().max(0) as u128;
        let w = (offset / WINDOW.as_millis()) as usize;
        if by_window.len() <= w {
            by_window.resize(w + 1, Vec::new());
        }
        by_window[w].push(d.lateness_ms());
    }
    let windows = by_window
        .into_iter()
        .enumerate()
        .map(|(w, mut v)| {
            stats::sort(&mut v);
            Window {
                start_seconds: (w as f64) * WINDOW.as_secs_f64(),
                lateness_ms: Percentiles::of(&v),
            }
        })
        .collect();
    let decided = o.decided.len();
    Ok(SustainedResult {
        duration_seconds: duration.as_secs_f64(),
        target_rate: rate,
        achieved_rate: stats::rate(created.len() as f64, arrivals.as_secs_f64()),
        orders: created.len(),
        create_errors: errors,
        decided,
        undecided,
        retries: o.retries,
        parked: o.parked,
        quick_retries: o.quick_retries,
        gateway_calls_per_decision: if o.decided.is_empty() {
            0.0
        } else {
            calls as f64 / o.decided.len() as f64
        },
        mismatches: o.mismatches,
        lateness_ms: Percentiles::of(&all),
        windows,
        worker_cpu_ms_per_decision: if decided > 0 {
            sample.cpu_seconds * 1000.0 / decided as f64
        } else {
            0.0
        },
        worker_peak_rss_mib: sample.peak_rss_mib,
    })
}
