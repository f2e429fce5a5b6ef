use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw server: for each canned reply, reads one request (head and `content-length` body) and
/// writes the reply in pieces of `piece` bytes. Returns the requests it read.
async fn serve(
    replies: Vec<&'static [u8]>,
    piece: usize,
) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for reply in replies {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed early");
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let body_len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            while buf.len() < end + body_len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            seen.push(buf.drain(..end + body_len).collect());
            for p in reply.chunks(piece) {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                if piece < reply.len() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        seen
    });
    (addr, task)
}

async fn conn(addr: &str) -> H1Conn {
    H1Conn::new(TcpStream::connect(addr).await.unwrap())
}

fn get(addr: &str, path: &str) -> EncodedRequest {
    let url: Uri = format!("http://{addr}{path}").parse().unwrap();
    EncodedRequest::new(&Method::GET, &url, &[], &Bytes::new()).unwrap()
}

#[tokio::test]
async fn keep_alive_responses_with_content_length() {
    let (addr, server) = serve(
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        ],
        usize::MAX,
    )
    .await;
    let mut c = conn(&addr).await;
    let req = get(&addr, "/p?q=1");
    assert_eq!(c.send(&req).await.unwrap(), 200);
    assert_eq!(c.send(&req).await.unwrap(), 503);
    assert!(c.reusable());
    let seen = server.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen[0]),
        format!("GET /p?q=1 HTTP/1.1\r\nhost: {addr}\r\n\r\n")
    );
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_arriving_byte_by_byte() {
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: yes\r\n\r\n";
    let (addr, server) = serve(vec![reply, b"HTTP/1.1 204 No Content\r\n\r\n"], 1).await;
    let mut c = conn(&addr).await;
    let req = get(&addr, "/");
    assert_eq!(c.send(&req).await.unwrap(), 200);
    assert_eq!(
        c.send(&req).await.unwrap(),
        204,
        "the chunked body was consumed exactly"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn informational_heads_are_skipped_and_head_responses_have_no_body() {
    let (addr, server) = serve(
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes",
        ],
        usize::MAX,
    )
    .await;
    let mut c = conn(&addr).await;
    let url: Uri = format!("http://{addr}/upload").parse().unwrap();
    let post = EncodedRequest::new(
        &Method::POST,
        &url,
        &[(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        )],
        &Bytes::from_static(b"abc"),
    )
    .unwrap();
    assert_eq!(c.send(&post).await.unwrap(), 201);
    let head = EncodedRequest::new(&Method::HEAD, &url, &[], &Bytes::new()).unwrap();
    assert_eq!(c.send(&head).await.unwrap(), 200);
    assert_eq!(c.send(&get(&addr, "/")).await.unwrap(), 200);
    let seen = server.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen[0]),
        format!(
            "POST /upload HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nabc"
        )
    );
}

#[tokio::test]
async fn a_body_up_to_the_close_and_connection_close_end_reuse() {
    let (addr, server) = serve(
        vec![b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\n\r\nthe rest of the stream"],
        4,
    )
    .await;
    let mut c = conn(&addr).await;
    let req = get(&addr, "/");
    let sending = tokio::spawn(async move {
        let status = c.send(&req).await;
        (status, c)
    });
    server.await.unwrap(); // the server task ends and closes the connection
    let (status, mut c) = sending.await.unwrap();
    assert_eq!(status.unwrap(), 200);
    assert!(!c.reusable());
    assert!(c.send(&get(&addr, "/")).await.is_err());
}

#[tokio::test]
async fn truncated_and_malformed_responses_are_errors() {
    let (addr, server) = serve(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
        100,
    )
    .await;
    let mut c = conn(&addr).await;
    let req = get(&addr, "/");
    let sending = tokio::spawn(async move { c.send(&req).await });
    server.await.unwrap();
    let err = sending.await.unwrap().unwrap_err();
    assert!(err.contains("middle of a response body"), "{err}");

    let (addr, server) = serve(vec![b"HTTP/1.1 abc\r\n\r\n"], 100).await;
    let mut c = conn(&addr).await;
    let err = c.send(&get(&addr, "/")).await.unwrap_err();
    assert!(err.contains("malformed response head"), "{err}");
    server.await.unwrap();

    let (addr, server) = serve(
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
        100,
    )
    .await;
    let mut c = conn(&addr).await;
    let err = c.send(&get(&addr, "/")).await.unwrap_err();
    assert!(err.contains("invalid chunk size"), "{err}");
    server.await.unwrap();
}
