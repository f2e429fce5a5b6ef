use super::CircuitState;
use std::fmt;
use std::time::Duration;

/// Which Envoy-style concurrency threshold rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Threshold {
    /// `max_active`: requests sent and not yet answered.
    ActiveRequests,
    /// `max_pending`: requests waiting for the inner service to become ready.
    PendingRequests,
    /// `max_retries`: retries in flight (checked by the retry layer through a [`super::RetryGate`]).
    ActiveRetries,
}

impl Threshold {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::ActiveRequests => "active_requests",
            Threshold::PendingRequests => "pending_requests",
            Threshold::ActiveRetries => "active_retries",
        }
    }
}

/// A concurrency threshold is full: the request was not sent (the proxy answers 503 + `x-mesh-overloaded: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    /// The threshold that was full.
    pub threshold: Threshold,
    /// Its configured limit.
    pub limit: u32,
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker overloaded: {} limit {} reached",
            self.threshold.as_str(),
            self.limit
        )
    }
}

impl std::error::Error for Overloaded {}

/// The circuit is open (or half-open with every probe slot taken): the request failed fast and was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    /// `Open` or `HalfOpen`.
    pub state: CircuitState,
    /// Time until the breaker lets a probe through (zero when half-open).
    pub retry_in: Duration,
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker {}: request not sent (next probe in {:?})",
            self.state.as_str(),
            self.retry_in
        )
    }
}

impl std::error::Error for CircuitOpen {}

/// Why the breaker refused a request (converted into the inner error type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    Overloaded(Overloaded),
    Open(CircuitOpen),
}
