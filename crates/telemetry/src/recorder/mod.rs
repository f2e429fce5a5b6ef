//! The proxy's own telemetry: a server span per request, a client span per upstream attempt,
//! an access log record per request, and RED metrics, all sent through the pipeline as OTLP.
//!
//! The request path fills a [`RequestRecord`] and encodes it at once, into protobuf in a buffer
//! of its worker thread (a shard behind an uncontended lock), while the request's data is still
//! in cache and before its allocations are freed; a background task takes what the shards hold
//! every [`FLUSH_EVERY`] (a full shard hands its batch over sooner) and submits it with
//! [`Priority::Internal`]. Nothing on the request path waits: when the hand-over queue is full,
//! the batch is dropped and counted.

use crate::DURATION_BUCKETS_SECONDS;

mod encode;
use crate::limiter::Priority;
use crate::otlp::{Batch, Signal};
use crate::pipeline::Pipeline;
use crate::processors::{keep_threshold, keep_trace};
use crate::propagation::{self, TraceContext};
use crate::registry::{Registry, StatusClass};
use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otlp_mesh_config::telemetry::{Propagation, TelemetryConfig};
use prost::Message;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Records per encoded batch: a shard holding this many hands its batch to the flusher.
const MAX_BATCH: usize = 1024;
/// Full batches waiting for the flusher; past this the request path drops them (counted).
const FULL_BATCHES: usize = 16;
/// At most this many shards, however many cores.
const MAX_SHARDS: usize = 16;
/// How long a record may wait before its batch is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Nanoseconds since the Unix epoch now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Unix time from the monotonic clock: one clock read per event on the request path instead of
/// a monotonic read for durations plus a wall-clock read for timestamps. The flusher re-anchors
/// it on every flush tick, so a stepped wall clock shows up within [`FLUSH_EVERY`].
#[derive(Debug)]
struct WallClock {
    base: Instant,
    /// Unix nanoseconds at `base`, as of the last anchoring.
    unix_at_base: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl WallClock {
    fn new() -> WallClock {
        let clock = WallClock {
            base: Instant::now(),
            unix_at_base: AtomicU64::new(0),
        };
        clock.anchor();
        clock
    }

    fn anchor(&self) {
        let since = nanos(self.base.elapsed());
        self.unix_at_base
            .store(unix_nanos().saturating_sub(since), Ordering::Relaxed);
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        unix_nanos_at(self.base, self.unix_at_base.load(Ordering::Relaxed), at)
    }
}

/// `at` as Unix nanoseconds, given that `base` was `base_unix` (either may come first).
fn unix_nanos_at(base: Instant, base_unix: u64, at: Instant) -> u64 {
    match at.checked_duration_since(base) {
        Some(d) => base_unix.saturating_add(nanos(d)),
        None => base_unix.saturating_sub(nanos(base.duration_since(at))),
    }
}

/// The propagation formats of a trace, deduplicated, without a shared allocation per request.
#[derive(Clone, Copy, Debug)]
struct Formats {
    list: [Propagation; 3],
    len: usize,
}

impl Formats {
    fn new(configured: &[Propagation]) -> Formats {
        let mut f = Formats {
            list: [Propagation::W3c; 3],
            len: 0,
        };
        for p in configured {
            if !f.as_slice().contains(p) && f.len < f.list.len() {
                f.list[f.len] = *p;
                f.len += 1;
            }
        }
        f
    }

    fn as_slice(&self) -> &[Propagation] {
        self.list.get(..self.len).unwrap_or(&[])
    }
}

/// A request's attempts; the usual single one is kept inline (no allocation).
#[derive(Debug, Default)]
enum Attempts {
    #[default]
    None,
    One(AttemptRecord),
    Many(Vec<AttemptRecord>),
}

impl Attempts {
    fn push(&mut self, a: AttemptRecord) {
        *self = match std::mem::take(self) {
            Attempts::None => Attempts::One(a),
            Attempts::One(first) => Attempts::Many(vec![first, a]),
            Attempts::Many(mut v) => {
                // Bounded: a retry policy allows at most a handful of attempts.
                if v.len() < 64 {
                    v.push(a);
                }
                Attempts::Many(v)
            }
        };
    }

    fn as_slice(&self) -> &[AttemptRecord] {
        match self {
            Attempts::None => &[],
            Attempts::One(a) => std::slice::from_ref(a),
            Attempts::Many(v) => v,
        }
    }
}

/// One upstream attempt (a client span).
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub span_id: [u8; 8],
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// 1 for the first try.
    pub number: u32,
    /// Response status, 0 when the attempt failed without one.
    pub status: u16,
    /// Error class when it failed (`x-mesh-error` code or transport error).
    pub error: Option<String>,
}

/// The trace of one proxied request, carried in its extensions (also across retries).
#[derive(Debug)]
pub struct RequestTrace {
    /// Trace id and this proxy's server span id.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a trace context.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub tracestate: Option<http::HeaderValue>,
    /// When the request started (monotonic) and the same instant as Unix time.
    start: Instant,
    pub start_unix_nanos: u64,
    formats: Formats,
    /// False when only access logs are on: trace headers pass through untouched.
    inject: bool,
    /// Whether each attempt gets a client span (else upstreams see the server span as parent).
    client_spans: bool,
    /// Set by [`RequestTrace::count_attempt`].
    counted_attempt: std::sync::atomic::AtomicBool,
    /// Whether this request is recorded at all (sampled, or access logs on).
    record: bool,
    attempts: Mutex<Attempts>,
}

