//! A stand-in for the proxy's error type and a scripted upstream, shared by the layer tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::breaker::{CircuitOpen, Overloaded};
use crate::ratelimit::RateLimited;
use crate::timeout::Elapsed;
use crate::{FailureClass, FailureKind};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy's `ProxyError` will look like to the layers.
#[derive(Debug, Clone, PartialEq)]
pub enum TestError {
    Upstream(FailureKind),
    Elapsed,
    Overloaded(Overloaded),
    Open(CircuitOpen),
    Limited(RateLimited),
    Body,
}

impl FailureClass for TestError {
    fn failure_kind(&self) -> FailureKind {
        match self {
            TestError::Upstream(k) => *k,
            TestError::Elapsed => FailureKind::Timeout,
            TestError::Overloaded(_) | TestError::Open(_) | TestError::Limited(_) => {
                FailureKind::Rejected
            }
            TestError::Body => FailureKind::Local,
        }
    }
}

impl From<Elapsed> for TestError {
    fn from(_: Elapsed) -> Self {
        TestError::Elapsed
    }
}
impl From<Overloaded> for TestError {
    fn from(e: Overloaded) -> Self {
        TestError::Overloaded(e)
    }
}
impl From<CircuitOpen> for TestError {
    fn from(e: CircuitOpen) -> Self {
        TestError::Open(e)
    }
}
impl From<RateLimited> for TestError {
    fn from(e: RateLimited) -> Self {
        TestError::Limited(e)
    }
}

/// What the scripted upstream does on a call.
#[derive(Debug, Clone)]
pub enum Act {
    Status(u16),
    /// Status plus one header.
    With(u16, &'static str, &'static str),
    Fail(FailureKind),
    /// Wait, then answer 200.
    Hang(Duration),
}

/// What the upstream saw.
#[derive(Debug, Default)]
pub struct Log {
    pub calls: AtomicU32,
    pub attempts: Mutex<Vec<String>>,
    pub bodies: Mutex<Vec<Bytes>>,
}

impl Log {
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A cloneable upstream: `script(n)` decides call `n` (1-based); it reads the whole request body.
pub fn upstream<B>(
    log: Arc<Log>,
    script: impl Fn(u32) -> Act + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    Request<B>,
    Response = Response<()>,
    Error = TestError,
    Future = impl Future<Output = Result<Response<()>, TestError>> + Send,
> + Clone
+ Send
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    tower::service_fn(move |req: Request<B>| {
        let log = log.clone();
        let script = script.clone();
        async move {
            let n = log.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let attempt = req
                .headers()
                .get("x-mesh-attempt")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            log.attempts.lock().unwrap().push(attempt);
            let body = match req.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => return Err(TestError::Body),
            };
            log.bodies.lock().unwrap().push(body);
            let mut resp = Response::new(());
            match script(n) {
                Act::Status(s) => *resp.status_mut() = StatusCode::from_u16(s).unwrap(),
                Act::With(s, k, v) => {
                    *resp.status_mut() = StatusCode::from_u16(s).unwrap();
                    resp.headers_mut()
                        .insert(k, http::HeaderValue::from_static(v));
                }
                Act::Fail(k) => return Err(TestError::Upstream(k)),
                Act::Hang(d) => tokio::time::sleep(d).await,
            }
            Ok(resp)
        }
    })
}
