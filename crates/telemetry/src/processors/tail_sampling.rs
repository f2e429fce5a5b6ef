//! Tail sampling: keep or drop whole traces after their spans had time to arrive.
//!
//! Spans are grouped by trace id and held from the first span's arrival for `decision_wait`;
//! then the trace is decided on everything that arrived (the policies, in order):
//!
//! 1. `keep_errors`: a span has status ERROR, or `http.response.status_code` (or the older
//!    `http.status_code`) ≥ 500;
//! 2. `keep_latency_above`: latest span end − earliest span start reaches it;
//! 3. `rate_limit`: a token bucket on spans per second has room for all the trace's spans;
//!    without `rate_limit`, every remaining trace is kept.
//!
//! Kept spans go to the pipeline's consumers as new batches (their resource and scope intact).
//! Decisions are remembered for the last `decision_cache` trace ids, so spans arriving after
//! their trace was decided follow the decision (and are forwarded or dropped at once).
//!
//! Memory is bounded twice: past `max_traces` held traces or `max_bytes` held bytes, the oldest
//! traces are decided early on what has arrived (never dropped unseen), and the held bytes are
//! accounted in the shared [`MemoryLimiter`] at [`Priority::Internal`], so receivers are refused
//! once the sampler (with the exporters' queues) fills the soft limit.
//!
//! Acknowledgement: a batch is acknowledged once the sampler holds it, in memory only. A
//! `kill -9` loses up to `decision_wait` of traces (like the OpenTelemetry Collector's
//! tail sampler); a graceful shutdown decides and forwards everything held ([`TailSampler::flush`]).
//! Kept spans are handed on at [`Priority::Internal`]; a consumer that refuses them (full queue)
//! cannot make the original sender retry any more, so they are counted as `emit_failed`.

use crate::limiter::{MemoryLimiter, Priority};
use crate::otlp::{Batch, Signal};
use crate::pipeline::{Consumer, Refused};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp_mesh_config::telemetry::TailSamplingConfig;
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Trace ids as map keys: the id's 16 bytes (shorter ids are zero-padded, longer truncated).
type TraceId = [u8; 16];

/// Emitted batches hold at most this many spans…
const EMIT_MAX_SPANS: u64 = 8192;
/// …and about this many encoded bytes.
const EMIT_MAX_BYTES: u64 = 4 << 20;
/// Due traces are decided at most this often (decisions are late by at most this much), so a
/// steady stream of traces leaves in batches rather than one by one.
const MIN_FLUSH_GAP: Duration = Duration::from_millis(50);

/// The tail sampler's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TailSettings {
    /// How long a trace is held from its first span's arrival.
    pub decision_wait: Duration,
    /// Traces held at once before the oldest are decided early.
    pub max_traces: usize,
    /// Encoded bytes held before the oldest traces are decided early.
    pub max_bytes: u64,
    /// Keep traces with an error span.
    pub keep_errors: bool,
    /// Keep traces at least this long.
    pub keep_latency_above: Option<Duration>,
    /// Keep the remaining traces up to this many spans per second; `None` keeps them all.
    pub spans_per_second: Option<u64>,
    /// Decided trace ids remembered for late spans.
    pub decision_cache: usize,
}

impl TailSettings {
    /// Settings from the `tail_sampling:` config.
    pub fn from_config(cfg: &TailSamplingConfig) -> Self {
        TailSettings {
            decision_wait: cfg.decision_wait.value.0,
            max_traces: usize::try_from(cfg.max_traces.value)
                .unwrap_or(usize::MAX)
                .max(1),
            max_bytes: cfg.max_bytes.value.0,
            keep_errors: cfg.keep_errors,
            keep_latency_above: cfg.keep_latency_above.as_ref().map(|d| d.value.0),
            spans_per_second: cfg.rate_limit.as_ref().map(|r| r.spans_per_second.value),
            decision_cache: usize::try_from(cfg.decision_cache.value)
                .unwrap_or(usize::MAX)
                .max(1),
        }
    }
}

impl Default for TailSettings {
    fn default() -> Self {
        TailSettings::from_config(&TailSamplingConfig::default())
    }
}

/// Why a trace was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// It had an error span.
    Error,
    /// It lasted at least `keep_latency_above`.
    Latency,
    /// The rate limit had room for it.
    RateLimit,
    /// No rate limit is configured: everything not dropped by a policy is kept.
    NoRateLimit,
}

impl KeepReason {
    const ALL: [KeepReason; 4] = [
        KeepReason::Error,
        KeepReason::Latency,
        KeepReason::RateLimit,
        KeepReason::NoRateLimit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            KeepReason::Error => "error",
            KeepReason::Latency => "latency",
            KeepReason::RateLimit => "rate_limit",
            KeepReason::NoRateLimit => "no_rate_limit",
        }
    }
}

