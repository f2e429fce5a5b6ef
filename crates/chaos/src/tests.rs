//! Layer and registry tests: faults through `tower::service_fn` upstreams with paused time.

use super::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};

#[derive(Debug, PartialEq)]
enum TestError {
    Reset(FaultReset),
}

impl From<FaultReset> for TestError {
    fn from(r: FaultReset) -> Self {
        TestError::Reset(r)
    }
}

type Req = Request<Full<Bytes>>;
type Resp = Response<Full<Bytes>>;

/// An upstream answering `hello` after `latency`, counting calls and recording when it was called.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    called_at: Arc<std::sync::Mutex<Vec<Instant>>>,
    seen_headers: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    latency: Duration,
    body: Bytes,
}

impl Upstream {
    fn new() -> Self {
        Upstream {
            calls: Arc::default(),
            called_at: Arc::default(),
            seen_headers: Arc::default(),
            latency: Duration::ZERO,
            body: Bytes::from_static(b"hello"),
        }
    }

    fn service(
        &self,
    ) -> impl Service<Req, Response = Resp, Error = TestError, Future: Send> + Clone + Send + 'static
    {
        let me = self.clone();
        service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                me.called_at.lock().unwrap().push(Instant::now());
                me.seen_headers.lock().unwrap().push(req.headers().clone());
                if !me.latency.is_zero() {
                    tokio::time::sleep(me.latency).await;
                }
                Ok::<_, TestError>(Response::new(Full::new(me.body.clone())))
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn target() -> Arc<FaultTarget> {
    Arc::new(FaultTarget {
        cluster: Some("orders".into()),
        ..FaultTarget::new("edge", "api")
    })
}

fn req(path: &str) -> Req {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

fn rule(name: &str) -> FaultRule {
    FaultRule {
        name: name.into(),
        ..FaultRule::default()
    }
}

fn abort(percent: f64, status: u32) -> Option<AbortFault> {
    Some(AbortFault {
        percent,
        http_status: Some(status),
        ..AbortFault::default()
    })
}

fn fixed_delay(percent: f64, ms: u64, on: DelayPhase) -> Option<DelayFault> {
    Some(DelayFault {
        percent,
        fixed: Some(FaultDuration::from_millis(ms)),
        on,
        ..DelayFault::default()
    })
}

async fn call<S>(svc: &mut S, r: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    svc.ready().await?.call(r).await
}

fn applied<B>(resp: &Response<B>) -> Option<&AppliedFaults> {
    resp.extensions().get::<AppliedFaults>()
}

/// Binomial acceptance band: mean ± 4.5 standard deviations.
fn within_binomial(hits: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 4.5 * sd..=mean + 4.5 * sd).contains(&(hits as f64))
}

#[tokio::test(start_paused = true)]
async fn no_rules_pass_through_untouched() {
    let reg = FaultRegistry::new();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg, target()).layer_service(up.service());
    let resp = call(&mut svc, req("/api")).await.unwrap();
    assert!(applied(&resp).is_none());
    assert!(matches!(resp.body(), FaultBody::Inner { .. }));
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
    assert_eq!(up.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn delay_on_request_holds_the_request_back() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 200, DelayPhase::Request),
        ..rule("slow")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    let start = Instant::now();
    let resp = call(&mut svc, req("/api")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(
        up.called_at.lock().unwrap()[0] - start,
        Duration::from_millis(200)
    );
    let a = applied(&resp).unwrap();
    assert_eq!(a.kinds(), "delay");
    assert_eq!(a.rules(), "slow");
    assert_eq!(a.delay(), Duration::from_millis(200));
    let stats = reg.stats("slow").unwrap();
    assert_eq!(stats.injected(FaultKind::Delay), 1);
    assert_eq!(stats.snapshot().delay_ms.counts[6], 1); // ≤ 250ms
}

#[tokio::test(start_paused = true)]
async fn delay_on_response_delays_the_head_not_the_call() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 300, DelayPhase::Response),
        ..rule("ttfb")
    })
    .unwrap();
    let mut up = Upstream::new();
    up.latency = Duration::from_millis(100);
    let mut svc = FaultLayer::new(reg, target()).layer_service(up.service());
    let start = Instant::now();
    let resp = call(&mut svc, req("/api")).await.unwrap();
    assert_eq!(up.called_at.lock().unwrap()[0], start);
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    assert_eq!(
        applied(&resp).unwrap().0[0].phase,
        Some(DelayPhase::Response)
    );
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
}

