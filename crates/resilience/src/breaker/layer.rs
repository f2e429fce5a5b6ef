use super::state::Inner;
use super::{BreakerStats, CircuitBreaker, CircuitState};
use crate::Conditions;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Error-rate trip condition: open when `failures / requests ≥ threshold` over the window, once
/// the window holds at least `min_requests`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRate {
    /// Failure ratio that opens the circuit (0.5 = 50 %).
    pub threshold: f64,
    /// Minimum requests in the window before the ratio is considered.
    pub min_requests: u32,
    /// Window length.
    pub window: Duration,
    /// Buckets in the window (granularity = window / buckets).
    pub buckets: u32,
}

impl Default for ErrorRate {
    /// 50 % over 10 s (10 buckets), at least 20 requests.
    fn default() -> Self {
        ErrorRate {
            threshold: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            buckets: 10,
        }
    }
}

/// Circuit breaker of one cluster: concurrency thresholds and the closed/open/half-open state machine.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Name used in logs (the cluster's name).
    pub name: String,
    /// Requests in flight; `None` = unlimited.
    pub max_active: Option<u32>,
    /// Requests waiting for the inner service's readiness; `None` = unlimited.
    pub max_pending: Option<u32>,
    /// Retries in flight (enforced by the retry layer through [`super::RetryGate`]); `None` = unlimited.
    pub max_retries: Option<u32>,
    /// Open after this many consecutive failures; `None` disables the condition.
    pub consecutive_failures: Option<u32>,
    /// Open on an error rate; `None` disables the condition.
    pub error_rate: Option<ErrorRate>,
    /// First open period.
    pub open_base: Duration,
    /// The open period doubles on every re-open (probe failure) up to this cap.
    pub open_max: Duration,
    /// Concurrent probe requests let through while half-open.
    pub half_open_probes: u32,
    /// Which outcomes are failures (error kinds `Rejected`/`Local` never are).
    pub failure_on: Conditions,
}

impl Default for BreakerConfig {
    /// Envoy's thresholds (1024 active, 1024 pending, 3 retries), 5 consecutive failures, no
    /// error-rate condition, open 10 s doubling to 5 min, 1 probe, failures = `5xx`, transport
    /// failures and gRPC server-side codes.
    fn default() -> Self {
        BreakerConfig {
            name: String::new(),
            max_active: Some(1024),
            max_pending: Some(1024),
            max_retries: Some(3),
            consecutive_failures: Some(5),
            error_rate: None,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(300),
            half_open_probes: 1,
            failure_on: Conditions::default_breaker(),
        }
    }
}

/// Applies [`CircuitBreaker`] to a service; every service it makes shares one breaker state.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    inner: Arc<Inner>,
}

impl CircuitBreakerLayer {
    /// A closed breaker with fresh counters.
    pub fn new(config: BreakerConfig) -> Self {
        Self::with_stats(config, Arc::new(BreakerStats::default()))
    }

    /// A closed breaker counting into existing counters (e.g. across a config reload).
    pub fn with_stats(config: BreakerConfig, stats: Arc<BreakerStats>) -> Self {
        CircuitBreakerLayer {
            inner: Arc::new(Inner::new(&config, stats)),
        }
    }

    /// Read-only view for `/clusters` and `/metrics`.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            inner: self.inner.clone(),
        }
    }

    /// The `max_retries` gate to hand to [`crate::retry::RetryLayer::with_retry_gate`].
    pub fn retry_gate(&self) -> RetryGate {
        RetryGate {
            inner: self.inner.clone(),
        }
    }

    /// Wraps `inner` (same as `Layer::layer`, without importing the trait).
    pub fn layer_service<S>(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.inner.clone())
    }
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        self.layer_service(inner)
    }
}

/// Read-only view of a breaker: state, since when, gauges and counters.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    inner: Arc<Inner>,
}

impl BreakerHandle {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Current state.
    pub fn state(&self) -> CircuitState {
        self.inner.state()
    }

    /// When the current state was entered (the breaker's creation for the initial closed state).
    pub fn since(&self) -> Instant {
        self.inner.since()
    }

    /// When the open period ends (only while open).
    pub fn open_until(&self) -> Option<Instant> {
        self.inner.open_until()
    }

    /// Requests in flight.
    pub fn active_requests(&self) -> u32 {
        self.inner.gauges().0
    }

    /// Requests waiting for the inner service's readiness.
    pub fn pending_requests(&self) -> u32 {
        self.inner.gauges().1
    }

    /// Retries in flight (permits held through the [`RetryGate`]).
    pub fn active_retries(&self) -> u32 {
        self.inner.gauges().2
    }

    /// Current run of consecutive failures (closed state).
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.gauges().3
    }

    /// Counters.
    pub fn stats(&self) -> &BreakerStats {
        &self.inner.stats
    }
}

/// Envoy's `max_retries` threshold, shared between a breaker and the retry layer in front of it.
#[derive(Debug, Clone)]
pub struct RetryGate {
    inner: Arc<Inner>,
}

impl RetryGate {
    /// A permit for one retry, or `None` (counted as `overloaded_retries`) when `max_retries` are in flight.
    pub fn try_acquire(&self) -> Option<RetryPermit> {
        self.inner.try_retry().then(|| RetryPermit {
            inner: self.inner.clone(),
        })
    }

    /// The configured limit (`u32::MAX` = unlimited).
    pub fn limit(&self) -> u32 {
        self.inner.max_retries()
    }
}

/// One retry in flight; releases its `max_retries` slot when dropped.
#[derive(Debug)]
pub struct RetryPermit {
    inner: Arc<Inner>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.inner.release_retry();
    }
}
