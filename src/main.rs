//! otlp-mesh command line: `run`, `validate`, `demo`.

mod app;
mod bench;
mod bench_otlp;
mod compare;
mod demo;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A small, fast service proxy and OTLP telemetry agent.
#[derive(Parser, Debug)]
#[command(name = "otlp-mesh", version, about)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace or a RUST_LOG-style directive); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy with a config file (reloaded on change and on SIGHUP).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads (default: number of cores); 1 runs everything on one thread.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Check a config file: exit 0 when valid, 1 listing every error.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate HTTP/1.1, h2c or unary gRPC load against a URL and report latency percentiles, throughput,
    /// errors and the CPU and memory of given processes.
    Bench(Box<bench::BenchArgs>),
    /// Measure otlp-mesh and each installed peer (nginx, haproxy, Envoy) in front of the same
    /// upstream, side by side in one run, proxies and load pinned to different cores.
    BenchCompare(compare::CompareArgs),
    /// OTLP forwarding throughput per CPU-second: otlp-mesh and Rotel as OTLP/gRPC forwarders to
    /// the same sink, side by side in one run, forwarder and load pinned to different cores.
    BenchOtlp(bench_otlp::BenchOtlpArgs),
    /// OTLP/gRPC load generator: realistic trace export requests, closed loop, with span
    /// delivery checked at a `bench-otlp-sink` and CPU/RSS of given processes.
    BenchOtlpLoad(bench_otlp::LoadArgs),
    /// OTLP/gRPC sink: answers Export calls, counts spans, serves its counters on GET /stats.
    BenchOtlpSink {
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
    /// A minimal fast upstream for benchmarks (used by bench-compare).
    #[command(hide = true)]
    BenchUpstream {
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
    /// Run example services, the proxy in front of them and background traffic, on loopback.
    Demo {
        /// Proxy listener port (admin is on 9901 unless --admin-port says otherwise).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Requests per second of background traffic (0 turns it off).
        #[arg(long, default_value_t = 20)]
        rps: u32,
        #[arg(long)]
        workers: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_logging(&cli.log_level, matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Command::Validate { config } => app::validate(&config),
        Command::Run { config, workers } => app::run_file(config, workers),
        Command::Bench(args) => bench::run(*args),
        Command::BenchCompare(args) => compare::run(args),
        Command::BenchOtlp(args) => bench_otlp::run(args),
        Command::BenchOtlpLoad(args) => bench_otlp::load(args),
        Command::BenchOtlpSink { bind } => bench_otlp::sink(bind),
        Command::BenchUpstream { bind } => compare::upstream(bind),
        Command::Demo {
            port,
            admin_port,
            rps,
            workers,
        } => app::run_demo(port, admin_port, rps, workers),
    }
}
