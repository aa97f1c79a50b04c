//! The retry budget: quick retries may be at most a fixed share of the gateway requests
//! the process made over a sliding window, plus a small floor. Pure: the caller passes
//! the time (a monotonic [`Duration`] since any origin), so every rule is unit-tested
//! without a clock.
//!
//! The model is gRPC's retry throttling (gRFC A6): retries stop by themselves when most
//! requests fail, so a struggling gateway is never sent a storm of retries. gRPC keeps a
//! token bucket (a failure takes a token, a success gives back a fraction, retries stop
//! below half); we keep its purpose in the form Finagle's `RetryBudget` gives it: a share
//! of the requests over a sliding window, plus a floor per window. Chosen because its
//! bound holds whatever the failure pattern and reads as a number an operator can check
//! against the request rate: over any window, quick retries are at most
//! `share × requests + floor`. gRPC's bucket depends on the order of successes and
//! failures, and at a steady 50% failure rate it lets retries through in bursts.
//!
//! The window is [`SLOTS`] slots; a slot older than the window is forgotten as a whole,
//! so the window slides in steps of `window / SLOTS`, with a memory of a few words
//! however many requests pass.

use std::time::Duration;

/// Slots the window is cut into: the window slides by a tenth of itself at a time.
pub const SLOTS: usize = 10;

/// One slot of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// Which slot of time it counts (time divided by the slot's length).
    index: u64,
    /// Gateway requests made in it, quick retries included.
    requests: u64,
    /// Quick retries allowed in it.
    retries: u64,
}

/// What the window holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Gateway requests over the window, quick retries included.
    pub requests: u64,
    /// Quick retries allowed over the window.
    pub retries: u64,
}

