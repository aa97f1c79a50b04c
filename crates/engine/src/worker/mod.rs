//! The worker: consumes the close queue, decides each order, and runs the outbox relay.
//!
//! Many orders are in flight at once (`concurrency`, with a broker `prefetch` window);
//! `--concurrency 1 --prefetch 1` gives the classic one-at-a-time consumer for
//! comparison. On a lost connection it reconnects with back-off and re-declares the
//! topology; unacked messages come back from the broker and are decided once (the
//! guarded update makes a second decision a no-op). On shutdown it stops taking
//! messages, lets in-flight decisions finish within a grace period, and hands the rest
//! back to the broker.

mod acks;
mod broker_action;
mod handler;
mod janitor_loop;
mod relay_loop;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::decide::Decider;
use crate::health::Readiness;
use crate::janitor::Janitor;
use order_closer_core::broker::publisher::Publisher;
use order_closer_core::broker::{self, BrokerError, timed};
use order_closer_core::config::{BrokerSettings, Settings, WorkerSettings};

/// What a worker runs with: the broker it consumes from and its own settings, the two
/// sections of [`Settings`] as they were read (a test or a flag changes
/// `worker.concurrency` and `worker.prefetch` in place).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker: URL, TLS files, topology.
    pub broker: BrokerSettings,
    /// Concurrency, prefetch, shutdown grace, the relay's and the janitor's pace.
    pub worker: WorkerSettings,
}

impl WorkerConfig {
    /// The worker's sections of the process settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            broker: settings.broker.clone(),
            worker: settings.worker,
        }
    }
}

/// A worker process's main loop.
pub struct Worker {
    decider: Decider,
    config: WorkerConfig,
    readiness: Arc<Readiness>,
}

const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// Waits between reconnection attempts: doubling from 0.5 s to 30 s, and back to 0.5 s
/// after a session that worked.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: MIN_RECONNECT_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt; the one after it is twice as long (capped).
    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_RECONNECT_BACKOFF);
        wait
    }

    /// After a good session.
    fn reset(&mut self) {
        self.next = MIN_RECONNECT_BACKOFF;
    }
}

impl Worker {
    /// A worker deciding with `decider`.
    pub fn new(decider: Decider, config: WorkerConfig) -> Self {
        Self {
            decider,
            config,
            readiness: Arc::new(Readiness::default()),
        }
    }

