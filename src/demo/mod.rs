//! `otlp-mesh demo`: example services on loopback, the proxy config that fronts them, a guide of
//! things to try, and background traffic.
//!
//! - `services`: `frontend`, `orders-v1` (two instances), `orders-v2` and `inventory`, with realistic
//!   latency and a few failures; they call each other through the proxy.
//! - `config`: the proxy config (routing, a 90/10 canary split, a header route) and the guide.
//! - `traffic`: the background request generator.

mod client;
mod config;
mod otlp;
mod services;
mod traffic;

use anyhow::ensure;
use std::net::{Ipv4Addr, SocketAddr};

pub use traffic::spawn_traffic;

/// Example services started, and the proxy config that fronts them.
#[derive(Clone, Debug)]
pub struct Demo {
    /// Proxy config (YAML) with listener `edge` and the admin server on loopback.
    pub config_yaml: String,
    /// Text for the user: URLs and things to try.
    pub guide: String,
}

/// Starts the example services on 127.0.0.1 ephemeral ports (as tokio tasks on the current runtime) and returns
/// a proxy config with listener `edge` on 127.0.0.1:{port} and admin on 127.0.0.1:{admin_port}.
pub async fn start(port: u16, admin_port: u16) -> anyhow::Result<Demo> {
    // The services call the proxy at this port, and the guide prints both: they must be known now.
    ensure!(
        port != 0,
        "the demo needs a fixed proxy port (0 picks none)"
    );
    ensure!(
        admin_port != 0,
        "the demo needs a fixed admin port (0 picks none)"
    );
    ensure!(
        port != admin_port,
        "the proxy and admin ports must differ (both are {port})"
    );
    let mesh = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let otlp = config::Otlp {
        grpc: otlp_port(4317),
        http: otlp_port(4318),
    };
    let instances = services::start_all(mesh, otlp::Tracer::start(otlp.http)).await?;
    Ok(Demo {
        config_yaml: config::yaml(port, admin_port, &instances, &otlp),
        guide: config::guide(port, admin_port, &instances, &otlp),
    })
}

/// The OTLP standard port on loopback when free, else another free one (outside the ephemeral
/// range, where the demo's own connections could take it before the proxy binds it).
fn otlp_port(preferred: u16) -> SocketAddr {
    let standard = SocketAddr::from((Ipv4Addr::LOCALHOST, preferred));
    if std::net::TcpListener::bind(standard).is_ok() {
        return standard;
    }
    otlp_mesh_ports::free_listen_addr(Ipv4Addr::LOCALHOST.into()).unwrap_or(standard)
}

