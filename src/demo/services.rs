//! The example services: `frontend`, `orders-v1`, `orders-v2` and `inventory`, each a small hyper server
//! on a loopback ephemeral port. Calls between services go through the proxy ("the mesh").

use super::client::{self, HttpClient};
use super::otlp::Tracer;
use anyhow::Context;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Header naming the service that answered; every response carries it.
pub(crate) const X_DEMO_SERVICE: HeaderName = HeaderName::from_static("x-demo-service");
/// Header naming the instance (`ip:port`) that answered, to make round robin visible.
pub(crate) const X_DEMO_INSTANCE: HeaderName = HeaderName::from_static("x-demo-instance");

/// Headers a service copies from its request onto the calls it makes, so one user request can be
/// followed across hops and a canary user stays on the canary.
const PROPAGATED: [HeaderName; 3] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-canary"),
];

/// How long `frontend` waits for `orders` (the proxy's route timeout, 2s, normally answers first).
const ORDERS_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `orders` waits for one inventory lookup before reporting the stock as unknown.
const INVENTORY_CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// The catalog `inventory` knows: sku, name, units in stock.
pub(crate) const CATALOG: [(&str, &str, u32); 5] = [
    ("sku-espresso", "Espresso beans 1kg", 42),
    ("sku-grinder", "Burr grinder", 7),
    ("sku-kettle", "Gooseneck kettle", 13),
    ("sku-filter", "Paper filters x100", 120),
    ("sku-mug", "Ceramic mug", 0),
];

/// The orders both versions of `orders` list: id, sku, quantity.
const ORDERS: [(&str, &str, u32); 3] = [
    ("ord-1001", "sku-espresso", 2),
    ("ord-1002", "sku-kettle", 1),
    ("ord-1003", "sku-mug", 4),
];

/// Which example service a server plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Frontend,
    OrdersV1,
    OrdersV2,
    Inventory,
}

impl Kind {
    /// Every kind, in the order clusters appear in the config.
    pub(crate) const ALL: [Kind; 4] = [
        Kind::OrdersV1,
        Kind::OrdersV2,
        Kind::Inventory,
        Kind::Frontend,
    ];

    /// Service (and cluster) name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::OrdersV1 => "orders-v1",
            Kind::OrdersV2 => "orders-v2",
            Kind::Inventory => "inventory",
        }
    }

    /// How many instances the demo runs (two of `orders-v1`, to show round robin).
    pub(crate) fn instances(self) -> usize {
        match self {
            Kind::OrdersV1 => 2,
            _ => 1,
        }
    }

    /// The latency and error behaviour the demo gives this service.
    pub(crate) fn profile(self) -> Profile {
        match self {
            Kind::Frontend => Profile {
                latency: Latency::new(2.0, 0.7),
                error_rate: 0.01,
            },
            Kind::OrdersV1 => Profile {
                latency: Latency::new(4.0, 0.8),
                error_rate: 0.01,
            },
            // The canary is a bit slower and fails a bit more often: visible in the metrics.
            Kind::OrdersV2 => Profile {
                latency: Latency::new(7.0, 0.9),
                error_rate: 0.03,
            },
            Kind::Inventory => Profile {
                latency: Latency::new(1.5, 0.6),
                error_rate: 0.01,
            },
        }
    }
}

/// Simulated work: how long a request takes and how often it fails.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Profile {
    pub latency: Latency,
    /// Fraction of requests answered with 500 or 503.
    pub error_rate: f64,
}

impl Profile {
    /// No delay and no failures (for tests).
    #[cfg(test)]
    pub(crate) fn quiet() -> Profile {
        Profile {
            latency: Latency::new(0.0, 0.0),
            error_rate: 0.0,
        }
    }

    /// The injected failure for one request, if any.
    fn fault(&self, rng: &mut fastrand::Rng) -> Option<StatusCode> {
        (rng.f64() < self.error_rate).then(|| {
            if rng.bool() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        })
    }
}

/// Log-normal latency: most requests take about the median, a few take many times longer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    /// Median in milliseconds.
    pub median_ms: f64,
    /// Spread of the logarithm; p99 ≈ median × e^(2.33·sigma).
    pub sigma: f64,
    /// Upper bound in milliseconds, so one unlucky draw cannot stall a request for long.
    pub max_ms: f64,
}

