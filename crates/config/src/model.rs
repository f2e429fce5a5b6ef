//! The config file's shape. Every struct rejects unknown fields; defaults are documented per field.

use crate::resilience::{BreakerPolicy, RateLimitPolicy, RetryPolicy};
use crate::{ByteSize, Duration, Located, ValueMatch};
pub use otlp_mesh_chaos::{
    AbortFault, DelayFault, FaultMatch, FaultRule, FaultScope, HeaderFaultLimits, ResetFault,
    ThrottleFault,
};
use serde::{Deserialize, Deserializer, Serialize, de};
use std::collections::BTreeMap;
use std::fmt;

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub listeners: Vec<Located<ListenerConfig>>,
    #[serde(default)]
    pub clusters: Vec<Located<ClusterConfig>>,
    #[serde(default)]
    pub chaos: ChaosConfig,
    /// The proxy's own spans, metrics and logs, and the OTLP pipeline; absent means none.
    #[serde(default)]
    pub telemetry: Option<Located<crate::telemetry::TelemetryConfig>>,
}

/// Fault-injection rules that are not tied to one route (see the `chaos` crate for the rule shape).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    #[serde(default)]
    pub rules: Vec<Located<FaultRule>>,
}

impl Config {
    /// Every fault rule of the file: `chaos.rules` and each route's `fault` (named `route:<listener>/<route>`).
    pub fn fault_rules(&self) -> Vec<FaultRule> {
        let mut rules: Vec<FaultRule> = self.chaos.rules.iter().map(|r| r.value.clone()).collect();
        for l in &self.listeners {
            for (i, r) in l.routes.iter().enumerate() {
                if let Some(f) = &r.fault {
                    let route = r.route_name(&l.name.value, i);
                    rules.push(f.value.to_rule(&l.name.value, &route));
                }
            }
        }
        rules
    }
}
/// Where the admin HTTP server listens.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9901`.
    #[serde(default = "default_admin_bind")]
    pub bind: Located<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: default_admin_bind(),
        }
    }
}

fn default_admin_bind() -> Located<String> {
    Located::new("127.0.0.1:9901".to_string())
}

/// Process-wide settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How long in-flight requests may take to finish on shutdown or listener removal. Default `30s`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// How often the config file is checked for changes. Default `1s`; `0` turns polling off (SIGHUP still reloads).
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            drain_timeout: default_drain_timeout(),
            reload_interval: default_reload_interval(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(1)
}

/// A socket that accepts HTTP/1.1 and h2c (auto-detected) and routes requests to clusters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Located<String>,
    /// `ip:port` to bind.
    pub bind: Located<String>,
    #[serde(default)]
    pub limits: Limits,
    /// When set, `via: 1.1 <value>` is appended to requests and responses.
    #[serde(default)]
    pub via: Option<String>,
    /// When set, the `server` response header is replaced with this value.
    #[serde(default)]
    pub server_header: Option<String>,
    /// Append the client address to `x-forwarded-for` and set `x-forwarded-proto`. Default true.
    #[serde(default = "yes")]
    pub x_forwarded_for: bool,
    /// Append an RFC 7239 `forwarded` element. Default false.
    #[serde(default)]
    pub forwarded: bool,
    /// Generate `x-request-id` (UUID v4) when the request has none. Default true.
    #[serde(default = "yes")]
    pub request_id: bool,
    /// Honour `x-fault-*` request headers with these caps. Default: off (clients cannot inject faults).
    #[serde(default)]
    pub header_faults: Option<HeaderFaultLimits>,
    /// Routes in order; the first that matches wins.
    #[serde(default)]
    pub routes: Vec<Located<RouteConfig>>,
}

fn yes() -> bool {
    true
}

/// Per-listener request limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line and headers) accepted; larger gets 431. Default `64KiB`.
    #[serde(default = "default_max_headers")]
    pub max_request_headers: ByteSize,
    /// Largest request body accepted; larger gets 413. Default: no limit (bodies stream through).
    #[serde(default)]
    pub max_request_body: Option<ByteSize>,
    /// Time a client has to send the complete request head (slowloris guard). Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_headers: default_max_headers(),
            max_request_body: None,
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

fn default_max_headers() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A route: conditions on the request and where matching requests go.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name shown in metrics and `/routes`. Default `<listener>/<index>`.
    #[serde(default)]
    pub name: Option<Located<String>>,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Send every matching request to this cluster (shorthand for a one-entry `split`).
    #[serde(default)]
    pub cluster: Option<Located<String>>,
    /// Weighted split across clusters.
    #[serde(default)]
    pub split: Option<Located<Vec<WeightedCluster>>>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub request_headers: Option<HeaderOps>,
    #[serde(default)]
    pub response_headers: Option<HeaderOps>,
    /// Whole-request deadline until the response head arrives; 504 after. Default `15s`; `0` disables.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Faults injected into this route's requests.
    #[serde(default)]
    pub fault: Option<Located<RouteFault>>,
    /// Retry policy (attempts, conditions, per-try timeout, backoff, budget).
    #[serde(default)]
    pub retry: Option<Located<RetryPolicy>>,
    /// Local rate limit; over it clients get 429.
    #[serde(default)]
    pub rate_limit: Option<Located<RateLimitPolicy>>,
    /// Which circuit-breaker thresholds of the cluster apply: `default` or `high`.
    #[serde(default)]
    pub priority: RoutePriority,
}

