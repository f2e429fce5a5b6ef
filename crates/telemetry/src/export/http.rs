//! OTLP/HTTP protobuf client: `POST {endpoint}/v1/{signal}` over pooled HTTP/1.1 connections
//! (TLS for `https://`).

use super::conn::{self, Accepted, Connector, MAX_RESPONSE};
use super::retry::{Failure, RpcStatus, parse_retry_after};
use crate::Signal;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use otlp_mesh_config::telemetry::{Compression, OtlpEndpointConfig};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Idle connections kept (one per concurrent request is enough).
const MAX_IDLE: usize = super::MAX_IN_FLIGHT;

/// Sends export requests to one OTLP/HTTP backend.
pub(crate) struct HttpClient {
    connector: Connector,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    headers: HeaderMap,
    compression: Compression,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(ep: &OtlpEndpointConfig) -> Result<HttpClient, String> {
        let connector = Connector::new(ep, b"http/1.1")?;
        let mut headers = super::configured_headers(ep)?;
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Some(enc) = conn::encoding_name(ep.compression) {
            headers.insert("content-encoding", HeaderValue::from_static(enc));
        }
        headers.insert(
            "user-agent",
            HeaderValue::from_static(concat!("otlp-mesh/", env!("CARGO_PKG_VERSION"))),
        );
        if let Ok(host) = HeaderValue::from_str(
            connector
                .origin
                .split_once("://")
                .map_or("", |(_, authority)| authority),
        ) {
            headers.insert("host", host);
        }
        Ok(HttpClient {
            connector,
            idle: Mutex::new(Vec::new()),
            headers,
            compression: ep.compression,
            timeout: ep.timeout.value.0,
        })
    }

    /// The request body for `payload` (compressed once; retries reuse it).
    pub fn prepare(&self, parts: &[Bytes], total: usize) -> std::io::Result<Bytes> {
        match (self.compression, parts) {
            // A single queued batch sent uncompressed: the received bytes themselves.
            (Compression::None, [one]) => Ok(one.clone()),
            (c, _) => {
                conn::compress_parts(c, parts.iter().map(|p| &p[..]), total, 0).map(Bytes::from)
            }
        }
    }

    /// Whether [`prepare`](Self::prepare) sends `parts` queued batches as they are: a single
    /// one, uncompressed.
    pub fn sends_parts(&self, parts: usize) -> bool {
        self.compression == Compression::None && parts == 1
    }

    /// One attempt: POST `body` and interpret the status.
    pub async fn send(&self, signal: Signal, body: Bytes) -> Result<Accepted, Failure> {
        match tokio::time::timeout(self.timeout, self.attempt(signal, body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: http1::SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE && !s.is_closed() {
            idle.push(s);
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, Failure> {
        let io = self.connector.connect().await.map_err(Failure::Transport)?;
        let (sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(|e| {
            Failure::Transport(format!("HTTP/1.1 handshake: {}", conn::error_chain(&e)))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %conn::error_chain(&e), "OTLP/HTTP connection ended");
            }
        });
        Ok(sender)
    }

    async fn attempt(&self, signal: Signal, body: Bytes) -> Result<Accepted, Failure> {
        let path = format!("{}{}", self.connector.base_path, signal.http_path());
        let mut sender = match self.take_idle() {
            Some(s) => s,
            None => self.connect().await?,
        };
        // An idle connection the server just closed fails here; one fresh try covers that race.
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
            sender
                .ready()
                .await
                .map_err(|e| Failure::Transport(conn::error_chain(&e)))?;
        }
        let mut req = Request::post(path.as_str())
            .body(Full::new(body))
            .map_err(|e| Failure::Transport(format!("building request: {e}")))?;
        req.headers_mut().extend(self.headers.clone());
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Transport(conn::error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let data = read_body(body).await?;
        // The whole response was read, so the connection can carry the next request.
        self.put_idle(sender);
        let status = parts.status.as_u16();
        if (200..300).contains(&status) {
            return Ok(conn::partial_success(&data));
        }
        let retry_after = parts
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        Err(Failure::Http {
            status,
            message: error_message(&parts.headers, &data),
            retry_after,
        })
    }
}

async fn read_body(mut body: Incoming) -> Result<Bytes, Failure> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Failure::Transport(format!("reading response: {}", conn::error_chain(&e)))
        })?;
        if let Ok(d) = frame.into_data() {
            if buf.len() + d.len() > MAX_RESPONSE {
                return Err(Failure::Transport(format!(
                    "response body over {MAX_RESPONSE} bytes"
                )));
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(buf.freeze())
}

/// The message of an error response: OTLP/HTTP servers send a protobuf `google.rpc.Status`;
/// others send text.
fn error_message(headers: &HeaderMap, body: &[u8]) -> String {
    use prost::Message;
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-protobuf")
        && let Ok(s) = RpcStatus::decode(body)
    {
        return s.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_messages() {
        use prost::Message;
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        let st = RpcStatus {
            code: 3,
            message: "bad span".into(),
            details: vec![],
        };
        assert_eq!(error_message(&h, &st.encode_to_vec()), "bad span");
        let long = "x".repeat(500);
        let m = error_message(&HeaderMap::new(), long.as_bytes());
        assert_eq!(m.chars().count(), 201);
    }
}
