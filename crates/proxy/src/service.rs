//! The per-request path: route, transform headers, call the cluster stack, transform the response.

use crate::body::{DownstreamBody, ProxyBody, RequestBody, UpstreamBody};
use crate::cluster::{ClientIp, Cluster, ClusterService};
use crate::error::ProxyError;
use crate::headers::{self, FORWARDED, VIA, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::router::{Route, RouteTable};
use crate::trace::TraceAttempt;
use http::header::{CONTENT_LENGTH, HOST, SERVER};
use http::{HeaderValue, Request, Response, Uri, Version};
use otlp_mesh_chaos::{Fault, FaultBody, FaultRegistry, FaultReset, FaultScope, FaultTarget};
use otlp_mesh_config::{ListenerConfig, Protocol};
use otlp_mesh_resilience::Conditions;
use otlp_mesh_resilience::ratelimit::{
    KeyExtractor, RateLimitConfig, RateLimitLayer, RateLimitStats,
};
use otlp_mesh_resilience::retry::{
    Backoff, BudgetConfig, NonIdempotent, RetryConfig, RetryLayer, RetryStats,
};
use otlp_mesh_resilience::timeout::{ReusableDeadline, Timeout};
use otlp_mesh_telemetry::recorder::{
    Recorder, RequestRecord, RequestTarget, RequestTrace, RouteNames,
};
use otlp_mesh_telemetry::{ListenerMetrics, Registry, RouteMetrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::{Either, MapFuture, MapRequest};

/// The body of every response the proxy sends: upstream or proxy-made, possibly fault-wrapped
/// (once per fault layer: request scope outside the timeout, attempt scope inside).
pub type ResponseBody = FaultBody<FaultBody<ProxyBody>>;

/// A retried request's future, boxed (see `route_and_forward`).
type AttemptsFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<Response<FaultBody<ProxyBody>>, ProxyError>> + Send>,
>;

/// Where a split entry sends requests, with the metric series and fault targets for that route and cluster.
#[derive(Debug)]
pub struct Target {
    pub cluster: Arc<Cluster>,
    /// Listener, route and cluster names for spans and access logs (shared, not copied per
    /// request).
    names: Arc<RouteNames>,
    pub metrics: Arc<RouteMetrics>,
    request_faults: Arc<FaultTarget>,
    attempt_faults: Arc<FaultTarget>,
    /// The route's retry policy towards this cluster (it shares the cluster breaker's retry limit).
    pub retry: Option<RetryLayer>,
}

/// How a route's rate limit keys requests.
#[derive(Clone, Debug)]
pub enum RouteKey {
    /// One bucket for the route.
    Route,
    ClientIp,
    Header(http::HeaderName),
}

impl<B> KeyExtractor<B> for RouteKey {
    fn key(&self, req: &Request<B>, mut state: &mut dyn std::hash::Hasher) -> bool {
        use std::hash::Hash;
        match self {
            RouteKey::Route => false,
            RouteKey::ClientIp => match req.extensions().get::<ClientIp>() {
                Some(ip) => {
                    ip.0.hash(&mut state);
                    true
                }
                None => false,
            },
            RouteKey::Header(name) => match req.headers().get(name) {
                Some(v) => {
                    state.write(v.as_bytes());
                    true
                }
                None => false,
            },
        }
    }
}

/// A route's rate limiter and its counters.
#[derive(Debug)]
pub struct RouteLimit {
    pub layer: RateLimitLayer<RouteKey>,
    pub key: RouteKey,
    pub stats: Arc<RateLimitStats>,
    pub config: RateLimitConfig,
}

fn retry_layer(
    p: &otlp_mesh_config::RetryPolicy,
    cluster: &Cluster,
    priority: otlp_mesh_config::RoutePriority,
) -> RetryLayer {
    let config = RetryConfig {
        max_attempts: p.attempts,
        conditions: p
            .on
            .as_ref()
            .and_then(|on| Conditions::parse(on).ok())
            .unwrap_or_else(Conditions::default_retry),
        per_try_timeout: p.per_try_timeout.map(Into::into),
        backoff: Backoff {
            base: p.backoff.base.into(),
            max: p.backoff.max.into(),
        },
        retry_after_cap: (!p.retry_after_max.is_zero()).then(|| p.retry_after_max.into()),
        budget: p.budget.as_ref().map(|b| BudgetConfig {
            ratio: b.ratio,
            min_per_sec: b.min_per_second,
            window: b.window.into(),
            ..BudgetConfig::default()
        }),
        replay_buffer: usize::try_from(p.buffer.0).unwrap_or(usize::MAX),
        non_idempotent: match p.non_idempotent {
            otlp_mesh_config::NonIdempotentPolicy::Never => NonIdempotent::Never,
            otlp_mesh_config::NonIdempotentPolicy::Unprocessed => NonIdempotent::Unprocessed,
            otlp_mesh_config::NonIdempotentPolicy::Always => NonIdempotent::Always,
        },
    };
    let layer = RetryLayer::new(config).with_stats(Arc::new(RetryStats::default()));
    match cluster.breaker(priority) {
        Some(b) => layer.with_retry_gate(b.retry_gate()),
        None => layer,
    }
}

fn route_limit(p: &otlp_mesh_config::RateLimitPolicy) -> RouteLimit {
    let config = RateLimitConfig {
        rate: p.rate,
        per: p.per.into(),
        burst: p.burst.unwrap_or(p.rate),
        max_keys: p.max_keys,
    };
    let key = match p.key.as_deref() {
        Some("client_ip") => RouteKey::ClientIp,
        Some(k) => k
            .strip_prefix("header:")
            .and_then(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).ok())
            .map_or(RouteKey::Route, RouteKey::Header),
        None => RouteKey::Route,
    };
    let stats = Arc::new(RateLimitStats::default());
    RouteLimit {
        layer: RateLimitLayer::with_stats(config.clone(), key.clone(), stats.clone()),
        key,
        stats,
        config,
    }
}

/// Everything a listener needs per request, swapped as a whole on config reload.
#[derive(Debug)]
pub struct ListenerState {
    pub name: String,
    pub config: ListenerConfig,
    pub routes: RouteTable<Target>,
    via: Option<HeaderValue>,
    server_header: Option<HeaderValue>,
    pub metrics: Arc<ListenerMetrics>,
    no_route: Arc<RouteMetrics>,
    faults: FaultRegistry,
    /// Rate limiter per route index (`None` for routes without one).
    pub limits: Vec<Option<RouteLimit>>,
    /// Per route index: whether the client address must travel with the request.
    needs_client_ip: Vec<bool>,
    /// The proxy's own spans and access logs, when telemetry is configured.
    recorder: Option<Arc<Recorder>>,
    /// Names for records of requests that matched no route.
    unrouted_names: Arc<RouteNames>,
}

impl ListenerState {
    /// Compiles a listener's config against the snapshot's clusters.
    pub fn build(
        config: &ListenerConfig,
        clusters: &std::collections::BTreeMap<String, Arc<Cluster>>,
        registry: &Registry,
        faults: &FaultRegistry,
        recorder: Option<Arc<Recorder>>,
    ) -> Result<Self, String> {
        let name = config.name.value.clone();
        let routes = RouteTable::compile(config, |route, cluster| {
            let c = clusters.get(cluster)?;
            let fault_target = |scope, header_faults| {
                Arc::new(FaultTarget {
                    listener: name.clone(),
                    route: route.to_string(),
                    cluster: Some(cluster.to_string()),
                    scope,
                    header_faults,
                })
            };
            let retry = config
                .routes
                .iter()
                .enumerate()
                .find(|(i, r)| r.route_name(&name, *i) == route)
                .and_then(|(_, r)| r.retry.as_ref().map(|p| retry_layer(p, c, r.priority)));
            Some(Target {
                cluster: c.clone(),
                names: RouteNames::new(&name, Some(route), Some(cluster)),
                metrics: registry.route(&name, route, cluster),
                request_faults: fault_target(FaultScope::Request, config.header_faults.clone()),
                attempt_faults: fault_target(FaultScope::Attempt, None),
                retry,
            })
        })?;
        let limits: Vec<Option<RouteLimit>> = config
            .routes
            .iter()
            .map(|r| r.rate_limit.as_ref().map(|p| route_limit(p)))
            .collect();
        let needs_client_ip = routes
            .routes()
            .iter()
            .map(|r| {
                let limit_ip = limits
                    .get(r.index)
                    .and_then(Option::as_ref)
                    .is_some_and(|l| matches!(l.key, RouteKey::ClientIp));
                limit_ip || r.targets().any(|(t, _)| t.cluster.needs_client_ip())
            })
            .collect();
        let header = |v: &Option<String>, prefix: &str| -> Result<Option<HeaderValue>, String> {
            v.as_ref()
                .map(|s| HeaderValue::from_str(&format!("{prefix}{s}")).map_err(|e| e.to_string()))
                .transpose()
        };
        Ok(ListenerState {
            via: header(&config.via, "1.1 ")?,
            server_header: header(&config.server_header, "")?,
            metrics: registry.listener(&name),
            no_route: registry.route(&name, "", ""),
            faults: faults.clone(),
            limits,
            needs_client_ip,
            routes,
            config: config.clone(),
            recorder: recorder.filter(|r| r.is_active()),
            unrouted_names: RouteNames::new(&name, None, None),
            name,
        })
    }
}

/// Handles one request end to end. Errors become responses, except an injected reset, which
/// hyper turns into a closed connection (HTTP/1.1) or a reset stream (h2).
///
/// `route_timer`, for a connection whose requests come one after another, times the route
/// timeout with the connection's one timer entry.
pub async fn handle(
    state: Arc<ListenerState>,
    peer: SocketAddr,
    req: Request<DownstreamBody>,
    route_timer: Option<&mut ReusableDeadline>,
) -> Result<Response<ResponseBody>, FaultReset> {
    // The one clock read at the start of a request: metrics, span and access log share it.
    let start = Instant::now();
    let Some(recorder) = state.recorder.as_ref() else {
        return route_and_forward(
            &state,
            peer,
            req,
            None,
            start,
            &mut Picked::default(),
            route_timer,
        )
        .await;
    };
    let trace = recorder.begin(req.headers(), start.into_std());
    let Some(t) = trace.as_ref().filter(|t| t.records()) else {
        // Not sampled and no access log: only the trace headers travel on.
        return route_and_forward(
            &state,
            peer,
            req,
            trace,
            start,
            &mut Picked::default(),
            route_timer,
        )
        .await;
    };
    let fields = RecordFields {
        trace: trace.clone(),
        start_unix_nanos: t.start_unix_nanos,
        method: req.method().clone(),
        target: {
            let host = match req.headers().get(HOST).map(|h| h.to_str()) {
                Some(Ok(h)) => Some(h),
                _ => req.uri().authority().map(|a| a.as_str()),
            };
            RequestTarget::new(req.uri().path(), host)
        },
        version: req.version(),
        peer,
    };
    let mut recording = Recording {
        state: &state,
        recorder,
        start,
        fields: Some(fields),
        picked: Picked::default(),
    };
    let result = route_and_forward(
        &state,
        peer,
        req,
        trace,
        start,
        &mut recording.picked,
        route_timer,
    )
    .await;
    let (status, error, faults) = match &result {
        Ok(resp) => (
            resp.status().as_u16(),
            recording.picked.error.map(str::to_string),
            resp.extensions()
                .get::<otlp_mesh_chaos::AppliedFaults>()
                .map(|f| f.kinds()),
        ),
        Err(_) => (
            502,
            Some("fault_reset".to_string()),
            Some("reset".to_string()),
        ),
    };
    recording.record(status, error, faults);
    result
}

/// What a sampled request's span and access log record are made of, besides its outcome.
struct RecordFields {
    trace: Option<Arc<RequestTrace>>,
    start_unix_nanos: u64,
    method: http::Method,
    target: RequestTarget,
    version: Version,
    peer: SocketAddr,
}

/// A sampled request until it is recorded. Dropped unrecorded (the request was dropped
/// unanswered: its client went away), it records the request as 499 `client_closed`, as nginx
/// logs such requests, rather than losing it.
struct Recording<'a> {
    state: &'a ListenerState,
    recorder: &'a Recorder,
    start: Instant,
    /// Taken when the request is recorded.
    fields: Option<RecordFields>,
    picked: Picked,
}

