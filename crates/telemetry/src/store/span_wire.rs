//! Spans read straight from their encoding into the store's form.
//!
//! prost's decode first builds its own message structs (a `Vec` per id, a `KeyValue` list
//! grown one entry at a time, an `AnyValue` per value) that the store then took apart: about
//! half of the ingest's instructions. This reads the same fields with the framing walker of
//! [`crate::otlp::wire`] and allocates only what the stored span keeps. What it accepts and
//! what it makes are prost's (tests compare the two on generated spans): strings must be UTF-8,
//! a known field must have its wire type, a repeated scalar field keeps its last value, and the
//! rare parts it does not read itself go through prost (links, which are only checked, and
//! attribute values that are arrays or key-value lists).

use super::ingest::Group;
use super::model::{
    Attributes, Event, Span, SpanId, SpanKind, Status, StatusCode, TraceId, any_value_into_json,
    f64_to_json, hex,
};
use crate::otlp::wire::{self, Value as Field};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::Link;
use prost::Message;
use serde_json::Value;

/// The item is not a span prost would decode.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Undecodable;

impl From<wire::WireError> for Undecodable {
    fn from(_: wire::WireError) -> Undecodable {
        Undecodable
    }
}

/// The span encoded in `item`, with the bytes it is charged; `Ok(None)` when its trace or span
/// id is invalid (wrong length or all zero).
pub(super) fn span(item: &[u8], group: &Group) -> Result<Option<(Span, usize)>, Undecodable> {
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let mut name = "";
    let mut kind = 0i32;
    let (mut start, mut end) = (0u64, 0u64);
    let mut attributes = Attributes::new();
    let mut events = Vec::new();
    let (mut status_code, mut status_message) = (0i32, "");
    wire::for_each_field(item, 0, |field, value, _| {
        match (field, value) {
            (1, Field::Bytes(b)) => trace_id = b,
            (2, Field::Bytes(b)) => span_id = b,
            // trace_state: not stored, but prost checks it is UTF-8.
            (3, Field::Bytes(b)) => {
                utf8(b)?;
            }
            (4, Field::Bytes(b)) => parent = b,
            (5, Field::Bytes(b)) => name = utf8(b)?,
            (6, Field::Varint(v)) => kind = v as i32,
            (7, Field::Fixed64(v)) => start = v,
            (8, Field::Fixed64(v)) => end = v,
            (9, Field::Bytes(b)) => key_value(b, &mut attributes)?,
            (10 | 12 | 14, Field::Varint(_)) | (16, Field::Fixed32(_)) => {}
            (11, Field::Bytes(b)) => events.push(event(b)?),
            (13, Field::Bytes(b)) => {
                Link::decode(b).map_err(|_| Undecodable)?;
            }
            // A message field that appears twice is merged: each of its fields keeps its last value.
            (15, Field::Bytes(b)) => status(b, &mut status_code, &mut status_message)?,
            (1..=16, _) => return Err(Undecodable),
            _ => {}
        }
        Ok(())
    })?;
    let (Some(trace_id), Some(span_id)) =
        (TraceId::from_bytes(trace_id), SpanId::from_bytes(span_id))
    else {
        return Ok(None);
    };
    let span = Span {
        trace_id,
        span_id,
        parent_span_id: SpanId::from_bytes(parent),
        service: group.service.clone(),
        name: name.to_owned(),
        kind: SpanKind::from_otlp(kind),
        start_unix_nano: start,
        end_unix_nano: end,
        status: Status {
            code: StatusCode::from_otlp(status_code),
            message: status_message.to_owned(),
        },
        attributes,
        events,
        resource: group.resource.clone(),
    };
    let bytes = span.estimated_bytes() + group.share;
    Ok(Some((span, bytes)))
}

fn utf8(b: &[u8]) -> Result<&str, Undecodable> {
    std::str::from_utf8(b).map_err(|_| Undecodable)
}

/// `Span.Event`: time 1, name 2, attributes 3, dropped attributes 4.
fn event(buf: &[u8]) -> Result<Event, Undecodable> {
    let (mut time, mut name) = (0u64, "");
    let mut attributes = Attributes::new();
    wire::for_each_field(buf, 0, |field, value, _| {
        match (field, value) {
            (1, Field::Fixed64(v)) => time = v,
            (2, Field::Bytes(b)) => name = utf8(b)?,
            (3, Field::Bytes(b)) => key_value(b, &mut attributes)?,
            (4, Field::Varint(_)) => {}
            (1..=4, _) => return Err(Undecodable),
            _ => {}
        }
        Ok(())
    })?;
    Ok(Event {
        name: name.to_owned(),
        time_unix_nano: time,
        attributes,
    })
}

