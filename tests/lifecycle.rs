#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hot reload (file polling, SIGHUP, invalid files, listeners coming and going) and graceful
//! drain on SIGTERM.

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

fn clusters(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "clusters:
  - name: a
    discovery: {{ static: [{a}] }}
  - name: b
    discovery: {{ static: [{b}] }}
"
    )
}

/// A config whose one listener, `edge`, sends everything to `cluster` (`a` or `b`).
fn edge_to(
    cluster: &str,
    admin: SocketAddr,
    edge: SocketAddr,
    a: &Upstream,
    b: &Upstream,
) -> String {
    format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: {cluster}\n{}",
        prelude(admin),
        clusters(a.addr, b.addr)
    )
}

/// Which echo server answered `path` (None for a non-200).
async fn served_by(client: &HttpClient, edge: SocketAddr, path: &str) -> Option<String> {
    let resp = get(client, &format!("http://{edge}{path}")).await;
    if resp.status != StatusCode::OK {
        return None;
    }
    resp.header("x-upstream").map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_routes() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let v1 = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /x }}
        cluster: a
{}",
        prelude(admin),
        clusters(a.addr, b.addr)
    );
    let mesh = Mesh::start(admin, &v1).await;
    let client = h1_client();
    assert_eq!(served_by(&client, edge, "/x").await.as_deref(), Some("a"));
    get(&client, &format!("http://{edge}/new"))
        .await
        .assert_mesh_error(404, "no_route");
    let hash1 = mesh.config_hash().await;

    let v2 = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /new }}
        cluster: a
      - match: {{ path_prefix: /x }}
        cluster: b
{}",
        prelude(admin),
        clusters(a.addr, b.addr)
    );
    let hash2 = mesh.reload(&v2).await;
    assert_ne!(hash1, hash2);
    eventually(
        "the reloaded routes to serve",
        Duration::from_secs(5),
        || async { served_by(&client, edge, "/new").await.as_deref() == Some("a") },
    )
    .await;
    assert_eq!(served_by(&client, edge, "/x").await.as_deref(), Some("b"));
    // New connections see the new routes too.
    assert_eq!(
        served_by(&h1_client(), edge, "/x").await.as_deref(),
        Some("b")
    );

    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "otlp_mesh_config_reloads_total{result=\"success\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let config = mesh.admin_get("/config").await.json();
    assert_eq!(
        config["config"]["listeners"][0]["routes"][0]["match"]["path_prefix"], "/new",
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_keeps_the_running_config() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let route = |cluster: &str| edge_to(cluster, admin, edge, &a, &b);
    let mesh = Mesh::start(admin, &route("a")).await;
    let client = h1_client();
    assert_eq!(served_by(&client, edge, "/").await.as_deref(), Some("a"));
    let hash = mesh.config_hash().await;

    // References a cluster that does not exist.
    mesh.config.replace(&route("nowhere"));
    eventually("the reload failure to be counted", WAIT, || async {
        metric(
            &mesh.metrics().await,
            "otlp_mesh_config_reload_failures_total",
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        mesh.config_hash().await,
        hash,
        "the rejected file must not become the config"
    );
    for _ in 0..10 {
        assert_eq!(served_by(&client, edge, "/").await.as_deref(), Some("a"));
    }
    assert_eq!(
        served_by(&h1_client(), edge, "/").await.as_deref(),
        Some("a")
    );
    assert!(
        mesh.proc.stderr().contains("nowhere"),
        "the rejection is logged with its reason"
    );

    // YAML that does not even parse.
    mesh.config.replace("listeners: [ {\n");
    eventually("the second reload failure to be counted", WAIT, || async {
        metric(
            &mesh.metrics().await,
            "otlp_mesh_config_reload_failures_total",
        ) == Some(2.0)
    })
    .await;
    assert_eq!(served_by(&client, edge, "/").await.as_deref(), Some("a"));

    // A valid file afterwards is applied.
    let new_hash = mesh.reload(&route("b")).await;
    assert_ne!(new_hash, hash);
    eventually(
        "the fixed config to serve",
        Duration::from_secs(5),
        || async { served_by(&client, edge, "/").await.as_deref() == Some("b") },
    )
    .await;
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "otlp_mesh_config_reloads_total{result=\"success\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "otlp_mesh_config_reload_failures_total"),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let config = |cluster: &str, via: &str| {
        format!(
            "{}listeners:
  - name: edge
    bind: {edge}
    via: {via}
    routes:
      - match: {{ path_prefix: /load }}
        cluster: {cluster}
        response_headers: {{ set: {{ x-version: {via} }} }}
{}",
            prelude(admin),
            clusters(a.addr, b.addr)
        )
    };
    let mesh = Mesh::start(admin, &config("a", "v0")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        // Half the workers reuse connections, half open one per request; h1 and h2c mixed.
        let fresh = w % 2 == 1;
        let h2 = w >= 2;
        workers.push(tokio::spawn(async move {
            let mut client = if h2 { h2c_client() } else { h1_client() };
            while !stop.load(Ordering::Relaxed) {
                if fresh {
                    client = if h2 { h2c_client() } else { h1_client() };
                }
                match try_send_within(&client, get_req(&format!("http://{edge}/load")), WAIT).await
                {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    let client = h1_client();
    for (i, cluster) in ["b", "a", "b", "a", "b"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let via = format!("v{}", i + 1);
        mesh.reload(&config(cluster, &via)).await;
        eventually("the reload to serve", Duration::from_secs(5), || async {
            get(&client, &format!("http://{edge}/load"))
                .await
                .header("x-version")
                == Some(via.as_str())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 50, "too little load to mean anything: {ok} requests");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across reloads, e.g. {:?}",
        failures.len(),
        failures.len() + ok,
        &failures[..failures.len().min(5)]
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(
        served_by(&client, edge, "/load").await.as_deref(),
        Some("b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge, extra) = (free_addr(), free_addr(), free_addr());
    let edge_only = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: a\n{}",
        prelude(admin),
        clusters(a.addr, b.addr)
    );
    let both = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - cluster: a
  - name: extra
    bind: {extra}
    routes:
      - cluster: b
{}",
        prelude(admin),
        clusters(a.addr, b.addr)
    );
    let mesh = Mesh::start(admin, &edge_only).await;
    assert!(
        connection_refused(extra).await,
        "nothing should listen on {extra} yet"
    );

    mesh.reload(&both).await;
    eventually(
        "the added listener to serve",
        Duration::from_secs(5),
        || async {
            match try_send_within(
                &h1_client(),
                get_req(&format!("http://{extra}/")),
                Duration::from_secs(1),
            )
            .await
            {
                Ok(r) => r.header("x-upstream") == Some("b"),
                Err(_) => false,
            }
        },
    )
    .await;
    assert_eq!(
        served_by(&h1_client(), edge, "/").await.as_deref(),
        Some("a")
    );
    let routes = mesh.admin_get("/routes").await.text();
    assert!(
        routes.contains("extra"),
        "/routes must list the new listener: {routes}"
    );

    mesh.reload(&edge_only).await;
    eventually(
        "the removed listener to stop accepting",
        Duration::from_secs(5),
        || async { connection_refused(extra).await },
    )
    .await;
    assert_eq!(
        served_by(&h1_client(), edge, "/").await.as_deref(),
        Some("a")
    );
    let text = mesh.metrics().await;
    assert_eq!(
        metric(&text, "otlp_mesh_config_reloads_total{result=\"success\"}"),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_polling_is_off() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let config = |cluster: &str| {
        format!(
            "admin:\n  bind: {admin}\nruntime:\n  reload_interval: 0\nlisteners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: {cluster}\n{}",
            clusters(a.addr, b.addr)
        )
    };
    let mut mesh = Mesh::start(admin, &config("a")).await;
    let client = h1_client();
    let hash = mesh.config_hash().await;
    mesh.config.replace(&config("b"));
    // Polling is off: the change must wait for the signal.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        mesh.config_hash().await,
        hash,
        "reload_interval: 0 must turn polling off"
    );
    assert_eq!(served_by(&client, edge, "/").await.as_deref(), Some("a"));

    mesh.proc.signal("HUP");
    eventually(
        "SIGHUP to reload the config",
        Duration::from_secs(5),
        || async { served_by(&client, edge, "/").await.as_deref() == Some("b") },
    )
    .await;
    assert_ne!(mesh.config_hash().await, hash);
    assert!(
        mesh.proc.try_exit().is_none(),
        "SIGHUP must not stop the process"
    );
}

/// An upstream that holds every request until `release.send(true)` (or 10 s pass).
async fn gated_upstream() -> (Upstream, watch::Sender<bool>) {
    let (release, gate) = watch::channel(false);
    let up = Upstream::start(move |_req: Request<Incoming>| {
        let mut gate = gate.clone();
        async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), gate.wait_for(|open| *open)).await;
            Response::new(full("finished"))
        }
    })
    .await;
    (up, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let (up, release) = gated_upstream().await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "admin:\n  bind: {admin}\nruntime:\n  drain_timeout: 10s\nlisteners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\nclusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n",
        up.addr
    );
    let mut mesh = Mesh::start(admin, &yaml).await;

    // One request in flight over HTTP/1.1, one over h2c.
    let in_flight: Vec<_> = [h1_client(), h2c_client()]
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                try_send_within(
                    &client,
                    get_req(&format!("http://{edge}/slow")),
                    Duration::from_secs(20),
                )
                .await
            })
        })
        .collect();
    eventually(
        "the requests to reach the upstream",
        Duration::from_secs(5),
        || async { up.hits() == 2 },
    )
    .await;

    mesh.proc.signal("TERM");

    // Readiness goes away while the request is still in flight.
    eventually(
        "/ready to stop answering 200",
        Duration::from_secs(5),
        || async {
            match mesh.try_admin_get("/ready").await {
                Ok(r) => {
                    assert!(
                        r.status == StatusCode::OK || r.status == StatusCode::SERVICE_UNAVAILABLE,
                        "/ready answered {r:?}"
                    );
                    r.status == StatusCode::SERVICE_UNAVAILABLE
                }
                Err(_) => true, // the admin server may already be closed
            }
        },
    )
    .await;
    // New connections are refused while the old request drains.
    eventually(
        "the listener to refuse new connections",
        Duration::from_secs(5),
        || async { connection_refused(edge).await },
    )
    .await;
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "an in-flight request ended before its upstream answered"
    );
    assert!(
        mesh.proc.try_exit().is_none(),
        "exited with a request in flight"
    );

    release.send(true).unwrap();
    for (t, proto) in in_flight.into_iter().zip(["h1", "h2c"]) {
        let resp = t.await.unwrap().unwrap_or_else(|e| {
            panic!("the {proto} in-flight request must complete during the drain: {e}")
        });
        assert_eq!(resp.status, StatusCode::OK, "{proto}: {resp:?}");
        assert_eq!(resp.text(), "finished");
    }

    let status = mesh.proc.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after a clean drain: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_connections_exits_promptly() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "admin:\n  bind: {admin}\nruntime:\n  drain_timeout: 30s\nlisteners:\n  - name: edge\n    bind: {edge}\n    limits: {{ header_read_timeout: 60s }}\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    discovery: {{ static: [{}] }}\n",
        a.addr
    );
    let mut mesh = Mesh::start(admin, &yaml).await;
    // Idle keep-alive connections (h1 and h2c) must not hold the drain for drain_timeout, nor
    // wait for the header-read timeout (longer than WAIT here) to close.
    let (h1, h2) = (h1_client(), h2c_client());
    // Two requests on the h1 connection: it then waits for a third with its drain wait
    // registered by an earlier wait.
    for _ in 0..2 {
        assert_eq!(
            get(&h1, &format!("http://{edge}/")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(&h2, &format!("http://{edge}/")).await.status,
        StatusCode::OK
    );
    mesh.proc.signal("TERM");
    let status = mesh.proc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let (up, _release) = gated_upstream().await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "admin:\n  bind: {admin}\nruntime:\n  drain_timeout: 1s\nlisteners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\n        timeout: 0\nclusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n",
        up.addr
    );
    let mut mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let in_flight = tokio::spawn(async move {
        try_send_within(
            &client,
            get_req(&format!("http://{edge}/stuck")),
            Duration::from_secs(20),
        )
        .await
    });
    eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || async { up.hits() == 1 },
    )
    .await;
    mesh.proc.signal("TERM");
    // The upstream would hold the request for 10 s; the 1 s drain timeout must cut it short.
    mesh.proc.wait_exit(Duration::from_secs(6)).await;
    let result = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !matches!(&result, Ok(r) if r.status == StatusCode::OK),
        "the stuck request cannot have completed: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_updates_cluster_endpoints() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let config = |endpoint: SocketAddr| {
        format!(
            "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: c\nclusters:\n  - name: c\n    discovery: {{ static: [{endpoint}] }}\n",
            prelude(admin)
        )
    };
    let mesh = Mesh::start(admin, &config(a.addr)).await;
    let (h1, h2) = (h1_client(), h2c_client());
    for client in [&h1, &h2] {
        assert_eq!(served_by(client, edge, "/").await.as_deref(), Some("a"));
    }
    mesh.reload(&config(b.addr)).await;
    eventually(
        "the new endpoint to serve",
        Duration::from_secs(5),
        || async { served_by(&h1, edge, "/").await.as_deref() == Some("b") },
    )
    .await;
    let before = a.hits();
    for client in [&h1, &h2] {
        for _ in 0..10 {
            assert_eq!(served_by(client, edge, "/").await.as_deref(), Some("b"));
        }
    }
    assert_eq!(a.hits(), before, "the removed endpoint still gets traffic");
    let clusters = mesh.admin_get("/clusters").await.text();
    assert!(
        clusters.contains(&b.addr.to_string()) && !clusters.contains(&a.addr.to_string()),
        "/clusters must show the new endpoint only: {clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_finishes_in_flight_requests() {
    let (up, release) = gated_upstream().await;
    let (admin, edge, extra) = (free_addr(), free_addr(), free_addr());
    let listener = |name: &str, bind: SocketAddr| {
        format!(
            "  - name: {name}\n    bind: {bind}\n    routes:\n      - cluster: up\n        timeout: 0\n"
        )
    };
    let config = |extra_listener: bool| {
        format!(
            "{}listeners:\n{}{}clusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n",
            prelude(admin),
            listener("edge", edge),
            if extra_listener {
                listener("extra", extra)
            } else {
                String::new()
            },
            up.addr
        )
    };
    let mesh = Mesh::start(admin, &config(true)).await;
    let in_flight = tokio::spawn(async move {
        try_send_within(
            &h1_client(),
            get_req(&format!("http://{extra}/slow")),
            Duration::from_secs(20),
        )
        .await
    });
    eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || async { up.hits() == 1 },
    )
    .await;

    mesh.reload(&config(false)).await;
    eventually(
        "the removed listener to stop accepting",
        Duration::from_secs(5),
        || async { connection_refused(extra).await },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was cut off by the reload"
    );
    release.send(true).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request on a removed listener must complete");
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(resp.text(), "finished");
    // The remaining listener is unaffected.
    let resp = get(&h1_client(), &format!("http://{edge}/after")).await;
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
}

/// The harness's own guard against a port taken between `free_addr` and the binary's bind:
/// the binary cannot bind its admin port, so the harness starts it again on a fresh one, and
/// later config changes keep the moved port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_moves_a_taken_admin_port_and_keeps_it_on_reload() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let (admin, edge) = (free_addr(), free_addr());
    let taken = std::net::TcpListener::bind(admin).unwrap();
    let route = |cluster: &str| edge_to(cluster, admin, edge, &a, &b);
    let mesh = Mesh::start(admin, &route("a")).await;
    assert_ne!(mesh.admin, admin);
    let client = h1_client();
    assert_eq!(served_by(&client, edge, "/").await.as_deref(), Some("a"));
    mesh.config.replace(&route("b"));
    eventually("the reload to route to b", WAIT, || async {
        served_by(&client, edge, "/").await.as_deref() == Some("b")
    })
    .await;
    let config = mesh.admin_get("/config").await.json();
    assert_eq!(
        config["config"]["admin"]["bind"],
        mesh.admin.to_string(),
        "{config}"
    );
    drop(taken);
}
