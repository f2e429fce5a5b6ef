//! Feeding the store from the pipeline without slowing it: batches are handed to a dedicated
//! thread over a bounded channel; when the thread falls behind, or more items arrive per second
//! than the store's CPU budget allows, batches skip the store (counted) rather than hold up the
//! exporters or take the proxy's core. The store is a best-effort view; exporters are the record.

use super::Store;
use crate::limiter::Priority;
use crate::otlp::Batch;
use crate::pipeline::{Consumer, Refused};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

/// Batches waiting for the store thread.
const BACKLOG: usize = 256;

/// The pipeline consumer that fills a [`Store`].
#[derive(Debug)]
pub struct StoreFeed {
    tx: mpsc::SyncSender<Batch>,
    budget: Option<Mutex<Budget>>,
    skipped: Arc<AtomicU64>,
    over_budget: AtomicU64,
    failed: Arc<AtomicU64>,
}

/// A token bucket of items per second (one second of burst). Batches are admitted while the
/// bucket is positive and charged in full, so the long-run rate holds whatever the batch sizes.
#[derive(Debug)]
struct Budget {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    fn admit(&mut self, items: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens <= 0.0 {
            return false;
        }
        self.tokens -= items as f64;
        true
    }
}

impl StoreFeed {
    /// Starts the ingest thread for `store`, indexing at most `max_items_per_second` (0: no bound).
    pub fn start(store: Arc<Store>, max_items_per_second: u64) -> std::io::Result<StoreFeed> {
        let (tx, rx) = mpsc::sync_channel::<Batch>(BACKLOG);
        let failed = Arc::new(AtomicU64::new(0));
        let failures = failed.clone();
        std::thread::Builder::new()
            .name("otlp-mesh-store".into())
            .spawn(move || {
                // Ends when every sender (the pipeline) is gone.
                while let Ok(batch) = rx.recv() {
                    if let Err(e) = store.ingest(&batch) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "store skipped a batch it cannot decode");
                    }
                }
            })?;
        let budget = (max_items_per_second > 0).then(|| {
            Mutex::new(Budget {
                per_second: max_items_per_second as f64,
                tokens: max_items_per_second as f64,
                last: Instant::now(),
            })
        });
        Ok(StoreFeed {
            tx,
            budget,
            skipped: Arc::new(AtomicU64::new(0)),
            over_budget: AtomicU64::new(0),
            failed,
        })
    }

    /// Batches that skipped the store because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Batches that skipped the store because of its items-per-second budget.
    pub fn over_budget(&self) -> u64 {
        self.over_budget.load(Ordering::Relaxed)
    }

    /// Batches the store could not decode.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Consumer for StoreFeed {
    fn name(&self) -> &str {
        "store"
    }

    fn consume(&self, batch: Batch, _: Priority) -> BoxFuture<'_, Result<(), Refused>> {
        // Uncontended in practice: the pipeline's submitters are a handful of tasks, and the
        // critical section is a few float operations.
        let admitted = self.budget.as_ref().is_none_or(|b| {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(batch.items, Instant::now())
        });
        if !admitted {
            self.over_budget.fetch_add(1, Ordering::Relaxed);
        } else if self.tx.try_send(batch).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_holds_the_long_run_rate() {
        let start = Instant::now();
        let mut b = Budget {
            per_second: 1000.0,
            tokens: 1000.0,
            last: start,
        };
        let mut admitted = 0u64;
        // 10 seconds of 100-item batches every 10 ms (10 000 items/s offered).
        for i in 0..1000u64 {
            if b.admit(100, start + Duration::from_millis(10 * i)) {
                admitted += 100;
            }
        }
        // 1000/s for 10 s plus the initial second of burst, within one batch.
        assert!((10_000..=11_100).contains(&admitted), "{admitted}");
    }

    #[test]
    fn over_budget_batches_skip_the_store() {
        let store = Arc::new(Store::new(1 << 20));
        let feed = StoreFeed::start(store, 10).unwrap();
        let batch = Batch::new(crate::Signal::Logs, bytes::Bytes::new(), 8);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..5 {
                feed.consume(batch.clone(), Priority::Internal)
                    .await
                    .unwrap();
            }
        });
        // 10 tokens: the first two batches (8, then 2 left > 0) pass, the rest wait.
        assert_eq!(feed.over_budget(), 3);
    }
}
