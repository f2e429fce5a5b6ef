//! Retry, rate-limit and circuit-breaker settings (mapped onto the `resilience` crate's layers).

use crate::{ByteSize, Duration};
use serde::{Deserialize, Serialize};

/// How a route retries failed requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts including the first (1–10). Default 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: `connect-failure`, `refused-stream`, `reset`, `timeout`, `5xx`,
    /// `gateway-error`, `retriable-4xx` (409), a status such as `"503"`, or a gRPC code
    /// (`unavailable`, `resource-exhausted`, …). Default: `gateway-error` and gRPC `unavailable`.
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Deadline of each attempt (the route `timeout` bounds them all). Default: none.
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    /// Exponential backoff with full jitter between attempts.
    #[serde(default)]
    pub backoff: BackoffPolicy,
    /// `Retry-After` on a retried response is honoured up to this; `0` ignores it. Default `1s`.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: Duration,
    /// Retries allowed as a share of recent requests plus a floor; `null` turns the budget off.
    #[serde(default = "default_budget")]
    pub budget: Option<BudgetPolicy>,
    /// Requests whose body is larger than this are sent once, never retried (never truncated). Default `64KiB`.
    #[serde(default = "default_buffer")]
    pub buffer: ByteSize,
    /// Whether POST/PATCH/… are retried: `never` (default), `unprocessed` (only when the
    /// upstream certainly did not see them: connect failure, refused stream) or `always`.
    #[serde(default)]
    pub non_idempotent: NonIdempotentPolicy,
}

/// Backoff between retries: attempt n waits a random time in [0, min(max, base·2ⁿ)].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackoffPolicy {
    /// Default `25ms`.
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    /// Default `250ms`.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// Retry budget (linkerd/Envoy style).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Retries allowed per request seen in the window (0.2 = 20 %). Default 0.2.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic. Default 10.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
    /// Default `10s`.
    #[serde(default = "default_window")]
    pub window: Duration,
}

/// Retrying of non-idempotent methods.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NonIdempotentPolicy {
    #[default]
    Never,
    Unprocessed,
    Always,
}

/// A route's local rate limit (GCRA): `rate` requests per `per`, bursts up to `burst`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub rate: u32,
    /// Default `1s`.
    #[serde(default = "default_per")]
    pub per: Duration,
    /// Default: `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `client_ip`, or `header:<name>` for one bucket per value; default: one bucket for the route.
    #[serde(default)]
    pub key: Option<String>,
    /// Most keys tracked; the least recently used is evicted when full. Default 10 000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// A cluster's circuit breaker: concurrency thresholds and the open/half-open state machine.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Requests in flight at once; more get 503 `overloaded`. Default 1024; `0` = no limit.
    #[serde(default = "default_1024")]
    pub max_requests: u32,
    /// Requests waiting for the upstream to be ready. Default 1024; `0` = no limit.
    #[serde(default = "default_1024")]
    pub max_pending: u32,
    /// Retries in flight at once. Default 3; `0` = no limit.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Consecutive failures that open the circuit. Default 5; `0` = off.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Also open when the failure share over a window passes a threshold.
    #[serde(default)]
    pub error_rate: Option<ErrorRatePolicy>,
    /// First open period; doubles on each re-open up to `max_open_for`. Default `10s`.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    /// Default `5m`.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: Duration,
    /// Requests let through while half-open. Default 1.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// What counts as a failure (same words as retry `on`). Default: `5xx`, transport failures
    /// and gRPC server-side codes.
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Separate thresholds and state for routes with `priority: high` (Envoy's high priority).
    #[serde(default)]
    pub high_priority: Option<Box<BreakerPolicy>>,
}

/// Error-rate condition of a circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorRatePolicy {
    /// Failure percentage (0–100) that opens the circuit.
    pub threshold: f64,
    /// Requests needed in the window before the rate counts. Default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Default `10s`.
    #[serde(default = "default_window")]
    pub window: Duration,
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_after_max() -> Duration {
    Duration::from_secs(1)
}
fn default_budget() -> Option<BudgetPolicy> {
    Some(BudgetPolicy {
        ratio: default_ratio(),
        min_per_second: default_min_per_second(),
        window: default_window(),
    })
}
fn default_buffer() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}
fn default_ratio() -> f64 {
    0.2
}
fn default_min_per_second() -> u32 {
    10
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_per() -> Duration {
    Duration::from_secs(1)
}
fn default_max_keys() -> usize {
    10_000
}
fn default_1024() -> u32 {
    1024
}
fn default_max_retries() -> u32 {
    3
}
fn default_consecutive() -> u32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(10)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(300)
}
fn default_probes() -> u32 {
    1
}
fn default_min_requests() -> u32 {
    20
}

