//! Percentiles and rates.

use serde::Serialize;

/// Summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summarises `sorted` (ascending); all zero when empty.
    pub fn of(sorted: &[f64]) -> Self {
        if sorted.is_empty() {
            return Self::default();
        }
        Self {
            count: sorted.len(),
            p50: percentile(sorted, 0.50),
            p95: percentile(sorted, 0.95),
            p99: percentile(sorted, 0.99),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// Nearest-rank percentile of an ascending slice (`p` in 0..=1); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    order_closer_testkit::stats::percentile(sorted, p).unwrap_or(0.0)
}

/// `p0, p1, ... p100` of an ascending slice: a compact CDF for the JSON and the chart.
pub fn quantiles(sorted: &[f64]) -> Vec<f64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|k| {
            if k == 0 {
                sorted[0]
            } else {
                percentile(sorted, f64::from(k) / 100.0)
            }
        })
        .collect()
}

/// Sorts floats ascending (NaN last).
pub fn sort(values: &mut [f64]) {
    values.sort_by(|a, b| a.total_cmp(b));
}

/// `events / seconds`, or 0 when no time passed.
pub fn rate(events: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { events / seconds } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        let q = quantiles(&v);
        assert_eq!((q.len(), q[0], q[100]), (101, 1.0, 100.0));
    }
}
