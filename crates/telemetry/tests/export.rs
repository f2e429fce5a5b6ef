//! Exporters against real OTLP servers on 127.0.0.1: retry per the specification, compression,
//! partial success, and the persistent queue across restarts.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp_mesh_config::telemetry::{BatchConfig, ExporterConfig};
use otlp_mesh_telemetry::export::retry::{code, status_details_with_retry_info};
use otlp_mesh_telemetry::export::{Exporter, ExporterStatsSnapshot};
use otlp_mesh_telemetry::{Batch, MemoryLimiter, Signal};
use prost::Message;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Body = BoxBody<Bytes, Infallible>;

/// What a test server saw.
#[derive(Default)]
struct Seen {
    /// Requests received, with their arrival time.
    requests: Mutex<Vec<Instant>>,
    /// Spans of requests answered with success, by span id.
    spans: Mutex<HashMap<Vec<u8>, Vec<Span>>>,
    /// `grpc-encoding` / `content-encoding` of each request.
    encodings: Mutex<Vec<String>>,
    /// Requests whose headers arrived (before any gate).
    arrived: AtomicU64,
}

impl Seen {
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn span_count(&self) -> usize {
        self.spans.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// A decoded request, for the handler to answer.
struct Req {
    /// 1-based number of the request at this server.
    n: u64,
    headers: HeaderMap,
    spans: Vec<Span>,
}

type Handler = Arc<dyn Fn(&Req) -> Response<Body> + Send + Sync>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn decompress(encoding: &str, data: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        "zstd" => zstd::decode_all(data).unwrap(),
        _ => data.to_vec(),
    }
}

/// Serves HTTP/1.1 and h2c on `listener`; gRPC requests are unframed. Spans of requests
/// answered with success (HTTP 200 and, for gRPC, grpc-status 0) are recorded.
fn serve(listener: TcpListener, handler: Handler) -> Arc<Seen> {
    serve_with(listener, handler, None, None)
}

/// Like [`serve`], over TLS when `tls` is set.
fn serve_tls(
    listener: TcpListener,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Arc<Seen> {
    serve_with(listener, handler, tls, None)
}

/// Like [`serve`]; with a `gate`, each request takes one permit from it before it is answered.
fn serve_with(
    listener: TcpListener,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: Option<Arc<Semaphore>>,
) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let counter = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, handler, counter) = (s.clone(), handler.clone(), counter.clone());
            let (tls, gate) = (tls.clone(), gate.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, handler, counter) = (seen.clone(), handler.clone(), counter.clone());
                    let gate = gate.clone();
                    async move {
                        seen.arrived.fetch_add(1, Ordering::Relaxed);
                        if let Some(g) = gate {
                            g.acquire().await.unwrap().forget();
                        }
                        Ok::<_, Infallible>(handle(req, &seen, &handler, &counter).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    seen
}

async fn handle(
    req: Request<Incoming>,
    seen: &Seen,
    handler: &Handler,
    counter: &AtomicU64,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let raw = body.collect().await.unwrap().to_bytes();
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let encoding_header = if grpc {
        "grpc-encoding"
    } else {
        "content-encoding"
    };
    let encoding = parts
        .headers
        .get(encoding_header)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let message = if grpc {
        assert_eq!(parts.uri.path(), Signal::Traces.grpc_path());
        assert_eq!(parts.headers["te"], "trailers");
        let compressed = raw[0] == 1;
        let len = u32::from_be_bytes(raw[1..5].try_into().unwrap()) as usize;
        assert_eq!(raw.len(), 5 + len, "one gRPC message");
        if compressed {
            decompress(&encoding, &raw[5..])
        } else {
            raw[5..].to_vec()
        }
    } else {
        assert_eq!(parts.uri.path(), "/otlp/v1/traces");
        assert_eq!(parts.headers["content-type"], "application/x-protobuf");
        decompress(&encoding, &raw)
    };
    let request = ExportTraceServiceRequest::decode(message.as_slice()).unwrap();
    let spans: Vec<Span> = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    seen.requests.lock().unwrap().push(Instant::now());
    seen.encodings.lock().unwrap().push(encoding);
    let req = Req {
        n,
        headers: parts.headers,
        spans,
    };
    let resp = handler(&req);
    let ok = resp.status() == StatusCode::OK
        && (!grpc || resp.headers().get("grpc-status").is_none_or(|s| s == "0"));
    if ok {
        let mut map = seen.spans.lock().unwrap();
        for s in req.spans {
            map.entry(s.span_id.clone()).or_default().push(s);
        }
    }
    resp
}

/// A gRPC response that ends with `code` in the trailers (or headers when `trailers_only`).
fn grpc_status(code: i32, message: &str, details: Option<String>) -> Response<Body> {
    let mut b = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", message);
    if let Some(d) = details {
        b = b.header("grpc-status-details-bin", d);
    }
    b.body(full(Bytes::new())).unwrap()
}

/// A successful gRPC response carrying `resp` and the status in trailers.
fn grpc_ok(resp: &ExportTraceServiceResponse) -> Response<Body> {
    let msg = resp.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(body))
        .unwrap()
}

fn span(id: u64) -> Span {
    Span {
        trace_id: [7u8; 16].to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        name: format!("span-{id}"),
        start_time_unix_nano: 1_000 + id,
        end_time_unix_nano: 2_000 + id,
        ..Default::default()
    }
}

/// One export request holding spans `ids`.
fn batch(ids: std::ops::Range<u64>) -> Batch {
    let spans: Vec<Span> = ids.clone().map(span).collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch::new(
        Signal::Traces,
        Bytes::from(req.encode_to_vec()),
        ids.end - ids.start,
    )
}

/// The first exporter and the batch settings of a YAML config.
fn config(yaml: &str) -> (ExporterConfig, BatchConfig) {
    let cfg = otlp_mesh_config::parse_str(yaml, "test.yaml").unwrap();
    let t = cfg.telemetry.unwrap().value;
    (t.exporters[0].value.clone(), t.batch)
}

fn limiter() -> Arc<MemoryLimiter> {
    Arc::new(MemoryLimiter::new(64 << 20, 96 << 20))
}

/// Starts a receiver's enqueue of `batch` and checks that it is paced: it waits for room
/// instead of returning.
async fn paced_enqueue(
    exp: &Exporter,
    batch: Batch,
) -> tokio::task::JoinHandle<Result<(), otlp_mesh_telemetry::export::QueueFull>> {
    let paced = exp.stats().paced_enqueues;
    let waiting = tokio::spawn({
        let exp = exp.clone();
        async move { exp.enqueue(batch).await }
    });
    wait_for("the enqueue to wait", Duration::from_secs(5), || {
        exp.stats().paced_enqueues == paced + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "enqueue did not wait for room");
    waiting
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn traces(s: &ExporterStatsSnapshot) -> &otlp_mesh_telemetry::export::SignalStatsSnapshot {
    s.signal(Signal::Traces)
}

/// Every span id in `ids` arrived exactly once and unchanged.
fn assert_exactly_once(seen: &Seen, ids: std::ops::Range<u64>) {
    let spans = seen.spans.lock().unwrap();
    assert_eq!(spans.len() as u64, ids.end - ids.start, "distinct spans");
    for id in ids {
        let got = spans
            .get(&id.to_be_bytes().to_vec())
            .unwrap_or_else(|| panic!("span {id} missing"));
        assert_eq!(got.len(), 1, "span {id} arrived {} times", got.len());
        assert_eq!(got[0], span(id));
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test]
async fn grpc_retries_unavailable_and_resource_exhausted_then_delivers_everything_once() {
    let (l, addr) = listener().await;
    let handler: Handler = Arc::new(|r: &Req| {
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert!(r.headers.contains_key("grpc-timeout"));
        match r.n {
            1 | 2 => grpc_status(code::UNAVAILABLE, "warming up", None),
            3 => grpc_status(
                code::RESOURCE_EXHAUSTED,
                "slow down",
                Some(status_details_with_retry_info(
                    code::RESOURCE_EXHAUSTED,
                    "slow down",
                    Duration::from_millis(30),
                )),
            ),
            // The first success reports one rejected span (partial success).
            4 => grpc_ok(&ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 1,
                    error_message: "one span too old".into(),
                }),
            }),
            _ => grpc_ok(&ExportTraceServiceResponse::default()),
        }
    });
    let seen = serve(l, handler);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 100, timeout: 20ms }}
  exporters:
    - name: grpc
      otlp_grpc:
        endpoint: http://{addr}
        compression: gzip
        timeout: 2s
        headers: {{ authorization: "Bearer t0ken" }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 10s }}
