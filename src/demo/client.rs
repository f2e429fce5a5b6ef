//! The small HTTP client the example services and the traffic generator use to call the proxy.

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Largest response body read; the demo's bodies are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// A pooled HTTP/1 client for plain `http://` URLs.
pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client with a short connect timeout and an idle pool that is cleaned up in the background.
pub(crate) fn new() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// A response read in full.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// A response header as text, or "" when missing or not text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// GETs `uri` with `headers`, reading the whole body; the whole exchange is bounded by `timeout`.
pub(crate) async fn get(
    client: &HttpClient,
    uri: &str,
    headers: HeaderMap,
    timeout: Duration,
) -> anyhow::Result<Fetched> {
    let mut request = Request::get(uri)
        .body(Empty::new())
        .with_context(|| format!("bad request URI `{uri}`"))?;
    request.headers_mut().extend(headers);
    let exchange = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("no complete response within {timeout:?}"),
    }
}
