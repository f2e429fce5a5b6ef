//! Trace-context headers: W3C `traceparent`/`tracestate` and B3 (single `b3` header and the
//! `x-b3-*` multi-header form). Extraction prefers W3C, then B3 single, then B3 multi.

use http::{HeaderMap, HeaderName, HeaderValue};
use otlp_mesh_config::telemetry::Propagation;

/// A remote or local span context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's sampled flag; `None` when the caller deferred the decision (B3 without flag).
    pub sampled: Option<bool>,
    /// Vendor state passed through unchanged (W3C only).
    pub tracestate: Option<HeaderValue>,
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Whether `name` is one of the trace-context headers this module reads or replaces.
fn is_trace_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "traceparent" || n == "tracestate" || n == "b3" || n.starts_with("x-b3-")
}

/// Past this many header names a scan for trace headers costs more than looking them up.
const SCAN_MAX: usize = 24;

/// Whether `headers` may hold a trace header: one pass over the (few) names of a typical
/// request instead of hashing every trace header name (this runs for every request).
fn may_have_trace_headers(headers: &HeaderMap) -> bool {
    headers.keys_len() > SCAN_MAX || headers.keys().any(is_trace_header)
}

/// Reads the incoming trace context; invalid headers count as absent (a new trace starts).
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    if !may_have_trace_headers(headers) {
        return None;
    }
    if let Some(tp) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
        && let Some(mut ctx) = parse_traceparent(tp)
    {
        // Copied: a clone would share (and pin) the connection's read buffer until the span is sent.
        ctx.tracestate = headers
            .get(TRACESTATE)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        return Some(ctx);
    }
    if let Some(b3) = headers.get(B3).and_then(|v| v.to_str().ok())
        && let Some(ctx) = parse_b3_single(b3)
    {
        return Some(ctx);
    }
    let trace = headers.get(B3_TRACE).and_then(|v| v.to_str().ok())?;
    let span = headers.get(B3_SPAN).and_then(|v| v.to_str().ok())?;
    let trace_id = parse_b3_trace_id(trace)?;
    let span_id = hex_array::<8>(span)?;
    let sampled = if headers.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1") {
        Some(true)
    } else {
        match headers.get(B3_SAMPLED).map(HeaderValue::as_bytes) {
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            _ => None,
        }
    };
    valid(trace_id, span_id).then_some(TraceContext {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

/// Writes `ctx` (whose `span_id` is the caller-side span) in each of `formats`, replacing any
/// trace headers the request carried.
pub fn inject(headers: &mut HeaderMap, ctx: &TraceContext, formats: &[Propagation]) {
    if may_have_trace_headers(headers) {
        for h in [
            &TRACEPARENT,
            &B3,
            &B3_TRACE,
            &B3_SPAN,
            &B3_PARENT,
            &B3_SAMPLED,
            &B3_FLAGS,
        ] {
            headers.remove(h);
        }
    }
    let sampled = ctx.sampled.unwrap_or(false);
    let mut trace = [0u8; 32];
    let mut span = [0u8; 16];
    hex_into(&ctx.trace_id, &mut trace);
    hex_into(&ctx.span_id, &mut span);
    // Hex is ASCII: the text forms are only checked by the B3 formats that format them.
    let text = || (ascii(&trace), ascii(&span));
    for f in formats {
        match f {
            Propagation::W3c => {
                // 00-{32 hex}-{16 hex}-{flags}: built on the stack (this runs per upstream try).
                let mut v = [0u8; 55];
                v[..3].copy_from_slice(b"00-");
                v[3..35].copy_from_slice(&trace);
                v[35] = b'-';
                v[36..52].copy_from_slice(&span);
                v[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    headers.insert(TRACEPARENT, v);
                }
            }
            Propagation::B3 => {
                let (trace, span) = text();
                let v = format!("{trace}-{span}-{}", u8::from(sampled));
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(B3, v);
                }
            }
            Propagation::B3Multi => {
                let (trace, span) = text();
                if let (Ok(t), Ok(s)) = (HeaderValue::from_str(trace), HeaderValue::from_str(span))
                {
                    headers.insert(B3_TRACE, t);
                    headers.insert(B3_SPAN, s);
                    headers.insert(
                        B3_SAMPLED,
                        HeaderValue::from_static(if sampled { "1" } else { "0" }),
                    );
                }
            }
        }
    }
}

fn parse_traceparent(v: &str) -> Option<TraceContext> {
    // version-traceid-spanid-flags; future versions may append fields after the flags.
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let trace_id = hex_array::<16>(trace)?;
    let span_id = hex_array::<8>(span)?;
    valid(trace_id, span_id).then_some(TraceContext {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate: None,
    })
}

fn parse_b3_single(v: &str) -> Option<TraceContext> {
    // {trace}-{span}[-{sampled}[-{parent}]]; a lone "0"/"d" is a sampling-only header.
    let mut parts = v.trim().split('-');
    let trace_id = parse_b3_trace_id(parts.next()?)?;
    let span_id = hex_array::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        None => None,
        Some(_) => return None,
    };
    valid(trace_id, span_id).then_some(TraceContext {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

/// B3 trace ids are 64 or 128 bits; 64-bit ones are left-padded with zeros.
fn parse_b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_array::<16>(s),
        16 => {
            let low = hex_array::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn valid(trace: [u8; 16], span: [u8; 8]) -> bool {
    trace != [0; 16] && span != [0; 8]
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The two lower-case hex digits of every byte (one lookup per byte; this runs for 24 bytes of
/// ids per upstream attempt).
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// Lower-case hex of `bytes` into `out` (twice as long; a shorter `out` gets what fits).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lower-case hex string of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    ascii(&out).to_string()
}

fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn w3c_round_trip_keeps_tracestate() {
        let h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let ctx = extract(&h).unwrap();
        assert_eq!(hex(&ctx.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&ctx.span_id), "b7ad6b7169203331");
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(ctx.tracestate.as_ref().unwrap(), "congo=t61rcWkgMzE");
        let mut out = HeaderMap::new();
        inject(&mut out, &ctx, &[Propagation::W3c]);
        assert_eq!(
            out.get("traceparent").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "garbage",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            extract(&headers(&[(
                "traceparent",
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more"
            )]))
            .is_some()
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let ctx = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(hex(&ctx.span_id), "e457b5a2e4d86bd1");
        assert_eq!(ctx.sampled, Some(true));
        let ctx = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(hex(&ctx.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(ctx.sampled, Some(false));
        let mut out = HeaderMap::new();
        inject(&mut out, &ctx, &[Propagation::B3, Propagation::B3Multi]);
        assert_eq!(
            out.get("b3").unwrap(),
            "0000000000000000463ac35c9f6413ad-a2fb4a1d1a96d312-0"
        );
        assert_eq!(out.get("x-b3-spanid").unwrap(), "a2fb4a1d1a96d312");
        assert_eq!(out.get("x-b3-sampled").unwrap(), "0");
    }

    #[test]
    fn inject_replaces_incoming_headers() {
        let mut h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]);
        let ctx = TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            sampled: Some(false),
            tracestate: None,
        };
        inject(&mut h, &ctx, &[Propagation::W3c]);
        assert_eq!(
            h.get("traceparent").unwrap(),
            "00-01010101010101010101010101010101-0202020202020202-00"
        );
        assert!(h.get("x-b3-spanid").is_none());
    }

    #[test]
    fn trace_headers_are_found_among_few_and_many_others() {
        // Below and above the scan limit: the scan and the lookups must agree.
        for others in [0, 3, SCAN_MAX - 3, SCAN_MAX + 10] {
            let names: Vec<String> = (0..others).map(|i| format!("x-other-{i}")).collect();
            let mut pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
            assert!(extract(&headers(&pairs)).is_none(), "{others}");
            pairs.push(("x-b3-traceid", "463ac35c9f6413ad"));
            pairs.push(("x-b3-spanid", "a2fb4a1d1a96d312"));
            pairs.push(("x-b3-flags", "1"));
            let mut h = headers(&pairs);
            let ctx = extract(&h).expect("b3 multi context");
            assert_eq!(ctx.sampled, Some(true), "{others}");
            inject(&mut h, &ctx, &[Propagation::W3c]);
            for gone in ["x-b3-traceid", "x-b3-spanid", "x-b3-flags"] {
                assert!(h.get(gone).is_none(), "{gone} with {others} others");
            }
            assert!(h.get("traceparent").is_some());
            assert_eq!(h.keys_len(), others + 1);
        }
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
        let mut short = [b'.'; 3];
        hex_into(&[0xab, 0xcd], &mut short);
        assert_eq!(&short, b"ab.");
    }

    #[test]
    fn inject_without_incoming_trace_headers_adds_only_its_own() {
        let mut h = headers(&[("host", "shop"), ("user-agent", "t")]);
        let ctx = TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            sampled: Some(true),
            tracestate: None,
        };
        inject(&mut h, &ctx, &[Propagation::W3c, Propagation::B3]);
        assert_eq!(h.keys_len(), 4);
        assert_eq!(
            h.get("b3").unwrap(),
            "01010101010101010101010101010101-0202020202020202-1"
        );
    }
}
