//! A lean HTTP/1.1 client connection for load generation, as wrk does it: the request is encoded
//! once and written as is; each response head is parsed with httparse and its body (fixed
//! length, chunked, or up to the close) read and dropped.
//!
//! hyper's client builds a `Request`, a `HeaderMap` and a body channel per exchange and drives
//! the connection from a second task; for a generator whose job is to keep a proxy busy that
//! was most of its CPU (about 3 µs of user time per request, 4× wrk's).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head larger than this is refused (hyper's default limit is larger; a benchmark
/// target does not send such heads).
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;
/// Read size.
const READ_CHUNK: usize = 16 * 1024;

/// The request of a benchmark, encoded once.
#[derive(Clone, Debug)]
pub(crate) struct EncodedRequest {
    bytes: Bytes,
    /// HEAD responses carry no body whatever their headers say.
    head: bool,
}

impl EncodedRequest {
    /// Encodes `method target HTTP/1.1`, `Host` (from the URL unless given), the headers,
    /// `content-length` for a body (or for methods that expect one) and the body.
    pub(crate) fn new(
        method: &Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: &Bytes,
    ) -> Result<Self, String> {
        let target = url.path_and_query().map_or("/", |pq| pq.as_str());
        let mut out = BytesMut::with_capacity(256 + body.len());
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(target.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        let has = |name: &HeaderName| headers.iter().any(|(n, _)| n == name);
        if !has(&http::header::HOST) {
            let authority = url.authority().ok_or("url has no host:port")?;
            out.put_slice(b"host: ");
            out.put_slice(authority.as_str().as_bytes());
            out.put_slice(b"\r\n");
        }
        for (name, value) in headers {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        let wants_length =
            !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        if wants_length && !has(&http::header::CONTENT_LENGTH) {
            out.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        out.put_slice(b"\r\n");
        out.put_slice(body);
        Ok(EncodedRequest {
            bytes: out.freeze(),
            head: *method == Method::HEAD,
        })
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One keep-alive connection.
#[derive(Debug)]
pub(crate) struct H1Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed are `buf[start..]`.
    buf: BytesMut,
    start: usize,
    /// False once the server said `Connection: close` (or closed).
    reusable: bool,
}

impl H1Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        H1Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            start: 0,
            reusable: true,
        }
    }

    /// Whether another request may be sent on this connection.
    pub(crate) fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends the request and reads the response to its end; returns its status.
    pub(crate) async fn send(&mut self, req: &EncodedRequest) -> Result<u16, String> {
        if !self.reusable {
            return Err("connection closed by the server".into());
        }
        self.stream
            .write_all(&req.bytes)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let (status, framing, head_len) = self.read_head(req.head).await?;
            self.start += head_len;
            // 1xx heads (100 Continue, 103 Early Hints) precede the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            match framing {
                Framing::Empty => {}
                Framing::Length(n) => self.skip(n).await?,
                Framing::Chunked => self.skip_chunked().await?,
                Framing::UntilClose => {
                    self.reusable = false;
                    while self.fill().await? > 0 {
                        self.start = self.buf.len();
                    }
                }
            }
            self.compact();
            return Ok(status);
        }
    }

    /// Parses the next response head, reading until it is complete.
    async fn read_head(&mut self, head_request: bool) -> Result<(u16, Framing, usize), String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf[self.start..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut framing = Framing::UntilClose;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .ok_or("invalid content-length")?;
                            framing = Framing::Length(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.rsplit(|&b| b == b',').next().is_some_and(|last| {
                                last.trim_ascii().eq_ignore_ascii_case(b"chunked")
                            });
                        } else if h.name.eq_ignore_ascii_case("connection")
                            && h.value
                                .split(|&b| b == b',')
                                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                        {
                            self.reusable = false;
                        }
                    }
                    if chunked {
                        framing = Framing::Chunked;
                    }
                    if head_request
                        || status == 204
                        || status == 304
                        || (100..200).contains(&status)
                    {
                        framing = Framing::Empty;
                    }
                    if resp.version == Some(0) && framing == Framing::UntilClose {
                        self.reusable = false;
                    }
                    return Ok((status, framing, len));
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - self.start >= MAX_HEAD {
                        return Err(format!("response head larger than {MAX_HEAD} bytes"));
                    }
                }
                Err(e) => return Err(format!("malformed response head: {e}")),
            }
            if self.fill().await? == 0 {
                self.reusable = false;
                return Err("connection closed before a complete response head".into());
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, String> {
        self.compact();
        self.buf.reserve(READ_CHUNK);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| e.to_string())
    }

    /// Drops consumed bytes: cheap when everything was consumed (the usual case).
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            let left = self.buf.len() - self.start;
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(left);
            self.start = 0;
        }
    }

    /// Consumes `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> Result<(), String> {
        loop {
            let have = (self.buf.len() - self.start) as u64;
            let take = have.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                self.reusable = false;
                return Err("connection closed in the middle of a response body".into());
            }
        }
    }

    /// Consumes a chunked body up to and including its trailers.
    async fn skip_chunked(&mut self) -> Result<(), String> {
        loop {
            let line = self.line().await?;
            let size_hex = self.buf[line]
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default();
            let size = std::str::from_utf8(size_hex)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or("invalid chunk size")?;
            if size == 0 {
                // Trailer fields until an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err("chunk data longer than its size".into());
            }
        }
    }

    /// The next CRLF-terminated line, consumed: where it is in the buffer (without the CRLF),
    /// valid until the next read.
    async fn line(&mut self) -> Result<std::ops::Range<usize>, String> {
        loop {
            let pending = &self.buf[self.start..];
            if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = self.start..self.start + i;
                self.start += i + 2;
                return Ok(line);
            }
            if pending.len() >= MAX_HEAD {
                return Err("chunk line too long".into());
            }
            if self.fill().await? == 0 {
                self.reusable = false;
                return Err("connection closed in the middle of a chunked body".into());
            }
        }
    }
}

#[cfg(test)]
mod tests;
