use super::model::attributes;
use super::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use serde_json::{Value, json};

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn tid(n: u32) -> Vec<u8> {
    let mut t = vec![0xab; 16];
    t[12..].copy_from_slice(&n.to_be_bytes());
    t
}

fn tid_hex(n: u32) -> String {
    TraceId::from_bytes(&tid(n)).unwrap().to_hex()
}

fn sid(n: u8) -> Vec<u8> {
    vec![0, 0, 0, 0, 0, 0, 1, n]
}

fn sid_hex(n: u8) -> String {
    SpanId::from_bytes(&sid(n)).unwrap().to_hex()
}

/// A span of trace `t`, id `id`, starting `start_ms` after T0 and lasting `dur_ms`.
fn span(
    t: u32,
    id: u8,
    parent: Option<u8>,
    name: &str,
    kind: pt::span::SpanKind,
    start_ms: u64,
    dur_ms: u64,
) -> pt::Span {
    pt::Span {
        trace_id: tid(t),
        span_id: sid(id),
        parent_span_id: parent.map(sid).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + (start_ms + dur_ms) * MS,
        ..Default::default()
    }
}

fn error(mut sp: pt::Span, msg: &str) -> pt::Span {
    sp.status = Some(pt::Status {
        message: msg.into(),
        code: pt::status::StatusCode::Error as i32,
    });
    sp
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", s(service)), kv("host.name", s("h1"))],
        ..Default::default()
    })
}

fn traces_batch(groups: Vec<(&str, Vec<pt::Span>)>) -> Batch {
    let req = ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(svc, spans)| pt::ResourceSpans {
                resource: resource(svc),
                scope_spans: vec![pt::ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let items = req
        .resource_spans
        .iter()
        .map(|r| r.scope_spans[0].spans.len() as u64)
        .sum();
    Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), items)
}

use pt::span::SpanKind as K;

/// A→B→C: A SERVER root 1 → A CLIENT 2 → B SERVER 3 → B CLIENT 4 → C SERVER 5 (ERROR when
/// `c_error`). Durations: 100, 90, 80, 50, 40 ms.
fn abc(t: u32, start_ms: u64, c_error: bool) -> [(&'static str, Vec<pt::Span>); 3] {
    let c = span(t, 5, Some(4), "GET /c", K::Server, start_ms + 30, 40);
    [
        (
            "a",
            vec![
                span(t, 1, None, "GET /a", K::Server, start_ms, 100),
                span(t, 2, Some(1), "call b", K::Client, start_ms + 5, 90),
            ],
        ),
        (
            "b",
            vec![
                span(t, 3, Some(2), "GET /b", K::Server, start_ms + 10, 80),
                span(t, 4, Some(3), "call c", K::Client, start_ms + 25, 50),
            ],
        ),
        ("c", vec![if c_error { error(c, "boom") } else { c }]),
    ]
}

fn store() -> Store {
    Store::new(64 << 20)
}

#[test]
fn trace_detail_keeps_every_field() {
    let st = store();
    let mut root = span(1, 1, None, "GET /orders", K::Server, 0, 120);
    root.attributes = vec![
        kv("http.request.method", s("GET")),
        kv("http.response.status_code", any_value::Value::IntValue(200)),
        kv("retry", any_value::Value::BoolValue(false)),
    ];
    root.events = vec![pt::span::Event {
        time_unix_nano: T0 + 5 * MS,
        name: "cache miss".into(),
        attributes: vec![kv("key", s("k1"))],
        ..Default::default()
    }];
    root.status = Some(pt::Status {
        message: String::new(),
        code: pt::status::StatusCode::Ok as i32,
    });
    let child = error(span(1, 2, Some(1), "SELECT", K::Client, 10, 30), "timeout");
    // Child listed first: the detail is sorted by start time anyway.
    st.ingest(&traces_batch(vec![("orders", vec![child, root])]))
        .unwrap();

    assert_eq!(st.trace(&tid_hex(2)), None);
    assert_eq!(st.trace("not-hex"), None);
    let d = st.trace(&tid_hex(1).to_uppercase()).unwrap();
    assert_eq!(d.trace_id.to_hex(), tid_hex(1));
    assert_eq!(d.spans.len(), 2);
    let r = &d.spans[0];
    assert_eq!(r.span_id.to_hex(), sid_hex(1));
    assert_eq!(r.parent_span_id, None);
    assert_eq!(&*r.service, "orders");
    assert_eq!(r.name, "GET /orders");
    assert_eq!(r.kind, SpanKind::Server);
    assert_eq!(r.start_unix_nano, T0);
    assert_eq!(r.end_unix_nano, T0 + 120 * MS);
    assert_eq!(r.duration_ms(), 120.0);
    assert_eq!(r.status.code, StatusCode::Ok);
    assert_eq!(r.resource.get("host.name"), Some(&json!("h1")));
    assert!(!r.is_error());
    let c = &d.spans[1];
    assert_eq!(c.parent_span_id.map(|p| p.to_hex()), Some(sid_hex(1)));
    assert!(c.is_error());
    assert!(
        Arc::ptr_eq(&r.resource, &c.resource),
        "resource shared per batch"
    );

    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["traceId"], json!(tid_hex(1)));
    let j = &v["spans"][0];
    assert_eq!(j["spanId"], json!(sid_hex(1)));
    assert_eq!(j["parentSpanId"], json!(null));
    assert_eq!(j["service"], json!("orders"));
    assert_eq!(j["kind"], json!("SERVER"));
    assert_eq!(j["startTimeUnixNano"], json!(T0.to_string()));
    assert_eq!(j["endTimeUnixNano"], json!((T0 + 120 * MS).to_string()));
    assert_eq!(j["durationMs"], json!(120.0));
    assert_eq!(j["status"], json!({"code": "OK", "message": ""}));
    assert_eq!(
        j["attributes"],
        json!({"http.request.method": "GET", "http.response.status_code": 200, "retry": false})
    );
    assert_eq!(
        j["events"],
        json!([{"name": "cache miss", "timeUnixNano": (T0 + 5 * MS).to_string(), "attributes": {"key": "k1"}}])
    );
    assert_eq!(j["resource"]["service.name"], json!("orders"));
    assert_eq!(v["spans"][1]["parentSpanId"], json!(sid_hex(1)));
    assert_eq!(
        v["spans"][1]["status"],
        json!({"code": "ERROR", "message": "timeout"})
    );
}