impl RequestTrace {
    /// Starts a client span: writes its context into `headers`; returns its span id (the
    /// server span's when client spans are off).
    pub fn begin_attempt(&self, headers: &mut HeaderMap) -> [u8; 8] {
        let span_id = if self.client_spans {
            new_span_id()
        } else {
            self.span_id
        };
        if !self.inject {
            return span_id;
        }
        let ctx = TraceContext {
            trace_id: self.trace_id,
            span_id,
            sampled: Some(self.sampled),
            tracestate: None,
        };
        propagation::inject(headers, &ctx, self.formats.as_slice());
        if let Some(ts) = &self.tracestate {
            headers.insert(propagation::TRACESTATE, ts.clone());
        }
        span_id
    }

    /// Whether the request gets a span or an access log record; when not, nothing about it
    /// is captured (only its trace headers are passed on).
    pub fn records(&self) -> bool {
        self.record
    }

    /// Whether each upstream attempt gets its own client span.
    pub fn client_spans(&self) -> bool {
        self.client_spans
    }

    /// Counts the request's one attempt without recording it: with neither client spans nor
    /// retries, its count is all its record would give (and recording it costs two clock reads
    /// and a lock).
    pub fn count_attempt(&self) {
        self.counted_attempt.store(true, Ordering::Relaxed);
    }

    /// How many attempts the request made, given the `recorded` ones.
    fn attempt_count(&self, recorded: usize) -> usize {
        recorded.max(usize::from(self.counted_attempt.load(Ordering::Relaxed)))
    }

    /// `at` (a monotonic instant of this request) as Unix nanoseconds, without reading the
    /// wall clock.
    pub fn unix_nanos(&self, at: Instant) -> u64 {
        unix_nanos_at(self.start, self.start_unix_nanos, at)
    }

    /// Records a finished attempt.
    pub fn end_attempt(&self, attempt: AttemptRecord) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(attempt);
    }

    /// Runs `f` on the attempts recorded so far.
    fn with_attempts<R>(&self, f: impl FnOnce(&[AttemptRecord]) -> R) -> R {
        f(self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_slice())
    }
}

/// Everything the proxy knows about a request when its response head is sent.
#[derive(Debug)]
pub struct RequestRecord {
    pub trace: Option<Arc<RequestTrace>>,
    pub start_unix_nanos: u64,
    pub duration: Duration,
    pub method: Method,
    /// Path and host, copied, not shared: a `Uri` or `HeaderValue` clone would keep the
    /// connection's whole read buffer alive until the record is encoded, so hyper would
    /// allocate a new one per request (measured: +40 MiB RSS and more CPU at 40k req/s).
    pub target: RequestTarget,
    pub version: Version,
    pub peer: IpAddr,
    /// Listener, route and cluster: one shared reference per request instead of three.
    pub names: Arc<RouteNames>,
    pub status: u16,
    /// `x-mesh-error` code of the error response this proxy made, if it made one.
    pub error: Option<String>,
    /// Fault kinds injected (`delay,abort`).
    pub faults: Option<String>,
}

/// Where requests went: the listener, and the route and cluster when one matched. Built once
/// per route at config load and shared by that route's records.
#[derive(Debug)]
pub struct RouteNames {
    pub listener: Box<str>,
    pub route: Option<Box<str>>,
    pub cluster: Option<Box<str>>,
    /// The attributes these names fix, pre-encoded for server spans, access logs and client
    /// spans (written with one copy per record instead of being encoded each time).
    span_attributes: Box<[u8]>,
    log_attributes: Box<[u8]>,
    client_attributes: Box<[u8]>,
}

impl RouteNames {
    pub fn new(listener: &str, route: Option<&str>, cluster: Option<&str>) -> Arc<RouteNames> {
        let attrs = |tag| encode::route_attributes(tag, listener, route, cluster);
        Arc::new(RouteNames {
            listener: listener.into(),
            route: route.map(Box::from),
            cluster: cluster.map(Box::from),
            span_attributes: attrs(encode::SPAN_ATTRIBUTES),
            log_attributes: attrs(encode::LOG_ATTRIBUTES),
            client_attributes: encode::cluster_attribute(cluster),
        })
    }
}

/// Path and host bytes kept inside the record itself (no allocation); longer ones are boxed.
const TARGET_INLINE: usize = 80;

/// A request's path and host (when it named one), copied into the record: inline up to
/// [`TARGET_INLINE`] bytes together (typical requests, no allocation), one allocation past it.
#[derive(Debug)]
pub struct RequestTarget {
    text: TargetText,
    path_len: usize,
    has_host: bool,
}

#[derive(Debug)]
enum TargetText {
    Inline {
        buf: [u8; TARGET_INLINE],
        len: usize,
    },
    Boxed(Box<str>),
}

