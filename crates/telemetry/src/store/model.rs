//! Owned, compact forms of decoded OTLP items, their JSON views and memory estimates.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde::Serialize;
use serde::ser::SerializeStruct;
use serde_json::{Map, Number, Value};
use std::fmt;
use std::mem::size_of;
use std::sync::Arc;

/// Attributes as a JSON object (key → native JSON value).
pub type Attributes = Map<String, Value>;

/// Service name used when a resource has no `service.name`.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Rough per-entry overhead of a map node or hash table slot, in bytes.
pub(crate) const ENTRY_OVERHEAD: usize = 48;

/// A 16-byte trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// Parses 32 hex digits (either case); the all-zero id is invalid.
    pub fn from_hex(s: &str) -> Option<TraceId> {
        let mut out = [0u8; 16];
        decode_hex(s, &mut out)?;
        (out != [0; 16]).then_some(TraceId(out))
    }

    /// The id from OTLP bytes, if they are 16 bytes and not all zero.
    pub fn from_bytes(b: &[u8]) -> Option<TraceId> {
        let a: [u8; 16] = b.try_into().ok()?;
        (a != [0; 16]).then_some(TraceId(a))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl SpanId {
    /// The id from OTLP bytes, if they are 8 bytes and not all zero.
    pub fn from_bytes(b: &[u8]) -> Option<SpanId> {
        let a: [u8; 8] = b.try_into().ok()?;
        (a != [0; 8]).then_some(SpanId(a))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(())
}

/// Span kind, as in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// From the OTLP enum value (unknown values are `Unspecified`).
    pub fn from_otlp(v: i32) -> SpanKind {
        match v {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
}

/// Span status code, as in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    /// From the OTLP enum value (unknown values are `Unset`).
    pub fn from_otlp(v: i32) -> StatusCode {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }
}

/// A span status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

/// A span event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Attributes,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 3)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("timeUnixNano", &self.time_unix_nano.to_string())?;
        st.serialize_field("attributes", &self.attributes)?;
        st.end()
    }
}

/// One stored span (compact owned form; the resource is shared by the spans of one batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// `service.name` of the resource.
    pub service: Arc<str>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: Status,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    /// Resource attributes (shared).
    pub resource: Arc<Attributes>,
}

impl Span {
    /// End minus start in milliseconds (0 when the end precedes the start).
    pub fn duration_ms(&self) -> f64 {
        ns_to_ms(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// Status ERROR, or an HTTP response status of 500 or more.
    pub fn is_error(&self) -> bool {
        self.status.code == StatusCode::Error
            || ["http.response.status_code", "http.status_code"]
                .iter()
                .filter_map(|k| self.attributes.get(*k))
                .filter_map(|v| {
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .any(|code| code >= 500)
    }

    /// Estimated memory held by this span, not counting the shared resource.
    pub(crate) fn estimated_bytes(&self) -> usize {
        size_of::<Span>()
            + 2 * size_of::<usize>() // Arc counters
            + self.name.capacity()
            + self.status.message.capacity()
            + attributes_bytes(&self.attributes)
            + self
                .events
                .iter()
                .map(|e| size_of::<Event>() + e.name.capacity() + attributes_bytes(&e.attributes))
                .sum::<usize>()
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Span", 14)?;
        st.serialize_field("traceId", &self.trace_id)?;
        st.serialize_field("spanId", &self.span_id)?;
        st.serialize_field("parentSpanId", &self.parent_span_id)?;
        st.serialize_field("service", &*self.service)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("startTimeUnixNano", &self.start_unix_nano.to_string())?;
        st.serialize_field("endTimeUnixNano", &self.end_unix_nano.to_string())?;
        st.serialize_field("durationMs", &self.duration_ms())?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("attributes", &self.attributes)?;
        st.serialize_field("events", &self.events)?;
        st.serialize_field("resource", &*self.resource)?;
        st.end()
    }
}

/// Nanoseconds as fractional milliseconds.
pub(crate) fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// An OTLP value as native JSON: arrays and kvlists become JSON arrays and objects, bytes
/// become lower-case hex, non-finite doubles become strings (`"NaN"`, `"inf"`).
pub fn any_value_to_json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::Number((*i).into()),
        Some(any_value::Value::DoubleValue(d)) => f64_to_json(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_value_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        Some(any_value::Value::StringValueStrindex(i)) => Value::Number((*i).into()),
    }
}

/// [`any_value_to_json`] taking the value, so that its strings move instead of being copied.
pub fn any_value_into_json(v: AnyValue) -> Value {
    match v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(any_value_into_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes_owned(kv.values)),
        other => any_value_to_json(&AnyValue { value: other }),
    }
}

/// A double as a JSON number, or a string when it is not finite.
pub(crate) fn f64_to_json(d: f64) -> Value {
    Number::from_f64(d)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(d.to_string()))
}

/// Key-values as a JSON object (a repeated key keeps its last value).
pub fn attributes(kvs: &[KeyValue]) -> Attributes {
    let mut m = Map::new();
    for kv in kvs {
        let v = kv.value.as_ref().map(any_value_to_json).unwrap_or_default();
        m.insert(kv.key.clone(), v);
    }
    m
}

/// [`attributes`] taking the key-values, so that keys and string values move into the map.
pub fn attributes_owned(kvs: Vec<KeyValue>) -> Attributes {
    let mut m = Map::new();
    for kv in kvs {
        let v = kv.value.map(any_value_into_json).unwrap_or_default();
        m.insert(kv.key, v);
    }
    m
}

/// `service.name` from resource attributes.
pub(crate) fn service_name(resource: &Attributes) -> Arc<str> {
    match resource.get("service.name").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Arc::from(s),
        _ => Arc::from(UNKNOWN_SERVICE),
    }
}

