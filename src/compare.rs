//! `otlp-mesh bench-compare`: the proxy and each installed peer (nginx, haproxy, Envoy) in front
//! of the same fast upstream, measured one after another in one run with the same generator.
//!
//! Cores: every proxy runs alone on `--proxy-core`; the generator and the upstream share
//! `--load-core` (or the upstream has `--upstream-core` to itself, on a machine with a third).
//! The configs are `bench/configs/*` (embedded), so anyone can rerun them by hand.
//!
//! `--protocol h2c|grpc` speaks HTTP/2 with prior knowledge on both sides of every proxy
//! (`*-h2*` / `nginx-grpc.conf` configs); gRPC calls the upstream's echo method.
//!
//! `--from` measures nothing: it pools the rounds of earlier runs' JSON and reports them as one
//! run, which narrows the paired medians' intervals past what one run's 1 000 rounds give.

use otlp_mesh_bench::{Protocol, Report};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const NGINX: &str = include_str!("../bench/configs/nginx.conf");
const HAPROXY: &str = include_str!("../bench/configs/haproxy.cfg");
const ENVOY: &str = include_str!("../bench/configs/envoy.yaml");
const MESH: &str = include_str!("../bench/configs/otlp-mesh.yaml");
const MESH_TELEMETRY: &str = include_str!("../bench/configs/otlp-mesh-telemetry.yaml");
const NGINX_GRPC: &str = include_str!("../bench/configs/nginx-grpc.conf");
const HAPROXY_H2: &str = include_str!("../bench/configs/haproxy-h2.cfg");
const ENVOY_H2: &str = include_str!("../bench/configs/envoy-h2.yaml");
const MESH_H2: &str = include_str!("../bench/configs/otlp-mesh-h2.yaml");
const MESH_TELEMETRY_H2: &str = include_str!("../bench/configs/otlp-mesh-telemetry-h2.yaml");

/// The gRPC message the generator sends in `--protocol grpc` runs (echoed by the upstream): a
/// protobuf message with field 1 = the 20 bytes the upstream answers to plain HTTP requests.
const GRPC_MESSAGE: &[u8] = b"\x0a\x14hello from upstream\n";

/// Arguments of `otlp-mesh bench-compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Measured duration per target.
    #[arg(long, short = 'd', default_value = "10s")]
    duration: otlp_mesh_config::Duration,
    /// Warm-up per target, excluded from results.
    #[arg(long, default_value = "2s")]
    warmup: otlp_mesh_config::Duration,
    /// Connections (HTTP/1.1 keep-alive, or HTTP/2).
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Protocol on both sides of every proxy: http1, h2c (HTTP/2 with prior knowledge) or grpc
    /// (unary calls to the upstream's echo method over h2c).
    #[arg(long, default_value = "http1")]
    protocol: Protocol,
    /// Concurrent streams per connection (h2c and grpc).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Open loop at this total rate (added latency at a fixed load); closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: the open-loop schedule's step (see `otlp-mesh bench --pace`).
    #[arg(long, default_value = "250us", requires = "rate")]
    pace: otlp_mesh_config::Duration,
    /// Core for the proxies under test.
    #[arg(long, default_value_t = 0)]
    proxy_core: usize,
    /// Core for the generator and the upstream.
    #[arg(long, default_value_t = 1)]
    load_core: usize,
    /// Core for the upstream alone (default: the load core), so that on a machine with three
    /// or more cores the generator does not share its core with the upstream.
    #[arg(long)]
    upstream_core: Option<usize>,
    /// Only these targets (comma-separated names as printed, e.g. `direct,otlp-mesh,otlp-mesh+telemetry`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure every target this many times, round after round (targets in the same order each
    /// round), and also print each target's median over the rounds. Tails at a fixed rate move
    /// between runs by more than the proxies differ; medians of alternating rounds are the fair
    /// comparison.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Start every target once and keep them all running; each round measures them one after
    /// another, starting with the next target each round. Rounds can then be short and many
    /// (e.g. `--rounds 400 -d 300ms --warmup 100ms`), and the 95 % intervals of the paired
    /// medians say what a noisy machine can tell apart.
    #[arg(long)]
    interleave: bool,
    /// Write every target's report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure nothing: pool the rounds of earlier runs' `--json` files (repeatable) and print
    /// their medians as one run's, so that runs of the same settings narrow the 95 % intervals
    /// together. The runs must share protocol, mode, rate, connections and duration.
    #[arg(long = "from", value_name = "JSON", conflicts_with_all = ["rounds", "interleave", "only", "rate"])]
    from: Vec<PathBuf>,
}

/// Every target a run can have, as its JSON names it (read back by `--from`).
const TARGET_NAMES: [&str; 6] = [
    "direct",
    "otlp-mesh",
    "otlp-mesh+telemetry",
    "nginx",
    "haproxy",
    "envoy",
];

/// A process started for the run; killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured (or skipped) target.
#[derive(serde::Serialize)]
struct Outcome {
    name: &'static str,
    /// `measured`, `skipped` (not installed) or `failed`.
    status: &'static str,
    reason: Option<String>,
    report: Option<Report>,
}

/// A free port on 127.0.0.1 for a process the run starts (outside the ephemeral range, where
/// the load's own connections could take it before that process binds it).
pub(crate) fn free_addr() -> Result<SocketAddr, String> {
    otlp_mesh_ports::free_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
        .map_err(|e| format!("no free port: {e}"))
}

pub(crate) fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|f| f.is_file())
        })
        .unwrap_or(None)
}

pub(crate) fn pinned(core: usize, program: &Path, args: &[String]) -> Result<Proc, String> {
    pinned_to(core, program, args, Stdio::null())
}

