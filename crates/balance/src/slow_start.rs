//! Slow start: a new or recovered endpoint's effective weight ramps up instead of jumping to
//! full share, so that cold caches and connection pools are not flooded at once.

use crate::{Endpoint, Timestamp};
use std::time::Duration;

/// How a new or recovered endpoint's weight ramps up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// Length of the ramp; zero turns slow start off.
    pub window: Duration,
    /// Fraction of its weight an endpoint gets at the start of the ramp (clamped to 1 %..=100 %).
    pub min_weight: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart::OFF
    }
}

impl SlowStart {
    /// No ramp: endpoints get their full weight as soon as they are available.
    pub const OFF: SlowStart = SlowStart {
        window: Duration::ZERO,
        min_weight: 0.1,
    };

    /// A ramp over `window` that starts at 10 % of the weight (Envoy's default floor).
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            min_weight: 0.1,
        }
    }

    /// Whether a ramp is configured.
    pub fn is_enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Fraction (in `min_weight..=1`) of its weight `ep` gets at `now`: linear from
    /// `min_weight` when its ramp began to 1 after `window`.
    pub fn factor(&self, ep: &Endpoint, now: Timestamp) -> f64 {
        if self.window.is_zero() {
            return 1.0;
        }
        let Some(from) = ep.slow_start_since() else {
            return 1.0;
        };
        let elapsed = now.saturating_duration_since(from);
        if elapsed >= self.window {
            return 1.0;
        }
        // A floor keeps a ramping endpoint reachable (and bounds rejection sampling).
        let min = self.min_weight.clamp(0.01, 1.0);
        min + (1.0 - min) * (elapsed.as_secs_f64() / self.window.as_secs_f64())
    }

    /// `ep`'s weight scaled by [`SlowStart::factor`].
    pub fn effective_weight(&self, ep: &Endpoint, now: Timestamp) -> f64 {
        f64::from(ep.weight) * self.factor(ep, now)
    }
}
