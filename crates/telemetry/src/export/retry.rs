//! When a failed export is retried and how long to wait, per the OTLP specification: the
//! decision is a pure function of the failure ([`classify`]); waiting is [`Backoff`] plus the
//! server's hint (gRPC `RetryInfo`, HTTP `Retry-After`).

use std::fmt;
use std::time::{Duration, SystemTime};

/// gRPC status codes as the `i32` of `grpc-status` / `google.rpc.Status.code` (constants, so
/// they can be matched on), from the retry layer's [`GrpcCode`].
pub mod code {
    use otlp_mesh_resilience::GrpcCode;

    pub const OK: i32 = GrpcCode::Ok as i32;
    pub const CANCELLED: i32 = GrpcCode::Cancelled as i32;
    pub const UNKNOWN: i32 = GrpcCode::Unknown as i32;
    pub const INVALID_ARGUMENT: i32 = GrpcCode::InvalidArgument as i32;
    pub const DEADLINE_EXCEEDED: i32 = GrpcCode::DeadlineExceeded as i32;
    pub const NOT_FOUND: i32 = GrpcCode::NotFound as i32;
    pub const ALREADY_EXISTS: i32 = GrpcCode::AlreadyExists as i32;
    pub const PERMISSION_DENIED: i32 = GrpcCode::PermissionDenied as i32;
    pub const RESOURCE_EXHAUSTED: i32 = GrpcCode::ResourceExhausted as i32;
    pub const FAILED_PRECONDITION: i32 = GrpcCode::FailedPrecondition as i32;
    pub const ABORTED: i32 = GrpcCode::Aborted as i32;
    pub const OUT_OF_RANGE: i32 = GrpcCode::OutOfRange as i32;
    pub const UNIMPLEMENTED: i32 = GrpcCode::Unimplemented as i32;
    pub const INTERNAL: i32 = GrpcCode::Internal as i32;
    pub const UNAVAILABLE: i32 = GrpcCode::Unavailable as i32;
    pub const DATA_LOSS: i32 = GrpcCode::DataLoss as i32;
    pub const UNAUTHENTICATED: i32 = GrpcCode::Unauthenticated as i32;

    /// The code's canonical name (`UNAVAILABLE`), or `UNKNOWN_CODE` outside 0–16.
    pub fn name(code: i32) -> impl std::fmt::Display {
        Name(u8::try_from(code).ok().and_then(GrpcCode::from_u8))
    }

    struct Name(Option<GrpcCode>);

    impl std::fmt::Display for Name {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let Some(c) = self.0 else {
                return f.write_str("UNKNOWN_CODE");
            };
            // The retry layer spells names in kebab case; gRPC's canonical form is upper snake.
            for ch in c.name().chars() {
                let up = if ch == '-' {
                    '_'
                } else {
                    ch.to_ascii_uppercase()
                };
                std::fmt::Write::write_char(f, up)?;
            }
            Ok(())
        }
    }
}

