use super::future::ResponseFuture;
use super::state::Inner;
use super::{CircuitOpen, Overloaded};
use crate::FailureClass;
use http::Response;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Fails fast when the circuit is open or a concurrency threshold is full; otherwise calls the
/// inner service and feeds the outcome to the state machine.
///
/// `poll_ready` never waits: if the inner service is not ready, the request is admitted as
/// *pending* (bounded by `max_pending`, over it → [`Overloaded`]) and its future waits for
/// readiness on a clone of the inner service.
#[derive(Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Inner>,
    inner_ready: bool,
}

impl<S> CircuitBreaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Inner>) -> Self {
        CircuitBreaker {
            inner,
            shared,
            inner_ready: false,
        }
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        CircuitBreaker::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S, Req, RB> tower::Service<Req> for CircuitBreaker<S>
where
    S: tower::Service<Req, Response = Response<RB>> + Clone,
    S::Error: FailureClass + From<Overloaded> + From<CircuitOpen>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.inner_ready = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => self.inner_ready = false,
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ready = std::mem::take(&mut self.inner_ready);
        match self.shared.admit(!ready) {
            Err(reject) => ResponseFuture::rejected(reject),
            Ok(adm) if ready => ResponseFuture::active(self.inner.call(req), adm),
            Ok(adm) => ResponseFuture::waiting(self.inner.clone(), req, adm),
        }
    }
}
