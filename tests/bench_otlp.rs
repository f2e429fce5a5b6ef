//! `otlp-mesh bench-otlp` without Rotel: otlp-mesh forwards realistic OTLP/gRPC load to the sink,
//! and the JSON report says every acknowledged span arrived, with CPU and RSS of the forwarder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

#[test]
fn bench_otlp_forwards_every_span_and_reports_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("otlp.json");
    let mut p = Proc::spawn(&[
        "bench-otlp",
        "--skip-rotel",
        "-d",
        "1s",
        "--warmup",
        "300ms",
        "--spans",
        "50",
        "--compression",
        "gzip,none",
        "-c",
        "2",
        "--streams",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    p.wait_exit_blocking(Duration::from_secs(60));
    assert!(p.status_success(), "bench-otlp failed: {}", p.stderr());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let all = v["measurements"].as_array().unwrap();
    // otlp-mesh and (skipped) Rotel for each compression.
    assert_eq!(all.len(), 4, "{v}");
    for m in all {
        assert_eq!(m["spans_per_request"], 50, "{m}");
        if m["target"] == "rotel" {
            assert_eq!(m["status"], "skipped", "{m}");
            assert_eq!(m["reason"], "--skip-rotel", "{m}");
            continue;
        }
        assert_eq!(m["target"], "otlp-mesh");
        assert_eq!(m["status"], "measured", "{m}");
        let r = &m["report"];
        let sent = r["spans_sent"].as_u64().unwrap();
        assert!(sent >= 1000, "{r}");
        assert_eq!(sent % 50, 0, "{r}");
        assert_eq!(r["spans_delivered"].as_u64().unwrap(), sent, "{r}");
        assert_eq!(r["spans_lost"], 0, "{r}");
        assert_eq!(r["requests_failed"], 0, "{r}");
        assert!(
            r["delivered_spans_per_second"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(r["spans_per_cpu_second"].as_f64().unwrap() > 0.0, "{r}");
        let span_bytes = r["span_bytes"].as_u64().unwrap();
        assert!((450..=560).contains(&span_bytes), "{r}");
        let proc = &r["processes"][0];
        assert!(proc["cpu_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(proc["rss_peak_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
        assert!(m["vs_rotel_spans_per_cpu"].is_null());
    }
    let comps: Vec<_> = all
        .iter()
        .filter(|m| m["target"] == "otlp-mesh")
        .map(|m| m["compression"].as_str().unwrap())
        .collect();
    assert_eq!(comps, ["gzip", "none"]);
    assert!(p.stdout().contains("otlp-mesh"), "{}", p.stdout());
}
