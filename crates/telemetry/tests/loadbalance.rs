//! The trace-id load-balancing exporter against three real OTLP/gRPC servers on 127.0.0.1:
//! every span of a trace reaches exactly one server, traces spread evenly, and the mapping is
//! the same for the same backend list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp_mesh_telemetry::export::loadbalance::{LoadBalancingExporter, backend_name};
use otlp_mesh_telemetry::{Batch, MemoryLimiter, Priority, QueueFull, Registry, Signal, Telemetry};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Spans a sink received: (trace id, span id, service.name of the span's resource).
type Received = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>, String)>>>;

/// A minimal OTLP/gRPC trace server (h2c); answers every export with success.
async fn sink() -> (String, Received) {
    let (url, got, _) = holding_sink(false).await;
    (url, got)
}

/// A sink whose requests wait (unread, unanswered) while its switch is on.
async fn holding_sink(hold: bool) -> (String, Received, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let g = got.clone();
    let (switch, held) = watch::channel(hold);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let g = g.clone();
                    let mut held = held.clone();
                    async move {
                        let _ = held.wait_for(|h| !h).await;
                        Ok::<_, Infallible>(export(req, &g).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, got, switch)
}

async fn export(req: Request<Incoming>, got: &Received) -> Response<BoxBody<Bytes, Infallible>> {
    assert_eq!(req.uri().path(), Signal::Traces.grpc_path());
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(raw[0], 0, "uncompressed gRPC message");
    let len = u32::from_be_bytes(raw[1..5].try_into().unwrap()) as usize;
    let msg = ExportTraceServiceRequest::decode(&raw[5..5 + len]).unwrap();
    {
        let mut got = got.lock().unwrap();
        for rs in msg.resource_spans {
            let service = match rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.first())
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.as_ref())
            {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                _ => String::new(),
            };
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push((s.trace_id, s.span_id, service.clone()));
                }
            }
        }
    }
    let body = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap()
}

fn trace_id(t: u64) -> Vec<u8> {
    // Spread ids like random ones would be (splitmix64 of the index).
    let mut z = t.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    [t.to_be_bytes(), (z ^ (z >> 31)).to_be_bytes()].concat()
}

/// Batches of mixed traces: span `s` of trace `t` is in batch `s % 5` under resource
/// `svc-{t % 3}`.
fn batches(traces: u64, spans_per_trace: u64) -> Vec<Batch> {
    (0..5)
        .map(|b| {
            let mut resource_spans = Vec::new();
            let mut items = 0;
            for svc in 0..3 {
                let spans: Vec<Span> = (0..traces)
                    .filter(|t| t % 3 == svc)
                    .flat_map(|t| (0..spans_per_trace).map(move |s| (t, s)))
                    .filter(|(_, s)| s % 5 == b)
                    .map(|(t, s)| Span {
                        trace_id: trace_id(t),
                        span_id: (t * 1000 + s + 1).to_be_bytes().to_vec(),
                        name: format!("t{t}s{s}"),
                        ..Default::default()
                    })
                    .collect();
                items += spans.len() as u64;
                resource_spans.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(format!("svc-{svc}"))),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
            let req = ExportTraceServiceRequest { resource_spans };
            Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), items)
        })
        .collect()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn yaml(urls: &[String]) -> String {
    format!(
        "telemetry:\n  store: {{ enabled: false }}\n  batch: {{ timeout: 20ms }}\n  exporters:\n    - name: lb\n      loadbalancing:\n        backends: [ {} ]\n        compression: none\n",
        urls.join(", ")
    )
}

/// Which sink got each trace, checking every trace landed whole on one sink.
fn placement(sinks: &[Received], traces: u64, spans: u64) -> HashMap<Vec<u8>, usize> {
    let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        for (trace, span, service) in s.lock().unwrap().iter() {
            assert!(seen.insert(span.clone()), "span {span:?} arrived twice");
            let t = u64::from_be_bytes(trace[..8].try_into().unwrap());
            assert_eq!(service, &format!("svc-{}", t % 3), "resource kept");
            if let Some(prev) = at.insert(trace.clone(), i) {
                assert_eq!(prev, i, "trace {t} split across sinks {prev} and {i}");
            }
        }
    }
    assert_eq!(seen.len() as u64, traces * spans);
    assert_eq!(at.len() as u64, traces);
    at
}

