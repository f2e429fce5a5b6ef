//! The telemetry query API over the embedded store, and the dashboard that reads it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the dashboard (one self-contained HTML page) |
//! | `GET /api/services?window=5m` | service map: nodes and edges with rates, errors, p50/p99 |
//! | `GET /api/traces?service=&operation=&limit=&min_duration_ms=&status=error` | `{"traces": [summary…]}`, most recent first |
//! | `GET /api/traces/{trace_id}` | all spans of a trace (400 for a malformed id, 404 for an unknown one) |
//! | `GET /api/logs?trace_id=&service=&limit=&min_severity=` | `{"logs": [record…]}`, newest first |
//! | `GET /api/metrics?name=&service=` | `{"metrics": [latest point per series…]}` |
//! | `GET /api/stats` | store sizes and eviction counters |
//!
//! A bad query parameter answers 400 with `{"error": "...", "parameter": "<name>"}`. Empty
//! parameters count as absent; unknown ones are ignored.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use otlp_mesh_config::units::Duration;
use otlp_mesh_telemetry::store::{LogQuery, MAX_LIMIT, MetricQuery, Store, TraceId, TraceQuery};
use serde_json::json;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

const DASHBOARD: &str = include_str!("dashboard.html");

/// The telemetry API and dashboard routes, with their own state (merge into the admin router).
pub fn api_router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/services", get(services))
        .route("/api/traces", get(traces))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/api/logs", get(logs))
        .route("/api/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .with_state(store)
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// A 400 answer: `{"error": "...", "parameter": "..."}`.
struct BadRequest {
    parameter: Option<&'static str>,
    error: String,
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = match self.parameter {
            Some(p) => json!({"error": self.error, "parameter": p}),
            None => json!({"error": self.error}),
        };
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

fn bad_request(parameter: &'static str, message: impl std::fmt::Display) -> BadRequest {
    BadRequest {
        parameter: Some(parameter),
        error: format!("invalid `{parameter}`: {message}"),
    }
}

/// Query parameters with typed, named errors.
struct Q(HashMap<String, String>);

impl Q {
    fn new(p: Params) -> Result<Q, BadRequest> {
        match p {
            Ok(Query(m)) => Ok(Q(m)),
            Err(e) => Err(BadRequest {
                parameter: None,
                error: format!("invalid query string: {}", e.body_text()),
            }),
        }
    }

    /// A non-empty parameter.
    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.str(name).map(str::to_string)
    }

    fn parse<T: FromStr>(
        &self,
        name: &'static str,
        expected: &str,
    ) -> Result<Option<T>, BadRequest> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad_request(name, format!("`{v}` is not {expected}"))),
        }
    }

    /// `limit`: a positive integer; values above [`MAX_LIMIT`] are capped.
    fn limit(&self, default: usize) -> Result<usize, BadRequest> {
        match self.parse::<u64>("limit", "a positive integer")? {
            None => Ok(default),
            Some(0) => Err(bad_request("limit", "must be at least 1")),
            Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
        }
    }
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD)).into_response()
}

async fn services(State(store): State<Arc<Store>>, params: Params) -> Response {
    let q = match Q::new(params) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let window = match q.str("window") {
        None => None,
        Some(w) => match Duration::from_str(w) {
            Ok(d) if !d.is_zero() => Some(d.0),
            Ok(_) => return bad_request("window", "must be greater than zero").into_response(),
            Err(e) => return bad_request("window", e).into_response(),
        },
    };
    Json(store.services(window)).into_response()
}

async fn traces(State(store): State<Arc<Store>>, params: Params) -> Response {
    let q = match Q::new(params) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let query = (|| {
        let min_duration_ms = q.parse::<f64>("min_duration_ms", "a number of milliseconds")?;
        if let Some(m) = min_duration_ms
            && !(m.is_finite() && m >= 0.0)
        {
            return Err(bad_request(
                "min_duration_ms",
                "must be a finite number ≥ 0",
            ));
        }
        let status_error = match q.str("status") {
            None | Some("any" | "all") => false,
            Some("error") => true,
            Some(other) => {
                return Err(bad_request(
                    "status",
                    format!("`{other}` is not `error` or `any`"),
                ));
            }
        };
        Ok(TraceQuery {
            service: q.string("service"),
            operation: q.string("operation"),
            limit: q.limit(TraceQuery::default().limit)?,
            min_duration_ms,
            status_error,
        })
    })();
    match query {
        Ok(query) => Json(json!({ "traces": store.traces(&query) })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn trace(State(store): State<Arc<Store>>, Path(trace_id): Path<String>) -> Response {
    if TraceId::from_hex(&trace_id).is_none() {
        return bad_request(
            "trace_id",
            format!("`{trace_id}` is not 32 hex digits (not all zero)"),
        )
        .into_response();
    }
    match store.trace(&trace_id) {
        Some(t) => Json(t).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no trace `{}` in the store", trace_id.to_ascii_lowercase())})),
        )
            .into_response(),
    }
}

/// A severity number (0–24) or name (`trace`, `debug`, `info`, `warn`, `error`, `fatal`).
fn severity(s: &str) -> Option<i32> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(1),
        "debug" => Some(5),
        "info" => Some(9),
        "warn" | "warning" => Some(13),
        "error" => Some(17),
        "fatal" => Some(21),
        n => n.parse().ok().filter(|n| (0..=24).contains(n)),
    }
}

async fn logs(State(store): State<Arc<Store>>, params: Params) -> Response {
    let q = match Q::new(params) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let query = (|| {
        let trace_id = match q.str("trace_id") {
            None => None,
            Some(t) => Some(TraceId::from_hex(t).ok_or_else(|| {
                bad_request(
                    "trace_id",
                    format!("`{t}` is not 32 hex digits (not all zero)"),
                )
            })?),
        };
        let min_severity = match q.str("min_severity") {
            None => None,
            Some(s) => Some(severity(s).ok_or_else(|| {
                bad_request(
                    "min_severity",
                    format!("`{s}` is not 0–24 or trace, debug, info, warn, error, fatal"),
                )
            })?),
        };
        Ok::<_, BadRequest>(LogQuery {
            trace_id,
            service: q.string("service"),
            limit: q.limit(LogQuery::default().limit)?,
            min_severity,
        })
    })();
    match query {
        Ok(query) => Json(json!({ "logs": store.logs(&query) })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn metrics(State(store): State<Arc<Store>>, params: Params) -> Response {
    let q = match Q::new(params) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let query = MetricQuery {
        name: q.string("name"),
        service: q.string("service"),
    };
    Json(json!({ "metrics": store.metrics(&query) })).into_response()
}

async fn stats(State(store): State<Arc<Store>>) -> Response {
    Json(store.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::severity;

    #[test]
    fn severities_by_name_or_number() {
        assert_eq!(severity("ERROR"), Some(17));
        assert_eq!(severity("warn"), Some(13));
        assert_eq!(severity("24"), Some(24));
        assert_eq!(severity("25"), None);
        assert_eq!(severity("-1"), None);
        assert_eq!(severity("loud"), None);
    }

    #[test]
    fn dashboard_is_self_contained() {
        let html = super::DASHBOARD;
        assert!(html.starts_with("<!doctype html>"));
        for external in ["http://", "https://", "<link", "src=\"", "@import"] {
            assert!(
                !html.contains(external),
                "dashboard references `{external}`"
            );
        }
        for api in ["/api/services", "/api/traces"] {
            assert!(html.contains(api));
        }
    }
}
