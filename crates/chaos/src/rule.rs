//! The rule model (serde: YAML config and JSON over the admin API), its validation with
//! field-level errors, and its compiled form used on the request path.

use crate::grpc::{encode_grpc_message, parse_grpc_code};
use crate::matcher::{CompiledMatch, PathMatch, ValueMatch};
use crate::sample::DelayDistribution;
use crate::units::{ByteRate, FaultDuration, parse_rfc3339};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// A named fault rule: where it applies (`match`, `scope`), what it injects, and its safety limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Unique name: 1–128 characters from `A-Z a-z 0-9 - _ . : /`.
    pub name: String,
    /// A disabled rule stays listed but injects nothing. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Request conditions; empty matches every request.
    #[serde(
        rename = "match",
        default,
        skip_serializing_if = "FaultMatch::is_empty"
    )]
    pub matcher: FaultMatch,
    /// Once per client request before retries (`request`, default) or per upstream attempt (`attempt`).
    #[serde(default)]
    pub scope: FaultScope,
    /// Delay before the request goes upstream, or of the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// Answer with an HTTP status or a gRPC status instead of calling upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
    /// Release the response body at a limited rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleFault>,
    /// Drop the client connection (HTTP/1.1) or reset the stream (h2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetFault>,
    /// Most requests with an active fault from this rule at once; excess requests pass clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
    /// When the rule is on: after `start`, before `stop`, or for `duration` after it was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

fn yes() -> bool {
    true
}

impl Default for FaultRule {
    fn default() -> Self {
        FaultRule {
            name: String::new(),
            enabled: true,
            matcher: FaultMatch::default(),
            scope: FaultScope::default(),
            delay: None,
            abort: None,
            throttle: None,
            reset: None,
            max_active: None,
            schedule: None,
        }
    }
}

/// Request conditions, as for proxy routes, plus where the request is in the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultMatch {
    /// Only requests received on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Only requests routed by this route (its name as in `/routes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Only requests sent to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The path starts with this, on a segment boundary (`/api` matches `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path matches this regular expression (unanchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Any of these methods (upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Header name → condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
}

impl FaultMatch {
    /// True when no condition is set (matches every request).
    pub fn is_empty(&self) -> bool {
        *self == FaultMatch::default()
    }
}

/// Where in the stack a rule applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// Once per client request, outside the retry layer: retries cannot mask the fault (default).
    #[default]
    Request,
    /// Per upstream attempt, inside the retry layer: a retry may succeed where an attempt failed.
    Attempt,
}

/// When a delay happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayPhase {
    /// Before the request is sent upstream (default).
    #[default]
    Request,
    /// After the upstream answered, before the response head goes on (time to first byte).
    Response,
}

/// A delay: percentage, exactly one distribution, and the phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    /// Share of matching requests delayed, 0–100 (fractions allowed, e.g. 0.1).
    pub percent: f64,
    /// Always this delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FaultDuration>,
    /// Uniform between `min` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniform: Option<UniformDelay>,
    /// Normal with `mean` and `stddev`; negative samples become 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal: Option<NormalDelay>,
    /// Log-normal with `median` (or `mu`) and `sigma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lognormal: Option<LogNormalDelay>,
    /// Pareto with `scale` (the minimum delay) and `shape` (tail index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pareto: Option<ParetoDelay>,
    /// `request` (default) or `response`.
    #[serde(default)]
    pub on: DelayPhase,
    /// Upper bound on a sampled delay (heavy tails); at most 1h whatever is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<FaultDuration>,
}

/// Uniform delay on `[min, max]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformDelay {
    /// Smallest delay.
    pub min: FaultDuration,
    /// Largest delay.
    pub max: FaultDuration,
}

/// Normal delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalDelay {
    /// Mean delay.
    pub mean: FaultDuration,
    /// Standard deviation (> 0).
    pub stddev: FaultDuration,
}

