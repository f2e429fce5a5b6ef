//! Ring hash (ketama-style consistent hashing).
//!
//! Each endpoint owns points on a 64-bit ring, placed by hashing its address with the point
//! number; a key goes to the owner of the first point at or after the key's hash. Adding or
//! removing an endpoint only moves the keys that land on its points (≈ 1/N).

use crate::hash::{hash_addr, mix64};
use crate::{Balancer, Endpoint, EndpointSet, InvalidAlgorithm, Pick, PickContext};
use std::sync::Arc;

/// Ring size parameters.
///
/// The ring gets `points_per_endpoint × N` points, raised to `min_ring_size` and capped at
/// `max_ring_size`, shared in proportion to weight. With equal weights and the defaults, each
/// endpoint has 100 points from N = 11 up to 41 943 endpoints, so its points do not depend on
/// the others and only ≈ 1/N of keys move when one comes or goes (each endpoint's share is
/// within about ±10 % of 1/N: the spread of 100 points). Below 11 endpoints the 1024-point
/// minimum spreads load better but rescales every endpoint's points when N changes, which
/// moves some extra keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHashConfig {
    /// Fewest points on the ring (Envoy's default: 1024).
    pub min_ring_size: usize,
    /// Points per endpoint of average weight (ketama uses 160; 100 keeps large rings smaller).
    pub points_per_endpoint: usize,
    /// Most points on the ring (12 bytes each).
    pub max_ring_size: usize,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            min_ring_size: 1024,
            points_per_endpoint: 100,
            max_ring_size: 1 << 22,
        }
    }
}

impl RingHashConfig {
    /// Checks that sizes are non-zero and `min_ring_size <= max_ring_size`.
    pub fn validate(&self) -> Result<(), InvalidAlgorithm> {
        if self.min_ring_size == 0 || self.points_per_endpoint == 0 || self.max_ring_size == 0 {
            return Err(InvalidAlgorithm(
                "ring_hash: ring sizes and points per endpoint must be at least 1".into(),
            ));
        }
        if self.min_ring_size > self.max_ring_size {
            return Err(InvalidAlgorithm(format!(
                "ring_hash: min_ring_size {} exceeds max_ring_size {}",
                self.min_ring_size, self.max_ring_size
            )));
        }
        Ok(())
    }
}

/// The sorted ring of one endpoint set.
pub(crate) struct Ring {
    /// Point positions, ascending (searched without touching `owners`).
    hashes: Vec<u64>,
    /// Endpoint index owning each point.
    owners: Vec<u32>,
    /// `starts[b]` = first point whose top `bits` bits are ≥ b: narrows the search to the ~2
    /// points of one bucket, instead of ~20 cache-missing binary-search steps on a large ring.
    starts: Vec<u32>,
    bits: u32,
}

