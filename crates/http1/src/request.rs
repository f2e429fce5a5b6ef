//! Request heads and chunked request bodies.

use crate::Error;
use crate::fields::{content_length, ends_in_chunked, length_value};
use bytes::{BufMut, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Version};

/// What is known of a request body before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// The body has ended already (nothing to send).
    Empty,
    /// Exactly this many bytes will come.
    Exact(u64),
    /// A stream of unknown length.
    Unknown,
}

/// How the body of a request goes on the wire, as its head (written by
/// [`encode_request_head`]) announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// Exactly this many bytes (0: none, whatever the body holds).
    Length(u64),
    /// `transfer-encoding: chunked`: each data frame behind [`encode_chunk_head`] and followed
    /// by CRLF, then [`encode_last_chunk`].
    Chunked,
}

/// Writes the head of a request (`parts`, its URI in origin form) to `out` and returns how its
/// body must follow, with the rules of hyper's client: a body that has ended sends nothing; a
/// `transfer-encoding` given is kept and made to end in `chunked`; a valid `content-length`
/// given is kept; otherwise an exact size becomes `content-length` and an unknown one
/// `transfer-encoding: chunked` (or no body at all for GET, HEAD and CONNECT). HTTP/1.0
/// requests are never chunked. Fails only for a `content-length` that is not one number.
pub fn encode_request_head(
    parts: &http::request::Parts,
    body: BodySize,
    out: &mut BytesMut,
) -> Result<RequestFraming, Error> {
    let headers = &parts.headers;
    let http10 = parts.version == Version::HTTP_10;
    let empty = matches!(body, BodySize::Empty);
    // A request with no body keeps only `content-length: 0` lines, judged as they are written
    // (no lookups for the common GET).
    let given_length = match !empty && headers.contains_key(CONTENT_LENGTH) {
        true => Some(content_length(headers).ok_or(Error::InvalidContentLength("request"))?),
        false => None,
    };
    let given_te = !empty && !http10 && headers.contains_key(TRANSFER_ENCODING);
    // (framing, write the headers' own content-length, write their transfer-encoding, added header)
    let (framing, keep_length, keep_te, added): (_, _, _, &[u8]) = match body {
        BodySize::Empty => (RequestFraming::Length(0), false, false, b""),
        _ if given_te => {
            let chunked = ends_in_chunked(headers);
            let added: &[u8] = if chunked {
                b""
            } else {
                b"transfer-encoding: chunked\r\n"
            };
            (RequestFraming::Chunked, false, true, added)
        }
        _ if given_length.is_some() => (
            RequestFraming::Length(given_length.unwrap_or(0)),
            true,
            false,
            b"",
        ),
        BodySize::Exact(n) => (RequestFraming::Length(n), false, false, b""),
        BodySize::Unknown if http10 || is_bodiless_method(&parts.method) => {
            (RequestFraming::Length(0), false, false, b"")
        }
        BodySize::Unknown => (
            RequestFraming::Chunked,
            false,
            false,
            b"transfer-encoding: chunked\r\n",
        ),
    };

    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(if http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in headers {
        if (name == CONTENT_LENGTH
            && !(keep_length || (empty && length_value(value.as_bytes()) == Some(0))))
            || (name == TRANSFER_ENCODING && !keep_te)
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    // A transfer-encoding given without `chunked` last gets it as a further line (same field).
    out.put_slice(added);
    if let RequestFraming::Length(n) = framing
        && !keep_length
        && (n > 0 || (matches!(body, BodySize::Exact(_)) && !is_bodiless_method(&parts.method)))
    {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa_u64(n, &mut [0u8; 20]));
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(framing)
}

fn is_bodiless_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::CONNECT)
}