/// Why a trace was decided before its `decision_wait` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyCause {
    /// More than `max_traces` traces were held.
    MaxTraces,
    /// More than `max_bytes` bytes were held.
    MaxBytes,
    /// The sampler was flushed (shutdown).
    Flush,
}

impl EarlyCause {
    const ALL: [EarlyCause; 3] = [
        EarlyCause::MaxTraces,
        EarlyCause::MaxBytes,
        EarlyCause::Flush,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EarlyCause::MaxTraces => "max_traces",
            EarlyCause::MaxBytes => "max_bytes",
            EarlyCause::Flush => "flush",
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    kept_traces: [AtomicU64; 4],
    kept_spans: AtomicU64,
    dropped_traces: AtomicU64,
    dropped_spans: AtomicU64,
    early: [AtomicU64; 3],
    late_kept: AtomicU64,
    late_dropped: AtomicU64,
    refused_spans: AtomicU64,
    emit_failed_spans: AtomicU64,
    undecodable_batches: AtomicU64,
}

/// A copy of the tail sampler's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailStatsSnapshot {
    /// Traces kept, by reason: error, latency, rate limit, no rate limit.
    pub kept_traces_error: u64,
    pub kept_traces_latency: u64,
    pub kept_traces_rate_limit: u64,
    pub kept_traces_no_rate_limit: u64,
    /// Spans of kept traces (held until the decision).
    pub kept_spans: u64,
    /// Traces dropped (by the rate limit).
    pub dropped_traces: u64,
    /// Spans of dropped traces.
    pub dropped_spans: u64,
    /// Traces decided early because of `max_traces`, `max_bytes`, a flush.
    pub early_max_traces: u64,
    pub early_max_bytes: u64,
    pub early_flush: u64,
    /// Spans that arrived after their trace was decided, forwarded / dropped.
    pub late_spans_kept: u64,
    pub late_spans_dropped: u64,
    /// Spans refused at admission (memory limit); the sender retries them.
    pub refused_spans: u64,
    /// Kept spans a consumer refused (counted once per refusing consumer).
    pub emit_failed_spans: u64,
    /// Batches forwarded unsampled because they could not be decoded.
    pub undecodable_batches: u64,
    /// Traces, spans and bytes held now.
    pub held_traces: u64,
    pub held_spans: u64,
    pub held_bytes: u64,
}

impl TailStatsSnapshot {
    /// Traces kept for any reason.
    pub fn kept_traces(&self) -> u64 {
        self.kept_traces_error
            + self.kept_traces_latency
            + self.kept_traces_rate_limit
            + self.kept_traces_no_rate_limit
    }
}

/// One held trace.
#[derive(Debug)]
struct Held {
    first: Instant,
    fragments: Vec<ResourceSpans>,
    spans: u64,
    bytes: u64,
    error: bool,
    min_start: u64,
    max_end: u64,
}

impl Held {
    fn duration(&self) -> Duration {
        Duration::from_nanos(self.max_end.saturating_sub(self.min_start))
    }
}

/// The spans of one trace out of one incoming batch.
struct Group {
    id: TraceId,
    fragment: ResourceSpans,
    spans: u64,
    bytes: u64,
    error: bool,
    min_start: u64,
    max_end: u64,
}

#[derive(Debug)]
struct State {
    traces: HashMap<TraceId, Held>,
    /// Held trace ids by first arrival (so also by deadline: the wait is the same for all).
    order: VecDeque<TraceId>,
    bytes: u64,
    spans: u64,
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<TraceId>,
    tokens: f64,
    refilled: Instant,
}

struct Shared {
    settings: TailSettings,
    memory: Arc<MemoryLimiter>,
    consumers: Vec<Arc<dyn Consumer>>,
    state: Mutex<State>,
    stats: Stats,
    wake: Notify,
}

/// The tail sampler: holds spans per trace and hands kept traces to the consumers from its own
/// task. Dropping it stops the task (what is held is lost; call [`TailSampler::flush`] first).
pub struct TailSampler {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TailSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailSampler")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for TailSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TailSampler {
    /// Starts the decision task (needs a Tokio runtime); kept spans go to `consumers`.
    pub fn start(
        settings: TailSettings,
        memory: Arc<MemoryLimiter>,
        consumers: Vec<Arc<dyn Consumer>>,
    ) -> TailSampler {
        let tokens = settings.spans_per_second.unwrap_or(0) as f64;
        let shared = Arc::new(Shared {
            settings,
            memory,
            consumers,
            state: Mutex::new(State {
                traces: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                spans: 0,
                decided: HashMap::new(),
                decided_order: VecDeque::new(),
                tokens,
                refilled: Instant::now(),
            }),
            stats: Stats::default(),
            wake: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone()));
        TailSampler { shared, task }
    }

