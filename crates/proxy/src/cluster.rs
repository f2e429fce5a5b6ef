//! Clusters: an endpoint set, a balancer, an optional circuit breaker and an upstream
//! connection pool, exposed as a tower service.

use crate::body::{ProxyBody, Received, RequestBodyError, UpstreamBody};
use crate::error::ProxyError;
use crate::pool::PoolError;
use crate::pool::h1::{H1Pool, H1Settings, LeanBody, Lease};
use crate::pool::h2::H2Pool;
use arc_swap::ArcSwap;
use http::{Request, Response, Uri};
use otlp_mesh_balance::{
    Algorithm, Balancer, Clock, EndpointOptions, EndpointSet, InFlight, MaglevConfig, Outcome,
    PickContext, RingHashConfig, SlowStart, hash_key,
};
use otlp_mesh_config::{BalancerKind, BreakerPolicy, ClusterConfig, Protocol, RoutePriority};
use otlp_mesh_discovery::SourceStatus;
use otlp_mesh_resilience::breaker::{BreakerConfig, CircuitBreakerLayer, ErrorRate};
use otlp_mesh_resilience::health::{CheckKind, HealthCheckConfig, HealthStats, StatusRanges};
use otlp_mesh_resilience::outlier::{
    FailurePercentage, Observation, OutlierConfig, OutlierDetector, OutlierStats, PanicGuard,
    SuccessRate,
};
use otlp_mesh_resilience::{Conditions, FailureKind};
use otlp_mesh_telemetry::ClusterMetrics;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

/// Upstream connections: HTTP/1.1 reused per endpoint, or one h2 connection per endpoint.
#[derive(Debug)]
enum Pool {
    Http1(Arc<H1Pool>),
    H2(Arc<H2Pool>),
}

impl Pool {
    /// Drops the connections of endpoints no longer in the cluster.
    fn retain(&self, live: &[std::net::SocketAddr]) {
        match self {
            Pool::Http1(p) => p.retain(live),
            Pool::H2(p) => p.retain(live),
        }
    }
}

/// Where the key of a hashing balancer comes from.
#[derive(Debug, Clone)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    fn parse(s: &str) -> Option<HashKey> {
        if s == "client_ip" {
            return Some(HashKey::ClientIp);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(h.trim().as_bytes())
                .ok()
                .map(HashKey::Header);
        }
        s.strip_prefix("cookie:")
            .map(|c| HashKey::Cookie(c.trim().to_string()))
    }

    /// The request's key, or `None` (the balancer then picks at random).
    fn of<B>(&self, req: &Request<B>) -> Option<u64> {
        match self {
            HashKey::ClientIp => req.extensions().get::<ClientIp>().map(|ip| match ip.0 {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            HashKey::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            HashKey::Cookie(name) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| hash_key(v.as_bytes()))
                }),
        }
    }
}

/// The client's address, attached to requests whose cluster or rate limit keys on it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// A named group of endpoints with its balancer, breaker, connection pool and counters.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub config: ClusterConfig,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    balancer: Arc<dyn Balancer>,
    algorithm: Algorithm,
    hash_key: Option<HashKey>,
    clock: Clock,
    discovery: Arc<SourceStatus>,
    pool: Arc<Pool>,
    breaker: Option<CircuitBreakerLayer>,
    breaker_high: Option<CircuitBreakerLayer>,
    health: HealthControl,
    pub metrics: Arc<ClusterMetrics>,
}

fn algorithm(config: &ClusterConfig) -> Algorithm {
    match config.balancer.value {
        BalancerKind::RoundRobin => Algorithm::RoundRobin,
        BalancerKind::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        BalancerKind::LeastRequest => Algorithm::LeastRequest,
        BalancerKind::P2cEwma => Algorithm::PeakEwma,
        BalancerKind::Random => Algorithm::Random,
        BalancerKind::RingHash => Algorithm::RingHash(RingHashConfig {
            min_ring_size: config.min_ring_size,
            ..RingHashConfig::default()
        }),
        BalancerKind::Adaptive => Algorithm::Adaptive(adaptive_config(config)),
        BalancerKind::Maglev => Algorithm::Maglev(MaglevConfig {
            table_size: usize::try_from(config.maglev_table_size).unwrap_or(65_537),
        }),
    }
}

