//! Exporter counters: relaxed atomics bumped by the sender and the queue, read by `/metrics`
//! and the admin API.

use crate::Signal;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why items were given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Retryable failures for longer than `retry.max_elapsed_time` (memory queue only).
    RetriesExhausted,
    /// A non-retryable status.
    PermanentError,
    /// Accepted by the server but listed as rejected in `partial_success`.
    Rejected,
    /// Still queued (memory queue) when the shutdown deadline passed.
    Shutdown,
}

impl DropReason {
    /// All reasons, in metric order.
    pub const ALL: [DropReason; 4] = [
        DropReason::RetriesExhausted,
        DropReason::PermanentError,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::PermanentError => "permanent_error",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SignalCounters {
    pub items_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub failed: [AtomicU64; 4],
    pub retries: AtomicU64,
    pub replayed: AtomicU64,
    pub queued_items: AtomicU64,
    pub queued_bytes: AtomicU64,
}

/// Live counters of one exporter.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub signals: [SignalCounters; 3],
    pub in_flight: AtomicU64,
    pub queue_full: AtomicU64,
    pub paced: AtomicU64,
}

fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

impl Stats {
    pub fn sig(&self, s: Signal) -> &SignalCounters {
        &self.signals[s.index()]
    }

    pub fn queued(&self, s: Signal, items: u64, bytes: u64) {
        let c = self.sig(s);
        c.queued_items.fetch_add(items, Relaxed);
        c.queued_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn dequeued(&self, s: Signal, items: u64, bytes: u64) {
        let c = self.sig(s);
        sub(&c.queued_items, items);
        sub(&c.queued_bytes, bytes);
    }

    pub fn failed(&self, s: Signal, reason: DropReason, items: u64) {
        self.sig(s).failed[reason as usize].fetch_add(items, Relaxed);
    }

    pub fn snapshot(
        &self,
        name: &str,
        kind: &'static str,
        persistent: bool,
    ) -> ExporterStatsSnapshot {
        let signals: Vec<SignalStatsSnapshot> = Signal::ALL
            .iter()
            .map(|&s| {
                let c = self.sig(s);
                let failed = |r: DropReason| c.failed[r as usize].load(Relaxed);
                SignalStatsSnapshot {
                    signal: s.as_str(),
                    items_sent: c.items_sent.load(Relaxed),
                    batches_sent: c.batches_sent.load(Relaxed),
                    items_failed: FailedItems {
                        retries_exhausted: failed(DropReason::RetriesExhausted),
                        permanent_error: failed(DropReason::PermanentError),
                        rejected: failed(DropReason::Rejected),
                        shutdown: failed(DropReason::Shutdown),
                    },
                    retries: c.retries.load(Relaxed),
                    replayed_items: c.replayed.load(Relaxed),
                    queued_items: c.queued_items.load(Relaxed),
                    queued_bytes: c.queued_bytes.load(Relaxed),
                }
            })
            .collect();
        ExporterStatsSnapshot {
            name: name.to_string(),
            kind,
            persistent,
            in_flight_requests: self.in_flight.load(Relaxed),
            queue_full_refusals: self.queue_full.load(Relaxed),
            paced_enqueues: self.paced.load(Relaxed),
            queued_items: signals.iter().map(|s| s.queued_items).sum(),
            queued_bytes: signals.iter().map(|s| s.queued_bytes).sum(),
            signals,
        }
    }
}

/// A point-in-time copy of an exporter's counters.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExporterStatsSnapshot {
    pub name: String,
    /// `otlp_grpc` or `otlp_http`.
    pub kind: &'static str,
    /// True with a write-ahead log on disk.
    pub persistent: bool,
    pub in_flight_requests: u64,
    /// `enqueue` calls refused (queue or memory full, or shutting down).
    pub queue_full_refusals: u64,
    /// `enqueue` calls from receivers that waited for a busy exporter (backpressure).
    pub paced_enqueues: u64,
    pub queued_items: u64,
    pub queued_bytes: u64,
    /// Traces, metrics, logs in that order.
    pub signals: Vec<SignalStatsSnapshot>,
}

impl ExporterStatsSnapshot {
    /// The entry of one signal.
    pub fn signal(&self, s: Signal) -> &SignalStatsSnapshot {
        &self.signals[s.index()]
    }
}

/// Counters of one signal.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SignalStatsSnapshot {
    pub signal: &'static str,
    pub items_sent: u64,
    pub batches_sent: u64,
    pub items_failed: FailedItems,
    /// Attempts after the first.
    pub retries: u64,
    /// Items found unacknowledged in the persistent queue at start (sent again; may duplicate).
    pub replayed_items: u64,
    pub queued_items: u64,
    pub queued_bytes: u64,
}

