//! A lock-free sliding-window counter: a fixed ring of buckets, each one `AtomicU64` packing
//! `(epoch: u32, count: u32)`. A bucket whose epoch is stale is reset by the first writer of the new
//! epoch (one CAS), so there is no rotation task and no lock. Memory is fixed at construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Time → bucket epoch mapping shared by the windows of one owner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    width_nanos: u64,
}

impl Clock {
    pub(crate) fn new(origin: Instant, width: Duration) -> Self {
        Clock {
            origin,
            width_nanos: nanos(width).max(1),
        }
    }

    pub(crate) fn epoch(&self, now: Instant) -> u32 {
        // Wraps after 2^32 buckets (136 years of 1 s buckets): harmless, comparisons are wrapping.
        (nanos(now.saturating_duration_since(self.origin)) / self.width_nanos) as u32
    }
}

/// Whole nanoseconds of a duration, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const fn pack(epoch: u32, count: u32) -> u64 {
    ((epoch as u64) << 32) | count as u64
}

const fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// `n` buckets; the window at epoch `e` is buckets with epochs `e-n+1 ..= e`.
#[derive(Debug)]
pub(crate) struct Buckets {
    slots: Box<[AtomicU64]>,
}

/// The current bucket as read by [`Buckets::current`], for a conditional increment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    idx: usize,
    word: u64,
    epoch: u32,
    /// Count in the current bucket (0 if the bucket holds a stale epoch).
    pub(crate) count: u32,
}

impl Buckets {
    pub(crate) fn new(n: u32) -> Self {
        let n = n.max(1) as usize;
        Buckets {
            slots: (0..n).map(|_| AtomicU64::new(pack(u32::MAX, 0))).collect(),
        }
    }

    fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    fn idx(&self, epoch: u32) -> usize {
        (epoch % self.len()) as usize
    }

    fn live(&self, word: u64, epoch: u32) -> u32 {
        let (e, c) = unpack(word);
        if epoch.wrapping_sub(e) < self.len() {
            c
        } else {
            0
        }
    }

    /// Adds `n` to the bucket of `epoch` (saturating at `u32::MAX` per bucket).
    pub(crate) fn add(&self, epoch: u32, n: u32) {
        let slot = &self.slots[self.idx(epoch)];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, c) = unpack(cur);
            let next = if e == epoch {
                pack(epoch, c.saturating_add(n))
            } else {
                pack(epoch, n)
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// Sum over the window ending at `epoch`.
    pub(crate) fn sum(&self, epoch: u32) -> u64 {
        self.slots
            .iter()
            .map(|s| u64::from(self.live(s.load(Ordering::Relaxed), epoch)))
            .sum()
    }

    /// Reads the current bucket, for [`Buckets::try_increment`].
    pub(crate) fn current(&self, epoch: u32) -> Current {
        let idx = self.idx(epoch);
        let word = self.slots[idx].load(Ordering::Acquire);
        let (e, c) = unpack(word);
        Current {
            idx,
            word,
            epoch,
            count: if e == epoch { c } else { 0 },
        }
    }

    /// Sum over the window ending at `cur.epoch`, excluding the current bucket.
    pub(crate) fn sum_others(&self, cur: &Current) -> u64 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != cur.idx)
            .map(|(_, s)| u64::from(self.live(s.load(Ordering::Relaxed), cur.epoch)))
            .sum()
    }

    /// Increments the current bucket by one if it still holds the word read by `current`.
    pub(crate) fn try_increment(&self, cur: &Current) -> bool {
        let next = pack(cur.epoch, cur.count.saturating_add(1));
        self.slots[cur.idx]
            .compare_exchange(cur.word, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Forgets every bucket.
    pub(crate) fn clear(&self) {
        for s in self.slots.iter() {
            s.store(pack(u32::MAX, 0), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_expire_after_the_window() {
        let b = Buckets::new(3);
        b.add(0, 5);
        b.add(1, 2);
        b.add(2, 1);
        assert_eq!(b.sum(2), 8);
        assert_eq!(b.sum(3), 3);
        b.add(3, 4);
        assert_eq!(b.sum(3), 7);
        assert_eq!(b.sum(5), 4);
        assert_eq!(b.sum(6), 0);
        let c = b.current(6);
        assert_eq!(c.count, 0);
        assert!(b.try_increment(&c));
        assert!(!b.try_increment(&c), "the word changed");
        assert_eq!(b.sum(6), 1);
        b.clear();
        assert_eq!(b.sum(6), 0);
    }
}