#[tokio::test(start_paused = true)]
async fn http_abort_answers_without_calling_upstream() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        abort: Some(AbortFault {
            percent: 100.0,
            http_status: Some(503),
            body: Some("chaos says no\n".into()),
            ..AbortFault::default()
        }),
        ..rule("down")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg, target()).layer_service(up.service());
    let resp = call(&mut svc, req("/api")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(applied(&resp).unwrap().0[0].http_status, Some(503));
    assert_eq!(resp.body().size_hint().exact(), Some(14));
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "chaos says no\n"
    );
    assert_eq!(up.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_abort_is_trailers_only() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        abort: Some(AbortFault {
            percent: 100.0,
            grpc_status: Some(GrpcStatus::Name("UNAVAILABLE".into())),
            message: Some("down 100% — retry\nlater".into()),
            ..AbortFault::default()
        }),
        ..rule("grpc-down")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg, target()).layer_service(up.service());
    let resp = call(&mut svc, req("/pkg.Svc/Method")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["grpc-message"], "down 100%25 %E2%80%94 retry%0Alater");
    // Trailers-only: no data frame, the head ends the stream.
    assert!(resp.body().is_end_stream());
    assert_eq!(applied(&resp).unwrap().0[0].grpc_status, Some(14));
    let collected = resp.into_body().collect().await.unwrap();
    assert!(collected.to_bytes().is_empty());
    assert_eq!(up.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn throttle_releases_the_body_at_the_rate() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        throttle: Some(ThrottleFault {
            percent: 100.0,
            bytes_per_second: ByteRate(1000),
        }),
        max_active: Some(1),
        ..rule("slow-body")
    })
    .unwrap();
    let mut up = Upstream::new();
    up.body = Bytes::from(vec![b'x'; 5000]);
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    let resp = call(&mut svc, req("/api")).await.unwrap();
    assert!(resp.body().is_throttled());
    let stats = reg.stats("slow-body").unwrap();
    // The body holds the rule's only slot until it ends.
    assert_eq!(stats.active(), 1);
    let start = Instant::now();
    let mut body = resp.into_body();
    let mut per_second = [0usize; 6];
    while let Some(frame) = body.frame().await {
        let n = frame.unwrap().into_data().unwrap().len();
        per_second[start.elapsed().as_secs() as usize] += n;
    }
    assert_eq!(per_second.iter().sum::<usize>(), 5000);
    for (s, n) in per_second.iter().enumerate().take(4) {
        assert!((900..=1100).contains(n), "second {s}: {n} bytes");
    }
    assert_eq!(start.elapsed(), Duration::from_millis(4900));
    drop(body);
    assert_eq!(stats.active(), 0);
    assert_eq!(stats.injected(FaultKind::Throttle), 1);
}

#[tokio::test(start_paused = true)]
async fn reset_returns_the_reset_error() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        reset: Some(ResetFault { percent: 100.0 }),
        delay: fixed_delay(100.0, 50, DelayPhase::Request),
        ..rule("rst")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg, target()).layer_service(up.service());
    let start = Instant::now();
    let err = call(&mut svc, req("/api")).await.unwrap_err();
    let TestError::Reset(reset) = err;
    assert_eq!(reset.rule(), Some("rst"));
    assert_eq!(reset.applied.kinds(), "delay,reset");
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(up.calls(), 0);
    assert_eq!(reset.to_string(), "connection reset by fault rule `rst`");
}