#[test]
fn trace_summaries_and_filters() {
    let st = store();
    // Trace 1: a→b→c at T0, C fails. Trace 2: a→b→c 1 s later, all fine.
    for b in abc(1, 0, true) {
        st.ingest(&traces_batch(vec![b])).unwrap();
    }
    for b in abc(2, 1000, false) {
        st.ingest(&traces_batch(vec![b])).unwrap();
    }
    // Trace 3: a single slow span of d, 2 s after T0, http 503 (an error without status).
    let mut slow = span(3, 1, None, "POST /d", K::Server, 2000, 500);
    slow.attributes = vec![kv(
        "http.response.status_code",
        any_value::Value::IntValue(503),
    )];
    st.ingest(&traces_batch(vec![("d", vec![slow])])).unwrap();

    let all = st.traces(&TraceQuery::default());
    let ids: Vec<String> = all.iter().map(|t| t.trace_id.to_hex()).collect();
    assert_eq!(
        ids,
        vec![tid_hex(3), tid_hex(2), tid_hex(1)],
        "most recent first"
    );
    let t1 = &all[2];
    assert_eq!(t1.root_service, "a");
    assert_eq!(t1.root_name, "GET /a");
    assert_eq!(t1.start_time_unix_nano, T0);
    assert_eq!(t1.duration_ms, 100.0);
    assert_eq!(t1.span_count, 5);
    assert_eq!(t1.services, vec!["a", "b", "c"]);
    assert_eq!(t1.error_count, 1);
    assert_eq!(all[1].error_count, 0);
    assert_eq!(all[0].error_count, 1);

    let v = serde_json::to_value(t1).unwrap();
    assert_eq!(
        v,
        json!({
            "traceId": tid_hex(1), "rootService": "a", "rootName": "GET /a",
            "startTimeUnixNano": T0.to_string(), "durationMs": 100.0, "spanCount": 5,
            "services": ["a", "b", "c"], "errorCount": 1
        })
    );

    let q = |f: fn(&mut TraceQuery)| {
        let mut q = TraceQuery::default();
        f(&mut q);
        st.traces(&q)
            .into_iter()
            .map(|t| t.trace_id.to_hex())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q(|q| q.service = Some("c".into())),
        vec![tid_hex(2), tid_hex(1)]
    );
    assert_eq!(q(|q| q.service = Some("zzz".into())), Vec::<String>::new());
    assert_eq!(q(|q| q.status_error = true), vec![tid_hex(3), tid_hex(1)]);
    assert_eq!(
        q(|q| q.min_duration_ms = Some(100.0)),
        vec![tid_hex(3), tid_hex(2), tid_hex(1)]
    );
    assert_eq!(q(|q| q.min_duration_ms = Some(100.5)), vec![tid_hex(3)]);
    assert_eq!(q(|q| q.limit = 1), vec![tid_hex(3)]);
    assert_eq!(q(|q| q.limit = 0), Vec::<String>::new());
    assert_eq!(
        q(|q| q.operation = Some("call c".into())),
        vec![tid_hex(2), tid_hex(1)]
    );
    assert_eq!(
        q(|q| {
            q.operation = Some("call c".into());
            q.service = Some("a".into());
        }),
        Vec::<String>::new(),
        "operation and service must match the same span"
    );
    assert_eq!(
        q(|q| {
            q.service = Some("c".into());
            q.status_error = true;
        }),
        vec![tid_hex(1)]
    );
}

#[test]
fn trace_limit_is_capped() {
    let st = store();
    let spans: Vec<pt::Span> = (0..1100)
        .map(|i| span(i, 1, None, "op", K::Server, u64::from(i), 1))
        .collect();
    st.ingest(&traces_batch(vec![("a", spans)])).unwrap();
    let q = TraceQuery {
        limit: 5000,
        ..TraceQuery::default()
    };
    assert_eq!(st.traces(&q).len(), MAX_LIMIT);
    assert_eq!(st.traces(&TraceQuery::default()).len(), DEFAULT_TRACE_LIMIT);
    assert_eq!(st.stats().traces, 1100);
}

