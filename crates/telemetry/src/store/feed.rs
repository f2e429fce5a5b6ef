//! Feeding the store from the pipeline without slowing it: batches are handed to a dedicated
//! thread over a bounded channel; when the thread falls behind, batches skip the store (counted)
//! rather than hold up the exporters. The store is a best-effort view; exporters are the record.

use super::Store;
use crate::limiter::Priority;
use crate::otlp::Batch;
use crate::pipeline::{Consumer, Refused};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Batches waiting for the store thread.
const BACKLOG: usize = 256;

/// The pipeline consumer that fills a [`Store`].
#[derive(Debug)]
pub struct StoreFeed {
    tx: mpsc::SyncSender<Batch>,
    skipped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl StoreFeed {
    /// Starts the ingest thread for `store`.
    pub fn start(store: Arc<Store>) -> std::io::Result<StoreFeed> {
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
        Ok(StoreFeed {
            tx,
            skipped: Arc::new(AtomicU64::new(0)),
            failed,
        })
    }

    /// Batches that skipped the store because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
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
        if self.tx.try_send(batch).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