/// Items given up on, by reason.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FailedItems {
    pub retries_exhausted: u64,
    pub permanent_error: u64,
    pub rejected: u64,
    pub shutdown: u64,
}

/// Writes the `otlp_mesh_exporter_*` families for all `exporters` (each family once).
pub fn render_prometheus(exporters: &[ExporterStatsSnapshot], out: &mut String) {
    use crate::{write_family, write_sample};
    type Get = fn(&SignalStatsSnapshot) -> u64;
    let per_signal: [(&str, &str, &str, Get); 6] = [
        (
            "otlp_mesh_exporter_sent_items_total",
            "counter",
            "Items (spans, data points, log records) accepted by the backend.",
            |s| s.items_sent,
        ),
        (
            "otlp_mesh_exporter_sent_batches_total",
            "counter",
            "Export requests accepted by the backend.",
            |s| s.batches_sent,
        ),
        (
            "otlp_mesh_exporter_retries_total",
            "counter",
            "Export attempts after the first.",
            |s| s.retries,
        ),
        (
            "otlp_mesh_exporter_replayed_items_total",
            "counter",
            "Items replayed from the persistent queue at start.",
            |s| s.replayed_items,
        ),
        (
            "otlp_mesh_exporter_queued_items",
            "gauge",
            "Items queued or in flight.",
            |s| s.queued_items,
        ),
        (
            "otlp_mesh_exporter_queued_bytes",
            "gauge",
            "Encoded bytes queued or in flight.",
            |s| s.queued_bytes,
        ),
    ];
    for (name, kind, help, get) in per_signal {
        write_family(out, name, kind, help);
        for e in exporters {
            for s in &e.signals {
                write_sample(
                    out,
                    name,
                    &[("exporter", &e.name), ("signal", s.signal)],
                    get(s),
                );
            }
        }
    }
    let name = "otlp_mesh_exporter_failed_items_total";
    write_family(out, name, "counter", "Items given up on, by reason.");
    for e in exporters {
        for s in &e.signals {
            let f = &s.items_failed;
            for (reason, v) in [
                (DropReason::RetriesExhausted, f.retries_exhausted),
                (DropReason::PermanentError, f.permanent_error),
                (DropReason::Rejected, f.rejected),
                (DropReason::Shutdown, f.shutdown),
            ] {
                write_sample(
                    out,
                    name,
                    &[
                        ("exporter", &e.name),
                        ("signal", s.signal),
                        ("reason", reason.as_str()),
                    ],
                    v,
                );
            }
        }
    }
    let name = "otlp_mesh_exporter_in_flight_requests";
    write_family(out, name, "gauge", "Export requests being sent or retried.");
    for e in exporters {
        write_sample(out, name, &[("exporter", &e.name)], e.in_flight_requests);
    }
    let name = "otlp_mesh_exporter_queue_full_total";
    write_family(
        out,
        name,
        "counter",
        "Enqueue calls refused because the queue or memory was full or the exporter stopping.",
    );
    for e in exporters {
        write_sample(out, name, &[("exporter", &e.name)], e.queue_full_refusals);
    }
    let name = "otlp_mesh_exporter_paced_total";
    write_family(
        out,
        name,
        "counter",
        "Enqueue calls from receivers that waited for a busy exporter (backpressure).",
    );
    for e in exporters {
        write_sample(out, name, &[("exporter", &e.name)], e.paced_enqueues);
    }
}
