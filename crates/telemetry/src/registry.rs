use crate::{DURATION_BUCKETS_SECONDS, Histogram, PromWriter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Status classes counted per route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> Self {
        match status {
            0..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
    fn label(i: usize) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx"][i]
    }
}

/// Request counters and latency for one (listener, route, cluster) series.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    listener: String,
    route: String,
    cluster: String,
    by_class: [AtomicU64; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Records one finished request (status and time until the response head).
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.by_class[StatusClass::of(status) as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.record(elapsed);
    }

    pub fn count(&self, class: StatusClass) -> u64 {
        self.by_class[class as usize].load(Ordering::Relaxed)
    }

    /// The listener, route and cluster this series is for.
    pub fn labels(&self) -> (&str, &str, &str) {
        (&self.listener, &self.route, &self.cluster)
    }

    /// The latency histogram.
    pub fn duration(&self) -> &Histogram {
        &self.duration
    }

    pub fn total(&self) -> u64 {
        self.by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Connection gauges for one listener.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub active_connections: AtomicI64,
    pub connections_total: AtomicU64,
}

/// Upstream outcome counters and the in-flight gauge for one cluster.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub requests_total: AtomicU64,
    pub active_requests: AtomicI64,
    pub connect_errors_total: AtomicU64,
    pub timeouts_total: AtomicU64,
    pub no_endpoint_total: AtomicU64,
    /// Picks made in panic mode (no healthy endpoint: balanced over all).
    pub panic_picks_total: AtomicU64,
}

/// All metric series of the process; series are shared across config reloads by their labels.
#[derive(Debug, Default)]
pub struct Registry {
    routes: Mutex<BTreeMap<(String, String, String), Arc<RouteMetrics>>>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerMetrics>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterMetrics>>>,
}

fn get_or_insert<K: Ord + Clone, V: Default>(
    map: &Mutex<BTreeMap<K, Arc<V>>>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(key).or_insert_with(|| Arc::new(make())).clone()
}

impl Registry {
    /// Every request series, in label order.
    pub fn route_series(&self) -> Vec<Arc<RouteMetrics>> {
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    /// The series for a route and cluster; empty `route`/`cluster` count requests that matched none.
    pub fn route(&self, listener: &str, route: &str, cluster: &str) -> Arc<RouteMetrics> {
        let key = (listener.to_string(), route.to_string(), cluster.to_string());
        get_or_insert(&self.routes, key, || RouteMetrics {
            listener: listener.to_string(),
            route: route.to_string(),
            cluster: cluster.to_string(),
            ..RouteMetrics::default()
        })
    }

    pub fn listener(&self, name: &str) -> Arc<ListenerMetrics> {
        get_or_insert(&self.listeners, name.to_string(), ListenerMetrics::default)
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterMetrics> {
        get_or_insert(&self.clusters, name.to_string(), ClusterMetrics::default)
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self, w: &mut PromWriter) {
        let routes: Vec<Arc<RouteMetrics>> = lock(&self.routes).values().cloned().collect();
        w.family(
            "otlp_mesh_requests_total",
            "counter",
            "Requests handled, by listener, route, cluster and status class.",
        );
        for r in &routes {
            for (i, c) in r.by_class.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let labels = [
                        ("listener", r.listener.as_str()),
                        ("route", r.route.as_str()),
                        ("cluster", r.cluster.as_str()),
                        ("status_class", StatusClass::label(i)),
                    ];
                    w.sample("otlp_mesh_requests_total", &labels, n);
                }
            }
        }
        w.family(
            "otlp_mesh_request_duration_seconds",
            "histogram",
            "Time from request head to response head, by listener, route and cluster.",
        );
        for r in &routes {
            if r.duration.count() == 0 {
                continue;
            }
            let base = [
                ("listener", r.listener.as_str()),
                ("route", r.route.as_str()),
                ("cluster", r.cluster.as_str()),
            ];
            let cumulative = r.duration.cumulative();
            for (i, n) in cumulative.iter().enumerate() {
                let le = DURATION_BUCKETS_SECONDS
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                let labels = [base[0], base[1], base[2], ("le", le.as_str())];
                w.sample("otlp_mesh_request_duration_seconds_bucket", &labels, n);
            }
            w.sample(
                "otlp_mesh_request_duration_seconds_sum",
                &base,
                r.duration.sum_seconds(),
            );
            w.sample(
                "otlp_mesh_request_duration_seconds_count",
                &base,
                r.duration.count(),
            );
        }

        let listeners: Vec<(String, Arc<ListenerMetrics>)> = lock(&self.listeners)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        w.family(
            "otlp_mesh_active_connections",
            "gauge",
            "Open downstream connections, by listener.",
        );
        for (name, l) in &listeners {
            w.sample(
                "otlp_mesh_active_connections",
                &[("listener", name)],
                l.active_connections.load(Ordering::Relaxed),
            );
        }
        w.family(
            "otlp_mesh_connections_total",
            "counter",
            "Accepted downstream connections, by listener.",
        );
        for (name, l) in &listeners {
            w.sample(
                "otlp_mesh_connections_total",
                &[("listener", name)],
                l.connections_total.load(Ordering::Relaxed),
            );
        }

        let clusters: Vec<(String, Arc<ClusterMetrics>)> = lock(&self.clusters)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let families: [ClusterFamily; 6] = [
            (
                "otlp_mesh_upstream_requests_total",
                "counter",
                "Requests sent upstream, by cluster.",
                |c| c.requests_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "otlp_mesh_upstream_active_requests",
                "gauge",
                "Requests in flight upstream, by cluster.",
                |c| c.active_requests.load(Ordering::Relaxed),
            ),
            (
                "otlp_mesh_upstream_connect_errors_total",
                "counter",
                "Failed upstream connection attempts, by cluster.",
                |c| c.connect_errors_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "otlp_mesh_upstream_timeouts_total",
                "counter",
                "Requests that hit the route timeout, by cluster.",
                |c| c.timeouts_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "otlp_mesh_upstream_no_endpoint_total",
                "counter",
                "Requests refused because the cluster had no endpoint, by cluster.",
                |c| c.no_endpoint_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "otlp_mesh_upstream_panic_picks_total",
                "counter",
                "Endpoint picks made with no healthy endpoint (balanced over all), by cluster.",
                |c| c.panic_picks_total.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, get) in families {
            w.family(name, kind, help);
            for (cluster, c) in &clusters {
                w.sample(name, &[("cluster", cluster)], get(c));
            }
        }
    }
}

/// Name, type, help and reader of one per-cluster metric family.
type ClusterFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ClusterMetrics) -> i64,
);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_shared_by_labels_and_rendered() {
        let reg = Registry::new();
        let a = reg.route("edge", "api", "v1");
        let b = reg.route("edge", "api", "v1");
        assert!(Arc::ptr_eq(&a, &b), "same labels must give the same series");
        a.record(200, Duration::from_millis(3));
        a.record(503, Duration::from_millis(30));
        reg.cluster("v1")
            .connect_errors_total
            .fetch_add(2, Ordering::Relaxed);
        reg.listener("edge")
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        let mut w = PromWriter::new();
        reg.render(&mut w);
        let text = w.finish();
        assert!(text.contains(
            "otlp_mesh_requests_total{listener=\"edge\",route=\"api\",cluster=\"v1\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("status_class=\"5xx\"} 1"));
        assert!(text.contains(
            "otlp_mesh_request_duration_seconds_bucket{listener=\"edge\",route=\"api\",cluster=\"v1\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("otlp_mesh_upstream_connect_errors_total{cluster=\"v1\"} 2"));
        assert!(text.contains("otlp_mesh_active_connections{listener=\"edge\"} 1"));
    }
}