/// How one export attempt failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The server answered with a non-OK gRPC status.
    Grpc {
        code: i32,
        message: String,
        /// The status details carried a `google.rpc.RetryInfo` (with this delay, if any).
        retry_info: Option<Option<Duration>>,
    },
    /// The server answered OTLP/HTTP with a non-2xx status.
    Http {
        status: u16,
        message: String,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Connecting, TLS, or the HTTP exchange failed (no status from the server).
    Transport(String),
    /// No complete answer within the export timeout.
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Grpc { code, message, .. } => {
                write!(f, "gRPC status {} ({code})", self::code::name(*code))?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Failure::Http {
                status, message, ..
            } => {
                write!(f, "HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Failure::Transport(e) => write!(f, "transport error: {e}"),
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again; `after` is the server's requested delay, if it gave one.
    Retryable { after: Option<Duration> },
    /// Do not retry; the reason names the status.
    Permanent(String),
}

/// The OTLP specification's retry rules.
///
/// gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are
/// retryable; RESOURCE_EXHAUSTED only when the server sent `RetryInfo` (it signals that
/// recovery is possible); everything else is permanent. HTTP: 429, 502, 503 and 504 are
/// retryable (honouring `Retry-After`); other statuses are permanent. Failures without a
/// status (connection errors, timeouts) are retryable.
pub fn classify(failure: &Failure) -> Decision {
    use self::code::*;
    match failure {
        Failure::Grpc {
            code, retry_info, ..
        } => {
            let after = retry_info.flatten();
            match *code {
                CANCELLED | DEADLINE_EXCEEDED | ABORTED | OUT_OF_RANGE | UNAVAILABLE
                | DATA_LOSS => Decision::Retryable { after },
                RESOURCE_EXHAUSTED if retry_info.is_some() => Decision::Retryable { after },
                _ => Decision::Permanent(failure.to_string()),
            }
        }
        Failure::Http {
            status,
            retry_after,
            ..
        } => match status {
            429 | 502 | 503 | 504 => Decision::Retryable {
                after: *retry_after,
            },
            _ => Decision::Permanent(failure.to_string()),
        },
        Failure::Transport(_) | Failure::Timeout(_) => Decision::Retryable { after: None },
    }
}

/// Exponential backoff with partial jitter: the interval starts at `initial` and doubles up to
/// `max`; each wait is uniform in `[interval / 2, interval]`, so clients that failed together
/// spread out without ever retrying much sooner than the schedule.
#[derive(Clone, Debug)]
pub struct Backoff {
    interval: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            interval: initial,
            max: max.max(initial),
        }
    }

    /// The wait before the next attempt; advances the schedule.
    pub fn next_wait(&mut self) -> Duration {
        let interval = self.interval;
        self.interval = (interval * 2).min(self.max);
        let half = interval / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A server hint longer than this is not believed (a confused or hostile server could otherwise
/// park the queue forever).
pub const MAX_HINT: Duration = Duration::from_secs(300);

/// The wait before the next attempt: the backoff's, or the server's hint when longer.
pub fn wait_for(backoff: &mut Backoff, hint: Option<Duration>) -> Duration {
    let wait = backoff.next_wait();
    match hint {
        Some(h) => wait.max(h.min(MAX_HINT)),
        None => wait,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date relative to `now` (the proxy's retry
/// layer's parser, which takes all three RFC 9110 date forms).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    otlp_mesh_resilience::retry::parse_retry_after(value.as_bytes(), now)
}

pub use crate::otlp::status::{
    ProtoAny, ProtoDuration, RETRY_INFO_TYPE, RetryInfo, RpcStatus, retry_info_from_details,
    status_details_with_retry_info,
};

#[cfg(test)]
mod tests {
    use super::code::*;
    use super::*;

    fn grpc(code: i32, retry_info: Option<Option<Duration>>) -> Failure {
        Failure::Grpc {
            code,
            message: "m".into(),
            retry_info,
        }
    }

    fn http(status: u16, retry_after: Option<Duration>) -> Failure {
        Failure::Http {
            status,
            message: String::new(),
            retry_after,
        }
    }

    #[test]
    fn grpc_codes_follow_the_spec() {
        for c in [
            CANCELLED,
            DEADLINE_EXCEEDED,
            ABORTED,
            OUT_OF_RANGE,
            UNAVAILABLE,
            DATA_LOSS,
        ] {
            assert_eq!(
                classify(&grpc(c, None)),
                Decision::Retryable { after: None },
                "{}",
                code::name(c)
            );
        }
        for c in [
            UNKNOWN,
            INVALID_ARGUMENT,
            NOT_FOUND,
            ALREADY_EXISTS,
            PERMISSION_DENIED,
            FAILED_PRECONDITION,
            UNIMPLEMENTED,
            INTERNAL,
            UNAUTHENTICATED,
            RESOURCE_EXHAUSTED,
        ] {
            assert!(
                matches!(classify(&grpc(c, None)), Decision::Permanent(_)),
                "{}",
                code::name(c)
            );
        }
        let d = Duration::from_millis(250);
        assert_eq!(
            classify(&grpc(RESOURCE_EXHAUSTED, Some(Some(d)))),
            Decision::Retryable { after: Some(d) }
        );
        assert_eq!(
            classify(&grpc(RESOURCE_EXHAUSTED, Some(None))),
            Decision::Retryable { after: None }
        );
        assert_eq!(
            classify(&grpc(UNAVAILABLE, Some(Some(d)))),
            Decision::Retryable { after: Some(d) }
        );
        let Decision::Permanent(reason) = classify(&grpc(INVALID_ARGUMENT, None)) else {
            panic!("permanent expected");
        };
        assert_eq!(reason, "gRPC status INVALID_ARGUMENT (3): m");
    }

    #[test]
    fn http_statuses_follow_the_spec() {
        let s = Some(Duration::from_secs(1));
        for st in [429, 502, 503, 504] {
            assert_eq!(
                classify(&http(st, s)),
                Decision::Retryable { after: s },
                "{st}"
            );
        }
        for st in [400, 401, 403, 404, 405, 413, 500, 501] {
            assert!(matches!(classify(&http(st, None)), Decision::Permanent(_)));
        }
        assert_eq!(
            classify(&Failure::Transport("refused".into())),
            Decision::Retryable { after: None }
        );
        assert_eq!(
            classify(&Failure::Timeout(Duration::from_secs(1))),
            Decision::Retryable { after: None }
        );
    }

    #[test]
    fn retry_info_round_trips_through_the_header() {
        let d = Duration::from_millis(1500);
        let header = status_details_with_retry_info(RESOURCE_EXHAUSTED, "slow down", d);
        assert_eq!(retry_info_from_details(header.as_bytes()), Some(Some(d)));
        // Padded and URL-safe spellings decode too.
        let mut padded = header.clone();
        while !padded.len().is_multiple_of(4) {
            padded.push('=');
        }
        assert_eq!(retry_info_from_details(padded.as_bytes()), Some(Some(d)));
        let url = header.replace('+', "-").replace('/', "_");
        assert_eq!(retry_info_from_details(url.as_bytes()), Some(Some(d)));
        // A status without RetryInfo, and garbage.
        use prost::Message;
        let plain = RpcStatus {
            code: 8,
            message: "x".into(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                value: vec![],
            }],
        };
        use base64::Engine;
        let plain = base64::engine::general_purpose::STANDARD_NO_PAD.encode(plain.encode_to_vec());
        assert_eq!(retry_info_from_details(plain.as_bytes()), None);
        assert_eq!(retry_info_from_details(b"!!!"), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        // RFC 850 and asctime dates too.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:57 GMT", now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:39 1994", now),
            Some(Duration::from_secs(2))
        );
        for bad in [
            "soon",
            "-1",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_jitter_and_caps() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut b = Backoff::new(initial, max);
        let mut interval = initial;
        for _ in 0..10 {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(b.next_wait()).await;
            let waited = start.elapsed();
            assert!(
                waited >= interval / 2 && waited <= interval,
                "{waited:?} vs {interval:?}"
            );
            interval = (interval * 2).min(max);
        }
        // Capped: the last waits sit in [max/2, max].
        assert_eq!(interval, max);
    }

    #[test]
    fn server_hint_wins_when_longer() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        let w = wait_for(&mut b, Some(Duration::from_secs(1)));
        assert_eq!(w, Duration::from_secs(1));
        let w = wait_for(&mut b, Some(Duration::from_secs(3600)));
        assert_eq!(w, MAX_HINT);
        let w = wait_for(&mut b, Some(Duration::ZERO));
        assert!(w >= Duration::from_millis(10) && w <= Duration::from_millis(20));
    }
}