/// The balance crate's adaptive settings for a cluster's `adaptive` config (defaults when absent).
fn adaptive_config(config: &ClusterConfig) -> otlp_mesh_balance::AdaptiveConfig {
    let defaults = otlp_mesh_balance::AdaptiveConfig::default();
    let Some(a) = &config.adaptive else {
        return defaults;
    };
    let candidates = a
        .candidates
        .iter()
        .filter_map(|k| match k.value {
            BalancerKind::RoundRobin => Some(Algorithm::RoundRobin),
            BalancerKind::WeightedRoundRobin => Some(Algorithm::WeightedRoundRobin),
            BalancerKind::LeastRequest => Some(Algorithm::LeastRequest),
            BalancerKind::P2cEwma => Some(Algorithm::PeakEwma),
            BalancerKind::Random => Some(Algorithm::Random),
            // Validation refuses the rest as candidates.
            _ => None,
        })
        .collect();
    otlp_mesh_balance::AdaptiveConfig {
        candidates,
        window: a.window.value.into(),
        evaluation_interval: a.evaluation_interval.into(),
        min_dwell: a.min_dwell.into(),
        min_improvement: a.min_improvement.value,
        min_gain: a.min_gain.into(),
        min_samples: a.min_samples,
        ..defaults
    }
}

/// The resilience crate's breaker settings for a cluster's `circuit_breaker` config.
fn breaker_config(name: &str, p: &BreakerPolicy) -> BreakerConfig {
    let limit = |n: u32| (n > 0).then_some(n);
    BreakerConfig {
        name: name.to_string(),
        max_active: limit(p.max_requests),
        max_pending: limit(p.max_pending),
        max_retries: limit(p.max_retries),
        consecutive_failures: limit(p.consecutive_failures),
        error_rate: p.error_rate.as_ref().map(|r| ErrorRate {
            threshold: r.threshold / 100.0,
            min_requests: r.min_requests,
            window: r.window.into(),
            ..ErrorRate::default()
        }),
        open_base: p.open_for.into(),
        open_max: p.max_open_for.into(),
        half_open_probes: p.half_open_probes,
        failure_on: p
            .on
            .as_ref()
            .and_then(|on| Conditions::parse(on).ok())
            .unwrap_or_else(Conditions::default_breaker),
    }
}

impl Cluster {
    /// Builds a cluster from config: resolves its discovery source and creates its pool.
    pub fn new(config: &ClusterConfig, metrics: Arc<ClusterMetrics>) -> Self {
        let name = &config.name.value;
        let discovered = otlp_mesh_discovery::spawn(name, &config.discovery);
        let initial = discovered.updates.borrow().clone();
        let clock = Clock::system();
        let options = EndpointOptions {
            ewma_decay: config.ewma.decay.into(),
            default_rtt: config.ewma.default_rtt.into(),
        };
        let endpoints = EndpointSet::from_weighted(initial.iter().copied(), options, clock.now());
        let algorithm = algorithm(config);
        let balancer: Arc<dyn Balancer> =
            Arc::from(algorithm.build(SlowStart::new(config.slow_start.into())));
        balancer.prepare(&endpoints);
        if let Some(a) = balancer.as_adaptive() {
            a.set_cluster(name);
        }
        let pool = match config.protocol {
            Protocol::H2 => Pool::H2(Arc::new(H2Pool::new(config.connect_timeout.into()))),
            Protocol::Http1 => Pool::Http1(H1Pool::new(H1Settings {
                connect_timeout: config.connect_timeout.into(),
                idle_timeout: config.pool.idle_timeout.into(),
                max_idle: config.pool.max_idle_per_endpoint,
                clock: clock.clone(),
            })),
        };
        let pool = Arc::new(pool);
        let breaker = config
            .circuit_breaker
            .as_ref()
            .map(|p| CircuitBreakerLayer::new(breaker_config(&config.name.value, p)));
        let breaker_high = config
            .circuit_breaker
            .as_ref()
            .and_then(|p| p.high_priority.as_deref())
            .map(|p| {
                CircuitBreakerLayer::new(breaker_config(&format!("{}/high", config.name.value), p))
            });
        let endpoints = Arc::new(ArcSwap::from_pointee(endpoints));
        let mut health = HealthControl::start(config, &endpoints, &clock);
        if tokio::runtime::Handle::try_current().is_ok() {
            health.tasks.push(tokio::spawn(follow_discovery(
                name.clone(),
                discovered.updates,
                endpoints.clone(),
                balancer.clone(),
                Arc::downgrade(&pool),
                clock.clone(),
            )));
            if let Some(a) = balancer.as_adaptive() {
                let every = a.config().evaluation_interval;
                health.tasks.push(tokio::spawn(evaluate_adaptive(
                    Arc::downgrade(&balancer),
                    endpoints.clone(),
                    clock.clone(),
                    every,
                )));
            }
        }
        Cluster {
            name: config.name.value.clone(),
            config: config.clone(),
            endpoints,
            health,
            balancer,
            hash_key: config
                .hash_key
                .as_ref()
                .and_then(|k| HashKey::parse(&k.value)),
            algorithm,
            clock,
            discovery: discovered.status,
            pool,
            breaker,
            breaker_high,
            metrics,
        }
    }