/// `Status`: message 2, code 3 (1 is reserved).
fn status<'a>(buf: &'a [u8], code: &mut i32, message: &mut &'a str) -> Result<(), Undecodable> {
    wire::for_each_field(buf, 0, |field, value, _| {
        match (field, value) {
            (2, Field::Bytes(b)) => *message = utf8(b)?,
            (3, Field::Varint(v)) => *code = v as i32,
            (2 | 3, _) => return Err(Undecodable),
            _ => {}
        }
        Ok(())
    })
}

/// A `KeyValue` (key 1, value 2; 3 is a string-table index, not used by OTLP export) into
/// `into` (a repeated key keeps its last value).
fn key_value(buf: &[u8], into: &mut Attributes) -> Result<(), Undecodable> {
    let mut key = "";
    let mut value = None;
    let mut values = 0u32;
    wire::for_each_field(buf, 0, |field, v, _| {
        match (field, v) {
            (1, Field::Bytes(b)) => key = utf8(b)?,
            (2, Field::Bytes(b)) => {
                values += 1;
                value = Some(b);
            }
            (3, Field::Varint(_)) => {}
            (1..=3, _) => return Err(Undecodable),
            _ => {}
        }
        Ok(())
    })?;
    let json = match value {
        None => Value::Null,
        // A value given twice is merged by prost (arrays append): rare enough to leave to it.
        Some(b) if values == 1 => match scalar(b)? {
            Some(json) => json,
            None => return prost_key_value(buf, into),
        },
        Some(_) => return prost_key_value(buf, into),
    };
    into.insert(key.to_owned(), json);
    Ok(())
}

fn prost_key_value(buf: &[u8], into: &mut Attributes) -> Result<(), Undecodable> {
    let kv = KeyValue::decode(buf).map_err(|_| Undecodable)?;
    into.insert(
        kv.key,
        kv.value.map(any_value_into_json).unwrap_or_default(),
    );
    Ok(())
}

