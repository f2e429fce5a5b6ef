//! The admin HTTP server: health, Prometheus metrics, effective config, clusters and routes.
//!
//! Read-only views over the proxy's current snapshot; it never blocks the data path.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use otlp_mesh_config::reload::ReloadStats;
use otlp_mesh_proxy::Proxy;
use otlp_mesh_telemetry::PromWriter;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

mod api;
pub use api::api_router;

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub reload: Arc<ReloadStats>,
    pub started: Instant,
    /// The OTLP pipeline, when `telemetry:` is configured.
    pub telemetry: Option<Arc<otlp_mesh_telemetry::Telemetry>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let admin = Router::new()
        .route("/ready", get(ready))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/clusters", get(clusters))
        .route("/routes", get(routes))
        .route("/chaos", get(chaos))
        .route(
            "/chaos/rules/{*name}",
            put(chaos_put).delete(chaos_delete).get(chaos_get),
        )
        .route("/chaos/disable-all", post(chaos_disable_all))
        .route("/chaos/enable-all", post(chaos_enable_all))
        .fallback(not_found)
        .with_state(state.clone());
    match state.telemetry.as_ref().and_then(|t| t.store()) {
        Some(store) => api_router(store).merge(admin),
        None => admin,
    }
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.proxy.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if s.proxy.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn live() -> &'static str {
    "live\n"
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no such admin endpoint; try /ready /live /metrics /config /clusters /routes /chaos\n",
    )
        .into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut w = PromWriter::new();
    s.proxy.registry().render(&mut w);
    w.family(
        "otlp_mesh_config_reloads_total",
        "counter",
        "Config reloads applied or refused, by result.",
    );
    w.sample(
        "otlp_mesh_config_reloads_total",
        &[("result", "success")],
        s.reload.successes(),
    );
    w.sample(
        "otlp_mesh_config_reloads_total",
        &[("result", "failure")],
        s.reload.failures(),
    );
    w.family(
        "otlp_mesh_config_reload_failures_total",
        "counter",
        "Config files refused (invalid, unreadable or failed to apply); the old config kept serving.",
    );
    w.sample(
        "otlp_mesh_config_reload_failures_total",
        &[],
        s.reload.failures(),
    );
    if let Some(snap) = s.proxy.snapshot() {
        otlp_mesh_proxy::metrics::render_resilience(&snap, &mut w);
    }
    s.proxy.faults().render_prometheus(w.buffer());
    if let Some(t) = &s.telemetry {
        t.render_prometheus(w.buffer());
    }
    w.family(
        "otlp_mesh_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    w.sample(
        "otlp_mesh_uptime_seconds",
        &[],
        s.started.elapsed().as_secs_f64(),
    );
    if let Some(rss) = resident_bytes() {
        w.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
        );
        w.sample("process_resident_memory_bytes", &[], rss);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        w.finish(),
    )
        .into_response()
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "no config applied yet"})),
    )
        .into_response()
}

async fn config(State(s): State<AdminState>) -> Response {
    let Some(snap) = s.proxy.snapshot() else {
        return unavailable();
    };
    Json(json!({
        "source": snap.loaded.source,
        "hash": snap.loaded.hash,
        "reload": {
            "successes": s.reload.successes(),
            "failures": s.reload.failures(),
            "last_error": s.reload.last_error(),
        },
        "config": otlp_mesh_config::masked_json(&snap.loaded.config),
    }))
    .into_response()
}

async fn clusters(State(s): State<AdminState>) -> Response {
    let Some(snap) = s.proxy.snapshot() else {
        return unavailable();
    };
    let clusters: Vec<Value> = snap
        .clusters
        .values()
        .map(|c| {
            let now = c.clock().now();
            let set = c.endpoints();
            let endpoints: Vec<Value> = set
                .endpoints()
                .iter()
                .map(|e| {
                    let st = e.stats(now);
                    json!({
                        "address": st.addr.to_string(),
                        "weight": st.weight,
                        "health": if st.available { "healthy" } else if st.healthy { "ejected" } else { "unhealthy" },
                        "ejected_for_ms": st.ejected_for.map(|d| d.as_millis() as u64),
                        "in_flight": st.in_flight,
                        "requests": st.requests,
                        "failures": st.failures,
                        "consecutive_failures": st.consecutive_failures,
                        "ewma_latency_ms": st.ewma_latency.map(|d| d.as_secs_f64() * 1e3),
                        "slow_start": st.slow_start_since.is_some(),
                        "source": c.discovery_kind(),
                    })
                })
                .collect();
            let health = set.health(now);
            let breakers: serde_json::Map<String, Value> = c
                .breakers()
                .map(|(priority, b)| {
                    let h = b.handle();
                    let mut counters = serde_json::Map::new();
                    h.stats().for_each(|k, v| {
                        counters.insert(k.to_string(), json!(v));
                    });
                    let open_for = h
                        .open_until()
                        .map(|t| t.saturating_duration_since(tokio::time::Instant::now()).as_secs_f64());
                    let v = json!({
                        "state": h.state().as_str(),
                        "since_seconds": h.since().elapsed().as_secs_f64(),
                        "open_for_seconds": open_for,
                        "active_requests": h.active_requests(),
                        "pending_requests": h.pending_requests(),
                        "active_retries": h.active_retries(),
                        "consecutive_failures": h.consecutive_failures(),
                        "counters": counters,
                    });
                    (priority.to_string(), v)
                })
                .collect();
            let breaker = breakers.get("default").cloned();
            json!({
                "name": c.name,
                "protocol": c.config.protocol,
                "balancer": c.balancer_name(),
                "discovery": c.discovery_kind(),
                "connect_timeout": c.config.connect_timeout,
                "healthy_endpoints": health.available,
                "panic": health.panic,
                "circuit_breaker": breaker,
                "circuit_breakers": breakers,
                "discovery_status": c.discovery().snapshot(),
                "adaptive": c.adaptive().map(|a| adaptive_json(a, now)),
                "endpoints": endpoints,
            })
        })
        .collect();
    Json(json!({ "clusters": clusters })).into_response()
}