/// A share of the requests over a sliding window, plus a floor: how many quick retries
/// the process may make.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    share: f64,
    floor: u64,
    slot_nanos: u128,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// Quick retries at most `share` of the requests over `window`, plus `floor` per
    /// window (so that a quiet process can still retry). A share outside 0.0 to 1.0 is
    /// brought within it; a window shorter than [`SLOTS`] nanoseconds counts as that.
    pub fn new(share: f64, floor: u32, window: Duration) -> Self {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            share,
            floor: u64::from(floor),
            slot_nanos: (window.as_nanos() / SLOTS as u128).max(1),
            slots: [Slot::default(); SLOTS],
        }
    }

    /// Counts one gateway request made at `now`.
    pub fn record_request(&mut self, now: Duration) {
        let slot = self.slot_at(now);
        slot.requests = slot.requests.saturating_add(1);
    }

    /// Takes one quick retry from the budget at `now` if it allows one: the retries over
    /// the window, this one included, stay within `share × requests + floor`.
    pub fn try_retry(&mut self, now: Duration) -> bool {
        let usage = self.usage(now);
        let allowed = self.floor as f64 + self.share * usage.requests as f64;
        if (usage.retries.saturating_add(1)) as f64 > allowed {
            return false;
        }
        let slot = self.slot_at(now);
        slot.retries = slot.retries.saturating_add(1);
        true
    }

    /// The requests and retries the window holds at `now`.
    pub fn usage(&self, now: Duration) -> Usage {
        let current = self.index(now);
        self.slots
            .iter()
            .filter(|s| current.saturating_sub(s.index) < SLOTS as u64 && s.index <= current)
            .fold(
                Usage {
                    requests: 0,
                    retries: 0,
                },
                |sum, s| Usage {
                    requests: sum.requests.saturating_add(s.requests),
                    retries: sum.retries.saturating_add(s.retries),
                },
            )
    }

    fn index(&self, now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / self.slot_nanos).unwrap_or(u64::MAX)
    }

    /// The slot counting `now`, emptied first if it last counted an older slot of time.
    fn slot_at(&mut self, now: Duration) -> &mut Slot {
        let index = self.index(now);
        let slot = &mut self.slots[(index % SLOTS as u64) as usize];
        if slot.index != index {
            *slot = Slot {
                index,
                requests: 0,
                retries: 0,
            };
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn requests(budget: &mut RetryBudget, n: u64, at: Duration) {
        for _ in 0..n {
            budget.record_request(at);
        }
    }

    /// Retries granted at `at` until the first refusal.
    fn drain(budget: &mut RetryBudget, at: Duration) -> u64 {
        let mut granted = 0;
        while budget.try_retry(at) {
            granted += 1;
            assert!(granted < 1_000_000, "the budget never refuses");
        }
        granted
    }

    #[test]
    fn refuses_past_its_share() {
        let mut budget = RetryBudget::new(0.1, 0, WINDOW);
        requests(&mut budget, 100, ms(0));
        assert_eq!(drain(&mut budget, ms(0)), 10);
        // Refused stays refused until more requests come.
        assert!(!budget.try_retry(ms(1)));
        requests(&mut budget, 10, ms(2));
        assert_eq!(drain(&mut budget, ms(2)), 1);
        assert_eq!(
            budget.usage(ms(2)),
            Usage {
                requests: 110,
                retries: 11
            }
        );
    }

    #[test]
    fn each_share_gives_exactly_its_part_of_the_requests() {
        for (share, requests_made, granted) in [
            (0.0, 1000, 0),
            (0.05, 1000, 50),
            (0.1, 1000, 100),
            (0.1, 9, 0),
            (0.1, 10, 1),
            (0.25, 1000, 250),
            (0.5, 3, 1),
            (1.0, 7, 7),
        ] {
            let mut budget = RetryBudget::new(share, 0, WINDOW);
            requests(&mut budget, requests_made, ms(500));
            assert_eq!(
                drain(&mut budget, ms(500)),
                granted,
                "{share} of {requests_made}"
            );
        }
    }

    #[test]
    fn the_floor_lets_a_quiet_process_retry() {
        let mut budget = RetryBudget::new(0.1, 3, WINDOW);
        // No request at all: the floor alone.
        assert_eq!(drain(&mut budget, ms(0)), 3);
        // The floor comes on top of the share.
        let mut budget = RetryBudget::new(0.1, 3, WINDOW);
        requests(&mut budget, 50, ms(0));
        assert_eq!(drain(&mut budget, ms(0)), 3 + 5);
        // Without a floor and without requests, nothing.
        let mut budget = RetryBudget::new(0.1, 0, WINDOW);
        assert!(!budget.try_retry(ms(0)));
        // The floor is per window: it comes back once the window has slid past.
        let mut budget = RetryBudget::new(0.0, 2, WINDOW);
        assert_eq!(drain(&mut budget, ms(0)), 2);
        assert_eq!(drain(&mut budget, ms(9_999)), 0);
        assert_eq!(drain(&mut budget, ms(10_000)), 2);
    }

    #[test]
    fn recovers_as_the_window_slides() {
        let mut budget = RetryBudget::new(0.1, 0, WINDOW);
        // 100 requests in the first second, all the budget spent.
        requests(&mut budget, 100, ms(300));
        assert_eq!(drain(&mut budget, ms(300)), 10);
        // Requests in later seconds add to the window.
        requests(&mut budget, 20, ms(4_000));
        assert_eq!(drain(&mut budget, ms(4_000)), 2);
        // Just before the first slot leaves the window: still spent.
        assert!(!budget.try_retry(ms(9_999)));
        assert_eq!(budget.usage(ms(9_999)).requests, 120);
        // The first second has left the window: its requests and retries with it.
        assert_eq!(
            budget.usage(ms(10_000)),
            Usage {
                requests: 20,
                retries: 2
            }
        );
        assert!(!budget.try_retry(ms(10_000)));
        requests(&mut budget, 10, ms(10_000));
        assert_eq!(drain(&mut budget, ms(10_000)), 1);
        // Long after, the window is empty.
        assert_eq!(
            budget.usage(ms(60_000)),
            Usage {
                requests: 0,
                retries: 0
            }
        );
        assert!(!budget.try_retry(ms(60_000)));
    }

    #[test]
    fn slides_one_slot_at_a_time() {
        let mut budget = RetryBudget::new(1.0, 0, WINDOW);
        // One request in each second of the window.
        for second in 0..10 {
            budget.record_request(Duration::from_secs(second));
        }
        assert_eq!(budget.usage(ms(9_500)).requests, 10);
        for (at, left) in [(10, 9), (11, 8), (15, 4), (19, 0)] {
            assert_eq!(
                budget.usage(Duration::from_secs(at)).requests,
                left,
                "at {at} s"
            );
        }
    }

    #[test]
    fn a_slot_reused_after_a_lap_starts_empty() {
        let mut budget = RetryBudget::new(0.5, 0, WINDOW);
        requests(&mut budget, 8, ms(1_000));
        assert_eq!(drain(&mut budget, ms(1_000)), 4);
        // 10 s later the same slot counts another second: the old counts are gone.
        requests(&mut budget, 2, ms(11_000));
        assert_eq!(
            budget.usage(ms(11_000)),
            Usage {
                requests: 2,
                retries: 0
            }
        );
        assert_eq!(drain(&mut budget, ms(11_000)), 1);
    }

    #[test]
    fn a_time_before_the_slots_counts_nothing_of_the_future() {
        let mut budget = RetryBudget::new(1.0, 0, WINDOW);
        requests(&mut budget, 5, ms(20_000));
        // A caller whose clock reads earlier (it cannot, but the sum must not wrap).
        assert_eq!(budget.usage(ms(5_000)).requests, 0);
    }

    #[test]
    fn bad_shares_and_windows_are_brought_within_bounds() {
        for (share, granted) in [(-1.0, 0), (f64::NAN, 0), (f64::INFINITY, 0), (2.0, 10)] {
            let mut budget = RetryBudget::new(share, 0, WINDOW);
            requests(&mut budget, 10, ms(0));
            assert_eq!(drain(&mut budget, ms(0)), granted, "{share}");
        }
        let mut tiny = RetryBudget::new(1.0, 0, Duration::ZERO);
        tiny.record_request(Duration::from_nanos(3));
        assert_eq!(tiny.usage(Duration::from_nanos(3)).requests, 1);
        assert_eq!(tiny.usage(Duration::from_nanos(30)).requests, 0);
        // The end of time does not overflow.
        let mut end = RetryBudget::new(1.0, 1, WINDOW);
        end.record_request(Duration::MAX);
        assert_eq!(end.usage(Duration::MAX).requests, 1);
        assert!(end.try_retry(Duration::MAX));
    }
}