#[test]
fn root_falls_back_to_earliest_span_until_the_root_arrives() {
    let st = store();
    let [a, b, c] = abc(1, 0, false);
    st.ingest(&traces_batch(vec![c, b])).unwrap();
    let t = &st.traces(&TraceQuery::default())[0];
    assert_eq!(
        (t.root_service.as_str(), t.root_name.as_str()),
        ("b", "GET /b")
    );
    assert_eq!(t.span_count, 3);
    st.ingest(&traces_batch(vec![a])).unwrap();
    let t = &st.traces(&TraceQuery::default())[0];
    assert_eq!(
        (t.root_service.as_str(), t.root_name.as_str()),
        ("a", "GET /a")
    );
    assert_eq!(t.span_count, 5);
    assert_eq!(t.start_time_unix_nano, T0);
}

fn node<'a>(m: &'a ServiceMap, s: &str) -> &'a ServiceNode {
    m.nodes.iter().find(|n| n.service == s).unwrap()
}

fn edge<'a>(m: &'a ServiceMap, a: &str, b: &str) -> Option<&'a ServiceEdge> {
    m.edges.iter().find(|e| e.source == a && e.target == b)
}

#[test]
fn service_map_edges_across_three_services_with_children_first() {
    let st = store();
    // Children arrive before their parents: c, then b, then a.
    let [a, b, c] = abc(1, 0, true);
    st.ingest(&traces_batch(vec![c])).unwrap();
    let m = st.services(None);
    assert_eq!(m.edges, vec![], "no parent yet, no edge");
    assert_eq!(node(&m, "c").requests, 1, "orphan span counts as an entry");
    st.ingest(&traces_batch(vec![b])).unwrap();
    let m = st.services(None);
    assert_eq!(m.edges.len(), 1);
    assert!(edge(&m, "b", "c").is_some());
    st.ingest(&traces_batch(vec![a])).unwrap();
    let m = st.services(None);
    assert_eq!(
        m.nodes
            .iter()
            .map(|n| n.service.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b", "c"]
    );
    assert_eq!(m.edges.len(), 2);

    let ab = edge(&m, "a", "b").unwrap();
    assert_eq!((ab.requests, ab.errors, ab.error_rate), (1, 0, 0.0));
    assert_eq!(
        (ab.p50_ms, ab.p99_ms),
        (Some(80.0), Some(80.0)),
        "child (server) duration"
    );
    let bc = edge(&m, "b", "c").unwrap();
    assert_eq!((bc.requests, bc.errors, bc.error_rate), (1, 1, 1.0));
    assert_eq!(bc.p50_ms, Some(40.0));
    assert!(edge(&m, "a", "c").is_none());
    assert!(edge(&m, "b", "a").is_none());

    let a = node(&m, "a");
    assert_eq!((a.spans, a.requests, a.errors), (2, 1, 0));
    assert_eq!(a.p50_ms, Some(100.0));
    let b = node(&m, "b");
    assert_eq!((b.spans, b.requests, b.errors), (2, 1, 0));
    let c = node(&m, "c");
    assert_eq!(
        (c.spans, c.requests, c.errors, c.error_rate),
        (1, 1, 1, 1.0)
    );
    // No window: rates over the covered time (100 ms, at least 1 s).
    assert_eq!(m.window_seconds, None);
    assert_eq!(m.rate_interval_seconds, 1.0);
    assert_eq!(ab.rate_per_second, 1.0);

    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["edges"][1]["source"], json!("b"));
    assert_eq!(v["edges"][1]["target"], json!("c"));
    assert_eq!(v["edges"][1]["errorRate"], json!(1.0));
    assert_eq!(v["edges"][1]["p99Ms"], json!(40.0));
    assert_eq!(v["nodes"][0]["ratePerSecond"], json!(1.0));
    assert_eq!(v["nodes"][0]["p50Ms"], json!(100.0));
}

#[test]
fn service_map_percentiles_rates_and_window() {
    let st = store();
    // 10 calls a→b→c, one per second; C fails on the last two (t = 8 s, 9 s).
    for i in 0..10u32 {
        let batches = abc(i + 1, u64::from(i) * 1000, i >= 8);
        st.ingest(&traces_batch(batches.to_vec())).unwrap();
    }
    let now = T0 + 10_000 * MS;
    let m = st.services_at(Some(Duration::from_secs(60)), now);
    assert_eq!(m.window_seconds, Some(60.0));
    let bc = edge(&m, "b", "c").unwrap();
    assert_eq!((bc.requests, bc.errors), (10, 2));
    assert!((bc.error_rate - 0.2).abs() < 1e-9);
    assert!((bc.rate_per_second - 10.0 / 60.0).abs() < 1e-9);
    assert_eq!(node(&m, "c").errors, 2);

    // The last 3.5 s hold the calls starting at 7, 8 and 9 s (ending 7.07, 8.07, 9.07 s).
    let m = st.services_at(Some(Duration::from_millis(3500)), now);
    let bc = edge(&m, "b", "c").unwrap();
    assert_eq!((bc.requests, bc.errors), (3, 2));
    assert_eq!(node(&m, "a").requests, 3);
    // A window in the future of all data holds nothing.
    let m = st.services_at(Some(Duration::from_secs(1)), now + 3_600_000 * MS);
    assert!(m.edges.is_empty() && m.nodes.is_empty());

    // Percentiles over differing durations: add calls b→c lasting 1..=100 ms.
    let st = store();
    for i in 1..=100u64 {
        let t = 1000 + i as u32;
        st.ingest(&traces_batch(vec![
            ("b", vec![span(t, 1, None, "call c", K::Client, i, 200)]),
            ("c", vec![span(t, 2, Some(1), "GET /c", K::Server, i, i)]),
        ]))
        .unwrap();
    }
    let m = st.services(None);
    let bc = edge(&m, "b", "c").unwrap();
    assert_eq!((bc.p50_ms, bc.p99_ms), (Some(50.0), Some(99.0)));
}