impl RequestTarget {
    pub fn new(path: &str, host: Option<&str>) -> RequestTarget {
        let host_str = host.unwrap_or("");
        let len = path.len() + host_str.len();
        let text = if len <= TARGET_INLINE {
            let mut buf = [0u8; TARGET_INLINE];
            if let Some(p) = buf.get_mut(..path.len()) {
                p.copy_from_slice(path.as_bytes());
            }
            if let Some(h) = buf.get_mut(path.len()..len) {
                h.copy_from_slice(host_str.as_bytes());
            }
            TargetText::Inline { buf, len }
        } else {
            let mut text = String::with_capacity(len);
            text.push_str(path);
            text.push_str(host_str);
            TargetText::Boxed(text.into_boxed_str())
        };
        RequestTarget {
            text,
            path_len: path.len(),
            has_host: host.is_some(),
        }
    }

    /// Path and host together; both were `str`s, so the inline bytes are valid UTF-8 at
    /// `path_len` too.
    fn text(&self) -> &str {
        match &self.text {
            TargetText::Inline { buf, len } => buf
                .get(..*len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
            TargetText::Boxed(s) => s,
        }
    }

    pub fn path(&self) -> &str {
        self.parts().0
    }

    pub fn host(&self) -> Option<&str> {
        self.parts().1
    }

    /// Path and host with one UTF-8 check (the encoder needs both, the path twice).
    pub fn parts(&self) -> (&str, Option<&str>) {
        let text = self.text();
        let (path, host) = text.split_at_checked(self.path_len).unwrap_or((text, ""));
        (path, self.has_host.then_some(host))
    }
}

/// Counters of the recorder.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub spans: AtomicU64,
    pub logs: AtomicU64,
    /// Records dropped because the flusher's queue of full batches was full.
    pub dropped: AtomicU64,
    /// Batches the pipeline refused (memory hard limit or full queues).
    pub refused_batches: AtomicU64,
}

/// The request path's handle to the proxy's own telemetry.
#[derive(Debug)]
pub struct Recorder {
    encoding: Arc<Encoding>,
    /// Full batches to the flusher; dropping the recorder closes it and ends the flusher.
    full: mpsc::Sender<Flushed>,
    tracing: bool,
    client_spans: bool,
    access_log: bool,
    threshold: u64,
    formats: Formats,
    clock: Arc<WallClock>,
    stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Starts the flusher (and RED metrics) tasks feeding `pipeline`.
    pub fn start(
        cfg: &TelemetryConfig,
        pipeline: Arc<Pipeline>,
        registry: Arc<Registry>,
    ) -> Arc<Recorder> {
        let (full, full_rx) = mpsc::channel(FULL_BATCHES);
        let stats = Arc::new(RecorderStats::default());
        let resource = resource(cfg);
        let clock = Arc::new(WallClock::new());
        let (resource_bytes, scope_bytes) = (resource.encode_to_vec(), scope().encode_to_vec());
        let head = resource_bytes.len() + scope_bytes.len();
        let encoding = Arc::new(Encoding::new(head, cfg, shard_count()));
        let flusher = Flusher {
            encoding: encoding.clone(),
            resource: resource_bytes,
            scope: scope_bytes,
            clock: clock.clone(),
            pipeline: pipeline.clone(),
            stats: stats.clone(),
        };
        tokio::spawn(flusher.run(full_rx));
        if cfg.metrics.enabled {
            let interval = Duration::from(cfg.metrics.interval.value);
            tokio::spawn(red_metrics_loop(resource, registry, pipeline, interval));
        }
        Arc::new(Recorder {
            encoding,
            full,
            tracing: cfg.tracing.enabled,
            client_spans: cfg.tracing.client_spans,
            access_log: cfg.access_log.otlp || cfg.access_log.stdout,
            threshold: keep_threshold(cfg.tracing.sampling_ratio.value),
            formats: Formats::new(&cfg.tracing.propagation),
            clock,
            stats,
        })
    }

    /// Whether requests need a record at all.
    pub fn is_active(&self) -> bool {
        self.tracing || self.access_log
    }

    /// Starts a request's trace from its headers: continues the caller's trace (following its
    /// sampled flag) or starts a new one sampled at the configured ratio. `start` is when the
    /// request started (the caller's clock read, shared with its own timing).
    pub fn begin(&self, headers: &HeaderMap, start: Instant) -> Option<Arc<RequestTrace>> {
        if !self.is_active() {
            return None;
        }
        let incoming = propagation::extract(headers);
        let (trace_id, parent, decided, tracestate) = match incoming {
            Some(c) => (c.trace_id, Some(c.span_id), c.sampled, c.tracestate),
            None => (new_trace_id(), None, None, None),
        };
        let sampled =
            self.tracing && decided.unwrap_or_else(|| keep_trace(&trace_id, self.threshold));
        Some(Arc::new(RequestTrace {
            trace_id,
            span_id: new_span_id(),
            parent,
            sampled,
            tracestate,
            start,
            start_unix_nanos: self.clock.unix_nanos(start),
            formats: self.formats,
            inject: self.tracing,
            client_spans: self.client_spans,
            counted_attempt: std::sync::atomic::AtomicBool::new(false),
            record: sampled || self.access_log,
            attempts: Mutex::new(Attempts::None),
        }))
    }

