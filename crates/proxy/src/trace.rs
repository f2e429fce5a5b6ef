//! A client span per upstream attempt: the layer sits inside the retry loop, so each try gets
//! its own span id in the trace headers sent upstream and its own record.
//!
//! The request's trace is handed to the layer when the per-request stack is built (not through
//! the request's extensions, whose map and boxed entry cost three allocations per request).

use crate::error::ProxyError;
use http::{Request, Response};
use otlp_mesh_resilience::retry::X_MESH_ATTEMPT;
use otlp_mesh_telemetry::recorder::{AttemptRecord, RequestTrace};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Wraps each upstream attempt of a traced request in a client span.
#[derive(Clone, Debug)]
pub struct TraceAttempt<S> {
    inner: S,
    trace: Option<Arc<RequestTrace>>,
    /// Whether a retry layer runs outside: its `x-mesh-attempt` header numbers the attempts.
    /// Without one there is a single attempt (a client's own `x-mesh-attempt` is not trusted).
    retried: bool,
}

impl<S> TraceAttempt<S> {
    pub fn new(inner: S, trace: Option<Arc<RequestTrace>>, retried: bool) -> Self {
        TraceAttempt {
            inner,
            trace,
            retried,
        }
    }
}

struct Started {
    trace: Arc<RequestTrace>,
    span_id: [u8; 8],
    number: u32,
    start: Instant,
}

impl<S, B, RB> tower::Service<Request<B>> for TraceAttempt<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = TraceAttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Without a retry layer this is the request's only call: the trace moves into the
        // attempt (one reference count change less per request).
        let trace = if self.retried {
            self.trace.clone()
        } else {
            self.trace.take()
        };
        let started = trace.and_then(|trace| {
            if !trace.records() {
                // Unrecorded: the headers still carry the (unsampled) context upstream.
                trace.begin_attempt(req.headers_mut());
                return None;
            }
            if !self.retried && !trace.client_spans() {
                // The only attempt, and no span of its own: counted, not timed.
                trace.begin_attempt(req.headers_mut());
                trace.count_attempt();
                return None;
            }
            let number = if self.retried {
                req.headers()
                    .get(X_MESH_ATTEMPT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1)
            } else {
                1
            };
            let span_id = trace.begin_attempt(req.headers_mut());
            Some(Started {
                trace,
                span_id,
                number,
                start: Instant::now(),
            })
        });
        TraceAttemptFuture {
            inner: self.inner.call(req),
            started,
        }
    }
}

pin_project! {
    /// Records the attempt when the response head (or the error) arrives.
    pub struct TraceAttemptFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F, RB> Future for TraceAttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, ProxyError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        if let Some(s) = this.started.take() {
            let (status, error) = match &out {
                Ok(r) => (r.status().as_u16(), None),
                Err(e) => (0, Some(e.code().to_string())),
            };
            let end = Instant::now();
            s.trace.end_attempt(AttemptRecord {
                span_id: s.span_id,
                start_unix_nanos: s.trace.unix_nanos(s.start.into_std()),
                end_unix_nanos: s.trace.unix_nanos(end.into_std()),
                number: s.number,
                status,
                error,
            });
        }
        Poll::Ready(out)
    }
}
