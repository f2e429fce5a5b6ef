#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use otlp_mesh_balance::{EndpointOptions, ManualClock};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], i))
}

fn set(n: u16) -> EndpointSet {
    EndpointSet::from_weighted(
        (1..=n).map(|i| (addr(i), 1)),
        EndpointOptions::default(),
        Timestamp::ZERO,
    )
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config() -> OutlierConfig {
    OutlierConfig {
        cluster: "c".into(),
        consecutive_5xx: Some(5),
        consecutive_gateway_errors: Some(3),
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_time: secs(100),
        max_ejection_percent: 50.0,
        success_rate: None,
        failure_percentage: None,
    }
}

#[test]
fn consecutive_gateway_errors_trigger_once_and_success_resets() {
    let s = set(3);
    let (d, mut rx) = OutlierDetector::new(config(), &s);
    d.observe(addr(1), Observation::ConnectFailure);
    d.observe(addr(1), Observation::Status(502));
    d.observe(addr(1), Observation::Status(200));
    d.observe(addr(1), Observation::Status(503));
    d.observe(addr(1), Observation::Status(504));
    assert!(rx.try_recv().is_err(), "a success resets the count");
    d.observe(addr(1), Observation::TransportError);
    assert_eq!(
        rx.try_recv().unwrap(),
        (addr(1), EjectReason::ConsecutiveGatewayErrors)
    );
    d.observe(addr(1), Observation::Status(503));
    assert!(rx.try_recv().is_err(), "fires once, at the threshold");
    // 500 is a 5xx but not a gateway error: it resets the gateway count only.
    let (d, mut rx) = OutlierDetector::new(config(), &s);
    for status in [503, 503, 500, 503, 500] {
        d.observe(addr(2), Observation::Status(status));
    }
    assert_eq!(
        rx.try_recv().unwrap(),
        (addr(2), EjectReason::Consecutive5xx)
    );
    assert!(rx.try_recv().is_err());
    // Unknown endpoints are ignored.
    d.observe(addr(9), Observation::ConnectFailure);
}

#[test]
fn ejection_time_grows_with_each_ejection_and_is_capped() {
    let clock = ManualClock::new();
    let s = set(3);
    let (d, _rx) = OutlierDetector::new(config(), &s);
    let mut st = DetectorState::default();
    let ep = &s.endpoints()[0];
    let mut durations = Vec::new();
    for _ in 0..5 {
        let now = clock.now();
        assert!(d.on_trigger(&mut st, &s, addr(1), EjectReason::Consecutive5xx, now));
        assert!(!ep.is_available(now));
        let until = ep.ejected_until().unwrap();
        durations.push(until.saturating_duration_since(now).as_secs());
        // Still ejected: a second trigger does nothing.
        assert!(!d.on_trigger(&mut st, &s, addr(1), EjectReason::Consecutive5xx, now));
        clock.set(until);
        assert!(
            ep.is_available(clock.now()),
            "returns when the ejection ends"
        );
    }
    assert_eq!(durations, vec![30, 60, 90, 100, 100]);
    assert_eq!(d.stats().ejections(EjectReason::Consecutive5xx), 5);
    assert_eq!(st.multiplier(&addr(1)), 5);
    // Intervals without an ejection decay the multiplier.
    for _ in 0..3 {
        d.on_interval(&mut st, &s, clock.now());
    }
    assert_eq!(st.multiplier(&addr(1)), 2);
    assert!(d.on_trigger(
        &mut st,
        &s,
        addr(1),
        EjectReason::Consecutive5xx,
        clock.now()
    ));
    assert_eq!(
        ep.ejected_until()
            .unwrap()
            .saturating_duration_since(clock.now()),
        secs(90)
    );
}

#[test]
fn max_ejection_percent_limits_but_always_allows_one() {
    let s = set(4);
    let cfg = OutlierConfig {
        max_ejection_percent: 10.0,
        ..config()
    };
    let (d, _rx) = OutlierDetector::new(cfg, &s);
    let mut st = DetectorState::default();
    let now = Timestamp::ZERO;
    assert!(d.on_trigger(&mut st, &s, addr(1), EjectReason::Consecutive5xx, now));
    assert!(!d.on_trigger(&mut st, &s, addr(2), EjectReason::Consecutive5xx, now));
    assert_eq!(d.stats().ejections_overflow.load(Ordering::Relaxed), 1);
    let (d, _rx) = OutlierDetector::new(config(), &set(4));
    let s = set(4);
    d.sync_hosts(&s);
    assert!(d.on_trigger(&mut st, &s, addr(1), EjectReason::Consecutive5xx, now));
    assert!(d.on_trigger(&mut st, &s, addr(2), EjectReason::Consecutive5xx, now));
    assert!(!d.on_trigger(&mut st, &s, addr(3), EjectReason::Consecutive5xx, now));
    assert_eq!(s.health(now).available, 2);
}

#[test]
fn success_rate_ejects_the_statistical_outlier_with_enough_volume() {
    let s = set(5);
    let cfg = OutlierConfig {
        success_rate: Some(SuccessRate {
            minimum_hosts: 3,
            request_volume: 100,
            stdev_factor: 1.9,
        }),
        consecutive_5xx: None,
        consecutive_gateway_errors: None,
        ..config()
    };
    let (d, _rx) = OutlierDetector::new(cfg, &s);
    let mut st = DetectorState::default();
    let feed = |i: u16, ok: u32, bad: u32| {
        for _ in 0..ok {
            d.observe(addr(i), Observation::Status(200));
        }
        for _ in 0..bad {
            d.observe(addr(i), Observation::Status(500));
        }
    };
    for i in 1..=4 {
        feed(i, 198, 2);
    }
    feed(5, 140, 60);
    let now = Timestamp::ZERO;
    let out = d.on_interval(&mut st, &s, now);
    assert_eq!(out, vec![(addr(5), EjectReason::SuccessRate)]);
    // Counts were reset: the next interval has no volume and judges nobody.
    let later = now + secs(10);
    assert!(d.on_interval(&mut st, &s, later).is_empty());
    // Too few endpoints with volume: nobody is judged.
    let s2 = set(5);
    let (d2, _rx) = OutlierDetector::new(d.config().clone(), &s2);
    for _ in 0..200 {
        d2.observe(addr(1), Observation::Status(200));
        d2.observe(addr(2), Observation::Status(500));
    }
    assert!(
        d2.on_interval(&mut DetectorState::default(), &s2, now)
            .is_empty()
    );
}

#[test]
fn failure_percentage_uses_a_fixed_threshold() {
    let s = set(3);
    let cfg = OutlierConfig {
        failure_percentage: Some(FailurePercentage {
            threshold: 50.0,
            minimum_hosts: 2,
            request_volume: 10,
        }),
        consecutive_5xx: None,
        consecutive_gateway_errors: None,
        max_ejection_percent: 100.0,
        ..config()
    };
    let (d, _rx) = OutlierDetector::new(cfg, &s);
    for _ in 0..10 {
        d.observe(addr(1), Observation::Status(200));
        d.observe(addr(2), Observation::Status(503));
        d.observe(addr(3), Observation::Status(404));
    }
    let out = d.on_interval(&mut DetectorState::default(), &s, Timestamp::ZERO);
    assert_eq!(out, vec![(addr(2), EjectReason::FailurePercentage)]);
}

#[test]
fn panic_guard_forces_and_releases_panic_mode() {
    let s = set(4);
    let g = PanicGuard::new("c", 50.0);
    let now = Timestamp::ZERO;
    assert!(!g.evaluate(&s, now));
    s.endpoints()[0].eject_until(now + secs(10));
    assert!(!g.evaluate(&s, now), "75 % available");
    s.endpoints()[1].set_healthy(false, now);
    assert!(!g.evaluate(&s, now), "50 % is not below 50 %");
    s.endpoints()[2].set_healthy(false, now);
    assert!(g.evaluate(&s, now));
    assert!(s.is_panic_forced() && s.health(now).panic);
    assert_eq!(g.entered_total(), 1);
    assert!(g.evaluate(&s, now));
    assert_eq!(g.entered_total(), 1, "counted once per entry");
    // The ejection ends: 2 of 4 available again.
    assert!(!g.evaluate(&s, now + secs(10)));
    assert!(!s.is_panic_forced());
    assert!(!PanicGuard::new("c", 0.0).evaluate(&s, now));
}

#[tokio::test(start_paused = true)]
async fn control_loop_ejects_on_trigger_and_readmits_after_the_ejection() {
    let manual = ManualClock::new();
    let clock = Clock::from(manual.clone());
    let s = Arc::new(ArcSwap::from_pointee(set(3)));
    let cfg = OutlierConfig {
        base_ejection_time: Duration::from_millis(200),
        ..config()
    };
    let (d, rx) = OutlierDetector::new(cfg, &s.load());
    let guard = Arc::new(PanicGuard::new("c", 50.0));
    let h = spawn(d.clone(), rx, s.clone(), clock.clone(), Some(guard));
    for _ in 0..3 {
        d.observe(addr(2), Observation::ConnectFailure);
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if d.stats().ejected.load(Ordering::Relaxed) == 1 {
            break;
        }
    }
    assert_eq!(d.stats().ejected.load(Ordering::Relaxed), 1);
    assert!(!s.load().endpoints()[1].is_available(clock.now()));
    // The loop wakes when the ejection ends and counts the endpoint back in.
    manual.advance(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(s.load().endpoints()[1].is_available(clock.now()));
    assert_eq!(d.stats().ejected.load(Ordering::Relaxed), 0);
    h.abort();
}

#[test]
fn counters_follow_set_updates() {
    let s = set(2);
    let (d, mut rx) = OutlierDetector::new(config(), &s);
    let s2 = s.update([(addr(1), 1), (addr(3), 1)], Timestamp::ZERO);
    for _ in 0..3 {
        d.observe(addr(3), Observation::Status(502));
    }
    assert!(rx.try_recv().is_err(), "unknown until synced");
    d.sync_hosts(&s2);
    for _ in 0..3 {
        d.observe(addr(3), Observation::Status(502));
    }
    assert_eq!(
        rx.try_recv().unwrap(),
        (addr(3), EjectReason::ConsecutiveGatewayErrors)
    );
    d.observe(addr(2), Observation::Status(502));
}
