//! Response heads.

use crate::Error;
use crate::fields::{last_coding_is_chunked, length_value, lists_token, reuse_map};
use crate::spans::Spans;
use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// Header fields parsed per response head at most (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// Limits on a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of the head (status line, fields, empty line).
    pub max_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        // hyper's client reads heads up to about its maximum buffer size (~400 KiB); 64 KiB is
        // the proxy's default for request heads, and upstream heads are no larger.
        HeadLimits {
            max_bytes: 64 * 1024,
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a response to HEAD, 204, 304, or `content-length: 0`.
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding` ending in `chunked`.
    Chunked,
    /// Neither: the body ends when the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the connection can carry another exchange once this body has ended: not
    /// `connection: close`, HTTP/1.1 or a keep-alive HTTP/1.0 response, and a body with an end
    /// of its own.
    pub keep_alive: bool,
}

/// Parses the response head at the front of `buf` and removes it: `Ok(None)` while it is
/// incomplete (read more and call again). Informational (1xx) heads are removed and skipped;
/// 101 is an error, since this client never asks for an upgrade. `method` is the request's,
/// for HEAD. Field values share `buf`'s memory.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, Error> {
    parse_response_head_reusing(buf, method, limits, &mut HeaderMap::new())
}

/// [`parse_response_head`], filling the map taken out of `spare` (cleared; its allocation is
/// reused) rather than a new one: a client that has just sent a request's head can hand over
/// that request's map. `spare` is only taken once a complete head is there.
pub fn parse_response_head_reusing(
    buf: &mut BytesMut,
    method: &Method,
    limits: &HeadLimits,
    spare: &mut HeaderMap,
) -> Result<Option<ResponseHead>, Error> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > limits.max_bytes => {
                return Err(Error::HeadTooLarge(limits.max_bytes));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders(MAX_HEADERS)),
            Err(e) => return Err(Error::MalformedHead(e.to_string())),
        };
        if len > limits.max_bytes || u32::try_from(len).is_err() {
            return Err(Error::HeadTooLarge(limits.max_bytes));
        }
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Error::MalformedHead(format!("status code {code}")))?;
        let version = match res.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::UnexpectedUpgrade);
            }
            buf.advance(len);
            continue;
        }
        // Where each field sits in the head, so that values can share its bytes once it is
        // split off the buffer.
        let base = buf.as_ptr() as usize;
        let count = res.headers.len();
        let mut room = Spans::new();
        let spans = room.room(count);
        for (span, field) in spans.iter_mut().zip(res.headers.iter()) {
            // Offsets within the head, which is at most `max_bytes` (checked above) long.
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let (name, value) = (at(field.name.as_bytes()), at(field.value));
            *span = (
                name,
                name + field.name.len() as u32,
                value,
                value + field.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        let mut headers = reuse_map(spare, count).ok_or(Error::TooManyHeaders(MAX_HEADERS))?;
        // What framing and keep-alive depend on, read off the fields as they are added rather
        // than looked up afterwards.
        let mut fields = FramingFields::default();
        for &(ns, ne, vs, ve) in &*spans {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| Error::MalformedHead("invalid header name".into()))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| Error::MalformedHead(format!("invalid value of {name}")))?;
            fields.see(&name, value.as_bytes());
            headers.append(name, value);
        }

        let mut keep_alive = match version {
            Version::HTTP_10 => fields.keep_alive,
            _ => !fields.close,
        };
        let framing = if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            ResponseFraming::Empty
        } else if fields.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(Error::MalformedHead(
                    "transfer-encoding in an HTTP/1.0 response".into(),
                ));
            }
            // Both fields: the length is ignored, and the connection not trusted again.
            if fields.length.is_some() {
                keep_alive = false;
            }
            if fields.chunked {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            }
        } else if let Some(length) = fields.length {
            match length {
                Some(0) => ResponseFraming::Empty,
                Some(n) => ResponseFraming::Length(n),
                None => return Err(Error::InvalidContentLength("response")),
            }
        } else {
            ResponseFraming::UntilClose
        };
        if framing == ResponseFraming::UntilClose {
            keep_alive = false;
        }
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// The fields of a response head that decide its framing and keep-alive.
#[derive(Default)]
struct FramingFields {
    /// `content-length` was given: `Some(n)` if all its values agree on `n`.
    length: Option<Option<u64>>,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    fn see(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == CONTENT_LENGTH {
            let agreed = match (self.length, length_value(value)) {
                (None, n) => n,
                (Some(Some(a)), Some(b)) if a == b => Some(a),
                _ => None,
            };
            self.length = Some(agreed);
        } else if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked = last_coding_is_chunked(value);
        } else if *name == CONNECTION {
            self.close |= lists_token(value, b"close");
            self.keep_alive |= lists_token(value, b"keep-alive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_map_holds_only_the_responses_fields() {
        let mut spare = HeaderMap::new();
        spare.insert("x-request-only", "1".parse().unwrap());
        spare.append("accept", "*/*".parse().unwrap());
        let limits = HeadLimits::default();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"[..]);
        // Incomplete: the spare map is left alone.
        let partial = parse_response_head_reusing(&mut buf, &Method::GET, &limits, &mut spare);
        assert!(matches!(partial, Ok(None)));
        assert_eq!(spare.len(), 2);
        buf.extend_from_slice(b"accept: text/plain\r\nx-up: a\r\nx-up: b\r\n\r\nok");
        let head = parse_response_head_reusing(&mut buf, &Method::GET, &limits, &mut spare)
            .unwrap()
            .unwrap();
        let fields: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            fields,
            [
                ("content-length", "2"),
                ("accept", "text/plain"),
                ("x-up", "a"),
                ("x-up", "b"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert!(spare.is_empty());
        assert_eq!(&buf[..], b"ok");
    }

    fn parse(text: &str, method: Method) -> (Result<Option<ResponseHead>, Error>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let r = parse_response_head(&mut buf, &method, &HeadLimits::default());
        (r, buf)
    }

    fn head(text: &str) -> (ResponseHead, BytesMut) {
        let (r, rest) = parse(text, Method::GET);
        (r.unwrap().unwrap(), rest)
    }

    #[test]
    fn a_complete_head_is_split_off_and_what_follows_stays() {
        let (h, rest) =
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello");
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_keeps_the_buffer() {
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n";
        let (r, rest) = parse(text, Method::GET);
        assert!(matches!(r, Ok(None)));
        assert_eq!(&rest[..], text.as_bytes());
    }

    #[test]
    fn informational_heads_are_skipped_and_101_refused() {
        let (h, rest) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(h.headers.get("link").is_none());
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(rest.is_empty());
        let (r, _) = parse(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            Method::GET,
        );
        assert_eq!(r.unwrap_err(), Error::UnexpectedUpgrade);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: &[(&str, Method, ResponseFraming, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                Method::HEAD,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: x, close\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(1),
                true,
            ),
        ];
        for (text, method, framing, keep_alive) in cases {
            let (r, _) = parse(text, method.clone());
            let h = r.unwrap().unwrap();
            assert_eq!(
                (h.framing, h.keep_alive),
                (*framing, *keep_alive),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bad_heads_are_refused_with_the_reason() {
        for (text, want) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                Error::InvalidContentLength("response"),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
                Error::InvalidContentLength("response"),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Error::InvalidContentLength("response"),
            ),
            (
                "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Error::MalformedHead("transfer-encoding in an HTTP/1.0 response".into()),
            ),
        ] {
            assert_eq!(parse(text, Method::GET).0.unwrap_err(), want, "{text:?}");
        }
        assert!(matches!(
            parse("HTTP/1.1 2000 OK\r\n\r\n", Method::GET).0,
            Err(Error::MalformedHead(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", Method::GET).0,
            Err(Error::MalformedHead(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse(&text, Method::GET).0.unwrap_err(),
            Error::TooManyHeaders(MAX_HEADERS)
        );
    }

    proptest::proptest! {
        /// Any bytes: an answer, never a panic; and a valid head cut anywhere asks for more
        /// until it is whole.
        #[test]
        fn any_input_gets_an_answer_and_a_cut_head_waits(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..60,
        ) {
            let mut buf = BytesMut::from(&junk[..]);
            let _ = parse_response_head(&mut buf, &Method::GET, &HeadLimits::default());
            let text = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
            let cut = cut.min(text.len() - 3);
            let mut buf = BytesMut::from(&text[..cut]);
            proptest::prop_assert!(matches!(
                parse_response_head(&mut buf, &Method::GET, &HeadLimits::default()),
                Ok(None)
            ));
            buf.extend_from_slice(&text[cut..]);
            let head = parse_response_head(&mut buf, &Method::GET, &HeadLimits::default());
            proptest::prop_assert_eq!(head.ok().flatten().map(|h| h.framing), Some(ResponseFraming::Length(2)));
            proptest::prop_assert_eq!(&buf[..], b"hi");
        }
    }

    #[test]
    fn a_head_past_the_limit_is_refused_complete_or_not() {
        let limits = HeadLimits { max_bytes: 64 };
        let long = format!("HTTP/1.1 200 OK\r\nx-long: {}\r\n\r\n", "v".repeat(100));
        let mut buf = BytesMut::from(long.as_bytes());
        assert_eq!(
            parse_response_head(&mut buf, &Method::GET, &limits).unwrap_err(),
            Error::HeadTooLarge(64)
        );
        let mut partial = BytesMut::from(&long.as_bytes()[..80]);
        assert_eq!(
            parse_response_head(&mut partial, &Method::GET, &limits).unwrap_err(),
            Error::HeadTooLarge(64)
        );
    }
}
