//! Processors that need decoded data: resource attributes, redaction, probabilistic sampling.
//!
//! They run only when configured; the pipeline otherwise forwards bytes untouched. The stateful
//! tail sampler lives in [`tail_sampling`] and runs after them, as a pipeline stage.

pub mod tail_sampling;

use crate::otlp::{Batch, Signal};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use otlp_mesh_config::telemetry::{ProcessorsConfig, RedactionAction};
use prost::Message;
use regex::Regex;
use sha2::{Digest, Sha256};

/// A processor chain built from config.
#[derive(Debug)]
pub struct Processors {
    resource: Vec<(String, String)>,
    redaction: Vec<Redaction>,
    /// Keep threshold on the 56 random bits of the trace id; `None` keeps everything.
    sampling: Option<u64>,
}

#[derive(Debug)]
struct Redaction {
    key: Option<Regex>,
    value: Option<Regex>,
    action: RedactionAction,
}

/// A batch the processors could not decode, returned unchanged.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {signal} payload: {reason}")]
pub struct ProcessError {
    batch: Batch,
    signal: Signal,
    reason: String,
}

impl ProcessError {
    /// The untouched batch.
    pub fn into_batch(self) -> Batch {
        self.batch
    }
}

const MASK: &str = "****";

impl Processors {
    /// The chain for `cfg`, or `None` when nothing is configured. Regexes were checked by
    /// config validation; one that still fails is reported here.
    pub fn from_config(cfg: &ProcessorsConfig) -> Result<Option<Processors>, regex::Error> {
        let mut redaction = Vec::new();
        for r in &cfg.redaction {
            let r = &r.value;
            redaction.push(Redaction {
                key: r.key.as_ref().map(|k| Regex::new(&k.value)).transpose()?,
                value: r.value.as_ref().map(|v| Regex::new(&v.value)).transpose()?,
                action: r.action,
            });
        }
        let sampling = cfg
            .probabilistic_sampling
            .as_ref()
            .map(|r| keep_threshold(r.value));
        if cfg.resource.is_empty() && redaction.is_empty() && sampling.is_none() {
            return Ok(None);
        }
        Ok(Some(Processors {
            resource: cfg
                .resource
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            redaction,
            sampling,
        }))
    }

    /// Applies the chain to `batch`.
    pub fn process(&self, batch: Batch) -> Result<Batch, ProcessError> {
        let fail = |batch: Batch, e: prost::DecodeError| ProcessError {
            signal: batch.signal,
            reason: e.to_string(),
            batch,
        };
        match batch.signal {
            Signal::Traces => {
                let mut req = match ExportTraceServiceRequest::decode(&batch.payload[..]) {
                    Ok(r) => r,
                    Err(e) => return Err(fail(batch, e)),
                };
                let mut items = 0;
                for rs in &mut req.resource_spans {
                    self.resource(&mut rs.resource);
                    for ss in &mut rs.scope_spans {
                        if let Some(t) = self.sampling {
                            ss.spans.retain(|s| keep_trace(&s.trace_id, t));
                        }
                        for s in &mut ss.spans {
                            self.redact(&mut s.attributes);
                            for e in &mut s.events {
                                self.redact(&mut e.attributes);
                            }
                            for l in &mut s.links {
                                self.redact(&mut l.attributes);
                            }
                        }
                        items += ss.spans.len() as u64;
                    }
                }
                Ok(Batch::new(
                    Signal::Traces,
                    Bytes::from(req.encode_to_vec()),
                    items,
                ))
            }
            Signal::Metrics => {
                let mut req = match ExportMetricsServiceRequest::decode(&batch.payload[..]) {
                    Ok(r) => r,
                    Err(e) => return Err(fail(batch, e)),
                };
                let mut items = 0;
                for rm in &mut req.resource_metrics {
                    self.resource(&mut rm.resource);
                    for sm in &mut rm.scope_metrics {
                        for m in &mut sm.metrics {
                            items += self.redact_metric(m);
                        }
                    }
                }
                Ok(Batch::new(
                    Signal::Metrics,
                    Bytes::from(req.encode_to_vec()),
                    items,
                ))
            }
            Signal::Logs => {
                let mut req = match ExportLogsServiceRequest::decode(&batch.payload[..]) {
                    Ok(r) => r,
                    Err(e) => return Err(fail(batch, e)),
                };
                let mut items = 0;
                for rl in &mut req.resource_logs {
                    self.resource(&mut rl.resource);
                    for sl in &mut rl.scope_logs {
                        if let Some(t) = self.sampling {
                            // Logs outside a trace are kept; logs in a trace follow its decision.
                            sl.log_records
                                .retain(|l| l.trace_id.is_empty() || keep_trace(&l.trace_id, t));
                        }
                        for l in &mut sl.log_records {
                            self.redact(&mut l.attributes);
                            if let Some(body) = &mut l.body {
                                self.redact_value(body);
                            }
                        }
                        items += sl.log_records.len() as u64;
                    }
                }
                Ok(Batch::new(
                    Signal::Logs,
                    Bytes::from(req.encode_to_vec()),
                    items,
                ))
            }
        }
    }

