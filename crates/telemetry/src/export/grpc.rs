//! OTLP/gRPC client: raw protobuf bytes in gRPC framing over one multiplexed HTTP/2 connection
//! (h2c for `http://`, TLS with ALPN `h2` for `https://`), reconnected when it breaks.

use super::conn::{self, Accepted, Connector, MAX_RESPONSE};
use super::retry::{Failure, code, retry_info_from_details};
use crate::Signal;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use otlp_mesh_config::telemetry::{Compression, OtlpEndpointConfig};
use std::time::Duration;

/// Sends export requests to one OTLP/gRPC backend.
pub(crate) struct GrpcClient {
    connector: Connector,
    conn: tokio::sync::Mutex<Option<http2::SendRequest<Chunks>>>,
    headers: HeaderMap,
    compression: Compression,
    timeout: Duration,
}

impl GrpcClient {
    pub fn new(ep: &OtlpEndpointConfig) -> Result<GrpcClient, String> {
        let connector = Connector::new(ep, b"h2")?;
        let mut headers = super::configured_headers(ep)?;
        let timeout = ep.timeout.value.0;
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        if let Some(enc) = conn::encoding_name(ep.compression) {
            headers.insert("grpc-encoding", HeaderValue::from_static(enc));
        }
        headers.insert(
            "grpc-accept-encoding",
            HeaderValue::from_static("gzip,zstd,identity"),
        );
        // gRPC timeouts are at most 8 digits; milliseconds cover 27 hours.
        if let Ok(v) = HeaderValue::from_str(&format!("{}m", timeout.as_millis().min(99_999_999))) {
            headers.insert("grpc-timeout", v);
        }
        headers.insert(
            "user-agent",
            HeaderValue::from_static(concat!("otlp-mesh/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(GrpcClient {
            connector,
            conn: tokio::sync::Mutex::new(None),
            headers,
            compression: ep.compression,
            timeout,
        })
    }

    /// The request body for the concatenation of `parts` (`total` bytes) behind the 5-byte
    /// gRPC prefix. Uncompressed, the parts are sent as they are, after the prefix (no copy);
    /// compressed, they are compressed straight into the body after room for the prefix.
    pub fn prepare(&self, parts: Vec<Bytes>, total: usize) -> std::io::Result<Chunks> {
        let too_big = || std::io::Error::other("message over 4GiB");
        if self.compression == Compression::None {
            let len = u32::try_from(total).map_err(|_| too_big())?;
            let mut prefix = BytesMut::with_capacity(5);
            prefix.put_u8(0);
            prefix.put_u32(len);
            let mut chunks = Vec::with_capacity(parts.len() + 1);
            chunks.push(prefix.freeze());
            chunks.extend(parts.into_iter().filter(|p| !p.is_empty()));
            return Ok(Chunks::new(chunks));
        }
        let mut body =
            conn::compress_parts(self.compression, parts.iter().map(|p| &p[..]), total, 5)?;
        let len = u32::try_from(body.len() - 5).map_err(|_| too_big())?;
        body[0] = 1;
        body[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(Chunks::new(vec![Bytes::from(body)]))
    }

    /// Whether [`prepare`](Self::prepare) sends the parts themselves (uncompressed).
    pub fn sends_parts(&self) -> bool {
        self.compression == Compression::None
    }

    /// A sender on the shared connection, connecting if there is none or it closed.
    async fn sender(&self) -> Result<http2::SendRequest<Chunks>, Failure> {
        let mut guard = self.conn.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *guard = None;
        let io = self.connector.connect().await.map_err(Failure::Transport)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                Failure::Transport(format!("HTTP/2 handshake: {}", conn::error_chain(&e)))
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %conn::error_chain(&e), "OTLP/gRPC connection ended");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }

    /// One attempt: send `body` (from [`prepare`](Self::prepare)) and read the status.
    pub async fn send(&self, signal: Signal, body: Chunks) -> Result<Accepted, Failure> {
        match tokio::time::timeout(self.timeout, self.attempt(signal, body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    async fn attempt(&self, signal: Signal, body: Chunks) -> Result<Accepted, Failure> {
        let mut sender = self.sender().await?;
        let uri = format!("{}{}", self.connector.origin, signal.grpc_path());
        let mut req = Request::post(uri)
            .version(http::Version::HTTP_2)
            .body(body)
            .map_err(|e| Failure::Transport(format!("building request: {e}")))?;
        req.headers_mut().extend(self.headers.clone());
        sender
            .ready()
            .await
            .map_err(|e| Failure::Transport(conn::error_chain(&e)))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Transport(conn::error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Failure::Grpc {
                code: code_from_http(parts.status.as_u16()),
                message: format!("HTTP status {} from a gRPC endpoint", parts.status),
                retry_info: None,
            });
        }
        // Trailers-only responses carry the status in the headers.
        if parts.headers.contains_key("grpc-status") {
            return status_result(&parts.headers, &[], &parts.headers);
        }
        let collected = body.collect().await.map_err(|e| {
            Failure::Transport(format!("reading response: {}", conn::error_chain(&e)))
        })?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        status_result(&trailers, &data, &parts.headers)
    }
}

/// A request body made of reference-counted chunks, sent in order; cloning it (for a retry)
/// clones handles, not bytes.
#[derive(Clone, Debug)]
pub(crate) struct Chunks {
    chunks: Vec<Bytes>,
    next: usize,
    remaining: u64,
}

impl Chunks {
    pub fn new(chunks: Vec<Bytes>) -> Chunks {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks {
            chunks,
            next: 0,
            remaining,
        }
    }

    /// Bytes left to send.
    pub fn len(&self) -> u64 {
        self.remaining
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(chunk) = this.chunks.get_mut(this.next) else {
            return std::task::Poll::Ready(None);
        };
        // Hand the chunk over (the clone kept for retries holds its own handles).
        let chunk = std::mem::take(chunk);
        this.next += 1;
        this.remaining -= chunk.len() as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Interprets `grpc-status` (in `status_headers`) and, on OK, the response message in `data`.
fn status_result(
    status_headers: &HeaderMap,
    data: &[u8],
    headers: &HeaderMap,
) -> Result<Accepted, Failure> {
    let Some(status) = status_headers.get("grpc-status") else {
        // A stream that ends without a status was cut short (proxy reset, server crash).
        return Err(Failure::Transport(
            "response ended without grpc-status".into(),
        ));
    };
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(code::UNKNOWN);
    if code != code::OK {
        let message = status_headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        let retry_info = status_headers
            .get("grpc-status-details-bin")
            .and_then(|v| retry_info_from_details(v.as_bytes()));
        return Err(Failure::Grpc {
            code,
            message,
            retry_info,
        });
    }
    let encoding = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    Ok(
        decode_message(data, encoding)
            .map_or_else(Accepted::default, |m| conn::partial_success(&m)),
    )
}

/// The first gRPC message of a response body, decompressed.
fn decode_message(data: &[u8], encoding: &str) -> Option<Vec<u8>> {
    let (&flag, rest) = data.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let msg = rest.get(4..4 + len)?;
    if len > MAX_RESPONSE {
        return None;
    }
    if flag == 0 {
        Some(msg.to_vec())
    } else {
        conn::decompress(encoding, msg)
    }
}

/// gRPC's mapping of HTTP statuses from non-gRPC intermediaries to codes.
fn code_from_http(status: u16) -> i32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// `grpc-message` is percent-encoded UTF-8.
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%'
            && i + 2 < v.len()
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&v[i + 1..i + 3]), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(compression: &str) -> GrpcClient {
        let ep: OtlpEndpointConfig = serde_json::from_value(serde_json::json!({
            "endpoint": "http://127.0.0.1:4317",
            "compression": compression,
        }))
        .unwrap();
        GrpcClient::new(&ep).unwrap()
    }

    async fn body_bytes(c: Chunks) -> Vec<u8> {
        c.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn parts_become_one_framed_message_without_concatenation() {
        let parts = vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defg"),
        ];
        let plain = client("none").prepare(parts.clone(), 7).unwrap();
        assert_eq!(plain.size_hint().exact(), Some(12));
        // The parts are the very same buffers (no copy): prefix + 2 non-empty parts.
        assert_eq!(plain.chunks.len(), 3);
        assert_eq!(plain.chunks[1].as_ptr(), parts[0].as_ptr());
        assert_eq!(body_bytes(plain.clone()).await, b"\0\0\0\0\x07abcdefg");
        // A clone kept for a retry still has everything after the first copy was sent.
        assert_eq!(body_bytes(plain).await.len(), 12);

        let gz = body_bytes(client("gzip").prepare(parts, 7).unwrap()).await;
        assert_eq!(gz[0], 1);
        assert_eq!(
            u32::from_be_bytes(gz[1..5].try_into().unwrap()) as usize,
            gz.len() - 5
        );
        assert_eq!(conn::decompress("gzip", &gz[5..]).unwrap(), b"abcdefg");
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%3Ac"), "a b:c");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn response_message_is_unframed() {
        let mut framed = vec![0, 0, 0, 0, 3];
        framed.extend_from_slice(b"abc");
        assert_eq!(decode_message(&framed, "identity").unwrap(), b"abc");
        assert_eq!(decode_message(&framed[..6], "identity"), None);
        assert_eq!(decode_message(&[], "identity"), None);
    }

    #[test]
    fn trailers_only_status_is_read() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert("grpc-message", HeaderValue::from_static("down%21"));
        let e = status_result(&h, &[], &h).unwrap_err();
        assert_eq!(
            e,
            Failure::Grpc {
                code: code::UNAVAILABLE,
                message: "down!".into(),
                retry_info: None
            }
        );
        assert!(matches!(
            status_result(&HeaderMap::new(), &[], &h),
            Err(Failure::Transport(_))
        ));
    }
}
