//! The span store: traces indexed by id, evicted whole in order of first arrival.

use super::model::{ENTRY_OVERHEAD, Span, TraceId, ns_to_ms};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

/// Default number of traces a query returns.
pub const DEFAULT_TRACE_LIMIT: usize = 20;
/// Most results any query returns.
pub const MAX_LIMIT: usize = 1000;

/// Filters for [`Store::traces`](super::Store::traces).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceQuery {
    /// Only traces with a span of this service.
    pub service: Option<String>,
    /// Only traces with a span of this name (of `service` when both are set).
    pub operation: Option<String>,
    /// Most traces returned (capped at [`MAX_LIMIT`]); default [`DEFAULT_TRACE_LIMIT`].
    pub limit: usize,
    /// Only traces lasting at least this long (first span start to last span end).
    pub min_duration_ms: Option<f64>,
    /// Only traces with at least one error span.
    pub status_error: bool,
}

impl Default for TraceQuery {
    fn default() -> Self {
        TraceQuery {
            service: None,
            operation: None,
            limit: DEFAULT_TRACE_LIMIT,
            min_duration_ms: None,
            status_error: false,
        }
    }
}

/// One trace in a listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: TraceId,
    /// Service of the root span (the earliest span when the root has not arrived).
    pub root_service: String,
    /// Name of the root span (the earliest span when the root has not arrived).
    pub root_name: String,
    #[serde(serialize_with = "super::ser_u64_str")]
    pub start_time_unix_nano: u64,
    /// Earliest start to latest end.
    pub duration_ms: f64,
    pub span_count: usize,
    /// Services with spans in the trace, sorted.
    pub services: Vec<String>,
    /// Spans with status ERROR or an HTTP status ≥ 500.
    pub error_count: usize,
}

/// All spans of one trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceDetail {
    pub trace_id: TraceId,
    /// Sorted by start time.
    pub spans: Vec<Span>,
}

/// Bytes charged per trace for its index entries (map slot, order queue slot).
const TRACE_OVERHEAD: usize =
    size_of::<TraceEntry>() + size_of::<TraceId>() + ENTRY_OVERHEAD + size_of::<(TraceId, u64)>();

pub(crate) struct TraceEntry {
    pub(crate) spans: Vec<Arc<Span>>,
    bytes: usize,
    seq: u64,
    start: u64,
    end: u64,
    /// Index of the earliest span without a parent.
    root: Option<usize>,
    /// Index of the earliest span.
    earliest: usize,
    errors: usize,
    services: Vec<Arc<str>>,
}

impl TraceEntry {
    fn push(&mut self, span: Arc<Span>, bytes: usize) {
        let i = self.spans.len();
        if i == 0 {
            self.start = span.start_unix_nano;
            self.end = span.end_unix_nano;
        }
        self.start = self.start.min(span.start_unix_nano);
        self.end = self.end.max(span.end_unix_nano).max(span.start_unix_nano);
        if i == 0 || span.start_unix_nano < self.spans[self.earliest].start_unix_nano {
            self.earliest = i;
        }
        if span.parent_span_id.is_none()
            && self
                .root
                .is_none_or(|r| span.start_unix_nano < self.spans[r].start_unix_nano)
        {
            self.root = Some(i);
        }
        if span.is_error() {
            self.errors += 1;
        }
        if let Err(at) = self.services.binary_search(&span.service) {
            self.services.insert(at, span.service.clone());
        }
        self.bytes += bytes;
        self.spans.push(span);
    }

    fn summary(&self, id: TraceId) -> TraceSummary {
        let root = &self.spans[self.root.unwrap_or(self.earliest)];
        TraceSummary {
            trace_id: id,
            root_service: root.service.to_string(),
            root_name: root.name.clone(),
            start_time_unix_nano: self.start,
            duration_ms: ns_to_ms(self.end - self.start),
            span_count: self.spans.len(),
            services: self.services.iter().map(|s| s.to_string()).collect(),
            error_count: self.errors,
        }
    }