/// Routing priority (selects the cluster's circuit-breaker thresholds, as in Envoy).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoutePriority {
    #[default]
    Default,
    High,
}

impl RouteConfig {
    /// The route's name: its `name`, or `<listener>/<index>`.
    pub fn route_name(&self, listener: &str, index: usize) -> String {
        self.name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| format!("{listener}/{index}"))
    }
}

/// A route's faults: a fault rule without name and match (the route is the match).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteFault {
    #[serde(default)]
    pub scope: FaultScope,
    #[serde(default)]
    pub delay: Option<DelayFault>,
    #[serde(default)]
    pub abort: Option<AbortFault>,
    #[serde(default)]
    pub throttle: Option<ThrottleFault>,
    #[serde(default)]
    pub reset: Option<ResetFault>,
    #[serde(default)]
    pub max_active: Option<u32>,
}

impl RouteFault {
    /// The equivalent rule, matching only this route of this listener.
    pub fn to_rule(&self, listener: &str, route: &str) -> FaultRule {
        FaultRule {
            name: format!("route:{listener}/{route}"),
            matcher: FaultMatch {
                listener: Some(listener.to_string()),
                route: Some(route.to_string()),
                ..FaultMatch::default()
            },
            scope: self.scope,
            delay: self.delay.clone(),
            abort: self.abort.clone(),
            throttle: self.throttle.clone(),
            reset: self.reset.clone(),
            max_active: self.max_active,
            ..FaultRule::default()
        }
    }
}

/// Request conditions; all given conditions must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path_exact: Option<Located<String>>,
    #[serde(default)]
    pub path_prefix: Option<Located<String>>,
    #[serde(default)]
    pub path_regex: Option<Located<String>>,
    /// Any of these methods (upper case).
    #[serde(default)]
    pub methods: Option<Vec<Located<String>>>,
    /// Header name → condition (a string for exact match, or `{regex: ...}` / `{present: bool}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Located<ValueMatch>>,
    /// Query parameter name → condition, as for headers.
    #[serde(default)]
    pub query: BTreeMap<String, Located<ValueMatch>>,
}

/// One cluster in a weighted split.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: Located<String>,
    /// Relative weight. Default 1.
    #[serde(default = "default_weight")]
    pub weight: Located<u32>,
}

fn default_weight() -> Located<u32> {
    Located::new(1)
}

/// Rewrites applied before the request goes upstream.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `path_prefix` (the route must match on `path_prefix`).
    #[serde(default)]
    pub path_prefix: Option<Located<String>>,
    /// Replaces the `host` header (and `:authority`).
    #[serde(default)]
    pub host: Option<Located<String>>,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A named group of upstream endpoints.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: Located<String>,
    pub discovery: Discovery,
    /// Protocol spoken to the endpoints. Default `http1`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Load-balancing algorithm. Default `round_robin`.
    #[serde(default)]
    pub balancer: Located<BalancerKind>,
    /// Request key for `ring_hash` and `maglev`: `client_ip`, `header:<name>` or `cookie:<name>`.
    #[serde(default)]
    pub hash_key: Option<Located<String>>,
    /// Ramp a new or recovered endpoint's weight up over this window. Default `0` (off).
    #[serde(default)]
    pub slow_start: Duration,
    /// Latency estimate of `p2c_ewma` (and `/clusters`): decay time and the RTT assumed before samples.
    #[serde(default)]
    pub ewma: EwmaConfig,
    /// Ring size of `ring_hash` (at least this many points). Default 1024.
    #[serde(default = "default_ring_size")]
    pub min_ring_size: usize,
    /// Settings of `balancer: adaptive`.
    #[serde(default)]
    pub adaptive: Option<Located<AdaptiveBalancerConfig>>,
    /// Lookup table size of `maglev` (a prime). Default 65537.
    #[serde(default = "default_maglev_size")]
    pub maglev_table_size: u64,
    /// Concurrency thresholds and the open/half-open breaker. Default: off.
    #[serde(default)]
    pub circuit_breaker: Option<Located<BreakerPolicy>>,
    /// Active health check (HTTP, gRPC or TCP). Default: off.
    #[serde(default)]
    pub health_check: Option<Located<crate::health::HealthCheckPolicy>>,
    /// Passive outlier detection and the panic threshold. Default: off.
    #[serde(default)]
    pub outlier_detection: Option<Located<crate::health::OutlierPolicy>>,
    /// Default `2s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub pool: PoolConfig,
}

