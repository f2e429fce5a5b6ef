//! The OTLP pipeline end to end: the OpenTelemetry Python SDK and proxied requests into one
//! otlp-mesh, exported to a second otlp-mesh, read back through its query API field by field;
//! the persistent queue across `kill -9`; the memory limit's retryable answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// A backend otlp-mesh: receiver and store only.
async fn backend(grpc: SocketAddr, http: SocketAddr) -> Mesh {
    let admin = free_addr();
    Mesh::start(
        admin,
        &format!(
            "{}telemetry:\n  service_name: backend\n  tracing: {{ enabled: false }}\n  metrics: {{ enabled: false }}\n  receiver: {{ grpc: {grpc}, http: {http} }}\n",
            prelude(admin)
        ),
    )
    .await
}

async fn api(mesh: &Mesh, path: &str) -> Value {
    let r = mesh.admin_get(path).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    r.json()
}

/// The admin API's answer at `path` once it is 200 and `ready` holds for it (within 10 s):
/// telemetry reaches a store after the recorder's and the exporter's flushes.
async fn api_when(mesh: &Mesh, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let ready = &ready;
    eventually(path, Duration::from_secs(10), || async move {
        mesh.try_admin_get(path)
            .await
            .is_ok_and(|r| r.status == StatusCode::OK && ready(&r.json()))
    })
    .await;
    api(mesh, path).await
}

/// Whether an answer's `key` array holds `n` items.
fn holds(key: &'static str, n: usize) -> impl Fn(&Value) -> bool {
    move |v| v[key].as_array().is_some_and(|a| a.len() == n)
}

/// Whether an answer's `key` array holds anything.
fn has_any(key: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v[key].as_array().is_some_and(|a| !a.is_empty())
}

fn span_by_name<'a>(trace: &'a Value, name: &str) -> &'a Value {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {trace}"))
}

