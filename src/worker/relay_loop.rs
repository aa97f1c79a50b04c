//! The relay task inside the worker: publishes event rows and abandoned close rows.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::publisher::Publisher;
use crate::db::outbox::Claim;
use crate::db::{self, DbPool};
use crate::relay;

const BATCH: i64 = 500;

/// Runs until cancelled, then makes one last pass so that the events of the final
/// decisions go out with this worker rather than wait for the next one.
pub async fn run(
    pool: DbPool,
    publisher: Publisher,
    grace: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        pass(&pool, &publisher, grace).await;
        if last {
            return;
        }
    }
}

/// Publishes batches until the outbox has nothing more for this relay.
async fn pass(pool: &DbPool, publisher: &Publisher, grace: Duration) {
    loop {
        let published = match db::conn(pool).await {
            Ok(mut conn) => {
                relay::flush(
                    &mut conn,
                    publisher,
                    Claim::Pending {
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
