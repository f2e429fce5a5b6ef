//! P2C peak-EWMA (linkerd): power of two random choices on latency estimate × pending requests.

use crate::select::select_two;
use crate::{Balancer, Endpoint, EndpointSet, Pick, PickContext, SlowStart, Timestamp};

/// Draws two endpoints and takes the one with the lower cost = decayed peak-EWMA latency ×
/// (in-flight + 1) / (slow-start scaled) weight. The estimator's decay time and default RTT
/// are per set: [`crate::EndpointOptions`].
#[derive(Debug, Default)]
pub struct PeakEwma {
    slow_start: SlowStart,
}

impl PeakEwma {
    /// P2C peak-EWMA with the given slow start.
    pub fn new(slow_start: SlowStart) -> Self {
        PeakEwma { slow_start }
    }

    /// The cost P2C compares (lower is better).
    pub fn cost(&self, ep: &Endpoint, now: Timestamp) -> f64 {
        // The 1 ns floor keeps pending requests counting once an idle estimate decays to ~0.
        let rtt = ep.rtt_estimate_ns(now).max(1.0);
        let pending = ep.in_flight().max(0) as f64;
        rtt * (pending + 1.0) / self.slow_start.effective_weight(ep, now)
    }
}

impl Balancer for PeakEwma {
    fn name(&self) -> &'static str {
        "p2c_ewma"
    }

    fn prepare(&self, set: &EndpointSet) {
        set.prepare_alias();
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        let (a, b) = select_two(set, ctx.now, &self.slow_start)?;
        let Some(b) = b else { return Some(a) };
        Some(
            if self.cost(b.endpoint, ctx.now) < self.cost(a.endpoint, ctx.now) {
                b
            } else {
                a
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, EndpointOptions, InFlight, ManualClock, Outcome};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn set(n: u16, clock: &ManualClock) -> EndpointSet {
        EndpointSet::from_weighted(
            (0..n).map(|i| (SocketAddr::from(([127, 0, 0, 1], i)), 1)),
            EndpointOptions::default(),
            clock.now(),
        )
    }

    fn port(b: &PeakEwma, s: &EndpointSet, now: Timestamp) -> u16 {
        b.pick(s, &PickContext::new(now))
            .unwrap()
            .endpoint
            .addr
            .port()
    }

    #[test]
    fn prefers_the_faster_endpoint_after_samples() {
        let clock = ManualClock::new();
        let s = set(2, &clock);
        s.endpoints()[0].record(ms(100), Outcome::Success, clock.now());
        s.endpoints()[1].record(ms(10), Outcome::Success, clock.now());
        let b = PeakEwma::default();
        for _ in 0..100 {
            assert_eq!(port(&b, &s, clock.now()), 1);
        }
    }

    #[test]
    fn pending_requests_penalize() {
        let clock = ManualClock::new();
        let s = set(2, &clock);
        s.endpoints()[0].record(ms(10), Outcome::Success, clock.now());
        s.endpoints()[1].record(ms(40), Outcome::Success, clock.now());
        let b = PeakEwma::default();
        assert_eq!(port(&b, &s, clock.now()), 0);
        // 10 ms × (4 + 1) > 40 ms × 1.
        let c = Clock::from(clock.clone());
        let pending: Vec<InFlight> = (0..4)
            .map(|_| s.endpoints()[0].start_at(&c, clock.now()))
            .collect();
        assert_eq!(port(&b, &s, clock.now()), 1);
        drop(pending);
    }

    #[test]
    fn decay_lets_a_once_slow_endpoint_back_in() {
        let clock = ManualClock::new();
        let s = set(2, &clock);
        let b = PeakEwma::default();
        s.endpoints()[0].record(ms(100), Outcome::Success, clock.now());
        s.endpoints()[1].record(ms(10), Outcome::Success, clock.now());
        assert_eq!(port(&b, &s, clock.now()), 1);
        // 30 s later endpoint 1 is still sampled at 10 ms; endpoint 0's estimate has decayed to
        // 100 ms × e^-3 ≈ 5 ms, so it gets tried again.
        clock.advance(Duration::from_secs(30));
        s.endpoints()[1].record(ms(10), Outcome::Success, clock.now());
        let e0 = s.endpoints()[0].ewma_latency(clock.now()).unwrap();
        assert!(e0 > ms(4) && e0 < ms(6), "{e0:?}");
        assert_eq!(port(&b, &s, clock.now()), 0);
    }

    #[test]
    fn unsampled_endpoints_use_the_default_rtt() {
        let clock = ManualClock::new();
        let s = set(2, &clock);
        let b = PeakEwma::default();
        s.endpoints()[0].record(ms(50), Outcome::Success, clock.now());
        assert_eq!(port(&b, &s, clock.now()), 1);
        s.endpoints()[0].record(
            ms(20),
            Outcome::Success,
            clock.now() + Duration::from_secs(60),
        );
        assert_eq!(
            port(&b, &s, clock.now() + Duration::from_secs(60)),
            1,
            "default decayed too"
        );
        let s2 = set(2, &clock);
        s2.endpoints()[0].record(ms(20), Outcome::Success, clock.now());
        assert_eq!(port(&b, &s2, clock.now()), 0);
    }

    #[test]
    fn spreads_over_many_endpoints_by_latency() {
        fastrand::seed(9);
        let clock = ManualClock::new();
        let s = set(20, &clock);
        for (i, ep) in s.endpoints().iter().enumerate() {
            ep.record(
                ms(if i == 0 { 500 } else { 10 }),
                Outcome::Success,
                clock.now(),
            );
        }
        let b = PeakEwma::default();
        let slow = (0..10_000)
            .filter(|_| port(&b, &s, clock.now()) == 0)
            .count();
        assert_eq!(slow, 0, "the slow endpoint loses every comparison");
    }
}