"#
    ));
    let exp = Exporter::start("grpc".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    for i in 0..50 {
        exp.enqueue(batch(i * 10..i * 10 + 10)).await.unwrap();
    }
    wait_for("500 spans", Duration::from_secs(10), || {
        let s = exp.stats();
        traces(&s).items_sent + traces(&s).items_failed.rejected == 500
    })
    .await;
    assert_exactly_once(&seen, 0..500);
    let s = exp.stats();
    let t = traces(&s);
    assert_eq!(t.retries, 3);
    assert_eq!(t.batches_sent, 5, "10 batches of 10 merged per request");
    assert_eq!(t.items_failed.rejected, 1);
    assert_eq!(t.items_sent, 499);
    assert_eq!(seen.count(), 8);
    assert!(seen.encodings.lock().unwrap().iter().all(|e| e == "gzip"));
    assert_eq!(
        (s.queued_bytes, s.queued_items, s.in_flight_requests),
        (0, 0, 0)
    );

    let mut prom = String::new();
    exp.render_prometheus(&mut prom);
    assert!(
        prom.contains(
            r#"otlp_mesh_exporter_sent_items_total{exporter="grpc",signal="traces"} 499"#
        )
    );
    assert!(prom.contains(
        r#"otlp_mesh_exporter_failed_items_total{exporter="grpc",signal="traces",reason="rejected"} 1"#
    ));
    exp.shutdown(Duration::from_secs(1)).await;
    assert!(
        exp.enqueue(batch(0..1)).await.is_err(),
        "closed after shutdown"
    );
}

