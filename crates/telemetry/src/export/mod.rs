//! OTLP exporters: a queue (in memory, or a write-ahead log on disk) drained by one sender task
//! per exporter, which merges queued batches into export requests, compresses them and sends
//! them over OTLP/gRPC or OTLP/HTTP, retrying per the OTLP specification.
//!
//! ```text
//! enqueue ─▶ queue (memory │ WAL) ─▶ sender: merge ≤ batch.size / max_bytes, wait ≤ batch.timeout
//!                                       └▶ up to MAX_IN_FLIGHT requests: compress ▸ send ▸ retry
//!                                            └▶ finish: release memory │ advance the WAL ack
//! ```

mod conn;
mod grpc;
mod http;
pub mod loadbalance;
mod queue;
pub mod retry;
mod stats;
mod wal;

pub use queue::QueueFull;
pub use retry::{Decision, Failure, classify};
pub use stats::{DropReason, ExporterStatsSnapshot, FailedItems, SignalStatsSnapshot};

use crate::pipeline::PACE_MAX_WAIT;
use crate::{Batch, MemoryLimiter, Priority, Signal};
use conn::Accepted;
use otlp_mesh_config::telemetry::{BatchConfig, ExporterConfig, FsyncPolicy, OtlpEndpointConfig};
use queue::{Limits, MemoryQueue, Taken};
use stats::Stats;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use wal::{Wal, WalOptions};

/// Export requests of one exporter sent (or being retried) at the same time.
pub const MAX_IN_FLIGHT: usize = 4;
/// Receivers wait (while the backend answers) once an exporter holds this many halves of a
/// full request (`batch.max_bytes`): the bytes that requests in flight hold (their bodies as
/// sent) plus the queued ones. Three halves: an uncompressed full request in flight and the next
/// one half filled (filling it up resumes when the first is answered), rather than two full
/// requests in flight and a third waiting — the peak of the data in flight falls by about a
/// third. Compressed requests hold only their compressed bodies, so a full one still waits
/// beside one or two in flight.
pub const HELD_HALF_REQUESTS: u64 = 3;
/// Default bound of the in-memory queue.
pub const DEFAULT_MEMORY_QUEUE_BYTES: u64 = 64 << 20;
/// Default bound of the persistent queue.
pub const DEFAULT_DISK_QUEUE_BYTES: u64 = 1 << 30;
/// How often appends reach the disk with `fsync: batched`.
const BATCHED_FSYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Why an exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The exporter's configuration cannot be used.
    #[error("exporter `{name}`: {reason}")]
    Config { name: String, reason: String },
    /// The persistent queue could not be opened.
    #[error("exporter `{name}`: persistent queue {}: {source}", dir.display())]
    Queue {
        name: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One OTLP exporter: its queue and sender task. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.kind)
            .finish()
    }
}

enum Client {
    Grpc(grpc::GrpcClient),
    Http(http::HttpClient),
}

impl Client {
    /// The request body for the concatenation of `parts` (retries reuse it).
    fn prepare(&self, parts: Vec<bytes::Bytes>, total: usize) -> std::io::Result<Prepared> {
        match self {
            Client::Grpc(c) => c.prepare(parts, total).map(Prepared::Grpc),
            Client::Http(c) => c.prepare(&parts, total).map(Prepared::Http),
        }
    }

    /// Whether a prepared body is (made of) the queued batches themselves rather than a
    /// compressed or concatenated copy of them.
    fn sends_parts(&self, parts: usize) -> bool {
        match self {
            Client::Grpc(c) => c.sends_parts(),
            Client::Http(c) => c.sends_parts(parts),
        }
    }

    async fn send(&self, signal: Signal, body: &Prepared) -> Result<Accepted, Failure> {
        match (self, body) {
            (Client::Grpc(c), Prepared::Grpc(chunks)) => c.send(signal, chunks.clone()).await,
            (Client::Http(c), Prepared::Http(b)) => c.send(signal, b.clone()).await,
            _ => Err(Failure::Transport(
                "body prepared for another client".into(),
            )),
        }
    }
}

