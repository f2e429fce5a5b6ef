//! The layers composed in the proxy's order: rate limit ▸ timeout ▸ retry ▸ breaker ▸ upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::breaker::{BreakerConfig, CircuitBreakerLayer, CircuitState};
use crate::ratelimit::{RateLimitConfig, RateLimitLayer};
use crate::retry::{RetryConfig, RetryLayer, RetryReason};
use crate::test_support::{Act, Log, TestError, upstream};
use crate::timeout::TimeoutLayer;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[tokio::test(start_paused = true)]
async fn full_stack_hides_a_flaky_upstream_then_fails_fast_when_it_dies() {
    let log = Arc::new(Log::default());
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dead.clone();
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        name: "orders".into(),
        consecutive_failures: Some(5),
        ..BreakerConfig::default()
    });
    let retry = RetryLayer::new(RetryConfig {
        per_try_timeout: Some(Duration::from_millis(500)),
        ..RetryConfig::default()
    })
    .with_retry_gate(breaker.retry_gate());
    let rate = RateLimitLayer::new(RateLimitConfig {
        rate: 1000,
        burst: 1000,
        ..RateLimitConfig::default()
    });
    let timeout = TimeoutLayer::new(Some(Duration::from_secs(2)));
    let mut svc = rate.layer_service(timeout.layer_service(retry.layer_service(
        breaker.layer_service(upstream(log.clone(), move |n| {
            if d.load(std::sync::atomic::Ordering::SeqCst) {
                Act::Fail(crate::FailureKind::ConnectFailure)
            } else if n % 3 == 0 {
                Act::Status(503)
            } else {
                Act::Status(200)
            }
        })),
    )));
    let req = || {
        Request::get("/")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap()
    };
    for _ in 0..100 {
        let fut = assert_send(svc.ready().await.unwrap().call(req()));
        assert_eq!(fut.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(retry.stats().retries(RetryReason::Status), 49);
    assert_eq!(breaker.handle().state(), CircuitState::Closed);

    // The upstream dies: connect failures (retried, then the breaker opens), then fast failures.
    dead.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = log.calls();
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(svc.ready().await.unwrap().call(req()).await.unwrap_err());
    }
    assert_eq!(breaker.handle().state(), CircuitState::Open);
    assert_eq!(log.calls() - before, 5, "no upstream calls once open");
    assert!(matches!(outcomes.last(), Some(TestError::Open(_))));
}
