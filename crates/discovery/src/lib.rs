//! Endpoint discovery for clusters.
//!
//! A source turns a cluster's `discovery` config into endpoint sets. Only `static` exists so far;
//! the load-balancing issue adds DNS, file, etcd, Consul and Kubernetes sources that stream
//! updates through the same [`Source`] type.

use otlp_mesh_config::Discovery;
use std::net::SocketAddr;

/// A configured discovery source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fixed list of addresses (with weights) from the config file.
    Static(Vec<(SocketAddr, u32)>),
}

impl Source {
    /// The source a cluster's config describes. Addresses were checked by config validation;
    /// any that still fail to parse are skipped with a log line rather than failing the cluster.
    pub fn from_config(cluster: &str, discovery: &Discovery) -> Source {
        let list = discovery.static_endpoints.as_deref().unwrap_or_default();
        let addrs = list
            .iter()
            .filter_map(|s| match s.address.parse() {
                Ok(a) => Some((a, s.weight.max(1))),
                Err(_) => {
                    tracing::warn!(cluster, endpoint = %s.address, "skipping invalid static endpoint");
                    None
                }
            })
            .collect();
        Source::Static(addrs)
    }

    /// Source kind shown in `/clusters`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Static(_) => "static",
        }
    }

    /// The endpoints known now, with their weights.
    pub fn current(&self) -> Vec<(SocketAddr, u32)> {
        match self {
            Source::Static(addrs) => addrs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_source_lists_configured_addresses_and_weights() {
        let cfg: otlp_mesh_config::Config = otlp_mesh_config::parse_str(
            "clusters:\n  - name: a\n    discovery: { static: [127.0.0.1:1, { address: '[::1]:2', weight: 3 }] }\n",
            "t.yaml",
        )
        .unwrap();
        let src = Source::from_config("a", &cfg.clusters[0].discovery);
        assert_eq!(src.kind(), "static");
        assert_eq!(
            src.current(),
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1),
                ("[::1]:2".parse().unwrap(), 3)
            ]
        );
    }
}
