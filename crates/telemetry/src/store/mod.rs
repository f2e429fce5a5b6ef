//! Embedded store of recent telemetry, bounded by memory, with the queries behind the admin API
//! (`/api/services`, `/api/traces`, `/api/logs`, `/api/metrics`).
//!
//! [`Store::ingest`] decodes a pipeline [`Batch`] outside any lock into compact owned records,
//! then takes the signal's write lock only to insert them and evict. Queries take a read lock,
//! copy out what they need, and do sorting and statistics after releasing it.
//!
//! # Memory bound
//! `max_bytes` is split into fixed budgets: traces 60 %, logs 25 %, metrics 15 %. Each item is
//! charged an estimate of what it holds (struct size, string capacities, attribute maps with a
//! per-entry overhead, index entries). A batch's resource attributes are shared by its items
//! and charged once, spread over them. Past its budget a signal evicts its oldest data first:
//! - traces: whole traces, in order of their first span's arrival (a late span joins its trace;
//!   a span of an evicted trace starts a new, partial one);
//! - logs: records in arrival order (the trace id index is trimmed with them);
//! - metrics: only the latest point of each series (service, name, attributes) is kept; the
//!   series updated least recently goes first.

mod feed;
mod ingest;
mod logs;
mod metrics;
mod model;
mod service_map;
mod span_wire;
mod traces;

pub use feed::StoreFeed;
pub use ingest::Ingestion;
pub use logs::{DEFAULT_LOG_LIMIT, LogQuery, LogView};
pub use metrics::{
    ExpBucketsView, ExponentialHistogramView, HistogramView, MetricKind, MetricQuery, MetricView,
    QuantileView, SummaryView,
};
pub use model::{
    Attributes, Event, Span, SpanId, SpanKind, Status, StatusCode, TraceId, UNKNOWN_SERVICE,
    any_value_to_json,
};
pub use service_map::{ServiceEdge, ServiceMap, ServiceNode};
pub use traces::{DEFAULT_TRACE_LIMIT, MAX_LIMIT, TraceDetail, TraceQuery, TraceSummary};

use crate::otlp::{Batch, Signal};
use logs::Logs;
use metrics::Metrics;
use model::{any_value_into_json, attributes_owned};
use opentelemetry_proto::tonic::logs::v1 as otlp_logs;
use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;
#[cfg(test)]
use opentelemetry_proto::tonic::trace::v1 as otlp_trace;
use prost::Message;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use traces::Traces;

/// Share of `max_bytes` for traces, logs and metrics, in percent.
pub const BUDGET_PERCENT: [(Signal, u64); 3] = [
    (Signal::Traces, 60),
    (Signal::Logs, 25),
    (Signal::Metrics, 15),
];

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The payload is not a valid export request of the batch's signal.
    #[error("invalid {signal} payload: {source}")]
    Decode {
        signal: Signal,
        #[source]
        source: crate::otlp::wire::WireError,
    },
}

/// Counters and sizes of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// Estimated bytes held (all signals).
    pub bytes: u64,
    pub max_bytes: u64,
    pub trace_bytes: u64,
    pub log_bytes: u64,
    pub metric_bytes: u64,
    pub spans: u64,
    pub traces: u64,
    pub logs: u64,
    /// Stored series (one latest point each).
    pub metric_points: u64,
    /// Items evicted to stay under the budget (spans + log records + metric points).
    pub evicted: u64,
    pub evicted_spans: u64,
    pub evicted_traces: u64,
    pub evicted_logs: u64,
    pub evicted_metric_points: u64,
    /// Spans skipped at ingest because their trace or span id is invalid.
    pub invalid_spans: u64,
    /// Spans, metrics and log records skipped because they did not decode (the rest of their
    /// batch is stored).
    pub undecodable_items: u64,
    /// Batches whose framing broke part-way (the items before the break are stored).
    pub rejected_batches: u64,
}

