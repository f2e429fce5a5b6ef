//! The OTLP receiver against real clients: the OpenTelemetry Python SDK (gRPC and HTTP
//! exporters), and hand-made bad input over HTTP and gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;

struct Otlp {
    mesh: Mesh,
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn start(extra: &str) -> Otlp {
    let admin = free_addr();
    let (grpc, http) = (free_addr(), free_addr());
    let yaml = format!(
        "{}telemetry:\n  service_name: edge\n  receiver:\n    grpc: {grpc}\n    http: {http}\n    max_message_size: 64KiB\n    max_decompressed_size: 1MiB\n{extra}",
        prelude(admin)
    );
    let mesh = Mesh::start(admin, &yaml).await;
    Otlp { mesh, grpc, http }
}

fn spans(n: usize, name_len: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: vec![7; 16],
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        name: "x".repeat(name_len),
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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post(
    addr: SocketAddr,
    path: &str,
    ct: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let mut req = Request::post(format!("http://{addr}{path}")).header("content-type", ct);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    send(&h1_client(), req.body(full(body)).unwrap()).await
}

/// One unary gRPC call on a new connection; returns (grpc-status, grpc-message, response).
async fn grpc_call(
    addr: SocketAddr,
    method: &str,
    encoding: Option<&str>,
    message: Vec<u8>,
) -> (String, String, Resp) {
    grpc_call_on(&h2c_client(), addr, method, encoding, message).await
}

/// One unary gRPC call on `client`'s connection.
async fn grpc_call_on(
    client: &HttpClient,
    addr: SocketAddr,
    method: &str,
    encoding: Option<&str>,
    message: Vec<u8>,
) -> (String, String, Resp) {
    let compressed = encoding.is_some();
    let mut framed = vec![u8::from(compressed)];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut req = Request::post(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let r = send(client, req.body(full(framed)).unwrap()).await;
    let from = |name: &str| {
        r.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| r.headers.get(name))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (from("grpc-status"), from("grpc-message"), r)
}

const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[tokio::test]
async fn python_sdk_sends_over_grpc_and_http() {
    let o = start("").await;
    let grpc = python_send("grpc", &format!("http://{}", o.grpc), "shop-grpc");
    let http = python_send("http", &format!("http://{}", o.http), "shop-http");
    for sent in [&grpc, &http] {
        assert_eq!(sent["flushed"], true, "{sent}");
        assert_eq!(sent["spans"].as_array().unwrap().len(), 2);
    }
    let m = o.mesh.metrics().await;
    for transport in ["grpc", "http"] {
        for signal in ["traces", "metrics", "logs"] {
            let series = format!(
                "otlp_mesh_receiver_requests_total{{transport=\"{transport}\",signal=\"{signal}\",outcome=\"accepted\"}}"
            );
            assert!(
                metric(&m, &series).unwrap_or(0.0) >= 1.0,
                "{series} in\n{m}"
            );
        }
    }
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"logs\"}"
        ),
        Some(2.0)
    );
    // 2 spans from each SDK (the proxy itself made none: no requests were proxied).
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"traces\"}"
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn bad_http_input_gets_the_right_status_and_loses_nothing_else() {
    let o = start("").await;
    let a = o.http;
    let pb = "application/x-protobuf";

    let ok = post(a, "/v1/traces", pb, None, spans(3, 8)).await;
    assert_eq!(ok.status, StatusCode::OK);

    // A gzip bomb: 64 MiB of zeros in ~64 KiB, against a 1 MiB decompressed limit.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 64 << 10);
    let r = post(a, "/v1/traces", pb, Some("gzip"), bomb.clone()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());

    let mut truncated = spans(3, 8);
    truncated.truncate(truncated.len() - 5);
    let r = post(a, "/v1/traces", pb, None, truncated).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let status = opentelemetry_proto::tonic::trace::v1::Status::decode(&r.body[..]);
    assert!(status.is_ok(), "error body is a protobuf google.rpc.Status");

    let r = post(
        a,
        "/v1/logs",
        "application/json",
        None,
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"loud"}]}]}]}"#
            .to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("invalid OTLP JSON"), "{msg}");

    let r = post(a, "/v1/traces", pb, None, spans(2000, 40)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let r = post(a, "/v1/traces", "text/plain", None, b"hi".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post(a, "/v1/traces", pb, Some("br"), b"hi".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post(a, "/v2/traces", pb, None, spans(1, 1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&h1_client(), &format!("http://{a}/v1/traces")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // A span with a bad id is rejected alone, with partial_success.
    let mut req = ExportTraceServiceRequest::decode(&spans(3, 8)[..]).unwrap();
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 5];
    let r = post(a, "/v1/traces", pb, None, req.encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    let resp =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            &r.body[..],
        )
        .unwrap();
    assert_eq!(resp.partial_success.unwrap().rejected_spans, 1);

    // Still serving, and memory stayed bounded (the bomb was never inflated).
    let r = post(a, "/v1/traces", pb, Some("gzip"), gzip(&spans(4, 8))).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = o.mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"traces\"}"
        ),
        Some(3.0 + 2.0 + 4.0)
    );
    let rss = o.mesh.proc.peak_rss_bytes();
    assert!(rss < 60 << 20, "peak RSS {} MiB", rss >> 20);
}

#[tokio::test]
async fn bad_grpc_input_gets_the_right_code() {
    let o = start("").await;
    let a = o.grpc;
    let (code, _, r) = grpc_call(a, TRACES, None, spans(2, 8)).await;
    assert_eq!(code, "0");
    assert_eq!(r.status, StatusCode::OK);
    let (code, _, _) = grpc_call(a, TRACES, Some("gzip"), gzip(&spans(2, 8))).await;
    assert_eq!(code, "0");

    let (code, msg, _) = grpc_call(a, TRACES, Some("gzip"), gzip(&vec![0u8; 64 << 20])).await;
    assert_eq!(code, "8", "{msg}"); // RESOURCE_EXHAUSTED
    let mut truncated = spans(3, 8);
    truncated.truncate(truncated.len() - 5);
    let (code, msg, _) = grpc_call(a, TRACES, None, truncated).await;
    assert_eq!(code, "3", "{msg}"); // INVALID_ARGUMENT
    assert!(msg.contains("invalid protobuf"), "{msg}");
    let (code, _, _) = grpc_call(a, TRACES, None, spans(2000, 40)).await;
    assert_eq!(code, "8");
    let (code, _, _) = grpc_call(
        a,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
        None,
        spans(1, 1),
    )
    .await;
    assert_eq!(code, "12"); // UNIMPLEMENTED
    let (code, _, _) = grpc_call(a, TRACES, Some("snappy"), spans(1, 1)).await;
    assert_eq!(code, "12");

    let m = o.mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"traces\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_receiver_requests_total{transport=\"grpc\",signal=\"traces\",outcome=\"too_large\"}"
        ),
        Some(2.0)
    );
}

