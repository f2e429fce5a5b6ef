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
use otlp_mesh_telemetry::{Batch, MemoryLimiter, Priority, Registry, Signal, Telemetry};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Spans a sink received: (trace id, span id, service.name of the span's resource).
type Received = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>, String)>>>;

/// A minimal OTLP/gRPC trace server (h2c); answers every export with success.
async fn sink() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let g = g.clone();
                    async move { Ok::<_, Infallible>(export(req, &g).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, got)
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
