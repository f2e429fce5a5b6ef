//! OTLP/gRPC forwarding benchmarks: a load generator sending pre-encoded, realistic
//! `ExportTraceServiceRequest`s over h2c, and a sink that accepts `Export` calls (identity, gzip
//! or zstd), counts the spans it received and serves its counters as JSON on `GET /stats`.
//!
//! The generator encodes a pool of payloads once (each with its own trace and span ids) and then
//! only clones `Bytes` handles: its per-request cost is the HTTP/2 machinery, not protobuf.

use crate::report::ProcessUsage;
use crate::resources::ProcessSampler;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use otlp_mesh_telemetry::otlp::wire::{self, Value};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// gRPC method of trace export.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// ---------------------------------------------------------------- payloads

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn random_id<const N: usize>() -> Vec<u8> {
    let mut id = [0u8; N];
    for b in &mut id {
        *b = fastrand::u8(..);
    }
    // Never all zero (invalid per the specification).
    id[0] |= 1;
    id.to_vec()
}

/// One realistic server span: 10 attributes, one event with 2 attributes, ~500 bytes encoded.
pub fn realistic_span(trace_id: Vec<u8>, i: u64) -> Span {
    let start = 1_767_225_600_000_000_000u64 + i * 1_000_000;
    let order = 10_000 + i % 90_000;
    Span {
        trace_id,
        span_id: random_id::<8>(),
        parent_span_id: random_id::<8>(),
        name: "GET /api/v1/orders/{id}".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_234_567,
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("http.route", s("/api/v1/orders/{id}")),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            kv("url.path", s(&format!("/api/v1/orders/{order}"))),
            kv("url.scheme", s("http")),
            kv("server.address", s("orders.shop.svc.cluster.local")),
            kv("server.port", any_value::Value::IntValue(8080)),
            kv("client.address", s("10.42.17.203")),
            kv(
                "user_agent.original",
                s("Mozilla/5.0 (X11; Linux x86_64) shop-frontend/3.14.1"),
            ),
            kv("network.protocol.version", s("1.1")),
        ],
        events: vec![span::Event {
            time_unix_nano: start + 734_000,
            name: "cache.miss".into(),
            attributes: vec![
                kv("cache.key", s(&format!("orders:{order}"))),
                kv("cache.backend", s("redis")),
            ],
            dropped_attributes_count: 0,
        }],
        status: Some(Status {
            message: String::new(),
            code: 1,
        }),
        flags: 0x100,
        ..Default::default()
    }
}