#[tokio::test(start_paused = true)]
async fn max_active_lets_excess_requests_pass_clean() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 1000, DelayPhase::Request),
        max_active: Some(2),
        ..rule("capped")
    })
    .unwrap();
    let up = Upstream::new();
    let layer = FaultLayer::new(reg.clone(), target());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let mut svc = layer.layer_service(up.service());
        tasks.spawn(async move {
            let start = Instant::now();
            let resp = call(&mut svc, req("/api")).await.unwrap();
            (applied(&resp).is_some(), start.elapsed())
        });
    }
    let mut faulted = 0;
    while let Some(r) = tasks.join_next().await {
        let (hit, took) = r.unwrap();
        if hit {
            faulted += 1;
            assert_eq!(took, Duration::from_secs(1));
        } else {
            assert_eq!(took, Duration::ZERO);
        }
    }
    assert_eq!(faulted, 2);
    let stats = reg.stats("capped").unwrap();
    assert_eq!(stats.skipped_max_active(), 3);
    assert_eq!(stats.matched(), 5);
    assert_eq!(stats.active(), 0);
    // Slots are free again.
    let mut svc = layer.layer_service(up.service());
    assert!(applied(&call(&mut svc, req("/api")).await.unwrap()).is_some());
}

#[tokio::test(start_paused = true)]
async fn schedule_duration_switches_the_rule_off() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        abort: abort(100.0, 500),
        schedule: Some(Schedule {
            duration: Some(FaultDuration::from_millis(10_000)),
            ..Schedule::default()
        }),
        ..rule("brief")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 500);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 500);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 200);
    assert_eq!(reg.get("brief").unwrap().status, RuleStatus::Expired);
    assert_eq!(reg.stats("brief").unwrap().matched(), 2);
}

#[tokio::test(start_paused = true)]
async fn schedule_start_and_stop_times() {
    let reg = FaultRegistry::new();
    let rfc = |t: SystemTime| {
        // Whole seconds since the epoch, written as RFC 3339 via a known offset.
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil date from days (Howard Hinnant).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let with = |name: &str, start: Option<SystemTime>, stop: Option<SystemTime>| FaultRule {
        abort: abort(100.0, 503),
        schedule: Some(Schedule {
            start: start.map(rfc),
            stop: stop.map(rfc),
            duration: None,
        }),
        ..rule(name)
    };
    reg.put(with("later", Some(now + hour), None)).unwrap();
    reg.put(with("over", None, Some(now - hour))).unwrap();
    assert_eq!(reg.get("later").unwrap().status, RuleStatus::Pending);
    assert_eq!(reg.get("over").unwrap().status, RuleStatus::Expired);
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 200);
    reg.put(with("now", Some(now - hour), Some(now + hour)))
        .unwrap();
    assert_eq!(reg.get("now").unwrap().status, RuleStatus::Active);
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 503);
}

#[tokio::test(start_paused = true)]
async fn kill_switch_stops_everything_and_comes_back() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        abort: abort(100.0, 500),
        ..rule("a")
    })
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    reg.disable_all();
    assert!(!reg.is_enabled());
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 200);
    let view = reg.view();
    assert!(!view.enabled);
    assert_eq!(view.rules[0].status, RuleStatus::Killed);
    // A PUT while killed does not switch injection back on.
    reg.put(FaultRule {
        abort: abort(100.0, 502),
        ..rule("b")
    })
    .unwrap();
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 200);
    reg.enable_all();
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 500);
    assert_eq!(reg.stats("a").unwrap().matched(), 1);
}

