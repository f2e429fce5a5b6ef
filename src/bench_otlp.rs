//! `otlp-mesh bench-otlp`: OTLP forwarding throughput per CPU-second of the forwarder —
//! receiver (OTLP/gRPC) ▸ batch ▸ exporter (OTLP/gRPC) ▸ a sink — for otlp-mesh and Rotel side by
//! side in one run, under identical settings.
//!
//! Cores: each forwarder runs alone on `--forwarder-core`; the generator (`bench-otlp-load`) and
//! the sink (`bench-otlp-sink`) share `--load-core`. A fresh sink and forwarder are started for
//! every measurement, so the sink's span count is exactly what that forwarder delivered.

use crate::compare::{Proc, find, free_addr, pinned, wait_listening};
use otlp_mesh_bench::otlp::{self, OtlpLoadConfig, OtlpLoadReport};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Arguments of `otlp-mesh bench-otlp`.
#[derive(clap::Args, Debug)]
pub struct BenchOtlpArgs {
    /// Measured duration per measurement.
    #[arg(long, short = 'd', default_value = "10s")]
    duration: otlp_mesh_config::Duration,
    /// Warm-up per measurement, excluded from results.
    #[arg(long, default_value = "2s")]
    warmup: otlp_mesh_config::Duration,
    /// Spans per export request (comma-separated list; each is measured).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    spans: Vec<usize>,
    /// Export compression of the forwarders (comma-separated list of gzip, none).
    #[arg(long, value_delimiter = ',', default_value = "gzip,none")]
    compression: Vec<ExportCompression>,
    /// Generator connections (h2c).
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// Export calls in flight per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Batch size (spans) of both forwarders.
    #[arg(long, default_value_t = 8192)]
    batch_size: u64,
    /// Batch timeout of both forwarders.
    #[arg(long, default_value = "200ms")]
    batch_timeout: otlp_mesh_config::Duration,
    /// Core for the forwarders under test.
    #[arg(long, default_value_t = 0)]
    forwarder_core: usize,
    /// Core for the generator and the sink.
    #[arg(long, default_value_t = 1)]
    load_core: usize,
    /// The `rotel-agent` binary (default: from PATH, else from the `rotel` Python package).
    #[arg(long)]
    rotel: Option<PathBuf>,
    /// Measure otlp-mesh only.
    #[arg(long)]
    skip_rotel: bool,
    /// Write every measurement as JSON to this file (`-` for stdout, the table then goes to
    /// stderr).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Export compression of a forwarder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportCompression {
    Gzip,
    None,
}

impl ExportCompression {
    fn as_str(self) -> &'static str {
        match self {
            ExportCompression::Gzip => "gzip",
            ExportCompression::None => "none",
        }
    }
}

/// One measurement (or why there is none).
#[derive(serde::Serialize)]
struct Outcome {
    target: &'static str,
    spans_per_request: usize,
    compression: ExportCompression,
    /// `measured`, `skipped` (not installed) or `failed`.
    status: &'static str,
    reason: Option<String>,
    report: Option<OtlpLoadReport>,
    /// This target's spans per CPU-second divided by Rotel's in the same setting.
    vs_rotel_spans_per_cpu: Option<f64>,
    /// This target's peak RSS divided by Rotel's in the same setting.
    vs_rotel_rss: Option<f64>,
}

/// Arguments of `otlp-mesh bench-otlp-load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The OTLP/gRPC receiver to load, host:port.
    #[arg(long)]
    target: SocketAddr,
    /// Spans per export request.
    #[arg(long, default_value_t = 100)]
    spans: usize,
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// Export calls in flight per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    #[arg(long, short = 'd', default_value = "10s")]
    duration: otlp_mesh_config::Duration,
    #[arg(long, default_value = "2s")]
    warmup: otlp_mesh_config::Duration,
    /// A `bench-otlp-sink` whose counts give delivered spans (and loss).
    #[arg(long)]
    sink: Option<SocketAddr>,
    /// Process to sample for CPU time and peak RSS (repeatable; the first gives spans/CPU-s).
    #[arg(long)]
    pid: Vec<u32>,
    /// Write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn current_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// `otlp-mesh bench-otlp-load`: the generator alone.
