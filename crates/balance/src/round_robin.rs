use crate::{Balancer, Endpoint, EndpointSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cycles through endpoints in order; one relaxed atomic increment per pick.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick<'a>(&self, set: &'a EndpointSet) -> Option<&'a Arc<Endpoint>> {
        let eps = set.endpoints();
        if eps.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % eps.len();
        eps.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn set(n: usize) -> EndpointSet {
        EndpointSet::from_addrs((0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert!(RoundRobin::default().pick(&set(0)).is_none());
    }

    proptest! {
        #[test]
        fn every_endpoint_gets_an_equal_share_per_cycle(n in 1usize..50, cycles in 1usize..5) {
            let s = set(n);
            let rr = RoundRobin::default();
            let mut counts = vec![0usize; n];
            for _ in 0..n * cycles {
                let ep = rr.pick(&s).unwrap();
                counts[(ep.addr.port() - 1000) as usize] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == cycles));
        }
    }
}
