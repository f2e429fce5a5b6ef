#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::test_support::{Act, Log, TestError, upstream};
use crate::{Conditions, FailureKind};
use http::{Request, StatusCode};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

type Req = Request<http_body_util::Empty<bytes::Bytes>>;

fn req() -> Req {
    Request::get("/")
        .body(http_body_util::Empty::new())
        .unwrap()
}

fn cfg() -> BreakerConfig {
    BreakerConfig {
        name: "test".into(),
        consecutive_failures: Some(3),
        open_base: Duration::from_secs(10),
        open_max: Duration::from_secs(40),
        ..BreakerConfig::default()
    }
}

/// An upstream whose answers are switched by the test: 503 while `failing`, else 200.
fn switchable(
    log: Arc<Log>,
    failing: Arc<AtomicBool>,
) -> impl Service<
    Req,
    Response = http::Response<()>,
    Error = TestError,
    Future = impl Future<Output = Result<http::Response<()>, TestError>> + Send,
> + Clone {
    upstream(log, move |_| {
        if failing.load(Ordering::SeqCst) {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    })
}

async fn send<S>(svc: &mut S) -> Result<http::Response<()>, TestError>
where
    S: Service<Req, Response = http::Response<()>, Error = TestError>,
{
    svc.ready().await?.call(req()).await
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_then_half_open_probe_closes() {
    let log = Arc::new(Log::default());
    let failing = Arc::new(AtomicBool::new(true));
    let layer = CircuitBreakerLayer::new(cfg());
    let h = layer.handle();
    let mut svc = layer.layer_service(switchable(log.clone(), failing.clone()));
    let t0 = Instant::now();
    assert_eq!(h.state(), CircuitState::Closed);
    for i in 1..=3 {
        assert_eq!(
            send(&mut svc).await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(h.consecutive_failures(), i);
    }
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.since(), t0);
    assert_eq!(h.open_until(), Some(t0 + Duration::from_secs(10)));
    // Open: fail fast, the upstream is not called.
    for _ in 0..5 {
        let e = send(&mut svc).await.unwrap_err();
        assert_eq!(
            e,
            TestError::Open(CircuitOpen {
                state: CircuitState::Open,
                retry_in: Duration::from_secs(10)
            })
        );
    }
    assert_eq!(log.calls(), 3);
    assert_eq!(count(&h.stats().rejected_open), 5);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(
        matches!(send(&mut svc).await, Err(TestError::Open(CircuitOpen { retry_in, .. })) if retry_in == Duration::from_millis(1))
    );
    assert_eq!(log.calls(), 3);
    // The open period is over: the next request is the probe; it succeeds and closes the circuit.
    tokio::time::advance(Duration::from_millis(1)).await;
    failing.store(false, Ordering::SeqCst);
    assert_eq!(send(&mut svc).await.unwrap().status(), StatusCode::OK);
    assert_eq!(log.calls(), 4);
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.since(), t0 + Duration::from_secs(10));
    let s = h.stats();
    assert_eq!(
        (count(&s.opened), count(&s.half_opened), count(&s.closed)),
        (1, 1, 1)
    );
    assert_eq!((count(&s.failures), count(&s.successes)), (3, 1));
    // Successes reset the consecutive count.
    failing.store(true, Ordering::SeqCst);
    send(&mut svc).await.unwrap();
    send(&mut svc).await.unwrap();
    failing.store(false, Ordering::SeqCst);
    send(&mut svc).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    send(&mut svc).await.unwrap();
    send(&mut svc).await.unwrap();
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_for_longer_up_to_the_cap_and_close_resets_it() {
    let log = Arc::new(Log::default());
    let failing = Arc::new(AtomicBool::new(true));
    let layer = CircuitBreakerLayer::new(cfg());
    let h = layer.handle();
    let mut svc = layer.layer_service(switchable(log.clone(), failing.clone()));
    for _ in 0..3 {
        send(&mut svc).await.unwrap();
    }
    let mut open_for = vec![];
    for _ in 0..4 {
        assert_eq!(h.state(), CircuitState::Open);
        let d = h.open_until().unwrap() - Instant::now();
        open_for.push(d.as_secs());
        tokio::time::advance(d).await;
        // The probe fails: re-open, longer.
        assert_eq!(
            send(&mut svc).await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(open_for, [10, 20, 40, 40]);
    assert_eq!(count(&h.stats().opened), 5);
    assert_eq!(count(&h.stats().half_opened), 4);
    // Recover, then trip again: back to the base duration.
    tokio::time::advance(h.open_until().unwrap() - Instant::now()).await;
    failing.store(false, Ordering::SeqCst);
    send(&mut svc).await.unwrap();
    assert_eq!(h.state(), CircuitState::Closed);
    failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(
        h.open_until().unwrap() - Instant::now(),
        Duration::from_secs(10)
    );
}

#[tokio::test(start_paused = true)]
async fn error_rate_opens_only_with_the_minimum_volume() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: None,
        error_rate: Some(ErrorRate {
            threshold: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            buckets: 10,
        }),
        ..cfg()
    });
    let h = layer.handle();
    // Even calls fail: 50 %.
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n % 2 == 0 {
            Act::Status(500)
        } else {
            Act::Status(200)
        }
    }));
    for _ in 0..9 {
        send(&mut svc).await.unwrap();
        assert_eq!(h.state(), CircuitState::Closed, "under the minimum volume");
    }
    send(&mut svc).await.unwrap(); // 10th: 5 of 10 failed
    assert_eq!(h.state(), CircuitState::Open);

    // Below the threshold nothing happens, and old failures slide out of the window.
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: None,
        error_rate: Some(ErrorRate {
            threshold: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            buckets: 10,
        }),
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n <= 3 || n % 3 == 0 {
            Act::Status(500)
        } else {
            Act::Status(200)
        }
    }));
    for _ in 0..3 {
        send(&mut svc).await.unwrap(); // 3 failures, under the minimum of 4
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..30 {
        send(&mut svc).await.unwrap(); // 1 in 3 fails: 33 %
    }
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failures_are_what_failure_on_says() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        failure_on: Conditions::none().gateway_error(),
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(upstream(log.clone(), |n| match n {
        1 => Act::Status(500),                       // not a gateway error
        2 => Act::Fail(FailureKind::Local),          // the request's own fault
        3 => Act::With(200, "grpc-status", "14"),    // not in the set
        _ => Act::Fail(FailureKind::ConnectFailure), // transport failure
    }));
    for _ in 0..3 {
        let _ = send(&mut svc).await;
        assert_eq!(h.state(), CircuitState::Closed);
    }
    let _ = send(&mut svc).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_n_probes_through() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        half_open_probes: 2,
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(upstream(log.clone(), |n| {
        if n == 1 {
            Act::Status(503)
        } else {
            Act::Hang(Duration::from_secs(1))
        }
    }));
    send(&mut svc).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let p1 = svc.ready().await.unwrap().call(req());
    let p2 = svc.ready().await.unwrap().call(req());
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let e = send(&mut svc).await.unwrap_err();
    assert_eq!(
        e,
        TestError::Open(CircuitOpen {
            state: CircuitState::HalfOpen,
            retry_in: Duration::ZERO
        })
    );
    // A cancelled probe gives its slot back.
    drop(p2);
    assert_eq!(count(&h.stats().cancelled), 1);
    let p3 = svc.ready().await.unwrap().call(req());
    let (a, b) = tokio::join!(p1, p3);
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(log.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stale_failure_does_not_reopen_a_recovered_breaker() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        ..cfg()
    });
    let h = layer.handle();
    // Call 1 is slow and fails late; call 2 fails at once and opens the breaker.
    let mut svc = layer.layer_service(upstream(log.clone(), |n| match n {
        1 => Act::Hang(Duration::from_secs(15)),
        2 => Act::Status(503),
        _ => Act::Status(200),
    }));
    let slow = svc.ready().await.unwrap().call(req());
    let slow = tokio::spawn(slow);
    tokio::task::yield_now().await;
    send(&mut svc).await.unwrap();
    assert_eq!(h.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    send(&mut svc).await.unwrap(); // probe succeeds
    assert_eq!(h.state(), CircuitState::Closed);
    // The slow call (admitted before the breaker opened) finishes now; it counts, no transition.
    let _ = slow.await.unwrap();
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn max_active_requests_overloads_at_once() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        max_active: Some(2),
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(upstream(log.clone(), |_| Act::Hang(Duration::from_secs(1))));
    let a = svc.ready().await.unwrap().call(req());
    let b = svc.ready().await.unwrap().call(req());
    assert_eq!(h.active_requests(), 2);
    let e = send(&mut svc).await.unwrap_err();
    assert_eq!(
        e,
        TestError::Overloaded(Overloaded {
            threshold: Threshold::ActiveRequests,
            limit: 2
        })
    );
    assert_eq!(count(&h.stats().overloaded_active), 1);
    let (ra, rb) = tokio::join!(a, b);
    assert!(ra.is_ok() && rb.is_ok());
    assert_eq!(h.active_requests(), 0);
    assert!(send(&mut svc).await.is_ok());
    assert_eq!(log.calls(), 3);
    // Overload is not a failure: the state machine did not move.
    assert_eq!(h.state(), CircuitState::Closed);
}