#[tokio::test(start_paused = true)]
async fn header_faults_are_ignored_unless_enabled() {
    let reg = FaultRegistry::new();
    let up = Upstream::new();
    let with_headers = |r: Req| {
        let mut r = r;
        let h = r.headers_mut();
        h.insert(X_FAULT_ABORT_STATUS, "503".parse().unwrap());
        h.insert(X_FAULT_DELAY_MS, "60000".parse().unwrap());
        r
    };
    // Off (the default): nothing happens and the headers go upstream as sent.
    let mut off = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    let start = Instant::now();
    let resp = call(&mut off, with_headers(req("/"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(up.seen_headers.lock().unwrap()[0].contains_key(X_FAULT_DELAY_MS));

    // On, with caps: the delay is cut to max_delay, the abort happens.
    let on_target = Arc::new(FaultTarget {
        header_faults: Some(HeaderFaultLimits {
            max_delay: FaultDuration::from_millis(2000),
            ..HeaderFaultLimits::default()
        }),
        ..FaultTarget::new("edge", "api")
    });
    let mut on = FaultLayer::new(reg.clone(), on_target.clone()).layer_service(up.service());
    let start = Instant::now();
    let resp = call(&mut on, with_headers(req("/"))).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let a = applied(&resp).unwrap();
    assert_eq!(a.rules(), "headers");
    assert_eq!(a.0[0].source, RuleSource::Header);
    assert_eq!(reg.view().header_faults.injected.abort, 1);

    // A throttle request is raised to the minimum rate; the headers do not go upstream.
    let mut r = req("/");
    r.headers_mut()
        .insert(X_FAULT_THROTTLE_BPS, "1".parse().unwrap());
    let resp = call(&mut on, r).await.unwrap();
    assert_eq!(applied(&resp).unwrap().0[0].bytes_per_second, Some(1024));
    let seen = up.seen_headers.lock().unwrap();
    assert!(!seen.last().unwrap().contains_key(X_FAULT_THROTTLE_BPS));
}

#[test]
fn header_percent_is_honoured() {
    let reg = FaultRegistry::with_seed(17);
    let t = FaultTarget {
        header_faults: Some(HeaderFaultLimits::default()),
        ..FaultTarget::new("edge", "api")
    };
    let mut r = req("/");
    r.headers_mut()
        .insert(X_FAULT_ABORT_STATUS, "500".parse().unwrap());
    r.headers_mut()
        .insert(X_FAULT_PERCENT, "2.5".parse().unwrap());
    let mut rng = reg.rng();
    let n = 40_000;
    let hits = (0..n)
        .filter(|_| reg.plan(&r, &t, &mut rng).is_some())
        .count() as u64;
    assert!(within_binomial(hits, n, 0.025), "{hits} of {n}");
}

#[test]
fn rule_percentages_stay_within_binomial_bounds() {
    let reg = FaultRegistry::with_seed(4242);
    reg.put(FaultRule {
        abort: abort(0.1, 503),
        delay: Some(DelayFault {
            percent: 10.0,
            lognormal: Some(LogNormalDelay {
                median: Some(FaultDuration::from_millis(500)),
                mu: None,
                sigma: 0.5,
            }),
            ..DelayFault::default()
        }),
        ..rule("mix")
    })
    .unwrap();
    let t = target();
    let r = req("/api");
    let mut rng = reg.rng();
    let n = 200_000u64;
    let (mut aborts, mut delays) = (0, 0);
    for _ in 0..n {
        if let Some(p) = reg.plan(&r, &t, &mut rng) {
            aborts += u64::from(p.abort_http_status().is_some());
            delays += u64::from(p.request_delay().is_some());
        }
    }
    assert!(within_binomial(aborts, n, 0.001), "aborts {aborts}");
    assert!(within_binomial(delays, n, 0.10), "delays {delays}");
    let s = reg.stats("mix").unwrap();
    assert_eq!(s.matched(), n);
    assert_eq!(s.injected(FaultKind::Abort), aborts);
    assert_eq!(s.injected(FaultKind::Delay), delays);
    // The histogram's median bucket: half the log-normal(500ms) delays are ≤ 500ms.
    let h = s.snapshot().delay_ms;
    let le_500: u64 = h.counts[..8].iter().sum();
    assert!(within_binomial(le_500, delays, 0.5), "{le_500} of {delays}");
}

#[test]
fn same_seed_same_decisions() {
    let run = || {
        let reg = FaultRegistry::with_seed(99);
        reg.put(FaultRule {
            abort: abort(30.0, 503),
            ..rule("a")
        })
        .unwrap();
        let mut rng = reg.rng();
        let r = req("/");
        (0..200)
            .map(|_| reg.plan(&r, &target(), &mut rng).is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn matching_uses_path_method_headers_and_names() {
    let reg = FaultRegistry::new();
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("x-canary".to_string(), ValueMatch::Exact("true".into()));
    headers.insert("x-user".to_string(), ValueMatch::Regex("^test-".into()));
    headers.insert("x-skip".to_string(), ValueMatch::Present(false));
    reg.put(FaultRule {
        matcher: FaultMatch {
            listener: Some("edge".into()),
            route: Some("api".into()),
            cluster: Some("orders".into()),
            path_prefix: Some("/api".into()),
            methods: Some(vec!["POST".into()]),
            headers,
            ..FaultMatch::default()
        },
        abort: abort(100.0, 503),
        ..rule("m")
    })
    .unwrap();
    let mut rng = reg.rng();
    let base = || {
        Request::post("/api/orders")
            .header("x-canary", "true")
            .header("x-user", "test-7")
            .body(())
            .unwrap()
    };
    let t = target();
    assert!(reg.plan(&base(), &t, &mut rng).is_some());
    let mut r = base();
    *r.uri_mut() = "/apix".parse().unwrap();
    assert!(reg.plan(&r, &t, &mut rng).is_none());
    let mut r = base();
    *r.method_mut() = http::Method::GET;
    assert!(reg.plan(&r, &t, &mut rng).is_none());
    let mut r = base();
    r.headers_mut().insert("x-user", "prod-1".parse().unwrap());
    assert!(reg.plan(&r, &t, &mut rng).is_none());
    let mut r = base();
    r.headers_mut().insert("x-skip", "1".parse().unwrap());
    assert!(reg.plan(&r, &t, &mut rng).is_none());
    for other in [
        FaultTarget {
            listener: "internal".into(),
            ..(*t).clone()
        },
        FaultTarget {
            route: "web".into(),
            ..(*t).clone()
        },
        FaultTarget {
            cluster: None,
            ..(*t).clone()
        },
    ] {
        assert!(reg.plan(&base(), &other, &mut rng).is_none());
    }
    assert_eq!(reg.stats("m").unwrap().matched(), 1);
}

#[test]
fn scope_selects_the_layer_instance() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        scope: FaultScope::Attempt,
        abort: abort(100.0, 503),
        ..rule("per-try")
    })
    .unwrap();
    let mut rng = reg.rng();
    let outer = target();
    let inner = FaultTarget {
        scope: FaultScope::Attempt,
        ..(*outer).clone()
    };
    assert!(reg.plan(&req("/"), &outer, &mut rng).is_none());
    assert!(reg.plan(&req("/"), &inner, &mut rng).is_some());
}

#[test]
fn first_rule_wins_per_kind() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 100, DelayPhase::Request),
        ..rule("a")
    })
    .unwrap();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 500, DelayPhase::Request),
        abort: abort(100.0, 502),
        ..rule("b")
    })
    .unwrap();
    reg.put(FaultRule {
        abort: abort(100.0, 504),
        delay: fixed_delay(100.0, 700, DelayPhase::Response),
        ..rule("c")
    })
    .unwrap();
    let mut rng = reg.rng();
    let p = reg.plan(&req("/"), &target(), &mut rng).unwrap();
    assert_eq!(p.request_delay(), Some(Duration::from_millis(100)));
    assert_eq!(p.response_delay(), Some(Duration::from_millis(700)));
    assert_eq!(p.abort_http_status(), Some(502));
    assert_eq!(p.applied().rules(), "a,b,c");
    assert_eq!(p.applied().delay(), Duration::from_millis(800));
    assert_eq!(reg.stats("b").unwrap().injected(FaultKind::Delay), 0);
    assert_eq!(reg.stats("c").unwrap().injected(FaultKind::Abort), 0);
    assert_eq!(reg.stats("c").unwrap().matched(), 1);
}

