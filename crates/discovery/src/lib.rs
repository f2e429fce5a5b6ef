//! Endpoint discovery for clusters.
//!
//! A source turns a cluster's `discovery` config into endpoint sets. [`Source`] gives the static
//! list synchronously; [`spawn`] starts any source (static, DNS, file, etcd, Consul, Kubernetes)
//! and hands back a `watch` receiver of endpoint sets plus a shared [`SourceStatus`].
//!
//! Rules every dynamic source follows: a failure never publishes an empty set (the last known set
//! stays), the source is marked failing with the error, and it retries with capped exponential
//! backoff. The background task ends when every receiver of [`Discovered::updates`] is dropped.

mod consul;
mod dns;
mod etcd;
mod file;
mod http;
mod kubernetes;

pub use dns::{clamp_ttl, srv_to_endpoints};
pub use file::parse_endpoints_file;
pub use http::error_chain;

use otlp_mesh_config::Discovery;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// An endpoint set: addresses with weights (at least 1), sorted by address, no duplicates.
pub type Endpoints = Arc<Vec<(SocketAddr, u32)>>;

/// A configured discovery source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fixed list of addresses (with weights) from the config file.
    Static(Vec<(SocketAddr, u32)>),
    /// A source whose endpoints arrive at run time through [`spawn`]; `current()` is empty.
    Dynamic(&'static str),
}

impl Source {
    /// The source a cluster's config describes. Addresses were checked by config validation;
    /// any that still fail to parse are skipped with a log line rather than failing the cluster.
    pub fn from_config(cluster: &str, discovery: &Discovery) -> Source {
        let kind = kind_of(discovery);
        if kind != "static" {
            return Source::Dynamic(kind);
        }
        Source::Static(static_endpoints(cluster, discovery))
    }

    /// Source kind shown in `/clusters`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Static(_) => "static",
            Source::Dynamic(kind) => kind,
        }
    }

    /// The endpoints known now, with their weights (empty for dynamic sources).
    pub fn current(&self) -> Vec<(SocketAddr, u32)> {
        match self {
            Source::Static(addrs) => addrs.clone(),
            Source::Dynamic(_) => Vec::new(),
        }
    }
}

/// The kind of source a `discovery` block configures (`static` when none is set).
pub fn kind_of(d: &Discovery) -> &'static str {
    if d.dns.is_some() {
        "dns"
    } else if d.file.is_some() {
        "file"
    } else if d.etcd.is_some() {
        "etcd"
    } else if d.consul.is_some() {
        "consul"
    } else if d.kubernetes.is_some() {
        "kubernetes"
    } else {
        "static"
    }
}

fn static_endpoints(cluster: &str, discovery: &Discovery) -> Vec<(SocketAddr, u32)> {
    let list = discovery.static_endpoints.as_deref().unwrap_or_default();
    list.iter()
        .filter_map(|s| match s.address.parse() {
            Ok(a) => Some((a, s.weight.max(1))),
            Err(_) => {
                tracing::warn!(cluster, endpoint = %s.address, "skipping invalid static endpoint");
                None
            }
        })
        .collect()
}

