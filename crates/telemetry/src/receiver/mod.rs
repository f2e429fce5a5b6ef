//! The OTLP receiver: OTLP/gRPC and OTLP/HTTP (protobuf and JSON, gzip and zstd) into the pipeline.
//!
//! Both ports speak both transports (HTTP/1.1 and h2c are auto-detected; a request whose
//! content-type is `application/grpc*` is gRPC), so a client pointed at either works.
//! Admission is decided before the body is read: when the memory limit is reached the sender
//! gets a retryable status (gRPC `UNAVAILABLE` with `RetryInfo`, HTTP 503 with `Retry-After`).
//! Bodies are then read only while the [receive budget](Budget) has room for them.

mod budget;

pub use budget::{Budget, Reservation};

use crate::limiter::Priority;
use crate::otlp::Signal;
use crate::otlp::decode::{self, DecodeError, Encoding, Format};
use crate::otlp::status::{RpcStatus, status_details_with_retry_info};
use crate::pipeline::{PACE_MAX_WAIT, Pipeline, RETRY_AFTER};
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use otlp_mesh_resilience::GrpcCode as Code;
use prost::Message;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Receiver limits.
#[derive(Clone, Copy, Debug)]
pub struct ReceiverLimits {
    /// Largest body as sent.
    pub max_message_size: usize,
    /// Largest body after decompression.
    pub max_decompressed_size: usize,
}

/// Request outcomes by transport and signal.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    // [transport][signal][outcome]: transport 0 grpc 1 http; outcome see OUTCOMES.
    counts: [[[AtomicU64; 5]; 3]; 2],
}

const OUTCOMES: [&str; 5] = ["accepted", "partial", "invalid", "too_large", "refused"];

#[derive(Clone, Copy)]
enum Outcome {
    Accepted = 0,
    Partial = 1,
    Invalid = 2,
    TooLarge = 3,
    Refused = 4,
}

impl ReceiverStats {
    fn count(&self, grpc: bool, signal: Signal, outcome: Outcome) {
        self.counts[usize::from(!grpc)][signal.index()][outcome as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Appends `otlp_mesh_receiver_requests_total` to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        let name = "otlp_mesh_receiver_requests_total";
        crate::write_family(
            out,
            name,
            "counter",
            "OTLP export requests received, by transport, signal and outcome.",
        );
        for (t, transport) in ["grpc", "http"].iter().enumerate() {
            for s in Signal::ALL {
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    let v = self.counts[t][s.index()][o].load(Ordering::Relaxed);
                    if v > 0 {
                        crate::write_sample(
                            out,
                            name,
                            &[
                                ("transport", transport),
                                ("signal", s.as_str()),
                                ("outcome", outcome),
                            ],
                            v,
                        );
                    }
                }
            }
        }
    }
}

struct Shared {
    pipeline: Arc<Pipeline>,
    limits: ReceiverLimits,
    stats: Arc<ReceiverStats>,
    budget: Budget,
}

/// Streams a client may have open on one HTTP/2 connection.
const MAX_STREAMS: u32 = 100;
/// Each stream's HTTP/2 receive window (the protocol's default).
const STREAM_WINDOW: u32 = 64 * 1024;
/// The connection's receive window: room for every stream's window and one more. Streams that
/// wait for the receive budget keep up to [`STREAM_WINDOW`] unread each; the connection window
/// must still leave room for the streams being read, or they would wait for each other forever.
const CONNECTION_WINDOW: u32 = (MAX_STREAMS + 1) * STREAM_WINDOW;

/// A running receiver endpoint.
#[derive(Debug)]
pub struct ReceiverHandle {
    /// The bound address.
    pub addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl ReceiverHandle {
    /// Stops accepting and waits up to `drain` for requests in flight.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves OTLP into `pipeline`, reading bodies within `budget`.
pub async fn start(
    addr: SocketAddr,
    pipeline: Arc<Pipeline>,
    limits: ReceiverLimits,
    stats: Arc<ReceiverStats>,
    budget: Budget,
) -> std::io::Result<ReceiverHandle> {
    let socket = TcpListener::bind(addr).await?;
    let addr = socket.local_addr()?;
    let (stop, stop_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        pipeline,
        limits,
        stats,
        budget,
    });
    let task = tokio::spawn(accept_loop(socket, shared, stop_rx));
    Ok(ReceiverHandle { addr, stop, task })
}

async fn accept_loop(
    socket: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let graceful = GracefulShutdown::new();
    let drain = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(MAX_STREAMS)
                        .initial_stream_window_size(STREAM_WINDOW)
                        .initial_connection_window_size(CONNECTION_WINDOW);
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "OTLP connection ended with error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "OTLP receiver accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };
    drop(socket);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        grpc(shared, req).await
    } else {
        http(shared, req).await
    }
}

