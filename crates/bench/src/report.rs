//! Benchmark results: the JSON shape, the terminal table and CSV.

use crate::histogram::{DistributionPoint, Latency, Percentiles};
use crate::load::{BenchConfig, Protocol};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Failed requests by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Resets, closed connections and other transport failures; for gRPC also an HTTP status
    /// other than 200 below 400.
    pub other: u64,
    /// gRPC responses (HTTP 200) whose `grpc-status` is not 0, is missing or is unreadable.
    #[serde(default)]
    pub grpc_status: u64,
}

impl Errors {
    pub fn record_status(&mut self, status: u16) {
        if status >= 500 {
            self.status_5xx += 1;
        } else {
            self.status_4xx += 1;
        }
    }
    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.other += o.other;
        self.grpc_status += o.grpc_status;
    }
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.status_4xx
            + self.status_5xx
            + self.other
            + self.grpc_status
    }
}

/// CPU and memory of one sampled process over the measured period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub pid: u32,
    pub name: String,
    pub cpu_seconds: f64,
    /// CPU time per completed request (successes and failures), in microseconds.
    pub cpu_us_per_request: f64,
    pub rss_peak_bytes: u64,
}

/// One benchmark run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub protocol: Protocol,
    pub mode: String,
    pub connections: usize,
    pub workers: usize,
    pub duration_s: f64,
    pub target_rate: Option<f64>,
    /// Open loop: the schedule's step in µs (due times rounded up to it; 0 = exact times).
    #[serde(default)]
    pub pace_us: Option<u64>,
    pub requests: u64,
    pub ok: u64,
    pub errors: Errors,
    pub throughput_rps: f64,
    /// For open-loop runs, measured from each request's scheduled start (coordinated-omission corrected).
    pub latency: Percentiles,
    /// Open loop only: measured from the actual send time, for comparison.
    pub latency_uncorrected: Option<Percentiles>,
    pub processes: Vec<ProcessUsage>,
    /// Seconds since the Unix epoch when the report was made (0 in reports from older versions).
    #[serde(default)]
    pub unix_time_s: u64,
    /// Width of a [`Self::timeline`] bucket in milliseconds.
    #[serde(default = "default_bucket_ms")]
    pub timeline_bucket_ms: u64,
    /// Completed requests (successes and failures) per bucket of the measured period, at most
    /// [`crate::timeline::MAX_BUCKETS`]; requests completed just after the end are in the last bucket.
    #[serde(default)]
    pub timeline: Vec<u64>,
    /// `latency` at log-spaced percentiles (0 … 99.999, then 100 = max).
    #[serde(default)]
    pub latency_distribution: Vec<DistributionPoint>,
}

