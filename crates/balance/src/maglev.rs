//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! Each endpoint has a pseudo-random permutation of the M table slots (from two hashes of its
//! address); endpoints take turns claiming their next preferred free slot until the table is
//! full. Every endpoint ends up with M/N slots ± 1 (weighted: in proportion to weight), and a
//! change of one endpoint reassigns few slots beyond its own.

use crate::hash::{hash_addr, mix64, reduce};
use crate::{Balancer, Endpoint, EndpointSet, InvalidAlgorithm, Pick, PickContext};
use std::sync::Arc;

const EMPTY: u32 = u32::MAX;

/// Maglev parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevConfig {
    /// Table size M: a prime, much larger than the endpoint count (the paper suggests
    /// M ≥ 100·N for ≤ 1 % imbalance; default 65 537, 256 KiB per set).
    pub table_size: usize,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig { table_size: 65_537 }
    }
}

impl MaglevConfig {
    /// Checks that the table size is a prime (permutations only cover a prime-sized table).
    pub fn validate(&self) -> Result<(), InvalidAlgorithm> {
        if is_prime(self.table_size) {
            Ok(())
        } else {
            Err(InvalidAlgorithm(format!(
                "maglev: table_size {} is not a prime (next prime: {})",
                self.table_size,
                next_prime(self.table_size)
            )))
        }
    }
}

fn is_prime(m: usize) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= m {
        if m.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(m: usize) -> usize {
    (m.max(2)..).find(|&p| is_prime(p)).unwrap_or(65_537)
}

/// The lookup table of one endpoint set: slot → endpoint index.
pub(crate) struct MaglevTable {
    slots: Vec<u32>,
}

impl MaglevTable {
    /// Populates a table of `size` slots (rounded up to a prime).
    pub(crate) fn build(endpoints: &[Arc<Endpoint>], size: usize) -> MaglevTable {
        let m = next_prime(size);
        let n = endpoints.len();
        if n == 0 {
            return MaglevTable { slots: Vec::new() };
        }
        struct Perm {
            index: u32,
            pos: u64,
            skip: u64,
            weight: u64,
            credit: u64,
        }
        let m64 = m as u64;
        // Fill in address order so that the table does not depend on discovery order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| endpoints.get(i).map(|e| e.addr));
        let mut perms: Vec<Perm> = order
            .iter()
            .filter_map(|&i| {
                let ep = endpoints.get(i)?;
                Some(Perm {
                    index: i as u32,
                    pos: hash_addr(&ep.addr, 1) % m64,
                    skip: hash_addr(&ep.addr, 2) % (m64 - 1) + 1,
                    weight: u64::from(ep.weight.max(1)),
                    credit: 0,
                })
            })
            .collect();
        let max_weight = perms.iter().map(|p| p.weight).max().unwrap_or(1);
        let mut slots = vec![EMPTY; m];
        let mut filled = 0;
        // Weighted turns (as Envoy does): the heaviest endpoint claims a slot every round,
        // others once their accumulated weight reaches it.
        'fill: loop {
            for p in &mut perms {
                p.credit += p.weight;
                while p.credit >= max_weight {
                    p.credit -= max_weight;
                    // M is prime and 1 ≤ skip < M, so the walk visits every slot and finds a
                    // free one within M steps while the table is not full.
                    for _ in 0..m {
                        let c = p.pos as usize;
                        p.pos = (p.pos + p.skip) % m64;
                        if let Some(slot) = slots.get_mut(c)
                            && *slot == EMPTY
                        {
                            *slot = p.index;
                            filled += 1;
                            break;
                        }
                    }
                    if filled >= m {
                        break 'fill;
                    }
                }
            }
        }
        MaglevTable { slots }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    fn owner(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |&o| o as usize)
    }
}

/// Maglev consistent hashing; sticky per key, ignores slow start.
#[derive(Debug, Default)]
pub struct Maglev {
    config: MaglevConfig,
}

impl Maglev {
    /// A Maglev balancer (a non-prime table size is rounded up to the next prime).
    pub fn new(config: MaglevConfig) -> Self {
        Maglev { config }
    }

    fn table<'a>(&self, set: &'a EndpointSet) -> &'a MaglevTable {
        set.tables
            .maglev
            .get_or_init(|| MaglevTable::build(set.endpoints(), self.config.table_size))
    }
}

