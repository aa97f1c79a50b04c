//! The janitor task inside the worker: a pass every interval, skipped while the close
//! queue has messages waiting (see [`crate::janitor`] for why).

use std::sync::Arc;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::janitor::Janitor;
use crate::metrics::Metrics;
use order_closer_core::broker::timed;

/// Runs passes until cancelled. A pass cut short by shutdown is safe: its orders are
/// leased, and a decision interrupted midway is found by the next one.
pub async fn run(
    janitor: Janitor,
    probe: Channel,
    close_queue: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let interval = janitor.config().interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(waiting) = waiting(&probe, &close_queue).await
            && waiting > 0
        {
            // The workers are behind: an overdue order may still have its message queued.
            debug!(
                waiting,
                "close queue has messages waiting; janitor pass skipped"
            );
            metrics.janitor_pass("skipped_backlog");
            continue;
        }
        let report = tokio::select! {
            () = stop.cancelled() => return,
            report = janitor.pass() => report,
        };
        match report {
            Ok(report) if report.total() > 0 => {
                metrics.janitor_pass("ran");
                warn!(redriven = report.total(), verdicts = ?report.redriven, "janitor re-drove overdue orders");
            }
            Ok(_) => metrics.janitor_pass("ran"),
            Err(e) => {
                metrics.janitor_pass("failed");
                warn!(error = %e, "janitor pass failed; trying again next interval");
            }
        }
    }
}

/// Messages ready in the close queue, or None if the broker cannot say (then the pass
/// runs: a lost order is worse than a duplicate query).
async fn waiting(probe: &Channel, queue: &str) -> Option<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match timed(
        "queue.declare (passive)",
        probe.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await
    {
        Ok(q) => Some(q.message_count()),
        Err(e) => {
            info!(error = %e, "cannot read the close queue's length; running the janitor pass anyway");
            None
        }
    }
}