impl Recording<'_> {
    fn record(&mut self, status: u16, error: Option<String>, faults: Option<String>) {
        let Some(f) = self.fields.take() else {
            return;
        };
        let picked = std::mem::take(&mut self.picked);
        self.recorder.record(RequestRecord {
            trace: f.trace,
            start_unix_nanos: f.start_unix_nanos,
            // Measured when the metrics were recorded (one clock read for both).
            duration: picked.elapsed.unwrap_or_else(|| self.start.elapsed()),
            method: f.method,
            target: f.target,
            version: f.version,
            peer: f.peer.ip().to_canonical(),
            names: picked
                .names
                .unwrap_or_else(|| self.state.unrouted_names.clone()),
            status,
            error,
            faults,
        });
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if self.fields.is_some() {
            self.record(CLIENT_CLOSED, Some("client_closed".into()), None);
        }
    }
}

/// The status recorded for a request whose client went away before its answer (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

/// Records a request in its route's metric series as 499 if it is dropped while waiting for
/// its upstream (its client went away); disarmed once the upstream has answered.
struct Unanswered<'a> {
    metrics: &'a RouteMetrics,
    start: Instant,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.record(CLIENT_CLOSED, self.start.elapsed());
        }
    }
}

/// The route and cluster a request went to, for its span and access log, and how long it took.
#[derive(Default)]
struct Picked {
    names: Option<Arc<RouteNames>>,
    elapsed: Option<std::time::Duration>,
    /// The code of the error response the proxy made (its `x-mesh-error`), if it made one:
    /// kept here rather than looked up again in the response's headers.
    error: Option<&'static str>,
}

