//! The simulator's payment notifications, sent as each gateway sends them: when a trade
//! is paid (or fully refunded), its gateway's notification ([`SimGateway::notification`])
//! is POSTed to `{url}/{channel}` and sent again on any reply the gateway does not take as
//! an acknowledgement, at the gateway's intervals ([`SimGateway::resend_schedule`])
//! multiplied by [`NotifyPlan::time_factor`] so that tests run the schedule in seconds.
//!
//! Its own faults: a notification can be dropped (none of its sends happen: the
//! "callback lost" buyer), delayed (a fixed delay plus a random jitter, which also
//! reorders notifications at random), duplicated (two copies, each with its own resends),
//! or reordered on purpose ([`NotifyPlan::reorder`]: notifications go out in groups, each
//! group last payment first, so a test can count on the order of arrival).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::gateway::{Forge, SimGateway};
use super::state::{MAX_FAULT_MS, SimTradeView};

/// One send's time limit.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyPlan {
    /// Where the notify endpoint is (`http://host:port/notify`): each gateway's
    /// notifications go to `{url}/{channel}`; none: nothing is sent.
    #[serde(default)]
    pub url: Option<String>,
    /// Multiplies the resend intervals (1 = the gateway's real schedule; 0.001 turns
    /// a 4-minute interval into 240 ms).
    #[serde(default = "one")]
    pub time_factor: f64,
    /// Share of notifications dropped entirely (0 to 1).
    #[serde(default)]
    pub drop_rate: f64,
    /// Share of notifications sent twice (0 to 1).
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Delay before a notification's first send, in ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// A random extra delay up to this, in ms (reorders notifications).
    #[serde(default)]
    pub delay_jitter_ms: u64,
    /// Reorders on purpose: notifications are held in groups of this many and each
    /// group is sent last payment first, one after another (0 or 1: no reordering). A
    /// group still short after `reorder_wait_ms` goes out as it stands, also reversed.
    #[serde(default)]
    pub reorder: u32,
    /// How long a short reorder group waits for more, in ms (default 1000).
    #[serde(default)]
    pub reorder_wait_ms: Option<u64>,
    /// Seed of the draws (a fixed seed repeats them).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Largest reorder group.
pub const MAX_REORDER: u32 = 1000;

/// How long a short reorder group waits for more when the plan does not say.
const DEFAULT_REORDER_WAIT: Duration = Duration::from_secs(1);

fn one() -> f64 {
    1.0
}

impl Default for NotifyPlan {
    fn default() -> Self {
        Self {
            url: None,
            time_factor: 1.0,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay_ms: 0,
            delay_jitter_ms: 0,
            reorder: 0,
            reorder_wait_ms: None,
            seed: None,
        }
    }
}

impl NotifyPlan {
    /// Notifications to `url` on a schedule scaled by `time_factor`, no faults.
    pub fn to(url: impl Into<String>, time_factor: f64) -> Self {
        Self {
            url: Some(url.into()),
            time_factor,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url
            && order_closer_core::config::urls::check_http_url(url).is_err()
        {
            return Err(format!(
                "url {:?} is not an http:// or https:// URL",
                order_closer_core::url_secret::redact(url)
            ));
        }
        if !(self.time_factor > 0.0 && self.time_factor <= 10.0) {
            return Err(format!(
                "time_factor {} must be above 0 and at most 10",
                self.time_factor
            ));
        }
        for (name, rate) in [
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} {rate} must be from 0 to 1"));
            }
        }
        for (name, ms) in [
            ("delay_ms", self.delay_ms),
            ("delay_jitter_ms", self.delay_jitter_ms),
            ("reorder_wait_ms", self.reorder_wait_ms.unwrap_or(0)),
        ] {
            if ms > MAX_FAULT_MS {
                return Err(format!("{name} {ms} must be at most {MAX_FAULT_MS}"));
            }
        }
        if self.reorder > MAX_REORDER {
            return Err(format!(
                "reorder {} must be at most {MAX_REORDER}",
                self.reorder
            ));
        }
        Ok(())
    }
}

