//! Typed otlp-mesh configuration: the YAML model, loading with located errors, validation and hot reload.
//!
//! Loading is `parse → validate`; both report errors as [`ConfigError`] values that carry
//! the file, line, column and field path, so `otlp-mesh validate` can list every problem at once.

mod error;
pub mod health;
mod load;
mod locate;
mod located;
mod mask;
pub mod model;
pub mod reload;
pub mod resilience;
pub mod telemetry;
mod validate;

pub use error::{ConfigError, LoadError};
pub use health::{
    FailurePercentagePolicy, GrpcCheckPolicy, HealthCheckPolicy, HttpCheckPolicy, OutlierPolicy,
    SuccessRatePolicy, TcpCheckPolicy,
};
pub use load::{LoadedConfig, load_file, parse_str};
pub use located::Located;
pub use mask::masked_json;
pub use model::*;
pub use otlp_mesh_units::{ByteSize, Duration, ValueMatch};
pub use resilience::{
    BackoffPolicy, BreakerPolicy, BudgetPolicy, ErrorRatePolicy, NonIdempotentPolicy,
    RateLimitPolicy, RetryPolicy,
};
/// Durations and sizes as written in config (re-exported from `otlp-mesh-units`).
pub mod units {
    pub use otlp_mesh_units::{ByteSize, Duration};
}
