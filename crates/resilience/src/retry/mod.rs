//! Retries: conditions, max attempts, per-try timeout, full-jitter backoff, `Retry-After`,
//! a retry budget, and a bounded replay buffer for request bodies.
//!
//! Per request:
//! 1. The budget gets a deposit; `x-mesh-attempt: 1` is set on the request.
//! 2. A request is *retriable* when `max_attempts > 1` and its method is idempotent (or
//!    [`NonIdempotent`] allows it). Others take a passthrough path: one attempt, body untouched
//!    (no buffering, no clone of the request head).
//! 3. A retriable request's body is wrapped in a [`ReplayBody`] (one `Arc` unless empty) and its
//!    head is cloned for later attempts. Each attempt runs under the per-try timeout.
//! 4. After an attempt, the outcome is classified with [`crate::Conditions`] (error kind via
//!    [`crate::FailureClass`], status, trailers-only `grpc-status`). A retriable outcome is retried
//!    when: attempts remain, the body is still replayable (under the cap, not failed), the
//!    breaker's `max_retries` gate (if any) gives a permit, and the budget allows it; otherwise
//!    the outcome is returned as is and the reason counted in [`RetryStats`].
//! 5. The delay is the response's `Retry-After` (clamped to `retry_after_cap`) or the full-jitter
//!    backoff; the previous response is dropped before waiting.
//!
//! The inner service receives `Request<ReplayBody<B>>` (`Data = Bytes`, `Error = ReplayError<B::Error>`).

mod backoff;
mod body;
mod budget;
mod error;
mod future;
mod layer;
mod retry_after;
mod service;
mod stats;

pub use backoff::Backoff;
pub use body::{DEFAULT_REPLAY_CAP, MAX_CHUNKS, ReplayBody};
pub use budget::{BudgetConfig, RetryBudget};
pub use error::ReplayError;
pub use future::ResponseFuture;
pub use layer::{NonIdempotent, RetryConfig, RetryLayer};
pub use retry_after::{parse_http_date, parse_retry_after};
pub use service::{Retry, X_MESH_ATTEMPT};
pub use stats::{RetryReason, RetryStats};

#[cfg(test)]
mod tests;