/// A request body ready to send (cheap to clone: reference-counted chunks).
enum Prepared {
    Grpc(grpc::Chunks),
    Http(bytes::Bytes),
}

impl Prepared {
    fn len(&self) -> u64 {
        match self {
            Prepared::Grpc(c) => c.len(),
            Prepared::Http(b) => b.len() as u64,
        }
    }
}

enum Queue {
    Memory(MemoryQueue),
    Wal(Arc<Wal>),
}

/// Retry settings in effect.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    enabled: bool,
    initial: Duration,
    max: Duration,
    max_elapsed: Duration,
    /// With a persistent queue retryable failures are retried forever: the data is on disk.
    forever: bool,
}

struct Inner {
    name: String,
    kind: &'static str,
    client: Client,
    queue: Queue,
    stats: Arc<Stats>,
    limits: Limits,
    retry: RetryPolicy,
    wake: Notify,
    /// Notified when queued bytes are taken for sending, a request's body shrinks (compressed)
    /// or a request finishes (paced receivers).
    room: Notify,
    /// Bytes that requests in flight hold: their bodies as sent (and their batches, if kept).
    sending: AtomicU64,
    /// The last export attempt failed: receivers are not paced (the queue absorbs the outage).
    failing: AtomicBool,
    stopping: AtomicBool,
    /// Set by `retire`: what is left at the deadline is handed back, not dropped or closed.
    retiring: AtomicBool,
    /// Requests in flight keep their uncompressed batches so that `retire` can hand them
    /// back (load-balancing backends only: it holds the batches beside the compressed body).
    keep_parts: AtomicBool,
    /// Set by `shutdown`: send what is queued until then.
    deadline: watch::Sender<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// How one export request ended.
enum Outcome {
    Sent(Accepted),
    Dropped(DropReason),
}

/// What the sender remembers about a request in flight.
struct InFlight {
    signal: Signal,
    items: u64,
    bytes: u64,
    seqs: Vec<u64>,
    /// The queued batches it merged (reference-counted), handed back if a retiring exporter's
    /// deadline cuts the request short.
    parts: Vec<bytes::Bytes>,
    part_items: Vec<u64>,
}

impl InFlight {
    /// Its batches as queue entries again.
    fn into_entries(self) -> impl Iterator<Item = queue::Entry> {
        let signal = self.signal;
        let now = Instant::now();
        self.seqs
            .into_iter()
            .zip(self.parts)
            .zip(self.part_items)
            .map(move |((seq, payload), items)| queue::Entry {
                seq,
                batch: Batch::new(signal, payload, items),
                arrived: now,
            })
    }
}

/// Queue space held for one batch: [`Reservation::commit`] queues the batch, dropping the
/// reservation gives the space back. Lets a caller that splits a batch over several exporters
/// queue either every part or none.
pub(crate) struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
    live: bool,
}

impl Reservation {
    /// Queues `batch` (the one the space was reserved for) in the reserved space. Only a
    /// persistent queue's write can fail here ([`QueueFull::Io`]).
    pub(crate) async fn commit(mut self, batch: Batch) -> Result<(), QueueFull> {
        if !self.live {
            return Ok(());
        }
        let inner = self.inner.clone();
        match &inner.queue {
            Queue::Memory(m) => m.commit(batch, &inner.stats),
            Queue::Wal(w) => {
                let w = w.clone();
                let appended = tokio::task::spawn_blocking(move || w.append_reserved(&batch))
                    .await
                    .unwrap_or(Err(QueueFull::Io));
                if let Err(e) = appended {
                    inner.stats.queue_full.fetch_add(1, Relaxed);
                    return Err(e);
                }
            }
        }
        self.live = false;
        inner.wake.notify_one();
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.live {
            match &self.inner.queue {
                Queue::Memory(m) => m.unreserve(self.bytes),
                Queue::Wal(w) => w.unreserve(self.bytes),
            }
        }
    }
}