/// 40 concurrent exports of ~27 KB on one HTTP/2 connection and 8 over HTTP/1.1, through a
/// 64 KiB receive budget: bodies wait for each other, and none is lost or refused. Bodies waiting
/// unread hold part of the connection's flow-control window; if that starved the bodies being
/// read, this would hang until the 5 s wait gives up and refuse some.
#[tokio::test]
async fn a_small_receive_budget_reads_bodies_in_turn_and_refuses_none() {
    let o = start("    max_receiving_bytes: 64KiB\n").await;
    let body = spans(200, 100);
    assert!(body.len() > 20_000 && body.len() < 40_000, "{}", body.len());
    let client = h2c_client();
    let grpc = (0..40).map(|_| grpc_call_on(&client, o.grpc, TRACES, None, body.clone()));
    let http = (0..8).map(|_| {
        post(
            o.http,
            "/v1/traces",
            "application/x-protobuf",
            None,
            body.clone(),
        )
    });
    let (grpc, http) = tokio::join!(
        futures_util::future::join_all(grpc),
        futures_util::future::join_all(http)
    );
    for (code, msg, _) in &grpc {
        assert_eq!(code, "0", "{msg}");
    }
    for r in &http {
        assert_eq!(r.status, StatusCode::OK);
    }
    let m = o.mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"traces\"}"
        ),
        Some(48.0 * 200.0)
    );
    // A body larger than the whole budget is read alone rather than never.
    let o = start("    max_receiving_bytes: 16KiB\n").await;
    let (code, msg, _) = grpc_call(o.grpc, TRACES, None, spans(300, 100)).await;
    assert_eq!(code, "0", "{msg}");
}

/// A sender that announces a body and then stalls holds the budget; the next body waits 5 s for
/// room and is then refused with a retryable status, and once the stalled sender goes away the
/// budget is free again.
#[tokio::test]
async fn a_stalled_body_holds_the_budget_and_the_next_sender_is_asked_to_retry() {
    use tokio::io::AsyncWriteExt;
    let o = start("    max_receiving_bytes: 48KiB\n").await;
    let mut stalled = tokio::net::TcpStream::connect(o.http).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n\
              content-length: 40000\r\n\r\n\x0a",
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let body = spans(200, 100);
    let started = std::time::Instant::now();
    let (grpc, http) = tokio::join!(
        grpc_call(o.grpc, TRACES, None, body.clone()),
        post(
            o.http,
            "/v1/traces",
            "application/x-protobuf",
            None,
            body.clone()
        )
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(4));
    let (code, msg, r) = grpc;
    assert_eq!(code, "14", "{msg}"); // UNAVAILABLE
    assert!(msg.contains("receive budget"), "{msg}");
    assert!(r.headers.contains_key("grpc-status-details-bin"));
    assert_eq!(http.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(http.headers["retry-after"], "1");
    drop(stalled);
    let (code, msg, _) = grpc_call(o.grpc, TRACES, None, body).await;
    assert_eq!(code, "0", "{msg}");
    let m = o.mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_receiver_requests_total{transport=\"grpc\",signal=\"traces\",outcome=\"refused\"}"
        ),
        Some(1.0)
    );
}

/// Bodies of unknown length (HTTP/1.1 chunked) arriving side by side, each in two halves: each
/// reserves the size limit before it is read on, so they are read one after another. Growing
/// reservations as chunks arrived would let every body hold a half and wait for room that only
/// the others could free, until all were refused.
#[tokio::test]
async fn chunked_bodies_do_not_wait_for_each_other_holding_part_of_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = start("    max_receiving_bytes: 48KiB\n").await;
    let body = spans(200, 100);
    let (a, b) = body.split_at(body.len() / 2);
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(o.http).await.unwrap();
        let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ntransfer-encoding: chunked\r\n\r\n";
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(format!("{:x}\r\n", a.len()).as_bytes())
            .await
            .unwrap();
        c.write_all(a).await.unwrap();
        c.write_all(b"\r\n").await.unwrap();
        conns.push(c);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for c in &mut conns {
        c.write_all(format!("{:x}\r\n", b.len()).as_bytes())
            .await
            .unwrap();
        c.write_all(b).await.unwrap();
        c.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    }
    for mut c in conns {
        let mut reply = [0u8; 12];
        tokio::time::timeout(WAIT, c.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &reply,
            b"HTTP/1.1 200",
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
    let m = o.mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_pipeline_accepted_items_total{signal=\"traces\"}"
        ),
        Some(4.0 * 200.0)
    );
}