/// Every problem with a retry policy, as (field, message).
pub(crate) fn check_retry(p: &RetryPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !(1..=10).contains(&p.attempts) {
        out.push((
            "attempts".into(),
            format!("{} is out of range (1 to 10)", p.attempts),
        ));
    }
    if let Some(on) = &p.on
        && let Err(e) = otlp_mesh_resilience::Conditions::parse(on)
    {
        out.push(("on".into(), e.to_string()));
    }
    if p.backoff.base.is_zero() {
        out.push(("backoff.base".into(), "must be greater than 0".into()));
    }
    if p.backoff.max < p.backoff.base {
        out.push((
            "backoff.max".into(),
            "must not be below backoff.base".into(),
        ));
    }
    if let Some(b) = &p.budget {
        if !(0.0..=10.0).contains(&b.ratio) || !b.ratio.is_finite() {
            out.push((
                "budget.ratio".into(),
                format!("{} is out of range (0 to 10)", b.ratio),
            ));
        }
        if b.window.0 < std::time::Duration::from_secs(1) {
            out.push(("budget.window".into(), "must be at least 1s".into()));
        }
    }
    if p.buffer.0 > 64 << 20 {
        out.push((
            "buffer".into(),
            "must be at most 64MiB (it is held in memory per request)".into(),
        ));
    }
    out
}

/// Every problem with a rate-limit policy, as (field, message).
pub(crate) fn check_rate_limit(p: &RateLimitPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if p.rate == 0 {
        out.push(("rate".into(), "must be at least 1".into()));
    }
    if p.per.is_zero() {
        out.push(("per".into(), "must be greater than 0".into()));
    }
    if p.burst == Some(0) {
        out.push(("burst".into(), "must be at least 1".into()));
    }
    if p.max_keys == 0 {
        out.push(("max_keys".into(), "must be at least 1".into()));
    }
    match p.key.as_deref() {
        None | Some("client_ip") => {}
        Some(k) => match k.strip_prefix("header:") {
            Some(h) if http::HeaderName::from_bytes(h.trim().as_bytes()).is_ok() => {}
            _ => out.push((
                "key".into(),
                format!("`{k}`: use `client_ip` or `header:<name>`"),
            )),
        },
    }
    out
}

/// Every problem with a breaker policy, as (field, message).
pub(crate) fn check_breaker(p: &BreakerPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(on) = &p.on
        && let Err(e) = otlp_mesh_resilience::Conditions::parse(on)
    {
        out.push(("on".into(), e.to_string()));
    }
    if let Some(r) = &p.error_rate {
        if !(0.0..=100.0).contains(&r.threshold) || !r.threshold.is_finite() {
            out.push((
                "error_rate.threshold".into(),
                format!("{} is not a percentage (0 to 100)", r.threshold),
            ));
        }
        if r.min_requests == 0 {
            out.push((
                "error_rate.min_requests".into(),
                "must be at least 1".into(),
            ));
        }
        if r.window.0 < std::time::Duration::from_secs(1) {
            out.push(("error_rate.window".into(), "must be at least 1s".into()));
        }
    }
    if p.open_for.is_zero() {
        out.push(("open_for".into(), "must be greater than 0".into()));
    }
    if p.max_open_for < p.open_for {
        out.push(("max_open_for".into(), "must not be below open_for".into()));
    }
    if p.half_open_probes == 0 {
        out.push(("half_open_probes".into(), "must be at least 1".into()));
    }
    if let Some(high) = &p.high_priority {
        if high.high_priority.is_some() {
            out.push((
                "high_priority.high_priority".into(),
                "priorities do not nest".into(),
            ));
        }
        for (field, message) in check_breaker(high) {
            out.push((format!("high_priority.{field}"), message));
        }
    }
    out
}