/// What a retired exporter still held at its deadline (queued, or in requests cut short), to be
/// handed to other exporters. Memory: the bytes stay reserved until handed or abandoned.
/// Persistent: records are acknowledged once handed; abandoned ones stay on disk.
pub(crate) struct Leftovers {
    inner: Arc<Inner>,
}

impl Leftovers {
    /// The next batches to hand over; empty once nothing is left.
    pub(crate) async fn take(&self) -> Vec<queue::Entry> {
        let drain = |inner: &Inner| match &inner.queue {
            Queue::Memory(m) => m.drain(),
            Queue::Wal(w) => w.pending.lock().unwrap_or_else(|e| e.into_inner()).drain(),
        };
        let got = drain(&self.inner);
        if !got.is_empty() {
            return got;
        }
        if let Queue::Wal(w) = &self.inner.queue {
            let w = w.clone();
            match tokio::task::spawn_blocking(move || w.refill()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(exporter = %self.inner.name, error = %e, "persistent queue: reading records back failed");
                }
                Err(_) => {}
            }
            return drain(&self.inner);
        }
        Vec::new()
    }

    /// Records `entries` as taken by other exporters: frees their memory or acknowledges them.
    pub(crate) async fn handed(&self, entries: Vec<queue::Entry>) {
        let inner = &self.inner;
        match &inner.queue {
            Queue::Memory(m) => {
                for e in entries {
                    let b = e.batch;
                    m.release(b.signal, b.items, b.len() as u64, &inner.stats);
                }
            }
            Queue::Wal(w) => {
                let w = w.clone();
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || w.finish(&seqs)).await {
                    tracing::error!(exporter = %inner.name, error = %e, "persistent queue: recording the acknowledgement failed (the records will be sent again after a restart)");
                }
            }
        }
    }

    /// Everything was handed over: closes the queue; a persistent one's directory is removed.
    pub(crate) async fn finish(self) {
        if let Queue::Wal(w) = &self.inner.queue {
            let w = w.clone();
            let name = self.inner.name.clone();
            let _ = tokio::task::spawn_blocking(move || {
                w.close();
                if let Err(e) = std::fs::remove_dir_all(w.dir()) {
                    tracing::warn!(exporter = %name, dir = %w.dir().display(), error = %e, "cannot remove the queue directory of a retired backend");
                }
            })
            .await;
        }
    }

    /// Gives up on `taken` and the rest: a memory queue drops them (counted as `shutdown`), a
    /// persistent queue keeps them on disk for the next time this backend is started. Returns
    /// the items dropped.
    pub(crate) async fn abandon(self, taken: Vec<queue::Entry>) -> u64 {
        let inner = &self.inner;
        match &inner.queue {
            Queue::Memory(m) => {
                let mut left = taken;
                left.extend(m.drain());
                inner.drop_entries(
                    m,
                    left,
                    "retired backend: dropping items no other backend took",
                )
            }
            Queue::Wal(w) => {
                let w = w.clone();
                let _ = tokio::task::spawn_blocking(move || w.close()).await;
                0
            }
        }
    }
}

