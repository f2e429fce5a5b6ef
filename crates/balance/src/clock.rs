//! Monotonic time for load statistics: the system clock in production, a manual clock in tests.
//!
//! Timestamps are plain nanosecond counts so that endpoint statistics can keep them in atomics.

use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A point in monotonic time, in nanoseconds since the clock's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The clock's epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// The timestamp `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_nanos(d)))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

/// A duration in nanoseconds, saturating instead of truncating.
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where [`Timestamp`]s come from.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The process's monotonic clock (`std::time::Instant`).
    #[default]
    System,
    /// A clock that only moves when a test moves it.
    Manual(ManualClock),
}

impl Clock {
    /// The process's monotonic clock.
    pub fn system() -> Clock {
        Clock::System
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => system_now(),
            Clock::Manual(m) => m.now(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(m: ManualClock) -> Clock {
        Clock::Manual(m)
    }
}

// One epoch per process so that timestamps from every `Clock::System` are comparable.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn system_now() -> Timestamp {
    let epoch = *EPOCH.get_or_init(Instant::now);
    Timestamp(duration_nanos(epoch.elapsed()))
}

/// A clock driven by hand, for deterministic tests; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A manual clock at [`Timestamp::ZERO`].
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_nanos(d), Ordering::Relaxed);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let m = ManualClock::new();
        let c = Clock::from(m.clone());
        assert_eq!(c.now(), Timestamp::ZERO);
        m.advance(Duration::from_millis(5));
        assert_eq!(c.now().as_nanos(), 5_000_000);
        m.set(Timestamp::from_nanos(7));
        assert_eq!(c.now(), Timestamp::from_nanos(7));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = Clock::system();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert_eq!(
            (a + Duration::from_secs(1)).saturating_duration_since(a),
            Duration::from_secs(1)
        );
        assert_eq!(
            a.saturating_duration_since(b + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
