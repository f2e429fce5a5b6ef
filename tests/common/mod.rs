//! Harness shared by the end-to-end tests: the real `otlp-mesh` binary as a child process,
//! in-process upstream servers (hyper 1, HTTP/1.1 + h2c), HTTP clients and small helpers.
//!
//! Everything binds 127.0.0.1 on ports picked by the kernel, and every wait is bounded.
#![allow(dead_code)] // each test file uses a different part of the harness
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of every request and response the harness builds.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, Body>;

/// Upper bound for any single wait (readiness, one request, a process exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_otlp-mesh");

// ---------------------------------------------------------------------------------------------
// Ports, waits
// ---------------------------------------------------------------------------------------------

/// A free port on 127.0.0.1 for the binary to bind (see [`free_port_on`]).
pub fn free_addr() -> SocketAddr {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// An address on `ip` whose port was free a moment ago (bound, then released for the binary),
/// from outside the kernel's ephemeral range (see `otlp_mesh_ports`).
pub fn free_port_on(ip: IpAddr) -> SocketAddr {
    otlp_mesh_ports::free_listen_addr(ip).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when a TCP connection to `addr` is refused (or otherwise fails) within a second.
pub async fn connection_refused(addr: SocketAddr) -> bool {
    !matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process whose stdout and stderr are collected by background threads.
/// Dropping it kills the process.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn drain_into(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    })
}

impl Proc {
    /// Spawns `otlp-mesh ARGS...`.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            drain_into(child.stdout.take().unwrap(), stdout.clone()),
            drain_into(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    /// Runs `otlp-mesh ARGS...` to completion (at most [`WAIT`]).
    pub fn run(args: &[&str]) -> Proc {
        let mut p = Proc::spawn(args);
        p.wait_exit_blocking(WAIT);
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
            if self.status.is_some() {
                // The pipes are closed now: let the readers take the last bytes.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
            }
        }
        self.status
    }

    /// The exit code, once the process has exited (`None` while running or when killed by a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.try_exit().and_then(|s| s.code())
    }

    /// True once the process has exited with status 0.
    pub fn status_success(&mut self) -> bool {
        self.try_exit().is_some_and(|s| s.success())
    }

    /// Waits for the exit without a runtime (for CLI tests); panics with stderr after `within`.
    pub fn wait_exit_blocking(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "otlp-mesh did not exit within {within:?}; stderr:\n{}",
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit; panics with stderr after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "otlp-mesh did not exit within {within:?}; stderr:\n{}",
                    tail(&self.stderr())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Peak resident set size of the process (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/PID/status");
        let kib: u64 = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- otlp-mesh (pid {}) stderr -----\n{}\n----- end -----",
                self.child.id(),
                tail(&self.stderr())
            );
        }
    }
}

/// The last 16 KiB of `s` (logs can be long).
pub fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(16 << 10);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A tempdir holding a config file.
pub struct ConfigFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    /// An address the test wrote and the one it was moved to (see [`Mesh::start_with_args`]),
    /// applied to every later [`ConfigFile::replace`].
    moved: Option<(String, String)>,
}

