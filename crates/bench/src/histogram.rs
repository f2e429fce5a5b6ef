//! Latency histograms and the coordinated-omission-corrected recording of open-loop runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Highest latency recorded (longer ones are clamped): one hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        match Histogram::new_with_bounds(1, MAX_MICROS, 3) {
            Ok(h) => Latency(h),
            // The bounds are constants that hdrhistogram accepts; this arm is never taken.
            Err(e) => panic!("hdrhistogram rejected constant bounds: {e}"),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        let _ = self.0.record(micros);
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    pub fn max_micros(&self) -> u64 {
        self.0.max()
    }

    pub fn mean_micros(&self) -> f64 {
        self.0.mean()
    }

    /// The latency distribution at log-spaced quantiles: every quarter "nine" from 0 % up to
    /// 99.999 % (0, 43.8, 68.4, 82.2, 90, …, 99.999), then 100 % (the maximum). Empty when nothing
    /// was recorded.
    pub fn distribution(&self) -> Vec<DistributionPoint> {
        if self.count() == 0 {
            return Vec::new();
        }
        let mut points: Vec<DistributionPoint> = (0..=DISTRIBUTION_STEPS)
            .map(|i| {
                let q = 1.0 - 10f64.powf(-f64::from(i) / 4.0);
                DistributionPoint {
                    percentile: (q * 100.0 * 1e4).round() / 1e4,
                    value_us: self.quantile_micros(q),
                }
            })
            .collect();
        points.push(DistributionPoint {
            percentile: 100.0,
            value_us: self.max_micros(),
        });
        points
    }

    /// The standard percentiles reported by every run.
    pub fn summary(&self) -> Percentiles {
        Percentiles {
            p50_us: self.quantile_micros(0.50),
            p90_us: self.quantile_micros(0.90),
            p95_us: self.quantile_micros(0.95),
            p99_us: self.quantile_micros(0.99),
            p999_us: self.quantile_micros(0.999),
            p9999_us: self.quantile_micros(0.9999),
            max_us: self.max_micros(),
            mean_us: self.mean_micros(),
        }
    }
}

/// Quarter-nine steps of [`Latency::distribution`]: 20 steps = five nines (99.999 %).
const DISTRIBUTION_STEPS: u16 = 20;

/// One point of a latency distribution: `percentile` (0..=100) and the latency at it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DistributionPoint {
    pub percentile: f64,
    pub value_us: u64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Records open-loop latencies from each request's *scheduled* start, as wrk2 does, so a stalled
/// server is charged for every request it delayed, not only the one it was serving.
#[derive(Debug)]
pub struct OpenLoopRecorder {
    interval: Duration,
    /// The schedule's grid: a due time is rounded up to a multiple of it (zero: exact times).
    step: Duration,
    next: Duration,
    /// Corrected: completion minus scheduled start.
    pub corrected: Latency,
    /// Uncorrected: completion minus actual send time (what a naive tool reports).
    pub uncorrected: Latency,
}

impl OpenLoopRecorder {
    /// `interval` is the time between scheduled requests of one connection.
    pub fn new(interval: Duration) -> Self {
        OpenLoopRecorder {
            interval,
            step: Duration::ZERO,
            next: Duration::ZERO,
            corrected: Latency::new(),
            uncorrected: Latency::new(),
        }
    }

    /// Rounds every due time up to a multiple of `step` from the start of the run, so requests
    /// due within one step go out together at its end; latency then runs from that time.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// When the next request is due, as an offset from the start of the run.
    pub fn next_due(&self) -> Duration {
        let step = self.step.as_nanos();
        if step == 0 {
            return self.next;
        }
        let next = self.next.as_nanos();
        let rounded = next.div_ceil(step).saturating_mul(step);
        Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }

    /// Moves the whole schedule later by `offset` (to spread workers' phases).
    pub fn shift(&mut self, offset: Duration) {
        self.next += offset;
    }

    /// Advances the schedule without recording (a warm-up request).
    pub fn skip(&mut self) {
        self.next += self.interval;
    }

