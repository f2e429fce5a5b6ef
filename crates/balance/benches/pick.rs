//! Pick cost per algorithm at 10 / 1 000 / 10 000 endpoints, plus the per-request extras
//! (clock read, start + complete) and per-set table builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use otlp_mesh_balance::{
    Adaptive, AdaptiveConfig, Algorithm, Balancer, Clock, Endpoint, EndpointOptions, EndpointSet,
    MaglevConfig, Outcome, PickContext, RingHashConfig, SlowStart, Timestamp,
};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastRequest,
        Algorithm::PeakEwma,
        Algorithm::Random,
        Algorithm::RingHash(RingHashConfig::default()),
        Algorithm::Maglev(MaglevConfig::default()),
    ]
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

/// A set whose endpoints all have latency samples (so P2C decays real estimates).
fn set(n: usize, weighted: bool) -> EndpointSet {
    let set = EndpointSet::from_weighted(
        (0..n).map(|i| (addr(i), if weighted { 1 + (i % 4) as u32 } else { 1 })),
        EndpointOptions::default(),
        Timestamp::ZERO,
    );
    let mut rng = fastrand::Rng::with_seed(42);
    for ep in set.endpoints() {
        ep.record(
            Duration::from_micros(rng.u64(500..20_000)),
            Outcome::Success,
            Timestamp::ZERO,
        );
    }
    set
}

fn pick(c: &mut Criterion) {
    let now = Timestamp::ZERO + Duration::from_secs(1);
    for (group_name, weighted) in [("pick", false), ("pick_weighted", true)] {
        let mut group = c.benchmark_group(group_name);
        for &n in &SIZES {
            let set = set(n, weighted);
            for algorithm in algorithms() {
                let balancer = algorithm.build(SlowStart::OFF);
                balancer.prepare(&set);
                let mut key = 0u64;
                group.bench_function(BenchmarkId::new(algorithm.name(), n), |b| {
                    b.iter(|| {
                        key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                        let ctx = PickContext::new(now).with_key(key);
                        black_box(balancer.pick(black_box(&set), &ctx).map(|p| p.endpoint))
                    })
                });
            }
        }
        group.finish();
    }
}

/// Adaptive pick overhead against its delegate, plus its per-request record and per-interval
/// evaluation, at 1 000 endpoints.
fn adaptive(c: &mut Criterion) {
    let now = Timestamp::ZERO + Duration::from_secs(1);
    let mut group = c.benchmark_group("adaptive");
    let set = set(1_000, false);
    for first in [Algorithm::RoundRobin, Algorithm::PeakEwma] {
        let delegate = first.build(SlowStart::OFF);
        delegate.prepare(&set);
        // The first candidate is the initial one: this adaptive picks through `first`.
        let adaptive = Adaptive::new(
            AdaptiveConfig {
                candidates: vec![first.clone(), Algorithm::LeastRequest],
                ..AdaptiveConfig::default()
            },
            SlowStart::OFF,
        );
        adaptive.prepare(&set);
        let ctx = PickContext::new(now);
        group.bench_function(BenchmarkId::new("delegate", first.name()), |b| {
            b.iter(|| black_box(delegate.pick(black_box(&set), &ctx).map(|p| p.endpoint)))
        });
        group.bench_function(BenchmarkId::new("adaptive", first.name()), |b| {
            b.iter(|| black_box(adaptive.pick(black_box(&set), &ctx).map(|p| p.endpoint)))
        });
    }
    let adaptive = Adaptive::new(AdaptiveConfig::default(), SlowStart::OFF);
    adaptive.prepare(&set);
    adaptive.evaluate(&set, now);
    let mut i = 0usize;
    group.bench_function("record", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            adaptive.record(
                black_box(&set.endpoints()[i]),
                Duration::from_micros(700),
                Outcome::Success,
            )
        })
    });
    let mut t = now;
    group.bench_function("evaluate", |b| {
        b.iter(|| {
            t = t + Duration::from_millis(100);
            black_box(adaptive.evaluate(&set, t))
        })
    });
    group.finish();
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_request");
    let clock = Clock::system();
    group.bench_function("clock_now", |b| b.iter(|| black_box(clock.now())));
    let ep = Arc::new(Endpoint::new(addr(1), 1));
    group.bench_function("start_complete_drop", |b| {
        b.iter(|| {
            let now = clock.now();
            let mut guard = ep.start_at(&clock, now);
            guard.complete_at(now + Duration::from_micros(700), Outcome::Success);
            drop(black_box(guard));
        })
    });
    group.finish();
}

fn prepare(c: &mut Criterion) {
    let mut group = c.benchmark_group("prepare");
    group.sample_size(10);
    for &n in &[1_000usize, 10_000] {
        let base = set(n, true);
        for algorithm in [
            Algorithm::WeightedRoundRobin,
            Algorithm::RingHash(RingHashConfig::default()),
            Algorithm::Maglev(MaglevConfig::default()),
        ] {
            let balancer = algorithm.build(SlowStart::OFF);
            group.bench_function(BenchmarkId::new(algorithm.name(), n), |b| {
                b.iter_batched(
                    || EndpointSet::new(base.endpoints().to_vec()),
                    |fresh| {
                        balancer.prepare(&fresh);
                        fresh
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2));
    targets = pick, adaptive, per_request, prepare
}
criterion_main!(benches);
