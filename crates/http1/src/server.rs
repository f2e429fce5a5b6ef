//! The server side: request heads without a body parsed off a connection's read buffer, and
//! response heads framed by hyper's server rules.
//!
//! Only the common, simple request is taken here: a well-formed head with no body, no
//! `expect`, no upgrade and not CONNECT. Anything else is left in the buffer for a complete
//! HTTP/1 server (hyper), which then answers it exactly as it would have from the first byte:
//! its 400s, 431s and 100-continues stay its own.

use crate::fields::{content_length, lists_token, reuse_map};
use crate::request::itoa_u64;
use crate::spans::Spans;
use crate::{BodySize, MAX_HEADERS, ResponseFraming};
use bytes::{BufMut, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// A request head taken off the buffer, and what it asks of the connection.
#[derive(Debug)]
pub struct RequestHead {
    /// The request, with no body; header values and the target share the read buffer's memory.
    pub request: Request<()>,
    /// The connection may carry another request after this one's response: HTTP/1.1 without
    /// `connection: close`. (HTTP/1.0 connections close after one response, as with hyper.)
    pub keep_alive: bool,
    /// The client accepts trailer fields in a chunked response (`te: trailers`).
    pub trailers: bool,
}

/// What the front of a connection's read buffer holds.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Moved once per request; a box would allocate each time.
pub enum ParsedRequest {
    /// The head of a simple request, split off the buffer.
    Simple(RequestHead),
    /// Not the whole head yet (and no more than `max_bytes` so far): read more. The buffer is
    /// unchanged.
    Partial,
    /// A request for a complete server: one with a body, `expect`, `upgrade` or CONNECT, more
    /// than [`MAX_HEADERS`] fields, a head over `max_bytes`, or bytes that are no HTTP/1.x head
    /// (an HTTP/2 preface among them). The buffer is unchanged.
    Other,
}

/// Parses the request head at the front of `buf`, splitting it off if the request is simple.
pub fn parse_request_head(buf: &mut BytesMut, max_bytes: usize) -> ParsedRequest {
    parse_request_head_reusing(buf, max_bytes, &mut HeaderMap::new())
}

/// [`parse_request_head`], filling the map taken out of `spare` (cleared; its allocation is
/// reused) rather than a new one: a server can hand over the map of the response it last
/// wrote. `spare` is only taken once a complete head is there.
pub fn parse_request_head_reusing(
    buf: &mut BytesMut,
    max_bytes: usize,
    spare: &mut HeaderMap,
) -> ParsedRequest {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_bytes => return ParsedRequest::Partial,
        _ => return ParsedRequest::Other,
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return ParsedRequest::Other;
    };
    if method == "CONNECT" || u32::try_from(len).is_err() {
        return ParsedRequest::Other;
    }
    let base = buf.as_ptr() as usize;
    // Offsets within the head (at most `max_bytes`, checked to fit in u32 above).
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let target_span = (at(target.as_bytes()), target.len() as u32);
    let count = req.headers.len();
    let mut room = Spans::new();
    let spans = room.room(count);
    // Read off the raw fields as they go by, rather than looked up in the map afterwards.
    let (mut close, mut trailers) = (false, false);
    for (span, field) in spans.iter_mut().zip(req.headers.iter()) {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            close |= lists_token(field.value, b"close");
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= lists_token(field.value, b"trailers");
        }
        let body_or_more = name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || (name.eq_ignore_ascii_case(b"content-length") && field.value != b"0");
        if body_or_more {
            return ParsedRequest::Other;
        }
        *span = (
            at(name),
            name.len() as u32,
            at(field.value),
            field.value.len() as u32,
        );
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return ParsedRequest::Other;
    };

    let head = buf.split_to(len).freeze();
    let slice = |start: u32, len: u32| head.slice(start as usize..(start + len) as usize);
    // Room for the fields the proxy adds (`traceparent`, `x-forwarded-for`…) without the map
    // growing (~750 instructions) on the first insert.
    let Some(mut headers) = reuse_map(spare, count + 2) else {
        return rejoin(buf, head);
    };
    for &(ns, nl, vs, vl) in &*spans {
        let name = HeaderName::from_bytes(&head[ns as usize..(ns + nl) as usize]);
        let value = HeaderValue::from_maybe_shared(slice(vs, vl));
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            // httparse and `http` agree on what a field is; should they ever not, the bytes
            // go back for the complete server to judge.
            _ => return rejoin(buf, head),
        }
    }
    let Ok(uri) = Uri::from_maybe_shared(slice(target_span.0, target_span.1)) else {
        return rejoin(buf, head);
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let keep_alive = version == Version::HTTP_11 && !close;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    ParsedRequest::Simple(RequestHead {
        request,
        keep_alive,
        trailers,
    })
}

