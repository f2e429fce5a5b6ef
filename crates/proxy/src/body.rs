//! Body types: the limited request body sent upstream and the response body sent downstream.

use crate::pool::h1::{LeanBody, Lease};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use otlp_mesh_balance::InFlight;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The request body exceeded the listener's `max_request_body`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Errors of the request body on its way upstream.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("downstream body: {0}")]
    Downstream(#[from] hyper::Error),
}

/// A request body as a listener hands it on: hyper's, or none for a request the lean
/// HTTP/1.1 server took (it takes only requests without a body).
pub type DownstreamBody = Option<Incoming>;

pin_project! {
    /// A streaming request body that fails once more than `limit` bytes have passed.
    pub struct RequestBody {
        #[pin]
        inner: DownstreamBody,
        limit: Option<u64>,
        seen: u64,
    }
}

impl RequestBody {
    pub fn new(inner: DownstreamBody, limit: Option<u64>) -> Self {
        RequestBody {
            inner,
            limit,
            seen: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(data)) = (*this.limit, frame.data_ref()) {
                    *this.seen += data.len() as u64;
                    if *this.seen > limit {
                        return Poll::Ready(Some(Err(BodyTooLarge(limit).into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

pin_project! {
    /// The body sent to the client: the upstream's streamed body, or one the proxy made.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream {
            #[pin]
            inner: Incoming,
            // Keeps the endpoint's request counted as in flight until the body is done.
            guard: Option<InFlight>,
            // An HTTP/1.1 connection, returned to its pool when the body has ended (dropped
            // with an unfinished body, which closes the connection).
            lease: Option<Lease>,
        },
        /// An HTTP/1.1 body read off its connection by this body's poller.
        Lean {
            #[pin]
            inner: LeanBody,
            guard: Option<InFlight>,
        },
        Full {
            #[pin]
            inner: Full<Bytes>,
        },
    }
}

/// An upstream response body as a pool hands it over.
#[derive(Debug)]
pub enum Received {
    /// From hyper's client (HTTP/2, and HTTP/1.1 requests with a body), with the HTTP/1.1
    /// connection's lease.
    Hyper(Incoming, Option<Lease>),
    /// From a lean HTTP/1.1 exchange.
    Lean(LeanBody),
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody::Full {
            inner: Full::new(data.into()),
        }
    }

    /// The body of an upstream response; `guard` keeps the request counted until it ends.
    pub fn received(body: Received, guard: InFlight) -> Self {
        match body {
            Received::Hyper(inner, lease) => Self::upstream(inner, guard, lease),
            Received::Lean(inner) => ProxyBody::Lean {
                inner,
                guard: Some(guard),
            },
        }
    }

    fn upstream(inner: Incoming, guard: InFlight, mut lease: Option<Lease>) -> Self {
        if inner.is_end_stream() {
            // No body to wait for (204, 304, HEAD, `content-length: 0`).
            if let Some(l) = lease.take() {
                l.release();
            }
        }
        ProxyBody::Upstream {
            inner,
            guard: Some(guard),
            lease,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ProxyBodyProj::Upstream {
                mut inner,
                guard,
                lease,
            } => {
                let out = inner.as_mut().poll_frame(cx);
                match &out {
                    Poll::Ready(None) => {
                        guard.take();
                        if let Some(l) = lease.take() {
                            l.release();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        guard.take();
                        lease.take();
                    }
                    // The last frame: the connection is free before the server asks for more.
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        if let Some(l) = lease.take() {
                            l.release();
                        }
                    }
                    _ => {}
                }
                out.map_err(Into::into)
            }
            ProxyBodyProj::Lean { inner, guard } => {
                let out = inner.poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = &out {
                    guard.take();
                }
                out
            }
            ProxyBodyProj::Full { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Lean { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Lean { inner, .. } => inner.size_hint(),
            ProxyBody::Full { inner } => inner.size_hint(),
        }
    }
}

/// Boxed error of the body sent upstream (only built on the error path).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The request body as the upstream pools take it: streamed once, or through the retry
    /// layer's replay buffer.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        Plain { #[pin] inner: RequestBody },
        Replay { #[pin] inner: otlp_mesh_resilience::retry::ReplayBody<RequestBody> },
    }
}

impl UpstreamBody {
    /// For requests that are never retried.
    pub fn plain(req: http::Request<RequestBody>) -> http::Request<UpstreamBody> {
        req.map(|inner| UpstreamBody::Plain { inner })
    }

    /// For attempts made by the retry layer.
    pub fn replay(
        req: http::Request<otlp_mesh_resilience::retry::ReplayBody<RequestBody>>,
    ) -> http::Request<UpstreamBody> {
        req.map(|inner| UpstreamBody::Replay { inner })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamBodyProj::Plain { inner } => inner.poll_frame(cx).map_err(Into::into),
            UpstreamBodyProj::Replay { inner } => inner.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain { inner } => inner.is_end_stream(),
            UpstreamBody::Replay { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain { inner } => inner.size_hint(),
            UpstreamBody::Replay { inner } => inner.size_hint(),
        }
    }
}
