//! Smooth weighted round robin (nginx's algorithm), lock-free.
//!
//! nginx keeps a `current_weight` per peer and, per pick, adds each peer's weight, takes the
//! peer with the largest value and subtracts the total from it: O(n) per pick and a shared
//! mutable state that would serialize every request. With static weights that sequence is
//! periodic (period Σw/gcd), so it is computed once per endpoint set and a pick is one atomic
//! increment and a table read; concurrent picks take consecutive slots, so every full period
//! still carries exact weights, interleaved exactly as nginx interleaves them.

use crate::select::select;
use crate::{Balancer, Endpoint, EndpointSet, Pick, PickContext, SlowStart};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept (4 MiB of `u32`).
const MAX_SCHEDULE: u64 = 1 << 20;
/// Build work allowed (period × distinct weights steps, roughly 50 ms).
const BUILD_BUDGET: u64 = 1 << 26;

/// One period of the smooth weighted round-robin sequence.
pub(crate) enum Schedule {
    /// Equal weights: the sequence is plain round robin over `n` endpoints.
    Uniform(usize),
    /// Endpoint indices in nginx order. `exact` is false when weights had to be scaled down
    /// to keep the period within `MAX_SCHEDULE` (shares then match weights only approximately).
    Table { order: Vec<u32>, exact: bool },
}

impl Schedule {
    pub(crate) fn for_endpoints(endpoints: &[Arc<Endpoint>]) -> Schedule {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        Schedule::build(&weights)
    }

    /// The schedule for these weights (0 counts as 1).
    pub(crate) fn build(weights: &[u32]) -> Schedule {
        let n = weights.len();
        let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1))).collect();
        if w.windows(2).all(|p| p[0] == p[1]) || n as u64 > MAX_SCHEDULE {
            return Schedule::Uniform(n);
        }
        // nginx's sequence for k·w is its sequence for w repeated k times (every comparison
        // scales by k), so dividing by the gcd keeps it exact and shortens the period.
        reduce_by_gcd(&mut w);
        let mut exact = true;
        loop {
            let total: u64 = w.iter().sum();
            let classes = w.iter().collect::<std::collections::BTreeSet<_>>().len() as u64;
            if total <= MAX_SCHEDULE && total.saturating_mul(classes) <= BUILD_BUDGET {
                break;
            }
            exact = false;
            let target = (MAX_SCHEDULE.min(BUILD_BUDGET / classes) * 9 / 10).max(n as u64);
            for x in &mut w {
                *x = ((*x as f64 * target as f64 / total as f64).round() as u64).max(1);
            }
            reduce_by_gcd(&mut w);
        }
        Schedule::Table {
            order: nginx_sequence(&w),
            exact,
        }
    }

    /// The endpoint index for the `k`-th pick.
    pub(crate) fn at(&self, k: usize) -> usize {
        match self {
            Schedule::Uniform(n) => k.checked_rem(*n).unwrap_or(0),
            Schedule::Table { order, .. } => k
                .checked_rem(order.len())
                .and_then(|i| order.get(i))
                .map_or(0, |&i| i as usize),
        }
    }

    /// Length of one period.
    pub(crate) fn len(&self) -> usize {
        match self {
            Schedule::Uniform(n) => *n,
            Schedule::Table { order, .. } => order.len(),
        }
    }

    /// Whether shares match weights exactly over each period.
    pub(crate) fn is_exact(&self) -> bool {
        match self {
            Schedule::Uniform(_) => true,
            Schedule::Table { exact, .. } => *exact,
        }
    }
}

fn reduce_by_gcd(w: &mut [u64]) {
    let g = w.iter().fold(0, |g, &x| gcd(g, x));
    if g > 1 {
        for x in w {
            *x /= g;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of nginx's sequence, in O(period × distinct weights) instead of O(period × n).
///
/// Endpoints of equal weight receive identical increments, so among them the one picked least
/// often (lowest index on ties) has the largest `current_weight`: each weight class is served in
/// index order, and only its next member competes. Before step `t` (1-based) a member picked `q`
/// times holds `t·w − total·q`; the step goes to the largest, ties to the lowest index — as in
/// nginx's scan, which keeps the first maximum.
fn nginx_sequence(w: &[u64]) -> Vec<u32> {
    struct Class {
        weight: i64,
        members: Vec<u32>,
        picks: u64,
    }
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &x) in w.iter().enumerate() {
        by_weight.entry(x).or_default().push(i as u32);
    }
    let mut classes: Vec<Class> = by_weight
        .into_iter()
        .map(|(weight, members)| Class {
            weight: weight as i64,
            members,
            picks: 0,
        })
        .collect();
    let total: u64 = w.iter().sum();
    let mut order = Vec::with_capacity(total as usize);
    for t in 1..=total as i64 {
        let mut best: Option<(i64, u32, usize)> = None;
        for (ci, c) in classes.iter().enumerate() {
            let k = c.members.len() as u64;
            let Some(&member) = c.members.get((c.picks % k) as usize) else {
                continue;
            };
            let value = t * c.weight - total as i64 * (c.picks / k) as i64;
            if best.is_none_or(|(bv, bm, _)| value > bv || (value == bv && member < bm)) {
                best = Some((value, member, ci));
            }
        }
        let Some((_, member, ci)) = best else { break };
        order.push(member);
        if let Some(c) = classes.get_mut(ci) {
            c.picks += 1;
        }
    }
    order
}

/// nginx's smooth weighted round robin: exact weights per period, interleaved.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    next: AtomicUsize,
    slow_start: SlowStart,
}

impl WeightedRoundRobin {
    /// Smooth weighted round robin with the given slow start (a ramping endpoint's turns are
    /// thinned; the turns it gives up go to whoever is next).
    pub fn new(slow_start: SlowStart) -> Self {
        WeightedRoundRobin {
            next: AtomicUsize::new(0),
            slow_start,
        }
    }

    fn schedule<'a>(&self, set: &'a EndpointSet) -> &'a Schedule {
        set.tables
            .schedule
            .get_or_init(|| Schedule::for_endpoints(set.endpoints()))
    }
}

