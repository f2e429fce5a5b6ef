//! HTTP/1.1 requests without a body, served by the connection's own task without hyper.
//!
//! hyper's server moves each request through a dispatcher state machine, builds a body
//! channel per request and re-buffers the response; with the upstream side lean already
//! (`pool::h1::lean`), that was the largest cost left per proxied request. Here the task reads a
//! head with `otlp_mesh_http1::parse_request_head`, calls [`handle`] and writes the response
//! itself. Only simple requests are taken (no body, no `expect`, no upgrade, not CONNECT, a
//! well-formed head within the size limit); at the first other one the connection is served
//! by hyper from that request on, with the bytes read so far replayed, so hyper's answers to
//! everything else (400, 431, 100-continue, h2c, request bodies) are unchanged.

use super::replay::Replay;
use crate::service::{ListenerState, ResponseBody, handle};
use arc_swap::ArcSwap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};
use otlp_mesh_http1::{
    BodySize, ParsedRequest, RequestContext, RequestHead, ResponseFraming, encode_chunk_head,
    encode_last_chunk, encode_response_head, parse_request_head_reusing,
};
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use otlp_mesh_resilience::timeout::ReusableDeadline;

/// How much a read buffer grows when it runs short.
const READ_BUFFER: usize = 8 * 1024;
/// Response bytes gathered before they are written even though the body has more ready.
const WRITE_BATCH: usize = 64 * 1024;
/// Body chunks at least this large are written from their own buffer rather than copied.
const COPY_LIMIT: usize = 8 * 1024;
/// The largest header map (in fields) a connection keeps between requests for reuse.
const SPARE_HEADERS_CAPACITY: usize = 64;

/// The largest request head accepted: the listener's `max_request_headers`, at least 8 KiB
/// (hyper's `max_buf_size` for the same listener, which answers 431 past it).
pub(super) fn max_head_bytes(limits: &otlp_mesh_config::Limits) -> usize {
    usize::try_from(limits.max_request_headers.0)
        .unwrap_or(usize::MAX)
        .max(8192)
}

/// One downstream connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet parsed: the next request head, or the start of one.
    buf: BytesMut,
    /// Response bytes waiting to be written.
    out: BytesMut,
    head_timer: ReusableDeadline,
    /// The last response's header map, emptied: the next request's fields go into its
    /// allocation (one map allocated and freed per connection rather than per request).
    spare_headers: HeaderMap,
    /// Whether the drain wait has been polled once: its waker stays registered, so later
    /// waits only poll it again once the drain watch has changed.
    drain_registered: bool,
}

/// What waiting for a request head ended with.
#[allow(clippy::large_enum_variant)] // Moved once per request; a box would allocate each time.
enum Next {
    Simple(RequestHead),
    /// A request for hyper: hand the connection over.
    Other,
    /// The client closed, the header-read timeout passed, or the listener is draining.
    Close,
}

/// Serves a connection until it closes, handing it to hyper at the first request this server
/// does not take.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ArcSwap<ListenerState>>,
    draining: watch::Receiver<bool>,
) {
    // One wait for the drain per connection, registered once rather than at every idle wait.
    // (Fused: the connection closes once it is ready, but a second poll must not panic.)
    let mut drained = pin!(futures_util::FutureExt::fuse(super::drained(
        draining.clone()
    )));
    let (max_head, head_timeout) = {
        let current = state.load();
        let limits = &current.config.limits;
        (
            max_head_bytes(limits),
            Duration::from(limits.header_read_timeout),
        )
    };
    let mut conn = Conn {
        stream,
        buf: BytesMut::new(),
        out: BytesMut::new(),
        head_timer: ReusableDeadline::default(),
        spare_headers: HeaderMap::new(),
        drain_registered: false,
    };
    // The route timeouts' timer entry: the connection's requests come one after another.
    let mut route_timer = ReusableDeadline::default();
    loop {
        let head = match conn
            .next_request(max_head, head_timeout, &draining, drained.as_mut())
            .await
        {
            Next::Simple(head) => head,
            Next::Other => {
                let Conn { stream, buf, .. } = conn;
                let io = Replay::new(buf.freeze(), stream);
                return super::serve_with_hyper(io, peer, state, draining).await;
            }
            Next::Close => return,
        };
        let RequestHead {
            request,
            keep_alive,
            trailers,
        } = head;
        let method = request.method().clone();
        let version = request.version();
        // Each request reads the state current when it starts; a reload never changes it
        // mid-flight.
        // Pinned where it is made: the request's future is large, and each move is a copy.
        let served = pin!(handle(
            state.load_full(),
            peer,
            request.map(|()| None),
            Some(&mut route_timer),
        ));
        let Some(response) = conn.await_response(served).await else {
            return;
        };
        let Ok(response) = response else {
            // An injected reset: the connection closes without an answer.
            return;
        };
        let request = RequestContext {
            method: &method,
            version,
            keep_alive: keep_alive && !*draining.borrow(),
        };
        match conn.write_response(response, request, trailers).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "response not completed; closing");
                return;
            }
        }
    }
}