#[tokio::test]
async fn grpc_permanent_status_is_dropped_and_counted() {
    let (l, addr) = listener().await;
    let handler: Handler =
        Arc::new(|_: &Req| grpc_status(code::INVALID_ARGUMENT, "bad%20request", None));
    let seen = serve(l, handler);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 100, timeout: 10ms }}
  exporters:
    - name: grpc
      otlp_grpc: {{ endpoint: "http://{addr}", compression: zstd }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms }}
"#
    ));
    let exp = Exporter::start("grpc".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    exp.enqueue(batch(0..7)).await.unwrap();
    wait_for("the drop", Duration::from_secs(5), || {
        traces(&exp.stats()).items_failed.permanent_error == 7
    })
    .await;
    let s = exp.stats();
    assert_eq!((traces(&s).retries, seen.count()), (0, 1));
    assert_eq!(seen.encodings.lock().unwrap()[0], "zstd");
    exp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn grpc_retries_stop_after_max_elapsed_time() {
    let (l, addr) = listener().await;
    let handler: Handler = Arc::new(|_: &Req| grpc_status(code::UNAVAILABLE, "down", None));
    let seen = serve(l, handler);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 100, timeout: 10ms }}
  exporters:
    - name: grpc
      otlp_grpc: {{ endpoint: "http://{addr}" }}
      retry: {{ initial_interval: 10ms, max_interval: 40ms, max_elapsed_time: 300ms }}
