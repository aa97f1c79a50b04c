//! The quota of a merchant account shared by every process through Postgres
//! ([`SharedQuota`]): each booking is one short `UPDATE ... RETURNING` on the account's
//! row (`order_closer_core::db::quota::book`), and the caller sleeps until its slot.
//!
//! A process books for the callers waiting in it: one booking at a time, of as many
//! slots as callers wait (at most [`BATCH_SPAN`] of the rate, so a high rate costs a
//! statement per batch rather than per request, and a process never holds more than that
//! of the quota unused). Slots not taken within [`STALE`] of their start are given up.
//!
//! When the database cannot be used (no connection or no answer within
//! [`BOOK_TIMEOUT`]), the process neither stops its gateway traffic nor lets it run
//! unbounded: it falls back to a local limiter at the rate divided by the number of
//! processes the configuration says share it (`ORDER_CLOSER_GATEWAY_PROCESSES`), says so
//! in the log once, tries the database again every [`RETRY_SHARED`], and says so again
//! once it is back.

use std::num::NonZeroU32;
use std::sync::Mutex;

use async_trait::async_trait;
use order_closer_core::db::{self, DbPool, quota};
use tokio::time::{Duration, Instant};

use super::bucket::{Priority, Rate, SLOW_DOWN, SLOW_DOWN_US};
use super::{Limiter, Quota};

/// Longest a booking may take (a connection and the statement) before the process falls
/// back to its local limiter.
pub const BOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the process runs on its local limiter before it tries the database again.
pub const RETRY_SHARED: Duration = Duration::from_secs(5);

/// A booking covers at most this much of the rate (and at least one slot).
pub const BATCH_SPAN: Duration = Duration::from_millis(20);

/// A booked slot not taken within this long after its start is given up (its callers
/// went away): using it later could bunch requests beyond the burst.
pub const STALE: Duration = Duration::from_millis(250);

/// At most one slow-down is sent to the database in this long (the other throttling
/// answers of a flurry say nothing new).
const SLOW_DOWN_EVERY: Duration = Duration::from_secs(1);

/// Slots booked and not handed out yet, on this process's clock.
#[derive(Debug)]
struct Slots {
    /// When the booking's answer came.
    base: Instant,
    /// The first slot's start, microseconds after `base` (negative: it may start now).
    first_us: i64,
    spacing_us: i64,
    next: u32,
    count: u32,
    /// After this, the slots left are given up.
    expires: Instant,
}

impl Slots {
    fn from_booking(booked: &quota::Booked, base: Instant) -> Self {
        let first_us = booked.first - booked.now;
        let count = u32::try_from(booked.slots).unwrap_or(0);
        let last = (first_us + i64::from(count.saturating_sub(1)) * booked.spacing).max(0);
        Self {
            base,
            first_us,
            spacing_us: booked.spacing,
            next: 0,
            count,
            expires: base + micros(last) + STALE,
        }
    }

