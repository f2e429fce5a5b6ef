//! Every kind of bad config is reported with file, line and field path, all at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use otlp_mesh_config::telemetry::ExportProtocol;
use otlp_mesh_config::{ConfigError, ValueMatch, parse_str};

fn errors(yaml: &str) -> Vec<ConfigError> {
    parse_str(yaml, "mesh.yaml").expect_err("config should be rejected")
}

fn has(errs: &[ConfigError], line: u64, path: &str, text: &str) {
    assert!(
        errs.iter()
            .any(|e| e.line == line && e.path == path && e.message.contains(text)),
        "expected line {line} {path} `{text}` in:\n{}",
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const GOOD: &str = r#"
admin: { bind: 127.0.0.1:9901 }
listeners:
  - name: edge
    bind: 127.0.0.1:8080
    limits: { max_request_headers: 64KiB, max_request_body: 10MiB, header_read_timeout: 10s }
    routes:
      - match: { path_prefix: /api, headers: { x-canary: "true", x-user: { regex: "^a" }, x-debug: { present: false } } }
        split: [ { cluster: orders-v2, weight: 100 } ]
      - name: api
        match: { path_prefix: /api, methods: [GET, POST], query: { v: "2" } }
        split: [ { cluster: orders-v1, weight: 90 }, { cluster: orders-v2, weight: 10 } ]
        timeout: 2s
        rewrite: { path_prefix: /v1, host: orders.internal }
        request_headers: { set: { x-env: prod }, remove: [x-debug] }
clusters:
  - name: orders-v1
    discovery: { static: [ 127.0.0.1:9001, 127.0.0.1:9002 ] }
  - name: orders-v2
    discovery: { static: [ 127.0.0.1:9003 ] }
    protocol: h2
"#;

#[test]
fn accepts_the_documented_example() {
    let cfg = parse_str(GOOD, "mesh.yaml").expect("valid");
    assert_eq!(cfg.listeners.len(), 1);
    let route = &cfg.listeners[0].routes[0];
    assert_eq!(
        route.matcher.headers["x-user"].value,
        ValueMatch::Regex("^a".into())
    );
    assert_eq!(
        route.matcher.headers["x-debug"].value,
        ValueMatch::Present(false)
    );
    assert_eq!(
        cfg.listeners[0].limits.max_request_body.map(|b| b.0),
        Some(10 << 20)
    );
    assert_eq!(
        cfg.listeners[0].routes[1].timeout.map(|t| t.0.as_millis()),
        Some(2000)
    );
}

#[test]
fn reports_every_semantic_error_with_line_and_path() {
    let yaml = r#"
admin: { bind: "localhost" }
listeners:
  - name: edge
    bind: 127.0.0.1:8080
    routes:
      - match: { path_prefix: api, path_regex: "(" }
        cluster: nowhere
      - split: [ { cluster: a, weight: 0 } ]
      - match: { headers: { x-a: { regex: "[" } } }
        cluster: a
  - name: edge
    bind: 127.0.0.1:8080
clusters:
  - name: a
    discovery: { static: [ "not-an-address" ] }
  - name: a
    discovery: { static: [] }
"#;
    let errs = errors(yaml);
    has(&errs, 2, "admin.bind", "not a socket address");
    has(&errs, 7, "listeners[0].routes[0].match", "only one of");
    has(
        &errs,
        7,
        "listeners[0].routes[0].match.path_prefix",
        "must start with `/`",
    );
    has(
        &errs,
        7,
        "listeners[0].routes[0].match.path_regex",
        "invalid regex",
    );
    has(
        &errs,
        8,
        "listeners[0].routes[0].cluster",
        "unknown cluster `nowhere`",
    );
    has(
        &errs,
        9,
        "listeners[0].routes[1].split",
        "all weights are 0",
    );
    has(
        &errs,
        10,
        "listeners[0].routes[2].match.headers.x-a",
        "invalid regex",
    );
    has(&errs, 12, "listeners[1].name", "duplicate listener name");
    has(&errs, 13, "listeners[1].bind", "already used");
    has(
        &errs,
        16,
        "clusters[0].discovery.static[0]",
        "not a socket address",
    );
    has(&errs, 17, "clusters[1].name", "duplicate cluster name");
    assert_eq!(errs.len(), 11, "{errs:#?}");
}

#[test]
fn unknown_field_names_line_and_path() {
    let errs = errors("listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    bnid: x\n");
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(e.line, 4, "{e}");
    assert!(
        e.message.contains("unknown field") && e.message.contains("bnid"),
        "{e}"
    );
    assert!(e.path.starts_with("listeners[0]"), "{e}");
}

#[test]
fn missing_required_field_is_named() {
    let errs = errors("clusters:\n  - name: a\n");
    assert!(errs[0].message.contains("discovery"), "{}", errs[0]);
    assert_eq!(errs[0].line, 2, "{}", errs[0]);
}

#[test]
fn bad_units_and_enums_are_explained() {
    let errs = errors("runtime: { drain_timeout: 10 parsecs }\n");
    assert!(errs[0].message.contains("unknown unit"), "{}", errs[0]);
    assert_eq!(errs[0].path, "runtime.drain_timeout");
    assert_eq!(errs[0].line, 1);

    let errs =
        errors("clusters:\n  - name: a\n    discovery: { static: [] }\n    balancer: fastest\n");
    assert!(errs[0].message.contains("fastest"), "{}", errs[0]);
    assert_eq!(errs[0].line, 4, "{}", errs[0]);
}

#[test]
fn route_without_destination_and_rewrite_without_prefix() {
    let yaml = "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    routes:\n      - match: { path_exact: /x }\n        rewrite: { path_prefix: /y }\n";
    let errs = errors(yaml);
    has(&errs, 5, "listeners[0].routes[0]", "no destination");
    has(
        &errs,
        6,
        "listeners[0].routes[0].rewrite.path_prefix",
        "needs `match.path_prefix`",
    );
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let errs = errors("listeners:\n  - name: a\n   bind: [\n");
    assert!(errs[0].line >= 2, "{}", errs[0]);
}

#[test]
fn display_is_file_line_column_path_message() {
    let errs = errors("admin: { bind: nope }\n");
    assert_eq!(
        errs[0].to_string(),
        "mesh.yaml:1:16: admin.bind: `nope` is not a socket address (expected ip:port, e.g. 127.0.0.1:8080)"
    );
}

/// Errors found while reading the YAML (before validation) name the field path too. The paths are
/// worked out after the error from the document's events (`locate.rs`); these pin each rule.
#[test]
fn reading_errors_name_line_column_and_path() {
    let cases: &[(&str, u64, u64, &str, &str)] = &[
        // An unknown field names itself.
        (
            "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    bnid: x\n",
            4,
            5,
            "listeners[0].bnid",
            "unknown field `bnid`",
        ),
        // A missing field names the mapping, at its first key.
        (
            "clusters:\n  - name: a\n",
            2,
            5,
            "clusters[0]",
            "missing field `discovery`",
        ),
        (
            "listeners:\n  - name: a\n  bind: 127.0.0.1:1\n",
            2,
            5,
            "listeners[0]",
            "missing field `bind`",
        ),
        // A list where a mapping belongs: reported at its first item, named as the list.
        (
            "telemetry:\n  processors:\n    tail_sampling:\n      - decision_wait: 2s\n",
            4,
            7,
            "telemetry.processors.tail_sampling",
            "expected mapping start",
        ),
        // A list where a duration belongs: reported at the key.
        (
            "telemetry:\n  processors:\n    tail_sampling:\n      decision_wait:\n        - 2s\n",
            4,
            7,
            "telemetry.processors.tail_sampling.decision_wait",
            "invalid type: sequence",
        ),
        // Inside a list of a located value (`split`): the list index follows the field.
        (
            "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    routes:\n      - split: [ { cluster: [x], weight: 1 } ]\n",
            5,
            29,
            "listeners[0].routes[0].split[0].cluster",
            "expected string scalar",
        ),
        // A repeated key: the mapping, and `?` for the key.
        (
            "admin:\n  bind: 127.0.0.1:1\n  bind: 127.0.0.1:2\n",
            3,
            3,
            "admin.?",
            "duplicate mapping key: bind",
        ),
        // Hand-written readers name their mapping.
        (
            "clusters:\n  - name: a\n    discovery: { static: [ { address: 127.0.0.1:1, wieght: 2 } ] }\n",
            3,
            52,
            "clusters[0].discovery.static[0]",
            "unknown field `wieght`",
        ),
        (
            "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    routes:\n      - match: { headers: { x-a: { regex: a, exact: b } } }\n        cluster: c\n",
            5,
            34,
            "listeners[0].routes[0].match.headers.x-a",
            "exactly one of exact, regex, present",
        ),
        // YAML syntax errors and unknown anchors: where the reader was when it stopped.
        (
            "runtime: { drain_timeout: 10s\n",
            1,
            10,
            "runtime.?",
            "unclosed bracket",
        ),
        (
            "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    routes:\n      - match: { path_prefix: / }\n        retry:\n          on: [ 5xx\n",
            7,
            15,
            "listeners[0].routes[0].retry.on",
            "unclosed bracket",
        ),
        (
            "clusters:\n  - name: a\n    discovery: { static: [ 127.0.0.1:1 ] }\n    balancer: *nope\n",
            4,
            15,
            "clusters[0]",
            "unknown anchor",
        ),
    ];
    for (yaml, line, column, path, text) in cases {
        let errs = errors(yaml);
        assert_eq!(errs.len(), 1, "{yaml}: {errs:#?}");
        let e = &errs[0];
        assert_eq!(
            (e.line, e.column, e.path.as_str()),
            (*line, *column, *path),
            "{yaml}: {e}"
        );
        assert!(e.message.contains(text), "{yaml}: {e}");
    }
}

mod robustness {
    use otlp_mesh_config::parse_str;
    use proptest::prelude::*;

    // Fragments of real configs, so the generator reaches deep into the model rather than
    // failing at the first character.
    const PIECES: &[&str] = &[
        "listeners:\n",
        "clusters:\n",
        "  - name: a\n",
        "    bind: 127.0.0.1:80\n",
        "    routes:\n",
        "      - match: { path_prefix: /x }\n",
        "        split: [ { cluster: a, weight: 0 } ]\n",
        "        cluster: a\n",
        "    discovery: { static: [ 1.2.3.4:5 ] }\n",
        "admin: { bind: x }\n",
        "runtime: { drain_timeout: 5q }\n",
        "  - [\n",
        "{",
        "}",
        ":",
        "- ",
        "\t",
        "&a ",
        "*a ",
        "<<: *a\n",
        "        timeout: 99999999999h\n",
        "    limits: { max_request_headers: 1 }\n",
        "\"\\u0000\"",
        "~\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parsing_never_panics_on_config_fragments(idx in proptest::collection::vec(0..PIECES.len(), 0..24)) {
            let text: String = idx.iter().map(|&i| PIECES[i]).collect();
            let _ = parse_str(&text, "fuzz.yaml");
        }

        #[test]
        fn parsing_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
            let _ = parse_str(&text, "fuzz.yaml");
        }
    }
}

