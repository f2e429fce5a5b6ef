//! Shared failure vocabulary: how the retry and breaker layers classify errors and responses.
//!
//! The layers do not know the proxy's error type. The inner service's error implements
//! [`FailureClass`] to say what kind of failure it is; responses are classified by their status
//! code and, for gRPC, by the `grpc-status` header of a trailers-only response (a `grpc-status`
//! sent in trailers after a body is not seen: that would need buffering the response).
//!
//! [`Conditions`] is a small `Copy` set (bit masks, no allocation) of the failures a layer reacts
//! to; it is parsed from Envoy-style tokens (`connect-failure`, `5xx`, `gateway-error`, `409`,
//! `unavailable`, …) so the config can hand its strings over unchanged.

use http::Response;
use std::fmt;

/// What kind of failure an inner service's error represents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection could be established: the request was never sent.
    ConnectFailure,
    /// The upstream refused the stream (HTTP/2 `REFUSED_STREAM`, GOAWAY before processing): never processed.
    RefusedStream,
    /// The connection or stream was reset or closed before a complete response head.
    Reset,
    /// The upstream did not answer in time (per-try or connect timeout).
    Timeout,
    /// Rejected locally by a resilience layer (overloaded, circuit open, rate limited): never retried, not an upstream failure.
    Rejected,
    /// The request itself is at fault (e.g. its body broke a limit): never retried, not an upstream failure.
    Local,
    /// Any other upstream failure (protocol error, malformed response): retried under `5xx`, `gateway-error` and `reset`.
    Other,
}

impl FailureKind {
    /// All kinds, in declaration order.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::ConnectFailure,
        FailureKind::RefusedStream,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::Rejected,
        FailureKind::Local,
        FailureKind::Other,
    ];

    /// True when the upstream certainly did not process the request (safe to retry any method).
    pub fn never_processed(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectFailure | FailureKind::RefusedStream
        )
    }

    /// True for failures that say something about the upstream's health (breakers count these).
    pub fn is_upstream_failure(self) -> bool {
        !matches!(self, FailureKind::Rejected | FailureKind::Local)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Implemented by the inner service's error type so the layers can classify failures without downcasting.
pub trait FailureClass {
    /// The kind of failure this error represents.
    fn failure_kind(&self) -> FailureKind;
}

/// A gRPC status code (`grpc-status` header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum GrpcCode {
    /// 0
    Ok = 0,
    /// 1
    Cancelled = 1,
    /// 2
    Unknown = 2,
    /// 3
    InvalidArgument = 3,
    /// 4
    DeadlineExceeded = 4,
    /// 5
    NotFound = 5,
    /// 6
    AlreadyExists = 6,
    /// 7
    PermissionDenied = 7,
    /// 8
    ResourceExhausted = 8,
    /// 9
    FailedPrecondition = 9,
    /// 10
    Aborted = 10,
    /// 11
    OutOfRange = 11,
    /// 12
    Unimplemented = 12,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
    /// 15
    DataLoss = 15,
    /// 16
    Unauthenticated = 16,
}

const GRPC_NAMES: [(&str, GrpcCode); 17] = [
    ("ok", GrpcCode::Ok),
    ("cancelled", GrpcCode::Cancelled),
    ("unknown", GrpcCode::Unknown),
    ("invalid-argument", GrpcCode::InvalidArgument),
    ("deadline-exceeded", GrpcCode::DeadlineExceeded),
    ("not-found", GrpcCode::NotFound),
    ("already-exists", GrpcCode::AlreadyExists),
    ("permission-denied", GrpcCode::PermissionDenied),
    ("resource-exhausted", GrpcCode::ResourceExhausted),
    ("failed-precondition", GrpcCode::FailedPrecondition),
    ("aborted", GrpcCode::Aborted),
    ("out-of-range", GrpcCode::OutOfRange),
    ("unimplemented", GrpcCode::Unimplemented),
    ("internal", GrpcCode::Internal),
    ("unavailable", GrpcCode::Unavailable),
    ("data-loss", GrpcCode::DataLoss),
    ("unauthenticated", GrpcCode::Unauthenticated),
];

impl GrpcCode {
    /// The code for a numeric value (0–16).
    pub fn from_u8(v: u8) -> Option<GrpcCode> {
        GRPC_NAMES.get(usize::from(v)).map(|(_, c)| *c)
    }

    /// Lower-case kebab name (`deadline-exceeded`).
    pub fn name(self) -> &'static str {
        GRPC_NAMES[self as usize].0
    }

    /// Parses a name in any case with `-` or `_` separators (`UNAVAILABLE`, `deadline_exceeded`).
    pub fn from_name(s: &str) -> Option<GrpcCode> {
        GRPC_NAMES.iter().find_map(|(n, c)| {
            let same = n.len() == s.len()
                && n.bytes().zip(s.bytes()).all(|(a, b)| {
                    let b = b.to_ascii_lowercase();
                    a == b || (a == b'-' && b == b'_')
                });
            same.then_some(*c)
        })
    }

    /// Reads the `grpc-status` header of a (trailers-only) response, if present and valid.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<GrpcCode> {
        let v = headers.get("grpc-status")?.as_bytes();
        let n = match v {
            [a] if a.is_ascii_digit() => a - b'0',
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => (a - b'0') * 10 + (b - b'0'),
            _ => return None,
        };
        GrpcCode::from_u8(n)
    }
}

