use super::future::ResponseFuture;
use super::gcra::RateLimiter;
use super::{KeyExtractor, RateLimited};
use http::Request;
use std::hash::Hasher;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Rejects requests over the limit with [`RateLimited`] (converted into the inner error type)
/// without calling the inner service.
#[derive(Debug)]
pub struct RateLimit<S, K> {
    inner: S,
    limiter: Arc<RateLimiter>,
    key: Arc<K>,
}

impl<S, K> RateLimit<S, K> {
    pub(crate) fn new(inner: S, limiter: Arc<RateLimiter>, key: Arc<K>) -> Self {
        RateLimit {
            inner,
            limiter,
            key,
        }
    }
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        RateLimit::new(self.inner.clone(), self.limiter.clone(), self.key.clone())
    }
}

impl<S, K, B> tower::Service<Request<B>> for RateLimit<S, K>
where
    S: tower::Service<Request<B>>,
    S::Error: From<RateLimited>,
    K: KeyExtractor<B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut h = self.limiter.hasher();
        let key = self.key.key(&req, &mut h).then(|| h.finish());
        match self.limiter.check(key) {
            Ok(_) => ResponseFuture::inner(self.inner.call(req)),
            Err(limited) => ResponseFuture::limited(limited),
        }
    }
}
