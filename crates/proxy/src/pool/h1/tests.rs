use super::*;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use otlp_mesh_balance::ManualClock;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// A real HTTP/1.1 server counting the connections it accepted and still has open.
/// `/close` answers with `Connection: close`, `/empty` with 204, `/big` with 1 MiB.
pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    pub(super) accepted: Arc<AtomicUsize>,
    pub(super) open: Arc<AtomicUsize>,
}

pub(super) async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (a, o) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().to_string();
                    let mut resp = match path.as_str() {
                        "/empty" => {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::NO_CONTENT;
                            r
                        }
                        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20]))),
                        _ => Response::new(Full::new(Bytes::from(path.clone()))),
                    };
                    if path == "/close" {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        accepted,
        open,
    }
}

pub(super) fn settings(clock: Clock) -> H1Settings {
    H1Settings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_idle: 8,
        clock,
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "example.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends, reads the whole body and hands the connection back.
async fn exchange(pool: &H1Pool<Full<Bytes>>, addr: SocketAddr, path: &str) -> Bytes {
    let (resp, lease) = pool
        .send(addr, get(path), pool.settings.clock.now())
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    lease.release();
    body
}

pub(super) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let up = upstream().await;
    let pool = H1Pool::new(settings(Clock::system()));
    for i in 0..5 {
        let path = format!("/r{i}");
        assert_eq!(exchange(&pool, up.addr, &path).await, path.as_bytes());
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(up.addr), 1);
}

#[tokio::test]
async fn concurrent_requests_use_separate_connections_and_idle_is_bounded() {
    let up = upstream().await;
    let pool = H1Pool::new(H1Settings {
        max_idle: 2,
        ..settings(Clock::system())
    });
    let mut held = Vec::new();
    for i in 0..4 {
        // Response heads only: each exchange holds its connection until released.
        held.push(
            pool.send(up.addr, get(&format!("/c{i}")), pool.settings.clock.now())
                .await
                .unwrap(),
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
    for (resp, lease) in held {
        resp.into_body().collect().await.unwrap();
        lease.release();
    }
    assert_eq!(pool.idle(up.addr), 2, "only max_idle connections are kept");
    eventually("the two extra connections closed", || {
        up.open.load(Ordering::SeqCst) == 2
    })
    .await;
    exchange(&pool, up.addr, "/again").await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        4,
        "an idle one was reused"
    );
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_return_the_connection() {
    let up = upstream().await;
    let pool = H1Pool::new(settings(Clock::system()));
    let (resp, lease) = pool
        .send(up.addr, get("/big"), pool.settings.clock.now())
        .await
        .unwrap();
    drop(resp);
    drop(lease);
    assert_eq!(pool.idle(up.addr), 0);
    eventually("the connection closed", || {
        up.open.load(Ordering::SeqCst) == 0
    })
    .await;
    exchange(&pool, up.addr, "/next").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_the_server_closes_are_not_reused_and_no_request_fails() {
    let up = upstream().await;
    let pool = H1Pool::new(settings(Clock::system()));
    for i in 0..3 {
        assert_eq!(
            exchange(&pool, up.addr, "/close").await,
            "/close".as_bytes()
        );
        // Whether or not hyper has seen the close yet, the next request succeeds.
        assert_eq!(
            exchange(&pool, up.addr, &format!("/after{i}")).await,
            format!("/after{i}").as_bytes()
        );
    }
    assert!(up.accepted.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn an_empty_response_releases_at_once() {
    let up = upstream().await;
    let pool = H1Pool::new(settings(Clock::system()));
    let (resp, lease) = pool
        .send(up.addr, get("/empty"), pool.settings.clock.now())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(http_body::Body::is_end_stream(resp.body()));
    lease.release();
    exchange(&pool, up.addr, "/x").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_past_the_timeout_are_not_reused() {
    let up = upstream().await;
    let clock = ManualClock::new();
    let pool = H1Pool::new(H1Settings {
        idle_timeout: Duration::from_secs(90),
        ..settings(clock.clone().into())
    });
    exchange(&pool, up.addr, "/a").await;
    clock.advance(Duration::from_secs(89));
    exchange(&pool, up.addr, "/b").await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "fresh enough: reused"
    );
    clock.advance(Duration::from_secs(90));
    exchange(&pool, up.addr, "/c").await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "expired: a new connection"
    );
    eventually("the expired connection closed", || {
        up.open.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn the_sweeper_closes_idle_connections() {
    let up = upstream().await;
    let pool = H1Pool::new(H1Settings {
        idle_timeout: Duration::from_millis(100),
        ..settings(Clock::system())
    });
    exchange(&pool, up.addr, "/a").await;
    assert_eq!(pool.idle(up.addr), 1);
    eventually("the idle connection closed", || {
        up.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(pool.idle(up.addr), 0);
}

#[tokio::test]
async fn retain_drops_removed_endpoints_connections() {
    let (a, b) = (upstream().await, upstream().await);
    let pool = H1Pool::new(settings(Clock::system()));
    exchange(&pool, a.addr, "/a").await;
    exchange(&pool, b.addr, "/b").await;
    pool.retain(&[b.addr]);
    eventually("a's connection closed", || {
        a.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(b.open.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(b.addr), 1);
}

#[tokio::test]
async fn connect_failures_are_connect_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = H1Pool::new(settings(Clock::system()));
    match pool.send(addr, get("/"), pool.settings.clock.now()).await {
        Err(PoolError::Connect(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected a connect error, got {other:?}"),
    }
}