    /// The settings in effect.
    pub fn settings(&self) -> &TailSettings {
        &self.shared.settings
    }

    /// Takes a traces batch: spans of undecided traces are held, late spans follow their
    /// trace's decision. Refuses (the sender retries) when holding it would pass the memory
    /// limiter's hard limit. Spans forwarded at once (late spans of kept traces, traces decided
    /// early) are handed to the consumers before this returns.
    pub async fn submit(&self, batch: Batch) -> Result<(), Refused> {
        let s = &self.shared;
        debug_assert_eq!(batch.signal, Signal::Traces);
        let req = match ExportTraceServiceRequest::decode(&batch.payload[..]) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "tail sampling forwards a batch it cannot decode");
                s.stats.undecodable_batches.fetch_add(1, Relaxed);
                s.emit_batch(batch).await;
                return Ok(());
            }
        };
        let groups = group(req);
        let forward = s.admit(groups, Instant::now())?;
        s.emit(forward).await;
        Ok(())
    }

    /// Decides every held trace now and hands the kept ones to the consumers (for shutdown).
    pub async fn flush(&self) {
        let s = &self.shared;
        let kept = {
            let mut st = s.lock();
            let mut kept = Vec::new();
            while let Some(id) = st.order.pop_front() {
                s.decide(
                    &mut st,
                    id,
                    Instant::now(),
                    Some(EarlyCause::Flush),
                    &mut kept,
                );
            }
            kept
        };
        s.emit(kept).await;
    }

    /// A copy of the counters.
    pub fn stats(&self) -> TailStatsSnapshot {
        let s = &self.shared;
        let c = &s.stats;
        let (held_traces, held_spans, held_bytes) = {
            let st = s.lock();
            (st.traces.len() as u64, st.spans, st.bytes)
        };
        TailStatsSnapshot {
            kept_traces_error: c.kept_traces[0].load(Relaxed),
            kept_traces_latency: c.kept_traces[1].load(Relaxed),
            kept_traces_rate_limit: c.kept_traces[2].load(Relaxed),
            kept_traces_no_rate_limit: c.kept_traces[3].load(Relaxed),
            kept_spans: c.kept_spans.load(Relaxed),
            dropped_traces: c.dropped_traces.load(Relaxed),
            dropped_spans: c.dropped_spans.load(Relaxed),
            early_max_traces: c.early[0].load(Relaxed),
            early_max_bytes: c.early[1].load(Relaxed),
            early_flush: c.early[2].load(Relaxed),
            late_spans_kept: c.late_kept.load(Relaxed),
            late_spans_dropped: c.late_dropped.load(Relaxed),
            refused_spans: c.refused_spans.load(Relaxed),
            emit_failed_spans: c.emit_failed_spans.load(Relaxed),
            undecodable_batches: c.undecodable_batches.load(Relaxed),
            held_traces,
            held_spans,
            held_bytes,
        }
    }

    /// Appends the `otlp_mesh_tail_sampling_*` families to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        use crate::{write_family, write_sample};
        let c = &self.shared.stats;
        let snap = self.stats();
        let name = "otlp_mesh_tail_sampling_traces_total";
        write_family(out, name, "counter", "Traces decided by the tail sampler.");
        for (i, r) in KeepReason::ALL.iter().enumerate() {
            write_sample(
                out,
                name,
                &[("decision", "kept"), ("reason", r.as_str())],
                c.kept_traces[i].load(Relaxed),
            );
        }
        write_sample(
            out,
            name,
            &[("decision", "dropped"), ("reason", "rate_limit")],
            snap.dropped_traces,
        );
        let name = "otlp_mesh_tail_sampling_spans_total";
        write_family(
            out,
            name,
            "counter",
            "Spans of traces decided by the tail sampler (late spans not included).",
        );
        write_sample(out, name, &[("decision", "kept")], snap.kept_spans);
        write_sample(out, name, &[("decision", "dropped")], snap.dropped_spans);
        let name = "otlp_mesh_tail_sampling_early_decisions_total";
        write_family(
            out,
            name,
            "counter",
            "Traces decided before decision_wait ended (memory bounds or flush).",
        );
        for (i, cause) in EarlyCause::ALL.iter().enumerate() {
            write_sample(
                out,
                name,
                &[("cause", cause.as_str())],
                c.early[i].load(Relaxed),
            );
        }
        let name = "otlp_mesh_tail_sampling_late_spans_total";
        write_family(
            out,
            name,
            "counter",
            "Spans that arrived after their trace was decided and followed the decision.",
        );
        write_sample(out, name, &[("decision", "kept")], snap.late_spans_kept);
        write_sample(
            out,
            name,
            &[("decision", "dropped")],
            snap.late_spans_dropped,
        );
        for (name, help, v) in [
            (
                "otlp_mesh_tail_sampling_refused_spans_total",
                "Spans refused by the tail sampler at the memory limit (the sender retries).",
                snap.refused_spans,
            ),
            (
                "otlp_mesh_tail_sampling_emit_failed_spans_total",
                "Kept spans a consumer refused (once per refusing consumer).",
                snap.emit_failed_spans,
            ),
            (
                "otlp_mesh_tail_sampling_undecodable_batches_total",
                "Batches forwarded unsampled because they could not be decoded.",
                snap.undecodable_batches,
            ),
        ] {
            write_family(out, name, "counter", help);
            write_sample(out, name, &[], v);
        }
        for (name, help, v) in [
            (
                "otlp_mesh_tail_sampling_held_traces",
                "Traces held waiting for a decision.",
                snap.held_traces,
            ),
            (
                "otlp_mesh_tail_sampling_held_spans",
                "Spans held waiting for a decision.",
                snap.held_spans,
            ),
            (
                "otlp_mesh_tail_sampling_held_bytes",
                "Encoded bytes of spans held waiting for a decision.",
                snap.held_bytes,
            ),
        ] {
            write_family(out, name, "gauge", help);
            write_sample(out, name, &[], v);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds or forwards `groups`; returns what is to be forwarded now.
    fn admit(&self, groups: Vec<Group>, now: Instant) -> Result<Vec<ResourceSpans>, Refused> {
        let mut st = self.lock();
        let need: u64 = groups
            .iter()
            .filter(|g| !st.decided.contains_key(&g.id))
            .map(|g| g.bytes)
            .sum();
        if need > 0 && !self.memory.try_acquire(need, Priority::Internal) {
            let spans: u64 = groups.iter().map(|g| g.spans).sum();
            self.stats.refused_spans.fetch_add(spans, Relaxed);
            return Err(Refused::MemoryLimit);
        }
        let was_empty = st.order.is_empty();
        let mut forward = Vec::new();
        for g in groups {
            match st.decided.get(&g.id).copied() {
                Some(true) => {
                    self.stats.late_kept.fetch_add(g.spans, Relaxed);
                    forward.push(g.fragment);
                }
                Some(false) => {
                    self.stats.late_dropped.fetch_add(g.spans, Relaxed);
                }
                None => {
                    st.bytes += g.bytes;
                    st.spans += g.spans;
                    let State { traces, order, .. } = &mut *st;
                    let held = traces.entry(g.id).or_insert_with(|| {
                        order.push_back(g.id);
                        Held {
                            first: now,
                            fragments: Vec::new(),
                            spans: 0,
                            bytes: 0,
                            error: false,
                            min_start: u64::MAX,
                            max_end: 0,
                        }
                    });
                    held.fragments.push(g.fragment);
                    held.spans += g.spans;
                    held.bytes += g.bytes;
                    held.error |= g.error;
                    held.min_start = held.min_start.min(g.min_start);
                    held.max_end = held.max_end.max(g.max_end);
                }
            }
        }
        loop {
            let cause = if st.traces.len() > self.settings.max_traces {
                EarlyCause::MaxTraces
            } else if st.bytes > self.settings.max_bytes {
                EarlyCause::MaxBytes
            } else {
                break;
            };
            let Some(id) = st.order.pop_front() else {
                break;
            };
            self.decide(&mut st, id, now, Some(cause), &mut forward);
        }
        if was_empty && !st.order.is_empty() {
            self.wake.notify_one();
        }
        Ok(forward)
    }

    /// Decides held trace `id` (already taken off `order`); kept fragments go to `kept`.
    fn decide(
        &self,
        st: &mut State,
        id: TraceId,
        now: Instant,
        early: Option<EarlyCause>,
        kept: &mut Vec<ResourceSpans>,
    ) {
        let Some(held) = st.traces.remove(&id) else {
            return;
        };
        st.bytes = st.bytes.saturating_sub(held.bytes);
        st.spans = st.spans.saturating_sub(held.spans);
        self.memory.release(held.bytes);
        if let Some(cause) = early {
            self.stats.early[cause as usize].fetch_add(1, Relaxed);
        }
        let set = &self.settings;
        let reason = if set.keep_errors && held.error {
            Some(KeepReason::Error)
        } else if set.keep_latency_above.is_some_and(|l| held.duration() >= l) {
            Some(KeepReason::Latency)
        } else if let Some(rate) = set.spans_per_second {
            let rate = rate as f64;
            let elapsed = now.saturating_duration_since(st.refilled).as_secs_f64();
            st.tokens = (st.tokens + elapsed * rate).min(rate);
            st.refilled = now;
            let need = held.spans as f64;
            if st.tokens >= need {
                st.tokens -= need;
                Some(KeepReason::RateLimit)
            } else {
                None
            }
        } else {
            Some(KeepReason::NoRateLimit)
        };
        if st.decided.len() >= set.decision_cache
            && let Some(old) = st.decided_order.pop_front()
        {
            st.decided.remove(&old);
        }
        st.decided.insert(id, reason.is_some());
        st.decided_order.push_back(id);
        match reason {
            Some(r) => {
                self.stats.kept_traces[r as usize].fetch_add(1, Relaxed);
                self.stats.kept_spans.fetch_add(held.spans, Relaxed);
                kept.extend(held.fragments);
            }
            None => {
                self.stats.dropped_traces.fetch_add(1, Relaxed);
                self.stats.dropped_spans.fetch_add(held.spans, Relaxed);
            }
        }
    }

    /// Decides the traces whose wait ended by `now`; returns the kept fragments.
    fn decide_due(&self, now: Instant) -> Vec<ResourceSpans> {
        let mut st = self.lock();
        let mut kept = Vec::new();
        while let Some(id) = st.order.front().copied() {
            let due = st
                .traces
                .get(&id)
                .is_none_or(|h| h.first + self.settings.decision_wait <= now);
            if !due {
                break;
            }
            st.order.pop_front();
            self.decide(&mut st, id, now, None, &mut kept);
        }
        kept
    }

    /// When the oldest held trace falls due.
    fn next_due(&self) -> Option<Instant> {
        let st = self.lock();
        let id = st.order.front()?;
        st.traces
            .get(id)
            .map(|h| h.first + self.settings.decision_wait)
    }

    /// Hands `fragments` to the consumers in batches of bounded size.
    async fn emit(&self, fragments: Vec<ResourceSpans>) {
        let mut chunk = Vec::new();
        let (mut spans, mut bytes) = (0u64, 0u64);
        for f in fragments {
            let n = span_count(&f);
            let b = f.encoded_len() as u64;
            if !chunk.is_empty() && (spans + n > EMIT_MAX_SPANS || bytes + b > EMIT_MAX_BYTES) {
                self.emit_batch(encode(std::mem::take(&mut chunk), spans))
                    .await;
                (spans, bytes) = (0, 0);
            }
            chunk.push(f);
            spans += n;
            bytes += b;
        }
        if !chunk.is_empty() {
            self.emit_batch(encode(chunk, spans)).await;
        }
    }

    async fn emit_batch(&self, batch: Batch) {
        for c in &self.consumers {
            if let Err(e) = c.consume(batch.clone(), Priority::Internal).await {
                tracing::debug!(consumer = c.name(), error = %e, spans = batch.items, "a consumer refused tail-sampled spans");
                self.stats.emit_failed_spans.fetch_add(batch.items, Relaxed);
            }
        }
    }
}

