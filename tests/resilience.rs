//! Retries, circuit breaking and rate limiting through the real binary with real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn yaml(
    admin: std::net::SocketAddr,
    edge: std::net::SocketAddr,
    up: std::net::SocketAddr,
    route: &str,
    cluster: &str,
) -> String {
    format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - name: api\n        cluster: up\n{route}clusters:\n  - name: up\n    discovery: {{ static: [{up}] }}\n{cluster}",
        prelude(admin)
    )
}

/// An upstream that answers 503 to every third request and counts what it saw.
async fn flaky() -> (Upstream, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let i = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let attempt = req
                .headers()
                .get("x-mesh-attempt")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let status = if i.is_multiple_of(3) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Response::builder()
                .status(status)
                .header("x-seen-attempt", attempt)
                .body(full("x"))
                .unwrap()
        }
    })
    .await;
    (up, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_upstream() {
    let (up, seen) = flaky().await;
    let (admin, edge) = (free_addr(), free_addr());
    let route = "        retry: { attempts: 3, on: [5xx], backoff: { base: 1ms, max: 5ms } }\n";
    let mesh = Mesh::start(admin, &yaml(admin, edge, up.addr, route, "")).await;
    let client = h1_client();
    let mut retried = 0;
    for _ in 0..150 {
        let r = get(&client, &format!("http://{edge}/x")).await;
        assert_eq!(r.status, 200, "clients see only successes");
        if r.header("x-seen-attempt") == Some("2") {
            retried += 1;
        }
    }
    // Every third upstream call fails and is retried once: 150 successes take 224 calls
    // (call 225 would be the next failure), 74 of them retries.
    assert_eq!(seen.load(Ordering::SeqCst), 224);
    assert_eq!(retried, 74);
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_retry_retries_total{listener=\"edge\",route=\"api\",cluster=\"up\",reason=\"status\"}"
        ),
        Some(74.0),
        "{m}"
    );

    // The same upstream without retries: a third of the requests fail.
    let (up2, _) = flaky().await;
    let (admin2, edge2) = (free_addr(), free_addr());
    let _mesh2 = Mesh::start(admin2, &yaml(admin2, edge2, up2.addr, "", "")).await;
    let failed = futures_util::future::join_all((0..30).map(|_| {
        let client = client.clone();
        async move { get(&client, &format!("http://{edge2}/x")).await.status }
    }))
    .await
    .into_iter()
    .filter(|s| *s == 503)
    .count();
    assert_eq!(failed, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_is_sent_once_whole_and_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let n = count_body(req.into_body()).await.unwrap();
            Response::builder()
                .status(503)
                .body(full(n.to_string()))
                .unwrap()
        }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let route = "        retry: { attempts: 3, on: [5xx], non_idempotent: always, backoff: { base: 1ms, max: 2ms } }\n";
    let mesh = Mesh::start(admin, &yaml(admin, edge, up.addr, route, "")).await;
    let body = vec![7u8; 10 << 20];
    let r = send(
        &h1_client(),
        Request::post(format!("http://{edge}/upload"))
            .body(full(body))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        (10u64 << 20).to_string(),
        "the upstream got every byte"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a body over the replay buffer is never retried"
    );
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_retry_body_too_large_total{listener=\"edge\",route=\"api\",cluster=\"up\"}"
        ),
        Some(1.0),
        "{m}"
    );

    // A small POST is retried (non_idempotent: always) with the same body.
    let r = send(
        &h1_client(),
        Request::post(format!("http://{edge}/small"))
            .body(full("hello"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "5");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "three attempts for the small body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_and_fails_fast_without_reaching_the_upstream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Response::builder().status(500).body(full("down")).unwrap() }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let cluster = "    circuit_breaker: { consecutive_failures: 5, open_for: 30s }\n";
    let mesh = Mesh::start(admin, &yaml(admin, edge, up.addr, "", cluster)).await;
    let client = h1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &format!("http://{edge}/x")).await.status, 500);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    for _ in 0..20 {
        let r = get(&client, &format!("http://{edge}/x")).await;
        r.assert_mesh_error(503, "circuit_open");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "no request reaches the upstream while open"
    );
    let clusters = mesh.admin_get("/clusters").await.json();
    assert_eq!(
        clusters["clusters"][0]["circuit_breaker"]["state"], "open",
        "{clusters}"
    );
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_circuit_breaker_state{cluster=\"up\",priority=\"default\",state=\"open\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_circuit_breaker_rejected_open_total{cluster=\"up\",priority=\"default\"}"
        ),
        Some(20.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_threshold_answers_503_overloaded() {
    let up = Upstream::echo("slow").await;
    let (admin, edge) = (free_addr(), free_addr());
    let cluster = "    circuit_breaker: { max_requests: 2, consecutive_failures: 0 }\n";
    let _mesh = Mesh::start(admin, &yaml(admin, edge, up.addr, "", cluster)).await;
    let client = h1_client();
    let slow = |client: HttpClient| async move {
        send(
            &client,
            Request::get(format!("http://{edge}/x"))
                .header("x-echo-delay-ms", "800")
                .body(full(""))
                .unwrap(),
        )
        .await
    };
    let a = tokio::spawn(slow(client.clone()));
    let b = tokio::spawn(slow(client.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = get(&client, &format!("http://{edge}/x")).await;
    r.assert_mesh_error(503, "overloaded");
    assert_eq!(r.header("x-mesh-overloaded"), Some("true"));
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    assert_eq!(
        get(&client, &format!("http://{edge}/x")).await.status,
        200,
        "capacity is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_headers_and_keys_by_header() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let route = "        rate_limit: { rate: 10, per: 60s, key: \"header:x-api-key\" }\n";
    let mesh = Mesh::start(admin, &yaml(admin, edge, up.addr, route, "")).await;
    let client = h1_client();
    let req = |key: &str| {
        Request::get(format!("http://{edge}/x"))
            .header("x-api-key", key)
            .body(full(""))
            .unwrap()
    };
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..25 {
        let r = send(&client, req("alice")).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited = Some(r),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 10, "a burst of `rate` requests, then 429");
    let r = limited.unwrap();
    r.assert_mesh_error(429, "rate_limited");
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=6).contains(&retry_after),
        "one token per 6 s: {retry_after}"
    );
    // Another key has its own bucket.
    assert_eq!(send(&client, req("bob")).await.status, 200);
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_rate_limit_limited_total{listener=\"edge\",route=\"api\"}"
        ),
        Some(15.0),
        "{m}"
    );
}

#[tokio::test]
async fn bad_resilience_config_is_reported_with_fields() {
    let admin = free_addr();
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: up\n        retry: {{ attempts: 0, on: [sometimes] }}\n        rate_limit: {{ rate: 0, key: cookie }}\nclusters:\n  - name: up\n    discovery: {{ static: [] }}\n    balancer: maglev\n    circuit_breaker: {{ error_rate: {{ threshold: 150 }} }}\n",
        prelude(admin)
    );
    let cfg = ConfigFile::new(&yaml);
    let mut p = Proc::run(&["validate", "--config", cfg.path_str()]);
    assert_eq!(p.exit_code(), Some(1));
    let err = p.stderr();
    for needle in [
        "listeners[0].routes[0].retry.attempts",
        "listeners[0].routes[0].retry.on",
        "sometimes",
        "listeners[0].routes[0].rate_limit.rate",
        "listeners[0].routes[0].rate_limit.key",
        "clusters[0].hash_key",
        "clusters[0].circuit_breaker.error_rate.threshold",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_routes_have_their_own_thresholds() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - {{ name: high, match: {{ path_prefix: /high }}, cluster: up, priority: high }}\n      - {{ name: low, cluster: up }}\nclusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n    circuit_breaker:\n      max_requests: 1\n      consecutive_failures: 0\n      high_priority: {{ max_requests: 4, consecutive_failures: 0 }}\n",
        prelude(admin),
        up.addr
    );
    let mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            send(
                &client,
                Request::get(format!("http://{edge}/low"))
                    .header("x-echo-delay-ms", "800")
                    .body(full(""))
                    .unwrap(),
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    get(&client, &format!("http://{edge}/low"))
        .await
        .assert_mesh_error(503, "overloaded");
    assert_eq!(
        get(&client, &format!("http://{edge}/high")).await.status,
        200,
        "high priority has room"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    let clusters = mesh.admin_get("/clusters").await.json();
    let breakers = &clusters["clusters"][0]["circuit_breakers"];
    assert_eq!(
        breakers["default"]["counters"]["overloaded_active"], 1,
        "{clusters}"
    );
    assert_eq!(
        breakers["high"]["counters"]["overloaded_active"], 0,
        "{clusters}"
    );
}