impl Latency {
    /// A log-normal with this median and spread, capped at 250 ms.
    pub(crate) const fn new(median_ms: f64, sigma: f64) -> Latency {
        Latency {
            median_ms,
            sigma,
            max_ms: 250.0,
        }
    }

    /// One draw.
    pub(crate) fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        // Box–Muller; u1 is in (0, 1] so its logarithm is finite.
        let u1 = 1.0 - rng.f64();
        let u2 = rng.f64();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let ms = (self.median_ms * (self.sigma * z).exp()).min(self.max_ms);
        Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::ZERO)
    }
}

/// Where the running example services listen.
#[derive(Clone, Debug, Default)]
pub(crate) struct Instances {
    pub all: Vec<(Kind, SocketAddr)>,
}

impl Instances {
    /// Addresses of every instance of `kind`.
    pub(crate) fn of(&self, kind: Kind) -> Vec<SocketAddr> {
        self.all
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, addr)| *addr)
            .collect()
    }
}

/// Starts every example service with its demo profile; they call each other through `mesh`.
pub(crate) async fn start_all(mesh: SocketAddr, tracer: Tracer) -> anyhow::Result<Instances> {
    let mut instances = Instances::default();
    for kind in Kind::ALL {
        for _ in 0..kind.instances() {
            let addr = spawn(kind, mesh, kind.profile(), tracer.clone()).await?;
            instances.all.push((kind, addr));
        }
    }
    Ok(instances)
}

/// Binds 127.0.0.1 on an ephemeral port and serves `kind` there as a background task.
pub(crate) async fn spawn(
    kind: Kind,
    mesh: SocketAddr,
    profile: Profile,
    tracer: Tracer,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .with_context(|| format!("binding a loopback port for demo service {}", kind.name()))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        kind,
        addr,
        instance: HeaderValue::from_str(&addr.to_string())?,
        mesh,
        profile,
        client: client::new(),
        tracer,
    });
    tokio::spawn(accept_loop(listener, state));
    tracing::debug!(service = kind.name(), %addr, "demo service listening");
    Ok(addr)
}

/// One service instance.
struct State {
    kind: Kind,
    addr: SocketAddr,
    instance: HeaderValue,
    /// The proxy, through which this service calls the others.
    mesh: SocketAddr,
    profile: Profile,
    client: HttpClient,
    /// The service's own spans (sent to the proxy's OTLP receiver).
    tracer: Tracer,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(service = state.kind.name(), %error, "demo service accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(|request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(service = state.kind.name(), %error, "demo connection ended with an error");
            }
        });
    }
}

/// What a request asks for, once its path is known to the service.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    Index,
    Shop,
    Orders,
    Catalog,
    Item(&'static str, &'static str, u32),
}

