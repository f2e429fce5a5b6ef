//! A zero-allocation walk over encoded OTLP export requests: checks the protobuf framing down to
//! each item and counts items, without decoding them.
//!
//! What it checks: every length-delimited field fits its parent, varints end, wire types are
//! known, the nesting of the export request down to spans / data points / log records is well
//! formed, and span trace and span ids have the sizes the specification requires. What it does
//! not check (a full decode does): UTF-8 of strings and the inside of attributes.

use super::Signal;
use std::fmt;

/// Why a payload is not a valid export request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// Byte offset where the walk stopped.
    pub offset: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid protobuf at byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for WireError {}

/// What a scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Spans, metric data points or log records.
    pub items: u64,
    /// Spans whose trace id is not 16 bytes or span id not 8 bytes (to be rejected).
    pub invalid: u64,
}

/// The value of one field.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Calls `f(field_number, value, offset)` for each top-level field of `buf`.
pub fn for_each_field<'a>(
    buf: &'a [u8],
    base: usize,
    mut f: impl FnMut(u32, Value<'a>, usize) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut pos = 0;
    while let Some((field, value, at)) = next_field(buf, &mut pos, base)? {
        f(field, value, at)?;
    }
    Ok(())
}

/// Reads the field of `buf` at `*pos` and moves `*pos` past it: its number, its value and its
/// offset (`base` is `buf`'s own offset in the payload; a length-delimited value's offset is that
/// of its first byte, any other's that of its key). `None` at the end of `buf`.
pub fn next_field<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    base: usize,
) -> Result<Option<(u32, Value<'a>, usize)>, WireError> {
    let Some(rest) = buf.get(*pos..).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let at = base + *pos;
    let (key, n) = varint(rest).ok_or(WireError {
        offset: at,
        reason: "truncated field key",
    })?;
    let mut p = *pos + n;
    let field = (key >> 3) as u32;
    if field == 0 || key >> 3 > u64::from(u32::MAX >> 3) {
        return Err(WireError {
            offset: at,
            reason: "field number 0 or out of range",
        });
    }
    let (value, offset) = match key & 7 {
        0 => {
            let (v, n) = varint(&buf[p..]).ok_or(WireError {
                offset: base + p,
                reason: "truncated varint",
            })?;
            p += n;
            (Value::Varint(v), at)
        }
        1 => {
            let a = fixed::<8>(buf, &mut p, base, "truncated fixed64")?;
            (Value::Fixed64(u64::from_le_bytes(a)), at)
        }
        2 => {
            let (len, n) = varint(&buf[p..]).ok_or(WireError {
                offset: base + p,
                reason: "truncated length",
            })?;
            p += n;
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| p.checked_add(l))
                .filter(|e| *e <= buf.len())
                .ok_or(WireError {
                    offset: base + p,
                    reason: "length runs past the end of its message",
                })?;
            let start = p;
            p = end;
            (Value::Bytes(&buf[start..end]), base + start)
        }
        5 => {
            let a = fixed::<4>(buf, &mut p, base, "truncated fixed32")?;
            (Value::Fixed32(u32::from_le_bytes(a)), at)
        }
        _ => {
            return Err(WireError {
                offset: at,
                reason: "unsupported wire type (groups are not used by OTLP)",
            });
        }
    };
    *pos = p;
    Ok(Some((field, value, offset)))
}

/// The `N` bytes of `buf` at `*p` (moving `*p` past them).
fn fixed<const N: usize>(
    buf: &[u8],
    p: &mut usize,
    base: usize,
    reason: &'static str,
) -> Result<[u8; N], WireError> {
    let b = buf.get(*p..*p + N).ok_or(WireError {
        offset: base + *p,
        reason,
    })?;
    *p += N;
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    Ok(a)
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

pub(crate) fn expect_message<'a>(v: Value<'a>, at: usize) -> Result<&'a [u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError {
            offset: at,
            reason: "expected a nested message",
        }),
    }
}