/// The decision task: sleeps until the oldest trace is due, decides, forwards.
async fn run(shared: Arc<Shared>) {
    let gap = MIN_FLUSH_GAP.min(shared.settings.decision_wait / 10);
    let mut last: Option<Instant> = None;
    loop {
        let Some(due) = shared.next_due() else {
            shared.wake.notified().await;
            continue;
        };
        let at = match last {
            Some(l) => due.max(l + gap),
            None => due,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            // A flush may have emptied the queue; look again.
            _ = shared.wake.notified() => continue,
        }
        let now = Instant::now();
        last = Some(now);
        let kept = shared.decide_due(now);
        shared.emit(kept).await;
    }
}

fn encode(resource_spans: Vec<ResourceSpans>, spans: u64) -> Batch {
    let req = ExportTraceServiceRequest { resource_spans };
    Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), spans)
}

fn span_count(rs: &ResourceSpans) -> u64 {
    rs.scope_spans.iter().map(|s| s.spans.len() as u64).sum()
}

fn trace_key(id: &[u8]) -> TraceId {
    let mut k = [0u8; 16];
    let n = id.len().min(16);
    k[..n].copy_from_slice(&id[..n]);
    k
}

/// Whether `span` marks its trace as failed.
pub fn is_error(span: &Span) -> bool {
    if span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32)
    {
        return true;
    }
    span.attributes.iter().any(|kv| {
        if kv.key != "http.response.status_code" && kv.key != "http.status_code" {
            return false;
        }
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::IntValue(code)) => *code >= 500,
            Some(any_value::Value::StringValue(s)) => s.parse::<i64>().is_ok_and(|c| c >= 500),
            _ => false,
        }
    })
}