"#
    ));
    let exp = Exporter::start("grpc".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    let started = Instant::now();
    exp.enqueue(batch(0..3)).await.unwrap();
    wait_for("giving up", Duration::from_secs(5), || {
        traces(&exp.stats()).items_failed.retries_exhausted == 3
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(seen.count() >= 4, "{} attempts", seen.count());
    assert_eq!(exp.stats().queued_bytes, 0);
    exp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn http_honours_retry_after_then_delivers_and_drops_on_400() {
    let (l, addr) = listener().await;
    let handler: Handler = Arc::new(|r: &Req| {
        if r.spans.iter().any(|s| s.name == "span-1000") {
            return Response::builder()
                .status(400)
                .header("content-type", "text/plain")
                .body(full("no such thing"))
                .unwrap();
        }
        match r.n {
            1 => Response::builder()
                .status(503)
                .header("retry-after", "1")
                .body(full(Bytes::new()))
                .unwrap(),
            _ => Response::builder()
                .status(200)
                .header("content-type", "application/x-protobuf")
                .body(full(ExportTraceServiceResponse::default().encode_to_vec()))
                .unwrap(),
        }
    });
    let seen = serve(l, handler);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 1000, timeout: 10ms }}
  exporters:
    - name: http
      otlp_http: {{ endpoint: "http://{addr}/otlp/", compression: gzip }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 10s }}
"#
    ));
    let exp = Exporter::start("http".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    exp.enqueue(batch(0..20)).await.unwrap();
    wait_for("20 spans", Duration::from_secs(5), || {
        traces(&exp.stats()).items_sent == 20
    })
    .await;
    assert_exactly_once(&seen, 0..20);
    {
        let times = seen.requests.lock().unwrap();
        assert_eq!(times.len(), 2);
        let gap = times[1] - times[0];
        assert!(
            gap >= Duration::from_millis(990),
            "Retry-After honoured: {gap:?}"
        );
    }
    assert_eq!(traces(&exp.stats()).retries, 1);

    exp.enqueue(batch(1000..1005)).await.unwrap();
    wait_for("the 400 drop", Duration::from_secs(5), || {
        traces(&exp.stats()).items_failed.permanent_error == 5
    })
    .await;
    assert_eq!(seen.count(), 3, "a 400 is not retried");
    assert!(seen.encodings.lock().unwrap().iter().all(|e| e == "gzip"));
    exp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn memory_queue_refuses_when_full() {
    // Nothing listens here: everything stays queued.
    let (l, addr) = listener().await;
    drop(l);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 10, timeout: 10ms, max_bytes: 1KiB }}
  exporters:
    - name: full
      otlp_http: {{ endpoint: "http://{addr}" }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 10s }}
      queue: {{ max_bytes: 2KiB }}
"#
    ));
    let memory = limiter();
    let exp = Exporter::start("full".into(), &cfg, &batch_cfg, memory.clone())
        .await
        .unwrap();
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..100 {
        match exp.enqueue(batch(i * 5..i * 5 + 5)).await {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(accepted > 0 && refused > 0, "{accepted} accepted");
    let s = exp.stats();
    assert!(s.queued_bytes <= 2048);
    assert_eq!(s.queue_full_refusals, refused);
    assert_eq!(memory.used(), s.queued_bytes);
    exp.shutdown(Duration::from_millis(50)).await;
    // What could not be sent by the deadline is dropped, counted and released.
    let s = exp.stats();
    assert_eq!(traces(&s).items_failed.shutdown, accepted * 5);
    assert_eq!(memory.used(), 0);
}

#[tokio::test]
async fn receivers_wait_for_a_busy_healthy_backend_and_not_for_a_failing_one() {
    // The backend answers only when the test hands out permits.
    let (l, addr) = listener().await;
    let gate = Arc::new(Semaphore::new(0));
    let ok: Handler = Arc::new(|_: &Req| grpc_ok(&ExportTraceServiceResponse::default()));
    let seen = serve_with(l, ok, None, Some(gate.clone()));
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 5, timeout: 10ms }}
  exporters:
    - name: paced
      otlp_grpc: {{ endpoint: "http://{addr}", compression: none }}
"#
    ));
    let exp = Exporter::start("paced".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    // Four full requests fill the sending slots; a fifth waits in the queue.
    for i in 0..4 {
        exp.enqueue(batch(i * 5..i * 5 + 5)).await.unwrap();
        wait_for("request in flight", Duration::from_secs(5), || {
            exp.stats().in_flight_requests == i + 1
        })
        .await;
    }
    exp.enqueue(batch(20..25)).await.unwrap();
    assert_eq!(exp.stats().paced_enqueues, 0);
    // The next receiver waits: the backend is healthy, only busy.
    let waiting = paced_enqueue(&exp, batch(25..30)).await;
    assert_eq!(
        exp.stats().queued_items,
        25,
        "the waiting batch is not queued"
    );
    // Receivers ask before reading a body: still busy, so a short wait times out.
    assert!(!exp.ready(Duration::from_millis(50)).await);
    // One answer frees a slot: the queued request goes out and the waiting one gets in.
    gate.add_permits(1);
    waiting.await.unwrap().unwrap();
    gate.add_permits(100);
    wait_for("all delivered", Duration::from_secs(5), || {
        seen.span_count() == 30
    })
    .await;
    assert_exactly_once(&seen, 0..30);
    exp.shutdown(Duration::from_secs(1)).await;

    // A failing backend: nobody waits, the queue absorbs the outage.
    let (l, addr) = listener().await;
    let down: Handler = Arc::new(|_: &Req| grpc_status(code::UNAVAILABLE, "down", None));
    let _seen = serve(l, down);
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 5, timeout: 10ms }}
  exporters:
    - name: down
      otlp_grpc: {{ endpoint: "http://{addr}", compression: none }}
      retry: {{ initial_interval: 5s, max_interval: 5s, max_elapsed_time: 60s }}
