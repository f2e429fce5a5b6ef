//! The `telemetry:` section: the proxy's own spans, metrics and access logs, the OTLP receiver,
//! processors, exporters and the embedded store.

use crate::{ByteSize, Duration, Located};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything telemetry; absent means the proxy records Prometheus metrics only.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `service.name` of the proxy's own telemetry. Default `otlp-mesh`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Extra resource attributes of the proxy's own telemetry.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Spans for proxied requests.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// One OTLP log record per proxied request.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// RED metrics of proxied requests as OTLP metrics (they are always in Prometheus `/metrics`).
    #[serde(default)]
    pub metrics: OtlpMetricsConfig,
    /// OTLP receiver for applications' telemetry; absent means none.
    #[serde(default)]
    pub receiver: Option<Located<ReceiverConfig>>,
    /// Admission control: bytes of telemetry held in memory queues.
    #[serde(default)]
    pub memory_limit: MemoryLimitConfig,
    /// How exporters group items into export requests.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Processors applied, in order, before the store and exporters.
    #[serde(default)]
    pub processors: ProcessorsConfig,
    /// Embedded store of recent telemetry behind the `/api/*` query endpoints.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where telemetry goes.
    #[serde(default)]
    pub exporters: Vec<Located<ExporterConfig>>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            service_name: default_service_name(),
            resource: BTreeMap::new(),
            tracing: TracingConfig::default(),
            access_log: AccessLogConfig::default(),
            metrics: OtlpMetricsConfig::default(),
            receiver: None,
            memory_limit: MemoryLimitConfig::default(),
            batch: BatchConfig::default(),
            processors: ProcessorsConfig::default(),
            store: StoreConfig::default(),
            exporters: Vec::new(),
        }
    }
}

fn default_service_name() -> String {
    "otlp-mesh".to_string()
}

/// Spans for proxied requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Default `true` when a `telemetry:` section exists.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Share of root requests (no incoming sampled flag) that are traced, 0.0–1.0. Default 1.0.
    /// Requests with a parent follow the parent's sampled flag.
    #[serde(default = "one")]
    pub sampling_ratio: Located<f64>,
    /// Header formats written to upstream requests. Incoming W3C and B3 are always read.
    /// Default `[w3c]`.
    #[serde(default = "default_propagation")]
    pub propagation: Vec<Propagation>,
    /// A client span per upstream attempt, the parent of the upstream's own spans. `false`:
    /// the server span is their parent (Envoy's default, half the spans); retries stay events
    /// of the server span. Default `true`.
    #[serde(default = "yes")]
    pub client_spans: bool,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: true,
            sampling_ratio: one(),
            propagation: default_propagation(),
            client_spans: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> Located<f64> {
    Located::new(1.0)
}

fn default_propagation() -> Vec<Propagation> {
    vec![Propagation::W3c]
}

