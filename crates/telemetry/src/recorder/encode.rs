//! Direct protobuf encoding of the proxy's spans and access logs: fields are written straight
//! into one buffer per batch (static attribute keys, no intermediate message structs), because
//! the encoder runs for every proxied request. Field numbers follow opentelemetry-proto; the
//! tests decode the output with prost to check it.

use super::{AttemptRecord, RequestRecord, error_type, protocol};
use bytes::Bytes;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Buffers reused across batches.
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// `headroom` bytes kept free for the export request's head (written by `finish`, so the
    /// batch is never copied), then the encoded items (spans or log records), each as a
    /// length-delimited field.
    items: Vec<u8>,
    headroom: usize,
    /// A nested message (span event) being written inside an item.
    nested: Vec<u8>,
    /// Small text (span names, numbers) built without allocating each time.
    text: String,
    pub(super) count: u64,
}

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// A varint, written byte by byte (most are one byte: tags and short lengths). prost's generic
/// `encode_varint` over `BufMut` cost about twice as many instructions per call here, and the
/// encoder writes ~150 varints per request.
#[inline]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn key(buf: &mut Vec<u8>, tag: u32, wire: u32) {
    varint(buf, u64::from((tag << 3) | wire));
}

#[inline]
fn bytes_field(buf: &mut Vec<u8>, tag: u32, v: &[u8]) {
    key(buf, tag, LEN);
    varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

#[inline]
fn fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    key(buf, tag, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    key(buf, tag, VARINT);
    varint(buf, v);
}

#[inline]
fn len_delimited_len(inner: usize) -> usize {
    1 + varint_len(inner as u64) + inner
}

/// `addr` as text into `out` (cleared first); IPv4 without the formatting machinery, which
/// took more instructions than the rest of the attribute.
fn write_ip(out: &mut String, addr: IpAddr) {
    out.clear();
    match addr {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A `KeyValue` as field `tag` up to its `AnyValue`'s contents, which take `any` bytes and
/// follow.
fn attr_head(buf: &mut Vec<u8>, tag: u32, key: &str, any: usize) {
    let kv = len_delimited_len(key.len()) + len_delimited_len(any);
    self::key(buf, tag, LEN);
    varint(buf, kv as u64);
    bytes_field(buf, 1, key.as_bytes());
    self::key(buf, 2, LEN);
    varint(buf, any as u64);
}

/// The head of a short `KeyValue` (every length fits one varint byte) as field `tag`: tag, its
/// length, the key field's tag and length; then the key. `None` when it is not short. Written
/// as fixed-size groups (plain stores) rather than byte by byte: most attributes are short, and
/// this runs about a dozen times per span.
#[inline]
fn short_head(tag: u32, key: &str, any: usize) -> Option<[u8; 4]> {
    let kv = 2 + key.len() + 2 + any;
    (tag < 16 && kv < 128).then_some([((tag << 3) | LEN) as u8, kv as u8, 0x0a, key.len() as u8])
}

/// A `KeyValue` with a string value (AnyValue.string_value = 1) as field `tag`. Inlined into
/// each call so that the key's length is a constant there: the head is folded at compile time
/// and the key copied with fixed-size moves (about a dozen calls per span).
#[inline(always)]
fn attr_str(buf: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    let any = 2 + value.len();
    if let Some(head) = short_head(tag, key, any) {
        buf.reserve(head[1] as usize + 2);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[0x12, any as u8, 0x0a, value.len() as u8]);
        buf.extend_from_slice(value.as_bytes());
        return;
    }
    attr_head(buf, tag, key, len_delimited_len(value.len()));
    bytes_field(buf, 1, value.as_bytes());
}

/// A `KeyValue` with an int value (AnyValue.int_value = 3); inlined like `attr_str`.
#[inline(always)]
fn attr_int(buf: &mut Vec<u8>, tag: u32, key: &str, value: i64) {
    let any = 1 + varint_len(value as u64);
    if let Some(head) = short_head(tag, key, any) {
        buf.reserve(head[1] as usize + 2);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[0x12, any as u8, 0x18]);
        varint(buf, value as u64);
        return;
    }
    attr_head(buf, tag, key, any);
    varint_field(buf, 3, value as u64);
}

/// A `KeyValue` with a double value (AnyValue.double_value = 4).
fn attr_f64(buf: &mut Vec<u8>, tag: u32, key: &str, value: f64) {
    attr_head(buf, tag, key, 9);
    fixed64(buf, 4, value.to_bits());
}

/// Attribute field of a span.
pub(super) const SPAN_ATTRIBUTES: u32 = 9;
/// Attribute field of a log record.
pub(super) const LOG_ATTRIBUTES: u32 = 6;

/// The attributes a request's route fixes (scheme, route, listener, cluster) as fields `tag`,
/// encoded once per route at config load instead of once per request.
pub(super) fn route_attributes(
    tag: u32,
    listener: &str,
    route: Option<&str>,
    cluster: Option<&str>,
) -> Box<[u8]> {
    let mut buf = Vec::new();
    attr_str(&mut buf, tag, "url.scheme", "http");
    if let Some(route) = route {
        attr_str(&mut buf, tag, "http.route", route);
    }
    attr_str(&mut buf, tag, "otlp_mesh.listener", listener);
    if let Some(c) = cluster {
        attr_str(&mut buf, tag, "otlp_mesh.cluster", c);
    }
    buf.into_boxed_slice()
}

/// A client span's `otlp_mesh.cluster` attribute, encoded once per route.
pub(super) fn cluster_attribute(cluster: Option<&str>) -> Box<[u8]> {
    let mut buf = Vec::new();
    if let Some(c) = cluster {
        attr_str(&mut buf, SPAN_ATTRIBUTES, "otlp_mesh.cluster", c);
    }
    buf.into_boxed_slice()
}

/// The attributes a server span and an access log share, as fields `tag`; `route` holds the
/// route's pre-encoded ones for the same `tag`.
fn request_attributes(
    buf: &mut Vec<u8>,
    tag: u32,
    r: &RequestRecord,
    (path, host): (&str, Option<&str>),
    route: &[u8],
    text: &mut String,
) {
    attr_str(buf, tag, "http.request.method", r.method.as_str());
    attr_str(buf, tag, "url.path", path);
    buf.extend_from_slice(route);
    attr_int(buf, tag, "http.response.status_code", i64::from(r.status));
    if let Some(h) = host {
        attr_str(buf, tag, "server.address", h);
    }
    write_ip(text, r.peer);
    attr_str(buf, tag, "network.peer.address", text);
    attr_str(buf, tag, "network.protocol.version", protocol(r.version));
    if let Some(e) = error_type(r) {
        attr_str(buf, tag, "error.type", &e);
    }
    if let Some(f) = &r.faults {
        attr_str(buf, tag, "otlp_mesh.fault", f);
    }
}

/// `Span.Event` (field 11): time 1, name 2, one attribute 3; `body` is a reused buffer.
fn event(
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
    time: u64,
    name: &str,
    attr: impl FnOnce(&mut Vec<u8>),
) {
    body.clear();
    fixed64(body, 1, time);
    bytes_field(body, 2, name.as_bytes());
    attr(body);
    bytes_field(buf, 11, body);
}

/// `Status` (field 15): message 2, code 3 (2 = ERROR).
fn error_status(buf: &mut Vec<u8>, message: &str) {
    let inner = len_delimited_len(message.len()) + 2;
    key(buf, 15, LEN);
    varint(buf, inner as u64);
    bytes_field(buf, 2, message.as_bytes());
    varint_field(buf, 3, 2);
}

impl Writer {
    /// A writer for export requests whose pre-encoded resource and scope take `resource_scope`
    /// bytes together.
    pub(super) fn new(resource_scope: usize) -> Writer {
        // Four keys and four varints of at most 10 bytes each around resource and scope.
        let headroom = resource_scope + 44;
        Writer {
            items: vec![0; headroom],
            headroom,
            ..Writer::default()
        }
    }

    /// Starts an item (field 2) written in place in `items`: its tag, then two bytes for its
    /// length, which is not known yet. Returns where the item's tag is, for `end_item`.
    fn begin_item(&mut self) -> usize {
        let at = self.items.len();
        self.items.extend_from_slice(&[(2 << 3) | LEN as u8, 0, 0]);
        at
    }

    /// Fills in the length of the item begun at `at`. Items (spans, log records) are almost
    /// always 128 bytes to 16 KiB, whose length takes exactly the two bytes reserved; any other
    /// length moves the item's bytes to fit its varint. Writing in place saves copying every
    /// item from a separate buffer.
    fn end_item(&mut self, at: usize) {
        let body = self.items.len() - at - 3;
        if (128..16384).contains(&body) {
            if let Some(len) = self.items.get_mut(at + 1..at + 3) {
                len.copy_from_slice(&[(body as u8) | 0x80, (body >> 7) as u8]);
            }
        } else {
            let mut len = Vec::with_capacity(3);
            varint(&mut len, body as u64);
            self.items.splice(at + 1..at + 3, len);
        }
        self.count += 1;
    }

    /// Writes the server span and, when the trace has client spans, one per attempt.
    pub(super) fn spans(&mut self, r: &RequestRecord, attempts: &[AttemptRecord]) {
        let Some(t) = &r.trace else { return };
        let target = r.target.parts();
        let end = r.start_unix_nanos + u64::try_from(r.duration.as_nanos()).unwrap_or(0);
        let item = self.begin_item();
        let s = &mut self.items;
        bytes_field(s, 1, &t.trace_id);
        bytes_field(s, 2, &t.span_id);
        if let Some(ts) = t.tracestate.as_ref().and_then(|v| v.to_str().ok()) {
            bytes_field(s, 3, ts.as_bytes());
        }
        if let Some(p) = &t.parent {
            bytes_field(s, 4, p);
        }
        self.text.clear();
        self.text.push_str(r.method.as_str());
        if let Some(route) = &r.names.route {
            self.text.push(' ');
            self.text.push_str(route);
        }
        bytes_field(s, 5, self.text.as_bytes());
        varint_field(s, 6, 2); // SPAN_KIND_SERVER
        fixed64(s, 7, r.start_unix_nanos);
        fixed64(s, 8, end);
        request_attributes(
            s,
            SPAN_ATTRIBUTES,
            r,
            target,
            &r.names.span_attributes,
            &mut self.text,
        );
        if attempts.len() > 1 {
            attr_int(s, 9, "otlp_mesh.retries", attempts.len() as i64 - 1);
        }
        if let Some(f) = &r.faults {
            event(
                s,
                &mut self.nested,
                r.start_unix_nanos,
                "fault injected",
                |b| attr_str(b, 3, "otlp_mesh.fault", f),
            );
        }
        for a in attempts.iter().filter(|a| a.number > 1) {
            event(s, &mut self.nested, a.start_unix_nanos, "retry", |b| {
                attr_int(b, 3, "http.request.resend_count", i64::from(a.number - 1))
            });
        }
        if r.status >= 500 || r.error.is_some() {
            error_status(s, &error_type(r).unwrap_or_default());
        }
        self.end_item(item);
        if !t.client_spans() {
            return;
        }
        for a in attempts {
            let item = self.begin_item();
            let s = &mut self.items;
            bytes_field(s, 1, &t.trace_id);
            bytes_field(s, 2, &a.span_id);
            bytes_field(s, 4, &t.span_id);
            bytes_field(s, 5, r.method.as_str().as_bytes());
            varint_field(s, 6, 3); // SPAN_KIND_CLIENT
            fixed64(s, 7, a.start_unix_nanos);
            fixed64(s, 8, a.end_unix_nanos);
            attr_str(s, 9, "http.request.method", r.method.as_str());
            attr_str(s, 9, "url.path", target.0);
            if a.status > 0 {
                attr_int(s, 9, "http.response.status_code", i64::from(a.status));
            }
            s.extend_from_slice(&r.names.client_attributes);
            if a.number > 1 {
                attr_int(s, 9, "http.request.resend_count", i64::from(a.number - 1));
            }
            let error = match (&a.error, a.status) {
                (Some(e), _) => Some(e.as_str()),
                (None, 400..) => {
                    self.text.clear();
                    match http::StatusCode::from_u16(a.status) {
                        Ok(code) => self.text.push_str(code.as_str()),
                        Err(_) => {
                            let _ = write!(self.text, "{}", a.status);
                        }
                    }
                    Some(self.text.as_str())
                }
                _ => None,
            };
            if let Some(e) = error {
                attr_str(s, 9, "error.type", e);
                error_status(s, e);
            }
            self.end_item(item);
        }
    }

    /// Writes one access log record.
    pub(super) fn access_log(&mut self, r: &RequestRecord, attempts: usize) {
        let end = r.start_unix_nanos + u64::try_from(r.duration.as_nanos()).unwrap_or(0);
        let (severity, text) = match r.status {
            500.. => (13, "WARN"),
            _ => (9, "INFO"),
        };
        let ms = r.duration.as_secs_f64() * 1e3;
        let target = r.target.parts();
        let item = self.begin_item();
        let s = &mut self.items;
        fixed64(s, 1, end);
        varint_field(s, 2, severity);
        bytes_field(s, 3, text.as_bytes());
        self.text.clear();
        let _ = write!(
            self.text,
            "{} {} {} {ms:.3}ms",
            r.method, target.0, r.status
        );
        // body (5): AnyValue.string_value
        key(s, 5, LEN);
        varint(s, len_delimited_len(self.text.len()) as u64);
        bytes_field(s, 1, self.text.as_bytes());
        request_attributes(
            s,
            LOG_ATTRIBUTES,
            r,
            target,
            &r.names.log_attributes,
            &mut self.text,
        );
        attr_f64(s, 6, "otlp_mesh.duration_ms", ms);
        attr_int(s, 6, "otlp_mesh.attempts", attempts as i64);
        if let Some(t) = &r.trace {
            key(s, 8, FIXED32);
            s.extend_from_slice(&u32::from(t.sampled).to_le_bytes());
            bytes_field(s, 9, &t.trace_id);
            bytes_field(s, 10, &t.span_id);
        }
        fixed64(s, 11, end);
        bytes_field(s, 12, b"http.access");
        self.end_item(item);
    }

    /// The export request holding every item written since the last call, under one resource
    /// and scope (both pre-encoded); resets the writer.
    #[cfg(test)]
    pub(super) fn finish(&mut self, resource: &[u8], scope: &[u8]) -> Bytes {
        match self.take() {
            Some(items) => items.into_payload(resource, scope),
            None => Bytes::new(),
        }
    }

    /// The items written since the last call, if any; the writer starts over with room for as
    /// many again and an eighth (one allocation per batch, rarely regrown; sized by this batch,
    /// not by the largest so far). Cheap: the request that fills a batch calls it, and the
    /// flusher finishes the batch.
    pub(super) fn take(&mut self) -> Option<Items> {
        if self.count == 0 {
            return None;
        }
        let mut next = Vec::with_capacity(self.items.len() + self.items.len() / 8);
        next.resize(self.headroom, 0);
        let items = Items {
            buf: std::mem::replace(&mut self.items, next),
            headroom: self.headroom,
            count: self.count,
        };
        self.count = 0;
        Some(items)
    }
}

/// Encoded items taken from a [`Writer`], not yet an export request.
#[derive(Debug)]
pub(super) struct Items {
    /// `headroom` free bytes, then the items.
    buf: Vec<u8>,
    headroom: usize,
    pub(super) count: u64,
}

impl Items {
    /// The export request: the head is written into the headroom in front of the items, so the
    /// batch is handed over without being copied.
    pub(super) fn into_payload(self, resource: &[u8], scope: &[u8]) -> Bytes {
        let (buf, start) = self.into_buffer(resource, scope);
        Bytes::from(buf).slice(start..)
    }

    /// `into_payload`'s buffer and where the export request starts in it.
    fn into_buffer(self, resource: &[u8], scope: &[u8]) -> (Vec<u8>, usize) {
        // Export*ServiceRequest.resource_* (1) { resource (1), scope_* (2) { scope (1), items (2)… } }
        let Items {
            buf: mut items,
            headroom,
            ..
        } = self;
        let body = items.len().saturating_sub(headroom);
        let scope_msg = len_delimited_len(scope.len()) + body;
        let resource_msg = len_delimited_len(resource.len()) + len_delimited_len(scope_msg);
        let mut head = Vec::with_capacity(headroom);
        key(&mut head, 1, LEN);
        varint(&mut head, resource_msg as u64);
        bytes_field(&mut head, 1, resource);
        key(&mut head, 2, LEN);
        varint(&mut head, scope_msg as u64);
        bytes_field(&mut head, 1, scope);
        // The buffer goes out with the batch (queues, exporters, retries) and the memory limiter
        // counts its length: a buffer that grew well past what it holds is trimmed first.
        if items.capacity() > items.len() + items.len() / 4 {
            items.shrink_to_fit();
        }
        if let Some(start) = headroom.checked_sub(head.len())
            && let Some(slot) = items.get_mut(start..headroom)
        {
            slot.copy_from_slice(&head);
            return (items, start);
        }
        // Not reached (the headroom covers the head); kept correct rather than panicking.
        head.extend_from_slice(items.get(headroom..).unwrap_or(&[]));
        (head, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_of_any_length_get_their_length_right() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        // Items are written in place behind a two-byte length: check the lengths that take one
        // byte or three, on both sides of each limit.
        for name_len in [
            0usize, 90, 105, 106, 107, 200, 16_300, 16_360, 16_361, 16_400, 70_000,
        ] {
            let mut w = Writer::new(0);
            let item = w.begin_item();
            bytes_field(&mut w.items, 1, &[7; 16]);
            bytes_field(&mut w.items, 5, "n".repeat(name_len).as_bytes());
            w.end_item(item);
            let item = w.begin_item();
            bytes_field(&mut w.items, 1, &[8; 16]);
            w.end_item(item);
            let payload = w.finish(&[], &[]);
            let req = ExportTraceServiceRequest::decode(&payload[..]).unwrap();
            let spans = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 2, "{name_len}");
            assert_eq!(
                (spans[0].trace_id.as_slice(), spans[0].name.len()),
                (&[7; 16][..], name_len)
            );
            assert_eq!(spans[1].trace_id, [8; 16]);
        }
    }

    #[test]
    fn varints_match_prost() {
        let mut values = vec![
            0u64,
            1,
            127,
            128,
            255,
            16_383,
            16_384,
            u64::MAX,
            u64::MAX >> 1,
        ];
        values.extend((0..64).map(|s| 1u64 << s));
        values.extend((0..1000).map(|_| fastrand::u64(..) >> fastrand::u32(0..64)));
        for v in values {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            varint(&mut ours, v);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
        }
    }

    #[test]
    fn attributes_match_prost_around_the_short_form_limits() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use prost::Message;
        // Byte for byte, except that prost leaves out an empty key (a proto3 default) which we
        // write anyway (both decode alike): there the KeyValue is decoded and compared.
        let wrap = |tag: u32, kv: KeyValue| {
            let mut out = Vec::new();
            prost::encoding::message::encode(tag, &kv, &mut out);
            out
        };
        let assert_same = |ours: &[u8], tag: u32, kv: KeyValue| {
            if kv.key.is_empty() {
                let mut expected = wrap(tag, kv.clone());
                let mut got = ours.to_vec();
                let field = |b: &mut Vec<u8>| {
                    let mut bytes = &b[..];
                    let (t, _) = prost::encoding::decode_key(&mut bytes).unwrap();
                    assert_eq!(t, tag);
                    let len = prost::encoding::decode_varint(&mut bytes).unwrap() as usize;
                    assert_eq!(len, bytes.len());
                    let decoded = KeyValue::decode(bytes).unwrap();
                    b.clear();
                    decoded
                };
                assert_eq!(field(&mut got), field(&mut expected));
            } else {
                assert_eq!(ours, &wrap(tag, kv)[..]);
            }
        };
        let kv = |key: &str, v: Value| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let mut lens: Vec<usize> = (0..140).collect();
        lens.extend([200, 300, 20_000]);
        for &klen in &[0usize, 9, 25, 60, 120, 126, 127, 128, 130, 200] {
            let key = "k".repeat(klen);
            for tag in [3u32, 6, 9, 15, 16, 20] {
                for &vlen in &lens {
                    let value = "v".repeat(vlen);
                    let mut ours = Vec::new();
                    attr_str(&mut ours, tag, &key, &value);
                    assert_same(&ours, tag, kv(&key, Value::StringValue(value)));
                }
                for v in [0i64, 1, 127, 128, 200, 503, 1 << 20, -1, i64::MAX, i64::MIN] {
                    let mut ours = Vec::new();
                    attr_int(&mut ours, tag, &key, v);
                    assert_same(&ours, tag, kv(&key, Value::IntValue(v)));
                }
                let mut ours = Vec::new();
                attr_f64(&mut ours, tag, &key, 2.5);
                assert_same(&ours, tag, kv(&key, Value::DoubleValue(2.5)));
            }
        }
        // Appending keeps what the buffer held.
        let mut buf = vec![7u8];
        attr_str(&mut buf, 9, "a", "b");
        assert_eq!(buf[0], 7);
        assert_eq!(
            KeyValue::decode(&buf[3..]).unwrap(),
            kv("a", Value::StringValue("b".into()))
        );
    }

    #[test]
    fn batches_go_out_in_buffers_sized_to_them() {
        let mut w = Writer::new(16);
        for n in [100_000usize, 50, 3_000, 200_000, 10] {
            w.items.extend(std::iter::repeat_n(7u8, n));
            w.count = 1;
            let (buf, start) = w.take().unwrap().into_buffer(b"res", b"scope");
            assert_eq!(buf.len() - w.headroom, n);
            assert!(start < w.headroom);
            assert!(
                buf.capacity() <= buf.len() + buf.len() / 4,
                "{n}: capacity {} for {}",
                buf.capacity(),
                buf.len()
            );
            assert_eq!(w.items.len(), w.headroom, "the next batch starts empty");
        }
    }

    #[test]
    fn ip_text_matches_display() {
        let mut out = String::from("stale");
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        ips.extend((0..1000).map(|_| IpAddr::from(fastrand::u32(..).to_be_bytes())));
        ips.push("2001:db8::8a2e:370:7334".parse().unwrap());
        for ip in ips {
            write_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }
}
