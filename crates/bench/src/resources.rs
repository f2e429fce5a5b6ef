//! CPU time and memory of target processes, read from /proc (Linux).

use crate::report::ProcessUsage;

/// Samples CPU seconds (start and end) and peak RSS of a set of processes.
#[derive(Debug)]
pub struct ProcessSampler {
    procs: Vec<Sampled>,
    ticks_per_second: f64,
}

#[derive(Debug)]
struct Sampled {
    pid: u32,
    name: String,
    cpu_start: Option<f64>,
    rss_peak: u64,
}

impl ProcessSampler {
    pub fn new(pids: &[u32]) -> Self {
        ProcessSampler {
            procs: pids
                .iter()
                .map(|&pid| Sampled {
                    pid,
                    name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                    cpu_start: None,
                    rss_peak: 0,
                })
                .collect(),
            // USER_HZ is 100 on every Linux architecture this runs on.
            ticks_per_second: 100.0,
        }
    }

    /// Marks the start of the measured period.
    pub fn begin(&mut self) {
        for p in &mut self.procs {
            p.cpu_start = cpu_seconds(p.pid, self.ticks_per_second);
            p.rss_peak = p.rss_peak.max(rss_bytes(p.pid).unwrap_or(0));
        }
    }

    /// Records current RSS into the peak.
    pub fn sample_memory(&mut self) {
        for p in &mut self.procs {
            p.rss_peak = p.rss_peak.max(rss_bytes(p.pid).unwrap_or(0));
        }
    }

    /// Usage over the measured period (CPU per request is filled in by the report).
    pub fn finish(mut self) -> Vec<ProcessUsage> {
        self.sample_memory();
        self.procs
            .iter()
            .map(|p| ProcessUsage {
                pid: p.pid,
                name: p.name.clone(),
                cpu_seconds: match (p.cpu_start, cpu_seconds(p.pid, self.ticks_per_second)) {
                    (Some(a), Some(b)) => (b - a).max(0.0),
                    _ => 0.0,
                },
                cpu_us_per_request: 0.0,
                rss_peak_bytes: p.rss_peak,
            })
            .collect()
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32, hz: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / hz)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        let before = cpu_seconds(pid, 100.0).unwrap();
        // Burn a little CPU so the counter moves.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = cpu_seconds(pid, 100.0).unwrap();
        assert!(after > before, "{before} -> {after}");
        assert!(rss_bytes(pid).unwrap() > 1 << 20);
        let mut s = ProcessSampler::new(&[pid]);
        s.begin();
        let usage = s.finish();
        assert_eq!(usage[0].pid, pid);
        assert!(usage[0].rss_peak_bytes > 1 << 20);
    }
}
