//! Active health checks and passive outlier detection through the real binary: a killed
//! upstream is ejected under load and rejoins through slow start, an HTTP health check follows
//! an upstream's `/healthz`, and bad health settings fail validation naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// An upstream answering its name, bound to `addr` (port 0 for any), that can be killed (all
/// its connections close) and started again on the same port.
struct Named {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Named {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Named {
    async fn start(name: &'static str, addr: SocketAddr, healthz: Arc<AtomicU16>) -> Named {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let checks = Arc::new(AtomicUsize::new(0));
        let checked = checks.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let counter = counter.clone();
                        let checked = checked.clone();
                        let healthz = healthz.clone();
                        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let resp = if req.uri().path() == "/healthz" {
                                checked.fetch_add(1, Ordering::SeqCst);
                                let status = StatusCode::from_u16(healthz.load(Ordering::SeqCst)).unwrap();
                                Response::builder().status(status).body(full("hc")).unwrap()
                            } else {
                                counter.fetch_add(1, Ordering::SeqCst);
                                Response::new(full(name))
                            };
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                        conns.spawn(async move {
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Named {
            addr,
            hits,
            checks,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn ok_healthz() -> Arc<AtomicU16> {
    Arc::new(AtomicU16::new(200))
}

fn mesh_yaml(admin: SocketAddr, edge: SocketAddr, ups: &[SocketAddr], cluster: &str) -> String {
    let list: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes: [ {{ cluster: up }} ]\nclusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n{cluster}",
        prelude(admin),
        list.join(", ")
    )
}

/// Per-endpoint `health` and `slow_start` from `/clusters`.
async fn endpoint_state(mesh: &Mesh, addr: SocketAddr) -> (String, bool) {
    let v = mesh.admin_get("/clusters").await.json();
    let clusters = v
        .as_array()
        .cloned()
        .or_else(|| v["clusters"].as_array().cloned())
        .unwrap_or_else(|| panic!("/clusters: {v}"));
    let up = clusters.iter().find(|c| c["name"] == "up").unwrap();
    let ep = up["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {up}"));
    (
        ep["health"].as_str().unwrap().to_string(),
        ep["slow_start"].as_bool().unwrap_or(false),
    )
}

/// Steady load: `workers` clients sending requests back to back, recording (time, ok).
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(edge: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, log) = (stop.clone(), log.clone());
                tokio::spawn(async move {
                    let client = h1_client();
                    while !stop.load(Ordering::SeqCst) {
                        let r = try_send_within(
                            &client,
                            get_req(&format!("http://{edge}/")),
                            Duration::from_secs(5),
                        )
                        .await;
                        let ok = matches!(&r, Ok(r) if r.status == StatusCode::OK);
                        log.lock().unwrap().push((Instant::now(), ok));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, log, tasks }
    }

    /// (requests, failures) completed in [from, to).
    fn count(&self, from: Instant, to: Instant) -> (usize, usize) {
        let log = self.log.lock().unwrap();
        let window: Vec<_> = log.iter().filter(|(t, _)| *t >= from && *t < to).collect();
        (window.len(), window.iter().filter(|(_, ok)| !ok).count())
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_ejected_under_load_and_rejoins_through_slow_start() {
    let a = Named::start("a", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let b = Named::start("b", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let c = Named::start("c", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let c_addr = c.addr;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = mesh_yaml(
        admin,
        edge,
        &[a.addr, b.addr, c.addr],
        "    slow_start: 2s\n    outlier_detection: { consecutive_gateway_errors: 3, consecutive_5xx: 5, interval: 1s, base_ejection_time: 5s, max_ejection_percent: 50 }\n",
    );
    let mesh = Mesh::start(admin, &yaml).await;
    let load = Load::start(edge, 4);

    eventually("c serves", WAIT, || async { c.hits() > 20 }).await;
    let before = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    let (n, failed) = load.count(before, killed);
    assert!(n > 10, "load is running ({n} requests)");
    assert_eq!(failed, 0, "no failures before the kill");

    drop(c);
    eventually("c ejected", WAIT, || async {
        endpoint_state(&mesh, c_addr).await.0 == "ejected"
    })
    .await;
    let ejected = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (n_after, failed_after) = load.count(killed, Instant::now());
    let (n_late, failed_late) = load.count(killed + Duration::from_secs(1), Instant::now());
    assert!(
        ejected.duration_since(killed) < Duration::from_secs(3),
        "ejected {:?} after the kill",
        ejected.duration_since(killed)
    );
    assert!(
        (1..=30).contains(&failed_after),
        "{failed_after} failures of {n_after} after the kill (the ejection threshold is 3 per worker at most)"
    );
    assert!(n_late > 50, "load kept running ({n_late})");
    assert_eq!(failed_late, 0, "errors stopped within a second of the kill");
    let m = mesh.metrics().await;
    let ejections = metric(
        &m,
        "otlp_mesh_outlier_ejections_total{cluster=\"up\",reason=\"consecutive_gateway_errors\"}",
    )
    .unwrap_or_else(|| panic!("no ejection metric:\n{m}"));
    assert!(ejections >= 1.0, "{ejections}");

    // Back on the same port (within the 5 s ejection): it rejoins through slow start.
    let c = Named::start("c", c_addr, ok_healthz()).await;
    eventually("c gets traffic again", Duration::from_secs(15), || async {
        c.hits() > 0
    })
    .await;
    let (health, ramping) = endpoint_state(&mesh, c_addr).await;
    assert_eq!(health, "healthy");
    assert!(ramping, "a returning endpoint ramps up through slow start");
    eventually("c takes a full share", Duration::from_secs(15), || async {
        c.hits() > 50
    })
    .await;
    let rejoined = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n_end, failed_end) = load.count(rejoined, Instant::now());
    assert!(n_end > 0);
    assert_eq!(failed_end, 0, "no failures once it is back");
    load.stop().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_follows_healthz() {
    let a = Named::start("a", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let b_health = ok_healthz();
    let b = Named::start("b", "127.0.0.1:0".parse().unwrap(), b_health.clone()).await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = mesh_yaml(
        admin,
        edge,
        &[a.addr, b.addr],
        "    health_check: { http: { path: /healthz, expected: [\"200-399\"] }, interval: 100ms, timeout: 1s, jitter: 0, healthy_threshold: 2, unhealthy_threshold: 2 }\n",
    );
    let mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let tally = |n: usize| {
        let client = client.clone();
        async move {
            let mut t: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let r = get(&client, &format!("http://{edge}/")).await;
                assert_eq!(r.status, StatusCode::OK);
                *t.entry(r.text()).or_default() += 1;
            }
            t
        }
    };
    let t = tally(20).await;
    assert_eq!(t.get("b"), Some(&10), "{t:?}");

    b_health.store(503, Ordering::SeqCst);
    eventually("b marked unhealthy", WAIT, || async {
        endpoint_state(&mesh, b.addr).await.0 == "unhealthy"
    })
    .await;
    let t = tally(20).await;
    assert_eq!(
        t.get("a"),
        Some(&20),
        "only the healthy endpoint is used: {t:?}"
    );
    let m = mesh.metrics().await;
    assert!(
        metric(
            &m,
            "otlp_mesh_health_transitions_total{cluster=\"up\",to=\"unhealthy\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "otlp_mesh_health_unhealthy_endpoints{cluster=\"up\"}"),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "otlp_mesh_health_checks_total{cluster=\"up\",result=\"failed\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    b_health.store(200, Ordering::SeqCst);
    eventually("b healthy again", WAIT, || async {
        endpoint_state(&mesh, b.addr).await.0 == "healthy"
    })
    .await;
    let before = b.hits();
    let t = tally(20).await;
    assert!(t.get("b").copied().unwrap_or(0) > 0, "{t:?}");
    assert!(b.hits() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_threshold_balances_over_all_when_too_few_are_available() {
    let a = Named::start("a", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let b_health = ok_healthz();
    let b = Named::start("b", "127.0.0.1:0".parse().unwrap(), b_health.clone()).await;
    let (admin, edge) = (free_addr(), free_addr());
    // With 2 endpoints and a 60 % threshold, one unhealthy endpoint (50 % available) is panic.
    let yaml = mesh_yaml(
        admin,
        edge,
        &[a.addr, b.addr],
        "    health_check: { http: { path: /healthz }, interval: 100ms, jitter: 0, healthy_threshold: 1, unhealthy_threshold: 1 }\n    outlier_detection: { panic_threshold: 60 }\n",
    );
    let mesh = Mesh::start(admin, &yaml).await;
    b_health.store(503, Ordering::SeqCst);
    eventually("panic mode", WAIT, || async {
        metric(
            &mesh.metrics().await,
            "otlp_mesh_cluster_panic_mode{cluster=\"up\"}",
        ) == Some(1.0)
    })
    .await;
    assert_eq!(endpoint_state(&mesh, b.addr).await.0, "unhealthy");
    let client = h1_client();
    let before = b.hits();
    for _ in 0..10 {
        assert_eq!(
            get(&client, &format!("http://{edge}/")).await.status,
            StatusCode::OK
        );
    }
    assert!(
        b.hits() > before,
        "panic mode balances over the unhealthy endpoint too"
    );
    let m = mesh.metrics().await;
    assert_eq!(
        metric(&m, "otlp_mesh_cluster_panic_entered_total{cluster=\"up\"}"),
        Some(1.0)
    );
    b_health.store(200, Ordering::SeqCst);
    eventually("panic over", WAIT, || async {
        metric(
            &mesh.metrics().await,
            "otlp_mesh_cluster_panic_mode{cluster=\"up\"}",
        ) == Some(0.0)
    })
    .await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_stop_when_a_reload_rebuilds_the_cluster() {
    let a = Named::start("a", "127.0.0.1:0".parse().unwrap(), ok_healthz()).await;
    let (admin, edge) = (free_addr(), free_addr());
    let checked = |interval: &str| {
        mesh_yaml(
            admin,
            edge,
            &[a.addr],
            &format!(
                "    health_check: {{ http: {{ path: /healthz }}, interval: {interval}, jitter: 0 }}\n"
            ),
        )
    };
    let mesh = Mesh::start(admin, &checked("50ms")).await;
    eventually("checks run", WAIT, || async {
        a.checks.load(Ordering::SeqCst) >= 3
    })
    .await;
    // A slower interval: the cluster is rebuilt and the old loop must stop.
    mesh.reload(&checked("1h")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = a.checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.checks.load(Ordering::SeqCst),
        settled,
        "the old cluster's checks stopped"
    );
    mesh.reload(&mesh_yaml(admin, edge, &[a.addr], "")).await;
    let client = h1_client();
    assert_eq!(get(&client, &format!("http://{edge}/")).await.text(), "a");
}

#[test]
fn validate_names_bad_health_fields() {
    let yaml = "clusters:\n  - name: up\n    discovery: { static: [127.0.0.1:1] }\n    health_check: { tcp: {}, unhealthy_threshold: 0, interval: 0 }\n    outlier_detection: { max_ejection_percent: 150 }\n";
    let file = ConfigFile::new(yaml);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let status = p.try_exit().unwrap();
    let out = format!("{}{}", p.stdout(), p.stderr());
    assert_eq!(status.code(), Some(1), "{out}");
    for field in [
        "clusters[0].health_check.unhealthy_threshold",
        "clusters[0].health_check.interval",
        "clusters[0].outlier_detection.max_ejection_percent",
    ] {
        assert!(out.contains(field), "{field} not named in:\n{out}");
    }
}
