//! Response bodies of the fault layer: the upstream body as is, throttled, or one the layer made.

use crate::stats::ActiveGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Largest slice a throttled body releases at once.
const MAX_QUANTUM: u64 = 64 * 1024;

pin_project! {
    #[derive(Debug)]
    /// The fault layer's response body: the inner body untouched, throttled, or a synthetic
    /// (abort) body. Its error type is the inner body's.
    #[project = FaultBodyProj]
    pub enum FaultBody<B> {
        /// The inner body, untouched.
        Inner {
            #[pin]
            inner: B,
        },
        /// The inner body released at a limited rate. Boxed: it is rare, and inline it would
        /// make every response (moved a dozen times per request) a hundred bytes larger.
        Throttled {
            inner: Pin<Box<Throttled<B>>>,
        },
        /// A body made by the layer (abort responses).
        Synthetic {
            data: Option<Bytes>,
        },
    }
}

impl<B> FaultBody<B> {
    /// Wraps an inner body untouched.
    pub fn inner(inner: B) -> Self {
        FaultBody::Inner { inner }
    }

    /// A body of the given bytes (empty means no data frame at all).
    pub fn synthetic(data: Bytes) -> Self {
        FaultBody::Synthetic {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// Whether this body is throttled.
    pub fn is_throttled(&self) -> bool {
        matches!(self, FaultBody::Throttled { .. })
    }
}

impl<B> Body for FaultBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            FaultBodyProj::Inner { inner } => inner.poll_frame(cx),
            FaultBodyProj::Throttled { inner } => inner.as_mut().poll_frame(cx),
            FaultBodyProj::Synthetic { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FaultBody::Inner { inner } => inner.is_end_stream(),
            FaultBody::Throttled { inner } => inner.is_end_stream(),
            FaultBody::Synthetic { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FaultBody::Inner { inner } => inner.size_hint(),
            FaultBody::Throttled { inner } => inner.size_hint(),
            FaultBody::Synthetic { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    #[derive(Debug)]
    /// Releases the inner body's data at `bytes_per_second`, in slices of at most a tenth of a
    /// second's worth (≤ 64 KiB), holding at most one inner chunk. The rate is never exceeded:
    /// idle time does not build up credit. Trailers pass through after the data.
    pub struct Throttled<B> {
        #[pin]
        inner: B,
        // Boxed so the body is `Unpin` whenever the inner body is.
        sleep: Option<Pin<Box<Sleep>>>,
        held: Option<Bytes>,
        rate: u64,
        quantum: usize,
        // Earliest time the next slice may go.
        next: Option<Instant>,
        guards: Vec<ActiveGuard>,
    }
}

impl<B> Throttled<B> {
    /// Throttles `inner` to `bytes_per_second` (at least 1).
    pub fn new(inner: B, bytes_per_second: u64) -> Self {
        Self::with_guards(inner, bytes_per_second, Vec::new())
    }

    pub(crate) fn with_guards(inner: B, bytes_per_second: u64, guards: Vec<ActiveGuard>) -> Self {
        let rate = bytes_per_second.max(1);
        let quantum = usize::try_from((rate / 10).clamp(1, MAX_QUANTUM)).unwrap_or(1);
        Throttled {
            inner,
            sleep: None,
            held: None,
            rate,
            quantum,
            next: None,
            guards,
        }
    }
}

impl<B> Body for Throttled<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(chunk) = this.held.as_mut() {
                let now = Instant::now();
                let due = *this.next.get_or_insert(now);
                if due > now {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if sleep.deadline() != due {
                        sleep.as_mut().reset(due);
                    }
                    ready!(sleep.as_mut().poll(cx));
                    continue;
                }
                let n = (*this.quantum).min(chunk.len());
                let piece = chunk.split_to(n);
                if chunk.is_empty() {
                    *this.held = None;
                }
                let nanos = (n as u128 * 1_000_000_000).div_ceil(u128::from(*this.rate));
                let step = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                // No credit for idle time: the next slice is due one slice-time after now at the earliest.
                *this.next = Some(due.max(now) + step);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => *this.held = Some(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => {
                    this.guards.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.guards.clear();
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;

    /// Collects (time since start, bytes) for every data frame.
    async fn timeline<B>(body: B) -> Vec<(Duration, usize)>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.unwrap().into_data() {
                out.push((start.elapsed(), d.len()));
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn releases_bytes_at_the_rate() {
        let data = Bytes::from(vec![7u8; 10_000]);
        let body = Throttled::new(Full::new(data), 1000);
        assert_eq!(body.size_hint().exact(), Some(10_000));
        let t = timeline(body).await;
        let total: usize = t.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 10_000);
        // Per whole second: at most rate (+ one 100-byte slice for the boundary).
        for sec in 0..10u64 {
            let in_sec: usize = t
                .iter()
                .filter(|(at, _)| at.as_secs() == sec)
                .map(|(_, n)| n)
                .sum();
            assert!(
                (900..=1100).contains(&in_sec),
                "second {sec}: {in_sec} bytes"
            );
        }
        // 10 000 bytes at 1000 B/s: the last slice leaves after 9.9 s.
        let last = t.last().unwrap().0;
        assert_eq!(last, Duration::from_millis(9900));
    }

    #[tokio::test(start_paused = true)]
    async fn holds_at_most_one_chunk() {
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = CountingBody {
            left: 5,
            pulled: pulled.clone(),
        };
        let mut body = std::pin::pin!(Throttled::new(counting, 1000));
        let count = || pulled.load(std::sync::atomic::Ordering::SeqCst);
        // Each 300-byte chunk leaves as three 100-byte slices before the next is pulled.
        for expect in [1, 1, 1, 2, 2, 2, 3] {
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.data_ref().unwrap().len(), 100);
            assert_eq!(count(), expect);
        }
    }

    struct CountingBody {
        left: usize,
        pulled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }
    impl Body for CountingBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Ready(None);
            }
            this.left -= 1;
            this.pulled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; 300])))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_follow_the_data() {
        let body = Throttled::new(
            channel_body(vec![
                Frame::data(Bytes::from(vec![1u8; 300])),
                Frame::data(Bytes::from(vec![2u8; 300])),
                Frame::trailers(http::HeaderMap::new()),
            ]),
            1000,
        );
        let start = Instant::now();
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(collected.to_bytes().len(), 600);
        // 6 slices of 100 bytes: the last leaves at 0.5 s.
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_upstream_gets_no_burst_credit() {
        // Two 1000-byte chunks 5 s apart at 1000 B/s: the second still takes ~0.9 s.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .unwrap();
        });
        let body = Throttled::new(ChannelBody(rx), 1000);
        let t = timeline(body).await;
        let second: Vec<_> = t.iter().filter(|(at, _)| at.as_secs() >= 5).collect();
        assert_eq!(second.first().unwrap().0, Duration::from_secs(5));
        assert_eq!(second.last().unwrap().0, Duration::from_millis(5900));
    }

    #[tokio::test]
    async fn synthetic_body() {
        let b: FaultBody<Full<Bytes>> = FaultBody::synthetic(Bytes::from_static(b"nope"));
        assert_eq!(b.size_hint().exact(), Some(4));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "nope");
        let empty: FaultBody<Full<Bytes>> = FaultBody::synthetic(Bytes::new());
        assert!(empty.is_end_stream());
    }

    /// A body fed frame by frame through a channel.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);
    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.get_mut().0.poll_recv(cx)
        }
    }

    fn channel_body(frames: Vec<Frame<Bytes>>) -> ChannelBody {
        let (tx, rx) = tokio::sync::mpsc::channel(frames.len().max(1));
        for f in frames {
            tx.try_send(Ok(f)).unwrap();
        }
        ChannelBody(rx)
    }
}