// ---------------------------------------------------------------- OTLP/HTTP

async fn http(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    let Some(signal) = Signal::from_http_path(req.uri().path()) else {
        return http_error(
            StatusCode::NOT_FOUND,
            Format::Protobuf,
            "unknown path; OTLP/HTTP serves POST /v1/traces, /v1/metrics and /v1/logs",
        );
    };
    if req.method() != Method::POST {
        let mut r = http_error(
            StatusCode::METHOD_NOT_ALLOWED,
            Format::Protobuf,
            "OTLP/HTTP accepts POST only",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = match content_type.split(';').next().map(str::trim) {
        Some("application/x-protobuf") => Format::Protobuf,
        Some("application/json") => Format::Json,
        _ => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Format::Protobuf,
                "content-type must be application/x-protobuf or application/json",
            );
        }
    };
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"));
    let Some(encoding) = Encoding::parse(encoding) else {
        shared.stats.count(false, signal, Outcome::Invalid);
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format,
            "content-encoding must be gzip, zstd or identity",
        );
    };
    if shared.pipeline.is_saturated() {
        shared.stats.count(false, signal, Outcome::Refused);
        return http_busy(format, "memory limit reached; retry later");
    }
    if !shared.pipeline.ready(PACE_MAX_WAIT).await {
        shared.stats.count(false, signal, Outcome::Refused);
        return http_busy(format, "exporters busy; retry later");
    }
    let (body, reserved) = match read_body(
        req.into_body(),
        shared.limits.max_message_size,
        false,
        &shared.budget,
    )
    .await
    {
        Ok(b) => b,
        Err(BodyError::Busy) => {
            shared.stats.count(false, signal, Outcome::Refused);
            return http_busy(format, BUDGET_FULL);
        }
        Err(BodyError::Decode(e)) => return http_decode_error(shared, signal, format, e),
    };
    let decoded = match decode::decompress(encoding, body, shared.limits.max_decompressed_size)
        .and_then(|b| decode::decode(signal, format, b))
    {
        Ok(d) => d,
        Err(e) => return http_decode_error(shared, signal, format, e),
    };
    let (rejected, message) = (decoded.rejected, decoded.message);
    if decoded.batch.items > 0
        && let Err(e) = shared
            .pipeline
            .submit(decoded.batch, Priority::Receiver)
            .await
    {
        shared.stats.count(false, signal, Outcome::Refused);
        return http_busy(format, &e.to_string());
    }
    // The pipeline accounts for the data from here on.
    drop(reserved);
    shared.stats.count(
        false,
        signal,
        if rejected > 0 {
            Outcome::Partial
        } else {
            Outcome::Accepted
        },
    );
    let mut r = Response::new(ReplyBody::data(decode::response(
        signal, rejected, &message, format,
    )));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_of(format));
    r
}

fn content_type_of(format: Format) -> HeaderValue {
    HeaderValue::from_static(match format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    })
}

fn http_decode_error(
    shared: &Shared,
    signal: Signal,
    format: Format,
    e: DecodeError,
) -> Response<ReplyBody> {
    let (status, outcome) = match e {
        DecodeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Outcome::TooLarge),
        DecodeError::Invalid(_) => (StatusCode::BAD_REQUEST, Outcome::Invalid),
    };
    shared.stats.count(false, signal, outcome);
    http_error(status, format, &e.to_string())
}

