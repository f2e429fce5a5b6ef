//! Queued batches waiting to be sent ([`Pending`], per signal) and the in-memory queue that
//! bounds them by bytes.

use super::stats::Stats;
use crate::{Batch, MemoryLimiter, Priority, Signal};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::{Duration, Instant};

/// Why `enqueue` refused a batch; the receiver answers with a retryable status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// The queue holds `queue.max_bytes`.
    #[error("export queue is full")]
    Full,
    /// The process-wide memory limit refused the bytes.
    #[error("telemetry memory limit reached")]
    MemoryLimit,
    /// The exporter is shutting down.
    #[error("exporter is shutting down")]
    ShuttingDown,
    /// A load-balancing exporter has no backend (its resolver has found none yet).
    #[error("no backend available")]
    NoBackend,
    /// The persistent queue could not write (disk full, I/O error; logged).
    #[error("persistent queue write failed")]
    Io,
}

/// One queued batch; `seq` is its write-ahead-log sequence number (0 in memory).
#[derive(Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    pub batch: Batch,
    pub arrived: Instant,
}

/// How queued batches are merged into export requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Send when this many items wait.
    pub items: u64,
    /// Largest merged request in bytes (a single larger batch is sent alone).
    pub bytes: u64,
    /// Send what waits after this long even if small.
    pub timeout: Duration,
}

/// Batches taken for one export request: their payloads in order, not yet concatenated (the
/// client compresses them into one body, or sends them as consecutive chunks, without a copy).
#[derive(Debug)]
pub(crate) struct Taken {
    pub signal: Signal,
    pub items: u64,
    /// Sum of the parts' lengths.
    pub bytes: u64,
    pub parts: Vec<bytes::Bytes>,
    /// Sequence numbers of the merged entries (persistent queue acknowledgement).
    pub seqs: Vec<u64>,
    /// Items of each part.
    pub part_items: Vec<u64>,
}

#[derive(Debug, Default)]
struct SignalQueue {
    entries: VecDeque<Entry>,
    items: u64,
    bytes: u64,
}

/// Batches waiting to be sent, one FIFO per signal so that a burst of one signal still merges
/// into full requests when signals interleave.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    sigs: [SignalQueue; 3],
}

impl Pending {
    pub fn push(&mut self, e: Entry) {
        let q = &mut self.sigs[e.batch.signal.index()];
        q.items += e.batch.items;
        q.bytes += e.batch.len() as u64;
        q.entries.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.iter().all(|q| q.entries.is_empty())
    }

    /// Takes the next export request that is due at `now` (full, or its oldest batch waited
    /// `timeout`, or everything when `flush`); otherwise says when the next one is due.
    pub fn take_ready(
        &mut self,
        now: Instant,
        limits: &Limits,
        flush: bool,
    ) -> Result<Taken, Option<Instant>> {
        let mut due: Option<(Instant, usize)> = None;
        let mut next: Option<Instant> = None;
        for (i, q) in self.sigs.iter().enumerate() {
            let Some(front) = q.entries.front() else {
                continue;
            };
            let deadline = front.arrived + limits.timeout;
            let ready =
                flush || q.items >= limits.items || q.bytes >= limits.bytes || deadline <= now;
            if ready {
                // Among due signals, the one that waited longest goes first.
                if due.is_none_or(|(a, _)| front.arrived < a) {
                    due = Some((front.arrived, i));
                }
            } else if next.is_none_or(|n| deadline < n) {
                next = Some(deadline);
            }
        }
        let Some((_, i)) = due else {
            return Err(next);
        };
        Ok(self.take(i, limits))
    }

    /// Pops the front batch of signal `i` and the following ones while they fit the limits.
    fn take(&mut self, i: usize, limits: &Limits) -> Taken {
        let q = &mut self.sigs[i];
        let mut parts = Vec::new();
        let mut seqs = Vec::new();
        let mut part_items = Vec::new();
        let (mut items, mut bytes) = (0u64, 0u64);
        while let Some(front) = q.entries.front() {
            let (fi, fb) = (front.batch.items, front.batch.len() as u64);
            if !parts.is_empty() && (items + fi > limits.items || bytes + fb > limits.bytes) {
                break;
            }
            let Some(e) = q.entries.pop_front() else {
                break;
            };
            items += fi;
            bytes += fb;
            seqs.push(e.seq);
            part_items.push(fi);
            parts.push(e.batch.payload);
        }
        q.items -= items;
        q.bytes -= bytes;
        Taken {
            signal: Signal::ALL[i],
            items,
            bytes,
            parts,
            seqs,
            part_items,
        }
    }