#[tokio::test]
async fn every_trace_reaches_exactly_one_backend_evenly_and_stably() {
    let mut urls = Vec::new();
    let mut sinks = Vec::new();
    for _ in 0..3 {
        let (u, s) = sink().await;
        urls.push(u);
        sinks.push(s);
    }
    let cfg = otlp_mesh_config::parse_str(&yaml(&urls), "lb.yaml").unwrap();
    let t = cfg.telemetry.unwrap().value;
    let memory = Arc::new(MemoryLimiter::new(64 << 20, 96 << 20));
    let lb = LoadBalancingExporter::start("lb".into(), &t.exporters[0].value, &t.batch, memory)
        .await
        .unwrap();
    // Backends are named after their address, in URL order.
    let mut sorted = urls.clone();
    sorted.sort();
    assert_eq!(lb.urls(), sorted);
    assert_eq!(
        lb.backends()
            .iter()
            .map(|b| b.name().to_string())
            .collect::<Vec<_>>(),
        sorted
            .iter()
            .map(|u| backend_name("lb", u))
            .collect::<Vec<_>>()
    );
    for b in batches(100, 10) {
        lb.enqueue(b, Priority::Receiver).await.unwrap();
    }
    let total = || sinks.iter().map(|s| s.lock().unwrap().len()).sum::<usize>();
    wait_for("1000 spans", || total() == 1000).await;
    let at = placement(&sinks, 100, 10);
    let mut per_sink = [0u32; 3];
    for (trace, i) in &at {
        per_sink[*i] += 1;
        assert_eq!(
            lb.backend_for_trace(trace).as_ref(),
            Some(&urls[*i]),
            "placement follows the hash"
        );
    }
    for n in per_sink {
        assert!((20..=47).contains(&n), "uneven spread {per_sink:?}");
    }
    // The sinks saw every span; the exporters count a batch when its response is read, which
    // may be a moment later.
    let sent = || -> u64 {
        lb.backends()
            .iter()
            .map(|b| b.stats().signal(Signal::Traces).items_sent)
            .sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sent() < 1000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sent(), 1000);
    lb.shutdown(Duration::from_secs(1)).await;

    // The same backends, listed in another order, through the whole telemetry runtime: each
    // trace lands on the same server as before.
    for s in &sinks {
        s.lock().unwrap().clear();
    }
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let cfg = otlp_mesh_config::parse_str(&yaml(&reversed), "lb.yaml").unwrap();
    let telemetry = Telemetry::start(&cfg.telemetry.unwrap().value, Registry::new())
        .await
        .unwrap();
    for b in batches(100, 10) {
        telemetry
            .pipeline()
            .submit(b, Priority::Receiver)
            .await
            .unwrap();
    }
    wait_for("1000 spans again", || total() == 1000).await;
    assert_eq!(placement(&sinks, 100, 10), at, "mapping is stable");
    let mut prom = String::new();
    telemetry.render_prometheus(&mut prom);
    let b2 = backend_name("lb", &urls[2]);
    assert!(
        prom.contains(&format!("exporter=\"{b2}\"")),
        "per-backend metrics"
    );
    assert!(
        prom.contains("otlp_mesh_loadbalancer_backends{exporter=\"lb\"} 3"),
        "{prom}"
    );
    telemetry.shutdown(Duration::from_secs(1)).await;
}

