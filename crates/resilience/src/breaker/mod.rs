//! Circuit breaking: Envoy-style concurrency thresholds plus a closed → open → half-open state machine.
//!
//! - **Thresholds** (per breaker, i.e. per cluster): `max_active` requests in flight,
//!   `max_pending` requests waiting for the inner service's readiness, `max_retries` retries in
//!   flight (the retry layer asks the [`RetryGate`]). Over a threshold the request is not sent: it
//!   fails at once with [`Overloaded`] (converted into the inner error type), counted.
//! - **State machine**: closed → open after `consecutive_failures` failures in a row, or when the
//!   error rate over a window reaches `threshold` with at least `min_requests` in it. While open,
//!   requests fail with [`CircuitOpen`] without reaching the inner service. After the open period
//!   (`open_base`, doubling on each re-open up to `open_max`, reset on close) the next request
//!   moves the breaker to half-open and is its first probe; up to `half_open_probes` probes run
//!   concurrently, other requests fail with [`CircuitOpen`]. A probe success closes the circuit, a
//!   probe failure re-opens it. Transitions are logged (`tracing`), counted in [`BreakerStats`],
//!   and readable through [`BreakerHandle`].
//! - **Outcomes**: responses matching `failure_on` (status / trailers-only `grpc-status`) and
//!   errors whose [`crate::FailureKind`] is in `failure_on` are failures; `Rejected`/`Local` errors
//!   are ignored. A request dropped before completing (cancelled, or cut by a timeout layer outside
//!   the breaker) releases its slots and is counted as `cancelled`, not as a failure: put a
//!   `Timeout` layer *inside* the breaker if timeouts must count as failures.
//!
//! Hot path (closed): one atomic load of the state word, one RMW each on the active gauge and
//! (for failures) the consecutive counter, one `Arc` clone; the clock is read only when an
//! error-rate window is configured. No lock except on transitions.

mod error;
mod future;
mod layer;
mod service;
mod state;
mod stats;

pub use error::{CircuitOpen, Overloaded, Threshold};
pub use future::ResponseFuture;
pub use layer::{
    BreakerConfig, BreakerHandle, CircuitBreakerLayer, ErrorRate, RetryGate, RetryPermit,
};
pub use service::CircuitBreaker;
pub use stats::BreakerStats;

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CircuitState {
    /// Requests flow; failures are counted.
    Closed = 0,
    /// Requests fail fast until the open period ends.
    Open = 1,
    /// A limited number of probe requests decide between closed and open.
    HalfOpen = 2,
}

impl CircuitState {
    /// `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[cfg(test)]
mod tests;
