//! Properties every algorithm shares: health is respected, panic mode, slow start.

use crate::*;
use proptest::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 7000))
}

fn algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastRequest,
        Algorithm::PeakEwma,
        Algorithm::Random,
        Algorithm::RingHash(RingHashConfig::default()),
        // A small prime keeps a few hundred table builds quick in debug builds.
        Algorithm::Maglev(MaglevConfig { table_size: 1009 }),
    ]
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[derive(Clone, Copy, Debug)]
enum State {
    Available,
    Unhealthy,
    Ejected,
    EjectionOver,
    Ramping,
    UnhealthyAndEjectionOver,
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Available),
        Just(State::Unhealthy),
        Just(State::Ejected),
        Just(State::EjectionOver),
        Just(State::Ramping),
        Just(State::UnhealthyAndEjectionOver),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn never_picks_an_unavailable_endpoint_while_one_is_available(
        endpoints in prop::collection::vec((state(), 1u32..5), 1..40),
        algorithm in 0usize..7,
        slow_start in prop::bool::ANY,
        seed in any::<u64>(),
    ) {
        fastrand::seed(seed);
        let now = Timestamp::ZERO + secs(100.0);
        let set = EndpointSet::from_weighted(
            endpoints.iter().enumerate().map(|(i, &(_, w))| (addr(i), w)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        for (ep, &(s, _)) in set.endpoints().iter().zip(&endpoints) {
            match s {
                State::Available => {}
                State::Unhealthy => ep.set_healthy(false, Timestamp::ZERO),
                State::Ejected => ep.eject_until(now + secs(30.0)),
                State::EjectionOver => ep.eject_until(Timestamp::ZERO + secs(99.0)),
                State::Ramping => ep.begin_slow_start(Timestamp::ZERO + secs(99.0)),
                State::UnhealthyAndEjectionOver => {
                    ep.eject_until(Timestamp::ZERO + secs(99.0));
                    ep.set_healthy(false, Timestamp::ZERO);
                }
            }
        }
        let any_available = set.endpoints().iter().any(|e| e.is_available(now));
        let ss = if slow_start { SlowStart::new(secs(10.0)) } else { SlowStart::OFF };
        let b = algorithms()[algorithm].build(ss);
        b.prepare(&set);
        for k in 0..300u64 {
            let ctx = PickContext::new(now).with_key(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let p = b.pick(&set, &ctx).unwrap();
            if any_available {
                prop_assert!(
                    p.endpoint.is_available(now),
                    "{} picked {:?}",
                    b.name(),
                    p.endpoint.addr
                );
                prop_assert!(!p.panic);
            } else {
                prop_assert!(p.panic, "{} must report panic mode", b.name());
            }
        }
        prop_assert_eq!(set.health(now).panic, !any_available);
    }
}

#[test]
fn single_available_endpoint_among_many_is_always_found() {
    let now = Timestamp::ZERO;
    let set = EndpointSet::from_addrs((0..1000).map(addr));
    for (i, ep) in set.endpoints().iter().enumerate() {
        if i != 637 {
            ep.set_healthy(false, now);
        }
    }
    for a in algorithms() {
        let b = a.build(SlowStart::OFF);
        b.prepare(&set);
        for k in 0..200u64 {
            let p = b.pick(&set, &PickContext::new(now).with_key(k)).unwrap();
            assert_eq!(p.endpoint.addr, addr(637), "{}", b.name());
            assert!(!p.panic);
        }
    }
}

#[test]
fn panic_mode_picks_among_all_when_none_is_available() {
    let now = Timestamp::ZERO;
    let set = EndpointSet::from_addrs((0..8).map(addr));
    for ep in set.endpoints() {
        ep.set_healthy(false, now);
    }
    for a in algorithms() {
        let b = a.build(SlowStart::OFF);
        let mut seen = std::collections::HashSet::new();
        for k in 0..400u64 {
            let p = b.pick(&set, &PickContext::new(now).with_key(k)).unwrap();
            assert!(p.panic, "{}", b.name());
            seen.insert(p.endpoint.addr);
        }
        // Panic mode still balances: P2C variants may favour some, but none sticks to one.
        assert!(seen.len() >= 4, "{}: {seen:?}", b.name());
    }
}

#[test]
fn forced_panic_ignores_health() {
    let now = Timestamp::ZERO;
    let set = EndpointSet::from_addrs((0..4).map(addr));
    set.endpoints()[0].set_healthy(false, now);
    set.force_panic(true);
    for a in algorithms() {
        let b = a.build(SlowStart::OFF);
        let picks: Vec<Pick<'_>> = (0..400u64)
            .map(|k| b.pick(&set, &PickContext::new(now).with_key(k)).unwrap())
            .collect();
        assert!(picks.iter().all(|p| p.panic), "{}", b.name());
        assert!(
            picks.iter().any(|p| p.endpoint.addr == addr(0)),
            "{} balances over all endpoints",
            b.name()
        );
    }
}

#[test]
fn empty_set_picks_nothing() {
    let set = EndpointSet::default();
    for a in algorithms() {
        let b = a.build(SlowStart::new(secs(1.0)));
        b.prepare(&set);
        assert!(
            b.pick(&set, &PickContext::new(Timestamp::ZERO)).is_none(),
            "{}",
            b.name()
        );
    }
}

#[test]
fn names_round_trip() {
    for name in Algorithm::NAMES {
        let a = Algorithm::from_name(name).unwrap();
        assert_eq!(a.name(), name);
        assert_eq!(a.build(SlowStart::OFF).name(), name);
        assert!(a.validate().is_ok());
    }
    assert!(Algorithm::from_name("least_conn").is_none());
    assert!(
        Algorithm::Maglev(MaglevConfig { table_size: 65_536 })
            .validate()
            .is_err()
    );
    let bad_ring = RingHashConfig {
        min_ring_size: 10,
        max_ring_size: 5,
        ..RingHashConfig::default()
    };
    assert!(Algorithm::RingHash(bad_ring).validate().is_err());
    assert!(Algorithm::RingHash(RingHashConfig::default()).uses_key());
}

#[test]
fn slow_start_factor_ramps_linearly_over_the_window() {
    let ss = SlowStart::new(secs(10.0));
    let ep = Endpoint::with_options(addr(1), 4, &EndpointOptions::default(), Timestamp::ZERO);
    let t0 = Timestamp::ZERO + secs(50.0);
    assert_eq!(ss.factor(&ep, t0), 1.0, "not ramping");
    ep.begin_slow_start(t0);
    let f = |s: f64| ss.factor(&ep, t0 + secs(s));
    assert!((f(0.0) - 0.1).abs() < 1e-9);
    assert!((f(5.0) - 0.55).abs() < 1e-9);
    assert!((f(9.0) - 0.91).abs() < 1e-9);
    assert_eq!(f(10.0), 1.0);
    assert_eq!(ss.effective_weight(&ep, t0 + secs(5.0)), 4.0 * 0.55);
    assert_eq!(SlowStart::OFF.factor(&ep, t0), 1.0);
}

/// Share of picks going to a newcomer added at t = 0 next to an established endpoint.
fn newcomer_share(algorithm: &Algorithm, at: f64, hold: bool) -> f64 {
    let old =
        EndpointSet::from_weighted([(addr(0), 1)], EndpointOptions::default(), Timestamp::ZERO);
    let set = old.update([(addr(0), 1), (addr(1), 1)], Timestamp::ZERO);
    let now = Timestamp::ZERO + secs(at);
    let b = algorithm.build(SlowStart::new(secs(10.0)));
    b.prepare(&set);
    let picks = if hold { 400 } else { 20_000 };
    let mut guards = Vec::new();
    let mut newcomer = 0;
    for _ in 0..picks {
        let p = b.pick(&set, &PickContext::new(now)).unwrap();
        newcomer += usize::from(p.endpoint.addr == addr(1));
        if hold {
            guards.push(p.endpoint.start());
        }
    }
    newcomer as f64 / picks as f64
}

#[test]
fn slow_start_ramps_the_share_of_a_new_endpoint() {
    fastrand::seed(1);
    // Weight factor f against 1: share f / (1 + f).
    let expected = |f: f64| f / (1.0 + f);
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::LeastRequest,
    ] {
        for (t, f) in [(0.0, 0.1), (5.0, 0.55), (10.0, 1.0), (60.0, 1.0)] {
            let share = newcomer_share(&algorithm, t, false);
            assert!(
                (share - expected(f)).abs() < 0.02,
                "{} at {t}s: {share} vs {}",
                algorithm.name(),
                expected(f)
            );
        }
    }
    // Under load, P2C settles in-flight (and so traffic) in proportion to effective weight.
    let p2c = Algorithm::PeakEwma;
    let shares: Vec<f64> = [0.0, 5.0, 10.0]
        .iter()
        .map(|&t| newcomer_share(&p2c, t, true))
        .collect();
    assert!(shares[0] < 0.12 && shares[0] > 0.04, "{shares:?}");
    assert!(shares[1] > 0.30 && shares[1] < 0.40, "{shares:?}");
    assert!(shares[2] > 0.45 && shares[2] < 0.55, "{shares:?}");
    let lr = newcomer_share(&Algorithm::LeastRequest, 0.0, true);
    assert!(lr < 0.12 && lr > 0.04, "least request under load: {lr}");
}

#[test]
fn recovered_endpoint_ramps_after_its_ejection() {
    let set = EndpointSet::from_addrs([addr(0), addr(1)]);
    set.endpoints()[1].eject_until(Timestamp::ZERO + secs(30.0));
    let b = Random::new(SlowStart::new(secs(10.0)));
    let share = |t: f64| {
        let now = Timestamp::ZERO + secs(t);
        (0..20_000)
            .filter(|_| b.pick(&set, &PickContext::new(now)).unwrap().endpoint.addr == addr(1))
            .count() as f64
            / 20_000.0
    };
    assert_eq!(share(29.0), 0.0);
    assert!((share(30.0) - 0.1 / 1.1).abs() < 0.02);
    assert!((share(35.0) - 0.55 / 1.55).abs() < 0.02);
    assert!((share(40.0) - 0.5).abs() < 0.02);
}

#[test]
fn picks_work_through_the_trait_object_with_a_driven_clock() {
    let clock = ManualClock::new();
    let c = Clock::from(clock.clone());
    let set = EndpointSet::from_weighted(
        [(addr(0), 1), (addr(1), 1)],
        EndpointOptions::default(),
        clock.now(),
    );
    let b = Algorithm::PeakEwma.build(SlowStart::OFF);
    // Endpoint 0 answers in 5 ms, endpoint 1 in 50 ms: traffic converges on endpoint 0.
    let mut to_fast = 0;
    for _ in 0..200 {
        let now = c.now();
        let p = b.pick(&set, &PickContext::new(now)).unwrap();
        let mut g = p.endpoint.start_at(&c, now);
        let fast = p.endpoint.addr == addr(0);
        to_fast += usize::from(fast);
        clock.advance(Duration::from_millis(if fast { 5 } else { 50 }));
        g.complete(Outcome::Success);
    }
    assert!(to_fast > 190, "{to_fast}");
}