    /// The metrics the worker records into.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.decider.metrics().clone()
    }

    /// Whether the worker is consuming (for `/readyz`).
    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Runs until `shutdown` is cancelled, reconnecting to the broker as needed. Returns
    /// an error only for a configuration the broker refuses (a queue declared with other
    /// arguments): retrying cannot fix that, so the process should stop and say so.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let mut consumed = false;
            match self.session(&shutdown, &mut consumed).await {
                Ok(()) => break,
                Err(e) if e.is_fatal() => {
                    tracing::error!(error = %e, "the broker refuses this configuration; stopping");
                    return Err(e);
                }
                Err(e) => {
                    // A session that got as far as consuming was a good one: the next
                    // outage starts from the shortest wait again.
                    if consumed {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    warn!(error = %e, retry_in = ?wait, "broker session ended; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        info!("worker stopped");
        Ok(())
    }

    /// One connection's life: declare, consume, decide; returns Ok on shutdown. Sets
    /// `consumed` once the consumer is running.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        consumed: &mut bool,
    ) -> Result<(), BrokerError> {
        let worker = &self.config.worker;
        let connection =
            broker::connect_configured(&self.config.broker, "order-closer worker").await?;
        let topology = Arc::new(self.config.broker.topology.clone());
        let publisher = Publisher::open(&connection, Arc::clone(&topology)).await?;
        topology.declare(publisher.channel()).await?;

        // A background task that ends before it is told to (a panic, a bug) ends the
        // session: the worker goes unready, logs an error, and the next session starts
        // every task afresh. Never a silent half-worker.
        let task_died = CancellationToken::new();
        let relay_stop = shutdown.child_token();
        let relay = supervise(
            "outbox relay",
            &relay_stop,
            &task_died,
            relay_loop::run(
                self.decider.pool().clone(),
                publisher.clone(),
                self.decider.metrics().clone(),
                worker.outbox,
                relay_stop.clone(),
            ),
        );

        let janitor_stop = shutdown.child_token();
        let probe = timed("open channel", connection.create_channel()).await?;
        let janitor = supervise(
            "janitor",
            &janitor_stop,
            &task_died,
            janitor_loop::run(
                Janitor::new(self.decider.clone(), publisher.clone(), worker.janitor),
                probe,
                topology.close_queue(),
                self.decider.metrics().clone(),
                janitor_stop.clone(),
            ),
        );

        let channel = timed("open channel", connection.create_channel()).await?;
        timed(
            "basic.qos",
            channel.basic_qos(worker.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut consumer = timed(
            "basic.consume",
            channel.basic_consume(
                topology.close_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        self.readiness.set_broker(true);
        self.decider.metrics().consuming.set(1);
        *consumed = true;
        info!(
            queue = %topology.close_queue(),
            concurrency = worker.concurrency,
            prefetch = worker.prefetch,
            "consuming"
        );

        let mut in_flight = JoinSet::new();
        let broken = CancellationToken::new();
        let acks = acks::Acks::new(channel.clone());
        let acks_stop = CancellationToken::new();
        let acker = supervise(
            "acknowledgements",
            &acks_stop,
            &task_died,
            acks.clone().run(acks_stop.clone()),
        );
        let ctx = Arc::new(handler::Context {
            decider: self.decider.clone(),
            publisher: publisher.clone(),
            broken: broken.clone(),
            acks,
            permits: Arc::new(Semaphore::new(worker.concurrency)),
            stopping: shutdown.clone(),
        });
        let result = loop {
            // Reap finished deliveries so the set does not grow.
            while in_flight.try_join_next().is_some() {}
            // No permit is taken here: the prefetch window bounds the deliveries held, and
            // each takes a permit only when it starts working (see `handler::handle`).
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = broken.cancelled() => break Err(BrokerError::ChannelGone { op: "publish" }),
                () = task_died.cancelled() => break Err(BrokerError::TaskStopped),
                next = consumer.next() => next,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    ctx.acks.delivered(delivery.delivery_tag);
                    let ctx = ctx.clone();
                    in_flight.spawn(async move {
                        handler::handle(&ctx, delivery).await;
                    });
                }
                Some(Err(source)) => {
                    break Err(BrokerError::Amqp {
                        op: "consume",
                        source,
                    });
                }
                None => {
                    break Err(BrokerError::ChannelGone { op: "consume" });
                }
            }
        };

        self.readiness.set_broker(false);
        self.decider.metrics().consuming.set(0);
        // Stop taking messages; what the broker already pushed but we did not start is
        // handed back when the channel closes.
        if result.is_ok() {
            let tag = consumer.tag();
            if let Err(e) = timed(
                "basic.cancel",
                channel.basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await
            {
                warn!(error = %e, "could not cancel the consumer");
            }
        }
        let waiting = in_flight.len();
        if waiting > 0 {
            info!(in_flight = waiting, grace = ?worker.shutdown_grace, "finishing in-flight decisions");
        }
        let drained = tokio::time::timeout(worker.shutdown_grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                abandoned = in_flight.len(),
                "grace period over; unfinished messages go back to the broker"
            );
            in_flight.abort_all();
        }
        // Acknowledge what finished before the channel closes.
        acks_stop.cancel();
        let _ = acker.await;
        relay_stop.cancel();
        janitor_stop.cancel();
        let _ = relay.await;
        let _ = janitor.await;
        let _ = timed(
            "channel.close",
            channel.close(200, "worker stopping".into()),
        )
        .await;
        let _ = timed(
            "connection.close",
            connection.close(200, "worker stopping".into()),
        )
        .await;
        result
    }
}

/// Spawns one of the session's background tasks. If it ends before `stop` is cancelled,
/// or panics, an error is logged and `died` is cancelled, which ends the session.
fn supervise(
    task: &'static str,
    stop: &CancellationToken,
    died: &CancellationToken,
    work: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let inner = tokio::spawn(work);
    let (stop, died) = (stop.clone(), died.clone());
    tokio::spawn(async move {
        let ended = inner.await;
        if stop.is_cancelled() && ended.is_ok() {
            return;
        }
        match ended {
            Ok(()) => tracing::error!(task, "a background task stopped unexpectedly"),
            Err(e) => tracing::error!(task, error = %e, "a background task panicked"),
        }
        died.cancel();
    })
}

/// A token cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutdown requested");
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_background_task_that_panics_or_stops_early_ends_the_session() {
        let stop = CancellationToken::new();
        let died = CancellationToken::new();
        let handle = supervise("panicking", &stop, &died, async {
            panic!("a bug in a background task");
        });
        handle.await.expect("the supervisor itself never panics");
        assert!(died.is_cancelled(), "a panic must end the session");

        let died = CancellationToken::new();
        supervise("quitter", &stop, &died, async {}).await.unwrap();
        assert!(died.is_cancelled(), "an early return must end the session");

        stop.cancel();
        let died = CancellationToken::new();
        supervise("stopped", &stop, &died, async {}).await.unwrap();
        assert!(!died.is_cancelled(), "a task told to stop ends quietly");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_after_a_good_session() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
        assert_eq!(b.next_wait(), Duration::from_secs(1));
    }
}
