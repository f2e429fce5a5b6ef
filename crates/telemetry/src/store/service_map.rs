//! The service map: per-service request statistics and the calls between services, derived from
//! parent/child spans at query time (so children that arrived before their parents count once
//! the parent is there).

use super::model::{Span, SpanId, SpanKind, ns_to_ms};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Services and the calls between them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMap {
    /// The window asked for, or `None` for everything stored.
    pub window_seconds: Option<f64>,
    /// The time rates are computed over: the window, or the time covered by the spans counted
    /// (at least one second).
    pub rate_interval_seconds: f64,
    /// Sorted by service.
    pub nodes: Vec<ServiceNode>,
    /// Sorted by source, then target.
    pub edges: Vec<ServiceEdge>,
}

/// One service.
///
/// Requests are its entry spans: SERVER or CONSUMER spans, root spans, spans whose parent has not
/// arrived, and spans whose parent is in another service.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNode {
    pub service: String,
    /// All spans of the service in the window.
    pub spans: u64,
    pub requests: u64,
    /// Requests with status ERROR or an HTTP status ≥ 500.
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rate_per_second: f64,
}

/// Calls from `source` to `target`: a span of `target` whose parent span is in `source`.
///
/// When the parent is a CLIENT or PRODUCER span, one call is counted per parent span and
/// target service however many spans of the target it has as children. Durations and errors
/// are the child (server-side) span's.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEdge {
    pub source: String,
    pub target: String,
    pub requests: u64,
    /// Calls whose child span has status ERROR or an HTTP status ≥ 500.
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rate_per_second: f64,
}

#[derive(Default)]
struct Acc {
    spans: u64,
    errors: u64,
    durations: Vec<f64>,
}

impl Acc {
    fn record(&mut self, span: &Span) {
        self.durations.push(span.duration_ms());
        if span.is_error() {
            self.errors += 1;
        }
    }

    /// (requests, errors, error rate, p50, p99, rate).
    fn finish(mut self, interval: f64) -> (u64, u64, f64, Option<f64>, Option<f64>, f64) {
        self.durations.sort_by(f64::total_cmp);
        let n = self.durations.len() as u64;
        let rate = if n == 0 {
            0.0
        } else {
            self.errors as f64 / n as f64
        };
        (
            n,
            self.errors,
            rate,
            percentile(&self.durations, 0.50),
            percentile(&self.durations, 0.99),
            n as f64 / interval,
        )
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Builds the map from the spans of whole traces; spans ending before `now - window` are not
/// counted (their trace still resolves parents).
pub(crate) fn build(
    traces: &[Vec<Arc<Span>>],
    window: Option<Duration>,
    now_unix_nano: u64,
) -> ServiceMap {
    let cutoff = window.map_or(0, |w| {
        now_unix_nano.saturating_sub(u64::try_from(w.as_nanos()).unwrap_or(u64::MAX))
    });
    let mut nodes: BTreeMap<Arc<str>, Acc> = BTreeMap::new();
    let mut edges: BTreeMap<(Arc<str>, Arc<str>), Acc> = BTreeMap::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    for trace in traces {
        let by_id: HashMap<SpanId, &Span> = trace.iter().map(|s| (s.span_id, &**s)).collect();
        let mut calls: HashSet<(SpanId, &str)> = HashSet::new();
        for span in trace {
            if span.end_unix_nano < cutoff {
                continue;
            }
            first = first.min(span.start_unix_nano);
            last = last.max(span.end_unix_nano);
            let node = nodes.entry(span.service.clone()).or_default();
            node.spans += 1;
            let parent = span.parent_span_id.and_then(|p| by_id.get(&p));
            let remote_parent = parent.filter(|p| p.service != span.service);
            let entry = matches!(span.kind, SpanKind::Server | SpanKind::Consumer)
                || parent.is_none()
                || remote_parent.is_some();
            if entry {
                node.record(span);
            }
            if let Some(p) = remote_parent {
                let client = matches!(p.kind, SpanKind::Client | SpanKind::Producer);
                if client && !calls.insert((p.span_id, &*span.service)) {
                    continue;
                }
                nodes.entry(p.service.clone()).or_default();
                edges
                    .entry((p.service.clone(), span.service.clone()))
                    .or_default()
                    .record(span);
            }
        }
    }
    let interval = match window {
        Some(w) => w.as_secs_f64().max(1e-9),
        None if last > first => (ns_to_ms(last - first) / 1e3).max(1.0),
        None => 1.0,
    };
    ServiceMap {
        window_seconds: window.map(|w| w.as_secs_f64()),
        rate_interval_seconds: interval,
        nodes: nodes
            .into_iter()
            .map(|(service, acc)| {
                let spans = acc.spans;
                let (requests, errors, error_rate, p50_ms, p99_ms, rate_per_second) =
                    acc.finish(interval);
                ServiceNode {
                    service: service.to_string(),
                    spans,
                    requests,
                    errors,
                    error_rate,
                    p50_ms,
                    p99_ms,
                    rate_per_second,
                }
            })
            .collect(),
        edges: edges
            .into_iter()
            .map(|((source, target), acc)| {
                let (requests, errors, error_rate, p50_ms, p99_ms, rate_per_second) =
                    acc.finish(interval);
                ServiceEdge {
                    source: source.to_string(),
                    target: target.to_string(),
                    requests,
                    errors,
                    error_rate,
                    p50_ms,
                    p99_ms,
                    rate_per_second,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v[..10], 0.99), Some(10.0));
        assert_eq!(percentile(&v[..10], 0.0), Some(1.0));
    }
}