/// Log-normal delay `exp(mu + sigma·Z)`: give `median` (= e^mu, a duration) or `mu`
/// (natural log of the median in **milliseconds**), not both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormalDelay {
    /// Median delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<FaultDuration>,
    /// ln(median in ms), e.g. `mu: 6.2146` for a 500ms median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    /// Standard deviation of ln(delay) (> 0); the 84th percentile is `median·e^sigma`.
    pub sigma: f64,
}

/// Pareto (type I) delay: `P(delay > x) = (scale/x)^shape` for `x >= scale`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParetoDelay {
    /// Minimum delay (> 0).
    pub scale: FaultDuration,
    /// Tail index (> 0); ≤ 1 has no finite mean, so consider `max`.
    pub shape: f64,
}

/// An abort: HTTP status (with optional body) or gRPC status (with optional message).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    /// Share of matching requests aborted, 0–100.
    pub percent: f64,
    /// HTTP status, 200–599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// Body of the HTTP abort response (`text/plain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// gRPC status code 0–16, as a number or a name such as `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcStatus>,
    /// `grpc-message` of the gRPC abort (percent-encoded on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A gRPC status as written: a number or a code name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcStatus {
    /// A numeric code (validated to 0–16).
    Code(i64),
    /// A code name such as `UNAVAILABLE` (validated).
    Name(String),
}

impl GrpcStatus {
    /// The code 0–16, if valid.
    pub fn code(&self) -> Option<u8> {
        match self {
            GrpcStatus::Code(n) => u8::try_from(*n).ok().filter(|c| *c <= 16),
            GrpcStatus::Name(s) => parse_grpc_code(s),
        }
    }
}

impl Serialize for GrpcStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GrpcStatus::Code(n) => s.serialize_i64(*n),
            GrpcStatus::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for GrpcStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = GrpcStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status code (0-16) or name such as UNAVAILABLE")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GrpcStatus, E> {
                Ok(GrpcStatus::Code(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GrpcStatus, E> {
                Ok(GrpcStatus::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GrpcStatus, E> {
                Ok(GrpcStatus::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A response-body throttle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleFault {
    /// Share of matching requests throttled, 0–100.
    pub percent: f64,
    /// Body bandwidth: a number of bytes, or a size such as `64KiB` (per second).
    pub bytes_per_second: ByteRate,
}

/// A connection reset (HTTP/1.1) / stream reset (h2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetFault {
    /// Share of matching requests reset, 0–100.
    pub percent: f64,
}

/// When a rule is on. `duration` alone counts from when the rule was loaded (PUT or config load);
/// with `start` it counts from `start`. `stop` and `duration` exclude each other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The rule switches itself off this long after it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<FaultDuration>,
    /// RFC 3339 time before which the rule is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// RFC 3339 time from which the rule is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// A validation error naming the offending field, e.g. `delay.percent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field (`abort.grpc_status`, `match.headers.x-user.regex`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Parses a rule from JSON (the admin API body) and validates it; every problem comes back as a
/// [`FieldError`], shape errors (unknown field, wrong type, missing field) included.
pub fn parse_rule_json(body: &[u8]) -> Result<FaultRule, Vec<FieldError>> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let rule: FaultRule = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut field = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        // serde_json appends " at line L column C"; keep only the message.
        let msg = e.into_inner().to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        // A missing field is named by its parent's path: name the field itself.
        if let Some(missing) = msg
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(missing);
        }
        vec![FieldError::new(field, msg)]
    })?;
    rule.validate()?;
    Ok(rule)
}

/// The delay part of a compiled rule.
#[derive(Debug)]
pub(crate) struct CompiledDelay {
    pub percent: f64,
    pub dist: DelayDistribution,
    pub cap: Option<Duration>,
    pub phase: DelayPhase,
}

/// What an abort answers with.
#[derive(Clone, Debug)]
pub(crate) enum AbortAction {
    Http {
        status: StatusCode,
        body: Option<Bytes>,
    },
    Grpc {
        code: u8,
        message: Option<HeaderValue>,
    },
}

/// A rule ready for the request path.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub matcher: CompiledMatch,
    pub delay: Option<CompiledDelay>,
    pub abort: Option<(f64, AbortAction)>,
    pub throttle: Option<(f64, u64)>,
    pub reset: Option<f64>,
    pub start: Option<SystemTime>,
    pub stop: Option<SystemTime>,
    /// `schedule.duration`, counted from `start` if given, else from load time.
    pub duration: Option<Duration>,
}

