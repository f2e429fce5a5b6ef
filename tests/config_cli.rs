#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The command line: `validate`, and `run` refusing bad configs, unreadable files and busy ports.

mod common;

use common::*;
use http::StatusCode;

/// One `FILE:LINE:COL: path: message` line.
#[derive(Debug)]
struct Reported {
    line: u64,
    path: String,
    message: String,
}

/// Every error line about `file` in `output`. With `exact`, lines must start with the file name
/// (the `validate` format); otherwise the error may sit inside a log line.
fn reported(output: &str, file: &str, exact: bool) -> Vec<Reported> {
    output
        .lines()
        .filter_map(|l| {
            let at = if exact {
                l.starts_with(file).then_some(0)?
            } else {
                l.find(file)?
            };
            let rest = l[at + file.len()..].strip_prefix(':')?;
            let (line, rest) = rest.split_once(':')?;
            let (col, rest) = rest.split_once(':')?;
            col.parse::<u64>().ok()?;
            let (path, message) = rest.strip_prefix(' ')?.split_once(": ")?;
            Some(Reported {
                line: line.parse().ok()?,
                path: path.to_string(),
                message: message.to_string(),
            })
        })
        .collect()
}

/// 1-based line of the first line of `yaml` containing `marker`.
fn line_of(yaml: &str, marker: &str) -> u64 {
    yaml.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("`{marker}` not in the test config")) as u64
        + 1
}

#[track_caller]
fn expect_error(errors: &[Reported], line: u64, path: &str, text: &str, output: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.line == line && e.path == path && e.message.contains(text)),
        "expected `LINE {line}: {path}: ...{text}...` in:\n{output}"
    );
}

const GOOD: &str = "admin:
  bind: 127.0.0.1:9901
