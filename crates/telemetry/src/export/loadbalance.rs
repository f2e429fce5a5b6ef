//! Trace-id load balancing: one exporter per backend, and every span of a trace sent to the same
//! backend (so tail-sampling collectors behind it see whole traces).
//!
//! The backend of a trace is chosen by rendezvous (highest-random-weight) hashing of the trace
//! id over the backends' URLs: the choice depends on the set of URLs, not their order, and adding
//! or removing one backend moves only the traces that go to (or went to) that backend. Each
//! backend is a full [`Exporter`] with its own queue, retries and metrics, named after its
//! address: exporter `<name>-<key>`, queue directory `<dir>/<name>-<key>`, where `<key>` is the
//! URL without its scheme, every character but letters, digits and `-` turned into `_`
//! (`http://10.0.0.7:4317` → `lb-10_0_0_7_4317`). A restart with the backends in another order,
//! or a backend that comes back at the same address, finds its queue again. A queue directory of
//! the former index naming (`<name>-<i>`) is renamed at start for a static `backends` list.
//!
//! Traces are decoded and split per backend, each span keeping its resource and scope. Log
//! records with a trace id follow their trace; log records without one, metrics and payloads that
//! cannot be decoded go to one backend per batch, round-robin.
//!
//! **Backends.** A static `backends` list, or a `resolver` (any discovery source). A control task
//! watches the resolved set; on a change it starts exporters for new addresses, publishes the new
//! set (an [`ArcSwap`]: `enqueue` never takes a lock), waits until no `enqueue` still routes over
//! the old set, and retires the backends that left: each keeps sending what it holds for
//! `drain_timeout`; what is still queued or unanswered then is taken back (requests in flight
//! are cut short) and re-routed through the current backends (counted in
//! `otlp_mesh_loadbalancer_rerouted_items_total`; a batch cut short may have reached the old
//! backend too, so it can arrive twice). If the current backends refuse it for another
//! `drain_timeout` (or the process stops), a memory queue drops the rest (counted in
//! `otlp_mesh_loadbalancer_dropped_items_total`) and a persistent queue keeps it on disk in the
//! backend's directory, sent when that address is a backend again.
//!
//! **Refusals.** A batch is split first, then queue space is reserved in every backend that gets
//! a part; only when all reservations succeed are the parts queued. So a batch is either queued
//! whole or refused whole with nothing queued (queue full, memory limit, no backend), and the
//! sender's retry never duplicates a part another backend already took. The one exception is a
//! persistent queue's write failing (disk error) after other parts were queued: the batch is
//! refused and those parts may be sent twice.

use super::{ExportError, Exporter, QueueFull, Reservation};
use crate::{Batch, MemoryLimiter, Priority, Signal};
use arc_swap::ArcSwap;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp_mesh_config::Located;
use otlp_mesh_config::telemetry::{
    BatchConfig, ExportProtocol, ExporterConfig, LoadBalancingConfig,
};
use otlp_mesh_discovery::{Endpoints, SourceStatus};
use prost::Message;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Wait between attempts to hand a retired backend's batches to the current ones.
const HANDOVER_RETRY: Duration = Duration::from_millis(50);
/// Longest wait for `enqueue` calls still routing over a replaced backend set.
const GRACE_LIMIT: Duration = Duration::from_secs(5);
/// A resolved backend that could not start (or is still retiring) is tried again after this.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// File in a backend's persistent queue directory holding the backend's URL.
const MARKER: &str = "lb-backend-url";

/// An exporter over several backends, routing by trace id. Cheap to clone.
#[derive(Clone)]
pub struct LoadBalancingExporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LoadBalancingExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBalancingExporter")
            .field("name", &self.inner.name)
            .field("backends", &self.inner.ring.load().urls)
            .finish()
    }
}

struct Inner {
    name: String,
    /// The current backends, replaced whole by the control task.
    ring: ArcSwap<Ring>,
    next: AtomicUsize,
    template: Template,
    /// Backends that left the set and are draining or handing over (control path only).
    retiring: Mutex<Vec<(String, Exporter)>>,
    rerouted: AtomicU64,
    dropped: AtomicU64,
    ring_changes: AtomicU64,
    resolver: Option<Arc<SourceStatus>>,
    stop: watch::Sender<bool>,
    control: Mutex<Option<JoinHandle<()>>>,
}

/// One set of backends, sorted by URL.
#[derive(Default)]
struct Ring {
    urls: Vec<String>,
    /// Per-backend hash of its URL, for rendezvous hashing.
    keys: Vec<u64>,
    /// Empty in unit tests that only route.
    exporters: Vec<Exporter>,
}

impl Ring {
    fn new(mut backends: Vec<(String, Exporter)>) -> Ring {
        backends.sort_by(|a, b| a.0.cmp(&b.0));
        let keys = backends.iter().map(|(u, _)| backend_key(u)).collect();
        let (urls, exporters) = backends.into_iter().unzip();
        Ring {
            urls,
            keys,
            exporters,
        }
    }
}

/// What every backend's exporter is started from.
struct Template {
    cfg: ExporterConfig,
    lb: LoadBalancingConfig,
    batch: BatchConfig,
    memory: Arc<MemoryLimiter>,
}