/// Records the request in its metric series; the duration is kept for its span.
fn record_metrics(metrics: &RouteMetrics, status: u16, start: Instant, picked: &mut Picked) {
    let elapsed = start.elapsed();
    metrics.record(status, elapsed);
    picked.elapsed = Some(elapsed);
}

async fn route_and_forward(
    state: &ListenerState,
    peer: SocketAddr,
    req: Request<DownstreamBody>,
    trace: Option<Arc<RequestTrace>>,
    start: Instant,
    picked: &mut Picked,
    route_timer: Option<&mut ReusableDeadline>,
) -> Result<Response<ResponseBody>, FaultReset> {
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    let grpc = is_grpc(&parts.headers);
    let Some(route) = state.routes.find(&parts) else {
        record_metrics(&state.no_route, 404, start, picked);
        return Ok(finish_error(state, grpc, ProxyError::NoRoute, picked));
    };
    let Some(target) = route.pick_target() else {
        record_metrics(&state.no_route, 503, start, picked);
        return Ok(finish_error(
            state,
            grpc,
            ProxyError::NoEndpoints(route.name.clone()),
            picked,
        ));
    };
    if trace.is_some() {
        picked.names = Some(target.names.clone());
    }

    let limit = state.config.limits.max_request_body.map(|b| b.0);
    if let Some(limit) = limit {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            record_metrics(&target.metrics, 413, start, picked);
            return Ok(finish_error(
                state,
                grpc,
                ProxyError::BodyTooLarge(limit),
                picked,
            ));
        }
    }

    prepare_request(
        state,
        route,
        &mut parts,
        peer,
        target.cluster.config.protocol,
    );
    if state
        .needs_client_ip
        .get(route.index)
        .copied()
        .unwrap_or(false)
    {
        parts.extensions.insert(ClientIp(peer.ip().to_canonical()));
    }
    // A gRPC client's own deadline may only shorten the route's.
    let client_deadline = if grpc {
        grpc_timeout(&parts.headers)
    } else {
        None
    };
    let upstream = Request::from_parts(parts, RequestBody::new(body, limit));
    // Built per request from shared parts (Arc clones, no allocation), outer to inner:
    // rate limit ▸ fault (request) ▸ timeout ▸ retry ▸ fault (attempt) ▸ breaker ▸ cluster.
    let cluster = ClusterService(target.cluster.clone());
    let guarded = match target.cluster.breaker(route.priority) {
        Some(b) => Either::Left(b.layer_service(cluster)),
        None => Either::Right(cluster),
    };
    let attempt = TraceAttempt::new(
        Fault::new(guarded, state.faults.clone(), target.attempt_faults.clone()),
        trace,
        target.retry.is_some(),
    );
    type ToUpstream<B> = fn(Request<B>) -> Request<UpstreamBody>;
    let attempts = match &target.retry {
        // The retry future (a request copy, a backoff timer, the next attempt) is boxed: inline
        // it would double the size of every request's future, retried or not, and each move of
        // it is a copy.
        Some(r) => Either::Left(MapFuture::new(
            r.layer_service(MapRequest::new(
                attempt,
                UpstreamBody::replay as ToUpstream<_>,
            )),
            |f| -> AttemptsFuture { Box::pin(f) },
        )),
        None => Either::Right(MapRequest::new(
            attempt,
            UpstreamBody::plain as ToUpstream<_>,
        )),
    };
    let timeout = Timeout::new(attempts, effective_timeout(route.timeout, client_deadline));
    let timeout = match route_timer {
        Some(entry) => timeout.reusing(entry),
        None => timeout,
    };
    let faulted = Fault::new(timeout, state.faults.clone(), target.request_faults.clone());
    let stack = match state.limits.get(route.index).and_then(Option::as_ref) {
        Some(limit) => Either::Left(limit.layer.layer_service(faulted)),
        None => Either::Right(faulted),
    };
    let mut unanswered = Unanswered {
        metrics: &target.metrics,
        start,
        armed: true,
    };
    let result = stack.oneshot(upstream).await;
    unanswered.armed = false;
    match result {
        Ok(mut resp) => {
            // Answer in the client's protocol version, not the upstream's (e.g. HTTP/1.0).
            *resp.version_mut() = downstream_version;
            let headers = resp.headers_mut();
            headers::remove_hop_by_hop(headers, false);
            route.response_headers.apply(headers);
            finish_headers(state, headers);
            record_metrics(&target.metrics, resp.status().as_u16(), start, picked);
            Ok(resp)
        }
        Err(ProxyError::FaultReset(reset)) => {
            record_metrics(&target.metrics, 502, start, picked);
            Err(reset)
        }
        Err(e) => {
            if matches!(e, ProxyError::Timeout(_)) {
                target
                    .cluster
                    .metrics
                    .timeouts_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(listener = %state.name, route = %route.name, cluster = %target.cluster.name, error = %e, "request failed");
            record_metrics(&target.metrics, e.status().as_u16(), start, picked);
            Ok(finish_error(state, grpc, e, picked))
        }
    }
}

