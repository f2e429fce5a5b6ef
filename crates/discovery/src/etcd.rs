//! `etcd` source: range + watch on a key prefix through etcd v3's JSON gateway
//! (`/v3/kv/range`, `/v3/watch`). Values are endpoint JSON: `{"address": "ip:port", "weight": N}`.

use crate::Publisher;
use crate::http::{HttpClient, LineStream, b64_decode, b64_encode, read_body};
use http::Method;
use otlp_mesh_config::EtcdDiscovery;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Most keys kept under the prefix (more is an error: the last set stays).
const MAX_KEYS: usize = 100_000;
/// A watch with no message for this long is restarted (progress notifications keep it alive).
const WATCH_IDLE: Duration = Duration::from_secs(15 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The end of the range covering every key with `prefix` (etcd's "prefix + 1").
pub(crate) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Deserialize)]
struct EndpointValue {
    address: String,
    #[serde(default)]
    weight: Option<u32>,
}

/// Parses one key's value; `None` (logged) if it is not endpoint JSON.
fn parse_value(key: &str, value_b64: &str) -> Option<(SocketAddr, u32)> {
    let raw = b64_decode(value_b64)?;
    match serde_json::from_slice::<EndpointValue>(&raw) {
        Ok(v) => match v.address.trim().parse() {
            Ok(a) => Some((a, v.weight.unwrap_or(1).max(1))),
            Err(_) => {
                tracing::warn!(key, address = %v.address, "etcd value has a bad address; ignored");
                None
            }
        },
        Err(e) => {
            tracing::warn!(key, error = %e, "etcd value is not endpoint JSON; ignored");
            None
        }
    }
}

