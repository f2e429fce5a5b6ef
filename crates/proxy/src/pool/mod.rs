//! Upstream connection pools: HTTP/1.1 connections reused per endpoint ([`h1::H1Pool`]) and one
//! multiplexed HTTP/2 connection per endpoint ([`h2::H2Pool`]).
//!
//! Both are keyed by endpoint address, not by URI authority: the balancer has already picked the
//! endpoint, so the request keeps the client's authority (`Host` / `:authority`).

pub mod h1;
pub mod h2;

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Per-endpoint state of a pool, read lock-free on every request; written only when an endpoint
/// is first used or leaves the cluster.
struct Slots<T> {
    map: ArcSwap<AddrMap<T>>,
}

type AddrMap<T> = HashMap<SocketAddr, Arc<T>, BuildHasherDefault<AddrHasher>>;

/// Hashes endpoint addresses with FxHash's mixing. They come from config and discovery, not
/// from clients, so a keyed hash's resistance to chosen keys buys nothing here, while SipHash
/// took about 230 instructions of every request.
#[derive(Default)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<T> std::fmt::Debug for Slots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("endpoints", &self.len())
            .finish()
    }
}

impl<T> Slots<T> {
    fn new() -> Self {
        Slots {
            map: ArcSwap::from_pointee(AddrMap::default()),
        }
    }

    /// The endpoint's slot, made by `make` on first use.
    fn get(&self, addr: SocketAddr, make: impl Fn() -> T) -> Arc<T> {
        if let Some(s) = self.map.load().get(&addr) {
            return s.clone();
        }
        self.map.rcu(|map| {
            let mut map = AddrMap::clone(map);
            map.entry(addr).or_insert_with(|| Arc::new(make()));
            map
        });
        // Missing only if a concurrent `retain` dropped it this instant: a slot of its own is fine.
        self.map
            .load()
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| Arc::new(make()))
    }

    /// The slot of `addr`, if it has been used.
    fn find(&self, addr: SocketAddr) -> Option<Arc<T>> {
        self.map.load().get(&addr).cloned()
    }

    /// Drops the slots of endpoints not in `live`.
    fn retain(&self, live: &[SocketAddr]) {
        self.map.rcu(|map| {
            let mut map = AddrMap::clone(map);
            map.retain(|a, _| live.contains(a));
            map
        });
    }

    /// Every slot now.
    fn all(&self) -> Vec<Arc<T>> {
        self.map.load().values().cloned().collect()
    }

    fn len(&self) -> usize {
        self.map.load().len()
    }
}

/// Why an upstream request failed before it produced a response head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened (refused, unreachable, timed out, handshake failed).
    #[error("{0}")]
    Connect(String),
    /// The connection failed while the request was sent or the response head read.
    #[error(transparent)]
    Request(#[from] hyper::Error),
    /// The same, on a connection driven by the request itself (`h1::H1Pool::send_lean`).
    #[error(transparent)]
    Exchange(Box<dyn std::error::Error + Send + Sync>),
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
