//! What both OTLP clients share: parsing the endpoint, opening TCP (+TLS) connections,
//! compressing bodies and reading `partial_success` from responses.

use otlp_mesh_config::telemetry::{Compression, OtlpEndpointConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream to the backend: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A parsed backend URL and how to reach it.
pub(crate) struct Connector {
    host: String,
    port: u16,
    /// `scheme://authority`, prefixed to request paths.
    pub origin: String,
    /// Path of the URL without a trailing `/` (OTLP/HTTP appends `/v1/traces` etc.).
    pub base_path: String,
    tls: Option<TlsConnector>,
}

impl Connector {
    /// Parses `endpoint`; for `https://` builds a TLS client offering `alpn`.
    pub fn new(ep: &OtlpEndpointConfig, alpn: &[u8]) -> Result<Connector, String> {
        let url = ep.endpoint.value.trim();
        let uri: http::Uri = url.parse().map_err(|e| format!("endpoint `{url}`: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("endpoint `{url}`: not an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("endpoint `{url}`: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let origin = format!("{}://{authority}", if https { "https" } else { "http" });
        let base_path = uri.path().trim_end_matches('/').to_string();
        let tls = if https {
            let pem = match &ep.ca_file {
                Some(f) => {
                    std::fs::read(&f.value).map_err(|e| format!("ca_file `{}`: {e}", f.value))?
                }
                None => system_roots()?,
            };
            Some(TlsConnector::from(tls_config(&pem, alpn)?))
        } else {
            None
        };
        Ok(Connector {
            host,
            port,
            origin,
            base_path,
            tls,
        })
    }

    /// Opens a connection (TLS when the endpoint is `https://`).
    pub async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let (host, port) = (&self.host, self.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| format!("connect to {host}:{port} timed out"))?
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|e| format!("TLS name {host}: {e}"))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
        Ok(Box::new(stream))
    }
}

/// The system's CA bundle, from `SSL_CERT_FILE` or the usual distribution paths (what
/// rustls-native-certs does on Linux, without another dependency).
fn system_roots() -> Result<Vec<u8>, String> {
    let env = std::env::var("SSL_CERT_FILE").ok();
    let paths = env.iter().map(String::as_str).chain([
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    ]);
    for p in paths {
        if let Ok(pem) = std::fs::read(p) {
            return Ok(pem);
        }
    }
    Err("https endpoint without ca_file, and no system CA bundle found (set ca_file or SSL_CERT_FILE)".into())
}

fn tls_config(pem: &[u8], alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("CA certificates: {e}"))?;
        // A bundle may hold certificates rustls cannot use; skip them rather than fail.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("CA certificates: none usable".into());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Header value for a compression (`None` for uncompressed).
pub(crate) fn encoding_name(c: Compression) -> Option<&'static str> {
    match c {
        Compression::Gzip => Some("gzip"),
        Compression::Zstd => Some("zstd"),
        Compression::None => None,
    }
}

/// Compresses one buffer (tests).
#[cfg(test)]
pub(crate) fn compress(c: Compression, data: &[u8]) -> std::io::Result<bytes::Bytes> {
    compress_parts(c, [data], data.len(), 0).map(bytes::Bytes::from)
}

/// Compresses the concatenation of `parts` (`total` bytes) without first concatenating them,
/// after `reserve` zero bytes at the start of the output (room for a gRPC message prefix).
/// Gzip uses the fastest level: telemetry is forwarded, not archived.
pub(crate) fn compress_parts<'a>(
    c: Compression,
    parts: impl IntoIterator<Item = &'a [u8]>,
    total: usize,
    reserve: usize,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(
        reserve
            + match c {
                Compression::None => total,
                _ => total / 3,
            },
    );
    out.resize(reserve, 0);
    match c {
        Compression::None => {
            for p in parts {
                out.extend_from_slice(p);
            }
            Ok(out)
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            for p in parts {
                enc.write_all(p)?;
            }
            enc.finish()
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, 1)?;
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(total as u64))?;
            for p in parts {
                enc.write_all(p)?;
            }
            enc.finish()
        }
    }
}

/// Largest response body read (responses are tiny; a huge one is a misbehaving server).
pub(crate) const MAX_RESPONSE: usize = 1 << 20;

/// Decompresses a response message encoded with `encoding` (gRPC `grpc-encoding`).
pub(crate) fn decompress(encoding: &str, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    match encoding {
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(MAX_RESPONSE as u64)
                .read_to_end(&mut out)
                .ok()?;
            Some(out)
        }
        "zstd" => zstd::bulk::decompress(data, MAX_RESPONSE).ok(),
        "identity" | "" => Some(data.to_vec()),
        _ => None,
    }
}

/// The shape shared by `Export{Trace,Metrics,Logs}ServiceResponse`: field 1 is
/// `partial_success { int64 rejected_<items> = 1; string error_message = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// What the backend said about an accepted request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Accepted {
    /// Items it rejected (`partial_success`).
    pub rejected: u64,
    /// Its `error_message` (may be a warning with nothing rejected).
    pub message: String,
}

/// Reads `partial_success` from an encoded export response (empty or undecodable = none).
pub(crate) fn partial_success(body: &[u8]) -> Accepted {
    use prost::Message;
    match ExportResponse::decode(body) {
        Ok(ExportResponse {
            partial_success: Some(p),
        }) => Accepted {
            rejected: u64::try_from(p.rejected).unwrap_or(0),
            message: p.error_message,
        },
        _ => Accepted::default(),
    }
}

pub(crate) use otlp_mesh_discovery::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips() {
        let data = b"hello hello hello hello".repeat(10);
        for (c, name) in [(Compression::Gzip, "gzip"), (Compression::Zstd, "zstd")] {
            let z = compress(c, &data).unwrap();
            assert!(z.len() < data.len());
            assert_eq!(decompress(name, &z).unwrap(), data);
        }
        assert_eq!(&compress(Compression::None, &data).unwrap()[..], &data[..]);
    }

    #[test]
    fn partial_success_is_read_for_every_signal() {
        use opentelemetry_proto::tonic::collector::metrics::v1 as m;
        use opentelemetry_proto::tonic::collector::trace::v1 as t;
        use prost::Message;
        let r = t::ExportTraceServiceResponse {
            partial_success: Some(t::ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad ids".into(),
            }),
        };
        assert_eq!(
            partial_success(&r.encode_to_vec()),
            Accepted {
                rejected: 3,
                message: "bad ids".into()
            }
        );
        let r = m::ExportMetricsServiceResponse {
            partial_success: Some(m::ExportMetricsPartialSuccess {
                rejected_data_points: 7,
                error_message: String::new(),
            }),
        };
        assert_eq!(partial_success(&r.encode_to_vec()).rejected, 7);
        assert_eq!(partial_success(b""), Accepted::default());
    }
}