fn prepare_request(
    state: &ListenerState,
    route: &Route<Target>,
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    protocol: Protocol,
) {
    let cfg = &state.config;
    let headers = &mut parts.headers;
    headers::remove_hop_by_hop(headers, true);
    // An h2 request carries its host in :authority only; keep it for HTTP/1.1 upstreams.
    if !headers.contains_key(HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(HOST, v);
    }
    if cfg.x_forwarded_for {
        let ip = peer.ip().to_canonical().to_string();
        headers::append_list(headers, &X_FORWARDED_FOR, &ip);
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if cfg.forwarded {
        headers::append_list(
            headers,
            &FORWARDED,
            &headers::forwarded_element(peer.ip().to_canonical(), "http"),
        );
    }
    if cfg.request_id && !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(&X_REQUEST_ID, headers::new_request_id());
    }
    if let Some(via) = &state.via {
        headers.append(&VIA, via.clone());
    }
    if let Some(host) = &route.host_rewrite {
        headers.insert(HOST, host.clone());
    }
    route.request_headers.apply(headers);
    if let Some(path) = route.rewrite_path(&parts.uri)
        && let Ok(uri) = path.parse::<Uri>()
    {
        parts.uri = uri;
    }
    parts.version = match protocol {
        Protocol::H2 => Version::HTTP_2,
        Protocol::Http1 => Version::HTTP_11,
    };
}