/// A service that is not ready until `open` is set.
#[derive(Clone)]
struct Gate {
    open: Arc<AtomicBool>,
    wakers: Arc<Mutex<Vec<Waker>>>,
    calls: Arc<AtomicU32>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

impl Service<Req> for Gate {
    type Response = http::Response<()>;
    type Error = TestError;
    type Future = std::future::Ready<Result<http::Response<()>, TestError>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            self.wakers.lock().unwrap().push(cx.waker().clone());
            Poll::Pending
        }
    }
    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn max_pending_requests_overloads_at_once() {
    let gate = Gate {
        open: Arc::default(),
        wakers: Arc::default(),
        calls: Arc::default(),
    };
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        max_pending: Some(1),
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(gate.clone());
    // poll_ready never waits; the first request waits for readiness in its future.
    let first = tokio::spawn(svc.ready().await.unwrap().call(req()));
    tokio::task::yield_now().await;
    assert_eq!(h.pending_requests(), 1);
    let e = send(&mut svc).await.unwrap_err();
    assert_eq!(
        e,
        TestError::Overloaded(Overloaded {
            threshold: Threshold::PendingRequests,
            limit: 1
        })
    );
    assert_eq!(count(&h.stats().overloaded_pending), 1);
    gate.open();
    assert!(first.await.unwrap().is_ok());
    assert_eq!(h.pending_requests(), 0);
    assert_eq!(h.active_requests(), 0);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn max_retries_gate_hands_out_bounded_permits() {
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        max_retries: Some(2),
        ..cfg()
    });
    let gate = layer.retry_gate();
    let h = layer.handle();
    let a = gate.try_acquire().unwrap();
    let _b = gate.try_acquire().unwrap();
    assert_eq!(h.active_retries(), 2);
    assert!(gate.try_acquire().is_none());
    assert_eq!(count(&h.stats().overloaded_retries), 1);
    assert_eq!(h.stats().overloaded_total(), 1);
    drop(a);
    assert!(gate.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_release_their_slots_without_counting_as_failures() {
    let log = Arc::new(Log::default());
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        ..cfg()
    });
    let h = layer.handle();
    let mut svc = layer.layer_service(upstream(log.clone(), |_| {
        Act::Hang(Duration::from_secs(60))
    }));
    let fut = svc.ready().await.unwrap().call(req());
    assert_eq!(h.active_requests(), 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .is_err()
    );
    assert_eq!(h.active_requests(), 0);
    assert_eq!(count(&h.stats().cancelled), 1);
    assert_eq!(h.state(), CircuitState::Closed);
}
