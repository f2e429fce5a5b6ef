//! `otlp-mesh bench`: command-line front of the `otlp-mesh-bench` crate.

use otlp_mesh_bench::{BenchConfig, GRPC_ECHO_METHOD, Protocol, Report, compare};
use otlp_mesh_config::Duration;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `otlp-mesh bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/ (for gRPC the path may name the method:
    /// http://127.0.0.1:8080/pkg.Service/Method).
    url: http::Uri,
    /// TCP connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Concurrent streams per connection (h2c and gRPC).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measured duration.
    #[arg(long, short = 'd', default_value = "10s")]
    duration: Duration,
    /// Warm-up excluded from results.
    #[arg(long, default_value = "1s")]
    warmup: Duration,
    /// Open loop at this total rate (requests/s) with coordinated-omission correction; closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests due within one step of this grid go out together at its end, and
    /// their latency runs from there (0 = each at its own time; finer steps cost the generator
    /// more wake-ups).
    #[arg(long, default_value = "250us")]
    pace: Duration,
    /// Wire protocol: http1, h2c (HTTP/2 with prior knowledge) or grpc (unary gRPC over h2c).
    #[arg(long, default_value = "http1")]
    protocol: Protocol,
    /// Same as `--protocol h2c`.
    #[arg(long, conflicts_with = "protocol")]
    h2c: bool,
    /// gRPC method `/package.Service/Method` (default: the URL's path, or the built-in echo
    /// `/otlpmesh.bench.Echo/Echo` of `bench-upstream` when the path is `/`).
    #[arg(long)]
    grpc_method: Option<String>,
    /// HTTP method (default GET; gRPC always sends POST).
    #[arg(long)]
    method: Option<http::Method>,
    /// Request body; for gRPC the raw (protobuf) message, which the generator frames.
    #[arg(long, default_value = "")]
    body: String,
    /// Request body read from a file as raw bytes (e.g. an encoded protobuf message for gRPC).
    #[arg(long, conflicts_with = "body")]
    body_file: Option<PathBuf>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s")]
    timeout: Duration,
    /// Process to sample for CPU time and memory (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Append the report as a CSV row to this file (header written when the file is new).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write a self-contained HTML report (summary, latency distribution, throughput over time;
    /// with --history also trends across runs) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Append the report as one JSON line to this file (created if missing); --html plots the
    /// throughput and p99 of its newest 1000 runs.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Compare with an earlier JSON report; exit 2 when a figure is worse than --threshold.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Regression threshold in percent for --baseline.
    #[arg(long, default_value_t = 10.0)]
    threshold: f64,
}

/// Runs the benchmark; exit 1 on usage or I/O errors, 2 on a regression against the baseline.
pub fn run(args: BenchArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otlp-mesh bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: BenchArgs) -> Result<ExitCode, String> {
    if args.url.scheme_str() != Some("http") || args.url.authority().is_none() {
        return Err(format!("url `{}` must be http://host:port/path", args.url));
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` must be `name: value`"))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|e| format!("header `{k}`: {e}"))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|e| format!("header `{k}` value: {e}"))?;
        headers.push((name, value));
    }
    let protocol = if args.h2c {
        Protocol::H2c
    } else {
        args.protocol
    };
    let url = target_url(&args.url, protocol, args.grpc_method.as_deref())?;
    if protocol == Protocol::Grpc
        && args
            .method
            .as_ref()
            .is_some_and(|m| m != http::Method::POST)
    {
        return Err("gRPC always uses POST: drop --method".into());
    }
    let body = match &args.body_file {
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => args.body.clone().into_bytes(),
    };
    let baseline: Option<Report> = match &args.baseline {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read baseline {}: {e}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("baseline {} is not a bench report: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let cfg = BenchConfig {
        url,
        protocol,
        method: args.method.clone().unwrap_or(http::Method::GET),
        body: bytes::Bytes::from(body),
        headers,
        connections: args.connections,
        streams_per_connection: args.streams,
        duration: args.duration.into(),
        warmup: args.warmup.into(),
        rate: args.rate,
        pace: args.pace.into(),
        timeout: args.timeout.into(),
        pids: args.pid.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let report = rt.block_on(otlp_mesh_bench::run(cfg))?;
    eprint!("{}", report.to_table());

    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match &args.json {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => {
            std::fs::write(p, &json).map_err(|e| format!("cannot write {}: {e}", p.display()))?
        }
        None => {}
    }
    if let Some(p) = &args.csv {
        use std::io::Write;
        let new = !p.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
        if new {
            writeln!(f, "{}", Report::csv_header()).map_err(|e| e.to_string())?;
        }
        writeln!(f, "{}", report.to_csv_row()).map_err(|e| e.to_string())?;
    }
    if let Some(p) = &args.history {
        otlp_mesh_bench::history::append(p, &report)
            .map_err(|e| format!("cannot append to {}: {e}", p.display()))?;
    }
    if let Some(p) = &args.html {
        let history = match &args.history {
            Some(h) => {
                let read = otlp_mesh_bench::history::read(h, otlp_mesh_bench::history::MAX_RUNS)
                    .map_err(|e| format!("cannot read {}: {e}", h.display()))?;
                if read.skipped > 0 {
                    eprintln!(
                        "otlp-mesh bench: skipped {} unreadable line(s) of {}",
                        read.skipped,
                        h.display()
                    );
                }
                Some(read.runs)
            }
            None => None,
        };
        let page = otlp_mesh_bench::html::render(&report, history.as_deref());
        std::fs::write(p, page).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(base) = baseline {
        let cmp = compare(&base, &report, args.threshold);
        eprint!("{}", cmp.to_table());
        if cmp.regressed() {
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The URL to load: for gRPC the method from `--grpc-method`, else the URL's own path, else the
/// built-in echo method; checked to be `/package.Service/Method`.
fn target_url(
    url: &http::Uri,
    protocol: Protocol,
    grpc_method: Option<&str>,
) -> Result<http::Uri, String> {
    if protocol != Protocol::Grpc {
        if grpc_method.is_some() {
            return Err("--grpc-method needs --protocol grpc".into());
        }
        return Ok(url.clone());
    }
    if url.query().is_some() {
        return Err(format!("gRPC url `{url}` must not have a query"));
    }
    let path = url.path();
    let method = match grpc_method {
        Some(m) if path != "/" && path != m => {
            return Err(format!(
                "the url path `{path}` and --grpc-method `{m}` differ: give the method once"
            ));
        }
        Some(m) => m,
        None if path == "/" => GRPC_ECHO_METHOD,
        None => path,
    };
    otlp_mesh_bench::check_grpc_method(method)?;
    let mut parts = url.clone().into_parts();
    parts.path_and_query = Some(
        method
            .parse()
            .map_err(|e| format!("gRPC method `{method}`: {e}"))?,
    );
    http::Uri::from_parts(parts).map_err(|e| format!("url with gRPC method `{method}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &'static str) -> http::Uri {
        http::Uri::from_static(u)
    }

    #[test]
    fn grpc_method_comes_from_the_flag_the_path_or_the_echo_default() {
        let t = |u, m| target_url(&url(u), Protocol::Grpc, m).map(|u| u.to_string());
        assert_eq!(
            t("http://h:1/", None).unwrap(),
            "http://h:1/otlpmesh.bench.Echo/Echo"
        );
        assert_eq!(
            t("http://h:1", None).unwrap(),
            "http://h:1/otlpmesh.bench.Echo/Echo"
        );
        assert_eq!(t("http://h:1/a.B/C", None).unwrap(), "http://h:1/a.B/C");
        assert_eq!(
            t("http://h:1/", Some("/a.B/C")).unwrap(),
            "http://h:1/a.B/C"
        );
        assert_eq!(
            t("http://h:1/a.B/C", Some("/a.B/C")).unwrap(),
            "http://h:1/a.B/C"
        );
        assert!(
            t("http://h:1/a.B/C", Some("/x.Y/Z"))
                .unwrap_err()
                .contains("differ")
        );
        assert!(
            t("http://h:1/", Some("a.B/C"))
                .unwrap_err()
                .contains("start with `/`")
        );
        assert!(
            t("http://h:1/a.B", None)
                .unwrap_err()
                .contains("/package.Service/Method")
        );
        assert!(t("http://h:1/a.B/C?x", None).unwrap_err().contains("query"));
        // Other protocols keep the url and refuse --grpc-method.
        assert_eq!(
            target_url(&url("http://h:1/x"), Protocol::H2c, None).unwrap(),
            url("http://h:1/x")
        );
        assert!(
            target_url(&url("http://h:1/"), Protocol::Http1, Some("/a/b"))
                .unwrap_err()
                .contains("needs --protocol grpc")
        );
    }
}