#[test]
fn service_map_counts_each_call_once() {
    let st = store();
    // One CLIENT span in a with two spans of b as children (a server span and, say, a
    // consumer span started by the same call): one call.
    st.ingest(&traces_batch(vec![
        (
            "a",
            vec![
                span(1, 1, None, "root", K::Server, 0, 100),
                span(1, 2, Some(1), "call b", K::Client, 1, 50),
            ],
        ),
        (
            "b",
            vec![
                span(1, 3, Some(2), "GET /b", K::Server, 2, 40),
                span(1, 4, Some(2), "consume", K::Consumer, 3, 10),
            ],
        ),
    ]))
    .unwrap();
    // An INTERNAL span in a calling b twice without client spans: two calls.
    st.ingest(&traces_batch(vec![
        ("a", vec![span(2, 1, None, "job", K::Internal, 0, 100)]),
        (
            "b",
            vec![
                span(2, 2, Some(1), "GET /x", K::Server, 1, 10),
                span(2, 3, Some(1), "GET /y", K::Server, 20, 10),
            ],
        ),
    ]))
    .unwrap();
    let m = st.services(None);
    assert_eq!(edge(&m, "a", "b").unwrap().requests, 3);
    assert_eq!(
        node(&m, "b").requests,
        4,
        "every server/consumer span is a request"
    );
    assert_eq!(node(&m, "a").requests, 2, "the two roots");
}

fn log(t: Option<u32>, sev: i32, body: any_value::Value, at_ms: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: T0 + at_ms * MS,
        severity_number: sev,
        severity_text: match sev {
            17 => "ERROR".into(),
            _ => "INFO".into(),
        },
        body: Some(AnyValue { value: Some(body) }),
        attributes: vec![kv("user", s("u1"))],
        trace_id: t.map(tid).unwrap_or_default(),
        span_id: t.map(|_| sid(1)).unwrap_or_default(),
        ..Default::default()
    }
}