impl Balancer for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn prepare(&self, set: &EndpointSet) {
        self.schedule(set);
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        if set.is_empty() {
            return None;
        }
        let schedule = self.schedule(set);
        // An unavailable endpoint's turn is skipped by taking the next slot of the shared
        // sequence, so its share spreads over the others by weight.
        select(set, ctx.now, &self.slow_start, || {
            schedule.at(self.next.fetch_add(1, Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointOptions, Timestamp};
    use proptest::prelude::*;
    use std::net::SocketAddr;

    /// nginx's `ngx_http_upstream_get_peer`, verbatim in spirit: the reference.
    fn nginx(weights: &[u32], picks: usize) -> Vec<u32> {
        let w: Vec<i64> = weights.iter().map(|&x| i64::from(x.max(1))).collect();
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut out = Vec::new();
        for _ in 0..picks {
            let mut best: Option<usize> = None;
            for i in 0..w.len() {
                current[i] += w[i];
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let b = best.unwrap();
            current[b] -= total;
            out.push(b as u32);
        }
        out
    }

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

    fn picks(weights: &[u32], count: usize) -> Vec<u32> {
        let s = set(weights);
        let b = WeightedRoundRobin::default();
        b.prepare(&s);
        (0..count)
            .map(|_| {
                let p = b.pick(&s, &PickContext::new(Timestamp::ZERO)).unwrap();
                u32::from(p.endpoint.addr.port())
            })
            .collect()
    }

    #[test]
    fn matches_nginx_for_5_1_1() {
        // a a b a c a a, as in nginx's commit message.
        assert_eq!(
            picks(&[5, 1, 1], 14),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn common_factor_keeps_the_sequence() {
        assert_eq!(picks(&[10, 2, 2], 14), nginx(&[10, 2, 2], 14));
        assert_eq!(Schedule::build(&[10, 2, 2]).len(), 7);
    }

    #[test]
    fn equal_weights_are_round_robin() {
        assert_eq!(picks(&[3, 3, 3], 6), [0, 1, 2, 0, 1, 2]);
        assert!(matches!(Schedule::build(&[3, 3, 3]), Schedule::Uniform(3)));
    }

    #[test]
    fn oversized_periods_are_scaled_not_refused() {
        let weights: Vec<u32> = (0..50).map(|i| 1_000_000 + i * 7919).collect();
        let s = Schedule::build(&weights);
        assert!(!s.is_exact());
        assert!(s.len() as u64 <= MAX_SCHEDULE);
        let mut counts = vec![0usize; 50];
        for k in 0..s.len() {
            counts[s.at(k)] += 1;
        }
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (i, &c) in counts.iter().enumerate() {
            let expected = s.len() as f64 * f64::from(weights[i]) / total;
            assert!(
                (c as f64 - expected).abs() <= expected * 0.01 + 1.0,
                "{i}: {c} vs {expected}"
            );
        }
    }

    #[test]
    fn skipped_turns_spread_by_weight() {
        let s = set(&[2, 1, 1, 4]);
        s.endpoints()[3].set_healthy(false, Timestamp::ZERO);
        let b = WeightedRoundRobin::default();
        let mut counts = [0usize; 4];
        for _ in 0..8000 {
            counts[b
                .pick(&s, &PickContext::new(Timestamp::ZERO))
                .unwrap()
                .endpoint
                .addr
                .port() as usize] += 1;
        }
        assert_eq!(counts, [4000, 2000, 2000, 0]);
    }

    #[test]
    fn concurrent_picks_keep_exact_weights() {
        let weights = [5u32, 1, 1, 3];
        let s = set(&weights);
        let b = WeightedRoundRobin::default();
        b.prepare(&s);
        // 4 threads × 1000 periods of 10: every slot is taken exactly once.
        let counts: Vec<[usize; 4]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut c = [0usize; 4];
                        for _ in 0..10_000 {
                            let p = b.pick(&s, &PickContext::new(Timestamp::ZERO)).unwrap();
                            c[p.endpoint.addr.port() as usize] += 1;
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: Vec<usize> = (0..4).map(|i| counts.iter().map(|c| c[i]).sum()).collect();
        assert_eq!(total, [20_000, 4_000, 4_000, 12_000]);
    }

    proptest! {
        #[test]
        fn is_exactly_nginx(weights in prop::collection::vec(1u32..12, 1..9), cycles in 1usize..3) {
            let total: u32 = weights.iter().sum();
            let count = total as usize * cycles;
            prop_assert_eq!(picks(&weights, count), nginx(&weights, count));
        }

        #[test]
        fn every_period_has_exact_weights(weights in prop::collection::vec(1u32..40, 1..30)) {
            let total: u32 = weights.iter().sum();
            let seq = picks(&weights, total as usize * 2);
            for period in seq.chunks(total as usize) {
                let mut counts = vec![0u32; weights.len()];
                for &i in period {
                    counts[i as usize] += 1;
                }
                prop_assert_eq!(&counts, &weights);
            }
        }

        #[test]
        fn large_sets_match_nginx(n in 30usize..200, seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..5)).collect();
            let total: u32 = weights.iter().sum();
            let s = Schedule::build(&weights);
            let got: Vec<u32> = (0..total as usize).map(|k| s.at(k) as u32).collect();
            prop_assert_eq!(got, nginx(&weights, total as usize));
        }
    }
}