/// Health and counters of one running source, shared with `/clusters` and `/metrics`.
#[derive(Debug)]
pub struct SourceStatus {
    kind: &'static str,
    healthy: AtomicBool,
    updates: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    endpoints: AtomicU64,
    last_update_unix_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SourceStatus {
    /// A fresh status: not healthy until the first successful fetch.
    pub fn new(kind: &'static str) -> SourceStatus {
        SourceStatus {
            kind,
            healthy: AtomicBool::new(false),
            updates: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            endpoints: AtomicU64::new(0),
            last_update_unix_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
    /// Source kind: `static`, `dns`, `file`, `etcd`, `consul` or `kubernetes`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    /// True after a successful fetch and until the next failure.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    /// Endpoint sets published (only changes count).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }
    /// Successful fetches, changed or not.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
    /// Failed fetches, watch breaks and rejected data.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Size of the last published set.
    pub fn endpoints(&self) -> u64 {
        self.endpoints.load(Ordering::Relaxed)
    }
    /// Unix time (ms) of the last successful fetch, 0 if none yet.
    pub fn last_update_unix_ms(&self) -> u64 {
        self.last_update_unix_ms.load(Ordering::Relaxed)
    }
    /// The most recent error while failing (cleared by a success).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// A point-in-time copy for `/clusters` (serializes to JSON).
    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            kind: self.kind,
            healthy: self.healthy(),
            endpoints: self.endpoints(),
            updates: self.updates(),
            refreshes: self.refreshes(),
            failures: self.failures(),
            last_update_unix_ms: self.last_update_unix_ms(),
            last_error: self.last_error(),
        }
    }

    fn ok(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_update_unix_ms.store(ms, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    fn fail(&self, err: &str) {
        self.healthy.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err.to_string());
        }
    }
}

/// A copy of a [`SourceStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusSnapshot {
    /// Source kind.
    pub kind: &'static str,
    /// Last fetch succeeded.
    pub healthy: bool,
    /// Size of the published set.
    pub endpoints: u64,
    /// Sets published.
    pub updates: u64,
    /// Successful fetches.
    pub refreshes: u64,
    /// Failed fetches or broken watches.
    pub failures: u64,
    /// Unix time (ms) of the last successful fetch, 0 if none.
    pub last_update_unix_ms: u64,
    /// Why it is failing, while it is.
    pub last_error: Option<String>,
}

/// A running (or static) source: endpoint-set updates and its status.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The current set; `changed()` fires on each new set. Dropping every clone stops the task.
    pub updates: watch::Receiver<Endpoints>,
    /// Health and counters for `/clusters` and `/metrics`.
    pub status: Arc<SourceStatus>,
}

/// Starts the source a cluster's `discovery` config describes. Static sources publish their list
/// once and start no task; every other kind starts a tokio task (call inside a runtime) that
/// begins with an empty set and publishes each change.
pub fn spawn(cluster: &str, cfg: &Discovery) -> Discovered {
    let kind = kind_of(cfg);
    let status = Arc::new(SourceStatus::new(kind));
    if kind == "static" {
        let list = normalize(static_endpoints(cluster, cfg));
        status.endpoints.store(list.len() as u64, Ordering::Relaxed);
        status.ok();
        let (_tx, rx) = watch::channel(Arc::new(list));
        return Discovered {
            updates: rx,
            status,
        };
    }
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let publisher = Publisher {
        cluster: cluster.to_string(),
        tx,
        status: status.clone(),
    };
    let cfg = cfg.clone();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        publisher.fail("discovery started outside a tokio runtime; no updates will arrive");
        return Discovered {
            updates: rx,
            status,
        };
    };
    rt.spawn(async move {
        let tx = publisher.tx.clone();
        tokio::select! {
            _ = tx.closed() => {}
            _ = run(publisher, cfg) => {}
        }
    });
    Discovered {
        updates: rx,
        status,
    }
}

async fn run(p: Publisher, cfg: Discovery) {
    if let Some(c) = cfg.dns {
        dns::run(p, c.value).await
    } else if let Some(c) = cfg.file {
        file::run(p, c.value).await
    } else if let Some(c) = cfg.etcd {
        etcd::run(p, c.value).await
    } else if let Some(c) = cfg.consul {
        consul::run(p, c.value).await
    } else if let Some(c) = cfg.kubernetes {
        kubernetes::run(p, c.value).await
    }
}

/// Sorts by address and merges duplicates (keeping the largest weight); weights become at least 1.
fn normalize(mut list: Vec<(SocketAddr, u32)>) -> Vec<(SocketAddr, u32)> {
    list.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    list.dedup_by_key(|e| e.0);
    for e in &mut list {
        e.1 = e.1.max(1);
    }
    list
}

/// The publishing side a source task writes to.
struct Publisher {
    cluster: String,
    tx: watch::Sender<Endpoints>,
    status: Arc<SourceStatus>,
}

