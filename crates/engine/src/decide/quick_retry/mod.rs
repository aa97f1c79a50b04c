//! Quick retries: a transient gateway error during a decision is retried in the process
//! first, a few times with jittered back-off ([`backoff`]), within a retry budget the
//! whole process shares ([`budget`]), before the message goes back through the delay
//! tiers as before. A timeout or a 502 usually clears in well under a second, while the
//! first tier step is 3 s: without this, 5% of transient faults put the demo's lateness
//! p99 at 3 s.
//!
//! What is retried, and what follows the answer, is the decision table's: only an error
//! [`super::table::worth_repeating`] calls transient, and the repeated call's answer goes
//! to the deadline protocol like any other (closing twice is safe: the table reads a
//! close of a closed trade). A quick retry is refused when the call has had its
//! `ORDER_CLOSER_QUICK_RETRIES`, when the decision has spent
//! [`backoff::MAX_QUICK_RETRY_TIME`] in quick retries, or when the process's budget is
//! spent; the error then goes to the table as it did before.
//!
//! Every gateway call the decider makes counts toward the budget (each trade of each
//! order, worker decisions, the notify endpoint's hint queries, reconcile), so quick
//! retries stay a bounded share of what the gateway is sent. The clock and the random
//! draws are injected ([`Clock`], [`Jitter`]): the pure parts are tested without either.

pub mod backoff;
pub mod budget;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use order_closer_core::config::QuickRetrySettings;

pub use budget::RetryBudget;

/// The budget's sliding window: long enough to smooth a burst of deadlines, short enough
/// that a budget spent in an outage comes back within seconds of the gateway's recovery.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Quick retries the budget allows per [`WINDOW`] whatever the share: one a second, so a
/// quiet process (a few orders a minute) still retries quickly. Finagle's budget has the
/// same kind of floor (10 a second by default, for services far busier than a shop's).
pub const FLOOR: u32 = 10;

/// A monotonic time, as the time since some origin.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told (tests): a budget on it never slides by itself.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Moves the clock on.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// Uniform random draws in `[0, 1)`, for the back-off's jitter.
pub trait Jitter: Send + Sync {
    /// One draw.
    fn draw(&self) -> f64;
}

/// The thread-local random generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn draw(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// The same draw every time (tests: `FixedJitter(0.0)` retries at once).
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn draw(&self) -> f64 {
        self.0
    }
}

/// Why a transient error was not retried quickly (`quick_retries_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The call had all its quick retries (`ORDER_CLOSER_QUICK_RETRIES`): the fault lasts.
    Attempts,
    /// The decision spent [`backoff::MAX_QUICK_RETRY_TIME`] in quick retries.
    TimeCap,
    /// The process's retry budget is spent (`ORDER_CLOSER_RETRY_BUDGET`): most requests
    /// fail, and retrying would only add load on a struggling gateway.
    Budget,
}

impl Refusal {
    /// Every reason, for the metrics' zero series.
    pub const ALL: [Self; 3] = [Self::Attempts, Self::TimeCap, Self::Budget];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "attempts",
            Self::TimeCap => "time_cap",
            Self::Budget => "budget",
        }
    }

    /// What the audit row says.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Attempts => "no quick retry left for this call",
            Self::TimeCap => "the decision's time for quick retries is spent",
            Self::Budget => "the process's retry budget is spent",
        }
    }
}

/// What to do with a transient error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Call again after this wait.
    RetryAfter(Duration),
    /// Leave it to the delay tiers, for this reason.
    Refused(Refusal),
    /// Quick retries are off (`ORDER_CLOSER_QUICK_RETRIES=0`).
    Off,
}

/// The quick retries of one process: the settings, the budget every decider of the
/// process shares (clones share it), the clock and the jitter.
#[derive(Clone)]
pub struct QuickRetry {
    attempts: u32,
    budget: Arc<Mutex<RetryBudget>>,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
}

impl fmt::Debug for QuickRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuickRetry")
            .field("attempts", &self.attempts)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Default for QuickRetry {
    fn default() -> Self {
        Self::new(QuickRetrySettings::default())
    }
}

impl QuickRetry {
    /// Quick retries as `settings` say, on the process's clock with random jitter, the
    /// budget's share over [`WINDOW`] plus [`FLOOR`].
    pub fn new(settings: QuickRetrySettings) -> Self {
        Self::with_budget(
            settings.attempts,
            RetryBudget::new(settings.budget, FLOOR, WINDOW),
            Arc::new(MonotonicClock::default()),
        )
    }