"#
    ));
    let exp = Exporter::start("down".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    exp.enqueue(batch(0..5)).await.unwrap();
    wait_for("a failed attempt", Duration::from_secs(5), || {
        traces(&exp.stats()).retries >= 1
    })
    .await;
    for i in 1..20 {
        exp.enqueue(batch(i * 5..i * 5 + 5)).await.unwrap();
    }
    assert!(exp.ready(Duration::from_secs(5)).await);
    let s = exp.stats();
    assert_eq!(s.paced_enqueues, 0);
    assert_eq!(s.queued_items, 100);
    exp.shutdown(Duration::from_millis(10)).await;
}

/// Receivers wait once the requests in flight and the queue hold 1½ full requests, the
/// requests in flight counted by the bodies they send: uncompressed, the batches themselves;
/// compressed, only the compressed body.
#[tokio::test]
async fn receivers_wait_once_one_and_a_half_requests_are_held_counting_bodies_as_sent() {
    // Batches of ten spans with ids of four digits all encode to the same length `b`.
    let ten = |k: u64| batch(1000 + k * 10..1010 + k * 10);
    let b = ten(0).len() as u64;
    assert!((0..12).all(|k| ten(k).len() as u64 == b));
    for compression in ["none", "gzip"] {
        let (l, addr) = listener().await;
        let gate = Arc::new(Semaphore::new(0));
        let ok: Handler = Arc::new(|_: &Req| grpc_ok(&ExportTraceServiceResponse::default()));
        let seen = serve_with(l, ok, None, Some(gate.clone()));
        // A full request is four batches (by bytes); only full requests go before shutdown.
        let (cfg, batch_cfg) = config(&format!(
            r#"
telemetry:
  batch: {{ size: 100000, timeout: 1h, max_bytes: {} }}
  exporters:
    - name: held
      otlp_grpc: {{ endpoint: "http://{addr}", compression: {compression} }}
"#,
            4 * b
        ));
        let exp = Exporter::start("held".into(), &cfg, &batch_cfg, limiter())
            .await
            .unwrap();
        for k in 0..4 {
            exp.enqueue(ten(k)).await.unwrap();
        }
        // Its body was prepared (compressed) before it was sent.
        wait_for(
            "the full request at the backend",
            Duration::from_secs(5),
            || seen.arrived.load(Ordering::Relaxed) == 1,
        )
        .await;
        assert_eq!(exp.stats().in_flight_requests, 1);
        exp.enqueue(ten(4)).await.unwrap();
        assert!(!exp.busy(), "{compression}: 4b in flight + b queued");
        exp.enqueue(ten(5)).await.unwrap();
        // Uncompressed, the request in flight holds its four batches: with two more queued,
        // 1½ full requests are held. Compressed, it holds far less; a third batch still gets in.
        assert_eq!(
            exp.busy(),
            compression == "none",
            "{compression}: 2b queued"
        );
        if compression == "gzip" {
            exp.enqueue(ten(6)).await.unwrap();
            assert!(!exp.busy(), "gzip: 3b queued beside a compressed body");
            gate.add_permits(100);
            exp.shutdown(Duration::from_secs(5)).await;
            assert_exactly_once(&seen, 1000..1070);
            continue;
        }
        let waiting = paced_enqueue(&exp, ten(6)).await;
        assert!(!exp.ready(Duration::from_millis(50)).await);
        // The answer releases the request in flight: three batches queued, room again.
        gate.add_permits(1);
        waiting.await.unwrap().unwrap();
        assert!(!exp.busy());
        gate.add_permits(100);
        exp.shutdown(Duration::from_secs(5)).await;
        assert_exactly_once(&seen, 1000..1070);
    }
}

