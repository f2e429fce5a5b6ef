//! The per-request path: route, transform headers, call the cluster stack, transform the response.

use crate::body::{ProxyBody, RequestBody};
use crate::cluster::{Cluster, ClusterService};
use crate::error::ProxyError;
use crate::headers::{self, FORWARDED, VIA, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::router::{Route, RouteTable};
use http::header::{CONTENT_LENGTH, HOST, SERVER};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use otlp_mesh_chaos::{Fault, FaultBody, FaultRegistry, FaultReset, FaultScope, FaultTarget};
use otlp_mesh_config::{ListenerConfig, Protocol};
use otlp_mesh_resilience::timeout::Timeout;
use otlp_mesh_telemetry::{ListenerMetrics, Registry, RouteMetrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use tower::ServiceExt;

/// The body of every response the proxy sends: upstream or proxy-made, possibly fault-wrapped
/// (once per fault layer: request scope outside the timeout, attempt scope inside).
pub type ResponseBody = FaultBody<FaultBody<ProxyBody>>;

/// Where a split entry sends requests, with the metric series and fault targets for that route and cluster.
#[derive(Debug)]
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<RouteMetrics>,
    request_faults: Arc<FaultTarget>,
    attempt_faults: Arc<FaultTarget>,
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
}

impl ListenerState {
    /// Compiles a listener's config against the snapshot's clusters.
    pub fn build(
        config: &ListenerConfig,
        clusters: &std::collections::BTreeMap<String, Arc<Cluster>>,
        registry: &Registry,
        faults: &FaultRegistry,
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
            Some(Target {
                cluster: c.clone(),
                metrics: registry.route(&name, route, cluster),
                request_faults: fault_target(FaultScope::Request, config.header_faults.clone()),
                attempt_faults: fault_target(FaultScope::Attempt, None),
            })
        })?;
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
            routes,
            config: config.clone(),
            name,
        })
    }
}

/// Handles one request end to end. Errors become responses, except an injected reset, which
/// hyper turns into a closed connection (HTTP/1.1) or a reset stream (h2).
pub async fn handle(
    state: Arc<ListenerState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, FaultReset> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    let Some(route) = state.routes.find(&parts) else {
        state.no_route.record(404, start.elapsed());
        return Ok(finish_error(&state, ProxyError::NoRoute));
    };
    let Some(target) = route.pick_target() else {
        state.no_route.record(503, start.elapsed());
        return Ok(finish_error(
            &state,
            ProxyError::NoEndpoints(route.name.clone()),
        ));
    };

    let limit = state.config.limits.max_request_body.map(|b| b.0);
    if let Some(limit) = limit {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            target.metrics.record(413, start.elapsed());
            return Ok(finish_error(&state, ProxyError::BodyTooLarge(limit)));
        }
    }

    prepare_request(
        &state,
        route,
        &mut parts,
        peer,
        target.cluster.config.protocol,
    );
    let upstream = Request::from_parts(parts, RequestBody::new(body, limit));
    // Built per request from shared parts (Arc clones, no allocation): outer to inner.
    let attempt = Fault::new(
        ClusterService(target.cluster.clone()),
        state.faults.clone(),
        target.attempt_faults.clone(),
    );
    let stack = Fault::new(
        Timeout::new(attempt, route.timeout),
        state.faults.clone(),
        target.request_faults.clone(),
    );
    match stack.oneshot(upstream).await {
        Ok(mut resp) => {
            // Answer in the client's protocol version, not the upstream's (e.g. HTTP/1.0).
            *resp.version_mut() = downstream_version;
            let headers = resp.headers_mut();
            headers::remove_hop_by_hop(headers, false);
            route.response_headers.apply(headers);
            finish_headers(&state, headers);
            target
                .metrics
                .record(resp.status().as_u16(), start.elapsed());
            Ok(resp)
        }
        Err(ProxyError::FaultReset(reset)) => {
            target.metrics.record(502, start.elapsed());
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
            target.metrics.record(e.status().as_u16(), start.elapsed());
            Ok(finish_error(&state, e))
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

fn finish_error(state: &ListenerState, e: ProxyError) -> Response<ResponseBody> {
    let mut resp = e.into_response();
    finish_headers(state, resp.headers_mut());
    resp.map(|b| FaultBody::inner(FaultBody::inner(b)))
}