    /// No quick retry at all.
    pub fn off() -> Self {
        Self::new(QuickRetrySettings::off())
    }

    /// `attempts` quick retries per call within `budget`, read on `clock` (tests: a
    /// [`ManualClock`] and a budget of their own), with random jitter.
    pub fn with_budget(attempts: u32, budget: RetryBudget, clock: Arc<dyn Clock>) -> Self {
        Self {
            attempts,
            budget: Arc::new(Mutex::new(budget)),
            clock,
            jitter: Arc::new(RandomJitter),
        }
    }

    /// The same, with these draws for the jitter.
    pub fn with_jitter(mut self, jitter: Arc<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// Most quick retries of one call.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts one gateway request in the budget.
    pub fn record_request(&self) {
        let now = self.clock.now();
        self.with(|budget| budget.record_request(now));
    }

    /// Takes one quick retry from the budget now, if it has one (what a decision does
    /// after the other checks; tests spend a budget with it).
    pub fn try_take(&self) -> bool {
        let now = self.clock.now();
        self.with(|budget| budget.try_retry(now))
    }

    /// The budget's window now.
    pub fn usage(&self) -> budget::Usage {
        let now = self.clock.now();
        self.with(|budget| budget.usage(now))
    }

    /// What a decision's [`Session`] starts with.
    pub fn session(&self) -> Session {
        Session::default()
    }

    /// What to do with a transient error of a call that had `retried` quick retries, in
    /// the decision `session`: the checks that cost nothing first, the budget last, so
    /// that a refused retry never spends it.
    pub fn next(&self, session: &Session, retried: u32) -> Verdict {
        if self.attempts == 0 {
            return Verdict::Off;
        }
        if retried >= self.attempts {
            return Verdict::Refused(Refusal::Attempts);
        }
        let now = self.clock.now();
        let first = *session.first_failure.get_or_init(|| now);
        let delay = backoff::delay(retried, self.jitter.draw());
        if !backoff::within_time(first, now, delay) {
            return Verdict::Refused(Refusal::TimeCap);
        }
        if !self.with(|budget| budget.try_retry(now)) {
            return Verdict::Refused(Refusal::Budget);
        }
        Verdict::RetryAfter(delay)
    }

    fn with<T>(&self, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        // A panic while holding the lock leaves plain counters behind: still usable.
        let mut budget = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut budget)
    }
}

/// The audit row's line for quick retry `retried` (from 1) of `attempts`, after `delay`.
pub fn transcript_line(retried: u32, attempts: u32, delay: Duration) -> String {
    format!(
        "{TRANSCRIPT_PREFIX}{retried} of {attempts} after {} ms",
        delay.as_millis()
    )
}

/// How many quick retries an audit row's transcript holds (its [`transcript_line`]s):
/// the demo and the benchmark count them from the decisions.
pub fn count_in(transcript: &str) -> usize {
    transcript
        .lines()
        .filter(|line| line.starts_with(TRANSCRIPT_PREFIX))
        .count()
}

/// How a quick retry's line in a transcript starts.
const TRANSCRIPT_PREFIX: &str = "quick retry ";

