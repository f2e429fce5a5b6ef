#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The listener's HTTP/1.1 wire behaviour, seen from raw client sockets: pipelining, keep-alive
//! and close, HTTP/1.0, HEAD, chunked responses and trailers, a request with a body after
//! bodiless ones on the same connection (served by hyper from there on), proxy-made answers,
//! and a client going away mid-request.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An echo upstream behind otlp-mesh; the listener's address.
async fn echo_mesh() -> (Upstream, Mesh, std::net::SocketAddr) {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[up.addr]));
    let mesh = Mesh::start(admin, &yaml).await;
    (up, mesh, edge)
}

/// Writes `requests` in one go and reads until the proxy closes the connection.
async fn exchange(edge: std::net::SocketAddr, requests: &str) -> String {
    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let (text, closed) = read_until_close(&mut stream, WAIT).await;
    assert!(closed, "the connection stayed open: {text:.400}");
    text
}

/// The responses in `text`, one per request; `head[i]`: the i-th answered a HEAD request
/// (its `content-length` describes a body that is not there). Bodies are `content-length`
/// framed.
fn responses<'a>(text: &'a str, head: &[bool]) -> Vec<&'a str> {
    let mut rest = text;
    let mut all = Vec::new();
    for &head in head {
        let end = rest.find("\r\n\r\n").expect("a whole head") + 4;
        let length = match head {
            true => 0,
            false => header(rest, "content-length").map_or(0, |v| v.parse().unwrap()),
        };
        all.push(&rest[..end + length]);
        rest = &rest[end + length..];
    }
    assert_eq!(rest, "", "bytes after the responses");
    all
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = &response[..response.find("\r\n\r\n").unwrap_or(response.len())];
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_close_asks_to_close() {
    let (up, _mesh, edge) = echo_mesh().await;
    let text = exchange(
        edge,
        "GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let all = responses(&text, &[false; 3]);
    for (resp, path) in all.iter().zip(["/a", "/b", "/c"]) {
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        let json: serde_json::Value = serde_json::from_str(body(resp)).unwrap();
        assert_eq!(json["path"], path);
        assert_eq!(
            header(resp, "content-length").map(str::to_owned),
            Some(body(resp).len().to_string())
        );
    }
    assert_eq!(header(all[0], "connection"), None);
    assert_eq!(header(all[2], "connection"), Some("close"));
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_answered_in_http10_and_the_connection_closes() {
    let (_up, _mesh, edge) = echo_mesh().await;
    let text = exchange(
        edge,
        "GET /old HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(body(&text)).unwrap();
    assert_eq!(json["path"], "/old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_length_without_the_body_and_the_connection_goes_on() {
    let (_up, _mesh, edge) = echo_mesh().await;
    let text = exchange(
        edge,
        "HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let all = responses(&text, &[true, false]);
    let length: usize = header(all[0], "content-length").unwrap().parse().unwrap();
    assert!(length > 0, "{}", all[0]);
    assert_eq!(body(all[0]), "", "a HEAD response carries no body");
    let json: serde_json::Value = serde_json::from_str(body(all[1])).unwrap();
    assert_eq!(json["path"], "/g");
}

/// The first request with a body moves the connection to hyper with the bytes already read;
/// the pipelined requests around it are all answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_among_bodiless_ones_is_served_on_the_same_connection() {
    let (up, _mesh, edge) = echo_mesh().await;
    let text = exchange(
        edge,
        "GET /1 HTTP/1.1\r\nhost: x\r\n\r\n\
         POST /2 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
         GET /3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let all = responses(&text, &[false; 3]);
    let json: Vec<serde_json::Value> = all
        .iter()
        .map(|r| serde_json::from_str(body(r)).unwrap())
        .collect();
    assert_eq!(json[0]["path"], "/1");
    assert_eq!(
        (&json[1]["path"], &json[1]["body_len"]),
        (&"/2".into(), &5.into())
    );
    assert_eq!(json[2]["path"], "/3");
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_answers_carry_a_date_and_a_length() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - match: {{ path_prefix: /only }}\n        cluster: up\nclusters:\n{}",
        prelude(admin),
        static_cluster("up", &[up.addr])
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let text = exchange(
        edge,
        "GET /elsewhere HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    let date = header(&text, "date").expect("a date");
    assert!(date.ends_with(" GMT"), "{date}");
    assert_eq!(
        header(&text, "content-length").map(str::to_owned),
        Some(body(&text).len().to_string())
    );
    assert_eq!(up.hits(), 0);
}

/// An upstream body of unknown length goes out chunked; its trailers only to a client that
/// sent `te: trailers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_chunked_and_trailers_go_to_clients_that_accept_them() {
    let up = RawUpstream::start(|mut s: TcpStream| async move {
        loop {
            if read_head(&mut s).await.is_empty() {
                return;
            }
            let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                         5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n";
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(admin, edge, "", "", &static_cluster("up", &[up.addr]));
    let _mesh = Mesh::start(admin, &yaml).await;
    for (te, trailer) in [("te: trailers\r\n", true), ("", false)] {
        let text = exchange(
            edge,
            &format!("GET /s HTTP/1.1\r\nhost: x\r\n{te}connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            header(&text, "transfer-encoding"),
            Some("chunked"),
            "{text}"
        );
        assert_eq!(header(&text, "content-length"), None);
        let (data, trailers) = dechunk(body(&text));
        assert_eq!(data, "hello world");
        assert_eq!(trailers.contains("x-checksum: abc"), trailer, "{text}");
    }
}

/// Decodes a chunked body: its data and its trailer section.
fn dechunk(mut rest: &str) -> (String, String) {
    let mut data = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex size");
        if size == 0 {
            return (data, after.trim_end_matches("\r\n").to_string());
        }
        data.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// A client that closes its connection while the upstream is still working has its request
/// dropped: the upstream connection is closed rather than left to answer nobody, and the
/// request is recorded as 499 `client_closed` (metrics and access log), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_mid_request_drops_the_upstream_exchange() {
    let upstream_saw_close = Arc::new(AtomicUsize::new(0));
    let seen = upstream_saw_close.clone();
    let up = RawUpstream::start(move |mut s: TcpStream| {
        let seen = seen.clone();
        async move {
            let _ = read_head(&mut s).await;
            // Never answers; waits for the proxy to close its side.
            let mut byte = [0u8; 1];
            if let Ok(0) = s.read(&mut byte).await {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = one_route(
        admin,
        edge,
        "",
        "        timeout: 0\n",
        &static_cluster("up", &[up.addr]),
    ) + "telemetry:\n  access_log: { stdout: true }\n";
    let mesh = Mesh::start(admin, &yaml).await;
    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream_saw_close.load(Ordering::SeqCst), 0);
    drop(stream);
    eventually("the upstream connection closes", WAIT, || {
        let seen = upstream_saw_close.clone();
        async move { seen.load(Ordering::SeqCst) == 1 }
    })
    .await;

    let metrics = mesh.metrics().await;
    let closed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("otlp_mesh_requests_total{") && l.contains("listener=\"edge\""))
        .collect();
    assert!(
        closed
            .iter()
            .any(|l| l.contains("status_class=\"4xx\"") && l.ends_with(" 1")),
        "no 4xx request counted: {closed:?}"
    );
    eventually("the access log has the request", WAIT, || {
        let out = mesh.proc.stdout();
        async move {
            out.lines().any(|l| {
                l.contains("\"/slow\"")
                    && l.contains("\"status\":499")
                    && l.contains("client_closed")
            })
        }
    })
    .await;
}
