//! Listener tasks: accept connections, serve HTTP/1.1 and h2c on each, drain on stop.
//!
//! Each connection starts on the lean HTTP/1.1 server ([`lean`]), which serves requests
//! without a body itself; at the first request it does not take (a body, an upgrade, an
//! HTTP/2 preface, a malformed head) the connection goes to hyper for the rest of its life,
//! with the bytes already read put back in front ([`replay`]).

mod lean;
mod replay;

use crate::head_timer::HeadTimer;
use crate::service::{ListenerState, handle};
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use replay::Replay;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running listener: its bound address, its swappable state and its stop switch.
#[derive(Debug)]
pub struct ListenerHandle {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<ArcSwap<ListenerState>>,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Binds the listener's address and starts accepting.
    pub async fn bind(state: ListenerState) -> Result<Self, String> {
        let bind = state.config.bind.value.clone();
        let addr: SocketAddr = bind.parse().map_err(|_| {
            format!(
                "listener `{}`: `{bind}` is not a socket address",
                state.name
            )
        })?;
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listener `{}`: cannot bind {addr}: {e}", state.name))?;
        let addr = socket.local_addr().unwrap_or(addr);
        let name = state.name.clone();
        let state = Arc::new(ArcSwap::from_pointee(state));
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(accept_loop(socket, state.clone(), stop_rx));
        tracing::info!(listener = %name, %addr, "listening");
        Ok(ListenerHandle {
            name,
            addr,
            state,
            stop,
            task,
        })
    }

    /// Stops accepting and waits up to `drain` for open connections to finish their requests.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }
}

async fn accept_loop(
    socket: TcpListener,
    state: Arc<ArcSwap<ListenerState>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    // `true` once draining; every connection holds a receiver, so `closed()` means all ended.
    let (draining, _) = watch::channel(false);
    let drain = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, &state, draining.subscribe()),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };
    drop(socket);
    let name = state.load().name.clone();
    tracing::info!(listener = %name, "stopped accepting; draining connections");
    draining.send_replace(true);
    if tokio::time::timeout(drain, draining.closed())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, ?drain, "drain deadline passed; closing remaining connections");
    }
}

fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: &Arc<ArcSwap<ListenerState>>,
    draining: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let metrics = state.load().metrics.clone();
    metrics.active_connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let state = state.clone();
    tokio::spawn(async move {
        lean::serve(stream, peer, state, draining).await;
        metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Serves the rest of a connection with hyper (HTTP/1.1 or h2c, told apart by the first
/// bytes), finishing gracefully once `draining` turns true.
async fn serve_with_hyper(
    io: Replay,
    peer: SocketAddr,
    state: Arc<ArcSwap<ListenerState>>,
    draining: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let current = state.load();
        let limits = &current.config.limits;
        builder
            .http1()
            .timer(HeadTimer::default())
            .header_read_timeout(Duration::from(limits.header_read_timeout))
            .max_buf_size(lean::max_head_bytes(limits));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_request_headers.0).unwrap_or(u32::MAX));
    }
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Each request reads the state current when it starts; a reload never changes it mid-flight.
        let state = state.load_full();
        async move { handle(state, peer, req.map(Some), None).await }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        // Also when the listener is gone (the sender dropped): finish as when draining.
        () = drained(draining) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}

/// Ready once the listener drains, or is gone.
async fn drained(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}
