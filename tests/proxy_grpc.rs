#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gRPC through the proxy: h2c client → listener → `protocol: h2` cluster → tonic server.
//! Messages, `grpc-status`, custom (trailing) metadata and error details must arrive intact;
//! `otlp-mesh bench --protocol grpc` drives unary calls through it.

mod common;

use common::*;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint64, tag = "2")]
    pub payload_len: u64,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// Client side: encodes requests, decodes replies.
fn client_codec() -> tonic_prost::ProstCodec<EchoRequest, EchoReply> {
    tonic_prost::ProstCodec::default()
}

/// Server side: encodes replies, decodes requests.
fn server_codec() -> tonic_prost::ProstCodec<EchoReply, EchoRequest> {
    tonic_prost::ProstCodec::default()
}

/// `/test.Echo/Unary`: replies `echo: <message>`; message `fail` answers NOT_FOUND with
/// metadata and details.
struct UnarySvc;

impl tonic::server::UnaryService<EchoRequest> for UnarySvc {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let client_md = req
                .metadata()
                .get("x-client-md")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let msg = req.into_inner();
            if msg.message == "fail" {
                let mut md = MetadataMap::new();
                md.insert("x-error-detail", MetadataValue::from_static("it is gone"));
                md.insert_bin("x-error-bin", MetadataValue::from_bytes(&[0, 1, 2, 255]));
                return Err(Status::with_details_and_metadata(
                    Code::NotFound,
                    "no such thing",
                    bytes::Bytes::from_static(b"\x08\x05details"),
                    md,
                ));
            }
            let mut resp = tonic::Response::new(EchoReply {
                message: format!("echo: {}", msg.message),
                payload_len: msg.payload.len() as u64,
            });
            resp.metadata_mut().insert(
                "x-server-md",
                MetadataValue::try_from(format!("saw {client_md}")).unwrap(),
            );
            Ok(resp)
        })
    }
}

/// `/test.Echo/Bidi`: one reply per message as it arrives. Message `abort` ends the call with
/// ABORTED and metadata; a clean end of input ends it with OK and trailing metadata.
struct BidiSvc;

impl tonic::server::StreamingService<EchoRequest> for BidiSvc {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<tonic::Response<ReplyStream>, Status>>;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut input = req.into_inner();
            let output = async_stream(move |tx| async move {
                let mut n = 0u64;
                loop {
                    match input.message().await {
                        Ok(Some(m)) if m.message == "abort" => {
                            let mut md = MetadataMap::new();
                            md.insert("x-abort-reason", MetadataValue::from_static("asked to"));
                            let _ = tx
                                .send(Err(Status::with_metadata(
                                    Code::Aborted,
                                    "aborted on request",
                                    md,
                                )))
                                .await;
                            return;
                        }
                        Ok(Some(m)) => {
                            n += 1;
                            let reply = EchoReply {
                                message: format!("echo {n}: {}", m.message),
                                payload_len: m.payload.len() as u64,
                            };
                            if tx.send(Ok(reply)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let mut md = MetadataMap::new();
                            md.insert(
                                "x-trailer-count",
                                MetadataValue::try_from(n.to_string()).unwrap(),
                            );
                            md.insert("x-trailer-custom", MetadataValue::from_static("bye"));
                            let _ = tx.send(Err(Status::with_metadata(Code::Ok, "", md))).await;
                            return;
                        }
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            });
            let mut resp = tonic::Response::new(output);
            resp.metadata_mut()
                .insert("x-bidi", MetadataValue::from_static("started"));
            Ok(resp)
        })
    }
}