fn http_busy(format: Format, message: &str) -> Response<ReplyBody> {
    let mut r = http_error(StatusCode::SERVICE_UNAVAILABLE, format, message);
    let secs = RETRY_AFTER.as_secs().max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// An OTLP/HTTP error: a `google.rpc.Status` body in the request's format.
fn http_error(status: StatusCode, format: Format, message: &str) -> Response<ReplyBody> {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Unimplemented,
    };
    let body = match format {
        Format::Protobuf => Bytes::from(
            RpcStatus {
                code: code as i32,
                message: message.to_string(),
                details: Vec::new(),
            }
            .encode_to_vec(),
        ),
        Format::Json => {
            Bytes::from(serde_json::json!({ "code": code as i32, "message": message }).to_string())
        }
    };
    let mut r = Response::new(ReplyBody::data(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_of(format));
    r
}

const BUDGET_FULL: &str = "receive budget full; retry later";

/// Why a request body was not read.
enum BodyError {
    Decode(DecodeError),
    /// The receive budget had no room within [`PACE_MAX_WAIT`].
    Busy,
}

/// Reads a request body of at most `limit` bytes into one buffer, within `budget`.
///
/// The body's size is reserved once, before it is read past what tells it: the length the body
/// announces, else (gRPC) the message prefix in its first frame, else the size limit.
/// A body that arrives in one frame is returned as that frame (no copy); a longer one is copied
/// once, frame by frame, into a buffer sized up front, so each frame is freed as soon as it is
/// copied: the peak is one body, not the frames plus their concatenation.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    grpc: bool,
    budget: &Budget,
) -> Result<(Bytes, Reservation), BodyError> {
    let too_large = || {
        BodyError::Decode(DecodeError::TooLarge {
            what: "request body",
            limit,
        })
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut expected = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX).min(limit));
    let mut reserved = Reservation::default();
    if let Some(n) = expected
        && !budget.reserve(&mut reserved, n, PACE_MAX_WAIT).await
    {
        return Err(BodyError::Busy);
    }
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            BodyError::Decode(DecodeError::Invalid(format!(
                "request body cannot be read: {e}"
            )))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(too_large());
        }
        if data.is_empty() {
            continue;
        }
        if reserved.bytes() == 0 {
            // The first data tells what is still to come (the gRPC message prefix), or nothing
            // (then the worst case, the size limit, is reserved). One reservation per body, made
            // while it holds none: bodies never wait for each other holding part of the budget.
            if grpc && expected.is_none() && data.len() >= 5 {
                let announced =
                    5 + u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                if announced > limit {
                    // Refused before the rest is read (or reserved).
                    return Err(too_large());
                }
                expected = Some(announced);
            }
            if !budget
                .reserve(&mut reserved, expected.unwrap_or(limit), PACE_MAX_WAIT)
                .await
            {
                return Err(BodyError::Busy);
            }
        }
        if let Some(n) = expected
            && len > n
        {
            // Only a gRPC body can get here (hyper holds others to their content-length).
            return Err(BodyError::Decode(DecodeError::Invalid(format!(
                "gRPC message prefix says {} bytes but more follow (one unary message expected)",
                n.saturating_sub(5)
            ))));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.reserve(expected.unwrap_or(0).max(len));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok((first.unwrap_or_else(|| buf.freeze()), reserved))
}

// ---------------------------------------------------------------- OTLP/gRPC