    /// The next slot's start (`now` at the earliest), if one is left.
    fn take(&mut self, now: Instant) -> Option<Instant> {
        if self.next >= self.count || now > self.expires {
            return None;
        }
        let offset = self.first_us + i64::from(self.next) * self.spacing_us;
        self.next += 1;
        Some((self.base + micros(offset.max(0))).max(now))
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// What this process knows of the shared quota.
#[derive(Debug, Default)]
struct Local {
    slots: Option<Slots>,
    /// Callers waiting for the next booking (it books for all of them).
    waiting: u32,
    /// Bulk work was refused: no booking before this (the quota keeps its headroom).
    not_before: Option<Instant>,
    /// The database failed: the local limiter until this instant.
    offline_until: Option<Instant>,
    /// An outage is reported (logged when it starts and when it ends).
    offline: bool,
    /// When a slow-down was last sent.
    slowed_at: Option<Instant>,
}

/// What a caller does next.
enum Next {
    /// Its slot starts then.
    Slot(Instant),
    /// The database cannot be used: the local limiter.
    Local,
    /// A booking is needed; `probe`: this caller tries the database again after an
    /// outage, while the others keep to the local limiter.
    Book {
        /// Whether this caller is the one that tries the database again.
        probe: bool,
    },
}

impl Local {
    /// Before the turn to book: a slot booked already, the local limiter during an
    /// outage, or a booking (during an outage, by one caller at a time, [`BOOK_TIMEOUT`]
    /// at most, so that the others never wait for a database that does not answer).
    fn next(&mut self, now: Instant) -> Next {
        if let Some(start) = self.slots.as_mut().and_then(|s| s.take(now)) {
            return Next::Slot(start);
        }
        if self.offline_until.is_some_and(|until| now < until) {
            return Next::Local;
        }
        if self.offline {
            self.offline_until = Some(now + BOOK_TIMEOUT);
            return Next::Book { probe: true };
        }
        Next::Book { probe: false }
    }

    /// With the turn to book: a slot another caller booked meanwhile, the local limiter
    /// if its booking failed meanwhile (unless this caller is the one to try again), or
    /// a booking.
    fn next_in_turn(&mut self, now: Instant, probe: bool) -> Next {
        if let Some(start) = self.slots.as_mut().and_then(|s| s.take(now)) {
            return Next::Slot(start);
        }
        if !probe && self.offline_until.is_some_and(|until| now < until) {
            return Next::Local;
        }
        Next::Book { probe }
    }
}

/// Counts a caller waiting for a booking for as long as it lives (a caller that gives up
/// is not booked for).
struct Waiting<'a>(&'a Mutex<Local>);

impl<'a> Waiting<'a> {
    fn new(state: &'a Mutex<Local>) -> Self {
        lock(state).waiting += 1;
        Self(state)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut local = lock(self.0);
        local.waiting = local.waiting.saturating_sub(1);
    }
}

/// Every update under this lock leaves a valid state: a poisoned lock is used as is.
fn lock(state: &Mutex<Local>) -> std::sync::MutexGuard<'_, Local> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One merchant account's quota, shared through Postgres with every process that talks
/// to the account.
pub struct SharedQuota {
    /// The row: `<channel>:<account>`.
    account: String,
    pool: DbPool,
    rate: Rate,
    priority: Priority,
    /// Most slots one booking asks for.
    batch: u32,
    /// The stand-in while the database cannot be used.
    fallback: Limiter,
    processes: NonZeroU32,
    state: Mutex<Local>,
    /// One booking at a time per process.
    booking: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SharedQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedQuota")
            .field("account", &self.account)
            .field("rate", &self.rate)
            .field("priority", &self.priority)
            .field("batch", &self.batch)
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

impl SharedQuota {
    /// The quota of `account` (`<channel>:<id>`) at `rate`, booked through `pool` as
    /// `priority` allows; `processes` share it (the local limiter's divisor while the
    /// database cannot be used).
    pub fn new(
        pool: DbPool,
        account: String,
        rate: Rate,
        priority: Priority,
        processes: NonZeroU32,
    ) -> Self {
        let per_batch = u64::from(rate.per_second.get()) * BATCH_SPAN.as_millis() as u64 / 1000;
        Self {
            account,
            pool,
            rate,
            priority,
            batch: u32::try_from(per_batch).unwrap_or(u32::MAX).max(1),
            fallback: Limiter::with(rate.divided(processes), priority),
            processes,
            state: Mutex::new(Local::default()),
            booking: tokio::sync::Mutex::new(()),
        }
    }

    /// The account's row name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Most slots one booking asks for.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Books up to `want` slots on the database, within [`BOOK_TIMEOUT`].
    async fn book(&self, want: u32) -> Result<quota::Booked, String> {
        let ask = quota::Ask {
            account: &self.account,
            at: None,
            want,
            interval_us: self.rate.interval_us(),
            burst: self.rate.burst.get(),
            bulk: self.priority == Priority::Bulk,
        };
        let attempt = async {
            let mut conn = db::conn(&self.pool).await.map_err(|e| e.to_string())?;
            if let Some(booked) = quota::book(&mut conn, ask)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(booked);
            }
            // The account's first booking: its row, then the booking.
            quota::ensure(&mut conn, &self.account)
                .await
                .map_err(|e| e.to_string())?;
            quota::book(&mut conn, ask)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the quota row vanished".to_owned())
        };
        tokio::time::timeout(BOOK_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("no answer within {BOOK_TIMEOUT:?}"))?
    }

    /// The database failed: the local limiter for a while, said once per outage.
    fn go_local(&self, why: &str) {
        let mut local = lock(&self.state);
        local.offline_until = Some(Instant::now() + RETRY_SHARED);
        local.slots = None;
        if !local.offline {
            local.offline = true;
            let fallback = self.fallback.rate();
            tracing::warn!(
                account = %self.account,
                error = %why,
                "the shared gateway quota cannot be used: this process sends at most {}/s \
                 (the quota of {}/s shared by ORDER_CLOSER_GATEWAY_PROCESSES={}) until the \
                 database answers again",
                fallback.per_second,
                self.rate.per_second,
                self.processes
            );
        }
    }

