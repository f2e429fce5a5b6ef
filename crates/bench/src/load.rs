//! The load generator: one task per connection, HTTP/1.1 or h2c, closed or open loop.

use crate::histogram::{Latency, OpenLoopRecorder};
use crate::report::{Errors, Report};
use crate::resources::ProcessSampler;
use crate::timeline::Timeline;
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Wire protocol of the generated load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub url: Uri,
    pub protocol: Protocol,
    pub method: Method,
    pub body: Bytes,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// TCP connections.
    pub connections: usize,
    /// Requests in flight per connection (h2c only; HTTP/1.1 is always 1).
    pub streams_per_connection: usize,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Excluded from results.
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None` = closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout (counted as an error).
    pub timeout: Duration,
    /// Processes whose CPU time and memory are sampled.
    pub pids: Vec<u32>,
    /// Print a progress line on stderr about once a second (runs longer than 5 s only).
    pub progress: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            url: Uri::from_static("http://127.0.0.1:8080/"),
            protocol: Protocol::Http1,
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            connections: 50,
            streams_per_connection: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: None,
            timeout: Duration::from_secs(10),
            pids: Vec::new(),
            progress: false,
        }
    }
}

/// What one worker measured.
#[derive(Default)]
struct WorkerResult {
    latency: Latency,
    uncorrected: Latency,
    ok: u64,
    errors: Errors,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

enum Conn {
    H1(Sender),
    H2(H2Sender),
}

impl Conn {
    async fn open(cfg: &BenchConfig) -> Result<Conn, String> {
        let authority = cfg
            .url
            .authority()
            .ok_or("url has no host:port")?
            .as_str()
            .to_string();
        let stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match cfg.protocol {
            Protocol::Http1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(Conn::H1(send))
            }
            Protocol::H2c => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(Conn::H2(send))
            }
        }
    }

    fn shared(&self) -> Option<H2Sender> {
        match self {
            Conn::H2(s) => Some(s.clone()),
            Conn::H1(_) => None,
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<u16, String> {
        let resp = match self {
            Conn::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Conn::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // Read the whole body: a response is complete only when its last byte arrived.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn request(cfg: &BenchConfig) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(cfg.method.clone())
        .uri(cfg.url.clone());
    if cfg.protocol == Protocol::Http1
        && let Some(a) = cfg.url.authority()
    {
        b = b.header(http::header::HOST, a.as_str());
    }
    for (k, v) in &cfg.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(cfg.body.clone())).unwrap_or_default()
}

/// Runs the benchmark and returns its report.
pub async fn run(cfg: BenchConfig) -> Result<Report, String> {
    if cfg.connections == 0 {
        return Err("connections must be at least 1".into());
    }
    let streams = if cfg.protocol == Protocol::H2c {
        cfg.streams_per_connection.max(1)
    } else {
        1
    };
    let workers = cfg.connections * streams;
    // Each worker sends at rate/workers, so its schedule interval is workers/rate.
    let interval = match cfg.rate {
        Some(r) if r > 0.0 => Some(Duration::from_secs_f64(workers as f64 / r)),
        Some(_) => return Err("rate must be positive".into()),
        None => None,
    };

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut connect_errors = 0u64;
    // Measured completions per 100 ms, shared by all workers (also read by the progress line).
    let timeline = Arc::new(Timeline::new(cfg.duration));
    for _ in 0..cfg.connections {
        let conn = match Conn::open(&cfg).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "connect failed");
                connect_errors += 1;
                continue;
            }
        };
        let extra: Vec<H2Sender> = (1..streams).filter_map(|_| conn.shared()).collect();
        tasks.spawn(worker(
            cfg.clone(),
            conn,
            Window {
                start,
                measure_from,
                end,
                interval,
            },
            timeline.clone(),
        ));
        for s in extra {
            tasks.spawn(worker(
                cfg.clone(),
                Conn::H2(s),
                Window {
                    start,
                    measure_from,
                    end,
                    interval,
                },
                timeline.clone(),
            ));
        }
    }
    if tasks.is_empty() {
        return Err(format!("could not open any connection to {}", cfg.url));
    }

    let mut sampler = ProcessSampler::new(&cfg.pids);
    tokio::time::sleep_until(measure_from).await;
    sampler.begin();
    let show_progress = cfg.progress && cfg.duration > Duration::from_secs(5);
    let sampling = async {
        let mut next_progress = measure_from + Duration::from_secs(1);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sampler.sample_memory();
            let now = Instant::now();
            if show_progress && now >= next_progress && now < end {
                next_progress += Duration::from_secs(1);
                eprint!(
                    "{}",
                    progress_line(now - measure_from, cfg.duration, timeline.total())
                );
            }
        }
        if show_progress {
            // Clear the progress line before the summary is printed.
            eprint!("\r{:width$}\r", "", width = PROGRESS_WIDTH);
        }
    };
    let mut results = Vec::with_capacity(workers);
    let collect = async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
    };
    tokio::join!(sampling, collect);
    let usage = sampler.finish();

    let mut latency = Latency::new();
    let mut uncorrected = Latency::new();
    let mut errors = Errors {
        connect: connect_errors,
        ..Errors::default()
    };
    let mut ok = 0;
    for r in &results {
        latency.merge(&r.latency);
        uncorrected.merge(&r.uncorrected);
        ok += r.ok;
        errors.add(&r.errors);
    }
    Ok(Report::new(
        &cfg,
        workers,
        ok,
        errors,
        &latency,
        interval.map(|_| &uncorrected),
        usage,
        timeline.counts(),
    ))
}

const PROGRESS_WIDTH: usize = 72;

/// `\r` and one progress line: elapsed of total, completions and the mean rate so far.
fn progress_line(elapsed: Duration, total: Duration, completed: u64) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    let line = format!(
        "  {:.0}s / {:.0}s  {} requests  {:.0} req/s",
        secs,
        total.as_secs_f64(),
        completed,
        rate
    );
    format!("\r{line:<width$}", width = PROGRESS_WIDTH)
}

/// When a worker runs and measures.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    interval: Option<Duration>,
}

async fn worker(
    cfg: BenchConfig,
    mut conn: Conn,
    window: Window,
    timeline: Arc<Timeline>,
) -> WorkerResult {
    let Window {
        start,
        measure_from,
        end,
        interval,
    } = window;
    let mut out = WorkerResult::default();
    // Stagger open-loop workers across one interval so they do not fire in lockstep.
    let mut open = interval.map(|i| {
        let mut rec = OpenLoopRecorder::new(i);
        let offset = i.mul_f64(fastrand_f64());
        rec.shift(offset);
        rec
    });
    tokio::time::sleep_until(start).await;
    loop {
        if let Some(rec) = &open {
            let due = start + rec.next_due();
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = tokio::time::timeout(cfg.timeout, conn.send(request(&cfg))).await;
        let done = Instant::now();
        let measured = sent >= measure_from;
        if measured {
            timeline.record(done.saturating_duration_since(measure_from));
        }
        match result {
            Ok(Ok(status)) => {
                if measured {
                    if status >= 400 {
                        out.errors.record_status(status);
                    } else {
                        out.ok += 1;
                    }
                }
            }
            Ok(Err(e)) => {
                if measured {
                    out.errors.other += 1;
                    tracing::debug!(error = %e, "request failed");
                }
                match Conn::open(&cfg).await {
                    Ok(c) => conn = c,
                    Err(_) => {
                        out.errors.connect += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            Err(_) => {
                if measured {
                    out.errors.timeout += 1;
                }
                // The connection may still carry the late response: start a fresh one.
                if let Ok(c) = Conn::open(&cfg).await {
                    conn = c;
                }
            }
        }
        match &mut open {
            Some(rec) => {
                if measured {
                    rec.record(sent - start, done - start);
                } else {
                    rec.skip();
                }
            }
            None => {
                if measured {
                    out.latency.record(done - sent);
                }
            }
        }
    }
    if let Some(rec) = open {
        out.latency = rec.corrected;
        out.uncorrected = rec.uncorrected;
    }
    out
}

fn fastrand_f64() -> f64 {
    // Spread worker phases; quality of randomness is irrelevant here.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_starts_with_cr_and_has_a_fixed_width() {
        let l = progress_line(Duration::from_secs(2), Duration::from_secs(10), 500);
        assert!(l.starts_with('\r'));
        assert!(l.contains("2s / 10s"), "{l}");
        assert!(l.contains("250 req/s"), "{l}");
        assert_eq!(l.chars().count(), PROGRESS_WIDTH + 1);
    }
}