/// Writes the endpoints file of a `file` resolver atomically (write, then rename).
fn write_backends(path: &std::path::Path, urls: &[&String]) {
    let list: Vec<String> = urls
        .iter()
        .map(|u| format!("- address: \"{}\"\n", u.trim_start_matches("http://")))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, list.concat()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn resolver_yaml(file: &std::path::Path, extra: &str) -> String {
    format!(
        "telemetry:\n  store: {{ enabled: false }}\n  batch: {{ timeout: 20ms }}\n  exporters:\n    - name: lb\n      loadbalancing:\n        resolver: {{ file: {{ path: '{}', interval: 20ms }} }}\n        compression: none\n{extra}",
        file.display()
    )
}

async fn start_lb(yaml: &str) -> LoadBalancingExporter {
    let cfg = otlp_mesh_config::parse_str(yaml, "lb.yaml").unwrap();
    let t = cfg.telemetry.unwrap().value;
    let memory = Arc::new(MemoryLimiter::new(64 << 20, 96 << 20));
    LoadBalancingExporter::start("lb".into(), &t.exporters[0].value, &t.batch, memory)
        .await
        .unwrap()
}

async fn wait_for_urls(lb: &LoadBalancingExporter, urls: &[&String]) {
    let mut want: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    want.sort();
    wait_for("the resolved backend set", || {
        lb.urls() == want && lb.retiring().is_empty()
    })
    .await;
}

/// One batch holding every span of traces `ids` (`spans` each, span id = trace * 1000 + s + 1).
fn whole_traces(ids: impl IntoIterator<Item = u64>, spans: u64) -> Batch {
    let spans: Vec<Span> = ids
        .into_iter()
        .flat_map(|t| (0..spans).map(move |s| (t, s)))
        .map(|(t, s)| Span {
            trace_id: trace_id(t),
            span_id: (t * 1000 + s + 1).to_be_bytes().to_vec(),
            name: format!("t{t}s{s}"),
            ..Default::default()
        })
        .collect();
    let items = spans.len() as u64;
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), items)
}

/// Every span arrived exactly once, and every trace on exactly one sink; returns trace → sink.
fn exactly_once(sinks: &[&Received], spans: usize) -> HashMap<u64, usize> {
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        for (trace, span, _) in s.lock().unwrap().iter() {
            assert!(seen.insert(span.clone()), "span {span:?} arrived twice");
            let t = u64::from_be_bytes(trace[..8].try_into().unwrap());
            if let Some(prev) = at.insert(t, i) {
                assert_eq!(prev, i, "trace {t} split across sinks {prev} and {i}");
            }
        }
    }
    assert_eq!(seen.len(), spans, "spans received");
    at
}

fn count(r: &Received) -> usize {
    r.lock().unwrap().len()
}