#[tokio::test(start_paused = true)]
async fn changes_do_not_disturb_requests_in_flight() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        delay: fixed_delay(100.0, 1000, DelayPhase::Request),
        abort: abort(100.0, 503),
        ..rule("a")
    })
    .unwrap();
    let up = Upstream::new();
    let layer = FaultLayer::new(reg.clone(), target());
    let mut svc = layer.layer_service(up.service());
    let in_flight = tokio::spawn(async move {
        let start = Instant::now();
        let resp = call(&mut svc, req("/")).await.unwrap();
        (resp.status(), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reg.delete("a"), Some(RuleSource::Api));
    reg.disable_all();
    let (status, took) = in_flight.await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(took, Duration::from_secs(1));
    reg.enable_all();
    let mut svc = layer.layer_service(up.service());
    assert_eq!(call(&mut svc, req("/")).await.unwrap().status(), 200);
}

#[test]
fn reload_replaces_config_rules_and_keeps_api_rules() {
    let reg = FaultRegistry::new();
    let r = |name: &str, status: u32| FaultRule {
        abort: abort(1.0, status),
        ..rule(name)
    };
    reg.load_config(vec![r("a", 500), r("b", 500)]).unwrap();
    assert_eq!(reg.put(r("c", 503)), Ok(PutOutcome::Created));
    assert_eq!(reg.put(r("b", 502)), Ok(PutOutcome::Replaced));
    assert_eq!(reg.put(r("c", 504)), Ok(PutOutcome::Replaced));
    let a_stats = reg.stats("a").unwrap();
    reg.load_config(vec![r("a", 500), r("b", 500), r("d", 500)])
        .unwrap();
    let view = reg.view();
    let listed: Vec<(&str, RuleSource, u32)> = view
        .rules
        .iter()
        .map(|v| {
            (
                v.rule.name.as_str(),
                v.source,
                v.rule.abort.as_ref().unwrap().http_status.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("a", RuleSource::Config, 500),
            ("d", RuleSource::Config, 500),
            // API rules in creation order: `b` became an API rule after `c` was created.
            ("c", RuleSource::Api, 504),
            ("b", RuleSource::Api, 502),
        ]
    );
    // An unchanged config rule keeps its counters.
    assert!(Arc::ptr_eq(&a_stats, &reg.stats("a").unwrap()));
    // A bad reload changes nothing and names the rule by index.
    let errs = reg
        .load_config(vec![r("a", 500), r("a", 500), r("x", 42)])
        .unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["[1].name", "[2].abort.http_status"]);
    assert_eq!(reg.view().rules.len(), 4);
    assert_eq!(reg.delete("a"), Some(RuleSource::Config));
    assert_eq!(reg.delete("a"), None);
    // An invalid put is refused with field errors and changes nothing.
    let bad = reg.put(r("y", 1000)).unwrap_err();
    assert_eq!(bad[0].field, "abort.http_status");
    assert!(reg.get("y").is_none());
}

#[test]
fn writes_under_concurrent_readers() {
    let reg = FaultRegistry::with_seed(1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let reg = reg.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t = target();
                let r = req("/api");
                let mut rng = reg.rng();
                let mut seen = [0u64; 2];
                // At least one read per thread, however the threads are scheduled.
                loop {
                    match reg.plan(&r, &t, &mut rng) {
                        None => seen[0] += 1,
                        Some(p) => {
                            // A snapshot is whole: every rule aborts with 503 and delays 0ms.
                            assert_eq!(p.abort_http_status(), Some(503));
                            seen[1] += 1;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    for i in 0..2000 {
        let name = format!("r{}", i % 7);
        reg.put(FaultRule {
            abort: abort(100.0, 503),
            delay: fixed_delay(50.0, 0, DelayPhase::Request),
            ..rule(&name)
        })
        .unwrap();
        if i % 3 == 0 {
            reg.delete(&format!("r{}", (i + 3) % 7));
        }
        if i % 100 == 0 {
            reg.disable_all();
            reg.enable_all();
        }
    }
    reg.disable_all();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.join().unwrap();
        assert!(seen[0] + seen[1] > 0);
    }
    let names: Vec<String> = reg.view().rules.into_iter().map(|r| r.rule.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names.len(), sorted.len(), "names are unique: {names:?}");
}

#[tokio::test(start_paused = true)]
async fn stats_render_as_prometheus_and_json() {
    let reg = FaultRegistry::new();
    reg.load_config(vec![FaultRule {
        abort: abort(100.0, 503),
        delay: fixed_delay(100.0, 30, DelayPhase::Request),
        ..rule("cfg-rule")
    }])
    .unwrap();
    let up = Upstream::new();
    let mut svc = FaultLayer::new(reg.clone(), target()).layer_service(up.service());
    for _ in 0..3 {
        call(&mut svc, req("/")).await.unwrap();
    }
    let mut out = String::new();
    reg.render_prometheus(&mut out);
    for line in [
        "# TYPE otlp_mesh_fault_injected_total counter",
        "otlp_mesh_fault_injection_enabled 1",
        "otlp_mesh_fault_matched_total{rule=\"cfg-rule\",source=\"config\"} 3",
        "otlp_mesh_fault_injected_total{rule=\"cfg-rule\",source=\"config\",kind=\"abort\"} 3",
        "otlp_mesh_fault_injected_total{rule=\"cfg-rule\",source=\"config\",kind=\"delay\"} 3",
        "otlp_mesh_fault_skipped_total{rule=\"cfg-rule\",source=\"config\",reason=\"max_active\"} 0",
        "otlp_mesh_fault_delay_seconds_bucket{rule=\"cfg-rule\",source=\"config\",le=\"0.025\"} 0",
        "otlp_mesh_fault_delay_seconds_bucket{rule=\"cfg-rule\",source=\"config\",le=\"0.05\"} 3",
        "otlp_mesh_fault_delay_seconds_bucket{rule=\"cfg-rule\",source=\"config\",le=\"+Inf\"} 3",
        "otlp_mesh_fault_delay_seconds_sum{rule=\"cfg-rule\",source=\"config\"} 0.09",
        "otlp_mesh_fault_delay_seconds_count{rule=\"cfg-rule\",source=\"config\"} 3",
        "otlp_mesh_fault_matched_total{rule=\"headers\",source=\"header\"} 0",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
    }

    let json = serde_json::to_value(reg.view()).unwrap();
    assert_eq!(json["enabled"], true);
    let r = &json["rules"][0];
    assert_eq!(r["source"], "config");
    assert_eq!(r["status"], "active");
    assert_eq!(r["rule"]["name"], "cfg-rule");
    assert_eq!(r["rule"]["delay"]["fixed"], "30ms");
    assert_eq!(r["stats"]["matched"], 3);
    assert_eq!(r["stats"]["injected"]["abort"], 3);
    assert_eq!(r["stats"]["delay_ms"]["count"], 3);
    assert_eq!(r["stats"]["delay_ms"]["counts"][4], 3); // 25ms < d ≤ 50ms
    // What GET shows is what PUT accepts.
    let back = parse_rule_json(r["rule"].to_string().as_bytes()).unwrap();
    assert_eq!(back.name, "cfg-rule");
}

#[tokio::test(start_paused = true)]
async fn works_as_a_tower_layer_in_a_stack() {
    let reg = FaultRegistry::new();
    reg.put(FaultRule {
        abort: abort(100.0, 418),
        ..rule("teapot")
    })
    .unwrap();
    let up = Upstream::new();
    let svc = tower::ServiceBuilder::new()
        .layer(FaultLayer::new(reg, target()))
        .service(up.service());
    let resp = svc.oneshot(req("/")).await.unwrap();
    assert_eq!(resp.status(), 418);
}

#[test]
fn bodies_and_futures_are_send_and_unpin_when_their_parts_are() {
    fn send_unpin<T: Send + Unpin>() {}
    fn send<T: Send>() {}
    send_unpin::<FaultBody<Full<Bytes>>>();
    send_unpin::<Throttled<Full<Bytes>>>();
    send::<FaultReset>();
    type Svc = tower::util::BoxCloneService<Req, Resp, TestError>;
    send::<ResponseFuture<<Svc as Service<Req>>::Future, Svc, Req, Full<Bytes>>>();
    send::<Fault<Svc>>();
}