/// A stream fed by a task that gets the sending half.
fn async_stream<F, Fut>(f: F) -> ReplyStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<EchoReply, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The tonic server as codegen would route it, served by the harness upstream (h2c).
async fn grpc_upstream() -> Upstream {
    Upstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        let resp = match req.uri().path() {
            "/test.Echo/Unary" => {
                tonic::server::Grpc::new(server_codec())
                    .unary(UnarySvc, req)
                    .await
            }
            "/test.Echo/Bidi" => {
                tonic::server::Grpc::new(server_codec())
                    .streaming(BidiSvc, req)
                    .await
            }
            _ => Status::unimplemented("no such method").into_http(),
        };
        resp.map(|b| b.map_err(BoxError::from).boxed_unsync())
    })
    .await
}

struct Setup {
    _upstream: Upstream,
    _mesh: Mesh,
    edge: std::net::SocketAddr,
}

async fn setup() -> Setup {
    let upstream = grpc_upstream().await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - name: grpc
        match: {{ path_prefix: /test.Echo/, methods: [POST] }}
        cluster: grpc
clusters:
  - name: grpc
    protocol: h2
    discovery:
      static: [{}]
",
        prelude(admin),
        upstream.addr,
    );
    let mesh = Mesh::start(admin, &yaml).await;
    Setup {
        _upstream: upstream,
        _mesh: mesh,
        edge,
    }
}