/// Recent spans, logs and metric points, bounded by `max_bytes`. `Send + Sync`; share it in an
/// `Arc`.
pub struct Store {
    max_bytes: u64,
    traces: RwLock<Traces>,
    logs: RwLock<Logs>,
    metrics: RwLock<Metrics>,
    invalid_spans: AtomicU64,
    undecodable: AtomicU64,
    rejected: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Serializes a u64 as a decimal string (OTLP/JSON style for nanosecond times).
pub(crate) fn ser_u64_str<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Serializes a shared string.
pub(crate) fn ser_arc_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Store {
    /// A store holding at most about `max_bytes` (see the module docs for the split).
    pub fn new(max_bytes: u64) -> Store {
        let budget = |signal: Signal| {
            let pct = BUDGET_PERCENT
                .iter()
                .find(|(s, _)| *s == signal)
                .map_or(0, |(_, p)| *p);
            usize::try_from(max_bytes / 100 * pct + max_bytes % 100 * pct / 100)
                .unwrap_or(usize::MAX)
        };
        Store {
            max_bytes,
            traces: RwLock::new(Traces::new(budget(Signal::Traces))),
            logs: RwLock::new(Logs::new(budget(Signal::Logs))),
            metrics: RwLock::new(Metrics::new(budget(Signal::Metrics))),
            invalid_spans: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// A store sized by the `telemetry.store` config (whether it is `enabled` is the caller's
    /// decision).
    pub fn from_config(config: &otlp_mesh_config::telemetry::StoreConfig) -> Store {
        Store::new(config.max_bytes.value.0)
    }

    /// Decodes and indexes a whole batch: [`Store::ingest_slice`] until it is done.
    pub fn ingest(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut ingestion = Ingestion::new(batch);
        while self.ingest_slice(&mut ingestion, usize::MAX)? {}
        Ok(())
    }

    /// Decodes the next items of `ingestion` (spans, metrics or log records), as many as reach
    /// `max_bytes` encoded (at least one), and indexes them, decoding before the signal's lock
    /// is taken. `Ok(true)` when there may be more. Items that do not decode, and spans whose
    /// trace id is not 16 bytes or span id not 8 (or all zeros), are skipped and counted. A
    /// payload whose framing breaks part-way keeps the items before the break and returns the
    /// error.
    pub fn ingest_slice(
        &self,
        ingestion: &mut Ingestion,
        max_bytes: usize,
    ) -> Result<bool, StoreError> {
        let mut undecodable = 0u64;
        let walked = match ingestion.signal() {
            Signal::Traces => {
                let mut spans = Vec::new();
                let mut invalid = 0u64;
                let walked = ingestion.take(max_bytes, |item, group| {
                    match span_wire::span(item, group) {
                        Ok(Some(record)) => spans.push(record),
                        Ok(None) => invalid += 1,
                        Err(span_wire::Undecodable) => undecodable += 1,
                    }
                });
                if invalid > 0 {
                    self.invalid_spans.fetch_add(invalid, Ordering::Relaxed);
                }
                if !spans.is_empty() {
                    write(&self.traces).insert(spans);
                }
                walked
            }
            Signal::Logs => {
                let mut records = Vec::new();
                let walked = ingestion.take(max_bytes, |item, group| {
                    if let Some(r) = decoded(item, &mut undecodable) {
                        records.push(log_view(r, &group.service));
                    }
                });
                if !records.is_empty() {
                    write(&self.logs).insert(records);
                }
                walked
            }
            Signal::Metrics => {
                let mut points = Vec::new();
                let walked = ingestion.take(max_bytes, |item, group| {
                    if let Some(m) = decoded::<otlp_metrics::Metric>(item, &mut undecodable) {
                        points.extend(metrics::points(&m, &group.service));
                    }
                });
                if !points.is_empty() {
                    write(&self.metrics).insert(points);
                }
                walked
            }
        };
        if undecodable > 0 {
            self.undecodable.fetch_add(undecodable, Ordering::Relaxed);
        }
        walked.map_err(|source| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            StoreError::Decode {
                signal: ingestion.signal(),
                source,
            }
        })
    }

    /// The service map over spans that ended within `window` of now (everything when `None`).
    pub fn services(&self, window: Option<Duration>) -> ServiceMap {
        self.services_at(window, now_unix_nano())
    }

    /// [`Store::services`] with an explicit "now" (nanoseconds since the Unix epoch).
    pub fn services_at(&self, window: Option<Duration>, now_unix_nano: u64) -> ServiceMap {
        let cutoff = window.map_or(0, |w| {
            now_unix_nano.saturating_sub(u64::try_from(w.as_nanos()).unwrap_or(u64::MAX))
        });
        let snapshot = read(&self.traces).snapshot(cutoff);
        service_map::build(&snapshot, window, now_unix_nano)
    }

    /// Matching traces, most recent start first (ties by trace id), at most `q.limit`.
    pub fn traces(&self, q: &TraceQuery) -> Vec<TraceSummary> {
        read(&self.traces).matching(q)
    }

    /// All spans of a trace sorted by start time; `None` for an unknown or malformed id.
    pub fn trace(&self, trace_id_hex: &str) -> Option<TraceDetail> {
        let id = TraceId::from_hex(trace_id_hex)?;
        let spans: Vec<Arc<Span>> = read(&self.traces).get(&id)?.spans.clone();
        let mut spans: Vec<Span> = spans.iter().map(|s| Span::clone(s)).collect();
        spans.sort_by(|a, b| {
            a.start_unix_nano
                .cmp(&b.start_unix_nano)
                .then(a.end_unix_nano.cmp(&b.end_unix_nano).reverse())
        });
        Some(TraceDetail {
            trace_id: id,
            spans,
        })
    }

    /// Matching log records, newest first.
    pub fn logs(&self, q: &LogQuery) -> Vec<LogView> {
        read(&self.logs).query(q)
    }

    /// The latest point of each matching series, sorted by service, name and attributes.
    pub fn metrics(&self, q: &MetricQuery) -> Vec<MetricView> {
        read(&self.metrics).query(q)
    }

    /// Sizes and counters.
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats {
            max_bytes: self.max_bytes,
            invalid_spans: self.invalid_spans.load(Ordering::Relaxed),
            undecodable_items: self.undecodable.load(Ordering::Relaxed),
            rejected_batches: self.rejected.load(Ordering::Relaxed),
            ..StoreStats::default()
        };
        {
            let t = read(&self.traces);
            s.trace_bytes = t.bytes() as u64;
            s.spans = t.span_count() as u64;
            s.traces = t.trace_count() as u64;
            s.evicted_spans = t.evicted_spans;
            s.evicted_traces = t.evicted_traces;
        }
        {
            let l = read(&self.logs);
            s.log_bytes = l.bytes() as u64;
            s.logs = l.len() as u64;
            s.evicted_logs = l.evicted;
        }
        {
            let m = read(&self.metrics);
            s.metric_bytes = m.bytes() as u64;
            s.metric_points = m.len() as u64;
            s.evicted_metric_points = m.evicted;
        }
        s.bytes = s.trace_bytes + s.log_bytes + s.metric_bytes;
        s.evicted = s.evicted_spans + s.evicted_logs + s.evicted_metric_points;
        s
    }
}

/// `item` decoded as `M`; `None`, counted in `undecodable`, when it does not decode.
fn decoded<M: Message + Default>(item: &[u8], undecodable: &mut u64) -> Option<M> {
    let m = M::decode(item).ok();
    *undecodable += u64::from(m.is_none());
    m
}

/// A span decoded by prost as stored, with its charged size (`None` when its ids are invalid):
/// the reference for what [`span_wire::span`] makes of the same bytes.
#[cfg(test)]
fn span_record(s: otlp_trace::Span, group: &ingest::Group) -> Option<(Span, usize)> {
    let trace_id = TraceId::from_bytes(&s.trace_id)?;
    let span_id = SpanId::from_bytes(&s.span_id)?;
    let status = s.status.unwrap_or_default();
    let span = Span {
        trace_id,
        span_id,
        parent_span_id: SpanId::from_bytes(&s.parent_span_id),
        service: group.service.clone(),
        name: s.name,
        kind: SpanKind::from_otlp(s.kind),
        start_unix_nano: s.start_time_unix_nano,
        end_unix_nano: s.end_time_unix_nano,
        status: Status {
            code: StatusCode::from_otlp(status.code),
            message: status.message,
        },
        attributes: attributes_owned(s.attributes),
        events: s
            .events
            .into_iter()
            .map(|e| Event {
                attributes: attributes_owned(e.attributes),
                name: e.name,
                time_unix_nano: e.time_unix_nano,
            })
            .collect(),
        resource: group.resource.clone(),
    };
    let bytes = span.estimated_bytes() + group.share;
    Some((span, bytes))
}

/// A decoded log record as stored.
fn log_view(r: otlp_logs::LogRecord, service: &Arc<str>) -> LogView {
    LogView {
        time_unix_nano: if r.time_unix_nano != 0 {
            r.time_unix_nano
        } else {
            r.observed_time_unix_nano
        },
        severity_text: r.severity_text,
        severity_number: r.severity_number,
        body: r.body.map(any_value_into_json).unwrap_or_default(),
        trace_id: TraceId::from_bytes(&r.trace_id),
        span_id: SpanId::from_bytes(&r.span_id),
        service: service.clone(),
        attributes: attributes_owned(r.attributes),
    }
}

#[cfg(test)]
mod tests;
