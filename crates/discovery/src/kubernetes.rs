//! `kubernetes` source: the EndpointSlices of a service, listed then watched
//! (`watch=1&resourceVersion=…`; `410 Gone` → relist), over HTTP or HTTPS (rustls, `ca_file`).

use crate::Publisher;
use crate::http::{HttpClient, LineStream, b64_decode, read_body};
use http::Method;
use otlp_mesh_config::{KubernetesDiscovery, PortRef};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The API server ends each watch after this long; the source re-watches from the last version.
const WATCH_SECONDS: u64 = 290;
/// Most slices tracked for one service.
const MAX_SLICES: usize = 10_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Slice {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Deserialize, Default)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
}

/// Whether an endpoint takes traffic: not terminating, and ready (or serving when `ready` is
/// absent); unknown conditions count as ready, as the API recommends.
fn usable(c: &Conditions) -> bool {
    c.terminating != Some(true) && c.ready.or(c.serving).unwrap_or(true)
}

/// The endpoints of one slice for the configured port (`None`: the slice's only/first port).
fn slice_endpoints(slice: &Slice, port: Option<&PortRef>) -> Vec<SocketAddr> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let chosen = match port {
        Some(PortRef::Number(n)) => Some(*n),
        Some(PortRef::Name(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port),
        None => ports.first().and_then(|p| p.port),
    };
    let Some(port) = chosen else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| usable(&e.conditions))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Key material given inline (kubeconfig `*-data`) or as a file read on each use.
#[derive(Debug, Clone, PartialEq)]
enum Material {
    File(String),
    Inline(Vec<u8>),
}

impl Material {
    async fn load(&self) -> Result<Vec<u8>, String> {
        match self {
            Material::Inline(b) => Ok(b.clone()),
            Material::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{path}: {e}")),
        }
    }
    fn describe(&self) -> String {
        match self {
            Material::File(p) => p.clone(),
            Material::Inline(_) => "(inline data)".into(),
        }
    }
}

/// Where the API server is and how to trust and authenticate to it.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    base: String,
    ca: Option<Material>,
    token: Option<Material>,
}

#[derive(Deserialize)]
struct KubeConfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<KubeNamedCluster>,
    #[serde(default)]
    contexts: Vec<KubeNamedContext>,
    #[serde(default)]
    users: Vec<KubeNamedUser>,
}

#[derive(Deserialize)]
struct KubeNamedCluster {
    name: String,
    cluster: KubeCluster,
}

#[derive(Deserialize)]
struct KubeCluster {
    server: String,
    #[serde(rename = "certificate-authority", default)]
    ca_file: Option<String>,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Deserialize)]
struct KubeNamedContext {
    name: String,
    context: KubeContext,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
struct KubeNamedUser {
    name: String,
    user: KubeUser,
}

#[derive(Deserialize, Default)]
struct KubeUser {
    #[serde(default)]
    token: Option<String>,
    #[serde(rename = "tokenFile", default)]
    token_file: Option<String>,
    #[serde(rename = "client-certificate", default)]
    client_cert: Option<String>,
    #[serde(rename = "client-certificate-data", default)]
    client_cert_data: Option<String>,
    #[serde(default)]
    exec: Option<serde_json::Value>,
}

/// The current context of a kubeconfig: server, CA and bearer token (relative paths resolve
/// against `dir`). Client-certificate and exec auth are refused with a clear error.
fn parse_kubeconfig(text: &str, dir: &std::path::Path) -> Result<Target, String> {
    let kc: KubeConfig =
        serde_saphyr::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == kc.current_context)
        .ok_or_else(|| format!("current-context `{}` not found", kc.current_context))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.context.cluster)
        .ok_or_else(|| format!("cluster `{}` not found", ctx.context.cluster))?;
    let user = kc
        .users
        .iter()
        .find(|u| u.name == ctx.context.user)
        .map(|u| &u.user);
    let path = |p: &str| dir.join(p).display().to_string();
    let c = &cluster.cluster;
    if c.insecure {
        return Err(
            "insecure-skip-tls-verify is not supported: give a certificate-authority".into(),
        );
    }
    let ca = match (&c.ca_data, &c.ca_file) {
        (Some(data), _) => Some(Material::Inline(
            b64_decode(data.trim()).ok_or("certificate-authority-data is not base64")?,
        )),
        (None, Some(f)) => Some(Material::File(path(f))),
        (None, None) => None,
    };
    let empty = KubeUser::default();
    let u = user.unwrap_or(&empty);
    let token = match (&u.token, &u.token_file) {
        (Some(t), _) => Some(Material::Inline(t.trim().as_bytes().to_vec())),
        (None, Some(f)) => Some(Material::File(path(f))),
        (None, None) if u.client_cert.is_some() || u.client_cert_data.is_some() => {
            return Err("kubeconfig client-certificate auth is not supported: use a token".into());
        }
        (None, None) if u.exec.is_some() => {
            return Err("kubeconfig exec auth is not supported: use a token".into());
        }
        (None, None) => None,
    };
    Ok(Target {
        base: c.server.trim_end_matches('/').to_string(),
        ca,
        token,
    })
}

