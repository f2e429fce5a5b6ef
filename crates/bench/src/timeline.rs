//! Throughput over time: completed requests per fixed-width bucket of the measured period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Width of one timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Width of one timeline bucket in milliseconds (as stored in reports).
pub const BUCKET_MS: u64 = 100;
/// Most buckets kept: one hour at 100 ms. Completions after the last kept bucket of a longer run
/// are not in the timeline (they still count in every total) and are counted in `dropped`.
pub const MAX_BUCKETS: usize = 36_000;

/// Completions per [`BUCKET`], counted from the start of the measured period. Shared by all
/// workers of a run (one allocation however many workers there are), so recording takes `&self`.
#[derive(Debug, Default)]
pub struct Timeline {
    counts: Vec<AtomicU64>,
    /// True when the run is longer than [`MAX_BUCKETS`] buckets.
    truncated: bool,
    /// Completions that fell beyond the last kept bucket of a truncated timeline.
    dropped: AtomicU64,
}

impl Timeline {
    /// A timeline covering `duration` (rounded up to whole buckets, at most [`MAX_BUCKETS`]).
    pub fn new(duration: Duration) -> Self {
        let wanted = duration.as_nanos().div_ceil(BUCKET.as_nanos()).max(1);
        let len = usize::try_from(wanted)
            .unwrap_or(MAX_BUCKETS)
            .min(MAX_BUCKETS);
        Timeline {
            counts: (0..len).map(|_| AtomicU64::new(0)).collect(),
            truncated: wanted > MAX_BUCKETS as u128,
            dropped: AtomicU64::new(0),
        }
    }

    /// Records one completion at `offset` from the start of the measured period. Requests sent
    /// before the end but completed after it land in the last bucket (unless the timeline was
    /// truncated, when they are dropped like every other completion past the last bucket).
    pub fn record(&self, offset: Duration) {
        let idx = usize::try_from(offset.as_nanos() / BUCKET.as_nanos()).unwrap_or(usize::MAX);
        let bucket = match self.counts.get(idx) {
            Some(b) => b,
            None if !self.truncated => match self.counts.last() {
                Some(b) => b,
                None => return,
            },
            None => &self.dropped,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, bucket by bucket.
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// All completions recorded so far (including dropped ones).
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.dropped()
    }

    /// Completions past the last bucket of a truncated timeline.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_100ms_wide_and_cover_the_duration() {
        let t = Timeline::new(Duration::from_millis(1_050));
        assert_eq!(t.counts().len(), 11);
        t.record(Duration::ZERO);
        t.record(Duration::from_millis(99));
        t.record(Duration::from_millis(100));
        t.record(Duration::from_millis(1_049));
        // Completed after the end (sent before it): counted in the last bucket.
        t.record(Duration::from_secs(5));
        let c = t.counts();
        assert_eq!(t.total(), 5);
        assert_eq!(c[0], 2);
        assert_eq!(c[1], 1);
        assert_eq!(c[10], 2);
        assert_eq!(c.iter().sum::<u64>(), 5);
        assert_eq!(t.dropped(), 0);
    }

    #[test]
    fn long_runs_are_bounded() {
        let t = Timeline::new(Duration::from_secs(10 * 3600));
        assert_eq!(t.counts().len(), MAX_BUCKETS);
        t.record(Duration::from_secs(3599));
        t.record(Duration::from_secs(3 * 3600));
        assert_eq!(t.counts()[MAX_BUCKETS - 10], 1);
        assert_eq!(t.counts().iter().sum::<u64>(), 1);
        assert_eq!(t.dropped(), 1);
        assert_eq!(t.total(), 2);
        assert_eq!(Timeline::new(Duration::ZERO).counts().len(), 1);
    }

    #[test]
    fn workers_share_one_timeline() {
        let t = std::sync::Arc::new(Timeline::new(Duration::from_millis(300)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for ms in [10, 20, 250] {
                        t.record(Duration::from_millis(ms));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.counts(), vec![8, 0, 4]);
    }
}
