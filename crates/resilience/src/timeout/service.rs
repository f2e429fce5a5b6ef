use super::{Elapsed, ResponseFuture};
use std::task::{Context, Poll};
use std::time::Duration;

/// A service whose calls fail with `Elapsed` (converted into the inner error type) after a deadline.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a deadline of `timeout` per request (`None`: no deadline).
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        Timeout { inner, timeout }
    }
}

impl<S, Req> tower::Service<Req> for Timeout<S>
where
    S: tower::Service<Req>,
    S::Error: From<Elapsed>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.timeout)
    }
}
