//! Tail sampling inside the pipeline: traces submitted through `Pipeline::submit` reach the
//! consumers only after `decision_wait`, other signals pass at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otlp_mesh_telemetry::processors::tail_sampling::TailSettings;
use otlp_mesh_telemetry::{Batch, Consumer, MemoryLimiter, Pipeline, Priority, Refused, Signal};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Collect(Mutex<Vec<Batch>>);

impl Consumer for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    fn consume(&self, batch: Batch, _: Priority) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            self.0.lock().unwrap().push(batch);
            Ok(())
        })
    }
}

impl Collect {
    fn spans(&self, signal: Signal) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.signal == signal)
            .map(|b| b.items)
            .sum()
    }
}

fn traces(trace: u8, n: u64, error: bool) -> Batch {
    let spans: Vec<Span> = (0..n)
        .map(|i| Span {
            trace_id: vec![trace; 16],
            span_id: (i + 1).to_be_bytes().to_vec(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            status: error.then(|| Status {
                code: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
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

#[tokio::test(start_paused = true)]
async fn submitted_traces_reach_consumers_only_after_decision_wait() {
    let sink = Arc::new(Collect::default());
    let memory = Arc::new(MemoryLimiter::new(1 << 20, 2 << 20));
    let settings = TailSettings {
        decision_wait: Duration::from_secs(2),
        spans_per_second: Some(4),
        ..TailSettings::default()
    };
    let p = Pipeline::new(memory.clone(), None, vec![sink.clone()]).with_tail_sampling(settings);

    p.submit(traces(1, 3, false), Priority::Receiver)
        .await
        .unwrap();
    p.submit(traces(2, 3, false), Priority::Receiver)
        .await
        .unwrap();
    p.submit(traces(3, 5, true), Priority::Receiver)
        .await
        .unwrap();
    // Other signals are not held.
    let logs = Batch::new(Signal::Logs, Bytes::from_static(b""), 2);
    p.submit(logs, Priority::Receiver).await.unwrap();
    assert_eq!(sink.spans(Signal::Logs), 2);
    assert_eq!(p.stats().accepted(Signal::Traces), 11);
    assert!(memory.used() > 0, "held spans are accounted");

    tokio::time::sleep(Duration::from_millis(1_990)).await;
    assert_eq!(
        sink.spans(Signal::Traces),
        0,
        "nothing before decision_wait"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Trace 1 takes 3 of the 4 tokens, trace 2 does not fit, trace 3 has an error.
    assert_eq!(sink.spans(Signal::Traces), 8);
    assert_eq!(memory.used(), 0);
    let st = p.tail_sampler().unwrap().stats();
    assert_eq!((st.kept_traces(), st.dropped_traces), (2, 1));

    let mut out = String::new();
    p.render_prometheus(&mut out);
    assert!(out.contains("otlp_mesh_tail_sampling_spans_total{decision=\"kept\"} 8"));
    assert!(out.contains("otlp_mesh_tail_sampling_spans_total{decision=\"dropped\"} 3"));
}

#[tokio::test(start_paused = true)]
async fn flush_hands_on_what_is_held() {
    let sink = Arc::new(Collect::default());
    let memory = Arc::new(MemoryLimiter::new(1 << 20, 2 << 20));
    let p =
        Pipeline::new(memory, None, vec![sink.clone()]).with_tail_sampling(TailSettings::default());
    p.submit(traces(1, 4, false), Priority::Internal)
        .await
        .unwrap();
    assert_eq!(sink.spans(Signal::Traces), 0);
    p.flush().await;
    assert_eq!(sink.spans(Signal::Traces), 4);
}

#[tokio::test]
async fn the_runtime_builds_the_sampler_from_config() {
    let cfg = otlp_mesh_config::parse_str(
        "telemetry:\n  store: { enabled: false }\n  processors:\n    tail_sampling:\n      decision_wait: 3s\n      keep_latency_above: 250ms\n      rate_limit: { spans_per_second: 100 }\n",
        "t.yaml",
    )
    .unwrap();
    let t = otlp_mesh_telemetry::Telemetry::start(
        &cfg.telemetry.unwrap().value,
        otlp_mesh_telemetry::Registry::new(),
    )
    .await
    .unwrap();
    let s = t.pipeline().tail_sampler().unwrap().settings().clone();
    assert_eq!(s.decision_wait, Duration::from_secs(3));
    assert_eq!(s.keep_latency_above, Some(Duration::from_millis(250)));
    assert_eq!(s.spans_per_second, Some(100));
    assert!(s.keep_errors);
    let mut out = String::new();
    t.render_prometheus(&mut out);
    assert!(out.contains("# TYPE otlp_mesh_tail_sampling_traces_total counter"));
    t.shutdown(Duration::from_millis(100)).await;
}