/// [`pinned`], with the program's standard error to `stderr`.
fn pinned_to(core: usize, program: &Path, args: &[String], stderr: Stdio) -> Result<Proc, String> {
    Command::new("taskset")
        .arg("-c")
        .arg(core.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Proc)
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// The last line a target wrote to its standard error (kept in `log`), for a failure message.
fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// How a target that could not start reads (see [`wait_listening`]).
const EXITED_BEFORE_LISTENING: &str = "before listening";
/// Starts of a target that exits before listening, on fresh ports each time.
const START_ATTEMPTS: usize = 3;

/// Runs `start` (which picks its ports) again, up to [`START_ATTEMPTS`] times in all, while
/// the target exits before listening: a port found free can be taken before the target binds
/// it (by another process's outgoing connection, say).
fn with_fresh_ports<T>(
    name: &str,
    mut start: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(e) if attempt < START_ATTEMPTS && e.contains(EXITED_BEFORE_LISTENING) => {
                eprintln!("{name}: {e}; starting it again on other ports");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Waits (at most 10 s) until `addr` accepts connections or the process exits.
pub(crate) fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            return Err(format!("exited with {status} {EXITED_BEFORE_LISTENING}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("not listening on {addr} after 10 s"))
}

fn fill(template: &str, pairs: &[(&str, String)]) -> String {
    pairs.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// Runs `otlp-mesh bench` pinned to the load core against `addr`, sampling `pid`.
fn measure(
    me: &Path,
    args: &CompareArgs,
    addr: SocketAddr,
    pid: Option<u32>,
    body: Option<&Path>,
) -> Result<Report, String> {
    let mut cmd = vec![
        "bench".to_string(),
        format!("http://{addr}/"),
        "--protocol".into(),
        args.protocol.to_string(),
        "-c".into(),
        args.connections.to_string(),
        "-d".into(),
        args.duration.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
        "--json".into(),
        "-".into(),
    ];
    if let Some(r) = args.rate {
        cmd.extend([
            "--rate".into(),
            r.to_string(),
            "--pace".into(),
            args.pace.to_string(),
        ]);
    }
    if let Some(p) = pid {
        cmd.extend(["--pid".into(), p.to_string()]);
    }
    if args.protocol.is_h2() {
        cmd.extend(["--streams".into(), args.streams.to_string()]);
    }
    if let Some(body) = body {
        cmd.extend(["--body-file".into(), body.display().to_string()]);
    }
    let out = Command::new("taskset")
        .arg("-c")
        .arg(args.load_core.to_string())
        .arg(me)
        .args(&cmd)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the generator: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "generator failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let report: Report = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("generator output is not a report: {e}"))?;
    if report.ok == 0 {
        return Err(format!(
            "no request succeeded ({} errors: {:?})",
            report.errors.total(),
            report.errors
        ));
    }
    Ok(report)
}

/// Runs the comparison; exit 1 when it cannot run at all (no taskset, no upstream).
pub fn run(args: CompareArgs) -> ExitCode {
    let rounds = if args.from.is_empty() {
        run_inner(&args)
    } else {
        pooled_rounds(&args.from)
    };
    match rounds {
        Ok(rounds) => {
            // Several rounds are printed one by one as they finish (`compare_in`).
            if let [only] = rounds.as_slice() {
                print_table(only);
            }
            let medians = (rounds.len() > 1).then(|| medians(&rounds));
            if let Some(m) = &medians {
                print_medians(m, rounds.len());
            }
            if let Some(path) = &args.json {
                // `targets` is the first round (the shape of a one-round run); every round and
                // the medians follow.
                let json = serde_json::json!({
                    "targets": rounds.first(),
                    "rounds": rounds,
                    "medians": medians,
                });
                if let Err(e) = std::fs::write(path, json.to_string()) {
                    eprintln!(
                        "otlp-mesh bench-compare: cannot write {}: {e}",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otlp-mesh bench-compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: &CompareArgs) -> Result<Vec<Vec<Outcome>>, String> {
    find("taskset").ok_or("needs `taskset` (util-linux) to pin processes to cores")?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("otlp-mesh-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = compare_in(&me, &dir, args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A target's outcome as a run's JSON holds it.
#[derive(serde::Deserialize)]
struct StoredOutcome {
    name: String,
    status: String,
    reason: Option<String>,
    report: Option<Report>,
}

/// The part of a run's JSON that `--from` reads.
#[derive(serde::Deserialize)]
struct StoredRun {
    rounds: Vec<Vec<StoredOutcome>>,
}

/// What must be the same in every report for rounds to be pooled.
#[derive(Debug, PartialEq)]
struct Settings {
    protocol: Protocol,
    mode: String,
    rate: Option<f64>,
    connections: usize,
    duration_s: f64,
}

impl Settings {
    fn of(r: &Report) -> Settings {
        Settings {
            protocol: r.protocol,
            mode: r.mode.clone(),
            rate: r.target_rate,
            connections: r.connections,
            duration_s: r.duration_s,
        }
    }
}

impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} loop", self.protocol, self.mode)?;
        if let Some(rate) = self.rate {
            write!(f, " at {rate} req/s")?;
        }
        write!(
            f,
            ", {} connections, {} s per round",
            self.connections, self.duration_s
        )
    }
}

/// The rounds of the runs in `files` (`--json` outputs of `bench-compare`), one after another;
/// an error names the file and round that cannot be read or does not match the first report's
/// settings.
fn pooled_rounds(files: &[PathBuf]) -> Result<Vec<Vec<Outcome>>, String> {
    let mut rounds = Vec::new();
    let mut first: Option<(Settings, &Path)> = None;
    for file in files {
        let text =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let run: StoredRun = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{}: not the --json output of bench-compare: {e}",
                file.display()
            )
        })?;
        for (i, round) in run.rounds.into_iter().enumerate() {
            let at = || format!("{}: round {}", file.display(), i + 1);
            let mut outcomes = Vec::with_capacity(round.len());
            for o in round {
                let name = TARGET_NAMES
                    .into_iter()
                    .find(|n| *n == o.name)
                    .ok_or_else(|| format!("{}: unknown target {:?}", at(), o.name))?;
                let status = ["measured", "skipped", "failed"]
                    .into_iter()
                    .find(|s| *s == o.status)
                    .ok_or_else(|| format!("{}: {name}: unknown status {:?}", at(), o.status))?;
                if let Some(report) = &o.report {
                    let settings = Settings::of(report);
                    match &first {
                        None => first = Some((settings, file)),
                        Some((expected, from)) if *expected != settings => {
                            return Err(format!(
                                "{}: {name} ran {settings}, but {} ran {expected}: only runs of the same settings pool",
                                at(),
                                from.display()
                            ));
                        }
                        Some(_) => {}
                    }
                }
                outcomes.push(Outcome {
                    name,
                    status,
                    reason: o.reason,
                    report: o.report,
                });
            }
            rounds.push(outcomes);
        }
    }
    if first.is_none() {
        return Err("the --from files hold no measured round".into());
    }
    eprintln!("{} rounds from {} runs", rounds.len(), files.len());
    Ok(rounds)
}

fn compare_in(me: &Path, dir: &Path, args: &CompareArgs) -> Result<Vec<Vec<Outcome>>, String> {
    let upstream = free_addr()?;
    let upstream_core = args.upstream_core.unwrap_or(args.load_core);
    let mut up = pinned(
        upstream_core,
        me,
        &[
            "bench-upstream".into(),
            "--bind".into(),
            upstream.to_string(),
        ],
    )?;
    wait_listening(&mut up, upstream).map_err(|e| format!("upstream: {e}"))?;
    eprintln!(
        "upstream on {upstream} (core {upstream_core}); generator on core {}; proxies on core {}; protocol {}",
        args.load_core, args.proxy_core, args.protocol
    );

    let body = match args.protocol {
        Protocol::Grpc => {
            let path = dir.join("grpc-message.bin");
            write_bytes(&path, GRPC_MESSAGE)?;
            Some(path)
        }
        Protocol::Http1 | Protocol::H2c => None,
    };
    let body = body.as_deref();
    // With --interleave every target runs for the whole run (idle ones wait in epoll).
    let running: Vec<Result<Target, Unavailable>> = if args.interleave {
        targets(me, dir, args, upstream).collect()
    } else {
        Vec::new()
    };
    let mut rounds = Vec::new();
    // Past MAX_PRINTED_ROUNDS: one line rewritten in place on a terminal, else a line per tenth.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let tenth = args.rounds.div_ceil(10).max(1);
    for i in 1..=args.rounds {
        let outcomes = if args.interleave {
            interleaved_round(&running, i as usize, me, args, body)
        } else {
            round(me, dir, args, upstream, body)
        };
        if args.rounds > 1 && args.rounds <= MAX_PRINTED_ROUNDS {
            println!("round {i} of {}", args.rounds);
            print_table(&outcomes);
        } else if args.rounds > 1 && terminal {
            eprint!("\rround {i} of {}", args.rounds);
        } else if args.rounds > 1 && (i % tenth == 0 || i == args.rounds) {
            eprintln!("round {i} of {}", args.rounds);
        }
        rounds.push(outcomes);
    }
    if args.rounds > MAX_PRINTED_ROUNDS && terminal {
        eprintln!();
    }
    drop(running);
    drop(up);
    Ok(rounds)
}

/// Up to this many rounds each round's table is printed; past it, a progress line.
const MAX_PRINTED_ROUNDS: u32 = 20;

/// Measures every running target once; round `i` starts with the `i`-th target (rotating), so
/// that no target always follows the same one. Outcomes are in table order.
fn interleaved_round(
    running: &[Result<Target, Unavailable>],
    i: usize,
    me: &Path,
    args: &CompareArgs,
    body: Option<&Path>,
) -> Vec<Outcome> {
    let n = running.len();
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    for k in 0..n {
        let j = (i + k) % n;
        outcomes[j] = Some(measure_target(&running[j], me, args, body));
    }
    outcomes.into_iter().flatten().collect()
}

/// Starts a proxy under test: writes its config into the run's directory and returns the
/// program and arguments (`me`, the directory, its listen address, the upstream, the protocol).
type Start =
    fn(&Path, &Path, SocketAddr, SocketAddr, Protocol) -> Result<(PathBuf, Vec<String>), String>;

/// The proxies, in table order: name, program (`None` when not installed) and how to start it.
fn peers(me: &Path) -> [(&'static str, Option<PathBuf>, Start); 5] {
    [
        (
            "otlp-mesh",
            Some(me.to_path_buf()),
            |me, dir, listen, up, protocol| {
                let template = if protocol.is_h2() { MESH_H2 } else { MESH };
                start_mesh(template, me, dir, listen, up)
            },
        ),
        (
            "otlp-mesh+telemetry",
            Some(me.to_path_buf()),
            |me, dir, listen, up, protocol| {
                let template = if protocol.is_h2() {
                    MESH_TELEMETRY_H2
                } else {
                    MESH_TELEMETRY
                };
                start_mesh(template, me, dir, listen, up)
            },
        ),
        ("nginx", find("nginx"), |bin, dir, listen, up, protocol| {
            let cfg = dir.join("nginx.conf");
            // nginx speaks HTTP/2 to an upstream only through its gRPC module (`grpc_pass`),
            // which forwards any HTTP/2 request, gRPC or not.
            let template = if protocol.is_h2() { NGINX_GRPC } else { NGINX };
            write(
                &cfg,
                &fill(
                    template,
                    &[
                        ("dir", dir.display().to_string()),
                        ("listen", listen.to_string()),
                        ("upstream", up.to_string()),
                    ],
                ),
            )?;
            Ok((
                bin.to_path_buf(),
                vec![
                    "-p".into(),
                    dir.display().to_string(),
                    "-c".into(),
                    cfg.display().to_string(),
                ],
            ))
        }),
        (
            "haproxy",
            find("haproxy"),
            |bin, dir, listen, up, protocol| {
                let cfg = dir.join("haproxy.cfg");
                let template = if protocol.is_h2() {
                    HAPROXY_H2
                } else {
                    HAPROXY
                };
                write(
                    &cfg,
                    &fill(
                        template,
                        &[("listen", listen.to_string()), ("upstream", up.to_string())],
                    ),
                )?;
                Ok((
                    bin.to_path_buf(),
                    vec!["-f".into(), cfg.display().to_string()],
                ))
            },
        ),
        ("envoy", find("envoy"), |bin, dir, listen, up, protocol| {
            let cfg = dir.join("envoy.yaml");
            let pairs = [
                ("listen_host", listen.ip().to_string()),
                ("listen_port", listen.port().to_string()),
                ("upstream_host", up.ip().to_string()),
                ("upstream_port", up.port().to_string()),
            ];
            let template = if protocol.is_h2() { ENVOY_H2 } else { ENVOY };
            write(&cfg, &fill(template, &pairs))?;
            let args = [
                "-c",
                &cfg.display().to_string(),
                "--concurrency",
                "1",
                "--log-level",
                "error",
                "--disable-hot-restart",
            ];
            Ok((
                bin.to_path_buf(),
                args.iter().map(ToString::to_string).collect(),
            ))
        }),
    ]
}

/// A target ready for load: where to send it and the process to sample (none for `direct`);
/// the process is stopped when this is dropped.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    proc: Option<Proc>,
}

/// Measures `target` once, or reports why it cannot be measured.
fn measure_target(
    target: &Result<Target, Unavailable>,
    me: &Path,
    args: &CompareArgs,
    body: Option<&Path>,
) -> Outcome {
    match target {
        Ok(t) => {
            // `taskset` execs the program, so the child's pid is the proxy's.
            let pid = t.proc.as_ref().map(|p| p.0.id());
            outcome(t.name, measure(me, args, t.addr, pid, body))
        }
        Err(unavailable) => unavailable.outcome(),
    }
}

/// A target that cannot be measured: not installed (`skipped`) or not started (`failed`).
struct Unavailable {
    name: &'static str,
    status: &'static str,
    reason: String,
}

impl Unavailable {
    fn outcome(&self) -> Outcome {
        Outcome {
            name: self.name,
            status: self.status,
            reason: Some(self.reason.clone()),
            report: None,
        }
    }
}

/// The wanted targets in table order, each started when the iterator reaches it (`direct` is
/// the upstream itself).
fn targets<'a>(
    me: &'a Path,
    dir: &'a Path,
    args: &'a CompareArgs,
    upstream: SocketAddr,
) -> impl Iterator<Item = Result<Target, Unavailable>> + 'a {
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let direct = wanted("direct").then_some(Ok(Target {
        name: "direct",
        addr: upstream,
        proc: None,
    }));
    let proxies = peers(me)
        .into_iter()
        .filter(move |(name, ..)| wanted(name))
        .map(move |(name, bin, start)| launch(name, bin, start, dir, args, upstream));
    direct.into_iter().chain(proxies)
}

/// Starts one proxy pinned to the proxy core and waits until it listens.
fn launch(
    name: &'static str,
    bin: Option<PathBuf>,
    start: Start,
    dir: &Path,
    args: &CompareArgs,
    upstream: SocketAddr,
) -> Result<Target, Unavailable> {
    let Some(bin) = bin else {
        return Err(Unavailable {
            name,
            status: "skipped",
            reason: format!("`{name}` is not installed"),
        });
    };
    let log = dir.join(format!("{name}.stderr"));
    with_fresh_ports(name, || {
        let listen = free_addr()?;
        let (program, argv) = start(&bin, dir, listen, upstream, args.protocol)?;
        let stderr = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut proc = pinned_to(args.proxy_core, &program, &argv, stderr.into())?;
        wait_listening(&mut proc, listen).map_err(|e| format!("{e}: {}", last_line(&log)))?;
        Ok(Target {
            name,
            addr: listen,
            proc: Some(proc),
        })
    })
    .map_err(|reason| Unavailable {
        name,
        status: "failed",
        reason,
    })
}

/// Measures every wanted target once, one after another, each started for its measurement
/// and stopped after it.
fn round(
    me: &Path,
    dir: &Path,
    args: &CompareArgs,
    upstream: SocketAddr,
    body: Option<&Path>,
) -> Vec<Outcome> {
    // Each target is stopped (dropped) once measured, before the next one starts.
    targets(me, dir, args, upstream)
        .map(|t| measure_target(&t, me, args, body))
        .collect()
}

/// A target's medians over the rounds that measured it.
#[derive(serde::Serialize, Debug, PartialEq)]
struct Median {
    name: &'static str,
    /// Rounds that measured this target (failed and skipped ones are left out).
    rounds: usize,
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Median over the rounds of (this target's p50/p99/p99.9 minus `direct`'s in the same
    /// round); absent without a `direct` measurement.
    added_p50_us: Option<f64>,
    added_p99_us: Option<f64>,
    added_p999_us: Option<f64>,
    cpu_us_per_request: Option<f64>,
    /// Median over the rounds of this target's CPU per request divided by otlp-mesh's in the
    /// same round: a paired ratio, so a machine that slows down between rounds moves both.
    cpu_vs_mesh: Option<f64>,
    /// A 95 % confidence interval of that median (from the order statistics of the per-round
    /// ratios; needs six or more rounds).
    cpu_vs_mesh_ci: Option<(f64, f64)>,
    /// Median over the rounds of this target's throughput divided by otlp-mesh's in the same
    /// round, and its 95 % interval (in closed loop the proxy's core is the limit, so this is
    /// the throughput a target gets from the same core).
    throughput_vs_mesh: Option<f64>,
    throughput_vs_mesh_ci: Option<(f64, f64)>,
    /// Median over the rounds of this target's p50 (p99, p99.9) minus otlp-mesh's in the same
    /// round, and its 95 % interval: where the two latency curves cross, if they do.
    p50_vs_mesh_us: Option<f64>,
    p50_vs_mesh_ci: Option<(f64, f64)>,
    p99_vs_mesh_us: Option<f64>,
    p99_vs_mesh_ci: Option<(f64, f64)>,
    p999_vs_mesh_us: Option<f64>,
    p999_vs_mesh_ci: Option<(f64, f64)>,
    /// How far the CPU per request moved between rounds: (max − min) / median, with two or
    /// more rounds.
    cpu_spread: Option<f64>,
    rss_peak_mib: Option<f64>,
}

/// Above this spread of a target's CPU per request between rounds, the run is called noisy.
const NOISY_SPREAD: f64 = 0.10;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Each target's medians over `rounds`, in the order the targets first appear.
fn medians(rounds: &[Vec<Outcome>]) -> Vec<Median> {
    // Pooled runs need not all have had the same targets.
    let mut names: Vec<&'static str> = Vec::new();
    for o in rounds.iter().flatten() {
        if !names.contains(&o.name) {
            names.push(o.name);
        }
    }
    fn report<'a>(round: &'a [Outcome], name: &str) -> Option<&'a Report> {
        round
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.report.as_ref())
    }
    let mut out = Vec::new();
    for name in names {
        // Each round's report of this target, with `direct`'s and otlp-mesh's of that round.
        type Measured<'a> = (&'a Report, Option<&'a Report>, Option<&'a Report>);
        let measured: Vec<Measured> = rounds
            .iter()
            .filter_map(|r| {
                report(r, name).map(|rep| (rep, report(r, "direct"), report(r, "otlp-mesh")))
            })
            .collect();
        if measured.is_empty() {
            continue;
        }
        let of = |f: &dyn Fn(&Report) -> f64| median(measured.iter().map(|(r, ..)| f(r)).collect());
        // Each round's (this target, direct) and (this target, otlp-mesh) reports.
        let vs_direct = || measured.iter().map(|(r, d, _)| (*r, *d));
        let vs_mesh = || measured.iter().map(|(r, _, m)| (*r, *m));
        let process = |f: &dyn Fn(&otlp_mesh_bench::ProcessUsage) -> f64| {
            median(
                measured
                    .iter()
                    .filter_map(|(r, ..)| r.processes.first().map(f))
                    .collect(),
            )
        };
        let cpu = |r: &Report| r.processes.first().map(|p| p.cpu_us_per_request);
        let cpus: Vec<f64> = measured.iter().filter_map(|(r, ..)| cpu(r)).collect();
        let cpu_ratios: Vec<f64> = measured
            .iter()
            .filter_map(|(r, _, m)| match (cpu(r), m.and_then(cpu)) {
                (Some(c), Some(m)) if m > 0.0 => Some(c / m),
                _ => None,
            })
            .collect();
        let throughput_ratios: Vec<f64> = measured
            .iter()
            .filter_map(|(r, _, m)| {
                m.filter(|m| m.throughput_rps > 0.0)
                    .map(|m| r.throughput_rps / m.throughput_rps)
            })
            .collect();
        let (cpu_vs_mesh, cpu_vs_mesh_ci) = with_interval(cpu_ratios);
        let (throughput_vs_mesh, throughput_vs_mesh_ci) = with_interval(throughput_ratios);
        let (p50_vs_mesh_us, p50_vs_mesh_ci) =
            with_interval(differences(vs_mesh(), |r| r.latency.p50_us));
        let (p99_vs_mesh_us, p99_vs_mesh_ci) =
            with_interval(differences(vs_mesh(), |r| r.latency.p99_us));
        let (p999_vs_mesh_us, p999_vs_mesh_ci) =
            with_interval(differences(vs_mesh(), |r| r.latency.p999_us));
        out.push(Median {
            name,
            rounds: measured.len(),
            throughput_rps: of(&|r| r.throughput_rps).unwrap_or(0.0),
            p50_us: of(&|r| r.latency.p50_us as f64).unwrap_or(0.0),
            p99_us: of(&|r| r.latency.p99_us as f64).unwrap_or(0.0),
            p999_us: of(&|r| r.latency.p999_us as f64).unwrap_or(0.0),
            added_p50_us: median(differences(vs_direct(), |r| r.latency.p50_us)),
            added_p99_us: median(differences(vs_direct(), |r| r.latency.p99_us)),
            added_p999_us: median(differences(vs_direct(), |r| r.latency.p999_us)),
            cpu_us_per_request: process(&|p| p.cpu_us_per_request),
            cpu_vs_mesh,
            cpu_vs_mesh_ci,
            throughput_vs_mesh,
            throughput_vs_mesh_ci,
            p50_vs_mesh_us,
            p50_vs_mesh_ci,
            p99_vs_mesh_us,
            p99_vs_mesh_ci,
            p999_vs_mesh_us,
            p999_vs_mesh_ci,
            cpu_spread: spread(&cpus),
            rss_peak_mib: process(&|p| p.rss_peak_bytes as f64 / 1048576.0),
        });
    }
    out
}

/// Per round that has the other report: `f` of the target's report minus `f` of the other's.
fn differences<'a>(
    pairs: impl Iterator<Item = (&'a Report, Option<&'a Report>)>,
    f: impl Fn(&Report) -> u64,
) -> Vec<f64> {
    pairs
        .filter_map(|(r, other)| other.map(|o| f(r) as f64 - f(o) as f64))
        .collect()
}

