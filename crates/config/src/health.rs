//! Active health checks and passive outlier detection of a cluster (mapped onto the
//! `resilience` crate's `health` and `outlier` control loops).

use crate::Duration;
use serde::{Deserialize, Serialize};

/// A cluster's active health check: exactly one of `http`, `grpc` or `tcp`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckPolicy {
    /// `GET path` answered with an expected status is a pass.
    #[serde(default)]
    pub http: Option<HttpCheckPolicy>,
    /// `grpc.health.v1.Health/Check` answered `SERVING` is a pass.
    #[serde(default)]
    pub grpc: Option<GrpcCheckPolicy>,
    /// A TCP connect is a pass.
    #[serde(default)]
    pub tcp: Option<TcpCheckPolicy>,
    /// Time between checks of an endpoint. Default `5s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// One check's deadline. Default `1s`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Random spread of the interval, in percent of it (0–100): `10` or `"10%"`. Default 10.
    #[serde(default = "default_jitter", deserialize_with = "percent")]
    pub jitter: f64,
    /// Passes in a row that mark an unhealthy endpoint healthy. Default 2.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    /// Failures in a row that mark a healthy endpoint unhealthy. Default 3.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Check this port instead of the endpoint's own. Default: the endpoint's port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// HTTP/1.1 health check.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckPolicy {
    /// Default `/healthz`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `Host` header. Default: the endpoint's `ip:port`.
    #[serde(default)]
    pub host: Option<String>,
    /// Passing statuses, single (`"204"`) or ranges (`"200-399"`). Default `["200-399"]`.
    #[serde(default = "default_expected")]
    pub expected: Vec<String>,
}

/// gRPC health check (h2c).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcCheckPolicy {
    /// Service name sent in the request; empty asks about the whole server. Default `""`.
    #[serde(default)]
    pub service: String,
    /// `:authority` of the request. Default: the endpoint's `ip:port`.
    #[serde(default)]
    pub authority: Option<String>,
}

/// TCP connect check (no settings).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckPolicy {}

/// Passive outlier detection (Envoy semantics).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierPolicy {
    /// Consecutive 5xx (transport errors count) that eject an endpoint. Default 5; `0` = off.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 or transport errors that eject an endpoint. Default 5; `0` = off.
    #[serde(default = "default_consecutive")]
    pub consecutive_gateway_errors: u32,
    /// How often success rates are evaluated and ejection multipliers decay. Default `10s`.
    #[serde(default = "default_od_interval")]
    pub interval: Duration,
    /// Ejection time is this × the endpoint's ejection count. Default `30s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// Cap of the ejection time. Default `300s`.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent (at least one is always allowed). Default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: f64,
    /// Eject endpoints whose success rate is below mean − stdev × `stdev_factor`.
    #[serde(default)]
    pub success_rate: Option<SuccessRatePolicy>,
    /// Eject endpoints whose failure percentage is at least `threshold`.
    #[serde(default)]
    pub failure_percentage: Option<FailurePercentagePolicy>,
    /// Below this percentage of available endpoints, balance over all of them (panic mode).
    /// Default 50; `0` = only when none is available.
    #[serde(default = "default_panic")]
    pub panic_threshold: f64,
}

/// Statistical success-rate ejection (Envoy's `success_rate_*`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SuccessRatePolicy {
    /// Endpoints with enough volume needed before any is judged. Default 5.
    #[serde(default = "default_minimum_hosts")]
    pub minimum_hosts: u32,
    /// Requests an endpoint needs in the interval to be judged. Default 100.
    #[serde(default = "default_request_volume")]
    pub request_volume: u32,
    /// Default 1.9.
    #[serde(default = "default_stdev_factor")]
    pub stdev_factor: f64,
}