/// Estimated heap bytes of an attribute map (entries, keys, values).
pub(crate) fn attributes_bytes(m: &Attributes) -> usize {
    m.iter()
        .map(|(k, v)| ENTRY_OVERHEAD + k.capacity() + value_bytes(v))
        .sum()
}

/// Estimated bytes of a JSON value including its inline size.
pub(crate) fn value_bytes(v: &Value) -> usize {
    size_of::<Value>()
        + match v {
            Value::String(s) => s.capacity(),
            Value::Array(a) => a.iter().map(value_bytes).sum(),
            Value::Object(m) => attributes_bytes(m),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn av(v: any_value::Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = TraceId::from_hex("0AF7651916CD43DD8448EB211C80319C").unwrap();
        assert_eq!(id.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(TraceId::from_hex("0af7651916cd43dd8448eb211c80319"), None);
        assert_eq!(TraceId::from_hex("0af7651916cd43dd8448eb211c80319g"), None);
        assert_eq!(TraceId::from_hex(&"0".repeat(32)), None);
        assert_eq!(TraceId::from_hex("é".repeat(16).as_str()), None);
        assert_eq!(
            SpanId::from_bytes(&[1; 8]).unwrap().to_hex(),
            "0101010101010101"
        );
        assert_eq!(SpanId::from_bytes(&[1; 7]), None);
        assert_eq!(SpanId::from_bytes(&[0; 8]), None);
    }

    #[test]
    fn values_become_native_json() {
        let kv = |k: &str, v| KeyValue {
            key: k.into(),
            value: Some(av(v)),
            ..Default::default()
        };
        let kvs = vec![
            kv("s", any_value::Value::StringValue("x".into())),
            kv("b", any_value::Value::BoolValue(true)),
            kv("i", any_value::Value::IntValue(-3)),
            kv("d", any_value::Value::DoubleValue(1.5)),
            kv("nan", any_value::Value::DoubleValue(f64::NAN)),
            kv("bytes", any_value::Value::BytesValue(vec![0xab, 1])),
            kv(
                "arr",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        av(any_value::Value::IntValue(1)),
                        av(any_value::Value::StringValue("two".into())),
                    ],
                }),
            ),
            kv(
                "kv",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("inner", any_value::Value::BoolValue(false)),
                        kv("text", any_value::Value::StringValue("moved".into())),
                    ],
                }),
            ),
            kv("strindex", any_value::Value::StringValueStrindex(4)),
            KeyValue {
                key: "none".into(),
                value: None,
                ..Default::default()
            },
            kv("s", any_value::Value::StringValue("last wins".into())),
        ];
        let expected = serde_json::json!({
            "s": "last wins", "b": true, "i": -3, "d": 1.5, "nan": "NaN", "bytes": "ab01",
            "arr": [1, "two"], "kv": {"inner": false, "text": "moved"}, "strindex": 4,
            "none": null
        });
        assert_eq!(Value::Object(attributes(&kvs)), expected);
        // The store's ingest takes the values it owns: the same result without copies.
        assert_eq!(Value::Object(attributes_owned(kvs)), expected);
    }
}
