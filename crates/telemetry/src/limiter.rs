//! Admission control by bytes held in memory: receivers ask before accepting, queues release
//! when they hand data on.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of telemetry in memory, against a soft and a hard limit.
#[derive(Debug)]
pub struct MemoryLimiter {
    used: AtomicU64,
    soft: u64,
    hard: u64,
    refused: AtomicU64,
}

/// Which limit an acquisition is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Data from receivers: refused above the soft limit (the sender retries).
    Receiver,
    /// The proxy's own telemetry: refused (dropped) above the hard limit only.
    Internal,
}

impl MemoryLimiter {
    /// A limiter with the given limits in bytes (`soft <= hard`).
    pub fn new(soft: u64, hard: u64) -> Self {
        MemoryLimiter {
            used: AtomicU64::new(0),
            soft,
            hard: hard.max(soft),
            refused: AtomicU64::new(0),
        }
    }

    /// Accounts `bytes` if that stays within the limit for `priority`; false means refuse.
    pub fn try_acquire(&self, bytes: u64, priority: Priority) -> bool {
        let limit = match priority {
            Priority::Receiver => self.soft,
            Priority::Internal => self.hard,
        };
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                let next = u.checked_add(bytes)?;
                // One request larger than the whole limit is let through when nothing else is
                // held, so a single large message can never be refused forever.
                (next <= limit || u == 0).then_some(next)
            })
            .is_ok();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Returns `bytes` acquired earlier.
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The soft limit in bytes.
    pub fn soft_limit(&self) -> u64 {
        self.soft
    }

    /// Acquisitions refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_stop_at_soft_internal_at_hard() {
        let m = MemoryLimiter::new(100, 150);
        assert!(m.try_acquire(80, Priority::Receiver));
        assert!(!m.try_acquire(30, Priority::Receiver));
        assert!(m.try_acquire(30, Priority::Internal));
        assert!(!m.try_acquire(50, Priority::Internal));
        assert_eq!(m.used(), 110);
        m.release(110);
        assert_eq!(m.used(), 0);
        assert_eq!(m.refused(), 2);
    }

    #[test]
    fn one_oversized_request_passes_when_empty() {
        let m = MemoryLimiter::new(100, 100);
        assert!(m.try_acquire(500, Priority::Receiver));
        assert!(!m.try_acquire(1, Priority::Receiver));
    }
}
