use crate::body::ProxyBody;
use http::{HeaderValue, Response, StatusCode};
use otlp_mesh_resilience::{FailureClass, FailureKind};

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
    #[error("upstream request failed: {message}")]
    Upstream { message: String, kind: FailureKind },
    #[error("overloaded: {0}")]
    Overloaded(otlp_mesh_resilience::breaker::Overloaded),
    #[error("circuit open: {0}")]
    CircuitOpen(otlp_mesh_resilience::breaker::CircuitOpen),
    #[error("rate limited: {0}")]
    RateLimited(otlp_mesh_resilience::ratelimit::RateLimited),
    /// A fault rule asked for the client connection (HTTP/1.1) or stream (h2) to be reset.
    #[error("{0}")]
    FaultReset(otlp_mesh_chaos::FaultReset),
}

impl From<otlp_mesh_resilience::breaker::Overloaded> for ProxyError {
    fn from(e: otlp_mesh_resilience::breaker::Overloaded) -> Self {
        ProxyError::Overloaded(e)
    }
}

impl From<otlp_mesh_resilience::breaker::CircuitOpen> for ProxyError {
    fn from(e: otlp_mesh_resilience::breaker::CircuitOpen) -> Self {
        ProxyError::CircuitOpen(e)
    }
}

impl From<otlp_mesh_resilience::ratelimit::RateLimited> for ProxyError {
    fn from(e: otlp_mesh_resilience::ratelimit::RateLimited) -> Self {
        ProxyError::RateLimited(e)
    }
}

impl FailureClass for ProxyError {
    /// What retries and the circuit breaker make of each failure: refusals the proxy made itself
    /// are never retried and never count against an upstream.
    fn failure_kind(&self) -> FailureKind {
        match self {
            ProxyError::ConnectFailed { .. } => FailureKind::ConnectFailure,
            ProxyError::Timeout(_) => FailureKind::Timeout,
            ProxyError::Upstream { kind, .. } => *kind,
            ProxyError::FaultReset(_) => FailureKind::Reset,
            ProxyError::NoEndpoints(_)
            | ProxyError::Overloaded(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::RateLimited(_) => FailureKind::Rejected,
            ProxyError::NoRoute | ProxyError::BodyTooLarge(_) => FailureKind::Local,
        }
    }
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
            ProxyError::ConnectFailed { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Overloaded(_) | ProxyError::CircuitOpen(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
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
            ProxyError::Upstream { .. } => "upstream_error",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::CircuitOpen(_) => "circuit_open",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::FaultReset(_) => "fault_reset",
        }
    }

    /// The gRPC status a gRPC client gets for this error (codes per the gRPC spec).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::NoRoute => 12,   // UNIMPLEMENTED
            ProxyError::Timeout(_) => 4, // DEADLINE_EXCEEDED
            ProxyError::BodyTooLarge(_) | ProxyError::RateLimited(_) => 8, // RESOURCE_EXHAUSTED
            ProxyError::NoEndpoints(_)
            | ProxyError::ConnectFailed { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Overloaded(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::FaultReset(_) => 14, // UNAVAILABLE
        }
    }

    /// A gRPC trailers-only response (HTTP 200, `grpc-status`, `grpc-message`), so gRPC
    /// clients see a proper status instead of an HTTP error they must translate.
    pub fn into_grpc_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        let message = otlp_mesh_chaos::encode_grpc_message(&format!("otlp-mesh: {self}"));
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        h.insert("x-mesh-error", HeaderValue::from_static(self.code()));
        resp
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
        match &self {
            ProxyError::Overloaded(_) => {
                h.insert("x-mesh-overloaded", HeaderValue::from_static("true"));
            }
            ProxyError::CircuitOpen(e) => {
                h.insert(http::header::RETRY_AFTER, seconds(e.retry_in));
            }
            ProxyError::RateLimited(e) => {
                h.insert(http::header::RETRY_AFTER, seconds(e.retry_after));
                h.insert("x-ratelimit-limit", HeaderValue::from(e.limit));
                h.insert("x-ratelimit-remaining", HeaderValue::from(e.remaining));
                h.insert("x-ratelimit-reset", seconds(e.reset));
            }
            _ => {}
        }
        resp
    }
}

/// Whole seconds, rounded up (a client retrying after this is never early).
fn seconds(d: std::time::Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs)
}