/// What the notifier did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStats {
    /// Notifications (one per paid or fully refunded trade) while a URL was set.
    pub notifications: u64,
    /// Of those, dropped on purpose.
    pub dropped: u64,
    /// Of those, sent twice on purpose.
    pub duplicated: u64,
    /// HTTP sends, resends included.
    pub sends: u64,
    /// Sends answered `success`.
    pub acknowledged: u64,
    /// Sends answered otherwise (or not at all).
    pub refused: u64,
    /// Copies that got no `success` after every resend.
    pub gave_up: u64,
    /// Notifications sent out of payment order on purpose (`reorder`).
    #[serde(default)]
    pub reordered: u64,
}

/// A notification waiting for its reorder group to fill.
#[derive(Debug)]
struct Held {
    url: String,
    gateway: Arc<dyn SimGateway>,
    trade: SimTradeView,
    duplicate: bool,
    time_factor: f64,
}

/// The reorder group being filled; `generation` tells a short group's timer whether its
/// group is still the one waiting.
#[derive(Debug, Default)]
struct ReorderGroup {
    held: Vec<Held>,
    generation: u64,
}

/// Sends the notifications of one simulator.
#[derive(Debug)]
pub struct SimNotifier {
    plan: Mutex<NotifyPlan>,
    stats: Mutex<NotifyStats>,
    rng: Mutex<StdRng>,
    /// The gateways by channel: who makes each trade's notification.
    gateways: Vec<Arc<dyn SimGateway>>,
    http: reqwest::Client,
    stop: CancellationToken,
    ids: AtomicU64,
    group: Mutex<ReorderGroup>,
}

