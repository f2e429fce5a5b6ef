//! Active health checks: HTTP/1.1 (`GET path`, expected status ranges), gRPC
//! (`grpc.health.v1.Health/Check` over h2c, `SERVING` passes) and TCP connect.
//!
//! One task per cluster checks every endpoint of the current set each round (concurrently,
//! each check bounded by `timeout`), then sleeps `interval` ± `jitter`. An endpoint starts
//! healthy; `unhealthy_threshold` failures in a row mark it unhealthy and `healthy_threshold`
//! passes in a row mark it healthy again (it then ramps up through slow start). Verdicts are
//! published with `Endpoint::set_healthy`, which the balancers read.

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use otlp_mesh_balance::{Clock, EndpointSet};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::outlier::PanicGuard;

#[cfg(test)]
mod tests;

/// Passing HTTP statuses: single codes and inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Parses `["200-399", "404"]`; statuses must be within 100–599.
    pub fn parse(list: &[String]) -> Result<StatusRanges, String> {
        if list.is_empty() {
            return Err("must list at least one status or range".into());
        }
        let code = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!("`{s}` is not an HTTP status (100 to 599)")),
            }
        };
        let mut out = Vec::new();
        for item in list {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (code(a)?, code(b)?),
                None => {
                    let c = code(item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!("`{item}`: the range is empty"));
            }
            out.push((lo, hi));
        }
        Ok(StatusRanges(out))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// What a check does.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    Http {
        path: String,
        host: Option<String>,
        expected: StatusRanges,
    },
    Grpc {
        service: String,
        authority: Option<String>,
    },
    Tcp,
}

/// A cluster's active health check settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckConfig {
    pub cluster: String,
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Fraction of the interval (0–1) added or removed at random.
    pub jitter: f64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Checked port, when not the endpoint's own.
    pub port: Option<u16>,
}

/// Counters of a health checker, for `/metrics`.
#[derive(Debug, Default)]
pub struct HealthStats {
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Transitions to healthy / unhealthy.
    pub became_healthy: AtomicU64,
    pub became_unhealthy: AtomicU64,
    /// Endpoints marked unhealthy now.
    pub unhealthy: AtomicU64,
}

impl HealthStats {
    /// `(name, value)` for each counter.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
        let r = Ordering::Relaxed;
        f("checks_passed", self.checks_passed.load(r));
        f("checks_failed", self.checks_failed.load(r));
        f("became_healthy", self.became_healthy.load(r));
        f("became_unhealthy", self.became_unhealthy.load(r));
    }
}

/// Boxed result of one probe: `Err(reason)` is a failed check.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// Runs one check against an address.
pub type Probe = Arc<dyn Fn(SocketAddr) -> ProbeFuture + Send + Sync>;

/// The probe for `kind` (bounded by `timeout`).
pub fn probe_for(kind: &CheckKind, timeout: Duration) -> Probe {
    let kind = Arc::new(kind.clone());
    Arc::new(move |addr| {
        let kind = kind.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, check_once(&kind, addr)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        })
    })
}

/// One check of `addr`, unbounded in time.
pub async fn check_once(kind: &CheckKind, addr: SocketAddr) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            host,
            expected,
        } => {
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let host = host.clone().unwrap_or_else(|| addr.to_string());
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "otlp-mesh-health-check")
                .header(http::header::CONNECTION, "close")
                .body(Empty::new())
                .map_err(|e| format!("request: {e}"))?;
            let result = send.send_request(req).await;
            conn.abort();
            let resp = result.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            if expected.contains(status) {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
        CheckKind::Grpc { service, authority } => {
            let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
                TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let authority = authority.clone().unwrap_or_else(|| addr.to_string());
            let uri = format!("http://{authority}/grpc.health.v1.Health/Check");
            let req = http::Request::post(uri)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .header(http::header::USER_AGENT, "otlp-mesh-health-check")
                .body(Full::new(grpc_request(service)))
                .map_err(|e| format!("request: {e}"))?;
            let result = async {
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                if resp.status() != http::StatusCode::OK {
                    return Err(format!("http status {}", resp.status()));
                }
                let head_status = grpc_status(resp.headers());
                let collected = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?;
                let trailer_status = collected.trailers().and_then(grpc_status);
                match trailer_status.or(head_status) {
                    Some(0) => {}
                    Some(code) => return Err(format!("grpc-status {code}")),
                    None => return Err("no grpc-status".into()),
                }
                match grpc_serving_status(collected.to_bytes()) {
                    Some(1) => Ok(()),
                    Some(s) => Err(format!("serving status {s}")),
                    None => Err("malformed HealthCheckResponse".into()),
                }
            }
            .await;
            conn.abort();
            result
        }
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A length-prefixed `HealthCheckRequest { service }`.
fn grpc_request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 = UNKNOWN when absent).
fn grpc_serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None; // too short, or compressed (never requested)
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return None;
    }
    let mut msg = body.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = get_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut msg)?,
            (_, 0) => {
                get_varint(&mut msg)?;
            }
            (_, 2) => {
                let n = usize::try_from(get_varint(&mut msg)?).ok()?;
                if msg.remaining() < n {
                    return None;
                }
                msg.advance(n);
            }
            (_, 1) if msg.remaining() >= 8 => msg.advance(8),
            (_, 5) if msg.remaining() >= 4 => msg.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