    /// Removes everything (the memory queue at shutdown).
    pub fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        for q in &mut self.sigs {
            out.extend(q.entries.drain(..));
            q.items = 0;
            q.bytes = 0;
        }
        out
    }
}

/// The in-memory queue: bounded by `max_bytes` and by the process-wide memory limiter.
pub(crate) struct MemoryQueue {
    pub pending: std::sync::Mutex<Pending>,
    /// Bytes queued or in flight (released when a request finishes).
    bytes: AtomicU64,
    /// Items and bytes queued and not yet taken for sending.
    waiting_items: AtomicU64,
    waiting: AtomicU64,
    max_bytes: u64,
    limiter: Arc<MemoryLimiter>,
}

impl MemoryQueue {
    pub fn new(max_bytes: u64, limiter: Arc<MemoryLimiter>) -> Self {
        MemoryQueue {
            pending: Default::default(),
            bytes: AtomicU64::new(0),
            waiting_items: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            max_bytes,
            limiter,
        }
    }

    #[cfg(test)]
    pub fn push(&self, batch: Batch, priority: Priority, stats: &Stats) -> Result<(), QueueFull> {
        self.reserve(batch.len() as u64, priority)?;
        self.commit(batch, stats);
        Ok(())
    }

    /// Takes `n` bytes of the queue's bound and of the memory limiter for a batch about to be
    /// committed; refused when either is full (a lone batch larger than the bound still fits an
    /// empty queue).
    pub fn reserve(&self, n: u64, priority: Priority) -> Result<(), QueueFull> {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + n <= self.max_bytes || b == 0).then_some(b + n)
            })
            .map_err(|_| QueueFull::Full)?;
        if !self.limiter.try_acquire(n, priority) {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(QueueFull::MemoryLimit);
        }
        Ok(())
    }

    /// Gives back a reservation that was not committed.
    pub fn unreserve(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
        self.limiter.release(n);
    }

    /// Queues `batch` in the space reserved for it (never refused).
    pub fn commit(&self, batch: Batch, stats: &Stats) {
        stats.queued(batch.signal, batch.items, batch.len() as u64);
        let entry = Entry {
            seq: 0,
            batch,
            arrived: Instant::now(),
        };
        self.requeue(entry);
    }

    /// Puts an entry (back) in the queue; its bytes are already counted in the bound.
    pub fn requeue(&self, entry: Entry) {
        let (items, n) = (entry.batch.items, entry.batch.len() as u64);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push(entry);
        self.waiting_items.fetch_add(items, Ordering::Relaxed);
        self.waiting.fetch_add(n, Ordering::Relaxed);
    }

    /// Removes everything waiting (at shutdown).
    pub fn drain(&self) -> Vec<Entry> {
        let left = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain();
        self.waiting_items.store(0, Ordering::Relaxed);
        self.waiting.store(0, Ordering::Relaxed);
        left
    }

    /// Bytes queued and not yet taken for sending.
    pub fn waiting_bytes(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// True when at least one full export request (by `limits`) waits to be taken.
    pub fn full_request_waiting(&self, limits: &Limits) -> bool {
        self.waiting_items.load(Ordering::Relaxed) >= limits.items
            || self.waiting.load(Ordering::Relaxed) >= limits.bytes
    }

    /// [`Pending::take_ready`], keeping the count of waiting bytes.
    pub fn take_ready(
        &self,
        now: Instant,
        limits: &Limits,
        flush: bool,
    ) -> Result<Taken, Option<Instant>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let taken = pending.take_ready(now, limits, flush)?;
        self.waiting_items.fetch_sub(taken.items, Ordering::Relaxed);
        self.waiting.fetch_sub(taken.bytes, Ordering::Relaxed);
        Ok(taken)
    }

    /// Returns the bytes of a finished (sent or dropped) request.
    pub fn release(&self, signal: Signal, items: u64, bytes: u64, stats: &Stats) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.limiter.release(bytes);
        stats.dequeued(signal, items, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(signal: Signal, items: u64, len: usize) -> Batch {
        Batch::new(signal, Bytes::from(vec![b'x'; len]), items)
    }

    fn entry(seq: u64, b: Batch, at: Instant) -> Entry {
        Entry {
            seq,
            batch: b,
            arrived: at,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn merges_up_to_item_and_byte_limits() {
        let limits = Limits {
            items: 10,
            bytes: 100,
            timeout: Duration::from_millis(200),
        };
        let t0 = Instant::now();
        let mut p = Pending::default();
        for i in 0..5 {
            p.push(entry(i, batch(Signal::Traces, 4, 10), t0));
        }
        // 20 items waiting ≥ 10: due now; merged up to 10 items → 2 batches (8 items).
        let t = p.take_ready(t0, &limits, false).unwrap();
        assert_eq!(
            (t.items, t.bytes as usize, t.seqs.clone()),
            (8, 20, vec![0, 1])
        );
        let t = p.take_ready(t0, &limits, false).unwrap();
        assert_eq!(t.seqs, vec![2, 3]);
        // 4 items left: not full, due at t0 + timeout.
        assert_eq!(
            p.take_ready(t0, &limits, false).unwrap_err(),
            Some(t0 + limits.timeout)
        );
        let t = p.take_ready(t0 + limits.timeout, &limits, false).unwrap();
        assert_eq!(t.seqs, vec![4]);
        assert!(p.is_empty());
        assert_eq!(p.take_ready(t0, &limits, false).unwrap_err(), None);

        // Byte limit: 60 + 60 > 100, so each goes alone; a single oversized batch still goes.
        p.push(entry(10, batch(Signal::Logs, 1, 60), t0));
        p.push(entry(11, batch(Signal::Logs, 1, 60), t0));
        p.push(entry(12, batch(Signal::Logs, 1, 500), t0));
        let sizes: Vec<usize> = (0..3)
            .map(|_| p.take_ready(t0, &limits, false).unwrap().bytes as usize)
            .collect();
        assert_eq!(sizes, vec![60, 60, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn signals_merge_separately_and_flush_takes_everything() {
        let limits = Limits {
            items: 100,
            bytes: 1000,
            timeout: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.push(entry(0, batch(Signal::Traces, 1, 3), t0));
        p.push(entry(1, batch(Signal::Metrics, 1, 3), t0));
        p.push(entry(2, batch(Signal::Traces, 1, 3), t0));
        assert!(p.take_ready(t0, &limits, false).is_err());
        let t = p.take_ready(t0, &limits, true).unwrap();
        assert_eq!((t.signal, t.seqs), (Signal::Traces, vec![0, 2]));
        let t = p.take_ready(t0, &limits, true).unwrap();
        assert_eq!((t.signal, t.seqs), (Signal::Metrics, vec![1]));
    }

    #[test]
    fn reservations_hold_queue_and_memory_until_committed_or_dropped() {
        let limiter = Arc::new(MemoryLimiter::new(1000, 1000));
        let stats = Stats::default();
        let q = MemoryQueue::new(100, limiter.clone());
        q.reserve(60, Priority::Receiver).unwrap();
        assert_eq!(q.reserve(60, Priority::Receiver), Err(QueueFull::Full));
        assert_eq!(limiter.used(), 60);
        q.unreserve(60);
        assert_eq!(limiter.used(), 0);
        q.reserve(60, Priority::Receiver).unwrap();
        q.commit(batch(Signal::Traces, 2, 60), &stats);
        assert_eq!(
            stats
                .sig(Signal::Traces)
                .queued_items
                .load(Ordering::Relaxed),
            2
        );
        assert!(!q.pending.lock().unwrap().is_empty());
        assert_eq!(q.reserve(60, Priority::Receiver), Err(QueueFull::Full));
    }

    #[test]
    fn memory_queue_refuses_when_full() {
        let limiter = Arc::new(MemoryLimiter::new(1000, 1000));
        let stats = Stats::default();
        let q = MemoryQueue::new(100, limiter.clone());
        q.push(batch(Signal::Traces, 1, 60), Priority::Receiver, &stats)
            .unwrap();
        assert_eq!(
            q.push(batch(Signal::Traces, 1, 60), Priority::Receiver, &stats),
            Err(QueueFull::Full)
        );
        assert_eq!(limiter.used(), 60);
        q.release(Signal::Traces, 1, 60, &stats);
        assert_eq!(limiter.used(), 0);
        q.push(batch(Signal::Traces, 1, 60), Priority::Receiver, &stats)
            .unwrap();

        // The memory limiter refuses receivers at its soft limit, internal data at the hard one.
        let limiter = Arc::new(MemoryLimiter::new(50, 100));
        let q = MemoryQueue::new(1000, limiter.clone());
        q.push(batch(Signal::Logs, 1, 40), Priority::Receiver, &stats)
            .unwrap();
        assert_eq!(
            q.push(batch(Signal::Logs, 1, 40), Priority::Receiver, &stats),
            Err(QueueFull::MemoryLimit)
        );
        q.push(batch(Signal::Logs, 1, 40), Priority::Internal, &stats)
            .unwrap();
    }
}