impl SimNotifier {
    /// A notifier for these gateways' trades; stopped by `stop`.
    pub(crate) fn new(
        plan: NotifyPlan,
        gateways: Vec<Arc<dyn SimGateway>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let seed = plan.seed.unwrap_or_else(rand::random);
        Arc::new(Self {
            plan: Mutex::new(plan),
            stats: Mutex::new(NotifyStats::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            gateways,
            http: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default(),
            stop,
            ids: AtomicU64::new(1),
            group: Mutex::new(ReorderGroup::default()),
        })
    }

    /// The plan in force.
    pub fn plan(&self) -> NotifyPlan {
        self.plan.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Replaces the plan (validated first).
    pub fn set_plan(&self, plan: NotifyPlan) -> Result<(), String> {
        plan.validate()?;
        if let Some(seed) = plan.seed
            && let Ok(mut rng) = self.rng.lock()
        {
            *rng = StdRng::seed_from_u64(seed);
        }
        if let Ok(mut p) = self.plan.lock() {
            *p = plan;
        }
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> NotifyStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut NotifyStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Sends a notification for every trade event received, until stopped.
    pub(crate) fn run(self: Arc<Self>, mut events: UnboundedReceiver<SimTradeView>) {
        tokio::spawn(async move {
            loop {
                let trade = tokio::select! {
                    () = self.stop.cancelled() => return,
                    next = events.recv() => match next {
                        Some(trade) => trade,
                        None => return,
                    },
                };
                tokio::spawn(Arc::clone(&self).deliver(trade));
            }
        });
    }

    async fn deliver(self: Arc<Self>, trade: SimTradeView) {
        let plan = self.plan();
        let Some(base) = plan.url.clone() else {
            return;
        };
        let Some(gateway) = self
            .gateways
            .iter()
            .find(|g| g.channel() == trade.channel)
            .cloned()
        else {
            return;
        };
        let url = format!("{}/{}", base.trim_end_matches('/'), trade.channel);
        let (drop, duplicate, delay) = {
            let Ok(mut rng) = self.rng.lock() else {
                return;
            };
            let drop = rng.random_bool(plan.drop_rate);
            let duplicate = rng.random_bool(plan.duplicate_rate);
            let jitter = if plan.delay_jitter_ms > 0 {
                rng.random_range(0..=plan.delay_jitter_ms)
            } else {
                0
            };
            (drop, duplicate, plan.delay_ms.saturating_add(jitter))
        };
        let drop = drop || trade.notification_lost;
        self.count(|s| {
            s.notifications += 1;
            s.dropped += u64::from(drop);
            s.duplicated += u64::from(duplicate && !drop);
        });
        if drop || !self.pause(Duration::from_millis(delay)).await {
            return;
        }
        let held = Held {
            url,
            gateway,
            trade,
            duplicate,
            time_factor: plan.time_factor,
        };
        if plan.reorder >= 2 {
            let wait = plan
                .reorder_wait_ms
                .map_or(DEFAULT_REORDER_WAIT, Duration::from_millis);
            self.hold_for_reorder(held, plan.reorder as usize, wait)
                .await;
        } else {
            self.send(held).await;
        }
    }

    /// Sends one notification (and its duplicate); returns once its first send is
    /// answered, its resends going on in the background.
    async fn send(self: &Arc<Self>, held: Held) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let notify_id = format!("sim{id:012}");
        let copies = if held.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let (first_done, first) = tokio::sync::oneshot::channel();
            tokio::spawn(Arc::clone(self).send_with_resends(
                held.url.clone(),
                Arc::clone(&held.gateway),
                held.trade.clone(),
                notify_id.clone(),
                held.time_factor,
                first_done,
            ));
            let _ = first.await;
        }
    }

    /// Adds a notification to the reorder group; a full group is sent last payment first.
    /// The first of a group starts the timer that sends the group if it stays short.
    async fn hold_for_reorder(self: Arc<Self>, held: Held, size: usize, wait: Duration) {
        let (full, timer) = {
            let Ok(mut group) = self.group.lock() else {
                return;
            };
            group.held.push(held);
            if group.held.len() >= size {
                group.generation += 1;
                (Some(std::mem::take(&mut group.held)), None)
            } else if group.held.len() == 1 {
                (None, Some(group.generation))
            } else {
                (None, None)
            }
        };
        if let Some(generation) = timer {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if !me.pause(wait).await {
                    return;
                }
                let short = me.group.lock().ok().and_then(|mut group| {
                    (group.generation == generation).then(|| {
                        group.generation += 1;
                        std::mem::take(&mut group.held)
                    })
                });
                if let Some(short) = short {
                    me.send_reversed(short).await;
                }
            });
        }
        if let Some(full) = full {
            self.send_reversed(full).await;
        }
    }

    /// Sends a group last payment first, each one's first send answered before the next.
    async fn send_reversed(self: &Arc<Self>, group: Vec<Held>) {
        let n = group.len() as u64;
        if n >= 2 {
            self.count(|s| s.reordered += n);
        }
        for held in group.into_iter().rev() {
            self.send(held).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_with_resends(
        self: Arc<Self>,
        url: String,
        gateway: Arc<dyn SimGateway>,
        trade: SimTradeView,
        notify_id: String,
        time_factor: f64,
        first_done: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut first_done = Some(first_done);
        let waits =
            std::iter::once(Duration::ZERO).chain(gateway.resend_schedule().iter().copied());
        for wait in waits {
            if !self.pause(wait.mul_f64(time_factor)).await {
                return;
            }
            // Each send is made afresh: its time (and signature) are the send's own.
            let Some(outgoing) = gateway.notification(&trade, &notify_id, Forge::genuine()) else {
                return;
            };
            self.count(|s| s.sends += 1);
            let mut request = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, outgoing.content_type);
            for (name, value) in &outgoing.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let acknowledged = match request.body(outgoing.body).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.bytes().await.unwrap_or_default();
                    gateway.acknowledged(status, &body)
                }
                Err(_) => false,
            };
            // The first send is answered: the next notification of a group may go.
            if let Some(done) = first_done.take() {
                let _ = done.send(());
            }
            if acknowledged {
                self.count(|s| s.acknowledged += 1);
                return;
            }
            self.count(|s| s.refused += 1);
        }
        self.count(|s| s.gave_up += 1);
    }

    /// Sleeps `d` unless the simulator stops first (then `false`).
    async fn pause(&self, d: Duration) -> bool {
        super::pause(&self.stop, d).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_validated_field_by_field() {
        assert_eq!(NotifyPlan::default().validate(), Ok(()));
        assert_eq!(
            NotifyPlan::to("http://127.0.0.1:8081/notify", 0.001).validate(),
            Ok(())
        );
        for (plan, field) in [
            (NotifyPlan::to("ftp://x", 1.0), "url"),
            (NotifyPlan::to("http://h", 0.0), "time_factor"),
            (
                NotifyPlan {
                    drop_rate: 1.5,
                    ..NotifyPlan::default()
                },
                "drop_rate",
            ),
            (
                NotifyPlan {
                    delay_ms: MAX_FAULT_MS + 1,
                    ..NotifyPlan::default()
                },
                "delay_ms",
            ),
        ] {
            let err = plan.validate().unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        let parsed: Result<NotifyPlan, _> = serde_json::from_str(r#"{"urll":"http://h"}"#);
        assert!(parsed.is_err());
    }
}
