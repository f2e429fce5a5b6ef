//! Load-balancing algorithms through the real binary: weighted round robin, consistent hashing
//! on a header and on the client address, least-request and P2C peak-EWMA steering away from a
//! slow endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, Response};
use std::collections::HashMap;
use std::time::Duration;

/// An upstream that answers with its own name after `delay`.
async fn named(name: &'static str, delay: Duration) -> Upstream {
    Upstream::start(move |_req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(name))
    })
    .await
}

async fn mesh(cluster: &str) -> (Mesh, std::net::SocketAddr) {
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes: [ {{ cluster: up }} ]\nclusters:\n  - name: up\n{cluster}",
        prelude(admin)
    );
    (Mesh::start(admin, &yaml).await, edge)
}

async fn tally(
    edge: std::net::SocketAddr,
    n: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let client = h1_client();
    let mut out = HashMap::new();
    for _ in 0..n {
        let mut b = Request::get(format!("http://{edge}/"));
        if let Some((k, v)) = &header {
            b = b.header(*k, v.as_str());
        }
        let r = send(&client, b.body(full("")).unwrap()).await;
        assert_eq!(r.status, 200);
        *out.entry(r.text()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_exact_shares() {
    let (a, b) = (
        named("a", Duration::ZERO).await,
        named("b", Duration::ZERO).await,
    );
    let (_m, edge) = mesh(&format!(
        "    balancer: weighted_round_robin\n    discovery: {{ static: [ {{ address: \"{}\", weight: 3 }}, \"{}\" ] }}\n",
        a.addr, b.addr
    ))
    .await;
    let t = tally(edge, 400, None).await;
    assert_eq!(t.get("a"), Some(&300), "{t:?}");
    assert_eq!(t.get("b"), Some(&100), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_each_key_on_one_endpoint_and_spreads_keys() {
    let ups = [
        named("a", Duration::ZERO).await,
        named("b", Duration::ZERO).await,
        named("c", Duration::ZERO).await,
    ];
    let list: Vec<String> = ups.iter().map(|u| u.addr.to_string()).collect();
    let (_m, edge) = mesh(&format!(
        "    balancer: ring_hash\n    hash_key: \"header:x-user\"\n    discovery: {{ static: [{}] }}\n",
        list.join(", ")
    ))
    .await;
    let mut owners = HashMap::new();
    for user in 0..60 {
        let t = tally(edge, 4, Some(("x-user", format!("user-{user}")))).await;
        assert_eq!(t.len(), 1, "user-{user} moved between endpoints: {t:?}");
        *owners.entry(t.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "60 keys should land on all three endpoints: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_on_client_ip_sends_one_client_to_one_endpoint() {
    let ups = [
        named("a", Duration::ZERO).await,
        named("b", Duration::ZERO).await,
        named("c", Duration::ZERO).await,
    ];
    let list: Vec<String> = ups.iter().map(|u| u.addr.to_string()).collect();
    let (_m, edge) = mesh(&format!(
        "    balancer: maglev\n    hash_key: client_ip\n    discovery: {{ static: [{}] }}\n",
        list.join(", ")
    ))
    .await;
    let t = tally(edge, 30, None).await;
    assert_eq!(t.len(), 1, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_aware_balancers_avoid_a_slow_endpoint() {
    for balancer in ["p2c_ewma", "least_request"] {
        let (fast, slow) = (
            named("fast", Duration::ZERO).await,
            named("slow", Duration::from_millis(40)).await,
        );
        let (m, edge) = mesh(&format!(
            "    balancer: {balancer}\n    discovery: {{ static: [{}, {}] }}\n",
            fast.addr, slow.addr
        ))
        .await;
        // Four concurrent clients, so in-flight counts differ too.
        let tallies = futures_util::future::join_all((0..4).map(|_| tally(edge, 50, None))).await;
        let mut t: HashMap<String, usize> = HashMap::new();
        for x in tallies {
            for (k, v) in x {
                *t.entry(k).or_default() += v;
            }
        }
        let fast_share = *t.get("fast").unwrap_or(&0) as f64 / 200.0;
        assert!(
            fast_share > 0.75,
            "{balancer}: fast endpoint got {fast_share:.2} of requests: {t:?}"
        );
        let clusters = m.admin_get("/clusters").await.json();
        assert_eq!(clusters["clusters"][0]["balancer"], balancer, "{clusters}");
        // /clusters shows the per-endpoint picture behind the choice: the fast endpoint took
        // more requests, and where both have latency samples the slow one's estimate is higher.
        let eps = clusters["clusters"][0]["endpoints"]
            .as_array()
            .unwrap()
            .clone();
        let ep = |a: std::net::SocketAddr| {
            eps.iter()
                .find(|e| e["address"] == a.to_string())
                .unwrap()
                .clone()
        };
        let (f, s) = (ep(fast.addr), ep(slow.addr));
        assert!(f["requests"].as_u64() > s["requests"].as_u64(), "{f} {s}");
        if let (Some(fl), Some(sl)) = (f["ewma_latency_ms"].as_f64(), s["ewma_latency_ms"].as_f64())
        {
            assert!(sl > fl, "{balancer}: slow {sl} ms, fast {fl} ms");
        }
    }
}
