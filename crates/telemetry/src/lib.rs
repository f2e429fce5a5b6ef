//! otlp-mesh telemetry: lock-free request metrics with Prometheus text exposition, and the OTLP
//! pipeline (receiver ▸ processors ▸ exporters and embedded store).
//!
//! Request metric series are created when a config snapshot is built (under a registry mutex,
//! off the data path) and handed to the router as `Arc`s; recording a request is a few relaxed
//! atomic adds. OTLP data moves through the pipeline as encoded protobuf ([`otlp::Batch`]).

pub mod export;
mod histogram;
pub mod limiter;
pub mod otlp;
pub mod pipeline;
pub mod processors;
pub mod propagation;
pub mod receiver;
pub mod recorder;
mod registry;
pub mod runtime;
pub mod store;

pub use export::{ExportError, Exporter, ExporterStatsSnapshot, QueueFull};
pub use histogram::{DURATION_BUCKETS_SECONDS, Histogram};
pub use limiter::{MemoryLimiter, Priority};
pub use otlp::{Batch, Signal};
pub use otlp_mesh_prom::{PromWriter, escape_label, write_family, write_sample};
pub use pipeline::{Consumer, Pipeline, Refused};
pub use registry::{ClusterMetrics, ListenerMetrics, Registry, RouteMetrics, StatusClass};
pub use runtime::{Telemetry, TelemetryError};