/// A trace-context header format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// `traceparent` / `tracestate`.
    W3c,
    /// `b3: {trace}-{span}-{sampled}`.
    B3,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`.
    B3Multi,
}

/// One log record per request.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Send access logs through the pipeline as OTLP log records. Default `false`.
    #[serde(default)]
    pub otlp: bool,
    /// Also print each as a JSON line on stdout. Default `false`.
    #[serde(default)]
    pub stdout: bool,
}

/// RED metrics as OTLP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpMetricsConfig {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often cumulative metrics are taken. Default `10s`.
    #[serde(default = "default_metrics_interval")]
    pub interval: Located<Duration>,
}

impl Default for OtlpMetricsConfig {
    fn default() -> Self {
        OtlpMetricsConfig {
            enabled: true,
            interval: default_metrics_interval(),
        }
    }
}

fn default_metrics_interval() -> Located<Duration> {
    Located::new(Duration::from_secs(10))
}

/// OTLP receiver.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address, e.g. `127.0.0.1:4317`; absent means none.
    #[serde(default)]
    pub grpc: Option<Located<String>>,
    /// OTLP/HTTP listen address, e.g. `127.0.0.1:4318`; absent means none.
    #[serde(default)]
    pub http: Option<Located<String>>,
    /// Largest request body as sent (compressed). Default `4MiB`.
    #[serde(default = "default_max_message")]
    pub max_message_size: Located<ByteSize>,
    /// Largest request body after decompression. Default `16MiB`.
    #[serde(default = "default_max_decompressed")]
    pub max_decompressed_size: Located<ByteSize>,
    /// Request-body bytes read at once, over all connections; further bodies wait unread (flow
    /// control holds their senders) up to 5 s, then get a retryable refusal. Default `4MiB`.
    #[serde(default = "default_max_receiving")]
    pub max_receiving_bytes: Located<ByteSize>,
}

fn default_max_receiving() -> Located<ByteSize> {
    Located::new(ByteSize(4 << 20))
}

fn default_max_message() -> Located<ByteSize> {
    Located::new(ByteSize(4 << 20))
}

fn default_max_decompressed() -> Located<ByteSize> {
    Located::new(ByteSize(16 << 20))
}

/// Bytes of telemetry held in memory (exporter queues and receivers' in-flight requests).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimitConfig {
    /// Above this, receivers refuse new data with a retryable status (gRPC UNAVAILABLE, HTTP 503 +
    /// `Retry-After`). Default `64MiB`.
    #[serde(default = "default_soft")]
    pub soft: Located<ByteSize>,
    /// Above this, the proxy's own telemetry is dropped (counted) too. Default `96MiB`.
    #[serde(default = "default_hard")]
    pub hard: Located<ByteSize>,
}

impl Default for MemoryLimitConfig {
    fn default() -> Self {
        MemoryLimitConfig {
            soft: default_soft(),
            hard: default_hard(),
        }
    }
}

fn default_soft() -> Located<ByteSize> {
    Located::new(ByteSize(64 << 20))
}

fn default_hard() -> Located<ByteSize> {
    Located::new(ByteSize(96 << 20))
}

/// Grouping of queued items into export requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Send when this many items (spans, data points, log records) are waiting. Default 8192.
    #[serde(default = "default_batch_size")]
    pub size: Located<u64>,
    /// Send at least this often when anything waits. Default `200ms`.
    #[serde(default = "default_batch_timeout")]
    pub timeout: Located<Duration>,
    /// Largest export request (encoded, before compression). Default `4MiB`.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: Located<ByteSize>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            size: default_batch_size(),
            timeout: default_batch_timeout(),
            max_bytes: default_batch_bytes(),
        }
    }
}

fn default_batch_size() -> Located<u64> {
    Located::new(8192)
}

fn default_batch_timeout() -> Located<Duration> {
    Located::new(Duration::from_millis(200))
}

fn default_batch_bytes() -> Located<ByteSize> {
    Located::new(ByteSize(4 << 20))
}

/// Processors; each is off unless configured.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorsConfig {
    /// Resource attributes to set (insert or overwrite) on everything.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Keep this share of traces, decided on the trace id (consistent across services).
    #[serde(default)]
    pub probabilistic_sampling: Option<Located<f64>>,
    /// Delete, hash or mask attribute values by key or value pattern.
    #[serde(default)]
    pub redaction: Vec<Located<RedactionRule>>,
    /// Keep or drop whole traces after seeing (most of) their spans; absent means none. Runs after
    /// the other processors. Spans it holds are in memory only: a `kill -9` can lose up to
    /// `decision_wait` of traces (as with the OpenTelemetry Collector's tail sampler).
    #[serde(default)]
    pub tail_sampling: Option<Located<TailSamplingConfig>>,
}

/// Tail sampling: spans are held per trace id for `decision_wait` from the first span's arrival,
/// then the whole trace is kept or dropped. A trace is kept when `keep_errors` is on and a span
/// has status ERROR (or `http.response.status_code` ≥ 500), when its duration (latest end −
/// earliest start) is at least `keep_latency_above`, or else when `rate_limit` has room for its
/// spans. Without `rate_limit`, every trace is kept (the policies then only decide nothing is
/// dropped; set `rate_limit` to drop the rest). Spans arriving after their trace was decided
/// follow that decision.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailSamplingConfig {
    /// How long a trace's spans are held, from its first span's arrival. Default `5s`.
    #[serde(default = "default_decision_wait")]
    pub decision_wait: Located<Duration>,
    /// Traces held at once; past it the oldest are decided early on what has arrived.
    /// Default 50000.
    #[serde(default = "default_max_traces")]
    pub max_traces: Located<u64>,
    /// Bytes of spans held (encoded size); past it the oldest traces are decided early.
    /// Also counted against `telemetry.memory_limit`. Default `32MiB`.
    #[serde(default = "default_tail_bytes")]
    pub max_bytes: Located<ByteSize>,
    /// Keep traces with an error span. Default `true`.
    #[serde(default = "yes")]
    pub keep_errors: bool,
    /// Keep traces lasting at least this long; absent means no latency policy.
    #[serde(default)]
    pub keep_latency_above: Option<Located<Duration>>,
    /// Spans per second kept of traces no other policy keeps; absent means keep them all.
    #[serde(default)]
    pub rate_limit: Option<Located<TailRateLimit>>,
    /// Decided trace ids remembered so late spans follow their trace's decision. Default 100000.
    #[serde(default = "default_decision_cache")]
    pub decision_cache: Located<u64>,
}

impl Default for TailSamplingConfig {
    fn default() -> Self {
        TailSamplingConfig {
            decision_wait: default_decision_wait(),
            max_traces: default_max_traces(),
            max_bytes: default_tail_bytes(),
            keep_errors: true,
            keep_latency_above: None,
            rate_limit: None,
            decision_cache: default_decision_cache(),
        }
    }
}

fn default_decision_wait() -> Located<Duration> {
    Located::new(Duration::from_secs(5))
}

fn default_max_traces() -> Located<u64> {
    Located::new(50_000)
}

fn default_tail_bytes() -> Located<ByteSize> {
    Located::new(ByteSize(32 << 20))
}

fn default_decision_cache() -> Located<u64> {
    Located::new(100_000)
}

/// A token bucket on spans: refills at `spans_per_second`, holds at most one second's worth.
/// A trace is kept when the bucket has tokens for all of its spans (so, as in the Collector's
/// `rate_limiting` policy, a trace with more spans than `spans_per_second` is never kept by it).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailRateLimit {
    /// Spans per second. Required, above 0.
    pub spans_per_second: Located<u64>,
}

/// One redaction rule: attributes whose key matches `key` (or whose string value matches `value`)
/// get `action` applied.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedactionRule {
    /// Regex on the attribute key.
    #[serde(default)]
    pub key: Option<Located<String>>,
    /// Regex on string attribute values (and log bodies).
    #[serde(default)]
    pub value: Option<Located<String>>,
    /// What to do with a match.
    pub action: RedactionAction,
}

/// What redaction does to a matching attribute.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedactionAction {
    /// Remove the attribute.
    Delete,
    /// Replace the value with the hex SHA-256 of it.
    Hash,
    /// Replace the matching part with `****`.
    Mask,
}

/// Embedded store of recent telemetry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Memory bound; the oldest data is evicted past it. Default `16MiB`.
    #[serde(default = "default_store_bytes")]
    pub max_bytes: Located<ByteSize>,
    /// CPU bound: items (spans, data points, log records) indexed per second; whole batches
    /// past it skip the store (exporters still get them), so under heavy load the store holds
    /// a sample. `0` = no bound. Default 2000.
    #[serde(default = "default_store_rate")]
    pub max_items_per_second: Located<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            max_bytes: default_store_bytes(),
            max_items_per_second: default_store_rate(),
        }
    }
}

fn default_store_rate() -> Located<u64> {
    Located::new(2000)
}

fn default_store_bytes() -> Located<ByteSize> {
    Located::new(ByteSize(16 << 20))
}

/// One exporter: exactly one of `otlp_grpc` / `otlp_http` / `loadbalancing`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// Name in logs and metrics (and the queue directory). Default `exporter-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// OTLP/gRPC: `endpoint` is `http(s)://host:port`.
    #[serde(default)]
    pub otlp_grpc: Option<Located<OtlpEndpointConfig>>,
    /// OTLP/HTTP protobuf: `endpoint` is the base URL; `/v1/traces` etc. are appended.
    #[serde(default)]
    pub otlp_http: Option<Located<OtlpEndpointConfig>>,
    /// Several backends, with every span of a trace sent to the same one (e.g. to tail-sampling
    /// collectors), from a static list or a discovery source. Each backend gets its own queue and
    /// retries, named after its address: queue directory `<dir>/<name>-<key>`, metrics as
    /// exporter `<name>-<key>`, where `<key>` is the backend URL without its scheme and every
    /// character other than letters, digits and `-` replaced by `_`
    /// (`http://10.0.0.7:4317` → `lb-10_0_0_7_4317`).
    #[serde(default)]
    pub loadbalancing: Option<Located<LoadBalancingConfig>>,
    /// Retry of failed exports (per the OTLP specification's retryable statuses).
    #[serde(default)]
    pub retry: ExportRetryConfig,
    /// The sending queue.
    #[serde(default)]
    pub queue: ExportQueueConfig,
}