    /// Active health-check counters, when the cluster has a `health_check`.
    pub fn health_stats(&self) -> Option<&HealthStats> {
        self.health.checks.as_deref()
    }

    /// Outlier-detection counters, when the cluster has `outlier_detection`.
    pub fn outlier_stats(&self) -> Option<&OutlierStats> {
        self.health.outlier.as_deref().map(OutlierDetector::stats)
    }

    /// The panic threshold's state, when the cluster has `outlier_detection`.
    pub fn panic_guard(&self) -> Option<&PanicGuard> {
        self.health.panic.as_deref()
    }

    /// The discovery source's state (kind, health, updates, last error).
    pub fn discovery(&self) -> &SourceStatus {
        &self.discovery
    }

    /// The adaptive balancer, when the cluster uses `balancer: adaptive`.
    pub fn adaptive(&self) -> Option<&otlp_mesh_balance::Adaptive> {
        self.balancer.as_adaptive()
    }

    /// Completes an attempt's in-flight record (and feeds the adaptive balancer's windows).
    fn complete(&self, guard: &mut InFlight, outcome: Outcome) {
        match self.balancer.as_adaptive() {
            Some(a) => a.complete(guard, outcome, self.clock.now()),
            None => guard.complete(outcome),
        }
    }

    /// The endpoint set in use now.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    pub fn balancer_name(&self) -> &'static str {
        self.balancer.name()
    }

    pub fn discovery_kind(&self) -> &'static str {
        self.discovery.kind()
    }

    /// The circuit breaker for routes of this priority, when the cluster has one
    /// (high-priority routes use the default breaker unless `high_priority` is configured).
    pub fn breaker(&self, priority: RoutePriority) -> Option<&CircuitBreakerLayer> {
        match priority {
            RoutePriority::High => self.breaker_high.as_ref().or(self.breaker.as_ref()),
            RoutePriority::Default => self.breaker.as_ref(),
        }
    }

    /// Every breaker with its priority label, for `/clusters` and `/metrics`.
    pub fn breakers(&self) -> impl Iterator<Item = (&'static str, &CircuitBreakerLayer)> {
        let default = self.breaker.iter().map(|b| ("default", b));
        default.chain(self.breaker_high.iter().map(|b| ("high", b)))
    }

    /// Whether requests to this cluster need the client address attached.
    pub fn needs_client_ip(&self) -> bool {
        matches!(self.hash_key, Some(HashKey::ClientIp))
    }

    /// The clock endpoint statistics are kept on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Sends a request (whose URI holds the path and query) to an endpoint picked by the balancer.
    pub fn call(self: &Arc<Self>, mut req: Request<UpstreamBody>) -> ClusterFuture {
        let set = self.endpoints.load();
        let now = self.clock.now();
        let mut ctx = PickContext::new(now);
        if self.algorithm.uses_key()
            && let Some(key) = self.hash_key.as_ref().and_then(|k| k.of(&req))
        {
            ctx = ctx.with_key(key);
        }
        let Some(pick) = self.balancer.pick(&set, &ctx) else {
            self.metrics
                .no_endpoint_total
                .fetch_add(1, Ordering::Relaxed);
            return ClusterFuture::failed(ProxyError::NoEndpoints(self.name.clone()));
        };
        if pick.panic {
            self.metrics
                .panic_picks_total
                .fetch_add(1, Ordering::Relaxed);
        }
        let endpoint = pick.endpoint;
        let guard = endpoint.start_at(&self.clock, now);
        let inner = match &*self.pool {
            Pool::Http1(pool) => {
                origin_form(&mut req, &endpoint.authority);
                // The pool runs on the cluster's clock: the pick's time serves its idle check.
                if http_body::Body::is_end_stream(req.body()) {
                    Upstream::Lean {
                        inner: Box::pin(pool.send_lean(endpoint.addr, req, now)),
                    }
                } else {
                    Upstream::Http1 {
                        inner: Box::pin(pool.send(endpoint.addr, req, now)),
                    }
                }
            }
            Pool::H2(pool) => {
                // h2 sends the URI authority as `:authority`: use the client's host (after any
                // rewrite) and drop `host`, which must not disagree with it (RFC 9113 §8.3.1).
                let host = req.headers_mut().remove(http::header::HOST);
                let authority = host
                    .as_ref()
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                    .unwrap_or_else(|| endpoint.authority.clone());
                if let Err(e) = set_upstream_uri(&mut req, authority) {
                    return ClusterFuture::failed(e);
                }
                let (pool, addr) = (pool.clone(), endpoint.addr);
                Upstream::H2 {
                    inner: Box::pin(async move { pool.send(addr, req).await }),
                }
            }
        };
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.active_requests.fetch_add(1, Ordering::Relaxed);
        ClusterFuture {
            state: State::Pending {
                inner,
                guard: Some(guard),
                cluster: self.clone(),
            },
        }
    }
}