    /// A booking succeeded: its slots, and the end of an outage said.
    fn booked(&self, booked: &quota::Booked, now: Instant) {
        let mut local = lock(&self.state);
        if local.offline {
            local.offline = false;
            tracing::info!(account = %self.account, "the shared gateway quota is used again");
        }
        local.offline_until = None;
        if booked.slots > 0 {
            local.slots = Some(Slots::from_booking(booked, now));
            local.not_before = None;
        } else {
            // Bulk work refused: back once the quota has headroom again.
            let wait = (booked.retry_at - booked.now).max(booked.spacing).max(1);
            local.not_before = Some(now + micros(wait));
        }
    }
}

#[async_trait]
impl Quota for SharedQuota {
    async fn acquire(&self) {
        loop {
            let next = lock(&self.state).next(Instant::now());
            let probe = match next {
                Next::Slot(start) => return tokio::time::sleep_until(start).await,
                Next::Local => return self.fallback.acquire().await,
                Next::Book { probe } => probe,
            };
            let waiting = Waiting::new(&self.state);
            let turn = self.booking.lock().await;
            drop(waiting);
            // Another caller may have booked (or failed) while this one waited its turn.
            let now = Instant::now();
            let next = lock(&self.state).next_in_turn(now, probe);
            match next {
                Next::Slot(start) => {
                    drop(turn);
                    return tokio::time::sleep_until(start).await;
                }
                Next::Local => {
                    drop(turn);
                    return self.fallback.acquire().await;
                }
                Next::Book { .. } => {}
            }
            let not_before = lock(&self.state).not_before.filter(|at| *at > now);
            if let Some(at) = not_before {
                // Bulk work waits here, holding the turn: the others of its kind in this
                // process wait behind it rather than ask the database again.
                tokio::time::sleep_until(at).await;
                continue;
            }
            let want = self.batch.min(1 + lock(&self.state).waiting);
            match self.book(want).await {
                Ok(booked) => self.booked(&booked, Instant::now()),
                Err(why) => {
                    self.go_local(&why);
                    drop(turn);
                    return self.fallback.acquire().await;
                }
            }
        }
    }

    async fn throttled(&self) {
        self.fallback.slow_down();
        {
            let mut local = lock(&self.state);
            let now = Instant::now();
            if local.offline || local.slowed_at.is_some_and(|at| now < at + SLOW_DOWN_EVERY) {
                return;
            }
            local.slowed_at = Some(now);
        }
        let send = async {
            let mut conn = db::conn(&self.pool).await.map_err(|e| e.to_string())?;
            quota::slow_down(&mut conn, &self.account, None, SLOW_DOWN_US)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(BOOK_TIMEOUT, send).await {
            Ok(Ok(Some(slowed))) if slowed.started => tracing::warn!(
                account = %self.account,
                "the gateway throttles the account: every process halves its rate for {SLOW_DOWN:?}"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(account = %self.account, error = %e, "slow-down not recorded")
            }
            Err(_) => tracing::debug!(account = %self.account, "slow-down not recorded in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booked(now: i64, slots: i64, first: i64, spacing: i64) -> quota::Booked {
        quota::Booked {
            now,
            slots,
            first,
            spacing,
            retry_at: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn booked_slots_map_to_this_clock_and_expire() {
        let base = Instant::now();
        // Three slots: the first could have started 30 ms ago, then every 20 ms (-10 ms,
        // +10 ms): the first two start at once.
        let mut slots = Slots::from_booking(&booked(1_000_000, 3, 970_000, 20_000), base);
        assert_eq!(slots.take(base), Some(base));
        assert_eq!(slots.take(base), Some(base));
        assert_eq!(slots.take(base), Some(base + Duration::from_millis(10)));
        assert_eq!(slots.take(base), None);
        // Slots left unused past their start and STALE are given up.
        let mut late = Slots::from_booking(&booked(0, 2, 0, 20_000), base);
        let after = base + Duration::from_millis(20) + STALE + Duration::from_millis(1);
        assert_eq!(late.take(after), None);
        // A slot taken late starts when taken.
        let mut slow = Slots::from_booking(&booked(0, 2, 0, 20_000), base);
        let at = base + Duration::from_millis(100);
        assert_eq!(slow.take(at), Some(at));
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_reached_falls_back_to_the_local_share() {
        // Nothing listens on port 9: every booking fails fast.
        let pool = db::pool("postgres://u:p@127.0.0.1:9/none", 1).unwrap();
        let rate = Rate::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::new(10).unwrap());
        let quota = SharedQuota::new(
            pool,
            "test:1".into(),
            rate,
            Priority::Deadline,
            NonZeroU32::new(4).unwrap(),
        );
        assert_eq!(quota.batch(), 20);
        assert_eq!(
            quota.fallback.rate(),
            rate.divided(NonZeroU32::new(4).unwrap())
        );
        // Served, not stuck: the first caller finds the database gone, the others use
        // the local share without asking it again.
        for _ in 0..5 {
            tokio::time::timeout(BOOK_TIMEOUT * 2, Quota::acquire(&quota))
                .await
                .expect("served by the local limiter");
        }
        let local = lock(&quota.state);
        assert!(local.offline);
        assert!(local.offline_until.is_some());
    }
}