/// One export request of `spans` realistic spans (fresh ids) from one service.
pub fn trace_request(spans: usize) -> ExportTraceServiceRequest {
    let mut trace_id = random_id::<16>();
    let spans = (0..spans as u64)
        .map(|i| {
            // About 8 spans per trace.
            if i % 8 == 0 {
                trace_id = random_id::<16>();
            }
            realistic_span(trace_id.clone(), i)
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("orders")),
                    kv("service.version", s("2.8.0")),
                    kv("host.name", s("node-17.eu-west-1.compute.internal")),
                    kv("k8s.pod.name", s("orders-7d9c6b5f4-x2x9q")),
                    kv("telemetry.sdk.language", s("rust")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "otlp-mesh-bench".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A pool of gRPC-framed (5-byte prefix, uncompressed) export requests of `spans` spans each,
/// every one with its own ids; about 8 MB in total (at least 4 payloads).
pub fn payload_pool(spans: usize) -> Vec<Bytes> {
    let per = spans.max(1) * 520;
    let n = (8_000_000 / per).clamp(4, 64);
    (0..n)
        .map(|_| grpc_frame(&trace_request(spans.max(1)).encode_to_vec()))
        .collect()
}

/// `msg` behind the uncompressed gRPC message prefix.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    b.extend_from_slice(msg);
    b.freeze()
}

/// Spans in an encoded `ExportTraceServiceRequest`, counted by walking the three enclosing
/// levels only (spans themselves are not parsed).
pub fn count_spans(payload: &[u8]) -> Result<u64, wire::WireError> {
    fn message(v: Value<'_>) -> Option<&[u8]> {
        match v {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    let mut n = 0u64;
    wire::for_each_field(payload, 0, |f, v, at| {
        let Some(rs) = message(v).filter(|_| f == 1) else {
            return Ok(());
        };
        wire::for_each_field(rs, at, |f, v, at| {
            let Some(ss) = message(v).filter(|_| f == 2) else {
                return Ok(());
            };
            wire::for_each_field(ss, at, |f, v, _| {
                if f == 2 && matches!(v, Value::Bytes(_)) {
                    n += 1;
                }
                Ok(())
            })
        })
    })?;
    Ok(n)
}

// ---------------------------------------------------------------- sink

/// What the sink received since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Export calls answered OK.
    pub requests: u64,
    /// Spans in them.
    pub spans: u64,
    /// gRPC message bytes as received (compressed when the sender compressed).
    pub wire_bytes: u64,
    /// Uncompressed bytes.
    pub bytes: u64,
    /// Calls refused (bad framing, unknown encoding, undecodable payload).
    pub errors: u64,
}

/// The sink's counters.
#[derive(Debug, Default)]
pub struct SinkCounters {
    requests: AtomicU64,
    spans: AtomicU64,
    wire_bytes: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl SinkCounters {
    /// A copy of the counters.
    pub fn snapshot(&self) -> SinkStats {
        SinkStats {
            requests: self.requests.load(Relaxed),
            spans: self.spans.load(Relaxed),
            wire_bytes: self.wire_bytes.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// The sink's response body: one data frame and optional trailers.
pub use otlp_mesh_telemetry::receiver::ReplyBody as OnceBody;

/// Serves the sink on `listener` until the task is dropped: OTLP/gRPC `Export` (any signal path;
/// spans are counted for traces) and `GET /stats`. HTTP/1.1 and h2c are auto-detected.
pub async fn serve_sink(listener: TcpListener, counters: Arc<SinkCounters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let counters = counters.clone();
                async move { Ok::<_, std::convert::Infallible>(sink_handle(&counters, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Room for several 4 MiB export requests in flight: never the bottleneck.
            builder
                .http2()
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(256 << 10);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn grpc_reply(status: u32, message: Option<&str>) -> Response<OnceBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Some(m) = message.and_then(|m| HeaderValue::from_str(m).ok()) {
        trailers.insert("grpc-message", m);
    }
    let mut r = Response::new(OnceBody::new(
        // An empty Export*ServiceResponse.
        (status == 0).then(|| Bytes::from_static(&[0, 0, 0, 0, 0])),
        Some(trailers),
    ));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

async fn sink_handle(
    counters: &SinkCounters,
    req: Request<hyper::body::Incoming>,
) -> Response<OnceBody> {
    if req.method() == http::Method::GET {
        let body = serde_json::to_vec(&counters.snapshot()).unwrap_or_default();
        let mut r = Response::new(OnceBody::new(Some(Bytes::from(body)), None));
        if req.uri().path() != "/stats" {
            *r.status_mut() = StatusCode::NOT_FOUND;
        }
        return r;
    }
    let encoding = req
        .headers()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_string();
    let traces = req.uri().path() == TRACE_EXPORT_PATH;
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            counters.errors.fetch_add(1, Relaxed);
            return grpc_reply(13, Some("body read failed"));
        }
    };
    match sink_count(&body, &encoding, traces) {
        Ok((spans, bytes)) => {
            counters.requests.fetch_add(1, Relaxed);
            counters.spans.fetch_add(spans, Relaxed);
            counters
                .wire_bytes
                .fetch_add(body.len().saturating_sub(5) as u64, Relaxed);
            counters.bytes.fetch_add(bytes, Relaxed);
            grpc_reply(0, None)
        }
        Err(e) => {
            counters.errors.fetch_add(1, Relaxed);
            grpc_reply(3, Some(e))
        }
    }
}

/// Unframes, decompresses and counts one gRPC request body: (spans, uncompressed bytes).
fn sink_count(body: &[u8], encoding: &str, traces: bool) -> Result<(u64, u64), &'static str> {
    let (&flag, rest) = body.split_first().ok_or("empty body")?;
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or("short prefix")? as usize;
    let msg = rest
        .get(4..4 + len)
        .ok_or("message shorter than its prefix")?;
    let owned;
    let plain: &[u8] = match (flag, encoding) {
        (0, _) => msg,
        (1, "gzip") => {
            let mut out = Vec::with_capacity(msg.len() * 4);
            flate2::read::GzDecoder::new(msg)
                .read_to_end(&mut out)
                .map_err(|_| "bad gzip")?;
            owned = out;
            &owned
        }
        (1, "zstd") => {
            owned = zstd::stream::decode_all(msg).map_err(|_| "bad zstd")?;
            &owned
        }
        _ => return Err("unsupported grpc-encoding"),
    };
    let spans = if traces {
        count_spans(plain).map_err(|_| "invalid protobuf")?
    } else {
        0
    };
    Ok((spans, plain.len() as u64))
}

/// `GET http://addr/stats` of a sink.
pub async fn fetch_sink_stats(addr: SocketAddr) -> Result<SinkStats, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("sink {addr}: {e}"))?;
    s.write_all(b"GET /stats HTTP/1.1\r\nhost: sink\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("sink {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("sink {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("sink {addr}: malformed answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "sink {addr}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    // Bodies of known length come unchunked from hyper.
    serde_json::from_str(body.trim()).map_err(|e| format!("sink {addr}: {e}"))
}

// ---------------------------------------------------------------- load generator

/// What the OTLP load generator runs.
#[derive(Clone, Debug)]
pub struct OtlpLoadConfig {
    /// The OTLP/gRPC receiver under test.
    pub target: SocketAddr,
    /// Spans per export request.
    pub spans_per_request: usize,
    /// TCP connections (h2c).
    pub connections: usize,
    /// Export calls in flight per connection (closed loop).
    pub streams_per_connection: usize,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Excluded from results.
    pub warmup: Duration,
    /// Per-call timeout (counted as a failure).
    pub timeout: Duration,
    /// Processes whose CPU time and peak RSS are sampled over the measured period.
    pub pids: Vec<u32>,
    /// A sink whose `/stats` tell how many spans arrived (delivered vs sent).
    pub sink: Option<SocketAddr>,
    /// After the load stops, how long to wait for the sink to have received everything sent.
    pub drain: Duration,
}

impl Default for OtlpLoadConfig {
    fn default() -> Self {
        OtlpLoadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 4317)),
            spans_per_request: 100,
            connections: 4,
            streams_per_connection: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            pids: Vec::new(),
            sink: None,
            drain: Duration::from_secs(5),
        }
    }
}

/// What one OTLP load run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OtlpLoadReport {
    pub target: String,
    pub spans_per_request: usize,
    /// Average encoded size of one request (protobuf, uncompressed) and of one span in it.
    pub request_bytes: u64,
    pub span_bytes: u64,
    pub connections: usize,
    pub streams_per_connection: usize,
    /// Length of the measured period.
    pub duration_s: f64,
    /// Export calls answered OK / failed over the whole run (warm-up included).
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Spans of calls answered OK over the whole run (warm-up included).
    pub spans_sent: u64,
    /// Spans acknowledged during the measured period, and per second.
    pub spans_sent_measured: u64,
    pub sent_spans_per_second: f64,
    /// Spans the sink received during the measured period (when a sink is given), and per second.
    pub spans_delivered_measured: Option<u64>,
    pub delivered_spans_per_second: Option<f64>,
    /// Spans the sink received over the whole run, after draining.
    pub spans_delivered: Option<u64>,
    /// `spans_sent - spans_delivered` (negative: the sink got more, e.g. retried duplicates).
    pub spans_lost: Option<i64>,
    /// Spans per CPU-second of the first sampled process (delivered spans when a sink is given).
    pub spans_per_cpu_second: Option<f64>,
    pub processes: Vec<ProcessUsage>,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    failed: AtomicU64,
    spans: AtomicU64,
    stop: AtomicBool,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn export_once(
    sender: &mut H2Sender,
    uri: &http::Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = Request::post(uri.clone())
        .version(http::Version::HTTP_2)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let call = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let status = if let Some(s) = parts.headers.get("grpc-status") {
            (s.clone(), parts.headers.get("grpc-message").cloned())
        } else {
            let collected = body.collect().await.map_err(|e| e.to_string())?;
            let t = collected.trailers().cloned().unwrap_or_default();
            (
                t.get("grpc-status")
                    .cloned()
                    .ok_or("response without grpc-status")?,
                t.get("grpc-message").cloned(),
            )
        };
        if status.0 != "0" {
            return Err(format!(
                "grpc-status {} {}",
                status.0.to_str().unwrap_or("?"),
                status
                    .1
                    .as_ref()
                    .and_then(|m| m.to_str().ok())
                    .unwrap_or("")
            ));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

async fn stream_loop(
    mut sender: H2Sender,
    uri: http::Uri,
    pool: Arc<Vec<Bytes>>,
    start: usize,
    cfg: Arc<OtlpLoadConfig>,
    shared: Arc<Shared>,
) {
    let mut i = start;
    while !shared.stop.load(Relaxed) {
        let Some(body) = pool.get(i % pool.len().max(1)).cloned() else {
            return;
        };
        i = i.wrapping_add(1);
        match export_once(&mut sender, &uri, body, cfg.timeout).await {
            Ok(()) => {
                shared.ok.fetch_add(1, Relaxed);
                shared
                    .spans
                    .fetch_add(cfg.spans_per_request as u64, Relaxed);
            }
            Err(e) => {
                shared.fail(e);
                // A refusing forwarder (memory limit) or a broken connection: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs the OTLP load (closed loop) and returns what it measured.
pub async fn run_otlp_load(cfg: OtlpLoadConfig) -> Result<OtlpLoadReport, String> {
    if cfg.connections == 0 || cfg.streams_per_connection == 0 || cfg.spans_per_request == 0 {
        return Err("connections, streams and spans per request must be at least 1".into());
    }
    let cfg = Arc::new(cfg);
    let pool = Arc::new(payload_pool(cfg.spans_per_request));
    let request_bytes =
        pool.iter().map(|b| b.len() as u64 - 5).sum::<u64>() / pool.len().max(1) as u64;
    let uri: http::Uri = format!("http://{}{TRACE_EXPORT_PATH}", cfg.target)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let shared = Arc::new(Shared::default());
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..cfg.connections {
        let stream = TcpStream::connect(cfg.target)
            .await
            .map_err(|e| format!("connect to {}: {e}", cfg.target))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", cfg.target))?;
        tokio::spawn(conn);
        for s in 0..cfg.streams_per_connection {
            tasks.spawn(stream_loop(
                sender.clone(),
                uri.clone(),
                pool.clone(),
                c * cfg.streams_per_connection + s,
                cfg.clone(),
                shared.clone(),
            ));
        }
    }

    tokio::time::sleep(cfg.warmup).await;
    let mut sampler = ProcessSampler::new(&cfg.pids);
    let sink_before = match cfg.sink {
        Some(a) => Some(fetch_sink_stats(a).await?),
        None => None,
    };
    sampler.begin();
    let sent_before = shared.spans.load(Relaxed);
    let began = Instant::now();
    let end = began + cfg.duration;
    while Instant::now() < end {
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).min(end)).await;
        sampler.sample_memory();
    }
    let sent_after = shared.spans.load(Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let processes = sampler.finish();
    let sink_after = match cfg.sink {
        Some(a) => Some(fetch_sink_stats(a).await?),
        None => None,
    };

    shared.stop.store(true, Relaxed);
    while tasks.join_next().await.is_some() {}
    let spans_sent = shared.spans.load(Relaxed);

    // Wait until the forwarder delivered everything it acknowledged (its batch timeout).
    let mut spans_delivered = None;
    if let Some(a) = cfg.sink {
        let deadline = Instant::now() + cfg.drain;
        loop {
            let got = fetch_sink_stats(a).await?.spans;
            spans_delivered = Some(got);
            if got >= spans_sent || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let measured_sent = sent_after - sent_before;
    let delivered_measured = match (sink_before, sink_after) {
        (Some(b), Some(a)) => Some(a.spans.saturating_sub(b.spans)),
        _ => None,
    };
    let per_cpu_base = delivered_measured.unwrap_or(measured_sent);
    let spans_per_cpu_second = processes
        .first()
        .filter(|p| p.cpu_seconds > 0.0)
        .map(|p| per_cpu_base as f64 / p.cpu_seconds);
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(OtlpLoadReport {
        target: cfg.target.to_string(),
        spans_per_request: cfg.spans_per_request,
        request_bytes,
        span_bytes: request_bytes / cfg.spans_per_request as u64,
        connections: cfg.connections,
        streams_per_connection: cfg.streams_per_connection,
        duration_s: elapsed,
        requests_ok: shared.ok.load(Relaxed),
        requests_failed: shared.failed.load(Relaxed),
        spans_sent,
        spans_sent_measured: measured_sent,
        sent_spans_per_second: measured_sent as f64 / elapsed,
        spans_delivered_measured: delivered_measured,
        delivered_spans_per_second: delivered_measured.map(|d| d as f64 / elapsed),
        spans_delivered,
        spans_lost: spans_delivered.map(|d| spans_sent as i64 - d as i64),
        spans_per_cpu_second,
        processes,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn spans_are_realistic_and_counted() {
        let req = trace_request(100);
        let bytes = req.encode_to_vec();
        let per_span = bytes.len() / 100;
        assert!((450..=560).contains(&per_span), "{per_span} bytes per span");
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!((span.attributes.len(), span.events.len()), (10, 1));
        assert_eq!(count_spans(&bytes).unwrap(), 100);
        let scan = wire::scan(otlp_mesh_telemetry::Signal::Traces, &bytes).unwrap();
        assert_eq!((scan.items, scan.invalid), (100, 0));
        // Concatenated requests (what a forwarder's batching produces) count as the sum.
        assert_eq!(count_spans(&[bytes.clone(), bytes].concat()).unwrap(), 200);
        let pool = payload_pool(1000);
        assert!(pool.len() >= 4 && pool[0] != pool[1]);
    }

    #[test]
    fn sink_counts_gzip_and_zstd() {
        use std::io::Write;
        let msg = trace_request(7).encode_to_vec();
        let plain = grpc_frame(&msg);
        assert_eq!(sink_count(&plain, "identity", true).unwrap().0, 7);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&msg).unwrap();
        let mut framed = grpc_frame(&gz.finish().unwrap()).to_vec();
        framed[0] = 1;
        assert_eq!(
            sink_count(&framed, "gzip", true).unwrap(),
            (7, msg.len() as u64)
        );
        let mut z = grpc_frame(&zstd::bulk::compress(&msg, 1).unwrap()).to_vec();
        z[0] = 1;
        assert_eq!(sink_count(&z, "zstd", true).unwrap().0, 7);
        assert!(sink_count(&z, "br", true).is_err());
    }

    #[tokio::test]
    async fn generator_against_the_sink_counts_every_span() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(SinkCounters::default());
        let server = tokio::spawn(serve_sink(listener, counters.clone()));
        let report = run_otlp_load(OtlpLoadConfig {
            target: addr,
            spans_per_request: 10,
            connections: 2,
            streams_per_connection: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            sink: Some(addr),
            pids: vec![std::process::id()],
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(report.requests_ok > 10, "{report:?}");
        assert_eq!(report.requests_failed, 0, "{report:?}");
        assert_eq!(report.spans_sent, report.requests_ok * 10);
        assert_eq!(report.spans_delivered, Some(report.spans_sent));
        assert_eq!(report.spans_lost, Some(0));
        assert!(report.spans_per_cpu_second.unwrap() > 0.0);
        assert_eq!(counters.snapshot().spans, report.spans_sent);
        server.abort();
    }
}