    fn resource(&self, resource: &mut Option<Resource>) {
        if self.resource.is_empty() && self.redaction.is_empty() {
            return;
        }
        let r = resource.get_or_insert_with(Resource::default);
        for (k, v) in &self.resource {
            let value = Some(string_value(v.clone()));
            match r.attributes.iter_mut().find(|a| &a.key == k) {
                Some(a) => a.value = value,
                None => r.attributes.push(KeyValue {
                    key: k.clone(),
                    value,
                    ..Default::default()
                }),
            }
        }
        self.redact(&mut r.attributes);
    }

    fn redact_metric(&self, m: &mut opentelemetry_proto::tonic::metrics::v1::Metric) -> u64 {
        macro_rules! points {
            ($pts:expr) => {{
                for p in $pts.iter_mut() {
                    self.redact(&mut p.attributes);
                }
                $pts.len() as u64
            }};
        }
        match &mut m.data {
            Some(metric::Data::Gauge(g)) => points!(g.data_points),
            Some(metric::Data::Sum(s)) => points!(s.data_points),
            Some(metric::Data::Histogram(h)) => points!(h.data_points),
            Some(metric::Data::ExponentialHistogram(h)) => points!(h.data_points),
            Some(metric::Data::Summary(s)) => points!(s.data_points),
            None => 0,
        }
    }

