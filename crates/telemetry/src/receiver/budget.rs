//! The receive budget: a bound on the bytes of request bodies being read at once.
//!
//! Without it, every request stream a client opens is read as fast as it arrives: 32 concurrent
//! 0.5 MB exports hold 16 MB before the first of them reaches the pipeline. With it, a body
//! reserves its size before it is read; while the budget is spent, the body stays unread in the
//! transport, HTTP/2 flow control (or TCP's, for HTTP/1.1) holds its sender, and the wait is
//! bounded ([`Budget::reserve`] gives up after `max_wait` and the sender is asked to retry).
//!
//! A reservation is released when the request has been handed to the pipeline, whose memory
//! limiter accounts for it from then on.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared bound on the request-body bytes being read, across connections and endpoints.
#[derive(Clone, Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    size: u32,
}

/// Bytes reserved for one request body; released on drop.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Budget {
    /// A budget of `size` bytes (at most 4 GiB).
    pub fn new(size: usize) -> Self {
        let size = u32::try_from(size).unwrap_or(u32::MAX).max(1);
        Budget {
            bytes: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Grows `held` to `total` bytes, waiting up to `max_wait` for room; false on timeout.
    ///
    /// A body larger than the whole budget reserves all of it, so it is read alone rather than
    /// never.
    pub async fn reserve(&self, held: &mut Reservation, total: usize, max_wait: Duration) -> bool {
        let want = u32::try_from(total).unwrap_or(u32::MAX).min(self.size);
        let have = u32::try_from(held.bytes()).unwrap_or(u32::MAX);
        if want <= have {
            return true;
        }
        let more = self.bytes.clone().acquire_many_owned(want - have);
        let permit = match tokio::time::timeout(max_wait, more).await {
            Ok(Ok(p)) => p,
            // Timed out, or the semaphore was closed (never done): the caller refuses the body.
            _ => return false,
        };
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_until_room_is_released() {
        let budget = Budget::new(1000);
        let mut a = Reservation::default();
        assert!(budget.reserve(&mut a, 600, WAIT).await);
        let mut b = Reservation::default();
        let b_task = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let ok = budget.reserve(&mut b, 600, WAIT).await;
                (ok, b.bytes())
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !b_task.is_finished(),
            "600 + 600 > 1000: the second body must wait"
        );
        drop(a);
        assert_eq!(b_task.await.unwrap(), (true, 600));
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_up_after_max_wait_and_holds_nothing() {
        let budget = Budget::new(1000);
        let mut a = Reservation::default();
        assert!(budget.reserve(&mut a, 1000, WAIT).await);
        let mut b = Reservation::default();
        let start = tokio::time::Instant::now();
        assert!(!budget.reserve(&mut b, 1, WAIT).await);
        assert_eq!(start.elapsed(), WAIT);
        assert_eq!(b.bytes(), 0);
        drop(a);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_grow_in_steps_and_are_capped_at_the_budget() {
        let budget = Budget::new(1000);
        let mut a = Reservation::default();
        assert!(budget.reserve(&mut a, 100, WAIT).await);
        assert!(
            budget.reserve(&mut a, 50, WAIT).await,
            "shrinking is a no-op"
        );
        assert!(budget.reserve(&mut a, 400, WAIT).await);
        assert_eq!(a.bytes(), 400);
        assert_eq!(budget.available(), 600);
        // Larger than the whole budget: takes all of it, once the rest is free.
        assert!(budget.reserve(&mut a, 5000, WAIT).await);
        assert_eq!(a.bytes(), 1000);
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 1000);
    }
}