// ---- telemetry section ----

#[test]
fn tail_sampling_defaults_and_values() {
    let c = parse_str(
        "telemetry:\n  processors:\n    tail_sampling: {}\n",
        "mesh.yaml",
    )
    .unwrap();
    let ts = c
        .telemetry
        .unwrap()
        .value
        .processors
        .tail_sampling
        .unwrap()
        .value;
    assert_eq!(ts.decision_wait.value.0, std::time::Duration::from_secs(5));
    assert_eq!(ts.max_traces.value, 50_000);
    assert_eq!(ts.max_bytes.value.0, 32 << 20);
    assert!(ts.keep_errors);
    assert!(ts.keep_latency_above.is_none() && ts.rate_limit.is_none());
    assert_eq!(ts.decision_cache.value, 100_000);

    let c = parse_str(
        "telemetry:\n  processors:\n    tail_sampling:\n      decision_wait: 2s\n      keep_errors: false\n      keep_latency_above: 500ms\n      rate_limit: { spans_per_second: 1000 }\n",
        "mesh.yaml",
    )
    .unwrap();
    let ts = c
        .telemetry
        .unwrap()
        .value
        .processors
        .tail_sampling
        .unwrap()
        .value;
    assert_eq!(ts.decision_wait.value.0, std::time::Duration::from_secs(2));
    assert!(!ts.keep_errors);
    assert_eq!(
        ts.keep_latency_above.unwrap().value.0,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(ts.rate_limit.unwrap().spans_per_second.value, 1000);
}

#[test]
fn tail_sampling_errors_name_line_and_field() {
    let errs = errors(
        "telemetry:\n  processors:\n    tail_sampling:\n      decision_wait: 0s\n      max_traces: 0\n      max_bytes: 10\n      keep_latency_above: 0ms\n      rate_limit: { spans_per_second: 0 }\n      decision_cache: 0\n",
    );
    let p = "telemetry.processors.tail_sampling";
    has(&errs, 4, &format!("{p}.decision_wait"), "above 0");
    has(&errs, 5, &format!("{p}.max_traces"), "above 0");
    has(&errs, 6, &format!("{p}.max_bytes"), "at least 1KiB");
    has(&errs, 7, &format!("{p}.keep_latency_above"), "above 0");
    has(
        &errs,
        8,
        &format!("{p}.rate_limit.spans_per_second"),
        "above 0",
    );
    has(&errs, 9, &format!("{p}.decision_cache"), "above 0");
}

#[test]
fn loadbalancing_exporter_parses_with_defaults() {
    let c = parse_str(
        "telemetry:\n  exporters:\n    - name: lb\n      loadbalancing:\n        backends: [ http://a:4317, http://b:4317 ]\n",
        "mesh.yaml",
    )
    .unwrap();
    let t = c.telemetry.unwrap().value;
    let lb = t.exporters[0].loadbalancing.clone().unwrap().value;
    assert_eq!(lb.backends.len(), 2);
    assert_eq!(lb.protocol, ExportProtocol::OtlpGrpc);
    let ep = lb.endpoint(&lb.backends[1]);
    assert_eq!(ep.endpoint.value, "http://b:4317");
    assert_eq!(ep.timeout.value.0, std::time::Duration::from_secs(10));
}

#[test]
fn loadbalancing_errors_name_the_backend() {
    let errs = errors(
        "telemetry:\n  exporters:\n    - loadbalancing:\n        protocol: otlp_http\n        backends:\n          - http://a:4318\n          - ftp://b\n          - http://a:4318/\n        headers: { 'bad header': x }\n        timeout: 0s\n    - loadbalancing: { backends: [] }\n    - otlp_grpc: { endpoint: http://c:4317 }\n      loadbalancing: { backends: [ http://d:4317 ] }\n",
    );
    let p = "telemetry.exporters[0].loadbalancing";
    has(
        &errs,
        7,
        &format!("{p}.backends[1]"),
        "not an http:// or https:// URL",
    );
    has(&errs, 8, &format!("{p}.backends[2]"), "duplicate backend");
    has(&errs, 4, &format!("{p}.headers"), "not a header name");
    has(&errs, 10, &format!("{p}.timeout"), "above 0");
    has(
        &errs,
        11,
        "telemetry.exporters[1].loadbalancing.backends",
        "at least one",
    );
    has(
        &errs,
        12,
        "telemetry.exporters[2]",
        "exactly one of `otlp_grpc`, `otlp_http` and `loadbalancing`",
    );
}

#[test]
fn loadbalancing_resolver_takes_any_discovery_source() {
    let c = parse_str(
        "telemetry:\n  exporters:\n    - name: lb\n      loadbalancing:\n        resolver: { dns: { name: 'collectors.internal:4317' } }\n        scheme: https\n        port: 4318\n        protocol: otlp_http\n",
        "mesh.yaml",
    )
    .unwrap();
    let t = c.telemetry.unwrap().value;
    let lb = t.exporters[0].loadbalancing.clone().unwrap().value;
    assert!(lb.backends.is_empty());
    let r = lb.resolver.as_ref().unwrap();
    assert_eq!(r.dns.as_ref().unwrap().name, "collectors.internal:4317");
    assert_eq!(
        lb.discovered_url("10.0.0.7:4317".parse().unwrap()),
        "https://10.0.0.7:4318"
    );
    assert_eq!(
        lb.discovered_url("[fd00::7]:4317".parse().unwrap()),
        "https://[fd00::7]:4318"
    );
    assert_eq!(lb.drain_timeout.value.0, std::time::Duration::from_secs(10));

    // Defaults: http, the discovered port.
    let c = parse_str(
        "telemetry:\n  exporters:\n    - loadbalancing:\n        resolver:\n          file: { path: /etc/collectors.yaml }\n",
        "mesh.yaml",
    )
    .unwrap();
    let lb = c.telemetry.unwrap().value.exporters[0]
        .loadbalancing
        .clone()
        .unwrap()
        .value;
    assert_eq!(
        lb.discovered_url("10.0.0.7:4317".parse().unwrap()),
        "http://10.0.0.7:4317"
    );
}

#[test]
fn loadbalancing_resolver_errors_name_field_and_line() {
    let errs = errors(
        "telemetry:\n  exporters:\n    - loadbalancing:\n        backends: [ http://a:4317 ]\n        resolver: { file: { path: x.yaml } }\n    - loadbalancing:\n        resolver:\n          dns: { name: nohostport }\n          file: { path: '' }\n        port: 0\n        drain_timeout: 0s\n    - loadbalancing:\n        backends: [ http://a:4317 ]\n        scheme: https\n        port: 4317\n    - loadbalancing: { resolver: {} }\n",
    );
    has(
        &errs,
        5,
        "telemetry.exporters[0].loadbalancing.resolver",
        "exactly one of `backends` and `resolver`",
    );
    let p = "telemetry.exporters[1].loadbalancing";
    has(
        &errs,
        8,
        &format!("{p}.resolver"),
        "exactly one discovery source",
    );
    has(&errs, 8, &format!("{p}.resolver.dns.name"), "host:port");
    has(
        &errs,
        9,
        &format!("{p}.resolver.file.path"),
        "must not be empty",
    );
    has(&errs, 10, &format!("{p}.port"), "1..=65535");
    has(&errs, 11, &format!("{p}.drain_timeout"), "above 0");
    let p = "telemetry.exporters[2].loadbalancing";
    has(
        &errs,
        14,
        &format!("{p}.scheme"),
        "only used with `resolver`",
    );
    has(&errs, 15, &format!("{p}.port"), "only used with `resolver`");
    has(
        &errs,
        16,
        "telemetry.exporters[3].loadbalancing.resolver",
        "no discovery source",
    );
}

#[test]
fn receiver_budget_must_be_positive_and_fit_in_32_bits() {
    for (value, bad) in [("0", true), ("4GiB", true), ("1KiB", false)] {
        let yaml = format!(
            "telemetry:\n  receiver:\n    grpc: 127.0.0.1:4317\n    max_receiving_bytes: {value}\n"
        );
        match parse_str(&yaml, "mesh.yaml") {
            Err(errs) => {
                assert!(bad, "{value}: {errs:?}");
                has(
                    &errs,
                    4,
                    "telemetry.receiver.max_receiving_bytes",
                    "above 0 and below 4GiB",
                );
            }
            Ok(c) => {
                assert!(!bad, "{value} accepted");
                let r = c.telemetry.unwrap().value.receiver.unwrap().value;
                assert_eq!(r.max_receiving_bytes.value.0, 1024);
            }
        }
    }
}

#[test]
fn adaptive_balancer_settings_name_field_and_line() {
    let errs = errors(
        "clusters:\n  - name: a\n    discovery: { static: [ 127.0.0.1:1 ] }\n    balancer: adaptive\n    adaptive:\n      candidates: [ round_robin, maglev, round_robin ]\n      min_improvement: 1.5\n      window: 1s\n      evaluation_interval: 2s\n",
    );
    let p = "clusters[0].adaptive";
    has(
        &errs,
        6,
        &format!("{p}.candidates[1]"),
        "candidates are round_robin",
    );
    has(&errs, 6, &format!("{p}.candidates[2]"), "listed twice");
    has(&errs, 7, &format!("{p}.min_improvement"), "below 1");
    has(&errs, 8, &format!("{p}.window"), "evaluation_interval");
    let ok = parse_str(
        "clusters:\n  - name: a\n    discovery: { static: [ 127.0.0.1:1 ] }\n    balancer: adaptive\n    adaptive: { min_gain: 5ms }\n",
        "mesh.yaml",
    )
    .unwrap();
    let a = ok.clusters[0].adaptive.as_ref().unwrap();
    assert_eq!(a.min_gain.0, std::time::Duration::from_millis(5));
    assert!((a.min_improvement.value - 0.2).abs() < 1e-9);
}
