#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use http_body::Frame;
use otlp_mesh_balance::{EndpointOptions, Timestamp};
use std::sync::Mutex;
use std::sync::atomic::AtomicU16;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], i))
}

fn config(kind: CheckKind) -> HealthCheckConfig {
    HealthCheckConfig {
        cluster: "c".into(),
        kind,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        jitter: 0.0,
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        port: None,
    }
}

#[test]
fn status_ranges_parse_and_match() {
    let r = StatusRanges::parse(&["200-399".into(), "404".into()]).unwrap();
    assert!(r.contains(200) && r.contains(399) && r.contains(404));
    assert!(!r.contains(400) && !r.contains(503));
    assert!(StatusRanges::parse(&[]).is_err());
    assert!(StatusRanges::parse(&["99-200".into()]).is_err());
    assert!(StatusRanges::parse(&["300-200".into()]).is_err());
    assert!(StatusRanges::parse(&["abc".into()]).is_err());
}

#[test]
fn grpc_messages_round_trip() {
    assert_eq!(&grpc_request("")[..], &[0, 0, 0, 0, 0]);
    let r = grpc_request("svc");
    assert_eq!(&r[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
    let resp = |msg: &[u8]| {
        let mut v = vec![0, 0, 0, 0, msg.len() as u8];
        v.extend_from_slice(msg);
        Bytes::from(v)
    };
    assert_eq!(grpc_serving_status(resp(&[0x08, 1])), Some(1));
    assert_eq!(grpc_serving_status(resp(&[0x08, 2])), Some(2));
    assert_eq!(grpc_serving_status(resp(&[])), Some(0));
    assert_eq!(
        grpc_serving_status(resp(&[0x12, 1, b'x', 0x08, 1])),
        Some(1)
    );
    assert_eq!(grpc_serving_status(Bytes::from_static(&[0, 0])), None);
    assert_eq!(grpc_serving_status(resp(&[0x08])), None);
}

/// The scripted probe's answers (absent = pass).
type Answers = Arc<Mutex<HashMap<SocketAddr, bool>>>;

/// A probe whose answer for each address is set by the test; counts probes.
fn scripted() -> (Probe, Answers, Arc<AtomicU64>) {
    let answers: Answers = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let (a, c) = (answers.clone(), count.clone());
    let probe: Probe = Arc::new(move |target| {
        c.fetch_add(1, Ordering::SeqCst);
        let ok = a.lock().unwrap().get(&target).copied().unwrap_or(true);
        Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
    });
    (probe, answers, count)
}

#[tokio::test(start_paused = true)]
async fn thresholds_and_interval_drive_health() {
    let set = EndpointSet::from_weighted(
        [(addr(1), 1), (addr(2), 1)],
        EndpointOptions::default(),
        Timestamp::ZERO,
    );
    let endpoints = Arc::new(ArcSwap::from_pointee(set));
    let stats = Arc::new(HealthStats::default());
    let (probe, answers, count) = scripted();
    answers.lock().unwrap().insert(addr(2), false);
    let h = spawn_with_probe(
        config(CheckKind::Tcp),
        endpoints.clone(),
        Clock::System,
        stats.clone(),
        None,
        probe,
    );
    let ep2 = endpoints.load().endpoints()[1].clone();
    let step = || tokio::time::sleep(Duration::from_secs(5));
    tokio::task::yield_now().await;
    // Round 1 runs at once; rounds follow every 5 s (no jitter).
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(ep2.is_healthy(), "one failure is below the threshold");
    step().await;
    assert!(ep2.is_healthy());
    assert_eq!(count.load(Ordering::SeqCst), 4);
    step().await;
    assert!(!ep2.is_healthy(), "third failure in a row");
    assert_eq!(stats.became_unhealthy.load(Ordering::Relaxed), 1);
    assert_eq!(stats.unhealthy.load(Ordering::Relaxed), 1);
    answers.lock().unwrap().insert(addr(2), true);
    step().await;
    assert!(!ep2.is_healthy(), "one pass is below the healthy threshold");
    step().await;
    assert!(ep2.is_healthy());
    assert!(
        ep2.slow_start_since().is_some(),
        "recovery starts slow start"
    );
    assert_eq!(stats.became_healthy.load(Ordering::Relaxed), 1);
    assert_eq!(count.load(Ordering::SeqCst), 10);
    assert_eq!(stats.checks_failed.load(Ordering::Relaxed), 3);
    h.abort();
    let _ = h.await;
    step().await;
    assert_eq!(count.load(Ordering::SeqCst), 10, "stopped when aborted");
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_rounds_within_bounds_and_port_override_applies() {
    let set =
        EndpointSet::from_weighted([(addr(1), 1)], EndpointOptions::default(), Timestamp::ZERO);
    let endpoints = Arc::new(ArcSwap::from_pointee(set));
    let seen = Arc::new(AtomicU16::new(0));
    let s = seen.clone();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let probe: Probe = Arc::new(move |target: SocketAddr| {
        s.store(target.port(), Ordering::SeqCst);
        c.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    });
    let cfg = HealthCheckConfig {
        jitter: 0.5,
        port: Some(9999),
        interval: Duration::from_secs(10),
        ..config(CheckKind::Tcp)
    };
    let h = spawn_with_probe(cfg, endpoints, Clock::System, Arc::default(), None, probe);
    // 100 s: between 100/15 and 100/5 rounds (plus the first).
    tokio::time::sleep(Duration::from_secs(100)).await;
    let n = count.load(Ordering::SeqCst);
    assert!((7..=21).contains(&n), "{n} rounds");
    assert_eq!(seen.load(Ordering::SeqCst), 9999);
    h.abort();
}

/// Serves one canned HTTP/1.1 response per connection; the status can change.
async fn http_server(status: Arc<AtomicU16>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /hc ") && req.contains("host: svc") {
                    status
                } else {
                    404
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    a
}

#[tokio::test]
async fn http_tcp_and_grpc_checks_against_real_servers() {
    let status = Arc::new(AtomicU16::new(200));
    let a = http_server(status.clone()).await;
    let kind = CheckKind::Http {
        path: "/hc".into(),
        host: Some("svc".into()),
        expected: StatusRanges::parse(&["200-399".into()]).unwrap(),
    };
    let probe = probe_for(&kind, Duration::from_secs(2));
    assert_eq!(probe(a).await, Ok(()));
    status.store(503, Ordering::SeqCst);
    assert_eq!(probe(a).await, Err("status 503".into()));
    assert_eq!(
        probe_for(&CheckKind::Tcp, Duration::from_secs(2))(a).await,
        Ok(())
    );

    // A closed port fails every kind.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    assert!(
        probe_for(&CheckKind::Tcp, Duration::from_secs(2))(closed)
            .await
            .is_err()
    );
    assert!(probe(closed).await.is_err());

    // A listener that never answers times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let r = probe_for(&kind, Duration::from_millis(200))(silent_addr).await;
    assert!(r.unwrap_err().contains("no answer"));
    drop(silent);

    // gRPC: SERVING for "", NOT_SERVING for "sick", UNIMPLEMENTED otherwise.
    let g = grpc_server().await;
    let grpc = |service: &str| {
        probe_for(
            &CheckKind::Grpc {
                service: service.into(),
                authority: None,
            },
            Duration::from_secs(2),
        )
    };
    assert_eq!(grpc("")(g).await, Ok(()));
    assert_eq!(grpc("sick")(g).await, Err("serving status 2".into()));
    assert_eq!(grpc("other")(g).await, Err("grpc-status 12".into()));
}

async fn grpc_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let service =
                        String::from_utf8_lossy(body.get(7..).unwrap_or_default()).to_string();
                    let (msg, code): (Vec<u8>, &str) = match service.as_str() {
                        "" => (vec![0x08, 1], "0"),
                        "sick" => (vec![0x08, 2], "0"),
                        _ => (vec![], "12"),
                    };
                    let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                        Vec::new();
                    if code == "0" {
                        let mut data = vec![0, 0, 0, 0, msg.len() as u8];
                        data.extend_from_slice(&msg);
                        frames.push(Ok(Frame::data(Bytes::from(data))));
                    }
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                    frames.push(Ok(Frame::trailers(trailers)));
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    a
}
