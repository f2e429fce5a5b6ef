//! Least request: power of two random choices on in-flight requests, weighted.

use crate::select::select_two;
use crate::{Balancer, EndpointSet, Pick, PickContext, SlowStart};

/// Draws two endpoints by weight and takes the one with fewer in-flight requests per unit of
/// (slow-start scaled) weight; ties go to the first draw, so idle endpoints split by weight.
#[derive(Debug, Default)]
pub struct LeastRequest {
    slow_start: SlowStart,
}

impl LeastRequest {
    /// Least request with the given slow start.
    pub fn new(slow_start: SlowStart) -> Self {
        LeastRequest { slow_start }
    }
}

impl Balancer for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn prepare(&self, set: &EndpointSet) {
        set.prepare_alias();
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        let (a, b) = select_two(set, ctx.now, &self.slow_start)?;
        let Some(b) = b else { return Some(a) };
        let load = |p: &Pick<'_>| {
            p.endpoint.in_flight().max(0) as f64
                / self.slow_start.effective_weight(p.endpoint, ctx.now)
        };
        Some(if load(&b) < load(&a) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointOptions, InFlight, Timestamp};
    use std::net::SocketAddr;

    fn set(weights: &[u32]) -> EndpointSet {
        EndpointSet::from_weighted(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (SocketAddr::from(([127, 0, 0, 1], i as u16)), w)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        )
    }

    fn ctx() -> PickContext {
        PickContext::new(Timestamp::ZERO)
    }

    #[test]
    fn prefers_fewer_in_flight() {
        let s = set(&[1, 1]);
        let busy: Vec<InFlight> = (0..5).map(|_| s.endpoints()[0].start()).collect();
        let lr = LeastRequest::default();
        for _ in 0..100 {
            assert_eq!(lr.pick(&s, &ctx()).unwrap().endpoint.addr.port(), 1);
        }
        drop(busy);
    }

    #[test]
    fn balances_in_flight_under_load() {
        fastrand::seed(11);
        let s = set(&[1; 10]);
        let lr = LeastRequest::default();
        // Hold every pick: P2C keeps the in-flight counts within a small spread.
        let guards: Vec<InFlight> = (0..1000)
            .map(|_| lr.pick(&s, &ctx()).unwrap().endpoint.start())
            .collect();
        let counts: Vec<i64> = s.endpoints().iter().map(|e| e.in_flight()).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 6, "{counts:?}");
        drop(guards);
    }

    #[test]
    fn weights_split_load() {
        fastrand::seed(5);
        let s = set(&[3, 1]);
        let lr = LeastRequest::default();
        lr.prepare(&s);
        // Idle: ties go to the first (weighted) draw, so picks follow weights.
        let mut idle = [0usize; 2];
        for _ in 0..40_000 {
            idle[lr.pick(&s, &ctx()).unwrap().endpoint.addr.port() as usize] += 1;
        }
        let share = idle[0] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        // Loaded: in-flight settles in proportion to weight.
        let guards: Vec<InFlight> = (0..400)
            .map(|_| lr.pick(&s, &ctx()).unwrap().endpoint.start())
            .collect();
        let heavy = s.endpoints()[0].in_flight();
        assert!((295..=305).contains(&heavy), "{heavy}");
        drop(guards);
    }
}
