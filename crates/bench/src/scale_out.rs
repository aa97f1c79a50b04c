//! The scale-out run: the pipeline batch decided by 1, 2, then 3 worker processes at the
//! worker's default concurrency and prefetch (`--scale-out 1,2,3`), against the same
//! simulator (100 ms a call by default), each batch in the run's environment with orders
//! of its own. It reports decisions per second for each worker count, and how busy the
//! whole machine was while they decided: once every core is busy, adding a worker cannot
//! add throughput, and the machine (not the worker count) is the limit.

use serde::Serialize;

use super::pipeline::{self, BatchResult, Trades, Workers};
use super::{BenchEnv, Plan};

/// One worker count's batch.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOutRun {
    /// Worker processes.
    pub processes: u32,
    /// The batch.
    pub pipeline: BatchResult,
    /// Decisions per second over those of one process (the first run's).
    pub speed_up: Option<f64>,
}

/// Runs one batch per worker count in `plan.scale_out`.
pub async fn run(
    env: &BenchEnv,
    plan: &Plan,
    create_rate_hint: Option<f64>,
) -> anyhow::Result<Vec<ScaleOutRun>> {
    let count = plan.orders as usize;
    let mut runs: Vec<ScaleOutRun> = Vec::new();
    for &processes in &plan.scale_out {
        eprintln!(
            "scale-out run: {count} orders, {processes} worker process(es) at the default concurrency"
        );
        let lead = plan
            .lead()
            .unwrap_or_else(|| pipeline::planned_lead(count, create_rate_hint));
        let batch = pipeline::run_batch(
            env,
            &format!("scale-out-{processes}"),
            Trades::One,
            count,
            plan.paid_share,
            Workers {
                tuning: None,
                processes,
            },
            lead,
        )
        .await?;
        let base = runs
            .first()
            .map(|r| r.pipeline.decisions_per_second / f64::from(r.processes));
        runs.push(ScaleOutRun {
            processes,
            speed_up: base
                .filter(|b| *b > 0.0)
                .map(|b| batch.decisions_per_second / b),
            pipeline: batch,
        });
    }
    Ok(runs)
}