    /// Encodes a finished request's span(s) and access log; never waits.
    pub fn record(&self, record: RequestRecord) {
        let sampled = record.trace.as_ref().is_some_and(|t| t.sampled);
        if !sampled && !self.access_log {
            return;
        }
        if let Some(full) = self.encoding.encode(&record)
            && let Err(e) = self.full.try_send(full)
        {
            let records = e.into_inner().records;
            self.stats.dropped.fetch_add(records, Ordering::Relaxed);
        }
    }

    /// Counters.
    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// Appends the recorder's Prometheus families to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "otlp_mesh_telemetry_spans_total",
                "Spans the proxy made for proxied requests.",
                &self.stats.spans,
            ),
            (
                "otlp_mesh_telemetry_access_logs_total",
                "Access log records the proxy made.",
                &self.stats.logs,
            ),
            (
                "otlp_mesh_telemetry_dropped_records_total",
                "Request records dropped because their encoded batch found the send queue full.",
                &self.stats.dropped,
            ),
            (
                "otlp_mesh_telemetry_refused_batches_total",
                "Batches of the proxy's own telemetry the pipeline refused (memory limit).",
                &self.stats.refused_batches,
            ),
        ] {
            crate::write_family(out, name, "counter", help);
            crate::write_sample(out, name, &[], v.load(Ordering::Relaxed));
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

fn resource(cfg: &TelemetryConfig) -> Resource {
    let mut attributes = vec![kv_str("service.name", &cfg.service_name)];
    attributes.push(kv_str("telemetry.sdk.name", "otlp-mesh"));
    attributes.push(kv_str("telemetry.sdk.version", env!("CARGO_PKG_VERSION")));
    for (k, v) in &cfg.resource {
        attributes.push(kv_str(k, v));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "otlp-mesh".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// How many shards a recorder keeps: one per core (worker threads beyond that share).
fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, MAX_SHARDS)
}

/// The shard of the calling thread: threads are numbered as they first record, so each worker
/// thread keeps to its own shard.
fn shard_of_thread(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % shards.max(1)
}

/// One thread's encoded records since the last flush.
#[derive(Debug)]
struct Shard {
    spans: encode::Writer,
    logs: encode::Writer,
    /// JSON access log lines for stdout.
    stdout: Vec<u8>,
    records: u64,
}

impl Shard {
    /// Takes what the shard holds (its buffers change hands; the flusher finishes them).
    fn take(&mut self) -> Flushed {
        Flushed {
            spans: self.spans.take(),
            logs: self.logs.take(),
            stdout: std::mem::take(&mut self.stdout),
            records: std::mem::take(&mut self.records),
        }
    }
}

/// A shard's contents, taken for the pipeline.
#[derive(Debug)]
struct Flushed {
    /// Spans and log records, when there were any; the flusher makes export requests of them.
    spans: Option<encode::Items>,
    logs: Option<encode::Items>,
    stdout: Vec<u8>,
    records: u64,
}

/// What the request path needs to encode records: the shards and which signals to write.
#[derive(Debug)]
struct Encoding {
    shards: Box<[Mutex<Shard>]>,
    spans: bool,
    otlp_logs: bool,
    stdout_logs: bool,
}

impl Encoding {
    /// `head`: the bytes of the pre-encoded resource and scope that every batch starts with.
    fn new(head: usize, cfg: &TelemetryConfig, shards: usize) -> Encoding {
        Encoding {
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        spans: encode::Writer::new(head),
                        logs: encode::Writer::new(head),
                        stdout: Vec::new(),
                        records: 0,
                    })
                })
                .collect(),
            spans: cfg.tracing.enabled,
            otlp_logs: cfg.access_log.otlp,
            stdout_logs: cfg.access_log.stdout,
        }
    }

    /// Encodes `r` into the calling thread's shard; returns the shard's batch once it is full.
    fn encode(&self, r: &RequestRecord) -> Option<Flushed> {
        let shard = self.shards.get(shard_of_thread(self.shards.len()))?;
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let Shard {
            spans,
            logs,
            stdout,
            records,
        } = &mut *shard;
        let mut encode = |attempts: &[AttemptRecord]| {
            if self.spans && r.trace.as_ref().is_some_and(|t| t.sampled) {
                spans.spans(r, attempts);
            }
            let count = r
                .trace
                .as_ref()
                .map_or(attempts.len(), |t| t.attempt_count(attempts.len()));
            if self.otlp_logs {
                logs.access_log(r, count);
            }
            if self.stdout_logs {
                json_line(r, count, stdout);
            }
        };
        match &r.trace {
            Some(t) => t.with_attempts(encode),
            None => encode(&[]),
        }
        *records += 1;
        (*records >= MAX_BATCH as u64).then(|| shard.take())
    }
}

/// The background task that sends the shards' batches on.
struct Flusher {
    encoding: Arc<Encoding>,
    /// The pre-encoded resource and scope at the head of every export request.
    resource: Vec<u8>,
    scope: Vec<u8>,
    clock: Arc<WallClock>,
    pipeline: Arc<Pipeline>,
    stats: Arc<RecorderStats>,
}

