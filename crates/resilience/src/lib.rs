//! Tower resilience layers for otlp-mesh, one module per middleware (`layer`, `service`, `future`, `error`).
//!
//! Present: [`timeout`]. The resilience issue adds retry (budgets, backoff), circuit breaking,
//! rate limiting, outlier detection and active health checks alongside it.

pub mod timeout;
