//! Listener tasks: accept connections, serve HTTP/1.1 and h2c on each, drain on stop.

use crate::head_timer::HeadTimer;
use crate::service::{ListenerState, handle};
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
    let graceful = GracefulShutdown::new();
    let drain = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, &state, &graceful),
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
    if tokio::time::timeout(drain, graceful.shutdown())
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
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let current = state.load_full();
    let limits = &current.config.limits;
    let metrics = current.metrics.clone();
    metrics.active_connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(HeadTimer::default())
        .header_read_timeout(Duration::from(limits.header_read_timeout))
        .max_buf_size(
            usize::try_from(limits.max_request_headers.0)
                .unwrap_or(usize::MAX)
                .max(8192),
        );
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_headers.0).unwrap_or(u32::MAX));

    let state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        // Each request reads the state current when it starts; a reload never changes it mid-flight.
        let state = state.load_full();
        async move { handle(state, peer, req).await }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with error");
        }
        metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    });
}