/// Where and how to send.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpEndpointConfig {
    /// Backend URL, `http://` or `https://`.
    pub endpoint: Located<String>,
    /// Default `gzip`.
    #[serde(default)]
    pub compression: Compression,
    /// Extra request headers (e.g. auth tokens); masked in `/config`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per export request. Default `10s`.
    #[serde(default = "default_export_timeout")]
    pub timeout: Located<Duration>,
    /// PEM file of CA certificates trusted for `https://` (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<Located<String>>,
}

/// Trace-id load balancing over several backends: a static list (`backends`) or the addresses a
/// discovery source yields (`resolver`).
///
/// Spans go to the backend chosen by rendezvous hashing of their trace id over the backend URLs,
/// so the choice does not depend on the list's order and adding or removing one backend moves
/// only the traces that belong to it. Log records with a trace id follow their trace; other log
/// records and metrics are spread round-robin, one backend per batch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancingConfig {
    /// Backend URLs, `http://` or `https://` (base URLs for `otlp_http`). Set this or `resolver`.
    #[serde(default)]
    pub backends: Vec<Located<String>>,
    /// A discovery source, written as a cluster's `discovery:` (static, dns, file, etcd, consul
    /// or kubernetes). Each discovered `ip:port` becomes the backend `<scheme>://ip:port`; the
    /// backends follow the source's changes. Set this or `backends`.
    #[serde(default)]
    pub resolver: Option<Located<crate::Discovery>>,
    /// Scheme of discovered backends (with `resolver`): `http` (default) or `https`. With
    /// `https` the backend's certificate must be valid for its IP address.
    #[serde(default)]
    pub scheme: Option<Located<BackendScheme>>,
    /// Port of discovered backends (with `resolver`), replacing the discovered one; absent keeps
    /// the discovered port.
    #[serde(default)]
    pub port: Option<Located<u16>>,
    /// How long a backend that left the resolved set may keep sending what it holds; what is
    /// still queued or unanswered then goes to the current backends. Default `10s`.
    #[serde(default = "default_lb_drain")]
    pub drain_timeout: Located<Duration>,
    /// How every backend is spoken to. Default `otlp_grpc`.
    #[serde(default)]
    pub protocol: ExportProtocol,
    /// Default `gzip`.
    #[serde(default)]
    pub compression: Compression,
    /// Extra request headers sent to every backend; masked in `/config`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per export request. Default `10s`.
    #[serde(default = "default_export_timeout")]
    pub timeout: Located<Duration>,
    /// PEM file of CA certificates trusted for `https://` (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<Located<String>>,
}

