use std::fmt;
use std::time::Duration;

/// Over the limit: the request was not sent (the proxy answers 429 with `Retry-After` and
/// `x-ratelimit-limit/remaining/reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the next request would be allowed (`Retry-After`, round up to whole seconds).
    pub retry_after: Duration,
    /// Requests allowed in a burst (`x-ratelimit-limit`).
    pub limit: u32,
    /// Requests left right now (`x-ratelimit-remaining`; 0 when limited).
    pub remaining: u32,
    /// When the bucket is full again (`x-ratelimit-reset`, round up to whole seconds).
    pub reset: Duration,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited: burst of {} exhausted, retry after {:?}",
            self.limit, self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}
