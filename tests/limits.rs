#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Proxy-generated error statuses and request limits.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /only }}
        cluster: up
clusters:
{}",
        prelude(admin),
        static_cluster("up", &[up.addr])
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        get(&client, &format!("http://{edge}/elsewhere"))
            .await
            .assert_mesh_error(404, "no_route");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_is_503() {
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(
        admin,
        edge,
        "",
        "",
        "  - name: up\n    discovery:\n      static: []\n",
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        get(&client, &format!("http://{edge}/x"))
            .await
            .assert_mesh_error(503, "no_endpoints");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_502_connect_failed() {
    let (admin, edge, nobody) = (free_addr(), free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[nobody]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        get(&client, &format!("http://{edge}/x"))
            .await
            .assert_mesh_error(502, "connect_failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /none }}
        cluster: up
        timeout: 0
      - cluster: up
        timeout: 300ms
clusters:
{}",
        prelude(admin),
        static_cluster("up", &[up.addr])
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let slow = |path: &str, ms: u64| {
        Request::get(format!("http://{edge}{path}"))
            .header("x-echo-delay-ms", ms.to_string())
            .body(empty())
            .unwrap()
    };
    send(&client, slow("/slow", 5000))
        .await
        .assert_mesh_error(504, "upstream_timeout");
    send(&h2c_client(), slow("/slow", 5000))
        .await
        .assert_mesh_error(504, "upstream_timeout");
    assert_eq!(send(&client, slow("/fast", 0)).await.status, StatusCode::OK);
    // `timeout: 0` means no deadline.
    assert_eq!(
        send(&client, slow("/none", 800)).await.status,
        StatusCode::OK
    );
}

/// Requests on one HTTP/1.1 connection share a timer entry for their route timeouts: each
/// request still gets its full timeout from its own start, not the entry's earlier deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_counts_from_each_request_on_a_keep_alive_connection() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let timeout = "        timeout: 500ms\n";
    let yaml = one_route(admin, edge, "", timeout, &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    let mut stream = TcpStream::connect(edge).await.unwrap();
    let mut exchange = async |path: &str, delay_ms: u64| {
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-echo-delay-ms: {delay_ms}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        read_response(&mut stream).await
    };
    // The second request starts ~300 ms in, after the first's deadline was set for 500 ms.
    for path in ["/first", "/second"] {
        let resp = exchange(path, 300).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp:.300}");
    }
    let resp = exchange("/slow", 5000).await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp:.300}");
    assert!(resp.contains("upstream_timeout"), "{resp:.300}");
    let resp = exchange("/after", 300).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_413_before_going_upstream() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let limits = "    limits: { max_request_body: 1KiB }\n";
    let yaml = one_route(admin, edge, limits, "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        let req = Request::post(format!("http://{edge}/upload"))
            .body(full(vec![b'x'; 2000]))
            .unwrap();
        send(&client, req)
            .await
            .assert_mesh_error(413, "body_too_large");
    }
    assert_eq!(up.hits(), 0, "nothing may go upstream");

    // Exactly at the limit passes.
    let req = Request::post(format!("http://{edge}/upload"))
        .body(full(vec![b'x'; 1024]))
        .unwrap();
    let resp = send(&h1_client(), req).await;
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(resp.json()["body_len"], 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_413() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let limits = "    limits: { max_request_body: 1KiB }\n";
    let yaml = one_route(admin, edge, limits, "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        // Length unknown up front: chunked on HTTP/1.1, no content-length on h2.
        let req = Request::post(format!("http://{edge}/upload"))
            .body(PatternBody::new(4096, 512, false).boxed())
            .unwrap();
        let resp = try_send_within(&client, req, WAIT).await;
        match resp {
            Ok(resp) => resp.assert_mesh_error(413, "body_too_large"),
            Err(e) => panic!("expected 413 body_too_large, got {e}"),
        }

        // A small chunked body passes.
        let req = Request::post(format!("http://{edge}/upload"))
            .body(PatternBody::new(1000, 100, false).boxed())
            .unwrap();
        let resp = send(&client, req).await;
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
        assert_eq!(resp.json()["body_len"], 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let limits = "    limits: { max_request_headers: 16KiB }\n";
    let yaml = one_route(admin, edge, limits, "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;

    let req = Request::get(format!("http://{edge}/h"))
        .header("x-small", "s".repeat(2000))
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, StatusCode::OK);

    let mut stream = TcpStream::connect(edge).await.unwrap();
    let big = "b".repeat(40_000);
    let request = format!("GET /h HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let (resp, _) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "expected 431, got: {resp:.200}"
    );
    assert_eq!(up.hits(), 1, "the oversized request must not go upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_the_connection_closes() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;

    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let (resp, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "expected 400, got: {resp:.200}"
    );
    assert!(closed, "connection still open after a malformed request");
    assert_eq!(up.hits(), 0);

    // The listener still serves well-formed requests.
    assert_eq!(
        get(&h1_client(), &format!("http://{edge}/ok")).await.status,
        StatusCode::OK
    );
}

/// An echo upstream behind otlp-mesh with a 1 s header-read timeout; the listener's address.
async fn mesh_with_header_timeout_1s() -> (Upstream, Mesh, std::net::SocketAddr) {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let limits = "    limits: { header_read_timeout: 1s }\n";
    let yaml = one_route(admin, edge, limits, "", &static_cluster("up", &[up.addr]));
    let mesh = Mesh::start(admin, &yaml).await;
    (up, mesh, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_block_is_cut_off() {
    let (up, _mesh, edge) = mesh_with_header_timeout_1s().await;
    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream
        .write_all(b"GET /slowloris HTTP/1.1\r\nhost: x\r\nx-partial: 1\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_until_close(&mut stream, Duration::from_secs(6)).await;
    assert!(
        closed,
        "connection with an incomplete header block still open after 6 s"
    );
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "unexpected answer to an incomplete request: {resp:.200}"
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(
        get(&h1_client(), &format!("http://{edge}/ok")).await.status,
        StatusCode::OK
    );
}

/// The header-read timeout also closes an idle keep-alive connection waiting for its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let (_up, _mesh, edge) = mesh_with_header_timeout_1s().await;
    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream
        .write_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let (resp, closed) = read_until_close(&mut stream, Duration::from_secs(6)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:.200}");
    assert!(closed, "idle keep-alive connection still open after 6 s");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        start.elapsed()
    );
}

/// Each request head restarts the header-read timeout: a keep-alive connection busy for longer
/// than the timeout, with shorter pauses, stays open; once idle it is closed a timeout later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_restarts_with_each_request_on_a_keep_alive_connection() {
    let (up, _mesh, edge) = mesh_with_header_timeout_1s().await;
    let mut stream = TcpStream::connect(edge).await.unwrap();
    let start = std::time::Instant::now();
    for i in 0..5 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        stream
            .write_all(format!("GET /r{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut stream).await;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "request {i} after {:?}: {resp:.200}",
            start.elapsed()
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(2400));
    let idle = std::time::Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(6)).await;
    assert!(closed, "idle keep-alive connection still open after 6 s");
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "closed too early once idle: {:?}",
        idle.elapsed()
    );
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_answering_is_502() {
    let up = RawUpstream::start(|mut s: TcpStream| async move {
        let _ = read_head(&mut s).await;
        drop(s);
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        get(&client, &format!("http://{edge}/x"))
            .await
            .assert_mesh_error(502, "upstream_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_body_is_not_passed_off_as_complete() {
    let up = RawUpstream::start(|mut s: TcpStream| async move {
        let _ = read_head(&mut s).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n",
            )
            .await;
        let _ = s.write_all(&[b'x'; 100]).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        let resp = tokio::time::timeout(WAIT, client.request(get_req(&format!("http://{edge}/x"))))
            .await
            .expect("no response head")
            .expect("request failed before the head");
        let status = resp.status();
        let counted = tokio::time::timeout(WAIT, count_body(resp.into_body()))
            .await
            .expect("body neither ended nor failed");
        match (status.as_u16(), counted) {
            (502, _) => {}
            (200, Err(_)) => {}
            (s, result) => {
                panic!("upstream died after 100 of 1000 bytes, client saw {s} and body {result:?}")
            }
        }
    }
}