impl Balancer for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn prepare(&self, set: &EndpointSet) {
        self.table(set);
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        let eps = set.endpoints();
        if eps.is_empty() {
            return None;
        }
        let table = self.table(set);
        let h = mix64(ctx.key.unwrap_or_else(|| fastrand::u64(..)));
        let m = table.len();
        let slot = reduce(h, m);
        let first = eps.get(table.owner(slot))?;
        if set.is_panic_forced() {
            return Some(Pick::panic(first));
        }
        if first.is_available(ctx.now) {
            return Some(Pick::healthy(first));
        }
        // Neighbouring slots belong to effectively random endpoints, so a down endpoint's
        // keys spread evenly, and each key's fallback is stable while health is.
        crate::select::walk_to_available(set, first, slot, m, |i| table.owner(i), h, ctx.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointOptions, Timestamp};
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, (i >> 8) as u8, i as u8, 2], 9000))
    }

    fn endpoints(ids: &[usize]) -> Vec<Arc<Endpoint>> {
        EndpointSet::from_weighted(
            ids.iter().map(|&i| (addr(i), 1)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        )
        .endpoints()
        .to_vec()
    }

    /// Slot owners by address, so tables of different sets compare.
    fn owners(ids: &[usize]) -> Vec<SocketAddr> {
        let eps = endpoints(ids);
        let t = MaglevTable::build(&eps, 65_537);
        t.slots.iter().map(|&i| eps[i as usize].addr).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(2) && !is_prime(65_536) && !is_prime(1));
        assert_eq!(next_prime(65_536), 65_537);
        assert!(MaglevConfig::default().validate().is_ok());
        assert!(MaglevConfig { table_size: 1000 }.validate().is_err());
        assert_eq!(MaglevTable::build(&endpoints(&[1, 2]), 1000).len(), 1009);
    }

    #[test]
    fn picks_follow_the_table_and_keys_stick() {
        let s = EndpointSet::from_weighted(
            (0..7).map(|i| (addr(i), 1)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        let b = Maglev::default();
        b.prepare(&s);
        for k in 0..1000u64 {
            let ctx = PickContext::new(Timestamp::ZERO).with_key(k);
            let a = b.pick(&s, &ctx).unwrap().endpoint.addr;
            assert_eq!(a, b.pick(&s, &ctx).unwrap().endpoint.addr);
        }
    }

    #[test]
    fn discovery_order_does_not_matter() {
        assert_eq!(owners(&[1, 2, 3, 4, 5]), owners(&[5, 3, 1, 4, 2]));
    }

    #[test]
    fn weights_scale_slots() {
        let eps = EndpointSet::from_weighted(
            [(addr(1), 1), (addr(2), 3), (addr(3), 4)],
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        let t = MaglevTable::build(eps.endpoints(), 65_537);
        let mut counts = [0usize; 3];
        for &o in &t.slots {
            counts[o as usize] += 1;
        }
        for (i, w) in [1.0, 3.0, 4.0].iter().enumerate() {
            let expected = 65_537.0 * w / 8.0;
            assert!(
                (counts[i] as f64 - expected).abs() / expected < 0.01,
                "{counts:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn spread_is_within_one_percent(n in 1usize..=100) {
            let ids: Vec<usize> = (0..n).collect();
            let eps = endpoints(&ids);
            let t = MaglevTable::build(&eps, 65_537);
            prop_assert!(t.slots.iter().all(|&s| s != EMPTY));
            let mut counts = vec![0usize; n];
            for &o in &t.slots {
                counts[o as usize] += 1;
            }
            let mean = 65_537.0 / n as f64;
            for c in counts {
                prop_assert!((c as f64 - mean).abs() <= mean * 0.01, "{} vs mean {}", c, mean);
            }
        }

        #[test]
        fn removing_an_endpoint_moves_about_one_nth(n in 2usize..=100, victim in any::<prop::sample::Index>()) {
            let ids: Vec<usize> = (0..n).collect();
            let v = victim.index(n);
            let rest: Vec<usize> = ids.iter().copied().filter(|&i| i != v).collect();
            let before = owners(&ids);
            let after = owners(&rest);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let frac = moved as f64 / before.len() as f64;
            prop_assert!(frac <= 1.0 / n as f64 + 0.05, "moved {} with n = {}", frac, n);
            // Every slot the victim had must move.
            prop_assert!(before.iter().zip(&after).all(|(b, a)| *b != addr(v) || a != b));
        }

        #[test]
        fn adding_an_endpoint_moves_about_one_nth(n in 1usize..=100) {
            let ids: Vec<usize> = (0..n).collect();
            let more: Vec<usize> = (0..=n).collect();
            let before = owners(&ids);
            let after = owners(&more);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let frac = moved as f64 / before.len() as f64;
            prop_assert!(frac <= 1.0 / (n + 1) as f64 + 0.05, "moved {} with n = {}", frac, n);
        }
    }
}
