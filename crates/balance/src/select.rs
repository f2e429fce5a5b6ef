//! Shared pick machinery: weighted sampling (alias method), and the loop that turns an
//! algorithm's candidate sequence into a pick that respects health and slow start.

use crate::{Endpoint, EndpointSet, Pick, SlowStart, Timestamp};
use std::sync::Arc;

/// Candidates drawn before falling back to an O(n) scan for an available endpoint. With a
/// quarter of the endpoints down, 16 draws all miss with probability 0.25^16 ≈ 2e-10.
pub(crate) const MAX_DRAWS: usize = 16;

/// Walker's alias table: O(1) sampling in proportion to static weights.
pub(crate) struct AliasTable {
    /// Per slot: (threshold on a 32-bit coin to keep the slot, the alias index otherwise).
    entries: Vec<(u32, u32)>,
}

impl AliasTable {
    /// Vose's construction over the endpoints' static weights.
    pub(crate) fn build(endpoints: &[Arc<Endpoint>]) -> Self {
        let n = endpoints.len();
        let total: f64 = endpoints.iter().map(|e| f64::from(e.weight)).sum();
        let mut p: Vec<f64> = endpoints
            .iter()
            .map(|e| f64::from(e.weight) * n as f64 / total)
            .collect();
        let mut entries: Vec<(u32, u32)> = (0..n as u32).map(|i| (u32::MAX, i)).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| p[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            entries[s] = (threshold(p[s]), l as u32);
            p[l] += p[s] - 1.0;
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever remains has probability 1 up to rounding; entries already say "keep".
        AliasTable { entries }
    }

    /// An index drawn in proportion to weight.
    pub(crate) fn sample(&self) -> usize {
        let r = fastrand::u64(..);
        // High half picks the slot, low half is the coin: independent bits from one draw.
        let slot = (((r >> 32) * self.entries.len() as u64) >> 32) as usize;
        match self.entries.get(slot) {
            Some(&(keep, alias)) if (r as u32) >= keep => alias as usize,
            _ => slot,
        }
    }
}

fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Draws candidates from `next` (an algorithm's sequence) until one is available at `now` and
/// passes slow-start thinning (kept with probability = its ramp factor). If `MAX_DRAWS` draws
/// find none, takes the most ramped-up available draw, else the first available endpoint by
/// scan; only if nothing is available does it return the first draw in panic mode.
pub(crate) fn select<'a>(
    set: &'a EndpointSet,
    now: Timestamp,
    slow_start: &SlowStart,
    next: impl FnMut() -> usize,
) -> Option<Pick<'a>> {
    select_indexed(set, now, slow_start, next).map(|(_, p)| p)
}

/// [`select`], also returning the picked index.
fn select_indexed<'a>(
    set: &'a EndpointSet,
    now: Timestamp,
    slow_start: &SlowStart,
    mut next: impl FnMut() -> usize,
) -> Option<(usize, Pick<'a>)> {
    let eps = set.endpoints();
    let first = next();
    let first_ep = eps.get(first)?;
    if set.is_panic_forced() {
        return Some((first, Pick::panic(first_ep)));
    }
    let mut best: Option<(usize, f64)> = None;
    let mut i = first;
    for attempt in 0..MAX_DRAWS {
        if attempt > 0 {
            i = next();
        }
        let Some(ep) = eps.get(i) else { continue };
        if !ep.is_available(now) {
            // In panic mode, stop at the first draw: O(1) picks, and round robin keeps rotating.
            if attempt == 0 && set.known_all_down(now) {
                return Some((first, Pick::panic(first_ep)));
            }
            continue;
        }
        let f = slow_start.factor(ep, now);
        if f >= 1.0 || fastrand::f64() < f {
            return Some((i, Pick::healthy(ep)));
        }
        if best.is_none_or(|(_, b)| f > b) {
            best = Some((i, f));
        }
    }
    let found = best
        .map(|(i, _)| i)
        .or_else(|| set.scan_available(first, now));
    Some(match found.and_then(|i| Some((i, eps.get(i)?))) {
        Some((i, ep)) => (i, Pick::healthy(ep)),
        None => (first, Pick::panic(first_ep)),
    })
}

/// Two distinct candidates for power-of-two-choices: the first drawn by weight, the second by
/// weight too, or uniformly among the others when that draw hits the first (a heavy endpoint
/// in a small set would otherwise often go uncompared). `None` for the second when only one
/// endpoint can be picked.
pub(crate) fn select_two<'a>(
    set: &'a EndpointSet,
    now: Timestamp,
    slow_start: &SlowStart,
) -> Option<(Pick<'a>, Option<Pick<'a>>)> {
    let n = set.len();
    let (ia, a) = select_indexed(set, now, slow_start, || set.sample())?;
    if n < 2 {
        return Some((a, None));
    }
    let (ib, b) = select_indexed(set, now, slow_start, || match set.sample() {
        j if j != ia => j,
        // The others with equal odds; the cost comparison applies the weights.
        _ => (ia + 1 + fastrand::usize(..n - 1)) % n,
    })?;
    Some((a, (ib != ia).then_some(b)))
}

/// Longest walk along a hash table (ring or Maglev) before scanning the whole set.
const MAX_WALK: usize = 64;

/// For hashing balancers whose first choice is unavailable: the next available owner along the
/// table from `start` (stable while health is, and a down endpoint's keys spread over many
/// others), else any available endpoint, else `first` in panic mode.
pub(crate) fn walk_to_available<'a>(
    set: &'a EndpointSet,
    first: &'a Arc<Endpoint>,
    start: usize,
    len: usize,
    owner: impl Fn(usize) -> usize,
    hash: u64,
    now: Timestamp,
) -> Option<Pick<'a>> {
    let eps = set.endpoints();
    for step in 1..len.min(MAX_WALK) {
        if let Some(ep) = eps.get(owner((start + step) % len))
            && ep.is_available(now)
        {
            return Some(Pick::healthy(ep));
        }
    }
    match set.scan_available(crate::hash::reduce(hash, eps.len()), now) {
        Some(i) => eps.get(i).map(Pick::healthy),
        None => Some(Pick::panic(first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn alias_sampling_follows_weights() {
        fastrand::seed(7);
        let weights = [1u32, 2, 3, 10, 0];
        let eps: Vec<Arc<Endpoint>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], i as u16)),
                    w,
                ))
            })
            .collect();
        let t = AliasTable::build(&eps);
        let mut counts = [0usize; 5];
        let draws = 170_000;
        for _ in 0..draws {
            counts[t.sample()] += 1;
        }
        // Weight 0 counts as 1: total 17.
        for (i, w) in [1, 2, 3, 10, 1].iter().enumerate() {
            let expected = draws as f64 * f64::from(*w) / 17.0;
            let got = counts[i] as f64;
            assert!(
                (got - expected).abs() < expected * 0.05 + 50.0,
                "{i}: {got} vs {expected}"
            );
        }
    }
}