/// Prepares a request for an HTTP/1.1 upstream: the origin form (`/path?query`) as target, and a
/// `Host` header — the client's, else the URI's authority (requests that came over h2), else the
/// endpoint's.
fn origin_form<B>(req: &mut Request<B>, endpoint: &http::uri::Authority) {
    if !req.headers().contains_key(http::header::HOST) {
        let host = req.uri().authority().unwrap_or(endpoint);
        if let Ok(v) = http::HeaderValue::from_str(host.as_str()) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
    }
}

/// Makes the request URI absolute (`http://{authority}{path}`), as the upstream clients need.
fn set_upstream_uri<B>(
    req: &mut Request<B>,
    authority: http::uri::Authority,
) -> Result<(), ProxyError> {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| upstream_error(format!("bad upstream uri: {e}"), FailureKind::Other))?;
    Ok(())
}

fn upstream_error(message: String, kind: FailureKind) -> ProxyError {
    ProxyError::Upstream { message, kind }
}

type H1Future = Pin<
    Box<dyn Future<Output = Result<(Response<hyper::body::Incoming>, Lease), PoolError>> + Send>,
>;
type LeanFuture = Pin<Box<dyn Future<Output = Result<Response<LeanBody>, PoolError>> + Send>>;
type H2Future =
    Pin<Box<dyn Future<Output = Result<Response<hyper::body::Incoming>, PoolError>> + Send>>;

/// An upstream exchange up to its response head (and, for HTTP/1.1 through hyper, the
/// connection's lease).
enum Upstream {
    Http1 {
        inner: H1Future,
    },
    /// HTTP/1.1 without a request body, driven by this future and then by the response body.
    Lean {
        inner: LeanFuture,
    },
    H2 {
        inner: H2Future,
    },
}

impl Future for Upstream {
    type Output = Result<Response<Received>, PoolError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Upstream::Http1 { inner } => inner
                .as_mut()
                .poll(cx)
                .map_ok(|(resp, lease)| resp.map(|b| Received::Hyper(b, Some(lease)))),
            Upstream::Lean { inner } => inner.as_mut().poll(cx).map_ok(|r| r.map(Received::Lean)),
            Upstream::H2 { inner } => inner
                .as_mut()
                .poll(cx)
                .map_ok(|resp| resp.map(|b| Received::Hyper(b, None))),
        }
    }
}

/// The cluster as a tower service, so per-route layers (timeout, retry, breaker, faults) wrap it.
#[derive(Clone, Debug)]
pub struct ClusterService(pub Arc<Cluster>);

impl tower::Service<Request<UpstreamBody>> for ClusterService {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ClusterFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<UpstreamBody>) -> ClusterFuture {
        self.0.call(req)
    }
}