pub fn load(args: LoadArgs) -> ExitCode {
    let cfg = OtlpLoadConfig {
        target: args.target,
        spans_per_request: args.spans,
        connections: args.connections,
        streams_per_connection: args.streams,
        duration: args.duration.0,
        warmup: args.warmup.0,
        pids: args.pid,
        sink: args.sink,
        ..Default::default()
    };
    let result = current_thread().and_then(|rt| rt.block_on(otlp::run_otlp_load(cfg)));
    match result {
        Ok(r) => {
            let json = serde_json::to_string_pretty(&r).unwrap_or_default();
            match args.json.as_deref() {
                Some(p) if p == Path::new("-") => println!("{json}"),
                Some(p) => {
                    if let Err(e) = std::fs::write(p, json) {
                        eprintln!(
                            "otlp-mesh bench-otlp-load: cannot write {}: {e}",
                            p.display()
                        );
                        return ExitCode::FAILURE;
                    }
                }
                None => eprintln!(
                    "{} spans/s sent, {} failed calls{}",
                    r.sent_spans_per_second as u64,
                    r.requests_failed,
                    r.spans_per_cpu_second
                        .map(|s| format!(", {s:.0} spans per CPU-second"))
                        .unwrap_or_default()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otlp-mesh bench-otlp-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `otlp-mesh bench-otlp-sink`: the sink alone (single-threaded).
pub fn sink(bind: SocketAddr) -> ExitCode {
    let result = current_thread().and_then(|rt| {
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| format!("cannot bind {bind}: {e}"))?;
            otlp::serve_sink(l, Default::default()).await;
            Ok(())
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-mesh bench-otlp-sink: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every measurement; exit 1 when it cannot run at all or otlp-mesh lost spans.
pub fn run(args: BenchOtlpArgs) -> ExitCode {
    let outcomes = match run_inner(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("otlp-mesh bench-otlp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let to_stdout = args.json.as_deref() == Some(Path::new("-"));
    let table = table(&outcomes);
    if to_stdout {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "measurements": outcomes }).to_string();
        if to_stdout {
            println!("{json}");
        } else if let Err(e) = std::fs::write(path, json) {
            eprintln!("otlp-mesh bench-otlp: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let mesh_ok = outcomes
        .iter()
        .filter(|o| o.target == "otlp-mesh")
        .all(|o| {
            o.report
                .as_ref()
                .is_some_and(|r| r.spans_lost == Some(0) && r.requests_failed == 0)
        });
    if mesh_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn rotel_binary(args: &BenchOtlpArgs) -> Option<PathBuf> {
    if let Some(p) = &args.rotel {
        return Some(p.clone());
    }
    if let Some(p) = find("rotel-agent") {
        return Some(p);
    }
    // `pip install rotel` ships the agent inside the package.
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

fn run_inner(args: &BenchOtlpArgs) -> Result<Vec<Outcome>, String> {
    find("taskset").ok_or("needs `taskset` (util-linux) to pin processes to cores")?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("otlp-mesh-bench-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let rotel = if args.skip_rotel {
        None
    } else {
        rotel_binary(args)
    };
    eprintln!(
        "forwarders on core {}; generator and sink on core {}; rotel: {}",
        args.forwarder_core,
        args.load_core,
        match (&rotel, args.skip_rotel) {
            (_, true) => "skipped (--skip-rotel)".to_string(),
            (Some(p), _) => p.display().to_string(),
            (None, _) => "not installed".to_string(),
        }
    );
    let mut outcomes = Vec::new();
    for &spans in &args.spans {
        for &compression in &args.compression {
            for target in ["otlp-mesh", "rotel"] {
                let bin = if target == "otlp-mesh" {
                    Some(me.clone())
                } else {
                    rotel.clone()
                };
                let mut o = Outcome {
                    target,
                    spans_per_request: spans,
                    compression,
                    status: "skipped",
                    reason: None,
                    report: None,
                    vs_rotel_spans_per_cpu: None,
                    vs_rotel_rss: None,
                };
                let Some(bin) = bin else {
                    o.reason = Some(if args.skip_rotel {
                        "--skip-rotel".into()
                    } else {
                        "`rotel-agent` is not installed (pip install rotel)".into()
                    });
                    outcomes.push(o);
                    continue;
                };
                eprintln!("{target}: {spans} spans/request, export compression {compression:?}");
                match measure(&me, &bin, &dir, target, spans, compression, args) {
                    Ok(r) => {
                        o.status = "measured";
                        o.report = Some(r);
                    }
                    Err(e) => {
                        o.status = "failed";
                        o.reason = Some(e);
                    }
                }
                outcomes.push(o);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Ratios against Rotel in the same setting.
    let rotel_figures: Vec<_> = outcomes
        .iter()
        .filter(|o| o.target == "rotel")
        .filter_map(|o| {
            let r = o.report.as_ref()?;
            Some((
                o.spans_per_request,
                o.compression,
                r.spans_per_cpu_second?,
                r.processes.first()?.rss_peak_bytes,
            ))
        })
        .collect();
    for o in &mut outcomes {
        let Some(r) = &o.report else { continue };
        if let Some(&(_, _, cpu, rss)) = rotel_figures
            .iter()
            .find(|f| f.0 == o.spans_per_request && f.1 == o.compression)
        {
            o.vs_rotel_spans_per_cpu = r.spans_per_cpu_second.map(|s| s / cpu);
            o.vs_rotel_rss = r
                .processes
                .first()
                .filter(|_| rss > 0)
                .map(|p| p.rss_peak_bytes as f64 / rss as f64);
        }
    }
    Ok(outcomes)
}

fn mesh_config(
    admin: SocketAddr,
    listen: SocketAddr,
    sink: SocketAddr,
    c: ExportCompression,
    args: &BenchOtlpArgs,
) -> String {
    format!(
        "# otlp-mesh as a pure OTLP forwarder (generated by `otlp-mesh bench-otlp`)
admin: {{ bind: {admin} }}
telemetry:
  tracing: {{ enabled: false }}
  metrics: {{ enabled: false }}
  store: {{ enabled: false }}
  receiver: {{ grpc: {listen} }}
  batch: {{ size: {}, timeout: {} }}
  exporters:
    - name: sink
      otlp_grpc: {{ endpoint: http://{sink}, compression: {} }}
",
        args.batch_size,
        args.batch_timeout,
        c.as_str()
    )
}

#[allow(clippy::too_many_arguments)]
fn measure(
    me: &Path,
    bin: &Path,
    dir: &Path,
    target: &str,
    spans: usize,
    compression: ExportCompression,
    args: &BenchOtlpArgs,
) -> Result<OtlpLoadReport, String> {
    let sink_addr = free_addr()?;
    let mut sink = pinned(
        args.load_core,
        me,
        &[
            "bench-otlp-sink".into(),
            "--bind".into(),
            sink_addr.to_string(),
        ],
    )?;
    wait_listening(&mut sink, sink_addr).map_err(|e| format!("sink: {e}"))?;
    let listen = free_addr()?;
    let argv: Vec<String> = if target == "otlp-mesh" {
        let cfg = dir.join("otlp-mesh.yaml");
        let admin = free_addr()?;
        std::fs::write(
            &cfg,
            mesh_config(admin, listen, sink_addr, compression, args),
        )
        .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
        [
            "--log-level",
            "warn",
            "run",
            "--config",
            &cfg.display().to_string(),
            "--workers",
            "1",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    } else {
        let http = free_addr()?;
        [
            "start",
            "--otlp-grpc-endpoint",
            &listen.to_string(),
            "--otlp-http-endpoint",
            &http.to_string(),
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &format!("http://{sink_addr}"),
            "--otlp-exporter-protocol",
            "grpc",
            "--otlp-exporter-compression",
            compression.as_str(),
            "--batch-max-size",
            &args.batch_size.to_string(),
            "--batch-timeout",
            &args.batch_timeout.to_string(),
            "--pid-file",
            &dir.join("rotel.pid").display().to_string(),
            "--log-file",
            &dir.join("rotel.log").display().to_string(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    let mut fwd: Proc = pinned(args.forwarder_core, bin, &argv)?;
    wait_listening(&mut fwd, listen)?;
    // `taskset` execs the program, so the child's pid is the forwarder's.
    let pid = fwd.0.id();
    let out = Command::new("taskset")
        .arg("-c")
        .arg(args.load_core.to_string())
        .arg(me)
        .args([
            "bench-otlp-load",
            "--target",
            &listen.to_string(),
            "--sink",
            &sink_addr.to_string(),
            "--pid",
            &pid.to_string(),
            "--spans",
            &spans.to_string(),
            "-c",
            &args.connections.to_string(),
            "--streams",
            &args.streams.to_string(),
            "-d",
            &args.duration.to_string(),
            "--warmup",
            &args.warmup.to_string(),
            "--json",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the generator: {e}"))?;
    drop(fwd);
    drop(sink);
    if !out.status.success() {
        return Err(format!(
            "generator failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("generator output is not a report: {e}"))
}

fn table(outcomes: &[Outcome]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<10} {:>6} {:>5} {:>13} {:>14} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "target",
        "spans",
        "comp",
        "delivered/s",
        "spans/CPU-s",
        "CPU-s",
        "RSS-MiB",
        "lost",
        "vs-rotel",
        "rss/rotel"
    );
    for o in outcomes {
        let Some(r) = &o.report else {
            let _ = writeln!(
                t,
                "{:<10} {:>6} {:>5} {} ({})",
                o.target,
                o.spans_per_request,
                o.compression.as_str(),
                o.status,
                o.reason.as_deref().unwrap_or("")
            );
            continue;
        };
        let p = r.processes.first();
        let _ = writeln!(
            t,
            "{:<10} {:>6} {:>5} {:>13.0} {:>14} {:>8} {:>8} {:>10} {:>9} {:>9}",
            o.target,
            o.spans_per_request,
            o.compression.as_str(),
            r.delivered_spans_per_second
                .unwrap_or(r.sent_spans_per_second),
            r.spans_per_cpu_second
                .map_or("-".into(), |s| format!("{s:.0}")),
            p.map_or("-".into(), |p| format!("{:.2}", p.cpu_seconds)),
            p.map_or("-".into(), |p| format!(
                "{:.1}",
                p.rss_peak_bytes as f64 / 1048576.0
            )),
            match (r.spans_lost, r.requests_failed) {
                (Some(0), 0) => "0".to_string(),
                (l, f) => format!("{}/{f}f", l.map_or("?".into(), |l| l.to_string())),
            },
            o.vs_rotel_spans_per_cpu
                .map_or("-".into(), |v| format!("{v:.2}×")),
            o.vs_rotel_rss.map_or("-".into(), |v| format!("{v:.2}×")),
        );
    }
    let _ = writeln!(
        t,
        "(delivered/s = spans the sink received per second; spans/CPU-s = those spans divided by the \
         forwarder's user+system CPU time; lost = sent − delivered [/failed calls])"
    );
    t
}
