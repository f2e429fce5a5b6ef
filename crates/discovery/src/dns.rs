//! `dns` source: A/AAAA of `host:port`, or SRV records, re-resolved on the TTL (clamped).

use crate::{Backoff, Publisher};
use hickory_resolver::config::{ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};
use otlp_mesh_config::{DnsDiscovery, DnsRecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Most SRV targets resolved per lookup (the rest are ignored with a log line).
const MAX_SRV_TARGETS: usize = 64;

/// Re-resolve delay for a record TTL: the TTL clamped to `[min, max]`.
pub fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.max(min).min(max.max(min))
}

/// Maps SRV records `(priority, weight, port, target)` and resolved target addresses to
/// endpoints: only the lowest-priority group is used; SRV weight 0 becomes 1.
pub fn srv_to_endpoints(
    records: &[(u16, u16, u16, String)],
    resolved: &HashMap<String, Vec<IpAddr>>,
) -> Vec<(SocketAddr, u32)> {
    let Some(best) = records.iter().map(|r| r.0).min() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (prio, weight, port, target) in records {
        if *prio != best {
            continue;
        }
        for ip in resolved.get(target).map(Vec::as_slice).unwrap_or_default() {
            out.push((SocketAddr::new(*ip, *port), u32::from(*weight).max(1)));
        }
    }
    out
}

fn resolver() -> TokioResolver {
    let mut builder = match Resolver::builder_tokio() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no usable /etc/resolv.conf; using default name servers");
            Resolver::builder_with_config(
                ResolverConfig::default(),
                TokioConnectionProvider::default(),
            )
        }
    };
    builder.options_mut().use_hosts_file = ResolveHosts::Always;
    builder.build()
}

pub(crate) async fn run(p: Publisher, cfg: DnsDiscovery) {
    let resolver = resolver();
    let (min, max) = (cfg.min_ttl.0, cfg.max_ttl.0);
    let mut backoff = Backoff::new(Duration::from_millis(200), min.max(Duration::from_secs(1)));
    loop {
        let res = match cfg.record_type {
            DnsRecordType::A => resolve_a(&resolver, &cfg.name).await,
            DnsRecordType::Srv => resolve_srv(&resolver, &cfg.name).await,
        };
        match res {
            Ok((list, ttl)) => {
                p.publish(list);
                backoff.reset();
                tokio::time::sleep(clamp_ttl(ttl, min, max)).await;
            }
            Err(e) => {
                p.fail(&format!("{}: {e}", cfg.name));
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

async fn resolve_a(
    r: &TokioResolver,
    name: &str,
) -> Result<(Vec<(SocketAddr, u32)>, Duration), String> {
    let (host, port) = name
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| "name must be host:port".to_string())?;
    let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![(SocketAddr::new(ip, port), 1)], Duration::MAX));
    }
    let lookup = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let list: Vec<_> = lookup
        .iter()
        .map(|ip| (SocketAddr::new(ip, port), 1))
        .collect();
    if list.is_empty() {
        return Err("no addresses".into());
    }
    Ok((list, remaining(lookup.valid_until())))
}

async fn resolve_srv(
    r: &TokioResolver,
    name: &str,
) -> Result<(Vec<(SocketAddr, u32)>, Duration), String> {
    let lookup = r.srv_lookup(name.trim()).await.map_err(|e| e.to_string())?;
    let mut ttl = remaining(lookup.as_lookup().valid_until());
    let mut records: Vec<(u16, u16, u16, String)> = lookup
        .iter()
        .map(|s| (s.priority(), s.weight(), s.port(), s.target().to_utf8()))
        .collect();
    if records.len() > MAX_SRV_TARGETS {
        tracing::warn!(
            name,
            records = records.len(),
            "SRV answer truncated to {MAX_SRV_TARGETS} targets"
        );
        records.truncate(MAX_SRV_TARGETS);
    }
    let mut resolved = HashMap::new();
    for (_, _, _, target) in &records {
        if resolved.contains_key(target) {
            continue;
        }
        match r.lookup_ip(target.as_str()).await {
            Ok(ips) => {
                ttl = ttl.min(remaining(ips.valid_until()));
                resolved.insert(target.clone(), ips.iter().collect::<Vec<_>>());
            }
            Err(e) => tracing::warn!(name, target, error = %e, "SRV target does not resolve"),
        }
    }
    let list = srv_to_endpoints(&records, &resolved);
    if list.is_empty() {
        return Err("SRV targets resolved to no addresses".into());
    }
    Ok((list, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(clamp_ttl(Duration::from_secs(0), min, max), min);
        assert_eq!(
            clamp_ttl(Duration::from_secs(60), min, max),
            Duration::from_secs(60)
        );
        assert_eq!(clamp_ttl(Duration::from_secs(86400), min, max), max);
        assert_eq!(clamp_ttl(Duration::MAX, min, max), max);
    }

    #[test]
    fn srv_uses_lowest_priority_with_weights_and_ports() {
        let records = vec![
            (10, 60, 8080, "a.example.".to_string()),
            (10, 0, 8081, "b.example.".to_string()),
            (20, 100, 9090, "c.example.".to_string()),
            (10, 5, 8082, "missing.example.".to_string()),
        ];
        let mut resolved = HashMap::new();
        resolved.insert(
            "a.example.".to_string(),
            vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        );
        resolved.insert("b.example.".to_string(), vec!["10.0.0.2".parse().unwrap()]);
        resolved.insert("c.example.".to_string(), vec!["10.0.0.3".parse().unwrap()]);
        assert_eq!(
            srv_to_endpoints(&records, &resolved),
            vec![
                ("10.0.0.1:8080".parse().unwrap(), 60),
                ("[::1]:8080".parse().unwrap(), 60),
                ("10.0.0.2:8081".parse().unwrap(), 1),
            ]
        );
        assert!(srv_to_endpoints(&[], &resolved).is_empty());
    }

    #[tokio::test]
    async fn localhost_resolves_from_hosts_file() {
        let cfg = otlp_mesh_config::parse_str(
            "clusters:\n  - name: a\n    discovery:\n      dns: { name: 'localhost:9000', min_ttl: 1s, max_ttl: 2s }\n",
            "t.yaml",
        )
        .unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        tokio::time::timeout(Duration::from_secs(10), d.updates.changed())
            .await
            .unwrap()
            .unwrap();
        let list = d.updates.borrow().clone();
        assert!(!list.is_empty());
        assert!(
            list.iter()
                .all(|(a, w)| a.ip().is_loopback() && a.port() == 9000 && *w == 1),
            "{list:?}"
        );
        assert!(d.status.healthy());
        assert_eq!(d.status.kind(), "dns");
    }

    #[tokio::test]
    async fn unresolvable_name_marks_failing_and_publishes_nothing() {
        let cfg = otlp_mesh_config::parse_str(
            "clusters:\n  - name: a\n    discovery:\n      dns: { name: 'no-such-host.invalid.:9000' }\n",
            "t.yaml",
        )
        .unwrap();
        let d = crate::spawn("a", &cfg.clusters[0].discovery);
        // Generous: without network, the resolver's own timeouts decide how long this takes.
        tokio::time::timeout(Duration::from_secs(60), async {
            while d.status.failures() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert!(!d.status.healthy());
        assert!(d.updates.borrow().is_empty());
    }
}