/// Request headers from the config.
fn configured_headers(ep: &OtlpEndpointConfig) -> Result<::http::HeaderMap, String> {
    let mut map = ::http::HeaderMap::new();
    for (k, v) in &ep.headers {
        let name = ::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`{k}` is not a header name"))?;
        let value = ::http::HeaderValue::from_str(v)
            .map_err(|_| format!("header `{k}` has a value that is not a header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl Exporter {
    /// Starts the sender task(s); opens/replays the persistent queue when `cfg.queue.dir` is set.
    pub async fn start(
        name: String,
        cfg: &ExporterConfig,
        batch: &BatchConfig,
        memory: Arc<MemoryLimiter>,
    ) -> Result<Exporter, ExportError> {
        let config_err = |reason: String| ExportError::Config {
            name: name.clone(),
            reason,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(config_err(
                "name must be letters, digits, `-` and `_`".into(),
            ));
        }
        let (kind, client) = match (&cfg.otlp_grpc, &cfg.otlp_http) {
            (Some(g), None) => (
                "otlp_grpc",
                Client::Grpc(grpc::GrpcClient::new(g).map_err(config_err)?),
            ),
            (None, Some(h)) => (
                "otlp_http",
                Client::Http(http::HttpClient::new(h).map_err(config_err)?),
            ),
            _ => {
                return Err(config_err(
                    "set exactly one of `otlp_grpc` and `otlp_http`".into(),
                ));
            }
        };
        let limits = Limits {
            items: batch.size.value.max(1),
            bytes: batch.max_bytes.value.0.max(1),
            timeout: batch.timeout.value.0,
        };
        let stats = Arc::new(Stats::default());
        let max_bytes = cfg.queue.max_bytes.as_ref().map(|b| b.value.0);
        let queue = match &cfg.queue.dir {
            None => Queue::Memory(MemoryQueue::new(
                max_bytes.unwrap_or(DEFAULT_MEMORY_QUEUE_BYTES),
                memory,
            )),
            Some(dir) => {
                let dir = Path::new(&dir.value).join(&name);
                let max_bytes = max_bytes.unwrap_or(DEFAULT_DISK_QUEUE_BYTES);
                let opts = WalOptions {
                    max_bytes,
                    segment_bytes: (max_bytes / 8).clamp(1 << 20, 32 << 20),
                    fsync: cfg.queue.fsync,
                    load_budget: (limits.bytes.saturating_mul(4)).max(1 << 20),
                };
                let (d, s) = (dir.clone(), stats.clone());
                let opened = tokio::task::spawn_blocking(move || Wal::open(&d, opts, s))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r);
                let wal = opened.map_err(|source| ExportError::Queue {
                    name: name.clone(),
                    dir,
                    source,
                })?;
                Queue::Wal(Arc::new(wal))
            }
        };
        let persistent = matches!(queue, Queue::Wal(_));
        let r = &cfg.retry;
        let retry = RetryPolicy {
            enabled: r.enabled,
            initial: r.initial_interval.value.0,
            max: r.max_interval.value.0,
            max_elapsed: r.max_elapsed_time.value.0,
            forever: persistent,
        };
        let inner = Arc::new(Inner {
            name,
            kind,
            client,
            queue,
            stats,
            limits,
            retry,
            wake: Notify::new(),
            room: Notify::new(),
            sending: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            keep_parts: AtomicBool::new(false),
            deadline: watch::Sender::new(None),
            task: Mutex::new(None),
        });
        if let Queue::Wal(w) = &inner.queue
            && cfg.queue.fsync == FsyncPolicy::Batched
        {
            tokio::spawn(batched_fsync(w.clone(), inner.name.clone()));
        }
        let task = tokio::spawn(run(inner.clone()));
        *inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(Exporter { inner })
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Queues a batch from a receiver (held to the memory limiter's soft limit). With the
    /// persistent queue, returns after the write-ahead-log append (and fsync under `always`).
    pub async fn enqueue(&self, batch: Batch) -> Result<(), QueueFull> {
        self.push(batch, Priority::Receiver).await
    }

    /// Waits (up to `max_wait`) while the backend is healthy and this exporter already has a
    /// full request waiting for a sending slot; see [`Inner::pace`]. False on timeout.
    pub async fn ready(&self, max_wait: Duration) -> bool {
        self.inner.pace(max_wait).await
    }

    /// True when [`Exporter::ready`] would wait now.
    pub fn busy(&self) -> bool {
        self.inner.busy()
    }

    /// Queues the proxy's own telemetry (held to the memory limiter's hard limit).
    pub async fn enqueue_internal(&self, batch: Batch) -> Result<(), QueueFull> {
        self.push(batch, Priority::Internal).await
    }

    async fn push(&self, batch: Batch, priority: Priority) -> Result<(), QueueFull> {
        let inner = &self.inner;
        if priority == Priority::Receiver
            && !batch.is_empty()
            && !inner.stopping.load(Relaxed)
            && !inner.pace(PACE_MAX_WAIT).await
        {
            inner.stats.queue_full.fetch_add(1, Relaxed);
            return Err(QueueFull::Full);
        }
        self.reserve(&batch, priority)?.commit(batch).await
    }

    /// Reserves queue space for `batch` (refused as `enqueue` would refuse it); see
    /// [`Reservation`].
    pub(crate) fn reserve(
        &self,
        batch: &Batch,
        priority: Priority,
    ) -> Result<Reservation, QueueFull> {
        let inner = &self.inner;
        let reserved = if inner.stopping.load(Relaxed) {
            Err(QueueFull::ShuttingDown)
        } else if batch.is_empty() {
            Ok(0)
        } else {
            match &inner.queue {
                Queue::Memory(m) => {
                    let n = batch.len() as u64;
                    m.reserve(n, priority).map(|()| n)
                }
                Queue::Wal(w) => {
                    let n = Wal::record_len(batch);
                    w.reserve(n).map(|()| n)
                }
            }
        };
        match reserved {
            Ok(bytes) => Ok(Reservation {
                inner: inner.clone(),
                bytes,
                live: bytes > 0,
            }),
            Err(e) => {
                inner.stats.queue_full.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> ExporterStatsSnapshot {
        let i = &self.inner;
        i.stats
            .snapshot(&i.name, i.kind, matches!(i.queue, Queue::Wal(_)))
    }

    /// Appends the `otlp_mesh_exporter_*` families of this exporter to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        stats::render_prometheus(&[self.stats()], out);
    }

    /// Appends the `otlp_mesh_exporter_*` families of several exporters (each family once).
    pub fn render_prometheus_all(exporters: &[Exporter], out: &mut String) {
        let snaps: Vec<_> = exporters.iter().map(Exporter::stats).collect();
        stats::render_prometheus(&snaps, out);
    }

    /// Stops taking data, tries to send what is queued until `deadline`; the persistent queue
    /// keeps the rest for the next start. Returns once the sender has stopped.
    pub async fn shutdown(&self, deadline: Duration) {
        let inner = &self.inner;
        inner.stopping.store(true, Relaxed);
        inner.deadline.send_replace(Some(Instant::now() + deadline));
        self.join().await;
    }

    /// Like [`Exporter::shutdown`], but what is still queued or being sent at the deadline is
    /// handed back (requests in flight are cut short and their batches returned) instead of
    /// dropped or left on disk.
    pub(crate) async fn retire(&self, drain: Duration) -> Leftovers {
        let inner = &self.inner;
        inner.retiring.store(true, Relaxed);
        inner.stopping.store(true, Relaxed);
        inner.deadline.send_replace(Some(Instant::now() + drain));
        self.join().await;
        Leftovers {
            inner: inner.clone(),
        }
    }

    /// Makes requests in flight keep their batches, so that [`Exporter::retire`] can hand back
    /// what a deadline cuts short. Call before queueing anything.
    pub(crate) fn keep_batches_in_flight(&self) {
        self.inner.keep_parts.store(true, Relaxed);
    }

    /// Moves a stopping exporter's deadline to now.
    pub(crate) fn hurry(&self) {
        let inner = &self.inner;
        if inner.stopping.load(Relaxed) {
            inner.deadline.send_replace(Some(Instant::now()));
        }
    }

    async fn join(&self) {
        let inner = &self.inner;
        let task = inner.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(exporter = %inner.name, error = %e, "exporter sender task failed");
        }
    }
}

async fn batched_fsync(wal: Arc<Wal>, name: String) {
    let mut tick = tokio::time::interval(BATCHED_FSYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if wal.is_closed() {
            return;
        }
        let w = wal.clone();
        match tokio::task::spawn_blocking(move || w.sync_if_dirty()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(exporter = %name, error = %e, "persistent queue: fsync failed")
            }
            Err(_) => return,
        }
    }
}

impl Inner {
    /// Drops memory-queue entries nobody will send: logged with `why`, counted as `shutdown`,
    /// their space released. Returns the items dropped.
    fn drop_entries(&self, m: &MemoryQueue, left: Vec<queue::Entry>, why: &str) -> u64 {
        let items: u64 = left.iter().map(|e| e.batch.items).sum();
        if items > 0 {
            tracing::warn!(exporter = %self.name, items, "{why}");
        }
        for e in left {
            let b = e.batch;
            self.stats.failed(b.signal, DropReason::Shutdown, b.items);
            m.release(b.signal, b.items, b.len() as u64, &self.stats);
        }
        items
    }

    fn take_ready(&self, now: Instant, flush: bool) -> Result<Taken, Option<Instant>> {
        let taken = match &self.queue {
            Queue::Memory(m) => m.take_ready(now, &self.limits, flush),
            Queue::Wal(w) => w
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_ready(now, &self.limits, flush),
        };
        if taken.is_ok() {
            self.room.notify_waiters();
        }
        taken
    }

    /// Backpressure towards receivers: while the backend is healthy and the exporter is
    /// [busy](Self::busy) (a full request waits for a free sending slot, or the requests in
    /// flight and the queue hold 1½ full requests), a receiver waits (up to `max_wait`) rather
    /// than queue more, so memory follows the backend's pace instead of filling the queue.
    /// Returns false if there was no room in time. While exports fail, nobody waits: the
    /// queue (up to `queue.max_bytes`) absorbs the outage.
    async fn pace(&self, max_wait: Duration) -> bool {
        // The common case costs two atomic loads: no clock read, no waiter registration.
        if !self.busy() {
            return true;
        }
        self.stats.paced.fetch_add(1, Relaxed);
        let deadline = Instant::now() + max_wait;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.busy() {
                return true;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// A memory queue, while the backend answers, with a full request waiting for a slot, or
    /// holding [`HELD_HALF_REQUESTS`] halves of a full request in flight and waiting.
    fn busy(&self) -> bool {
        match &self.queue {
            Queue::Memory(m) => {
                !self.failing.load(Relaxed)
                    && (m.full_request_waiting(&self.limits)
                        || (m.waiting_bytes() + self.sending.load(Relaxed)).saturating_mul(2)
                            >= self.limits.bytes.saturating_mul(HELD_HALF_REQUESTS))
            }
            Queue::Wal(_) => false,
        }
    }

    fn queue_empty(&self) -> bool {
        match &self.queue {
            Queue::Memory(m) => m
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty(),
            Queue::Wal(w) => {
                w.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                    && w.all_loaded()
            }
        }
    }

    /// Counts a finished request and releases its queue space.
    async fn finish(&self, req: InFlight, outcome: Outcome) {
        let c = self.stats.sig(req.signal);
        match outcome {
            Outcome::Sent(acc) => {
                c.batches_sent.fetch_add(1, Relaxed);
                let rejected = acc.rejected.min(req.items);
                c.items_sent.fetch_add(req.items - rejected, Relaxed);
                if rejected > 0 {
                    self.stats
                        .failed(req.signal, DropReason::Rejected, rejected);
                    tracing::warn!(
                        exporter = %self.name,
                        signal = %req.signal,
                        rejected,
                        message = %acc.message,
                        "backend rejected {rejected} of {} {} (partial success): {}",
                        req.items,
                        req.signal.item_name(),
                        acc.message
                    );
                } else if !acc.message.is_empty() {
                    tracing::warn!(exporter = %self.name, signal = %req.signal, message = %acc.message, "backend accepted the export with a warning: {}", acc.message);
                }
            }
            Outcome::Dropped(reason) => self.stats.failed(req.signal, reason, req.items),
        }
        self.release(req).await;
    }

    async fn release(&self, req: InFlight) {
        match &self.queue {
            Queue::Memory(m) => m.release(req.signal, req.items, req.bytes, &self.stats),
            Queue::Wal(w) => {
                let w = w.clone();
                let res = tokio::task::spawn_blocking(move || w.finish(&req.seqs)).await;
                if let Ok(Err(e)) = res {
                    tracing::error!(exporter = %self.name, error = %e, "persistent queue: recording the acknowledgement failed (the records will be sent again after a restart)");
                }
            }
        }
        self.stats.in_flight.fetch_sub(1, Relaxed);
        self.room.notify_waiters();
    }
}

/// The sender task: takes due batches, keeps up to [`MAX_IN_FLIGHT`] requests going, and on
/// shutdown drains until the deadline.
async fn run(inner: Arc<Inner>) {
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    let mut meta: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    // Bytes in flight: a new request starts only while less than one full request is out, so
    // at most about two full requests are held in memory beside the queue (uncompressed, the
    // receivers' pacing keeps it to about one: see `HELD_HALF_REQUESTS`).
    let mut bytes_in_flight: u64 = 0;
    let mut deadline_rx = inner.deadline.subscribe();
    loop {
        let deadline = *deadline_rx.borrow_and_update();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Queue::Wal(w) = &inner.queue
            && w.backlogged()
        {
            let w = w.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || w.refill()).await {
                tracing::error!(exporter = %inner.name, error = %e, "persistent queue: reading records back failed");
            }
        }
        let mut next_due = None;
        while in_flight.len() < MAX_IN_FLIGHT
            && (in_flight.is_empty() || bytes_in_flight < inner.limits.bytes)
        {
            match inner.take_ready(Instant::now(), deadline.is_some()) {
                Ok(taken) => {
                    let req = InFlight {
                        signal: taken.signal,
                        items: taken.items,
                        bytes: taken.bytes,
                        seqs: taken.seqs,
                        parts: if inner.keep_parts.load(Relaxed) {
                            taken.parts.clone()
                        } else {
                            Vec::new()
                        },
                        part_items: taken.part_items,
                    };
                    inner.stats.in_flight.fetch_add(1, Relaxed);
                    bytes_in_flight += req.bytes;
                    let held = Held::new(inner.clone(), taken.bytes);
                    let handle = in_flight.spawn(export(
                        inner.clone(),
                        taken.signal,
                        taken.items,
                        taken.parts,
                        taken.bytes as usize,
                        held,
                    ));
                    meta.insert(handle.id(), req);
                }
                Err(next) => {
                    next_due = next;
                    break;
                }
            }
        }
        if deadline.is_some() && in_flight.is_empty() && inner.queue_empty() {
            break;
        }
        // Sleep until something finishes, arrives, falls due, or shutdown changes the plan.
        let wake_at = match (next_due, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            Some(res) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                if let Ok((id, outcome)) = res {
                    if let Some(req) = meta.remove(&id) {
                        bytes_in_flight -= req.bytes;
                        inner.finish(req, outcome).await;
                    }
                } else if let Err(e) = res {
                    tracing::error!(exporter = %inner.name, error = %e, "export task failed");
                    if let Some(req) = meta.remove(&e.id()) {
                        bytes_in_flight -= req.bytes;
                        inner.finish(req, Outcome::Dropped(DropReason::PermanentError)).await;
                    }
                }
            }
            _ = inner.wake.notified() => {}
            _ = sleep_until_opt(wake_at) => {}
            _ = deadline_rx.changed() => {}
        }
    }
    // The deadline passed: stop what is still being sent or retried.
    let retiring = inner.retiring.load(Relaxed);
    in_flight.abort_all();
    while let Some(res) = in_flight.join_next_with_id().await {
        let (id, outcome) = match res {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => (e.id(), None),
        };
        let Some(req) = meta.remove(&id) else {
            continue;
        };
        match (outcome, &inner.queue) {
            (Some(outcome), _) => inner.finish(req, outcome).await,
            // Retiring: the batches go back to the queue for the retirer to hand elsewhere.
            (None, q) if retiring && !req.parts.is_empty() => {
                inner.stats.in_flight.fetch_sub(1, Relaxed);
                match q {
                    Queue::Memory(m) => req.into_entries().for_each(|e| m.requeue(e)),
                    Queue::Wal(w) => {
                        let mut pending = w.pending.lock().unwrap_or_else(|e| e.into_inner());
                        req.into_entries().for_each(|e| pending.push(e));
                    }
                }
            }
            // Unsent persistent records stay on disk for the next start.
            (None, Queue::Wal(_)) => {
                inner.stats.in_flight.fetch_sub(1, Relaxed);
            }
            (None, Queue::Memory(_)) => {
                inner
                    .finish(req, Outcome::Dropped(DropReason::Shutdown))
                    .await;
            }
        }
    }
    if retiring {
        // `Exporter::retire` hands the rest to its caller.
        return;
    }
    match &inner.queue {
        Queue::Memory(m) => {
            inner.drop_entries(
                m,
                m.drain(),
                "shutdown deadline passed; dropping queued items",
            );
        }
        Queue::Wal(w) => {
            let w = w.clone();
            let _ = tokio::task::spawn_blocking(move || w.close()).await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The bytes one request in flight holds, counted in [`Inner::sending`] until it ends (or is
/// aborted).
struct Held {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Held {
    fn new(inner: Arc<Inner>, bytes: u64) -> Held {
        inner.sending.fetch_add(bytes, Relaxed);
        Held { inner, bytes }
    }

    /// The request now holds `bytes` (its body once compressed).
    fn set(&mut self, bytes: u64) {
        let sending = &self.inner.sending;
        if bytes >= self.bytes {
            sending.fetch_add(bytes - self.bytes, Relaxed);
        } else {
            sending.fetch_sub(self.bytes - bytes, Relaxed);
            self.inner.room.notify_waiters();
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.inner.sending.fetch_sub(self.bytes, Relaxed);
    }
}

/// Sends one export request made of the queued payloads `parts` (`total` bytes), retrying per
/// the policy; says how it ended. `held` counts what it holds meanwhile.
async fn export(
    inner: Arc<Inner>,
    signal: Signal,
    items: u64,
    parts: Vec<bytes::Bytes>,
    total: usize,
    mut held: Held,
) -> Outcome {
    let name = &inner.name;
    let sends_parts = inner.client.sends_parts(parts.len());
    let body = match inner.client.prepare(parts, total) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(exporter = %name, %signal, items, error = %e, "dropping {items} {}: compression failed", signal.item_name());
            return Outcome::Dropped(DropReason::PermanentError);
        }
    };
    // A compressed (or concatenated) body replaces the batches, unless they are kept too.
    held.set(if sends_parts || !inner.keep_parts.load(Relaxed) {
        body.len()
    } else {
        body.len() + total as u64
    });
    let policy = inner.retry;
    let started = Instant::now();
    let mut backoff = retry::Backoff::new(policy.initial, policy.max);
    loop {
        let failure = match inner.client.send(signal, &body).await {
            Ok(accepted) => {
                inner.failing.store(false, Relaxed);
                return Outcome::Sent(accepted);
            }
            Err(f) => {
                inner.failing.store(true, Relaxed);
                // Paced receivers stop waiting: the queue takes the outage from here.
                inner.room.notify_waiters();
                f
            }
        };
        let after = match classify(&failure) {
            Decision::Permanent(reason) => {
                tracing::warn!(exporter = %name, %signal, items, %reason, "dropping {items} {}: non-retryable {reason}", signal.item_name());
                return Outcome::Dropped(DropReason::PermanentError);
            }
            Decision::Retryable { after } => after,
        };
        if !policy.enabled && !policy.forever {
            tracing::warn!(exporter = %name, %signal, items, error = %failure, "dropping {items} {}: {failure} (retry disabled)", signal.item_name());
            return Outcome::Dropped(DropReason::RetriesExhausted);
        }
        let wait = retry::wait_for(&mut backoff, after);
        if !policy.forever && started.elapsed() + wait > policy.max_elapsed {
            tracing::warn!(
                exporter = %name, %signal, items, error = %failure,
                "dropping {items} {}: still failing after {:?} (retry.max_elapsed_time): {failure}",
                signal.item_name(),
                started.elapsed()
            );
            return Outcome::Dropped(DropReason::RetriesExhausted);
        }
        tracing::debug!(exporter = %name, %signal, items, error = %failure, ?wait, "export failed; retrying");
        inner.stats.sig(signal).retries.fetch_add(1, Relaxed);
        tokio::time::sleep(wait).await;
    }
}
