use super::Timeout;
use std::time::Duration;

/// Applies [`Timeout`] to a service; `None` passes requests through with no deadline.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Option<Duration>,
}

impl TimeoutLayer {
    /// A layer applying `timeout` to every request (`None`: no deadline).
    pub fn new(timeout: Option<Duration>) -> Self {
        TimeoutLayer { timeout }
    }

    /// Wraps `inner` (same as `Layer::layer`, without importing the trait).
    pub fn layer_service<S>(&self, inner: S) -> Timeout<'static, S> {
        Timeout::new(inner, self.timeout)
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<'static, S>;
    fn layer(&self, inner: S) -> Timeout<'static, S> {
        Timeout::new(inner, self.timeout)
    }
}
