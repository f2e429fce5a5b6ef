use super::future::{Ctx, ResponseFuture};
use super::layer::{NonIdempotent, Shared};
use super::{ReplayBody, RetryStats};
use crate::FailureClass;
use crate::timeout::Elapsed;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Header carrying the 1-based attempt number to the upstream.
pub const X_MESH_ATTEMPT: HeaderName = HeaderName::from_static("x-mesh-attempt");

const ATTEMPT_VALUES: [HeaderValue; 10] = [
    HeaderValue::from_static("1"),
    HeaderValue::from_static("2"),
    HeaderValue::from_static("3"),
    HeaderValue::from_static("4"),
    HeaderValue::from_static("5"),
    HeaderValue::from_static("6"),
    HeaderValue::from_static("7"),
    HeaderValue::from_static("8"),
    HeaderValue::from_static("9"),
    HeaderValue::from_static("10"),
];

/// The `x-mesh-attempt` value for attempt `n` (static for 1–10, no allocation).
pub(crate) fn attempt_value(n: u32) -> HeaderValue {
    match ATTEMPT_VALUES.get(n.wrapping_sub(1) as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// RFC 9110 §9.2.2 idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Retries failed requests per [`super::RetryConfig`]; the inner service sees `Request<ReplayBody<B>>`.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Retry { inner, shared }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for Retry<S>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: FailureClass + From<Elapsed>,
    B: Body + Unpin,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        if let Some(b) = &shared.budget {
            b.deposit();
        }
        RetryStats::bump(&shared.stats.requests);
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(X_MESH_ATTEMPT, attempt_value(1));
        let idempotent = is_idempotent(&parts.method);
        let retriable = config.max_attempts > 1
            && (idempotent || config.non_idempotent != NonIdempotent::Never);
        if !retriable {
            let first = Request::from_parts(parts, ReplayBody::passthrough(body));
            return ResponseFuture::once(self.inner.call(first), config.per_try_timeout);
        }
        let body = ReplayBody::new(body, config.replay_buffer);
        let first = Request::from_parts(parts.clone(), body.replay());
        let fut = self.inner.call(first);
        let ctx = Ctx {
            svc: self.inner.clone(),
            parts,
            body,
            attempt: 1,
            shared: self.shared.clone(),
            unprocessed_only: !idempotent && config.non_idempotent == NonIdempotent::Unprocessed,
            permit: None,
        };
        ResponseFuture::retrying(fut, ctx)
    }
}
