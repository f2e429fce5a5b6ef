//! HTTP/1.1 upstream connections, reused per endpoint.
//!
//! A connection is checked out for one exchange and handed back by its [`Lease`] when the
//! response body has been read to the end; a body dropped early closes the connection instead.
//! Idle connections are kept newest first (so the oldest age out under light load), at most
//! `max_idle` per endpoint, and closed after `idle_timeout` by a sweeper task.
//!
//! Compared with hyper-util's generic pool this keys by the endpoint address the balancer
//! picked (no hashing of scheme and authority, no absolute URIs converted back to origin form)
//! and spawns no task per request: the connection goes back when the body ends.

mod idle;
mod lean;

pub use lean::LeanBody;

use super::{PoolError, Slots};
use crate::body::UpstreamBody;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use idle::{IdleList, Reusable};
use lean::Conn;
use otlp_mesh_balance::{Clock, Timestamp};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Settings of an [`H1Pool`].
#[derive(Debug, Clone)]
pub struct H1Settings {
    pub connect_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint; more are closed when their exchange ends.
    pub max_idle: usize,
    /// The clock idle times are measured on.
    pub clock: Clock,
}

/// Per-endpoint HTTP/1.1 connections for one cluster, sending request bodies of type `B`.
pub struct H1Pool<B = UpstreamBody> {
    slots: Slots<Slot<B>>,
    settings: Arc<H1Settings>,
}

/// One endpoint's idle connections.
struct Slot<B> {
    addr: SocketAddr,
    /// hyper's connections, for exchanges with a request body.
    hyper: IdleList<SendRequest<B>>,
    /// Connections for exchanges without a request body, driven by their requests.
    lean: Arc<IdleList<Conn>>,
    settings: Arc<H1Settings>,
}

impl<B> Reusable for SendRequest<B> {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

impl<B> Slot<B> {
    /// Drops idle connections that are closed or past the idle timeout.
    fn sweep(&self, now: Timestamp) {
        self.hyper.sweep(now);
        self.lean.sweep(now);
    }

    fn idle_count(&self) -> usize {
        self.hyper.len() + self.lean.len()
    }
}

/// A connection checked out for one exchange; [`Lease::release`] returns it to the pool.
/// Dropping the lease instead closes the connection once hyper is done with it.
pub struct Lease<B = UpstreamBody> {
    slot: Arc<Slot<B>>,
    sender: SendRequest<B>,
}

impl<B> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("closed", &self.sender.is_closed())
            .finish()
    }
}

impl<B> std::fmt::Debug for H1Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("endpoints", &self.slots.len())
            .field("settings", &self.settings)
            .finish()
    }
}

impl<B> Lease<B> {
    /// Returns the connection for reuse: call only once the response body has ended.
    pub fn release(mut self) {
        if self.sender.is_open() {
            self.slot.hyper.put(self.sender);
        }
    }
}

impl<B> Slot<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A new connection to the slot's endpoint, its driver task spawned.
    async fn connect(&self) -> Result<SendRequest<B>, PoolError> {
        let addr = self.addr;
        let stream = super::connect(addr, self.settings.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(format!("http/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

impl<B> H1Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool; its sweeper task (when a tokio runtime is running) ends with the pool.
    pub fn new(settings: H1Settings) -> Arc<Self> {
        let pool = Arc::new(H1Pool {
            slots: Slots::new(),
            settings: Arc::new(settings),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool), pool.settings.idle_timeout));
        }
        pool
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot<B>> {
        self.slots.get(addr, || Slot {
            addr,
            hyper: IdleList::new(self.settings.clone()),
            lean: Arc::new(IdleList::new(self.settings.clone())),
            settings: self.settings.clone(),
        })
    }

    /// Drops the idle connections of endpoints no longer in the cluster.
    pub fn retain(&self, live: &[SocketAddr]) {
        self.slots.retain(live);
    }

    /// Idle connections to `addr` now.
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.slots.find(addr).map_or(0, |s| s.idle_count())
    }

    /// Sends a request (origin-form URI, `Host` set) to `addr` on an idle connection or a new
    /// one; `now` (on the pool's clock) is the request's start, which the caller has read already.
    /// A request that an idle connection closed before taking is sent on the next one.
    ///
    /// The future holds the request once, the endpoint's slot and `now`: as an `async fn`
    /// taking the pool it kept both its argument and the request moved out of it, 1.5 KiB boxed
    /// per request, past glibc's per-thread cache for small blocks (≤ 1 032 bytes), so every
    /// request's box took the allocator's slow path.
    pub fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
        now: Timestamp,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease<B>), PoolError>> + Send + use<B>
    {
        let slot = self.slot(addr);
        async move {
            // Bounded by the idle list, which only shrinks here.
            while let Some(mut sender) = slot.hyper.checkout(now) {
                // The previous exchange may still be finishing (its body has been read, hyper
                // has not yet gone idle): wait for it, or skip the connection if it closes
                // instead.
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, Lease { slot, sender })),
                    Err(mut e) => match e.take_message() {
                        // Never written: the server closed the idle connection first.
                        Some(unsent) => req = unsent,
                        None => return Err(PoolError::Request(e.into_error())),
                    },
                }
            }
            let mut sender = slot.connect().await?;
            let resp = sender.send_request(req).await?;
            Ok((resp, Lease { slot, sender }))
        }
    }
}

impl<B> H1Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends a request without a body (origin-form URI, `Host` set) to `addr`, driven by the
    /// caller's task (see [`LeanBody`]): on an idle connection or a new one. An idempotent
    /// request that a reused connection closed without answering is sent again on the next one
    /// (the server closed it as idle while the request was on its way).
    pub fn send_lean(
        &self,
        addr: SocketAddr,
        req: Request<B>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Response<LeanBody>, PoolError>> + Send + use<B> {
        let slot = self.slot(addr);
        let (mut parts, _empty) = req.into_parts();
        let lean = slot.lean.clone();
        let (connect_timeout, retry) = (
            self.settings.connect_timeout,
            lean::is_idempotent(&parts.method),
        );
        async move {
            // Bounded: each round takes an idle connection (the list only shrinks here) or
            // ends with a new one.
            loop {
                let (mut conn, reused) = match lean.checkout(now) {
                    Some(conn) => (conn, true),
                    // Boxed: a new connection is the rare path, and inline its future (a
                    // connect and a timer) would make this future, which every request copies
                    // into its box, a third larger.
                    None => (
                        Conn::new(Box::pin(super::connect(addr, connect_timeout)).await?),
                        false,
                    ),
                };
                match conn.exchange(&mut parts).await {
                    Ok(head) => return Ok(lean::response(head, conn, lean)),
                    Err(e) if reused && retry && e.unanswered() => continue,
                    Err(e) => return Err(PoolError::Exchange(Box::new(e))),
                }
            }
        }
    }
}

/// Closes idle connections past the idle timeout, checking every half timeout (1 s at most, so
/// a long timeout still sees closed connections go).
async fn sweep<B>(pool: Weak<H1Pool<B>>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = pool.settings.clock.now();
        for slot in pool.slots.all() {
            slot.sweep(now);
        }
    }
}

#[cfg(test)]
mod lean_tests;
#[cfg(test)]
mod tests;