#[tokio::test]
async fn sdk_and_proxy_telemetry_reach_a_second_mesh_through_the_exporter() {
    let (b_grpc, b_http) = (free_addr(), free_addr());
    let b = backend(b_grpc, b_http).await;

    let upstream = Upstream::start(|_req| async {
        let mut r = Response::new(full("hello"));
        *r.status_mut() = StatusCode::OK;
        r
    })
    .await;
    let admin = free_addr();
    let (listen, a_http) = (free_addr(), free_addr());
    let a = Mesh::start(
        admin,
        &format!(
            "{}listeners:
  - name: edge
    bind: {listen}
    routes:
      - name: hello
        match: {{ path_prefix: / }}
        cluster: up
clusters:
  - name: up
    discovery: {{ static: [ {} ] }}
telemetry:
  service_name: edge
  access_log: {{ otlp: true }}
  metrics: {{ interval: 200ms }}
  receiver: {{ http: {a_http} }}
  batch: {{ timeout: 50ms }}
  exporters:
    - name: backend
      otlp_grpc: {{ endpoint: http://{b_grpc}, compression: gzip }}
",
            prelude(admin),
            upstream.addr
        ),
    )
    .await;

    let sent = python_send("http", &format!("http://{a_http}"), "shop");
    assert_eq!(sent["flushed"], true);
    let trace_id = sent["spans"][0]["traceId"].as_str().unwrap().to_string();

    let proxied_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for _ in 0..3 {
        let req = Request::get(format!("http://{listen}/orders?x=1"))
            .header(
                "traceparent",
                format!("00-{proxied_trace}-00f067aa0ba902b7-01"),
            )
            .body(empty())
            .unwrap();
        assert_eq!(send(&h1_client(), req).await.status, StatusCode::OK);
    }

    // The SDK's trace, field by field, in the backend.
    let trace = api_when(&b, &format!("/api/traces/{trace_id}"), holds("spans", 2)).await;
    for s in sent["spans"].as_array().unwrap() {
        let got = span_by_name(&trace, s["name"].as_str().unwrap());
        assert_eq!(got["spanId"], s["spanId"]);
        assert_eq!(got["service"], "shop");
        assert_eq!(got["startTimeUnixNano"], s["start"]);
        assert_eq!(got["endTimeUnixNano"], s["end"]);
        if s["parentSpanId"] == "" {
            assert!(got["parentSpanId"].is_null(), "{got}");
        } else {
            assert_eq!(got["parentSpanId"], s["parentSpanId"]);
        }
    }
    let root = span_by_name(&trace, "checkout");
    assert_eq!(root["kind"], "SERVER");
    assert_eq!(root["attributes"]["order.items"], 3);
    assert_eq!(root["attributes"]["http.request.method"], "POST");
    assert_eq!(root["events"][0]["name"], "cart loaded");
    assert_eq!(root["resource"]["deployment.environment"], "test");
    let child = span_by_name(&trace, "charge card");
    assert_eq!(child["kind"], "CLIENT");
    assert_eq!(child["status"]["code"], "ERROR");
    assert_eq!(child["status"]["message"], "card declined");
    assert_eq!(child["attributes"]["payment.provider"], "acme");

    // The SDK's log, with its trace context.
    let logs = api(&b, &format!("/api/logs?trace_id={trace_id}")).await;
    let log = &logs["logs"][0];
    assert_eq!(log["body"], sent["logs"][0]["body"]);
    assert_eq!(log["spanId"], sent["logs"][0]["spanId"]);
    assert_eq!(log["severityText"], "WARN");
    assert_eq!(log["service"], "shop");

    // The SDK's metrics.
    let m = api_when(&b, "/api/metrics?name=orders.placed", has_any("metrics")).await;
    assert_eq!(m["metrics"][0]["value"], 5);
    assert_eq!(m["metrics"][0]["attributes"]["region"], "eu");
    let h = api(&b, "/api/metrics?name=checkout.duration").await;
    assert_eq!(h["metrics"][0]["histogram"]["count"], 3);

    // The proxy's own server and client spans continue the caller's trace.
    let t = api_when(
        &b,
        &format!("/api/traces/{proxied_trace}"),
        holds("spans", 6),
    )
    .await;
    let spans = t["spans"].as_array().unwrap();
    let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "SERVER").collect();
    assert_eq!(servers.len(), 3);
    for s in &servers {
        assert_eq!(s["service"], "edge");
        assert_eq!(s["name"], "GET hello");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["attributes"]["http.route"], "hello");
        assert_eq!(s["attributes"]["url.path"], "/orders");
        assert_eq!(s["attributes"]["http.response.status_code"], 200);
        assert_eq!(s["attributes"]["network.peer.address"], "127.0.0.1");
        assert_eq!(s["attributes"]["otlp_mesh.cluster"], "up");
        let client = spans
            .iter()
            .find(|c| c["kind"] == "CLIENT" && c["parentSpanId"] == s["spanId"])
            .unwrap_or_else(|| panic!("no client span under {s}"));
        assert_eq!(client["attributes"]["http.response.status_code"], 200);
    }
    // Access logs carry the trace and span ids.
    let logs = api(&b, &format!("/api/logs?trace_id={proxied_trace}")).await;
    assert_eq!(logs["logs"].as_array().unwrap().len(), 3);
    let server_ids: HashSet<&str> = servers
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    for l in logs["logs"].as_array().unwrap() {
        assert!(server_ids.contains(l["spanId"].as_str().unwrap()), "{l}");
        assert_eq!(l["attributes"]["http.response.status_code"], 200);
    }
    // RED metrics as OTLP.
    api_when(
        &b,
        "/api/metrics?name=http.server.request.duration&service=edge",
        |v| v["metrics"][0]["histogram"]["count"] == 3,
    )
    .await;
    // The first mesh's own store has it too, and its exporter counted what it sent.
    let local = api(&a, &format!("/api/traces/{trace_id}")).await;
    assert_eq!(local["spans"].as_array().unwrap().len(), 2);
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            "otlp_mesh_exporter_sent_items_total{exporter=\"backend\",signal=\"traces\"}"
        )
        .unwrap_or(0.0)
            >= 8.0,
        "{m}"
    );
    let services = api(&b, "/api/services").await;
    let names: Vec<&str> = services["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["service"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"edge") && names.contains(&"shop"),
        "{names:?}"
    );
}