impl Template {
    async fn start(&self, lb_name: &str, url: &str) -> Result<Exporter, ExportError> {
        let ep = Some(Located::new(
            self.lb.endpoint(&Located::new(url.to_string())),
        ));
        let mut one = self.cfg.clone();
        one.loadbalancing = None;
        one.name = None;
        match self.lb.protocol {
            ExportProtocol::OtlpGrpc => one.otlp_grpc = ep,
            ExportProtocol::OtlpHttp => one.otlp_http = ep,
        }
        let name = backend_name(lb_name, url);
        let exporter =
            Exporter::start(name.clone(), &one, &self.batch, self.memory.clone()).await?;
        exporter.keep_batches_in_flight();
        if let Some(dir) = self.queue_dir() {
            // Marks the directory as this backend's, so that a later start can find it when
            // the backend is gone from the set and hand its records over.
            let (path, url) = (dir.join(&name).join(MARKER), url.to_string());
            let written = tokio::task::spawn_blocking(move || std::fs::write(&path, url)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(exporter = %name, error = %e, "cannot mark the persistent queue directory with its backend URL");
            }
        }
        Ok(exporter)
    }

    fn queue_dir(&self) -> Option<PathBuf> {
        self.cfg.queue.dir.as_ref().map(|d| PathBuf::from(&d.value))
    }

    fn drain(&self) -> Duration {
        self.lb.drain_timeout.value.0
    }
}

/// The exporter name (and queue directory) of backend `url`: `<lb>-<url without scheme, with
/// every character but letters, digits and `-` as `_`>`.
pub fn backend_name(lb: &str, url: &str) -> String {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .trim_end_matches('/');
    let key: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{lb}-{key}")
}

/// Renames queue directories of the former index naming (`<dir>/<name>-<i>`) to the address
/// naming, when the new one does not exist yet.
fn migrate_queue_dirs(dir: &Path, name: &str, urls: &[String]) {
    let names: HashSet<String> = urls.iter().map(|u| backend_name(name, u)).collect();
    for (i, url) in urls.iter().enumerate() {
        let old_name = format!("{name}-{i}");
        if names.contains(&old_name) {
            continue;
        }
        let (old, new) = (dir.join(&old_name), dir.join(backend_name(name, url)));
        if old.is_dir() && !new.exists() {
            match std::fs::rename(&old, &new) {
                Ok(()) => {
                    tracing::info!(exporter = name, from = %old.display(), to = %new.display(), "persistent queue directory renamed to the backend's address")
                }
                Err(e) => {
                    tracing::warn!(exporter = name, from = %old.display(), to = %new.display(), error = %e, "cannot rename a persistent queue directory; its records stay there")
                }
            }
        }
    }
}