/// Checks `payload` as an export request of `signal` and counts its items.
pub fn scan(signal: Signal, payload: &[u8]) -> Result<Scan, WireError> {
    let mut scan = Scan::default();
    // Level 1: Export*ServiceRequest.resource_* (1); level 2: Resource*.scope_* (2);
    // level 3: Scope*.{spans,metrics,log_records} (2).
    for_each_field(payload, 0, |f, v, at| {
        if f != 1 {
            return Ok(());
        }
        let resource = expect_message(v, at)?;
        for_each_field(resource, at, |f, v, at| {
            if f == 1 {
                let r = expect_message(v, at)?;
                return for_each_field(r, at, |_, _, _| Ok(()));
            }
            if f != 2 {
                return Ok(());
            }
            let scope = expect_message(v, at)?;
            for_each_field(scope, at, |f, v, at| {
                if f != 2 {
                    return Ok(());
                }
                let item = expect_message(v, at)?;
                match signal {
                    Signal::Traces => span(item, at, &mut scan),
                    Signal::Metrics => metric(item, at, &mut scan),
                    Signal::Logs => {
                        scan.items += 1;
                        for_each_field(item, at, |_, _, _| Ok(()))
                    }
                }
            })
        })
    })?;
    Ok(scan)
}

fn span(item: &[u8], at: usize, scan: &mut Scan) -> Result<(), WireError> {
    let (mut trace_ok, mut span_ok) = (false, false);
    for_each_field(item, at, |f, v, _| {
        match (f, v) {
            (1, Value::Bytes(b)) => trace_ok = b.len() == 16 && b.iter().any(|x| *x != 0),
            (2, Value::Bytes(b)) => span_ok = b.len() == 8 && b.iter().any(|x| *x != 0),
            _ => {}
        }
        Ok(())
    })?;
    scan.items += 1;
    if !(trace_ok && span_ok) {
        scan.invalid += 1;
    }
    Ok(())
}

fn metric(item: &[u8], at: usize, scan: &mut Scan) -> Result<(), WireError> {
    // Metric.data: gauge 5, sum 7, histogram 9, exponential_histogram 10, summary 11;
    // each holds repeated data_points = 1.
    for_each_field(item, at, |f, v, at| {
        if !matches!(f, 5 | 7 | 9 | 10 | 11) {
            return Ok(());
        }
        let data = expect_message(v, at)?;
        for_each_field(data, at, |f, v, at| {
            if f == 1 {
                expect_message(v, at)?;
                scan.items += 1;
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, metric,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn span(i: u8) -> Span {
        Span {
            trace_id: vec![i + 1; 16],
            span_id: vec![i + 1; 8],
            name: format!("span-{i}"),
            ..Default::default()
        }
    }

    fn traces(n: u8) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n).map(span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_spans_and_flags_bad_ids() {
        let mut req = traces(5);
        req.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1; 15];
        req.resource_spans[0].scope_spans[0].spans[2].span_id = vec![0; 8];
        let s = scan(Signal::Traces, &req.encode_to_vec()).unwrap();
        assert_eq!(
            s,
            Scan {
                items: 5,
                invalid: 2
            }
        );
    }

    #[test]
    fn concatenation_is_merging() {
        let a = traces(2).encode_to_vec();
        let b = traces(3).encode_to_vec();
        let joined = [a, b].concat();
        assert_eq!(scan(Signal::Traces, &joined).unwrap().items, 5);
        let merged = ExportTraceServiceRequest::decode(joined.as_slice()).unwrap();
        assert_eq!(merged.resource_spans.len(), 2);
    }

    #[test]
    fn counts_metric_points_and_log_records() {
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "g".into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint::default(); 3],
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "h".into(),
                            data: Some(metric::Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint::default(); 2],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(
            scan(Signal::Metrics, &req.encode_to_vec()).unwrap().items,
            5
        );
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 4],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(scan(Signal::Logs, &logs.encode_to_vec()).unwrap().items, 4);
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let full = traces(3).encode_to_vec();
        for cut in 1..full.len() {
            // Every strict prefix either fails or (at a field boundary of the top level) counts
            // fewer spans; none panics.
            match scan(Signal::Traces, &full[..cut]) {
                Ok(s) => assert!(s.items < 3),
                Err(e) => assert!(e.offset <= cut),
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(scan(Signal::Traces, &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(scan(Signal::Traces, &[0x0b]).is_err()); // wire type 3 (group)
        assert!(scan(Signal::Traces, &[0x08]).is_err()); // varint without value
        assert_eq!(scan(Signal::Traces, &[]).unwrap(), Scan::default());
    }
}
