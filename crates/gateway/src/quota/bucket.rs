//! The booking arithmetic of a quota, pure: a GCRA reservation clock (the "generic cell
//! rate algorithm", a token bucket kept as one instant) with two priorities and a
//! slow-down. The in-process limiter ([`super::Limiter`]) runs it on the process's
//! clock; the shared quota runs the same arithmetic in one SQL statement on the
//! database's clock (`order_closer_core::db::quota::book`), and an integration test
//! (`tests/all/gateway_quota.rs`) requires both to answer alike.
//!
//! - `tat`, the theoretical arrival time: when the next request would go at the steady
//!   rate. Booking `n` slots at `now` takes `theta = max(tat, now)` and moves `tat` to
//!   `theta + n * t`, `t` being the interval between two requests.
//! - The burst: a slot may start up to `tol = (burst - 1) * t` before its theoretical
//!   time, so after a pause `burst` requests go at once; slot `i` starts at
//!   `max(now, theta + i * t - tol)`.
//! - Priority: deadline work ([`Priority::Deadline`]) books whatever comes next and waits
//!   for it. Bulk work ([`Priority::Bulk`]) books only slots that start at once while
//!   half the burst stays free (`theta + i * t <= now + tol / 2`), and otherwise books
//!   nothing and comes back at `theta - tol / 2`: it never queues ahead of a deadline,
//!   and a deadline arriving after it still finds half the burst.
//! - Slow-down: the gateway throttling the account (its throttling answers have become
//!   a signal, [`super::ThrottleSignal`]) halves the rate (`t` doubles) until
//!   [`SLOW_DOWN`] after the last signal; the burst stays the same number of requests.
//!
//! All times are whole microseconds ([`Micros`]) on one clock.

use std::num::NonZeroU32;
use std::time::Duration;

/// Microseconds on one clock: the process's (since the limiter was made) or the
/// database server's (since the Unix epoch).
pub type Micros = i64;

/// How long a throttling signal halves the rate (extended by each further one).
pub const SLOW_DOWN: Duration = Duration::from_secs(30);

/// [`SLOW_DOWN`] in microseconds.
pub const SLOW_DOWN_US: Micros = SLOW_DOWN.as_micros() as Micros;

/// Which work a request is for: what waits when the quota is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Deadline closes, the query after a refused close, notification hints (the worker
    /// and `notify`): may use the whole burst, and queue for the next slot.
    #[default]
    Deadline,
    /// Bulk reconcile work: only slots that start at once and leave half the burst free;
    /// never a place in the queue ahead of deadline work.
    Bulk,
}

impl Priority {
    /// The name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Bulk => "bulk",
        }
    }
}

/// A quota's steady rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests a second.
    pub per_second: NonZeroU32,
    /// Requests at once after a pause.
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_second` with a burst of `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }

    /// Microseconds between two requests at the full rate, rounded up so that no more
    /// than `per_second` go in a second.
    pub fn interval_us(&self) -> Micros {
        1_000_000_u64.div_ceil(u64::from(self.per_second.get())) as Micros
    }

    /// This rate shared by `n` processes that cannot coordinate (each gets a `n`th of
    /// the rate and of the burst, at least 1).
    pub fn divided(&self, n: NonZeroU32) -> Self {
        let part = |v: NonZeroU32| NonZeroU32::new(v.get() / n.get()).unwrap_or(NonZeroU32::MIN);
        Self {
            per_second: part(self.per_second),
            burst: part(self.burst),
        }
    }
}

/// How a booking may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queue for the next slots, however far ahead (deadline work).
    Queue,
    /// Only slots that start at once and leave half the burst free (bulk work).
    Headroom,
    /// Only slots that start at once, the whole burst usable (a caller that would rather
    /// be refused than wait: the notify endpoint's hint budget).
    Now,
}

impl From<Priority> for Admission {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Deadline => Self::Queue,
            Priority::Bulk => Self::Headroom,
        }
    }
}

/// The slots a booking got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// How many (0: refused, come back at `retry_at`).
    pub slots: u32,
    /// When the first may start: slot `i` starts at `max(now, first + i * spacing)`.
    pub first: Micros,
    /// Between two slots.
    pub spacing: Micros,
    /// When refused: the earliest a booking of the same kind may succeed.
    pub retry_at: Micros,
}

impl Grant {
    /// When slot `i` starts, booked at `now`.
    pub fn start(&self, i: u32, now: Micros) -> Micros {
        now.max(self.first + i64::from(i) * self.spacing)
    }
}

