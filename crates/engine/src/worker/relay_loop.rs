//! The relay task inside the worker: publishes event rows and abandoned close rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::relay::Relay;
use order_closer_core::broker::publisher::Publisher;
use order_closer_core::config::OutboxSettings;
use order_closer_core::db::outbox::Claim;
use order_closer_core::db::{self, DbPool};

const BATCH: i64 = 500;
/// How often the backlog gauge is refreshed (a count over a large outbox is not free).
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs until cancelled, then makes one last pass so that the events of the final
/// decisions go out with this worker rather than wait for the next one.
pub async fn run(
    pool: DbPool,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    outbox: OutboxSettings,
    stop: CancellationToken,
) {
    let relay = Relay::new(publisher);
    let mut ticker = tokio::time::interval(outbox.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted_at: Option<Instant> = None;
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        pass(&pool, &relay, outbox.grace).await;
        if counted_at.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
            counted_at = Some(Instant::now());
            if let Ok(mut conn) = db::conn(&pool).await
                && let Ok(n) = db::outbox::backlog(&mut conn).await
            {
                metrics.outbox_backlog.set(n);
            }
        }
        if last {
            return;
        }
    }
}

/// Publishes batches until the outbox has nothing more for this relay.
async fn pass(pool: &DbPool, relay: &Relay, grace: Duration) {
    loop {
        let published = match db::conn(pool).await {
            Ok(mut conn) => {
                relay
                    .flush(
                        &mut conn,
                        Claim {
                            grace,
                            limit: BATCH,
                        },
                    )
                    .await
            }
            Err(e) => {
                warn!(error = %e, "outbox relay: database unavailable");
                return;
            }
        };
        match published {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(0) => return,
            Ok(n) => {
                debug!(published = n, "outbox relay");
                return;
            }
            Err(e) => {
                warn!(error = %e, "outbox relay failed; rows stay in the outbox");
                return;
            }
        }
    }
}
