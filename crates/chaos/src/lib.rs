//! Fault injection for chaos testing: delays (fixed or from a distribution), aborts (HTTP or gRPC
//! status), response throttling and connection resets, as a tower layer driven by named rules.
//!
//! # Pieces
//! - [`FaultRule`]: the rule model (serde; YAML config and JSON over the admin API), validated
//!   with field-level errors ([`FieldError`], [`parse_rule_json`]).
//! - [`FaultRegistry`]: the rules with their source (config / API), read lock-free per request
//!   (`arc-swap` snapshot); `put`, `delete`, `load_config` (reload keeps API rules),
//!   `disable_all` / `enable_all` (kill switch); counters per rule, as JSON ([`FaultRegistry::view`])
//!   and Prometheus text ([`FaultRegistry::render_prometheus`]).
//! - [`FaultLayer`] / [`Fault`]: the tower layer. Response bodies become [`FaultBody`]; a reset
//!   is the error [`FaultReset`] (the inner error type must implement `From<FaultReset>`);
//!   responses that got faults carry [`AppliedFaults`] in their extensions.
//!
//! # Position in the stack
//! The per-route stack is rate limit ▸ **fault** ▸ timeout ▸ retry ▸ breaker ▸ cluster. A layer
//! instance serves one [`FaultScope`] (in its [`FaultTarget`]):
//! - `FaultScope::Request` (default for rules) sits outside the timeout and the retry layer:
//!   faults apply once per client request, retries cannot mask them, and a delay counts toward
//!   the client's latency but not the route timeout (as in Istio).
//! - `FaultScope::Attempt` sits inside the retry layer (just above the breaker): faults apply to
//!   each upstream attempt, so retries may mask them and the timeout covers the delay; an
//!   attempt's reset is an error the retry layer sees.
//!
//! The proxy places one instance per scope; rules choose with `scope: request | attempt`.
//! Header-driven faults are read only by the instance whose target has `header_faults` set (the
//! proxy sets it on the `Request` instance of listeners that enable them); that instance also
//! strips the `x-fault-*` headers so the next hop does not apply them again.
//!
//! # Combining rules
//! Header-driven faults are tried first, then rules in order (config rules in file order, then
//! API rules in creation order). Each kind — request delay, response delay, abort-or-reset,
//! throttle — comes from the first rule whose roll hits; later rules do not roll for a kind
//! already taken. Within a rule each kind is rolled independently (reset before abort). A delay
//! comes first; an abort or reset then answers without calling upstream (after both delays).
//!
//! # A rule in YAML
//! ```yaml
//! name: orders-latency
//! match: { listener: edge, route: orders, path_prefix: /api/orders, methods: [GET],
//!          headers: { x-canary: "true", x-user: { regex: "^test-" } } }
//! scope: request                      # or attempt (inside retries)
//! delay: { percent: 10, lognormal: { median: 500ms, sigma: 0.4 }, on: request, max: 5s }
//! abort: { percent: 2, grpc_status: UNAVAILABLE, message: "injected by chaos" }
//! throttle: { percent: 1, bytes_per_second: 64KiB }
//! reset: { percent: 0.1 }
//! max_active: 50
//! schedule: { duration: 10m }         # or start / stop as RFC 3339 times
//! ```
//!
//! # The same over the admin API (JSON)
//! ```json
//! {"name": "orders-latency",
//!  "match": {"listener": "edge", "route": "orders", "path_prefix": "/api/orders"},
//!  "delay": {"percent": 10, "lognormal": {"median": "500ms", "sigma": 0.4}},
//!  "abort": {"percent": 2, "http_status": 503, "body": "injected\n"},
//!  "max_active": 50, "schedule": {"duration": "10m"}}
//! ```

mod body;
mod error;
mod future;
mod grpc;
mod headers;
mod layer;
mod matcher;
mod plan;
mod registry;
mod rule;
pub mod sample;
mod service;
mod stats;
mod units;

pub use body::{FaultBody, Throttled};
pub use error::FaultReset;
pub use future::ResponseFuture;
pub use grpc::{GRPC_CODE_NAMES, encode_grpc_message, parse_grpc_code};
pub use headers::{
    HeaderFaultLimits, X_FAULT_ABORT_GRPC_STATUS, X_FAULT_ABORT_STATUS, X_FAULT_DELAY_MS,
    X_FAULT_PERCENT, X_FAULT_THROTTLE_BPS, strip_fault_headers,
};
pub use layer::FaultLayer;
pub use matcher::ValueMatch;
pub use plan::{AppliedFault, AppliedFaults, FaultPlan, FaultTarget};
pub use registry::{ChaosView, FaultRegistry, PutOutcome, RuleSource, RuleStatus, RuleView};
pub use rule::{
    AbortFault, DelayFault, DelayPhase, FaultMatch, FaultRule, FaultScope, FieldError, GrpcStatus,
    LogNormalDelay, NormalDelay, ParetoDelay, ResetFault, Schedule, ThrottleFault, UniformDelay,
    parse_rule_json,
};
pub use service::Fault;
pub use stats::{
    ActiveGuard, DELAY_BUCKETS_MS, DelayHistogramSnapshot, FaultKind, InjectedCounts, RuleStats,
    StatsSnapshot,
};
pub use units::{ByteRate, FaultDuration, parse_rfc3339};

#[cfg(test)]
mod tests;
