//! The in-process quota: the booking arithmetic ([`Bucket`]) on this process's clock
//! under a short lock. It is the quota of a process that does not share one
//! (`ORDER_CLOSER_GATEWAY_QUOTA=local`), the stand-in of the shared quota while the
//! database cannot be reached (at the rate divided among the processes), and the notify
//! endpoint's bound on hint queries, which refuses ([`Limiter::try_acquire`]) rather
//! than waits.
//!
//! Waiting costs no CPU: a caller books its slot and sleeps until it with tokio's timer,
//! and the order of booking is the order of service. A caller whose future is dropped
//! while it waits gives its slot up unused (the limiter stays on the safe side).

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::time::{Duration, Instant};

use super::Quota;
use super::bucket::{Admission, Bucket, Micros, Priority, Rate};

/// A quota kept in this process.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    priority: Priority,
    /// The clock's zero.
    base: Instant,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    /// `rate` a second, `burst` at once after a pause, for deadline work.
    pub fn new(rate: std::num::NonZeroU32, burst: std::num::NonZeroU32) -> Self {
        Self::with(Rate::new(rate, burst), Priority::Deadline)
    }

    /// `rate`, booking as `priority` allows.
    pub fn with(rate: Rate, priority: Priority) -> Self {
        Self {
            rate,
            priority,
            base: Instant::now(),
            bucket: Mutex::new(Bucket::default()),
        }
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn micros(&self, at: Instant) -> Micros {
        Micros::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(Micros::MAX)
    }

    fn instant(&self, us: Micros) -> Instant {
        self.base + Duration::from_micros(u64::try_from(us).unwrap_or(0))
    }

    /// Books at `now` under the lock.
    fn book(&self, now: Instant, admission: Admission) -> (Micros, super::bucket::Grant) {
        let at = self.micros(now);
        // Every update is a plain assignment: a poisoned lock still holds a valid clock.
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (at, bucket.book(at, 1, self.rate, admission))
    }

    /// Takes a slot if one starts now (the whole burst usable), without waiting; `false`
    /// books nothing.
    pub fn try_acquire(&self) -> bool {
        self.book(Instant::now(), Admission::Now).1.slots > 0
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        loop {
            let now = Instant::now();
            let (at, grant) = self.book(now, self.priority.into());
            if grant.slots > 0 {
                let start = self.instant(grant.start(0, at));
                if start > now {
                    tokio::time::sleep_until(start).await;
                }
                return;
            }
            // Bulk work refused: back when a slot may fit again.
            let retry = self.instant(grant.retry_at.max(at + 1));
            tokio::time::sleep_until(retry).await;
        }
    }

    /// The gateway throttled: the rate is halved for a while. Whether this started a
    /// slow-down.
    pub fn slow_down(&self) -> bool {
        let at = self.micros(Instant::now());
        self.bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .slow_down(at)
    }
}

#[async_trait]
impl Quota for Limiter {
    async fn acquire(&self) {
        Limiter::acquire(self).await;
    }

    async fn throttled(&self) {
        if self.slow_down() {
            tracing::warn!(
                "the gateway throttles this process: its request rate is halved for {:?}",
                super::bucket::SLOW_DOWN
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::sync::Arc;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate::new(
            NonZeroU32::new(per_second).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_waits_while_deadlines_hold_the_burst() {
        let limiter = Arc::new(Limiter::with(rate(10, 9), Priority::Bulk));
        let started = Instant::now();
        // Five at once (half the burst and one), then one every 100 ms.
        for _ in 0..7 {
            limiter.acquire().await;
        }
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_halves_the_rate_for_its_window() {
        let limiter = Limiter::new(NonZeroU32::new(10).unwrap(), NonZeroU32::MIN);
        limiter.acquire().await;
        Quota::throttled(&limiter).await;
        let started = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first at 100 ms (the clock booked at the full rate before), then 200 ms
        // apart.
        assert_eq!(started.elapsed(), Duration::from_millis(900));
        tokio::time::sleep(super::super::bucket::SLOW_DOWN).await;
        let after = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(after.elapsed(), Duration::from_millis(400));
    }
}
