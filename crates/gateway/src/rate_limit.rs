//! A gateway behind its request quota: [`RateLimited`] wraps any [`Gateway`] and lets a
//! request through only when its [`Quota`] gives it a slot, shared by every task that
//! holds a clone (and, for a [`SharedQuota`](crate::quota::SharedQuota), by every process
//! of the merchant account). Callers over the rate are *delayed* until their turn, never
//! refused: a gateway's own rate limit answers (Alipay's `20000`, WeChat's
//! `FREQUENCY_LIMITED`, HTTP 429) cost a retry and an audit row each, waiting a few
//! milliseconds here costs nothing. Such answers ([`GatewayError::is_throttle`]), once
//! they are a share of the answers ([`ThrottleSignal`]), slow the quota down for a while.
//!
//! The quotas themselves, their arithmetic and how they are shared are in
//! [`crate::quota`].

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::quota::{Priority, Quota, Rate, ThrottleSignal};
use super::{
    CloseAnswer, Gateway, GatewayError, QueryAnswer, RefundAnswer, RefundRequest, TradeRef,
};

pub use super::quota::Limiter;

/// A [`Gateway`] that lets a request reach `inner` only when its quota gives it a slot
/// (queries, closes and refunds alike, one slot each), delaying callers above the rate;
/// it never fails a call of its own. Clones share the same quota, so wrap the gateway
/// once and hand clones (or an `Arc`) to every worker task.
///
/// The quota starts full: up to `burst` requests go through at once, then the steady
/// rate applies. A caller whose future is dropped while waiting gives up its slot unused
/// (the quota stays on the safe side of the rate).
#[derive(Debug)]
pub struct RateLimited<G> {
    inner: G,
    quota: Arc<dyn Quota>,
    rate: Rate,
    signal: Arc<Mutex<ThrottleSignal>>,
}

impl<G: Clone> Clone for RateLimited<G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            quota: Arc::clone(&self.quota),
            rate: self.rate,
            signal: Arc::clone(&self.signal),
        }
    }
}

impl<G> RateLimited<G> {
    /// Limits `inner` to `requests_per_second` in this process, with a burst of
    /// `max(1, requests_per_second / 10)` (see [`RateLimited::default_burst`]).
    pub fn new(inner: G, requests_per_second: NonZeroU32) -> Self {
        Self::with_burst(
            inner,
            requests_per_second,
            Self::default_burst(requests_per_second),
        )
    }

    /// Limits `inner` to `requests_per_second` in this process, letting up to `burst`
    /// requests through back to back when the limiter has been idle.
    pub fn with_burst(inner: G, requests_per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let rate = Rate::new(requests_per_second, burst);
        Self::with_quota(
            inner,
            Arc::new(Limiter::with(rate, Priority::Deadline)),
            rate,
        )
    }

    /// Limits `inner` by `quota`, whose rate is `rate` (for [`RateLimited::rate`]).
    pub fn with_quota(inner: G, quota: Arc<dyn Quota>, rate: Rate) -> Self {
        Self {
            inner,
            quota,
            rate,
            signal: Arc::default(),
        }
    }

    /// The burst [`RateLimited::new`] uses: a tenth of the rate, at least 1.
    pub fn default_burst(requests_per_second: NonZeroU32) -> NonZeroU32 {
        NonZeroU32::new(requests_per_second.get() / 10).unwrap_or(NonZeroU32::MIN)
    }

    /// The configured steady rate, requests per second.
    pub fn rate(&self) -> NonZeroU32 {
        self.rate.per_second
    }

    /// The configured burst.
    pub fn burst(&self) -> NonZeroU32 {
        self.rate.burst
    }

    /// The wrapped gateway.
    pub fn inner(&self) -> &G {
        &self.inner
    }

    /// Waits until one more request may go out (what every call does first); for code
    /// that talks to the same gateway outside the [`Gateway`] trait.
    pub async fn until_ready(&self) {
        self.quota.acquire().await;
    }

