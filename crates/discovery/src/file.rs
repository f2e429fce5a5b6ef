//! `file` source: a YAML or JSON list of endpoints, polled (mtime + size, then content hash).

use crate::Publisher;
use otlp_mesh_config::FileDiscovery;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::SystemTime;

/// Largest endpoints file read (bigger is rejected, the last set stays).
const MAX_FILE: u64 = 16 << 20;
/// Most endpoints one file may list.
const MAX_ENDPOINTS: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// Parses an endpoints file (YAML or JSON): `[{address: ip:port, weight: N, metadata: {k: v}}]`.
/// Every entry must be valid, or the whole file is rejected with the reasons.
pub fn parse_endpoints_file(text: &str) -> Result<Vec<(SocketAddr, u32)>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> =
        serde_saphyr::from_str(text).map_err(|e| format!("not an endpoint list: {e}"))?;
    if entries.len() > MAX_ENDPOINTS {
        return Err(format!("more than {MAX_ENDPOINTS} endpoints"));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let addr: SocketAddr = e
            .address
            .trim()
            .parse()
            .map_err(|_| format!("[{i}].address `{}` is not ip:port", e.address))?;
        if e.weight == 0 {
            return Err(format!("[{i}].weight must be at least 1"));
        }
        out.push((addr, e.weight));
    }
    Ok(out)
}

pub(crate) async fn run(p: Publisher, cfg: FileDiscovery) {
    let interval = cfg.interval.0.max(std::time::Duration::from_millis(10));
    let mut seen_meta: Option<(SystemTime, u64)> = None;
    let mut seen_hash: Option<u64> = None;
    let mut polls = 0u32;
    loop {
        // Every 10th poll re-reads even when mtime and size look unchanged (coarse mtimes).
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(10) {
            seen_meta = None;
        }
        match check(&cfg.path, &mut seen_meta, &mut seen_hash).await {
            Ok(Some(list)) => p.publish(list),
            Ok(None) => {}
            Err(e) => p.fail(&format!("{}: {e}", cfg.path)),
        }
        tokio::time::sleep(interval).await;
    }
}

/// `Ok(None)` when the file is unchanged since the last check (valid or not).
async fn check(
    path: &str,
    seen_meta: &mut Option<(SystemTime, u64)>,
    seen_hash: &mut Option<u64>,
) -> Result<Option<Vec<(SocketAddr, u32)>>, String> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| {
        *seen_meta = None;
        *seen_hash = None;
        e.to_string()
    })?;
    if meta.len() > MAX_FILE {
        return Err(format!("file is over {MAX_FILE} bytes"));
    }
    let key = (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    );
    if *seen_meta == Some(key) {
        return Ok(None);
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let hash = h.finish();
    *seen_meta = Some(key);
    if *seen_hash == Some(hash) {
        return Ok(None);
    }
    *seen_hash = Some(hash);
    let text = String::from_utf8(bytes).map_err(|_| "file is not UTF-8".to_string())?;
    parse_endpoints_file(&text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_yaml_and_json_lists() {
        let y = "- { address: 127.0.0.1:9001, weight: 2, metadata: { zone: a } }\n- address: '[::1]:9002'\n";
        assert_eq!(
            parse_endpoints_file(y).unwrap(),
            vec![
                ("127.0.0.1:9001".parse().unwrap(), 2),
                ("[::1]:9002".parse().unwrap(), 1)
            ]
        );
        let j = r#"[{"address": "127.0.0.1:9001", "weight": 3}]"#;
        assert_eq!(
            parse_endpoints_file(j).unwrap(),
            vec![("127.0.0.1:9001".parse().unwrap(), 3)]
        );
        assert!(
            parse_endpoints_file("[{address: nope}]")
                .unwrap_err()
                .contains("[0].address")
        );
        assert!(parse_endpoints_file("[{address: 127.0.0.1:1, weight: 0}]").is_err());
        assert!(parse_endpoints_file("[{address: 127.0.0.1:1, port: 3}]").is_err());
    }

    async fn wait_for(rx: &mut tokio::sync::watch::Receiver<crate::Endpoints>, want: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while rx.borrow_and_update().len() != want {
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn file_source_follows_edits_and_keeps_last_set_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eps.yaml");
        std::fs::write(&path, "- address: 127.0.0.1:9001\n").unwrap();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      file: {{ path: '{}', interval: 20ms }}\n",
            path.display()
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        assert_eq!(d.status.kind(), "file");
        wait_for(&mut d.updates, 1).await;
        assert!(d.status.healthy());

        std::fs::write(
            &path,
            "[{\"address\": \"127.0.0.1:9001\"}, {\"address\": \"127.0.0.1:9002\", \"weight\": 5}]",
        )
        .unwrap();
        wait_for(&mut d.updates, 2).await;
        assert_eq!(
            d.updates.borrow()[1],
            ("127.0.0.1:9002".parse().unwrap(), 5)
        );

        std::fs::write(&path, "- address: not-an-address\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while d.status.healthy() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(d.updates.borrow().len(), 2, "old set kept");
        assert!(d.status.last_error().unwrap().contains("not ip:port"));

        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(d.updates.borrow().len(), 2, "old set kept while missing");
        std::fs::write(&path, "- address: 127.0.0.1:9003\n").unwrap();
        wait_for(&mut d.updates, 1).await;
        assert!(d.status.healthy());
        assert_eq!(d.status.updates(), 3);
    }
}
