//! `consul` source: `/v1/health/service/NAME` blocking queries (`index` + `wait`).

use crate::http::{HttpClient, read_body};
use crate::{Publisher, default_backoff};
use http::Method;
use otlp_mesh_config::ConsulDiscovery;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Option<Node>,
    #[serde(rename = "Service")]
    service: Option<Service>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Weights")]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

/// Maps a `/v1/health/service` JSON answer to endpoints (service address, else node address).
pub(crate) fn parse_health(body: &[u8]) -> Result<Vec<(SocketAddr, u32)>, String> {
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| format!("bad health JSON: {e}"))?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(svc) = e.service else { continue };
        let addr = if svc.address.is_empty() {
            e.node.map(|n| n.address).unwrap_or_default()
        } else {
            svc.address
        };
        match addr.parse::<IpAddr>() {
            Ok(ip) if svc.port != 0 => {
                let w = svc.weights.map(|w| w.passing).unwrap_or(1).max(1);
                out.push((SocketAddr::new(ip, svc.port), w));
            }
            _ => {
                tracing::warn!(address = %addr, port = svc.port, "consul instance without an IP address and port; ignored")
            }
        }
    }
    Ok(out)
}

/// Next blocking index per Consul's rules: reset when it goes backwards, never below 1.
pub(crate) fn next_index(old: u64, header: Option<u64>) -> u64 {
    match header {
        None => 0,
        Some(new) if new < old => 0,
        Some(new) => new.max(1),
    }
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) async fn run(p: Publisher, cfg: ConsulDiscovery) {
    let client = HttpClient::new();
    let mut backoff = default_backoff();
    let mut index = 0u64;
    let wait = cfg.wait.0.max(Duration::from_secs(1));
    let base = format!(
        "{}/v1/health/service/{}",
        cfg.address.trim_end_matches('/'),
        url_escape(&cfg.service)
    );
    let mut headers = Vec::new();
    if let Some(t) = &cfg.token {
        headers.push(("x-consul-token", t.clone()));
    }
    loop {
        let mut url = format!("{base}?index={index}&wait={}ms", wait.as_millis());
        if cfg.passing {
            url.push_str("&passing");
        }
        if let Some(tag) = &cfg.tag {
            url.push_str(&format!("&tag={}", url_escape(tag)));
        }
        if let Some(dc) = &cfg.datacenter {
            url.push_str(&format!("&dc={}", url_escape(dc)));
        }
        // Consul adds up to wait/16 of jitter; allow that plus slack.
        let timeout = wait + wait / 16 + Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        match query(&client, &url, &headers, timeout).await {
            Ok((list, header_index)) => {
                let new = next_index(index, header_index);
                p.publish(list);
                backoff.reset();
                if header_index.is_none() {
                    // Not a blocking-capable answer: poll instead of spinning.
                    tokio::time::sleep(wait).await;
                } else if new == index && started.elapsed() < wait / 2 {
                    // The index did not move yet the query returned early: don't spin.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                index = new;
            }
            Err(e) => {
                p.fail(&e);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn query(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<(Vec<(SocketAddr, u32)>, Option<u64>), String> {
    let resp = client
        .send(Method::GET, url, headers, None, timeout)
        .await?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = read_body(resp.into_body(), Duration::from_secs(10)).await?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok((parse_health(&body)?, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, Some(5)), 5);
        assert_eq!(next_index(5, Some(3)), 0);
        assert_eq!(next_index(0, Some(0)), 1);
        assert_eq!(next_index(7, None), 0);
    }

    #[test]
    fn maps_service_and_node_addresses_and_weights() {
        let body = br#"[
          {"Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
           "Service": {"ID": "orders-1", "Service": "orders", "Tags": ["v1"], "Address": "", "Port": 8080,
                       "Weights": {"Passing": 3, "Warning": 1}},
           "Checks": [{"Status": "passing"}]},
          {"Node": {"Address": "10.0.0.2"},
           "Service": {"Address": "10.0.1.2", "Port": 8081}},
          {"Node": {"Address": "10.0.0.3"},
           "Service": {"Address": "orders.internal", "Port": 8082}}
        ]"#;
        assert_eq!(
            parse_health(body).unwrap(),
            vec![
                ("10.0.0.1:8080".parse().unwrap(), 3),
                ("10.0.1.2:8081".parse().unwrap(), 1)
            ]
        );
    }

    /// A tiny Consul: serves `entries` with `X-Consul-Index`, blocks while `index` is current.
    /// Requests seen: path and query, and the auth header.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    #[derive(Clone)]
    struct FakeConsul {
        state: Arc<Mutex<(u64, String)>>,
        changed: Arc<Notify>,
        seen: Seen,
    }

    impl FakeConsul {
        fn set(&self, entries: &str) {
            let mut s = self.state.lock().unwrap();
            s.0 += 1;
            s.1 = entries.to_string();
            drop(s);
            self.changed.notify_waiters();
        }

        async fn handle(
            self,
            req: http::Request<hyper::body::Incoming>,
        ) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
            let query = req.uri().query().unwrap_or("").to_string();
            let token = req
                .headers()
                .get("x-consul-token")
                .map(|v| v.to_str().unwrap().to_string());
            self.seen
                .lock()
                .unwrap()
                .push((format!("{}?{query}", req.uri().path()), token));
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .map(str::to_string)
            };
            let index: u64 = param("index").and_then(|v| v.parse().ok()).unwrap_or(0);
            let wait_ms: u64 = param("wait")
                .and_then(|v| v.trim_end_matches("ms").parse().ok())
                .unwrap_or(300_000);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            loop {
                let notified = self.changed.notified();
                let (cur, body) = self.state.lock().unwrap().clone();
                if cur != index || tokio::time::Instant::now() >= deadline {
                    return Ok(http::Response::builder()
                        .header("x-consul-index", cur.to_string())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap());
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
    }

    async fn start_fake() -> (SocketAddr, FakeConsul) {
        let fake = FakeConsul {
            state: Arc::new(Mutex::new((1, "[]".to_string()))),
            changed: Arc::new(Notify::new()),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| f.clone().handle(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, fake)
    }

    fn entry(ip: &str, port: u16, weight: u32) -> String {
        format!(
            r#"{{"Node":{{"Node":"n","Address":"{ip}"}},"Service":{{"Service":"orders","Address":"","Port":{port},"Weights":{{"Passing":{weight},"Warning":1}}}},"Checks":[]}}"#
        )
    }

    #[tokio::test]
    async fn follows_blocking_queries_and_sends_token_tag_dc() {
        let (addr, fake) = start_fake().await;
        fake.set(&format!("[{}]", entry("127.0.0.1", 9001, 2)));
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      consul: {{ address: 'http://{addr}', service: orders, tag: v1, datacenter: dc1, token: s3cret, wait: 2s }}\n"
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        let want1 = vec![("127.0.0.1:9001".parse().unwrap(), 2)];
        tokio::time::timeout(Duration::from_secs(10), async {
            while **d.updates.borrow_and_update() != want1 {
                d.updates.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert!(d.status.healthy());
        // The source is now blocked on index 2; a change wakes it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.set(&format!(
            "[{},{}]",
            entry("127.0.0.1", 9001, 2),
            entry("127.0.0.2", 9002, 1)
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            while d.updates.borrow_and_update().len() != 2 {
                d.updates.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        let seen = fake.seen.lock().unwrap().clone();
        let (first, token) = &seen[0];
        assert!(
            first.starts_with("/v1/health/service/orders?index=0"),
            "{first}"
        );
        assert!(
            first.contains("passing") && first.contains("tag=v1") && first.contains("dc=dc1"),
            "{first}"
        );
        assert_eq!(token.as_deref(), Some("s3cret"));
        assert!(seen.iter().any(|(q, _)| q.contains("index=2")), "{seen:?}");
        // Requests are blocking, not a busy loop.
        assert!(seen.len() < 10, "{} requests", seen.len());
        assert_eq!(d.status.updates(), 2);
    }

    #[tokio::test]
    async fn unreachable_agent_fails_and_keeps_nothing_published() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      consul: {{ address: 'http://127.0.0.1:{port}', service: orders }}\n"
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let d = crate::spawn("a", &cfg.clusters[0].discovery);
        tokio::time::timeout(Duration::from_secs(10), async {
            while d.status.failures() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert!(!d.status.healthy());
        assert!(d.updates.borrow().is_empty());
    }
}