impl LoadBalancingExporter {
    /// Starts the exporter of `cfg.loadbalancing`: one exporter per static backend, or a control
    /// task following the resolver (which starts with no backend: `enqueue` refuses with
    /// [`QueueFull::NoBackend`] until the first addresses arrive).
    pub async fn start(
        name: String,
        cfg: &ExporterConfig,
        batch: &BatchConfig,
        memory: Arc<MemoryLimiter>,
    ) -> Result<LoadBalancingExporter, ExportError> {
        let config_err = |reason: &str| ExportError::Config {
            name: name.clone(),
            reason: reason.into(),
        };
        let Some(lb) = &cfg.loadbalancing else {
            return Err(config_err("`loadbalancing` is not set"));
        };
        let template = Template {
            cfg: cfg.clone(),
            lb: lb.value.clone(),
            batch: batch.clone(),
            memory,
        };
        match (&lb.resolver, lb.backends.is_empty()) {
            (None, false) => {
                let urls: Vec<String> = lb
                    .backends
                    .iter()
                    .map(|u| u.value.trim_end_matches('/').to_string())
                    .collect();
                let names: HashSet<String> = urls.iter().map(|u| backend_name(&name, u)).collect();
                if names.len() != urls.len() {
                    return Err(config_err(
                        "two backends have the same address key (the URL without its scheme)",
                    ));
                }
                if let Some(dir) = &cfg.queue.dir {
                    let (dir, n, u) = (dir.value.clone(), name.clone(), urls.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        migrate_queue_dirs(Path::new(&dir), &n, &u)
                    })
                    .await;
                }
                let mut backends = Vec::with_capacity(urls.len());
                for url in urls {
                    match template.start(&name, &url).await {
                        Ok(e) => backends.push((url, e)),
                        Err(e) => {
                            // Stop the ones already started (their persistent queues keep their data).
                            for (_, b) in &backends {
                                b.shutdown(Duration::ZERO).await;
                            }
                            return Err(e);
                        }
                    }
                }
                let lb = Self::from_parts(name, template, Ring::new(backends), None);
                let task = tokio::spawn(control(lb.inner.clone(), None));
                *lock(&lb.inner.control) = Some(task);
                Ok(lb)
            }
            (Some(resolver), true) => {
                let discovered = otlp_mesh_discovery::spawn(&name, resolver);
                let lb = Self::from_parts(
                    name,
                    template,
                    Ring::default(),
                    Some(discovered.status.clone()),
                );
                let task = tokio::spawn(control(lb.inner.clone(), Some(discovered.updates)));
                *lock(&lb.inner.control) = Some(task);
                Ok(lb)
            }
            _ => Err(config_err("set exactly one of `backends` and `resolver`")),
        }
    }

    fn from_parts(
        name: String,
        template: Template,
        ring: Ring,
        resolver: Option<Arc<SourceStatus>>,
    ) -> Self {
        LoadBalancingExporter {
            inner: Arc::new(Inner {
                name,
                ring: ArcSwap::from_pointee(ring),
                next: AtomicUsize::new(0),
                template,
                retiring: Mutex::new(Vec::new()),
                rerouted: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                ring_changes: AtomicU64::new(0),
                resolver,
                stop: watch::Sender::new(false),
                control: Mutex::new(None),
            }),
        }
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current backends' exporters, in URL order.
    pub fn backends(&self) -> Vec<Exporter> {
        self.inner.ring.load().exporters.clone()
    }

    /// The current backend URLs, sorted.
    pub fn urls(&self) -> Vec<String> {
        self.inner.ring.load().urls.clone()
    }

    /// Exporters of backends that left the set and are still draining or handing over.
    pub fn retiring(&self) -> Vec<Exporter> {
        lock(&self.inner.retiring)
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Items taken back from retired backends and queued at current ones.
    pub fn rerouted_items(&self) -> u64 {
        self.inner.rerouted.load(Relaxed)
    }

    /// Items of retired backends' memory queues that no current backend took in time.
    pub fn dropped_items(&self) -> u64 {
        self.inner.dropped.load(Relaxed)
    }

    /// URL of the backend that gets trace `trace_id` now (none without backends).
    pub fn backend_for_trace(&self, trace_id: &[u8]) -> Option<String> {
        let ring = self.inner.ring.load();
        if ring.keys.is_empty() {
            return None;
        }
        ring.urls.get(rendezvous(&ring.keys, trace_id)).cloned()
    }

    /// True when a current backend is busy; see [`Exporter::busy`].
    pub fn busy(&self) -> bool {
        self.inner.ring.load().exporters.iter().any(Exporter::busy)
    }

    /// Waits (up to `max_wait` in all) until no current backend is busy; see [`Exporter::ready`].
    pub async fn ready(&self, max_wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max_wait;
        for b in self.backends() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !b.ready(left).await {
                return false;
            }
        }
        true
    }

    /// Queues `batch`, split by backend: every part or none. Refused (nothing queued) when a
    /// backend's queue or the memory limit refuses its part, or there is no backend; the sender
    /// then retries the whole batch without duplicating anything.
    pub async fn enqueue(&self, batch: Batch, priority: Priority) -> Result<(), QueueFull> {
        enqueue(&self.inner, batch, priority).await
    }

    /// Stops following the resolver, gives backends still retiring nothing more than what they
    /// already sent (memory queues drop the rest, counted; persistent ones keep it), then stops
    /// every current backend (see [`Exporter::shutdown`]).
    pub async fn shutdown(&self, deadline: Duration) {
        self.inner.stop.send_replace(true);
        let control = lock(&self.inner.control).take();
        if let Some(control) = control
            && let Err(e) = control.await
        {
            tracing::error!(exporter = %self.inner.name, error = %e, "load-balancing control task failed");
        }
        let ring = self.inner.ring.load_full();
        futures_util::future::join_all(ring.exporters.iter().map(|e| e.shutdown(deadline))).await;
    }

    /// Every backend exporter, current and retiring (for their metrics), each once.
    pub fn exporters(&self) -> Vec<Exporter> {
        let mut all = self.backends();
        // A backend being removed is briefly in both lists (see `apply`).
        for e in self.retiring() {
            if !all.iter().any(|a| a.name() == e.name()) {
                all.push(e);
            }
        }
        all
    }

    /// Appends the `otlp_mesh_loadbalancer_*` families of `lbs` to `out` (the backends' own
    /// families come with the other exporters').
    pub fn render_prometheus_all(lbs: &[LoadBalancingExporter], out: &mut String) {
        use crate::{write_family, write_sample};
        type Get = fn(&LoadBalancingExporter) -> u64;
        let families: [(&str, &str, &str, Get); 5] = [
            (
                "otlp_mesh_loadbalancer_backends",
                "gauge",
                "Backends a load-balancing exporter routes to now.",
                |lb| lb.inner.ring.load().urls.len() as u64,
            ),
            (
                "otlp_mesh_loadbalancer_retiring_backends",
                "gauge",
                "Backends that left the resolved set and still drain or hand over their queue.",
                |lb| lock(&lb.inner.retiring).len() as u64,
            ),
            (
                "otlp_mesh_loadbalancer_backend_set_changes_total",
                "counter",
                "Changes of the backend set applied.",
                |lb| lb.inner.ring_changes.load(Relaxed),
            ),
            (
                "otlp_mesh_loadbalancer_rerouted_items_total",
                "counter",
                "Items a retired backend still held, queued at the current backends.",
                |lb| lb.inner.rerouted.load(Relaxed),
            ),
            (
                "otlp_mesh_loadbalancer_dropped_items_total",
                "counter",
                "Items of a retired backend's memory queue that no current backend took within drain_timeout.",
                |lb| lb.inner.dropped.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in families {
            write_family(out, name, kind, help);
            for lb in lbs {
                write_sample(out, name, &[("exporter", lb.name())], get(lb));
            }
        }
        let name = "otlp_mesh_loadbalancer_resolver_healthy";
        write_family(
            out,
            name,
            "gauge",
            "1 while the resolver's last fetch succeeded (static backends: always 1).",
        );
        for lb in lbs {
            let (kind, healthy) = match &lb.inner.resolver {
                Some(s) => (s.kind(), s.healthy()),
                None => ("backends", true),
            };
            write_sample(
                out,
                name,
                &[("exporter", lb.name()), ("kind", kind)],
                u64::from(healthy),
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hot path: split over the current ring, reserve every part, then queue them.
async fn enqueue(inner: &Inner, batch: Batch, priority: Priority) -> Result<(), QueueFull> {
    // A set replaced while reserving retires its backends only after this call returns (see
    // `wait_unshared`); `ShuttingDown` then means the exporter itself stops. One more try covers
    // a grace period cut short.
    let mut tries = 2;
    loop {
        tries -= 1;
        let ring = inner.ring.load_full();
        if ring.exporters.is_empty() {
            return Err(QueueFull::NoBackend);
        }
        let parts = route(&ring.keys, &inner.next, &inner.name, batch.clone());
        let mut held: Vec<(Reservation, Batch)> = Vec::with_capacity(parts.len());
        let mut refused = None;
        for (i, part) in parts {
            let Some(e) = ring.exporters.get(i) else {
                continue;
            };
            match e.reserve(&part, priority) {
                Ok(r) => held.push((r, part)),
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        match refused {
            // Dropping `held` gives the other backends' space back: nothing was queued.
            Some(QueueFull::ShuttingDown)
                if tries > 0 && !Arc::ptr_eq(&ring, &inner.ring.load()) =>
            {
                continue;
            }
            Some(err) => return Err(err),
            None => {}
        }
        let mut result = Ok(());
        for (r, part) in held {
            if let Err(e) = r.commit(part).await {
                tracing::error!(exporter = %inner.name, error = %e, "a backend's persistent queue failed to write its part; the batch is refused and its other parts may be sent twice");
                result = Err(e);
            }
        }
        return result;
    }
}

/// Waits until only the caller holds `ring`: no `enqueue` still routes over it.
async fn wait_unshared(name: &str, ring: &Arc<Ring>) {
    let start = Instant::now();
    while Arc::strong_count(ring) > 1 {
        if start.elapsed() > GRACE_LIMIT {
            tracing::warn!(
                exporter = name,
                "enqueue calls still route over the replaced backend set; retiring its backends anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The control task: applies each resolved set (`updates`; none for a static list), retires
/// backends whose persistent queues are left from an earlier run, and on stop waits for
/// retirements to wrap up.
async fn control(inner: Arc<Inner>, mut updates: Option<watch::Receiver<Endpoints>>) {
    let mut stop = inner.stop.subscribe();
    let mut retirements: JoinSet<()> = JoinSet::new();
    let mut adopted = false;
    'apply: loop {
        if *stop.borrow_and_update() {
            break;
        }
        let mut incomplete = false;
        if let Some(u) = &mut updates {
            let set = u.borrow_and_update().clone();
            incomplete = apply(&inner, &set, &mut retirements).await;
        }
        // Once there are backends to hand to (for a resolver: its first set), queues of
        // backends from an earlier run that are not in the set are retired like removed ones.
        if !adopted && !inner.ring.load().urls.is_empty() {
            adopted = true;
            adopt_orphans(&inner, &mut retirements).await;
        }
        let retry_at = incomplete.then(|| Instant::now() + RESTART_DELAY);
        loop {
            tokio::select! {
                changed = async {
                    match &mut updates {
                        Some(u) => u.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        // A static source publishes once; keep its set.
                        updates = None;
                        continue;
                    }
                    continue 'apply;
                }
                _ = sleep_until_opt(retry_at) => continue 'apply,
                Some(_) = retirements.join_next(), if !retirements.is_empty() => {}
                _ = stop.changed() => break 'apply,
            }
        }
    }
    // Retirements see the stop themselves (they cut their drain short and give up handing over).
    while retirements.join_next().await.is_some() {}
}

/// Backend URLs of this exporter's persistent queue directories (`<dir>/<name>-<key>` holding
/// the URL in [`MARKER`]).
fn queue_dirs_of(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            if !file.starts_with(&prefix) {
                return None;
            }
            let url = std::fs::read_to_string(e.path().join(MARKER)).ok()?;
            let url = url.trim().to_string();
            (backend_name(name, &url) == file).then_some(url)
        })
        .collect()
}

/// Starts and retires the backends whose queue directories are left from an earlier run (a
/// backend gone from the set, or from the static list, while the process was down).
async fn adopt_orphans(inner: &Arc<Inner>, retirements: &mut JoinSet<()>) {
    let Some(dir) = inner.template.queue_dir() else {
        return;
    };
    let name = inner.name.clone();
    let urls = tokio::task::spawn_blocking(move || queue_dirs_of(&dir, &name))
        .await
        .unwrap_or_default();
    let current = inner.ring.load_full();
    for url in urls {
        let retiring = lock(&inner.retiring).iter().any(|(u, _)| *u == url);
        if current.urls.contains(&url) || retiring {
            continue;
        }
        match inner.template.start(&inner.name, &url).await {
            Ok(e) => {
                tracing::info!(exporter = %inner.name, backend = %url, "queue of a backend no longer in the set: retiring it");
                lock(&inner.retiring).push((url.clone(), e.clone()));
                retirements.spawn(retire(inner.clone(), url, e));
            }
            Err(e) => {
                tracing::warn!(exporter = %inner.name, backend = %url, error = %e, "cannot open the queue of a former backend; its records stay on disk");
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Makes `set` the backend set. Returns true when some address has no backend yet (it failed
/// to start, or its previous exporter is still retiring): apply again a little later.
async fn apply(inner: &Arc<Inner>, set: &Endpoints, retirements: &mut JoinSet<()>) -> bool {
    let lb = &inner.template.lb;
    let urls: BTreeSet<String> = set.iter().map(|(a, _)| lb.discovered_url(*a)).collect();
    let cur = inner.ring.load_full();
    let mut next: Vec<(String, Exporter)> = Vec::with_capacity(urls.len());
    let mut names = HashSet::new();
    let mut incomplete = false;
    let mut added = 0usize;
    for url in &urls {
        if let Some(i) = cur.urls.iter().position(|u| u == url)
            && let Some(e) = cur.exporters.get(i)
        {
            names.insert(e.name().to_string());
            next.push((url.clone(), e.clone()));
            continue;
        }
        // Back while its previous exporter still retires (and holds its queue directory): cut
        // that retirement short, and start this one when it is done.
        let old = lock(&inner.retiring)
            .iter()
            .find(|(u, _)| u == url)
            .map(|(_, e)| e.clone());
        if let Some(old) = old {
            old.hurry();
            incomplete = true;
            continue;
        }
        if !names.insert(backend_name(&inner.name, url)) {
            tracing::warn!(exporter = %inner.name, backend = %url, "skipping a backend whose address key another one has");
            continue;
        }
        match inner.template.start(&inner.name, url).await {
            Ok(e) => {
                added += 1;
                next.push((url.clone(), e));
            }
            Err(e) => {
                tracing::warn!(exporter = %inner.name, backend = %url, error = %e, "cannot start a backend; trying again in {RESTART_DELAY:?}");
                incomplete = true;
            }
        }
    }
    let removed: Vec<(String, Exporter)> = cur
        .urls
        .iter()
        .zip(&cur.exporters)
        .filter(|(u, _)| !urls.contains(*u))
        .map(|(u, e)| (u.clone(), e.clone()))
        .collect();
    if added == 0 && removed.is_empty() {
        return incomplete;
    }
    drop(cur);
    // A removed backend is listed as retiring in the same step that takes it out of the ring
    // (the swap happens under the `retiring` lock): it is never in neither list, so whoever
    // sees it gone from the set and `retiring` empty knows it has finished.
    let old = {
        let mut retiring = lock(&inner.retiring);
        retiring.extend(removed.iter().cloned());
        inner.ring.swap(Arc::new(Ring::new(next)))
    };
    inner.ring_changes.fetch_add(1, Relaxed);
    tracing::info!(exporter = %inner.name, backends = inner.ring.load().urls.len(), added, removed = removed.len(), "load-balancing backend set changed");
    wait_unshared(&inner.name, &old).await;
    drop(old);
    for (url, e) in removed {
        retirements.spawn(retire(inner.clone(), url, e));
    }
    incomplete
}

/// Retires backend `url`: it drains for `drain_timeout`, then what it still holds is handed to
/// the current backends.
async fn retire(inner: Arc<Inner>, url: String, exporter: Exporter) {
    let drain = inner.template.drain();
    let mut stop = inner.stop.subscribe();
    let left = {
        let retire = exporter.retire(drain);
        tokio::pin!(retire);
        tokio::select! {
            biased;
            left = &mut retire => left,
            _ = stopped(&mut stop) => {
                exporter.hurry();
                retire.await
            }
        }
    };
    let mut handed = 0u64;
    let mut refused_since: Option<Instant> = None;
    'chunks: loop {
        let entries = left.take().await;
        if entries.is_empty() {
            left.finish().await;
            break;
        }
        let mut done = Vec::with_capacity(entries.len());
        let mut rest = entries.into_iter();
        while let Some(e) = rest.next() {
            loop {
                let err = if *stop.borrow() {
                    None
                } else {
                    match enqueue(&inner, e.batch.clone(), Priority::Internal).await {
                        Ok(()) => {
                            refused_since = None;
                            handed += e.batch.items;
                            done.push(e);
                            break;
                        }
                        Err(err) => Some(err),
                    }
                };
                let since = *refused_since.get_or_insert_with(Instant::now);
                if err.is_some() && since.elapsed() < drain {
                    tokio::select! {
                        _ = tokio::time::sleep(HANDOVER_RETRY) => {}
                        _ = stopped(&mut stop) => {}
                    }
                    continue;
                }
                // Stopping, or the current backends refused for `drain_timeout`: give up.
                left.handed(done).await;
                let mut taken = vec![e];
                taken.extend(rest);
                let dropped = left.abandon(taken).await;
                inner.dropped.fetch_add(dropped, Relaxed);
                tracing::warn!(exporter = %inner.name, backend = %url, handed, dropped, reason = ?err, "retired backend: stopped handing its batches over (a persistent queue keeps the rest on disk)");
                break 'chunks;
            }
        }
        left.handed(done).await;
    }
    inner.rerouted.fetch_add(handed, Relaxed);
    if handed > 0 {
        tracing::info!(exporter = %inner.name, backend = %url, items = handed, "retired backend: re-routed what it still held");
    }
    lock(&inner.retiring).retain(|(u, _)| *u != url);
}

/// Splits `batch` into (backend index, part) pairs over the backends with hash `keys`.
fn route(keys: &[u64], next: &AtomicUsize, name: &str, batch: Batch) -> Vec<(usize, Batch)> {
    let n = keys.len();
    if n <= 1 {
        return vec![(0, batch)];
    }
    let split = Split { keys, next };
    match batch.signal {
        Signal::Traces => match ExportTraceServiceRequest::decode(&batch.payload[..]) {
            Ok(req) => split.split_traces(req),
            Err(e) => {
                tracing::debug!(exporter = %name, error = %e, "load balancing cannot decode a traces batch; sending it whole");
                vec![(split.round_robin(), batch)]
            }
        },
        Signal::Logs => match ExportLogsServiceRequest::decode(&batch.payload[..]) {
            Ok(req) => split.split_logs(req),
            Err(e) => {
                tracing::debug!(exporter = %name, error = %e, "load balancing cannot decode a logs batch; sending it whole");
                vec![(split.round_robin(), batch)]
            }
        },
        Signal::Metrics => vec![(split.round_robin(), batch)],
    }
}

struct Split<'a> {
    keys: &'a [u64],
    next: &'a AtomicUsize,
}

impl Split<'_> {
    fn round_robin(&self) -> usize {
        self.next.fetch_add(1, Relaxed) % self.keys.len().max(1)
    }

    fn split_traces(&self, req: ExportTraceServiceRequest) -> Vec<(usize, Batch)> {
        let (parts, items) = split_nested(req.resource_spans, self.keys.len(), |span: &Span| {
            rendezvous(self.keys, &span.trace_id)
        });
        encode_parts(Signal::Traces, parts, &items, |resource_spans| {
            ExportTraceServiceRequest { resource_spans }.encode_to_vec()
        })
    }

    fn split_logs(&self, req: ExportLogsServiceRequest) -> Vec<(usize, Batch)> {
        // Records outside a trace all go to one backend for this batch.
        let rr = self.round_robin();
        let (parts, items) = split_nested(req.resource_logs, self.keys.len(), |rec: &LogRecord| {
            if rec.trace_id.iter().all(|&x| x == 0) {
                rr
            } else {
                rendezvous(self.keys, &rec.trace_id)
            }
        });
        encode_parts(Signal::Logs, parts, &items, |resource_logs| {
            ExportLogsServiceRequest { resource_logs }.encode_to_vec()
        })
    }
}

/// One level of OTLP's resource ▸ scope ▸ item nesting.
trait Nested: Clone {
    type Child;
    /// Takes the children out, leaving an empty copy of this level (resource or scope intact).
    fn take_children(&mut self) -> Vec<Self::Child>;
    fn push_child(&mut self, child: Self::Child);
}

macro_rules! nested {
    ($t:ty, $field:ident, $child:ty) => {
        impl Nested for $t {
            type Child = $child;
            fn take_children(&mut self) -> Vec<$child> {
                std::mem::take(&mut self.$field)
            }
            fn push_child(&mut self, child: $child) {
                self.$field.push(child);
            }
        }
    };
}
nested!(ResourceSpans, scope_spans, ScopeSpans);
nested!(ScopeSpans, spans, Span);
nested!(ResourceLogs, scope_logs, ScopeLogs);
nested!(ScopeLogs, log_records, LogRecord);

/// Splits `level`'s children over `n` parts by `place`, each part under its own copy of `level`.
fn split_level<L: Nested>(
    mut level: L,
    n: usize,
    mut place: impl FnMut(L::Child, &mut dyn FnMut(usize, L::Child)),
) -> Vec<Option<L>> {
    let mut out: Vec<Option<L>> = vec![None; n];
    for child in level.take_children() {
        place(child, &mut |b, part| {
            out[b].get_or_insert_with(|| level.clone()).push_child(part)
        });
    }
    out
}

/// Splits resources ▸ scopes ▸ items over `n` backends by `backend(item)`, every item keeping
/// its resource and scope; returns the resources per backend and the items per backend.
fn split_nested<R, S>(
    resources: Vec<R>,
    n: usize,
    backend: impl Fn(&S::Child) -> usize,
) -> (Vec<Vec<R>>, Vec<u64>)
where
    R: Nested<Child = S>,
    S: Nested,
{
    let mut out: Vec<Vec<R>> = vec![Vec::new(); n];
    let mut items = vec![0u64; n];
    for resource in resources {
        let per = split_level(resource, n, |scope: S, emit| {
            let parts = split_level(scope, n, |item, emit_item| {
                let b = backend(&item);
                items[b] += 1;
                emit_item(b, item);
            });
            for (b, part) in parts.into_iter().enumerate() {
                if let Some(part) = part {
                    emit(b, part);
                }
            }
        });
        for (b, r) in per.into_iter().enumerate() {
            out[b].extend(r);
        }
    }
    (out, items)
}

/// Each non-empty part as a batch of `signal` (encoded by `encode`) with its item count.
fn encode_parts<R>(
    signal: Signal,
    parts: Vec<Vec<R>>,
    items: &[u64],
    encode: impl Fn(Vec<R>) -> Vec<u8>,
) -> Vec<(usize, Batch)> {
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(b, p)| (b, Batch::new(signal, Bytes::from(encode(p)), items[b])))
        .collect()
}

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer: a bijection with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A backend's hashing key: its URL without a trailing `/`.
fn backend_key(url: &str) -> u64 {
    mix(fnv1a(url.trim_end_matches('/').as_bytes()))
}

/// Rendezvous hashing: the backend whose key scores highest with `trace_id`.
fn rendezvous(keys: &[u64], trace_id: &[u8]) -> usize {
    let t = mix(fnv1a(trace_id));
    let mut best = (0usize, 0u64);
    for (i, k) in keys.iter().enumerate() {
        let score = mix(k ^ t);
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// Routing only: a ring without exporters, in the given order.
    struct Lb {
        ring: Ring,
        next: AtomicUsize,
    }

    impl Lb {
        fn urls(&self) -> &[String] {
            &self.ring.urls
        }
        fn backend_for_trace(&self, id: &[u8]) -> usize {
            rendezvous(&self.ring.keys, id)
        }
        fn route(&self, b: Batch) -> Vec<(usize, Batch)> {
            route(&self.ring.keys, &self.next, "lb", b)
        }
    }

    fn lb(urls: &[&str]) -> Lb {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        Lb {
            ring: Ring {
                keys: urls.iter().map(|u| backend_key(u)).collect(),
                urls,
                exporters: Vec::new(),
            },
            next: AtomicUsize::new(0),
        }
    }

    #[test]
    fn backend_names_are_the_address_with_safe_characters() {
        assert_eq!(
            backend_name("lb", "http://10.0.0.7:4317"),
            "lb-10_0_0_7_4317"
        );
        assert_eq!(
            backend_name("lb", "https://collector-a.example:4318/"),
            "lb-collector-a_example_4318"
        );
        assert_eq!(
            backend_name("lb", "http://[fd00::7]:4317"),
            "lb-_fd00__7__4317"
        );
    }

    #[test]
    fn index_named_queue_directories_are_renamed_to_addresses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lb-0")).unwrap();
        std::fs::write(dir.path().join("lb-0/ack"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("lb-1")).unwrap();
        std::fs::create_dir(dir.path().join("lb-b_4317")).unwrap();
        let urls = ["http://a:4317".to_string(), "http://b:4317".to_string()];
        migrate_queue_dirs(dir.path(), "lb", &urls);
        assert!(dir.path().join("lb-a_4317/ack").is_file());
        assert!(!dir.path().join("lb-0").exists());
        // The address directory exists already: the old one is left alone.
        assert!(dir.path().join("lb-1").is_dir());
    }

    fn lb_of(lb: &LoadBalancingExporter, id: &[u8]) -> String {
        lb.backend_for_trace(id).unwrap_or_default()
    }

    #[tokio::test]
    async fn no_backend_refuses_and_a_static_list_routes_by_url() {
        let cfg = otlp_mesh_config::parse_str(
            "telemetry:\n  exporters:\n    - name: lb\n      loadbalancing:\n        resolver: { file: { path: /nonexistent/backends.yaml, interval: 1h } }\n",
            "t.yaml",
        )
        .unwrap();
        let t = cfg.telemetry.unwrap().value;
        let memory = Arc::new(MemoryLimiter::new(1 << 20, 1 << 20));
        let lb = LoadBalancingExporter::start("lb".into(), &t.exporters[0], &t.batch, memory)
            .await
            .unwrap();
        let b = Batch::new(Signal::Metrics, Bytes::from_static(b"m"), 1);
        assert_eq!(
            lb.enqueue(b, Priority::Receiver).await,
            Err(QueueFull::NoBackend)
        );
        assert_eq!(lb.backend_for_trace(&trace_id(1)), None);
        let mut prom = String::new();
        LoadBalancingExporter::render_prometheus_all(std::slice::from_ref(&lb), &mut prom);
        assert!(
            prom.contains("otlp_mesh_loadbalancer_backends{exporter=\"lb\"} 0"),
            "{prom}"
        );
        assert!(
            prom.contains(
                "otlp_mesh_loadbalancer_resolver_healthy{exporter=\"lb\",kind=\"file\"} 0"
            ),
            "{prom}"
        );
        lb.shutdown(Duration::ZERO).await;

        let cfg = otlp_mesh_config::parse_str(
            "telemetry:\n  exporters:\n    - name: lb\n      loadbalancing:\n        backends: [ http://b:4317/, http://a:4317 ]\n",
            "t.yaml",
        )
        .unwrap();
        let t = cfg.telemetry.unwrap().value;
        let memory = Arc::new(MemoryLimiter::new(1 << 20, 1 << 20));
        let lb = LoadBalancingExporter::start("lb".into(), &t.exporters[0], &t.batch, memory)
            .await
            .unwrap();
        assert_eq!(lb.urls(), ["http://a:4317", "http://b:4317"]);
        let names: Vec<String> = lb.backends().iter().map(|e| e.name().to_string()).collect();
        assert_eq!(names, ["lb-a_4317", "lb-b_4317"]);
        let ab = self::lb(&["http://a:4317", "http://b:4317"]);
        for i in 0..50 {
            let id = trace_id(i);
            assert_eq!(lb_of(&lb, &id), ab.urls()[ab.backend_for_trace(&id)]);
        }
        lb.shutdown(Duration::ZERO).await;
    }

    fn trace_id(i: u64) -> Vec<u8> {
        [mix(i).to_be_bytes(), mix(i + 1_000_000).to_be_bytes()].concat()
    }

    fn url_for(lb: &Lb, id: &[u8]) -> String {
        lb.urls()[lb.backend_for_trace(id)].clone()
    }

    #[test]
    fn order_does_not_matter_and_removing_a_backend_moves_only_its_traces() {
        let abc = lb(&["http://a:4317", "http://b:4317", "http://c:4317"]);
        let cba = lb(&["http://c:4317", "http://b:4317/", "http://a:4317"]);
        let ab = lb(&["http://a:4317", "http://b:4317"]);
        let mut counts = [0u32; 3];
        for i in 0..3000 {
            let id = trace_id(i);
            let u = url_for(&abc, &id);
            assert_eq!(
                u.trim_end_matches('/'),
                url_for(&cba, &id).trim_end_matches('/')
            );
            counts[abc.backend_for_trace(&id)] += 1;
            if u != "http://c:4317" {
                assert_eq!(
                    url_for(&ab, &id),
                    u,
                    "trace {i} moved although its backend stayed"
                );
            }
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn traces_and_their_logs_go_to_the_same_backend_with_resource_and_scope() {
        let lb = lb(&["http://a:4317", "http://b:4317", "http://c:4317"]);
        let spans: Vec<Span> = (0..60)
            .map(|i| Span {
                trace_id: trace_id(i / 3),
                span_id: (i + 1).to_be_bytes().to_vec(),
                ..Default::default()
            })
            .collect();
        let resource = Some(opentelemetry_proto::tonic::resource::v1::Resource {
            dropped_attributes_count: 7,
            ..Default::default()
        });
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource.clone(),
                scope_spans: vec![ScopeSpans {
                    spans,
                    schema_url: "scope".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = lb.route(Batch::new(
            Signal::Traces,
            Bytes::from(req.encode_to_vec()),
            60,
        ));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(|(_, b)| b.items).sum::<u64>(), 60);
        for (b, part) in &parts {
            let req = ExportTraceServiceRequest::decode(&part.payload[..]).unwrap();
            assert_eq!(req.resource_spans[0].resource, resource);
            assert_eq!(req.resource_spans[0].scope_spans[0].schema_url, "scope");
            for s in &req.resource_spans[0].scope_spans[0].spans {
                assert_eq!(lb.backend_for_trace(&s.trace_id), *b);
            }
        }

        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..20)
                        .map(|i| LogRecord {
                            trace_id: if i < 10 { trace_id(i) } else { Vec::new() },
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = lb.route(Batch::new(
            Signal::Logs,
            Bytes::from(logs.encode_to_vec()),
            20,
        ));
        assert_eq!(parts.iter().map(|(_, b)| b.items).sum::<u64>(), 20);
        let mut without_trace = Vec::new();
        for (b, part) in &parts {
            let req = ExportLogsServiceRequest::decode(&part.payload[..]).unwrap();
            for r in &req.resource_logs[0].scope_logs[0].log_records {
                if r.trace_id.is_empty() {
                    without_trace.push(*b);
                } else {
                    assert_eq!(lb.backend_for_trace(&r.trace_id), *b);
                }
            }
        }
        assert_eq!(without_trace.len(), 10);
        assert!(without_trace.iter().all(|b| *b == without_trace[0]));

        // Metrics go round-robin, whole.
        let m = Batch::new(Signal::Metrics, Bytes::from_static(b"m"), 1);
        let firsts: Vec<usize> = (0..3).map(|_| lb.route(m.clone())[0].0).collect();
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "{firsts:?}");
    }
}
