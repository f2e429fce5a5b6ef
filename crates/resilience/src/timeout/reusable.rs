//! One timer entry reused for a sequence of deadlines (a connection's successive requests).
//!
//! A tokio `Sleep` per deadline is created, registered in the timer wheel and removed again:
//! about 700 instructions, 2–4 % of a proxied request under callgrind. A [`ReusableDeadline`]
//! keeps one entry instead; a new, later deadline leaves it where it is, and it only moves
//! when it fires before the deadline now waited for, so at most once per timeout period.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep};

/// A timer entry shared by successive (never concurrent) waits, created on the first.
#[derive(Debug, Default)]
pub struct ReusableDeadline {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker the entry last registered and will wake when it fires.
    registered: Option<Waker>,
}

impl ReusableDeadline {
    /// When the entry will next fire, if it has been created.
    pub fn armed_until(&self) -> Option<Instant> {
        self.sleep.as_ref().map(|s| s.deadline())
    }

    /// Ready once `deadline` has passed; registers the task to be woken then (or earlier,
    /// spuriously, when an earlier wait's deadline comes first).
    pub fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        } else if wakes(&self.registered, cx.waker()) && !sleep.is_elapsed() {
            // Armed for this deadline or an earlier one, and set to wake this task: polling
            // the entry again (a budget check and a waker swap, ~120 instructions) would
            // change nothing.
            return Poll::Pending;
        }
        // Runs at most twice: after a reset the entry's deadline is this wait's.
        loop {
            // Out of budget, the poll returns at once without registering the waker.
            let registers = tokio::task::coop::has_budget_remaining();
            if sleep.as_mut().poll(cx).is_pending() {
                if !registers {
                    self.registered = None;
                } else if !wakes(&self.registered, cx.waker()) {
                    self.registered = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // The entry fired for an earlier wait's deadline: move it to this one.
            sleep.as_mut().reset(deadline);
        }
    }
}

/// Whether `registered` is (a waker for the same task as) `waker`.
fn wakes(registered: &Option<Waker>, waker: &Waker) -> bool {
    registered.as_ref().is_some_and(|w| w.will_wake(waker))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// Polls `entry` for `deadline` the first time with the task's budget spent.
    async fn wait_out_of_budget(entry: &mut ReusableDeadline, deadline: Instant) {
        let mut first = true;
        poll_fn(|cx| {
            if std::mem::take(&mut first) {
                while tokio::task::coop::has_budget_remaining() {
                    let spend = std::pin::pin!(tokio::task::coop::consume_budget());
                    let _ = spend.poll(cx);
                }
            }
            entry.poll_until(deadline, cx)
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_first_polled_without_budget_still_fires() {
        let mut entry = ReusableDeadline::default();
        let start = Instant::now();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            wait_out_of_budget(&mut entry, start + Duration::from_secs(2)),
        )
        .await;
        assert!(waited.is_ok(), "the entry never fired");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn successive_waits_fire_at_their_own_deadlines() {
        let mut entry = ReusableDeadline::default();
        let start = Instant::now();
        for n in 1..=3u64 {
            poll_fn(|cx| entry.poll_until(start + Duration::from_secs(n), cx)).await;
            assert_eq!(start.elapsed(), Duration::from_secs(n));
        }
        assert_eq!(entry.armed_until(), Some(start + Duration::from_secs(3)));
    }
}
