//! A request body that can be sent more than once, in the style of linkerd2-proxy's `ReplayBody`.
//!
//! The first attempt streams the original body while a copy of each chunk is kept, up to `cap`
//! bytes. A clone made for a retry first replays the kept chunks, then continues reading the
//! original body where the previous attempt stopped (so a retry after an early response still
//! sends the whole body). If the body outgrows `cap`, the copy is dropped (memory freed), the
//! attempt reading it still gets every byte, and [`ReplayBody::can_replay`] turns false; a clone
//! polled after that fails with [`ReplayError::Capped`] rather than send a truncated body.
//!
//! Only one clone reads at a time: the reading state moves into the clone that polls first and
//! back into the shared slot when that clone is dropped. A clone polled while another holds the
//! state waits (its waker is stored; at most one entry per waiting clone, and the retry layer has
//! at most one waiting) until the holder is dropped: hyper may drop the previous attempt's body a
//! moment after the response arrives. The shared slot is a `Mutex`
//! taken once per acquisition/release and on `is_end_stream`/`size_hint` by a non-holder, never
//! per chunk; it is per request, so there is no contention beyond the attempts of one request.
//!
//! Bounds: at most `cap` bytes are kept; chunks are coalesced into one buffer every
//! [`MAX_CHUNKS`] chunks, so many tiny chunks cannot grow the chunk list without bound.

use super::ReplayError;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Default replay buffer: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// Kept chunks are coalesced into one once there are this many.
pub const MAX_CHUNKS: usize = 64;

/// A request body the retry layer can replay (see the module docs); `Data = Bytes`.
pub struct ReplayBody<B> {
    mode: Mode<B>,
}

enum Mode<B> {
    /// Not replayable: the original body, untouched (requests that will not be retried).
    Passthrough(B),
    /// The original was empty: every clone is empty.
    Empty,
    Replay(Replay<B>),
    /// A copy of a passthrough body (never built by the retry layer): fails when polled.
    Unreplayable,
}

struct Replay<B> {
    shared: Arc<Shared<B>>,
    /// The reading state while this clone holds it.
    held: Option<State<B>>,
    /// Kept chunks this clone has yielded.
    pos: usize,
    trailers_sent: bool,
}

struct Shared<B> {
    slot: Mutex<Slot<B>>,
    cap: usize,
    /// Mirrors `State::capped || State::failed`, readable without the lock.
    unreplayable: AtomicBool,
}

struct Slot<B> {
    state: Option<State<B>>,
    waiters: Vec<Waker>,
}

struct State<B> {
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Chunks read from the original body so far.
    read: usize,
    /// The unread rest of the original body; `None` once it ended or failed.
    rest: Option<B>,
    trailers: Option<HeaderMap>,
    capped: bool,
    failed: bool,
}

type FrameResult<E> = Result<Frame<Bytes>, ReplayError<E>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Body + Unpin> ReplayBody<B> {
    /// Wraps a body that will be sent once; never replayable, no overhead.
    pub fn passthrough(body: B) -> Self {
        ReplayBody {
            mode: Mode::Passthrough(body),
        }
    }

    /// Wraps a body that may be replayed, keeping up to `cap` bytes; an empty body costs nothing.
    pub fn new(body: B, cap: usize) -> Self {
        if body.is_end_stream() {
            return ReplayBody { mode: Mode::Empty };
        }
        let state = State {
            kept: Vec::new(),
            kept_bytes: 0,
            read: 0,
            rest: Some(body),
            trailers: None,
            capped: false,
            failed: false,
        };
        ReplayBody {
            mode: Mode::Replay(Replay {
                shared: Arc::new(Shared {
                    slot: Mutex::new(Slot {
                        state: Some(state),
                        waiters: Vec::new(),
                    }),
                    cap,
                    unreplayable: AtomicBool::new(false),
                }),
                held: None,
                pos: 0,
                trailers_sent: false,
            }),
        }
    }

    /// A copy that will send the body from the start; `None` for a passthrough body.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.mode {
            Mode::Passthrough(_) | Mode::Unreplayable => None,
            Mode::Empty => Some(ReplayBody { mode: Mode::Empty }),
            Mode::Replay(r) => Some(ReplayBody {
                mode: Mode::Replay(Replay {
                    shared: r.shared.clone(),
                    held: None,
                    pos: 0,
                    trailers_sent: false,
                }),
            }),
        }
    }

    /// A copy for another attempt; a passthrough body yields a copy that fails when polled
    /// (never an empty or truncated body).
    pub(crate) fn replay(&self) -> Self {
        self.try_clone().unwrap_or(ReplayBody {
            mode: Mode::Unreplayable,
        })
    }

    /// True while a clone could still replay the whole body (not passthrough, not over the cap,
    /// the original did not fail).
    pub fn can_replay(&self) -> bool {
        match &self.mode {
            Mode::Passthrough(_) | Mode::Unreplayable => false,
            Mode::Empty => true,
            Mode::Replay(r) => !r.shared.unreplayable.load(Ordering::Acquire),
        }
    }

    /// True once the body outgrew the replay buffer.
    pub fn is_capped(&self) -> bool {
        match &self.mode {
            Mode::Replay(r) => {
                if let Some(s) = &r.held {
                    return s.capped;
                }
                lock(&r.shared.slot)
                    .state
                    .as_ref()
                    .is_some_and(|s| s.capped)
            }
            _ => false,
        }
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        if let Some(state) = self.held.take() {
            let waiters = {
                let mut slot = lock(&self.shared.slot);
                slot.state = Some(state);
                std::mem::take(&mut slot.waiters)
            };
            for w in waiters {
                w.wake();
            }
        }
    }
}

