//! Discovery through the real binary: routing follows a watched endpoints file and a real etcd
//! (keys put and deleted while the proxy runs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, Response};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

async fn named(name: &'static str) -> Upstream {
    Upstream::start(
        move |_req: Request<hyper::body::Incoming>| async move { Response::new(full(name)) },
    )
    .await
}

fn mesh_yaml(admin: std::net::SocketAddr, edge: std::net::SocketAddr, discovery: &str) -> String {
    format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes: [ {{ cluster: up }} ]\nclusters:\n  - name: up\n    discovery: {discovery}\n",
        prelude(admin)
    )
}

async fn answer(edge: std::net::SocketAddr) -> String {
    let r = get(&h1_client(), &format!("http://{edge}/")).await;
    if r.status == 200 {
        r.text()
    } else {
        format!("status {}", r.status.as_u16())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_a_watched_endpoints_file() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up.yaml");
    std::fs::write(&file, format!("- {{ address: \"{}\" }}\n", a.addr)).unwrap();
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = mesh_yaml(
        admin,
        edge,
        &format!(
            "{{ file: {{ path: \"{}\", interval: 100ms }} }}",
            file.display()
        ),
    );
    let mesh = Mesh::start(admin, &yaml).await;
    eventually("file endpoints applied", Duration::from_secs(5), || async {
        answer(edge).await == "a"
    })
    .await;

    replace_atomically(
        &file,
        &format!("[{{\"address\": \"{}\", \"weight\": 1}}]", b.addr),
    );
    eventually(
        "routing follows the file",
        Duration::from_secs(5),
        || async { answer(edge).await == "b" },
    )
    .await;
    // The pooled keep-alive connection to the removed endpoint is closed, not kept idle.
    eventually(
        "the removed endpoint's connection closed",
        Duration::from_secs(5),
        || async { a.open_connections() == 0 },
    )
    .await;
    assert_eq!(b.open_connections(), 1, "b's connection is pooled");

    // A broken file keeps the last good set and marks the source failing.
    replace_atomically(&file, "not: [valid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answer(edge).await, "b");
    let clusters = mesh.admin_get("/clusters").await.json();
    let st = &clusters["clusters"][0]["discovery_status"];
    assert_eq!(st["kind"], "file", "{clusters}");
    assert_eq!(st["healthy"], false, "{clusters}");
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn etcd_post(port: u16, path: &str, body: serde_json::Value) -> Resp {
    send(
        &h1_client(),
        Request::post(format!("http://127.0.0.1:{port}{path}"))
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_etcd_keys() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_addr().port(), free_addr().port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Etcd(
        Command::new("etcd")
            .args(["--data-dir", &dir.path().display().to_string()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is not installed (apt-get install etcd-server); .ci/run installs it"),
    );
    eventually("etcd up", Duration::from_secs(15), || async {
        try_send_within(
            &h1_client(),
            get_req(&format!("{url}/health")),
            Duration::from_secs(1),
        )
        .await
        .is_ok_and(|r| r.status == 200)
    })
    .await;
    let put = |key: &str, addr: std::net::SocketAddr| {
        let body = serde_json::json!({"key": b64(key), "value": b64(&format!("{{\"address\":\"{addr}\",\"weight\":1}}"))});
        etcd_post(client, "/v3/kv/put", body)
    };
    assert_eq!(put("/services/up/a", a.addr).await.status, 200);

    let (admin, edge) = (free_addr(), free_addr());
    let yaml = mesh_yaml(
        admin,
        edge,
        &format!("{{ etcd: {{ endpoints: [\"{url}\"], prefix: \"/services/up/\" }} }}"),
    );
    let mesh = Mesh::start(admin, &yaml).await;
    eventually(
        "etcd endpoints applied",
        Duration::from_secs(10),
        || async { answer(edge).await == "a" },
    )
    .await;

    assert_eq!(put("/services/up/b", b.addr).await.status, 200);
    let r = etcd_post(
        client,
        "/v3/kv/deleterange",
        serde_json::json!({"key": b64("/services/up/a")}),
    )
    .await;
    assert_eq!(r.status, 200);
    // The put and the delete may arrive as two updates: wait until the set is exactly {b}.
    let only_b = serde_json::json!([b.addr.to_string()]);
    eventually(
        "routing follows the watch",
        Duration::from_secs(10),
        || async {
            let clusters = mesh.admin_get("/clusters").await.json();
            let addrs: Vec<serde_json::Value> = clusters["clusters"][0]["endpoints"]
                .as_array()
                .map(|eps| eps.iter().map(|e| e["address"].clone()).collect())
                .unwrap_or_default();
            serde_json::Value::Array(addrs) == only_b
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(answer(edge).await, "b", "a was deleted");
    }
    let r = etcd_post(
        client,
        "/v3/kv/deleterange",
        serde_json::json!({"key": b64("/services/up/b")}),
    )
    .await;
    assert_eq!(r.status, 200);
    eventually("no endpoints left", Duration::from_secs(10), || async {
        answer(edge).await == "status 503"
    })
    .await;
}

/// etcd unreachable at start: the proxy starts and gets ready (degraded), answers 503 for the
/// cluster, and reports the failing source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_at_start_degrades_the_cluster_not_the_process() {
    let nowhere = free_addr();
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = mesh_yaml(
        admin,
        edge,
        &format!("{{ etcd: {{ endpoints: [\"http://{nowhere}\"], prefix: \"/x/\" }} }}"),
    );
    let mesh = Mesh::start(admin, &yaml).await;
    assert_eq!(answer(edge).await, "status 503");
    let clusters = mesh.admin_get("/clusters").await.json();
    let st = &clusters["clusters"][0]["discovery_status"];
    assert_eq!(st["kind"], "etcd", "{clusters}");
    assert_eq!(st["healthy"], false, "{clusters}");
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_discovery_healthy{cluster=\"up\",kind=\"etcd\"}"
        ),
        Some(0.0),
        "{m}"
    );
}