/// Puts a split-off head back in front of what followed it.
#[cold]
fn rejoin(buf: &mut BytesMut, head: bytes::Bytes) -> ParsedRequest {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.put_slice(&head);
    whole.put_slice(buf);
    *buf = whole;
    ParsedRequest::Other
}

/// How the response goes out: its body framing and whether the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseWrite {
    pub framing: ResponseFraming,
    /// False when the request asked to close, or the body is delimited by closing.
    pub keep_alive: bool,
}

/// What of a request its response head depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContext<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// [`RequestHead::keep_alive`].
    pub keep_alive: bool,
}

/// Writes a response head into `out` with hyper's server framing: a body's exact size
/// becomes `content-length` (the headers' own if the size is unknown), any other body is
/// chunked (HTTP/1.1) or ends with the connection (HTTP/1.0); responses to HEAD and 204/304
/// carry no body; an HTTP/1.1 connection that will close says so; a response without a `date`
/// gets `date()`. `content-length` and `transfer-encoding` in `headers` give way to the framing
/// chosen (except a HEAD response's `content-length`, which describes the GET's body).
pub fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    request: RequestContext<'_>,
    body: BodySize,
    date: impl FnOnce() -> HeaderValue,
    out: &mut BytesMut,
) -> ResponseWrite {
    let head_request = *request.method == Method::HEAD;
    let http11 = request.version != Version::HTTP_10;
    let mut keep_alive = request.keep_alive;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if head_request || bodiless_status {
        ResponseFraming::Empty
    } else {
        match body {
            BodySize::Empty | BodySize::Exact(0) => ResponseFraming::Empty,
            BodySize::Exact(n) => ResponseFraming::Length(n),
            BodySize::Unknown => match content_length(headers) {
                Some(0) => ResponseFraming::Empty,
                Some(n) => ResponseFraming::Length(n),
                _ if http11 => ResponseFraming::Chunked,
                _ => ResponseFraming::UntilClose,
            },
        }
    };
    if framing == ResponseFraming::UntilClose {
        keep_alive = false;
    }

    if status == StatusCode::OK && http11 {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.put_slice(if http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.put_slice(b"\r\n");
    }
    let (mut says_close, mut dated) = (false, false);
    for (name, value) in headers {
        if *name == TRANSFER_ENCODING || (*name == CONTENT_LENGTH && !head_request) {
            continue;
        }
        if *name == CONNECTION && lists_token(value.as_bytes(), b"close") {
            says_close = true;
        }
        dated |= *name == DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        out.put_slice(date().as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa_u64(n, &mut [0u8; 20]));
            out.put_slice(b"\r\n");
        }
        ResponseFraming::Empty if !head_request && !bodiless_status => {
            out.put_slice(b"content-length: 0\r\n");
        }
        ResponseFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Empty | ResponseFraming::UntilClose => {}
    }
    if says_close {
        keep_alive = false;
    } else if !keep_alive && http11 {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    ResponseWrite {
        framing,
        keep_alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_map_holds_only_the_requests_fields() {
        let mut spare = HeaderMap::new();
        spare.insert("x-response-only", HeaderValue::from_static("1"));
        spare.insert("server", HeaderValue::from_static("up"));
        let mut buf = BytesMut::from(&b"GET /a HTTP/1.1\r\nhost: x\r\n"[..]);
        // Incomplete: the spare map is left alone.
        assert!(matches!(
            parse_request_head_reusing(&mut buf, 8192, &mut spare),
            ParsedRequest::Partial
        ));
        assert_eq!(spare.len(), 2);
        buf.extend_from_slice(b"accept: */*\r\n\r\nGET /b");
        let ParsedRequest::Simple(head) = parse_request_head_reusing(&mut buf, 8192, &mut spare)
        else {
            panic!("not parsed as a simple request");
        };
        let fields: Vec<(String, String)> = head
            .request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            fields,
            [("host", "x"), ("accept", "*/*")].map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert!(spare.is_empty());
        assert_eq!(&buf[..], b"GET /b");
    }

    const MAX: usize = 64 * 1024;

    fn simple(text: &str) -> (RequestHead, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        match parse_request_head(&mut buf, MAX) {
            ParsedRequest::Simple(head) => (head, buf),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_simple_head_is_split_off_and_a_pipelined_request_stays() {
        let (head, rest) = simple(
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\nGET /next",
        );
        let req = &head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(req.uri().query(), Some("b=1"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(head.keep_alive);
        assert!(!head.trailers);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn a_head_with_many_fields_keeps_them_all() {
        let fields: String = (0..40).map(|i| format!("x-{i}: v{i}\r\n")).collect();
        let (head, _) = simple(&format!("GET / HTTP/1.1\r\n{fields}\r\n"));
        assert_eq!(head.request.headers().len(), 40);
        assert_eq!(head.request.headers()["x-39"], "v39");
    }

    #[test]
    fn keep_alive_and_trailers_follow_the_request() {
        let (h, _) = simple("GET / HTTP/1.1\r\nconnection: Keep-Alive, Close\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = simple("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert!(
            !h.keep_alive,
            "HTTP/1.0 connections close after one response"
        );
        assert_eq!(h.request.version(), Version::HTTP_10);
        let (h, _) = simple("GET / HTTP/1.1\r\nte: gzip, trailers\r\n\r\n");
        assert!(h.trailers);
        let (h, _) = simple("GET http://example.com:8080/p HTTP/1.1\r\n\r\n");
        assert_eq!(h.request.uri().authority().unwrap(), "example.com:8080");
        assert_eq!(h.request.uri().path(), "/p");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_keeps_the_buffer() {
        let text = "GET / HTTP/1.1\r\nhost: x\r\n";
        let mut buf = BytesMut::from(text.as_bytes());
        assert!(matches!(
            parse_request_head(&mut buf, MAX),
            ParsedRequest::Partial
        ));
        assert_eq!(&buf[..], text.as_bytes());
    }

    #[test]
    fn anything_but_a_simple_request_is_left_whole_for_the_complete_server() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(100));
        let cases = [
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello".to_string(),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\n".into(),
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            "PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".into(),
            "CONNECT example.com:443 HTTP/1.1\r\n\r\n".into(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
            "GARBAGE\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nbad header\r\n\r\n".into(),
            "GET /a b HTTP/1.1\r\n\r\n".into(),
            format!("GET / HTTP/1.1\r\n{many}\r\n"),
        ];
        for text in cases.iter().map(String::as_str).chain([long.as_str()]) {
            let mut buf = BytesMut::from(text.as_bytes());
            let max = if text == long { 64 } else { MAX };
            let parsed = parse_request_head(&mut buf, max);
            assert!(
                matches!(parsed, ParsedRequest::Other),
                "{text:?}: {parsed:?}"
            );
            assert_eq!(&buf[..], text.as_bytes(), "{text:?}");
        }
        // An incomplete head already past the limit is not waited on either.
        let mut partial = BytesMut::from(&long.as_bytes()[..80]);
        assert!(matches!(
            parse_request_head(&mut partial, 64),
            ParsedRequest::Other
        ));
    }

    proptest::proptest! {
        /// Any bytes: an answer and never a panic; the buffer is only consumed by a simple head.
        #[test]
        fn any_input_gets_an_answer_and_only_a_simple_head_is_consumed(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut buf = BytesMut::from(&junk[..]);
            match parse_request_head(&mut buf, MAX) {
                ParsedRequest::Simple(_) => proptest::prop_assert!(buf.len() < junk.len()),
                _ => proptest::prop_assert_eq!(&buf[..], &junk[..]),
            }
        }
    }

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        method: Method,
        version: Version,
        keep_alive: bool,
        body: BodySize,
    ) -> (String, ResponseWrite) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        let w = encode_response_head(
            StatusCode::from_u16(status).unwrap(),
            &map,
            RequestContext {
                method: &method,
                version,
                keep_alive,
            },
            body,
            || HeaderValue::from_static("Sun, 06 Dec 2026 07:00:00 GMT"),
            &mut out,
        );
        (String::from_utf8(out.to_vec()).unwrap(), w)
    }

    #[test]
    fn response_framing_follows_hypers_server() {
        use ResponseFraming::*;
        let date = ("date", "Sun, 06 Dec 2026 07:00:00 GMT");
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        let cases: Vec<(String, ResponseWrite, &str, ResponseFraming, bool)> = vec![
            {
                let (t, w) = encode(
                    200,
                    &[date, ("content-length", "99")],
                    get.clone(),
                    v11,
                    true,
                    BodySize::Exact(5),
                );
                (
                    t,
                    w,
                    "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ncontent-length: 5\r\n\r\n",
                    Length(5),
                    true,
                )
            },
            {
                let (t, w) = encode(
                    200,
                    &[date, ("transfer-encoding", "chunked")],
                    get.clone(),
                    v11,
                    true,
                    BodySize::Unknown,
                );
                (
                    t,
                    w,
                    "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n",
                    Chunked,
                    true,
                )
            },
            {
                let (t, w) = encode(
                    200,
                    &[date, ("content-length", "7")],
                    get.clone(),
                    v11,
                    true,
                    BodySize::Unknown,
                );
                (
                    t,
                    w,
                    "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ncontent-length: 7\r\n\r\n",
                    Length(7),
                    true,
                )
            },
            {
                let (t, w) = encode(404, &[date], get.clone(), v11, false, BodySize::Empty);
                (
                    t,
                    w,
                    "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    Empty,
                    false,
                )
            },
            {
                let (t, w) = encode(
                    200,
                    &[date],
                    get.clone(),
                    Version::HTTP_10,
                    false,
                    BodySize::Unknown,
                );
                (
                    t,
                    w,
                    "HTTP/1.0 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\n\r\n",
                    UntilClose,
                    false,
                )
            },
            {
                let (t, w) = encode(
                    200,
                    &[date, ("content-length", "10")],
                    Method::HEAD,
                    v11,
                    true,
                    BodySize::Empty,
                );
                (
                    t,
                    w,
                    "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ncontent-length: 10\r\n\r\n",
                    Empty,
                    true,
                )
            },
            {
                let (t, w) = encode(204, &[date], get.clone(), v11, true, BodySize::Exact(3));
                (
                    t,
                    w,
                    "HTTP/1.1 204 No Content\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\n\r\n",
                    Empty,
                    true,
                )
            },
            {
                let (t, w) = encode(
                    304,
                    &[date, ("content-length", "10")],
                    get.clone(),
                    v11,
                    true,
                    BodySize::Empty,
                );
                (
                    t,
                    w,
                    "HTTP/1.1 304 Not Modified\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\n\r\n",
                    Empty,
                    true,
                )
            },
            {
                let (t, w) = encode(
                    200,
                    &[date, ("connection", "close")],
                    get.clone(),
                    v11,
                    true,
                    BodySize::Exact(1),
                );
                (
                    t,
                    w,
                    "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                    Length(1),
                    false,
                )
            },
            {
                // No date of its own: one is added.
                let (t, w) = encode(502, &[], get.clone(), v11, true, BodySize::Empty);
                (
                    t,
                    w,
                    "HTTP/1.1 502 Bad Gateway\r\ndate: Sun, 06 Dec 2026 07:00:00 GMT\r\ncontent-length: 0\r\n\r\n",
                    Empty,
                    true,
                )
            },
        ];
        for (text, w, want, framing, keep_alive) in cases {
            assert_eq!(text, want);
            assert_eq!(
                w,
                ResponseWrite {
                    framing,
                    keep_alive
                },
                "{want:?}"
            );
        }
    }
}
