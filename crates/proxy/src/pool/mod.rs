//! Upstream connection pools: HTTP/1.1 connections reused per endpoint ([`h1::H1Pool`]) and one
//! multiplexed HTTP/2 connection per endpoint ([`h2::H2Pool`]).
//!
//! Both are keyed by endpoint address, not by URI authority: the balancer has already picked the
//! endpoint, so the request keeps the client's authority (`Host` / `:authority`).

pub mod h1;
pub mod h2;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why an upstream request failed before it produced a response head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened (refused, unreachable, timed out, handshake failed).
    #[error("{0}")]
    Connect(String),
    /// The connection failed while the request was sent or the response head read.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

/// Opens a TCP connection to `addr` within `timeout`, with Nagle off (requests are small and
/// written whole).
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, PoolError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| PoolError::Connect(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| PoolError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
