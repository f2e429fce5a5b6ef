//! `otlp-mesh demo` end to end: the example services answer through the proxy, the canary header
//! route and the split work, background traffic shows in the metrics, and Ctrl-C stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_routes_and_traffic_and_stops_on_sigint() {
    let (edge, admin) = (free_addr(), free_addr());
    let mut demo = Proc::spawn(&[
        "demo",
        "--port",
        &edge.port().to_string(),
        "--admin-port",
        &admin.port().to_string(),
        "--rps",
        "50",
    ]);
    let client = h1_client();
    eventually("demo ready", Duration::from_secs(15), || {
        let client = client.clone();
        async move {
            matches!(try_send_within(&client, get_req(&format!("http://{admin}/ready")), Duration::from_secs(1)).await, Ok(r) if r.status == 200)
        }
    })
    .await;
    assert!(demo.try_exit().is_none(), "demo exited: {}", demo.stderr());

    // Every v1/v2 answer is JSON naming its version; the canary header always reaches v2.
    let mut v2 = 0;
    for _ in 0..40 {
        let r = get(&client, &format!("http://{edge}/api/orders")).await;
        if r.status == 200 && r.text().contains("\"v2\"") {
            v2 += 1;
        }
    }
    assert!(v2 < 15, "the 90/10 split sent {v2} of 40 to v2");
    let canary = send(
        &client,
        http::Request::get(format!("http://{edge}/api/orders"))
            .header("x-canary", "true")
            .body(full(""))
            .unwrap(),
    )
    .await;
    if canary.status == 200 {
        assert!(canary.text().contains("\"v2\""), "{}", canary.text());
    }
    assert_eq!(canary.header("x-demo-service"), Some("orders-v2"));

    // Background traffic flows through the proxy and shows in the metrics.
    eventually("traffic in metrics", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let m = get(&client, &format!("http://{admin}/metrics")).await.text();
            metric(&m, "otlp_mesh_requests_total{listener=\"edge\",route=\"inventory\",cluster=\"inventory\",status_class=\"2xx\"}")
                .is_some_and(|n| n >= 20.0)
        }
    })
    .await;
    let stdout = demo.stdout();
    assert!(
        stdout.contains(&format!("127.0.0.1:{}", edge.port())),
        "guide: {stdout}"
    );
    assert!(stdout.contains("Ctrl-C"), "guide: {stdout}");

    // The chaos scenario is loaded switched off; a PUT switches it on (here at 100 % so the
    // effect is certain), the metrics count it, and a DELETE switches it off.
    let chaos = get(&client, &format!("http://{admin}/chaos")).await.json();
    let rule = chaos["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["name"] == "inventory-chaos")
        .cloned();
    assert!(
        rule.is_some_and(|r| r["source"] == "config" && r["status"] == "disabled"),
        "{chaos}"
    );
    let on = r#"{"match":{"cluster":"inventory"},"abort":{"percent":100,"http_status":503}}"#;
    let r = send(
        &client,
        http::Request::put(format!("http://{admin}/chaos/rules/inventory-chaos"))
            .body(full(on))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&client, &format!("http://{edge}/inventory/sku-espresso")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-demo-service"),
        None,
        "injected by the proxy, not the service"
    );
    let m = get(&client, &format!("http://{admin}/metrics"))
        .await
        .text();
    assert!(
        metric(
            &m,
            "otlp_mesh_fault_injected_total{rule=\"inventory-chaos\",source=\"api\",kind=\"abort\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let r = send(
        &client,
        http::Request::delete(format!("http://{admin}/chaos/rules/inventory-chaos"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204);
    let r = get(&client, &format!("http://{edge}/inventory/sku-espresso")).await;
    assert_eq!(
        r.header("x-demo-service"),
        Some("inventory"),
        "answered by the service again"
    );

    demo.signal("INT");
    let status = demo.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "demo exit {status}: {}", demo.stderr());
}