/// Why a response (not an error) matched a [`Conditions`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFailure {
    /// Its HTTP status is in the set.
    Status(http::StatusCode),
    /// Its `grpc-status` header is in the set.
    Grpc(GrpcCode),
}

/// A set of failures (error kinds, HTTP statuses, gRPC codes) a layer reacts to; `Copy`, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    kinds: u8,
    /// Bit `s - 100` for statuses 100..=611.
    statuses: [u64; 8],
    grpc: u32,
}

const TRANSPORT: u8 = FailureKind::ConnectFailure.bit()
    | FailureKind::RefusedStream.bit()
    | FailureKind::Reset.bit()
    | FailureKind::Timeout.bit()
    | FailureKind::Other.bit();

impl Conditions {
    /// The empty set: nothing matches.
    pub const fn none() -> Self {
        Conditions {
            kinds: 0,
            statuses: [0; 8],
            grpc: 0,
        }
    }

    /// Adds one error kind (`Rejected` and `Local` are accepted but make little sense).
    pub const fn kind(mut self, kind: FailureKind) -> Self {
        self.kinds |= kind.bit();
        self
    }

    /// Adds one HTTP status (100–599; others are ignored).
    pub const fn status(mut self, status: u16) -> Self {
        if status >= 100 && status < 600 {
            let i = (status - 100) as usize;
            self.statuses[i / 64] |= 1 << (i % 64);
        }
        self
    }

    /// Adds an inclusive range of HTTP statuses.
    pub const fn status_range(mut self, from: u16, to: u16) -> Self {
        let mut s = from;
        while s <= to {
            self = self.status(s);
            s += 1;
        }
        self
    }

    /// Adds one gRPC code.
    pub const fn grpc(mut self, code: GrpcCode) -> Self {
        self.grpc |= 1 << (code as u8);
        self
    }

    /// `connect-failure`: the connection could not be established.
    pub const fn connect_failure(self) -> Self {
        self.kind(FailureKind::ConnectFailure)
    }

    /// `refused-stream`: the upstream refused the stream.
    pub const fn refused_stream(self) -> Self {
        self.kind(FailureKind::RefusedStream)
    }

    /// `reset`: every transport failure (reset, timeout, connect failure, refused stream, other), like Envoy.
    pub const fn reset(mut self) -> Self {
        self.kinds |= TRANSPORT;
        self
    }

    /// `timeout`: the attempt timed out (also covered by `reset`, `5xx`, `gateway-error`).
    pub const fn timeout(self) -> Self {
        self.kind(FailureKind::Timeout)
    }

    /// `5xx`: statuses 500–599 and every transport failure.
    pub const fn status_5xx(self) -> Self {
        self.reset().status_range(500, 599)
    }

    /// `gateway-error`: statuses 502, 503, 504 and every transport failure.
    pub const fn gateway_error(self) -> Self {
        self.reset().status(502).status(503).status(504)
    }

    /// `retriable-4xx`: status 409 (Conflict), as in Envoy.
    pub const fn retriable_4xx(self) -> Self {
        self.status(409)
    }

    /// Default retry conditions: `gateway-error` and gRPC `unavailable`.
    pub const fn default_retry() -> Self {
        Conditions::none()
            .gateway_error()
            .grpc(GrpcCode::Unavailable)
    }

    /// Default breaker failures: `5xx`, every transport failure, and gRPC server-side failure codes
    /// (`unknown`, `deadline-exceeded`, `internal`, `unavailable`, `data-loss`).
    pub const fn default_breaker() -> Self {
        Conditions::none()
            .status_5xx()
            .grpc(GrpcCode::Unknown)
            .grpc(GrpcCode::DeadlineExceeded)
            .grpc(GrpcCode::Internal)
            .grpc(GrpcCode::Unavailable)
            .grpc(GrpcCode::DataLoss)
    }

    /// Adds one config token: `connect-failure`, `refused-stream`, `reset`, `timeout`, `5xx`,
    /// `gateway-error`, `retriable-4xx`, a status (`409`), or a gRPC code name (`unavailable`,
    /// `resource-exhausted`, `DEADLINE_EXCEEDED`, … optionally prefixed `grpc-`).
    pub fn with_token(self, token: &str) -> Result<Self, UnknownCondition> {
        let t = token.trim();
        Ok(match t {
            "connect-failure" => self.connect_failure(),
            "refused-stream" => self.refused_stream(),
            "reset" => self.reset(),
            "timeout" | "per-try-timeout" => self.timeout(),
            "5xx" => self.status_5xx(),
            "gateway-error" => self.gateway_error(),
            "retriable-4xx" => self.retriable_4xx(),
            _ => {
                if let Ok(n) = t.parse::<u16>()
                    && (100..600).contains(&n)
                {
                    self.status(n)
                } else if let Some(c) = GrpcCode::from_name(t.strip_prefix("grpc-").unwrap_or(t)) {
                    self.grpc(c)
                } else {
                    return Err(UnknownCondition(t.to_owned()));
                }
            }
        })
    }

