//! Delay tiers: fixed-TTL queues that together delay a message by any amount.
//!
//! Every message in one tier queue has the same TTL, so FIFO order is expiry order and a
//! long delay never blocks a short one. A delay `d` is served greedily by the largest tier
//! not longer than `d`; the worker forwards an early arrival to the next tier, so the
//! number of hops is at most the number of set bits of `d` in half-seconds. Delays shorter
//! than the smallest tier are waited out in process.

use std::time::Duration;

/// The smallest tier; shorter waits happen in process.
pub const SMALLEST_TIER: Duration = Duration::from_millis(500);
/// Powers of two from 500 ms: 500 ms, 1 s, 2 s, ... 2^17 x 500 ms (about 18 h).
const POWER_TIERS: u32 = 18;
/// Most extra tiers (`ORDER_CLOSER_EXTRA_DELAY_TIERS`). Each tier is a queue every worker
/// declares at each (re)connect, a quorum queue being a Raft group on every node: 500 of
/// them declared at once wedged a RabbitMQ 3.10 node. A deployment needs an
/// extra tier per fixed time-to-pay it wants in one hop; a handful is the real use.
pub const MAX_EXTRA_TIERS: usize = 16;
/// Most tier queues a topology declares.
pub const MAX_TIERS: usize = POWER_TIERS as usize + MAX_EXTRA_TIERS;

/// The set of tiers a deployment declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayTiers {
    tiers: Vec<Duration>,
}

/// Where a message with some time left should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Due now (or in less than the smallest tier): straight to the close queue.
    Due,
    /// Through the tier at this index of [`DelayTiers::all`].
    Tier(usize),
}

impl DelayTiers {
    /// The powers-of-two tiers plus extra ones (for example `30m`, so a fixed 30-minute
    /// timeout takes one hop). Extra tiers must be whole milliseconds of at least 500 ms,
    /// at most [`MAX_EXTRA_TIERS`] of them.
    pub fn standard_with(extra: &[Duration]) -> Result<Self, String> {
        if extra.len() > MAX_EXTRA_TIERS {
            return Err(format!(
                "{} extra delay tiers; at most {MAX_EXTRA_TIERS} (each is a queue every \
                 worker declares: see docs/operations.md)",
                extra.len()
            ));
        }
        let mut tiers: Vec<Duration> = (0..POWER_TIERS)
            .map(|k| SMALLEST_TIER * 2u32.pow(k))
            .collect();
        for d in extra {
            if *d < SMALLEST_TIER
                || d.subsec_nanos() % 1_000_000 != 0
                || *d > Duration::from_secs(7 * 86_400)
            {
                return Err(format!(
                    "extra delay tier {d:?} must be whole milliseconds between 500ms and 7 days"
                ));
            }
            tiers.push(*d);
        }
        tiers.sort();
        tiers.dedup();
        Ok(Self { tiers })
    }

    /// All tiers, shortest first.
    pub fn all(&self) -> &[Duration] {
        &self.tiers
    }

    /// The route for a message with `remaining` time until it is due.
    pub fn route(&self, remaining: Duration) -> Route {
        match self.tiers.iter().rposition(|t| *t <= remaining) {
            Some(index) => Route::Tier(index),
            None => Route::Due,
        }
    }
}

impl Default for DelayTiers {
    fn default() -> Self {
        Self {
            tiers: (0..POWER_TIERS)
                .map(|k| SMALLEST_TIER * 2u32.pow(k))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hops(tiers: &DelayTiers, mut remaining: Duration) -> Vec<Duration> {
        let mut path = Vec::new();
        while let Route::Tier(i) = tiers.route(remaining) {
            path.push(tiers.all()[i]);
            remaining -= tiers.all()[i];
        }
        path
    }

    #[test]
    fn short_delays_go_straight_to_the_close_queue() {
        let t = DelayTiers::default();
        assert_eq!(t.route(Duration::ZERO), Route::Due);
        assert_eq!(t.route(Duration::from_millis(499)), Route::Due);
        assert_eq!(t.route(Duration::from_millis(500)), Route::Tier(0));
    }

    #[test]
    fn greedy_hops_never_overshoot_and_leave_less_than_the_smallest_tier() {
        let t = DelayTiers::default();
        for ms in [
            700u64,
            2_000,
            7_300,
            60_000,
            1_800_000,
            86_400_000,
            400_000_000,
        ] {
            let total = Duration::from_millis(ms);
            let path = hops(&t, total);
            let sum: Duration = path.iter().sum();
            assert!(sum <= total, "{ms}: {path:?}");
            assert!(total - sum < SMALLEST_TIER, "{ms}: {path:?}");
            let max = t.all().last().copied().unwrap();
            let bound = (total.as_millis() / max.as_millis()) as usize + POWER_TIERS as usize;
            assert!(path.len() <= bound, "{ms}: {} hops", path.len());
        }
    }

    #[test]
    fn an_extra_tier_makes_a_fixed_timeout_one_hop() {
        let t = DelayTiers::standard_with(&[Duration::from_secs(1800)]).unwrap();
        assert_eq!(hops(&t, Duration::from_secs(1800)).len(), 1);
        assert!(DelayTiers::standard_with(&[Duration::from_millis(100)]).is_err());
        assert!(DelayTiers::standard_with(&[Duration::from_micros(1_500_500)]).is_err());
    }

    /// 500 extra tiers made a worker declare some 520 quorum queues.
    #[test]
    fn the_number_of_extra_tiers_is_bounded() {
        let extra = |n: u64| -> Vec<Duration> {
            (1..=n)
                .map(|i| Duration::from_millis(600 * i + 1))
                .collect()
        };
        let most = DelayTiers::standard_with(&extra(MAX_EXTRA_TIERS as u64)).unwrap();
        assert_eq!(most.all().len(), MAX_TIERS);
        for n in [MAX_EXTRA_TIERS as u64 + 1, 500] {
            let err = DelayTiers::standard_with(&extra(n)).unwrap_err();
            assert!(err.contains(&format!("at most {MAX_EXTRA_TIERS}")), "{err}");
        }
    }
}