fn logs_batch(groups: Vec<(&str, Vec<LogRecord>)>) -> Batch {
    let req = ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|(svc, log_records)| ResourceLogs {
                resource: resource(svc),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    Batch::new(Signal::Logs, Bytes::from(req.encode_to_vec()), 0)
}

#[test]
fn logs_by_trace_service_and_severity() {
    let st = store();
    let kvlist =
        any_value::Value::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
            values: vec![kv("msg", s("structured"))],
        });
    st.ingest(&logs_batch(vec![
        (
            "a",
            vec![log(Some(1), 9, s("a1"), 0), log(None, 17, s("a2"), 1)],
        ),
        (
            "b",
            vec![log(Some(1), 17, kvlist, 2), log(Some(2), 9, s("b2"), 3)],
        ),
    ]))
    .unwrap();
    let mut observed = log(None, 9, s("observed"), 0);
    observed.time_unix_nano = 0;
    observed.observed_time_unix_nano = T0 + 10 * MS;
    st.ingest(&logs_batch(vec![("c", vec![observed])])).unwrap();

    let bodies = |q: LogQuery| {
        st.logs(&q)
            .into_iter()
            .map(|l| l.body.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bodies(LogQuery::default()),
        vec![
            r#""observed""#,
            r#""b2""#,
            r#"{"msg":"structured"}"#,
            r#""a2""#,
            r#""a1""#
        ],
        "newest first"
    );
    let t1 = TraceId::from_bytes(&tid(1));
    assert_eq!(
        bodies(LogQuery {
            trace_id: t1,
            ..LogQuery::default()
        }),
        vec![r#"{"msg":"structured"}"#, r#""a1""#]
    );
    assert_eq!(
        bodies(LogQuery {
            trace_id: TraceId::from_bytes(&tid(9)),
            ..LogQuery::default()
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        bodies(LogQuery {
            service: Some("a".into()),
            ..LogQuery::default()
        }),
        vec![r#""a2""#, r#""a1""#]
    );
    assert_eq!(
        bodies(LogQuery {
            min_severity: Some(17),
            ..LogQuery::default()
        }),
        vec![r#"{"msg":"structured"}"#, r#""a2""#]
    );
    assert_eq!(
        bodies(LogQuery {
            trace_id: t1,
            service: Some("b".into()),
            ..LogQuery::default()
        }),
        vec![r#"{"msg":"structured"}"#]
    );
    assert_eq!(
        bodies(LogQuery {
            limit: 2,
            ..LogQuery::default()
        })
        .len(),
        2
    );

    let l = &st.logs(&LogQuery {
        trace_id: t1,
        limit: 1,
        ..LogQuery::default()
    })[0];
    assert_eq!(
        serde_json::to_value(l).unwrap(),
        json!({
            "timeUnixNano": (T0 + 2 * MS).to_string(), "severityText": "ERROR", "severityNumber": 17,
            "body": {"msg": "structured"}, "traceId": tid_hex(1), "spanId": sid_hex(1),
            "service": "b", "attributes": {"user": "u1"}
        })
    );
    let o = &st.logs(&LogQuery {
        service: Some("c".into()),
        ..LogQuery::default()
    })[0];
    assert_eq!(
        o.time_unix_nano,
        T0 + 10 * MS,
        "observed time when time is unset"
    );
    assert_eq!((o.trace_id, o.span_id), (None, None));
    assert_eq!(st.stats().logs, 5);
}

fn gauge(name: &str, attrs: Vec<KeyValue>, v: number_data_point::Value, at_ms: u64) -> Metric {
    Metric {
        name: name.into(),
        description: "desc".into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                time_unix_nano: T0 + at_ms * MS,
                value: Some(v),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn metrics_batch(groups: Vec<(&str, Vec<Metric>)>) -> Batch {
    let req = ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .map(|(svc, metrics)| ResourceMetrics {
                resource: resource(svc),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    Batch::new(Signal::Metrics, Bytes::from(req.encode_to_vec()), 0)
}

#[test]
fn metrics_keep_the_latest_point_per_series() {
    use number_data_point::Value::{AsDouble, AsInt};
    let st = store();
    let route = |r: &str| vec![kv("route", s(r))];
    let sum = Metric {
        name: "requests".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                time_unix_nano: T0,
                start_time_unix_nano: T0 - 1000 * MS,
                value: Some(AsInt(42)),
                ..Default::default()
            }],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let hist = Metric {
        name: "latency".into(),
        unit: "ms".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                time_unix_nano: T0,
                count: 6,
                sum: Some(60.5),
                bucket_counts: vec![1, 2, 3],
                explicit_bounds: vec![5.0, 10.0],
                ..Default::default()
            }],
            aggregation_temporality: 1,
        })),
        ..Default::default()
    };
    st.ingest(&metrics_batch(vec![
        (
            "a",
            vec![
                gauge("queue", route("/x"), AsDouble(1.0), 0),
                gauge("queue", route("/y"), AsDouble(2.0), 5),
                sum,
                hist,
            ],
        ),
        ("b", vec![gauge("queue", route("/x"), AsDouble(7.0), 0)]),
    ]))
    .unwrap();
    // A newer point replaces /x of a; an older one for /y is ignored.
    st.ingest(&metrics_batch(vec![(
        "a",
        vec![
            gauge("queue", route("/x"), AsDouble(3.0), 5),
            gauge("queue", route("/y"), AsDouble(9.0), 1),
        ],
    )]))
    .unwrap();
    assert_eq!(st.stats().metric_points, 5);

    let q = |name: Option<&str>, service: Option<&str>| {
        st.metrics(&MetricQuery {
            name: name.map(Into::into),
            service: service.map(Into::into),
        })
    };
    let queue_a = q(Some("queue"), Some("a"));
    assert_eq!(queue_a.len(), 2);
    assert_eq!(queue_a[0].attributes.get("route"), Some(&json!("/x")));
    assert_eq!(queue_a[0].value, Some(json!(3.0)));
    assert_eq!(queue_a[0].time_unix_nano, T0 + 5 * MS);
    assert_eq!(
        queue_a[1].value,
        Some(json!(2.0)),
        "an older point does not replace"
    );
    assert_eq!(q(Some("queue"), None).len(), 3);
    assert_eq!(q(None, Some("b")).len(), 1);
    assert_eq!(q(Some("nope"), None).len(), 0);

    let v = serde_json::to_value(&q(Some("requests"), None)[0]).unwrap();
    assert_eq!(
        v,
        json!({
            "name": "requests", "description": "", "unit": "", "kind": "sum", "service": "a",
            "attributes": {}, "value": 42, "monotonic": true, "temporality": "cumulative",
            "startTimeUnixNano": (T0 - 1000 * MS).to_string(), "timeUnixNano": T0.to_string()
        })
    );
    let v = serde_json::to_value(&q(Some("latency"), None)[0]).unwrap();
    assert_eq!(v["kind"], json!("histogram"));
    assert_eq!(v["temporality"], json!("delta"));
    assert_eq!(
        v["histogram"],
        json!({"count": 6, "sum": 60.5, "min": null, "max": null, "bucketCounts": [1, 2, 3], "explicitBounds": [5.0, 10.0]})
    );
    assert!(v.get("value").is_none());
    let g = serde_json::to_value(&q(Some("queue"), Some("b"))[0]).unwrap();
    assert_eq!(
        (
            g["kind"].clone(),
            g["value"].clone(),
            g["description"].clone()
        ),
        (json!("gauge"), json!(7.0), json!("desc"))
    );
}

#[test]
fn broken_framing_stops_a_batch_and_keeps_what_came_before() {
    let st = store();
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
    for signal in Signal::ALL {
        let err = st
            .ingest(&Batch::new(signal, garbage.clone(), 1))
            .unwrap_err();
        assert!(err.to_string().contains(signal.as_str()), "{err}");
    }
    let s = st.stats();
    assert_eq!(
        (s.spans, s.traces, s.logs, s.metric_points, s.bytes),
        (0, 0, 0, 0, 0)
    );
    // A batch of three resource groups cut short inside the last one: the first two groups'
    // four spans are stored, the batch is counted as rejected.
    let cut = traces_batch(abc(7, 0, false).to_vec());
    let cut = Batch::new(
        Signal::Traces,
        cut.payload.slice(..cut.payload.len() - 3),
        5,
    );
    assert!(st.ingest(&cut).is_err());
    let s = st.stats();
    assert_eq!((s.spans, s.traces, s.rejected_batches), (4, 1, 4));
    // Spans with malformed ids are skipped, the rest stored.
    let mut bad = span(2, 1, None, "bad", K::Server, 0, 1);
    bad.trace_id = vec![1; 15];
    let mut zero = span(3, 1, None, "zero", K::Server, 0, 1);
    zero.span_id = vec![0; 8];
    st.ingest(&traces_batch(vec![(
        "a",
        vec![bad, zero, span(4, 1, None, "ok", K::Server, 0, 1)],
    )]))
    .unwrap();
    let s = st.stats();
    assert_eq!((s.spans, s.invalid_spans), (5, 2));
    st.ingest(&traces_batch(abc(1, 0, false).to_vec())).unwrap();
    assert_eq!(st.stats().spans, 10);
}

#[test]
fn an_item_that_does_not_decode_is_skipped_and_counted() {
    // Span names are protobuf strings: invalid UTF-8 makes that one span fail to decode.
    let spans = vec![
        span(1, 1, None, "first", K::Server, 0, 10),
        span(1, 2, Some(1), "BROKEN", K::Client, 1, 5),
        span(1, 3, Some(1), "third", K::Client, 2, 5),
    ];
    let batch = traces_batch(vec![("a", spans)]);
    let mut payload = batch.payload.to_vec();
    let at = payload
        .windows(6)
        .position(|w| w == b"BROKEN")
        .expect("the name is in the payload");
    payload[at] = 0xff;
    let st = store();
    st.ingest(&Batch::new(Signal::Traces, Bytes::from(payload), 3))
        .unwrap();
    let s = st.stats();
    assert_eq!(
        (s.spans, s.undecodable_items, s.rejected_batches),
        (2, 1, 0)
    );
    let names: Vec<String> = st
        .trace(&tid_hex(1))
        .unwrap()
        .spans
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["first", "third"]);
}

/// Everything a store shows.
fn contents(st: &Store) -> (StoreStats, Vec<TraceSummary>, Vec<LogView>, Vec<MetricView>) {
    (
        st.stats(),
        st.traces(&TraceQuery::default()),
        st.logs(&LogQuery::default()),
        st.metrics(&MetricQuery::default()),
    )
}

#[test]
fn slices_of_any_size_store_what_one_pass_stores() {
    let batches = [
        traces_batch(abc(1, 0, true).to_vec()),
        traces_batch(abc(2, 500, false).to_vec()),
        logs_batch(vec![
            ("a", (0..5).map(|i| log(Some(1), 9, s("x"), i)).collect()),
            ("b", vec![log(None, 17, s("y"), 9)]),
        ]),
        metrics_batch(vec![
            (
                "a",
                (0..4)
                    .map(|i| {
                        gauge(
                            &format!("g{i}"),
                            vec![],
                            number_data_point::Value::AsInt(i),
                            0,
                        )
                    })
                    .collect(),
            ),
            (
                "b",
                vec![gauge("g", vec![], number_data_point::Value::AsInt(1), 3)],
            ),
        ]),
    ];
    let whole = store();
    for b in &batches {
        whole.ingest(b).unwrap();
    }
    assert_eq!(
        (
            whole.stats().spans,
            whole.stats().logs,
            whole.stats().metric_points
        ),
        (10, 6, 5)
    );
    // Slices of one item each (1 byte), and of a few items (the items here are 20-90 bytes).
    for bytes in [1, 40, 100, 250] {
        let sliced = store();
        for b in &batches {
            let mut ingestion = Ingestion::new(b);
            let mut slices = 1;
            while sliced.ingest_slice(&mut ingestion, bytes).unwrap() {
                slices += 1;
                assert!(
                    slices <= 7,
                    "a batch of at most 6 items in slices of {bytes} bytes"
                );
            }
        }
        assert_eq!(
            contents(&sliced),
            contents(&whole),
            "slices of {bytes} bytes"
        );
    }
}

#[test]
fn resources_after_their_spans_and_repeated_resources_read_as_a_full_decode_reads_them() {
    // ResourceSpans { scope_spans, resource(service.name=a), unknown field 9, resource(host.name,
    // service.name=late) }: protobuf merges the two resources (repeated attributes append, so
    // the later service.name wins in the store's map) and ignores the unknown field.
    let scope = pt::ScopeSpans {
        spans: vec![span(1, 1, None, "op", K::Server, 0, 10)],
        ..Default::default()
    };
    let late = Resource {
        attributes: vec![kv("host.name", s("h2")), kv("service.name", s("late"))],
        ..Default::default()
    };
    let mut entry = Vec::new();
    prost::encoding::message::encode(2, &scope, &mut entry);
    prost::encoding::message::encode(1, &resource("a").unwrap(), &mut entry);
    prost::encoding::string::encode(9, &"ignored".to_string(), &mut entry);
    prost::encoding::message::encode(1, &late, &mut entry);
    let mut payload = Vec::new();
    prost::encoding::bytes::encode(1, &entry, &mut payload);
    let full = ExportTraceServiceRequest::decode(&payload[..]).unwrap();
    let expected = attributes(&full.resource_spans[0].resource.as_ref().unwrap().attributes);

    let st = store();
    st.ingest(&Batch::new(Signal::Traces, Bytes::from(payload), 1))
        .unwrap();
    let detail = st.trace(&tid_hex(1)).unwrap();
    assert_eq!(detail.spans.len(), 1);
    assert_eq!(&*detail.spans[0].service, "late");
    assert_eq!(*detail.spans[0].resource, expected);
    assert_eq!(detail.spans[0].resource["host.name"], json!("h2"));
}

#[test]
fn eviction_keeps_memory_bounded_and_drops_oldest_traces_first() {
    let max = 200_000u64;
    let st = Store::new(max);
    let trace_budget = (max * 60 / 100) as usize;
    let mut seen_eviction_at = None;
    for i in 0..400u32 {
        let mut b = abc(i + 1, u64::from(i), i % 7 == 0).to_vec();
        for g in &mut b {
            for sp in &mut g.1 {
                sp.attributes = vec![kv("payload", s(&"x".repeat(100)))];
            }
        }
        st.ingest(&traces_batch(b)).unwrap();
        let s = st.stats();
        assert!(s.trace_bytes as usize <= trace_budget, "{s:?}");
        assert!(s.bytes <= max);
        if s.evicted_traces > 0 && seen_eviction_at.is_none() {
            seen_eviction_at = Some(i);
        }
        st.traces.read().unwrap().check_consistency();
    }
    let s = st.stats();
    assert!(seen_eviction_at.is_some(), "the budget was exceeded: {s:?}");
    assert!(s.evicted_traces > 100 && s.traces > 10, "{s:?}");
    assert_eq!(s.spans, s.traces * 5, "traces are evicted whole");
    assert_eq!(s.evicted_spans, s.evicted_traces * 5);
    assert_eq!(s.evicted, s.evicted_spans);
    // The kept traces are exactly the newest ones.
    let kept = s.traces as u32;
    assert!(st.trace(&tid_hex(1)).is_none());
    assert!(st.trace(&tid_hex(400 - kept)).is_none());
    assert_eq!(st.trace(&tid_hex(401 - kept)).unwrap().spans.len(), 5);
    assert_eq!(st.trace(&tid_hex(400)).unwrap().spans.len(), 5);
    let listed = st.traces(&TraceQuery {
        limit: 1000,
        ..TraceQuery::default()
    });
    assert_eq!(listed.len(), kept as usize);
    assert!(listed.iter().all(|t| t.span_count == 5));
    // The service map only sees what is kept.
    let m = st.services(None);
    assert_eq!(edge(&m, "a", "b").unwrap().requests, u64::from(kept));

    // A late span of an evicted trace starts a new partial trace; still consistent.
    st.ingest(&traces_batch(vec![(
        "z",
        vec![span(1, 9, Some(1), "late", K::Server, 0, 1)],
    )]))
    .unwrap();
    assert_eq!(st.trace(&tid_hex(1)).unwrap().spans.len(), 1);
    st.traces.read().unwrap().check_consistency();
}

#[test]
fn log_eviction_keeps_the_trace_index_consistent() {
    let max = 100_000u64;
    let st = Store::new(max);
    for i in 0..2000u32 {
        let t = if i % 3 == 0 { None } else { Some(i % 10) };
        st.ingest(&logs_batch(vec![(
            "a",
            vec![log(t, 9, s(&format!("m{i}")), u64::from(i))],
        )]))
        .unwrap();
        st.logs.read().unwrap().check_consistency();
    }
    let s = st.stats();
    assert!(s.evicted_logs > 0 && s.logs > 0, "{s:?}");
    assert_eq!(s.logs + s.evicted_logs, 2000);
    assert!(s.log_bytes <= max * 25 / 100);
    // The oldest are gone: the oldest kept record is number 2000 - kept.
    let all = st.logs(&LogQuery {
        limit: 5000,
        ..LogQuery::default()
    });
    assert_eq!(all.len() as u64, s.logs.min(MAX_LIMIT as u64));
    assert_eq!(all[0].body, json!("m1999"));
    let oldest = st
        .logs(&LogQuery {
            limit: 1000,
            ..LogQuery::default()
        })
        .last()
        .cloned()
        .unwrap();
    assert_eq!(oldest.body, json!(format!("m{}", 2000 - all.len())));
    // Trace 7's logs: every kept record with i % 10 == 7 and i % 3 != 0, newest first.
    let t7 = st.logs(&LogQuery {
        trace_id: TraceId::from_bytes(&tid(7)),
        limit: 1000,
        ..LogQuery::default()
    });
    let first_kept = 2000 - s.logs as u32;
    let expected: Vec<Value> = (first_kept..2000)
        .rev()
        .filter(|i| i % 10 == 7 && i % 3 != 0)
        .map(|i| json!(format!("m{i}")))
        .collect();
    assert_eq!(t7.into_iter().map(|l| l.body).collect::<Vec<_>>(), expected);
}

#[test]
fn metric_eviction_drops_least_recently_updated_series() {
    use number_data_point::Value::AsInt;
    let max = 50_000u64;
    let st = Store::new(max);
    for i in 0..500u32 {
        st.ingest(&metrics_batch(vec![(
            "a",
            vec![
                gauge("hot", vec![], AsInt(i64::from(i)), u64::from(i)),
                gauge(
                    "cold",
                    vec![kv("n", any_value::Value::IntValue(i64::from(i)))],
                    AsInt(1),
                    u64::from(i),
                ),
            ],
        )]))
        .unwrap();
        st.metrics.read().unwrap().check_consistency();
    }
    let s = st.stats();
    assert!(s.evicted_metric_points > 0, "{s:?}");
    assert!(s.metric_bytes <= max * 15 / 100);
    // The series updated every time survives, with its latest value.
    let hot = st.metrics(&MetricQuery {
        name: Some("hot".into()),
        service: None,
    });
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0].value, Some(json!(499)));
    // Of the one-off series only the newest remain.
    let cold = st.metrics(&MetricQuery {
        name: Some("cold".into()),
        service: None,
    });
    let ns: Vec<i64> = cold
        .iter()
        .map(|m| m.attributes["n"].as_i64().unwrap())
        .collect();
    let lo = 500 - cold.len() as i64;
    let mut sorted = ns.clone();
    sorted.sort();
    assert_eq!(sorted, (lo..500).collect::<Vec<_>>());
}

#[test]
fn size_estimates_cover_the_stored_strings() {
    let st = store();
    let mut sp = span(1, 1, None, "op", K::Server, 0, 1);
    sp.attributes = vec![kv("big", s(&"x".repeat(10_000)))];
    st.ingest(&traces_batch(vec![("a", vec![sp])])).unwrap();
    let mut l = log(None, 9, s(&"y".repeat(5_000)), 0);
    l.attributes.clear();
    st.ingest(&logs_batch(vec![("a", vec![l])])).unwrap();
    let m = gauge(
        "g",
        vec![kv("k", s(&"z".repeat(3_000)))],
        number_data_point::Value::AsInt(1),
        0,
    );
    st.ingest(&metrics_batch(vec![("a", vec![m])])).unwrap();
    let s = st.stats();
    assert!((10_000..12_000).contains(&s.trace_bytes), "{s:?}");
    assert!((5_000..6_000).contains(&s.log_bytes), "{s:?}");
    // The series key repeats the attributes, and is held twice (series map and update order).
    assert!((9_000..11_000).contains(&s.metric_bytes), "{s:?}");
    assert_eq!(s.bytes, s.trace_bytes + s.log_bytes + s.metric_bytes);
}

#[test]
fn sized_from_config() {
    let c = otlp_mesh_config::telemetry::StoreConfig::default();
    assert_eq!(Store::from_config(&c).stats().max_bytes, 16 << 20);
}

#[test]
fn concurrent_ingest_and_queries() {
    let st = Store::new(1 << 20);
    std::thread::scope(|scope| {
        for w in 0..3u32 {
            let st = &st;
            scope.spawn(move || {
                for i in 0..200u32 {
                    let t = w * 1000 + i + 1;
                    st.ingest(&traces_batch(abc(t, u64::from(i), i % 5 == 0).to_vec()))
                        .unwrap();
                    st.ingest(&logs_batch(vec![("a", vec![log(Some(t), 9, s("x"), 0)])]))
                        .unwrap();
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..50 {
                let m = st.services(None);
                for e in &m.edges {
                    assert!(e.errors <= e.requests);
                }
                for t in st.traces(&TraceQuery::default()) {
                    // A trace is visible with all spans of a batch or not at all.
                    assert_eq!(t.span_count, 5);
                    assert!(
                        st.trace(&t.trace_id.to_hex())
                            .is_none_or(|d| d.spans.len() == 5)
                    );
                }
                let _ = st.logs(&LogQuery::default());
                let _ = st.stats();
            }
        });
    });
    let s = st.stats();
    assert_eq!(s.spans + s.evicted_spans, 3000);
    assert_eq!(s.logs + s.evicted_logs, 600);
    st.traces.read().unwrap().check_consistency();
    st.logs.read().unwrap().check_consistency();
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
}

#[test]
fn random_and_truncated_payloads_never_panic() {
    // Deterministic loop over truncations and byte flips of valid payloads of each signal.
    let st = Store::new(1 << 20);
    let payloads = [
        traces_batch(abc(1, 0, true).to_vec()),
        logs_batch(vec![("a", vec![log(Some(1), 9, s("x"), 0)])]),
        metrics_batch(vec![(
            "a",
            vec![gauge("g", vec![], number_data_point::Value::AsInt(1), 0)],
        )]),
    ];
    for b in &payloads {
        for cut in 0..b.payload.len() {
            let _ = st.ingest(&Batch::new(b.signal, b.payload.slice(..cut), 0));
        }
        for i in 0..b.payload.len() {
            for x in [0x00u8, 0xff, 0x80, 0x01] {
                let mut v = b.payload.to_vec();
                v[i] ^= x;
                for signal in Signal::ALL {
                    let _ = st.ingest(&Batch::new(signal, Bytes::from(v.clone()), 0));
                }
            }
        }
    }
    let _ = st.services(None);
    let _ = st.traces(&TraceQuery::default());
    st.traces.read().unwrap().check_consistency();
    st.logs.read().unwrap().check_consistency();
    st.metrics.read().unwrap().check_consistency();
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), sig in 0usize..3) {
            let st = Store::new(1 << 16);
            let _ = st.ingest(&Batch::new(Signal::ALL[sig], Bytes::from(bytes), 0));
            let _ = st.services(None);
            let _ = st.traces(&TraceQuery::default());
            let _ = st.logs(&LogQuery::default());
            let _ = st.metrics(&MetricQuery::default());
            st.traces.read().unwrap().check_consistency();
        }

        #[test]
        fn spliced_valid_payloads_never_panic(cut in 0usize..2000, junk in proptest::collection::vec(any::<u8>(), 0..32)) {
            let st = Store::new(1 << 16);
            let good = traces_batch(abc(1, 0, true).to_vec());
            let cut = cut.min(good.payload.len());
            let mut v = good.payload[..cut].to_vec();
            v.extend_from_slice(&junk);
            let _ = st.ingest(&Batch::new(Signal::Traces, Bytes::from(v), 0));
            let _ = st.services(None);
            st.traces.read().unwrap().check_consistency();
        }
    }
}