impl Publisher {
    /// Records a successful fetch and publishes `list` if it differs from the current set.
    fn publish(&self, list: Vec<(SocketAddr, u32)>) {
        let list = normalize(list);
        let was_failing = !self.status.healthy();
        self.status.ok();
        if was_failing {
            tracing::info!(cluster = %self.cluster, kind = self.status.kind, "discovery source healthy");
        }
        let n = list.len();
        let changed = self.tx.send_if_modified(|cur| {
            if **cur == list {
                false
            } else {
                *cur = Arc::new(list);
                true
            }
        });
        if changed {
            self.status.updates.fetch_add(1, Ordering::Relaxed);
            self.status.endpoints.store(n as u64, Ordering::Relaxed);
            tracing::info!(cluster = %self.cluster, kind = self.status.kind, endpoints = n, "discovery update");
        }
    }

    /// Records a failure; the published set is left as it is.
    fn fail(&self, err: &str) {
        self.status.fail(err);
        tracing::warn!(cluster = %self.cluster, kind = self.status.kind, error = err, "discovery source failing; keeping last known endpoints");
    }
}

/// Capped exponential backoff with jitter (each delay is drawn from [d/2, d]).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Backoff starting at `base`, doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            next: base,
        }
    }
    /// The delay before the next retry; doubles the following one (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
}

