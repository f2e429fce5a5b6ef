//! `otlp-mesh bench` against an in-process server: the JSON report's fields and counts (with the
//! throughput timeline and latency distribution), the open-loop mode, the baseline comparison's
//! exit status (also against a report from before the timeline existed), the HTML report
//! with the run history, the gRPC mode (against `bench-upstream`'s echo service and a server
//! answering error statuses) and `bench-compare` over HTTP/1.1, h2c and gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http_body_util::BodyExt;
use std::time::Duration;

fn bench(args: &[&str]) -> Proc {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(&all);
    p.wait_exit_blocking(Duration::from_secs(30));
    p
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_report_counts_every_request_the_server_saw() {
    let up = Upstream::echo("bench").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let csv = dir.path().join("r.csv");
    let url = format!("http://{}/x", up.addr);
    let before = up.hits();
    let mut p = tokio::task::spawn_blocking({
        let (json, csv) = (json.clone(), csv.clone());
        move || {
            bench(&[
                &url,
                "-c",
                "4",
                "-d",
                "1s",
                "--warmup",
                "0",
                "--json",
                json.to_str().unwrap(),
                "--csv",
                csv.to_str().unwrap(),
                "--pid",
                &std::process::id().to_string(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(p.status_success(), "bench failed: {}", p.stderr());
    let r = read_json(&json);
    let requests = r["requests"].as_u64().unwrap();
    let served = (up.hits() - before) as u64;
    assert!(requests > 100, "{r}");
    // The server may also have answered a few requests started before the deadline but not
    // counted, one per connection at most.
    assert!(
        served >= requests && served <= requests + 4,
        "served {served}, reported {requests}"
    );
    assert_eq!(r["ok"].as_u64().unwrap(), requests);
    assert_eq!(r["mode"], "closed");
    assert_eq!(r["connections"], 4);
    let l = &r["latency"];
    let (p50, p99, max) = (
        l["p50_us"].as_u64().unwrap(),
        l["p99_us"].as_u64().unwrap(),
        l["max_us"].as_u64().unwrap(),
    );
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{l}");
    assert!(
        (r["throughput_rps"].as_f64().unwrap() - requests as f64).abs()
            < requests as f64 * 0.01 + 1.0
    );
    assert_eq!(
        r["processes"][0]["pid"].as_u64().unwrap(),
        u64::from(std::process::id())
    );
    assert!(r["processes"][0]["rss_peak_bytes"].as_u64().unwrap() > 0);
    // Completions per 100 ms: ten buckets for 1 s, adding up to every counted request.
    let timeline: Vec<u64> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(timeline.len(), 10, "{timeline:?}");
    assert_eq!(timeline.iter().sum::<u64>(), requests, "{timeline:?}");
    assert_eq!(r["timeline_bucket_ms"], 100);
    let dist = r["latency_distribution"].as_array().unwrap();
    assert_eq!(dist.last().unwrap()["percentile"], 100.0);
    assert_eq!(dist.last().unwrap()["value_us"].as_u64().unwrap(), max);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("url,protocol,mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_holds_the_rate_and_reports_uncorrected_latency_too() {
    let up = Upstream::echo("bench").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let url = format!("http://{}/", up.addr);
    let mut p = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            bench(&[
                &url,
                "-c",
                "2",
                "-d",
                "2s",
                "--warmup",
                "0",
                "--rate",
                "200",
                "--pace",
                "1ms",
                "--h2c",
                "--json",
                json.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(p.status_success(), "bench failed: {}", p.stderr());
    let r = read_json(&json);
    assert_eq!(r["mode"], "open");
    assert_eq!(r["protocol"], "h2c");
    let requests = r["requests"].as_u64().unwrap();
    // 200 req/s for 2 s: the schedule allows 400 (±1 per worker for phase offsets), also
    // when due times are rounded up to whole milliseconds.
    assert!((390..=402).contains(&requests), "requests {requests}");
    assert_eq!(r["pace_us"], 1000);
    assert!(r["latency_uncorrected"]["p50_us"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_comparison_exits_2_on_a_regression() {
    let up = Upstream::echo("bench").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let url = format!("http://{}/", up.addr);
    let mut p = tokio::task::spawn_blocking({
        let json = json.clone();
        let url = url.clone();
        move || {
            bench(&[
                &url,
                "-c",
                "2",
                "-d",
                "1s",
                "--warmup",
                "0",
                "--json",
                json.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(p.status_success(), "{}", p.stderr());
    // A synthetic baseline ten times faster than anything this run can reach.
    let mut base = read_json(&json);
    base["throughput_rps"] = serde_json::json!(base["throughput_rps"].as_f64().unwrap() * 10.0);
    // Written by an older version: none of the timeline and distribution fields.
    for k in [
        "timeline",
        "timeline_bucket_ms",
        "latency_distribution",
        "unix_time_s",
    ] {
        base.as_object_mut().unwrap().remove(k).unwrap();
    }
    let base_path = dir.path().join("base.json");
    std::fs::write(&base_path, base.to_string()).unwrap();
    let mut p = tokio::task::spawn_blocking(move || {
        bench(&[
            &url,
            "-c",
            "2",
            "-d",
            "1s",
            "--warmup",
            "0",
            "--baseline",
            base_path.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(p.exit_code(), Some(2), "{}", p.stderr());
    assert!(p.stderr().contains("REGRESSION"), "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_with_history_of_two_runs() {
    let up = Upstream::echo("bench").await;
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    let history = dir.path().join("runs.jsonl");
    let json = dir.path().join("r.json");
    let url = format!("http://{}/", up.addr);
    for _ in 0..2 {
        let mut p = tokio::task::spawn_blocking({
            let (html, history, json, url) =
                (html.clone(), history.clone(), json.clone(), url.clone());
            move || {
                bench(&[
                    &url,
                    "-c",
                    "2",
                    "-d",
                    "300ms",
                    "--warmup",
                    "0",
                    "--html",
                    html.to_str().unwrap(),
                    "--history",
                    history.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                ])
            }
        })
        .await
        .unwrap();
        assert!(p.status_success(), "bench failed: {}", p.stderr());
    }
    let lines = std::fs::read_to_string(&history).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    for l in lines.lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(r["requests"].as_u64().unwrap() > 0);
    }
    // The page describes the second run (the last --json).
    let r = read_json(&json);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    let requests = r["requests"].as_u64().unwrap();
    let throughput = format!(">{:.1}<", r["throughput_rps"].as_f64().unwrap());
    let p99 = format!(">{}<", r["latency"]["p99_us"].as_u64().unwrap());
    for needle in [format!(">{requests}<"), throughput, p99] {
        assert!(page.contains(&needle), "missing {needle}");
    }
    assert!(page.contains("Trend over 2 recorded runs"));
    assert_eq!(page.matches(r#"class="trend-throughput""#).count(), 2);
    assert_eq!(page.matches(r#"class="trend-p99""#).count(), 2);
    assert!(page.contains("<svg") && !page.contains("<script"));
    let rest = page.replace(&url, "");
    assert!(
        !rest.contains("http://") && !rest.contains("https://"),
        "external reference in the page"
    );
}

#[test]
fn bad_arguments_are_explained() {
    let mut p = bench(&["ftp://example/", "-d", "1s"]);
    assert_eq!(p.exit_code(), Some(1));
    assert!(p.stderr().contains("must be http://"), "{}", p.stderr());
    for (args, why) in [
        (
            &["--protocol", "grpc", "--grpc-method", "pkg.Svc/M"][..],
            "does not start with `/`",
        ),
        (
            &["--protocol", "grpc", "--grpc-method", "/pkg.Svc"],
            "no `/` between",
        ),
        (&["--grpc-method", "/pkg.Svc/M"], "needs --protocol grpc"),
        (
            &["--protocol", "grpc", "--method", "GET"],
            "always uses POST",
        ),
        (&["--body-file", "/nonexistent/message.bin"], "cannot read"),
    ] {
        let mut all = vec!["http://127.0.0.1:9/", "-d", "1s"];
        all.extend_from_slice(args);
        let mut p = bench(&all);
        assert_eq!(p.exit_code(), Some(1), "{args:?}");
        assert!(p.stderr().contains(why), "{args:?}: {}", p.stderr());
    }
    let mut p = bench(&["http://127.0.0.1:9/", "--protocol", "h3"]);
    assert_ne!(p.exit_code(), Some(0));
    assert!(p.stderr().contains("http1, h2c or grpc"), "{}", p.stderr());
    let mut p = bench(&["http://127.0.0.1:9/", "-d", "10 parsecs"]);
    assert_ne!(p.exit_code(), Some(0));
    assert!(p.stderr().contains("unknown unit"), "{}", p.stderr());
}

/// Runs `bench-compare` with `args` (and `--json`); its JSON report and the ended process.
fn bench_compare(args: &[&str], within: Duration) -> (serde_json::Value, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("compare.json");
    let mut argv = vec!["bench-compare"];
    argv.extend_from_slice(args);
    argv.extend(["--json", json.to_str().unwrap()]);
    let mut p = Proc::spawn(&argv);
    p.wait_exit_blocking(within);
    assert!(p.status_success(), "bench-compare failed: {}", p.stderr());
    (read_json(&json), p)
}

/// `bench-compare` measures the direct upstream and otlp-mesh, and reports each peer as measured
/// or skipped (never silently dropped).
#[test]
fn bench_compare_reports_every_target() {
    let (v, p) = bench_compare(
        &["-d", "500ms", "--warmup", "100ms", "-c", "4"],
        Duration::from_secs(90),
    );
    let targets = v["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "direct",
            "otlp-mesh",
            "otlp-mesh+telemetry",
            "nginx",
            "haproxy",
            "envoy"
        ]
    );
    for t in targets {
        let status = t["status"].as_str().unwrap();
        assert!(["measured", "skipped", "failed"].contains(&status), "{t}");
        if ["direct", "otlp-mesh", "otlp-mesh+telemetry"].contains(&t["name"].as_str().unwrap()) {
            assert_eq!(status, "measured", "{t}");
            assert!(t["report"]["requests"].as_u64().unwrap() > 0, "{t}");
        }
        if status != "measured" {
            assert!(t["reason"].as_str().is_some_and(|r| !r.is_empty()), "{t}");
        }
    }
    let mesh = &targets[1]["report"]["processes"][0];
    assert!(mesh["cpu_us_per_request"].as_f64().unwrap() > 0.0, "{mesh}");
    assert!(p.stdout().contains("cpu/mesh"), "{}", p.stdout());
}

/// The children of `parent` whose command line contains `needle`, with their allowed CPUs
/// (`Cpus_allowed_list` in /proc).
fn children_cpus(parent: u32, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so split after its `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if ppid != Some(parent) || !cmdline.contains(needle) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string());
            found.extend(cpus);
        }
    }
    found
}

/// `--upstream-core` pins the upstream to a core of its own, apart from the generator's.
#[test]
fn bench_compare_pins_the_upstream_apart_from_the_generator_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("compare.json");
    let mut p = Proc::spawn(&[
        "bench-compare",
        "-d",
        "3s",
        "--warmup",
        "100ms",
        "-c",
        "2",
        "--only",
        "direct",
        "--load-core",
        "1",
        "--upstream-core",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    // While the generator runs: the upstream on core 0, the generator on core 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (upstream, generator) = loop {
        let upstream = children_cpus(p.pid(), "bench-upstream");
        let generator = children_cpus(p.pid(), "bench http://");
        if !upstream.is_empty() && !generator.is_empty() {
            break (upstream, generator);
        }
        assert!(std::time::Instant::now() < deadline, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(upstream, ["0"]);
    assert_eq!(generator, ["1"]);
    p.wait_exit_blocking(Duration::from_secs(30));
    assert!(p.status_success(), "bench-compare failed: {}", p.stderr());
    assert!(
        p.stderr().contains("(core 0); generator on core 1"),
        "{}",
        p.stderr()
    );
    assert_eq!(read_json(&json)["targets"][0]["status"], "measured");
}

/// `--only` restricts the targets to the ones named.
#[test]
fn bench_compare_only_runs_the_named_targets() {
    let (v, _) = bench_compare(
        &[
            "-d",
            "300ms",
            "--warmup",
            "100ms",
            "-c",
            "2",
            "--only",
            "otlp-mesh,otlp-mesh+telemetry",
        ],
        Duration::from_secs(60),
    );
    let names: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["otlp-mesh", "otlp-mesh+telemetry"]);
}

/// `bench-compare --rounds 2`: every target measured in each round, and per target the medians
/// over the rounds with the latency added over `direct`'s in the same round.
#[test]
fn bench_compare_rounds_report_every_round_and_the_medians() {
    let (v, p) = bench_compare(
        &[
            "-d",
            "300ms",
            "--warmup",
            "100ms",
            "-c",
            "2",
            "--rate",
            "400",
            "--rounds",
            "2",
            "--only",
            "direct,otlp-mesh",
        ],
        Duration::from_secs(60),
    );
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    let p99 = |round: &serde_json::Value, name: &str| {
        round
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing in {round}"))["report"]["latency"]["p99_us"]
            .as_f64()
            .unwrap()
    };
    let added: Vec<f64> = rounds
        .iter()
        .map(|r| p99(r, "otlp-mesh") - p99(r, "direct"))
        .collect();
    assert_eq!(v["targets"], rounds[0]);
    let medians = v["medians"].as_array().unwrap();
    let names: Vec<&str> = medians
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "otlp-mesh"]);
    let mesh = &medians[1];
    assert_eq!(mesh["rounds"], 2);
    assert_eq!(
        mesh["added_p99_us"].as_f64().unwrap(),
        (added[0] + added[1]) / 2.0
    );
    assert!(mesh["cpu_us_per_request"].as_f64().unwrap() > 0.0);
    assert_eq!(mesh["cpu_vs_mesh"].as_f64(), Some(1.0));
    let cpu = |round: &serde_json::Value| {
        round
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "otlp-mesh")
            .unwrap()["report"]["processes"][0]["cpu_us_per_request"]
            .as_f64()
            .unwrap()
    };
    let (a, b) = (cpu(&rounds[0]), cpu(&rounds[1]));
    assert_eq!(
        mesh["cpu_spread"].as_f64().unwrap(),
        (a - b).abs() / ((a + b) / 2.0)
    );
    assert_eq!(medians[0]["added_p99_us"].as_f64(), Some(0.0));
    assert!(medians[0]["cpu_spread"].is_null(), "direct has no process");
    assert!(p.stdout().contains("median of 2 rounds"), "{}", p.stdout());
}

/// `bench-compare --interleave`: every target is started once and measured in every round (the
/// same process each time), and the medians paired with otlp-mesh come with 95 % intervals.
#[test]
fn bench_compare_interleaved_rounds_keep_each_target_running_and_give_intervals() {
    let (v, p) = bench_compare(
        &[
            "-d",
            "200ms",
            "--warmup",
            "50ms",
            "-c",
            "2",
            "--rounds",
            "6",
            "--interleave",
            "--only",
            "otlp-mesh,otlp-mesh+telemetry",
        ],
        Duration::from_secs(60),
    );
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 6);
    for name in ["otlp-mesh", "otlp-mesh+telemetry"] {
        let pids: Vec<u64> = rounds
            .iter()
            .map(|r| {
                let t = r
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == name)
                    .unwrap_or_else(|| panic!("{name} missing in {r}"));
                assert_eq!(t["status"], "measured", "{t}");
                t["report"]["processes"][0]["pid"].as_u64().unwrap()
            })
            .collect();
        assert!(pids.iter().all(|p| *p == pids[0]), "{name}: {pids:?}");
    }
    let telemetry = &v["medians"].as_array().unwrap()[1];
    assert_eq!(telemetry["name"], "otlp-mesh+telemetry");
    let ratio = telemetry["cpu_vs_mesh"].as_f64().unwrap();
    let ci = telemetry["cpu_vs_mesh_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo <= ratio && ratio <= hi, "{telemetry}");
    for field in ["p50_vs_mesh_ci", "p99_vs_mesh_ci", "p999_vs_mesh_ci"] {
        assert!(telemetry[field].is_array(), "{field}: {telemetry}");
    }
    assert!(
        p.stdout().contains("paired with otlp-mesh round by round"),
        "{}",
        p.stdout()
    );

    // `--from` pools runs without measuring: the run twice over is twelve rounds with the same
    // medians (each value twice) and intervals no wider.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run.json");
    std::fs::write(&run, v.to_string()).unwrap();
    let run = run.to_str().unwrap();
    let (pooled, p) = bench_compare(&["--from", run, "--from", run], Duration::from_secs(30));
    assert_eq!(pooled["rounds"].as_array().unwrap().len(), 12);
    let twice = &pooled["medians"].as_array().unwrap()[1];
    assert_eq!(twice["name"], "otlp-mesh+telemetry");
    assert_eq!(twice["rounds"], 12);
    assert_eq!(twice["cpu_vs_mesh"], telemetry["cpu_vs_mesh"]);
    assert_eq!(twice["p99_vs_mesh_us"], telemetry["p99_vs_mesh_us"]);
    let ci = twice["cpu_vs_mesh_ci"].as_array().unwrap();
    assert!(
        ci[0].as_f64().unwrap() >= lo && ci[1].as_f64().unwrap() <= hi,
        "{twice}"
    );
    assert!(p.stdout().contains("median of 12 rounds"), "{}", p.stdout());
    assert!(
        p.stderr().contains("12 rounds from 2 runs"),
        "{}",
        p.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

/// `otlp-mesh bench-upstream` on a free port, once it accepts connections.
async fn bench_upstream() -> (Proc, std::net::SocketAddr) {
    let addr = free_addr();
    let p = Proc::spawn(&["bench-upstream", "--bind", &addr.to_string()]);
    eventually("bench-upstream listening", WAIT, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    (p, addr)
}

/// A gRPC length-prefixed message (uncompressed).
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// Runs `bench ARGS… --json FILE` in a blocking task and returns the report.
async fn bench_json(args: Vec<String>) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut p = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            all.extend(["--json", json.to_str().unwrap()]);
            bench(&all)
        }
    })
    .await
    .unwrap();
    assert!(p.status_success(), "bench failed: {}", p.stderr());
    read_json(&json)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

fn assert_no_errors(r: &serde_json::Value) {
    for (kind, n) in r["errors"].as_object().unwrap() {
        assert_eq!(n.as_u64(), Some(0), "{kind} errors: {r}");
    }
}

/// `bench-upstream` echoes a unary gRPC call's message with `grpc-status: 0`, and
/// `bench --protocol grpc` (method defaulting to that echo, message from `--body-file`) counts
/// every call as ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mode_against_the_bench_upstream_echo_counts_every_call_ok() {
    let (_up, addr) = bench_upstream().await;
    let message = b"\x0a\x05hello\x10\x2a";
    // The echo service itself, with a plain h2c client.
    let req = http::Request::post(format!("http://{addr}/otlpmesh.bench.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(frame(message)))
        .unwrap();
    let resp = send(&h2c_client(), req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(&resp.body[..], &frame(message)[..]);
    assert_eq!(resp.trailers.as_ref().unwrap()["grpc-status"], "0");

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("message.bin");
    std::fs::write(&body, message).unwrap();
    let r = bench_json(strings(&[
        &format!("http://{addr}/"),
        "--protocol",
        "grpc",
        "-c",
        "2",
        "--streams",
        "4",
        "-d",
        "1s",
        "--warmup",
        "0",
        "--body-file",
        body.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(r["protocol"], "grpc");
    assert_eq!(r["url"], format!("http://{addr}/otlpmesh.bench.Echo/Echo"));
    assert_eq!(r["workers"], 8);
    let ok = r["ok"].as_u64().unwrap();
    assert!(ok > 50, "{r}");
    assert_eq!(r["requests"].as_u64(), Some(ok));
    assert_no_errors(&r);
}

/// A gRPC server with one method, `/test.Echo/Unary` (message back, `grpc-status: 0` in the
/// trailers); `/test.Echo/Internal` answers a message then `grpc-status: 13`; any other path is
/// answered trailers-only with `grpc-status: 12` (UNIMPLEMENTED), as real servers do.
async fn strict_grpc_server() -> Upstream {
    Upstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let message = req.into_body().collect().await.unwrap().to_bytes();
        let trailers = |code: &'static str| {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static(code));
            t.insert("grpc-message", http::HeaderValue::from_static("as asked"));
            t
        };
        let (resp, data, trailers) = match path.as_str() {
            "/test.Echo/Unary" => (http::Response::builder(), message, Some(trailers("0"))),
            "/test.Echo/Internal" => (http::Response::builder(), message, Some(trailers("13"))),
            _ => (
                http::Response::builder().header("grpc-status", "12"),
                bytes::Bytes::new(),
                None,
            ),
        };
        let body = http_body_util::Full::new(data)
            .with_trailers(std::future::ready(trailers.map(Ok)))
            .map_err(|never| match never {})
            .boxed_unsync();
        resp.header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    })
    .await
}

/// Calls of a method the server does not have (trailers-only UNIMPLEMENTED) and calls answered
/// with a non-zero `grpc-status` after a message are counted as `grpc_status` errors, not ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mode_counts_wrong_methods_and_error_statuses_as_errors() {
    let up = strict_grpc_server().await;
    let run = |method: &str| {
        bench_json(strings(&[
            &format!("http://{}/", up.addr),
            "--protocol",
            "grpc",
            "--grpc-method",
            method,
            "-c",
            "2",
            "-d",
            "500ms",
            "--warmup",
            "0",
            "--body",
            "ping",
        ]))
    };
    let r = run("/test.Echo/Unary").await;
    assert!(r["ok"].as_u64().unwrap() > 10, "{r}");
    assert_no_errors(&r);
    for method in ["/test.Echo/Nope", "/test.Echo/Internal"] {
        let r = run(method).await;
        let requests = r["requests"].as_u64().unwrap();
        assert!(requests > 10, "{method}: {r}");
        assert_eq!(r["ok"], 0, "{method}: {r}");
        assert_eq!(r["errors"]["grpc_status"].as_u64(), Some(requests), "{r}");
        let e = &r["errors"];
        for kind in ["connect", "timeout", "status_4xx", "status_5xx", "other"] {
            assert_eq!(e[kind], 0, "{method}: {kind}: {r}");
        }
    }
}

/// `bench-compare --protocol grpc` and `--protocol h2c`: the direct upstream and otlp-mesh (with
/// and without telemetry) are measured without a single error; each peer is measured without
/// errors or reported as skipped (not installed) with a reason.
#[test]
fn bench_compare_over_grpc_and_h2c_measures_every_target_without_errors() {
    for protocol in ["grpc", "h2c"] {
        let (v, _) = bench_compare(
            &[
                "--protocol",
                protocol,
                "-d",
                "400ms",
                "--warmup",
                "100ms",
                "-c",
                "2",
                "--streams",
                "2",
            ],
            Duration::from_secs(120),
        );
        let targets = v["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 6, "{v}");
        for t in targets {
            let (name, status) = (t["name"].as_str().unwrap(), t["status"].as_str().unwrap());
            if ["direct", "otlp-mesh", "otlp-mesh+telemetry"].contains(&name) {
                assert_eq!(status, "measured", "{protocol}: {t}");
            }
            match status {
                "measured" => {
                    let r = &t["report"];
                    assert_eq!(r["protocol"], protocol, "{t}");
                    assert!(r["ok"].as_u64().unwrap() > 0, "{protocol}: {t}");
                    assert_no_errors(r);
                }
                // A peer that is installed must work: only a missing one may be skipped.
                _ => {
                    assert_eq!(status, "skipped", "{protocol}: {t}");
                    assert!(
                        t["reason"].as_str().unwrap().contains("not installed"),
                        "{t}"
                    );
                }
            }
        }
    }
}