fn finish_headers(state: &ListenerState, headers: &mut http::HeaderMap) {
    if let Some(via) = &state.via {
        headers.append(&VIA, via.clone());
    }
    if let Some(server) = &state.server_header {
        headers.insert(SERVER, server.clone());
    }
}

/// The response for a request the proxy fails with `e`; its code is kept for the request's span.
fn finish_error(
    state: &ListenerState,
    grpc: bool,
    e: ProxyError,
    picked: &mut Picked,
) -> Response<ResponseBody> {
    picked.error = Some(e.code());
    let mut resp = if grpc {
        e.into_grpc_response()
    } else {
        e.into_response()
    };
    finish_headers(state, resp.headers_mut());
    resp.map(|b| FaultBody::inner(FaultBody::inner(b)))
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`), when present and valid.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The route timeout, shortened by the client's deadline.
fn effective_timeout(
    route: Option<std::time::Duration>,
    client: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    match (route, client) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(v: &str) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        m.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(grpc_timeout(&h("100m")), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(&h("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&h("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout(&h("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(&h(bad)), None, "{bad}");
        }
    }

    #[test]
    fn client_deadline_only_shortens() {
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(effective_timeout(s(15), s(2)), s(2));
        assert_eq!(effective_timeout(s(1), s(2)), s(1));
        assert_eq!(effective_timeout(None, s(2)), s(2));
        assert_eq!(effective_timeout(s(15), None), s(15));
    }
}
