//! Turning a received body into a [`Batch`]: decompression with a size bound, protobuf or JSON
//! decoding, and rejection of invalid spans (answered with `partial_success`).

use super::{Batch, Signal, wire};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Read;

/// Body compression of a received request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a `content-encoding` / `grpc-encoding` value; `None` for unsupported ones.
    pub fn parse(value: Option<&str>) -> Option<Encoding> {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            None => Some(Encoding::Identity),
            Some(v) if v.is_empty() || v == "identity" => Some(Encoding::Identity),
            Some(v) if v == "gzip" || v == "x-gzip" => Some(Encoding::Gzip),
            Some(v) if v == "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// Payload format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than allowed (before or after decompression).
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// Not valid for its format.
    #[error("{0}")]
    Invalid(String),
}

/// Decompresses `body`, refusing output past `limit` bytes without allocating beyond it.
pub fn decompress(encoding: Encoding, body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    fn read_bounded(mut r: impl Read, limit: usize, what: &str) -> Result<Bytes, DecodeError> {
        let mut out = Vec::new();
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        (&mut r).take(cap).read_to_end(&mut out).map_err(|e| {
            DecodeError::Invalid(format!("{what} body cannot be decompressed: {e}"))
        })?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge {
                what: "decompressed body",
                limit,
            });
        }
        Ok(Bytes::from(out))
    }
    match encoding {
        Encoding::Identity => Ok(body),
        Encoding::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(&body[..]), limit, "gzip"),
        Encoding::Zstd => {
            let d = zstd::stream::read::Decoder::with_buffer(&body[..])
                .map_err(|e| DecodeError::Invalid(format!("zstd body cannot be read: {e}")))?;
            read_bounded(d, limit, "zstd")
        }
    }
}

/// A decoded body: what goes on, and what was rejected.
#[derive(Debug)]
pub struct Decoded {
    /// The accepted items (may be empty).
    pub batch: Batch,
    /// Items refused individually (reported as partial success).
    pub rejected: u64,
    /// Why, when `rejected > 0`.
    pub message: String,
}

/// Decodes a (decompressed) body of `signal` in `format`.
pub fn decode(signal: Signal, format: Format, body: Bytes) -> Result<Decoded, DecodeError> {
    let payload = match format {
        Format::Protobuf => body,
        Format::Json => json_to_protobuf(signal, &body)?,
    };
    let scan = wire::scan(signal, &payload).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if scan.invalid == 0 {
        return Ok(Decoded {
            batch: Batch::new(signal, payload, scan.items),
            rejected: 0,
            message: String::new(),
        });
    }
    // Rare path: some spans have invalid ids. Decode, drop them, re-encode.
    let mut req = ExportTraceServiceRequest::decode(&payload[..])
        .map_err(|e| DecodeError::Invalid(format!("invalid protobuf: {e}")))?;
    let mut kept = 0u64;
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| {
                s.trace_id.len() == 16
                    && s.span_id.len() == 8
                    && s.trace_id.iter().any(|b| *b != 0)
                    && s.span_id.iter().any(|b| *b != 0)
            });
            kept += ss.spans.len() as u64;
        }
    }
    Ok(Decoded {
        batch: Batch::new(signal, Bytes::from(req.encode_to_vec()), kept),
        rejected: scan.invalid,
        message: format!(
            "{} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero",
            scan.invalid
        ),
    })
}

fn json_to_protobuf(signal: Signal, body: &[u8]) -> Result<Bytes, DecodeError> {
    fn parse<T: serde::de::DeserializeOwned + Message>(body: &[u8]) -> Result<Bytes, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let v: T = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| DecodeError::Invalid(format!("invalid OTLP JSON: {e}")))?;
        de.end()
            .map_err(|e| DecodeError::Invalid(format!("invalid OTLP JSON: {e}")))?;
        Ok(Bytes::from(v.encode_to_vec()))
    }
    match signal {
        Signal::Traces => parse::<ExportTraceServiceRequest>(body),
        Signal::Metrics => parse::<ExportMetricsServiceRequest>(body),
        Signal::Logs => parse::<ExportLogsServiceRequest>(body),
    }
}

/// The encoded `Export*ServiceResponse` for `signal`, with `partial_success` when anything was
/// rejected.
pub fn response(signal: Signal, rejected: u64, message: &str, format: Format) -> Bytes {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let n = i64::try_from(rejected).unwrap_or(i64::MAX);
    let msg = message.to_string();
    let partial = rejected > 0;
    fn out<T: Message + serde::Serialize>(v: T, format: Format) -> Bytes {
        match format {
            Format::Protobuf => Bytes::from(v.encode_to_vec()),
            // A full success is an empty message, `{}`, not `{"partialSuccess":null}`.
            Format::Json if v.encoded_len() == 0 => Bytes::from_static(b"{}"),
            Format::Json => Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())),
        }
    }
    match signal {
        Signal::Traces => out(
            ExportTraceServiceResponse {
                partial_success: partial.then_some(ExportTracePartialSuccess {
                    rejected_spans: n,
                    error_message: msg,
                }),
            },
            format,
        ),
        Signal::Metrics => out(
            ExportMetricsServiceResponse {
                partial_success: partial.then_some(ExportMetricsPartialSuccess {
                    rejected_data_points: n,
                    error_message: msg,
                }),
            },
            format,
        ),
        Signal::Logs => out(
            ExportLogsServiceResponse {
                partial_success: partial.then_some(ExportLogsPartialSuccess {
                    rejected_log_records: n,
                    error_message: msg,
                }),
            },
            format,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn gzip_bomb_is_refused_at_the_limit() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 200 << 10, "{}", bomb.len());
        match decompress(Encoding::Gzip, bomb, 1 << 20) {
            Err(DecodeError::TooLarge { limit, .. }) => assert_eq!(limit, 1 << 20),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn zstd_and_gzip_round_trip() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(
            &decompress(Encoding::Gzip, gzip(&data), 1 << 20).unwrap()[..],
            &data[..]
        );
        let z = zstd::stream::encode_all(&data[..], 1).unwrap();
        assert_eq!(
            &decompress(Encoding::Zstd, Bytes::from(z), 1 << 20).unwrap()[..],
            &data[..]
        );
        assert!(matches!(
            decompress(Encoding::Gzip, Bytes::from_static(b"not gzip"), 1 << 20),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn json_with_hex_ids_decodes_and_bad_ids_are_partially_rejected() {
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
            "scopeSpans":[{"spans":[
              {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"ok","kind":2,
               "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"},
              {"traceId":"","spanId":"eee19b7ec3c1b175","name":"bad"}]}]}]}"#;
        let d = decode(Signal::Traces, Format::Json, Bytes::from(json)).unwrap();
        assert_eq!((d.batch.items, d.rejected), (1, 1));
        let req = ExportTraceServiceRequest::decode(&d.batch.payload[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "ok");
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        let resp = response(Signal::Traces, d.rejected, &d.message, Format::Json);
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        // int64 may be a JSON number or string (OTLP/JSON decoders accept both).
        assert_eq!(
            v["partialSuccess"]["rejectedSpans"]
                .to_string()
                .trim_matches('"'),
            "1"
        );
    }

    #[test]
    fn json_with_wrong_types_names_the_problem() {
        let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":42}]}]}]}"#;
        match decode(Signal::Traces, Format::Json, Bytes::from(json)) {
            Err(DecodeError::Invalid(m)) => assert!(m.contains("invalid OTLP JSON"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
