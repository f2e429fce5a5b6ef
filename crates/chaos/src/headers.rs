//! Header-driven faults (`x-fault-*`): only where the proxy enables them for the listener (off by
//! default, so a client cannot break production by sending a header), and capped by config.

use crate::grpc::parse_grpc_code;
use crate::rule::AbortAction;
use crate::units::{ByteRate, FaultDuration};
use http::{HeaderMap, HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Delay the request by this many milliseconds (capped at `max_delay`).
pub const X_FAULT_DELAY_MS: HeaderName = HeaderName::from_static("x-fault-delay-ms");
/// Abort with this HTTP status (200–599).
pub const X_FAULT_ABORT_STATUS: HeaderName = HeaderName::from_static("x-fault-abort-status");
/// Abort with this gRPC status (0–16 or a name); wins over `x-fault-abort-status`.
pub const X_FAULT_ABORT_GRPC_STATUS: HeaderName =
    HeaderName::from_static("x-fault-abort-grpc-status");
/// Chance (0–100, default 100) that the requested faults apply to this request.
pub const X_FAULT_PERCENT: HeaderName = HeaderName::from_static("x-fault-percent");
/// Throttle the response body to this many bytes per second (at least `min_bytes_per_second`).
pub const X_FAULT_THROTTLE_BPS: HeaderName = HeaderName::from_static("x-fault-throttle-bps");

const ALL: [HeaderName; 5] = [
    X_FAULT_DELAY_MS,
    X_FAULT_ABORT_STATUS,
    X_FAULT_ABORT_GRPC_STATUS,
    X_FAULT_PERCENT,
    X_FAULT_THROTTLE_BPS,
];

/// Caps on header-driven faults for a listener that enables them (passing `Some` enables them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFaultLimits {
    /// Longest delay a header may ask for; longer requests are cut to this. Default `10s`.
    #[serde(default = "default_max_delay")]
    pub max_delay: FaultDuration,
    /// Lowest throttle rate a header may ask for; lower requests are raised to this. Default `1KiB`.
    #[serde(default = "default_min_rate")]
    pub min_bytes_per_second: ByteRate,
    /// Whether `x-fault-abort-*` headers are honoured. Default `true`.
    #[serde(default = "yes")]
    pub allow_abort: bool,
    /// Most requests with an active header-driven fault at once; excess pass clean. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
}

fn default_max_delay() -> FaultDuration {
    FaultDuration(Duration::from_secs(10))
}
fn default_min_rate() -> ByteRate {
    ByteRate(1024)
}
fn yes() -> bool {
    true
}

impl Default for HeaderFaultLimits {
    fn default() -> Self {
        HeaderFaultLimits {
            max_delay: default_max_delay(),
            min_bytes_per_second: default_min_rate(),
            allow_abort: true,
            max_active: None,
        }
    }
}

/// Faults a request asked for through its headers, already capped.
#[derive(Debug)]
pub(crate) struct HeaderRequest {
    pub percent: f64,
    pub delay: Option<Duration>,
    pub abort: Option<AbortAction>,
    pub throttle: Option<u64>,
}

fn value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Reads the `x-fault-*` headers; `None` when there are none, none is usable, or
/// `x-fault-percent` is malformed (then nothing is injected).
pub(crate) fn parse(headers: &HeaderMap, limits: &HeaderFaultLimits) -> Option<HeaderRequest> {
    if !ALL.iter().any(|h| headers.contains_key(h)) {
        return None;
    }
    let percent = match value(headers, &X_FAULT_PERCENT) {
        None => 100.0,
        Some(p) => match p.parse::<f64>() {
            Ok(p) if p.is_finite() && (0.0..=100.0).contains(&p) => p,
            _ => return None,
        },
    };
    let delay = value(headers, &X_FAULT_DELAY_MS)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(limits.max_delay.0))
        .filter(|d| !d.is_zero());
    let abort = if limits.allow_abort {
        let grpc = value(headers, &X_FAULT_ABORT_GRPC_STATUS)
            .and_then(parse_grpc_code)
            .map(|code| AbortAction::Grpc {
                code,
                message: None,
            });
        grpc.or_else(|| {
            value(headers, &X_FAULT_ABORT_STATUS)
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .map(|status| AbortAction::Http { status, body: None })
        })
    } else {
        None
    };
    let throttle = value(headers, &X_FAULT_THROTTLE_BPS)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|bps| bps.max(limits.min_bytes_per_second.0).max(1));
    if delay.is_none() && abort.is_none() && throttle.is_none() {
        return None;
    }
    Some(HeaderRequest {
        percent,
        delay,
        abort,
        throttle,
    })
}

/// Removes the `x-fault-*` headers, so a fault asked for at this hop is not asked again upstream.
pub fn strip_fault_headers(headers: &mut HeaderMap) {
    for h in &ALL {
        headers.remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn caps_apply() {
        let limits = HeaderFaultLimits {
            max_delay: FaultDuration::from_millis(2000),
            min_bytes_per_second: ByteRate(4096),
            ..HeaderFaultLimits::default()
        };
        let h = headers(&[
            (&X_FAULT_DELAY_MS, "60000"),
            (&X_FAULT_THROTTLE_BPS, "10"),
            (&X_FAULT_PERCENT, "12.5"),
        ]);
        let r = parse(&h, &limits).unwrap();
        assert_eq!(r.delay, Some(Duration::from_secs(2)));
        assert_eq!(r.throttle, Some(4096));
        assert_eq!(r.percent, 12.5);
        assert!(r.abort.is_none());
    }

    #[test]
    fn aborts_and_bad_values() {
        let limits = HeaderFaultLimits::default();
        let h = headers(&[
            (&X_FAULT_ABORT_STATUS, "503"),
            (&X_FAULT_ABORT_GRPC_STATUS, "unavailable"),
        ]);
        assert!(matches!(
            parse(&h, &limits).unwrap().abort,
            Some(AbortAction::Grpc { code: 14, .. })
        ));
        let h = headers(&[(&X_FAULT_ABORT_STATUS, "42")]);
        assert!(parse(&h, &limits).is_none());
        let h = headers(&[(&X_FAULT_ABORT_STATUS, "503"), (&X_FAULT_PERCENT, "150")]);
        assert!(parse(&h, &limits).is_none());
        let no_abort = HeaderFaultLimits {
            allow_abort: false,
            ..HeaderFaultLimits::default()
        };
        let h = headers(&[(&X_FAULT_ABORT_STATUS, "503")]);
        assert!(parse(&h, &no_abort).is_none());
        assert!(parse(&HeaderMap::new(), &limits).is_none());
    }

    #[test]
    fn strip_removes_only_fault_headers() {
        let mut h = headers(&[(&X_FAULT_DELAY_MS, "5"), (&X_FAULT_PERCENT, "1")]);
        h.insert("x-other", HeaderValue::from_static("keep"));
        strip_fault_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn limits_deserialize_with_defaults() {
        let l: HeaderFaultLimits = serde_json::from_str(r#"{"max_delay":"3s"}"#).unwrap();
        assert_eq!(l.max_delay, FaultDuration::from_millis(3000));
        assert_eq!(l.min_bytes_per_second, ByteRate(1024));
        assert!(serde_json::from_str::<HeaderFaultLimits>(r#"{"max":"3s"}"#).is_err());
    }
}