fn check_percent(errs: &mut Vec<FieldError>, field: &str, p: f64) {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        errs.push(FieldError::new(field, "must be a number from 0 to 100"));
    }
}

fn check_positive(errs: &mut Vec<FieldError>, field: &str, v: f64) {
    if !v.is_finite() || v <= 0.0 {
        errs.push(FieldError::new(field, "must be a positive, finite number"));
    }
}

fn check_positive_duration(errs: &mut Vec<FieldError>, field: &str, d: FaultDuration) {
    if d.0.is_zero() {
        errs.push(FieldError::new(field, "must be greater than 0"));
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
}

impl FaultRule {
    /// Checks every field; all problems are reported, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.compile().map(|_| ())
    }

    /// Validates and compiles (regexes, header names, distributions, abort responses).
    pub(crate) fn compile(&self) -> Result<CompiledRule, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !valid_name(&self.name) {
            errs.push(FieldError::new(
                "name",
                "must be 1-128 characters from A-Z a-z 0-9 - _ . : /",
            ));
        }
        if self.delay.is_none()
            && self.abort.is_none()
            && self.throttle.is_none()
            && self.reset.is_none()
        {
            errs.push(FieldError::new(
                "rule",
                "needs at least one of delay, abort, throttle, reset",
            ));
        }
        let matcher = compile_match(&self.matcher, &mut errs);
        let delay = self
            .delay
            .as_ref()
            .and_then(|d| compile_delay(d, &mut errs));
        let abort = self
            .abort
            .as_ref()
            .and_then(|a| compile_abort(a, &mut errs));
        let throttle = self.throttle.as_ref().and_then(|t| {
            check_percent(&mut errs, "throttle.percent", t.percent);
            if t.bytes_per_second.0 == 0 {
                errs.push(FieldError::new(
                    "throttle.bytes_per_second",
                    "must be at least 1",
                ));
                return None;
            }
            Some((t.percent, t.bytes_per_second.0))
        });
        let reset = self.reset.as_ref().map(|r| {
            check_percent(&mut errs, "reset.percent", r.percent);
            r.percent
        });
        if self.max_active == Some(0) {
            errs.push(FieldError::new(
                "max_active",
                "must be at least 1 (use enabled: false to switch the rule off)",
            ));
        }
        let (mut start, mut stop, mut duration) = (None, None, None);
        if let Some(s) = &self.schedule {
            if let Some(d) = s.duration {
                check_positive_duration(&mut errs, "schedule.duration", d);
                if s.stop.is_some() {
                    errs.push(FieldError::new(
                        "schedule.duration",
                        "give either stop or duration, not both",
                    ));
                }
                duration = Some(d.0);
            }
            let mut time = |field: &str, v: &Option<String>| {
                v.as_deref().and_then(|t| match parse_rfc3339(t) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        errs.push(FieldError::new(field, e));
                        None
                    }
                })
            };
            start = time("schedule.start", &s.start);
            stop = time("schedule.stop", &s.stop);
            if let (Some(a), Some(b)) = (start, stop)
                && b <= a
            {
                errs.push(FieldError::new("schedule.stop", "must be after start"));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(CompiledRule {
            matcher,
            delay,
            abort,
            throttle,
            reset,
            start,
            stop,
            duration,
        })
    }
}