impl Ring {
    pub(crate) fn build(endpoints: &[Arc<Endpoint>], config: &RingHashConfig) -> Ring {
        let n = endpoints.len();
        if n == 0 {
            return Ring::from_points(Vec::new());
        }
        let size = config
            .points_per_endpoint
            .max(1)
            .saturating_mul(n)
            .max(config.min_ring_size)
            .min(config.max_ring_size.max(1))
            .max(n);
        let total_weight: f64 = endpoints.iter().map(|e| f64::from(e.weight)).sum();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(size + n);
        for (i, ep) in endpoints.iter().enumerate() {
            let share = size as f64 * f64::from(ep.weight) / total_weight;
            let count = (share.round() as u64).max(1);
            let base = hash_addr(&ep.addr, 0);
            for j in 0..count {
                // Point j of an endpoint never depends on other endpoints or on its count, so
                // a rescaled ring keeps every point it still has.
                points.push((mix64(base ^ mix64(j + 1)), i as u32));
            }
        }
        // Ties (a 64-bit collision) go to the lower address, not the discovery order.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let addr = |i: u32| endpoints.get(i as usize).map(|e| e.addr);
                addr(a.1).cmp(&addr(b.1))
            })
        });
        Ring::from_points(points)
    }

    /// A ring from points sorted by position.
    fn from_points(points: Vec<(u64, u32)>) -> Ring {
        let hashes: Vec<u64> = points.iter().map(|p| p.0).collect();
        let bits = (hashes.len() / 2)
            .max(1)
            .next_power_of_two()
            .trailing_zeros();
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            while hashes.get(i).is_some_and(|&h| bucket(h, bits) < b) {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(hashes.len() as u32);
        Ring {
            owners: points.iter().map(|p| p.1).collect(),
            hashes,
            starts,
            bits,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Index of the first point at or after `h`, wrapping past the top of the ring.
    fn position(&self, h: u64) -> usize {
        let b = bucket(h, self.bits);
        let lo = self.starts.get(b).map_or(0, |&x| x as usize);
        let hi = self.starts.get(b + 1).map_or(lo, |&x| x as usize);
        let i = lo
            + self
                .hashes
                .get(lo..hi)
                .map_or(0, |r| r.partition_point(|&x| x < h));
        if i >= self.hashes.len() { 0 } else { i }
    }

    fn owner(&self, pos: usize) -> usize {
        self.owners.get(pos).map_or(0, |&o| o as usize)
    }
}

/// The bucket of ring position `h`: its top `bits` bits.
fn bucket(h: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (h >> (64 - bits)) as usize
    }
}

/// Consistent hashing on a ketama-style ring; sticky per key, ignores slow start.
#[derive(Debug, Default)]
pub struct RingHash {
    config: RingHashConfig,
}

impl RingHash {
    /// A ring-hash balancer with the given ring sizes.
    pub fn new(config: RingHashConfig) -> Self {
        RingHash { config }
    }

    fn ring<'a>(&self, set: &'a EndpointSet) -> &'a Ring {
        set.tables
            .ring
            .get_or_init(|| Ring::build(set.endpoints(), &self.config))
    }
}