fn route(kind: Kind, path: &str) -> Option<Route> {
    if path == "/healthz" {
        return Some(Route::Health);
    }
    match kind {
        Kind::Frontend => match path {
            "/" | "/index.html" => Some(Route::Index),
            "/shop" | "/shop/" => Some(Route::Shop),
            _ => None,
        },
        Kind::OrdersV1 | Kind::OrdersV2 => match path {
            "/api/orders" | "/api/orders/" => Some(Route::Orders),
            _ => None,
        },
        Kind::Inventory => match path {
            "/inventory" | "/inventory/" => Some(Route::Catalog),
            _ => {
                let sku = path.strip_prefix("/inventory/")?;
                CATALOG
                    .iter()
                    .find(|(s, _, _)| *s == sku)
                    .map(|&(sku, name, stock)| Route::Item(sku, name, stock))
            }
        },
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let span = state.tracer.begin(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = serve(state, request, &span).await;
    if path != "/healthz" {
        state
            .tracer
            .end(state.kind, span, method.as_str(), &path, response.status());
    }
    response
}

async fn serve(
    state: &State,
    request: Request<Incoming>,
    span: &super::otlp::ActiveSpan,
) -> Response<Full<Bytes>> {
    let Some(route) = route(state.kind, request.uri().path()) else {
        let body = format!(
            "{{\"service\": \"{}\", \"error\": \"not found\", \"path\": {}}}",
            state.kind.name(),
            json_string(request.uri().path())
        );
        return reply(state, StatusCode::NOT_FOUND, JSON, body);
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            state,
            StatusCode::METHOD_NOT_ALLOWED,
            JSON,
            error_json(state, "method not allowed"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if route == Route::Health {
        return reply(state, StatusCode::OK, TEXT, "ok\n");
    }

    // Simulated work, then maybe a simulated failure.
    let (delay, fault) = {
        let mut rng = fastrand::Rng::new();
        (
            state.profile.latency.sample(&mut rng),
            state.profile.fault(&mut rng),
        )
    };
    tokio::time::sleep(delay).await;
    if let Some(status) = fault {
        return reply(state, status, JSON, error_json(state, "simulated failure"));
    }

    let mut forward = propagated(request.headers());
    span.inject(&mut forward);
    match route {
        Route::Index => reply(state, StatusCode::OK, HTML, index_page(state)),
        Route::Shop => shop(state, forward).await,
        Route::Orders => orders(state, forward).await,
        Route::Catalog => reply(state, StatusCode::OK, JSON, catalog_json(state)),
        Route::Item(sku, name, stock) => {
            reply(state, StatusCode::OK, JSON, item_json(sku, name, stock))
        }
        Route::Health => reply(state, StatusCode::OK, TEXT, "ok\n"),
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

fn reply(
    state: &State,
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(X_DEMO_SERVICE, HeaderValue::from_static(state.kind.name()));
    headers.insert(X_DEMO_INSTANCE, state.instance.clone());
    response
}

fn error_json(state: &State, message: &str) -> String {
    format!(
        "{{\"service\": \"{}\", \"error\": {}}}",
        state.kind.name(),
        json_string(message)
    )
}

fn propagated(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        if let Some(value) = headers.get(&name) {
            out.insert(name, value.clone());
        }
    }
    out
}

fn index_page(state: &State) -> String {
    format!(
        "<!doctype html>
<html>
<head><title>otlp-mesh demo shop</title></head>
<body>
<h1>otlp-mesh demo shop</h1>
<p>Served by <b>frontend</b> ({addr}) through the otlp-mesh proxy.</p>
<ul>
<li><a href=\"/shop\">/shop</a>: frontend calls orders through the mesh; orders calls inventory through the mesh</li>
<li><a href=\"/api/orders\">/api/orders</a>: 90% orders-v1, 10% orders-v2; with header <code>x-canary: true</code> always orders-v2</li>
<li><a href=\"/inventory\">/inventory</a>: the catalog; <a href=\"/inventory/sku-espresso\">/inventory/sku-espresso</a> for one item</li>
</ul>
</body>
</html>
",
        addr = state.addr
    )
}

/// `frontend` GET /shop: asks `orders` (through the mesh) and summarises the answer.
async fn shop(state: &State, forward: HeaderMap) -> Response<Full<Bytes>> {
    let uri = format!("http://{}/api/orders", state.mesh);
    let started = Instant::now();
    let result = client::get(&state.client, &uri, forward, ORDERS_CALL_TIMEOUT).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(orders) if orders.status.is_success() => {
            let body = String::from_utf8_lossy(&orders.body);
            let summary = format!(
                "{{\"service\": \"frontend\", \"page\": \"shop\", \"orders\": {{\"status\": {}, \"served_by\": {}, \
                 \"instance\": {}, \"count\": {}, \"degraded\": {}, \"elapsed_ms\": {:.1}}}}}\n",
                orders.status.as_u16(),
                json_string(orders.header("x-demo-service")),
                json_string(orders.header("x-demo-instance")),
                body.matches("\"id\":").count(),
                body.contains("\"degraded\": true"),
                elapsed_ms,
            );
            reply(state, StatusCode::OK, JSON, summary)
        }
        Ok(orders) => {
            let body = format!(
                "{{\"service\": \"frontend\", \"error\": \"orders failed\", \"upstream_status\": {}, \
                 \"served_by\": {}, \"elapsed_ms\": {:.1}}}\n",
                orders.status.as_u16(),
                json_string(orders.header("x-demo-service")),
                elapsed_ms,
            );
            reply(state, StatusCode::BAD_GATEWAY, JSON, body)
        }
        Err(error) => {
            let body = format!(
                "{{\"service\": \"frontend\", \"error\": {}, \"elapsed_ms\": {:.1}}}\n",
                json_string(&format!("orders unreachable: {error:#}")),
                elapsed_ms,
            );
            reply(state, StatusCode::BAD_GATEWAY, JSON, body)
        }
    }
}

/// `orders` GET /api/orders: lists the orders, asking `inventory` (through the mesh) for each sku's stock.
async fn orders(state: &State, forward: HeaderMap) -> Response<Full<Bytes>> {
    let mut lookups = tokio::task::JoinSet::new();
    for (i, (_, sku, _)) in ORDERS.iter().enumerate() {
        let client = state.client.clone();
        let uri = format!("http://{}/inventory/{sku}", state.mesh);
        let headers = forward.clone();
        lookups.spawn(async move { (i, stock_lookup(&client, &uri, headers).await) });
    }
    let mut stock: [Option<u64>; ORDERS.len()] = [None; ORDERS.len()];
    while let Some(done) = lookups.join_next().await {
        if let Ok((i, in_stock)) = done
            && let Some(slot) = stock.get_mut(i)
        {
            *slot = in_stock;
        }
    }

    let v2 = state.kind == Kind::OrdersV2;
    let mut items = String::new();
    for (i, ((id, sku, qty), in_stock)) in ORDERS.iter().zip(stock).enumerate() {
        if i > 0 {
            items.push_str(", ");
        }
        let in_stock = in_stock.map_or_else(|| "null".to_string(), |n| n.to_string());
        let _ = write!(
            items,
            "{{\"id\": \"{id}\", \"sku\": \"{sku}\", \"qty\": {qty}, \"in_stock\": {in_stock}"
        );
        if v2 {
            // v2's new feature: a delivery estimate.
            let _ = write!(items, ", \"eta_days\": {}", 1 + i * 2);
        }
        items.push('}');
    }
    let body = format!(
        "{{\"service\": \"{}\", \"version\": \"{}\", \"instance\": {}, \"orders\": [{items}], \"degraded\": {}}}\n",
        state.kind.name(),
        if v2 { "v2" } else { "v1" },
        json_string(&state.addr.to_string()),
        stock.iter().any(Option::is_none),
    );
    reply(state, StatusCode::OK, JSON, body)
}

/// Units in stock for one sku per `inventory`, or `None` when the lookup failed.
async fn stock_lookup(client: &HttpClient, uri: &str, headers: HeaderMap) -> Option<u64> {
    match client::get(client, uri, headers, INVENTORY_CALL_TIMEOUT).await {
        Ok(response) if response.status.is_success() => {
            json_u64_field(&String::from_utf8_lossy(&response.body), "in_stock")
        }
        Ok(response) => {
            tracing::debug!(%uri, status = %response.status, "demo inventory lookup failed");
            None
        }
        Err(error) => {
            tracing::debug!(%uri, error = format!("{error:#}"), "demo inventory lookup failed");
            None
        }
    }
}

fn catalog_json(state: &State) -> String {
    let items: Vec<String> = CATALOG
        .iter()
        .map(|&(sku, name, stock)| item_json(sku, name, stock).trim_end().to_string())
        .collect();
    format!(
        "{{\"service\": \"{}\", \"items\": [{}]}}\n",
        state.kind.name(),
        items.join(", ")
    )
}

fn item_json(sku: &str, name: &str, in_stock: u32) -> String {
    format!(
        "{{\"sku\": {}, \"name\": {}, \"in_stock\": {in_stock}}}\n",
        json_string(sku),
        json_string(name)
    )
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The unsigned integer value of `"field": N` in a flat JSON text.
fn json_u64_field(json: &str, field: &str) -> Option<u64> {
    let key = format!("\"{field}\"");
    let rest = &json[json.find(&key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantile `q` (0..=1) of sorted samples, in milliseconds.
    fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    }

    fn samples(latency: Latency, seed: u64) -> Vec<Duration> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut all: Vec<Duration> = (0..10_000).map(|_| latency.sample(&mut rng)).collect();
        all.sort();
        all
    }

    #[test]
    fn latency_median_and_p99_land_in_the_intended_ranges() {
        for kind in Kind::ALL {
            let latency = kind.profile().latency;
            let all = samples(latency, 7);
            let median = quantile_ms(&all, 0.5);
            let p99 = quantile_ms(&all, 0.99);
            // The median is the profile's, within sampling noise, and "a few ms".
            assert!(
                (median - latency.median_ms).abs() < latency.median_ms * 0.1,
                "{}: median {median:.2}ms, want ≈{}ms",
                kind.name(),
                latency.median_ms
            );
            assert!(
                (1.0..=10.0).contains(&median),
                "{}: median {median:.2}ms",
                kind.name()
            );
            // p99 matches the log-normal's: median × e^(2.326·sigma).
            let want_p99 = latency.median_ms * (2.326 * latency.sigma).exp();
            assert!(
                (p99 - want_p99).abs() < want_p99 * 0.2,
                "{}: p99 {p99:.2}ms, want ≈{want_p99:.2}ms",
                kind.name()
            );
            assert!(p99 > 2.5 * median, "{}: tail too short", kind.name());
            assert!(
                all.iter()
                    .all(|d| d.as_secs_f64() * 1000.0 <= latency.max_ms)
            );
        }
        // The orders services, whose latency users look at, have a tail of tens of ms.
        for kind in [Kind::OrdersV1, Kind::OrdersV2] {
            let p99 = quantile_ms(&samples(kind.profile().latency, 11), 0.99);
            assert!(
                (10.0..=100.0).contains(&p99),
                "{}: p99 {p99:.2}ms",
                kind.name()
            );
        }
        // v2 is the slower one.
        let v1 = quantile_ms(&samples(Kind::OrdersV1.profile().latency, 3), 0.5);
        let v2 = quantile_ms(&samples(Kind::OrdersV2.profile().latency, 3), 0.5);
        assert!(v2 > v1);
    }

    #[test]
    fn latency_sampler_survives_degenerate_profiles() {
        let mut rng = fastrand::Rng::with_seed(1);
        for latency in [
            Latency::new(0.0, 0.0),
            Latency::new(5.0, 50.0),
            Latency::new(-1.0, 1.0),
        ] {
            for _ in 0..1000 {
                assert!(latency.sample(&mut rng) <= Duration::from_millis(250));
            }
        }
    }

    #[test]
    fn error_rate_is_about_the_profile_rate() {
        let mut rng = fastrand::Rng::with_seed(5);
        for kind in Kind::ALL {
            let profile = kind.profile();
            let faults: Vec<StatusCode> = (0..10_000)
                .filter_map(|_| profile.fault(&mut rng))
                .collect();
            let rate = faults.len() as f64 / 10_000.0;
            assert!(
                (rate - profile.error_rate).abs() < 0.006,
                "{}: {rate}",
                kind.name()
            );
            assert!(
                faults
                    .iter()
                    .all(|s| *s == StatusCode::INTERNAL_SERVER_ERROR
                        || *s == StatusCode::SERVICE_UNAVAILABLE)
            );
        }
        assert!(Kind::OrdersV2.profile().error_rate > Kind::OrdersV1.profile().error_rate);
    }

    #[test]
    fn routes_accept_known_paths_only() {
        assert_eq!(route(Kind::Frontend, "/"), Some(Route::Index));
        assert_eq!(route(Kind::Frontend, "/shop"), Some(Route::Shop));
        assert_eq!(route(Kind::Frontend, "/api/orders"), None);
        assert_eq!(route(Kind::OrdersV2, "/api/orders"), Some(Route::Orders));
        assert_eq!(route(Kind::OrdersV1, "/api/ordersx"), None);
        assert_eq!(route(Kind::Inventory, "/inventory"), Some(Route::Catalog));
        assert_eq!(
            route(Kind::Inventory, "/inventory/sku-mug"),
            Some(Route::Item("sku-mug", "Ceramic mug", 0))
        );
        assert_eq!(route(Kind::Inventory, "/inventory/sku-mug/x"), None);
        assert_eq!(route(Kind::Inventory, "/inventory/nope"), None);
        assert_eq!(route(Kind::Inventory, ""), None);
        assert_eq!(route(Kind::Inventory, "/healthz"), Some(Route::Health));
    }

    #[test]
    fn json_helpers() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(
            json_u64_field("{\"sku\": \"x\", \"in_stock\": 42}", "in_stock"),
            Some(42)
        );
        assert_eq!(json_u64_field("{\"in_stock\":7}", "in_stock"), Some(7));
        assert_eq!(json_u64_field("{\"in_stock\": null}", "in_stock"), None);
        assert_eq!(json_u64_field("{}", "in_stock"), None);
        assert_eq!(json_u64_field("{\"in_stock\"", "in_stock"), None);
    }
}
