//! The load generator: one task per connection (per stream for h2c and gRPC), HTTP/1.1, h2c or
//! unary gRPC over h2c, closed or open loop.

use crate::h1::{EncodedRequest, H1Conn};
use crate::histogram::{Latency, OpenLoopRecorder};
use crate::pace::Pacer;
use crate::report::{Errors, Report};
use crate::resources::ProcessSampler;
use crate::timeline::Timeline;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
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
    /// Unary gRPC over h2c: the URL's path is the method, the body the raw message.
    Grpc,
}

impl Protocol {
    /// True for the protocols spoken over HTTP/2 (several streams per connection).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::Grpc)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Grpc => "grpc",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http1" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err(format!("unknown protocol `{s}` (http1, h2c or grpc)")),
        }
    }
}

/// The method of the built-in echo service of `otlp-mesh bench-upstream`.
pub const GRPC_ECHO_METHOD: &str = "/otlpmesh.bench.Echo/Echo";

/// Checks a gRPC method path: `/package.Service/Method` (one `/` before the service and one
/// before the method, both non-empty, usable as a URL path).
pub fn check_grpc_method(path: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "gRPC method `{path}` {why}: expected `/package.Service/Method`"
        ))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return bad("does not start with `/`");
    };
    let Some((service, method)) = rest.split_once('/') else {
        return bad("has no `/` between service and method");
    };
    if service.is_empty() || method.is_empty() {
        return bad("has an empty service or method name");
    }
    if method.contains('/') {
        return bad("has more than two `/`");
    }
    if path.contains(['?', '#']) || http::uri::PathAndQuery::try_from(path).is_err() {
        return bad("is not a valid URL path");
    }
    Ok(())
}

/// A gRPC length-prefixed message: flag 0 (uncompressed), big-endian u32 length, the message.
pub fn grpc_frame(message: &[u8]) -> Result<Bytes, String> {
    let len = u32::try_from(message.len())
        .map_err(|_| format!("gRPC message of {} bytes is too large", message.len()))?;
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(Bytes::from(out))
}

/// How a gRPC response ended: `Ok(())` for HTTP 200 with `grpc-status: 0` in the trailers (or,
/// for a trailers-only response, in the headers); otherwise the failure kind.
pub(crate) fn grpc_outcome(
    status: u16,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
) -> Result<(), Failure> {
    if status != 200 {
        return Err(Failure::Http(status));
    }
    // Trailers win; a trailers-only response carries grpc-status in its headers.
    let code = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"));
    match code.map(parse_grpc_status) {
        Some(Some(0)) => Ok(()),
        Some(Some(c)) => Err(Failure::Grpc(Some(c))),
        Some(None) | None => Err(Failure::Grpc(None)),
    }
}

fn parse_grpc_status(v: &HeaderValue) -> Option<u32> {
    std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()
}

