//! The quick retries' back-off: exponential with full jitter, and the cap on the time one
//! decision spends in quick retries. Pure: the random draw and the time are the caller's.
//!
//! Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the n-th quick
//! retry waits a uniform draw between zero and `min(CAP, BASE × 2^n)`. Retries of many
//! decisions failing at the same moment (a gateway's hiccup during a burst of deadlines)
//! spread over the whole interval instead of arriving together again.

use std::time::Duration;

/// The first quick retry waits up to this long: a transient fault (a dropped connection,
/// a proxy's 502, a busy answer) usually clears within tens of milliseconds.
pub const BASE: Duration = Duration::from_millis(50);
/// No quick retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(1);
/// The most time one decision spends in quick retries, from its first transient error to
/// the start of its last quick retry (that call may still take up to the gateway's own
/// timeout). Well below the first delay-tier step (3 s by default), beyond which waiting
/// in the tiers costs no more lateness, and a tiny part of the broker's consumer timeout
/// (30 min by default, 15 min on some 3.x releases), so a delivery is never held near
/// it: a delivery is held at most the protocol's own calls, this, and one more call.
pub const MAX_QUICK_RETRY_TIME: Duration = Duration::from_secs(2);

/// The longest wait before quick retry `retry` (0 for the first): `min(CAP, BASE × 2^retry)`.
pub fn ceiling(retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    BASE.checked_mul(factor).unwrap_or(CAP).min(CAP)
}

/// The wait before quick retry `retry`, for a uniform `draw` in `[0, 1)`: that share of
/// [`ceiling`]. A draw outside the interval (or not a number) is brought within it.
pub fn delay(retry: u32, draw: f64) -> Duration {
    let draw = if draw.is_finite() {
        draw.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let nanos = ceiling(retry).as_nanos() as f64 * draw;
    // At most CAP in nanoseconds: the cast cannot saturate.
    Duration::from_nanos(nanos as u64)
}

/// Whether a quick retry that waits `delay` from `now` keeps a decision whose first
/// transient error came at `first_failure` within [`MAX_QUICK_RETRY_TIME`].
pub fn within_time(first_failure: Duration, now: Duration, delay: Duration) -> bool {
    now.saturating_sub(first_failure).saturating_add(delay) <= MAX_QUICK_RETRY_TIME
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_doubles_from_the_base_up_to_the_cap() {
        let ceilings: Vec<Duration> = (0..8).map(ceiling).collect();
        assert_eq!(
            ceilings,
            [
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        // Never past the cap, however many retries (no overflow either).
        for retry in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(ceiling(retry), CAP, "{retry}");
        }
    }

    #[test]
    fn every_delay_is_within_zero_and_the_ceiling() {
        for retry in 0..40 {
            for step in 0..=100 {
                let draw = f64::from(step) / 100.0;
                let d = delay(retry, draw);
                assert!(d <= ceiling(retry), "{retry} {draw}: {d:?}");
                assert!(d <= CAP);
            }
            assert_eq!(delay(retry, 0.0), Duration::ZERO);
            assert_eq!(delay(retry, 1.0), ceiling(retry));
            // Full jitter: half the draw, half the ceiling.
            assert_eq!(delay(retry, 0.5), ceiling(retry) / 2);
        }
    }

    #[test]
    fn the_delay_grows_with_the_draw() {
        let mut last = Duration::ZERO;
        for step in 0..=1000 {
            let d = delay(2, f64::from(step) / 1000.0);
            assert!(d >= last);
            last = d;
        }
        assert_eq!(last, ms(200));
    }

    #[test]
    fn a_draw_outside_the_interval_is_brought_within_it() {
        for draw in [-1.0, -0.0, f64::NEG_INFINITY, f64::NAN] {
            assert_eq!(delay(1, draw), Duration::ZERO, "{draw}");
        }
        for draw in [1.5, 1e300] {
            assert_eq!(delay(1, draw), ms(100), "{draw}");
        }
        assert_eq!(delay(1, f64::INFINITY), Duration::ZERO);
    }

    #[test]
    fn three_quick_retries_stay_well_within_the_time_cap() {
        let worst: Duration = (0..3).map(ceiling).sum();
        assert_eq!(worst, ms(350));
        assert!(within_time(Duration::ZERO, Duration::ZERO, worst));
    }

    #[test]
    fn the_time_cap_counts_from_the_first_transient_error() {
        let first = Duration::from_secs(100);
        assert!(within_time(first, first, MAX_QUICK_RETRY_TIME));
        assert!(within_time(first, first + ms(1500), ms(500)));
        assert!(!within_time(first, first + ms(1500), ms(501)));
        assert!(!within_time(first, first + MAX_QUICK_RETRY_TIME, ms(1)));
        // A retry whose call itself took long (a gateway timeout): none after it.
        assert!(!within_time(
            first,
            first + Duration::from_secs(10),
            Duration::ZERO
        ));
        // A clock read before the first error (never, but no wrap either).
        assert!(within_time(first, Duration::ZERO, ms(10)));
        assert!(!within_time(Duration::ZERO, Duration::MAX, ms(0)));
    }
}
