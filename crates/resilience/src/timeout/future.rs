use super::{Elapsed, ReusableDeadline};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// Response future of [`super::Timeout`].
    ///
    /// The deadline is fixed when the request is made; the timer is only touched if the inner
    /// future is not ready on its first poll (an immediate answer never reaches the timer wheel).
    pub struct ResponseFuture<'t, F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer<'t>,
        deadline: Option<(Instant, Duration)>,
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer<'t> {
        /// A timer entry of the request's own, created when first needed.
        Own { #[pin] sleep: Option<Sleep> },
        /// The connection's entry, reused from request to request.
        Reused { entry: &'t mut ReusableDeadline },
    }
}

impl<F> ResponseFuture<'static, F> {
    pub(crate) fn new(inner: F, timeout: Option<Duration>) -> Self {
        Self::with_timer(inner, timeout, Timer::Own { sleep: None })
    }
}

impl<'t, F> ResponseFuture<'t, F> {
    pub(crate) fn reusing(
        inner: F,
        timeout: Option<Duration>,
        entry: &'t mut ReusableDeadline,
    ) -> Self {
        Self::with_timer(inner, timeout, Timer::Reused { entry })
    }

    fn with_timer(inner: F, timeout: Option<Duration>, timer: Timer<'t>) -> Self {
        ResponseFuture {
            inner,
            timer,
            deadline: timeout.map(|d| (Instant::now() + d, d)),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<'_, F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Elapsed>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        let Some((deadline, after)) = *this.deadline else {
            return Poll::Pending;
        };
        let elapsed = match this.timer.project() {
            TimerProj::Own { mut sleep } => {
                if sleep.is_none() {
                    sleep.set(Some(tokio::time::sleep_until(deadline)));
                }
                match sleep.as_pin_mut() {
                    Some(sleep) => sleep.poll(cx),
                    None => Poll::Pending,
                }
            }
            TimerProj::Reused { entry } => entry.poll_until(deadline, cx),
        };
        match elapsed {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(after).into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