/// One quota's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// The theoretical arrival time of the next request.
    pub tat: Micros,
    /// Until when the rate is halved.
    pub slow_until: Micros,
}

impl Bucket {
    /// Whether the rate is halved at `now`.
    pub fn slowed(&self, now: Micros) -> bool {
        now < self.slow_until
    }

    /// Books up to `want` slots (at least 1) at `now`, as `admission` allows.
    pub fn book(&mut self, now: Micros, want: u32, rate: Rate, admission: Admission) -> Grant {
        let want = want.max(1);
        let t = if self.slowed(now) {
            rate.interval_us() * 2
        } else {
            rate.interval_us()
        };
        let tol = i64::from(rate.burst.get() - 1) * t;
        let theta = self.tat.max(now);
        let within = |limit: Micros| -> u32 {
            if theta > now + limit {
                0
            } else {
                let fit = (now + limit - theta) / t + 1;
                u32::try_from(fit).unwrap_or(u32::MAX).min(want)
            }
        };
        let (slots, limit) = match admission {
            Admission::Queue => (want, tol),
            Admission::Headroom => (within(tol / 2), tol / 2),
            Admission::Now => (within(tol), tol),
        };
        self.tat = theta + i64::from(slots) * t;
        Grant {
            slots,
            first: theta - tol,
            spacing: t,
            retry_at: theta - limit,
        }
    }

