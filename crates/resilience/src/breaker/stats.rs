use std::sync::atomic::{AtomicU64, Ordering};

/// Circuit breaker counters (monotonic, relaxed atomics) for `/metrics` and `/clusters`.
#[derive(Debug, Default)]
pub struct BreakerStats {
    /// Transitions to open.
    pub opened: AtomicU64,
    /// Transitions to half-open.
    pub half_opened: AtomicU64,
    /// Transitions to closed.
    pub closed: AtomicU64,
    /// Requests failed fast because the circuit was open (or half-open without a probe slot).
    pub rejected_open: AtomicU64,
    /// Requests rejected by `max_active`.
    pub overloaded_active: AtomicU64,
    /// Requests rejected by `max_pending`.
    pub overloaded_pending: AtomicU64,
    /// Retries refused by `max_retries`.
    pub overloaded_retries: AtomicU64,
    /// Completed requests classified as successes.
    pub successes: AtomicU64,
    /// Completed requests classified as failures.
    pub failures: AtomicU64,
    /// Requests dropped before completing (cancelled by the caller or a timeout outside).
    pub cancelled: AtomicU64,
}

impl BreakerStats {
    /// Calls `f(name, value)` for every counter.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        f("opened", r(&self.opened));
        f("half_opened", r(&self.half_opened));
        f("closed", r(&self.closed));
        f("rejected_open", r(&self.rejected_open));
        f("overloaded_active", r(&self.overloaded_active));
        f("overloaded_pending", r(&self.overloaded_pending));
        f("overloaded_retries", r(&self.overloaded_retries));
        f("successes", r(&self.successes));
        f("failures", r(&self.failures));
        f("cancelled", r(&self.cancelled));
    }

    /// Sum of the three overload counters.
    pub fn overloaded_total(&self) -> u64 {
        self.overloaded_active.load(Ordering::Relaxed)
            + self.overloaded_pending.load(Ordering::Relaxed)
            + self.overloaded_retries.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
