//! The run history: one JSON report per line (JSON Lines), appended by every run and read back
//! for trend plots.

use crate::report::Report;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// Most runs read back from a history file (the newest ones).
pub const MAX_RUNS: usize = 1_000;

/// Longest history line read (longer lines are skipped): a report with a full one-hour timeline
/// is well below this.
const MAX_LINE_BYTES: usize = 4 << 20;

/// Appends `report` as one line to the history at `path`, creating the file if missing.
pub fn append(path: &Path, report: &Report) -> std::io::Result<()> {
    let mut line = serde_json::to_string(report)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write call per line, so concurrent appenders do not interleave within a line.
    f.write_all(line.as_bytes())
}

/// What [`read`] found.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The newest runs (at most the requested number), oldest first. Their `timeline` and
    /// `latency_distribution` are cleared: trends need only the summary figures.
    pub runs: Vec<Report>,
    /// Lines that were not a report (or too long), skipped.
    pub skipped: usize,
}

/// Reads the newest `max_runs` runs of the history at `path`. Memory stays bounded by
/// `max_runs` summaries whatever the file's size; a missing file is an empty history.
pub fn read(path: &Path, max_runs: usize) -> std::io::Result<History> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(f);
    let mut runs = std::collections::VecDeque::with_capacity(max_runs.min(MAX_RUNS) + 1);
    let mut skipped = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            // Too long: skip the rest of this line.
            skipped += 1;
            loop {
                buf.clear();
                let n = (&mut reader)
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut buf)?;
                if n == 0 || buf.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Report>(&buf) {
            Ok(mut r) => {
                r.timeline = Vec::new();
                r.latency_distribution = Vec::new();
                runs.push_back(r);
                if runs.len() > max_runs {
                    runs.pop_front();
                }
            }
            Err(_) => skipped += 1,
        }
    }
    Ok(History {
        runs: runs.into(),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Errors;

    fn report(rps: f64) -> Report {
        Report {
            url: "http://x/".into(),
            protocol: crate::Protocol::Http1,
            mode: "closed".into(),
            connections: 1,
            workers: 1,
            duration_s: 1.0,
            target_rate: None,
            pace_us: None,
            requests: 10,
            ok: 10,
            errors: Errors::default(),
            throughput_rps: rps,
            latency: crate::histogram::Percentiles::default(),
            latency_uncorrected: None,
            processes: vec![],
            unix_time_s: 1,
            timeline_bucket_ms: 100,
            timeline: vec![1, 2, 3],
            latency_distribution: vec![],
        }
    }

    #[test]
    fn appends_one_line_per_run_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        assert!(read(&path, 10).unwrap().runs.is_empty(), "missing = empty");
        append(&path, &report(1.0)).unwrap();
        append(&path, &report(2.0)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let h = read(&path, 10).unwrap();
        assert_eq!(h.runs.len(), 2);
        assert_eq!(h.runs[0].throughput_rps, 1.0);
        assert_eq!(h.runs[1].throughput_rps, 2.0);
        assert!(h.runs[0].timeline.is_empty(), "trimmed");
        assert_eq!(h.skipped, 0);
    }

    #[test]
    fn reading_keeps_only_the_newest_runs_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        for i in 0..25 {
            append(&path, &report(f64::from(i))).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"not json\n\n").unwrap();
        f.write_all(&vec![b'x'; MAX_LINE_BYTES + 10]).unwrap();
        f.write_all(b"\n").unwrap();
        drop(f);
        append(&path, &report(99.0)).unwrap();
        let h = read(&path, 10).unwrap();
        assert_eq!(h.runs.len(), 10);
        assert_eq!(h.runs[0].throughput_rps, 16.0);
        assert_eq!(h.runs[8].throughput_rps, 24.0);
        assert_eq!(h.runs[9].throughput_rps, 99.0);
        assert_eq!(h.skipped, 2);
    }
}
