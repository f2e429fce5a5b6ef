//! Fault injection through the real binary: aborts, delays, throttling and resets as a client
//! sees them, run-time control over the admin API (under load), validation errors, and
//! header-driven faults that only work when a listener enables them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Request;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

async fn mesh_with(
    route_extra: &str,
    listener_extra: &str,
    up: &Upstream,
) -> (Mesh, std::net::SocketAddr, std::net::SocketAddr) {
    let (admin, edge) = (free_addr(), free_addr());
    let up = up.addr;
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n{listener_extra}    routes:\n      - name: api\n        cluster: up\n{route_extra}clusters:\n  - {{ name: up, discovery: {{ static: [{up}] }} }}\n",
        prelude(admin),
    );
    let mesh = Mesh::start(admin, &yaml).await;
    let admin = mesh.admin;
    (mesh, admin, edge)
}

fn put(url: String, json: &str) -> Request<Body> {
    Request::put(url)
        .header("content-type", "application/json")
        .body(full(json.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_answers_the_configured_status_and_body_without_calling_upstream() {
    let up = Upstream::echo("up").await;
    let (mesh, _admin, edge) = mesh_with(
        "        fault: { abort: { percent: 100, http_status: 418, body: \"teapot\" } }\n",
        "",
        &up,
    )
    .await;
    let r = get(&h1_client(), &format!("http://{edge}/x")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "teapot");
    assert_eq!(up.hits(), 0);
    let m = mesh.metrics().await;
    assert_eq!(
        metric(
            &m,
            "otlp_mesh_fault_injected_total{rule=\"route:edge/api\",source=\"config\",kind=\"abort\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_percentage_is_within_binomial_bounds() {
    let up = Upstream::echo("up").await;
    let (_mesh, _admin, edge) = mesh_with(
        "        fault: { abort: { percent: 20, http_status: 503 } }\n",
        "",
        &up,
    )
    .await;
    let client = h1_client();
    let n = 500;
    let mut aborted = 0;
    for _ in 0..n {
        if get(&client, &format!("http://{edge}/x")).await.status == 503 {
            aborted += 1;
        }
    }
    // Binomial(500, 0.2): mean 100, sd ≈ 8.9; 5 sd either side.
    assert!((55..=145).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(up.hits(), n - aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_in_latency_and_throttle_limits_bandwidth() {
    let up = Upstream::huge(24 * 1024).await;
    let (_mesh, admin, edge) = mesh_with("", "", &up).await;
    let client = h1_client();
    let t = Instant::now();
    let r = get(&client, &format!("http://{edge}/x")).await;
    assert_eq!(r.status, 200);
    let clean = t.elapsed();

    let r = send(
        &client,
        put(
            format!("http://{admin}/chaos/rules/slow"),
            r#"{"delay":{"percent":100,"fixed":"400ms"}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = Instant::now();
    assert_eq!(get(&client, &format!("http://{edge}/x")).await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "delayed request took {:?}",
        t.elapsed()
    );
    assert!(
        clean < Duration::from_millis(400),
        "clean request took {clean:?}"
    );

    // 24 KiB at 16 KiB/s: at least one second once the first 16 KiB are spent.
    let r = send(
        &client,
        put(
            format!("http://{admin}/chaos/rules/slow"),
            r#"{"throttle":{"percent":100,"bytes_per_second":16384}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "replacing a rule answers 200: {}", r.text());
    let t = Instant::now();
    let r = get(&client, &format!("http://{edge}/x")).await;
    assert_eq!(r.body.len(), 24 * 1024);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "throttled body took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_seen_by_the_client_as_a_broken_connection_or_stream() {
    let up = Upstream::echo("up").await;
    let (_mesh, _admin, edge) =
        mesh_with("        fault: { reset: { percent: 100 } }\n", "", &up).await;
    for client in [h1_client(), h2c_client()] {
        let r = try_send_within(
            &client,
            get_req(&format!("http://{edge}/x")),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            r.is_err(),
            "a reset must not produce a response: {:?}",
            r.map(|r| r.status)
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_get_400_naming_each_field() {
    let up = Upstream::echo("up").await;
    let (_mesh, admin, _edge) = mesh_with("", "", &up).await;
    let client = h1_client();
    let r = send(
        &client,
        put(
            format!("http://{admin}/chaos/rules/bad"),
            r#"{"delay":{"percent":150,"fixed":"1s"},"abort":{"percent":5,"http_status":99}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let fields: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect();
    assert!(fields.iter().any(|f| f == "delay.percent"), "{fields:?}");
    assert!(
        fields.iter().any(|f| f == "abort.http_status"),
        "{fields:?}"
    );
    let r = send(
        &client,
        put(format!("http://{admin}/chaos/rules/bad"), r#"{"dealy":{}}"#),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("dealy"), "{}", r.text());
    let r = send(
        &client,
        put(
            format!("http://{admin}/chaos/rules/a"),
            r#"{"name":"b","reset":{"percent":1}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("does not match"), "{}", r.text());
    let r = send(
        &client,
        Request::delete(format!("http://{admin}/chaos/rules/none"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 404);
}

/// Rules switched on and off under continuous load: the only failures clients see are the ones
/// injected while the rule was on; `GET /chaos` lists rules with their source and counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_change_under_load_without_collateral_failures() {
    let up = Upstream::echo("up").await;
    let (_mesh, admin, edge) = mesh_with("", "", &up).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, injected, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, injected, other) =
            (stop.clone(), ok.clone(), injected.clone(), other.clone());
        load.push(tokio::spawn(async move {
            let client = h1_client();
            while !stop.load(Ordering::Relaxed) {
                match try_send_within(
                    &client,
                    get_req(&format!("http://{edge}/x")),
                    Duration::from_secs(5),
                )
                .await
                {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) if r.status == 597 => injected.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let client = h1_client();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = send(
            &client,
            put(
                format!("http://{admin}/chaos/rules/flaky"),
                r#"{"abort":{"percent":30,"http_status":597}}"#,
            ),
        )
        .await;
        assert!(
            r.status == 201 || r.status == 200,
            "round {round}: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let view = get(&client, &format!("http://{admin}/chaos")).await.json();
        let rule = &view["rules"].as_array().unwrap()[0];
        assert_eq!(rule["source"], "api", "{view}");
        let r = send(
            &client,
            Request::delete(format!("http://{admin}/chaos/rules/flaky"))
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 204);
    }
    // The kill switch stops everything at once, and turning it back on restores the rules.
    send(
        &client,
        put(
            format!("http://{admin}/chaos/rules/flaky"),
            r#"{"abort":{"percent":100,"http_status":597}}"#,
        ),
    )
    .await;
    let r = send(
        &client,
        Request::post(format!("http://{admin}/chaos/disable-all"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Requests already in flight keep the faults they were given (at most one per client task):
    // let them land before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = injected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        injected.load(Ordering::Relaxed),
        before,
        "no faults while disabled"
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "failures other than the injected ones"
    );
    assert!(
        injected.load(Ordering::Relaxed) > 0,
        "the rule injected nothing"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_faults_work_only_where_the_listener_enables_them() {
    let up = Upstream::echo("up").await;
    let (_off, _, edge_off) = mesh_with("", "", &up).await;
    let (_on, _, edge_on) = mesh_with("", "    header_faults: { max_delay: 1s }\n", &up).await;
    let client = h1_client();
    let req = |edge| {
        Request::get(format!("http://{edge}/x"))
            .header("x-fault-abort-status", "503")
            .body(full(""))
            .unwrap()
    };
    assert_eq!(
        send(&client, req(edge_off)).await.status,
        200,
        "header faults are off by default"
    );
    assert_eq!(send(&client, req(edge_on)).await.status, 503);
    // Delays are capped by max_delay.
    let t = Instant::now();
    let r = send(
        &client,
        Request::get(format!("http://{edge_on}/x"))
            .header("x-fault-delay-ms", "60000")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(1000) && t.elapsed() < Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    // The fault headers never reach the upstream.
    assert!(!r.text().contains("x-fault-delay-ms"), "{}", r.text());
}

#[tokio::test]
async fn bad_fault_config_names_the_field_and_line() {
    let admin = free_addr();
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: up\n        fault: {{ delay: {{ percent: 101, fixed: 1s }} }}\nclusters:\n  - {{ name: up, discovery: {{ static: [] }} }}\nchaos:\n  rules:\n    - {{ name: x, abort: {{ percent: 1, grpc_status: NOPE }} }}\n",
        prelude(admin)
    );
    let cfg = ConfigFile::new(&yaml);
    let mut p = Proc::run(&["validate", "--config", cfg.path_str()]);
    assert_eq!(p.exit_code(), Some(1));
    let err = p.stderr();
    assert!(
        err.contains("listeners[0].routes[0].fault.delay.percent"),
        "{err}"
    );
    assert!(
        err.contains("abort.grpc_status") || err.contains("NOPE"),
        "{err}"
    );
}