    fn matches(&self, q: &TraceQuery) -> bool {
        if q.status_error && self.errors == 0 {
            return false;
        }
        if let Some(min) = q.min_duration_ms
            && ns_to_ms(self.end - self.start) < min
        {
            return false;
        }
        match (&q.service, &q.operation) {
            (None, None) => true,
            (Some(svc), None) => self.services.iter().any(|s| **s == **svc),
            (svc, Some(op)) => self
                .spans
                .iter()
                .any(|s| s.name == *op && svc.as_ref().is_none_or(|svc| *s.service == **svc)),
        }
    }
}

/// Spans by trace, bounded by bytes.
pub(crate) struct Traces {
    budget: usize,
    bytes: usize,
    traces: HashMap<TraceId, TraceEntry>,
    /// Trace ids in order of their first span's arrival, with that arrival's sequence number.
    order: VecDeque<(TraceId, u64)>,
    next_seq: u64,
    spans: usize,
    pub(crate) evicted_spans: u64,
    pub(crate) evicted_traces: u64,
}

impl Traces {
    pub(crate) fn new(budget: usize) -> Self {
        Traces {
            budget,
            bytes: 0,
            traces: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            spans: 0,
            evicted_spans: 0,
            evicted_traces: 0,
        }
    }

    /// Adds spans (with their estimated sizes), then evicts the oldest traces past the budget.
    pub(crate) fn insert(&mut self, spans: Vec<(Span, usize)>) {
        for (span, bytes) in spans {
            let id = span.trace_id;
            let entry = match self.traces.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.order.push_back((id, seq));
                    self.bytes += TRACE_OVERHEAD;
                    v.insert(TraceEntry {
                        spans: Vec::new(),
                        bytes: TRACE_OVERHEAD,
                        seq,
                        start: 0,
                        end: 0,
                        root: None,
                        earliest: 0,
                        errors: 0,
                        services: Vec::new(),
                    })
                }
            };
            let bytes = bytes + size_of::<Arc<Span>>();
            entry.push(Arc::new(span), bytes);
            self.bytes += bytes;
            self.spans += 1;
        }
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            if self.traces.get(&id).is_some_and(|e| e.seq == seq)
                && let Some(e) = self.traces.remove(&id)
            {
                self.bytes -= e.bytes;
                self.spans -= e.spans.len();
                self.evicted_spans += e.spans.len() as u64;
                self.evicted_traces += 1;
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn span_count(&self) -> usize {
        self.spans
    }

    pub(crate) fn trace_count(&self) -> usize {
        self.traces.len()
    }

    pub(crate) fn get(&self, id: &TraceId) -> Option<&TraceEntry> {
        self.traces.get(id)
    }

    /// Summaries of the `limit` most recent matching traces (by start, then id), most recent
    /// first. Only those are built; the rest is a filter over per-trace aggregates.
    pub(crate) fn matching(&self, q: &TraceQuery) -> Vec<TraceSummary> {
        let limit = q.limit.min(MAX_LIMIT);
        if limit == 0 {
            return Vec::new();
        }
        let mut hits: Vec<(u64, &TraceId, &TraceEntry)> = self
            .traces
            .iter()
            .filter(|(_, e)| e.matches(q))
            .map(|(id, e)| (e.start, id, e))
            .collect();
        let order = |a: &(u64, &TraceId, &TraceEntry), b: &(u64, &TraceId, &TraceEntry)| {
            b.0.cmp(&a.0).then(a.1.cmp(b.1))
        };
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, order);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(order);
        hits.into_iter().map(|(_, id, e)| e.summary(*id)).collect()
    }

    /// The spans of every trace with a span ending at or after `cutoff`.
    pub(crate) fn snapshot(&self, cutoff: u64) -> Vec<Vec<Arc<Span>>> {
        self.traces
            .values()
            .filter(|e| e.end >= cutoff)
            .map(|e| e.spans.clone())
            .collect()
    }

    /// Checks that counters and indexes agree (tests).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        assert_eq!(self.order.len(), self.traces.len());
        let mut bytes = 0;
        let mut spans = 0;
        for (id, seq) in &self.order {
            let e = &self.traces[id];
            assert_eq!(e.seq, *seq);
            assert!(e.spans.iter().all(|s| s.trace_id == *id));
            bytes += e.bytes;
            spans += e.spans.len();
        }
        assert_eq!(bytes, self.bytes);
        assert_eq!(spans, self.spans);
        assert!(self.bytes <= self.budget);
    }
}
