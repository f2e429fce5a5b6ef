//! otlp-mesh telemetry: lock-free request metrics with Prometheus text exposition.
//!
//! Series are created when a config snapshot is built (under a registry mutex, off the data
//! path) and handed to the router as `Arc`s; recording a request is a few relaxed atomic adds.
//! The OTLP pipeline (spans, receiver, exporters, store) arrives with the telemetry issue.

mod histogram;
mod prometheus;
mod registry;

pub use histogram::{DURATION_BUCKETS_SECONDS, Histogram};
pub use prometheus::{PromWriter, escape_label, write_family, write_sample};
pub use registry::{ClusterMetrics, ListenerMetrics, Registry, RouteMetrics, StatusClass};