runtime: { drain_timeout: 30s, reload_interval: 1s }
listeners:
  - name: edge
    bind: 127.0.0.1:8080
    limits: { max_request_headers: 64KiB, max_request_body: 10MiB, header_read_timeout: 10s }
    via: otlp-mesh
    server_header: mesh
    forwarded: true
    routes:
      - name: canary
        match:
          path_prefix: /api
          methods: [GET, POST]
          headers: { x-canary: \"true\", x-user: { regex: \"^a\" }, x-debug: { present: true }, x-off: { present: false } }
          query: { version: \"2\", debug: { present: true } }
        split: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ]
        timeout: 2s
        rewrite: { path_prefix: /internal, host: backend.local }
        request_headers: { set: { x-a: \"1\" }, add: { x-b: \"2\" }, remove: [x-secret] }
        response_headers: { set: { x-c: \"3\" }, add: {}, remove: [x-internal] }
      - match: { path_regex: \"^/v[0-9]+/\" }
        cluster: v1
clusters:
  - name: v1
    discovery: { static: [ 127.0.0.1:9001, 127.0.0.1:9002 ] }
    protocol: http1
    connect_timeout: 2s
  - name: v2
    discovery: { static: [] }
    protocol: h2
";

/// Five independent semantic errors; all must be reported in one run.
const BAD: &str = "admin:
  bind: 127.0.0.1:9901
listeners:
  - name: edge
    bind: 127.0.0.1:notaport
    routes:
      - cluster: nowhere
      - split: [ { cluster: a, weight: 0 } ]
      - match: { path_regex: \"([\" }
        cluster: a
clusters:
  - name: a
    discovery: { static: [ 127.0.0.1:9001 ] }
  - name: a # duplicate
    discovery: { static: [] }
";

fn check_bad_errors(errors: &[Reported], output: &str) {
    expect_error(
        errors,
        line_of(BAD, "notaport"),
        "listeners[0].bind",
        "socket address",
        output,
    );
    expect_error(
        errors,
        line_of(BAD, "nowhere"),
        "listeners[0].routes[0].cluster",
        "nowhere",
        output,
    );
    expect_error(
        errors,
        line_of(BAD, "weight: 0"),
        "listeners[0].routes[1].split",
        "weight",
        output,
    );
    expect_error(
        errors,
        line_of(BAD, "(["),
        "listeners[0].routes[2].match.path_regex",
        "regex",
        output,
    );
    expect_error(
        errors,
        line_of(BAD, "# duplicate"),
        "clusters[1].name",
        "duplicate",
        output,
    );
}

#[test]
fn validate_accepts_a_good_config() {
    let file = ConfigFile::new(GOOD);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let status = p.try_exit().unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.stderr());
    assert!(
        reported(&p.stderr(), file.path_str(), false).is_empty(),
        "{}",
        p.stderr()
    );
}

#[test]
fn validate_lists_every_semantic_error_with_line_and_path() {
    let file = ConfigFile::new(BAD);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    let errors = reported(&stderr, file.path_str(), true);
    check_bad_errors(&errors, &stderr);
    assert_eq!(errors.len(), 5, "exactly the five errors:\n{stderr}");
}

#[test]
fn validate_reports_a_missing_required_field() {
    let yaml = "clusters:\n  - name: a\n    protocol: h2\nlisteners: []\n";
    let file = ConfigFile::new(yaml);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    let errors = reported(&stderr, file.path_str(), true);
    // The cluster entry spans lines 2-3; the error must point into it and name its path.
    assert!(
        errors.iter().any(|e| (2..=3).contains(&e.line)
            && (e.path == "clusters[0]" || e.path == "clusters[0].discovery")
            && e.message.contains("discovery")),
        "expected `2: clusters[0]: ...discovery...` in:\n{stderr}"
    );
}

#[test]
fn validate_reports_an_unknown_field() {
    let yaml = "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    bnid: x\n";
    let file = ConfigFile::new(yaml);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    let errors = reported(&stderr, file.path_str(), true);
    assert!(
        errors
            .iter()
            .any(|e| e.line == 4 && e.path == "listeners[0].bnid" && e.message.contains("bnid")),
        "expected `4: listeners[0].bnid: ...bnid...` in:\n{stderr}"
    );

    // Deeper: the path names every level, as in the semantic errors.
    let yaml = "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    routes:\n      - cluster: x\n        match: { path_prefix: /a, bogus: 1 }\n";
    let file = ConfigFile::new(yaml);
    let mut p = Proc::run(&["validate", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    let errors = reported(&stderr, file.path_str(), true);
    assert!(
        errors.iter().any(|e| e.line == 6
            && e.path == "listeners[0].routes[0].match.bogus"
            && e.message.contains("bogus")),
        "expected `6: listeners[0].routes[0].match.bogus: ...` in:\n{stderr}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_the_same_errors() {
    let file = ConfigFile::new(BAD);
    let mut validate = Proc::run(&["validate", "--config", file.path_str()]);
    assert_eq!(validate.try_exit().unwrap().code(), Some(1));
    let mut run = Proc::run(&["run", "--config", file.path_str()]);
    let stderr = run.stderr();
    assert_eq!(run.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    let errors = reported(&stderr, file.path_str(), false);
    check_bad_errors(&errors, &stderr);
    for line in validate
        .stderr()
        .lines()
        .filter(|l| l.starts_with(file.path_str()))
    {
        assert!(
            stderr.contains(line),
            "`run` does not report `{line}`:\n{stderr}"
        );
    }
}

#[test]
fn unreadable_config_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist.yaml");
    let missing = missing.to_str().unwrap();
    for cmd in ["validate", "run"] {
        let mut p = Proc::run(&[cmd, "--config", missing]);
        let stderr = p.stderr();
        assert_eq!(
            p.try_exit().unwrap().code(),
            Some(1),
            "{cmd}: stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(missing),
            "{cmd} must name {missing}:\n{stderr}"
        );
    }
}

#[test]
fn listener_port_in_use_exits_1_naming_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let admin = free_addr();
    let yaml = format!(
        "admin:\n  bind: {admin}\nlisteners:\n  - name: edge\n    bind: {addr}\nclusters: []\n"
    );
    let file = ConfigFile::new(&yaml);
    let mut p = Proc::run(&["run", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&addr.to_string()),
        "must name {addr}:\n{stderr}"
    );
    drop(busy);
}

#[test]
fn admin_port_in_use_exits_1_naming_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let edge = free_addr();
    let yaml = format!("admin:\n  bind: {addr}\nlisteners:\n  - name: edge\n    bind: {edge}\n");
    let file = ConfigFile::new(&yaml);
    let mut p = Proc::run(&["run", "--config", file.path_str()]);
    let stderr = p.stderr();
    assert_eq!(p.try_exit().unwrap().code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&addr.to_string()),
        "must name {addr}:\n{stderr}"
    );
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_workers_and_log_level_and_logs_to_stderr() {
    let up = Upstream::echo("up").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\nclusters:\n  - name: up\n    discovery: {{ static: [{}] }}\n",
        prelude(admin),
        up.addr
    );
    let mesh =
        Mesh::start_with_args(admin, &yaml, &["--workers", "1", "--log-level", "debug"]).await;
    assert_eq!(
        get(&h1_client(), &format!("http://{edge}/")).await.status,
        StatusCode::OK
    );
    assert!(
        !mesh.proc.stderr().trim().is_empty(),
        "debug logs expected on stderr"
    );
    assert!(
        mesh.proc.stdout().trim().is_empty(),
        "logs must not go to stdout:\n{}",
        mesh.proc.stdout()
    );
}

#[test]
fn run_without_config_is_a_usage_error() {
    let mut p = Proc::run(&["run"]);
    let code = p.try_exit().unwrap().code();
    assert!(
        matches!(code, Some(c) if c != 0),
        "`run` without --config must fail: {code:?}"
    );
    assert!(p.stderr().contains("--config"), "{}", p.stderr());
}

/// The README's telemetry reference block is a valid config (docs describe what exists).
#[test]
fn readme_telemetry_reference_validates() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.starts_with("telemetry:"))
        .expect("a ```yaml block starting with `telemetry:` in README.md");
    let cfg = ConfigFile::new(block);
    let mut p = Proc::run(&["validate", "--config", cfg.path_str()]);
    assert!(
        p.status_success(),
        "README telemetry block: {}{}",
        p.stdout(),
        p.stderr()
    );
}