async fn client(edge: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tokio::time::timeout(
        WAIT,
        tonic::transport::Channel::from_shared(format!("http://{edge}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect timed out")
    .expect("connect to the proxy");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    req: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<EchoReply>, Status> {
    tokio::time::timeout(WAIT, async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(
            req,
            PathAndQuery::from_static("/test.Echo/Unary"),
            client_codec(),
        )
        .await
    })
    .await
    .expect("unary call timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_roundtrip() {
    let s = setup().await;
    let mut grpc = client(s.edge).await;
    for i in 0..3 {
        let mut req = tonic::Request::new(EchoRequest {
            message: format!("hello {i}"),
            payload: vec![7; 1000],
        });
        req.metadata_mut()
            .insert("x-client-md", MetadataValue::from_static("from-client"));
        let resp = unary(&mut grpc, req).await.expect("unary call");
        assert_eq!(
            resp.metadata()
                .get("x-server-md")
                .unwrap()
                .to_str()
                .unwrap(),
            "saw from-client"
        );
        assert_eq!(
            resp.into_inner(),
            EchoReply {
                message: format!("echo: hello {i}"),
                payload_len: 1000
            }
        );
    }
    // A message bigger than the default h2 window (64 KiB) must flow too.
    let req = tonic::Request::new(EchoRequest {
        message: "big".into(),
        payload: vec![1; 1 << 20],
    });
    let reply = unary(&mut grpc, req)
        .await
        .expect("big unary call")
        .into_inner();
    assert_eq!(reply.payload_len, 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_error_status_metadata_and_details() {
    let s = setup().await;
    let mut grpc = client(s.edge).await;
    let status = unary(
        &mut grpc,
        tonic::Request::new(EchoRequest {
            message: "fail".into(),
            payload: vec![],
        }),
    )
    .await
    .expect_err("the server answers NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing");
    assert_eq!(status.details(), b"\x08\x05details");
    assert_eq!(
        status.metadata().get("x-error-detail").unwrap(),
        "it is gone"
    );
    assert_eq!(
        status
            .metadata()
            .get_bin("x-error-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 1, 2, 255]
    );

    // Unknown method: UNIMPLEMENTED from the upstream, not a proxy error.
    let status = tokio::time::timeout(WAIT, async {
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(EchoRequest::default()),
            PathAndQuery::from_static("/test.Echo/Nope"),
            client_codec(),
        )
        .await
    })
    .await
    .unwrap()
    .expect_err("no such method");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

/// Opens a bidi call; returns the request sender and the response stream.
async fn bidi(
    edge: std::net::SocketAddr,
) -> (
    tokio::sync::mpsc::Sender<EchoRequest>,
    tonic::Response<tonic::Streaming<EchoReply>>,
) {
    let mut grpc = client(edge).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let resp = tokio::time::timeout(WAIT, async {
        grpc.ready().await.unwrap();
        grpc.streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            client_codec(),
        )
        .await
    })
    .await
    .expect("bidi call did not start in time")
    .expect("bidi call");
    (tx, resp)
}

async fn next(stream: &mut tonic::Streaming<EchoReply>) -> Result<Option<EchoReply>, Status> {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no message within 5 s: the proxy does not stream gRPC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_interleaves_and_keeps_trailers() {
    let s = setup().await;
    // The call starts (response head arrives) while the request stream is still open.
    let (tx, resp) = bidi(s.edge).await;
    assert_eq!(resp.metadata().get("x-bidi").unwrap(), "started");
    let mut stream = resp.into_inner();

    // Ping-pong: each reply must arrive before the next request is sent.
    for i in 1..=5u64 {
        tx.send(EchoRequest {
            message: format!("m{i}"),
            payload: vec![0; (i * 10_000) as usize],
        })
        .await
        .unwrap();
        let reply = next(&mut stream)
            .await
            .expect("reply")
            .expect("stream ended early");
        assert_eq!(reply.message, format!("echo {i}: m{i}"));
        assert_eq!(reply.payload_len, i * 10_000);
    }
    drop(tx);
    assert_eq!(next(&mut stream).await.expect("clean end"), None);
    let trailers = tokio::time::timeout(WAIT, stream.trailers())
        .await
        .unwrap()
        .expect("trailers")
        .expect("trailing metadata lost");
    assert_eq!(trailers.get("x-trailer-custom").unwrap(), "bye");
    assert_eq!(trailers.get("x-trailer-count").unwrap(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_error_status_arrives_after_messages() {
    let s = setup().await;
    let (tx, resp) = bidi(s.edge).await;
    let mut stream = resp.into_inner();
    for m in ["a", "b"] {
        tx.send(EchoRequest {
            message: m.into(),
            payload: vec![],
        })
        .await
        .unwrap();
    }
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap().message,
        "echo 1: a"
    );
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap().message,
        "echo 2: b"
    );
    tx.send(EchoRequest {
        message: "abort".into(),
        payload: vec![],
    })
    .await
    .unwrap();
    let status = next(&mut stream)
        .await
        .expect_err("the server aborts the call");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "aborted on request");
    assert_eq!(status.metadata().get("x-abort-reason").unwrap(), "asked to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_many_concurrent_calls_share_one_connection() {
    let s = setup().await;
    let grpc = client(s.edge).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut grpc = grpc.clone();
        tasks.push(tokio::spawn(async move {
            let req = tonic::Request::new(EchoRequest {
                message: format!("c{i}"),
                payload: vec![],
            });
            unary(&mut grpc, req).await.map(|r| r.into_inner().message)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            t.await.unwrap().expect("concurrent unary"),
            format!("echo: c{i}")
        );
    }
    // Streams over the same channel still work afterwards.
    let (tx, resp) = bidi(s.edge).await;
    let mut stream = resp.into_inner();
    tx.send(EchoRequest {
        message: "x".into(),
        payload: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap().message,
        "echo 1: x"
    );
}

/// A fault rule's gRPC abort reaches a tonic client as that status and message, and the upstream
/// is never called; removing the rule at run time restores service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_fault_abort_is_seen_as_the_configured_status() {
    let upstream = grpc_upstream().await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - name: grpc
        match: {{ path_prefix: /test.Echo/ }}
        cluster: grpc
        fault: {{ abort: {{ percent: 100, grpc_status: UNAVAILABLE, message: \"chaos: down for 50%\" }} }}
clusters:
  - name: grpc
    protocol: h2
    discovery:
      static: [{}]
",
        prelude(admin),
        upstream.addr,
    );
    let mesh = Mesh::start(admin, &yaml).await;
    let mut grpc = client(edge).await;
    let before = upstream.hits();
    let err = unary(&mut grpc, tonic::Request::new(EchoRequest::default()))
        .await
        .expect_err("the fault must abort the call");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "chaos: down for 50%");
    assert_eq!(
        upstream.hits(),
        before,
        "an aborted call never reaches the upstream"
    );

    let client_http = h1_client();
    let r = send(
        &client_http,
        http::Request::delete(format!("http://{}/chaos/rules/route:edge/grpc", mesh.admin))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    unary(&mut grpc, tonic::Request::new(EchoRequest::default()))
        .await
        .expect("no fault once the rule is deleted");
    drop(mesh);
}

/// Errors the proxy makes itself reach gRPC clients as gRPC statuses, not bare HTTP errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_reach_grpc_clients_as_grpc_statuses() {
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /test.Echo/ }}
        cluster: empty
clusters:
  - name: empty
    protocol: h2
    discovery: {{ static: [] }}
",
        prelude(admin),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let mut grpc = client(edge).await;
    let err = unary(&mut grpc, tonic::Request::new(EchoRequest::default()))
        .await
        .expect_err("no endpoints");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no endpoints"), "{err:?}");
    grpc.ready().await.unwrap();
    let err = grpc
        .unary(
            tonic::Request::new(EchoRequest::default()),
            PathAndQuery::from_static("/other.Service/Method"),
            client_codec(),
        )
        .await
        .expect_err("no route");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
}

/// A gRPC client's `grpc-timeout` shortens the route timeout, and expiry is DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_header_bounds_the_request() {
    let up = Upstream::echo("slow").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes: [ {{ cluster: up, timeout: 30s }} ]\nclusters:\n  - {{ name: up, discovery: {{ static: [{}] }} }}\n",
        prelude(admin),
        up.addr
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let start = std::time::Instant::now();
    let r = send(
        &h2c_client(),
        http::Request::post(format!("http://{edge}/test.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "300m")
            .header("x-echo-delay-ms", "5000")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert!(
        start.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("4"), "{:?}", r.headers);
    assert_eq!(r.header("x-mesh-error"), Some("upstream_timeout"));
}

/// `otlp-mesh bench --protocol grpc` through the proxy (h2c listener → `protocol: h2` cluster →
/// tonic): every call with a good message is ok; calls the server fails (NOT_FOUND) are counted
/// as `grpc_status` errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_grpc_mode_drives_unary_calls_through_an_h2_cluster() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    for (message, want_ok) in [("bench", true), ("fail", false)] {
        let body = dir.path().join(format!("{message}.bin"));
        let encoded = prost::Message::encode_to_vec(&EchoRequest {
            message: message.into(),
            payload: vec![1; 100],
        });
        std::fs::write(&body, encoded).unwrap();
        let json = dir.path().join(format!("{message}.json"));
        let url = format!("http://{}/test.Echo/Unary", s.edge);
        let mut p = tokio::task::spawn_blocking({
            let json = json.clone();
            move || {
                let mut p = Proc::spawn(&[
                    "bench",
                    &url,
                    "--protocol",
                    "grpc",
                    "-c",
                    "2",
                    "--streams",
                    "4",
                    "-d",
                    "1s",
                    "--warmup",
                    "100ms",
                    "--body-file",
                    body.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                ]);
                p.wait_exit_blocking(Duration::from_secs(30));
                p
            }
        })
        .await
        .unwrap();
        assert!(p.status_success(), "bench failed: {}", p.stderr());
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(r["protocol"], "grpc");
        let requests = r["requests"].as_u64().unwrap();
        assert!(requests > 20, "{message}: {r}");
        let errors = &r["errors"];
        if want_ok {
            assert_eq!(r["ok"].as_u64(), Some(requests), "{r}");
            assert_eq!(errors["grpc_status"], 0, "{r}");
        } else {
            assert_eq!(r["ok"], 0, "{r}");
            assert_eq!(errors["grpc_status"].as_u64(), Some(requests), "{r}");
        }
        for kind in ["connect", "timeout", "status_4xx", "status_5xx", "other"] {
            assert_eq!(errors[kind], 0, "{message}: {kind}: {r}");
        }
    }
}
