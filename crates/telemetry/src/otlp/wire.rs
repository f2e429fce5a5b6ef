//! A zero-allocation walk over encoded OTLP export requests: checks the protobuf framing down to
//! each item and counts items, without decoding them.
//!
//! What it checks: every length-delimited field fits its parent, varints end, wire types are
//! known, the nesting of the export request down to spans / data points / log records is well
//! formed, and span trace and span ids have the sizes the specification requires. What it does
//! not check (a full decode does): UTF-8 of strings and the inside of attributes.

use super::Signal;
use std::fmt;
use std::ops::Range;

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

/// Calls `f(field_number, value, offset)` for each top-level field of `buf`; a framing error
/// and `f`'s own errors end the walk (`E` is the caller's error type, which a [`WireError`]
/// converts into).
pub fn for_each_field<'a, E: From<WireError>>(
    buf: &'a [u8],
    base: usize,
    mut f: impl FnMut(u32, Value<'a>, usize) -> Result<(), E>,
) -> Result<(), E> {
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

/// A protobuf varint at the start of `buf` and its length in bytes; `None` when it does not end
/// within `buf` or 10 bytes.
#[inline]
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    // Most keys and lengths in OTLP fit one byte.
    match buf.first() {
        Some(&b) if b < 0x80 => Some((u64::from(b), 1)),
        _ => varint_long(buf),
    }
}

/// [`varint`] past its first byte (or of an empty `buf`).
fn varint_long(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The bytes of a nested message field.
pub(crate) fn expect_message<'a>(v: Value<'a>, at: usize) -> Result<&'a [u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError {
            offset: at,
            reason: "expected a nested message",
        }),
    }
}

/// One step of a [`Walk`].
#[derive(Clone, Copy, Debug)]
pub enum Step<'a> {
    /// A `Resource*` entry begins: its bytes and their offset.
    Group(&'a [u8], usize),
    /// The entry's `resource` (field 1), where it stands among the entry's fields.
    Resource(&'a [u8], usize),
    /// An item of the entry: a span, metric or log record.
    Item(&'a [u8], usize),
}

/// A resumable walk over an export request's framing: `Resource*` entries (field 1), their
/// `Scope*` entries (field 2), their items (field 2) — the same three levels for every signal.
/// Every step consumes a field or leaves a level, so a walk ends within the payload's length.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Position among the export request's fields.
    pos: usize,
    /// The `Resource*` entry being read (its bytes in the payload) and the position among its
    /// fields.
    group: Option<(Range<usize>, usize)>,
    /// The `Scope*` entry being read, likewise.
    scope: Option<(Range<usize>, usize)>,
}

impl Walk {
    /// The next step over `payload`, which must be the same payload on every call; `None` at
    /// its end.
    pub fn next<'a>(&mut self, payload: &'a [u8]) -> Result<Option<Step<'a>>, WireError> {
        loop {
            if let Some((scope, pos)) = &mut self.scope {
                match next_field(part(payload, scope)?, pos, scope.start)? {
                    Some((2, v, at)) => return Ok(Some(Step::Item(expect_message(v, at)?, at))),
                    Some(_) => {}
                    None => self.scope = None,
                }
            } else if let Some((group, pos)) = &mut self.group {
                match next_field(part(payload, group)?, pos, group.start)? {
                    Some((1, v, at)) => {
                        return Ok(Some(Step::Resource(expect_message(v, at)?, at)));
                    }
                    Some((2, v, at)) => {
                        let scope = expect_message(v, at)?;
                        self.scope = Some((at..at + scope.len(), 0));
                    }
                    Some(_) => {}
                    None => self.group = None,
                }
            } else {
                match next_field(payload, &mut self.pos, 0)? {
                    Some((1, v, at)) => {
                        let entry = expect_message(v, at)?;
                        self.group = Some((at..at + entry.len(), 0));
                        return Ok(Some(Step::Group(entry, at)));
                    }
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
        }
    }
}

/// The bytes of a level the walk entered (absent only when resumed on another payload).
fn part<'a>(payload: &'a [u8], range: &Range<usize>) -> Result<&'a [u8], WireError> {
    payload.get(range.clone()).ok_or(WireError {
        offset: range.start,
        reason: "walk resumed on another payload",
    })
}

/// Checks `payload` as an export request of `signal` and counts its items.
pub fn scan(signal: Signal, payload: &[u8]) -> Result<Scan, WireError> {
    let mut scan = Scan::default();
    let mut walk = Walk::default();
    while let Some(step) = walk.next(payload)? {
        match step {
            Step::Group(..) => {}
            Step::Resource(resource, at) => for_each_field(resource, at, |_, _, _| Ok(()))?,
            Step::Item(item, at) => match signal {
                Signal::Traces => span(item, at, &mut scan)?,
                Signal::Metrics => metric(item, at, &mut scan)?,
                Signal::Logs => {
                    scan.items += 1;
                    for_each_field(item, at, |_, _, _| Ok(()))?;
                }
            },
        }
    }
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
    fn varints_of_one_byte_and_of_more_read_as_prost_writes_them() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            prost::encoding::encode_varint(v, &mut buf);
            assert_eq!(varint(&buf), Some((v, buf.len())), "{v}");
            // Bytes after the varint are not part of it.
            buf.push(0x01);
            assert_eq!(varint(&buf), Some((v, buf.len() - 1)), "{v}");
        }
        assert_eq!(varint(&[]), None);
        assert_eq!(varint(&[0x80]), None, "continues past the end");
        assert_eq!(varint(&[0xff; 11]), None, "longer than 10 bytes");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(scan(Signal::Traces, &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(scan(Signal::Traces, &[0x0b]).is_err()); // wire type 3 (group)
        assert!(scan(Signal::Traces, &[0x08]).is_err()); // varint without value
        assert_eq!(scan(Signal::Traces, &[]).unwrap(), Scan::default());
    }
}