pin_project! {
    /// Response future of [`ClusterService`]: maps pool errors to [`ProxyError`].
    pub struct ClusterFuture {
        #[pin]
        state: State,
    }

    impl PinnedDrop for ClusterFuture {
        // Dropped before the response head (route timeout, client gone): settle the counters
        // and let the adaptive balancer see the attempt, which it would otherwise never learn of.
        fn drop(this: Pin<&mut Self>) {
            if let StateProj::Pending { guard, cluster, .. } = this.project().state.project()
                && let Some(mut guard) = guard.take()
            {
                cluster.metrics.active_requests.fetch_sub(1, Ordering::Relaxed);
                cluster.complete(&mut guard, Outcome::Cancelled);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Pending {
            #[pin]
            inner: Upstream,
            guard: Option<InFlight>,
            cluster: Arc<Cluster>,
        },
        Failed { error: Option<ProxyError> },
    }
}

impl ClusterFuture {
    fn failed(e: ProxyError) -> Self {
        ClusterFuture {
            state: State::Failed { error: Some(e) },
        }
    }
}

impl Future for ClusterFuture {
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed { error } => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                upstream_error("polled after completion".into(), FailureKind::Other)
            }))),
            StateProj::Pending {
                inner,
                guard,
                cluster,
            } => {
                let result = match inner.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                cluster
                    .metrics
                    .active_requests
                    .fetch_sub(1, Ordering::Relaxed);
                let Some(mut guard) = guard.take() else {
                    return Poll::Ready(Err(upstream_error(
                        "polled after completion".into(),
                        FailureKind::Other,
                    )));
                };
                Poll::Ready(match result {
                    Ok(resp) => {
                        // Latency is recorded at the response head: a long body is not a slow endpoint.
                        let outcome = if resp.status().is_server_error() {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        cluster.complete(&mut guard, outcome);
                        cluster.health.observe(
                            guard.endpoint().addr,
                            Observation::Status(resp.status().as_u16()),
                        );
                        Ok(resp.map(|b| ProxyBody::received(b, guard)))
                    }
                    Err(e) => {
                        cluster.complete(&mut guard, Outcome::Failure);
                        guard.endpoint().record_failure();
                        let err = classify(e, &guard, cluster);
                        let seen = match &err {
                            ProxyError::ConnectFailed { .. } => Some(Observation::ConnectFailure),
                            ProxyError::Upstream { .. } => Some(Observation::TransportError),
                            _ => None,
                        };
                        if let Some(seen) = seen {
                            cluster.health.observe(guard.endpoint().addr, seen);
                        }
                        Err(err)
                    }
                })
            }
        }
    }
}