/// The median of `values` and its 95 % interval ([`median_interval`]).
fn with_interval(values: Vec<f64>) -> (Option<f64>, Option<(f64, f64)>) {
    let interval = median_interval(&values);
    (median(values), interval)
}

/// A distribution-free 95 % confidence interval of the median of `values`: the order
/// statistics x(k) and x(n+1−k), with k the largest such that P(Binomial(n, ½) < k) ≤ 2.5 %.
/// `None` below six values (no such k).
fn median_interval(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    // P(Binomial(n, ½) ≤ j), in logarithms so that large n does not underflow.
    let mut log_pmf = n as f64 * 0.5f64.ln();
    let mut cdf = 0.0;
    let mut k = 0;
    for j in 0..n {
        cdf += log_pmf.exp();
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        log_pmf += ((n - j) as f64).ln() - ((j + 1) as f64).ln();
    }
    if k == 0 {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((sorted[k - 1], sorted[n - k]))
}

/// (max − min) / median of two or more values.
fn spread(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    median(values.to_vec())
        .filter(|m| *m > 0.0)
        .map(|m| (hi - lo) / m)
}

/// A warning when some target's CPU per request moved between rounds by more than
/// [`NOISY_SPREAD`]: the machine's speed changed during the run.
fn noise_warning(medians: &[Median]) -> Option<String> {
    let (name, worst) = medians
        .iter()
        .filter_map(|m| m.cpu_spread.map(|s| (m.name, s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (worst > NOISY_SPREAD).then(|| {
        format!(
            "warning: {name}'s CPU per request moved by {:.0} % between rounds (more than {:.0} %): \
             the machine's speed changed during the run; CPU differences between targets smaller \
             than that are not shown by the medians alone (cpu/mesh pairs each round, which \
             cancels slow drift; with six or more rounds its 95 % interval says which \
             differences the run still shows)",
            worst * 100.0,
            NOISY_SPREAD * 100.0
        )
    })
}

fn print_medians(medians: &[Median], rounds: usize) {
    println!("median of {rounds} rounds");
    println!(
        "{:<19} {:>7} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>9} {:>7} {:>9}",
        "target",
        "rounds",
        "req/s",
        "p50",
        "p99",
        "p99.9",
        "added p50",
        "added p99",
        "cpu-µs/req",
        "cpu/mesh",
        "spread",
        "rss-MiB"
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    for m in medians {
        println!(
            "{:<19} {:>7} {:>12.0} {:>9.0} {:>9.0} {:>9.0} {:>10} {:>10} {:>11} {:>9} {:>7} {:>9}",
            m.name,
            m.rounds,
            m.throughput_rps,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            opt(m.added_p50_us, 0),
            opt(m.added_p99_us, 0),
            opt(m.cpu_us_per_request, 1),
            m.cpu_vs_mesh.map_or("-".into(), |r| format!("{r:.2}×")),
            m.cpu_spread
                .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            opt(m.rss_peak_mib, 1),
        );
    }
    println!(
        "(latencies in µs; added = the target's percentile minus direct's in the same round, then the median over rounds; \
         cpu/mesh = the median of the per-round ratios of CPU per request to otlp-mesh's; \
         spread = (max - min) / median of CPU per request over the rounds)"
    );
    print_paired(medians);
    if let Some(w) = noise_warning(medians) {
        println!("{w}");
    }
}

/// The medians paired with otlp-mesh round by round, with their 95 % intervals (six or more
/// rounds).
fn print_paired(medians: &[Median]) {
    let paired: Vec<&Median> = medians
        .iter()
        .filter(|m| m.cpu_vs_mesh_ci.is_some() || m.p99_vs_mesh_ci.is_some())
        .collect();
    if paired.is_empty() {
        return;
    }
    println!("paired with otlp-mesh round by round: median [95 % interval]");
    println!(
        "{:<19} {:>26} {:>26} {:>24} {:>24} {:>24}",
        "target", "cpu/mesh", "req/s vs mesh", "p50 - mesh's", "p99 - mesh's", "p99.9 - mesh's"
    );
    let ratio = |r: Option<f64>, ci: Option<(f64, f64)>| match (r, ci) {
        (Some(r), Some((lo, hi))) => format!("{r:.3}× [{lo:.3}, {hi:.3}]"),
        _ => "-".into(),
    };
    let difference = |d: Option<f64>, ci: Option<(f64, f64)>| match (d, ci) {
        (Some(d), Some((lo, hi))) => format!("{d:+.0} [{lo:+.0}, {hi:+.0}]"),
        _ => "-".into(),
    };
    for m in paired {
        println!(
            "{:<19} {:>26} {:>26} {:>24} {:>24} {:>24}",
            m.name,
            ratio(m.cpu_vs_mesh, m.cpu_vs_mesh_ci),
            ratio(m.throughput_vs_mesh, m.throughput_vs_mesh_ci),
            difference(m.p50_vs_mesh_us, m.p50_vs_mesh_ci),
            difference(m.p99_vs_mesh_us, m.p99_vs_mesh_ci),
            difference(m.p999_vs_mesh_us, m.p999_vs_mesh_ci),
        );
    }
    println!(
        "(latency differences in µs; an interval that excludes 1× (CPU, req/s) or 0 (latency) \
         is a difference this run shows, however noisy the machine)"
    );
}

/// otlp-mesh with one worker on the config `template` filled for this run.
fn start_mesh(
    template: &str,
    me: &Path,
    dir: &Path,
    listen: SocketAddr,
    up: SocketAddr,
) -> Result<(PathBuf, Vec<String>), String> {
    let cfg = dir.join("otlp-mesh.yaml");
    let admin = free_addr()?;
    let pairs = [
        ("admin", admin.to_string()),
        ("listen", listen.to_string()),
        ("upstream", up.to_string()),
    ];
    write(&cfg, &fill(template, &pairs))?;
    let cfg = cfg.display().to_string();
    let args = [
        "--log-level",
        "warn",
        "run",
        "--config",
        &cfg,
        "--workers",
        "1",
    ];
    Ok((
        me.to_path_buf(),
        args.iter().map(ToString::to_string).collect(),
    ))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    write_bytes(path, text.as_bytes())
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn outcome(name: &'static str, r: Result<Report, String>) -> Outcome {
    match r {
        Ok(report) => Outcome {
            name,
            status: "measured",
            reason: None,
            report: Some(report),
        },
        Err(e) => Outcome {
            name,
            status: "failed",
            reason: Some(e),
            report: None,
        },
    }
}

fn print_table(outcomes: &[Outcome]) {
    let mesh_cpu = outcomes
        .iter()
        .find(|o| o.name == "otlp-mesh")
        .and_then(|o| o.report.as_ref())
        .and_then(|r| r.processes.first())
        .map(|p| p.cpu_us_per_request);
    println!(
        "{:<19} {:>12} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>7}",
        "target", "req/s", "p50", "p99", "p99.9", "cpu-µs/req", "rss-MiB", "cpu/mesh", "errors"
    );
    for o in outcomes {
        let Some(r) = &o.report else {
            println!(
                "{:<19} {} ({})",
                o.name,
                o.status,
                o.reason.as_deref().unwrap_or("")
            );
            continue;
        };
        let p = r.processes.first();
        let cpu = p.map(|p| p.cpu_us_per_request);
        println!(
            "{:<19} {:>12.0} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>7}",
            o.name,
            r.throughput_rps,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            cpu.map_or("-".into(), |c| format!("{c:.1}")),
            p.map_or("-".into(), |p| format!(
                "{:.1}",
                p.rss_peak_bytes as f64 / 1048576.0
            )),
            match (cpu, mesh_cpu) {
                (Some(c), Some(m)) if m > 0.0 => format!("{:.2}×", c / m),
                _ => "-".into(),
            },
            r.errors.total()
        );
    }
    println!("(latencies in µs; cpu/mesh = the target's CPU per request divided by otlp-mesh's)");
}

/// `otlp-mesh bench-upstream`: a minimal fast HTTP/1.1 + h2c server answering a 20-byte body,
/// and over HTTP/2 a gRPC echo service on every path (see [`answer`]).
pub fn upstream(bind: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otlp-mesh bench-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("cannot bind {bind}: {e}"))?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(answer);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-mesh bench-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

type Trailers = std::future::Ready<Option<Result<http::HeaderMap, std::convert::Infallible>>>;
type UpstreamBody =
    http_body_util::combinators::WithTrailers<http_body_util::Full<bytes::Bytes>, Trailers>;

/// One `bench-upstream` answer. An HTTP/2 request with `content-type: application/grpc*` is a
/// unary gRPC call to the echo service (`/otlpmesh.bench.Echo/Echo`, but any path answers): its
/// length-prefixed message comes back as it was sent (with the request's `grpc-encoding`, if
/// any), then the trailer `grpc-status: 0`. Anything else gets `hello from upstream\n`.
async fn answer(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<UpstreamBody>, hyper::Error> {
    use http_body_util::BodyExt;
    let grpc = req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        // Read what the request still sends (an HTTP/2 proxy may end even a GET with an empty
        // DATA frame): answering first would reset the stream.
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"hello from upstream\n"));
        return Ok(http::Response::new(
            body.with_trailers(std::future::ready(None)),
        ));
    }
    let encoding = req.headers().get("grpc-encoding").cloned();
    let message = req.into_body().collect().await?.to_bytes();
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body =
        http_body_util::Full::new(message).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    if let Some(e) = encoding {
        resp.headers_mut().insert("grpc-encoding", e);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use otlp_mesh_bench::{Errors, ProcessUsage};

    fn measured(name: &'static str, p99_us: u64, rps: f64, cpu: Option<f64>) -> Outcome {
        let report = Report {
            url: "http://127.0.0.1:1/".into(),
            protocol: Protocol::Http1,
            mode: "open".into(),
            connections: 50,
            workers: 1,
            duration_s: 10.0,
            target_rate: Some(20000.0),
            pace_us: None,
            requests: 1000,
            ok: 1000,
            errors: Errors::default(),
            throughput_rps: rps,
            latency: otlp_mesh_bench::Percentiles {
                p50_us: p99_us / 2,
                p99_us,
                p999_us: p99_us * 2,
                ..Default::default()
            },
            latency_uncorrected: None,
            processes: cpu
                .map(|c| ProcessUsage {
                    pid: 1,
                    name: name.into(),
                    cpu_seconds: 1.0,
                    cpu_us_per_request: c,
                    rss_peak_bytes: 16 << 20,
                })
                .into_iter()
                .collect(),
            unix_time_s: 0,
            timeline_bucket_ms: 100,
            timeline: Vec::new(),
            latency_distribution: Vec::new(),
        };
        outcome(name, Ok(report))
    }

    #[test]
    fn medians_take_added_latency_per_round_and_leave_out_failed_rounds() {
        let rounds = vec![
            vec![
                measured("direct", 1000, 100.0, None),
                measured("otlp-mesh", 1500, 90.0, Some(10.0)),
                measured("haproxy", 1100, 95.0, Some(8.0)),
            ],
            vec![
                measured("direct", 3000, 100.0, None),
                measured("otlp-mesh", 2800, 80.0, Some(12.0)),
                outcome("haproxy", Err("exited".into())),
            ],
            vec![
                measured("direct", 2000, 100.0, None),
                measured("otlp-mesh", 2600, 70.0, Some(11.0)),
                measured("haproxy", 2300, 85.0, Some(9.0)),
            ],
        ];
        let m = medians(&rounds);
        let names: Vec<&str> = m.iter().map(|m| m.name).collect();
        assert_eq!(names, ["direct", "otlp-mesh", "haproxy"]);
        assert_eq!(m[0].added_p99_us, Some(0.0));
        assert_eq!(m[0].cpu_us_per_request, None);
        // Added p99 per round: +500, -200, +600; the median of the differences, not the
        // difference of the medians (2600 - 2000).
        assert_eq!(m[1].rounds, 3);
        assert_eq!(m[1].p99_us, 2600.0);
        assert_eq!(m[1].added_p99_us, Some(500.0));
        assert_eq!(m[1].added_p50_us, Some(250.0));
        assert_eq!(m[1].throughput_rps, 80.0);
        assert_eq!(m[1].cpu_us_per_request, Some(11.0));
        // haproxy failed in round 2: two rounds, +100 and +300, median 200.
        assert_eq!(m[2].rounds, 2);
        assert_eq!(m[2].added_p99_us, Some(200.0));
        assert_eq!(m[2].cpu_us_per_request, Some(8.5));
        assert_eq!(m[2].rss_peak_mib, Some(16.0));
        // CPU against otlp-mesh's in the same rounds: 8/10 and 9/11.
        assert_eq!(m[2].cpu_vs_mesh, Some((0.8 + 9.0 / 11.0) / 2.0));
        assert_eq!(m[1].cpu_vs_mesh, Some(1.0));
        assert_eq!(m[0].cpu_vs_mesh, None);
        // Spread: (12 - 10) / 11 and (9 - 8) / 8.5; none without CPU figures.
        assert_eq!(m[1].cpu_spread, Some(2.0 / 11.0));
        assert_eq!(m[2].cpu_spread, Some(1.0 / 8.5));
        assert_eq!(m[0].cpu_spread, None);
    }

    #[test]
    fn cpu_against_otlp_mesh_is_paired_by_round_and_a_drifting_machine_is_called_noisy() {
        let round = |mesh: f64, nginx: f64| {
            vec![
                measured("otlp-mesh", 1000, 100.0, Some(mesh)),
                measured("nginx", 1000, 100.0, Some(nginx)),
            ]
        };
        // The machine halves its speed in round 2; nginx is 0.9x otlp-mesh's CPU in two of the
        // three rounds. The medians alone (13 against 12) would rank nginx behind.
        let drifting = vec![round(10.0, 9.0), round(20.0, 18.0), round(12.0, 13.0)];
        let m = medians(&drifting);
        assert_eq!(m[1].cpu_us_per_request, Some(13.0));
        assert_eq!(m[1].cpu_vs_mesh, Some(0.9));
        assert_eq!(m[0].cpu_spread, Some(10.0 / 12.0));
        let warning = noise_warning(&m).expect("a 100 % spread is noisy");
        assert!(
            warning.contains("otlp-mesh's CPU per request moved by 83 %"),
            "{warning}"
        );

        let steady = vec![round(10.0, 9.0), round(10.5, 9.4), round(10.2, 9.3)];
        let m = medians(&steady);
        assert!(
            m.iter()
                .all(|m| m.cpu_spread.is_some_and(|s| s <= NOISY_SPREAD))
        );
        assert_eq!(noise_warning(&m), None);
        // One round has no spread to judge.
        assert_eq!(noise_warning(&medians(&drifting[..1])), None);
    }

    #[test]
    fn a_target_that_exits_before_listening_is_started_again_at_most_three_times() {
        let exited = || {
            Err::<(), _>(format!(
                "exited with exit status: 1 {EXITED_BEFORE_LISTENING}"
            ))
        };
        let mut calls = 0;
        let r = with_fresh_ports("t", || {
            calls += 1;
            if calls < 3 { exited() } else { Ok(()) }
        });
        assert_eq!((r, calls), (Ok(()), 3));
        let mut calls = 0;
        let r = with_fresh_ports("t", || {
            calls += 1;
            exited()
        });
        assert!(r.is_err());
        assert_eq!(calls, START_ATTEMPTS);
        // Other failures are not retried.
        let mut calls = 0;
        let r = with_fresh_ports("t", || {
            calls += 1;
            Err::<(), _>("cannot start nginx: not found".to_string())
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn median_interval_takes_the_order_statistics_of_the_binomial_table() {
        // Shuffled 1..=n: the interval is [k, n + 1 - k] with the tabled k.
        let values =
            |n: usize| -> Vec<f64> { (1..=n).map(|i| ((i * 7919) % n + 1) as f64).collect() };
        assert_eq!(
            median_interval(&values(5)),
            None,
            "five values give no 95 % interval"
        );
        assert_eq!(median_interval(&[]), None);
        for (n, k) in [(6, 1), (15, 4), (100, 40), (1000, 469)] {
            assert_eq!(
                median_interval(&values(n)),
                Some((k as f64, (n + 1 - k) as f64)),
                "n = {n}"
            );
        }
    }

    #[test]
    fn p99_against_otlp_mesh_is_a_paired_difference_with_an_interval_from_six_rounds() {
        // haproxy's p99 is otlp-mesh's + 100 µs in four rounds of six and - 50 µs in two, while
        // both move by far more between rounds.
        let round = |mesh: u64, haproxy: u64| {
            vec![
                measured("otlp-mesh", mesh, 100.0, Some(10.0)),
                measured("haproxy", haproxy, 100.0, Some(11.0)),
            ]
        };
        let rounds: Vec<Vec<Outcome>> = [
            (900, 1000),
            (3000, 3100),
            (500, 450),
            (2000, 2100),
            (700, 650),
            (1500, 1600),
        ]
        .into_iter()
        .map(|(m, h)| round(m, h))
        .collect();
        let m = medians(&rounds[..5]);
        assert_eq!(m[1].p99_vs_mesh_us, Some(100.0));
        assert_eq!(m[1].p99_vs_mesh_ci, None, "five rounds");
        let m = medians(&rounds);
        assert_eq!(m[1].p99_vs_mesh_us, Some(100.0));
        assert_eq!(m[1].p99_vs_mesh_ci, Some((-50.0, 100.0)));
        assert_eq!(m[1].cpu_vs_mesh_ci, Some((1.1, 1.1)));
        assert_eq!(m[0].p99_vs_mesh_ci, Some((0.0, 0.0)));
        assert_eq!(m[1].throughput_vs_mesh, Some(1.0));
        assert_eq!(m[1].throughput_vs_mesh_ci, Some((1.0, 1.0)));
    }

    #[test]
    fn latency_curves_that_cross_show_as_paired_differences_of_opposite_sign() {
        // haproxy answers the median request 20 µs sooner than otlp-mesh in every round, and
        // its p99.9 is 300 µs later, while the machine moves both by milliseconds.
        let at = |name: &'static str, p50: u64, p99: u64, p999: u64| {
            let mut o = measured(name, p99, 100.0, Some(10.0));
            if let Some(r) = o.report.as_mut() {
                r.latency.p50_us = p50;
                r.latency.p999_us = p999;
            }
            o
        };
        let rounds: Vec<Vec<Outcome>> = [400, 900, 250, 1300, 600, 700, 2000]
            .into_iter()
            .map(|base| {
                vec![
                    at("otlp-mesh", base, base * 4, base * 8),
                    at("haproxy", base - 20, base * 4, base * 8 + 300),
                ]
            })
            .collect();
        let m = medians(&rounds);
        assert_eq!(m[1].p50_vs_mesh_us, Some(-20.0));
        assert_eq!(m[1].p50_vs_mesh_ci, Some((-20.0, -20.0)));
        assert_eq!(m[1].p99_vs_mesh_us, Some(0.0));
        assert_eq!(m[1].p999_vs_mesh_us, Some(300.0));
        assert_eq!(m[1].p999_vs_mesh_ci, Some((300.0, 300.0)));
        assert_eq!(m[0].p50_vs_mesh_ci, Some((0.0, 0.0)));
    }

    #[test]
    fn throughput_against_otlp_mesh_is_a_paired_ratio_with_an_interval() {
        // The machine's speed halves and doubles between rounds; the target always gets 0.9 of
        // otlp-mesh's throughput, except one round at 1.2.
        let rounds: Vec<Vec<Outcome>> = [
            (40_000.0, 0.9),
            (20_000.0, 0.9),
            (80_000.0, 1.2),
            (40_000.0, 0.9),
            (30_000.0, 0.9),
            (60_000.0, 0.9),
        ]
        .into_iter()
        .map(|(mesh, ratio)| {
            vec![
                measured("otlp-mesh", 1000, mesh, Some(10.0)),
                measured("otlp-mesh+telemetry", 1000, mesh * ratio, Some(11.0)),
            ]
        })
        .collect();
        let m = medians(&rounds);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(m[1].throughput_vs_mesh, 0.9), "{:?}", m[1]);
        let (lo, hi) = m[1].throughput_vs_mesh_ci.expect("six rounds");
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 1.2).abs() < 1e-9,
            "{lo} {hi}"
        );
        // The plain median of each target's throughput mixes fast and slow rounds.
        assert_eq!(m[1].throughput_rps, 36_000.0);
    }

    /// Writes `rounds` as a run's `--json` file named `name` in `dir`.
    fn write_run(dir: &Path, name: &str, rounds: &[Vec<Outcome>]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::json!({ "rounds": rounds }).to_string()).unwrap();
        path
    }

    /// A round of otlp-mesh and `peer` per ratio, the peer's CPU `ratios[i]` times otlp-mesh's.
    fn paired_rounds(peer: &'static str, ratios: &[f64]) -> Vec<Vec<Outcome>> {
        ratios
            .iter()
            .map(|r| {
                vec![
                    measured("otlp-mesh", 1000, 1000.0, Some(10.0)),
                    measured(peer, 1000, 1000.0, Some(10.0 * r)),
                ]
            })
            .collect()
    }

    #[test]
    fn pooled_runs_are_one_run_of_all_their_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let a = [1.01, 1.02, 1.03, 1.04, 1.05, 1.06];
        let b = [1.07, 1.08, 1.09, 1.10, 1.11, 1.12];
        let files = [
            write_run(dir.path(), "a.json", &paired_rounds("haproxy", &a)),
            write_run(dir.path(), "b.json", &paired_rounds("haproxy", &b)),
            write_run(dir.path(), "c.json", &paired_rounds("nginx", &a)),
        ];
        let rounds = pooled_rounds(&files).unwrap();
        assert_eq!(rounds.len(), 18);
        let m = medians(&rounds);
        let names: Vec<&str> = m.iter().map(|m| m.name).collect();
        // Targets in the order they first appear, though the first run had no nginx.
        assert_eq!(names, ["otlp-mesh", "haproxy", "nginx"]);
        assert_eq!(m[0].rounds, 18);
        assert_eq!(m[1].rounds, 12);
        // The median of the twelve pooled ratios lies between the two runs' own medians.
        let close = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-9);
        assert!(close(m[1].cpu_vs_mesh, 1.065), "{:?}", m[1]);
        assert!(close(m[2].cpu_vs_mesh, 1.035), "{:?}", m[2]);
        // Twelve rounds narrow the interval that six give (k = 3 of 12 against 1 of 6).
        let (lo, hi) = m[1].cpu_vs_mesh_ci.unwrap();
        assert!(close(Some(lo), 1.03) && close(Some(hi), 1.10), "{lo} {hi}");
        let alone = medians(&pooled_rounds(&files[..1]).unwrap());
        let (lo_a, hi_a) = alone[1].cpu_vs_mesh_ci.unwrap();
        assert!(
            close(Some(lo_a), 1.01) && close(Some(hi_a), 1.06),
            "{lo_a} {hi_a}"
        );
    }

    #[test]
    fn pooling_refuses_runs_of_other_settings_and_unreadable_files_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_run(dir.path(), "a.json", &paired_rounds("haproxy", &[1.0; 6]));
        let mut other = paired_rounds("haproxy", &[1.0; 6]);
        for o in other.iter_mut().flatten() {
            if let Some(r) = o.report.as_mut() {
                r.target_rate = Some(10_000.0);
            }
        }
        let b = write_run(dir.path(), "b.json", &other);
        let e = pooled_rounds(&[a.clone(), b.clone()]).err().unwrap();
        assert!(
            e.contains("b.json: round 1: otlp-mesh ran http1 open loop at 10000 req/s")
                && e.contains("a.json ran http1 open loop at 20000 req/s, 50 connections, 10 s"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "{\"targets\": [").unwrap();
        let e = pooled_rounds(&[a.clone(), garbage]).err().unwrap();
        assert!(
            e.contains("garbage.json: not the --json output of bench-compare"),
            "{e}"
        );

        let unknown = dir.path().join("unknown.json");
        let text = std::fs::read_to_string(&a)
            .unwrap()
            .replace("haproxy", "varnish");
        std::fs::write(&unknown, text).unwrap();
        let e = pooled_rounds(&[unknown]).err().unwrap();
        assert!(
            e.contains("unknown.json: round 1: unknown target \"varnish\""),
            "{e}"
        );

        let missing = dir.path().join("missing.json");
        let e = pooled_rounds(&[missing]).err().unwrap();
        assert!(
            e.contains("cannot read") && e.contains("missing.json"),
            "{e}"
        );

        let empty = write_run(dir.path(), "empty.json", &[]);
        let e = pooled_rounds(&[empty]).err().unwrap();
        assert!(e.contains("no measured round"), "{e}");
    }

    #[test]
    fn every_target_a_run_can_have_is_known_to_the_pooling() {
        let me = Path::new("otlp-mesh");
        let mut names = vec!["direct"];
        names.extend(peers(me).iter().map(|p| p.0));
        assert_eq!(names, TARGET_NAMES);
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }
}
