//! Trace-id load balancing: one exporter per backend, and every span of a trace sent to the same
//! backend (so tail-sampling collectors behind it see whole traces).
//!
//! The backend of a trace is chosen by rendezvous (highest-random-weight) hashing of the trace
//! id over the backends' URLs: the choice depends on the set of URLs, not their order, and adding
//! or removing one backend moves only the traces that go to (or went to) that backend. Each
//! backend is a full [`Exporter`] with its own queue, retries and metrics (named `<name>-<i>`,
//! queue directory `<dir>/<name>-<i>`).
//!
//! Traces are decoded and split per backend, each span keeping its resource and scope. Log
//! records with a trace id follow their trace; log records without one, metrics and payloads that
//! cannot be decoded go to one backend per batch, round-robin. The backend list is static (from
//! config); following a discovery source is not implemented yet.

use super::{ExportError, Exporter, QueueFull};
use crate::{Batch, MemoryLimiter, Priority, Signal};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use otlp_mesh_config::Located;
use otlp_mesh_config::telemetry::{BatchConfig, ExportProtocol, ExporterConfig};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// An exporter over several backends, routing by trace id. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LoadBalancingExporter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    backends: Vec<Exporter>,
    /// Backend URLs as configured.
    urls: Vec<String>,
    /// Per-backend hash of its URL, for rendezvous hashing.
    keys: Vec<u64>,
    next: AtomicUsize,
}

impl LoadBalancingExporter {
    /// Starts one exporter per backend of `cfg.loadbalancing`.
    pub async fn start(
        name: String,
        cfg: &ExporterConfig,
        batch: &BatchConfig,
        memory: Arc<MemoryLimiter>,
    ) -> Result<LoadBalancingExporter, ExportError> {
        let Some(lb) = &cfg.loadbalancing else {
            return Err(ExportError::Config {
                name,
                reason: "`loadbalancing` is not set".into(),
            });
        };
        if lb.backends.is_empty() {
            return Err(ExportError::Config {
                name,
                reason: "`loadbalancing.backends` is empty".into(),
            });
        }
        let mut backends = Vec::with_capacity(lb.backends.len());
        for (i, url) in lb.backends.iter().enumerate() {
            let ep = Some(Located::new(lb.endpoint(url)));
            let mut one = cfg.clone();
            one.loadbalancing = None;
            one.name = None;
            match lb.protocol {
                ExportProtocol::OtlpGrpc => one.otlp_grpc = ep,
                ExportProtocol::OtlpHttp => one.otlp_http = ep,
            }
            match Exporter::start(format!("{name}-{i}"), &one, batch, memory.clone()).await {
                Ok(e) => backends.push(e),
                Err(e) => {
                    // Stop the ones already started (their persistent queues keep their data).
                    for b in &backends {
                        b.shutdown(Duration::ZERO).await;
                    }
                    return Err(e);
                }
            }
        }
        let urls: Vec<String> = lb.backends.iter().map(|u| u.value.clone()).collect();
        Ok(LoadBalancingExporter::from_parts(name, backends, urls))
    }

