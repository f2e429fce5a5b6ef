//! Background traffic: a steady mix of requests against the proxy so the metrics have something to show.

use super::client::{self, HttpClient};
use super::services::CATALOG;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

/// Requests are released in small batches every tick, spread at random over the tick.
const TICK: Duration = Duration::from_millis(50);
/// Most requests started in one tick; a higher rate is cut to this.
const MAX_PER_TICK: usize = 500;
/// Most requests in flight; while the proxy is slower than the rate, the excess is skipped.
const MAX_IN_FLIGHT: usize = 512;
/// Deadline for one request, response body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a summary is logged (at debug level).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Fraction of requests sent with `x-canary: true`.
const CANARY_FRACTION: f64 = 0.10;

const X_CANARY: HeaderName = HeaderName::from_static("x-canary");

/// Background traffic at about `rps` requests/s against the proxy at `proxy` (a mix of paths, ~10% with `x-canary: true`); runs until the task is aborted; never panics; every loop bounded per tick.
///
/// With `rps == 0` the task ends at once.
pub fn spawn_traffic(proxy: SocketAddr, rps: u32) -> JoinHandle<()> {
    tokio::spawn(run(proxy, rps))
}

async fn run(proxy: SocketAddr, rps: u32) {
    if rps == 0 {
        return;
    }
    let client = client::new();
    let mut rng = fastrand::Rng::new();
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    let mut tally = Tally::default();
    let mut last_report = Instant::now();
    let per_tick = f64::from(rps) * TICK.as_secs_f64();
    let mut budget = 0.0_f64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        ticker.tick().await;

        // Collect finished requests; at most MAX_IN_FLIGHT are waiting.
        while let Some(done) = in_flight.try_join_next() {
            tally.count(done.unwrap_or(Outcome::Failed));
        }

        budget += per_tick;
        let due = budget.floor().min(MAX_PER_TICK as f64) as usize;
        // A rate above what one tick may start is dropped, not carried over.
        budget = (budget - due as f64).clamp(0.0, 1.0);
        for _ in 0..due {
            if in_flight.len() >= MAX_IN_FLIGHT {
                tally.skipped += 1;
                continue;
            }
            let (path, canary) = pick(&mut rng);
            let delay = Duration::from_micros(rng.u64(0..TICK.as_micros() as u64));
            in_flight.spawn(one_request(client.clone(), proxy, path, canary, delay));
        }

        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            tracing::debug!(
                %proxy,
                sent = tally.sent(),
                ok = tally.ok,
                client_errors = tally.client_errors,
                server_errors = tally.server_errors,
                failed = tally.failed,
                skipped = tally.skipped,
                "demo traffic"
            );
        }
    }
}

/// A request path and whether to send `x-canary: true`.
fn pick(rng: &mut fastrand::Rng) -> (String, bool) {
    let canary = rng.f64() < CANARY_FRACTION;
    let path = match rng.u32(0..100) {
        0..50 => "/api/orders".to_string(),
        50..68 => "/shop".to_string(),
        68..84 => {
            let sku = rng
                .choice(CATALOG.iter())
                .map_or("sku-mug", |(sku, _, _)| *sku);
            format!("/inventory/{sku}")
        }
        84..92 => "/".to_string(),
        92..96 => "/inventory".to_string(),
        // A little traffic the services answer with 404.
        96..98 => "/favicon.ico".to_string(),
        _ => "/inventory/sku-unknown".to_string(),
    };
    (path, canary)
}

async fn one_request(
    client: HttpClient,
    proxy: SocketAddr,
    path: String,
    canary: bool,
    delay: Duration,
) -> Outcome {
    tokio::time::sleep(delay).await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("otlp-mesh-demo-traffic"),
    );
    if canary {
        headers.insert(X_CANARY, HeaderValue::from_static("true"));
    }
    let uri = format!("http://{proxy}{path}");
    match client::get(&client, &uri, headers, REQUEST_TIMEOUT).await {
        Ok(response) if response.status.is_server_error() => Outcome::ServerError,
        Ok(response) if response.status.is_client_error() => Outcome::ClientError,
        Ok(_) => Outcome::Ok,
        Err(error) => {
            tracing::trace!(%uri, error = format!("{error:#}"), "demo traffic request failed");
            Outcome::Failed
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    ClientError,
    ServerError,
    /// No response: connection refused, timeout, or the task failed.
    Failed,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    client_errors: u64,
    server_errors: u64,
    failed: u64,
    skipped: u64,
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        let n = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::ClientError => &mut self.client_errors,
            Outcome::ServerError => &mut self.server_errors,
            Outcome::Failed => &mut self.failed,
        };
        *n = n.saturating_add(1);
    }

    fn sent(&self) -> u64 {
        self.ok
            .saturating_add(self.client_errors)
            .saturating_add(self.server_errors)
            .saturating_add(self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_covers_the_routes_with_about_ten_percent_canary() {
        let mut rng = fastrand::Rng::with_seed(9);
        let picks: Vec<(String, bool)> = (0..10_000).map(|_| pick(&mut rng)).collect();
        let share =
            |f: &dyn Fn(&str) -> bool| picks.iter().filter(|(p, _)| f(p)).count() as f64 / 10_000.0;
        let canary = picks.iter().filter(|(_, c)| *c).count() as f64 / 10_000.0;
        assert!((0.08..0.12).contains(&canary), "canary share {canary}");
        assert!((0.45..0.55).contains(&share(&|p| p == "/api/orders")));
        assert!(share(&|p| p == "/shop") > 0.1);
        assert!(
            share(&|p| p.starts_with("/inventory/sku-") && p != "/inventory/sku-unknown") > 0.1
        );
        assert!(share(&|p| p == "/") > 0.05);
        let not_found = share(&|p| p == "/favicon.ico" || p == "/inventory/sku-unknown");
        assert!((0.02..0.06).contains(&not_found), "404 share {not_found}");
    }
}
