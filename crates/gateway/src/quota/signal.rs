//! When the gateway's throttling answers mean "slow down". One busy answer among many is
//! a hiccup of the gateway (the chaos run draws 3.5% of them at random, and a real
//! gateway has its share too); halving the account's rate for each would hold every
//! process at half the quota for good. A gateway that throttles the account answers most
//! of the requests over its limit that way, so the signal is a share: at least
//! [`MIN_THROTTLES`] throttling answers, and at least [`MIN_SHARE_PERCENT`]% of this
//! process's answers from the gateway, within one [`WINDOW`]. Then, once per window, the
//! quota slows down ([`super::Quota::throttled`]). The window is long enough that a few
//! answers after a restart are no sample: at 3.5% busy answers, five or more among the
//! first twenty happen about once in 2,000 windows (one throttling answer in a second
//! window with three of ten answers did happen in the chaos run).

use tokio::time::{Duration, Instant};

/// The window the answers are counted in.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Fewest throttling answers in a window that can slow the quota down.
pub const MIN_THROTTLES: u32 = 5;
/// Least share of the window's answers, in percent, that must be throttling answers.
pub const MIN_SHARE_PERCENT: u32 = 20;

/// The answers of the current window.
#[derive(Debug, Default)]
pub struct ThrottleSignal {
    started: Option<Instant>,
    answers: u32,
    throttles: u32,
    signalled: bool,
}

impl ThrottleSignal {
    /// Records one answer at `now` (`throttle`: a throttling answer); whether the quota
    /// should slow down now (at most once per window).
    pub fn record(&mut self, now: Instant, throttle: bool) -> bool {
        if self
            .started
            .is_none_or(|at| now.saturating_duration_since(at) >= WINDOW)
        {
            *self = Self {
                started: Some(now),
                ..Self::default()
            };
        }
        self.answers = self.answers.saturating_add(1);
        self.throttles = self.throttles.saturating_add(u32::from(throttle));
        let signal = throttle
            && !self.signalled
            && self.throttles >= MIN_THROTTLES
            && u64::from(self.throttles) * 100
                >= u64::from(self.answers) * u64::from(MIN_SHARE_PERCENT);
        self.signalled |= signal;
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `answers` spread over `span`, every `every`th a throttling answer; how
    /// many signals came.
    fn signals(answers: u32, every: u32, span: Duration) -> u32 {
        let mut s = ThrottleSignal::default();
        let start = Instant::now();
        (0..answers)
            .map(|i| {
                let at = start + span.mul_f64(f64::from(i) / f64::from(answers));
                u32::from(s.record(at, i % every == every - 1))
            })
            .sum()
    }

    #[test]
    fn a_few_busy_answers_among_many_are_no_signal() {
        // 5% of 200 a second, for a minute: never.
        assert_eq!(signals(12_000, 20, Duration::from_secs(60)), 0);
        // Four throttling answers alone in a window: too few.
        assert_eq!(signals(4, 1, Duration::from_millis(500)), 0);
    }

    #[test]
    fn a_gateway_refusing_a_share_of_the_requests_is_a_signal_once_a_window() {
        // One in four throttled, 100 a second, for twenty seconds: once a window.
        assert_eq!(signals(2_000, 4, Duration::from_secs(20)), 4);
        // Every answer throttled: the fifth one signals.
        let mut s = ThrottleSignal::default();
        let now = Instant::now();
        assert_eq!(
            (0..7).map(|_| s.record(now, true)).collect::<Vec<_>>(),
            [false, false, false, false, true, false, false]
        );
        // A new window counts afresh: five throttling answers of six.
        let later = now + WINDOW;
        let answers = [true, false, true, true, true, true];
        let got: Vec<bool> = answers.iter().map(|t| s.record(later, *t)).collect();
        assert_eq!(got, [false, false, false, false, false, true]);
    }
}
