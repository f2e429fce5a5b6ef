//! Feeding the store from the pipeline without slowing it: batches are handed to an ingest task
//! over a bounded channel; when the task falls behind, or more items arrive per second than the
//! store's CPU budget allows, batches skip the store (counted) rather than hold up the exporters
//! or take the proxy's core. The store is a best-effort view; exporters are the record.
//!
//! The ingest is a task on the proxy's runtime, not a thread of its own: a second thread would
//! make a one-worker proxy multi-threaded, and glibc and the kernel then charge every system
//! call of every request for it (cancellation bookkeeping, locked allocation, file reference
//! counts). The task indexes items [`SLICE_BYTES`] of encoded items at a time (about 7 of the
//! proxy's own spans, some 50 µs) and yields between slices, so a large batch delays requests
//! on the same thread by one slice at most.

use super::{Ingestion, Store};
use crate::limiter::Priority;
use crate::otlp::Batch;
use crate::pipeline::{Consumer, Refused};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// Batches waiting for the ingest task; past this they skip the store (counted).
const BACKLOG: usize = 256;

/// Encoded bytes of items the ingest task indexes before it yields to the runtime's other
/// tasks (indexing costs about 70 instructions per encoded byte of the proxy's spans).
pub const SLICE_BYTES: usize = 2048;

/// The pipeline consumer that fills a [`Store`].
#[derive(Debug)]
pub struct StoreFeed {
    tx: mpsc::Sender<Batch>,
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
    /// Starts the ingest task for `store` on the current tokio runtime, indexing at most
    /// `max_items_per_second` (0: no bound). The task ends when the feed is dropped.
    pub fn start(store: Arc<Store>, max_items_per_second: u64) -> StoreFeed {
        let (tx, mut rx) = mpsc::channel::<Batch>(BACKLOG);
        let failed = Arc::new(AtomicU64::new(0));
        let failures = failed.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let mut ingestion = Ingestion::new(&batch);
                loop {
                    let more = store.ingest_slice(&mut ingestion, SLICE_BYTES);
                    // Yield after every slice, the last one included: the next batch may be
                    // waiting already.
                    tokio::task::yield_now().await;
                    match more {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "store stopped in a batch it cannot decode");
                            break;
                        }
                    }
                }
            }
        });
        let budget = (max_items_per_second > 0).then(|| {
            Mutex::new(Budget {
                per_second: max_items_per_second as f64,
                tokens: max_items_per_second as f64,
                last: Instant::now(),
            })
        });
        StoreFeed {
            tx,
            budget,
            skipped: Arc::new(AtomicU64::new(0)),
            over_budget: AtomicU64::new(0),
            failed,
        }
    }

    /// Batches that skipped the store because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Batches that skipped the store because of its items-per-second budget.
    pub fn over_budget(&self) -> u64 {
        self.over_budget.load(Ordering::Relaxed)
    }

    /// Batches whose framing broke part-way (the items before the break were stored).
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

    #[tokio::test]
    async fn over_budget_batches_skip_the_store() {
        let store = Arc::new(Store::new(1 << 20));
        let feed = StoreFeed::start(store, 10);
        let batch = Batch::new(crate::Signal::Logs, bytes::Bytes::new(), 8);
        for _ in 0..5 {
            feed.consume(batch.clone(), Priority::Internal)
                .await
                .unwrap();
        }
        // 10 tokens: the first two batches (8, then 2 left > 0) pass, the rest wait.
        assert_eq!(feed.over_budget(), 3);
    }

    #[tokio::test]
    async fn a_large_batch_is_indexed_in_slices_between_other_tasks() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use prost::Message;
        // Records of 100 encoded bytes each (an 89-byte severity text and its framing, plus the
        // time), so a slice holds ceil(SLICE_BYTES / 100) of them.
        let record = |i: u64| LogRecord {
            time_unix_nano: 1 << 60 | i,
            severity_text: "x".repeat(89),
            ..Default::default()
        };
        assert_eq!(record(0).encoded_len(), 100);
        let per_slice = SLICE_BYTES.div_ceil(100);
        let records = 10 * per_slice;
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..records as u64).map(record).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let batch = Batch::new(
            crate::Signal::Logs,
            bytes::Bytes::from(req.encode_to_vec()),
            records as u64,
        );
        let store = Arc::new(Store::new(64 << 20));
        let feed = StoreFeed::start(store.clone(), 0);
        feed.consume(batch, Priority::Internal).await.unwrap();
        // This test's task and the ingest task share one thread: each time this one runs, it
        // sees how far the ingest got; a batch indexed in one go would show only 0 and all.
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let logs = store.stats().logs as usize;
            seen.push(logs);
            if logs == records {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen.last(), Some(&records), "{seen:?}");
        let partial: Vec<usize> = seen
            .into_iter()
            .filter(|n| *n > 0 && *n < records)
            .collect();
        assert!(partial.len() >= 5, "{partial:?}");
        assert!(partial.iter().all(|n| n % per_slice == 0), "{partial:?}");
        assert_eq!((feed.failed(), feed.skipped()), (0, 0));
    }
}