/// Why a completed response does not count as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// An HTTP status: ≥ 400 for HTTP, anything but 200 for gRPC.
    Http(u16),
    /// gRPC `grpc-status` other than 0, or missing / unreadable (`None`).
    Grpc(Option<u32>),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub url: Uri,
    pub protocol: Protocol,
    /// HTTP method (gRPC always sends POST).
    pub method: Method,
    /// Request body; for gRPC the raw message, framed by the generator.
    pub body: Bytes,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// TCP connections.
    pub connections: usize,
    /// Requests in flight per connection (h2c and gRPC; HTTP/1.1 is always 1).
    pub streams_per_connection: usize,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Excluded from results.
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None` = closed loop.
    pub rate: Option<f64>,
    /// Open loop: due times are rounded up to a multiple of this (zero: each at its own time);
    /// requests due within one step go out together, and latency runs from the step's end.
    pub pace: Duration,
    /// Per-request timeout (counted as an error).
    pub timeout: Duration,
    /// Processes whose CPU time and memory are sampled.
    pub pids: Vec<u32>,
    /// Print a progress line on stderr about once a second (runs longer than 5 s only).
    pub progress: bool,
}

/// The open-loop schedule's default step (see [`BenchConfig::pace`]).
pub const DEFAULT_PACE: Duration = Duration::from_micros(250);

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
            pace: DEFAULT_PACE,
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

/// HTTP/2 straight on the `h2` crate: hyper's client would add a dispatch channel between the
/// request and the connection task, and a spawned task per request body (every gRPC call).
type H2Sender = h2::client::SendRequest<Bytes>;

enum Conn {
    H1(H1Conn),
    H2(H2Sender),
}

/// A TCP connection to the benchmark's target, Nagle off.
async fn connect(cfg: &BenchConfig) -> Result<TcpStream, String> {
    let authority = cfg.url.authority().ok_or("url has no host:port")?.as_str();
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Conn {
    async fn open(cfg: &BenchConfig) -> Result<Conn, String> {
        let stream = connect(cfg).await?;
        match cfg.protocol {
            Protocol::Http1 => Ok(Conn::H1(H1Conn::new(stream))),
            Protocol::H2c | Protocol::Grpc => {
                let (send, conn) = h2::client::handshake(stream)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "HTTP/2 connection ended");
                    }
                });
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

    /// Sends the benchmark's request and reads the response to its end: `Ok(Err(_))` is a
    /// completed response that counts as a failure, `Err` a transport error.
    async fn send(
        &mut self,
        cfg: &BenchConfig,
        h1: &EncodedRequest,
    ) -> Result<Result<(), Failure>, String> {
        let protocol = cfg.protocol;
        let resp = match self {
            Conn::H1(c) => {
                // The server closed after its last response: not a failure of this request.
                if !c.reusable() {
                    *c = H1Conn::new(connect(cfg).await?);
                }
                let status = c.send(h1).await?;
                return Ok(if status >= 400 {
                    Err(Failure::Http(status))
                } else {
                    Ok(())
                });
            }
            Conn::H2(s) => {
                std::future::poll_fn(|cx| s.poll_ready(cx))
                    .await
                    .map_err(|e| e.to_string())?;
                let end = cfg.body.is_empty();
                let (resp, mut send) = s
                    .send_request(request(cfg), end)
                    .map_err(|e| e.to_string())?;
                if !end {
                    send.send_data(cfg.body.clone(), true)
                        .map_err(|e| e.to_string())?;
                }
                resp.await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        // Read the whole body: a response is complete only when its last byte arrived. Data is
        // dropped as it comes (no buffering) and its window given back; the trailers are kept
        // for gRPC.
        while let Some(data) = body.data().await {
            let data = data.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(data.len());
        }
        let trailers = body.trailers().await.map_err(|e| e.to_string())?;
        Ok(match protocol {
            Protocol::Grpc => grpc_outcome(status, &parts.headers, trailers.as_ref()),
            Protocol::Http1 | Protocol::H2c if status >= 400 => Err(Failure::Http(status)),
            Protocol::Http1 | Protocol::H2c => Ok(()),
        })
    }
}

/// An HTTP/2 request head; the body is sent apart (HTTP/1.1 requests are encoded once,
/// [`EncodedRequest`]).
fn request(cfg: &BenchConfig) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = cfg.method.clone();
    *req.uri_mut() = cfg.url.clone();
    let headers = req.headers_mut();
    for (k, v) in &cfg.headers {
        headers.append(k.clone(), v.clone());
    }
    req
}

/// For gRPC: checks the method, frames the message, sets POST and the gRPC headers (unless given).
fn prepare(mut cfg: BenchConfig) -> Result<BenchConfig, String> {
    if cfg.protocol != Protocol::Grpc {
        return Ok(cfg);
    }
    check_grpc_method(cfg.url.path())?;
    cfg.method = Method::POST;
    cfg.body = grpc_frame(&cfg.body)?;
    let mut grpc_headers = vec![
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ),
        (http::header::TE, HeaderValue::from_static("trailers")),
    ];
    grpc_headers.retain(|(k, _)| !cfg.headers.iter().any(|(n, _)| n == k));
    grpc_headers.append(&mut cfg.headers);
    cfg.headers = grpc_headers;
    Ok(cfg)
}

/// Runs the benchmark and returns its report.
pub async fn run(cfg: BenchConfig) -> Result<Report, String> {
    if cfg.connections == 0 {
        return Err("connections must be at least 1".into());
    }
    let cfg = prepare(cfg)?;
    let streams = if cfg.protocol.is_h2() {
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

    let h1 = EncodedRequest::new(&cfg.method, &cfg.url, &cfg.headers, &cfg.body)?;
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
            h1.clone(),
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
                h1.clone(),
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
    h1: EncodedRequest,
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
    // Open loop: the schedule, and what waits for it. Workers are staggered across one
    // interval so they do not fire in lockstep.
    let mut open = interval.map(|i| {
        let mut rec = OpenLoopRecorder::new(i).with_step(cfg.pace);
        let offset = i.mul_f64(fastrand_f64());
        rec.shift(offset);
        (rec, Pacer::new())
    });
    tokio::time::sleep_until(start).await;
    loop {
        if let Some((rec, pacer)) = &mut open {
            let due = start + rec.next_due();
            if due >= end {
                break;
            }
            pacer.sleep_until(due).await;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = tokio::time::timeout(cfg.timeout, conn.send(&cfg, &h1)).await;
        let done = Instant::now();
        let measured = sent >= measure_from;
        if measured {
            timeline.record(done.saturating_duration_since(measure_from));
        }
        match result {
            Ok(Ok(outcome)) => {
                if measured {
                    match outcome {
                        Ok(()) => out.ok += 1,
                        Err(Failure::Http(status)) if status >= 400 => {
                            out.errors.record_status(status)
                        }
                        Err(Failure::Http(status)) => {
                            out.errors.other += 1;
                            tracing::debug!(status, "gRPC response with HTTP status not 200");
                        }
                        Err(Failure::Grpc(code)) => {
                            out.errors.grpc_status += 1;
                            tracing::debug!(?code, "gRPC status not OK");
                        }
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
            Some((rec, _)) => {
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
    if let Some((rec, _)) = open {
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
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_frame_is_flag_length_message() {
        assert_eq!(&grpc_frame(b"").unwrap()[..], &[0, 0, 0, 0, 0]);
        let f = grpc_frame(b"\x0a\x03abc").unwrap();
        assert_eq!(&f[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(&f[5..], b"\x0a\x03abc");
        let big = vec![7u8; 70_000];
        let f = grpc_frame(&big).unwrap();
        assert_eq!(&f[..5], &[0, 0, 1, 0x11, 0x70]);
        assert_eq!(f.len(), 70_005);
    }

    #[test]
    fn grpc_status_comes_from_trailers_or_a_trailers_only_response() {
        let ct = headers(&[("content-type", "application/grpc")]);
        let ok = headers(&[("grpc-status", "0")]);
        assert_eq!(grpc_outcome(200, &ct, Some(&ok)), Ok(()));
        // Trailers-only: the status is in the headers and there are no trailers.
        let only = headers(&[("content-type", "application/grpc"), ("grpc-status", "0")]);
        assert_eq!(grpc_outcome(200, &only, None), Ok(()));
        let unimplemented = headers(&[("grpc-status", "12"), ("grpc-message", "nope")]);
        assert_eq!(
            grpc_outcome(200, &ct, Some(&unimplemented)),
            Err(Failure::Grpc(Some(12)))
        );
        assert_eq!(
            grpc_outcome(200, &unimplemented, None),
            Err(Failure::Grpc(Some(12)))
        );
        // The trailers' status wins over one in the headers.
        assert_eq!(
            grpc_outcome(200, &only, Some(&unimplemented)),
            Err(Failure::Grpc(Some(12)))
        );
        // Missing or unreadable status is a failure.
        assert_eq!(grpc_outcome(200, &ct, None), Err(Failure::Grpc(None)));
        let junk = headers(&[("grpc-status", "zero")]);
        assert_eq!(
            grpc_outcome(200, &ct, Some(&junk)),
            Err(Failure::Grpc(None))
        );
        // An HTTP status other than 200 is an HTTP failure whatever the trailers say.
        assert_eq!(grpc_outcome(503, &ct, Some(&ok)), Err(Failure::Http(503)));
        assert_eq!(grpc_outcome(204, &ok, None), Err(Failure::Http(204)));
    }

    #[test]
    fn grpc_method_paths_are_checked() {
        for good in [GRPC_ECHO_METHOD, "/a/b", "/grpc.health.v1.Health/Check"] {
            assert_eq!(check_grpc_method(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("pkg.Svc/M", "does not start with `/`"),
            ("/pkg.Svc", "no `/` between"),
            ("//M", "empty service"),
            ("/pkg.Svc/", "empty service or method"),
            ("/a/b/c", "more than two"),
            ("/a/b?x=1", "not a valid URL path"),
            ("/a/b c", "not a valid URL path"),
        ] {
            let e = check_grpc_method(bad).unwrap_err();
            assert!(
                e.contains(why) && e.contains("/package.Service/Method"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn grpc_requests_are_posts_with_framed_body_and_grpc_headers() {
        let cfg = prepare(BenchConfig {
            url: Uri::from_static("http://127.0.0.1:1/otlpmesh.bench.Echo/Echo"),
            protocol: Protocol::Grpc,
            body: Bytes::from_static(b"hi"),
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc+proto"),
            )],
            ..BenchConfig::default()
        })
        .unwrap();
        let req = request(&cfg);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), GRPC_ECHO_METHOD);
        assert_eq!(req.headers()["te"], "trailers");
        // A content type given by the user is kept (and not doubled).
        let ct: Vec<_> = req.headers().get_all("content-type").iter().collect();
        assert_eq!(ct, ["application/grpc+proto"]);
        assert_eq!(cfg.body.len(), 7, "5-byte prefix + message");
        let bad = prepare(BenchConfig {
            url: Uri::from_static("http://127.0.0.1:1/"),
            protocol: Protocol::Grpc,
            ..BenchConfig::default()
        });
        assert!(bad.unwrap_err().contains("no `/` between"));
    }

    /// An h2c server answering by path: `/ok.S/M` with a message and `grpc-status: 0` in the
    /// trailers, `/only.S/M` trailers-only with `grpc-status: 0`, anything else trailers-only
    /// with `grpc-status: 12` (UNIMPLEMENTED). Each request's body is checked to be one framed
    /// message.
    async fn grpc_server() -> std::net::SocketAddr {
        use std::future::ready;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.method(), Method::POST);
                        assert_eq!(req.headers()["content-type"], "application/grpc");
                        assert_eq!(req.headers()["te"], "trailers");
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        assert_eq!(&body[..], &grpc_frame(b"ping").unwrap()[..]);
                        let status = |code: &'static str| {
                            let mut h = HeaderMap::new();
                            h.insert("grpc-status", HeaderValue::from_static(code));
                            h
                        };
                        let mut resp =
                            http::Response::builder().header("content-type", "application/grpc");
                        let (data, trailers) = match path.as_str() {
                            "/ok.S/M" => (body, Some(status("0"))),
                            "/only.S/M" => {
                                resp = resp.header("grpc-status", "0");
                                (Bytes::new(), None)
                            }
                            _ => {
                                resp = resp.header("grpc-status", "12");
                                (Bytes::new(), None)
                            }
                        };
                        let body = Full::new(data).with_trailers(ready(trailers.map(Ok)));
                        Ok::<_, hyper::Error>(resp.body(body).unwrap())
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    async fn grpc_run(addr: std::net::SocketAddr, path: &str) -> Report {
        run(BenchConfig {
            url: format!("http://{addr}{path}").parse().unwrap(),
            protocol: Protocol::Grpc,
            body: Bytes::from_static(b"ping"),
            connections: 2,
            streams_per_connection: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            ..BenchConfig::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn grpc_load_counts_ok_and_grpc_status_failures() {
        let addr = grpc_server().await;
        for path in ["/ok.S/M", "/only.S/M"] {
            let r = grpc_run(addr, path).await;
            assert_eq!(r.protocol, Protocol::Grpc);
            assert_eq!(r.workers, 4);
            assert!(r.ok > 10, "{path}: {r:?}");
            assert_eq!(r.errors, Errors::default(), "{path}");
        }
        let r = grpc_run(addr, "/missing.S/M").await;
        assert_eq!(r.ok, 0);
        assert!(r.errors.grpc_status > 10, "{:?}", r.errors);
        assert_eq!(r.errors.total(), r.errors.grpc_status);
        assert_eq!(r.requests, r.errors.grpc_status);
    }

    /// A hyper HTTP/1.1 server: `/close` answers with `Connection: close`, `/fail` with 500,
    /// anything else 200 with a chunked or sized body. Counts the connections it accepted.
    async fn h1_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().to_string(), req.uri().path(), "origin-form");
                        let resp = http::Response::builder();
                        let resp = match req.uri().path() {
                            "/close" => resp.header("connection", "close"),
                            "/fail" => resp.status(500),
                            _ => resp,
                        };
                        let body = Full::new(Bytes::from_static(b"0123456789"));
                        Ok::<_, hyper::Error>(resp.body(body).unwrap())
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn http1_load_keeps_connections_reconnects_after_close_and_counts_statuses() {
        use std::sync::atomic::Ordering;
        let h1 = |addr: std::net::SocketAddr, path: &str| BenchConfig {
            url: format!("http://{addr}{path}").parse().unwrap(),
            connections: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            ..BenchConfig::default()
        };
        let (addr, accepted) = h1_server().await;
        let r = run(h1(addr, "/ok")).await.unwrap();
        assert!(r.ok > 10, "{r:?}");
        assert_eq!(r.errors, Errors::default());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "keep-alive: one per worker"
        );

        let (addr, accepted) = h1_server().await;
        let r = run(h1(addr, "/close")).await.unwrap();
        assert!(r.ok > 10, "{r:?}");
        assert_eq!(r.errors, Errors::default(), "a close is not a failure");
        assert!(
            accepted.load(Ordering::SeqCst) as u64 >= r.ok,
            "a connection per request"
        );

        let (addr, _) = h1_server().await;
        let r = run(h1(addr, "/fail")).await.unwrap();
        assert_eq!(r.ok, 0);
        assert!(r.errors.status_5xx > 10, "{:?}", r.errors);
        assert_eq!(r.requests, r.errors.total());
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [Protocol::Http1, Protocol::H2c, Protocol::Grpc] {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!(
            "h3".parse::<Protocol>()
                .unwrap_err()
                .contains("http1, h2c or grpc")
        );
    }

    #[test]
    fn progress_line_starts_with_cr_and_has_a_fixed_width() {
        let l = progress_line(Duration::from_secs(2), Duration::from_secs(10), 500);
        assert!(l.starts_with('\r'));
        assert!(l.contains("2s / 10s"), "{l}");
        assert!(l.contains("250 req/s"), "{l}");
        assert_eq!(l.chars().count(), PROGRESS_WIDTH + 1);
    }
}
