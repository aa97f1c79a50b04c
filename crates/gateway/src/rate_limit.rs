//! A per-gateway request-rate limiter: [`RateLimited`] wraps any [`Gateway`] and lets at
//! most a configured number of requests per second through, shared by every task that
//! holds a clone. Callers over the rate are *delayed* until their turn, never refused: a
//! gateway's own rate limit answers (Alipay's `20000`, WeChat's `FREQUENCY_LIMITED`, HTTP
//! 429) cost a retry and an audit row each, waiting a few milliseconds here costs nothing.
//!
//! The limiter is a token bucket holding `burst` tokens and refilled at `rate` per second,
//! implemented as a reservation clock (the "generic cell rate algorithm"): each request
//! books the next free slot under a short lock and then sleeps until it with tokio's
//! timer, so waiting costs no CPU and no busy loop, and the order of booking is the
//! order of service.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    CloseAnswer, Gateway, GatewayError, QueryAnswer, RefundAnswer, RefundRequest, TradeRef,
};

/// The shared clock of one limiter; also the notify endpoint's bound on hint queries,
/// which refuses ([`Limiter::try_acquire`]) rather than waits.
#[derive(Debug)]
pub struct Limiter {
    /// Time between two requests at the steady rate.
    interval: Duration,
    /// How far ahead of the steady schedule a burst may run: `(burst - 1) * interval`.
    tolerance: Duration,
    /// The theoretical arrival time of the next request at the steady rate.
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    /// `rate` a second, `burst` at once after a pause.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        // Rounded up, so that the limiter never lets more than `rate` through per second.
        let interval = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(rate.get())));
        let tolerance = interval.saturating_mul(burst.get() - 1);
        Self {
            interval,
            tolerance,
            next: Mutex::new(None),
        }
    }

    /// The next slot booked at `now`: its theoretical time, and when it may start (`now`
    /// or later).
    fn slot(&self, next: Option<Instant>, now: Instant) -> (Instant, Instant) {
        let theoretical = next.map_or(now, |t| t.max(now));
        let start = theoretical
            .checked_sub(self.tolerance)
            .map_or(now, |start| start.max(now));
        (theoretical, start)
    }

    /// Books the next slot and returns when it starts (`now` or later).
    fn reserve(&self, now: Instant) -> Instant {
        // Every update is a single assignment: a poisoned lock holds a valid instant.
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (theoretical, start) = self.slot(*next, now);
        *next = Some(theoretical + self.interval);
        start
    }

    /// Takes a slot if one starts now, without waiting; `false` books nothing.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (theoretical, start) = self.slot(*next, now);
        if start > now {
            return false;
        }
        *next = Some(theoretical + self.interval);
        true
    }

    /// Waits for this caller's turn.
    async fn acquire(&self) {
        let now = Instant::now();
        let start = self.reserve(now);
        if start > now {
            tokio::time::sleep_until(start).await;
        }
    }
}

/// A [`Gateway`] that lets at most `rate` requests per second reach `inner` (queries and
/// closes alike, one token each), delaying callers above the rate until a token is
/// available; it never fails a call of its own. Clones share the same limit, so wrap the
/// gateway once and hand clones (or an `Arc`) to every worker task.
///
/// The bucket starts full: up to `burst` requests go through at once, then the steady
/// rate applies. A caller whose future is dropped while waiting gives up its slot unused
/// (the limiter stays on the safe side of the rate).
#[derive(Debug)]
pub struct RateLimited<G> {
    inner: G,
    limiter: Arc<Limiter>,
    rate: NonZeroU32,
    burst: NonZeroU32,
}

impl<G: Clone> Clone for RateLimited<G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            rate: self.rate,
            burst: self.burst,
        }
    }
}

impl<G> RateLimited<G> {
    /// Limits `inner` to `requests_per_second`, with a burst of
    /// `max(1, requests_per_second / 10)` (see [`RateLimited::default_burst`]).
    pub fn new(inner: G, requests_per_second: NonZeroU32) -> Self {
        Self::with_burst(
            inner,
            requests_per_second,
            Self::default_burst(requests_per_second),
        )
    }

    /// Limits `inner` to `requests_per_second`, letting up to `burst` requests through
    /// back to back when the limiter has been idle.
    pub fn with_burst(inner: G, requests_per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            inner,
            limiter: Arc::new(Limiter::new(requests_per_second, burst)),
            rate: requests_per_second,
            burst,
        }
    }

    /// The burst [`RateLimited::new`] uses: a tenth of the rate, at least 1.
    pub fn default_burst(requests_per_second: NonZeroU32) -> NonZeroU32 {
        NonZeroU32::new(requests_per_second.get() / 10).unwrap_or(NonZeroU32::MIN)
    }

    /// The configured steady rate, requests per second.
    pub fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// The configured burst.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The wrapped gateway.
    pub fn inner(&self) -> &G {
        &self.inner
    }

    /// Waits until one more request may go out (what every call does first); for code
    /// that talks to the same gateway outside the [`Gateway`] trait.
    pub async fn until_ready(&self) {
        self.limiter.acquire().await;
    }
}

#[async_trait]
impl<G: Gateway> Gateway for RateLimited<G> {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        self.limiter.acquire().await;
        self.inner.query(trade).await
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        self.limiter.acquire().await;
        self.inner.close(trade).await
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        self.limiter.acquire().await;
        self.inner.refund(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TradeState;
    use std::sync::atomic::{AtomicU64, Ordering};

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
}
