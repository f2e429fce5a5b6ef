//! Overhead of the resilience stack (rate limit ▸ timeout ▸ retry ▸ breaker) around a no-op
//! `service_fn`, against the bare no-op service in the same run. Each iteration builds a small
//! GET request (as the proxy would hand it over), drives `ready` + `call` to completion on a
//! current-thread runtime, and drops the response; so the difference between the `bare` and
//! `stack_*` lines is the layers' cost per request.
//! Run with `cargo bench -p otlp-mesh-resilience --bench stack`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, Request, Response};
use http_body_util::Empty;
use otlp_mesh_resilience::breaker::{BreakerConfig, CircuitBreakerLayer, CircuitOpen, Overloaded};
use otlp_mesh_resilience::ratelimit::{HeaderKey, RateLimitConfig, RateLimitLayer, RateLimited};
use otlp_mesh_resilience::retry::{RetryConfig, RetryLayer};
use otlp_mesh_resilience::timeout::{Elapsed, TimeoutLayer};
use otlp_mesh_resilience::{FailureClass, FailureKind};
use std::hint::black_box;
use std::time::Duration;
use tower::{Service, ServiceExt, service_fn};

#[derive(Debug)]
enum BenchError {
    Rejected,
    Timeout,
}
impl FailureClass for BenchError {
    fn failure_kind(&self) -> FailureKind {
        match self {
            BenchError::Rejected => FailureKind::Rejected,
            BenchError::Timeout => FailureKind::Timeout,
        }
    }
}
impl From<Elapsed> for BenchError {
    fn from(_: Elapsed) -> Self {
        BenchError::Timeout
    }
}
impl From<Overloaded> for BenchError {
    fn from(_: Overloaded) -> Self {
        BenchError::Rejected
    }
}
impl From<CircuitOpen> for BenchError {
    fn from(_: CircuitOpen) -> Self {
        BenchError::Rejected
    }
}
impl From<RateLimited> for BenchError {
    fn from(_: RateLimited) -> Self {
        BenchError::Rejected
    }
}

fn request() -> Request<Empty<Bytes>> {
    Request::get("/api/orders/42?expand=items")
        .header("host", "orders.internal")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-client", "tenant-7")
        .body(Empty::new())
        .unwrap()
}

async fn noop<B>(_: Request<B>) -> Result<Response<Empty<Bytes>>, BenchError> {
    Ok(Response::new(Empty::new()))
}

fn unlimited() -> RateLimitConfig {
    RateLimitConfig {
        rate: u32::MAX,
        per: Duration::from_secs(1),
        burst: u32::MAX,
        max_keys: 10_000,
    }
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        per_try_timeout: Some(Duration::from_millis(500)),
        ..RetryConfig::default()
    }
}

fn run<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, mut svc: S)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>, Error = BenchError>,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
                    black_box(resp);
                }
                start.elapsed()
            })
        })
    });
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    run(c, &rt, "bare", service_fn(noop));

    // Built once and reused (the recommended wiring: one stack per route, cloned per request).
    let rate = RateLimitLayer::new(unlimited());
    let timeout = TimeoutLayer::new(Some(Duration::from_secs(2)));
    let retry = RetryLayer::new(retry_config());
    let breaker = CircuitBreakerLayer::new(BreakerConfig::default());
    let svc = rate.layer_service(
        timeout.layer_service(retry.layer_service(breaker.layer_service(service_fn(noop)))),
    );
    run(c, &rt, "stack_unkeyed", svc);

    let keyed = RateLimitLayer::keyed(unlimited(), HeaderKey(HeaderName::from_static("x-client")));
    let retry = RetryLayer::new(retry_config()).with_retry_gate(breaker.retry_gate());
    let svc = keyed.layer_service(
        timeout.layer_service(retry.layer_service(breaker.layer_service(service_fn(noop)))),
    );
    run(c, &rt, "stack_keyed", svc);

    // Retries disabled: requests take the passthrough path.
    let once = RetryLayer::new(RetryConfig {
        max_attempts: 1,
        ..retry_config()
    });
    let svc = rate.layer_service(
        timeout.layer_service(once.layer_service(breaker.layer_service(service_fn(noop)))),
    );
    run(c, &rt, "stack_no_retry", svc);

    // The stack built per request from the layers, as the proxy does with `Timeout` today.
    c.bench_function("stack_built_per_request", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let svc = rate.layer_service(timeout.layer_service(
                        retry.layer_service(breaker.layer_service(service_fn(noop))),
                    ));
                    black_box(svc.oneshot(request()).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, stack);
criterion_main!(benches);