/// Resolves the API server: `api_server`, else in-cluster env, else the kubeconfig.
/// `token_file` and `ca_file` override what the other sources give.
async fn target(
    cfg: &KubernetesDiscovery,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Target, String> {
    let file = |p: &Option<String>| p.clone().map(Material::File);
    let sa = |p: &str| {
        std::path::Path::new(p)
            .exists()
            .then(|| Material::File(p.to_string()))
    };
    let in_cluster = match (
        env("KUBERNETES_SERVICE_HOST"),
        env("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(h), Some(p)) if h.contains(':') => Some(format!("https://[{h}]:{p}")),
        (Some(h), Some(p)) => Some(format!("https://{h}:{p}")),
        _ => None,
    };
    let mut t = if let Some(api) = &cfg.api_server {
        Target {
            base: api.trim_end_matches('/').to_string(),
            ca: sa(SA_CA),
            token: sa(SA_TOKEN),
        }
    } else if let Some(base) = in_cluster {
        Target {
            base,
            ca: sa(SA_CA),
            token: sa(SA_TOKEN),
        }
    } else {
        let path = cfg
            .kubeconfig
            .clone()
            .or_else(|| {
                env("KUBECONFIG")
                    .and_then(|k| k.split(':').find(|s| !s.is_empty()).map(str::to_string))
            })
            .or_else(|| env("HOME").map(|h| format!("{h}/.kube/config")))
            .ok_or("no api_server configured, not running in a cluster, and no kubeconfig")?;
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            format!("no api_server configured, not in a cluster, kubeconfig {path}: {e}")
        })?;
        let dir = std::path::Path::new(&path)
            .parent()
            .unwrap_or(std::path::Path::new("."));
        parse_kubeconfig(&text, dir).map_err(|e| format!("kubeconfig {path}: {e}"))?
    };
    if cfg.ca_file.is_some() {
        t.ca = file(&cfg.ca_file);
    }
    if cfg.token_file.is_some() {
        t.token = file(&cfg.token_file);
    }
    Ok(t)
}

struct Api {
    client: HttpClient,
    base: String,
    token: Option<Material>,
}

impl Api {
    /// A client for the target: plain for `http://`; for `https://`, trusting only its CA.
    async fn new(t: Target) -> Result<Api, String> {
        let client = if t.base.starts_with("https://") {
            let ca = t.ca.as_ref().ok_or_else(|| {
                format!(
                    "{}: https needs `ca_file` (no in-cluster or kubeconfig CA found)",
                    t.base
                )
            })?;
            let pem = ca.load().await?;
            HttpClient::with_tls(Some(crate::http::tls_config(&pem, &ca.describe())?))
        } else {
            HttpClient::new()
        };
        Ok(Api {
            client,
            base: t.base,
            token: t.token,
        })
    }

    async fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut headers = vec![("accept", "application/json".to_string())];
        if let Some(token) = &self.token {
            let raw = token.load().await.map_err(|e| format!("token {e}"))?;
            let token = String::from_utf8_lossy(&raw);
            headers.push(("authorization", format!("Bearer {}", token.trim())));
        }
        self.client
            .send(Method::GET, url, &headers, None, timeout)
            .await
    }
}

pub(crate) async fn run(p: Publisher, cfg: KubernetesDiscovery) {
    let mut retry = crate::Retry::new();
    loop {
        let api = match target(&cfg, |k| std::env::var(k).ok()).await {
            Ok(t) => Api::new(t).await,
            Err(e) => Err(e),
        };
        let err = match api {
            Ok(api) => session(&p, &api, &cfg, &mut retry.backoff).await,
            Err(e) => e,
        };
        retry.failed(&p, &err).await;
    }
}