fn default_ring_size() -> usize {
    1024
}
fn default_maglev_size() -> u64 {
    65_537
}

/// Peak-EWMA latency estimate settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EwmaConfig {
    /// Default `10s`.
    #[serde(default = "default_decay")]
    pub decay: Duration,
    /// Default `30ms`.
    #[serde(default = "default_rtt")]
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig {
            decay: default_decay(),
            default_rtt: default_rtt(),
        }
    }
}

fn default_decay() -> Duration {
    Duration::from_secs(10)
}
fn default_rtt() -> Duration {
    Duration::from_millis(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Where a cluster's endpoints come from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Fixed endpoints: `ip:port`, or `{ address: ip:port, weight: N }`.
    #[serde(rename = "static", default)]
    pub static_endpoints: Option<Vec<Located<StaticEndpoint>>>,
    /// DNS names re-resolved on their TTL (A/AAAA or SRV).
    #[serde(default)]
    pub dns: Option<Located<DnsDiscovery>>,
    /// A watched YAML/JSON file listing endpoints.
    #[serde(default)]
    pub file: Option<Located<FileDiscovery>>,
    /// Endpoint JSON under an etcd v3 key prefix (watched).
    #[serde(default)]
    pub etcd: Option<Located<EtcdDiscovery>>,
    /// Consul health API with blocking queries.
    #[serde(default)]
    pub consul: Option<Located<ConsulDiscovery>>,
    /// Kubernetes EndpointSlices of a service (watched).
    #[serde(default)]
    pub kubernetes: Option<Located<KubernetesDiscovery>>,
}

/// DNS record type a `dns` source resolves.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DnsRecordType {
    /// A and AAAA records of `host:port`.
    #[default]
    A,
    /// SRV records of `_service._proto.name` (targets, ports and weights).
    Srv,
}

/// `discovery.dns`: a name re-resolved on its TTL clamped to `[min_ttl, max_ttl]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// `host:port` for `type: a`; the SRV name for `type: srv`.
    pub name: String,
    /// Record type. Default `a`.
    #[serde(rename = "type", default)]
    pub record_type: DnsRecordType,
    /// Shortest re-resolve interval. Default 5s.
    #[serde(default = "default_dns_min_ttl")]
    pub min_ttl: Duration,
    /// Longest re-resolve interval. Default 5m.
    #[serde(default = "default_dns_max_ttl")]
    pub max_ttl: Duration,
}

fn default_dns_min_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_dns_max_ttl() -> Duration {
    Duration::from_secs(300)
}

/// `discovery.file`: a YAML or JSON list of `{address, weight, metadata}`, polled for changes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// Path of the endpoints file.
    pub path: String,
    /// How often the file is checked. Default 1s.
    #[serde(default = "default_file_interval")]
    pub interval: Duration,
}

fn default_file_interval() -> Duration {
    Duration::from_secs(1)
}

/// `discovery.etcd`: endpoint JSON values under a key prefix, via etcd's v3 JSON gateway.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    /// Client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/services/orders/`.
    pub prefix: String,
}

/// `discovery.consul`: `/v1/health/service/NAME` blocking queries.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsulDiscovery {
    /// Agent URL. Default `http://127.0.0.1:8500`.
    #[serde(default = "default_consul_address")]
    pub address: String,
    /// Service name.
    pub service: String,
    /// Only instances with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Datacenter (default: the agent's).
    #[serde(default)]
    pub datacenter: Option<String>,
    /// ACL token sent as `X-Consul-Token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Only instances whose checks pass. Default true.
    #[serde(default = "default_true_discovery")]
    pub passing: bool,
    /// Longest blocking-query wait. Default 60s.
    #[serde(default = "default_consul_wait")]
    pub wait: Duration,
}

fn default_consul_address() -> String {
    "http://127.0.0.1:8500".to_string()
}
fn default_true_discovery() -> bool {
    true
}
fn default_consul_wait() -> Duration {
    Duration::from_secs(60)
}

/// `discovery.kubernetes`: the EndpointSlices of a service, listed then watched.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Service name.
    pub service: String,
    /// Namespace. Default `default`.
    #[serde(default = "default_k8s_namespace")]
    pub namespace: String,
    /// Endpoint port: a port name or number (default: the slice's only port).
    #[serde(default)]
    pub port: Option<PortRef>,
    /// API server URL (default: in-cluster `KUBERNETES_SERVICE_HOST`/`_PORT`, else the
    /// kubeconfig's current context).
    #[serde(default)]
    pub api_server: Option<String>,
    /// Kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`); used when no
    /// `api_server` is set and not running in a cluster.
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// Bearer token file (default: the in-cluster service-account token, if present).
    #[serde(default)]
    pub token_file: Option<String>,
    /// CA bundle for `https` API servers.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_k8s_namespace() -> String {
    "default".to_string()
}

