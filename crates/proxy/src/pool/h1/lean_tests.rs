//! Exchanges without a request body (`H1Pool::send_lean`) against real sockets: a hyper server,
//! and raw servers that write exact bytes.

use super::idle::Reusable;
use super::tests::{eventually, settings, upstream};
use super::*;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Empty};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Pool = Arc<H1Pool<Empty<Bytes>>>;

fn pool() -> Pool {
    H1Pool::new(settings(Clock::system()))
}

fn request(method: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "example.test")
        .body(Empty::new())
        .unwrap()
}

async fn send(
    pool: &Pool,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<Response<LeanBody>, PoolError> {
    pool.send_lean(addr, request(method, path), pool.settings.clock.now())
        .await
}

/// Reads one request head from `s` (none of these requests has a body); false at its end.
async fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A server that runs `serve` on every connection it accepts; counts the connections.
async fn raw<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s, n));
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection_and_take_bodies_whole() {
    let up = upstream().await;
    let pool = pool();
    for i in 0..5 {
        let path = format!("/r{i}");
        let resp = send(&pool, up.addr, "GET", &path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // The body came with the head: the connection is back before the body is read.
        assert_eq!(pool.idle(up.addr), 1);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, path.as_bytes());
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    let resp = send(&pool, up.addr, "HEAD", "/h").await.unwrap();
    assert!(resp.body().is_end_stream());
    let resp = send(&pool, up.addr, "GET", "/empty").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_end_stream());
    assert_eq!(
        (up.accepted.load(Ordering::SeqCst), pool.idle(up.addr)),
        (1, 1)
    );
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_used() {
    let up = upstream().await;
    let pool = pool();
    let resp = send(&pool, up.addr, "GET", "/close").await.unwrap();
    resp.into_body().collect().await.unwrap();
    // `connection: close`: not kept.
    assert_eq!(pool.idle(up.addr), 0);
    // A connection closed by the server while idle is seen at checkout and skipped.
    let (addr, accepted) = raw(|mut s, _| async move {
        if read_request(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
        // Closed right after answering, like an idle timeout.
    })
    .await;
    for _ in 0..3 {
        let resp = send(&pool, addr, "POST", "/").await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        // Without a look at the socket the next POST would go on the closed connection and,
        // unanswered, fail (a POST is not sent twice).
        eventually("the server's close to be seen", || {
            let slot = pool.slot(addr);
            let mut idle = slot.lean.lock();
            idle.len() == 1 && idle.iter_mut().all(|(conn, _)| !conn.is_open())
        })
        .await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// The server answers one request per connection, then reads the next and closes without
/// answering (an idle close that crossed the request).
async fn answers_once(mut s: TcpStream, _: usize) {
    if read_request(&mut s).await {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    }
    read_request(&mut s).await;
}

#[tokio::test]
async fn an_idempotent_request_unanswered_on_a_reused_connection_goes_on_a_new_one() {
    let (addr, accepted) = raw(answers_once).await;
    let pool = pool();
    for _ in 0..3 {
        let resp = send(&pool, addr, "GET", "/").await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    // Each reused connection went unanswered; each request was sent again on a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_post_unanswered_is_not_sent_twice() {
    let (addr, accepted) = raw(answers_once).await;
    let pool = pool();
    let resp = send(&pool, addr, "POST", "/").await.unwrap();
    resp.into_body().collect().await.unwrap();
    let err = send(&pool, addr, "POST", "/").await.unwrap_err();
    assert!(matches!(err, PoolError::Exchange(_)), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_bodies_stream_with_trailers_and_close_delimited_ones_end_the_connection() {
    let (addr, accepted) = raw(|mut s, n| async move {
        while read_request(&mut s).await {
            if n == 0 {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = s
                    .write_all(b"\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n")
                    .await;
            } else {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
                return;
            }
        }
    })
    .await;
    let pool = pool();
    for _ in 0..2 {
        let resp = send(&pool, addr, "GET", "/").await.unwrap();
        assert!(!resp.body().is_end_stream());
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().map(|t| t["x-sum"].clone()),
            Some("11".parse().unwrap())
        );
        assert_eq!(collected.to_bytes(), "hello world");
        assert_eq!(pool.idle(addr), 1);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // A second connection (the first is checked out by nobody: open one more alongside).
    let held = pool.slot(addr).lean.checkout(pool.settings.clock.now());
    let resp = send(&pool, addr, "GET", "/").await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "until the end");
    // Ended by the close: not kept.
    assert_eq!(pool.idle(addr), 0);
    drop(held);
}

#[tokio::test]
async fn a_truncated_body_is_an_error_and_an_unfinished_one_closes_its_connection() {
    let (addr, _) = raw(|mut s, _| async move {
        if read_request(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await;
        }
    })
    .await;
    let pool = pool();
    let resp = send(&pool, addr, "GET", "/").await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("closed before the end"), "{err}");
    assert_eq!(pool.idle(addr), 0);

    let up = upstream().await;
    let resp = send(&pool, up.addr, "GET", "/big").await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    assert_eq!(pool.idle(up.addr), 0);
    eventually("the server to see the close", || {
        up.open.load(Ordering::SeqCst) == 0
    })
    .await;
    let resp = send(&pool, up.addr, "GET", "/big").await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(
        (up.accepted.load(Ordering::SeqCst), pool.idle(up.addr)),
        (2, 1)
    );
}

#[tokio::test]
async fn a_malformed_response_is_an_error_and_the_sweeper_drops_closed_connections() {
    let (addr, _) = raw(|mut s, _| async move {
        if read_request(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
                .await;
        }
    })
    .await;
    let pool = pool();
    let err = send(&pool, addr, "GET", "/").await.unwrap_err();
    assert!(err.to_string().contains("invalid content-length"), "{err}");

    let up = upstream().await;
    let sweeping = H1Pool::<Empty<Bytes>>::new(H1Settings {
        idle_timeout: Duration::from_millis(40),
        ..settings(Clock::system())
    });
    let resp = sweeping
        .send_lean(up.addr, request("GET", "/a"), sweeping.settings.clock.now())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(sweeping.idle(up.addr), 1);
    eventually("the sweeper to close the idle connection", || {
        sweeping.idle(up.addr) == 0 && up.open.load(Ordering::SeqCst) == 0
    })
    .await;
}