impl ConfigFile {
    pub fn new(yaml: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        ConfigFile {
            dir,
            path,
            moved: None,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Replaces the file atomically: write a sibling, then rename it over the original.
    pub fn replace(&self, yaml: &str) {
        match &self.moved {
            Some((from, to)) => replace_atomically(&self.path, &yaml.replace(from, to)),
            None => replace_atomically(&self.path, yaml),
        }
    }
}

pub fn replace_atomically(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `admin` and `runtime` sections for tests: fast reload polling, short drain.
pub fn prelude(admin: SocketAddr) -> String {
    format!("admin:\n  bind: {admin}\nruntime:\n  drain_timeout: 5s\n  reload_interval: 200ms\n")
}

/// A running `otlp-mesh run` with its config file and admin address.
pub struct Mesh {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub config: ConfigFile,
}

impl Mesh {
    /// Writes `yaml`, starts `otlp-mesh run --config FILE` and waits until `/ready` is 200.
    pub async fn start(admin: SocketAddr, yaml: &str) -> Mesh {
        Mesh::start_with_args(admin, yaml, &[]).await
    }

    /// Like [`Mesh::start`], with extra command-line arguments.
    ///
    /// A port from [`free_port_on`] is free when checked and released for the binary, so
    /// something else can take it in between. When the admin port is what the binary could not
    /// bind, the config is rewritten to a fresh admin port (see [`Mesh::admin`]) and started
    /// again, at most three times; any other failure to get ready panics with stderr.
    pub async fn start_with_args(admin: SocketAddr, yaml: &str, extra: &[&str]) -> Mesh {
        let (first, mut admin, mut yaml) = (admin, admin, yaml.to_string());
        let mut moves = 0;
        loop {
            let mut config = ConfigFile::new(&yaml);
            if admin != first {
                config.moved = Some((first.to_string(), admin.to_string()));
            }
            let mut args = vec!["run", "--config", config.path_str()];
            args.extend_from_slice(extra);
            let proc = Proc::spawn(&args);
            let mut mesh = Mesh {
                proc,
                admin,
                config,
            };
            match mesh.try_wait_ready().await {
                Ok(()) => return mesh,
                Err(why)
                    if moves < 3
                        && why.contains(&format!("cannot bind the admin server to {admin}")) =>
                {
                    moves += 1;
                    let fresh = free_port_on(admin.ip());
                    eprintln!("admin port {admin} was taken; starting again on {fresh}");
                    yaml = yaml.replace(&admin.to_string(), &fresh.to_string());
                    admin = fresh;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Polls `GET /ready` until 200 (at most [`WAIT`]); panics with stderr when the process
    /// exits or never gets ready.
    pub async fn wait_ready(&mut self) {
        if let Err(why) = self.try_wait_ready().await {
            panic!("{why}");
        }
    }

    /// Polls `GET /ready` until 200 (at most [`WAIT`]); the error, with stderr, when the
    /// process exits or never gets ready.
    pub async fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        let client = h1_client();
        loop {
            if let Some(status) = self.proc.try_exit() {
                return Err(format!(
                    "otlp-mesh exited with {status} before becoming ready; stderr:\n{}",
                    tail(&self.proc.stderr())
                ));
            }
            let url = format!("http://{}/ready", self.admin);
            if let Ok(r) = try_send_within(&client, get_req(&url), Duration::from_secs(1)).await
                && r.status == StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "otlp-mesh not ready within {WAIT:?}; stderr:\n{}",
                    tail(&self.proc.stderr())
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `GET http://ADMIN{path}`, panicking on transport errors.
    pub async fn admin_get(&self, path: &str) -> Resp {
        send(
            &h1_client(),
            get_req(&format!("http://{}{path}", self.admin)),
        )
        .await
    }

    /// `GET http://ADMIN{path}`, or the transport error.
    pub async fn try_admin_get(&self, path: &str) -> Result<Resp, String> {
        try_send_within(
            &h1_client(),
            get_req(&format!("http://{}{path}", self.admin)),
            Duration::from_secs(2),
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "/metrics: {}", r.text());
        r.text()
    }

    /// The `hash` field of `GET /config`.
    pub async fn config_hash(&self) -> String {
        let r = self.admin_get("/config").await;
        assert_eq!(r.status, StatusCode::OK, "/config: {}", r.text());
        r.json()["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("/config has no string `hash`: {}", r.text()))
            .to_string()
    }

    /// Replaces the config file atomically and waits (at most [`WAIT`]) until `/config` shows a
    /// new hash. Returns the new hash.
    pub async fn reload(&self, yaml: &str) -> String {
        let old = self.config_hash().await;
        self.config.replace(yaml);
        let deadline = Instant::now() + WAIT;
        loop {
            let new = self.config_hash().await;
            if new != old {
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "config hash still {old} {WAIT:?} after the file changed; stderr:\n{}",
                tail(&self.proc.stderr())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of one Prometheus sample, `series` being the name with its labels exactly as rendered.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A received response with its body read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// A header's value (the first one), as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts the response is a proxy-generated error: `status`, `x-mesh-error: reason`,
    /// a short text/plain body (the reason in words).
    pub fn assert_mesh_error(&self, status: u16, reason: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {reason}, got {self:?}"
        );
        assert_eq!(
            self.header("x-mesh-error"),
            Some(reason),
            "x-mesh-error of {self:?}"
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/plain"),
            "content-type `{ct}` of {self:?}"
        );
        let text = self.text();
        assert!(
            !text.trim().is_empty() && text.len() < 1024,
            "body must be a short reason: {self:?}"
        );
    }
}

/// HTTP/1.1 client (keep-alive pool).
pub fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// h2c client (HTTP/2 with prior knowledge).
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn get_req(url: &str) -> Request<Body> {
    Request::get(url).body(empty()).unwrap()
}

/// Sends `req` and reads the whole response (at most [`WAIT`]); panics on any error.
pub async fn send(client: &HttpClient, req: Request<Body>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    try_send_within(client, req, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn get(client: &HttpClient, url: &str) -> Resp {
    send(client, get_req(url)).await
}

/// Sends `req` and reads the whole response, or says what went wrong.
pub async fn try_send_within(
    client: &HttpClient,
    req: Request<Body>,
    within: Duration,
) -> Result<Resp, String> {
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("response body failed: {e:?}"))?;
        let trailers = collected.trailers().cloned();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    };
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no complete response within {within:?}")))
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A body fed frame by frame through the returned sender (length unknown: chunked on HTTP/1.1).
pub fn channel_body() -> (FrameSender, Body) {
    let (tx, rx) = mpsc::channel(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    (tx, body)
}

/// `total` bytes of a repeating pattern, produced on the fly in `chunk`-sized frames.
/// With `exact_len` the size is announced (content-length), otherwise it is unknown (chunked).
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
    exact_len: bool,
}

impl PatternBody {
    pub fn new(total: u64, chunk: usize, exact_len: bool) -> Self {
        let pattern: Vec<u8> = (0..chunk).map(|i| b'a' + (i % 26) as u8).collect();
        PatternBody {
            remaining: total,
            chunk: Bytes::from(pattern),
            exact_len,
        }
    }

    pub fn boxed(self) -> Body {
        BodyExt::boxed_unsync(self)
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_len {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a body to its end counting data bytes; the error if it fails midway.
pub async fn count_body<B>(mut body: B) -> Result<u64, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("after {n} bytes: {e:?}"))?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------------------

/// An in-process HTTP/1.1 + h2c server on an ephemeral loopback port. Dropping it stops the
/// server and closes its connections.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = hits.clone();
        let conn_counter = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open_counter = open.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        conn_counter.fetch_add(1, Ordering::SeqCst);
                        open_counter.fetch_add(1, Ordering::SeqCst);
                        let still_open = open_counter.clone();
                        let _ = stream.set_nodelay(true);
                        let handler = handler.clone();
                        let counter = counter.clone();
                        let svc = hyper::service::service_fn(move |req| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let fut = handler(req);
                            async move { Ok::<_, std::convert::Infallible>(fut.await) }
                        });
                        conns.spawn(async move {
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                            still_open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            open,
            task,
        }
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The JSON echo server named `name` (see [`echo_response`]).
    pub async fn echo(name: &str) -> Upstream {
        let name: Arc<str> = name.into();
        Upstream::start(move |req| echo_response(name.clone(), req)).await
    }

    /// Reads the request body counting bytes and answers the count as text.
    pub async fn counter() -> Upstream {
        Upstream::start(|req: Request<Incoming>| async move {
            match count_body(req.into_body()).await {
                Ok(n) => Response::new(full(n.to_string())),
                Err(e) => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(full(format!("request body failed: {e}")))
                    .unwrap(),
            }
        })
        .await
    }

    /// Answers every request with `total` bytes, streamed in 64 KiB frames (content-length set).
    pub async fn huge(total: u64) -> Upstream {
        Upstream::start(move |_req| async move {
            Response::new(PatternBody::new(total, 64 << 10, true).boxed())
        })
        .await
    }

    /// Requests received so far (counted when the request head arrives).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The echo handler. It reads the whole body and answers 200 with JSON
/// `{server, method, path, query, version, authority, headers: {name: [values]}, body_len}`
/// and response headers `x-upstream: <name>`, `server: upstream-<name>`, `x-internal: secret`
/// and two `set-cookie` lines.
/// Request headers steer it: `x-echo-delay-ms: N` waits N ms before answering,
/// `x-echo-status: N` answers with status N.
pub async fn echo_response(name: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let delay = parts
        .headers
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let status = parts
        .headers
        .get("x-echo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let body_len = match count_body(body).await {
        Ok(n) => serde_json::json!(n),
        Err(e) => serde_json::json!(format!("error: {e}")),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_string(), values.into());
    }
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get("host")
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    let json = serde_json::json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "authority": authority,
        "headers": headers,
        "body_len": body_len,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", &*name)
        .header("server", format!("upstream-{name}"))
        .header("x-internal", "secret")
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
        .body(full(json.to_string()))
        .unwrap()
}

/// Values the echo server saw for request header `name` (empty when absent).
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|vs| vs.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// All values the echo server saw for request header `name`, joined with ", " (None when absent).
pub fn echoed_joined(echo: &serde_json::Value, name: &str) -> Option<String> {
    let values = echoed_header(echo, name);
    if values.is_empty() {
        None
    } else {
        Some(values.join(", "))
    }
}

/// Runs `tests/otlp/send.py` (the OpenTelemetry Python SDK) against an OTLP endpoint; returns
/// what it says it sent.
pub fn python_send(protocol: &str, endpoint: &str, service: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp/send.py");
    let out = Command::new("python3")
        .args([script, protocol, endpoint, service])
        .output()
        .expect("python3 must be installed (.ci/run installs the OpenTelemetry SDK)");
    assert!(
        out.status.success(),
        "send.py {protocol} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Configs with one route, raw upstreams and raw HTTP/1.1 reads
// ---------------------------------------------------------------------------------------------

/// A config with listener `edge` at `edge` sending everything to cluster `up`.
pub fn one_route(
    admin: SocketAddr,
    edge: SocketAddr,
    listener_extra: &str,
    route_extra: &str,
    clusters: &str,
) -> String {
    format!(
        "{}listeners:
  - name: edge
    bind: {edge}
{listener_extra}    routes:
      - cluster: up
{route_extra}clusters:
{clusters}",
        prelude(admin)
    )
}

/// A cluster `name` with static endpoints (YAML under `clusters:`).
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "  - name: {name}\n    discovery:\n      static: [{}]\n",
        eps.join(", ")
    )
}

/// A raw TCP "upstream" running `f` on every accepted connection; stops when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start<F, Fut>(f: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(f(stream));
            }
        });
        RawUpstream { addr, task }
    }
}

/// Reads until the end of a request head (or EOF / 64 KiB).
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Reads one whole response with a `content-length` body (empty when the peer closes first).
pub async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return String::new(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads whatever arrives until the peer closes; `closed` is false when it did not close
/// within `within`.
pub async fn read_until_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}
