//! Clusters: an endpoint set, a balancer and an upstream connection pool, exposed as a tower service.

use crate::body::{ProxyBody, RequestBody, RequestBodyError};
use crate::error::ProxyError;
use crate::h2pool::{H2Error, H2Pool};
use arc_swap::ArcSwap;
use http::{Request, Response, Uri};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use otlp_mesh_balance::{Balancer, EndpointSet, InFlight, RoundRobin};
use otlp_mesh_config::{BalancerKind, ClusterConfig, Protocol};
use otlp_mesh_discovery::Source;
use otlp_mesh_telemetry::ClusterMetrics;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

type Http1Pool = Client<HttpConnector, RequestBody>;

/// Upstream connections: HTTP/1.1 pooled by endpoint authority, or one h2 connection per endpoint.
// One per cluster and never moved after construction, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Pool {
    Http1(Http1Pool),
    H2(Arc<H2Pool>),
}

/// A named group of endpoints with its balancer, connection pool and counters.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub config: ClusterConfig,
    endpoints: ArcSwap<EndpointSet>,
    balancer: Box<dyn Balancer>,
    source: Source,
    pool: Pool,
    pub metrics: Arc<ClusterMetrics>,
}

impl Cluster {
    /// Builds a cluster from config: resolves its discovery source and creates its pool.
    pub fn new(config: &ClusterConfig, metrics: Arc<ClusterMetrics>) -> Self {
        let source = Source::from_config(&config.name.value, &config.discovery);
        let endpoints = EndpointSet::from_addrs(source.current());
        let balancer: Box<dyn Balancer> = match config.balancer {
            BalancerKind::RoundRobin => Box::new(RoundRobin::default()),
        };
        let pool = match config.protocol {
            Protocol::H2 => Pool::H2(Arc::new(H2Pool::new(config.connect_timeout.into()))),
            Protocol::Http1 => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(config.connect_timeout.into()));
                connector.enforce_http(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(std::time::Duration::from(config.pool.idle_timeout))
                    .pool_max_idle_per_host(config.pool.max_idle_per_endpoint);
                Pool::Http1(builder.build(connector))
            }
        };
        Cluster {
            name: config.name.value.clone(),
            config: config.clone(),
            endpoints: ArcSwap::from_pointee(endpoints),
            balancer,
            source,
            pool,
            metrics,
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
        self.source.kind()
    }

    /// Sends a request (whose URI holds the path and query) to an endpoint picked by the balancer.
    pub fn call(self: &Arc<Self>, mut req: Request<RequestBody>) -> ClusterFuture {
        let set = self.endpoints.load();
        let Some(endpoint) = self.balancer.pick(&set) else {
            self.metrics
                .no_endpoint_total
                .fetch_add(1, Ordering::Relaxed);
            return ClusterFuture::failed(ProxyError::NoEndpoints(self.name.clone()));
        };
        let guard = endpoint.start();
        let inner = match &self.pool {
            Pool::Http1(client) => {
                // The HTTP/1.1 pool connects to the URI's authority; the Host header carries the name.
                if let Err(e) = set_upstream_uri(&mut req, endpoint.authority.clone()) {
                    return ClusterFuture::failed(e);
                }
                Upstream::Http1 {
                    inner: client.request(req),
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
        .map_err(|e| ProxyError::Upstream(format!("bad upstream uri: {e}")))?;
    Ok(())
}

type H2Future =
    Pin<Box<dyn Future<Output = Result<Response<hyper::body::Incoming>, H2Error>> + Send>>;

pin_project! {
    #[project = UpstreamProj]
    enum Upstream {
        Http1 { #[pin] inner: hyper_util::client::legacy::ResponseFuture },
        H2 { inner: H2Future },
    }
}

/// Either pool's failure, before classification.
enum UpstreamError {
    Http1(hyper_util::client::legacy::Error),
    H2(H2Error),
}

impl Future for Upstream {
    type Output = Result<Response<hyper::body::Incoming>, UpstreamError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            UpstreamProj::Http1 { inner } => inner.poll(cx).map_err(UpstreamError::Http1),
            UpstreamProj::H2 { inner } => inner.as_mut().poll(cx).map_err(UpstreamError::H2),
        }
    }
}

/// The cluster as a tower service, so per-route layers (timeout, and later retry, breaker) wrap it.
#[derive(Clone, Debug)]
pub struct ClusterService(pub Arc<Cluster>);

impl tower::Service<Request<RequestBody>> for ClusterService {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ClusterFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> ClusterFuture {
        self.0.call(req)
    }
}

pin_project! {
    /// Response future of [`ClusterService`]: maps pool errors to [`ProxyError`].
    pub struct ClusterFuture {
        #[pin]
        state: State,
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
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| ProxyError::Upstream("polled after completion".into())))),
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
                let Some(guard) = guard.take() else {
                    return Poll::Ready(Err(ProxyError::Upstream(
                        "polled after completion".into(),
                    )));
                };
                Poll::Ready(match result {
                    Ok(resp) => Ok(resp.map(|b| ProxyBody::upstream(b, guard))),
                    Err(e) => {
                        guard.endpoint().record_failure();
                        Err(classify(e, guard, cluster))
                    }
                })
            }
        }
    }
}

/// Turns a pool error into the proxy error the client should see.
fn classify(e: UpstreamError, guard: InFlight, cluster: &Cluster) -> ProxyError {
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
        UpstreamError::Http1(e) if e.is_connect() => return connect_failed(root_cause(e)),
        UpstreamError::H2(H2Error::Connect(reason)) => return connect_failed(reason.clone()),
        UpstreamError::Http1(e) => e,
        UpstreamError::H2(e) => e,
    };
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(RequestBodyError::TooLarge(t)) = err.downcast_ref::<RequestBodyError>() {
            return ProxyError::BodyTooLarge(t.0);
        }
        source = err.source();
    }
    ProxyError::Upstream(format!("{endpoint}: {}", root_cause(err)))
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