impl Balancer for RingHash {
    fn name(&self) -> &'static str {
        "ring_hash"
    }

    fn prepare(&self, set: &EndpointSet) {
        self.ring(set);
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        let eps = set.endpoints();
        if eps.is_empty() {
            return None;
        }
        let ring = self.ring(set);
        let h = mix64(ctx.key.unwrap_or_else(|| fastrand::u64(..)));
        let pos = ring.position(h);
        let first = eps.get(ring.owner(pos))?;
        if set.is_panic_forced() {
            return Some(Pick::panic(first));
        }
        if first.is_available(ctx.now) {
            return Some(Pick::healthy(first));
        }
        // Clockwise to the next available owner, as ketama does: the key's new home is stable
        // while health is, and a down endpoint's keys spread over many others.
        crate::select::walk_to_available(set, first, pos, ring.len(), |i| ring.owner(i), h, ctx.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointOptions, Timestamp};
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 8080))
    }

    fn set_of(ids: &[usize]) -> EndpointSet {
        EndpointSet::from_weighted(
            ids.iter().map(|&i| (addr(i), 1)),
            EndpointOptions::default(),
            Timestamp::ZERO,
        )
    }

    fn owners(set: &EndpointSet, keys: &[u64]) -> Vec<SocketAddr> {
        let b = RingHash::default();
        b.prepare(set);
        keys.iter()
            .map(|&k| {
                let ctx = PickContext::new(Timestamp::ZERO).with_key(k);
                b.pick(set, &ctx).unwrap().endpoint.addr
            })
            .collect()
    }

    #[test]
    fn same_key_same_endpoint_and_ring_sizes() {
        let s = set_of(&[1, 2, 3]);
        let keys: Vec<u64> = (0..100).collect();
        assert_eq!(owners(&s, &keys), owners(&s, &keys));
        assert_eq!(
            s.tables.ring.get().unwrap().len(),
            1023,
            "3 × round(1024 / 3)"
        );
        let big = set_of(&(0..50).collect::<Vec<_>>());
        owners(&big, &[1]);
        assert_eq!(big.tables.ring.get().unwrap().len(), 5000);
    }

    #[test]
    fn bucket_index_agrees_with_binary_search() {
        for n in [1usize, 2, 3, 7, 40, 300] {
            let eps = set_of(&(0..n).collect::<Vec<_>>()).endpoints().to_vec();
            let ring = Ring::build(&eps, &RingHashConfig::default());
            let mut probes: Vec<u64> = ring
                .hashes
                .iter()
                .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)])
                .collect();
            probes.extend([0, u64::MAX, 1 << 63]);
            probes.extend((0..2000).map(|_| fastrand::u64(..)));
            for h in probes {
                let i = ring.hashes.partition_point(|&x| x < h);
                let expected = if i == ring.len() { 0 } else { i };
                assert_eq!(ring.position(h), expected, "n={n} h={h}");
            }
        }
    }

    #[test]
    fn discovery_order_does_not_matter() {
        let keys: Vec<u64> = (0..2000).map(|k| k * 7919).collect();
        assert_eq!(
            owners(&set_of(&[1, 2, 3, 4]), &keys),
            owners(&set_of(&[4, 2, 1, 3]), &keys)
        );
    }

    #[test]
    fn weights_scale_shares() {
        let s = EndpointSet::from_weighted(
            [(addr(1), 1), (addr(2), 3)],
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        let keys: Vec<u64> = (0..40_000).collect();
        let heavy = owners(&s, &keys).iter().filter(|&&a| a == addr(2)).count();
        let share = heavy as f64 / keys.len() as f64;
        assert!((share - 0.75).abs() < 0.06, "{share}");
    }

    #[test]
    fn small_sets_move_a_bounded_share() {
        let keys: Vec<u64> = (0..20_000).map(|k| fastrand::u64(..) ^ k).collect();
        for n in 2..=10 {
            let ids: Vec<usize> = (0..n).collect();
            let before = owners(&set_of(&ids), &keys);
            let after = owners(&set_of(&ids[1..]), &keys);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let frac = moved as f64 / keys.len() as f64;
            assert!(frac <= 1.0 / n as f64 + 0.25, "n={n}: {frac}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn removing_an_endpoint_moves_only_its_keys(n in 12usize..80, victim in any::<prop::sample::Index>(), seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let keys: Vec<u64> = (0..20_000).map(|_| rng.u64(..)).collect();
            let ids: Vec<usize> = (0..n).collect();
            let v = victim.index(n);
            let rest: Vec<usize> = ids.iter().copied().filter(|&i| i != v).collect();
            let before = owners(&set_of(&ids), &keys);
            let after = owners(&set_of(&rest), &keys);
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b != a {
                    prop_assert_eq!(*b, addr(v), "only the removed endpoint's keys move");
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            // 100 points per endpoint: its share is 1/N within ±10 % (1σ); allow 5σ + noise.
            prop_assert!(frac <= 1.5 / n as f64 + 0.01, "moved {} of 1/{}", frac, n);
        }

        #[test]
        fn adding_an_endpoint_moves_only_keys_to_it(n in 11usize..80, seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let keys: Vec<u64> = (0..20_000).map(|_| rng.u64(..)).collect();
            let ids: Vec<usize> = (0..n).collect();
            let more: Vec<usize> = (0..=n).collect();
            let before = owners(&set_of(&ids), &keys);
            let after = owners(&set_of(&more), &keys);
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b != a {
                    prop_assert_eq!(*a, addr(n), "keys only move to the new endpoint");
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            prop_assert!(frac <= 1.5 / (n + 1) as f64 + 0.01, "moved {} of 1/{}", frac, n + 1);
            prop_assert!(frac >= 0.5 / (n + 1) as f64 - 0.01, "moved {} of 1/{}", frac, n + 1);
        }
    }
}
