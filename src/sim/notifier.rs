//! The simulator's payment notifications, sent as Alipay sends them: when a trade is
//! paid (or fully refunded, `TRADE_CLOSED`), a form POST to the configured notify URL,
//! signed with the simulator's key over every parameter but `sign` and `sign_type`, and
//! sent again on any reply other than the bare body `success`, at Alipay's intervals
//! (4m, 10m, 10m, 1h, 2h, 6h, 15h) multiplied by [`NotifyPlan::time_factor`] so that tests
//! run the schedule in seconds.
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

use super::state::{MAX_FAULT_MS, SimTradeStatus, SimTradeView};
use crate::gateway::alipay::{format_china_time, notify_signing_content};
use crate::gateway::rsa::RsaPrivateKey;
use crate::money::format_minor;

/// Alipay's intervals between a notification's sends (8 sends within about 25 hours).
pub const RESEND_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(4 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(15 * 3600),
];

/// The simulated merchant's `seller_id` (Alipay's 2088... partner id).
pub const SIM_SELLER_ID: &str = "2088000000000156";

/// One send's time limit.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyPlan {
    /// The notify endpoint (`http://host:port/notify/alipay`); none: nothing is sent.
    #[serde(default)]
    pub url: Option<String>,
    /// Multiplies the resend intervals (1 = Alipay's real schedule; 0.001 turns 4 minutes
    /// into 240 ms).
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
            && crate::config::urls::check_http_url(url).is_err()
        {
            return Err(format!("url {url:?} is not an http:// or https:// URL"));
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
    key: Arc<RsaPrivateKey>,
    app_id: String,
    http: reqwest::Client,
    stop: CancellationToken,
    ids: AtomicU64,
    group: Mutex<ReorderGroup>,
}

impl SimNotifier {
    /// A notifier signing with `key` for `app_id`; stopped by `stop`.
    pub(crate) fn new(
        plan: NotifyPlan,
        key: Arc<RsaPrivateKey>,
        app_id: String,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let seed = plan.seed.unwrap_or_else(rand::random);
        Arc::new(Self {
            plan: Mutex::new(plan),
            stats: Mutex::new(NotifyStats::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            key,
            app_id,
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
        let Some(url) = plan.url.clone() else {
            return;
        };
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

    async fn send_with_resends(
        self: Arc<Self>,
        url: String,
        trade: SimTradeView,
        notify_id: String,
        time_factor: f64,
        first_done: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut first_done = Some(first_done);
        let waits = std::iter::once(Duration::ZERO).chain(RESEND_SCHEDULE);
        for wait in waits {
            if !self.pause(wait.mul_f64(time_factor)).await {
                return;
            }
            let Some(form) = self.form(&trade, &notify_id) else {
                return;
            };
            self.count(|s| s.sends += 1);
            let reply = self
                .http
                .post(&url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(form)
                .send()
                .await;
            let acknowledged = match reply {
                Ok(r) if r.status().is_success() => {
                    r.bytes().await.is_ok_and(|b| b.as_ref() == b"success")
                }
                _ => false,
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

    /// The signed form of one send (`notify_time` is the send's own).
    fn form(&self, trade: &SimTradeView, notify_id: &str) -> Option<String> {
        notification_form(
            &self.key,
            &self.app_id,
            trade,
            notify_id,
            chrono::Utc::now(),
        )
    }
}

/// The signed form Alipay would POST about `trade` (`TRADE_SUCCESS` when paid,
/// `TRADE_CLOSED` when fully refunded or closed), sent at `sent_at`; None for a trade still
/// waiting for payment. Public so that tests can send a notification by hand.
pub fn notification_form(
    key: &RsaPrivateKey,
    app_id: &str,
    trade: &SimTradeView,
    notify_id: &str,
    sent_at: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let status = match trade.status {
        SimTradeStatus::TradeSuccess => "TRADE_SUCCESS",
        SimTradeStatus::TradeClosed => "TRADE_CLOSED",
        SimTradeStatus::WaitBuyerPay => return None,
    };
    let amount = format_minor(trade.amount_minor);
    let mut params: Vec<(&str, String)> = vec![
        ("notify_time", format_china_time(sent_at)),
        ("notify_type", "trade_status_sync".into()),
        ("notify_id", notify_id.to_owned()),
        ("app_id", app_id.to_owned()),
        ("charset", "utf-8".into()),
        ("version", "1.0".into()),
        ("trade_no", trade.trade_no.clone()),
        ("out_trade_no", trade.out_trade_no.clone()),
        ("trade_status", status.into()),
        ("total_amount", amount.clone()),
        ("receipt_amount", amount.clone()),
        ("buyer_pay_amount", amount),
        ("gmt_create", format_china_time(trade.created_at)),
        ("seller_id", SIM_SELLER_ID.into()),
        ("buyer_id", "2088102177846880".into()),
    ];
    if let Some(paid) = trade.paid_at {
        params.push(("gmt_payment", format_china_time(paid)));
    }
    if let Some(closed) = trade.closed_at {
        params.push(("gmt_close", format_china_time(closed)));
    }
    let refunded: i64 = trade.refunds.iter().map(|r| r.amount_minor).sum();
    if refunded > 0 {
        params.push(("refund_fee", format_minor(refunded)));
    }
    let sign = key
        .sign_base64(notify_signing_content(&params).as_bytes())
        .ok()?;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        form.append_pair(k, v);
    }
    form.append_pair("sign_type", "RSA2");
    form.append_pair("sign", &sign);
    Some(form.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_validated_field_by_field() {
        assert_eq!(NotifyPlan::default().validate(), Ok(()));
        assert_eq!(
            NotifyPlan::to("http://127.0.0.1:8081/notify/alipay", 0.001).validate(),
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
