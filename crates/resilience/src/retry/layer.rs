use super::{Backoff, BudgetConfig, DEFAULT_REPLAY_CAP, Retry, RetryBudget, RetryStats};
use crate::Conditions;
use crate::breaker::RetryGate;
use std::sync::Arc;
use std::time::Duration;

/// Which requests with non-idempotent methods (POST, PATCH, CONNECT, …) may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonIdempotent {
    /// Never (the default). Note that gRPC calls are POSTs.
    #[default]
    Never,
    /// Only after failures where the upstream certainly did not process the request
    /// (connect failure, refused stream); responses are never retried.
    Unprocessed,
    /// Like idempotent requests.
    Always,
}

/// Retry policy of one route.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in total, the first included; 1 disables retries (requests then take the
    /// passthrough path: no body buffering, no clone of the request head).
    pub max_attempts: u32,
    /// Which failures are retried.
    pub conditions: Conditions,
    /// Deadline of each attempt (until the response head); expiry is a `Timeout` failure,
    /// converted into the inner error type with `From<Elapsed>`.
    pub per_try_timeout: Option<Duration>,
    /// Delay between attempts when the response has no usable `Retry-After`.
    pub backoff: Backoff,
    /// `Retry-After` on a retried response replaces the backoff, clamped to this cap;
    /// `None` ignores the header.
    pub retry_after_cap: Option<Duration>,
    /// Retry budget shared by every request through this layer; `None` = unlimited.
    pub budget: Option<BudgetConfig>,
    /// Request bodies larger than this are streamed once and never retried.
    pub replay_buffer: usize,
    /// Retries for non-idempotent methods.
    pub non_idempotent: NonIdempotent,
}

impl Default for RetryConfig {
    /// 3 attempts on `gateway-error` + gRPC `unavailable`, no per-try timeout, 25–250 ms backoff,
    /// `Retry-After` capped at 1 s, default budget (20 % + 10/s over 10 s), 64 KiB replay buffer.
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            conditions: Conditions::default_retry(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            retry_after_cap: Some(Duration::from_secs(1)),
            budget: Some(BudgetConfig::default()),
            replay_buffer: DEFAULT_REPLAY_CAP,
            non_idempotent: NonIdempotent::Never,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) config: RetryConfig,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) stats: Arc<RetryStats>,
    pub(crate) gate: Option<RetryGate>,
}

/// Applies [`Retry`] to a service. Cloning it (and the services it makes) shares the budget and counters.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer with fresh counters and a fresh budget.
    pub fn new(config: RetryConfig) -> Self {
        let budget = config.budget.map(|b| Arc::new(RetryBudget::new(b)));
        RetryLayer {
            shared: Arc::new(Shared {
                config,
                budget,
                stats: Arc::new(RetryStats::default()),
                gate: None,
            }),
        }
    }

    /// Counts into existing counters (e.g. to keep them across a config reload).
    pub fn with_stats(mut self, stats: Arc<RetryStats>) -> Self {
        Arc::make_mut(&mut self.shared).stats = stats;
        self
    }

    /// Shares an existing budget (e.g. one budget for several routes to a cluster).
    pub fn with_budget(mut self, budget: Option<Arc<RetryBudget>>) -> Self {
        Arc::make_mut(&mut self.shared).budget = budget;
        self
    }

    /// Takes a permit from a circuit breaker's `max_retries` gate before every retry; without a
    /// permit the retry is not sent and the last response or error is returned (`retry_overflow`).
    pub fn with_retry_gate(mut self, gate: RetryGate) -> Self {
        Arc::make_mut(&mut self.shared).gate = Some(gate);
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<RetryStats> {
        self.shared.stats.clone()
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<Arc<RetryBudget>> {
        self.shared.budget.clone()
    }

    /// The policy.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }

    /// Wraps `inner` (same as `Layer::layer`, without importing the trait).
    pub fn layer_service<S>(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.shared.clone())
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        self.layer_service(inner)
    }
}
