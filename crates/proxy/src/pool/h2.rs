//! HTTP/2 upstream connections: one multiplexed connection per endpoint, shared by all requests.

use super::{PoolError, Slots};
use crate::body::UpstreamBody as RequestBody;
use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Per-endpoint HTTP/2 connections for one cluster.
#[derive(Debug)]
pub struct H2Pool {
    slots: Slots<Slot>,
    connect_timeout: Duration,
}

#[derive(Debug, Default)]
struct Slot {
    conn: ArcSwapOption<SendRequest<RequestBody>>,
    // Serializes reconnects so a dead connection is replaced once, not once per waiting request.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Pool {
    pub fn new(connect_timeout: Duration) -> Self {
        H2Pool {
            slots: Slots::new(),
            connect_timeout,
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        self.slots.get(addr, Slot::default)
    }

    /// Drops connections to endpoints no longer in the cluster.
    pub fn retain(&self, live: &[SocketAddr]) {
        self.slots.retain(live);
    }

    /// Sends a request (absolute URI with the client's authority) to `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        let slot = self.slot(addr);
        let mut sender = self.connection(&slot, addr).await?;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    async fn connection(
        &self,
        slot: &Slot,
        addr: SocketAddr,
    ) -> Result<SendRequest<RequestBody>, PoolError> {
        if let Some(c) = slot.conn.load().as_ref()
            && !c.is_closed()
        {
            return Ok(SendRequest::clone(c));
        }
        let _guard = slot.connecting.lock().await;
        if let Some(c) = slot.conn.load().as_ref()
            && !c.is_closed()
        {
            return Ok(SendRequest::clone(c));
        }
        let stream = super::connect(addr, self.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(format!("h2 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        slot.conn.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}
