use super::{Elapsed, ResponseFuture, ReusableDeadline};
use std::task::{Context, Poll};
use std::time::Duration;

/// A service whose calls fail with `Elapsed` (converted into the inner error type) after a deadline.
#[derive(Debug)]
pub struct Timeout<'t, S> {
    inner: S,
    timeout: Option<Duration>,
    /// A caller's timer entry for the next call (then taken: later calls time themselves).
    reuse: Option<&'t mut ReusableDeadline>,
}

impl<S> Timeout<'static, S> {
    /// Wraps `inner` with a deadline of `timeout` per request (`None`: no deadline).
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        Timeout {
            inner,
            timeout,
            reuse: None,
        }
    }
}

impl<'t, S> Timeout<'t, S> {
    /// Times the next call with `entry` rather than a timer entry of its own: for a caller
    /// whose requests come one after another (an HTTP/1.1 connection), so the entry is not
    /// registered and removed again for each.
    pub fn reusing(mut self, entry: &'t mut ReusableDeadline) -> Timeout<'t, S> {
        self.reuse = Some(entry);
        self
    }
}

/// A clone times its calls with entries of their own (a reused entry serves one call).
impl<S: Clone> Clone for Timeout<'_, S> {
    fn clone(&self) -> Self {
        Timeout {
            inner: self.inner.clone(),
            timeout: self.timeout,
            reuse: None,
        }
    }
}

impl<'t, S, Req> tower::Service<Req> for Timeout<'t, S>
where
    S: tower::Service<Req>,
    S::Error: From<Elapsed>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<'t, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        match self.reuse.take() {
            Some(entry) => ResponseFuture::reusing(fut, self.timeout, entry),
            None => ResponseFuture::new(fut, self.timeout),
        }
    }
}