    /// Counts the answer; throttling answers that have become a signal slow the quota
    /// down.
    async fn heed<T>(&self, result: Result<T, GatewayError>) -> Result<T, GatewayError> {
        let throttle = result.as_ref().err().is_some_and(GatewayError::is_throttle);
        let slow_down = self
            .signal
            .lock()
            // Every update leaves valid counts: a poisoned lock is used as is.
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(tokio::time::Instant::now(), throttle);
        if slow_down {
            self.quota.throttled().await;
        }
        result
    }
}

#[async_trait]
impl<G: Gateway> Gateway for RateLimited<G> {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        self.quota.acquire().await;
        self.heed(self.inner.query(trade).await).await
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        self.quota.acquire().await;
        self.heed(self.inner.close(trade).await).await
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        self.quota.acquire().await;
        self.heed(self.inner.refund(request).await).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TradeState;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// Answers at once and records when each call reached it.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<Instant>>,
        closes: AtomicU64,
    }

    impl Recorder {
        fn times(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Gateway for Arc<Recorder> {
        async fn query(&self, _: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
            self.calls.lock().unwrap().push(Instant::now());
            Ok(QueryAnswer {
                state: TradeState::WaitingForPayment,
                raw: "{}".into(),
            })
        }

        async fn close(&self, _: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
            self.calls.lock().unwrap().push(Instant::now());
            self.closes.fetch_add(1, Ordering::Relaxed);
            Ok(CloseAnswer::Closed)
        }

        async fn refund(&self, r: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
            self.calls.lock().unwrap().push(Instant::now());
            Ok(RefundAnswer {
                refunded_minor: r.amount_minor,
                fund_change: true,
                raw: "{}".into(),
            })
        }
    }

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// The most calls seen in any one-second window.
    fn max_per_second(times: &[Instant]) -> usize {
        let mut sorted = times.to_vec();
        sorted.sort();
        (0..sorted.len())
            .map(|i| {
                sorted[i..]
                    .iter()
                    .take_while(|t| **t < sorted[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn default_burst_is_a_tenth_at_least_one() {
        assert_eq!(RateLimited::<()>::default_burst(rate(1)).get(), 1);
        assert_eq!(RateLimited::<()>::default_burst(rate(19)).get(), 1);
        assert_eq!(RateLimited::<()>::default_burst(rate(20)).get(), 2);
        assert_eq!(RateLimited::<()>::default_burst(rate(1000)).get(), 100);
        let limited = RateLimited::new((), rate(50));
        assert_eq!((limited.rate().get(), limited.burst().get()), (50, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_calls_take_n_over_r_seconds() {
        let recorder = Arc::new(Recorder::default());
        // Rate 10, burst 1: 50 calls need 49 intervals of 100 ms.
        let limited = RateLimited::new(Arc::clone(&recorder), rate(10));
        let started = Instant::now();
        for i in 0..50 {
            let result = if i % 2 == 0 {
                limited.query(TradeRef::new("A")).await.map(|_| ())
            } else {
                limited.close(TradeRef::new("A")).await.map(|_| ())
            };
            assert_eq!(result, Ok(()));
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(4_900) && elapsed < Duration::from_millis(5_000),
            "{elapsed:?}"
        );
        assert_eq!(recorder.closes.load(Ordering::Relaxed), 25);
        let times = recorder.times();
        assert!(max_per_second(&times) <= 10, "{}", max_per_second(&times));
        // Evenly spaced: every gap is the interval.
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_through_at_once_then_steady_rate() {
        let recorder = Arc::new(Recorder::default());
        let limited = RateLimited::with_burst(Arc::clone(&recorder), rate(20), rate(5));
        let started = Instant::now();
        for _ in 0..5 {
            limited.query(TradeRef::new("A")).await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        for _ in 0..20 {
            limited.query(TradeRef::new("A")).await.unwrap();
        }
        // 20 more after the burst: one every 50 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
        // After idling, the bucket is full again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_end = Instant::now();
        for _ in 0..5 {
            limited.query(TradeRef::new("A")).await.unwrap();
        }
        assert_eq!(idle_end.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_all_served_within_the_rate() {
        let recorder = Arc::new(Recorder::default());
        // Rate 20, burst 2; shared by clones across 100 tasks.
        let limited = RateLimited::new(Arc::clone(&recorder), rate(20));
        let started = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let limited = limited.clone();
                tokio::spawn(async move { limited.query(TradeRef::new(&format!("ORD-{i}"))).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok(), "the limiter never errors");
        }
        let elapsed = started.elapsed();
        // 100 calls, 2 free: 98 intervals of 50 ms.
        assert_eq!(elapsed, Duration::from_millis(4_900), "{elapsed:?}");
        let times = recorder.times();
        assert_eq!(times.len(), 100);
        assert!(
            max_per_second(&times) <= 20 + 2,
            "{}",
            max_per_second(&times)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_does_not_break_the_limiter() {
        let recorder = Arc::new(Recorder::default());
        let limited = RateLimited::new(Arc::clone(&recorder), rate(1));
        limited.query(TradeRef::new("A")).await.unwrap();
        // The next slot is 1 s away; give up after 100 ms.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(100),
                limited.query(TradeRef::new("B"))
            )
            .await
            .is_err()
        );
        let before = Instant::now();
        limited.query(TradeRef::new("C")).await.unwrap();
        // The abandoned slot (t = 1 s) is skipped, C gets t = 2 s.
        assert_eq!(before.elapsed(), Duration::from_millis(1_900));
        assert_eq!(recorder.times().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn high_rates_are_cheap() {
        let recorder = Arc::new(Recorder::default());
        let limited = RateLimited::new(Arc::clone(&recorder), rate(10_000));
        let started = Instant::now();
        for _ in 0..20_000 {
            limited.until_ready().await;
        }
        // 20 000 at 10 000/s with a burst of 1 000: 1.9 s.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1_899) && elapsed <= Duration::from_millis(1_901),
            "{elapsed:?}"
        );
    }

    /// Answers every query with a throttling answer, every close with a plain failure.
    #[derive(Debug)]
    struct Throttling;

    #[async_trait]
    impl Gateway for Throttling {
        async fn query(&self, _: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
            Err(GatewayError::throttled("http_429", "slow down"))
        }

        async fn close(&self, _: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
            Err(GatewayError::retryable("http_502", "bad gateway"))
        }

        async fn refund(&self, _: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
            Err(GatewayError::retryable("http_502", "bad gateway"))
        }
    }

    /// Counts what it is told.
    #[derive(Debug, Default)]
    struct Counting {
        acquired: AtomicU64,
        throttled: AtomicU64,
    }

    #[async_trait]
    impl Quota for Counting {
        async fn acquire(&self) {
            self.acquired.fetch_add(1, Ordering::Relaxed);
        }

        async fn throttled(&self) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_answers_reach_the_quota_once_they_are_a_signal() {
        let quota = Arc::new(Counting::default());
        let limited = RateLimited::with_quota(
            Throttling,
            Arc::clone(&quota) as Arc<dyn Quota>,
            Rate::new(rate(10), rate(1)),
        );
        let err = limited.query(TradeRef::new("A")).await.unwrap_err();
        assert!(err.is_throttle(), "passed on unchanged: {err}");
        // Other failures are answers too, but no throttling.
        for _ in 0..3 {
            limited.close(TradeRef::new("A")).await.unwrap_err();
        }
        for _ in 0..3 {
            limited.query(TradeRef::new("A")).await.unwrap_err();
        }
        assert_eq!(quota.throttled.load(Ordering::Relaxed), 0, "four of seven");
        limited.query(TradeRef::new("A")).await.unwrap_err();
        assert_eq!(quota.throttled.load(Ordering::Relaxed), 1, "five of eight");
        assert_eq!(quota.acquired.load(Ordering::Relaxed), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_limiter_halves_its_rate() {
        let limited = RateLimited::new(Throttling, rate(10));
        let started = Instant::now();
        for _ in 0..8 {
            limited.query(TradeRef::new("A")).await.unwrap_err();
        }
        // Five at the full rate (0 to 400 ms: the fifth answer is the signal), then
        // 200 ms apart: 500, 700, 900 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(900));
    }
}
