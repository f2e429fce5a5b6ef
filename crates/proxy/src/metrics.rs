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
