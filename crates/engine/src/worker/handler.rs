//! One delivery from the close queue: decode, wait or forward if early, decide, then
//! route the message (ack, re-delay, retry, park) and only then acknowledge it. What is
//! done with it is decided by pure code ([`super::broker_action`]); this file carries it
//! out against the broker.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::decide::{AttemptInfo, Decider, Mode};
use order_closer_core::broker::BrokerError;
use order_closer_core::broker::publisher::{ParkNote, Publisher};
use order_closer_core::broker::tiers::{Route, SMALLEST_TIER};
use order_closer_core::message::{CloseMessage, cut_oversized};

use super::acks::Acks;
use super::broker_action::{
    BrokerAction, DB_RETRY_DELAY, Finished, ParkReason, Reschedule, Triage, after_decision,
    before_deciding,
};

/// Pause before handing a message back after a failed follow-up publish.
pub const REQUEUE_PAUSE: Duration = Duration::from_secs(2);

/// What every handler shares.
pub struct Context {
    /// Decides orders.
    pub decider: Decider,
    /// Publishes forwards, retries and parked messages.
    pub publisher: Publisher,
    /// Cancelled when a publish fails: the session reconnects and re-declares.
    pub broken: CancellationToken,
    /// Acknowledges finished deliveries in runs.
    pub acks: Arc<Acks>,
    /// One per delivery at work (deciding, forwarding, parking); a delivery waiting out
    /// the last moments before its deadline holds none.
    pub permits: Arc<Semaphore>,
    /// Cancelled on shutdown: a delivery that has not started working by then is left
    /// unacknowledged, and the broker redelivers it when the channel closes.
    pub stopping: CancellationToken,
}

impl Context {
    /// Waits for a permit to work (counted in the `in_flight` gauge while held); None when
    /// the worker is stopping first.
    async fn work(&self) -> Option<Working<'_>> {
        if self.stopping.is_cancelled() {
            return None;
        }
        let permit = tokio::select! {
            // Only a closed semaphore fails, and the worker never closes it.
            permit = self.permits.acquire() => permit.ok(),
            () = self.stopping.cancelled() => return None,
        };
        self.decider.metrics().in_flight.inc();
        Some(Working {
            ctx: self,
            _permit: permit,
        })
    }
}

/// A delivery at work; gives its permit back when dropped.
struct Working<'a> {
    ctx: &'a Context,
    _permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.ctx.decider.metrics().in_flight.dec();
    }
}

/// Handles one delivery; never panics, never drops a message.
pub async fn handle(ctx: &Context, mut delivery: Delivery) {
    // First of all, before waiting for a permit: a body over the contract's limit is cut
    // to it, so that large messages cost no more memory than lawful ones while they wait,
    // and are parked cut (with their size), never whole.
    if let Some(cut) = cut_oversized(&mut delivery.data) {
        warn!(
            bytes = cut.original_bytes,
            "oversized close message; parking it cut"
        );
        park_unreadable(ctx, &delivery, "oversized", &cut.to_string()).await;
        return;
    }
    let message = match CloseMessage::decode(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, bytes = delivery.data.len(), "malformed close message; parking it");
            park_unreadable(ctx, &delivery, "malformed", &e.to_string()).await;
            return;
        }
    };
    let span = info_span!(
        "order",
        order_id = message.order_id,
        out_trade_no = %message.out_trade_no,
        attempt = message.attempt,
        job = ?message.job,
        delivery_tag = delivery.delivery_tag,
    );
    async {
        // With the forward line below, a lost order's trail tells a message the broker
        // never delivered from one that was forwarded (or decided) and acknowledged.
        debug!(
            redelivered = delivery.redelivered,
            due_at = %message.due_at(),
            "received"
        );
        match route(ctx, message).await {
            Ok(Routed::NotStarted) => {
                debug!("worker stopping before this delivery started; the broker redelivers it")
            }
            routed => finish_delivery(ctx, &delivery, routed.map(|_| ())).await,
        }
    }
    .instrument(span)
    .await;
}

/// Parks a message that cannot be read as a close message (`reason`: `malformed`,
/// `oversized`), then acknowledges it.
async fn park_unreadable(ctx: &Context, delivery: &Delivery, reason: &str, error: &str) {
    let routed = {
        let Some(_working) = ctx.work().await else {
            return;
        };
        let note = ParkNote {
            reason,
            last_error: error,
            attempts: 0,
            first_seen: Utc::now(),
        };
        ctx.decider.metrics().parked(reason);
        ctx.publisher.park(&delivery.data, &note).await
    };
    finish_delivery(ctx, delivery, routed).await;
}

