//! GCRA (generic cell rate algorithm), the token bucket expressed as one timestamp: the
//! *theoretical arrival time* (TAT). With emission interval `T = per / rate` and burst `b`, a
//! request at `now` is allowed iff `max(TAT, now) + T ≤ now + b·T`, and then
//! `TAT := max(TAT, now) + T`. The unkeyed bucket is one `AtomicU64` updated by CAS (lock-free);
//! keyed buckets live in the bounded [`KeyTable`](super::table).

use super::table::KeyTable;
use super::{RateLimitConfig, RateLimitStats, RateLimited};
use crate::window::nanos;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// An allowed request's view of its bucket (for `x-ratelimit-*` on successful responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Requests allowed in a burst.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// When the bucket is full again.
    pub reset: Duration,
}

/// A rate limiter: one unkeyed bucket plus an optional bounded table of keyed buckets.
pub struct RateLimiter {
    origin: Instant,
    /// Emission interval `T`, nanoseconds (≥ 1).
    interval: u64,
    /// `burst · T`, nanoseconds.
    tolerance: u64,
    burst: u32,
    unkeyed: AtomicU64,
    table: Option<KeyTable>,
    hasher: std::collections::hash_map::RandomState,
    pub(crate) stats: Arc<RateLimitStats>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval_ns", &self.interval)
            .field("burst", &self.burst)
            .field("keys", &self.keys())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter whose buckets start full now; `max_keys == 0` means no key table.
    pub fn new(config: &RateLimitConfig, stats: Arc<RateLimitStats>) -> Self {
        let rate = u64::from(config.rate.max(1));
        let interval = (nanos(config.per) / rate).max(1);
        let burst = config.burst.max(1);
        RateLimiter {
            origin: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            burst,
            unkeyed: AtomicU64::new(0),
            table: (config.max_keys > 0).then(|| KeyTable::new(config.max_keys)),
            hasher: std::collections::hash_map::RandomState::new(),
            stats,
        }
    }

    /// A fresh hasher for [`super::KeyExtractor::key`].
    pub fn hasher(&self) -> std::collections::hash_map::DefaultHasher {
        self.hasher.build_hasher()
    }

    /// Checks (and on success consumes) one request for `key` (a hash from [`RateLimiter::hasher`]) now.
    pub fn check(&self, key: Option<u64>) -> Result<Allowed, RateLimited> {
        self.check_at(key, Instant::now())
    }

    /// Checks one request for `key` at `now`.
    pub fn check_at(&self, key: Option<u64>, now: Instant) -> Result<Allowed, RateLimited> {
        let now = nanos(now.saturating_duration_since(self.origin));
        let out = match (key, &self.table) {
            (Some(k), Some(table)) => {
                let (out, evicted) = table.with(k, 0, |tat| {
                    let out = self.decide(*tat, now);
                    if let Ok((new, _)) = out {
                        *tat = new;
                    }
                    out
                });
                if evicted {
                    RateLimitStats::bump(&self.stats.evicted);
                }
                out.map(|(_, a)| a)
            }
            _ => {
                let mut tat = self.unkeyed.load(Ordering::Acquire);
                loop {
                    match self.decide(tat, now) {
                        Err(e) => break Err(e),
                        Ok((new, a)) => match self.unkeyed.compare_exchange_weak(
                            tat,
                            new,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break Ok(a),
                            Err(v) => tat = v,
                        },
                    }
                }
            }
        };
        match &out {
            Ok(_) => RateLimitStats::bump(&self.stats.allowed),
            Err(_) => RateLimitStats::bump(&self.stats.limited),
        }
        out
    }

    /// GCRA step: the new TAT and what to report, or the rejection.
    fn decide(&self, tat: u64, now: u64) -> Result<(u64, Allowed), RateLimited> {
        let new = tat.max(now).saturating_add(self.interval);
        let horizon = now.saturating_add(self.tolerance);
        if new > horizon {
            return Err(RateLimited {
                retry_after: Duration::from_nanos(new - horizon),
                limit: self.burst,
                remaining: 0,
                reset: Duration::from_nanos(tat.max(now) - now),
            });
        }
        Ok((
            new,
            Allowed {
                limit: self.burst,
                remaining: ((horizon - new) / self.interval).min(u64::from(self.burst)) as u32,
                reset: Duration::from_nanos(new - now),
            },
        ))
    }

    /// Keys currently stored (0 without a key table).
    pub fn keys(&self) -> usize {
        self.table.as_ref().map_or(0, KeyTable::len)
    }

    /// Key table capacity (0 without a key table).
    pub fn key_capacity(&self) -> usize {
        self.table.as_ref().map_or(0, KeyTable::capacity)
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<RateLimitStats> {
        &self.stats
    }
}
