//! OTLP payloads as they move through the pipeline: encoded export requests with their item counts.
//!
//! The pipeline carries protobuf bytes, not decoded messages: protobuf concatenation of two
//! `Export*ServiceRequest` encodings is the encoding of their merged request (every top-level
//! field is a repeated message), so batching and forwarding never decode what no processor reads.

pub mod decode;
pub mod status;
pub mod wire;

use bytes::Bytes;
use std::fmt;

/// The three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    /// All signals, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// Lower-case name: `traces`, `metrics`, `logs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// OTLP/HTTP path, e.g. `/v1/traces`.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    /// OTLP/gRPC method path.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }

    /// The signal whose OTLP/HTTP path is `path`.
    pub fn from_http_path(path: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.http_path() == path)
    }

    /// The signal whose OTLP/gRPC method path is `path`.
    pub fn from_grpc_path(path: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.grpc_path() == path)
    }

    /// Index into per-signal arrays (0..3).
    pub fn index(self) -> usize {
        self as usize
    }

    /// What one item of this signal is called in logs and metrics.
    pub fn item_name(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
            Signal::Logs => "log records",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One encoded `Export{Traces,Metrics,Logs}ServiceRequest` and how many items it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub signal: Signal,
    /// Protobuf encoding of the export request.
    pub payload: Bytes,
    /// Spans, metric data points or log records in `payload`.
    pub items: u64,
}

impl Batch {
    /// A batch whose payload was checked by [`wire::scan`].
    pub fn new(signal: Signal, payload: Bytes, items: u64) -> Self {
        Batch {
            signal,
            payload,
            items,
        }
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True when the payload holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}