/// Scheme of the URLs of discovered load-balancing backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendScheme {
    /// `http://ip:port` (h2c for gRPC).
    #[default]
    Http,
    /// `https://ip:port`.
    Https,
}

fn default_lb_drain() -> Located<Duration> {
    Located::new(Duration::from_secs(10))
}

impl LoadBalancingConfig {
    /// The backend URL of a discovered address: `<scheme>://ip:port`, with `port` if set.
    pub fn discovered_url(&self, addr: std::net::SocketAddr) -> String {
        let mut addr = addr;
        if let Some(p) = &self.port {
            addr.set_port(p.value);
        }
        let scheme = match self.scheme.as_ref().map(|s| s.value) {
            Some(BackendScheme::Https) => "https",
            _ => "http",
        };
        format!("{scheme}://{addr}")
    }

    /// The single-backend endpoint config of `backend`, with this config's settings.
    pub fn endpoint(&self, backend: &Located<String>) -> OtlpEndpointConfig {
        OtlpEndpointConfig {
            endpoint: backend.clone(),
            compression: self.compression,
            headers: self.headers.clone(),
            timeout: self.timeout.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// An OTLP transport.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportProtocol {
    /// OTLP/gRPC.
    #[default]
    OtlpGrpc,
    /// OTLP/HTTP protobuf.
    OtlpHttp,
}

fn default_export_timeout() -> Located<Duration> {
    Located::new(Duration::from_secs(10))
}

/// Body compression.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

/// Exponential backoff with jitter between attempts of one export request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportRetryConfig {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// First wait. Default `1s`.
    #[serde(default = "default_retry_initial")]
    pub initial_interval: Located<Duration>,
    /// Longest wait. Default `30s`.
    #[serde(default = "default_retry_max")]
    pub max_interval: Located<Duration>,
    /// Give up on a request after this long (with the persistent queue, never: it stays queued).
    /// Default `5m`.
    #[serde(default = "default_retry_elapsed")]
    pub max_elapsed_time: Located<Duration>,
}

impl Default for ExportRetryConfig {
    fn default() -> Self {
        ExportRetryConfig {
            enabled: true,
            initial_interval: default_retry_initial(),
            max_interval: default_retry_max(),
            max_elapsed_time: default_retry_elapsed(),
        }
    }
}

fn default_retry_initial() -> Located<Duration> {
    Located::new(Duration::from_secs(1))
}

fn default_retry_max() -> Located<Duration> {
    Located::new(Duration::from_secs(30))
}

fn default_retry_elapsed() -> Located<Duration> {
    Located::new(Duration::from_secs(300))
}

/// The exporter's queue: in memory, or a write-ahead log on disk when `dir` is set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportQueueConfig {
    /// Bound on queued bytes; when full, receivers answer with a retryable status. Default `64MiB`
    /// in memory, `1GiB` on disk.
    #[serde(default)]
    pub max_bytes: Option<Located<ByteSize>>,
    /// Directory of the persistent queue; nothing acknowledged is lost across restarts.
    #[serde(default)]
    pub dir: Option<Located<String>>,
    /// When appends reach the disk. Default `always` (before the receiver answers).
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

impl Default for ExportQueueConfig {
    fn default() -> Self {
        ExportQueueConfig {
            max_bytes: None,
            dir: None,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// When the persistent queue calls fsync.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every append, before the sender is answered.
    #[default]
    Always,
    /// At most every 100 ms (a power loss may lose the last interval; `kill -9` loses nothing).
    Batched,
    /// Leave it to the OS (`kill -9` loses nothing; a power loss may).
    Never,
}
