//! Prometheus rendering of the resilience layers' counters: retries per route and cluster,
//! circuit breakers per cluster, rate limits per route.

use crate::Snapshot;
use otlp_mesh_resilience::breaker::CircuitState;
use otlp_mesh_telemetry::PromWriter;
use std::collections::BTreeMap;

/// Reads one concurrency gauge of a breaker.
type BreakerGauge = fn(&otlp_mesh_resilience::breaker::BreakerHandle) -> u32;

/// Appends retry, circuit-breaker and rate-limit series for the snapshot's listeners and clusters.
pub fn render_resilience(snap: &Snapshot, w: &mut PromWriter) {
    render_discovery_and_adaptive(snap, w);
    render_health(snap, w);
    // counter name → rows of (labels, value); written as one family per counter.
    let mut retry: BTreeMap<&'static str, Vec<([String; 4], u64)>> = BTreeMap::new();
    let mut limits: BTreeMap<&'static str, Vec<([String; 2], u64)>> = BTreeMap::new();
    for (listener, state) in &snap.states {
        let state = state.load();
        for route in state.routes.routes() {
            for (target, _) in route.targets() {
                if let Some(r) = &target.retry {
                    r.stats().for_each(|counter, reason, value| {
                        let labels = [
                            listener.clone(),
                            route.name.clone(),
                            target.cluster.name.clone(),
                            reason.unwrap_or("").to_string(),
                        ];
                        retry.entry(counter).or_default().push((labels, value));
                    });
                }
            }
            if let Some(Some(limit)) = state.limits.get(route.index) {
                limit.stats.for_each(|counter, value| {
                    limits
                        .entry(counter)
                        .or_default()
                        .push(([listener.clone(), route.name.clone()], value));
                });
            }
        }
    }
    for (counter, rows) in retry {
        let name = format!("otlp_mesh_retry_{counter}_total");
        w.family(
            &name,
            "counter",
            "Retry layer events, by listener, route and cluster (retries also by reason).",
        );
        for ([l, r, c, reason], v) in rows {
            if counter == "retries" {
                let labels = [
                    ("listener", l.as_str()),
                    ("route", r.as_str()),
                    ("cluster", c.as_str()),
                    ("reason", reason.as_str()),
                ];
                w.sample(&name, &labels, v);
            } else {
                w.sample(
                    &name,
                    &[
                        ("listener", l.as_str()),
                        ("route", r.as_str()),
                        ("cluster", c.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    for (counter, rows) in limits {
        let name = format!("otlp_mesh_rate_limit_{counter}_total");
        w.family(
            &name,
            "counter",
            "Rate-limit decisions, by listener and route.",
        );
        for ([l, r], v) in rows {
            w.sample(&name, &[("listener", l.as_str()), ("route", r.as_str())], v);
        }
    }

    let breakers: Vec<_> = snap
        .clusters
        .values()
        .flat_map(|c| {
            c.breakers()
                .map(|(priority, b)| (c.name.as_str(), priority, b.handle()))
        })
        .collect();
    if breakers.is_empty() {
        return;
    }
    w.family(
        "otlp_mesh_circuit_breaker_state",
        "gauge",
        "1 for the breaker's current state (closed, open, half_open), by cluster and priority.",
    );
    for (cluster, priority, h) in &breakers {
        let current = h.state();
        for state in [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ] {
            w.sample(
                "otlp_mesh_circuit_breaker_state",
                &[
                    ("cluster", cluster),
                    ("priority", priority),
                    ("state", state.as_str()),
                ],
                u8::from(state == current),
            );
        }
    }
    let gauges: [(&str, BreakerGauge); 3] = [
        ("otlp_mesh_circuit_breaker_active_requests", |h| {
            h.active_requests()
        }),
        ("otlp_mesh_circuit_breaker_pending_requests", |h| {
            h.pending_requests()
        }),
        ("otlp_mesh_circuit_breaker_active_retries", |h| {
            h.active_retries()
        }),
    ];
    for (name, get) in gauges {
        w.family(
            name,
            "gauge",
            "Breaker concurrency gauges, by cluster and priority.",
        );
        for (cluster, priority, h) in &breakers {
            w.sample(
                name,
                &[("cluster", cluster), ("priority", priority)],
                get(h),
            );
        }
    }
    let mut counters: BTreeMap<&'static str, Vec<(&str, &str, u64)>> = BTreeMap::new();
    for (cluster, priority, h) in &breakers {
        h.stats().for_each(|counter, v| {
            counters
                .entry(counter)
                .or_default()
                .push((cluster, priority, v))
        });
    }
    for (counter, rows) in counters {
        let name = format!("otlp_mesh_circuit_breaker_{counter}_total");
        w.family(
            &name,
            "counter",
            "Circuit-breaker transitions and outcomes, by cluster and priority.",
        );
        for (cluster, priority, v) in rows {
            w.sample(&name, &[("cluster", cluster), ("priority", priority)], v);
        }
    }
}

/// Active health-check, outlier-detection and panic-threshold series, by cluster.
/// Discovery source state and adaptive-balancer choice per cluster.
fn render_discovery_and_adaptive(snap: &Snapshot, w: &mut PromWriter) {
    let clusters: Vec<_> = snap.clusters.values().collect();
    type Read = fn(&otlp_mesh_discovery::SourceStatus) -> u64;
    let families: [(&str, &str, &str, Read); 4] = [
        (
            "otlp_mesh_discovery_healthy",
            "gauge",
            "1 while the cluster's discovery source answers, by cluster and kind.",
            |st| u64::from(st.healthy()),
        ),
        (
            "otlp_mesh_discovery_endpoints",
            "gauge",
            "Endpoints the discovery source last published.",
            |st| st.endpoints(),
        ),
        (
            "otlp_mesh_discovery_updates_total",
            "counter",
            "Endpoint sets published by the discovery source.",
            |st| st.updates(),
        ),
        (
            "otlp_mesh_discovery_failures_total",
            "counter",
            "Failed discovery fetches (the last known set stays).",
            |st| st.failures(),
        ),
    ];
    for (name, kind, help, read) in families {
        w.family(name, kind, help);
        for c in &clusters {
            let st = c.discovery();
            w.sample(
                name,
                &[("cluster", c.name.as_str()), ("kind", st.kind())],
                read(st),
            );
        }
    }
    let adaptive: Vec<_> = clusters
        .iter()
        .filter_map(|c| c.adaptive().map(|a| (c.name.as_str(), a)))
        .collect();
    if adaptive.is_empty() {
        return;
    }
    w.family(
        "otlp_mesh_adaptive_switches_total",
        "counter",
        "Algorithm switches of the adaptive balancer, by cluster.",
    );
    for (cluster, a) in &adaptive {
        w.sample(
            "otlp_mesh_adaptive_switches_total",
            &[("cluster", cluster)],
            a.switches(),
        );
    }
    w.family(
        "otlp_mesh_adaptive_active",
        "gauge",
        "1 for the algorithm the adaptive balancer uses now, by cluster and algorithm.",
    );
    w.family(
        "otlp_mesh_adaptive_estimated_p99_seconds",
        "gauge",
        "Estimated p99 latency of each candidate algorithm, by cluster and algorithm.",
    );
    for (cluster, a) in &adaptive {
        for score in a.scores() {
            let labels = [("cluster", *cluster), ("algorithm", score.name)];
            w.sample("otlp_mesh_adaptive_active", &labels, u8::from(score.active));
            w.sample(
                "otlp_mesh_adaptive_estimated_p99_seconds",
                &labels,
                score.estimated_p99.as_secs_f64(),
            );
        }
    }
}

fn render_health(snap: &Snapshot, w: &mut PromWriter) {
    use std::sync::atomic::Ordering::Relaxed;
    let checked: Vec<_> = snap
        .clusters
        .values()
        .filter_map(|c| c.health_stats().map(|s| (c.name.as_str(), s)))
        .collect();
    if !checked.is_empty() {
        let name = "otlp_mesh_health_checks_total";
        w.family(
            name,
            "counter",
            "Active health checks, by cluster and result.",
        );
        for (c, s) in &checked {
            w.sample(
                name,
                &[("cluster", c), ("result", "passed")],
                s.checks_passed.load(Relaxed),
            );
            w.sample(
                name,
                &[("cluster", c), ("result", "failed")],
                s.checks_failed.load(Relaxed),
            );
        }
        let name = "otlp_mesh_health_transitions_total";
        w.family(
            name,
            "counter",
            "Endpoints marked healthy or unhealthy by active checks, by cluster.",
        );
        for (c, s) in &checked {
            w.sample(
                name,
                &[("cluster", c), ("to", "healthy")],
                s.became_healthy.load(Relaxed),
            );
            w.sample(
                name,
                &[("cluster", c), ("to", "unhealthy")],
                s.became_unhealthy.load(Relaxed),
            );
        }
        let name = "otlp_mesh_health_unhealthy_endpoints";
        w.family(
            name,
            "gauge",
            "Endpoints failing active health checks now, by cluster.",
        );
        for (c, s) in &checked {
            w.sample(name, &[("cluster", c)], s.unhealthy.load(Relaxed));
        }
    }
    let detected: Vec<_> = snap
        .clusters
        .values()
        .filter_map(|c| c.outlier_stats().map(|s| (c.name.as_str(), s)))
        .collect();
    if !detected.is_empty() {
        let name = "otlp_mesh_outlier_ejections_total";
        w.family(name, "counter", "Outlier ejections, by cluster and reason.");
        for (c, s) in &detected {
            s.for_each_ejection(|reason, v| {
                w.sample(name, &[("cluster", c), ("reason", reason)], v)
            });
        }
        let name = "otlp_mesh_outlier_ejections_overflow_total";
        w.family(
            name,
            "counter",
            "Ejections skipped because max_ejection_percent was reached, by cluster.",
        );
        for (c, s) in &detected {
            w.sample(name, &[("cluster", c)], s.ejections_overflow.load(Relaxed));
        }
        let name = "otlp_mesh_outlier_ejected_endpoints";
        w.family(name, "gauge", "Endpoints ejected now, by cluster.");
        for (c, s) in &detected {
            w.sample(name, &[("cluster", c)], s.ejected.load(Relaxed));
        }
    }
    let guarded: Vec<_> = snap
        .clusters
        .values()
        .filter_map(|c| c.panic_guard().map(|g| (c.name.as_str(), g)))
        .collect();
    if !guarded.is_empty() {
        let name = "otlp_mesh_cluster_panic_mode";
        w.family(
            name,
            "gauge",
            "1 while the panic threshold forces balancing over all endpoints, by cluster.",
        );
        for (c, g) in &guarded {
            w.sample(name, &[("cluster", c)], u8::from(g.is_active()));
        }
        let name = "otlp_mesh_cluster_panic_entered_total";
        w.family(
            name,
            "counter",
            "Times the panic threshold was crossed, by cluster.",
        );
        for (c, g) in &guarded {
            w.sample(name, &[("cluster", c)], g.entered_total());
        }
    }
}
