//! HTTP/1.1 exchanges without a body to send, driven by the request's own task.
//!
//! hyper's client connection runs in a task of its own: the request reaches it through a
//! dispatch channel and the response comes back through a oneshot, each a wait behind every
//! task already queued. For a request with no body (most GETs) nothing needs that: the head is
//! written and the response read by whoever awaits the exchange, and the response body is read
//! from the socket by whoever polls it (the downstream connection's task), which hands the
//! connection back to the pool when the body ends. Requests with a body still go through
//! hyper, which can read an early response while it writes a large body.

use super::idle::{IdleList, Reusable};
use crate::body::BoxError;
use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use otlp_mesh_http1::{
    BodyDecoder, BodySize, Decoded, HeadLimits, ResponseFraming, ResponseHead, encode_request_head,
    parse_response_head_reusing,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A response head larger than this is refused (hyper's client default, 8 KiB + 100 × 4 KiB).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// How much a read buffer grows when it runs short.
const READ_BUFFER: usize = 16 * 1024;

/// One upstream connection, used by one exchange at a time.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// What was read and not yet taken: a response head, body bytes.
    buf: BytesMut,
    /// The request head being written (kept for its allocation).
    out: BytesMut,
}

/// Why a lean exchange failed before its response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("invalid request: {0}")]
    Request(otlp_mesh_http1::Error),
    #[error("invalid response: {0}")]
    Response(otlp_mesh_http1::Error),
    /// The connection ended (or failed) before a whole response head arrived.
    #[error("{source}")]
    Io {
        source: io::Error,
        /// Bytes of a response had arrived.
        answered: bool,
    },
}

impl ExchangeError {
    /// Nothing came back: on a connection that had carried exchanges before, the server most
    /// likely closed it as idle while the request was on its way.
    pub(crate) fn unanswered(&self) -> bool {
        matches!(
            self,
            ExchangeError::Io {
                answered: false,
                ..
            }
        )
    }
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: BytesMut::new(),
        }
    }

    /// Whether the server closed the idle connection (or sent something no request asked
    /// for), seen from the socket's readiness: no system call while nothing has arrived.
    fn is_broken(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        match self
            .stream
            .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable: end of file, an error, unasked-for bytes, or readiness left over from
            // the last response (`try_read` then clears it).
            Poll::Ready(Ok(())) => !matches!(
                self.stream.try_read_buf(&mut self.buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Writes the head of a request without a body and reads the response head. The response's
    /// header map reuses the request's allocation (the request's fields are gone once a
    /// response has come: it is answered and never sent again).
    pub(crate) async fn exchange(
        &mut self,
        parts: &mut http::request::Parts,
    ) -> Result<ResponseHead, ExchangeError> {
        self.out.clear();
        encode_request_head(parts, BodySize::Empty, &mut self.out)
            .map_err(ExchangeError::Request)?;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|source| ExchangeError::Io {
                source,
                answered: false,
            })?;
        let limits = HeadLimits {
            max_bytes: MAX_HEAD,
        };
        loop {
            if let Some(head) = parse_response_head_reusing(
                &mut self.buf,
                &parts.method,
                &limits,
                &mut parts.headers,
            )
            .map_err(ExchangeError::Response)?
            {
                return Ok(head);
            }
            let answered = !self.buf.is_empty();
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => {
                    return Err(ExchangeError::Io {
                        source: io::ErrorKind::UnexpectedEof.into(),
                        answered,
                    });
                }
                Ok(_) => {}
                Err(source) => return Err(ExchangeError::Io { source, answered }),
            }
        }
    }

    /// Reads more into the buffer: `Ready(Ok(0))` at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::read_buf::poll_fill(&mut self.stream, &mut self.buf, READ_BUFFER, cx)
    }
}

impl Reusable for Conn {
    fn is_open(&mut self) -> bool {
        !self.is_broken()
    }
}

/// Whether a request may be sent again after a connection closed without answering it.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response body read off its connection by whoever polls it. The connection goes back to
/// its pool when the body has ended (if the server keeps it open), and is closed when the body
/// is dropped unfinished.
pub struct LeanBody {
    state: BodyState,
}

enum BodyState {
    /// What is left of the body is here (possibly nothing: it came with the head, or it has
    /// ended, its trailers included); the connection is no longer the body's.
    Ready(Option<Bytes>),
    Streaming(Box<Streaming>),
}

/// A body still being read from its connection.
struct Streaming {
    conn: Conn,
    decoder: BodyDecoder,
    keep_alive: bool,
    slot: Arc<IdleList<Conn>>,
}

impl std::fmt::Debug for LeanBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            BodyState::Ready(b) => format!("ready({:?} bytes)", b.as_ref().map(Bytes::len)),
            BodyState::Streaming(s) => format!("streaming({:?})", s.decoder.remaining()),
        };
        f.debug_struct("LeanBody").field("state", &state).finish()
    }
}

/// The response to `head` read on `conn`, whose body is taken at once when it is already in
/// the buffer (the connection then goes back to `slot` before the response is handed on).
pub(crate) fn response(
    head: ResponseHead,
    mut conn: Conn,
    slot: Arc<IdleList<Conn>>,
) -> Response<LeanBody> {
    let mut decoder = BodyDecoder::new(head.framing);
    let buffered = match head.framing {
        ResponseFraming::Empty => Some(None),
        ResponseFraming::Length(n) if conn.buf.len() as u64 >= n => {
            match decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(b)) if decoder.is_done() => Some(Some(b)),
                _ => None,
            }
        }
        _ => None,
    };
    let state = match buffered {
        Some(body) => {
            if head.keep_alive && conn.buf.is_empty() {
                slot.put(conn);
            }
            BodyState::Ready(body)
        }
        None => BodyState::Streaming(Box::new(Streaming {
            conn,
            decoder,
            keep_alive: head.keep_alive,
            slot,
        })),
    };
    let mut resp = Response::new(LeanBody { state });
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

impl LeanBody {
    /// Ends the streaming state: the connection goes back to its pool if it may carry another
    /// exchange and nothing unasked-for follows the body.
    fn finish(&mut self, then: BodyState) {
        if let BodyState::Streaming(s) = std::mem::replace(&mut self.state, then) {
            let Streaming {
                conn,
                decoder,
                keep_alive,
                slot,
            } = *s;
            if keep_alive && decoder.is_done() && conn.buf.is_empty() {
                slot.put(conn);
            }
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let s = match &mut this.state {
                BodyState::Ready(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                BodyState::Streaming(s) => s,
            };
            match s.decoder.decode(&mut s.conn.buf) {
                Ok(Decoded::Data(b)) => {
                    if s.decoder.is_done() {
                        this.finish(BodyState::Ready(None));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish(BodyState::Ready(None));
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.finish(BodyState::Ready(None));
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match ready!(s.conn.poll_fill(cx)) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        let end = s.decoder.eof();
                        // A body that ends with the connection leaves nothing to reuse.
                        this.state = BodyState::Ready(None);
                        return Poll::Ready(match end {
                            Ok(_) => None,
                            Err(e) => Some(Err(e.into())),
                        });
                    }
                    Err(e) => {
                        this.state = BodyState::Ready(None);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Err(e) => {
                    this.state = BodyState::Ready(None);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Ready(b) => b.is_none(),
            BodyState::Streaming(s) => s.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Ready(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BodyState::Streaming(s) => match s.decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}
