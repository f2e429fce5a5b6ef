#![allow(clippy::unwrap_used, clippy::expect_used)]
//! 200 MB bodies stream through the proxy in both directions with bounded proxy memory.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;

const SIZE: u64 = 200 << 20;
/// Peak RSS allowed for the proxy process (VmHWM), far below the body size.
const RSS_LIMIT: u64 = 100 << 20;
/// Generous bound for moving 200 MB through a debug build.
const TRANSFER: Duration = Duration::from_secs(120);

async fn mesh_for(upstream: SocketAddr, protocol: &str) -> (Mesh, SocketAddr) {
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\n        timeout: 0\nclusters:\n  - name: up\n    protocol: {protocol}\n    discovery: {{ static: [{upstream}] }}\n",
        prelude(admin)
    );
    (Mesh::start(admin, &yaml).await, edge)
}

fn assert_peak_rss(mesh: &Mesh) {
    let peak = mesh.proc.peak_rss_bytes();
    assert!(
        peak < RSS_LIMIT,
        "proxy peak RSS {} MiB for a {} MiB body: bodies are buffered",
        peak >> 20,
        SIZE >> 20
    );
}

async fn upload(client: HttpClient, protocol: &str) {
    let up = Upstream::counter().await;
    let (mesh, edge) = mesh_for(up.addr, protocol).await;
    // Length unknown up front (chunked on HTTP/1.1), produced on the fly in 64 KiB chunks.
    let req = Request::post(format!("http://{edge}/upload"))
        .body(PatternBody::new(SIZE, 64 << 10, false).boxed())
        .unwrap();
    let resp = try_send_within(&client, req, TRANSFER)
        .await
        .expect("200 MB upload");
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(
        resp.text(),
        SIZE.to_string(),
        "the upstream must get every byte"
    );
    assert_peak_rss(&mesh);
}

async fn download(client: HttpClient, protocol: &str) {
    let up = Upstream::huge(SIZE).await;
    let (mesh, edge) = mesh_for(up.addr, protocol).await;
    let resp = tokio::time::timeout(
        WAIT,
        client.request(get_req(&format!("http://{edge}/download"))),
    )
    .await
    .expect("no response head")
    .expect("download request");
    assert_eq!(resp.status(), StatusCode::OK);
    let n = tokio::time::timeout(TRANSFER, count_body(resp.into_body()))
        .await
        .expect("download did not finish")
        .expect("download body failed");
    assert_eq!(n, SIZE, "the client must get every byte");
    assert_peak_rss(&mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_200_mb_h1() {
    upload(h1_client(), "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_200_mb_h1() {
    download(h1_client(), "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_200_mb_h2() {
    upload(h2c_client(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_200_mb_h2() {
    download(h2c_client(), "h2").await;
}
