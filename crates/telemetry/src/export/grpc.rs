//! OTLP/gRPC client: raw protobuf bytes in gRPC framing over one multiplexed HTTP/2 connection
//! (h2c for `http://`, TLS with ALPN `h2` for `https://`), reconnected when it breaks.

use super::conn::{self, Accepted, Connector, MAX_RESPONSE};
use super::retry::{Failure, code, retry_info_from_details};
use crate::Signal;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use otlp_mesh_config::telemetry::{Compression, OtlpEndpointConfig};
use std::time::Duration;

/// Sends export requests to one OTLP/gRPC backend.
pub(crate) struct GrpcClient {
    connector: Connector,
    conn: tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
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

    /// The request body for `payload`: compressed (flag 1) or not, behind the 5-byte prefix.
    pub fn prepare(&self, payload: &[u8]) -> std::io::Result<Bytes> {
        let (flag, msg) = match self.compression {
            Compression::None => (0u8, Bytes::copy_from_slice(payload)),
            c => (1u8, conn::compress(c, payload)?),
        };
        let len =
            u32::try_from(msg.len()).map_err(|_| std::io::Error::other("message over 4GiB"))?;
        let mut buf = BytesMut::with_capacity(5 + msg.len());
        buf.put_u8(flag);
        buf.put_u32(len);
        buf.extend_from_slice(&msg);
        Ok(buf.freeze())
    }

    /// A sender on the shared connection, connecting if there is none or it closed.
    async fn sender(&self) -> Result<http2::SendRequest<Full<Bytes>>, Failure> {
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
    pub async fn send(&self, signal: Signal, body: Bytes) -> Result<Accepted, Failure> {
        match tokio::time::timeout(self.timeout, self.attempt(signal, body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    async fn attempt(&self, signal: Signal, body: Bytes) -> Result<Accepted, Failure> {
        let mut sender = self.sender().await?;
        let uri = format!("{}{}", self.connector.origin, signal.grpc_path());
        let mut req = Request::post(uri)
            .version(http::Version::HTTP_2)
            .body(Full::new(body))
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