/// Turns a pool error into the proxy error the client should see.
fn classify(e: PoolError, guard: &InFlight, cluster: &Cluster) -> ProxyError {
    let endpoint = guard.endpoint().addr.to_string();
    let connect_failed = |reason: String| {
        cluster
            .metrics
            .connect_errors_total
            .fetch_add(1, Ordering::Relaxed);
        ProxyError::ConnectFailed {
            endpoint: endpoint.clone(),
            reason,
        }
    };
    let err: &(dyn std::error::Error + 'static) = match &e {
        PoolError::Connect(reason) => return connect_failed(reason.clone()),
        PoolError::Request(e) => e,
        PoolError::Exchange(e) => e.as_ref(),
    };
    let mut kind = FailureKind::Other;
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(RequestBodyError::TooLarge(t)) = err.downcast_ref::<RequestBodyError>() {
            return ProxyError::BodyTooLarge(t.0);
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            kind = match h2.reason() {
                Some(h2::Reason::REFUSED_STREAM) => FailureKind::RefusedStream,
                _ => FailureKind::Reset,
            };
        } else if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
            && kind == FailureKind::Other
        {
            kind = FailureKind::Reset;
        } else if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            kind = FailureKind::Reset;
        }
        source = err.source();
    }
    upstream_error(format!("{endpoint}: {}", root_cause(err)), kind)
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// A cluster's health control loops (active checks, outlier detection) and what the data path
/// and `/metrics` read of them. The loops hold the endpoint set, not the cluster; dropping the
/// cluster drops this and stops them.
#[derive(Debug, Default)]
struct HealthControl {
    checks: Option<Arc<HealthStats>>,
    outlier: Option<Arc<OutlierDetector>>,
    panic: Option<Arc<PanicGuard>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HealthControl {
    /// Spawns the loops the config asks for (none outside a Tokio runtime, e.g. in unit tests).
    fn start(config: &ClusterConfig, endpoints: &Arc<ArcSwap<EndpointSet>>, clock: &Clock) -> Self {
        let mut control = HealthControl::default();
        let name = &config.name.value;
        if config.health_check.is_none() && config.outlier_detection.is_none() {
            return control;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(cluster = %name, "no runtime: health checks and outlier detection are off");
            return control;
        }
        let panic = config
            .outlier_detection
            .as_ref()
            .map(|o| Arc::new(PanicGuard::new(name.clone(), o.panic_threshold)));
        if let Some(o) = &config.outlier_detection {
            let (detector, triggers) =
                OutlierDetector::new(outlier_config(name, o), &endpoints.load());
            control.tasks.push(otlp_mesh_resilience::outlier::spawn(
                detector.clone(),
                triggers,
                endpoints.clone(),
                clock.clone(),
                panic.clone(),
            ));
            control.outlier = Some(detector);
        }
        if let Some(h) = &config.health_check
            && let Some(checks) = health_config(name, h)
        {
            let stats = Arc::new(HealthStats::default());
            control.tasks.push(otlp_mesh_resilience::health::spawn(
                checks,
                endpoints.clone(),
                clock.clone(),
                stats.clone(),
                panic.clone(),
            ));
            control.checks = Some(stats);
        }
        control.panic = panic;
        control
    }

    /// Feeds the outlier detector (a map lookup and a few atomics).
    fn observe(&self, addr: std::net::SocketAddr, seen: Observation) {
        if let Some(d) = &self.outlier {
            d.observe(addr, seen);
        }
    }
}

impl Drop for HealthControl {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The resilience crate's outlier settings for a cluster's `outlier_detection` config.
fn outlier_config(name: &str, o: &otlp_mesh_config::OutlierPolicy) -> OutlierConfig {
    let on = |n: u32| (n > 0).then_some(n);
    OutlierConfig {
        cluster: name.to_string(),
        consecutive_5xx: on(o.consecutive_5xx),
        consecutive_gateway_errors: on(o.consecutive_gateway_errors),
        interval: o.interval.into(),
        base_ejection_time: o.base_ejection_time.into(),
        max_ejection_time: o.max_ejection_time.into(),
        max_ejection_percent: o.max_ejection_percent,
        success_rate: o.success_rate.as_ref().map(|s| SuccessRate {
            minimum_hosts: s.minimum_hosts,
            request_volume: s.request_volume,
            stdev_factor: s.stdev_factor,
        }),
        failure_percentage: o.failure_percentage.as_ref().map(|f| FailurePercentage {
            threshold: f.threshold,
            minimum_hosts: f.minimum_hosts,
            request_volume: f.request_volume,
        }),
    }
}

/// The resilience crate's check settings for a cluster's `health_check` config (validated, so
/// `None` only on a bug: the cluster then runs without checks).
fn health_config(name: &str, h: &otlp_mesh_config::HealthCheckPolicy) -> Option<HealthCheckConfig> {
    let kind = if let Some(http) = &h.http {
        CheckKind::Http {
            path: http.path.clone(),
            host: http.host.clone(),
            expected: StatusRanges::parse(&http.expected).ok()?,
        }
    } else if let Some(g) = &h.grpc {
        CheckKind::Grpc {
            service: g.service.clone(),
            authority: g.authority.clone(),
        }
    } else {
        CheckKind::Tcp
    };
    Some(HealthCheckConfig {
        cluster: name.to_string(),
        kind,
        interval: h.interval.into(),
        timeout: h.timeout.into(),
        jitter: h.jitter / 100.0,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        port: h.port,
    })
}

/// Applies each endpoint list discovery publishes; ends when the source is gone (static sources
/// publish nothing) or the cluster is dropped (the task is aborted).
async fn follow_discovery(
    cluster: String,
    mut updates: tokio::sync::watch::Receiver<otlp_mesh_discovery::Endpoints>,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    balancer: Arc<dyn Balancer>,
    pool: std::sync::Weak<Pool>,
    clock: Clock,
) {
    while updates.changed().await.is_ok() {
        let list = updates.borrow_and_update().clone();
        let current = endpoints.load_full();
        if current.has_same_endpoints(list.iter().copied()) {
            continue;
        }
        // `update` keeps the stats (and in-flight counts) of endpoints that stay.
        let next = current.update(list.iter().copied(), clock.now());
        balancer.prepare(&next);
        endpoints.store(Arc::new(next));
        if let Some(pool) = pool.upgrade() {
            let live: Vec<std::net::SocketAddr> = list.iter().map(|(addr, _)| *addr).collect();
            pool.retain(&live);
        }
        tracing::info!(%cluster, endpoints = list.len(), "endpoints updated from discovery");
    }
}

/// Scores the adaptive balancer's candidates every `every`, off the request path.
async fn evaluate_adaptive(
    balancer: std::sync::Weak<dyn Balancer>,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    clock: Clock,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(balancer) = balancer.upgrade() else {
            return;
        };
        if let Some(a) = balancer.as_adaptive() {
            // A switch is logged by the balancer itself; counters are read by /metrics.
            let _ = a.evaluate(&endpoints.load(), clock.now());
        }
    }
}