/// What became of a delivery that needs no nack.
enum Routed {
    /// Decided, forwarded or parked: acknowledge it.
    Done,
    /// The worker is stopping and it was not started: leave it to the broker.
    NotStarted,
}

/// Decides (or forwards) a message and publishes whatever must follow it.
async fn route(ctx: &Context, message: CloseMessage) -> Result<Routed, BrokerError> {
    let remaining = (message.due_at() - Utc::now()).to_std().unwrap_or_default();
    if remaining < SMALLEST_TIER && !remaining.is_zero() {
        // The last stretch is waited out here, holding no permit: waiting is not work.
        tokio::time::sleep(remaining).await;
    }
    let Some(_working) = ctx.work().await else {
        return Ok(Routed::NotStarted);
    };
    act(ctx, message).await.map(|()| Routed::Done)
}

/// Decides (or forwards, or parks) a message taken up now, as [`before_deciding`] and
/// [`after_decision`] say, and publishes whatever must follow it. Returns Ok when the
/// delivery may be acknowledged.
async fn act(ctx: &Context, message: CloseMessage) -> Result<(), BrokerError> {
    let started = Utc::now();
    let action = match before_deciding(message, started) {
        Triage::Act(action) => action,
        Triage::Decide(message) => {
            let attempt = AttemptInfo {
                number: message.attempt,
                first_seen: message.first_seen,
                not_before: message.not_before,
            };
            let outcome = ctx.decider.act_on(&message, attempt, Mode::Apply).await;
            after_decision(message, &outcome, started, Utc::now())
        }
    };
    execute(ctx, action).await
}

/// Carries out a broker action: logs it, counts what no decision counted, and publishes
/// the follow-up it needs. Returns Ok when the delivery may be acknowledged.
async fn execute(ctx: &Context, action: BrokerAction) -> Result<(), BrokerError> {
    match action {
        BrokerAction::Ack(Finished::Done) => Ok(()),
        BrokerAction::Ack(Finished::OrderMissing) => {
            warn!("no such order; acknowledging the message");
            Ok(())
        }
        BrokerAction::Schedule { message, why } => {
            match &why {
                Reschedule::Retry { code, delay } => {
                    info!(%code, ?delay, next_attempt = message.attempt, "retrying later");
                }
                Reschedule::DatabaseUnavailable { error } => {
                    warn!(%error, retry_in = ?DB_RETRY_DELAY, "database unavailable; trying again later");
                }
                Reschedule::EarlyHop { .. } | Reschedule::NotDue => {}
            }
            let route = ctx.publisher.schedule(&message, Utc::now()).await?;
            if let Reschedule::EarlyHop { remaining } = why {
                ctx.decider.metrics().forwarded();
                let tier_ms = match route {
                    Route::Tier(i) => ctx
                        .publisher
                        .topology()
                        .tiers()
                        .all()
                        .get(i)
                        .map(|t| t.as_millis()),
                    Route::Due => None,
                };
                debug!(?tier_ms, ?remaining, "not due yet; forwarded");
            }
            Ok(())
        }
        BrokerAction::Park { message, note } => {
            if note.reason == ParkReason::DeadlineOutOfRange {
                // No order can be due that far ahead: a broken publisher. No decision
                // counted it, so it is counted here.
                warn!(due_at = %message.due_at(), "deadline out of range; parking the message");
                ctx.decider.metrics().parked(note.reason.as_str());
            }
            let park = ParkNote {
                reason: note.reason.as_str(),
                last_error: &note.last_error,
                attempts: note.attempts,
                first_seen: note.first_seen,
            };
            ctx.publisher.park(&message.encode(), &park).await
        }
    }
}

/// Acknowledges a delivery whose follow-up is safely published (in a run with others);
/// otherwise hands it back to the broker and asks the session to reconnect (which
/// re-declares the topology).
async fn finish_delivery(ctx: &Context, delivery: &Delivery, routed: Result<(), BrokerError>) {
    let tag = delivery.delivery_tag;
    if let Err(e) = routed {
        error!(error = %e, "could not publish the follow-up; handing the message back to the broker");
        ctx.broken.cancel();
        // Pause first so that a broker in trouble does not see a hot requeue loop.
        tokio::time::sleep(REQUEUE_PAUSE).await;
        let nack = delivery.acker.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        });
        if matches!(
            tokio::time::timeout(order_closer_core::broker::BROKER_TIMEOUT, nack).await,
            Ok(Ok(true))
        ) {
            // Only now may a run of acks pass this delivery.
            ctx.acks.handed_back(tag);
        } else {
            // It stays open, so no ack covers it; the broker redelivers it when the
            // channel closes.
            warn!("channel gone before the nack; the broker will redeliver");
        }
        return;
    }
    ctx.acks.finished(tag);
}
