//! Round robin: each endpoint in turn, ignoring weights.

use crate::select::select;
use crate::{Balancer, EndpointSet, Pick, PickContext, SlowStart};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cycles through endpoints in order; one relaxed atomic increment per pick.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
    slow_start: SlowStart,
}

impl RoundRobin {
    /// Round robin with the given slow start (a ramping endpoint's turns are thinned).
    pub fn new(slow_start: SlowStart) -> Self {
        RoundRobin {
            next: AtomicUsize::new(0),
            slow_start,
        }
    }
}

impl Balancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        // Skipping an unavailable endpoint takes the next turn from the shared counter (rather
        // than the next index), so its share spreads evenly instead of doubling its neighbour's.
        select(set, ctx.now, &self.slow_start, || {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn set(n: usize) -> EndpointSet {
        EndpointSet::from_addrs((0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
    }

    fn ctx() -> PickContext {
        PickContext::new(Timestamp::ZERO)
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert!(RoundRobin::default().pick(&set(0), &ctx()).is_none());
    }

    #[test]
    fn unavailable_endpoints_share_out_evenly() {
        let s = set(4);
        s.endpoints()[1].set_healthy(false, Timestamp::ZERO);
        let rr = RoundRobin::default();
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            let p = rr.pick(&s, &ctx()).unwrap();
            assert!(!p.panic);
            counts[(p.endpoint.addr.port() - 1000) as usize] += 1;
        }
        assert_eq!(counts, [1000, 0, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn every_endpoint_gets_an_equal_share_per_cycle(n in 1usize..50, cycles in 1usize..5) {
            let s = set(n);
            let rr = RoundRobin::default();
            let mut counts = vec![0usize; n];
            for _ in 0..n * cycles {
                let ep = rr.pick(&s, &ctx()).unwrap().endpoint;
                counts[(ep.addr.port() - 1000) as usize] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == cycles));
        }
    }
}