/// An `AnyValue` holding a string 1, bool 2, int 3, double 4 or bytes 7 (or nothing) as JSON;
/// `Ok(None)` for anything else (arrays 5, key-value lists 6, newer variants), left to prost.
fn scalar(buf: &[u8]) -> Result<Option<Value>, Undecodable> {
    let mut out = Value::Null;
    let mut other = false;
    wire::for_each_field(buf, 0, |field, v, _| {
        // A oneof keeps the variant that came last.
        match (field, v) {
            (1, Field::Bytes(b)) => out = Value::String(utf8(b)?.to_owned()),
            (2, Field::Varint(x)) => out = Value::Bool(x != 0),
            (3, Field::Varint(x)) => out = Value::Number((x as i64).into()),
            (4, Field::Fixed64(x)) => out = f64_to_json(f64::from_bits(x)),
            (7, Field::Bytes(b)) => out = Value::String(hex(b)),
            (1..=4 | 7, _) => return Err(Undecodable),
            _ => other = true,
        }
        Ok(())
    })?;
    Ok((!other).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::span_record;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValueList, any_value};
    use opentelemetry_proto::tonic::trace::v1 as otlp_trace;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn group() -> Group {
        let mut resource = Attributes::new();
        resource.insert("service.name".into(), Value::String("checkout".into()));
        Group {
            resource: Arc::new(resource),
            service: Arc::from("checkout"),
            share: 40,
        }
    }

    /// What the store made of these bytes through prost: `None` when prost refuses them.
    /// (The bytes charged are left out: prost's strings have room for at least 8 bytes, which
    /// the estimate counts, so the direct read charges a little less for short strings.)
    fn through_prost(bytes: &[u8]) -> Option<Option<Span>> {
        otlp_trace::Span::decode(bytes)
            .ok()
            .map(|s| span_record(s, &group()).map(|(span, _)| span))
    }

    fn direct(bytes: &[u8]) -> Option<Option<Span>> {
        span(bytes, &group()).ok().map(|s| s.map(|(span, _)| span))
    }

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    fn proxy_span() -> otlp_trace::Span {
        otlp_trace::Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            parent_span_id: vec![3; 8],
            name: "GET /orders".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_250_000,
            attributes: vec![
                kv(
                    "http.request.method",
                    any_value::Value::StringValue("GET".into()),
                ),
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                kv("sampled", any_value::Value::BoolValue(true)),
                kv("ratio", any_value::Value::DoubleValue(0.25)),
                kv("raw", any_value::Value::BytesValue(vec![0xde, 0xad])),
            ],
            events: vec![otlp_trace::span::Event {
                time_unix_nano: 5,
                name: "retry".into(),
                attributes: vec![kv("attempt", any_value::Value::IntValue(2))],
                dropped_attributes_count: 0,
            }],
            status: Some(otlp_trace::Status {
                message: "upstream reset".into(),
                code: 2,
            }),
            ..otlp_trace::Span::default()
        }
    }

    #[test]
    fn a_proxy_span_reads_as_prost_reads_it() {
        let bytes = proxy_span().encode_to_vec();
        let span = direct(&bytes).flatten().expect("a valid span");
        assert_eq!(Some(Some(span.clone())), through_prost(&bytes));
        let charged = |s: &Span| s.estimated_bytes() + group().share;
        assert_eq!(
            super::span(&bytes, &group()).ok().flatten().map(|(_, b)| b),
            Some(charged(&span))
        );
        assert_eq!(span.name, "GET /orders");
        assert_eq!(span.attributes["http.response.status_code"], 503);
        assert_eq!(span.attributes["raw"], "dead");
        assert_eq!(span.events[0].attributes["attempt"], 2);
        assert_eq!(span.status.code, StatusCode::Error);
        assert!(span.is_error());
    }

    /// Appends field `field` with a length-delimited value to `buf`.
    fn append_bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }

    #[test]
    fn encodings_prost_merges_read_the_same() {
        // A status given twice: each of its fields keeps its last value.
        let mut bytes = proxy_span().encode_to_vec();
        let second = otlp_trace::Status {
            message: "second".into(),
            code: 0,
        };
        append_bytes(&mut bytes, 15, &second.encode_to_vec());
        let span = direct(&bytes).flatten().expect("valid");
        assert_eq!(span.status.message, "second");
        assert_eq!(span.status.code, StatusCode::Error, "code 0 is not written");
        assert_eq!(direct(&bytes), through_prost(&bytes));

        // An attribute whose value is given twice (two arrays: prost appends the second).
        let array = |v: i64| AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::IntValue(v)),
                }],
            })),
        };
        let mut pair = KeyValue {
            key: "list".into(),
            value: Some(array(1)),
            ..KeyValue::default()
        }
        .encode_to_vec();
        append_bytes(&mut pair, 2, &array(2).encode_to_vec());
        let mut bytes = proxy_span().encode_to_vec();
        append_bytes(&mut bytes, 9, &pair);
        let span = direct(&bytes).flatten().expect("valid");
        assert_eq!(span.attributes["list"], serde_json::json!([1, 2]));
        assert_eq!(direct(&bytes), through_prost(&bytes));

        // A value that is first a list, then a string: the oneof keeps the string.
        let mut value = array(1).encode_to_vec();
        append_bytes(&mut value, 1, b"last");
        let mut pair = Vec::new();
        append_bytes(&mut pair, 1, b"k");
        append_bytes(&mut pair, 2, &value);
        let mut bytes = proxy_span().encode_to_vec();
        append_bytes(&mut bytes, 9, &pair);
        assert_eq!(
            direct(&bytes).flatten().expect("valid").attributes["k"],
            "last"
        );
        assert_eq!(direct(&bytes), through_prost(&bytes));

        // An unknown field is skipped; a name given twice keeps the last.
        let mut bytes = proxy_span().encode_to_vec();
        prost::encoding::encode_key(100, prost::encoding::WireType::Varint, &mut bytes);
        prost::encoding::encode_varint(1, &mut bytes);
        append_bytes(&mut bytes, 5, b"renamed");
        assert_eq!(direct(&bytes).flatten().expect("valid").name, "renamed");
        assert_eq!(direct(&bytes), through_prost(&bytes));
    }

    #[test]
    fn what_prost_refuses_is_undecodable() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("name not UTF-8", {
                let mut b = proxy_span().encode_to_vec();
                append_bytes(&mut b, 5, &[0xff, 0xfe]);
                b
            }),
            ("trace_state not UTF-8", {
                let mut b = proxy_span().encode_to_vec();
                append_bytes(&mut b, 3, &[0xc3]);
                b
            }),
            ("attribute key not UTF-8", {
                let mut pair = Vec::new();
                append_bytes(&mut pair, 1, &[0x80]);
                let mut b = proxy_span().encode_to_vec();
                append_bytes(&mut b, 9, &pair);
                b
            }),
            ("start time as a varint", {
                let mut b = proxy_span().encode_to_vec();
                prost::encoding::encode_key(7, prost::encoding::WireType::Varint, &mut b);
                prost::encoding::encode_varint(5, &mut b);
                b
            }),
            ("link with a bad trace state", {
                let mut link = Vec::new();
                append_bytes(&mut link, 3, &[0xff]);
                let mut b = proxy_span().encode_to_vec();
                append_bytes(&mut b, 13, &link);
                b
            }),
            ("truncated", {
                let b = proxy_span().encode_to_vec();
                b[..b.len() - 3].to_vec()
            }),
        ];
        for (what, bytes) in cases {
            assert_eq!(through_prost(&bytes), None, "prost: {what}");
            assert_eq!(span(&bytes, &group()), Err(Undecodable), "{what}");
        }
        // Valid framing with bad ids is a span to count as invalid, not an undecodable item.
        let mut bad_ids = proxy_span();
        bad_ids.trace_id = vec![0; 16];
        assert_eq!(direct(&bad_ids.encode_to_vec()), Some(None));
        assert_eq!(through_prost(&bad_ids.encode_to_vec()), Some(None));
    }

    fn any_value(depth: u32) -> BoxedStrategy<AnyValue> {
        let scalar = prop_oneof![
            ".{0,12}".prop_map(any_value::Value::StringValue),
            any::<bool>().prop_map(any_value::Value::BoolValue),
            any::<i64>().prop_map(any_value::Value::IntValue),
            any::<f64>().prop_map(any_value::Value::DoubleValue),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(any_value::Value::BytesValue),
        ];
        let value = if depth == 0 {
            scalar.boxed()
        } else {
            prop_oneof![
                4 => scalar,
                1 => proptest::collection::vec(any_value(depth - 1), 0..3)
                    .prop_map(|values| any_value::Value::ArrayValue(ArrayValue { values })),
                1 => proptest::collection::vec(key_value(depth - 1), 0..3)
                    .prop_map(|values| any_value::Value::KvlistValue(KeyValueList { values })),
            ]
            .boxed()
        };
        proptest::option::weighted(0.9, value)
            .prop_map(|value| AnyValue { value })
            .boxed()
    }

    fn key_value(depth: u32) -> BoxedStrategy<KeyValue> {
        (
            prop_oneof!["[a-c]", ".{0,10}"],
            proptest::option::weighted(0.9, any_value(depth)),
        )
            .prop_map(|(key, value)| KeyValue {
                key,
                value,
                ..KeyValue::default()
            })
            .boxed()
    }

    fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => proptest::collection::vec(any::<u8>(), len),
            1 => Just(vec![0; len]),
            1 => proptest::collection::vec(any::<u8>(), 0..20),
        ]
    }

    prop_compose! {
        fn arb_span()(
            trace_id in id(16),
            span_id in id(8),
            parent_span_id in prop_oneof![Just(Vec::new()), id(8)],
            name in ".{0,16}",
            trace_state in "[a-z=,]{0,8}",
            kind in -1i32..7,
            start in any::<u64>(),
            end in any::<u64>(),
            attributes in proptest::collection::vec(key_value(2), 0..8),
            events in proptest::collection::vec(
                (any::<u64>(), ".{0,8}", proptest::collection::vec(key_value(1), 0..3)),
                0..3,
            ),
            links in proptest::collection::vec((id(16), proptest::collection::vec(key_value(0), 0..2)), 0..2),
            status in proptest::option::of((".{0,8}", -1i32..4)),
            flags in any::<u32>(),
            dropped in any::<u32>(),
        ) -> otlp_trace::Span {
            otlp_trace::Span {
                trace_id,
                span_id,
                parent_span_id,
                trace_state,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count: dropped,
                events: events
                    .into_iter()
                    .map(|(time_unix_nano, name, attributes)| otlp_trace::span::Event {
                        time_unix_nano,
                        name,
                        attributes,
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                links: links
                    .into_iter()
                    .map(|(trace_id, attributes)| otlp_trace::span::Link {
                        trace_id,
                        attributes,
                        ..otlp_trace::span::Link::default()
                    })
                    .collect(),
                status: status.map(|(message, code)| otlp_trace::Status { message, code }),
                flags,
                ..otlp_trace::Span::default()
            }
        }
    }

    proptest! {
        #[test]
        fn generated_spans_read_as_prost_reads_them(s in arb_span()) {
            let bytes = s.encode_to_vec();
            let direct = direct(&bytes);
            prop_assert!(direct.is_some(), "an encoded span is decodable");
            prop_assert_eq!(direct, through_prost(&bytes));
        }

        #[test]
        fn damaged_spans_never_panic_and_agree_where_both_decode(
            s in arb_span(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = s.encode_to_vec();
            for (at, byte) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep);
            let direct = direct(&bytes);
            if let (Some(d), Some(p)) = (&direct, through_prost(&bytes)) {
                prop_assert_eq!(d, &p);
            }
        }
    }
}
