//! Route matching cost on a 1 000-route table: best case (first route), worst case (last route),
//! a miss, and header-conditioned routes; the segment index against a linear scan in the same run.
//! Run with `cargo bench -p otlp-mesh-proxy --bench router`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use otlp_mesh_proxy::router::RouteTable;
use std::fmt::Write;
use std::hint::black_box;

fn table(n: usize) -> RouteTable<usize> {
    let mut yaml = String::from("listeners:\n  - name: l\n    bind: 127.0.0.1:0\n    routes:\n");
    for i in 0..n {
        // A mix of the kinds of conditions real tables have.
        match i % 4 {
            0 => writeln!(yaml, "      - {{ match: {{ path_prefix: /svc{i}/api }}, cluster: c }}"),
            1 => writeln!(yaml, "      - {{ match: {{ path_exact: /svc{i}/health, methods: [GET] }}, cluster: c }}"),
            2 => writeln!(
                yaml,
                "      - {{ match: {{ path_prefix: /svc{i}, headers: {{ x-tenant: \"t{i}\" }} }}, cluster: c }}"
            ),
            _ => writeln!(yaml, "      - {{ match: {{ path_prefix: /svc{i}, query: {{ v: \"2\" }} }}, cluster: c }}"),
        }
        .ok();
    }
    yaml.push_str("clusters:\n  - { name: c, discovery: { static: [] } }\n");
    let cfg = otlp_mesh_config::parse_str(&yaml, "bench").expect("bench config is valid");
    let mut k = 0;
    RouteTable::compile(&cfg.listeners[0], |_, _| {
        k += 1;
        Some(k)
    })
    .expect("bench routes compile")
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("valid request").into_parts().0
}

fn bench(c: &mut Criterion) {
    let t = table(1000);
    let first = parts("/svc0/api/orders", &[]);
    let last = parts("/svc999/x?a=1&v=2", &[]);
    let header = parts("/svc998/x", &[("x-tenant", "t998")]);
    let miss = parts("/nothing/here", &[]);
    assert!(t.find(&last).is_some() && t.find(&header).is_some() && t.find(&miss).is_none());

    // `indexed` is what the proxy uses; `linear` (test every route in order) is the baseline.
    let mut g = c.benchmark_group("router_1000_routes");
    let cases = [
        ("first_route", &first),
        ("last_route_query", &last),
        ("header_route", &header),
        ("miss", &miss),
    ];
    for (name, req) in cases {
        g.bench_function(format!("indexed/{name}"), |b| {
            b.iter(|| black_box(t.find(black_box(req)).is_some()))
        });
        g.bench_function(format!("linear/{name}"), |b| {
            b.iter(|| black_box(t.find_linear(black_box(req)).is_some()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
