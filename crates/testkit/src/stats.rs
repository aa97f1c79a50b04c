//! The one percentile of the demo, the benchmark and the tests' printed figures, so that a
//! "p99" means the same everywhere.

/// The nearest-rank percentile `p` (0..=1) of an ascending slice: the smallest value with
/// at least `p` of the values at or below it (`p` = 0 gives the smallest). None when the
/// slice is empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_over_every_boundary() {
        let hundred: Vec<u32> = (1..=100).collect();
        for (p, want) in [
            (0.0, 1),
            (0.001, 1),
            (0.01, 1),
            (0.5, 50),
            (0.501, 51),
            (0.99, 99),
            (0.991, 100),
            (1.0, 100),
            (-1.0, 1),
            (2.0, 100),
            (f64::NAN, 1),
        ] {
            assert_eq!(percentile(&hundred, p), Some(want), "p = {p}");
        }
        assert_eq!(percentile(&[7.5], 0.99), Some(7.5));
        assert_eq!(percentile(&[1, 2], 0.5), Some(1));
        assert_eq!(percentile(&[1, 2], 0.51), Some(2));
        assert_eq!(percentile::<i64>(&[], 0.5), None);
    }
}