/// Splits a request into per-trace groups, each keeping its spans' resource and scope.
fn group(req: ExportTraceServiceRequest) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for rs in req.resource_spans {
        let mut by_trace: HashMap<TraceId, usize> = HashMap::new();
        for ss in rs.scope_spans {
            let mut by_scope: HashMap<TraceId, usize> = HashMap::new();
            for span in ss.spans {
                let id = trace_key(&span.trace_id);
                let gi = *by_trace.entry(id).or_insert_with(|| {
                    out.push(Group {
                        id,
                        fragment: ResourceSpans {
                            resource: rs.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: rs.schema_url.clone(),
                        },
                        spans: 0,
                        bytes: 0,
                        error: false,
                        min_start: u64::MAX,
                        max_end: 0,
                    });
                    out.len() - 1
                });
                let g = &mut out[gi];
                let si = *by_scope.entry(id).or_insert_with(|| {
                    g.fragment.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: Vec::new(),
                        schema_url: ss.schema_url.clone(),
                    });
                    g.fragment.scope_spans.len() - 1
                });
                g.spans += 1;
                g.error |= is_error(&span);
                g.min_start = g.min_start.min(span.start_time_unix_nano);
                g.max_end = g.max_end.max(span.end_time_unix_nano);
                g.fragment.scope_spans[si].spans.push(span);
            }
        }
    }
    for g in &mut out {
        g.bytes = g.fragment.encoded_len() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Status;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Batch>>);

    impl Consumer for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn consume(&self, batch: Batch, p: Priority) -> BoxFuture<'_, Result<(), Refused>> {
            assert_eq!(p, Priority::Internal);
            Box::pin(async move {
                self.0.lock().unwrap().push(batch);
                Ok(())
            })
        }
    }

    impl Collect {
        /// (trace byte, span id) of every span received, and a check that batches are intact.
        fn spans(&self) -> Vec<(u8, u64)> {
            let mut out = Vec::new();
            for b in self.0.lock().unwrap().iter() {
                let req = ExportTraceServiceRequest::decode(&b.payload[..]).unwrap();
                let mut n = 0;
                for rs in &req.resource_spans {
                    assert_eq!(
                        rs.resource.as_ref().unwrap().attributes[0].key,
                        "service.name"
                    );
                    for ss in &rs.scope_spans {
                        assert_eq!(ss.scope.as_ref().unwrap().name, "lib");
                        for s in &ss.spans {
                            n += 1;
                            out.push((
                                s.trace_id[0],
                                u64::from_be_bytes(s.span_id[..].try_into().unwrap()),
                            ));
                        }
                    }
                }
                assert_eq!(n, b.items);
            }
            out.sort_unstable();
            out
        }

        fn traces(&self) -> Vec<u8> {
            let mut t: Vec<u8> = self.spans().into_iter().map(|(t, _)| t).collect();
            t.dedup();
            t
        }
    }

    #[derive(Clone, Copy)]
    enum Kind {
        Ok,
        Error,
        Http503,
        Slow,
    }

    /// Span `i` of trace `t` (trace ids differ in their first byte).
    fn span(t: u8, i: u64, kind: Kind) -> Span {
        let start = 1_000_000_000 + i * 1_000_000;
        let mut s = Span {
            trace_id: [[t; 1].as_slice(), &[0xab; 15]].concat(),
            span_id: i.to_be_bytes().to_vec(),
            name: format!("s{i}"),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10_000_000,
            ..Default::default()
        };
        match kind {
            Kind::Ok => {}
            Kind::Error => {
                s.status = Some(Status {
                    code: StatusCode::Error as i32,
                    ..Default::default()
                })
            }
            Kind::Http503 => s.attributes.push(KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(503)),
                }),
                ..Default::default()
            }),
            Kind::Slow => s.end_time_unix_nano = start + 2_000_000_000,
        }
        s
    }

    fn batch(spans: Vec<Span>) -> Batch {
        let n = spans.len() as u64;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("svc".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), n)
    }

    /// `n` spans of trace `t`, the first of kind `kind`, the rest OK.
    fn trace(t: u8, n: u64, kind: Kind) -> Vec<Span> {
        (0..n)
            .map(|i| span(t, i, if i == 0 { kind } else { Kind::Ok }))
            .collect()
    }

    fn settings() -> TailSettings {
        TailSettings {
            decision_wait: Duration::from_secs(5),
            max_traces: 1000,
            max_bytes: 32 << 20,
            keep_errors: true,
            keep_latency_above: Some(Duration::from_millis(500)),
            spans_per_second: Some(20),
            decision_cache: 1000,
        }
    }

    fn sampler(s: TailSettings) -> (TailSampler, Arc<Collect>, Arc<MemoryLimiter>) {
        let sink = Arc::new(Collect::default());
        let memory = Arc::new(MemoryLimiter::new(64 << 20, 96 << 20));
        let t = TailSampler::start(s, memory.clone(), vec![sink.clone()]);
        (t, sink, memory)
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_slow_traces_are_kept_fast_ones_rate_limited() {
        let (t, sink, memory) = sampler(settings());
        let mut spans = trace(1, 3, Kind::Error);
        spans.extend(trace(2, 3, Kind::Slow));
        spans.extend(trace(3, 3, Kind::Http503));
        for id in 10..20 {
            spans.extend(trace(id, 3, Kind::Ok));
        }
        t.submit(batch(spans)).await.unwrap();
        let held = t.stats();
        assert_eq!((held.held_traces, held.held_spans), (13, 39));
        assert_eq!(memory.used(), held.held_bytes);

        tokio::time::sleep(Duration::from_millis(4_990)).await;
        assert!(sink.spans().is_empty(), "nothing before decision_wait");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // 20 tokens: the first six fast traces (18 spans) fit, the other four do not.
        assert_eq!(sink.traces(), vec![1, 2, 3, 10, 11, 12, 13, 14, 15]);
        assert_eq!(sink.spans().len(), 27);
        let s = t.stats();
        assert_eq!(s.kept_traces_error, 2);
        assert_eq!(s.kept_traces_latency, 1);
        assert_eq!(s.kept_traces_rate_limit, 6);
        assert_eq!((s.kept_traces(), s.kept_spans), (9, 27));
        assert_eq!((s.dropped_traces, s.dropped_spans), (4, 12));
        assert_eq!((s.held_traces, s.held_bytes), (0, 0));
        assert_eq!(memory.used(), 0);

        // The bucket refills: a second later another fast trace fits.
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.submit(batch(trace(30, 3, Kind::Ok))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(sink.traces().contains(&30));
        assert_eq!(t.stats().kept_traces_rate_limit, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_errors_off_and_no_rate_limit_keeps_everything_else() {
        let mut s = settings();
        s.keep_errors = false;
        s.keep_latency_above = None;
        s.spans_per_second = None;
        let (t, sink, _) = sampler(s);
        let mut spans = trace(1, 2, Kind::Error);
        spans.extend(trace(2, 2, Kind::Ok));
        t.submit(batch(spans)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.traces(), vec![1, 2]);
        let st = t.stats();
        assert_eq!((st.kept_traces_no_rate_limit, st.kept_traces_error), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn spans_of_one_trace_across_batches_are_decided_together() {
        let mut s = settings();
        s.spans_per_second = Some(1);
        let (t, sink, _) = sampler(s);
        // The error arrives 2s after the trace's first span: the whole trace is kept.
        t.submit(batch(vec![span(1, 0, Kind::Ok), span(1, 1, Kind::Ok)]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.submit(batch(vec![span(1, 2, Kind::Error)]))
            .await
            .unwrap();
        // Deadline is 5s after the first span, not the last.
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(sink.spans(), vec![(1, 0), (1, 1), (1, 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn late_spans_follow_the_decision() {
        let mut s = settings();
        s.spans_per_second = Some(3);
        let (t, sink, _) = sampler(s);
        let mut spans = trace(1, 3, Kind::Ok); // fits the 3 tokens: kept
        spans.extend(trace(2, 3, Kind::Ok)); // no tokens left: dropped
        t.submit(batch(spans)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.traces(), vec![1]);

        // Late spans: trace 1's are forwarded at once, trace 2's dropped, even with an error.
        t.submit(batch(vec![
            span(1, 7, Kind::Ok),
            span(2, 7, Kind::Error),
            span(2, 8, Kind::Ok),
        ]))
        .await
        .unwrap();
        assert!(sink.spans().contains(&(1, 7)));
        assert!(!sink.traces().contains(&2));
        let st = t.stats();
        assert_eq!((st.late_spans_kept, st.late_spans_dropped), (1, 2));
        assert_eq!(st.held_traces, 0, "late spans are not held");
    }

    #[tokio::test(start_paused = true)]
    async fn max_traces_decides_the_oldest_early() {
        let mut s = settings();
        s.max_traces = 3;
        s.spans_per_second = None;
        let (t, sink, _) = sampler(s);
        for id in 1..=5 {
            t.submit(batch(trace(id, 2, Kind::Ok))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Traces 1 and 2 were decided (kept) early, on arrival of 4 and 5.
        assert_eq!(sink.traces(), vec![1, 2]);
        let st = t.stats();
        assert_eq!((st.early_max_traces, st.held_traces), (2, 3));
        // A late span of trace 1 follows the early decision.
        t.submit(batch(vec![span(1, 9, Kind::Ok)])).await.unwrap();
        assert_eq!(t.stats().late_spans_kept, 1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.traces(), vec![1, 2, 3, 4, 5]);
        assert_eq!(sink.spans().len(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_decides_the_oldest_early_and_policies_still_apply() {
        let one = group(
            ExportTraceServiceRequest::decode(&batch(trace(1, 10, Kind::Ok)).payload[..]).unwrap(),
        )[0]
        .bytes;
        let mut s = settings();
        s.max_bytes = one * 2 + one / 2; // room for two traces of 10 spans
        s.spans_per_second = Some(10);
        let (t, sink, memory) = sampler(s);
        t.submit(batch(trace(1, 10, Kind::Error))).await.unwrap();
        t.submit(batch(trace(2, 10, Kind::Ok))).await.unwrap();
        assert_eq!(t.stats().early_max_bytes, 0);
        t.submit(batch(trace(3, 10, Kind::Ok))).await.unwrap();
        t.submit(batch(trace(4, 10, Kind::Ok))).await.unwrap();
        // 1 (error: kept) and 2 (taking all 10 tokens: kept) were decided early.
        let st = t.stats();
        assert_eq!(st.early_max_bytes, 2);
        assert!(st.held_bytes <= one * 2 + one / 2);
        assert_eq!(memory.used(), st.held_bytes);
        assert_eq!(sink.traces(), vec![1, 2]);
        assert_eq!((st.kept_traces_error, st.kept_traces_rate_limit), (1, 1));
        // 3 and 4 are decided on time: the bucket refilled to 10 tokens, enough for 3 only.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.traces(), vec![1, 2, 3]);
        let st = t.stats();
        assert_eq!((st.dropped_traces, st.dropped_spans), (1, 10));
        assert_eq!(st.kept_spans + st.dropped_spans, 40);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_limiter_refuses_past_the_hard_limit_and_nothing_is_held() {
        let sink = Arc::new(Collect::default());
        let memory = Arc::new(MemoryLimiter::new(100, 200));
        assert!(memory.try_acquire(150, Priority::Internal));
        let t = TailSampler::start(settings(), memory.clone(), vec![sink.clone()]);
        assert_eq!(
            t.submit(batch(trace(1, 5, Kind::Ok))).await,
            Err(Refused::MemoryLimit)
        );
        let st = t.stats();
        assert_eq!((st.refused_spans, st.held_traces), (5, 0));
        assert_eq!(memory.used(), 150);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_decides_everything_held() {
        let (t, sink, memory) = sampler(settings());
        t.submit(batch(trace(1, 2, Kind::Error))).await.unwrap();
        t.submit(batch(trace(2, 2, Kind::Ok))).await.unwrap();
        t.flush().await;
        assert_eq!(sink.traces(), vec![1, 2]);
        let st = t.stats();
        assert_eq!((st.early_flush, st.held_traces), (2, 0));
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn undecodable_batches_pass_through_and_metrics_render() {
        let (t, sink, _) = sampler(settings());
        let junk = Batch::new(Signal::Traces, Bytes::from_static(&[0x0a, 0xff]), 1);
        t.submit(junk.clone()).await.unwrap();
        assert_eq!(sink.0.lock().unwrap()[0], junk);
        let mut out = String::new();
        t.render_prometheus(&mut out);
        assert!(out.contains("otlp_mesh_tail_sampling_undecodable_batches_total 1"));
        assert!(out.contains(
            "otlp_mesh_tail_sampling_traces_total{decision=\"kept\",reason=\"error\"} 0"
        ));
        assert!(out.contains("otlp_mesh_tail_sampling_held_traces 0"));
    }

    #[test]
    fn http_status_codes_mark_errors() {
        assert!(is_error(&span(1, 0, Kind::Http503)));
        assert!(is_error(&span(1, 0, Kind::Error)));
        assert!(!is_error(&span(1, 0, Kind::Ok)));
        let mut s = span(1, 0, Kind::Ok);
        s.attributes.push(KeyValue {
            key: "http.status_code".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("404".into())),
            }),
            ..Default::default()
        });
        assert!(!is_error(&s));
    }
}