    /// Builds a set from config tokens (see [`Conditions::with_token`]).
    pub fn parse<I, S>(tokens: I) -> Result<Self, UnknownCondition>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        tokens
            .into_iter()
            .try_fold(Conditions::none(), |c, t| c.with_token(t.as_ref()))
    }

    /// True when the error kind is in the set.
    pub fn matches_kind(&self, kind: FailureKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// True when the status is in the set.
    pub fn matches_status(&self, status: http::StatusCode) -> bool {
        let s = status.as_u16();
        if !(100..612).contains(&s) {
            return false;
        }
        let i = usize::from(s - 100);
        self.statuses[i / 64] & (1 << (i % 64)) != 0
    }

    /// True when the gRPC code is in the set.
    pub fn matches_grpc(&self, code: GrpcCode) -> bool {
        self.grpc & (1 << (code as u8)) != 0
    }

    /// Whether (and why) a response is in the set: its status first, then its `grpc-status` header.
    pub fn match_response<B>(&self, resp: &Response<B>) -> Option<ResponseFailure> {
        if self.matches_status(resp.status()) {
            return Some(ResponseFailure::Status(resp.status()));
        }
        if self.grpc != 0
            && let Some(code) = GrpcCode::from_headers(resp.headers())
            && self.matches_grpc(code)
        {
            return Some(ResponseFailure::Grpc(code));
        }
        None
    }
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions::default_retry()
    }
}

impl fmt::Debug for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<_> = FailureKind::ALL
            .iter()
            .filter(|k| self.matches_kind(**k))
            .collect();
        let statuses: Vec<u16> = (100u16..600)
            .filter(|s| {
                let i = usize::from(s - 100);
                self.statuses[i / 64] & (1 << (i % 64)) != 0
            })
            .collect();
        let grpc: Vec<_> = (0u8..17)
            .filter_map(GrpcCode::from_u8)
            .filter(|c| self.matches_grpc(*c))
            .collect();
        f.debug_struct("Conditions")
            .field("kinds", &kinds)
            .field("statuses", &statuses)
            .field("grpc", &grpc)
            .finish()
    }
}

/// A config token [`Conditions::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCondition(pub String);

impl fmt::Display for UnknownCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown condition `{}` (expected connect-failure, refused-stream, reset, timeout, 5xx, \
             gateway-error, retriable-4xx, an HTTP status, or a gRPC code name)",
            self.0
        )
    }
}

impl std::error::Error for UnknownCondition {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn resp(status: u16, grpc: Option<&'static str>) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc {
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(g));
        }
        r
    }

    #[test]
    fn tokens_parse_into_the_expected_sets() {
        let c =
            Conditions::parse(["connect-failure", "409", "UNAVAILABLE", "grpc-cancelled"]).unwrap();
        assert!(c.matches_kind(FailureKind::ConnectFailure));
        assert!(!c.matches_kind(FailureKind::Reset));
        assert!(c.matches_status(StatusCode::CONFLICT));
        assert!(!c.matches_status(StatusCode::BAD_GATEWAY));
        assert!(c.matches_grpc(GrpcCode::Unavailable));
        assert!(c.matches_grpc(GrpcCode::Cancelled));
        assert!(!c.matches_grpc(GrpcCode::Internal));
        assert!(Conditions::parse(["nope"]).is_err());
        assert!(Conditions::parse(["700"]).is_err());
    }

    #[test]
    fn gateway_error_is_502_to_504_and_transport_failures() {
        let c = Conditions::none().gateway_error();
        for s in [502, 503, 504] {
            assert!(c.match_response(&resp(s, None)).is_some());
        }
        for s in [500, 501, 505, 200, 409] {
            assert!(c.match_response(&resp(s, None)).is_none(), "{s}");
        }
        assert!(c.matches_kind(FailureKind::Timeout));
        assert!(!c.matches_kind(FailureKind::Rejected));
        assert!(!c.matches_kind(FailureKind::Local));
        let x = Conditions::none().status_5xx();
        assert!(x.matches_status(StatusCode::from_u16(599).unwrap()));
        assert!(!x.matches_status(StatusCode::from_u16(499).unwrap()));
    }

    #[test]
    fn grpc_status_header_is_read_from_trailers_only_responses() {
        let c = Conditions::none().grpc(GrpcCode::Unavailable);
        assert_eq!(
            c.match_response(&resp(200, Some("14"))),
            Some(ResponseFailure::Grpc(GrpcCode::Unavailable))
        );
        assert_eq!(c.match_response(&resp(200, Some("0"))), None);
        assert_eq!(c.match_response(&resp(200, Some("x"))), None);
        assert_eq!(c.match_response(&resp(200, Some("99"))), None);
        assert_eq!(
            GrpcCode::from_name("deadline_exceeded"),
            Some(GrpcCode::DeadlineExceeded)
        );
        assert_eq!(GrpcCode::ResourceExhausted.name(), "resource-exhausted");
    }
}