fn revision(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn key_of(kv: &Value) -> Option<String> {
    let k = b64_decode(kv.get("key")?.as_str()?)?;
    Some(String::from_utf8_lossy(&k).into_owned())
}

pub(crate) async fn run(p: Publisher, cfg: EtcdDiscovery) {
    let client = HttpClient::new();
    let mut retry = crate::Retry::new();
    let mut attempt = 0usize;
    loop {
        let n = cfg.endpoints.len().max(1);
        let Some(endpoint) = cfg.endpoints.get(attempt % n) else {
            retry.failed(&p, "no etcd endpoints configured").await;
            continue;
        };
        attempt = attempt.wrapping_add(1);
        let endpoint = endpoint.trim_end_matches('/');
        let err = session(&p, &client, endpoint, &cfg.prefix, &mut retry.backoff).await;
        retry.failed(&p, &format!("{endpoint}: {err}")).await;
    }
}

/// One list + watch session; returns why it ended (the caller backs off and starts again).
async fn session(
    p: &Publisher,
    client: &HttpClient,
    endpoint: &str,
    prefix: &str,
    backoff: &mut crate::Backoff,
) -> String {
    let key = b64_encode(prefix.as_bytes());
    let range_end = b64_encode(&prefix_range_end(prefix.as_bytes()));
    // List.
    let body = json!({ "key": key, "range_end": range_end }).to_string();
    let resp = match client
        .send(
            Method::POST,
            &format!("{endpoint}/v3/kv/range"),
            &[],
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return e,
    };
    let status = resp.status();
    let bytes = match read_body(resp.into_body(), REQUEST_TIMEOUT).await {
        Ok(b) => b,
        Err(e) => return e,
    };
    if !status.is_success() {
        return format!(
            "range: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
    }
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return format!("range: bad JSON: {e}"),
    };
    let Some(rev) = v.pointer("/header/revision").and_then(revision) else {
        return "range: no header.revision".into();
    };
    let mut keys: BTreeMap<String, (SocketAddr, u32)> = BTreeMap::new();
    for kv in v
        .get("kvs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(k) = key_of(kv) else { continue };
        if let Some(ep) = kv
            .get("value")
            .and_then(Value::as_str)
            .and_then(|val| parse_value(&k, val))
        {
            keys.insert(k, ep);
        }
    }
    if keys.len() > MAX_KEYS {
        return format!("more than {MAX_KEYS} keys under the prefix");
    }
    p.publish(keys.values().copied().collect());
    backoff.reset();

    // Watch from the next revision.
    let body = json!({ "create_request": {
        "key": key, "range_end": range_end, "start_revision": (rev + 1).to_string(), "progress_notify": true
    }})
    .to_string();
    let resp = match client
        .send(
            Method::POST,
            &format!("{endpoint}/v3/watch"),
            &[],
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !resp.status().is_success() {
        return format!("watch: HTTP {}", resp.status());
    }
    let mut lines = LineStream::new(resp.into_body());
    loop {
        let line = match lines.next_line(WATCH_IDLE).await {
            Ok(Some(l)) => l,
            Ok(None) => return "watch stream ended".into(),
            Err(e) => return format!("watch: {e}"),
        };
        let msg: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => return format!("watch: bad JSON: {e}"),
        };
        if let Some(err) = msg.get("error") {
            return format!("watch error: {err}");
        }
        let Some(result) = msg.get("result") else {
            continue;
        };
        if result.get("canceled").and_then(Value::as_bool) == Some(true)
            || result
                .get("compact_revision")
                .and_then(revision)
                .unwrap_or(0)
                > 0
        {
            return format!(
                "watch canceled: {}",
                result
                    .get("cancel_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("compacted")
            );
        }
        let events = result
            .get("events")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if events.is_empty() {
            p.status.ok();
            continue;
        }
        for ev in events {
            let Some(kv) = ev.get("kv") else { continue };
            let Some(k) = key_of(kv) else { continue };
            if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
                keys.remove(&k);
            } else {
                match kv
                    .get("value")
                    .and_then(Value::as_str)
                    .and_then(|val| parse_value(&k, val))
                {
                    Some(ep) => {
                        if keys.len() >= MAX_KEYS && !keys.contains_key(&k) {
                            return format!("more than {MAX_KEYS} keys under the prefix");
                        }
                        keys.insert(k, ep);
                    }
                    None => {
                        keys.remove(&k);
                    }
                }
            }
        }
        p.publish(keys.values().copied().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }

    fn free_port() -> u16 {
        otlp_mesh_ports::free_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap()
            .port()
    }

    struct Etcd {
        child: Child,
    }
    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts a real etcd; panics (fails the test) if the binary is missing: CI installs it.
    fn start_etcd(dir: &std::path::Path, client: u16, peer: u16) -> Etcd {
        let url = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--data-dir", &dir.display().to_string()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is not installed (apt-get install etcd-server); .ci/run installs it");
        Etcd { child }
    }

    async fn etcd_call(
        client: &HttpClient,
        port: u16,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let resp = client
            .send(
                Method::POST,
                &format!("http://127.0.0.1:{port}{path}"),
                &[],
                Some(body.to_string()),
                REQUEST_TIMEOUT,
            )
            .await?;
        let b = read_body(resp.into_body(), REQUEST_TIMEOUT).await?;
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }

    async fn put(client: &HttpClient, port: u16, key: &str, value: &str) {
        let body =
            json!({ "key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes()) });
        etcd_call(client, port, "/v3/kv/put", body).await.unwrap();
    }

    async fn wait_ready(client: &HttpClient, port: u16) {
        for _ in 0..200 {
            let body = json!({ "key": b64_encode(b"x") });
            if etcd_call(client, port, "/v3/kv/range", body).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not come up on port {port}");
    }

    async fn wait_for(
        rx: &mut tokio::sync::watch::Receiver<crate::Endpoints>,
        want: &[(&str, u32)],
    ) {
        let want: Vec<(SocketAddr, u32)> =
            want.iter().map(|(a, w)| (a.parse().unwrap(), *w)).collect();
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            while **rx.borrow_and_update() != want {
                rx.changed().await.unwrap();
            }
        })
        .await;
        assert!(r.is_ok(), "wanted {want:?}, have {:?}", **rx.borrow());
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_a_real_etcd_and_survives_its_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (cport, pport) = (free_port(), free_port());
        let client = HttpClient::new();
        // Source first: etcd unreachable at start → degraded (empty, failing), retrying.
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      etcd: {{ endpoints: ['http://127.0.0.1:{cport}'], prefix: /services/orders/ }}\n"
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("orders", &cfg.clusters[0].discovery);
        wait_until(|| d.status.failures() > 0).await;
        assert!(!d.status.healthy());
        assert!(d.updates.borrow().is_empty());

        let etcd = start_etcd(dir.path(), cport, pport);
        wait_ready(&client, cport).await;
        put(
            &client,
            cport,
            "/services/orders/a",
            r#"{"address":"127.0.0.1:9001","weight":2}"#,
        )
        .await;
        put(
            &client,
            cport,
            "/services/other/x",
            r#"{"address":"127.0.0.1:7777"}"#,
        )
        .await;
        wait_for(&mut d.updates, &[("127.0.0.1:9001", 2)]).await;
        wait_until(|| d.status.healthy()).await;

        put(
            &client,
            cport,
            "/services/orders/b",
            r#"{"address":"127.0.0.1:9002"}"#,
        )
        .await;
        wait_for(
            &mut d.updates,
            &[("127.0.0.1:9001", 2), ("127.0.0.1:9002", 1)],
        )
        .await;
        put(
            &client,
            cport,
            "/services/orders/a",
            r#"{"address":"127.0.0.1:9001","weight":7}"#,
        )
        .await;
        wait_for(
            &mut d.updates,
            &[("127.0.0.1:9001", 7), ("127.0.0.1:9002", 1)],
        )
        .await;
        let body = json!({ "key": b64_encode(b"/services/orders/b") });
        etcd_call(&client, cport, "/v3/kv/deleterange", body)
            .await
            .unwrap();
        wait_for(&mut d.updates, &[("127.0.0.1:9001", 7)]).await;

        // Stop etcd: the set stays, the source fails.
        drop(etcd);
        wait_until(|| !d.status.healthy()).await;
        assert_eq!(
            **d.updates.borrow(),
            vec![("127.0.0.1:9001".parse().unwrap(), 7)]
        );
        assert!(d.status.last_error().is_some());

        // Restart on the same data: recovers and sees changes made after.
        let _etcd = start_etcd(dir.path(), cport, pport);
        wait_ready(&client, cport).await;
        put(
            &client,
            cport,
            "/services/orders/c",
            r#"{"address":"127.0.0.1:9003"}"#,
        )
        .await;
        wait_for(
            &mut d.updates,
            &[("127.0.0.1:9001", 7), ("127.0.0.1:9003", 1)],
        )
        .await;
        wait_until(|| d.status.healthy()).await;
    }
}