    /// Records a request that was sent at `sent` and completed at `done` (offsets from the start).
    pub fn record(&mut self, sent: Duration, done: Duration) {
        let scheduled = self.next_due();
        self.corrected.record(done.saturating_sub(scheduled));
        self.uncorrected.record(done.saturating_sub(sent));
        self.next += self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = Latency::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert!((4_990..=5_010).contains(&s.p50_us), "{s:?}");
        assert!((9_890..=9_910).contains(&s.p99_us), "{s:?}");
        assert!((9_980..=10_010).contains(&s.max_us), "{s:?}");
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn distribution_is_monotone_up_to_five_nines_and_the_max() {
        assert!(Latency::new().distribution().is_empty());
        let mut h = Latency::new();
        for us in 1..=100_000u64 {
            h.record(Duration::from_micros(us));
        }
        let d = h.distribution();
        assert_eq!(d.len(), 22);
        assert_eq!(d[0].percentile, 0.0);
        assert_eq!(d[4].percentile, 90.0);
        assert_eq!(d[20].percentile, 99.999);
        assert_eq!(d[21].percentile, 100.0);
        assert_eq!(d[21].value_us, h.max_micros());
        assert!(d.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(d.windows(2).all(|w| w[0].value_us <= w[1].value_us));
        assert!((89_900..=90_100).contains(&d[4].value_us), "{d:?}");
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Latency::new(), Latency::new());
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.max_micros() >= 2_990);
    }

    /// A server that answers in 1 ms but stalls for 1 s once, driven at 100 requests/s on one
    /// connection for 10 s. Requests queued behind the stall were delayed up to ~1 s; a recorder
    /// that measures from the send time sees one slow request, the corrected one sees ~100.
    #[test]
    fn a_stall_raises_corrected_percentiles_as_theory_says() {
        let interval = Duration::from_millis(10);
        let service = Duration::from_millis(1);
        let stall_at = Duration::from_secs(5);
        let stall = Duration::from_secs(1);
        let mut rec = OpenLoopRecorder::new(interval);
        let mut free_at = Duration::ZERO; // when the connection can send again (closed per-connection)
        let mut stalled = false;
        for _ in 0..1000 {
            let sent = rec.next_due().max(free_at);
            let mut took = service;
            if !stalled && sent >= stall_at {
                took += stall;
                stalled = true;
            }
            let done = sent + took;
            free_at = done;
            rec.record(sent, done);
        }
        let c = rec.corrected.summary();
        let u = rec.uncorrected.summary();
        // ~100 of 1000 requests are delayed by between 0 and 1 s (linearly): corrected p95 lies
        // half-way through the stall, p99 near its end; uncorrected sees only one slow request.
        assert!(
            c.p95_us > 400_000 && c.p95_us < 600_000,
            "corrected p95 {c:?}"
        );
        assert!(c.p99_us > 850_000, "corrected p99 {c:?}");
        assert!(u.p99_us < 2_000, "uncorrected p99 {u:?}");
        assert!(u.max_us >= 1_000_000, "the stalled request itself {u:?}");
    }

    #[test]
    fn a_step_rounds_due_times_up_and_latency_runs_from_the_rounded_time() {
        // 3 requests per step of 1 ms, phase-shifted by 0.1 ms: due at 0.1, 0.4, 0.7, 1.0, 1.3 ms...
        let mut rec =
            OpenLoopRecorder::new(Duration::from_micros(300)).with_step(Duration::from_millis(1));
        rec.shift(Duration::from_micros(100));
        let mut dues = Vec::new();
        for _ in 0..6 {
            let due = rec.next_due();
            dues.push(due.as_micros());
            // Each answered 50 µs after its (rounded) due time.
            rec.record(due, due + Duration::from_micros(50));
        }
        assert_eq!(dues, [1_000, 1_000, 1_000, 1_000, 2_000, 2_000]);
        let c = rec.corrected.summary();
        assert!((49..=51).contains(&c.max_us), "{c:?}");
        assert_eq!(rec.corrected.count(), 6);
        // The schedule keeps its rate: 1 000 requests take 300 ms, whatever the step.
        for _ in 0..994 {
            rec.skip();
        }
        let end = rec.next_due().as_micros();
        assert!((300_000..=301_000).contains(&end), "{end}");
    }
}
