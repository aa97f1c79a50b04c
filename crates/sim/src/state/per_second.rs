//! Requests a second at each gateway, as the gateway would count them against the
//! merchant's quota: every authenticated request (queries, closes, refunds, bills;
//! faulted or not), by channel and by the second (Unix time) it arrived in. A test of the
//! quota shared by several worker processes reads them from `GET /sim/stats`
//! ([`SimStats::requests_per_second`](super::SimStats::requests_per_second)) and sums
//! whole seconds of a window. Only the last [`KEPT_SECONDS`] are kept.

use std::collections::BTreeMap;

/// How many seconds of counts are kept per channel (a quarter of an hour).
pub const KEPT_SECONDS: i64 = 900;

/// Counts, by channel, then by Unix second.
pub type PerSecond = BTreeMap<String, BTreeMap<i64, u64>>;

/// Counts one request at `channel` in the second `second`, forgetting seconds older than
/// [`KEPT_SECONDS`] before it.
pub fn count(counts: &mut PerSecond, channel: &str, second: i64) {
    let seconds = match counts.get_mut(channel) {
        Some(seconds) => seconds,
        None => counts.entry(channel.to_owned()).or_default(),
    };
    *seconds.entry(second).or_default() += 1;
    while let Some((&oldest, _)) = seconds.first_key_value() {
        if oldest > second - KEPT_SECONDS {
            break;
        }
        seconds.pop_first();
    }
}

/// The requests at `channel` in the whole seconds `from..to` (Unix time), and their
/// number per second.
pub fn rate(counts: &PerSecond, channel: &str, from: i64, to: i64) -> (u64, f64) {
    let total = counts
        .get(channel)
        .map(|seconds| seconds.range(from..to).map(|(_, n)| n).sum())
        .unwrap_or(0);
    let span = (to - from).max(1);
    (total, total as f64 / span as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_channel_and_second_and_forgets_old_seconds() {
        let mut counts = PerSecond::new();
        for _ in 0..3 {
            count(&mut counts, "alipay", 100);
        }
        count(&mut counts, "alipay", 101);
        count(&mut counts, "wechat", 101);
        assert_eq!(rate(&counts, "alipay", 100, 102), (4, 2.0));
        assert_eq!(rate(&counts, "alipay", 101, 102), (1, 1.0));
        assert_eq!(rate(&counts, "wechat", 100, 102), (1, 0.5));
        assert_eq!(rate(&counts, "nosuch", 100, 102), (0, 0.0));
        count(&mut counts, "alipay", 100 + KEPT_SECONDS);
        assert_eq!(
            counts["alipay"].keys().copied().collect::<Vec<_>>(),
            [101, 1000]
        );
    }
}
