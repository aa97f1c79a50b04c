//! The pending-closes run: a million orders (by default) whose close schedules pile up in
//! the outbox, as after a long broker outage, then are scheduled by the worker's relay
//! into the delay tiers with batched confirms. The orders are written in batches by
//! `Closer::create_orders` without a broker; their deadlines lie hours ahead, so every
//! close stays pending in the tiers. The worker's RSS is sampled every second: it must
//! stay flat however many closes are pending or being scheduled.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use order_closer_core::closer::{Due, NewOrder};
use order_closer_core::db;
use serde::Serialize;
use tokio::task::JoinSet;

use super::stats::rate;
use super::worker_proc::WorkerProcess;
use super::{BenchEnv, Plan};

/// Orders per `create_orders` call.
const BATCH: usize = 5_000;
/// `create_orders` calls in flight.
const WRITERS: usize = 2;
/// Deadlines are spread evenly from this far ahead...
const EARLIEST: Duration = Duration::from_secs(2 * 3600);
/// ...over this span, so every tier from about an hour up holds some.
const SPREAD: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for the relay to empty the outbox.
const RELAY_LIMIT: Duration = Duration::from_secs(900);
/// How often the worker and the outbox are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One sample, every [`SAMPLE_EVERY`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub seconds: f64,
    /// Orders written so far.
    pub written: usize,
    /// Close schedules still in the outbox.
    pub outbox: i64,
    /// Worker resident set size, MiB.
    pub worker_rss_mib: f64,
}

/// The pending-closes run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PendingResult {
    /// Orders written (and closes to schedule).
    pub orders: usize,
    /// Seconds writing them took.
    pub write_seconds: f64,
    /// Orders written per second (`create_orders` batches of [`BATCH`]).
    pub written_per_second: f64,
    /// Seconds from the last sample before the relay took a row to the first sample with
    /// an empty outbox (an upper bound, to within one sampling interval).
    pub relay_seconds: f64,
    /// Close messages scheduled per second by the relay.
    pub relayed_per_second: f64,
    /// Messages waiting in the delay tiers at the end.
    pub pending_in_tiers: u64,
    /// Worker RSS when the run started, MiB.
    pub worker_rss_start_mib: f64,
    /// Highest worker RSS sampled, MiB.
    pub worker_rss_max_mib: f64,
    /// Worker RSS at the end, MiB.
    pub worker_rss_end_mib: f64,
    /// Highest sample minus the start, MiB.
    pub worker_rss_growth_mib: f64,
    /// Worker CPU seconds spent relaying.
    pub worker_cpu_seconds: f64,
    /// Every sample.
    pub samples: Vec<Sample>,
}

/// Writes `count` orders and lets a worker's relay schedule them all.
pub async fn run(env: &BenchEnv, plan: &Plan, count: usize) -> anyhow::Result<PendingResult> {
    let mut worker = WorkerProcess::start(env, "pending", plan.concurrency, plan.prefetch).await?;
    // Earlier runs may have left far-future messages in the tiers (the create measurement).
    let already_in_tiers = in_tiers(env).await?;
    let start = worker.sample()?;
    let clock = Instant::now();
    let offline = env.app().closer_on(env.pool.clone(), None);
    let first_deadline = Utc::now() + chrono::Duration::from_std(EARLIEST)?;
    let step = SPREAD.as_secs_f64() / count.max(1) as f64;
    let prefix = format!("P{}", env.tag);

    let mut writers: JoinSet<anyhow::Result<usize>> = JoinSet::new();
    let mut next = 0usize;
    let mut written = 0usize;
    let mut samples = Vec::new();
    let mut write_seconds = None;
    let mut relay_started: Option<f64> = None;
    let mut before_relay = 0.0;
    let mut last_sample = Instant::now();
    loop {
        while writers.len() < WRITERS && next < count {
            let end = (next + BATCH).min(count);
            let batch: Vec<NewOrder> = (next..end)
                .map(|i| {
                    let due = first_deadline
                        + chrono::Duration::milliseconds((i as f64 * step * 1000.0) as i64);
                    NewOrder::new(
                        env.channel,
                        format!("{prefix}-{i}"),
                        100 + (i as i64 % 9_900),
                        Due::At(due),
                    )
                })
                .collect();
            let closer = offline.clone();
            writers.spawn(async move {
                let n = batch.len();
                closer
                    .create_orders(&batch)
                    .await
                    .context("writing pending orders")?;
                Ok(n)
            });
            next = end;
        }
        let tick = tokio::time::sleep(SAMPLE_EVERY.saturating_sub(last_sample.elapsed()));
        tokio::select! {
            Some(done) = writers.join_next(), if !writers.is_empty() => {
                written += done.context("writer task")??;
                if written == count {
                    write_seconds = Some(clock.elapsed().as_secs_f64());
                }
                continue;
            }
            () = tick => {}
        }
        last_sample = Instant::now();
        worker.ensure_alive()?;
        let outbox = backlog(env).await?;
        let rss = worker.sample()?.rss_mib;
        let seconds = clock.elapsed().as_secs_f64();
        samples.push(Sample {
            seconds,
            written,
            outbox,
            worker_rss_mib: rss,
        });
        if relay_started.is_none() {
            if (written as i64) > outbox {
                relay_started = Some(before_relay);
            } else {
                before_relay = seconds;
            }
        }
        if written == count && outbox == 0 {
            break;
        }
        anyhow::ensure!(
            clock.elapsed() < RELAY_LIMIT,
            "the relay did not schedule {count} closes within {RELAY_LIMIT:?} ({outbox} left)"
        );
    }
    let relay_seconds = relay_started.map_or(0.0, |t| clock.elapsed().as_secs_f64() - t);
    let end = worker.sample()?;
    let pending_in_tiers = in_tiers(env).await?.saturating_sub(already_in_tiers);
    let status = worker.stop().await?;
    if !status.success() {
        eprintln!("warning: the pending worker exited with {status}");
    }
    let max = samples
        .iter()
        .map(|s| s.worker_rss_mib)
        .fold(start.rss_mib, f64::max);
    let write_seconds = write_seconds.unwrap_or_else(|| clock.elapsed().as_secs_f64());
    Ok(PendingResult {
        orders: count,
        write_seconds,
        written_per_second: rate(count as f64, write_seconds),
        relay_seconds,
        relayed_per_second: rate(count as f64, relay_seconds),
        pending_in_tiers,
        worker_rss_start_mib: start.rss_mib,
        worker_rss_max_mib: max,
        worker_rss_end_mib: end.rss_mib,
        worker_rss_growth_mib: max - start.rss_mib,
        worker_cpu_seconds: end.cpu_seconds - start.cpu_seconds,
        samples,
    })
}

async fn backlog(env: &BenchEnv) -> anyhow::Result<i64> {
    let mut conn = db::conn(&env.pool).await?;
    Ok(db::outbox::backlog(&mut conn).await?)
}

/// Messages in every delay tier.
async fn in_tiers(env: &BenchEnv) -> anyhow::Result<u64> {
    let channel = env.connection.create_channel().await?;
    let mut total = 0u64;
    for tier in env.topology.tiers().all() {
        let queue = channel
            .queue_declare(
                env.topology.delay_queue(*tier).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        total += u64::from(queue.message_count());
    }
    let _ = channel.close(200, "counted".into()).await;
    Ok(total)
}
