//! Latency summaries.

use serde::Serialize;

/// Percentiles of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted nanosecond samples, in ms.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

/// Summarises nanosecond latencies.
pub fn summarize(mut nanos: Vec<u64>) -> Summary {
    nanos.sort_unstable();
    let count = nanos.len();
    let mean_ms = if count == 0 {
        f64::NAN
    } else {
        nanos.iter().map(|&n| n as f64).sum::<f64>() / count as f64 / 1e6
    };
    Summary {
        count,
        mean_ms,
        p50_ms: percentile(&nanos, 0.50),
        p90_ms: percentile(&nanos, 0.90),
        p99_ms: percentile(&nanos, 0.99),
        p999_ms: percentile(&nanos, 0.999),
        max_ms: nanos.last().map_or(f64::NAN, |&n| n as f64 / 1e6),
    }
}

/// Median of a few numbers (rounds of one measurement).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=1000).map(|i| i * 1_000_000).collect());
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_ms, 500.0);
        assert_eq!(s.p99_ms, 990.0);
        assert_eq!(s.p999_ms, 999.0);
        assert_eq!(s.max_ms, 1000.0);
        assert!((s.mean_ms - 500.5).abs() < 1e-9);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
