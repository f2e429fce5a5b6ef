use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// OpenTelemetry HTTP semantic-convention buckets for `http.server.request.duration`, in seconds.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket bounds in microseconds, so recording compares integers.
const BOUNDS_MICROS: [u64; 14] = [
    5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000, 750_000, 1_000_000,
    2_500_000, 5_000_000, 7_500_000, 10_000_000,
];

/// A fixed-bucket latency histogram updated with relaxed atomics (no lock, no allocation).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (non-cumulative) counts; the last slot is +Inf.
    buckets: [AtomicU64; 15],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let idx = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Per-bucket (non-cumulative) counts, then +Inf: the OTLP histogram layout.
    pub fn bucket_counts(&self) -> [u64; 15] {
        let mut out = [0; 15];
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        out
    }

    /// Cumulative counts for each bound in [`DURATION_BUCKETS_SECONDS`], then +Inf.
    pub fn cumulative(&self) -> [u64; 15] {
        let mut out = [0; 15];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b.load(Ordering::Relaxed);
            *o = acc;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.record(Duration::from_millis(5)); // exactly on the first bound: le=0.005
        h.record(Duration::from_millis(6));
        h.record(Duration::from_secs(60)); // +Inf
        let c = h.cumulative();
        assert_eq!(c[0], 1);
        assert_eq!(c[1], 2);
        assert_eq!(c[13], 2);
        assert_eq!(c[14], 3);
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 60.011).abs() < 1e-9);
    }
}
