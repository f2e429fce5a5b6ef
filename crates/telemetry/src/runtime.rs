//! The assembled telemetry side of the process: pipeline, receivers, recorder, exporters, store.
//!
//! Built once at start from the `telemetry:` section; a reload that changes that section is
//! reported and takes effect at the next restart (the data already queued must not be dropped
//! by a rebuild).

use crate::export::Exporter;
use crate::export::loadbalance::LoadBalancingExporter;
use crate::limiter::{MemoryLimiter, Priority};
use crate::otlp::Batch;
use crate::pipeline::Refused;
use crate::pipeline::{Consumer, Pipeline};
use crate::processors::Processors;
use crate::processors::tail_sampling::TailSettings;
use crate::receiver::{self, ReceiverHandle, ReceiverLimits, ReceiverStats};
use crate::recorder::Recorder;
use crate::registry::Registry;
use crate::store::{Store, StoreFeed};
use futures_util::future::BoxFuture;
use otlp_mesh_config::telemetry::TelemetryConfig;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot bind the OTLP {what} receiver to {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid processor config: {0}")]
    Processors(String),
    #[error("exporter `{name}`: {reason}")]
    Exporter { name: String, reason: String },
}

/// The running telemetry pipeline and its endpoints.
pub struct Telemetry {
    pipeline: Arc<Pipeline>,
    recorder: Arc<Recorder>,
    receivers: Mutex<Vec<(&'static str, ReceiverHandle)>>,
    receiver_stats: Arc<ReceiverStats>,
    store: Option<(Arc<Store>, Arc<StoreFeed>)>,
    exporters: Vec<Exporter>,
    balancers: Vec<LoadBalancingExporter>,
}

/// An exporter as a pipeline consumer: a full queue refuses the batch, so the sender retries.
struct ExportConsumer(Exporter);

impl Consumer for ExportConsumer {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn consume(&self, batch: Batch, priority: Priority) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            let queued = match priority {
                Priority::Receiver => self.0.enqueue(batch).await,
                Priority::Internal => self.0.enqueue_internal(batch).await,
            };
            queued.map_err(|e| {
                tracing::debug!(exporter = self.0.name(), reason = ?e, "exporter refused a batch");
                Refused::QueueFull(self.0.name().to_string())
            })
        })
    }

    fn busy(&self) -> bool {
        self.0.busy()
    }

    fn ready(&self, max_wait: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.0.ready(max_wait))
    }
}

/// A load-balancing exporter as a pipeline consumer: refused (with nothing queued) when a
/// backend's queue is full or there is no backend.
struct LoadBalanceConsumer(LoadBalancingExporter);