impl Conn {
    /// Waits for the next request head, up to `timeout` from when reading would first block.
    async fn next_request(
        &mut self,
        max_head: usize,
        timeout: Duration,
        draining: &watch::Receiver<bool>,
        mut drained: Pin<&mut impl Future<Output = ()>>,
    ) -> Next {
        let mut deadline = None;
        loop {
            match parse_request_head_reusing(&mut self.buf, max_head, &mut self.spare_headers) {
                ParsedRequest::Simple(head) => return Next::Simple(head),
                ParsedRequest::Other => return Next::Other,
                ParsedRequest::Partial => {}
            }
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_read(cx) {
                    return Poll::Ready(Some(r));
                }
                // The clock is read only when the head is not there yet.
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
                if self.head_timer.poll_until(deadline, cx).is_ready() {
                    return Poll::Ready(None);
                }
                // Between requests a draining listener closes the connection (or when the
                // listener is gone); in the middle of a head it waits for the rest. Polled
                // again only after the watch changed: a poll costs more than the rest of this
                // wait, and the first one left the task's waker registered.
                if self.buf.is_empty()
                    && (!self.drain_registered || draining.has_changed().unwrap_or(true))
                {
                    if drained.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    self.drain_registered = true;
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                _ => return Next::Close,
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::read_buf::poll_fill(&mut self.stream, &mut self.buf, READ_BUFFER, cx)
    }

    /// Waits for the response while watching the client: `None` if it closed the connection
    /// (the request is then dropped, as hyper drops it). Bytes of a pipelined request that
    /// arrive meanwhile are kept for later, and the watch stops there.
    async fn await_response<F: Future>(&mut self, mut served: Pin<&mut F>) -> Option<F::Output> {
        let mut watching = true;
        poll_fn(|cx| {
            if let Poll::Ready(out) = served.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if watching {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => watching = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes a response; `Ok(false)` if the connection is to close after it.
    async fn write_response(
        &mut self,
        response: Response<ResponseBody>,
        request: RequestContext<'_>,
        trailers_allowed: bool,
    ) -> io::Result<bool> {
        let (parts, body) = response.into_parts();
        let size = if body.is_end_stream() {
            BodySize::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => BodySize::Exact(n),
                None => BodySize::Unknown,
            }
        };
        self.out.clear();
        let write = encode_response_head(
            parts.status,
            &parts.headers,
            request,
            size,
            http_date,
            &mut self.out,
        );
        // Emptied now, so that its values do not keep the upstream's read buffer; a map grown
        // unusually large is let go.
        let mut spare = parts.headers;
        if spare.capacity() <= SPARE_HEADERS_CAPACITY {
            spare.clear();
            self.spare_headers = spare;
        }
        let mut body = pin!(body);
        let mut left = match write.framing {
            ResponseFraming::Length(n) => n,
            _ => 0,
        };
        let mut trailers = None;
        // A body that says it has ended is not polled again (`http_body`'s contract): that
        // saves a poll through every body layer per response (~130 instructions).
        while !body.is_end_stream() {
            // Whatever the body has ready is gathered; what is gathered is written before
            // waiting for more.
            let frame = match poll_fn(|cx| Poll::Ready(poll_ready(body.as_mut(), cx))).await {
                Some(frame) => frame,
                None => {
                    self.flush().await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            match write.framing {
                // HEAD, 204, 304: the body is not sent.
                ResponseFraming::Empty => {}
                ResponseFraming::Length(_) => {
                    let len = data.len() as u64;
                    if len > left {
                        return Err(io::Error::other("response body longer than its length"));
                    }
                    left -= len;
                    self.push(data).await?;
                }
                ResponseFraming::Chunked if data.is_empty() => {}
                ResponseFraming::Chunked => {
                    encode_chunk_head(data.len(), &mut self.out);
                    self.push(data).await?;
                    self.out.put_slice(b"\r\n");
                }
                ResponseFraming::UntilClose => self.push(data).await?,
            }
        }
        match write.framing {
            ResponseFraming::Length(_) if left > 0 => {
                let _ = self.flush().await;
                return Err(io::Error::other("response body shorter than its length"));
            }
            ResponseFraming::Chunked => {
                let trailers = trailers.as_ref().filter(|_| trailers_allowed);
                encode_last_chunk(trailers, &mut self.out);
            }
            _ => {}
        }
        self.flush().await?;
        Ok(write.keep_alive)
    }

    /// Adds body bytes to what is to be written: copied when small, otherwise written at once
    /// behind what is gathered (one vectored write).
    async fn push(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() < COPY_LIMIT {
            self.out.put_slice(&data);
            if self.out.len() >= WRITE_BATCH {
                self.flush().await?;
            }
            return Ok(());
        }
        let mut both = (&mut self.out).chain(data);
        self.stream.write_all_buf(&mut both).await?;
        self.out.clear();
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// A body's next frame, or its end.
type NextFrame<B> = Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>;

/// The body's next frame if it has one ready (`None`: pending, with the task's waker kept).
fn poll_ready<B: Body>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Option<NextFrame<B>> {
    match body.poll_frame(cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// The current time as an HTTP date, formatted once per second per thread (for responses the
/// proxy makes; upstream responses bring their own).
fn http_date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|cached| match cached {
        Some((s, v)) if *s == second => v.clone(),
        _ => {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *cached = Some((second, value.clone()));
            value
        }
    })
}