/// One decision's quick retries, shared by its trades' calls (consulted at once): when
/// its first transient error came, so that their time together is capped.
#[derive(Debug, Default)]
pub struct Session {
    first_failure: OnceLock<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, share: f64, floor: u32) -> (QuickRetry, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let quick = QuickRetry::with_budget(
            attempts,
            RetryBudget::new(share, floor, WINDOW),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .with_jitter(Arc::new(FixedJitter(1.0)));
        (quick, clock)
    }

    #[test]
    fn a_call_gets_its_quick_retries_with_growing_waits_then_none() {
        let (quick, _) = policy(3, 0.1, 100);
        let session = quick.session();
        let verdicts: Vec<Verdict> = (0..4).map(|n| quick.next(&session, n)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::RetryAfter(Duration::from_millis(50)),
                Verdict::RetryAfter(Duration::from_millis(100)),
                Verdict::RetryAfter(Duration::from_millis(200)),
                Verdict::Refused(Refusal::Attempts),
            ]
        );
        assert_eq!(quick.usage().retries, 3);
    }

    #[test]
    fn off_never_retries_and_never_spends() {
        let (quick, _) = policy(0, 1.0, 100);
        assert_eq!(quick.next(&quick.session(), 0), Verdict::Off);
        assert_eq!(quick.usage().retries, 0);
        assert_eq!(QuickRetry::off().next(&Session::default(), 0), Verdict::Off);
    }

    #[test]
    fn the_budget_refuses_once_spent_and_the_refusal_spends_nothing() {
        let (quick, clock) = policy(3, 0.1, 2);
        for _ in 0..10 {
            quick.record_request();
        }
        // Floor 2 + a tenth of 10 requests: three quick retries, from any decisions.
        for _ in 0..3 {
            assert!(matches!(
                quick.next(&quick.session(), 0),
                Verdict::RetryAfter(_)
            ));
        }
        assert_eq!(
            quick.next(&quick.session(), 0),
            Verdict::Refused(Refusal::Budget)
        );
        assert_eq!(quick.usage().retries, 3);
        // The clock stands still: still spent. Once the window has slid past, back.
        assert!(!quick.try_take());
        clock.advance(WINDOW);
        assert!(matches!(
            quick.next(&quick.session(), 0),
            Verdict::RetryAfter(_)
        ));
    }

    #[test]
    fn the_time_cap_is_the_decisions_whatever_the_call() {
        let (quick, clock) = policy(10, 1.0, 1000);
        let session = quick.session();
        assert!(matches!(quick.next(&session, 0), Verdict::RetryAfter(_)));
        // Another trade's call of the same decision, later: the time counts from the
        // decision's first transient error.
        clock.advance(Duration::from_millis(1_950));
        assert!(matches!(quick.next(&session, 0), Verdict::RetryAfter(_)));
        clock.advance(Duration::from_millis(10));
        let before = quick.usage().retries;
        assert_eq!(
            quick.next(&session, 0),
            Verdict::Refused(Refusal::TimeCap),
            "50 ms more would pass the cap"
        );
        assert_eq!(quick.usage().retries, before, "a refusal spends nothing");
        // A new decision has its own time.
        assert!(matches!(
            quick.next(&quick.session(), 0),
            Verdict::RetryAfter(_)
        ));
    }

    #[test]
    fn the_jitter_draw_picks_the_wait() {
        let (quick, _) = policy(3, 1.0, 1000);
        let quick = quick.with_jitter(Arc::new(FixedJitter(0.0)));
        assert_eq!(
            quick.next(&quick.session(), 2),
            Verdict::RetryAfter(Duration::ZERO)
        );
        let quick = quick.with_jitter(Arc::new(FixedJitter(0.5)));
        assert_eq!(
            quick.next(&quick.session(), 2),
            Verdict::RetryAfter(Duration::from_millis(100))
        );
        // The real draws stay within the ceiling.
        let quick = quick.with_jitter(Arc::new(RandomJitter));
        for _ in 0..100 {
            match quick.next(&quick.session(), 1) {
                Verdict::RetryAfter(d) => assert!(d <= Duration::from_millis(100)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn clones_share_one_budget() {
        let (quick, _) = policy(3, 0.0, 1);
        let other = quick.clone();
        assert!(quick.try_take());
        assert!(!other.try_take());
        other.record_request();
        assert_eq!(quick.usage().requests, 1);
    }

    #[test]
    fn quick_retries_are_counted_back_from_a_transcript() {
        let transcript = [
            "alipay trade T1:".to_owned(),
            "query: Retryable gateway error http_502: bad gateway".to_owned(),
            transcript_line(1, 3, Duration::from_millis(37)),
            "query: WaitingForPayment {}".to_owned(),
            "close: Retryable gateway error 20000: busy".to_owned(),
            transcript_line(1, 3, Duration::from_millis(4)),
            "close: Retryable gateway error 20000: busy".to_owned(),
            format!("no quick retry: {}", Refusal::Budget.describe()),
        ]
        .join("\n");
        assert_eq!(
            transcript_line(2, 3, Duration::from_millis(81)),
            "quick retry 2 of 3 after 81 ms"
        );
        assert_eq!(count_in(&transcript), 2);
        assert_eq!(count_in(""), 0);
    }

    #[test]
    fn every_refusal_has_a_label_and_a_sentence() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["attempts", "time_cap", "budget"]);
        for r in Refusal::ALL {
            assert!(!r.describe().is_empty());
        }
    }
}
