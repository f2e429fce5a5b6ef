//! The pipeline: admission ▸ processors ▸ consumers (exporters and the embedded store).
//!
//! Receivers and the proxy's own telemetry submit [`Batch`]es; a batch is acknowledged to its
//! sender only after every consumer took it (exporters' queues, including the persistent one), so
//! an acknowledged item is never lost. Without processors nothing is decoded.
//!
//! With tail sampling, traces go from the processors to the [`TailSampler`] instead, which
//! acknowledges once it holds them (in memory) and hands kept traces to the consumers later.

use crate::limiter::{MemoryLimiter, Priority};
use crate::otlp::{Batch, Signal};
use crate::processors::Processors;
use crate::processors::tail_sampling::{TailSampler, TailSettings};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest a receiver waits for a healthy but busy exporter before its request is refused with a
/// retryable status (below the OTLP exporters' default 10 s timeout).
pub const PACE_MAX_WAIT: Duration = Duration::from_secs(5);

/// How long a refused sender is asked to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a batch was not taken; the sender should retry after [`RETRY_AFTER`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The memory limit is reached.
    #[error("memory limit reached")]
    MemoryLimit,
    /// A consumer's queue is full.
    #[error("queue of `{0}` is full")]
    QueueFull(String),
}

/// Something that takes accepted batches: an exporter or the store.
pub trait Consumer: Send + Sync {
    /// Name in logs and errors.
    fn name(&self) -> &str;
    /// Takes `batch`; resolves once it is safely queued (or refused).
    fn consume(&self, batch: Batch, priority: Priority) -> BoxFuture<'_, Result<(), Refused>>;
    /// True when a receiver should wait ([`Consumer::ready`]) before reading a request; cheap,
    /// asked per request.
    fn busy(&self) -> bool {
        false
    }
    /// Resolves when a receiver may read a request for this consumer: at once unless it is busy
    /// and wants the sender paced (false when it stayed busy for `max_wait`).
    fn ready(&self, max_wait: Duration) -> BoxFuture<'_, bool> {
        let _ = max_wait;
        Box::pin(std::future::ready(true))
    }
}

/// Items accepted and refused per signal.
#[derive(Debug, Default)]
pub struct PipelineStats {
    accepted: [AtomicU64; 3],
    refused: [AtomicU64; 3],
    dropped_by_processors: [AtomicU64; 3],
}

impl PipelineStats {
    /// Items of `signal` accepted since start.
    pub fn accepted(&self, signal: Signal) -> u64 {
        self.accepted[signal.index()].load(Ordering::Relaxed)
    }
    /// Items of `signal` refused (memory limit or full queue) since start.
    pub fn refused(&self, signal: Signal) -> u64 {
        self.refused[signal.index()].load(Ordering::Relaxed)
    }
    /// Items of `signal` dropped by sampling since start.
    pub fn sampled_out(&self, signal: Signal) -> u64 {
        self.dropped_by_processors[signal.index()].load(Ordering::Relaxed)
    }
}

/// The assembled pipeline; cheap to share behind `Arc`.
pub struct Pipeline {
    memory: Arc<MemoryLimiter>,
    processors: Option<Processors>,
    consumers: Vec<Arc<dyn Consumer>>,
    tail: Option<TailSampler>,
    stats: PipelineStats,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "consumers",
                &self.consumers.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline feeding `consumers` after `processors`.
    pub fn new(
        memory: Arc<MemoryLimiter>,
        processors: Option<Processors>,
        consumers: Vec<Arc<dyn Consumer>>,
    ) -> Self {
        Pipeline {
            memory,
            processors,
            consumers,
            tail: None,
            stats: PipelineStats::default(),
        }
    }

    /// Routes traces through a tail sampler feeding this pipeline's consumers. Needs a Tokio
    /// runtime (the sampler's decision task).
    pub fn with_tail_sampling(mut self, settings: TailSettings) -> Self {
        self.tail = Some(TailSampler::start(
            settings,
            self.memory.clone(),
            self.consumers.clone(),
        ));
        self
    }

    /// The tail sampler, when configured.
    pub fn tail_sampler(&self) -> Option<&TailSampler> {
        self.tail.as_ref()
    }

    /// Decides and hands on everything the tail sampler holds (for shutdown).
    pub async fn flush(&self) {
        if let Some(t) = &self.tail {
            t.flush().await;
        }
    }

    /// Counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// True when receivers should refuse new data before even reading it.
    pub fn is_saturated(&self) -> bool {
        self.memory.used() >= self.memory.soft_limit()
    }