/// A port given by name (`http`) or number (`8080`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A port name.
    Name(String),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRef, E> {
                Ok(match v.parse::<u16>() {
                    Ok(n) => PortRef::Number(n),
                    Err(_) => PortRef::Name(v.to_string()),
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRef, E> {
                u16::try_from(v)
                    .map(PortRef::Number)
                    .map_err(|_| E::custom("port must be 1..=65535"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRef, E> {
                u16::try_from(v)
                    .map(PortRef::Number)
                    .map_err(|_| E::custom("port must be 1..=65535"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One static endpoint and its weight (default 1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StaticEndpoint {
    pub address: String,
    pub weight: u32,
}

impl<'de> Deserialize<'de> for StaticEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = StaticEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`ip:port` or `{ address: ip:port, weight: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StaticEndpoint, E> {
                Ok(StaticEndpoint {
                    address: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StaticEndpoint, A::Error> {
                let (mut address, mut weight) = (None, 1);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(map.next_value::<String>()?),
                        "weight" => weight = map.next_value::<u32>()?,
                        other => {
                            return Err(de::Error::unknown_field(other, &["address", "weight"]));
                        }
                    }
                }
                let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
                Ok(StaticEndpoint { address, weight })
            }
        }
        d.deserialize_any(V)
    }
}

/// Upstream protocol.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); needed for gRPC.
    H2,
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    #[default]
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// Power of two random choices on in-flight requests (weighted).
    LeastRequest,
    /// Power of two choices on peak-EWMA latency × pending requests (linkerd).
    P2cEwma,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (ketama); needs `hash_key`.
    RingHash,
    /// Maglev consistent hashing; needs `hash_key`.
    Maglev,
    /// Measures latency and errors and switches among candidate algorithms with hysteresis.
    Adaptive,
}

/// Settings of `balancer: adaptive`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveBalancerConfig {
    /// Algorithms it chooses among; the first is where it starts. Default
    /// `[round_robin, least_request, p2c_ewma, weighted_round_robin]`.
    #[serde(default = "default_candidates")]
    pub candidates: Vec<Located<BalancerKind>>,
    /// Sliding window of latency and error measurements. Default `30s`.
    #[serde(default = "default_adaptive_window")]
    pub window: Located<Duration>,
    /// How often candidates are scored. Default `1s`.
    #[serde(default = "default_adaptive_interval")]
    pub evaluation_interval: Duration,
    /// Least time on one algorithm before switching again. Default `10s`.
    #[serde(default = "default_adaptive_dwell")]
    pub min_dwell: Duration,
    /// Required relative score improvement to switch (0.2 = 20 %). Default 0.2.
    #[serde(default = "default_adaptive_improvement")]
    pub min_improvement: Located<f64>,
    /// Least drop of the estimated p99 for a switch made for latency; a switch the lower error
    /// rate justifies on its own does not need it. Default `1ms`.
    #[serde(default = "default_adaptive_gain")]
    pub min_gain: Duration,
    /// Requests in the window before any switch. Default 100.
    #[serde(default = "default_adaptive_samples")]
    pub min_samples: u64,
}

impl Default for AdaptiveBalancerConfig {
    fn default() -> Self {
        AdaptiveBalancerConfig {
            candidates: default_candidates(),
            window: default_adaptive_window(),
            evaluation_interval: default_adaptive_interval(),
            min_dwell: default_adaptive_dwell(),
            min_improvement: default_adaptive_improvement(),
            min_gain: default_adaptive_gain(),
            min_samples: default_adaptive_samples(),
        }
    }
}

fn default_candidates() -> Vec<Located<BalancerKind>> {
    [
        BalancerKind::RoundRobin,
        BalancerKind::LeastRequest,
        BalancerKind::P2cEwma,
        BalancerKind::WeightedRoundRobin,
    ]
    .into_iter()
    .map(Located::new)
    .collect()
}
fn default_adaptive_window() -> Located<Duration> {
    Located::new(Duration::from_secs(30))
}
fn default_adaptive_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_adaptive_dwell() -> Duration {
    Duration::from_secs(10)
}
fn default_adaptive_improvement() -> Located<f64> {
    Located::new(0.2)
}
fn default_adaptive_gain() -> Duration {
    Duration::from_millis(1)
}
fn default_adaptive_samples() -> u64 {
    100
}

/// Upstream connection pool settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle connections are closed after this. Default `90s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint. Default 256.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: default_idle_timeout(),
            max_idle_per_endpoint: default_max_idle(),
        }
    }
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_max_idle() -> usize {
    256
}

/// The default route timeout when a route sets none.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
