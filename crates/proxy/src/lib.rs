//! The otlp-mesh data path: listeners, router, clusters with connection pools, and the
//! per-route tower stack. [`Proxy`] owns the running listeners and applies config snapshots.
//!
//! Requests read the current snapshot through `arc-swap` (no lock); a reload builds a new
//! snapshot off the data path, binds new listeners, swaps state into kept ones and drains
//! removed ones, so requests in flight finish on the config they started with.

pub mod body;
pub mod cluster;
pub mod error;
mod head_timer;
pub mod headers;
pub mod listener;
pub mod metrics;
pub mod pool;
mod read_buf;
pub mod router;
pub mod service;
pub mod trace;

use arc_swap::ArcSwapOption;
use cluster::Cluster;
use listener::ListenerHandle;
use otlp_mesh_chaos::FaultRegistry;
use otlp_mesh_config::LoadedConfig;
use otlp_mesh_telemetry::Registry;
use service::ListenerState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// The effective configuration and the objects built from it.
#[derive(Debug)]
pub struct Snapshot {
    pub loaded: Arc<LoadedConfig>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Listener name → bound address.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Listener name → its live per-request state (routes, retry and rate-limit layers).
    pub states: BTreeMap<String, Arc<arc_swap::ArcSwap<ListenerState>>>,
}

/// Runs listeners for the current config and swaps in new configs.
#[derive(Debug)]
pub struct Proxy {
    registry: Arc<Registry>,
    snapshot: ArcSwapOption<Snapshot>,
    listeners: Mutex<BTreeMap<String, ListenerHandle>>,
    draining: AtomicBool,
    faults: FaultRegistry,
    recorder: std::sync::OnceLock<Arc<otlp_mesh_telemetry::recorder::Recorder>>,
}

impl Proxy {
    pub fn new(registry: Arc<Registry>) -> Arc<Self> {
        Arc::new(Proxy {
            registry,
            snapshot: ArcSwapOption::empty(),
            listeners: Mutex::new(BTreeMap::new()),
            draining: AtomicBool::new(false),
            faults: FaultRegistry::new(),
            recorder: std::sync::OnceLock::new(),
        })
    }

    /// Sets where the proxy's own spans and access logs go; call once, before the first `apply`.
    pub fn set_recorder(&self, recorder: Arc<otlp_mesh_telemetry::recorder::Recorder>) {
        let _ = self.recorder.set(recorder);
    }

    /// The snapshot in force, once one has been applied.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// True once a config is applied and every cluster's discovery has answered once (with
    /// endpoints or an error: a source that is down at start degrades the cluster, not the
    /// process), and until draining starts.
    pub fn is_ready(&self) -> bool {
        let snapshot = self.snapshot.load();
        let Some(snap) = snapshot.as_ref() else {
            return false;
        };
        let discovered = snap.clusters.values().all(|c| {
            let d = c.discovery();
            d.kind() == "static" || d.refreshes() + d.failures() > 0
        });
        discovered && !self.draining.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Applies a validated config: builds clusters and routes, binds new listeners, updates kept
    /// ones and drains removed ones. On error nothing changes and the old config keeps serving.
    pub async fn apply(&self, loaded: Arc<LoadedConfig>) -> Result<(), Vec<String>> {
        let mut listeners = self.listeners.lock().await;
        if self.is_draining() {
            return Err(vec!["shutting down".into()]);
        }
        let cfg = &loaded.config;
        let previous = self.snapshot.load_full();
        let old_clusters = previous.as_ref().map(|s| &s.clusters);

        // Reuse unchanged clusters so their pools and endpoint stats survive the reload.
        let mut clusters = BTreeMap::new();
        for c in &cfg.clusters {
            let name = c.name.value.clone();
            let reused = old_clusters
                .and_then(|old| old.get(&name))
                .filter(|old| old.config == c.value)
                .cloned();
            let cluster =
                reused.unwrap_or_else(|| Arc::new(Cluster::new(c, self.registry.cluster(&name))));
            clusters.insert(name, cluster);
        }

        let mut errors = Vec::new();
        let mut states = Vec::new();
        for l in &cfg.listeners {
            match ListenerState::build(
                l,
                &clusters,
                &self.registry,
                &self.faults,
                self.recorder.get().cloned(),
            ) {
                Ok(s) => states.push(s),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Bind new listeners (or moved ones) first, so a port in use aborts before anything changes.
        let mut bound = Vec::new();
        let mut kept = Vec::new();
        for state in states {
            let same = listeners
                .get(&state.name)
                .is_some_and(|h| h.state.load().config.bind == state.config.bind);
            if same {
                kept.push(state);
            } else {
                match ListenerHandle::bind(state).await {
                    Ok(h) => bound.push(h),
                    Err(e) => errors.push(e),
                }
            }
        }
        if !errors.is_empty() {
            let drain = cfg.runtime.drain_timeout.into();
            for h in bound {
                h.stop(drain).await;
            }
            return Err(errors);
        }

        // Validated with the rest of the file, so this only fails on a bug; keep serving if it does.
        if let Err(errs) = self.faults.load_config(cfg.fault_rules()) {
            for e in errs {
                tracing::error!(field = %e.field, "fault rule not loaded: {}", e.message);
            }
        }
        let drain: Duration = cfg.runtime.drain_timeout.into();
        for state in kept {
            if let Some(h) = listeners.get(&state.name) {
                h.state.store(Arc::new(state));
            }
        }
        let wanted: std::collections::HashSet<&str> = cfg
            .listeners
            .iter()
            .map(|l| l.name.value.as_str())
            .collect();
        let mut retired = Vec::new();
        for h in bound {
            if let Some(old) = listeners.insert(h.name.clone(), h) {
                retired.push(old);
            }
        }
        let removed: Vec<String> = listeners
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(h) = listeners.remove(&name) {
                retired.push(h);
            }
        }
        for h in retired {
            tracing::info!(listener = %h.name, "listener removed; draining");
            tokio::spawn(h.stop(drain));
        }

        let addrs = listeners.iter().map(|(n, h)| (n.clone(), h.addr)).collect();
        let states = listeners
            .iter()
            .map(|(n, h)| (n.clone(), h.state.clone()))
            .collect();
        self.snapshot.store(Some(Arc::new(Snapshot {
            loaded,
            clusters,
            listeners: addrs,
            states,
        })));
        Ok(())
    }

    /// Stops accepting on every listener and waits up to `drain` for in-flight requests.
    pub async fn shutdown(&self, drain: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        let handles: Vec<ListenerHandle> = {
            let mut listeners = self.listeners.lock().await;
            std::mem::take(&mut *listeners).into_values().collect()
        };
        let stops = handles.into_iter().map(|h| h.stop(drain));
        futures_util::future::join_all(stops).await;
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Fault-injection rules (from the config file and the admin API) and their statistics.
    pub fn faults(&self) -> &FaultRegistry {
        &self.faults
    }
}