fn publish(p: &Publisher, slices: &BTreeMap<String, Vec<SocketAddr>>) {
    p.publish(slices.values().flatten().map(|a| (*a, 1)).collect());
}

/// List, then watch until an error; a `410 Gone` or a closed watch relists/rewatches in place.
async fn session(
    p: &Publisher,
    api: &Api,
    cfg: &KubernetesDiscovery,
    backoff: &mut crate::Backoff,
) -> String {
    let path = format!(
        "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
        api.base, cfg.namespace, cfg.service
    );
    'relist: loop {
        let resp = match api.get(&path, REQUEST_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let status = resp.status();
        let body = match read_body(resp.into_body(), REQUEST_TIMEOUT).await {
            Ok(b) => b,
            Err(e) => return e,
        };
        if !status.is_success() {
            return format!(
                "list: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            metadata: Meta,
            #[serde(default)]
            items: Vec<Slice>,
        }
        let list: List = match serde_json::from_slice(&body) {
            Ok(l) => l,
            Err(e) => return format!("list: bad EndpointSliceList JSON: {e}"),
        };
        let mut version = list.metadata.resource_version;
        let mut slices: BTreeMap<String, Vec<SocketAddr>> = list
            .items
            .iter()
            .take(MAX_SLICES)
            .map(|s| {
                (
                    s.metadata.name.clone(),
                    slice_endpoints(s, cfg.port.as_ref()),
                )
            })
            .collect();
        publish(p, &slices);
        backoff.reset();
        loop {
            let url = format!(
                "{path}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}"
            );
            let resp = match api.get(&url, REQUEST_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            if resp.status() == http::StatusCode::GONE {
                continue 'relist;
            }
            if !resp.status().is_success() {
                return format!("watch: HTTP {}", resp.status());
            }
            let mut lines = LineStream::new(resp.into_body());
            let idle = Duration::from_secs(WATCH_SECONDS + 30);
            loop {
                let line = match lines.next_line(idle).await {
                    Ok(Some(l)) => l,
                    Ok(None) => break, // the server ended the watch: re-watch from `version`
                    Err(e) => return format!("watch: {e}"),
                };
                let ev: Value = match serde_json::from_slice(&line) {
                    Ok(v) => v,
                    Err(e) => return format!("watch: bad event JSON: {e}"),
                };
                let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
                let object = ev.get("object").cloned().unwrap_or(Value::Null);
                if kind == "ERROR" {
                    if object.get("code").and_then(Value::as_u64) == Some(410) {
                        tracing::debug!("endpointslice watch expired (410); relisting");
                        continue 'relist;
                    }
                    return format!("watch error: {object}");
                }
                let slice: Slice = match serde_json::from_value(object) {
                    Ok(s) => s,
                    Err(e) => return format!("watch: bad EndpointSlice JSON: {e}"),
                };
                if !slice.metadata.resource_version.is_empty() {
                    version = slice.metadata.resource_version.clone();
                }
                match kind {
                    "ADDED" | "MODIFIED" => {
                        if slices.len() >= MAX_SLICES && !slices.contains_key(&slice.metadata.name)
                        {
                            return format!("more than {MAX_SLICES} EndpointSlices");
                        }
                        let eps = slice_endpoints(&slice, cfg.port.as_ref());
                        slices.insert(slice.metadata.name, eps);
                        publish(p, &slices);
                    }
                    "DELETED" => {
                        slices.remove(&slice.metadata.name);
                        publish(p, &slices);
                    }
                    _ => p.status.ok(), // BOOKMARK: version moved on
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::{Bytes, Frame};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    #[test]
    fn conditions_and_ports() {
        let s: Slice = serde_json::from_str(
            r#"{"metadata":{"name":"orders-abc","resourceVersion":"5"},"addressType":"IPv4",
                "endpoints":[
                  {"addresses":["10.0.0.1"],"conditions":{"ready":true,"serving":true,"terminating":false}},
                  {"addresses":["10.0.0.2"],"conditions":{"ready":false,"serving":true,"terminating":true}},
                  {"addresses":["10.0.0.3"],"conditions":{"ready":false,"serving":false,"terminating":false}},
                  {"addresses":["10.0.0.4"],"conditions":{}},
                  {"addresses":["10.0.0.5"],"conditions":{"serving":true}}
                ],
                "ports":[{"name":"metrics","port":9090,"protocol":"TCP"},{"name":"http","port":8080,"protocol":"TCP"}]}"#,
        )
        .unwrap();
        let ips = |port: Option<PortRef>| {
            slice_endpoints(&s, port.as_ref())
                .into_iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ips(Some(PortRef::Name("http".into()))),
            ["10.0.0.1:8080", "10.0.0.4:8080", "10.0.0.5:8080"]
        );
        assert_eq!(
            ips(None),
            ["10.0.0.1:9090", "10.0.0.4:9090", "10.0.0.5:9090"]
        );
        assert_eq!(ips(Some(PortRef::Number(7000))).len(), 3);
        assert!(ips(Some(PortRef::Name("grpc".into()))).is_empty());
    }

    fn slice(name: &str, rv: u64, ips: &[(&str, bool)]) -> Value {
        let eps: Vec<Value> = ips
            .iter()
            .map(|(ip, ready)| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": !ready}}))
            .collect();
        serde_json::json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                         "labels": {"kubernetes.io/service-name": "orders"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })
    }

    type Chunk = Result<Frame<Bytes>, Infallible>;

    /// A response body fed through a channel (a watch stream).
    struct ChanBody(mpsc::Receiver<Chunk>);

    impl hyper::body::Body for ChanBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
            self.0.poll_recv(cx)
        }
    }

    /// A fake API server: one list answer (mutable), and watch streams fed through channels.
    /// Requests seen: path and query, and the auth header.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    #[derive(Clone)]
    struct FakeApi {
        list: Arc<Mutex<Value>>,
        watches: Arc<Mutex<Vec<mpsc::Sender<Chunk>>>>,
        requests: Seen,
    }

    impl FakeApi {
        async fn handle(
            self,
            req: http::Request<hyper::body::Incoming>,
        ) -> Result<http::Response<http_body_util::Either<Full<Bytes>, ChanBody>>, Infallible>
        {
            let uri = req.uri().to_string();
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            self.requests.lock().unwrap().push((uri.clone(), auth));
            if uri.contains("watch=1") {
                let (tx, rx) = mpsc::channel(16);
                self.watches.lock().unwrap().push(tx);
                let body = ChanBody(rx);
                return Ok(http::Response::new(http_body_util::Either::Right(body)));
            }
            let list = self.list.lock().unwrap().to_string();
            Ok(http::Response::new(http_body_util::Either::Left(
                Full::new(Bytes::from(list)),
            )))
        }

        async fn send(&self, ev: Value) {
            let tx = self.watches.lock().unwrap().last().cloned().unwrap();
            tx.send(Ok(Frame::data(Bytes::from(format!("{ev}\n")))))
                .await
                .unwrap();
        }

        fn watch_count(&self) -> usize {
            self.watches.lock().unwrap().len()
        }
    }

    async fn start_fake(list: Value) -> (SocketAddr, FakeApi) {
        start_fake_with(list, None).await
    }

    fn test_tls_acceptor() -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(include_bytes!("../testdata/server.pem"))
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    async fn start_fake_with(
        list: Value,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (SocketAddr, FakeApi) {
        let fake = FakeApi {
            list: Arc::new(Mutex::new(list)),
            watches: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(Mutex::new(Vec::new())),
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
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| f.clone().handle(req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        (addr, fake)
    }

    async fn wait_for(rx: &mut tokio::sync::watch::Receiver<crate::Endpoints>, want: &[&str]) {
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let have: Vec<String> = rx
                    .borrow_and_update()
                    .iter()
                    .map(|(a, _)| a.to_string())
                    .collect();
                if have == want {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        assert!(r.is_ok(), "wanted {want:?}, have {:?}", **rx.borrow());
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn lists_watches_and_relists_on_410() {
        let list = serde_json::json!({
            "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": "100"},
            "items": [slice("orders-a", 90, &[("10.0.0.1", true), ("10.0.0.2", false)])]
        });
        let (addr, fake) = start_fake(list).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: {{ service: orders, port: http, api_server: 'http://{addr}', token_file: '{}' }}\n",
            token.display()
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        wait_for(&mut d.updates, &["10.0.0.1:8080"]).await;
        wait_until(|| fake.watch_count() == 1).await;

        fake.send(serde_json::json!({"type": "ADDED", "object": slice("orders-b", 101, &[("10.0.0.3", true)])})).await;
        wait_for(&mut d.updates, &["10.0.0.1:8080", "10.0.0.3:8080"]).await;
        fake.send(serde_json::json!({"type": "MODIFIED", "object": slice("orders-a", 102, &[("10.0.0.1", false), ("10.0.0.2", true)])})).await;
        wait_for(&mut d.updates, &["10.0.0.2:8080", "10.0.0.3:8080"]).await;
        fake.send(serde_json::json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "150"}}})).await;
        fake.send(serde_json::json!({"type": "DELETED", "object": slice("orders-b", 151, &[])}))
            .await;
        wait_for(&mut d.updates, &["10.0.0.2:8080"]).await;
        assert!(d.status.healthy());

        // The watch expires: 410 → relist (new list contents) → watch from the list's version.
        *fake.list.lock().unwrap() = serde_json::json!({
            "kind": "EndpointSliceList", "metadata": {"resourceVersion": "300"},
            "items": [slice("orders-c", 299, &[("10.0.0.9", true)])]
        });
        fake.send(serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})).await;
        wait_for(&mut d.updates, &["10.0.0.9:8080"]).await;
        wait_until(|| fake.watch_count() == 2).await;

        let reqs = fake.requests.lock().unwrap().clone();
        assert!(reqs[0].0.starts_with("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dorders"), "{reqs:?}");
        assert!(
            reqs[1].0.contains("watch=1") && reqs[1].0.contains("resourceVersion=100"),
            "{reqs:?}"
        );
        assert!(
            reqs.last().unwrap().0.contains("resourceVersion=300"),
            "{reqs:?}"
        );
        assert!(
            reqs.iter()
                .all(|(_, a)| a.as_deref() == Some("Bearer t0ken"))
        );
        assert_eq!(d.status.failures(), 0);
    }

    #[tokio::test]
    async fn https_api_server_with_ca_file() {
        let list = serde_json::json!({
            "kind": "EndpointSliceList", "metadata": {"resourceVersion": "7"},
            "items": [slice("orders-a", 7, &[("10.0.0.1", true)])]
        });
        let (addr, fake) = start_fake_with(list, Some(test_tls_acceptor())).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, include_bytes!("../testdata/ca.pem")).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tls-token").unwrap();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: {{ service: orders, api_server: 'https://{addr}', ca_file: '{}', token_file: '{}' }}\n",
            ca.display(),
            token.display()
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        wait_for(&mut d.updates, &["10.0.0.1:8080"]).await;
        wait_until(|| fake.watch_count() == 1).await;
        fake.send(serde_json::json!({"type": "ADDED", "object": slice("orders-b", 8, &[("10.0.0.2", true)])}))
            .await;
        wait_for(&mut d.updates, &["10.0.0.1:8080", "10.0.0.2:8080"]).await;
        let reqs = fake.requests.lock().unwrap().clone();
        assert!(
            reqs.iter()
                .all(|(_, a)| a.as_deref() == Some("Bearer tls-token"))
        );

        // Without a CA it refuses (no unverified TLS), and a CA that did not sign the server fails.
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: {{ service: orders, api_server: 'https://{addr}' }}\n"
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let d2 = crate::spawn("a", &cfg.clusters[0].discovery);
        wait_until(|| d2.status.failures() > 0).await;
        assert!(d2.status.last_error().unwrap().contains("ca_file"));
        let wrong = dir.path().join("wrong.pem");
        std::fs::write(&wrong, include_bytes!("../testdata/server.pem")).unwrap();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: {{ service: orders, api_server: 'https://{addr}', ca_file: '{}' }}\n",
            wrong.display()
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let d3 = crate::spawn("a", &cfg.clusters[0].discovery);
        wait_until(|| d3.status.failures() > 0).await;
        assert!(
            d3.status.last_error().unwrap().contains("TLS"),
            "{:?}",
            d3.status.last_error()
        );
        assert!(d3.updates.borrow().is_empty());
    }

    fn kubeconfig(server: &str, cluster_extra: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters:\n- name: other\n  cluster: {{ server: 'http://wrong' }}\n- name: kind\n  cluster:\n    server: '{server}'\n{cluster_extra}contexts:\n- name: dev\n  context: {{ cluster: kind, user: me, namespace: shop }}\nusers:\n- name: me\n  user:\n{user}"
        )
    }

    #[test]
    fn kubeconfig_current_context() {
        let dir = std::path::Path::new("/etc/kube");
        let t = parse_kubeconfig(
            &kubeconfig(
                "https://1.2.3.4:6443/",
                "    certificate-authority: ca.crt\n",
                "    tokenFile: /run/tok\n",
            ),
            dir,
        )
        .unwrap();
        assert_eq!(t.base, "https://1.2.3.4:6443");
        assert_eq!(t.ca, Some(Material::File("/etc/kube/ca.crt".into())));
        assert_eq!(t.token, Some(Material::File("/run/tok".into())));
        let t = parse_kubeconfig(
            &kubeconfig(
                "https://h:1",
                "    certificate-authority-data: aGVsbG8=\n",
                "    token: abc\n",
            ),
            dir,
        )
        .unwrap();
        assert_eq!(t.ca, Some(Material::Inline(b"hello".to_vec())));
        assert_eq!(t.token, Some(Material::Inline(b"abc".to_vec())));
        let err = parse_kubeconfig(
            &kubeconfig("https://h:1", "", "    client-certificate-data: eA==\n"),
            dir,
        )
        .unwrap_err();
        assert!(err.contains("client-certificate"), "{err}");
        let err = parse_kubeconfig(
            &kubeconfig(
                "https://h:1",
                "    insecure-skip-tls-verify: true\n",
                "    token: a\n",
            ),
            dir,
        )
        .unwrap_err();
        assert!(err.contains("insecure"), "{err}");
    }

    #[tokio::test]
    async fn target_prefers_api_server_then_in_cluster_then_kubeconfig() {
        let cfg = |yaml: &str| -> KubernetesDiscovery {
            let c = otlp_mesh_config::parse_str(
                &format!("clusters:\n  - name: a\n    discovery:\n      kubernetes: {yaml}\n"),
                "t.yaml",
            )
            .unwrap();
            c.clusters[0].discovery.kubernetes.clone().unwrap().value
        };
        let no_env = |_: &str| None;
        let t = target(
            &cfg("{ service: s, api_server: 'http://x:1/', token_file: /t }"),
            no_env,
        )
        .await
        .unwrap();
        assert_eq!(t.base, "http://x:1");
        assert_eq!(t.token, Some(Material::File("/t".into())));
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        assert_eq!(
            target(&cfg("{ service: s }"), env).await.unwrap().base,
            "https://10.96.0.1:443"
        );
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        std::fs::write(
            &kc,
            kubeconfig("https://5.6.7.8:6443", "", "    token: abc\n"),
        )
        .unwrap();
        let kc_path = kc.display().to_string();
        let env = |k: &str| (k == "KUBECONFIG").then(|| format!("{kc_path}:/other"));
        let t = target(&cfg("{ service: s, ca_file: /ca.pem }"), env)
            .await
            .unwrap();
        assert_eq!(t.base, "https://5.6.7.8:6443");
        assert_eq!(t.ca, Some(Material::File("/ca.pem".into())));
        let err = target(&cfg("{ service: s, kubeconfig: /nonexistent/kc }"), no_env)
            .await
            .unwrap_err();
        assert!(err.contains("/nonexistent/kc"), "{err}");
    }

    #[tokio::test]
    async fn kubeconfig_over_https_end_to_end() {
        let list = serde_json::json!({
            "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"},
            "items": [slice("orders-a", 1, &[("10.0.0.7", true)])]
        });
        let (addr, fake) = start_fake_with(list, Some(test_tls_acceptor())).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::http::b64_encode(include_bytes!("../testdata/ca.pem"));
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            kubeconfig(
                &format!("https://localhost:{}", addr.port()),
                &format!("    certificate-authority-data: {ca}\n"),
                "    token: kc-token\n",
            ),
        )
        .unwrap();
        let yaml = format!(
            "clusters:\n  - name: a\n    discovery:\n      kubernetes: {{ service: orders, kubeconfig: '{}' }}\n",
            kc.display()
        );
        let cfg = otlp_mesh_config::parse_str(&yaml, "t.yaml").unwrap();
        let mut d = crate::spawn("a", &cfg.clusters[0].discovery);
        wait_for(&mut d.updates, &["10.0.0.7:8080"]).await;
        let reqs = fake.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].1.as_deref(), Some("Bearer kc-token"));
    }
}
