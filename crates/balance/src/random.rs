//! Weighted random.

use crate::select::select;
use crate::{Balancer, EndpointSet, Pick, PickContext, SlowStart};

/// Picks an endpoint at random in proportion to its (slow-start scaled) weight.
#[derive(Debug, Default)]
pub struct Random {
    slow_start: SlowStart,
}

impl Random {
    /// Weighted random with the given slow start.
    pub fn new(slow_start: SlowStart) -> Self {
        Random { slow_start }
    }
}

impl Balancer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn prepare(&self, set: &EndpointSet) {
        set.prepare_alias();
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        if set.is_empty() {
            return None;
        }
        select(set, ctx.now, &self.slow_start, || set.sample())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointOptions, Timestamp};
    use std::net::SocketAddr;

    #[test]
    fn follows_weights() {
        fastrand::seed(3);
        let s = EndpointSet::from_weighted(
            [(1u16, 1u32), (2, 3), (3, 6)].map(|(p, w)| (SocketAddr::from(([127, 0, 0, 1], p)), w)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        let r = Random::default();
        r.prepare(&s);
        let mut counts = [0usize; 4];
        for _ in 0..100_000 {
            counts[r
                .pick(&s, &PickContext::new(Timestamp::ZERO))
                .unwrap()
                .endpoint
                .addr
                .port() as usize] += 1;
        }
        for (port, share) in [(1, 0.1), (2, 0.3), (3, 0.6)] {
            let got = counts[port] as f64 / 100_000.0;
            assert!((got - share).abs() < 0.01, "port {port}: {got}");
        }
    }
}
