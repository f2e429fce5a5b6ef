//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
//! the n-th retry sleeps a uniformly random time in `[0, min(max, base · 2^(n-1)))`.

use std::time::Duration;

/// Backoff bounds: the first retry's ceiling is `base`, doubling per retry up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Cap on every delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 25 ms base, 250 ms cap (Envoy's defaults).
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// Ceiling of the delay before retry number `retry` (1 = first retry): `min(max, base · 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(63);
        let base = crate::window::nanos(self.base);
        let grown = base.checked_shl(shift).filter(|v| v >> shift == base);
        let cap = crate::window::nanos(self.max);
        Duration::from_nanos(grown.map_or(cap, |g| g.min(cap)))
    }

    /// Full-jitter delay before retry number `retry`, from a uniformly random `u64` (pure: same
    /// input, same output).
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = crate::window::nanos(self.ceiling(retry));
        // Uniform in [0, ceiling): the high 64 bits of ceiling × random / 2^64.
        Duration::from_nanos(((u128::from(ceiling) * u128::from(random)) >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceilings_double_then_cap() {
        let b = Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        };
        let c: Vec<u64> = (1..=6).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(c, [25, 50, 100, 200, 250, 250]);
        assert_eq!(b.ceiling(0), Duration::from_millis(25));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(250));
    }

    #[test]
    fn seeded_sequence_stays_within_each_ceiling() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=10 {
            let d = b.delay(retry, rng.u64(..));
            assert!(d < b.ceiling(retry), "retry {retry}: {d:?}");
        }
        assert_eq!(b.delay(3, 0), Duration::ZERO);
        assert!(b.delay(3, u64::MAX) < Duration::from_millis(100));
        assert!(b.delay(3, u64::MAX) > Duration::from_millis(99));
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_its_cap(
            base_ms in 0u64..10_000_000,
            max_ms in 0u64..10_000_000,
            retry in any::<u32>(),
            random in any::<u64>(),
        ) {
            let b = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let d = b.delay(retry, random);
            prop_assert!(d <= b.max);
            prop_assert!(d <= b.ceiling(retry));
            prop_assert!(b.ceiling(retry) <= b.max);
        }
    }
}