fn default_bucket_ms() -> u64 {
    crate::timeline::BUCKET_MS
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &BenchConfig,
        workers: usize,
        ok: u64,
        errors: Errors,
        latency: &Latency,
        uncorrected: Option<&Latency>,
        mut processes: Vec<ProcessUsage>,
        timeline: Vec<u64>,
    ) -> Self {
        let requests = ok + errors.total() - errors.connect;
        let secs = cfg.duration.as_secs_f64();
        for p in &mut processes {
            p.cpu_us_per_request = if requests > 0 {
                p.cpu_seconds * 1e6 / requests as f64
            } else {
                0.0
            };
        }
        Report {
            url: cfg.url.to_string(),
            protocol: cfg.protocol,
            mode: if cfg.rate.is_some() {
                "open".into()
            } else {
                "closed".into()
            },
            connections: cfg.connections,
            workers,
            duration_s: secs,
            target_rate: cfg.rate,
            pace_us: cfg
                .rate
                .map(|_| u64::try_from(cfg.pace.as_micros()).unwrap_or(u64::MAX)),
            requests,
            ok,
            errors,
            throughput_rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            latency: latency.summary(),
            latency_uncorrected: uncorrected.map(Latency::summary),
            processes,
            unix_time_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            timeline_bucket_ms: crate::timeline::BUCKET_MS,
            timeline,
            latency_distribution: latency.distribution(),
        }
    }

    /// A human-readable summary.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} {} ({:?}, {} connections, {} workers, {:.1}s{})",
            self.mode,
            self.url,
            self.protocol,
            self.connections,
            self.workers,
            self.duration_s,
            match (self.target_rate, self.pace_us) {
                (Some(r), Some(step)) => format!(", target {r:.0} req/s in {step} µs steps"),
                (Some(r), None) => format!(", target {r:.0} req/s"),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "  requests {}  ok {}  errors {}  throughput {:.1} req/s",
            self.requests,
            self.ok,
            self.errors.total(),
            self.throughput_rps
        );
        let e = &self.errors;
        if e.total() > 0 {
            let _ = writeln!(
                s,
                "  errors: connect {} timeout {} 4xx {} 5xx {} other {} grpc-status {}",
                e.connect, e.timeout, e.status_4xx, e.status_5xx, e.other, e.grpc_status
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency   p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            us(l.p50_us),
            us(l.p90_us),
            us(l.p95_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.p9999_us),
            us(l.max_us)
        );
        if let Some(u) = &self.latency_uncorrected {
            let _ = writeln!(
                s,
                "  (uncorrected p50 {}  p99 {}  p99.9 {})",
                us(u.p50_us),
                us(u.p99_us),
                us(u.p999_us)
            );
        }
        for p in &self.processes {
            let _ = writeln!(
                s,
                "  pid {} {}: cpu {:.2}s = {:.1} µs/req, rss peak {:.1} MiB",
                p.pid,
                p.name,
                p.cpu_seconds,
                p.cpu_us_per_request,
                p.rss_peak_bytes as f64 / 1048576.0
            );
        }
        s
    }

    /// CSV header matching [`Self::to_csv_row`].
    pub fn csv_header() -> &'static str {
        "url,protocol,mode,connections,duration_s,target_rate,requests,ok,errors,throughput_rps,p50_us,p90_us,p95_us,p99_us,p999_us,p9999_us,max_us,cpu_us_per_request,rss_peak_bytes"
    }

    /// One CSV row; CPU and RSS are the first sampled process's.
    pub fn to_csv_row(&self) -> String {
        let l = &self.latency;
        let p = self.processes.first();
        format!(
            "{},{:?},{},{},{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{:.2},{}",
            self.url,
            self.protocol,
            self.mode,
            self.connections,
            self.duration_s,
            self.target_rate.map(|r| r.to_string()).unwrap_or_default(),
            self.requests,
            self.ok,
            self.errors.total(),
            self.throughput_rps,
            l.p50_us,
            l.p90_us,
            l.p95_us,
            l.p99_us,
            l.p999_us,
            l.p9999_us,
            l.max_us,
            p.map_or(0.0, |p| p.cpu_us_per_request),
            p.map_or(0, |p| p.rss_peak_bytes),
        )
    }
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report written before the timeline and distribution existed still parses.
    #[test]
    fn old_reports_parse_with_empty_new_fields() {
        let old = r#"{"url":"http://x/","protocol":"http1","mode":"closed","connections":1,
            "workers":1,"duration_s":1.0,"target_rate":null,"requests":10,"ok":10,
            "errors":{"connect":0,"timeout":0,"status_4xx":0,"status_5xx":0,"other":0},
            "throughput_rps":10.0,"latency":{"p50_us":1,"p90_us":1,"p95_us":1,"p99_us":1,
            "p999_us":1,"p9999_us":1,"max_us":1,"mean_us":1.0},"latency_uncorrected":null,
            "processes":[]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert!(r.timeline.is_empty());
        assert!(r.latency_distribution.is_empty());
        assert_eq!(r.timeline_bucket_ms, 100);
        assert_eq!(r.unix_time_s, 0);
        assert_eq!(r.errors.grpc_status, 0);
    }

    #[test]
    fn grpc_status_errors_count_in_the_total() {
        let e = Errors {
            other: 1,
            grpc_status: 2,
            ..Errors::default()
        };
        let mut sum = Errors::default();
        sum.add(&e);
        sum.add(&e);
        assert_eq!(sum.grpc_status, 4);
        assert_eq!(sum.total(), 6);
    }
}