impl<B> Replay<B>
where
    B: Body + Unpin,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<FrameResult<B::Error>>> {
        if self.held.is_none() {
            let mut slot = lock(&self.shared.slot);
            match slot.state.take() {
                Some(s) => {
                    drop(slot);
                    // A fresh clone must replay from byte 0: impossible once the copy is gone.
                    if s.read > 0 && (s.capped || s.failed) {
                        let err = if s.failed {
                            ReplayError::Failed
                        } else {
                            ReplayError::Capped
                        };
                        self.held = Some(s);
                        return Poll::Ready(Some(Err(err)));
                    }
                    self.held = Some(s);
                }
                None => {
                    if !slot.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        slot.waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
        let Some(st) = self.held.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            if !st.capped && self.pos < st.kept.len() {
                let chunk = st.kept[self.pos].clone();
                self.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let Some(rest) = st.rest.as_mut() else {
                if st.failed {
                    return Poll::Ready(Some(Err(ReplayError::Failed)));
                }
                if !self.trailers_sent
                    && let Some(t) = &st.trailers
                {
                    self.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
                return Poll::Ready(None);
            };
            let frame = match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    st.rest = None;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    st.rest = None;
                    st.failed = true;
                    self.shared.unreplayable.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(ReplayError::Body(e))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    st.read += 1;
                    if !st.capped {
                        if st.kept_bytes + chunk.len() > self.shared.cap {
                            st.capped = true;
                            st.kept = Vec::new();
                            st.kept_bytes = 0;
                            self.shared.unreplayable.store(true, Ordering::Release);
                        } else {
                            st.kept_bytes += chunk.len();
                            st.kept.push(chunk.clone());
                            if st.kept.len() >= MAX_CHUNKS {
                                let mut all = BytesMut::with_capacity(st.kept_bytes);
                                for c in &st.kept {
                                    all.extend_from_slice(c);
                                }
                                st.kept.clear();
                                st.kept.push(all.freeze());
                            }
                            self.pos = st.kept.len();
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        if !st.capped {
                            st.trailers = Some(trailers.clone());
                        }
                        self.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // An unknown frame kind: skip it.
                }
            }
        }
    }

    fn state_is_end(&self, st: &State<B>, pos: usize, trailers_sent: bool) -> bool {
        (st.capped || pos >= st.kept.len())
            && !st.failed
            && st.rest.as_ref().is_none_or(|r| r.is_end_stream())
            && (trailers_sent || st.trailers.is_none())
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = ReplayError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().mode {
            Mode::Passthrough(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    Poll::Ready(Some(Ok(f.map_data(|mut d| d.copy_to_bytes(d.remaining())))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ReplayError::Body(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Mode::Empty => Poll::Ready(None),
            Mode::Unreplayable => Poll::Ready(Some(Err(ReplayError::Failed))),
            Mode::Replay(r) => r.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.mode {
            Mode::Passthrough(b) => b.is_end_stream(),
            Mode::Empty => true,
            Mode::Unreplayable => false,
            Mode::Replay(r) => match &r.held {
                Some(st) => r.state_is_end(st, r.pos, r.trailers_sent),
                None => lock(&r.shared.slot)
                    .state
                    .as_ref()
                    .is_some_and(|st| st.read == 0 && r.state_is_end(st, 0, false)),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.mode {
            Mode::Passthrough(b) => b.size_hint(),
            Mode::Empty => SizeHint::with_exact(0),
            Mode::Unreplayable => SizeHint::default(),
            Mode::Replay(r) => {
                let with = |st: &State<B>, pos: usize| {
                    let kept: u64 = if st.capped {
                        0
                    } else {
                        st.kept.iter().skip(pos).map(|c| c.len() as u64).sum()
                    };
                    let rest = st
                        .rest
                        .as_ref()
                        .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                    let mut h = SizeHint::new();
                    h.set_lower(rest.lower().saturating_add(kept));
                    if let Some(u) = rest.upper() {
                        h.set_upper(u.saturating_add(kept));
                    }
                    h
                };
                match &r.held {
                    Some(st) => with(st, r.pos),
                    None => lock(&r.shared.slot)
                        .state
                        .as_ref()
                        .filter(|st| !(st.read > 0 && (st.capped || st.failed)))
                        .map_or_else(SizeHint::default, |st| with(st, 0)),
                }
            }
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Passthrough(_) => "passthrough",
            Mode::Empty => "empty",
            Mode::Replay(_) => "replay",
            Mode::Unreplayable => "unreplayable",
        };
        f.debug_struct("ReplayBody").field("mode", &mode).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn chunks(parts: &[&[u8]], trailers: bool) -> Chunks {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn collect<B: Body + Unpin>(b: ReplayBody<B>) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let c = b.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn replays_byte_identical_with_trailers() {
        let body = ReplayBody::new(chunks(&[b"hello ", b"wor", b"ld"], true), 1024);
        let again = body.try_clone().unwrap();
        assert_eq!(body.size_hint().exact(), None);
        let (b1, t1) = collect(body).await;
        assert_eq!(&b1[..], b"hello world");
        assert!(again.can_replay());
        let third = again.try_clone().unwrap();
        let (b2, t2) = collect(again).await;
        assert_eq!(b1, b2);
        assert_eq!(t1, t2);
        assert!(t2.is_some());
        assert_eq!(third.size_hint().exact(), Some(11));
        assert!(!third.is_end_stream());
        let (b3, _) = collect(third).await;
        assert_eq!(b3, b1);
    }

    #[tokio::test]
    async fn replay_continues_where_a_dropped_attempt_stopped() {
        let body = ReplayBody::new(chunks(&[b"ab", b"cd", b"ef"], false), 1024);
        let again = body.try_clone().unwrap();
        let mut first = body;
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"ab"));
        drop(first); // the attempt ended early (e.g. the upstream answered before reading it all)
        let (b, _) = collect(again).await;
        assert_eq!(&b[..], b"abcdef");
    }

    #[tokio::test]
    async fn over_the_cap_streams_everything_once_and_refuses_replay() {
        let big = vec![7u8; 5000];
        let body = ReplayBody::new(chunks(&[&big[..3000], &big[3000..]], false), 4096);
        let again = body.try_clone().unwrap();
        assert!(body.can_replay());
        let (b, _) = collect(body).await;
        assert_eq!(b.len(), 5000, "never truncated");
        assert!(!again.can_replay());
        assert!(again.is_capped());
        let mut again = again;
        assert!(matches!(
            again.frame().await,
            Some(Err(ReplayError::Capped))
        ));
    }

    #[tokio::test]
    async fn many_tiny_chunks_are_coalesced() {
        let parts: Vec<[u8; 1]> = (0..200u8).map(|i| [i]).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let body = ReplayBody::new(chunks(&refs, false), 1024);
        let again = body.try_clone().unwrap();
        let (b1, _) = collect(body).await;
        let (b2, _) = collect(again).await;
        assert_eq!(b1.len(), 200);
        assert_eq!(b1, b2);
    }

    #[tokio::test]
    async fn empty_and_passthrough_bodies() {
        let e = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 10);
        assert!(e.is_end_stream());
        assert_eq!(e.size_hint().exact(), Some(0));
        assert!(e.try_clone().unwrap().is_end_stream());
        let p = ReplayBody::passthrough(http_body_util::Full::new(Bytes::from_static(b"xyz")));
        assert!(p.try_clone().is_none());
        assert!(!p.can_replay());
        assert_eq!(p.size_hint().exact(), Some(3));
        assert_eq!(&collect(p).await.0[..], b"xyz");
        let f = ReplayBody::new(http_body_util::Full::new(Bytes::from_static(b"xyz")), 10);
        assert_eq!(f.size_hint().exact(), Some(3));
    }

    #[tokio::test]
    async fn a_clone_waits_for_the_holder_to_be_dropped() {
        let body = ReplayBody::new(chunks(&[b"ab", b"cd"], false), 1024);
        let mut again = body.try_clone().unwrap();
        let mut first = body;
        let _ = first.frame().await; // `first` now holds the state
        let waiting = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(f) = again.frame().await {
                out.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap(), b"abcd");
    }
}
