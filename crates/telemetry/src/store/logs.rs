//! The log store: records in arrival order (evicted oldest first) with a trace id index.

use super::model::{Attributes, ENTRY_OVERHEAD, SpanId, TraceId, attributes_bytes, value_bytes};
use super::traces::MAX_LIMIT;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

/// Default number of records a log query returns.
pub const DEFAULT_LOG_LIMIT: usize = 100;

/// Filters for [`Store::logs`](super::Store::logs).
#[derive(Clone, Debug, PartialEq)]
pub struct LogQuery {
    /// Only records of this trace.
    pub trace_id: Option<TraceId>,
    /// Only records of this service.
    pub service: Option<String>,
    /// Most records returned (capped at [`MAX_LIMIT`]); default [`DEFAULT_LOG_LIMIT`].
    pub limit: usize,
    /// Only records with at least this severity number (1–24; 0 means unspecified).
    pub min_severity: Option<i32>,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            trace_id: None,
            service: None,
            limit: DEFAULT_LOG_LIMIT,
            min_severity: None,
        }
    }
}

/// One stored log record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogView {
    /// The record's time, or its observed time when the record has none.
    #[serde(serialize_with = "super::ser_u64_str")]
    pub time_unix_nano: u64,
    pub severity_text: String,
    pub severity_number: i32,
    /// A string, or native JSON for structured bodies; `null` when absent.
    pub body: Value,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    #[serde(serialize_with = "super::ser_arc_str")]
    pub service: Arc<str>,
    pub attributes: Attributes,
}

impl LogView {
    pub(crate) fn estimated_bytes(&self) -> usize {
        size_of::<LogView>() + self.severity_text.capacity() + value_bytes(&self.body)
            - size_of::<Value>()
            + attributes_bytes(&self.attributes)
    }
}

/// Bytes charged for a record's place in the trace index.
const INDEX_BYTES: usize = size_of::<u64>() + ENTRY_OVERHEAD / 4;

/// Log records bounded by bytes.
pub(crate) struct Logs {
    budget: usize,
    bytes: usize,
    /// Records with their charged size, oldest first.
    records: VecDeque<(LogView, usize)>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// Sequence numbers of each trace's records, oldest first.
    by_trace: HashMap<TraceId, VecDeque<u64>>,
    pub(crate) evicted: u64,
}

impl Logs {
    pub(crate) fn new(budget: usize) -> Self {
        Logs {
            budget,
            bytes: 0,
            records: VecDeque::new(),
            first_seq: 0,
            by_trace: HashMap::new(),
            evicted: 0,
        }
    }

    /// Appends records, then evicts the oldest past the budget.
    pub(crate) fn insert(&mut self, records: Vec<LogView>) {
        for r in records {
            let mut bytes = r.estimated_bytes() + size_of::<usize>();
            if let Some(t) = r.trace_id {
                let seq = self.first_seq + self.records.len() as u64;
                let idx = self.by_trace.entry(t).or_insert_with(|| {
                    bytes += ENTRY_OVERHEAD + size_of::<(TraceId, VecDeque<u64>)>();
                    VecDeque::new()
                });
                idx.push_back(seq);
                bytes += INDEX_BYTES;
            }
            self.bytes += bytes;
            self.records.push_back((r, bytes));
        }
        while self.bytes > self.budget {
            let Some((r, bytes)) = self.records.pop_front() else {
                break;
            };
            let seq = self.first_seq;
            self.first_seq += 1;
            self.bytes -= bytes;
            self.evicted += 1;
            if let Some(t) = r.trace_id
                && let Some(idx) = self.by_trace.get_mut(&t)
            {
                debug_assert_eq!(idx.front(), Some(&seq));
                idx.pop_front();
                if idx.is_empty() {
                    self.by_trace.remove(&t);
                }
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Matching records, newest first.
    pub(crate) fn query(&self, q: &LogQuery) -> Vec<LogView> {
        let limit = q.limit.min(MAX_LIMIT);
        let keep = |r: &&LogView| {
            q.service.as_ref().is_none_or(|s| *r.service == **s)
                && q.min_severity.is_none_or(|m| r.severity_number >= m)
        };
        let mut out: Vec<LogView> = match q.trace_id {
            Some(t) => self
                .by_trace
                .get(&t)
                .into_iter()
                .flat_map(|idx| idx.iter().rev())
                .filter_map(|seq| {
                    let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
                    self.records.get(i).map(|(r, _)| r)
                })
                .filter(keep)
                .take(limit)
                .cloned()
                .collect(),
            None => self
                .records
                .iter()
                .rev()
                .map(|(r, _)| r)
                .filter(keep)
                .take(limit)
                .cloned()
                .collect(),
        };
        out.sort_by_key(|r| std::cmp::Reverse(r.time_unix_nano));
        out
    }

    /// Checks that counters and indexes agree (tests).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        assert_eq!(
            self.bytes,
            self.records.iter().map(|(_, b)| b).sum::<usize>()
        );
        assert!(self.bytes <= self.budget);
        let indexed: usize = self.by_trace.values().map(VecDeque::len).sum();
        assert_eq!(
            indexed,
            self.records
                .iter()
                .filter(|(r, _)| r.trace_id.is_some())
                .count()
        );
        for (t, idx) in &self.by_trace {
            for seq in idx {
                let (r, _) = &self.records[(seq - self.first_seq) as usize];
                assert_eq!(r.trace_id, Some(*t));
            }
        }
    }
}