impl Consumer for LoadBalanceConsumer {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn consume(&self, batch: Batch, priority: Priority) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            self.0.enqueue(batch, priority).await.map_err(|e| {
                tracing::debug!(exporter = self.0.name(), reason = ?e, "exporter refused a batch");
                Refused::QueueFull(self.0.name().to_string())
            })
        })
    }

    fn busy(&self) -> bool {
        self.0.busy()
    }

    fn ready(&self, max_wait: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.0.ready(max_wait))
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts everything `cfg` asks for. `registry` feeds the RED metrics.
    pub async fn start(
        cfg: &TelemetryConfig,
        registry: Arc<Registry>,
    ) -> Result<Arc<Telemetry>, TelemetryError> {
        let memory = Arc::new(MemoryLimiter::new(
            cfg.memory_limit.soft.value.0,
            cfg.memory_limit.hard.value.0,
        ));
        let processors = Processors::from_config(&cfg.processors)
            .map_err(|e| TelemetryError::Processors(e.to_string()))?;
        let mut consumers: Vec<Arc<dyn Consumer>> = Vec::new();
        let store = if cfg.store.enabled {
            let store = Arc::new(Store::from_config(&cfg.store));
            let feed = Arc::new(StoreFeed::start(
                store.clone(),
                cfg.store.max_items_per_second.value,
            ));
            consumers.push(feed.clone());
            Some((store, feed))
        } else {
            None
        };
        let mut exporters = Vec::new();
        let mut balancers = Vec::new();
        for (i, e) in cfg.exporters.iter().enumerate() {
            let name = e.name.clone().unwrap_or_else(|| format!("exporter-{i}"));
            if e.loadbalancing.is_some() {
                let lb = LoadBalancingExporter::start(
                    name.clone(),
                    &e.value,
                    &cfg.batch,
                    memory.clone(),
                )
                .await
                .map_err(|err| TelemetryError::Exporter {
                    name,
                    reason: err.to_string(),
                })?;
                // Each backend reports as exporter `<name>-<address>`.
                consumers.push(Arc::new(LoadBalanceConsumer(lb.clone())));
                balancers.push(lb);
                continue;
            }
            let exporter = Exporter::start(name.clone(), &e.value, &cfg.batch, memory.clone())
                .await
                .map_err(|err| TelemetryError::Exporter {
                    name,
                    reason: err.to_string(),
                })?;
            consumers.push(Arc::new(ExportConsumer(exporter.clone())));
            exporters.push(exporter);
        }
        let mut pipeline = Pipeline::new(memory, processors, consumers);
        if let Some(ts) = &cfg.processors.tail_sampling {
            pipeline = pipeline.with_tail_sampling(TailSettings::from_config(ts));
        }
        let pipeline = Arc::new(pipeline);
        let recorder = Recorder::start(cfg, pipeline.clone(), registry);
        let receiver_stats = Arc::new(ReceiverStats::default());
        let mut receivers = Vec::new();
        if let Some(r) = &cfg.receiver {
            let limits = ReceiverLimits {
                max_message_size: usize::try_from(r.max_message_size.value.0).unwrap_or(usize::MAX),
                max_decompressed_size: usize::try_from(r.max_decompressed_size.value.0)
                    .unwrap_or(usize::MAX),
            };
            // One budget for both endpoints: it bounds the process's memory, not a port's.
            let budget = receiver::Budget::new(
                usize::try_from(r.max_receiving_bytes.value.0).unwrap_or(usize::MAX),
            );
            for (what, addr) in [("gRPC", &r.grpc), ("HTTP", &r.http)] {
                let Some(addr) = addr else { continue };
                let bind = |source| TelemetryError::Bind {
                    what,
                    addr: addr.value.clone(),
                    source,
                };
                let parsed: SocketAddr = addr.value.parse().map_err(|_| {
                    bind(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a socket address",
                    ))
                })?;
                let handle = receiver::start(
                    parsed,
                    pipeline.clone(),
                    limits,
                    receiver_stats.clone(),
                    budget.clone(),
                )
                .await
                .map_err(bind)?;
                tracing::info!(transport = what, addr = %handle.addr, "OTLP receiver listening");
                receivers.push((what, handle));
            }
        }
        Ok(Arc::new(Telemetry {
            pipeline,
            recorder,
            receivers: Mutex::new(receivers),
            receiver_stats,
            store,
            exporters,
            balancers,
        }))
    }

    /// The proxy's span/access-log recorder.
    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The embedded store, when enabled.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.as_ref().map(|(s, _)| s.clone())
    }

    /// Bound receiver addresses: (`gRPC` | `HTTP`, address).
    pub fn receiver_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(w, h)| (*w, h.addr))
            .collect()
    }

    /// Appends every telemetry Prometheus family to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        self.pipeline.render_prometheus(out);
        self.receiver_stats.render_prometheus(out);
        self.recorder.render_prometheus(out);
        let mut exporters = self.exporters.clone();
        for lb in &self.balancers {
            exporters.extend(lb.exporters());
        }
        Exporter::render_prometheus_all(&exporters, out);
        if !self.balancers.is_empty() {
            LoadBalancingExporter::render_prometheus_all(&self.balancers, out);
        }
        if let Some((store, feed)) = &self.store {
            let stats = store.stats();
            crate::write_family(
                out,
                "otlp_mesh_store_bytes",
                "gauge",
                "Estimated bytes held by the embedded store.",
            );
            crate::write_sample(out, "otlp_mesh_store_bytes", &[], stats.bytes);
            crate::write_family(
                out,
                "otlp_mesh_store_skipped_batches_total",
                "counter",
                "Batches that bypassed the embedded store: its ingest fell behind (backlog) or its items-per-second budget was spent (budget); or that it stopped in because their framing broke (undecodable; the items before the break were stored).",
            );
            crate::write_sample(
                out,
                "otlp_mesh_store_skipped_batches_total",
                &[("reason", "backlog")],
                feed.skipped(),
            );
            crate::write_sample(
                out,
                "otlp_mesh_store_skipped_batches_total",
                &[("reason", "budget")],
                feed.over_budget(),
            );
            crate::write_sample(
                out,
                "otlp_mesh_store_skipped_batches_total",
                &[("reason", "undecodable")],
                feed.failed(),
            );
        }
    }

    /// Stops the receivers (draining requests in flight for up to `drain`).
    pub async fn shutdown(&self, drain: Duration) {
        let receivers: Vec<_> = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for (_, r) in receivers {
            r.stop(drain).await;
        }
        // Traces held by the tail sampler are decided now and queued with the rest.
        self.pipeline.flush().await;
        // What is still queued gets until the drain deadline; the persistent queue keeps the rest.
        for e in &self.exporters {
            e.shutdown(drain).await;
        }
        for lb in &self.balancers {
            lb.shutdown(drain).await;
        }
    }
}
