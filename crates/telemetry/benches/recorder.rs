//! Cost of the proxy's own telemetry per request: start the trace, inject `traceparent` into an
//! upstream request's headers, record the attempt, encode the span(s) into the shard's batch.
//! Baseline in the same run: the same two spans built as `opentelemetry-proto` messages and
//! encoded with prost, the straightforward way the recorder's direct encoder replaces.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Version};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use otlp_mesh_telemetry::recorder::{
    AttemptRecord, Recorder, RequestRecord, RequestTarget, RouteNames,
};
use otlp_mesh_telemetry::{MemoryLimiter, Pipeline, Registry};
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn recorder(yaml: &str) -> Arc<Recorder> {
    let cfg = otlp_mesh_config::parse_str(yaml, "bench.yaml")
        .ok()
        .and_then(|c| c.telemetry)
        .map(|t| t.value)
        .unwrap_or_default();
    // No sink: full batches are handed to a flusher that never runs here, then dropped and
    // counted, so each iteration pays its share of a batch's buffer like the proxy does.
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(MemoryLimiter::new(1 << 30, 1 << 30)),
        None,
        vec![],
    ));
    Recorder::start(&cfg, pipeline, Registry::new())
}

/// A typical proxied GET's headers as they reach the upstream.
fn upstream_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert("host", HeaderValue::from_static("shop.example"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h
}

/// One request through the recorder, as `handle` and the attempt layer drive it.
fn one_request(
    rec: &Recorder,
    names: &Arc<RouteNames>,
    incoming: &HeaderMap,
    upstream: &mut HeaderMap,
) {
    let start = Instant::now();
    let Some(trace) = rec.begin(incoming, start) else {
        return;
    };
    let span_id = trace.begin_attempt(upstream);
    if !trace.client_spans() {
        // The only attempt of a route without retries: counted, not timed.
        trace.count_attempt();
    } else {
        trace.end_attempt(AttemptRecord {
            span_id,
            start_unix_nanos: trace.unix_nanos(start),
            end_unix_nanos: trace.unix_nanos(start + Duration::from_micros(80)),
            number: 1,
            status: 200,
            error: None,
        });
    }
    rec.record(RequestRecord {
        start_unix_nanos: trace.start_unix_nanos,
        trace: Some(trace),
        duration: Duration::from_micros(95),
        method: Method::GET,
        target: RequestTarget::new("/api/orders/17", Some("shop.example")),
        version: Version::HTTP_11,
        peer: "10.0.3.17"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        names: names.clone(),
        status: 200,
        error: None,
        faults: None,
    });
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// The same server and client span as prost messages, encoded.
fn prost_spans(out: &mut Vec<u8>) {
    let trace_id = fastrand::u128(..).to_be_bytes().to_vec();
    let server_id = fastrand::u64(..).to_be_bytes().to_vec();
    let client_id = fastrand::u64(..).to_be_bytes().to_vec();
    let start = 1_764_000_000_000_000_000u64;
    let server = Span {
        trace_id: trace_id.clone(),
        span_id: server_id.clone(),
        name: "GET orders".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 95_000,
        attributes: vec![
            text("http.request.method", "GET"),
            text("url.path", "/api/orders/17"),
            text("url.scheme", "http"),
            text("http.route", "orders"),
            text("otlp_mesh.listener", "edge"),
            text("otlp_mesh.cluster", "orders-v1"),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            text("server.address", "shop.example"),
            text("network.peer.address", "10.0.3.17"),
            text("network.protocol.version", "1.1"),
        ],
        ..Default::default()
    };
    let client = Span {
        trace_id,
        span_id: client_id,
        parent_span_id: server_id,
        name: "GET".into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start + 5_000,
        end_time_unix_nano: start + 85_000,
        attributes: vec![
            text("http.request.method", "GET"),
            text("url.path", "/api/orders/17"),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            text("otlp_mesh.cluster", "orders-v1"),
        ],
        ..Default::default()
    };
    // As items of a batch: each span a length-delimited field.
    for s in [server, client] {
        let _ = s.encode_length_delimited(out);
    }
}

fn bench(c: &mut Criterion) {
    // Recorder::start spawns its flusher: it needs a runtime, which is never driven here.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let _guard = rt.enter();
    let names = RouteNames::new("edge", Some("orders"), Some("orders-v1"));
    let incoming = HeaderMap::new();
    let mut g = c.benchmark_group("recorder");
    let mut out = Vec::with_capacity(1 << 20);
    g.bench_function("baseline_prost_two_spans", |b| {
        b.iter(|| {
            if out.len() > 1 << 19 {
                out.clear();
            }
            prost_spans(&mut out);
            black_box(out.len())
        })
    });
    for (name, yaml) in [
        (
            "client_spans",
            "telemetry:\n  tracing: { sampling_ratio: 1.0 }\n",
        ),
        (
            "server_span_only",
            "telemetry:\n  tracing: { sampling_ratio: 1.0, client_spans: false }\n",
        ),
        (
            "client_spans_and_access_log",
            "telemetry:\n  tracing: { sampling_ratio: 1.0 }\n  access_log: { otlp: true }\n",
        ),
        (
            "unsampled",
            "telemetry:\n  tracing: { sampling_ratio: 0.0 }\n",
        ),
    ] {
        let rec = recorder(yaml);
        // The upstream request's headers are made and dropped outside the measured time (the
        // proxy has them anyway).
        g.bench_function(name, |b| {
            b.iter_batched(
                upstream_headers,
                |mut upstream| {
                    one_request(&rec, &names, &incoming, &mut upstream);
                    upstream
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