fn compile_match(m: &FaultMatch, errs: &mut Vec<FieldError>) -> CompiledMatch {
    let paths = [
        m.path_exact.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if paths.iter().filter(|p| **p).count() > 1 {
        errs.push(FieldError::new(
            "match",
            "give at most one of path_exact, path_prefix, path_regex",
        ));
    }
    let mut path = PathMatch::Any;
    if let Some(p) = &m.path_exact {
        if p.starts_with('/') {
            path = PathMatch::Exact(p.clone());
        } else {
            errs.push(FieldError::new("match.path_exact", "must start with /"));
        }
    }
    if let Some(p) = &m.path_prefix {
        if !p.starts_with('/') {
            errs.push(FieldError::new("match.path_prefix", "must start with /"));
        } else if p != "/" {
            path = PathMatch::Prefix(p.clone());
        }
    }
    if let Some(r) = &m.path_regex {
        match Regex::new(r) {
            Ok(r) => path = PathMatch::Regex(r),
            Err(e) => errs.push(FieldError::new("match.path_regex", e.to_string())),
        }
    }
    let methods = m.methods.as_ref().map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(s.as_bytes()) {
                    Ok(method) if ok => Some(method),
                    _ => {
                        errs.push(FieldError::new(
                            format!("match.methods[{i}]"),
                            format!("`{s}` is not an upper-case method name such as GET"),
                        ));
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let headers = m
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let name = match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    errs.push(FieldError::new(
                        format!("match.headers.{k}"),
                        "is not a valid header name",
                    ));
                    return None;
                }
            };
            match CompiledMatch::new_value(v) {
                Ok(m) => Some((name, m)),
                Err(e) => {
                    errs.push(FieldError::new(
                        format!("match.headers.{k}.regex"),
                        e.to_string(),
                    ));
                    None
                }
            }
        })
        .collect();
    let name = |field: &str, v: &Option<String>, errs: &mut Vec<FieldError>| {
        if v.as_deref() == Some("") {
            errs.push(FieldError::new(field, "must not be empty"));
        }
        v.clone()
    };
    CompiledMatch {
        listener: name("match.listener", &m.listener, errs),
        route: name("match.route", &m.route, errs),
        cluster: name("match.cluster", &m.cluster, errs),
        path,
        methods,
        headers,
    }
}

fn compile_delay(d: &DelayFault, errs: &mut Vec<FieldError>) -> Option<CompiledDelay> {
    check_percent(errs, "delay.percent", d.percent);
    let given = [
        d.fixed.is_some(),
        d.uniform.is_some(),
        d.normal.is_some(),
        d.lognormal.is_some(),
        d.pareto.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        errs.push(FieldError::new(
            "delay",
            "give exactly one of fixed, uniform, normal, lognormal, pareto",
        ));
        return None;
    }
    if let Some(m) = d.max {
        check_positive_duration(errs, "delay.max", m);
    }
    let before = errs.len();
    let secs = |d: FaultDuration| d.0.as_secs_f64();
    let dist = if let Some(f) = d.fixed {
        DelayDistribution::Fixed(secs(f))
    } else if let Some(u) = d.uniform {
        if u.max < u.min {
            errs.push(FieldError::new(
                "delay.uniform.max",
                "must not be less than min",
            ));
        }
        DelayDistribution::Uniform {
            min: secs(u.min),
            max: secs(u.max),
        }
    } else if let Some(n) = d.normal {
        check_positive_duration(errs, "delay.normal.stddev", n.stddev);
        DelayDistribution::Normal {
            mean: secs(n.mean),
            stddev: secs(n.stddev),
        }
    } else if let Some(l) = d.lognormal {
        check_positive(errs, "delay.lognormal.sigma", l.sigma);
        let mu = match (l.median, l.mu) {
            (Some(m), None) => {
                check_positive_duration(errs, "delay.lognormal.median", m);
                secs(m).ln()
            }
            (None, Some(mu)) => {
                if !mu.is_finite() {
                    errs.push(FieldError::new(
                        "delay.lognormal.mu",
                        "must be a finite number",
                    ));
                }
                // mu is ln(median in ms); the distribution works in seconds.
                mu - 1000f64.ln()
            }
            _ => {
                errs.push(FieldError::new(
                    "delay.lognormal",
                    "give exactly one of median, mu",
                ));
                0.0
            }
        };
        DelayDistribution::LogNormal { mu, sigma: l.sigma }
    } else if let Some(p) = d.pareto {
        check_positive_duration(errs, "delay.pareto.scale", p.scale);
        check_positive(errs, "delay.pareto.shape", p.shape);
        DelayDistribution::Pareto {
            scale: secs(p.scale),
            shape: p.shape,
        }
    } else {
        return None;
    };
    (errs.len() == before).then(|| CompiledDelay {
        percent: d.percent,
        dist,
        cap: d.max.map(|m| m.0),
        phase: d.on,
    })
}