    fn redact(&self, attrs: &mut Vec<KeyValue>) {
        if self.redaction.is_empty() {
            return;
        }
        attrs.retain_mut(|kv| {
            for r in &self.redaction {
                let key_hit = r.key.as_ref().is_some_and(|k| k.is_match(&kv.key));
                let text = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                };
                let value_hit = match (&r.value, text) {
                    (Some(re), Some(t)) => re.is_match(t),
                    _ => false,
                };
                // With both patterns set, both must match.
                let hit = match (&r.key, &r.value) {
                    (Some(_), Some(_)) => key_hit && value_hit,
                    (Some(_), None) => key_hit,
                    _ => value_hit,
                };
                if !hit {
                    continue;
                }
                match r.action {
                    RedactionAction::Delete => return false,
                    RedactionAction::Hash => {
                        let raw = text.map(str::to_string).unwrap_or_else(|| {
                            kv.value
                                .as_ref()
                                .map(|v| format!("{v:?}"))
                                .unwrap_or_default()
                        });
                        kv.value = Some(string_value(sha256_hex(&raw)));
                    }
                    RedactionAction::Mask => {
                        let masked = match (&r.value, text) {
                            (Some(re), Some(t)) => re.replace_all(t, MASK).into_owned(),
                            _ => MASK.to_string(),
                        };
                        kv.value = Some(string_value(masked));
                    }
                }
            }
            true
        });
    }

    fn redact_value(&self, v: &mut AnyValue) {
        let Some(any_value::Value::StringValue(s)) = &mut v.value else {
            return;
        };
        for r in &self.redaction {
            let (Some(re), None) = (&r.value, &r.key) else {
                continue;
            };
            if !re.is_match(s) {
                continue;
            }
            *s = match r.action {
                RedactionAction::Delete | RedactionAction::Mask => {
                    re.replace_all(s, MASK).into_owned()
                }
                RedactionAction::Hash => sha256_hex(s),
            };
        }
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The keep threshold for `ratio` over 56 bits of trace-id randomness.
pub fn keep_threshold(ratio: f64) -> u64 {
    const SPACE: f64 = (1u64 << 56) as f64;
    (ratio.clamp(0.0, 1.0) * SPACE) as u64
}

/// Consistent sampling decision on a trace id: its last 7 bytes (the random part W3C trace ids
/// carry) compared with `threshold`, so every service with the same ratio decides alike.
pub fn keep_trace(trace_id: &[u8], threshold: u64) -> bool {
    if threshold >= 1 << 56 {
        return true;
    }
    let Some(tail) = trace_id.get(trace_id.len().saturating_sub(7)..) else {
        return true;
    };
    let r = tail.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    r < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn cfg(yaml: &str) -> ProcessorsConfig {
        let full = format!("telemetry:\n  processors:\n{yaml}");
        let c = otlp_mesh_config::parse_str(&full, "t.yaml").unwrap();
        c.telemetry.unwrap().value.processors
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(string_value(v.into())),
            ..Default::default()
        }
    }

    fn attr<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| match &a.value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => Some(s.as_str()),
                _ => None,
            })
    }

    fn traces(spans: Vec<Span>) -> Batch {
        let n = spans.len() as u64;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch::new(Signal::Traces, Bytes::from(req.encode_to_vec()), n)
    }

    #[test]
    fn nothing_configured_means_no_processors() {
        assert!(
            Processors::from_config(&ProcessorsConfig::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn redaction_deletes_hashes_and_masks() {
        let p = Processors::from_config(&cfg(
            "    resource: { deployment.environment: prod }\n    redaction:\n      - { key: '^password$', action: delete }\n      - { key: '^user\\.id$', action: hash }\n      - { value: '\\b\\d{4}[ -]?\\d{4}[ -]?\\d{4}[ -]?\\d{4}\\b', action: mask }\n      - { value: '[\\w.+-]+@[\\w-]+\\.[\\w.]+', action: mask }\n",
        ))
        .unwrap()
        .unwrap();
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            attributes: vec![
                kv("password", "hunter2"),
                kv("user.id", "alice"),
                kv("note", "card 4111 1111 1111 1111 ok"),
                kv("contact", "mail bob@example.com now"),
                kv("http.route", "/pay"),
            ],
            ..Default::default()
        };
        let out = p.process(traces(vec![span])).unwrap();
        let req = ExportTraceServiceRequest::decode(&out.payload[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(
            attr(
                &rs.resource.as_ref().unwrap().attributes,
                "deployment.environment"
            ),
            Some("prod")
        );
        let a = &rs.scope_spans[0].spans[0].attributes;
        assert_eq!(attr(a, "password"), None);
        assert_eq!(attr(a, "user.id"), Some(sha256_hex("alice").as_str()));
        assert_eq!(attr(a, "note"), Some("card **** ok"));
        assert_eq!(attr(a, "contact"), Some("mail **** now"));
        assert_eq!(attr(a, "http.route"), Some("/pay"));
    }

    #[test]
    fn sampling_is_consistent_on_trace_id_and_near_the_ratio() {
        let t = keep_threshold(0.25);
        let mut kept = 0;
        for i in 0..10_000u64 {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
            let k = keep_trace(&id, t);
            assert_eq!(k, keep_trace(&id, t));
            kept += u32::from(k);
        }
        assert!((2_200..2_800).contains(&kept), "{kept}");
        assert!(keep_trace(&[0xff; 16], keep_threshold(1.0)));
        assert!(!keep_trace(&[0; 16], keep_threshold(0.0)));
    }

    #[test]
    fn sampling_processor_counts_what_it_keeps() {
        let p = Processors::from_config(&cfg("    probabilistic_sampling: 0.5\n"))
            .unwrap()
            .unwrap();
        let spans: Vec<Span> = (0..200u8)
            .map(|i| Span {
                trace_id: [[0u8; 8], [i; 8]].concat(),
                span_id: vec![1; 8],
                ..Default::default()
            })
            .collect();
        let out = p.process(traces(spans)).unwrap();
        let req = ExportTraceServiceRequest::decode(&out.payload[..]).unwrap();
        assert_eq!(
            out.items as usize,
            req.resource_spans[0].scope_spans[0].spans.len()
        );
        assert_eq!(out.items, 128); // byte i repeated: kept exactly when i < 0x80
    }
}