async fn grpc(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    let Some(signal) = Signal::from_grpc_path(req.uri().path()) else {
        return grpc_status(Code::Unimplemented, "unknown method");
    };
    let encoding = req
        .headers()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?"));
    let Some(encoding) = Encoding::parse(encoding) else {
        shared.stats.count(true, signal, Outcome::Invalid);
        return grpc_status(
            Code::Unimplemented,
            "grpc-encoding must be gzip, zstd or identity",
        );
    };
    if shared.pipeline.is_saturated() {
        shared.stats.count(true, signal, Outcome::Refused);
        return grpc_busy("memory limit reached; retry later");
    }
    if !shared.pipeline.ready(PACE_MAX_WAIT).await {
        shared.stats.count(true, signal, Outcome::Refused);
        return grpc_busy("exporters busy; retry later");
    }
    // The 5-byte gRPC message prefix is allowed on top of the message size limit.
    let (body, reserved) = match read_body(
        req.into_body(),
        shared.limits.max_message_size + 5,
        true,
        &shared.budget,
    )
    .await
    {
        Ok(b) => b,
        Err(BodyError::Busy) => {
            shared.stats.count(true, signal, Outcome::Refused);
            return grpc_busy(BUDGET_FULL);
        }
        Err(BodyError::Decode(e)) => return grpc_decode_error(shared, signal, e),
    };
    let message = match unframe(body, encoding) {
        Ok(m) => m,
        Err(e) => return grpc_decode_error(shared, signal, e),
    };
    let decoded =
        match decode::decompress(message.0, message.1, shared.limits.max_decompressed_size)
            .and_then(|b| decode::decode(signal, Format::Protobuf, b))
        {
            Ok(d) => d,
            Err(e) => return grpc_decode_error(shared, signal, e),
        };
    let (rejected, text) = (decoded.rejected, decoded.message);
    if decoded.batch.items > 0
        && let Err(e) = shared
            .pipeline
            .submit(decoded.batch, Priority::Receiver)
            .await
    {
        shared.stats.count(true, signal, Outcome::Refused);
        return grpc_busy(&e.to_string());
    }
    drop(reserved);
    shared.stats.count(
        true,
        signal,
        if rejected > 0 {
            Outcome::Partial
        } else {
            Outcome::Accepted
        },
    );
    let reply = decode::response(signal, rejected, &text, Format::Protobuf);
    let mut framed = Vec::with_capacity(reply.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(reply.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&reply);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut r = Response::new(ReplyBody {
        data: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    });
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// Splits the single unary gRPC message out of `body`: (its encoding, its bytes).
fn unframe(mut body: Bytes, encoding: Encoding) -> Result<(Encoding, Bytes), DecodeError> {
    if body.len() < 5 {
        return Err(DecodeError::Invalid(
            "gRPC body shorter than the 5-byte message prefix".into(),
        ));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if len != body.len() {
        return Err(DecodeError::Invalid(format!(
            "gRPC message prefix says {len} bytes but {} follow (one unary message expected)",
            body.len()
        )));
    }
    match compressed {
        0 => Ok((Encoding::Identity, body)),
        1 if encoding != Encoding::Identity => Ok((encoding, body)),
        1 => Err(DecodeError::Invalid(
            "compressed gRPC message without grpc-encoding".into(),
        )),
        _ => Err(DecodeError::Invalid("invalid gRPC compression flag".into())),
    }
}

fn grpc_decode_error(shared: &Shared, signal: Signal, e: DecodeError) -> Response<ReplyBody> {
    let (code, outcome) = match e {
        DecodeError::TooLarge { .. } => (Code::ResourceExhausted, Outcome::TooLarge),
        DecodeError::Invalid(_) => (Code::InvalidArgument, Outcome::Invalid),
    };
    shared.stats.count(true, signal, outcome);
    grpc_status(code, &e.to_string())
}

fn grpc_busy(message: &str) -> Response<ReplyBody> {
    let mut r = grpc_status(Code::Unavailable, message);
    let details = status_details_with_retry_info(Code::Unavailable as i32, message, RETRY_AFTER);
    if let Ok(v) = HeaderValue::from_str(&details) {
        r.headers_mut().insert("grpc-status-details-bin", v);
    }
    r
}

/// A trailers-only gRPC response.
fn grpc_status(code: Code, message: &str) -> Response<ReplyBody> {
    let mut r = Response::new(ReplyBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- reply body

/// A response body of at most one data frame and optional trailers.
#[derive(Debug)]
pub struct ReplyBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ReplyBody {
    /// A body of `data` (if any) followed by `trailers` (if any).
    pub fn new(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        ReplyBody { data, trailers }
    }

    fn data(b: Bytes) -> Self {
        ReplyBody {
            data: Some(b),
            trailers: None,
        }
    }
    fn empty() -> Self {
        ReplyBody {
            data: None,
            trailers: None,
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.data, &self.trailers) {
            (Some(d), None) => http_body::SizeHint::with_exact(d.len() as u64),
            (None, None) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_checks_prefix_and_flag() {
        let ok = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(unframe(ok, Encoding::Identity).unwrap().1.len(), 2);
        let short = Bytes::from_static(&[0, 0, 0, 0, 9, 8, 1]);
        assert!(unframe(short, Encoding::Identity).is_err());
        let flagged = Bytes::from_static(&[1, 0, 0, 0, 0]);
        assert!(unframe(flagged.clone(), Encoding::Identity).is_err());
        assert_eq!(unframe(flagged, Encoding::Gzip).unwrap().0, Encoding::Gzip);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%\nü"), "a b%25%0A%C3%BC");
    }
}
