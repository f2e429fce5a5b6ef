//! hyper's HTTP/1.1 header-read timer with one tokio timer entry per connection.
//!
//! hyper arms its header-read timeout each time a connection starts waiting for a request head
//! (idle keep-alive included) and drops it once the head is in. With `hyper_util`'s
//! `TokioTimer` that is, for every request, a boxed tokio `Sleep` created, registered in the
//! timer wheel and removed again. [`HeadTimer`] keeps one [`ReusableDeadline`] per connection
//! instead: a new deadline is only a number in the small box hyper asks for.

use hyper::rt::{Sleep, Timer};
use otlp_mesh_resilience::timeout::ReusableDeadline;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Entry = Arc<Mutex<ReusableDeadline>>;

/// A hyper [`Timer`] for one connection's header-read timeouts (give each connection its own).
#[derive(Clone, Default)]
pub(crate) struct HeadTimer {
    entry: Entry,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            entry: self.entry.clone(),
            deadline: deadline.into(),
        })
    }

    /// tokio's clock (so that a paused test clock moves hyper's deadlines too).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One wait of hyper's: ready at `deadline`, timed by the connection's shared entry.
struct HeadSleep {
    entry: Entry,
    deadline: tokio::time::Instant,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        self.entry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poll_until(deadline, cx)
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_wait_is_not_cut_short_by_an_earlier_waits_entry() {
        let timer = HeadTimer::default();
        let start = Instant::now();
        let mut first = timer.sleep_until(start + Duration::from_secs(10));
        assert!(poll(&mut first).is_pending());
        advance(Duration::from_secs(6)).await;
        // The head arrived: hyper drops its wait and starts the next one later.
        drop(first);
        let mut second = timer.sleep(Duration::from_secs(10));
        assert!(poll(&mut second).is_pending());
        // The shared entry, still at the first deadline, fires at 10 s: not yet for this wait.
        advance(Duration::from_secs(5)).await;
        assert!(poll(&mut second).is_pending());
        advance(Duration::from_secs(4)).await;
        assert!(poll(&mut second).is_pending());
        advance(Duration::from_secs(1)).await;
        assert!(poll(&mut second).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_entrys_fires_on_time() {
        let timer = HeadTimer::default();
        let mut long = timer.sleep(Duration::from_secs(30));
        assert!(poll(&mut long).is_pending());
        drop(long);
        let mut short = timer.sleep(Duration::from_secs(2));
        assert!(poll(&mut short).is_pending());
        advance(Duration::from_millis(1999)).await;
        assert!(poll(&mut short).is_pending());
        advance(Duration::from_millis(1)).await;
        assert!(poll(&mut short).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_wakes_its_task_at_its_deadline() {
        let timer = HeadTimer::default();
        let first = timer.sleep(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        first.await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The entry has fired; a new wait re-arms it for its own deadline.
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