fn trace_batch(trace: u8, n: u64) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (1..=n)
                    .map(|i| Span {
                        trace_id: [[trace; 8], [0xab; 8]].concat(),
                        span_id: i.to_be_bytes().to_vec(),
                        name: format!("op-{i}"),
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 2_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn persistent_queue_delivers_everything_acknowledged_across_kill_9() {
    let queue = tempfile::tempdir().unwrap();
    let (b_grpc, b_http) = (free_addr(), free_addr());
    let admin = free_addr();
    let a_http = free_addr();
    let yaml = format!(
        "{}telemetry:
  tracing: {{ enabled: false }}
  metrics: {{ enabled: false }}
  store: {{ enabled: false }}
  receiver: {{ http: {a_http} }}
  batch: {{ timeout: 20ms, size: 100 }}
  exporters:
    - name: backend
      otlp_http: {{ endpoint: http://{b_http}, compression: zstd, timeout: 1s }}
      retry: {{ initial_interval: 50ms, max_interval: 200ms }}
      queue: {{ dir: {}, fsync: always }}
",
        prelude(admin),
        queue.path().display()
    );
    let mut a = Mesh::start(admin, &yaml).await;
    // The backend is down: every batch the receiver acknowledges is on disk only.
    const TRACES: u8 = 20;
    const SPANS: u64 = 50;
    for t in 1..=TRACES {
        let req = Request::post(format!("http://{a_http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(full(trace_batch(t, SPANS)))
            .unwrap();
        let r = send(&h1_client(), req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    a.proc.signal("KILL");
    a.proc.wait_exit(Duration::from_secs(10)).await;

    // Restart on the same queue, then bring the backend up.
    let a = Mesh::start(admin, &yaml).await;
    let b = backend(b_grpc, b_http).await;
    for t in 1..=TRACES {
        let id = hex(&[[t; 8], [0xab; 8]].concat());
        let path = format!("/api/traces/{id}");
        eventually(
            &format!("trace {t} delivered"),
            Duration::from_secs(20),
            || {
                let (b, path) = (&b, path.clone());
                async move {
                    b.try_admin_get(&path).await.is_ok_and(|r| {
                        r.status == StatusCode::OK && {
                            let ids: HashSet<String> = r.json()["spans"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|s| s["spanId"].as_str().unwrap().to_string())
                                .collect();
                            ids.len() == SPANS as usize
                        }
                    })
                }
            },
        )
        .await;
    }
    let m = a.metrics().await;
    let replayed = metric(
        &m,
        "otlp_mesh_exporter_replayed_items_total{exporter=\"backend\",signal=\"traces\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(replayed, f64::from(TRACES) * SPANS as f64, "{m}");
}

#[tokio::test]
async fn memory_limit_answers_with_retryable_statuses() {
    let dead = free_addr();
    let admin = free_addr();
    let (grpc, http) = (free_addr(), free_addr());
    let _a = Mesh::start(
        admin,
        &format!(
            "{}telemetry:
  tracing: {{ enabled: false }}
  metrics: {{ enabled: false }}
  store: {{ enabled: false }}
  receiver: {{ grpc: {grpc}, http: {http} }}
  memory_limit: {{ soft: 256KiB, hard: 512KiB }}
  batch: {{ max_bytes: 64KiB }}
  exporters:
    - otlp_http: {{ endpoint: http://{dead} }}
      retry: {{ initial_interval: 1s, max_interval: 1s }}
",
            prelude(admin)
        ),
    )
    .await;
    let body = trace_batch(1, 1000); // ~20 KiB
    let mut refused = None;
    for _ in 0..100 {
        let req = Request::post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(full(body.clone()))
            .unwrap();
        let r = send(&h1_client(), req).await;
        if r.status != StatusCode::OK {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the memory limit never refused");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{r:?}"
    );

    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let req = Request::post(format!(
        "http://{grpc}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(full(framed))
    .unwrap();
    let r = send(&h2c_client(), req).await;
    assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}"); // UNAVAILABLE
    let details = r
        .header("grpc-status-details-bin")
        .expect("RetryInfo expected");
    let delay = otlp_mesh_telemetry::otlp::status::retry_info_from_details(details.as_bytes());
    assert_eq!(delay, Some(Some(Duration::from_secs(1))), "{r:?}");
}

/// Headers of the requests an upstream got, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>;

/// The trace id and parent span id of a request's `traceparent`.
fn traceparent_ids(h: &http::HeaderMap) -> (String, String) {
    let tp = h.get("traceparent").unwrap().to_str().unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

/// An upstream that answers its first request 503 and every later one 200, keeping the
/// headers of each.
async fn first_call_fails() -> (Upstream, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let upstream = Upstream::start(move |req| {
        let log = log.clone();
        async move {
            let n = {
                let mut l = log.lock().unwrap();
                l.push(req.headers().clone());
                l.len()
            };
            let mut r = Response::new(full("x"));
            *r.status_mut() = if n == 1 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            r
        }
    })
    .await;
    (upstream, seen)
}

/// A mesh after one GET /pay that its route `flaky` retried once (the upstream answers 503
/// first): what the tests of retried requests' telemetry look at.
struct RetriedOnce {
    mesh: Mesh,
    listen: SocketAddr,
    seen: Seen,
    _upstream: Upstream,
}

impl RetriedOnce {
    /// The headers of each request the upstream has seen so far.
    fn seen(&self) -> Vec<http::HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

/// Starts [`RetriedOnce`]'s mesh, with `routes` (YAML list items) before `flaky` and
/// `telemetry` (YAML lines) under `telemetry:`, and sends its request.
async fn one_retried_request(routes: &str, telemetry: &str) -> RetriedOnce {
    let (upstream, seen) = first_call_fails().await;
    let (admin, listen) = (free_addr(), free_addr());
    let mesh = Mesh::start(
        admin,
        &format!(
            "{}listeners:
  - name: edge
    bind: {listen}
    routes:
{routes}      - name: flaky
        match: {{ path_prefix: / }}
        cluster: up
        retry: {{ attempts: 2, on: [5xx], backoff: {{ base: 1ms, max: 2ms }} }}
clusters:
  - name: up
    discovery: {{ static: [ {} ] }}
telemetry:
  service_name: edge
{telemetry}",
            prelude(admin),
            upstream.addr
        ),
    )
    .await;
    let r = get(&h1_client(), &format!("http://{listen}/pay")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2, "one request, retried once");
    RetriedOnce {
        mesh,
        listen,
        seen,
        _upstream: upstream,
    }
}

#[tokio::test]
async fn retries_get_a_client_span_each_and_b3_goes_upstream() {
    let retried = one_retried_request("", "  tracing: { propagation: [w3c, b3] }\n").await;
    let (mesh, headers) = (&retried.mesh, retried.seen());
    let parent_of = |h: &http::HeaderMap| -> (String, String) {
        let (trace, span) = traceparent_ids(h);
        let b3 = h.get("b3").unwrap().to_str().unwrap();
        assert_eq!(b3, format!("{trace}-{span}-1"), "b3 and traceparent agree");
        (trace, span)
    };
    let (trace1, span1) = parent_of(&headers[0]);
    let (trace2, span2) = parent_of(&headers[1]);
    assert_eq!(trace1, trace2, "both attempts in one trace");
    assert_ne!(span1, span2, "each attempt has its own span");

    let t = api_when(mesh, &format!("/api/traces/{trace1}"), holds("spans", 3)).await;
    let server = span_by_name(&t, "GET flaky");
    assert!(
        server["parentSpanId"].is_null(),
        "a root: no incoming context"
    );
    assert_eq!(server["attributes"]["otlp_mesh.retries"], 1);
    assert!(
        server["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "retry")
    );
    for (span_id, status, resend) in [(&span1, 503, None), (&span2, 200, Some(1))] {
        let c = t["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["spanId"] == span_id.as_str())
            .unwrap_or_else(|| panic!("no client span {span_id} in {t}"));
        assert_eq!(c["kind"], "CLIENT");
        assert_eq!(c["parentSpanId"], server["spanId"]);
        assert_eq!(c["attributes"]["http.response.status_code"], status);
        match resend {
            Some(n) => assert_eq!(c["attributes"]["http.request.resend_count"], n),
            None => assert!(c["attributes"]["http.request.resend_count"].is_null()),
        }
        let code = if status >= 400 { "ERROR" } else { "UNSET" };
        assert_eq!(c["status"]["code"], code);
    }
}

#[tokio::test]
async fn without_client_spans_every_attempt_is_a_child_of_the_server_span() {
    let steady = "      - { name: steady, match: { path_prefix: /steady }, cluster: up }\n";
    let telemetry = "  tracing: { client_spans: false }\n  access_log: { otlp: true }\n";
    let retried = one_retried_request(steady, telemetry).await;
    let (mesh, headers) = (&retried.mesh, retried.seen());
    let (trace1, span1) = traceparent_ids(&headers[0]);
    assert_eq!(
        traceparent_ids(&headers[1]),
        (trace1.clone(), span1.clone()),
        "both attempts have the same parent"
    );

    // Client spans would have been encoded and sent with the server span.
    let t = api_when(mesh, &format!("/api/traces/{trace1}"), |_| true).await;
    let spans = t["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "the server span only: {t}");
    let server = &spans[0];
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["spanId"], span1.as_str(), "the upstream's parent");
    assert_eq!(server["attributes"]["otlp_mesh.retries"], 1);
    assert!(
        server["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "retry")
    );

    // Without retries the one attempt is counted in the access log all the same.
    let listen = retried.listen;
    let r = get(&h1_client(), &format!("http://{listen}/steady")).await;
    assert_eq!(r.status, StatusCode::OK);
    let (trace3, span3) = traceparent_ids(&retried.seen()[2]);
    let logs = api_when(
        mesh,
        &format!("/api/logs?trace_id={trace3}"),
        has_any("logs"),
    )
    .await;
    let log = &logs["logs"][0];
    assert_eq!(log["spanId"], span3.as_str(), "the upstream's parent");
    assert_eq!(log["attributes"]["otlp_mesh.attempts"], 1, "{log}");
}

#[tokio::test]
async fn a_server_span_names_the_proxys_own_error_not_an_upstreams() {
    // An upstream that fails with its own `x-mesh-error` (as another mesh hop would), and a
    // cluster whose only endpoint refuses connections.
    let upstream = Upstream::start(|_req| async {
        let mut r = Response::new(full("busy"));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            "x-mesh-error",
            http::HeaderValue::from_static("circuit_open"),
        );
        r
    })
    .await;
    let dead = free_addr();
    let (admin, listen) = (free_addr(), free_addr());
    let mesh = Mesh::start(
        admin,
        &format!(
            "{}listeners:
  - name: edge
    bind: {listen}
    routes:
      - {{ name: busy, match: {{ path_prefix: /busy }}, cluster: up }}
      - {{ name: dead, match: {{ path_prefix: /dead }}, cluster: gone }}
clusters:
  - {{ name: up, discovery: {{ static: [ {} ] }} }}
  - {{ name: gone, discovery: {{ static: [ {dead} ] }} }}
telemetry:
  service_name: edge
",
            prelude(admin),
            upstream.addr
        ),
    )
    .await;
    let client = h1_client();
    for (path, trace_id, status, error_type) in [
        ("/busy", "0af7651916cd43dd8448eb211c80319c", 503, "503"),
        (
            "/dead",
            "1af7651916cd43dd8448eb211c80319d",
            502,
            "connect_failed",
        ),
        (
            "/nowhere",
            "2af7651916cd43dd8448eb211c80319e",
            404,
            "no_route",
        ),
    ] {
        let mut req = get_req(&format!("http://{listen}{path}"));
        req.headers_mut().insert(
            "traceparent",
            format!("00-{trace_id}-b7ad6b7169203331-01")
                .parse()
                .unwrap(),
        );
        let r = send(&client, req).await;
        assert_eq!(r.status.as_u16(), status, "{path}");
        let t = api_when(&mesh, &format!("/api/traces/{trace_id}"), |_| true).await;
        let server = t["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == "SERVER")
            .unwrap_or_else(|| panic!("no server span in {t}"));
        assert_eq!(
            server["attributes"]["error.type"], error_type,
            "{path}: {server}"
        );
        assert_eq!(server["status"]["code"], "ERROR", "{path}");
    }
}

#[tokio::test]
async fn a_one_worker_proxy_with_its_telemetry_and_store_stays_one_thread() {
    // The store indexes on the proxy's runtime: a second thread would make glibc and the
    // kernel charge every request's system calls for thread safety.
    let upstream = Upstream::start(|_req| async { Response::new(full("ok")) }).await;
    let (admin, listen) = (free_addr(), free_addr());
    let mesh = Mesh::start_with_args(
        admin,
        &format!(
            "{}listeners:
  - name: edge
    bind: {listen}
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, discovery: {{ static: [ {} ] }} }}
telemetry:
  service_name: edge
  tracing: {{ enabled: true, sampling_ratio: 1.0 }}
  metrics: {{ enabled: true, interval: 1s }}
",
            prelude(admin),
            upstream.addr
        ),
        &["--workers", "1"],
    )
    .await;
    let client = h1_client();
    for _ in 0..20 {
        let r = get(&client, &format!("http://{listen}/one")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The store filled (its ingest ran), and the process still has one thread.
    api_when(&mesh, "/api/traces?limit=100", holds("traces", 20)).await;
    let tasks = std::fs::read_dir(format!("/proc/{}/task", mesh.proc.pid()))
        .unwrap()
        .count();
    assert_eq!(tasks, 1, "threads of a one-worker proxy with telemetry");
}