#[tokio::test]
async fn persistent_queue_survives_restart_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (l, addr) = listener().await;
    drop(l); // the backend is down at first
    let (cfg, batch_cfg) = config(&format!(
        r#"
telemetry:
  batch: {{ size: 25, timeout: 10ms }}
  exporters:
    - name: durable
      otlp_grpc: {{ endpoint: "http://{addr}", timeout: 1s }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 100ms }}
      queue: {{ dir: "{}", fsync: always }}
"#,
        dir.path().display()
    ));
    let exp = Exporter::start("durable".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    for i in 0..20 {
        exp.enqueue(batch(i * 5..i * 5 + 5)).await.unwrap();
    }
    // Retries go on past max_elapsed_time: the data is on disk, never dropped.
    wait_for("retries", Duration::from_secs(5), || {
        traces(&exp.stats()).retries >= 12
    })
    .await;
    let s = exp.stats();
    assert!(s.persistent);
    assert_eq!(traces(&s).items_sent, 0);
    assert_eq!(traces(&s).items_failed, Default::default());
    assert_eq!(s.queued_items, 100);
    exp.shutdown(Duration::from_millis(100)).await;
    drop(exp);

    // A new exporter on the same directory replays everything once the backend is up.
    let exp = Exporter::start("durable".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    assert_eq!(traces(&exp.stats()).replayed_items, 100);
    let l = TcpListener::bind(addr).await.unwrap();
    let handler: Handler = Arc::new(|_: &Req| grpc_ok(&ExportTraceServiceResponse::default()));
    let seen = serve(l, handler);
    wait_for("replayed spans", Duration::from_secs(10), || {
        seen.span_count() >= 100
            && exp.stats().queued_items == 0
            && traces(&exp.stats()).items_sent >= 100
    })
    .await;
    assert_exactly_once(&seen, 0..100);
    assert_eq!(traces(&exp.stats()).items_sent, 100);
    exp.shutdown(Duration::from_secs(1)).await;
    drop(exp);

    // Acknowledged data is not replayed again.
    let exp = Exporter::start("durable".into(), &cfg, &batch_cfg, limiter())
        .await
        .unwrap();
    assert_eq!(traces(&exp.stats()).replayed_items, 0);
    assert_eq!(exp.stats().queued_items, 0);
    exp.shutdown(Duration::from_millis(10)).await;
}

/// The test certificates of the discovery crate: a CA and a server certificate for 127.0.0.1.
fn testdata(file: &str) -> String {
    format!(
        "{}/../discovery/testdata/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(testdata("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(testdata("server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn grpc_and_http_over_tls() {
    for kind in ["otlp_grpc", "otlp_http"] {
        let (l, addr) = listener().await;
        let handler: Handler = Arc::new(move |_: &Req| {
            if kind == "otlp_grpc" {
                grpc_ok(&ExportTraceServiceResponse::default())
            } else {
                Response::builder()
                    .status(200)
                    .body(full(Bytes::new()))
                    .unwrap()
            }
        });
        let seen = serve_tls(l, handler, Some(tls_acceptor()));
        let path = if kind == "otlp_http" { "/otlp" } else { "" };
        let (cfg, batch_cfg) = config(&format!(
            r#"
telemetry:
  batch: {{ size: 100, timeout: 10ms }}
  exporters:
    - name: tls
      {kind}: {{ endpoint: "https://{addr}{path}", ca_file: "{}" }}
      retry: {{ initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 2s }}
"#,
            testdata("ca.pem")
        ));
        let exp = Exporter::start("tls".into(), &cfg, &batch_cfg, limiter())
            .await
            .unwrap();
        exp.enqueue(batch(0..10)).await.unwrap();
        wait_for(kind, Duration::from_secs(5), || {
            traces(&exp.stats()).items_sent == 10
        })
        .await;
        assert_exactly_once(&seen, 0..10);
        assert_eq!(traces(&exp.stats()).retries, 0, "{kind}");
        exp.shutdown(Duration::from_secs(1)).await;
    }
}
