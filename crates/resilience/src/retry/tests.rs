#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::breaker::{BreakerConfig, CircuitBreakerLayer};
use crate::test_support::{Act, Log, TestError, upstream};
use crate::{Conditions, FailureKind};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn config() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        conditions: Conditions::none().status_5xx(),
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        ..RetryConfig::default()
    }
}

fn get(body: &'static str) -> Request<Full<Bytes>> {
    Request::get("/x")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn with_method(m: Method) -> Request<Full<Bytes>> {
    Request::builder()
        .method(m)
        .uri("/x")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

type Chunked =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunked(total: usize, chunk: usize) -> (Chunked, Bytes) {
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let frames: Vec<_> = data
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    (
        StreamBody::new(futures_util::stream::iter(frames)),
        Bytes::from(data),
    )
}

async fn send<S, B>(svc: &mut S, req: Request<B>) -> Result<http::Response<()>, TestError>
where
    S: Service<Request<B>, Response = http::Response<()>, Error = TestError>,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn flaky_upstream_every_third_call_is_fully_hidden() {
    fastrand::seed(1);
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(config());
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n % 3 == 0 {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    }));
    for _ in 0..300 {
        let resp = send(&mut svc, get("hi")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let stats = layer.stats();
    // 300 good calls plus one failed call for every third: calls 3, 6, …, 447 (149) failed,
    // each one retried once.
    assert_eq!(log.calls(), 449);
    assert_eq!(stats.retries(RetryReason::Status), 149);
    assert_eq!(
        stats
            .succeeded_after_retry
            .load(std::sync::atomic::Ordering::Relaxed),
        149
    );
    assert_eq!(
        stats
            .budget_exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn without_retries_the_flaky_upstream_shows() {
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(RetryConfig {
        max_attempts: 1,
        ..config()
    });
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n % 3 == 0 {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    }));
    let mut failed = 0;
    for _ in 0..30 {
        if send(&mut svc, get("hi")).await.unwrap().status() != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(failed, 10);
    assert_eq!(
        log.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == "1")
            .count(),
        30
    );
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_its_number() {
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(config());
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(502)));
    let mut req = get("");
    req.headers_mut()
        .insert(X_MESH_ATTEMPT, http::HeaderValue::from_static("7"));
    let resp = send(&mut svc, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(*log.attempts.lock().unwrap(), ["1", "2", "3"]);
    assert_eq!(
        layer
            .stats()
            .attempts_exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(layer.stats().retries(RetryReason::Status), 2);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_methods_are_not_retried_unless_configured() {
    for m in [Method::POST, Method::PATCH] {
        let log = Arc::new(Log::default());
        let mut svc =
            RetryLayer::new(config()).layer_service(upstream(log.clone(), |_| Act::Status(503)));
        let resp = send(&mut svc, with_method(m.clone())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(log.calls(), 1, "{m} must not be retried");
    }
    // Idempotent methods are.
    for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
        let log = Arc::new(Log::default());
        let mut svc =
            RetryLayer::new(config()).layer_service(upstream(log.clone(), |_| Act::Status(503)));
        send(&mut svc, with_method(m)).await.unwrap();
        assert_eq!(log.calls(), 3);
    }
    // `Always`: like idempotent ones, body replayed.
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        non_idempotent: NonIdempotent::Always,
        ..config()
    };
    let mut svc = RetryLayer::new(cfg).layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::Status(503)
        } else {
            Act::Status(201)
        }
    }));
    assert_eq!(
        send(&mut svc, with_method(Method::POST))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        *log.bodies.lock().unwrap(),
        [
            Bytes::from_static(b"payload"),
            Bytes::from_static(b"payload")
        ]
    );
    // `Unprocessed`: connect failures yes, responses no.
    let cfg = RetryConfig {
        non_idempotent: NonIdempotent::Unprocessed,
        ..config()
    };
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(cfg.clone()).layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::Fail(FailureKind::ConnectFailure)
        } else {
            Act::Status(200)
        }
    }));
    assert_eq!(
        send(&mut svc, with_method(Method::POST))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(log.calls(), 2);
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(cfg.clone())
        .layer_service(upstream(log.clone(), |_| Act::Fail(FailureKind::Reset)));
    assert_eq!(
        send(&mut svc, with_method(Method::POST)).await.err(),
        Some(TestError::Upstream(FailureKind::Reset))
    );
    assert_eq!(log.calls(), 1, "a reset may have been processed");
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(cfg).layer_service(upstream(log.clone(), |_| Act::Status(503)));
    send(&mut svc, with_method(Method::POST)).await.unwrap();
    assert_eq!(log.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn errors_are_retried_by_kind_and_the_last_error_returned() {
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        conditions: Conditions::none().connect_failure(),
        ..config()
    };
    let layer = RetryLayer::new(cfg);
    let mut svc = layer.layer_service(upstream(log.clone(), |_| {
        Act::Fail(FailureKind::ConnectFailure)
    }));
    assert_eq!(
        send(&mut svc, get("")).await.err(),
        Some(TestError::Upstream(FailureKind::ConnectFailure))
    );
    assert_eq!(log.calls(), 3);
    assert_eq!(layer.stats().retries(RetryReason::ConnectFailure), 2);
    // Not in the set: a reset is returned at once; local rejections are never retried.
    let log = Arc::new(Log::default());
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Fail(FailureKind::Reset)));
    assert!(send(&mut svc, get("")).await.is_err());
    assert_eq!(log.calls(), 1);
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(RetryConfig {
        conditions: Conditions::none().status_5xx(),
        ..config()
    })
    .layer_service(upstream(log.clone(), |_| Act::Fail(FailureKind::Rejected)));
    assert!(send(&mut svc, get("")).await.is_err());
    assert_eq!(log.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_a_trailers_only_response_is_retried() {
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        conditions: Conditions::parse(["unavailable"]).unwrap(),
        non_idempotent: NonIdempotent::Always,
        ..config()
    };
    let layer = RetryLayer::new(cfg);
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::With(200, "grpc-status", "14")
        } else {
            Act::With(200, "grpc-status", "0")
        }
    }));
    let resp = send(&mut svc, with_method(Method::POST)).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "0");
    assert_eq!(layer.stats().retries(RetryReason::Grpc), 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_is_counted_and_the_last_response_returned() {
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        budget: Some(BudgetConfig {
            ratio: 0.0,
            min_per_sec: 1,
            window: Duration::from_secs(1),
            buckets: 1,
        }),
        backoff: Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        },
        ..config()
    };
    let layer = RetryLayer::new(cfg);
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(503)));
    // Budget: 1 retry per second. Request 1: attempt, retry, then the budget is empty.
    assert_eq!(
        send(&mut svc, get("")).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(log.calls(), 2);
    let stats = layer.stats();
    assert_eq!(
        stats
            .budget_exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    send(&mut svc, get("")).await.unwrap();
    assert_eq!(log.calls(), 3);
    assert_eq!(
        stats
            .budget_exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // A second later the window has moved on.
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut svc, get("")).await.unwrap();
    assert_eq!(log.calls(), 5);
    assert_eq!(stats.retries_total(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_its_cap() {
    let cfg = RetryConfig {
        retry_after_cap: Some(Duration::from_secs(5)),
        ..config()
    };
    // Within the cap: exactly the asked delay (no backoff on top).
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(cfg.clone()).layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::With(503, "retry-after", "2")
        } else {
            Act::Status(200)
        }
    }));
    let start = Instant::now();
    assert_eq!(
        send(&mut svc, get("")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // Over the cap: clamped.
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(cfg.clone()).layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::With(503, "retry-after", "3600")
        } else {
            Act::Status(200)
        }
    }));
    let start = Instant::now();
    assert_eq!(
        send(&mut svc, get("")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // Ignored when the cap is None: full-jitter backoff (< 10 ms for the first retry, plus up to
    // 1 ms of timer granularity: tokio rounds deadlines up to the next millisecond).
    fastrand::seed(3);
    let log = Arc::new(Log::default());
    let mut svc = RetryLayer::new(RetryConfig {
        retry_after_cap: None,
        ..cfg
    })
    .layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::With(503, "retry-after", "2")
        } else {
            Act::Status(200)
        }
    }));
    let start = Instant::now();
    send(&mut svc, get("")).await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_millis(11),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_stay_within_the_ceilings() {
    fastrand::seed(42);
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        max_attempts: 5,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(250),
        },
        ..config()
    };
    let mut svc = RetryLayer::new(cfg).layer_service(upstream(log.clone(), |_| Act::Status(503)));
    let start = Instant::now();
    send(&mut svc, get("")).await.unwrap();
    // Four retries with ceilings 100, 200, 250, 250 ms (+1 ms timer granularity each).
    assert!(
        start.elapsed() <= Duration::from_millis(804),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(log.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_body_under_the_cap_is_replayed_byte_identical() {
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(RetryConfig {
        replay_buffer: 64 * 1024,
        ..config()
    });
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    }));
    let (body, want) = chunked(60 * 1024, 1000);
    let req = Request::put("/upload").body(body).unwrap();
    assert_eq!(send(&mut svc, req).await.unwrap().status(), StatusCode::OK);
    let bodies = log.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], want);
    assert_eq!(bodies[1], want, "second attempt gets the same bytes");
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_goes_through_once_complete_and_is_not_retried() {
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(RetryConfig {
        replay_buffer: 64 * 1024,
        ..config()
    });
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Status(503)));
    let (body, want) = chunked(1024 * 1024, 16 * 1024);
    let req = Request::put("/upload").body(body).unwrap();
    assert_eq!(
        send(&mut svc, req).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(log.calls(), 1);
    assert_eq!(log.bodies.lock().unwrap()[0], want, "never truncated");
    assert_eq!(
        layer
            .stats()
            .body_too_large
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_triggers_a_retry() {
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        per_try_timeout: Some(Duration::from_secs(1)),
        conditions: Conditions::none().gateway_error(),
        backoff: Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        },
        ..config()
    };
    let layer = RetryLayer::new(cfg);
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::Hang(Duration::from_secs(30))
        } else {
            Act::Status(200)
        }
    }));
    let start = Instant::now();
    assert_eq!(
        send(&mut svc, get("")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(layer.stats().retries(RetryReason::Timeout), 1);
    // Every attempt timing out: the caller gets the per-try timeout error.
    let log = Arc::new(Log::default());
    let mut svc = layer.layer_service(upstream(log.clone(), |_| {
        Act::Hang(Duration::from_secs(30))
    }));
    assert_eq!(
        send(&mut svc, get("")).await.err(),
        Some(TestError::Elapsed)
    );
    assert_eq!(log.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_applies_without_retries_too() {
    let log = Arc::new(Log::default());
    let cfg = RetryConfig {
        max_attempts: 1,
        per_try_timeout: Some(Duration::from_secs(1)),
        ..config()
    };
    let mut svc = RetryLayer::new(cfg).layer_service(upstream(log.clone(), |_| {
        Act::Hang(Duration::from_secs(30))
    }));
    assert_eq!(
        send(&mut svc, get("")).await.err(),
        Some(TestError::Elapsed)
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_max_retries_gate_stops_retries_and_is_counted() {
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        max_retries: Some(0),
        consecutive_failures: None,
        ..BreakerConfig::default()
    });
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(config()).with_retry_gate(breaker.retry_gate());
    let mut svc =
        layer.layer_service(breaker.layer_service(upstream(log.clone(), |_| Act::Status(503))));
    assert_eq!(
        send(&mut svc, get("")).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(log.calls(), 1);
    assert_eq!(
        layer
            .stats()
            .retry_overflow
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        breaker
            .handle()
            .stats()
            .overloaded_retries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn retries_through_an_open_breaker_are_not_attempted() {
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        ..BreakerConfig::default()
    });
    let log = Arc::new(Log::default());
    let layer = RetryLayer::new(config());
    let mut svc =
        layer.layer_service(breaker.layer_service(upstream(log.clone(), |_| Act::Status(503))));
    // Attempt 1 fails and opens the breaker; attempt 2 is refused by it (`Rejected`: not retried).
    let out = send(&mut svc, get("")).await;
    assert!(matches!(out, Err(TestError::Open(_))), "{out:?}");
    assert_eq!(log.calls(), 1);
}