    fn from_parts(name: String, backends: Vec<Exporter>, urls: Vec<String>) -> Self {
        let keys = urls.iter().map(|u| backend_key(u)).collect();
        LoadBalancingExporter {
            inner: Arc::new(Inner {
                name,
                backends,
                urls,
                keys,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// One exporter per backend, in config order.
    pub fn backends(&self) -> &[Exporter] {
        &self.inner.backends
    }

    /// Backend URLs, in config order.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// Index (in config order) of the backend that gets trace `trace_id`.
    pub fn backend_for_trace(&self, trace_id: &[u8]) -> usize {
        rendezvous(&self.inner.keys, trace_id)
    }

    /// Queues `batch`, split by backend. Refused when any backend's queue refuses its part (the
    /// parts other backends took are then sent again when the sender retries).
    pub async fn enqueue(&self, batch: Batch, priority: Priority) -> Result<(), QueueFull> {
        let mut result = Ok(());
        for (i, part) in self.route(batch) {
            let Some(b) = self.inner.backends.get(i) else {
                continue;
            };
            let queued = match priority {
                Priority::Receiver => b.enqueue(part).await,
                Priority::Internal => b.enqueue_internal(part).await,
            };
            if let Err(e) = queued {
                result = Err(e);
            }
        }
        result
    }

    /// Stops every backend's exporter (see [`Exporter::shutdown`]).
    pub async fn shutdown(&self, deadline: Duration) {
        for b in &self.inner.backends {
            b.shutdown(deadline).await;
        }
    }

    /// Splits `batch` into (backend index, part) pairs.
    pub fn route(&self, batch: Batch) -> Vec<(usize, Batch)> {
        let n = self.inner.keys.len();
        if n <= 1 {
            return vec![(0, batch)];
        }
        match batch.signal {
            Signal::Traces => match ExportTraceServiceRequest::decode(&batch.payload[..]) {
                Ok(req) => self.split_traces(req),
                Err(e) => {
                    tracing::debug!(exporter = %self.inner.name, error = %e, "load balancing cannot decode a traces batch; sending it whole");
                    vec![(self.round_robin(), batch)]
                }
            },
            Signal::Logs => match ExportLogsServiceRequest::decode(&batch.payload[..]) {
                Ok(req) => self.split_logs(req),
                Err(e) => {
                    tracing::debug!(exporter = %self.inner.name, error = %e, "load balancing cannot decode a logs batch; sending it whole");
                    vec![(self.round_robin(), batch)]
                }
            },
            Signal::Metrics => vec![(self.round_robin(), batch)],
        }
    }

    fn round_robin(&self) -> usize {
        self.inner.next.fetch_add(1, Relaxed) % self.inner.keys.len().max(1)
    }

    fn split_traces(&self, req: ExportTraceServiceRequest) -> Vec<(usize, Batch)> {
        let n = self.inner.keys.len();
        let mut out: Vec<Vec<ResourceSpans>> = vec![Vec::new(); n];
        let mut items = vec![0u64; n];
        for rs in req.resource_spans {
            let mut per: Vec<Option<ResourceSpans>> = vec![None; n];
            for ss in rs.scope_spans {
                let mut scopes: Vec<Option<ScopeSpans>> = vec![None; n];
                for span in ss.spans {
                    let b = rendezvous(&self.inner.keys, &span.trace_id);
                    items[b] += 1;
                    scopes[b]
                        .get_or_insert_with(|| ScopeSpans {
                            scope: ss.scope.clone(),
                            spans: Vec::new(),
                            schema_url: ss.schema_url.clone(),
                        })
                        .spans
                        .push(span);
                }
                for (b, scope) in scopes.into_iter().enumerate() {
                    let Some(scope) = scope else { continue };
                    per[b]
                        .get_or_insert_with(|| ResourceSpans {
                            resource: rs.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: rs.schema_url.clone(),
                        })
                        .scope_spans
                        .push(scope);
                }
            }
            for (b, r) in per.into_iter().enumerate() {
                out[b].extend(r);
            }
        }
        out.into_iter()
            .enumerate()
            .filter(|(_, rs)| !rs.is_empty())
            .map(|(b, resource_spans)| {
                let req = ExportTraceServiceRequest { resource_spans };
                (
                    b,
                    Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), items[b]),
                )
            })
            .collect()
    }

    fn split_logs(&self, req: ExportLogsServiceRequest) -> Vec<(usize, Batch)> {
        let n = self.inner.keys.len();
        // Records outside a trace all go to one backend for this batch.
        let rr = self.round_robin();
        let mut out: Vec<Vec<ResourceLogs>> = vec![Vec::new(); n];
        let mut items = vec![0u64; n];
        for rl in req.resource_logs {
            let mut per: Vec<Option<ResourceLogs>> = vec![None; n];
            for sl in rl.scope_logs {
                let mut scopes: Vec<Option<ScopeLogs>> = vec![None; n];
                for rec in sl.log_records {
                    let b = if rec.trace_id.iter().all(|&x| x == 0) {
                        rr
                    } else {
                        rendezvous(&self.inner.keys, &rec.trace_id)
                    };
                    items[b] += 1;
                    scopes[b]
                        .get_or_insert_with(|| ScopeLogs {
                            scope: sl.scope.clone(),
                            log_records: Vec::new(),
                            schema_url: sl.schema_url.clone(),
                        })
                        .log_records
                        .push(rec);
                }
                for (b, scope) in scopes.into_iter().enumerate() {
                    let Some(scope) = scope else { continue };
                    per[b]
                        .get_or_insert_with(|| ResourceLogs {
                            resource: rl.resource.clone(),
                            scope_logs: Vec::new(),
                            schema_url: rl.schema_url.clone(),
                        })
                        .scope_logs
                        .push(scope);
                }
            }
            for (b, r) in per.into_iter().enumerate() {
                out[b].extend(r);
            }
        }
        out.into_iter()
            .enumerate()
            .filter(|(_, rl)| !rl.is_empty())
            .map(|(b, resource_logs)| {
                let req = ExportLogsServiceRequest { resource_logs };
                (
                    b,
                    Batch::new(Signal::Logs, Bytes::from(req.encode_to_vec()), items[b]),
                )
            })
            .collect()
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer: a bijection with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A backend's hashing key: its URL without a trailing `/`.
fn backend_key(url: &str) -> u64 {
    mix(fnv1a(url.trim_end_matches('/').as_bytes()))
}

/// Rendezvous hashing: the backend whose key scores highest with `trace_id`.
fn rendezvous(keys: &[u64], trace_id: &[u8]) -> usize {
    let t = mix(fnv1a(trace_id));
    let mut best = (0usize, 0u64);
    for (i, k) in keys.iter().enumerate() {
        let score = mix(k ^ t);
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn lb(urls: &[&str]) -> LoadBalancingExporter {
        LoadBalancingExporter::from_parts(
            "lb".into(),
            Vec::new(),
            urls.iter().map(|u| u.to_string()).collect(),
        )
    }

    fn trace_id(i: u64) -> Vec<u8> {
        [mix(i).to_be_bytes(), mix(i + 1_000_000).to_be_bytes()].concat()
    }

    fn url_for(lb: &LoadBalancingExporter, id: &[u8]) -> String {
        lb.urls()[lb.backend_for_trace(id)].clone()
    }

    #[test]
    fn order_does_not_matter_and_removing_a_backend_moves_only_its_traces() {
        let abc = lb(&["http://a:4317", "http://b:4317", "http://c:4317"]);
        let cba = lb(&["http://c:4317", "http://b:4317/", "http://a:4317"]);
        let ab = lb(&["http://a:4317", "http://b:4317"]);
        let mut counts = [0u32; 3];
        for i in 0..3000 {
            let id = trace_id(i);
            let u = url_for(&abc, &id);
            assert_eq!(
                u.trim_end_matches('/'),
                url_for(&cba, &id).trim_end_matches('/')
            );
            counts[abc.backend_for_trace(&id)] += 1;
            if u != "http://c:4317" {
                assert_eq!(
                    url_for(&ab, &id),
                    u,
                    "trace {i} moved although its backend stayed"
                );
            }
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn traces_and_their_logs_go_to_the_same_backend_with_resource_and_scope() {
        let lb = lb(&["http://a:4317", "http://b:4317", "http://c:4317"]);
        let spans: Vec<Span> = (0..60)
            .map(|i| Span {
                trace_id: trace_id(i / 3),
                span_id: (i + 1).to_be_bytes().to_vec(),
                ..Default::default()
            })
            .collect();
        let resource = Some(opentelemetry_proto::tonic::resource::v1::Resource {
            dropped_attributes_count: 7,
            ..Default::default()
        });
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource.clone(),
                scope_spans: vec![ScopeSpans {
                    spans,
                    schema_url: "scope".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = lb.route(Batch::new(
            Signal::Traces,
            Bytes::from(req.encode_to_vec()),
            60,
        ));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(|(_, b)| b.items).sum::<u64>(), 60);
        for (b, part) in &parts {
            let req = ExportTraceServiceRequest::decode(&part.payload[..]).unwrap();
            assert_eq!(req.resource_spans[0].resource, resource);
            assert_eq!(req.resource_spans[0].scope_spans[0].schema_url, "scope");
            for s in &req.resource_spans[0].scope_spans[0].spans {
                assert_eq!(lb.backend_for_trace(&s.trace_id), *b);
            }
        }

        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..20)
                        .map(|i| LogRecord {
                            trace_id: if i < 10 { trace_id(i) } else { Vec::new() },
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = lb.route(Batch::new(
            Signal::Logs,
            Bytes::from(logs.encode_to_vec()),
            20,
        ));
        assert_eq!(parts.iter().map(|(_, b)| b.items).sum::<u64>(), 20);
        let mut without_trace = Vec::new();
        for (b, part) in &parts {
            let req = ExportLogsServiceRequest::decode(&part.payload[..]).unwrap();
            for r in &req.resource_logs[0].scope_logs[0].log_records {
                if r.trace_id.is_empty() {
                    without_trace.push(*b);
                } else {
                    assert_eq!(lb.backend_for_trace(&r.trace_id), *b);
                }
            }
        }
        assert_eq!(without_trace.len(), 10);
        assert!(without_trace.iter().all(|b| *b == without_trace[0]));

        // Metrics go round-robin, whole.
        let m = Batch::new(Signal::Metrics, Bytes::from_static(b"m"), 1);
        let firsts: Vec<usize> = (0..3).map(|_| lb.route(m.clone())[0].0).collect();
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "{firsts:?}");
    }
}
