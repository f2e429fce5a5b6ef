//! Per-rule counters (relaxed atomics, no locks on the request path), the delay histogram, the
//! active-fault gauge behind `max_active`, and their JSON / Prometheus renderings.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive) of the delay histogram buckets, in milliseconds; a last bucket is +Inf.
pub const DELAY_BUCKETS_MS: [u64; 14] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The request or response head was delayed.
    Delay,
    /// The proxy answered with an HTTP or gRPC error instead of calling upstream.
    Abort,
    /// The response body was released at a limited rate.
    Throttle,
    /// The connection / stream was reset.
    Reset,
}

impl FaultKind {
    /// Every kind, in counter order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Delay,
        FaultKind::Abort,
        FaultKind::Throttle,
        FaultKind::Reset,
    ];

    /// Lower-case name used in metrics labels and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Abort => "abort",
            FaultKind::Throttle => "throttle",
            FaultKind::Reset => "reset",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one rule.
#[derive(Debug, Default)]
pub struct RuleStats {
    matched: AtomicU64,
    injected: [AtomicU64; 4],
    skipped_max_active: AtomicU64,
    delay_buckets: [AtomicU64; 15],
    delay_sum_micros: AtomicU64,
    active: AtomicU32,
}

impl RuleStats {
    pub(crate) fn record_matched(&self) {
        self.matched.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_injected(&self, kind: FaultKind) {
        self.injected[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_skipped(&self) {
        self.skipped_max_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_delay(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let ms_ceil = micros.div_ceil(1000);
        let idx = DELAY_BUCKETS_MS.partition_point(|&b| b < ms_ceil);
        self.delay_buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.delay_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Requests that matched the rule while it was on.
    pub fn matched(&self) -> u64 {
        self.matched.load(Ordering::Relaxed)
    }

    /// Faults of `kind` injected.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.injected[kind.index()].load(Ordering::Relaxed)
    }

    /// Requests that would have got a fault but passed clean because of `max_active`.
    pub fn skipped_max_active(&self) -> u64 {
        self.skipped_max_active.load(Ordering::Relaxed)
    }

    /// Requests with an active fault from this rule right now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Takes an active-fault slot unless `max` are taken.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: Option<u32>) -> Option<ActiveGuard> {
        let ok = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match max {
                Some(m) if n >= m => None,
                _ => Some(n.saturating_add(1)),
            })
            .is_ok();
        ok.then(|| ActiveGuard(self.clone()))
    }

    /// A point-in-time copy for the JSON view.
    pub fn snapshot(&self) -> StatsSnapshot {
        let counts: Vec<u64> = self
            .delay_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        StatsSnapshot {
            matched: self.matched(),
            injected: InjectedCounts {
                delay: self.injected(FaultKind::Delay),
                abort: self.injected(FaultKind::Abort),
                throttle: self.injected(FaultKind::Throttle),
                reset: self.injected(FaultKind::Reset),
            },
            skipped_max_active: self.skipped_max_active(),
            active: self.active(),
            delay_ms: DelayHistogramSnapshot {
                bounds_ms: DELAY_BUCKETS_MS.to_vec(),
                count: counts.iter().sum(),
                counts,
                sum_ms: self.delay_sum_micros.load(Ordering::Relaxed) as f64 / 1000.0,
            },
        }
    }
}

/// Holds one of a rule's `max_active` slots; released on drop (when the faulted request ends).
#[derive(Debug)]
pub struct ActiveGuard(Arc<RuleStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of one rule at a point in time (JSON for `GET /chaos`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Requests that matched the rule while it was on.
    pub matched: u64,
    /// Injected faults by kind.
    pub injected: InjectedCounts,
    /// Faults not injected because `max_active` were active.
    pub skipped_max_active: u64,
    /// Faults active now.
    pub active: u32,
    /// Histogram of injected delays.
    pub delay_ms: DelayHistogramSnapshot,
}

/// Injected faults by kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InjectedCounts {
    /// Delays (either phase).
    pub delay: u64,
    /// HTTP or gRPC aborts.
    pub abort: u64,
    /// Throttled response bodies.
    pub throttle: u64,
    /// Resets.
    pub reset: u64,
}

/// Delay histogram: `counts[i]` delays were ≤ `bounds_ms[i]` (and above the previous bound);
/// the last count is above the last bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DelayHistogramSnapshot {
    /// Bucket upper bounds in ms.
    pub bounds_ms: Vec<u64>,
    /// Per-bucket (not cumulative) counts; one more than `bounds_ms`.
    pub counts: Vec<u64>,
    /// Number of delays.
    pub count: u64,
    /// Sum of delays in ms.
    pub sum_ms: f64,
}

pub(crate) use otlp_mesh_prom::{write_family as family, write_sample as sample};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let s = RuleStats::default();
        s.record_delay(Duration::from_millis(1));
        s.record_delay(Duration::from_micros(1001));
        s.record_delay(Duration::from_millis(500));
        s.record_delay(Duration::from_secs(120));
        let snap = s.snapshot();
        let c = &snap.delay_ms.counts;
        assert_eq!(c[0], 1); // ≤ 1ms
        assert_eq!(c[1], 1); // ≤ 5ms
        assert_eq!(c[7], 1); // ≤ 500ms
        assert_eq!(c[14], 1); // +Inf
        assert_eq!(snap.delay_ms.count, 4);
        assert!((snap.delay_ms.sum_ms - 120_502.001).abs() < 1e-6);
    }

    #[test]
    fn active_slots_are_bounded_and_released() {
        let s = Arc::new(RuleStats::default());
        let a = s.try_acquire(Some(2)).unwrap();
        let _b = s.try_acquire(Some(2)).unwrap();
        assert!(s.try_acquire(Some(2)).is_none());
        assert_eq!(s.active(), 2);
        drop(a);
        assert!(s.try_acquire(Some(2)).is_some());
        assert_eq!(s.active(), 1);
        let many: Vec<_> = (0..100).map(|_| s.try_acquire(None).unwrap()).collect();
        assert_eq!(s.active(), 101);
        drop(many);
        assert_eq!(s.active(), 1);
    }

    #[test]
    fn labels_are_escaped() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "Things.");
        sample(&mut out, "x_total", &[("rule", "a\"b\\c\n")], 3);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{rule=\"a\\\"b\\\\c\\n\"} 3\n"
        );
    }
}
