#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::test_support::{Act, Log, TestError, upstream};
use http::{HeaderName, Request};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

type Req = Request<http_body_util::Empty<bytes::Bytes>>;

fn cfg(rate: u32, burst: u32, max_keys: usize) -> RateLimitConfig {
    RateLimitConfig {
        rate,
        per: Duration::from_secs(1),
        burst,
        max_keys,
    }
}

fn req(client: Option<&'static str>) -> Req {
    let mut b = Request::get("/");
    if let Some(c) = client {
        b = b.header("x-client", c);
    }
    b.body(http_body_util::Empty::new()).unwrap()
}

async fn send<S>(svc: &mut S, r: Req) -> Result<http::Response<()>, TestError>
where
    S: Service<Req, Response = http::Response<()>, Error = TestError>,
{
    svc.ready().await?.call(r).await
}

#[tokio::test(start_paused = true)]
async fn refill_arithmetic_with_paused_time() {
    let l = RateLimiter::new(&cfg(10, 5, 0), Arc::default());
    let t0 = Instant::now();
    // A full bucket: 5 at once, remaining counts down; the bucket is full again 100 ms per token later.
    for i in 1..=5u32 {
        let a = l.check(None).unwrap();
        assert_eq!(a.limit, 5);
        assert_eq!(a.remaining, 5 - i);
        assert_eq!(a.reset, Duration::from_millis(100 * u64::from(i)));
    }
    let e = l.check(None).unwrap_err();
    assert_eq!(
        e,
        RateLimited {
            retry_after: Duration::from_millis(100),
            limit: 5,
            remaining: 0,
            reset: Duration::from_millis(500)
        }
    );
    // 10/s: one token per 100 ms.
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(
        l.check(None).unwrap_err().retry_after,
        Duration::from_millis(1)
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(l.check(None).unwrap().remaining, 0);
    assert!(l.check(None).is_err());
    // After a long idle time the bucket holds `burst` tokens, not more.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        l.check(None).unwrap();
    }
    assert!(l.check(None).is_err());
    // Sustained: exactly `rate` per second.
    let start = Instant::now();
    let mut allowed = 0;
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::advance(Duration::from_millis(10)).await;
        if l.check_at(None, Instant::now()).is_ok() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
    assert_eq!(l.stats().allowed.load(Ordering::Relaxed), 5 + 1 + 5 + 100);
    assert!(t0.elapsed() > Duration::from_secs(70));
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_the_inner_service_is_not_called() {
    let log = Arc::new(Log::default());
    let layer = RateLimitLayer::new(cfg(1, 2, 0));
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(200)));
    assert!(send(&mut svc, req(None)).await.is_ok());
    assert!(send(&mut svc, req(None)).await.is_ok());
    match send(&mut svc, req(None)).await {
        Err(TestError::Limited(l)) => {
            assert_eq!(l.retry_after, Duration::from_secs(1));
            assert_eq!((l.limit, l.remaining), (2, 0));
            assert_eq!(l.reset, Duration::from_secs(2));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(log.calls(), 2);
    let s = layer.limiter().stats();
    assert_eq!(
        (
            s.allowed.load(Ordering::Relaxed),
            s.limited.load(Ordering::Relaxed)
        ),
        (2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_limits_are_independent() {
    let log = Arc::new(Log::default());
    let layer = RateLimitLayer::keyed(
        cfg(1, 2, 100),
        HeaderKey(HeaderName::from_static("x-client")),
    );
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(200)));
    for _ in 0..2 {
        assert!(send(&mut svc, req(Some("a"))).await.is_ok());
    }
    assert!(send(&mut svc, req(Some("a"))).await.is_err());
    // Client b has its own bucket; keyless requests share the unkeyed one.
    for _ in 0..2 {
        assert!(send(&mut svc, req(Some("b"))).await.is_ok());
        assert!(send(&mut svc, req(None)).await.is_ok());
    }
    assert!(send(&mut svc, req(Some("b"))).await.is_err());
    assert!(send(&mut svc, req(None)).await.is_err());
    assert_eq!(layer.limiter().keys(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(send(&mut svc, req(Some("a"))).await.is_ok());
    assert!(send(&mut svc, req(Some("a"))).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn key_table_is_bounded_and_evicts_the_least_recently_used_key() {
    let log = Arc::new(Log::default());
    let layer = RateLimitLayer::keyed(cfg(1, 1, 2), HeaderKey(HeaderName::from_static("x-client")));
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(200)));
    assert!(send(&mut svc, req(Some("a"))).await.is_ok());
    assert!(send(&mut svc, req(Some("b"))).await.is_ok());
    assert!(send(&mut svc, req(Some("a"))).await.is_err()); // a: limited, and now most recent
    assert!(send(&mut svc, req(Some("c"))).await.is_ok()); // evicts b (least recently used)
    let limiter = layer.limiter();
    assert_eq!(limiter.keys(), 2);
    assert_eq!(limiter.key_capacity(), 2);
    assert_eq!(limiter.stats().evicted.load(Ordering::Relaxed), 1);
    assert!(
        send(&mut svc, req(Some("a"))).await.is_err(),
        "a kept its state"
    );
    // b was forgotten: it starts again with a full bucket (the table fails open), evicting c.
    assert!(send(&mut svc, req(Some("b"))).await.is_ok());
    assert_eq!(limiter.stats().evicted.load(Ordering::Relaxed), 2);
    assert_eq!(limiter.keys(), 2);
    // Many distinct keys never grow the table.
    for i in 0..1000u32 {
        let mut h = limiter.hasher();
        std::hash::Hasher::write_u32(&mut h, i);
        let _ = limiter.check(Some(std::hash::Hasher::finish(&h)));
    }
    assert_eq!(limiter.keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn extension_and_closure_keys() {
    let log = Arc::new(Log::default());
    let layer = RateLimitLayer::keyed(cfg(1, 1, 100), ExtensionKey::<IpAddr>::new());
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(200)));
    let from = |ip: [u8; 4]| {
        let mut r = req(None);
        r.extensions_mut().insert(IpAddr::from(ip));
        r
    };
    assert!(send(&mut svc, from([10, 0, 0, 1])).await.is_ok());
    assert!(send(&mut svc, from([10, 0, 0, 1])).await.is_err());
    assert!(send(&mut svc, from([10, 0, 0, 2])).await.is_ok());

    let by_path = |r: &Req, h: &mut dyn std::hash::Hasher| {
        h.write(r.uri().path().as_bytes());
        true
    };
    let layer = RateLimitLayer::keyed(cfg(1, 1, 100), by_path);
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(200)));
    assert!(send(&mut svc, req(None)).await.is_ok());
    assert!(send(&mut svc, req(None)).await.is_err());
}