impl Flusher {
    async fn run(self, mut full: mpsc::Receiver<Flushed>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = full.recv() => match batch {
                    Some(batch) => self.send(batch).await,
                    None => {
                        // The recorder is gone: send what the shards still hold, then stop.
                        self.flush_shards().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.clock.anchor();
                    self.flush_shards().await;
                }
            }
        }
    }

    async fn flush_shards(&self) {
        for shard in self.encoding.shards.iter() {
            let taken = {
                let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                (shard.records > 0).then(|| shard.take())
            };
            if let Some(batch) = taken {
                self.send(batch).await;
            }
        }
    }

    async fn send(&self, batch: Flushed) {
        if !batch.stdout.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&batch.stdout);
            let _ = out.flush();
        }
        for (items, signal, counter) in [
            (batch.spans, Signal::Traces, &self.stats.spans),
            (batch.logs, Signal::Logs, &self.stats.logs),
        ] {
            if let Some(items) = items {
                let n = items.count;
                counter.fetch_add(n, Ordering::Relaxed);
                let payload = items.into_payload(&self.resource, &self.scope);
                self.submit(Batch::new(signal, payload, n)).await;
            }
        }
    }

    async fn submit(&self, batch: Batch) {
        if self
            .pipeline
            .submit(batch, Priority::Internal)
            .await
            .is_err()
        {
            self.stats.refused_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `error.type`: the proxy's error code, or the status code for 5xx responses.
fn error_type(r: &RequestRecord) -> Option<String> {
    match &r.error {
        Some(e) => Some(e.clone()),
        None if r.status >= 500 => Some(r.status.to_string()),
        None => None,
    }
}

fn json_line(r: &RequestRecord, attempts: usize, out: &mut Vec<u8>) {
    let v = serde_json::json!({
        "time_unix_nano": r.start_unix_nanos,
        "trace_id": r.trace.as_ref().map(|t| propagation::hex(&t.trace_id)),
        "span_id": r.trace.as_ref().map(|t| propagation::hex(&t.span_id)),
        "method": r.method.as_str(),
        "path": r.target.path(),
        "protocol": protocol(r.version),
        "status": r.status,
        "duration_ms": r.duration.as_secs_f64() * 1e3,
        "listener": &*r.names.listener,
        "route": r.names.route.as_deref(),
        "cluster": r.names.cluster.as_deref(),
        "peer": r.peer.to_string(),
        "host": r.target.host(),
        "attempts": attempts,
        "error": error_type(r),
        "fault": r.faults,
    });
    if serde_json::to_writer(&mut *out, &v).is_ok() {
        out.push(b'\n');
    }
}

async fn red_metrics_loop(
    resource: Resource,
    registry: Arc<Registry>,
    pipeline: Arc<Pipeline>,
    interval: Duration,
) {
    let start = unix_nanos();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(batch) = red_metrics(&resource, &registry, start, unix_nanos()) {
            let _ = pipeline.submit(batch, Priority::Internal).await;
        }
    }
}

/// RED metrics of every request series as one OTLP metrics batch (cumulative temporality):
/// `http.server.request.duration` (histogram, seconds, semconv buckets) and
/// `otlp_mesh.requests` (sum by status class).
pub fn red_metrics(
    resource: &Resource,
    registry: &Registry,
    start: u64,
    now: u64,
) -> Option<Batch> {
    let series = registry.route_series();
    let mut hist_points = Vec::new();
    let mut count_points = Vec::new();
    for s in &series {
        let (listener, route, cluster) = s.labels();
        let attrs = vec![
            kv_str("http.route", route),
            kv_str("otlp_mesh.listener", listener),
            kv_str("otlp_mesh.cluster", cluster),
        ];
        let h = s.duration();
        if h.count() == 0 {
            continue;
        }
        hist_points.push(HistogramDataPoint {
            attributes: attrs.clone(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: h.count(),
            sum: Some(h.sum_seconds()),
            bucket_counts: h.bucket_counts().to_vec(),
            explicit_bounds: DURATION_BUCKETS_SECONDS.to_vec(),
            ..Default::default()
        });
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let class_of = [
                StatusClass::Informational,
                StatusClass::Success,
                StatusClass::Redirect,
                StatusClass::ClientError,
                StatusClass::ServerError,
            ][i];
            let n = s.count(class_of);
            if n == 0 {
                continue;
            }
            let mut a = attrs.clone();
            a.push(kv_str("otlp_mesh.status_class", class));
            count_points.push(NumberDataPoint {
                attributes: a,
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsInt(
                    i64::try_from(n).unwrap_or(i64::MAX),
                )),
                ..Default::default()
            });
        }
    }
    if hist_points.is_empty() {
        return None;
    }
    let items = (hist_points.len() + count_points.len()) as u64;
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: vec![
                    Metric {
                        name: "http.server.request.duration".into(),
                        description: "Duration of HTTP server requests.".into(),
                        unit: "s".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: hist_points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "otlp_mesh.requests".into(),
                        description: "Requests by status class.".into(),
                        unit: "{request}".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: count_points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Some(Batch::new(
        Signal::Metrics,
        Bytes::from(req.encode_to_vec()),
        items,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Consumer, Refused};
    use futures_util::future::BoxFuture;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{span, status};

    struct Collect(Mutex<Vec<Batch>>);

    impl Consumer for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn consume(&self, batch: Batch, _: Priority) -> BoxFuture<'_, Result<(), Refused>> {
            self.0.lock().unwrap().push(batch);
            Box::pin(async { Ok(()) })
        }
    }

    fn config(yaml: &str) -> TelemetryConfig {
        let c = otlp_mesh_config::parse_str(yaml, "t.yaml").unwrap();
        c.telemetry.unwrap().value
    }

    /// An attempt of the test records' request (it ran from 1 000 to 2 000 ns).
    fn attempt(span_id: [u8; 8], number: u32, status: u16) -> AttemptRecord {
        AttemptRecord {
            span_id,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            number,
            status,
            error: None,
        }
    }

    fn record(trace: Option<Arc<RequestTrace>>, status: u16) -> RequestRecord {
        RequestRecord {
            trace,
            start_unix_nanos: 1_000,
            duration: Duration::from_millis(5),
            method: Method::GET,
            target: RequestTarget::new("/api/orders", Some("shop")),
            version: Version::HTTP_11,
            peer: "127.0.0.1".parse().unwrap(),
            names: RouteNames::new("edge", Some("orders"), Some("orders-v1")),
            status,
            error: None,
            faults: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn continues_the_callers_trace_with_server_and_client_spans() {
        let (rec, sink) =
            collecting("telemetry:\n  service_name: edge\n  access_log: { otlp: true }\n");
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let t = rec.begin(&h, Instant::now()).unwrap();
        assert!(t.sampled);
        let mut upstream = HeaderMap::new();
        let first = t.begin_attempt(&mut upstream);
        let tp = upstream
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            tp,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                propagation::hex(&first)
            )
        );
        for (n, status) in [(1, 503), (2, 200)] {
            t.end_attempt(attempt(
                if n == 1 { first } else { new_span_id() },
                n,
                status,
            ));
        }
        rec.record(record(Some(t.clone()), 200));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let batches = sink.0.lock().unwrap().clone();
        let traces = batches.iter().find(|b| b.signal == Signal::Traces).unwrap();
        assert_eq!(traces.items, 3);
        let req = ExportTraceServiceRequest::decode(&traces.payload[..]).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        let server = &spans[0];
        assert_eq!(server.name, "GET orders");
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(propagation::hex(&server.parent_span_id), "b7ad6b7169203331");
        assert_eq!(
            server.events.iter().filter(|e| e.name == "retry").count(),
            1
        );
        assert!(
            spans[1..]
                .iter()
                .all(|s| s.parent_span_id == server.span_id)
        );
        assert_eq!(
            spans[1].status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let logs = batches.iter().find(|b| b.signal == Signal::Logs).unwrap();
        let req = ExportLogsServiceRequest::decode(&logs.payload[..]).unwrap();
        let log = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(log.trace_id, t.trace_id.to_vec());
        assert_eq!(log.span_id, t.span_id.to_vec());
        assert_eq!(log.flags, 1);
        assert_eq!(log.severity_text, "INFO");
        assert_eq!(log.event_name, "http.access");
        let body = match log.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(body, "GET /api/orders 200 5.000ms");
        let attr = |attrs: &[KeyValue], k: &str| {
            attrs
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr(&log.attributes, "otlp_mesh.duration_ms"),
            Some(any_value::Value::DoubleValue(5.0))
        );
        assert_eq!(
            attr(&log.attributes, "otlp_mesh.attempts"),
            Some(any_value::Value::IntValue(2))
        );
        for (k, v) in [
            ("url.scheme", "http"),
            ("http.route", "orders"),
            ("otlp_mesh.listener", "edge"),
            ("otlp_mesh.cluster", "orders-v1"),
            ("url.path", "/api/orders"),
        ] {
            assert_eq!(
                attr(&log.attributes, k),
                Some(any_value::Value::StringValue(v.into())),
                "log {k}"
            );
        }
        let a = &server.attributes;
        for (k, v) in [
            ("http.request.method", "GET"),
            ("url.path", "/api/orders"),
            ("http.route", "orders"),
            ("server.address", "shop"),
            ("network.peer.address", "127.0.0.1"),
            ("network.protocol.version", "1.1"),
            ("otlp_mesh.cluster", "orders-v1"),
        ] {
            assert_eq!(
                attr(a, k),
                Some(any_value::Value::StringValue(v.into())),
                "{k}"
            );
        }
        assert_eq!(
            attr(a, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(
            attr(a, "otlp_mesh.retries"),
            Some(any_value::Value::IntValue(1))
        );
        assert_eq!(server.start_time_unix_nano, 1_000);
        assert_eq!(server.end_time_unix_nano, 1_000 + 5_000_000);
        assert_eq!(
            attr(&spans[2].attributes, "http.request.resend_count"),
            Some(any_value::Value::IntValue(1))
        );
        for client in &spans[1..] {
            assert_eq!(
                attr(&client.attributes, "otlp_mesh.cluster"),
                Some(any_value::Value::StringValue("orders-v1".into()))
            );
        }
        assert_eq!(rec.stats().spans.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_client_spans_upstreams_are_children_of_the_server_span() {
        let (rec, sink) = collecting(
            "telemetry:\n  tracing: { client_spans: false }\n  access_log: { otlp: true }\n",
        );
        let t = rec.begin(&HeaderMap::new(), Instant::now()).unwrap();
        assert!(!t.client_spans());
        for (n, status) in [(1, 503), (2, 200)] {
            let mut upstream = HeaderMap::new();
            assert_eq!(t.begin_attempt(&mut upstream), t.span_id);
            let tp = upstream.get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(
                tp,
                format!(
                    "00-{}-{}-01",
                    propagation::hex(&t.trace_id),
                    propagation::hex(&t.span_id)
                ),
                "attempt {n}: the server span is the upstream's parent"
            );
            t.end_attempt(attempt(t.span_id, n, status));
        }
        rec.record(record(Some(t.clone()), 200));
        // A request without retries: its one attempt is counted, not recorded.
        let single = rec.begin(&HeaderMap::new(), Instant::now()).unwrap();
        single.begin_attempt(&mut HeaderMap::new());
        single.count_attempt();
        rec.record(record(Some(single), 200));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let batches = sink.0.lock().unwrap().clone();
        let traces = batches.iter().find(|b| b.signal == Signal::Traces).unwrap();
        assert_eq!(traces.items, 2, "the server spans only");
        let req = ExportTraceServiceRequest::decode(&traces.payload[..]).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let server = &spans[0];
        assert_eq!(server.span_id, t.span_id.to_vec());
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(
            server.events.iter().filter(|e| e.name == "retry").count(),
            1,
            "the retry is still an event"
        );
        let retries = server
            .attributes
            .iter()
            .find(|a| a.key == "otlp_mesh.retries")
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value);
        assert_eq!(retries, Some(any_value::Value::IntValue(1)));
        let logs = batches.iter().find(|b| b.signal == Signal::Logs).unwrap();
        let req = ExportLogsServiceRequest::decode(&logs.payload[..]).unwrap();
        let attempts: Vec<_> = req.resource_logs[0].scope_logs[0]
            .log_records
            .iter()
            .map(|log| {
                log.attributes
                    .iter()
                    .find(|a| a.key == "otlp_mesh.attempts")
                    .and_then(|a| a.value.clone())
                    .and_then(|v| v.value)
            })
            .collect();
        assert_eq!(
            attempts,
            [
                Some(any_value::Value::IntValue(2)),
                Some(any_value::Value::IntValue(1))
            ]
        );
        assert_eq!(rec.stats().spans.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unsampled_parent_means_no_span_and_zero_ratio_samples_nothing() {
        let (rec, sink) = collecting("telemetry:\n  tracing: { sampling_ratio: 0.0 }\n");
        let root = rec.begin(&HeaderMap::new(), Instant::now()).unwrap();
        assert!(!root.sampled);
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        assert!(
            rec.begin(&h, Instant::now()).unwrap().sampled,
            "a sampled parent wins over the ratio"
        );
        rec.record(record(Some(root), 200));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn consecutive_batches_are_complete_export_requests() {
        // A resource long enough for two-byte lengths; batches of different sizes in turn.
        let mut res = Resource::default();
        res.attributes
            .push(kv_str("service.name", &"x".repeat(300)));
        let (resource, scope) = (res.encode_to_vec(), scope().encode_to_vec());
        let rec = Recorder::start(
            &config("telemetry:\n  service_name: edge\n"),
            Arc::new(Pipeline::new(
                Arc::new(crate::MemoryLimiter::new(1 << 20, 1 << 20)),
                None,
                vec![],
            )),
            Registry::new(),
        );
        let mut w = encode::Writer::new(resource.len() + scope.len());
        for n in [3usize, 1, 200, 2] {
            for _ in 0..n {
                // Untraced records write no span.
                w.spans(&record(None, 200), &[]);
                let t = rec.begin(&HeaderMap::new(), Instant::now());
                w.spans(&record(t, 200), &[]);
            }
            let payload = w.finish(&resource, &scope);
            let req = ExportTraceServiceRequest::decode(&payload[..]).unwrap();
            assert_eq!(req.resource_spans.len(), 1);
            let rs = &req.resource_spans[0];
            assert_eq!(rs.resource.as_ref(), Some(&res));
            assert_eq!(
                rs.scope_spans[0].spans.len(),
                n,
                "one server span per traced record"
            );
            assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "otlp-mesh");
        }
    }

    /// A recorder configured by `yaml` feeding a collecting sink.
    fn collecting(yaml: &str) -> (Arc<Recorder>, Arc<Collect>) {
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let pipeline = Arc::new(Pipeline::new(
            Arc::new(crate::MemoryLimiter::new(1 << 30, 1 << 30)),
            None,
            vec![sink.clone()],
        ));
        (
            Recorder::start(&config(yaml), pipeline, Registry::new()),
            sink,
        )
    }

    /// A recorder with access logs (one log record per request) feeding a collecting sink.
    fn logging_recorder() -> (Arc<Recorder>, Arc<Collect>) {
        collecting(
            "telemetry:\n  service_name: edge\n  tracing: { enabled: false }\n  access_log: { otlp: true }\n",
        )
    }

    fn logged(sink: &Collect) -> u64 {
        let batches = sink.0.lock().unwrap();
        batches
            .iter()
            .filter(|b| b.signal == Signal::Logs)
            .map(|b| {
                let req = ExportLogsServiceRequest::decode(&b.payload[..]).unwrap();
                let n = req.resource_logs[0].scope_logs[0].log_records.len() as u64;
                assert_eq!(n, b.items);
                n
            })
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_shard_is_sent_before_the_flush_tick_and_the_rest_on_it() {
        let (rec, sink) = logging_recorder();
        // Let the flusher take its first (immediate) tick.
        tokio::task::yield_now().await;
        for _ in 0..MAX_BATCH + 5 {
            rec.record(record(None, 200));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            logged(&sink),
            MAX_BATCH as u64,
            "the full batch, no tick yet"
        );
        tokio::time::sleep(FLUSH_EVERY + Duration::from_millis(1)).await;
        assert_eq!(logged(&sink), MAX_BATCH as u64 + 5, "the rest on the tick");
        assert_eq!(
            rec.stats().logs.load(Ordering::Relaxed),
            MAX_BATCH as u64 + 5
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_past_the_queue_are_dropped_and_counted_and_a_closed_recorder_flushes() {
        let (rec, sink) = logging_recorder();
        // The flusher cannot run while this test records without yielding (one thread): the
        // queue takes FULL_BATCHES full batches, the next one is dropped.
        let total = (FULL_BATCHES + 1) * MAX_BATCH + 7;
        for _ in 0..total {
            rec.record(record(None, 200));
        }
        assert_eq!(
            rec.stats().dropped.load(Ordering::Relaxed),
            MAX_BATCH as u64
        );
        drop(rec);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            logged(&sink),
            (FULL_BATCHES * MAX_BATCH + 7) as u64,
            "queued batches and the shard's remainder are sent when the recorder goes"
        );
    }

    #[test]
    fn request_target_keeps_path_and_host_apart() {
        for (path, host) in [
            ("/api/orders", Some("shop:8080")),
            ("/", None),
            ("", Some("h")),
            ("/ü/ß", Some("")),
            // Past the inline size, and exactly at it.
            (&"/long".repeat(20), Some("host")),
            (&"/x".repeat(TARGET_INLINE / 2 - 2), Some("four")),
            ("/x", Some(&"h".repeat(TARGET_INLINE))),
        ] {
            let t = RequestTarget::new(path, host);
            assert_eq!((t.path(), t.host()), (path, host));
            let inline = path.len() + host.map_or(0, str::len) <= TARGET_INLINE;
            assert_eq!(
                matches!(t.text, TargetText::Inline { .. }),
                inline,
                "{path}"
            );
        }
    }

    #[test]
    fn formats_are_deduplicated_in_order() {
        use Propagation::*;
        assert_eq!(
            Formats::new(&[B3, W3c, B3, B3Multi, W3c]).as_slice(),
            [B3, W3c, B3Multi]
        );
        assert!(Formats::new(&[]).as_slice().is_empty());
    }

    #[test]
    fn attempts_stay_inline_until_a_retry_and_are_bounded() {
        let attempt = |number| attempt([1; 8], number, 200);
        let mut a = Attempts::None;
        assert!(a.as_slice().is_empty());
        a.push(attempt(1));
        assert!(matches!(a, Attempts::One(_)));
        a.push(attempt(2));
        let numbers: Vec<u32> = a.as_slice().iter().map(|a| a.number).collect();
        assert_eq!(numbers, [1, 2]);
        for n in 3..100 {
            a.push(attempt(n));
        }
        assert_eq!(a.as_slice().len(), 64);
    }

    #[test]
    fn span_times_come_from_one_monotonic_read_per_event() {
        let clock = WallClock::new();
        let now = Instant::now();
        let wall = unix_nanos();
        let derived = clock.unix_nanos(now);
        assert!(
            derived.abs_diff(wall) < 1_000_000_000,
            "{derived} vs {wall}"
        );
        // Instants before the clock's base map back in time too.
        let earlier = clock.unix_nanos(clock.base - Duration::from_millis(5));
        assert_eq!(clock.unix_nanos(clock.base) - earlier, 5_000_000);

        let cfg = config("telemetry:\n  service_name: edge\n");
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let pipeline = Arc::new(Pipeline::new(
            Arc::new(crate::MemoryLimiter::new(1 << 20, 1 << 20)),
            None,
            vec![sink],
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let rec = Recorder::start(&cfg, pipeline, Registry::new());
        let start = Instant::now();
        let t = rec.begin(&HeaderMap::new(), start).unwrap();
        assert!(t.start_unix_nanos.abs_diff(unix_nanos()) < 1_000_000_000);
        assert_eq!(
            t.unix_nanos(start + Duration::from_millis(7)),
            t.start_unix_nanos + 7_000_000
        );
        assert_eq!(
            t.unix_nanos(start - Duration::from_millis(2)),
            t.start_unix_nanos - 2_000_000
        );
    }

    #[test]
    fn red_metrics_encode_the_registry() {
        let registry = Registry::new();
        let m = registry.route("edge", "orders", "orders-v1");
        m.record(200, Duration::from_millis(3));
        m.record(503, Duration::from_millis(30));
        let b = red_metrics(&Resource::default(), &registry, 1, 2).unwrap();
        let req = ExportMetricsServiceRequest::decode(&b.payload[..]).unwrap();
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(metric::Data::Histogram(h)) = &metrics[0].data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 2);
        assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(
            h.data_points[0].explicit_bounds.len() + 1,
            h.data_points[0].bucket_counts.len()
        );
        let Some(metric::Data::Sum(s)) = &metrics[1].data else {
            panic!()
        };
        assert_eq!(s.data_points.len(), 2);
        assert_eq!(b.items, 3);
    }
}