#[cfg(test)]
mod tests {
    use super::client::{self, Fetched};
    use super::services::{self, Kind, Profile};
    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};
    use std::collections::HashSet;
    use std::time::Duration;

    async fn get(addr: SocketAddr, path: &str) -> Fetched {
        get_with(addr, path, HeaderMap::new()).await
    }

    async fn get_with(addr: SocketAddr, path: &str, headers: HeaderMap) -> Fetched {
        client::get(
            &client::new(),
            &format!("http://{addr}{path}"),
            headers,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }

    fn json(f: &Fetched) -> serde_json::Value {
        serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", f.body))
    }

    /// A port nothing listens on (bound once, then released).
    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        l.local_addr().unwrap().port()
    }

    /// The services wired to each other directly (no proxy), without latency or failures:
    /// frontend → orders-v1 → inventory, and orders-v2 → inventory.
    async fn chain() -> [SocketAddr; 4] {
        let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port().await));
        let inventory = services::spawn(
            Kind::Inventory,
            nowhere,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let v1 = services::spawn(
            Kind::OrdersV1,
            inventory,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let v2 = services::spawn(
            Kind::OrdersV2,
            inventory,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let frontend = services::spawn(
            Kind::Frontend,
            v1,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        [frontend, v1, v2, inventory]
    }

    #[tokio::test]
    async fn each_service_answers_its_route_with_its_header() {
        let [frontend, v1, v2, inventory] = chain().await;

        let page = get(frontend, "/").await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.header("x-demo-service"), "frontend");
        assert!(page.header("content-type").starts_with("text/html"));
        assert!(String::from_utf8_lossy(&page.body).contains("/api/orders"));

        for (addr, name, version) in [(v1, "orders-v1", "v1"), (v2, "orders-v2", "v2")] {
            let orders = get(addr, "/api/orders").await;
            assert_eq!(orders.status, StatusCode::OK);
            assert_eq!(orders.header("x-demo-service"), name);
            assert_eq!(orders.header("x-demo-instance"), addr.to_string());
            let text = String::from_utf8_lossy(&orders.body).to_string();
            assert!(
                text.contains(&format!("\"version\": \"{version}\"")),
                "{text}"
            );
            let body = json(&orders);
            assert_eq!(body["service"], name);
            assert_eq!(body["degraded"], false);
            let list = body["orders"].as_array().unwrap();
            assert_eq!(list.len(), 3);
            // Stock came from inventory.
            assert_eq!(list[0]["sku"], "sku-espresso");
            assert_eq!(list[0]["in_stock"], 42);
            assert_eq!(list[2]["in_stock"], 0);
            assert_eq!(list[0].get("eta_days").is_some(), version == "v2");
        }

        let item = get(inventory, "/inventory/sku-kettle").await;
        assert_eq!(item.status, StatusCode::OK);
        assert_eq!(item.header("x-demo-service"), "inventory");
        assert_eq!(item.header("content-type"), "application/json");
        let body = json(&item);
        assert_eq!(body["sku"], "sku-kettle");
        assert_eq!(body["in_stock"], 13);
        let catalog = json(&get(inventory, "/inventory").await);
        assert_eq!(
            catalog["items"].as_array().unwrap().len(),
            services::CATALOG.len()
        );

        let shop = get(frontend, "/shop").await;
        assert_eq!(shop.status, StatusCode::OK);
        assert_eq!(shop.header("x-demo-service"), "frontend");
        let body = json(&shop);
        assert_eq!(body["orders"]["served_by"], "orders-v1");
        assert_eq!(body["orders"]["instance"], v1.to_string());
        assert_eq!(body["orders"]["count"], 3);
        assert_eq!(body["orders"]["degraded"], false);
    }

    #[tokio::test]
    async fn bad_input_gets_404_or_405_with_the_header() {
        let [frontend, v1, _, inventory] = chain().await;
        for (addr, path, name) in [
            (frontend, "/nope", "frontend"),
            (frontend, "/favicon.ico", "frontend"),
            (v1, "/api/orders/1/../x", "orders-v1"),
            (v1, "/", "orders-v1"),
            (inventory, "/inventory/sku-unknown", "inventory"),
            (inventory, "/inventory/sku-mug/extra", "inventory"),
            (inventory, "/inventory/%00%ff", "inventory"),
        ] {
            let r = get(addr, path).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{name} {path}");
            assert_eq!(r.header("x-demo-service"), name);
            json(&r);
        }
        let health = get(v1, "/healthz").await;
        assert_eq!(health.status, StatusCode::OK);

        let post = client::new()
            .request(
                http::Request::post(format!("http://{inventory}/inventory"))
                    .body(http_body_util::Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["x-demo-service"], "inventory");
    }

    #[tokio::test]
    async fn failing_downstreams_degrade_or_become_502() {
        let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port().await));
        // orders with no inventory: still lists orders, stock unknown.
        let orders = services::spawn(
            Kind::OrdersV2,
            nowhere,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let r = get(orders, "/api/orders").await;
        assert_eq!(r.status, StatusCode::OK);
        let body = json(&r);
        assert_eq!(body["degraded"], true);
        assert!(body["orders"][0]["in_stock"].is_null());
        // frontend with no orders: 502.
        let frontend = services::spawn(
            Kind::Frontend,
            nowhere,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let r = get(frontend, "/shop").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.header("x-demo-service"), "frontend");
        json(&r);
    }

    #[tokio::test]
    async fn canary_and_request_id_headers_are_propagated() {
        // frontend → a stand-in proxy that echoes what it got as the headers frontend reports.
        let (stub, _) = counting_proxy().await;
        let frontend = services::spawn(
            Kind::Frontend,
            stub,
            Profile::quiet(),
            otlp::Tracer::disabled(),
        )
        .await
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", HeaderValue::from_static("true"));
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        headers.insert("x-unrelated", HeaderValue::from_static("no"));
        let r = get_with(frontend, "/shop", headers).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = json(&r);
        assert_eq!(body["orders"]["served_by"], "canary=true");
        assert_eq!(body["orders"]["instance"], "request-id=abc-123");
    }

    /// Every cluster the config names, with the path its services answer.
    fn probe_path(cluster: &str) -> &'static str {
        match cluster {
            "frontend" => "/",
            "orders-v1" | "orders-v2" => "/api/orders",
            "inventory" => "/inventory/sku-espresso",
            other => panic!("unexpected cluster {other}"),
        }
    }

    #[tokio::test]
    async fn start_returns_a_valid_config_for_running_services() {
        let port = closed_port().await;
        let demo = start(port, 9901).await.unwrap();
        let config = otlp_mesh_config::parse_str(&demo.config_yaml, "demo")
            .unwrap_or_else(|errors| panic!("{errors:?}\n{}", demo.config_yaml));

        assert_eq!(config.admin.bind.value, "127.0.0.1:9901");
        assert_eq!(config.listeners.len(), 1);
        let edge = &config.listeners[0].value;
        assert_eq!(edge.name.value, "edge");
        assert_eq!(edge.bind.value, format!("127.0.0.1:{port}"));
        assert_eq!(edge.via.as_deref(), Some("otlp-mesh"));

        // Routes reference only clusters the config defines; every cluster is used.
        let defined: HashSet<&str> = config
            .clusters
            .iter()
            .map(|c| c.value.name.value.as_str())
            .collect();
        assert_eq!(
            defined,
            HashSet::from(["frontend", "orders-v1", "orders-v2", "inventory"])
        );
        let mut used = HashSet::new();
        for route in &edge.routes {
            let route = &route.value;
            used.extend(route.cluster.iter().map(|c| c.value.as_str()));
            for w in route.split.iter().flat_map(|s| s.value.iter()) {
                used.insert(w.cluster.value.as_str());
            }
        }
        assert_eq!(used, defined);
        let names: Vec<&str> = edge
            .routes
            .iter()
            .filter_map(|r| r.value.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        assert_eq!(names, ["orders-canary", "orders", "inventory", "frontend"]);
        let split = edge.routes[1].value.split.as_ref().unwrap();
        let weights: Vec<(&str, u32)> = split
            .value
            .iter()
            .map(|w| (w.cluster.value.as_str(), w.weight.value))
            .collect();
        assert_eq!(weights, [("orders-v1", 90), ("orders-v2", 10)]);

        // Every endpoint is a running service of that cluster's name (they have real latency and
        // failures now, so a few tries are allowed for a 200).
        let mut endpoints = 0;
        for cluster in &config.clusters {
            let name = cluster.value.name.value.as_str();
            let statics = cluster.value.discovery.static_endpoints.as_ref().unwrap();
            if name == "orders-v1" {
                assert_eq!(statics.len(), 2);
            }
            for endpoint in statics {
                let addr: SocketAddr = endpoint.value.address.parse().unwrap();
                assert!(addr.ip().is_loopback());
                let mut ok = false;
                for _ in 0..10 {
                    let r = get(addr, probe_path(name)).await;
                    assert_eq!(r.header("x-demo-service"), name);
                    if r.status == StatusCode::OK {
                        ok = true;
                        break;
                    }
                    assert!(r.status.is_server_error(), "{name}: {}", r.status);
                }
                assert!(ok, "{name} at {addr} never answered 200");
                endpoints += 1;
            }
        }
        assert_eq!(endpoints, 5);

        for needle in [
            format!("http://127.0.0.1:{port}"),
            "http://127.0.0.1:9901".to_string(),
            "x-canary: true".to_string(),
            "/metrics | grep otlp_mesh_requests_total".to_string(),
            "/clusters".to_string(),
            "/routes".to_string(),
            "/config".to_string(),
            "/shop".to_string(),
            "Ctrl-C to stop".to_string(),
        ] {
            assert!(
                demo.guide.contains(&needle),
                "guide lacks {needle}:\n{}",
                demo.guide
            );
        }
    }

    #[tokio::test]
    async fn start_rejects_ports_it_cannot_advertise() {
        assert!(start(0, 9901).await.is_err());
        assert!(start(8080, 0).await.is_err());
        assert!(start(8080, 8080).await.is_err());
    }

    /// A stand-in proxy that counts requests and how many carried `x-canary: true`, and answers with
    /// the `x-canary` and `x-request-id` it got as `x-demo-service` and `x-demo-instance`.
    async fn counting_proxy() -> (
        SocketAddr,
        std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let counts = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            c[0].fetch_add(1, Ordering::Relaxed);
                            if req.headers().get("x-canary").is_some_and(|v| v == "true") {
                                c[1].fetch_add(1, Ordering::Relaxed);
                            }
                            let echo = |name: &str| {
                                let got = req
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-");
                                HeaderValue::from_str(&format!(
                                    "{}={got}",
                                    name.trim_start_matches("x-")
                                ))
                                .unwrap()
                            };
                            let response = http::Response::builder()
                                .header("x-demo-service", echo("x-canary"))
                                .header("x-demo-instance", echo("x-request-id"))
                                .body(http_body_util::Full::new(bytes::Bytes::from("ok")))
                                .unwrap();
                            async { Ok::<_, std::convert::Infallible>(response) }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        (addr, counts)
    }

    #[tokio::test]
    async fn traffic_runs_at_about_the_rate_until_aborted() {
        use std::sync::atomic::Ordering;
        let (proxy, counts) = counting_proxy().await;
        let traffic = spawn_traffic(proxy, 200);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        traffic.abort();
        let err = traffic.await.unwrap_err();
        assert!(err.is_cancelled());
        let total = counts[0].load(Ordering::Relaxed);
        let canary = counts[1].load(Ordering::Relaxed);
        // 200 rps for 2 s: about 400.
        assert!((200..=450).contains(&total), "{total} requests");
        assert!(
            canary > 0 && canary * 4 < total,
            "{canary} of {total} canary"
        );
        // Aborted means stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = counts[0].load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(counts[0].load(Ordering::Relaxed), after);
    }

    #[tokio::test]
    async fn traffic_survives_a_missing_proxy_and_zero_rate() {
        spawn_traffic(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)), 0)
            .await
            .unwrap();
        let port = closed_port().await;
        let traffic = spawn_traffic(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 100_000);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!traffic.is_finished(), "traffic stopped on its own");
        traffic.abort();
    }
}
