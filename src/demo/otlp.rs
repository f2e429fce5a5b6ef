//! The example services' own tracing: a server span per request, continued from the proxy's
//! `traceparent` and passed on to the calls they make, sent as OTLP/HTTP protobuf to the
//! proxy's receiver. This is what an instrumented application does; it makes the demo's traces
//! cross services (edge proxy → frontend → proxy → orders → proxy → inventory).

use super::services::Kind;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use otlp_mesh_config::telemetry::Propagation;
use otlp_mesh_telemetry::propagation::{self, TraceContext};
use otlp_mesh_telemetry::recorder::unix_nanos;
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// Spans waiting to be sent; more are dropped (the demo must never slow down for tracing).
const QUEUE: usize = 4096;

/// Where a service's finished spans go.
#[derive(Clone, Debug)]
pub(crate) struct Tracer {
    tx: Option<mpsc::Sender<(Kind, Span)>>,
}

/// A server span in progress.
#[derive(Debug)]
pub(crate) struct ActiveSpan {
    ctx: TraceContext,
    parent: Option<[u8; 8]>,
    start: u64,
}

impl ActiveSpan {
    /// Headers that continue this span's trace in a call to another service.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        propagation::inject(headers, &self.ctx, &[Propagation::W3c]);
    }
}

impl Tracer {
    /// Sends spans to the OTLP/HTTP receiver at `otlp`, in batches every 500 ms.
    pub(crate) fn start(otlp: SocketAddr) -> Tracer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(otlp, rx));
        Tracer { tx: Some(tx) }
    }

    /// A tracer that records nothing (for tests of the services alone).
    #[cfg(test)]
    pub(crate) fn disabled() -> Tracer {
        Tracer { tx: None }
    }

    /// Starts a server span continuing the caller's trace, or a new trace.
    pub(crate) fn begin(&self, headers: &HeaderMap) -> ActiveSpan {
        let incoming = propagation::extract(headers);
        let (trace_id, parent, sampled) = match &incoming {
            Some(c) => (c.trace_id, Some(c.span_id), c.sampled.unwrap_or(true)),
            None => (fastrand::u128(1..).to_be_bytes(), None, true),
        };
        ActiveSpan {
            ctx: TraceContext {
                trace_id,
                span_id: fastrand::u64(1..).to_be_bytes(),
                sampled: Some(sampled),
                tracestate: None,
            },
            parent,
            start: unix_nanos(),
        }
    }

    /// Ends `active` and queues it.
    pub(crate) fn end(
        &self,
        kind: Kind,
        active: ActiveSpan,
        method: &str,
        path: &str,
        status: StatusCode,
    ) {
        let Some(tx) = &self.tx else { return };
        if active.ctx.sampled == Some(false) {
            return;
        }
        let attr = |k: &str, v: any_value::Value| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let span = Span {
            trace_id: active.ctx.trace_id.to_vec(),
            span_id: active.ctx.span_id.to_vec(),
            parent_span_id: active.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: format!("{method} {path}"),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: active.start,
            end_time_unix_nano: unix_nanos(),
            attributes: vec![
                attr(
                    "http.request.method",
                    any_value::Value::StringValue(method.into()),
                ),
                attr("url.path", any_value::Value::StringValue(path.into())),
                attr(
                    "http.response.status_code",
                    any_value::Value::IntValue(i64::from(status.as_u16())),
                ),
            ],
            status: Some(if status.is_server_error() {
                Status {
                    code: status::StatusCode::Error as i32,
                    message: status.to_string(),
                }
            } else {
                Status::default()
            }),
            ..Default::default()
        };
        let _ = tx.try_send((kind, span));
    }
}

async fn export_loop(otlp: SocketAddr, mut rx: mpsc::Receiver<(Kind, Span)>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{otlp}/v1/traces");
    let mut buf = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if rx.recv_many(&mut buf, QUEUE).await == 0 {
            return;
        }
        let mut by_service: BTreeMap<&'static str, Vec<Span>> = BTreeMap::new();
        for (kind, span) in buf.drain(..) {
            by_service.entry(kind.name()).or_default().push(span);
        }
        let req = ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(service.into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        let Ok(request) = Request::post(&uri)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(req.encode_to_vec())))
        else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => {}
            Ok(Ok(r)) => tracing::debug!(status = %r.status(), "demo spans refused"),
            Ok(Err(e)) => tracing::debug!(error = %e, "demo spans not sent"),
            Err(_) => tracing::debug!("demo spans not sent within 5s"),
        }
    }
}