/// Writes the size line of a chunk of `len` bytes (not 0: that is [`encode_last_chunk`]); the
/// caller writes the data and then `\r\n`.
pub fn encode_chunk_head(len: usize, out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// Ends a chunked body: the zero-size chunk, the trailer fields if any, the empty line.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Decimal digits of `n`, written into `buf`.
pub(crate) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(req: Request<()>, body: BodySize) -> (String, RequestFraming) {
        let (parts, ()) = req.into_parts();
        let mut out = BytesMut::new();
        let framing = encode_request_head(&parts, body, &mut out).unwrap();
        (String::from_utf8(out.to_vec()).unwrap(), framing)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_get_without_body_has_no_framing_headers() {
        let (text, framing) = head(req("GET", "/a?b=1", &[("host", "x")]), BodySize::Empty);
        assert_eq!(text, "GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length(0));
    }

    #[test]
    fn an_exact_body_gets_its_content_length_and_a_given_one_is_kept() {
        let (text, framing) = head(req("POST", "/", &[("host", "x")]), BodySize::Exact(12));
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(framing, RequestFraming::Length(12));
        // An empty exact body on a POST still says so.
        let (text, _) = head(req("PUT", "/", &[]), BodySize::Exact(0));
        assert_eq!(text, "PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let (text, framing) = head(
            req("POST", "/", &[("content-length", "5")]),
            BodySize::Unknown,
        );
        assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length(5));
    }

    #[test]
    fn an_unknown_body_is_chunked_except_on_bodiless_methods_and_http10() {
        let (text, framing) = head(req("POST", "/up", &[]), BodySize::Unknown);
        assert_eq!(
            text,
            "POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, RequestFraming::Chunked);
        let (text, framing) = head(req("GET", "/", &[]), BodySize::Unknown);
        assert_eq!(text, "GET / HTTP/1.1\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length(0));
        let mut r = req("POST", "/", &[("transfer-encoding", "chunked")]);
        *r.version_mut() = Version::HTTP_10;
        let (text, framing) = head(r, BodySize::Unknown);
        assert_eq!(text, "POST / HTTP/1.0\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length(0));
    }

    #[test]
    fn a_given_transfer_encoding_wins_over_content_length_and_ends_in_chunked() {
        let (text, framing) = head(
            req(
                "POST",
                "/",
                &[("transfer-encoding", "gzip"), ("content-length", "3")],
            ),
            BodySize::Exact(3),
        );
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, RequestFraming::Chunked);
        let (text, _) = head(
            req("POST", "/", &[("transfer-encoding", "gzip, Chunked")]),
            BodySize::Unknown,
        );
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"
        );
    }

    #[test]
    fn an_ended_body_drops_a_transfer_encoding_and_a_nonzero_length() {
        let (text, framing) = head(
            req(
                "POST",
                "/",
                &[("transfer-encoding", "chunked"), ("content-length", "0")],
            ),
            BodySize::Empty,
        );
        assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length(0));
        let (text, _) = head(
            req("GET", "/", &[("content-length", "5"), ("x", "1")]),
            BodySize::Empty,
        );
        assert_eq!(text, "GET / HTTP/1.1\r\nx: 1\r\n\r\n");
    }

    #[test]
    fn a_content_length_that_is_not_one_number_is_refused() {
        for bad in ["x", "1, 2", "-1", "", "1 2"] {
            let (parts, ()) = req("POST", "/", &[("content-length", bad)]).into_parts();
            let e = encode_request_head(&parts, BodySize::Unknown, &mut BytesMut::new());
            assert_eq!(e, Err(Error::InvalidContentLength("request")), "{bad:?}");
        }
        let (text, _) = head(
            req("POST", "/", &[("content-length", "7, 7")]),
            BodySize::Unknown,
        );
        assert!(text.contains("content-length: 7, 7\r\n"), "{text}");
    }

    #[test]
    fn chunks_are_framed_in_lowercase_hex_and_end_with_trailers() {
        let mut out = BytesMut::new();
        for len in [1usize, 10, 255, 4096, usize::MAX] {
            encode_chunk_head(len, &mut out);
        }
        assert_eq!(
            &out[..],
            format!("1\r\na\r\nff\r\n1000\r\n{:x}\r\n", usize::MAX).as_bytes()
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "9".parse().unwrap());
        let mut out = BytesMut::new();
        encode_last_chunk(Some(&trailers), &mut out);
        assert_eq!(&out[..], b"0\r\nx-sum: 9\r\n\r\n");
        let mut out = BytesMut::new();
        encode_last_chunk(None, &mut out);
        assert_eq!(&out[..], b"0\r\n\r\n");
    }
}
