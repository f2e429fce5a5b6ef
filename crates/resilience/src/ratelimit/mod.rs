//! Local rate limiting per route: GCRA (equivalent to a token bucket of `burst` tokens refilled
//! at `rate / per`), optionally keyed by a value extracted from the request (client address,
//! header) with a bounded LRU key table.
//!
//! Over the limit, the request is not sent: it fails with [`RateLimited`] (converted into the
//! inner error type) carrying `retry_after`, `limit`, `remaining`, `reset` for the 429 headers.
//!
//! Hot path: unkeyed, one clock read and one CAS on an `AtomicU64`, no lock, no allocation;
//! keyed, one SipHash of the key and a per-shard mutex around an O(1) LRU update (the shard's
//! mutex protects a few index writes; it is per limiter and per shard, never global).

mod error;
mod future;
mod gcra;
mod key;
mod layer;
mod service;
mod table;

pub use error::RateLimited;
pub use future::ResponseFuture;
pub use gcra::{Allowed, RateLimiter};
pub use key::{ExtensionKey, HeaderKey, KeyExtractor, NoKey};
pub use layer::{RateLimitConfig, RateLimitLayer};
pub use service::RateLimit;

use std::sync::atomic::{AtomicU64, Ordering};

/// Rate limiter counters (monotonic, relaxed atomics); the key count is [`RateLimiter::keys`].
#[derive(Debug, Default)]
pub struct RateLimitStats {
    /// Requests allowed.
    pub allowed: AtomicU64,
    /// Requests rejected.
    pub limited: AtomicU64,
    /// Keys evicted from a full key table.
    pub evicted: AtomicU64,
}

impl RateLimitStats {
    /// Calls `f(name, value)` for every counter.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
        f("allowed", self.allowed.load(Ordering::Relaxed));
        f("limited", self.limited.load(Ordering::Relaxed));
        f("evicted", self.evicted.load(Ordering::Relaxed));
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
