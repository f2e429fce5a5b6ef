#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin server: liveness, readiness, metrics, clusters, routes, config.

mod common;

use common::*;
use http::{Request, StatusCode};
use serde_json::Value;

struct Setup {
    mesh: Mesh,
    edge: std::net::SocketAddr,
    e1: Upstream,
    e2: Upstream,
    _v2: Upstream,
    dead: std::net::SocketAddr,
}

/// Listener `edge` with a named route `canary` (/api → v1, two endpoints), an unnamed route
/// (/dead → `dead`, nothing listening), and a catch-all unnamed route (→ v2, h2).
async fn setup() -> Setup {
    let e1 = Upstream::echo("e1").await;
    let e2 = Upstream::echo("e2").await;
    let v2 = Upstream::echo("v2").await;
    let dead = free_addr();
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - name: canary
        match: {{ path_prefix: /api }}
        cluster: v1
      - match: {{ path_prefix: /dead }}
        cluster: dead
      - cluster: v2
clusters:
  - name: v1
    discovery: {{ static: [{}, {}] }}
  - name: v2
    protocol: h2
    discovery: {{ static: [{}] }}
  - name: dead
    discovery: {{ static: [{dead}] }}
",
        prelude(admin),
        e1.addr,
        e2.addr,
        v2.addr,
    );
    let mesh = Mesh::start(admin, &yaml).await;
    Setup {
        mesh,
        edge,
        e1,
        e2,
        _v2: v2,
        dead,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ready_and_request_metrics() {
    let s = setup().await;
    let live = s.mesh.admin_get("/live").await;
    assert_eq!(live.status, StatusCode::OK, "{live:?}");
    let ready = s.mesh.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");

    let client = h1_client();
    for _ in 0..3 {
        assert_eq!(
            get(&client, &format!("http://{}/api/x", s.edge))
                .await
                .status,
            200
        );
    }
    let req = Request::get(format!("http://{}/api/y", s.edge))
        .header("x-echo-status", "503")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client, req).await.status, 503);
    for _ in 0..2 {
        assert_eq!(
            get(&client, &format!("http://{}/other", s.edge))
                .await
                .status,
            200
        );
    }

    let text = s.mesh.metrics().await;
    let series = |route: &str, cluster: &str, class: &str| {
        format!(
            "otlp_mesh_requests_total{{listener=\"edge\",route=\"{route}\",cluster=\"{cluster}\",status_class=\"{class}\"}}"
        )
    };
    assert_eq!(
        metric(&text, &series("canary", "v1", "2xx")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &series("canary", "v1", "5xx")),
        Some(1.0),
        "{text}"
    );
    // Unnamed routes are called `<listener>/<index>`.
    assert_eq!(
        metric(&text, &series("edge/2", "v2", "2xx")),
        Some(2.0),
        "{text}"
    );
}

fn cluster<'a>(clusters: &'a Value, name: &str) -> &'a Value {
    clusters["clusters"]
        .as_array()
        .unwrap_or_else(|| panic!("`clusters` is not an array: {clusters}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster `{name}` in {clusters}"))
}

fn endpoint<'a>(cluster: &'a Value, address: &str) -> &'a Value {
    cluster["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("`endpoints` is not an array: {cluster}"))
        .iter()
        .find(|e| e["address"] == address)
        .unwrap_or_else(|| panic!("no endpoint `{address}` in {cluster}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_lists_endpoints_with_counters() {
    let s = setup().await;
    let client = h1_client();
    for _ in 0..4 {
        assert_eq!(
            get(&client, &format!("http://{}/api/x", s.edge))
                .await
                .status,
            200
        );
    }
    get(&client, &format!("http://{}/dead", s.edge))
        .await
        .assert_mesh_error(502, "connect_failed");

    let r = s.mesh.admin_get("/clusters").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let json = r.json();
    assert_eq!(json["clusters"].as_array().map(Vec::len), Some(3), "{json}");

    let v1 = cluster(&json, "v1");
    assert_eq!(v1["protocol"], "http1", "{v1}");
    assert_eq!(v1["balancer"], "round_robin", "{v1}");
    assert!(!v1["discovery"].is_null(), "{v1}");
    assert_eq!(v1["endpoints"].as_array().map(Vec::len), Some(2), "{v1}");
    for up in [&s.e1, &s.e2] {
        let ep = endpoint(v1, &up.addr.to_string());
        assert_eq!(ep["requests"], 2, "round robin over 4 requests: {ep}");
        assert_eq!(ep["in_flight"], 0, "{ep}");
        assert_eq!(ep["failures"], 0, "{ep}");
        assert!(ep["weight"].is_number(), "{ep}");
        assert_eq!(up.hits(), 2);
    }
    assert_eq!(cluster(&json, "v2")["protocol"], "h2");
    let dead = endpoint(cluster(&json, "dead"), &s.dead.to_string());
    assert!(
        dead["failures"].as_u64().unwrap_or(0) >= 1,
        "connect failure not counted: {dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_lists_listeners_and_routes() {
    let s = setup().await;
    let r = s.mesh.admin_get("/routes").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let json = r.json();
    let listeners = json["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("`listeners` is not an array: {json}"));
    assert_eq!(listeners.len(), 1, "{json}");
    assert_eq!(listeners[0]["name"], "edge", "{json}");
    let names: Vec<&str> = listeners[0]["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("`routes` is not an array: {json}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, ["canary", "edge/1", "edge/2"], "{json}");
    let text = r.text();
    for cluster in ["v1", "dead", "v2"] {
        assert!(
            text.contains(&format!("\"{cluster}\"")),
            "route targets missing: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_source_hash_and_config() {
    let s = setup().await;
    let r = s.mesh.admin_get("/config").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let json = r.json();
    let source = json["source"]
        .as_str()
        .unwrap_or_else(|| panic!("no source: {json}"));
    assert!(source.ends_with("mesh.yaml"), "source `{source}`");
    let hash = json["hash"]
        .as_str()
        .unwrap_or_else(|| panic!("no hash: {json}"));
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "hash `{hash}` is not 16 hex digits"
    );
    assert_eq!(json["config"]["listeners"][0]["name"], "edge", "{json}");
    assert_eq!(
        json["config"]["listeners"][0]["bind"],
        s.edge.to_string(),
        "{json}"
    );
    assert_eq!(json["config"]["clusters"][0]["name"], "v1", "{json}");
}
