use super::Elapsed;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// Response future of [`super::Timeout`].
    ///
    /// The deadline is fixed when the request is made; the timer itself is only created if the
    /// inner future is not ready on its first poll (an immediate answer never touches the timer wheel).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<(Instant, Duration)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, timeout: Option<Duration>) -> Self {
        ResponseFuture {
            inner,
            sleep: None,
            deadline: timeout.map(|d| (Instant::now() + d, d)),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Elapsed>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        let Some((deadline, after)) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(deadline)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => match sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed(after).into())),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }
}
