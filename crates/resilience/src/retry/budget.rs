//! Retry budget (Finagle / linkerd / Envoy style): over a sliding window, retries may not exceed
//! `ratio × requests + min_per_sec × window`, so retries cannot multiply load during an outage.
//!
//! The window is a ring of `buckets` atomic counters (one for requests, one for retries); see
//! [`crate::window`]. Deposits are one CAS on the current bucket; a withdrawal reads the window
//! (2 × `buckets` loads) and increments the current retry bucket with a CAS conditioned on the
//! value it based its decision on, so concurrent withdrawals cannot overshoot the budget (except
//! within the instant a bucket boundary is crossed). No lock, no allocation after construction.
//! The window is bucketed: at any time it spans between `window − width` and `window` of history.

use crate::window::{Buckets, Clock};
use std::time::Duration;
use tokio::time::Instant;

/// Retry budget parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per recent request (0.2 = 20 % extra load at most).
    pub ratio: f64,
    /// Retries always allowed per second of window, even with little traffic.
    pub min_per_sec: u32,
    /// How far back requests and retries are remembered.
    pub window: Duration,
    /// Buckets in the window (granularity = window / buckets); at least 1.
    pub buckets: u32,
}

impl Default for BudgetConfig {
    /// linkerd's defaults: 20 % ratio, 10 retries/s minimum, 10 s window (10 buckets of 1 s).
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
            buckets: 10,
        }
    }
}

/// A shared retry budget: deposit one per original request, withdraw one per retry.
#[derive(Debug)]
pub struct RetryBudget {
    clock: Clock,
    requests: Buckets,
    retries: Buckets,
    ratio: f64,
    reserve: f64,
}

impl RetryBudget {
    /// A budget whose window starts now.
    pub fn new(config: BudgetConfig) -> Self {
        Self::new_at(config, Instant::now())
    }

    /// A budget whose window starts at `origin`.
    pub fn new_at(config: BudgetConfig, origin: Instant) -> Self {
        let buckets = config.buckets.max(1);
        let width = (config.window / buckets).max(Duration::from_nanos(1));
        RetryBudget {
            clock: Clock::new(origin, width),
            requests: Buckets::new(buckets),
            retries: Buckets::new(buckets),
            ratio: config.ratio.max(0.0),
            reserve: f64::from(config.min_per_sec) * (width * buckets).as_secs_f64(),
        }
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Records an original request at `now`.
    pub fn deposit_at(&self, now: Instant) {
        self.requests.add(self.clock.epoch(now), 1);
    }

    /// Takes one retry from the budget; false (and nothing recorded) when it is exhausted.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// Takes one retry at `now`; false when `retries + 1 > ratio × requests + reserve` over the window.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let epoch = self.clock.epoch(now);
        loop {
            let allowed = self.allowed(self.requests.sum(epoch));
            let cur = self.retries.current(epoch);
            let used = self.retries.sum_others(&cur) + u64::from(cur.count);
            if used + 1 > allowed {
                return false;
            }
            if self.retries.try_increment(&cur) {
                return true;
            }
        }
    }

    /// `(requests, retries, allowed retries)` over the window ending at `now`.
    pub fn snapshot_at(&self, now: Instant) -> (u64, u64, u64) {
        let epoch = self.clock.epoch(now);
        let requests = self.requests.sum(epoch);
        (requests, self.retries.sum(epoch), self.allowed(requests))
    }

    fn allowed(&self, requests: u64) -> u64 {
        // requests ≤ 2^32 × buckets, far below f64's exact-integer range.
        (self.ratio * requests as f64 + self.reserve).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(ratio: f64, min_per_sec: u32) -> BudgetConfig {
        BudgetConfig {
            ratio,
            min_per_sec,
            window: Duration::from_secs(10),
            buckets: 10,
        }
    }

    #[test]
    fn budget_arithmetic_ratio_plus_reserve() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(cfg(0.2, 1), t0);
        // Reserve: 1/s × 10 s = 10 retries with no traffic at all.
        for _ in 0..10 {
            assert!(b.try_withdraw_at(t0));
        }
        assert!(!b.try_withdraw_at(t0));
        // 50 requests buy 10 more.
        for _ in 0..50 {
            b.deposit_at(t0);
        }
        for _ in 0..10 {
            assert!(b.try_withdraw_at(t0));
        }
        assert!(!b.try_withdraw_at(t0));
        assert_eq!(b.snapshot_at(t0), (50, 20, 20));
        // After the window everything has expired.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.snapshot_at(later), (0, 0, 10));
        assert!(b.try_withdraw_at(later));
    }

    #[test]
    fn old_buckets_slide_out_one_at_a_time() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(cfg(1.0, 0), t0);
        for s in 0..10 {
            b.deposit_at(t0 + Duration::from_secs(s));
        }
        assert_eq!(b.snapshot_at(t0 + Duration::from_millis(9_999)).0, 10);
        assert_eq!(b.snapshot_at(t0 + Duration::from_secs(10)).0, 9);
        assert_eq!(b.snapshot_at(t0 + Duration::from_secs(15)).0, 4);
        assert_eq!(b.snapshot_at(t0 + Duration::from_secs(19)).0, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit(u8),
        Withdraw(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..20).prop_map(Op::Deposit),
            (1u8..20).prop_map(Op::Withdraw),
            (0u16..3000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against an independent model: after every granted retry, the retries recorded in the
        /// budget's window never exceed ratio × requests in that window + min_per_sec × window.
        #[test]
        fn budget_never_allows_more_than_ratio_times_requests_plus_minimum(
            ratio in 0.0f64..2.0,
            min_per_sec in 0u32..5,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let t0 = Instant::now();
            let b = RetryBudget::new_at(cfg(ratio, min_per_sec), t0);
            let mut now_ms: u64 = 0;
            let mut deposits: Vec<u64> = Vec::new();
            let mut withdrawals: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Advance(ms) => now_ms += u64::from(ms),
                    Op::Deposit(n) => for _ in 0..n {
                        b.deposit_at(t0 + Duration::from_millis(now_ms));
                        deposits.push(now_ms);
                    },
                    Op::Withdraw(n) => for _ in 0..n {
                        if b.try_withdraw_at(t0 + Duration::from_millis(now_ms)) {
                            withdrawals.push(now_ms);
                            // The window: whole 1 s buckets, the current one plus the 9 before it.
                            let start = (now_ms / 1000).saturating_sub(9) * 1000;
                            let reqs = deposits.iter().filter(|t| **t >= start).count() as f64;
                            let retries = withdrawals.iter().filter(|t| **t >= start).count() as f64;
                            prop_assert!(
                                retries <= ratio * reqs + f64::from(min_per_sec) * 10.0 + 1e-9,
                                "{retries} retries for {reqs} requests at {now_ms} ms"
                            );
                        }
                    },
                }
            }
        }
    }
}