/// Consecutive results of one endpoint.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

/// The delay before the next round: `interval` ± up to `jitter` of it.
fn next_delay(config: &HealthCheckConfig) -> Duration {
    let j = config.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + j * (fastrand::f64() * 2.0 - 1.0);
    config.interval.mul_f64(factor.max(0.0))
}

/// Runs the checks with the probe its config describes, until the handle is aborted.
pub fn spawn(
    config: HealthCheckConfig,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    clock: Clock,
    stats: Arc<HealthStats>,
    panic: Option<Arc<PanicGuard>>,
) -> JoinHandle<()> {
    let probe = probe_for(&config.kind, config.timeout);
    spawn_with_probe(config, endpoints, clock, stats, panic, probe)
}

/// [`spawn`] with any probe (tests script one).
pub fn spawn_with_probe(
    config: HealthCheckConfig,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    clock: Clock,
    stats: Arc<HealthStats>,
    panic: Option<Arc<PanicGuard>>,
    probe: Probe,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut streaks: HashMap<SocketAddr, Streak> = HashMap::new();
        loop {
            let set = endpoints.load_full();
            let mut round = tokio::task::JoinSet::new();
            for ep in set.endpoints() {
                let target = match config.port {
                    Some(p) => SocketAddr::new(ep.addr.ip(), p),
                    None => ep.addr,
                };
                let (probe, addr, timeout) = (probe.clone(), ep.addr, config.timeout);
                round.spawn(async move {
                    let r = match tokio::time::timeout(timeout, probe(target)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    (addr, r)
                });
            }
            let mut results = HashMap::new();
            while let Some(joined) = round.join_next().await {
                if let Ok((addr, r)) = joined {
                    results.insert(addr, r);
                }
            }
            streaks.retain(|a, _| set.endpoints().iter().any(|e| e.addr == *a));
            let now = clock.now();
            let mut changed = false;
            for ep in set.endpoints() {
                let Some(result) = results.remove(&ep.addr) else {
                    continue;
                };
                let s = streaks.entry(ep.addr).or_default();
                match result {
                    Ok(()) => {
                        stats.checks_passed.fetch_add(1, Ordering::Relaxed);
                        s.passes = s.passes.saturating_add(1);
                        s.failures = 0;
                        if !ep.is_healthy() && s.passes >= config.healthy_threshold {
                            ep.set_healthy(true, now);
                            stats.became_healthy.fetch_add(1, Ordering::Relaxed);
                            changed = true;
                            tracing::info!(cluster = %config.cluster, endpoint = %ep.addr, "health check: endpoint healthy");
                        }
                    }
                    Err(reason) => {
                        stats.checks_failed.fetch_add(1, Ordering::Relaxed);
                        s.failures = s.failures.saturating_add(1);
                        s.passes = 0;
                        if ep.is_healthy() && s.failures >= config.unhealthy_threshold {
                            ep.set_healthy(false, now);
                            stats.became_unhealthy.fetch_add(1, Ordering::Relaxed);
                            changed = true;
                            tracing::warn!(cluster = %config.cluster, endpoint = %ep.addr, %reason, "health check: endpoint unhealthy");
                        } else {
                            tracing::debug!(cluster = %config.cluster, endpoint = %ep.addr, %reason, "health check failed");
                        }
                    }
                }
            }
            let unhealthy = set.endpoints().iter().filter(|e| !e.is_healthy()).count();
            stats.unhealthy.store(unhealthy as u64, Ordering::Relaxed);
            if let Some(p) = &panic
                && changed
            {
                p.evaluate(&set, now);
            }
            tokio::time::sleep(next_delay(&config)).await;
        }
    })
}
