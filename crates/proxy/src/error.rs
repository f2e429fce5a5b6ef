use crate::body::ProxyBody;
use http::{HeaderValue, Response, StatusCode};

/// Why the proxy answered a request itself instead of relaying the upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched")]
    NoRoute,
    #[error("cluster `{0}` has no endpoints")]
    NoEndpoints(String),
    #[error("cannot connect to upstream {endpoint}: {reason}")]
    ConnectFailed { endpoint: String, reason: String },
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("upstream request failed: {0}")]
    Upstream(String),
    /// A fault rule asked for the client connection (HTTP/1.1) or stream (h2) to be reset.
    #[error("{0}")]
    FaultReset(otlp_mesh_chaos::FaultReset),
}

impl From<otlp_mesh_chaos::FaultReset> for ProxyError {
    fn from(e: otlp_mesh_chaos::FaultReset) -> Self {
        ProxyError::FaultReset(e)
    }
}

impl From<otlp_mesh_resilience::timeout::Elapsed> for ProxyError {
    fn from(e: otlp_mesh_resilience::timeout::Elapsed) -> Self {
        ProxyError::Timeout(e.0)
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            // Never sent: the connection is reset instead. Counted as 502 in metrics.
            ProxyError::FaultReset(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Stable reason code sent in the `x-mesh-error` header (like Envoy's response flags).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoEndpoints(_) => "no_endpoints",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::Timeout(_) => "upstream_timeout",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::FaultReset(_) => "fault_reset",
        }
    }

    /// A short text/plain response naming the reason.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut body = self.to_string();
        body.push('\n');
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-mesh-error", HeaderValue::from_static(self.code()));
        resp
    }
}