/// Fixed-threshold failure-percentage ejection (Envoy's `failure_percentage_*`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailurePercentagePolicy {
    /// Failure percentage (0–100) that ejects. Default 85.
    #[serde(default = "default_fp_threshold")]
    pub threshold: f64,
    /// Default 5.
    #[serde(default = "default_minimum_hosts")]
    pub minimum_hosts: u32,
    /// Default 50.
    #[serde(default = "default_fp_volume")]
    pub request_volume: u32,
}

/// A percentage written as a number (`10`) or with a sign (`10%`).
fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        Num(f64),
        Text(String),
    }
    match P::deserialize(d)? {
        P::Num(n) => Ok(n),
        P::Text(t) => t
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a percentage"))),
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_jitter() -> f64 {
    10.0
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}
fn default_path() -> String {
    "/healthz".into()
}
fn default_expected() -> Vec<String> {
    vec!["200-399".into()]
}
fn default_consecutive() -> u32 {
    5
}
fn default_od_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> f64 {
    10.0
}
fn default_panic() -> f64 {
    50.0
}
fn default_minimum_hosts() -> u32 {
    5
}
fn default_request_volume() -> u32 {
    100
}
fn default_stdev_factor() -> f64 {
    1.9
}
fn default_fp_threshold() -> f64 {
    85.0
}
fn default_fp_volume() -> u32 {
    50
}

fn is_percent(v: f64) -> bool {
    v.is_finite() && (0.0..=100.0).contains(&v)
}

/// Every problem with a health-check policy, as (field, message).
pub(crate) fn check_health(p: &HealthCheckPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let kinds = [p.http.is_some(), p.grpc.is_some(), p.tcp.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds != 1 {
        out.push(("http".into(), "set exactly one of http, grpc or tcp".into()));
    }
    if let Some(h) = &p.http {
        if !h.path.starts_with('/') || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
            out.push((
                "http.path".into(),
                format!("`{}` is not an absolute path", h.path),
            ));
        }
        if let Some(host) = &h.host
            && http::HeaderValue::from_str(host).is_err()
        {
            out.push((
                "http.host".into(),
                format!("`{host}` is not a valid header value"),
            ));
        }
        if let Err(e) = otlp_mesh_resilience::health::StatusRanges::parse(&h.expected) {
            out.push(("http.expected".into(), e));
        }
    }
    if let Some(g) = &p.grpc
        && let Some(a) = &g.authority
        && http::uri::Authority::try_from(a.as_str()).is_err()
    {
        out.push((
            "grpc.authority".into(),
            format!("`{a}` is not an authority"),
        ));
    }
    if p.interval.is_zero() {
        out.push(("interval".into(), "must be greater than 0".into()));
    }
    if p.timeout.is_zero() {
        out.push(("timeout".into(), "must be greater than 0".into()));
    }
    if !is_percent(p.jitter) {
        out.push((
            "jitter".into(),
            format!("{} is not a percentage (0 to 100)", p.jitter),
        ));
    }
    if p.healthy_threshold == 0 {
        out.push(("healthy_threshold".into(), "must be at least 1".into()));
    }
    if p.unhealthy_threshold == 0 {
        out.push(("unhealthy_threshold".into(), "must be at least 1".into()));
    }
    if p.port == Some(0) {
        out.push(("port".into(), "must not be 0".into()));
    }
    out
}

/// Every problem with an outlier-detection policy, as (field, message).
pub(crate) fn check_outlier(p: &OutlierPolicy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if p.interval.is_zero() {
        out.push(("interval".into(), "must be greater than 0".into()));
    }
    if p.base_ejection_time.is_zero() {
        out.push(("base_ejection_time".into(), "must be greater than 0".into()));
    }
    if p.max_ejection_time < p.base_ejection_time {
        out.push((
            "max_ejection_time".into(),
            "must not be below base_ejection_time".into(),
        ));
    }
    for (field, v) in [
        ("max_ejection_percent", p.max_ejection_percent),
        ("panic_threshold", p.panic_threshold),
    ] {
        if !is_percent(v) {
            out.push((field.into(), format!("{v} is not a percentage (0 to 100)")));
        }
    }
    if let Some(s) = &p.success_rate {
        if s.minimum_hosts == 0 {
            out.push((
                "success_rate.minimum_hosts".into(),
                "must be at least 1".into(),
            ));
        }
        if s.request_volume == 0 {
            out.push((
                "success_rate.request_volume".into(),
                "must be at least 1".into(),
            ));
        }
        if !s.stdev_factor.is_finite() || s.stdev_factor < 0.0 {
            out.push((
                "success_rate.stdev_factor".into(),
                format!("{} must be a number ≥ 0", s.stdev_factor),
            ));
        }
    }
    if let Some(f) = &p.failure_percentage {
        if !is_percent(f.threshold) {
            out.push((
                "failure_percentage.threshold".into(),
                format!("{} is not a percentage (0 to 100)", f.threshold),
            ));
        }
        if f.minimum_hosts == 0 {
            out.push((
                "failure_percentage.minimum_hosts".into(),
                "must be at least 1".into(),
            ));
        }
        if f.request_volume == 0 {
            out.push((
                "failure_percentage.request_volume".into(),
                "must be at least 1".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    fn errors(cluster_extra: &str) -> Vec<String> {
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery: {{ static: [127.0.0.1:1] }}\n{cluster_extra}"
        );
        match crate::parse_str(&yaml, "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn parses_defaults_and_full_shapes() {
        let yaml = "clusters:\n  - name: a\n    discovery: { static: [127.0.0.1:1] }\n    health_check: { http: { path: /hc, expected: [\"200\", \"300-301\"] }, interval: 2s, jitter: 25% }\n    outlier_detection: { consecutive_5xx: 3, success_rate: { minimum_hosts: 3 } }\n";
        let cfg = crate::parse_str(yaml, "t.yaml").unwrap();
        let c = &cfg.clusters[0];
        let h = c.health_check.as_ref().unwrap();
        assert_eq!(h.http.as_ref().unwrap().path, "/hc");
        assert_eq!(h.unhealthy_threshold, 3);
        assert_eq!(h.jitter, 25.0);
        assert_eq!(h.timeout, crate::Duration::from_secs(1));
        let o = c.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx, 3);
        assert_eq!(o.consecutive_gateway_errors, 5);
        assert_eq!(o.success_rate.as_ref().unwrap().request_volume, 100);
        assert_eq!(o.panic_threshold, 50.0);
    }

    #[test]
    fn reports_bad_fields_by_path() {
        let e = errors("    health_check: { tcp: {}, unhealthy_threshold: 0 }\n");
        assert!(
            e.iter()
                .any(|e| e.contains("clusters[0].health_check.unhealthy_threshold")),
            "{e:?}"
        );
        let e = errors("    health_check: { interval: 1s }\n");
        assert!(e.iter().any(|e| e.contains("exactly one")), "{e:?}");
        let e = errors("    health_check: { http: { expected: [\"99-700\"] } }\n");
        assert!(
            e.iter().any(|e| e.contains("health_check.http.expected")),
            "{e:?}"
        );
        let e = errors(
            "    outlier_detection: { max_ejection_percent: 120, base_ejection_time: 10s, max_ejection_time: 1s }\n",
        );
        assert!(
            e.iter()
                .any(|e| e.contains("outlier_detection.max_ejection_percent")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("outlier_detection.max_ejection_time")),
            "{e:?}"
        );
        assert!(errors("    health_check: { grpc: {} }\n    outlier_detection: {}\n").is_empty());
        assert!(errors("    health_check: { tcp: {}, jitter: 5 }\n").is_empty());
        let e = errors("    health_check: { tcp: {}, jitter: lots }\n");
        assert!(e.iter().any(|e| e.contains("jitter")), "{e:?}");
    }
}
