//! Tower resilience layers for otlp-mesh, one module per middleware (`layer`, `service`, `future`, `error`).
//!
//! Stack per route (outer → inner): [`ratelimit`] ▸ (fault) ▸ [`timeout`] (whole request) ▸
//! [`retry`] (per-try timeout inside) ▸ [`breaker`] ▸ cluster service.
//!
//! The layers keep the inner service's error type: it implements `From<…>` for each layer's
//! error ([`timeout::Elapsed`], [`breaker::Overloaded`], [`breaker::CircuitOpen`],
//! [`ratelimit::RateLimited`]) and [`FailureClass`] so retry and breaker can classify failures
//! without knowing the proxy. Responses are classified by status and trailers-only `grpc-status`
//! ([`Conditions`]).

pub mod breaker;
pub mod classify;
pub mod health;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod timeout;
mod window;

pub use classify::{Conditions, FailureClass, FailureKind, GrpcCode, ResponseFailure};

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod stack_tests;
