//! Cost of planning faults per request: no rules, and 10 / 100 non-matching rules plus one match.

use criterion::{Criterion, criterion_group, criterion_main};
use otlp_mesh_chaos::{AbortFault, FaultMatch, FaultRegistry, FaultRule, FaultTarget};
use std::hint::black_box;

fn registry(rules: usize) -> FaultRegistry {
    let reg = FaultRegistry::with_seed(1);
    for i in 0..rules {
        let rule = FaultRule {
            name: format!("r{i}"),
            matcher: FaultMatch {
                path_prefix: Some(format!("/svc{i}")),
                ..FaultMatch::default()
            },
            abort: Some(AbortFault {
                percent: 1.0,
                http_status: Some(503),
                ..AbortFault::default()
            }),
            ..FaultRule::default()
        };
        if reg.put(rule).is_err() {
            return reg;
        }
    }
    reg
}

fn bench(c: &mut Criterion) {
    let target = FaultTarget::new("edge", "api");
    let req = http::Request::get("/svc0/orders/17")
        .body(())
        .unwrap_or_default();
    for n in [0usize, 10, 100] {
        let reg = registry(n);
        let mut rng = reg.rng();
        c.bench_function(&format!("plan/{n}_rules"), |b| {
            b.iter(|| black_box(reg.plan(black_box(&req), &target, &mut rng).is_some()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