/// Enqueues `batch` like a sender would: a refusal (nothing queued) is retried.
async fn send_until_taken(lb: &LoadBalancingExporter, batch: Batch) {
    let start = Instant::now();
    while lb.enqueue(batch.clone(), Priority::Receiver).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "batch refused for 20s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_resolver_adds_and_removes_backends_while_spans_flow() {
    let (a, sa) = sink().await;
    let (b, sb) = sink().await;
    let (c, sc) = sink().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends.yaml");
    write_backends(&file, &[&a, &b]);
    let lb = start_lb(&resolver_yaml(&file, "        drain_timeout: 2s\n")).await;
    wait_for_urls(&lb, &[&a, &b]).await;
    let names: Vec<String> = lb.backends().iter().map(|e| e.name().to_string()).collect();
    let mut want = vec![backend_name("lb", &a), backend_name("lb", &b)];
    want.sort();
    assert_eq!(names, want);

    // Steady: traces spread over several batches land whole where the hash says.
    for batch in batches(100, 10) {
        send_until_taken(&lb, batch).await;
    }
    let sinks = [&sa, &sb, &sc];
    let total = || sinks.iter().map(|s| count(s)).sum::<usize>();
    wait_for("1000 spans", || total() == 1000).await;
    let urls = [&a, &b, &c];
    for (t, i) in exactly_once(&sinks, 1000) {
        assert_eq!(lb.backend_for_trace(&trace_id(t)).as_ref(), Some(urls[i]));
    }

    // Spans keep flowing (each batch whole traces) while a backend is added, then another
    // removed.
    let b_before_flow = count(&sb);
    let stop = Arc::new(AtomicBool::new(false));
    let flowing = tokio::spawn({
        let (lb, stop) = (lb.clone(), stop.clone());
        async move {
            let mut next = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                send_until_taken(&lb, whole_traces(next..next + 20, 5)).await;
                next += 20;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            next
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    write_backends(&file, &[&a, &b, &c]);
    wait_for_urls(&lb, &[&a, &b, &c]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    write_backends(&file, &[&a, &c]);
    wait_for_urls(&lb, &[&a, &c]).await;
    // Once `b` has drained what it held and stopped, nothing more reaches it.
    wait_for("b to finish draining", || lb.retiring().is_empty()).await;
    let b_after_removal = count(&sb);
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let sent_until = flowing.await.unwrap();
    let flowed = ((sent_until - 1000) * 5) as usize;
    wait_for("every flowing span", || total() == 1000 + flowed).await;
    exactly_once(&sinks, 1000 + flowed);
    assert!(
        b_after_removal > b_before_flow,
        "spans flowed to b before its removal"
    );
    assert_eq!(
        count(&sb),
        b_after_removal,
        "spans reached a removed backend"
    );
    assert!(count(&sc) > 0, "the added backend got traces");

    // Steady again over {a, c}: multi-batch traces land whole where the hash says, none on b.
    for s in sinks {
        s.lock().unwrap().clear();
    }
    for batch in batches(100, 10) {
        send_until_taken(&lb, batch).await;
    }
    wait_for("1000 more spans", || total() == 1000).await;
    for (t, i) in exactly_once(&sinks, 1000) {
        assert_ne!(i, 1, "trace {t} on the removed backend");
        assert_eq!(lb.backend_for_trace(&trace_id(t)).as_ref(), Some(urls[i]));
    }
    let mut prom = String::new();
    LoadBalancingExporter::render_prometheus_all(std::slice::from_ref(&lb), &mut prom);
    for line in [
        "otlp_mesh_loadbalancer_backends{exporter=\"lb\"} 2",
        "otlp_mesh_loadbalancer_retiring_backends{exporter=\"lb\"} 0",
        "otlp_mesh_loadbalancer_backend_set_changes_total{exporter=\"lb\"} 3",
        "otlp_mesh_loadbalancer_dropped_items_total{exporter=\"lb\"} 0",
        "otlp_mesh_loadbalancer_resolver_healthy{exporter=\"lb\",kind=\"file\"} 1",
    ] {
        assert!(prom.contains(line), "{line} in\n{prom}");
    }
    lb.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_that_never_answers_has_its_spans_rerouted() {
    removed_silent_backend_is_rerouted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_with_a_persistent_queue_is_rerouted_and_its_directory_removed() {
    removed_silent_backend_is_rerouted(true).await;
}

async fn removed_silent_backend_is_rerouted(persistent: bool) {
    let (a, sa) = sink().await;
    let (b, sb, _held) = holding_sink(true).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends.yaml");
    write_backends(&file, &[&a, &b]);
    let queues = dir.path().join("queues");
    let mut extra = "        drain_timeout: 300ms\n".to_string();
    if persistent {
        extra += &format!("      queue: {{ dir: '{}' }}\n", queues.display());
    }
    let lb = start_lb(&resolver_yaml(&file, &extra)).await;
    wait_for_urls(&lb, &[&a, &b]).await;
    // 100 traces of 4 spans over 4 batches; `b`'s share waits in requests it never answers
    // (and in its queue behind them).
    for batch in batches(100, 4).into_iter().take(4) {
        send_until_taken(&lb, batch).await;
    }
    let on_b: usize = (0..100)
        .filter(|t| lb.backend_for_trace(&trace_id(*t)).as_ref() == Some(&b))
        .count()
        * 4;
    assert!(on_b > 0 && on_b < 400, "{on_b}");
    wait_for("a's share", || count(&sa) == 400 - on_b).await;

    // `b` leaves the set: after its 300ms drain, its requests are cut short and everything it
    // held goes to `a`, once.
    write_backends(&file, &[&a]);
    wait_for_urls(&lb, &[&a]).await;
    wait_for("all 400 spans at a", || count(&sa) == 400).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    exactly_once(&[&sa, &sb], 400);
    assert_eq!(count(&sb), 0);
    assert_eq!(lb.rerouted_items(), on_b as u64);
    assert_eq!(lb.dropped_items(), 0);
    if persistent {
        // Everything `b` held was handed over: its queue directory is gone, `a`'s stays.
        assert!(queues.join(backend_name("lb", &a)).is_dir());
        assert!(!queues.join(backend_name("lb", &b)).exists());
    }
    lb.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_refuses_the_whole_batch_and_the_retry_duplicates_nothing() {
    let (a, sa) = sink().await;
    let (b, sb, held) = holding_sink(true).await;
    let yaml = format!(
        "telemetry:\n  store: {{ enabled: false }}\n  batch: {{ timeout: 20ms, max_bytes: 1KiB }}\n  exporters:\n    - name: lb\n      loadbalancing:\n        backends: [ {a}, {b} ]\n        compression: none\n        timeout: 60s\n      queue: {{ max_bytes: 2KiB }}\n"
    );
    let lb = start_lb(&yaml).await;
    // Every batch holds five traces for each backend (consecutive ids could all fall to one,
    // leaving nothing to check about the other's part).
    let (mut for_a, mut for_b) = (Vec::new(), Vec::new());
    for t in 0.. {
        if for_a.len() >= 5000 && for_b.len() >= 5000 {
            break;
        }
        let mine = match lb.backend_for_trace(&trace_id(t)).as_ref() == Some(&a) {
            true => &mut for_a,
            false => &mut for_b,
        };
        if mine.len() < 5000 {
            mine.push(t);
        }
    }
    let batch_ids = |i: usize| {
        let (a, b) = (&for_a[i * 5..i * 5 + 5], &for_b[i * 5..i * 5 + 5]);
        a.iter().chain(b).copied().collect::<Vec<u64>>()
    };
    // `b` answers nothing, so its queue (2KiB, counting requests in flight) fills while `a`
    // drains: batches are taken until one is refused.
    let mut accepted = 0u64;
    let mut refused = None;
    for i in 0..1000usize {
        let batch = whole_traces(batch_ids(i), 2);
        match lb.enqueue(batch.clone(), Priority::Receiver).await {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_eq!(e, QueueFull::Full);
                refused = Some((i as u64, batch));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (r, refused) = refused.expect("b's queue filled up");
    assert_eq!(r, accepted);
    // `a` drains everything it was given, and nothing of the refused batch: its part (five
    // traces, two spans each) was not queued although `a` had room.
    let a_share = |batches: u64| (batches * 5 * 2) as usize;
    wait_for("a's share of the accepted batches", || {
        count(&sa) == a_share(r)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&sa), a_share(r), "a got part of a refused batch");
    let stats: HashMap<String, u64> = lb
        .backends()
        .iter()
        .map(|e| (e.name().to_string(), e.stats().queue_full_refusals))
        .collect();
    // Usually `b` refused; on a loaded machine `a`'s small queue may be the one that was full
    // at that moment. Either way the other part was not queued (checked above and below).
    assert!(stats[&backend_name("lb", &a)] + stats[&backend_name("lb", &b)] > 0);

    // `b` answers again; the sender retries the refused batch: every span arrives once.
    held.send_replace(false);
    send_until_taken(&lb, refused).await;
    let spans = ((r + 1) * 20) as usize;
    wait_for("every span", || count(&sa) + count(&sb) == spans).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    exactly_once(&[&sa, &sb], spans);
    lb.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_gone_across_a_restart_has_its_persistent_queue_rerouted() {
    let (a, sa) = sink().await;
    let (b, sb, _held) = holding_sink(true).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |backends: &str| {
        format!(
            "telemetry:\n  store: {{ enabled: false }}\n  batch: {{ timeout: 20ms }}\n  exporters:\n    - name: lb\n      loadbalancing:\n        backends: [ {backends} ]\n        compression: none\n        drain_timeout: 300ms\n      queue: {{ dir: '{}' }}\n",
            dir.path().display()
        )
    };
    let lb = start_lb(&yaml(&format!("{a}, {b}"))).await;
    for batch in batches(100, 4).into_iter().take(4) {
        send_until_taken(&lb, batch).await;
    }
    let on_b: usize = (0..100)
        .filter(|t| lb.backend_for_trace(&trace_id(*t)).as_ref() == Some(&b))
        .count()
        * 4;
    wait_for("a's share", || count(&sa) == 400 - on_b).await;
    // `b` never answered: its records stay in its queue directory.
    lb.shutdown(Duration::from_millis(200)).await;
    let b_dir = dir.path().join(backend_name("lb", &b));
    assert!(b_dir.join("lb-backend-url").is_file());

    // Restarted without `b`: its queue is found, retired, and handed to `a`.
    let lb = start_lb(&yaml(&a)).await;
    wait_for("all 400 spans at a", || count(&sa) == 400).await;
    wait_for("b's retirement", || {
        lb.retiring().is_empty() && !b_dir.exists()
    })
    .await;
    exactly_once(&[&sa, &sb], 400);
    assert_eq!(lb.rerouted_items(), on_b as u64);
    lb.shutdown(Duration::from_secs(1)).await;
}
