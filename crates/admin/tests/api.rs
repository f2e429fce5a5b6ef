//! The telemetry query API over a real store: status codes and JSON fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode as OtlpStatus,
};
use otlp_mesh_admin::api_router;
use otlp_mesh_telemetry::store::Store;
use otlp_mesh_telemetry::{Batch, Signal};
use prost::Message;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tower::ServiceExt;

const MS: u64 = 1_000_000;
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn trace_id() -> Vec<u8> {
    (0..16)
        .map(|i| u8::from_str_radix(&TRACE[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn span(id: u8, parent: Option<u8>, name: &str, kind: SpanKind, start: u64, dur_ms: u64) -> Span {
    Span {
        trace_id: trace_id(),
        span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent
            .map(|p| vec![0, 0, 0, 0, 0, 0, 0, p])
            .unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur_ms * MS,
        ..Default::default()
    }
}

/// A store holding one trace gateway → orders (orders fails), a log of it and a gauge.
fn store() -> Arc<Store> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t = now - 2_000 * MS;
    let mut failing = span(3, Some(2), "GET /orders", SpanKind::Server, t + 5 * MS, 30);
    failing.status = Some(Status {
        message: "db down".into(),
        code: OtlpStatus::Error as i32,
    });
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: resource("gateway"),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(1, None, "GET /", SpanKind::Server, t, 50),
                        span(2, Some(1), "call orders", SpanKind::Client, t + 2 * MS, 40),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                resource: resource("orders"),
                scope_spans: vec![ScopeSpans {
                    spans: vec![failing],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    let store = Arc::new(Store::new(8 << 20));
    store
        .ingest(&Batch::new(
            Signal::Traces,
            Bytes::from(req.encode_to_vec()),
            3,
        ))
        .unwrap();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("orders"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: t + 10 * MS,
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("db down".into())),
                    }),
                    trace_id: trace_id(),
                    span_id: vec![0, 0, 0, 0, 0, 0, 0, 3],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    store
        .ingest(&Batch::new(
            Signal::Logs,
            Bytes::from(logs.encode_to_vec()),
            1,
        ))
        .unwrap();
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("orders"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    unit: "{item}".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: t,
                            value: Some(number_data_point::Value::AsInt(7)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    store
        .ingest(&Batch::new(
            Signal::Metrics,
            Bytes::from(metrics.encode_to_vec()),
            1,
        ))
        .unwrap();
    store
}

async fn get(store: &Arc<Store>, uri: &str) -> (StatusCode, Value) {
    let resp = api_router(store.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/json",
        "{uri}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn bad(store: &Arc<Store>, uri: &str, parameter: &str) {
    let (status, v) = get(store, uri).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
    assert_eq!(v["parameter"], json!(parameter), "{uri}: {v}");
    assert!(
        v["error"].as_str().unwrap().contains(parameter),
        "{uri}: {v}"
    );
}

#[tokio::test]
async fn services_map_and_window() {
    let st = store();
    let (status, v) = get(&st, "/api/services?window=5m").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["windowSeconds"], json!(300.0));
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["service"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["gateway", "orders"]);
    assert_eq!(v["nodes"][1]["requests"], json!(1));
    assert_eq!(v["nodes"][1]["errorRate"], json!(1.0));
    assert_eq!(v["edges"].as_array().unwrap().len(), 1);
    let e = &v["edges"][0];
    assert_eq!(
        (&e["source"], &e["target"], &e["requests"], &e["errors"]),
        (&json!("gateway"), &json!("orders"), &json!(1), &json!(1))
    );
    assert_eq!(e["p50Ms"], json!(30.0));
    assert!((e["ratePerSecond"].as_f64().unwrap() - 1.0 / 300.0).abs() < 1e-9);

    // Everything older than one second is outside a 1s window.
    let (_, v) = get(&st, "/api/services?window=1s").await;
    assert_eq!(v["nodes"], json!([]));
    let (_, v) = get(&st, "/api/services").await;
    assert_eq!(v["windowSeconds"], json!(null));
    assert_eq!(v["edges"].as_array().unwrap().len(), 1);

    bad(&st, "/api/services?window=5", "window").await;
    bad(&st, "/api/services?window=abc", "window").await;
    bad(&st, "/api/services?window=0s", "window").await;
}

#[tokio::test]
async fn trace_listing_and_filters() {
    let st = store();
    let (status, v) = get(&st, "/api/traces").await;
    assert_eq!(status, StatusCode::OK);
    let t = &v["traces"][0];
    assert_eq!(t["traceId"], json!(TRACE));
    assert_eq!(t["rootService"], json!("gateway"));
    assert_eq!(t["rootName"], json!("GET /"));
    assert_eq!(t["spanCount"], json!(3));
    assert_eq!(t["services"], json!(["gateway", "orders"]));
    assert_eq!(t["errorCount"], json!(1));
    assert_eq!(t["durationMs"], json!(50.0));
    assert!(t["startTimeUnixNano"].is_string());

    for (q, n) in [
        ("service=orders", 1),
        ("service=nope", 0),
        ("service=", 1),
        ("status=error", 1),
        ("status=any", 1),
        ("min_duration_ms=50", 1),
        ("min_duration_ms=50.5", 0),
        ("operation=call%20orders", 1),
        ("limit=5000", 1),
    ] {
        let (status, v) = get(&st, &format!("/api/traces?{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        assert_eq!(v["traces"].as_array().unwrap().len(), n, "{q}");
    }
    bad(&st, "/api/traces?limit=ten", "limit").await;
    bad(&st, "/api/traces?limit=0", "limit").await;
    bad(&st, "/api/traces?limit=-1", "limit").await;
    bad(&st, "/api/traces?min_duration_ms=fast", "min_duration_ms").await;
    bad(&st, "/api/traces?min_duration_ms=-3", "min_duration_ms").await;
    bad(&st, "/api/traces?status=broken", "status").await;
}

#[tokio::test]
async fn one_trace_by_id() {
    let st = store();
    let (status, v) = get(&st, &format!("/api/traces/{}", TRACE.to_uppercase())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["traceId"], json!(TRACE));
    let spans = v["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vec!["GET /", "call orders", "GET /orders"],
        "by start time"
    );
    let s = &spans[2];
    assert_eq!(s["spanId"], json!("0000000000000003"));
    assert_eq!(s["parentSpanId"], json!("0000000000000002"));
    assert_eq!(s["service"], json!("orders"));
    assert_eq!(s["kind"], json!("SERVER"));
    assert_eq!(s["status"], json!({"code": "ERROR", "message": "db down"}));
    assert_eq!(s["durationMs"], json!(30.0));

    let (status, v) = get(&st, "/api/traces/0af7651916cd43dd8448eb211c80319d").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319d")
    );
    bad(&st, "/api/traces/xyz", "trace_id").await;
    bad(&st, &format!("/api/traces/{TRACE}00"), "trace_id").await;
    bad(&st, &format!("/api/traces/{}", "0".repeat(32)), "trace_id").await;
}

#[tokio::test]
async fn logs_metrics_and_stats() {
    let st = store();
    let (status, v) = get(&st, &format!("/api/logs?trace_id={TRACE}")).await;
    assert_eq!(status, StatusCode::OK);
    let l = &v["logs"][0];
    assert_eq!(l["body"], json!("db down"));
    assert_eq!(l["severityText"], json!("ERROR"));
    assert_eq!(l["severityNumber"], json!(17));
    assert_eq!(l["traceId"], json!(TRACE));
    assert_eq!(l["spanId"], json!("0000000000000003"));
    assert_eq!(l["service"], json!("orders"));
    assert!(l["timeUnixNano"].is_string());
    for (q, n) in [
        ("service=orders", 1),
        ("service=gateway", 0),
        ("min_severity=error", 1),
        ("min_severity=21", 0),
        ("trace_id=0af7651916cd43dd8448eb211c80319d", 0),
        ("limit=1", 1),
    ] {
        let (status, v) = get(&st, &format!("/api/logs?{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        assert_eq!(v["logs"].as_array().unwrap().len(), n, "{q}");
    }
    bad(&st, "/api/logs?trace_id=abc", "trace_id").await;
    bad(&st, "/api/logs?limit=x", "limit").await;
    bad(&st, "/api/logs?min_severity=loud", "min_severity").await;

    let (status, v) = get(&st, "/api/metrics?name=queue.depth&service=orders").await;
    assert_eq!(status, StatusCode::OK);
    let m = &v["metrics"][0];
    assert_eq!(m["name"], json!("queue.depth"));
    assert_eq!(m["kind"], json!("gauge"));
    assert_eq!(m["unit"], json!("{item}"));
    assert_eq!(m["value"], json!(7));
    let (_, v) = get(&st, "/api/metrics?name=other").await;
    assert_eq!(v["metrics"], json!([]));

    let (status, v) = get(&st, "/api/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &v["spans"],
            &v["traces"],
            &v["logs"],
            &v["metricPoints"],
            &v["evicted"]
        ),
        (&json!(3), &json!(1), &json!(1), &json!(1), &json!(0))
    );
    assert_eq!(v["maxBytes"], json!(8 << 20));
    assert!(v["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn dashboard_page() {
    let resp = api_router(store())
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let html = std::str::from_utf8(&body).unwrap();
    assert!(html.contains("/api/services") && html.contains("/api/traces/"));
}

#[tokio::test]
async fn merges_into_another_router() {
    let app = axum::Router::new()
        .route("/live", axum::routing::get(|| async { "live\n" }))
        .merge(api_router(store()));
    for (uri, code) in [("/live", 200), ("/api/stats", 200), ("/nope", 404)] {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code, "{uri}");
    }
}