fn compile_abort(a: &AbortFault, errs: &mut Vec<FieldError>) -> Option<(f64, AbortAction)> {
    check_percent(errs, "abort.percent", a.percent);
    match (a.http_status, &a.grpc_status) {
        (Some(s), None) => {
            if a.message.is_some() {
                errs.push(FieldError::new(
                    "abort.message",
                    "goes with grpc_status; use body with http_status",
                ));
            }
            let status = u16::try_from(s)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok());
            match status {
                Some(status) => Some((
                    a.percent,
                    AbortAction::Http {
                        status,
                        body: a.body.clone().map(Bytes::from),
                    },
                )),
                None => {
                    errs.push(FieldError::new(
                        "abort.http_status",
                        "must be an HTTP status from 200 to 599",
                    ));
                    None
                }
            }
        }
        (None, Some(g)) => {
            if a.body.is_some() {
                errs.push(FieldError::new(
                    "abort.body",
                    "goes with http_status; use message with grpc_status",
                ));
            }
            let message = a.message.as_deref().map(|m| {
                // Percent-encoding leaves only visible ASCII and spaces: always a valid value.
                HeaderValue::from_str(&encode_grpc_message(m))
                    .unwrap_or_else(|_| HeaderValue::from_static("fault injected"))
            });
            match g.code() {
                Some(code) => Some((a.percent, AbortAction::Grpc { code, message })),
                None => {
                    errs.push(FieldError::new(
                        "abort.grpc_status",
                        "must be a gRPC code 0-16 or a name such as UNAVAILABLE",
                    ));
                    None
                }
            }
        }
        _ => {
            errs.push(FieldError::new(
                "abort",
                "give exactly one of http_status, grpc_status",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(rule: &FaultRule) -> Vec<String> {
        let mut f: Vec<String> = rule
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        f.sort();
        f
    }

    #[test]
    fn every_invalid_field_is_named() {
        let mut headers = BTreeMap::new();
        headers.insert("x-user".to_string(), ValueMatch::Regex("(".into()));
        headers.insert("bad header".to_string(), ValueMatch::Present(true));
        let rule = FaultRule {
            name: "has space".into(),
            matcher: FaultMatch {
                path_regex: Some("[".into()),
                methods: Some(vec!["GET".into(), "get".into()]),
                headers,
                listener: Some(String::new()),
                ..FaultMatch::default()
            },
            delay: Some(DelayFault {
                percent: 101.0,
                normal: Some(NormalDelay {
                    mean: FaultDuration::from_millis(100),
                    stddev: FaultDuration::from_millis(0),
                }),
                max: Some(FaultDuration::from_millis(0)),
                ..DelayFault::default()
            }),
            abort: Some(AbortFault {
                percent: f64::NAN,
                grpc_status: Some(GrpcStatus::Code(17)),
                body: Some("x".into()),
                ..AbortFault::default()
            }),
            throttle: Some(ThrottleFault {
                percent: -1.0,
                bytes_per_second: ByteRate(0),
            }),
            reset: Some(ResetFault { percent: 200.0 }),
            max_active: Some(0),
            schedule: Some(Schedule {
                duration: Some(FaultDuration::from_millis(1000)),
                start: Some("soon".into()),
                stop: Some("2025-01-01T00:00:00Z".into()),
            }),
            ..FaultRule::default()
        };
        assert_eq!(
            fields(&rule),
            [
                "abort.body",
                "abort.grpc_status",
                "abort.percent",
                "delay.max",
                "delay.normal.stddev",
                "delay.percent",
                "match.headers.bad header",
                "match.headers.x-user.regex",
                "match.listener",
                "match.methods[1]",
                "match.path_regex",
                "max_active",
                "name",
                "reset.percent",
                "schedule.duration",
                "schedule.start",
                "throttle.bytes_per_second",
                "throttle.percent",
            ]
        );
    }

    #[test]
    fn distribution_parameters_are_checked() {
        let base = |d: DelayFault| FaultRule {
            name: "r".into(),
            delay: Some(d),
            ..FaultRule::default()
        };
        let d = |f: fn(&mut DelayFault)| {
            let mut d = DelayFault {
                percent: 5.0,
                ..DelayFault::default()
            };
            f(&mut d);
            fields(&base(d))
        };
        assert_eq!(d(|_| {}), ["delay"]);
        assert_eq!(
            d(|d| {
                d.fixed = Some(FaultDuration::from_millis(1));
                d.pareto = Some(ParetoDelay::default());
            }),
            ["delay"]
        );
        assert_eq!(
            d(|d| {
                d.uniform = Some(UniformDelay {
                    min: FaultDuration::from_millis(10),
                    max: FaultDuration::from_millis(5),
                })
            }),
            ["delay.uniform.max"]
        );
        assert_eq!(
            d(|d| {
                d.lognormal = Some(LogNormalDelay {
                    median: None,
                    mu: None,
                    sigma: f64::INFINITY,
                })
            }),
            ["delay.lognormal", "delay.lognormal.sigma"]
        );
        assert_eq!(
            d(|d| d.pareto = Some(ParetoDelay::default())),
            ["delay.pareto.scale", "delay.pareto.shape"]
        );
    }

    #[test]
    fn abort_needs_one_status_in_range() {
        let rule = |a: AbortFault| FaultRule {
            name: "r".into(),
            abort: Some(a),
            ..FaultRule::default()
        };
        assert_eq!(
            fields(&rule(AbortFault {
                percent: 1.0,
                ..AbortFault::default()
            })),
            ["abort"]
        );
        assert_eq!(
            fields(&rule(AbortFault {
                percent: 1.0,
                http_status: Some(99),
                ..AbortFault::default()
            })),
            ["abort.http_status"]
        );
        assert_eq!(
            fields(&rule(AbortFault {
                percent: 1.0,
                grpc_status: Some(GrpcStatus::Name("NOPE".into())),
                ..AbortFault::default()
            })),
            ["abort.grpc_status"]
        );
        assert!(
            rule(AbortFault {
                percent: 1.0,
                grpc_status: Some(GrpcStatus::Name("unavailable".into())),
                message: Some("down".into()),
                ..AbortFault::default()
            })
            .validate()
            .is_ok()
        );
        assert_eq!(
            fields(&FaultRule {
                name: "empty".into(),
                ..FaultRule::default()
            }),
            ["rule"]
        );
    }

    #[test]
    fn yaml_shape() {
        let yaml = r#"
name: orders-latency
match:
  listener: edge
  path_prefix: /api/orders
  methods: [GET, POST]
  headers: { x-canary: "true", x-user: { regex: "^test-" }, x-debug: { present: false } }
scope: request
delay: { percent: 10, lognormal: { median: 500ms, sigma: 0.4 }, on: response, max: 5s }
abort: { percent: 0.5, grpc_status: UNAVAILABLE, message: "chaos: injected" }
throttle: { percent: 1, bytes_per_second: 64KiB }
reset: { percent: 0.1 }
max_active: 50
schedule: { duration: 10m }
"#;
        let rule: FaultRule = serde_saphyr::from_str(yaml).unwrap();
        rule.validate().unwrap();
        assert_eq!(rule.matcher.listener.as_deref(), Some("edge"));
        assert_eq!(
            rule.matcher.headers["x-user"],
            ValueMatch::Regex("^test-".into())
        );
        let delay = rule.delay.as_ref().unwrap();
        assert_eq!(delay.on, DelayPhase::Response);
        assert_eq!(
            delay.lognormal.unwrap().median,
            Some(FaultDuration::from_millis(500))
        );
        assert_eq!(
            rule.abort
                .as_ref()
                .unwrap()
                .grpc_status
                .as_ref()
                .unwrap()
                .code(),
            Some(14)
        );
        assert_eq!(
            rule.throttle.as_ref().unwrap().bytes_per_second,
            ByteRate(65536)
        );
        assert!(rule.enabled);

        // Unknown fields are rejected at every level.
        let bad = "name: x\ndelay: { percent: 1, fixed: 1s, jitter: 2 }\n";
        assert!(serde_saphyr::from_str::<FaultRule>(bad).is_err());
    }

    #[test]
    fn json_round_trip_and_field_errors() {
        let json = r#"{"name":"a","delay":{"percent":5,"fixed":"200ms"},"abort":{"percent":1,"http_status":503,"body":"no"}}"#;
        let rule = parse_rule_json(json.as_bytes()).unwrap();
        let back = serde_json::to_string(&rule).unwrap();
        let again = parse_rule_json(back.as_bytes()).unwrap();
        assert_eq!(rule, again);

        let unknown = parse_rule_json(br#"{"name":"a","delay":{"percent":5,"fixd":"1s"}}"#);
        assert_eq!(unknown.unwrap_err()[0].field, "delay.fixd");
        let missing = parse_rule_json(br#"{"name":"a","abort":{"http_status":503}}"#);
        let e = missing.unwrap_err();
        assert_eq!(e[0].field, "abort.percent");
        assert_eq!(e[0].message, "missing field `percent`");
        let no_name = parse_rule_json(br#"{"reset":{"percent":1}}"#);
        assert_eq!(no_name.unwrap_err()[0].field, "name");
        let syntax = parse_rule_json(b"{");
        assert_eq!(syntax.unwrap_err()[0].field, "");
        let wrong = parse_rule_json(br#"{"name":"a","delay":{"percent":5,"fixed":"soon"}}"#);
        assert_eq!(wrong.unwrap_err()[0].field, "delay.fixed");
        let invalid = parse_rule_json(br#"{"name":"a","abort":{"percent":500,"http_status":503}}"#);
        assert_eq!(invalid.unwrap_err()[0].field, "abort.percent");
    }

    #[test]
    fn crate_doc_examples_parse() {
        let yaml = r#"name: orders-latency
match: { listener: edge, route: orders, path_prefix: /api/orders, methods: [GET],
         headers: { x-canary: "true", x-user: { regex: "^test-" } } }
scope: request                      # or attempt (inside retries)
delay: { percent: 10, lognormal: { median: 500ms, sigma: 0.4 }, on: request, max: 5s }
abort: { percent: 2, grpc_status: UNAVAILABLE, message: "injected by chaos" }
throttle: { percent: 1, bytes_per_second: 64KiB }
reset: { percent: 0.1 }
max_active: 50
schedule: { duration: 10m }         # or start / stop as RFC 3339 times
"#;
        let json = r#"{"name": "orders-latency",
 "match": {"listener": "edge", "route": "orders", "path_prefix": "/api/orders"},
 "delay": {"percent": 10, "lognormal": {"median": "500ms", "sigma": 0.4}},
 "abort": {"percent": 2, "http_status": 503, "body": "injected\n"},
 "max_active": 50, "schedule": {"duration": "10m"}}
"#;
        let from_yaml: FaultRule = serde_saphyr::from_str(yaml).unwrap();
        from_yaml.validate().unwrap();
        let from_json = parse_rule_json(json.as_bytes()).unwrap();
        assert_eq!(from_yaml.name, from_json.name);
        assert_eq!(from_yaml.max_active, Some(50));
        assert_eq!(from_json.abort.unwrap().body.as_deref(), Some("injected\n"));
    }
}