    /// Waits (up to `max_wait`) until every consumer can take more without growing its queue:
    /// a receiver calls this before reading a request body, so a busy exporter slows the
    /// senders through HTTP/2 flow control instead of holding their data. False on timeout.
    pub async fn ready(&self, max_wait: Duration) -> bool {
        if !self.consumers.iter().any(|c| c.busy()) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        for c in &self.consumers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !c.ready(left).await {
                return false;
            }
        }
        true
    }

    /// Runs `batch` through the processors and hands it to every consumer.
    pub async fn submit(&self, batch: Batch, priority: Priority) -> Result<(), Refused> {
        let signal = batch.signal;
        let items_in = batch.items;
        if priority == Priority::Receiver && self.is_saturated() {
            self.stats.refused[signal.index()].fetch_add(items_in, Ordering::Relaxed);
            return Err(Refused::MemoryLimit);
        }
        let batch = match &self.processors {
            Some(p) => match p.process(batch) {
                Ok(b) => b,
                Err(e) => {
                    // Processors only see payloads that passed the wire scan; a decode failure
                    // here means a malformed inner field. Forward unchanged rather than lose it.
                    tracing::debug!(error = %e, "processors skipped a batch they cannot decode");
                    e.into_batch()
                }
            },
            None => batch,
        };
        self.stats.dropped_by_processors[signal.index()]
            .fetch_add(items_in.saturating_sub(batch.items), Ordering::Relaxed);
        if batch.items == 0 {
            self.stats.accepted[signal.index()].fetch_add(items_in, Ordering::Relaxed);
            return Ok(());
        }
        if signal == Signal::Traces
            && let Some(t) = &self.tail
        {
            let result = t.submit(batch).await;
            match &result {
                Ok(()) => {
                    self.stats.accepted[signal.index()].fetch_add(items_in, Ordering::Relaxed)
                }
                Err(_) => self.stats.refused[signal.index()].fetch_add(items_in, Ordering::Relaxed),
            };
            return result;
        }
        let mut result = Ok(());
        for c in &self.consumers {
            if let Err(e) = c.consume(batch.clone(), priority).await {
                result = Err(e);
            }
        }
        match &result {
            Ok(()) => self.stats.accepted[signal.index()].fetch_add(items_in, Ordering::Relaxed),
            Err(_) => self.stats.refused[signal.index()].fetch_add(items_in, Ordering::Relaxed),
        };
        result
    }

    /// Appends the pipeline's Prometheus families to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        use crate::{write_family, write_sample};
        for (name, help, f) in [
            (
                "otlp_mesh_pipeline_accepted_items_total",
                "Items (spans, data points, log records) accepted by the pipeline.",
                PipelineStats::accepted as fn(&PipelineStats, Signal) -> u64,
            ),
            (
                "otlp_mesh_pipeline_refused_items_total",
                "Items refused with a retryable status (memory limit or full queue).",
                PipelineStats::refused,
            ),
            (
                "otlp_mesh_pipeline_sampled_out_items_total",
                "Items dropped by the sampling processor.",
                PipelineStats::sampled_out,
            ),
        ] {
            write_family(out, name, "counter", help);
            for s in Signal::ALL {
                write_sample(out, name, &[("signal", s.as_str())], f(&self.stats, s));
            }
        }
        write_family(
            out,
            "otlp_mesh_pipeline_memory_bytes",
            "gauge",
            "Bytes of telemetry held in memory queues.",
        );
        write_sample(
            out,
            "otlp_mesh_pipeline_memory_bytes",
            &[],
            self.memory.used(),
        );
        if let Some(t) = &self.tail {
            t.render_prometheus(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;

    struct Collect(Mutex<Vec<Batch>>, bool);

    impl Consumer for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn consume(&self, batch: Batch, _: Priority) -> BoxFuture<'_, Result<(), Refused>> {
            Box::pin(async move {
                if self.1 {
                    return Err(Refused::QueueFull("collect".into()));
                }
                self.0.lock().unwrap().push(batch);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn every_consumer_gets_the_batch_and_a_full_one_refuses() {
        let a = Arc::new(Collect(Mutex::new(Vec::new()), false));
        let b = Arc::new(Collect(Mutex::new(Vec::new()), false));
        let p = Pipeline::new(
            Arc::new(MemoryLimiter::new(1 << 20, 1 << 20)),
            None,
            vec![a.clone(), b.clone()],
        );
        let batch = Batch::new(Signal::Logs, Bytes::from_static(b"x"), 3);
        p.submit(batch.clone(), Priority::Receiver).await.unwrap();
        assert_eq!(a.0.lock().unwrap().len(), 1);
        assert_eq!(b.0.lock().unwrap()[0], batch);
        assert_eq!(p.stats().accepted(Signal::Logs), 3);

        let full = Pipeline::new(
            Arc::new(MemoryLimiter::new(1 << 20, 1 << 20)),
            None,
            vec![Arc::new(Collect(Mutex::new(Vec::new()), true))],
        );
        assert_eq!(
            full.submit(batch, Priority::Receiver).await,
            Err(Refused::QueueFull("collect".into()))
        );
        assert_eq!(full.stats().refused(Signal::Logs), 3);
    }

    #[tokio::test]
    async fn saturated_memory_refuses_receivers_but_not_internal_data() {
        let memory = Arc::new(MemoryLimiter::new(10, 100));
        assert!(memory.try_acquire(10, Priority::Receiver));
        let sink = Arc::new(Collect(Mutex::new(Vec::new()), false));
        let p = Pipeline::new(memory, None, vec![sink.clone()]);
        let batch = Batch::new(Signal::Traces, Bytes::from_static(b"x"), 1);
        assert_eq!(
            p.submit(batch.clone(), Priority::Receiver).await,
            Err(Refused::MemoryLimit)
        );
        p.submit(batch, Priority::Internal).await.unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 1);
    }
}
