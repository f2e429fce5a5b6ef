//! A small HTTP/1.1 client for the HTTP-based sources: bounded bodies and bounded JSON lines.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest non-streaming response body accepted (bigger is an error).
pub const MAX_BODY: usize = 16 << 20;
/// Largest single line of a streaming response (bigger is an error → reconnect).
pub const MAX_LINE: usize = 1 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP client with a connect timeout: pooled plain HTTP, and (when built with a TLS config)
/// `https://` over one fresh rustls connection per request.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    tls: Option<TlsConnector>,
}

/// A TLS client config trusting only the PEM certificates in `pem` (ring provider); `what`
/// names their origin in errors.
pub fn tls_config(pem: &[u8], what: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("CA {what}: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA {what}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("CA {what}: no certificates"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient::with_tls(None)
    }

    /// A client that also speaks `https://` with `tls`.
    pub fn with_tls(tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(conn);
        HttpClient {
            client,
            tls: tls.map(TlsConnector::from),
        }
    }

    async fn send_tls(
        tls: &TlsConnector,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, String> {
        let uri = req.uri().clone();
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare.as_str(), port)))
            .await
            .map_err(|_| format!("connect to {host}:{port} timed out"))?
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(bare).map_err(|e| format!("TLS name {host}: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{host}:{port}: {}", error_chain(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = path.parse().map_err(|e| format!("bad path {path}: {e}"))?;
        if let Ok(v) = http::HeaderValue::from_str(&authority) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("{host}:{port}: {}", error_chain(&e)))
    }

    /// Sends a request and waits (at most `head_timeout`) for the response head.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<String>,
        head_timeout: Duration,
    ) -> Result<Response<Incoming>, String> {
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(format!("`{url}`: not an http:// or https:// URL"));
        }
        if https && self.tls.is_none() {
            return Err(format!("`{url}`: https needs a CA (ca_file)"));
        }
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad request for {url}: {e}"))?;
        if let (true, Some(tls)) = (https, &self.tls) {
            return match tokio::time::timeout(head_timeout, Self::send_tls(tls, req)).await {
                Ok(r) => r,
                Err(_) => Err(format!("{url}: no response within {head_timeout:?}")),
            };
        }
        match tokio::time::timeout(head_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(format!("{url}: {}", error_chain(&e))),
            Err(_) => Err(format!("{url}: no response within {head_timeout:?}")),
        }
    }
}

/// An error with its sources, for logs (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Reads a whole body, failing past [`MAX_BODY`] bytes or after `timeout`.
pub async fn read_body(mut body: Incoming, timeout: Duration) -> Result<Bytes, String> {
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading body: {}", error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(format!("response body over {MAX_BODY} bytes"));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("body not read within {timeout:?}"))?
}

/// Splits a streaming body into newline-delimited lines of at most [`MAX_LINE`] bytes.
pub struct LineStream {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

impl LineStream {
    pub fn new(body: Incoming) -> LineStream {
        LineStream {
            body,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// The next non-empty line; `Ok(None)` at the end of the stream; an error when a line is too
    /// long, the stream breaks, or nothing arrives within `idle`.
    pub async fn next_line(&mut self, idle: Duration) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos).freeze();
                self.buf.advance(1);
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("stream line over {MAX_LINE} bytes"));
            }
            if self.done {
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                let rest = self.buf.split().freeze();
                return Ok(Some(rest));
            }
            match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => return Err(format!("stream idle for {idle:?}")),
                Ok(None) => self.done = true,
                Ok(Some(Err(e))) => return Err(format!("stream broke: {}", error_chain(&e))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Standard base64 encoding (for etcd keys).
pub fn b64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding (padding optional); `None` on invalid input.
pub fn b64_decode(input: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let s = input.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/services/orders/",
        ] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes(), "{s} -> {e}");
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert!(b64_decode("!!").is_none());
    }
}
