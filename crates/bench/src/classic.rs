//! The classic run: the same batch as the pipeline, decided by a worker with
//! `--concurrency 1 --prefetch 1` (the one-at-a-time consumer), on fewer orders.

use super::pipeline::{self, BatchResult};
use super::{BenchEnv, Plan};

/// Runs the classic batch.
pub async fn run(
    env: &BenchEnv,
    plan: &Plan,
    create_rate_hint: Option<f64>,
) -> anyhow::Result<BatchResult> {
    let count = plan.classic_orders as usize;
    pipeline::run_batch(
        env,
        "classic",
        pipeline::Trades::One,
        count,
        plan.paid_share,
        pipeline::Workers::tuned(1, 1),
        pipeline::planned_lead(count, create_rate_hint),
    )
    .await
}