/// Retry state of a list + watch source: whenever a session ends (with why), [`Retry::failed`]
/// marks the source failing (the set stays) and waits the next backoff delay. A session calls
/// `backoff.reset()` once it has fetched successfully.
struct Retry {
    backoff: Backoff,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            backoff: default_backoff(),
        }
    }

    async fn failed(&mut self, p: &Publisher, err: &str) {
        p.fail(err);
        tokio::time::sleep(self.backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> otlp_mesh_config::Config {
        otlp_mesh_config::parse_str(yaml, "t.yaml").unwrap()
    }

    #[test]
    fn static_source_lists_configured_addresses_and_weights() {
        let cfg = parse(
            "clusters:\n  - name: a\n    discovery: { static: [127.0.0.1:1, { address: '[::1]:2', weight: 3 }] }\n",
        );
        let src = Source::from_config("a", &cfg.clusters[0].discovery);
        assert_eq!(src.kind(), "static");
        assert_eq!(
            src.current(),
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1),
                ("[::1]:2".parse().unwrap(), 3)
            ]
        );
    }

    #[tokio::test]
    async fn static_spawn_publishes_once_without_a_task() {
        let cfg = parse(
            "clusters:\n  - name: a\n    discovery: { static: [127.0.0.1:2, 127.0.0.1:1] }\n",
        );
        let d = spawn("a", &cfg.clusters[0].discovery);
        assert_eq!(d.status.kind(), "static");
        assert!(d.status.healthy());
        assert_eq!(
            **d.updates.borrow(),
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1),
                ("127.0.0.1:2".parse().unwrap(), 1)
            ]
        );
    }

    #[tokio::test]
    async fn task_stops_when_every_receiver_is_dropped() {
        let cfg = parse(
            "clusters:\n  - name: a\n    discovery:\n      file: { path: /nonexistent/eps.yaml, interval: 10ms }\n",
        );
        let d = spawn("a", &cfg.clusters[0].discovery);
        let status = d.status.clone();
        let second = d.updates.clone();
        drop(d);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            Arc::strong_count(&status) > 1,
            "task still running while a receiver lives"
        );
        assert!(status.failures() > 0 && !status.healthy());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&status) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }

    #[test]
    fn spawn_outside_a_runtime_fails_softly() {
        let cfg = parse("clusters:\n  - name: a\n    discovery:\n      file: { path: eps.yaml }\n");
        let d = spawn("a", &cfg.clusters[0].discovery);
        assert!(!d.status.healthy());
        assert!(d.status.last_error().is_some());
        assert!(d.updates.borrow().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_retry_with_capped_exponential_backoff_and_reset() {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let status = Arc::new(SourceStatus::new("etcd"));
        let p = Publisher {
            cluster: "c".into(),
            tx,
            status: status.clone(),
        };
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut retry = Retry::new();
        // The same loop the etcd and Kubernetes sources run, with a session that always fails
        // (succeeding once, on the 12th attempt, before failing again).
        while start.elapsed() < Duration::from_secs(600) {
            times.push(start.elapsed());
            if times.len() == 12 {
                p.publish(vec![(a, 1)]);
                retry.backoff.reset();
            }
            retry.failed(&p, "connection refused").await;
        }
        // Gaps: [d/2, d] with d = 200ms doubling to the 30s cap; after the success, 200ms again.
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mut d = Duration::from_millis(200);
        for (i, gap) in gaps.iter().enumerate().take(14) {
            if i == 11 {
                d = Duration::from_millis(200);
            }
            assert!(
                *gap >= d / 2 && *gap <= d,
                "gap {i} = {gap:?}, expected within [{:?}, {d:?}]",
                d / 2
            );
            d = (d * 2).min(Duration::from_secs(30));
        }
        assert!(gaps.iter().all(|g| *g <= Duration::from_secs(30)));
        assert!(!status.healthy());
        assert_eq!(status.last_error().as_deref(), Some("connection refused"));
        assert_eq!(
            **rx.borrow(),
            vec![(a, 1)],
            "a failure never clears the set"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let bounds = [100, 200, 400, 700, 700];
        for max in bounds {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(max / 2) && d <= Duration::from_millis(max),
                "{d:?} vs {max}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn publisher_skips_unchanged_sets_and_keeps_the_set_on_failure() {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let status = Arc::new(SourceStatus::new("file"));
        let p = Publisher {
            cluster: "c".into(),
            tx,
            status: status.clone(),
        };
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        p.publish(vec![(a, 0), (a, 2)]);
        p.publish(vec![(a, 2)]);
        assert_eq!(status.updates(), 1);
        assert_eq!(status.refreshes(), 2);
        p.fail("boom");
        assert!(!status.healthy());
        let snap = status.snapshot();
        assert_eq!((snap.kind, snap.endpoints, snap.failures), ("file", 1, 1));
        assert!(snap.last_update_unix_ms > 0);
        assert_eq!(status.last_error().as_deref(), Some("boom"));
        assert_eq!(**rx.borrow(), vec![(a, 2)]);
    }

    fn errors(yaml: &str) -> String {
        let errs = otlp_mesh_config::parse_str(yaml, "t.yaml").unwrap_err();
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn validation_requires_exactly_one_source_with_paths_and_lines() {
        let err = errors(
            "clusters:\n  - name: a\n    discovery:\n      static: [127.0.0.1:1]\n      dns: { name: localhost:80 }\n",
        );
        assert!(err.contains("exactly one discovery source"), "{err}");
        assert!(err.contains("clusters[0].discovery"), "{err}");
        let err = errors(
            "clusters:\n  - name: a\n    discovery:\n      etcd: { endpoints: [ 'ftp://x' ], prefix: '' }\n",
        );
        assert!(err.contains("discovery.etcd.endpoints[0]"), "{err}");
        assert!(err.contains("discovery.etcd.prefix"), "{err}");
        assert!(err.contains(":4"), "line number expected: {err}");
        let err =
            errors("clusters:\n  - name: a\n    discovery:\n      dns: { name: nohostport }\n");
        assert!(err.contains("discovery.dns.name"), "{err}");
        let err = errors("clusters:\n  - name: a\n    discovery: {}\n");
        assert!(err.contains("no discovery source"), "{err}");
    }

    #[test]
    fn dynamic_sources_parse_with_defaults() {
        let cfg = parse(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: { service: orders, port: 8080 }\n  - name: b\n    discovery:\n      consul: { service: orders, tag: v1, token: s3cret }\n",
        );
        let k = cfg.clusters[0].discovery.kubernetes.as_ref().unwrap();
        assert_eq!(k.namespace, "default");
        assert_eq!(k.port, Some(otlp_mesh_config::PortRef::Number(8080)));
        let c = cfg.clusters[1].discovery.consul.as_ref().unwrap();
        assert!(c.passing);
        assert_eq!(
            Source::from_config("b", &cfg.clusters[1].discovery).kind(),
            "consul"
        );
    }
}