    /// The gateway throttled the account at `now`: the rate is halved until [`SLOW_DOWN`]
    /// from now (never shortened). Whether this started a slow-down.
    pub fn slow_down(&mut self, now: Micros) -> bool {
        let started = !self.slowed(now);
        self.slow_until = self.slow_until.max(now + SLOW_DOWN_US);
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate::new(
            NonZeroU32::new(per_second).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    /// Books one slot at a time at `now` until `admission` refuses or `n` are booked;
    /// the start of each.
    fn starts(b: &mut Bucket, now: Micros, n: u32, r: Rate, admission: Admission) -> Vec<Micros> {
        let mut out = Vec::new();
        for _ in 0..n {
            let g = b.book(now, 1, r, admission);
            if g.slots == 0 {
                break;
            }
            out.push(g.start(0, now));
        }
        out
    }

    #[test]
    fn intervals_round_up_and_division_keeps_at_least_one() {
        assert_eq!(rate(1, 1).interval_us(), S);
        assert_eq!(rate(3, 1).interval_us(), 333_334);
        assert_eq!(rate(100_000, 1).interval_us(), 10);
        let three = NonZeroU32::new(3).unwrap();
        assert_eq!(rate(200, 20).divided(three), rate(66, 6));
        assert_eq!(rate(2, 1).divided(three), rate(1, 1));
    }

    #[test]
    fn deadline_work_gets_the_burst_at_once_then_the_steady_rate() {
        let r = rate(10, 5); // t = 100 ms, tol = 400 ms
        let mut b = Bucket::default();
        let now = 10 * S;
        let got = starts(&mut b, now, 8, r, Admission::Queue);
        assert_eq!(
            got,
            [0, 0, 0, 0, 0, 100_000, 200_000, 300_000].map(|d| now + d)
        );
        // A batch of four: the same slots as four single bookings.
        let mut batch = Bucket::default();
        let g = batch.book(now, 8, r, Admission::Queue);
        assert_eq!(g.slots, 8);
        let batched: Vec<Micros> = (0..8).map(|i| g.start(i, now)).collect();
        assert_eq!(batched, got);
        assert_eq!(batch, b);
        // After a pause of the whole burst, the bucket is full again.
        let later = b.tat + 5 * 100_000;
        assert_eq!(
            starts(&mut b, later, 6, r, Admission::Queue),
            [0, 0, 0, 0, 0, 100_000].map(|d| later + d)
        );
    }

    #[test]
    fn no_window_of_a_second_holds_more_than_rate_plus_burst() {
        let r = rate(50, 5);
        let mut b = Bucket::default();
        let mut all = Vec::new();
        // Callers arriving in clumps at odd times, each booking one to seven slots.
        let mut now = 0;
        for i in 0..400u32 {
            now += i64::from(i % 7) * 3_100;
            let g = b.book(now, 1 + i % 7, r, Admission::Queue);
            all.extend((0..g.slots).map(|k| g.start(k, now)));
        }
        all.sort_unstable();
        for (i, t) in all.iter().enumerate() {
            let within = all[i..].iter().take_while(|u| **u < t + S).count();
            assert!(within <= 50 + 5, "{within} in the second from {t}");
        }
    }

    #[test]
    fn bulk_work_keeps_half_the_burst_for_deadlines_and_never_queues() {
        let r = rate(10, 9); // t = 100 ms, tol = 800 ms, bulk may use 400 ms of it
        let mut b = Bucket::default();
        let now = 5 * S;
        // Bulk gets five slots at once (theta up to now + 400 ms), then is refused.
        let bulk = starts(&mut b, now, 20, r, Admission::Headroom);
        assert_eq!(bulk, vec![now; 5]);
        let refused = b.book(now, 1, r, Admission::Headroom);
        assert_eq!(refused.slots, 0);
        assert_eq!(refused.retry_at, now + 100_000);
        assert_eq!(b.tat, now + 500_000, "a refusal books nothing");
        // A deadline arriving now still finds the other half of the burst at once.
        let deadline = starts(&mut b, now, 5, r, Admission::Queue);
        assert_eq!(deadline, [0, 0, 0, 0, 100_000].map(|d| now + d));
        // Bulk asking for many gets only what fits, all at once.
        let mut fresh = Bucket::default();
        let g = fresh.book(now, 100, r, Admission::Headroom);
        assert_eq!((g.slots, g.start(4, now)), (5, now));
        // At its retry time, a bulk booking succeeds again (one slot).
        let at = refused.retry_at;
        assert_eq!(
            b.book(at, 3, r, Admission::Headroom).slots,
            0,
            "deadlines came first"
        );
        let mut c = Bucket {
            tat: now + 500_000,
            ..Bucket::default()
        };
        assert_eq!(c.book(at, 3, r, Admission::Headroom).slots, 1);
    }

    #[test]
    fn with_a_burst_of_one_bulk_takes_only_free_slots() {
        let r = rate(10, 1);
        let mut b = Bucket::default();
        assert_eq!(b.book(0, 1, r, Admission::Headroom).slots, 1);
        let g = b.book(50_000, 1, r, Admission::Headroom);
        assert_eq!((g.slots, g.retry_at), (0, 100_000));
        assert_eq!(b.book(100_000, 1, r, Admission::Headroom).slots, 1);
        // Deadline work queues behind it without limit.
        let g = b.book(100_000, 3, r, Admission::Queue);
        assert_eq!(
            (0..3).map(|i| g.start(i, 100_000)).collect::<Vec<_>>(),
            [200_000, 300_000, 400_000]
        );
    }

    #[test]
    fn now_admission_uses_the_whole_burst_and_books_nothing_when_refused() {
        let r = rate(10, 3);
        let mut b = Bucket::default();
        assert_eq!(starts(&mut b, 0, 10, r, Admission::Now), vec![0; 3]);
        let before = b;
        let g = b.book(0, 1, r, Admission::Now);
        assert_eq!((g.slots, g.retry_at), (0, 100_000));
        assert_eq!(b, before);
    }

    #[test]
    fn a_slow_down_halves_the_rate_for_its_window_and_each_throttle_extends_it() {
        let r = rate(10, 1);
        let mut b = Bucket::default();
        assert!(b.slow_down(0));
        assert!(
            !b.slow_down(10 * S),
            "a slow-down running is extended, not restarted"
        );
        assert_eq!(b.slow_until, 10 * S + SLOW_DOWN_US);
        // Twice the interval while slowed.
        let g = b.book(S, 3, r, Admission::Queue);
        assert_eq!(g.spacing, 200_000);
        assert_eq!(
            (0..3).map(|i| g.start(i, S)).collect::<Vec<_>>(),
            [S, S + 200_000, S + 400_000]
        );
        // The full rate once the window has passed.
        let end = b.slow_until;
        assert!(!b.slowed(end));
        assert_eq!(b.book(end, 1, r, Admission::Queue).spacing, 100_000);
        assert!(b.slow_down(end), "a later throttle starts a new slow-down");
    }

    #[test]
    fn a_slowed_burst_is_the_same_number_of_requests() {
        let r = rate(10, 4);
        let mut b = Bucket::default();
        b.slow_down(0);
        assert_eq!(
            starts(&mut b, 0, 5, r, Admission::Queue),
            [0, 0, 0, 0, 200_000]
        );
        // Bulk keeps half of the slowed burst free too.
        let mut c = Bucket::default();
        c.slow_down(0);
        assert_eq!(starts(&mut c, 0, 9, r, Admission::Headroom).len(), 2);
    }
}