async fn routes(State(s): State<AdminState>) -> Response {
    let Some(snap) = s.proxy.snapshot() else {
        return unavailable();
    };
    let listeners: Vec<Value> = snap
        .loaded
        .config
        .listeners
        .iter()
        .map(|l| {
            let routes: Vec<Value> = l
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut v = otlp_mesh_config::masked_json(&r.value);
                    if let Some(obj) = v.as_object_mut() {
                        let name = r
                            .name
                            .as_ref()
                            .map(|n| n.value.clone())
                            .unwrap_or_else(|| format!("{}/{i}", l.name.value));
                        obj.insert("name".into(), Value::String(name));
                        obj.retain(|_, v| !v.is_null());
                    }
                    v
                })
                .collect();
            json!({
                "name": l.name.value,
                "bind": l.bind.value,
                "address": snap.listeners.get(&l.name.value).map(|a| a.to_string()),
                "routes": routes,
            })
        })
        .collect();
    Json(json!({ "listeners": listeners })).into_response()
}

async fn chaos(State(s): State<AdminState>) -> Response {
    Json(s.proxy.faults().view()).into_response()
}

async fn chaos_get(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.proxy.faults().get(&name) {
        Some(rule) => Json(rule).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no fault rule named `{name}`")})),
        )
            .into_response(),
    }
}

/// Creates or replaces a rule; 400 lists every invalid field.
async fn chaos_put(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let field_errors = |errs: Vec<otlp_mesh_chaos::FieldError>| {
        let errors: Vec<Value> = errs
            .iter()
            .map(|e| json!({"field": e.field, "message": e.message}))
            .collect();
        (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors }))).into_response()
    };
    // The name comes from the path; a body may repeat it but must not contradict it.
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return field_errors(vec![otlp_mesh_chaos::FieldError {
                field: String::new(),
                message: format!("body is not JSON: {e}"),
            }]);
        }
    };
    if let Some(obj) = value.as_object_mut() {
        match obj.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return field_errors(vec![otlp_mesh_chaos::FieldError {
                    field: "name".into(),
                    message: format!("`{n}` does not match the name in the path (`{name}`)"),
                }]);
            }
            _ => {
                obj.insert("name".into(), Value::String(name.clone()));
            }
        }
    }
    let rule = match otlp_mesh_chaos::parse_rule_json(value.to_string().as_bytes()) {
        Ok(rule) => rule,
        Err(errs) => return field_errors(errs),
    };
    match s.proxy.faults().put(rule) {
        Ok(otlp_mesh_chaos::PutOutcome::Created) => {
            tracing::info!(rule = %name, "fault rule created");
            (StatusCode::CREATED, Json(s.proxy.faults().get(&name))).into_response()
        }
        Ok(otlp_mesh_chaos::PutOutcome::Replaced) => {
            tracing::info!(rule = %name, "fault rule replaced");
            Json(s.proxy.faults().get(&name)).into_response()
        }
        Err(errs) => field_errors(errs),
    }
}

async fn chaos_delete(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.proxy.faults().delete(&name) {
        Some(source) => {
            tracing::info!(rule = %name, ?source, "fault rule deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no fault rule named `{name}`")})),
        )
            .into_response(),
    }
}

async fn chaos_disable_all(State(s): State<AdminState>) -> Response {
    s.proxy.faults().disable_all();
    tracing::warn!("fault injection disabled (kill switch)");
    Json(json!({"enabled": false})).into_response()
}

async fn chaos_enable_all(State(s): State<AdminState>) -> Response {
    s.proxy.faults().enable_all();
    tracing::info!("fault injection enabled");
    Json(json!({"enabled": true})).into_response()
}

/// The adaptive balancer's choice, candidate scores and last switch, for `/clusters`.
fn adaptive_json(a: &otlp_mesh_balance::Adaptive, now: otlp_mesh_balance::Timestamp) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let scores: Vec<Value> = a
        .scores()
        .iter()
        .map(|c| {
            json!({
                "algorithm": c.name,
                "active": c.active,
                "estimated_p99_ms": ms(c.estimated_p99),
                "estimated_mean_ms": ms(c.estimated_mean),
                "estimated_error_rate": c.estimated_error_rate,
                "score": c.score,
                "observed_p99_ms": c.observed_p99.map(ms),
                "observed_error_rate": c.observed_error_rate,
                "samples": c.samples,
            })
        })
        .collect();
    json!({
        "current": a.current(),
        "candidates": a.candidates(),
        "switches": a.switches(),
        "scores": scores,
        "last_switch": a.last_switch().map(|sw| json!({
            "from": sw.from,
            "to": sw.to,
            "reason": sw.reason,
            "seconds_ago": now.saturating_duration_since(sw.at).as_secs_f64(),
        })),
    })
}
