use super::gcra::RateLimiter;
use super::{NoKey, RateLimit, RateLimitStats};
use std::sync::Arc;
use std::time::Duration;

/// A local rate limit: `rate` requests per `per`, bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per `per` (sustained rate); at least 1.
    pub rate: u32,
    /// The period of `rate`.
    pub per: Duration,
    /// Requests allowed at once from a full bucket; at least 1.
    pub burst: u32,
    /// Bound of the key table (keyed limits only); when full the least-recently-used key is
    /// evicted. 0 = no table: every request uses the shared bucket.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    /// 100 requests per second, burst 100, 10 000 keys.
    fn default() -> Self {
        RateLimitConfig {
            rate: 100,
            per: Duration::from_secs(1),
            burst: 100,
            max_keys: 10_000,
        }
    }
}

/// Applies [`RateLimit`] to a service; every service it makes shares one limiter.
#[derive(Debug)]
pub struct RateLimitLayer<K = NoKey> {
    limiter: Arc<RateLimiter>,
    key: Arc<K>,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl RateLimitLayer<NoKey> {
    /// One bucket for all requests.
    pub fn new(config: RateLimitConfig) -> Self {
        Self::keyed(config, NoKey)
    }
}

impl<K> RateLimitLayer<K> {
    /// One bucket per key extracted by `key` (see [`super::KeyExtractor`]); keyless requests share one bucket.
    pub fn keyed(config: RateLimitConfig, key: K) -> Self {
        Self::with_stats(config, key, Arc::new(RateLimitStats::default()))
    }

    /// Like [`RateLimitLayer::keyed`], counting into existing counters.
    pub fn with_stats(config: RateLimitConfig, key: K, stats: Arc<RateLimitStats>) -> Self {
        RateLimitLayer {
            limiter: Arc::new(RateLimiter::new(&config, stats)),
            key: Arc::new(key),
        }
    }

    /// The limiter (counters, key count, direct checks).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Wraps `inner` (same as `Layer::layer`, without importing the trait).
    pub fn layer_service<S>(&self, inner: S) -> RateLimit<S, K> {
        RateLimit::new(inner, self.limiter.clone(), self.key.clone())
    }
}

impl<S, K> tower::Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;
    fn layer(&self, inner: S) -> RateLimit<S, K> {
        self.layer_service(inner)
    }
}
