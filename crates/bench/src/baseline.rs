//! Comparison of a run against a baseline report, for regression gates in CI.

use crate::report::Report;
use serde::Serialize;

/// Change of one figure between baseline and current run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delta {
    pub metric: &'static str,
    pub baseline: f64,
    pub current: f64,
    /// Relative change in percent (positive = larger now).
    pub change_pct: f64,
    /// True when the change is worse than the threshold.
    pub regression: bool,
}

/// All compared figures and whether any regressed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub threshold_pct: f64,
    pub deltas: Vec<Delta>,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.deltas.iter().any(|d| d.regression)
    }

    pub fn to_table(&self) -> String {
        let mut s = format!("vs baseline (threshold {:.1}%):\n", self.threshold_pct);
        for d in &self.deltas {
            s.push_str(&format!(
                "  {:<22} {:>12.1} -> {:>12.1}  {:>+7.1}%{}\n",
                d.metric,
                d.baseline,
                d.current,
                d.change_pct,
                if d.regression { "  REGRESSION" } else { "" }
            ));
        }
        s
    }
}

/// Compares `current` with `baseline`; a figure regresses when it is worse by more than `threshold_pct`.
pub fn compare(baseline: &Report, current: &Report, threshold_pct: f64) -> Comparison {
    // (name, baseline, current, higher_is_better)
    let mut figures = vec![
        (
            "throughput_rps",
            baseline.throughput_rps,
            current.throughput_rps,
            true,
        ),
        (
            "p50_us",
            baseline.latency.p50_us as f64,
            current.latency.p50_us as f64,
            false,
        ),
        (
            "p99_us",
            baseline.latency.p99_us as f64,
            current.latency.p99_us as f64,
            false,
        ),
        (
            "p999_us",
            baseline.latency.p999_us as f64,
            current.latency.p999_us as f64,
            false,
        ),
        (
            "error_rate",
            error_rate(baseline),
            error_rate(current),
            false,
        ),
    ];
    if let (Some(b), Some(c)) = (baseline.processes.first(), current.processes.first()) {
        figures.push((
            "cpu_us_per_request",
            b.cpu_us_per_request,
            c.cpu_us_per_request,
            false,
        ));
        figures.push((
            "rss_peak_bytes",
            b.rss_peak_bytes as f64,
            c.rss_peak_bytes as f64,
            false,
        ));
    }
    let deltas = figures
        .into_iter()
        .map(|(metric, b, c, higher_is_better)| {
            let change_pct = if b == 0.0 {
                if c == 0.0 { 0.0 } else { 100.0 }
            } else {
                (c - b) / b * 100.0
            };
            let worse = if higher_is_better {
                -change_pct
            } else {
                change_pct
            };
            Delta {
                metric,
                baseline: b,
                current: c,
                change_pct,
                regression: worse > threshold_pct,
            }
        })
        .collect();
    Comparison {
        threshold_pct,
        deltas,
    }
}

fn error_rate(r: &Report) -> f64 {
    if r.requests == 0 {
        0.0
    } else {
        r.errors.total() as f64 / r.requests as f64 * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Errors;

    fn report(rps: f64, p99: u64) -> Report {
        Report {
            url: "http://x/".into(),
            protocol: crate::Protocol::Http1,
            mode: "closed".into(),
            connections: 1,
            workers: 1,
            duration_s: 1.0,
            target_rate: None,
            pace_us: None,
            requests: 1000,
            ok: 1000,
            errors: Errors::default(),
            throughput_rps: rps,
            latency: crate::histogram::Percentiles {
                p50_us: 100,
                p99_us: p99,
                p999_us: p99,
                ..Default::default()
            },
            latency_uncorrected: None,
            processes: vec![],
            unix_time_s: 0,
            timeline_bucket_ms: 100,
            timeline: vec![],
            latency_distribution: vec![],
        }
    }

    #[test]
    fn synthetic_regression_is_flagged() {
        let base = report(10_000.0, 1_000);
        assert!(!compare(&base, &report(9_800.0, 1_050), 10.0).regressed());
        let slower = compare(&base, &report(8_000.0, 1_000), 10.0);
        assert!(slower.regressed());
        assert!(
            slower
                .deltas
                .iter()
                .any(|d| d.metric == "throughput_rps" && d.regression)
        );
        let tail = compare(&base, &report(10_000.0, 1_500), 10.0);
        assert!(
            tail.deltas
                .iter()
                .any(|d| d.metric == "p99_us" && d.regression)
        );
        assert!(
            !compare(&base, &report(12_000.0, 500), 10.0).regressed(),
            "improvements are not regressions"
        );
    }
}
