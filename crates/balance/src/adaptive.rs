//! Adaptive balancing: delegates each pick to one of several candidate algorithms and switches
//! between them, with hysteresis, when another one is expected to give clearly better latency.
//!
//! # Data path
//! A pick is one relaxed atomic load (the current candidate's index into a fixed
//! array) plus the delegate's pick. [`Adaptive::record`] (call it for every completed request,
//! next to [`InFlight::complete`]) hashes the endpoint address, probes a fixed open-addressing
//! table, and does two or four relaxed `fetch_add`s into log-scale latency histograms: no lock,
//! no allocation.
//!
//! # Windows
//! Every histogram has two generations; [`Adaptive::evaluate`] starts a new generation (clearing
//! the older one) every `window / 2`, so scores always cover between half a window and a whole
//! window of history. Histogram bins are half-octaves (×1.5 / ×1.33) from 16 µs to ~137 s.
//!
//! # Scoring model (honest version)
//! Per endpoint, the windowed histogram gives its latency distribution `D_e`, mean `L_e` and
//! failure rate `f_e`. An endpoint with no sample in the window keeps its last known mean and
//! failure rate (as a point mass): no news is not taken as good news, so a slow endpoint that a
//! latency-aware algorithm avoids keeps looking slow until probes show otherwise. Never-sampled
//! endpoints use their peak-EWMA estimate, else the median of the others.
//!
//! Each candidate `c` is modelled as the traffic share `s_c(e)` it would give each available
//! endpoint (all endpoints when none is available), given the estimated mean concurrency per
//! endpoint `k = λ · L / N` (Little's law from the window's rate and mean latency) and
//! `β = k / (1 + k)` (0 at light load, → 1 under heavy load):
//! - `round_robin`: uniform; `weighted_round_robin`, `random`: ∝ weight.
//! - `least_request`: at light load in-flight counts tie and it is weighted random; under load it
//!   equalises in-flight per weight, so by Little's law `s ∝ w / L`. Model: `(1-β)·w̄ + β·(w/L)`.
//! - `p2c_ewma`: at light load each of the two distinct weighted draws goes to the lower
//!   `L / w` (the exact pair probabilities of the draw, ties split); under load the pending
//!   penalty equalises `L·(λL+1)/w`, so `s ∝ w / L²`. Model: `(1-β)·rank + β·(w/L²)`.
//!
//! The candidate's estimated latency distribution is the mixture `Σ s_c(e)·D_e`: its p99 and
//! mean are read off the mixed histogram, its error rate is `Σ s_c(e)·f_e`, and its score (lower
//! is better) is `p99 × (1 + error_weight × error_rate)`. The model ignores that shifting
//! traffic changes an endpoint's own latency (queueing), and the light-load/heavy-load blend is
//! a heuristic. The active candidate is scored by the same model (so decisions compare like with
//! like and a model bias cannot cause flapping); its *observed* p99 and error rate (from the
//! requests it actually routed since it became active) are reported next to the estimate.
//!
//! # Hysteresis
//! A switch needs: at least `min_samples` requests in the window, `min_dwell` since the last
//! switch (or the first evaluation), a best candidate whose score is at least `min_improvement`
//! lower than the active one's, and the same best candidate in `confirmations` consecutive
//! evaluations. Equal scores never switch; ties go to the earlier candidate in the list.
//! The gain must also be worth having in absolute terms: either the estimated p99 drops by at
//! least `min_gain`, or the lower error rate alone (at the active candidate's p99) makes the
//! score `min_improvement` lower. Sub-millisecond p99 differences are more often scheduling
//! noise than a slow endpoint, and a relative threshold alone takes them.

use crate::clock::duration_nanos;
use crate::hash::hash_addr;
use crate::{
    Algorithm, Balancer, Endpoint, EndpointSet, InFlight, InvalidAlgorithm, Outcome, Pick,
    PickContext, SlowStart, Timestamp,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const R: Ordering = Ordering::Relaxed;
/// Histogram bins: bin 0 is below 2^14 ns; bin i ≥ 1 starts at half-octave `i + 27`.
const BINS: usize = 48;
const FIRST_RAW: u64 = 27;
const KEY_EMPTY: u64 = 0;
const KEY_TOMBSTONE: u64 = 2;
const HASH_SEED: u64 = 0xada9_7173;

/// Parameters of the adaptive balancer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Candidate algorithms, the first being the initial one (hash algorithms are not allowed).
    pub candidates: Vec<Algorithm>,
    /// Sliding window of the latency and error statistics.
    pub window: Duration,
    /// How often the control loop should call [`Adaptive::evaluate`] (advisory).
    pub evaluation_interval: Duration,
    /// Minimum time on a candidate before switching away from it.
    pub min_dwell: Duration,
    /// Minimum relative score improvement to switch (0.2 = the new score is ≥ 20 % lower).
    pub min_improvement: f64,
    /// Minimum drop of the estimated p99 to switch for latency (not needed when the lower error
    /// rate alone justifies the switch).
    pub min_gain: Duration,
    /// Minimum requests in the window before switching.
    pub min_samples: u64,
    /// Consecutive evaluations that must agree on the better candidate before switching.
    pub confirmations: u32,
    /// Score penalty per unit error rate: score = p99 × (1 + error_weight × error rate).
    pub error_weight: f64,
    /// Endpoints tracked individually (fixed table of ~800 bytes per slot, 2 slots each).
    pub max_endpoints: usize,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            candidates: vec![
                Algorithm::RoundRobin,
                Algorithm::LeastRequest,
                Algorithm::PeakEwma,
                Algorithm::WeightedRoundRobin,
            ],
            window: Duration::from_secs(30),
            evaluation_interval: Duration::from_secs(1),
            min_dwell: Duration::from_secs(10),
            min_improvement: 0.2,
            min_gain: Duration::from_millis(1),
            min_samples: 100,
            confirmations: 3,
            error_weight: 10.0,
            max_endpoints: 1024,
        }
    }
}

impl AdaptiveConfig {
    /// Checks the candidates (non-empty, distinct, non-hash, non-nested) and the parameters.
    pub fn validate(&self) -> Result<(), InvalidAlgorithm> {
        let err = |m: String| Err(InvalidAlgorithm(format!("adaptive: {m}")));
        if self.candidates.is_empty() {
            return err("needs at least one candidate".into());
        }
        for (i, c) in self.candidates.iter().enumerate() {
            if !matches!(
                c,
                Algorithm::RoundRobin
                    | Algorithm::WeightedRoundRobin
                    | Algorithm::LeastRequest
                    | Algorithm::PeakEwma
                    | Algorithm::Random
            ) {
                return err(format!(
                    "candidate {} is not allowed (only round_robin, weighted_round_robin, \
                     least_request, p2c_ewma, random)",
                    c.name()
                ));
            }
            if self.candidates[..i].iter().any(|o| o.name() == c.name()) {
                return err(format!("candidate {} is listed twice", c.name()));
            }
        }
        if self.window.is_zero() || self.evaluation_interval.is_zero() {
            return err("window and evaluation_interval must be positive".into());
        }
        if !(0.0..1.0).contains(&self.min_improvement) {
            return err(format!(
                "min_improvement must be in [0, 1), got {}",
                self.min_improvement
            ));
        }
        if !self.error_weight.is_finite() || self.error_weight < 0.0 {
            return err("error_weight must be a non-negative number".into());
        }
        if self.max_endpoints == 0 {
            return err("max_endpoints must be positive".into());
        }
        Ok(())
    }
}

/// One candidate's scores from the last evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateScore {
    /// Algorithm name.
    pub name: &'static str,
    /// Whether this candidate is picking now.
    pub active: bool,
    /// Modelled p99 latency of the traffic this candidate would produce.
    pub estimated_p99: Duration,
    /// Modelled mean latency.
    pub estimated_mean: Duration,
    /// Modelled error rate (0..=1).
    pub estimated_error_rate: f64,
    /// Score compared for switching (nanoseconds, lower is better).
    pub score: f64,
    /// Observed p99 of the requests routed since it became active (active candidate only).
    pub observed_p99: Option<Duration>,
    /// Observed error rate since it became active (active candidate only).
    pub observed_error_rate: Option<f64>,
    /// Requests behind the numbers: observed ones for the active candidate, the window's
    /// per-endpoint samples for shadow-scored ones.
    pub samples: u64,
}

/// A switch between candidates, as returned by [`Adaptive::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Switch {
    /// Candidate switched away from.
    pub from: &'static str,
    /// Candidate switched to.
    pub to: &'static str,
    /// Human-readable reason (scores, improvement, samples).
    pub reason: String,
    /// When the switch happened.
    pub at: Timestamp,
}

/// A latency histogram generation, written with relaxed atomics.
struct Gen {
    bins: [AtomicU32; BINS],
    failures: AtomicU32,
}

impl Gen {
    fn new() -> Self {
        Gen {
            bins: std::array::from_fn(|_| AtomicU32::new(0)),
            failures: AtomicU32::new(0),
        }
    }

    fn add(&self, bin: usize, failed: bool) {
        if let Some(b) = self.bins.get(bin) {
            b.fetch_add(1, R);
        }
        if failed {
            self.failures.fetch_add(1, R);
        }
    }

    fn clear(&self) {
        for b in &self.bins {
            b.store(0, R);
        }
        self.failures.store(0, R);
    }

    fn add_to(&self, counts: &mut [f64; BINS], failures: &mut f64) {
        for (c, b) in counts.iter_mut().zip(&self.bins) {
            *c += f64::from(b.load(R));
        }
        *failures += f64::from(self.failures.load(R));
    }
}

/// Both generations of one series.
struct Series([Gen; 2]);

impl Series {
    fn new() -> Self {
        Series([Gen::new(), Gen::new()])
    }

    fn snapshot(&self) -> ([f64; BINS], f64) {
        let mut counts = [0.0; BINS];
        let mut failures = 0.0;
        for g in &self.0 {
            g.add_to(&mut counts, &mut failures);
        }
        (counts, failures)
    }
}

struct Slot {
    key: AtomicU64,
    series: Series,
}

/// The histogram bin of a latency in nanoseconds.
fn bin_of(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let msb = 63 - u64::from(ns.leading_zeros());
    let half = if msb > 0 { (ns >> (msb - 1)) & 1 } else { 0 };
    let raw = 2 * msb + half;
    (raw.saturating_sub(FIRST_RAW) as usize).min(BINS - 1)
}

/// Lower bound of bin `i` in nanoseconds.
fn bin_lower(i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    let raw = i as u64 + FIRST_RAW;
    let base = (2.0f64).powi((raw / 2) as i32);
    if raw % 2 == 1 { base * 1.5 } else { base }
}

fn bin_mid(i: usize) -> f64 {
    (bin_lower(i) + bin_lower(i + 1)) / 2.0
}

/// The `q` quantile (0..=1) of a histogram of masses, interpolating linearly within a bin.
fn quantile(h: &[f64; BINS], q: f64) -> f64 {
    let total: f64 = h.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let target = q * total;
    let mut acc = 0.0;
    for (i, &m) in h.iter().enumerate() {
        if m > 0.0 && acc + m >= target {
            let frac = ((target - acc) / m).clamp(0.0, 1.0);
            return bin_lower(i) + (bin_lower(i + 1) - bin_lower(i)) * frac;
        }
        acc += m;
    }
    bin_lower(BINS)
}

fn mean_of(h: &[f64; BINS]) -> f64 {
    let total: f64 = h.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    h.iter()
        .enumerate()
        .map(|(i, m)| m * bin_mid(i))
        .sum::<f64>()
        / total
}

fn nanos(ns: f64) -> Duration {
    Duration::from_nanos(ns.max(0.0).min(u64::MAX as f64) as u64)
}

/// What the model knows about one endpoint.
struct EpModel {
    weight: f64,
    /// Normalised latency distribution.
    dist: [f64; BINS],
    mean: f64,
    err: f64,
}

/// Last known mean latency and failure rate of a tracked endpoint.
#[derive(Clone, Copy)]
struct Held {
    slot: usize,
    mean: Option<f64>,
    err: f64,
    seen: Timestamp,
}

struct State {
    cluster: String,
    started: Option<Timestamp>,
    gen_started: Timestamp,
    older_gen_started: Timestamp,
    tenure_started: Timestamp,
    held: HashMap<u64, Held>,
    tombstones: usize,
    streak: Option<(usize, u32)>,
    scores: Vec<CandidateScore>,
    last_switch: Option<Switch>,
}

/// Adaptive balancer: picks through the current candidate, switching by [`Adaptive::evaluate`].
pub struct Adaptive {
    config: AdaptiveConfig,
    candidates: Box<[Box<dyn Balancer>]>,
    names: Box<[&'static str]>,
    current: AtomicUsize,
    switches: AtomicU64,
    generation: AtomicUsize,
    observed: Series,
    slots: Box<[Slot]>,
    mask: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("candidates", &self.names)
            .field("current", &self.current())
            .field("switches", &self.switches())
            .finish_non_exhaustive()
    }
}

impl Adaptive {
    /// An adaptive balancer over `config.candidates` (invalid ones are dropped; round robin if
    /// none is left), starting on the first; candidates share `slow_start`.
    pub fn new(config: AdaptiveConfig, slow_start: SlowStart) -> Self {
        let mut algos: Vec<Algorithm> = Vec::new();
        for c in &config.candidates {
            let ok = matches!(
                c,
                Algorithm::RoundRobin
                    | Algorithm::WeightedRoundRobin
                    | Algorithm::LeastRequest
                    | Algorithm::PeakEwma
                    | Algorithm::Random
            );
            if ok && !algos.iter().any(|a| a.name() == c.name()) {
                algos.push(c.clone());
            }
        }
        if algos.is_empty() {
            algos.push(Algorithm::RoundRobin);
        }
        let candidates: Box<[Box<dyn Balancer>]> =
            algos.iter().map(|a| a.build(slow_start)).collect();
        let names = algos.iter().map(Algorithm::name).collect();
        let cap = (config.max_endpoints.max(1) * 2).next_power_of_two();
        let slots = (0..cap)
            .map(|_| Slot {
                key: AtomicU64::new(KEY_EMPTY),
                series: Series::new(),
            })
            .collect();
        Adaptive {
            config,
            candidates,
            names,
            current: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            generation: AtomicUsize::new(0),
            observed: Series::new(),
            slots,
            mask: cap - 1,
            state: Mutex::new(State {
                cluster: String::new(),
                started: None,
                gen_started: Timestamp::ZERO,
                older_gen_started: Timestamp::ZERO,
                tenure_started: Timestamp::ZERO,
                held: HashMap::new(),
                tombstones: 0,
                streak: None,
                scores: Vec::new(),
                last_switch: None,
            }),
        }
    }

    /// Names the cluster in the switch log event (`cluster` field).
    pub fn set_cluster(&self, name: &str) {
        name.clone_into(&mut self.lock().cluster);
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// Name of the candidate picking now.
    pub fn current(&self) -> &'static str {
        self.names
            .get(self.current.load(R))
            .copied()
            .unwrap_or("round_robin")
    }

    /// Candidate names, in configuration order.
    pub fn candidates(&self) -> &[&'static str] {
        &self.names
    }

    /// Switches made since creation (for a counter metric).
    pub fn switches(&self) -> u64 {
        self.switches.load(R)
    }

    /// Per-candidate scores from the last evaluation (empty before one had enough data).
    pub fn scores(&self) -> Vec<CandidateScore> {
        self.lock().scores.clone()
    }

    /// The last switch, with its reason.
    pub fn last_switch(&self) -> Option<Switch> {
        self.lock().last_switch.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(ep_addr: &std::net::SocketAddr) -> u64 {
        hash_addr(ep_addr, HASH_SEED) | 1
    }

    fn find(&self, key: u64) -> Option<&Slot> {
        let mut i = key as usize & self.mask;
        for _ in 0..=self.mask {
            let slot = self.slots.get(i)?;
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Some(slot),
                KEY_EMPTY => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
        None
    }

    /// Records a completed request (latency to the response head, and its outcome) to
    /// `endpoint`: lock-free, allocation-free. Call once per request next to
    /// [`InFlight::complete`], or use [`Adaptive::complete`] which does both.
    pub fn record(&self, endpoint: &Endpoint, latency: Duration, outcome: Outcome) {
        let g = self.generation.load(R) & 1;
        let bin = bin_of(duration_nanos(latency));
        let failed = outcome == Outcome::Failure;
        self.observed.0[g].add(bin, failed);
        if let Some(slot) = self.find(Self::key(&endpoint.addr)) {
            slot.series.0[g].add(bin, failed);
        }
    }

    /// Completes `guard` at `now` with `outcome` (as [`InFlight::complete_at`]) and records the
    /// request here; later calls for the same guard still record, so call it once.
    pub fn complete(&self, guard: &mut InFlight, outcome: Outcome, now: Timestamp) {
        guard.complete_at(now, outcome);
        self.record(
            guard.endpoint(),
            now.saturating_duration_since(guard.started()),
            outcome,
        );
    }

    /// Periodic evaluation (call every [`AdaptiveConfig::evaluation_interval`] from a control
    /// loop, with the cluster's current set): rotates windows, tracks the set's endpoints,
    /// rescores every candidate, and switches if hysteresis allows. Returns the switch, which is
    /// also logged (`tracing::info!`) and kept for [`Adaptive::last_switch`].
    pub fn evaluate(&self, set: &EndpointSet, now: Timestamp) -> Option<Switch> {
        let mut st = self.lock();
        let st = &mut *st;
        if st.started.is_none() {
            st.started = Some(now);
            st.gen_started = now;
            st.older_gen_started = now;
            st.tenure_started = now;
        }
        self.rotate(st, now);
        self.track(st, set, now);
        let Some((scores, samples)) = self.score(st, set, now) else {
            st.streak = None;
            return None;
        };
        let cur = self.current.load(R);
        st.scores = scores;
        // Lowest score; ties go to the earlier candidate.
        let mut best = 0;
        for (i, s) in st.scores.iter().enumerate() {
            if s.score < st.scores[best].score {
                best = i;
            }
        }
        let (c, b) = (st.scores.get(cur)?, st.scores.get(best)?);
        let (cur_score, best_score) = (c.score, b.score);
        let target = cur_score * (1.0 - self.config.min_improvement);
        let worth_it = c.estimated_p99.saturating_sub(b.estimated_p99) >= self.config.min_gain
            || duration_nanos(c.estimated_p99) as f64
                * (1.0 + self.config.error_weight * b.estimated_error_rate)
                <= target;
        let better = best != cur
            && samples >= self.config.min_samples as f64
            && best_score <= target
            && best_score < cur_score
            && worth_it;
        if !better {
            st.streak = None;
            return None;
        }
        let streak = match st.streak {
            Some((c, n)) if c == best => n + 1,
            _ => 1,
        };
        st.streak = Some((best, streak));
        let dwelt = now.saturating_duration_since(st.tenure_started) >= self.config.min_dwell;
        if streak < self.config.confirmations || !dwelt {
            return None;
        }
        let (from, to) = (self.names.get(cur)?, self.names.get(best)?);
        let (c, b) = (st.scores.get(cur)?, st.scores.get(best)?);
        let reason = format!(
            "{to} estimated p99 {:.1} ms, errors {:.2}% vs {from} {:.1} ms, {:.2}% \
             (score {:.0}% lower) over {samples:.0} requests in the window{}",
            b.estimated_p99.as_secs_f64() * 1e3,
            b.estimated_error_rate * 100.0,
            c.estimated_p99.as_secs_f64() * 1e3,
            c.estimated_error_rate * 100.0,
            (1.0 - best_score / cur_score) * 100.0,
            c.observed_p99
                .map(|p| format!("; {from} observed p99 {:.1} ms", p.as_secs_f64() * 1e3))
                .unwrap_or_default(),
        );
        let switch = Switch {
            from,
            to,
            reason,
            at: now,
        };
        self.current.store(best, R);
        self.switches.fetch_add(1, R);
        for g in &self.observed.0 {
            g.clear();
        }
        st.tenure_started = now;
        st.streak = None;
        for (i, s) in st.scores.iter_mut().enumerate() {
            s.active = i == best;
        }
        tracing::info!(
            cluster = %st.cluster,
            from = switch.from,
            to = switch.to,
            reason = %switch.reason,
            "adaptive balancer switched algorithm"
        );
        st.last_switch = Some(switch.clone());
        Some(switch)
    }

    /// Starts a new histogram generation every half window.
    fn rotate(&self, st: &mut State, now: Timestamp) {
        let half = self.config.window / 2;
        if now.saturating_duration_since(st.gen_started) < half {
            return;
        }
        let next = (self.generation.load(R) + 1) & 1;
        self.observed.0[next].clear();
        for slot in self.slots.iter() {
            slot.series.0[next].clear();
        }
        self.generation.store(next, R);
        st.older_gen_started = st.gen_started;
        st.gen_started = now;
    }

    /// Gives the set's endpoints table slots; frees slots of endpoints gone for a window (or
    /// at once, when the table is short of room for the current set's endpoints).
    fn track(&self, st: &mut State, set: &EndpointSet, now: Timestamp) {
        let mut missing = Vec::new();
        for ep in set.endpoints() {
            let key = Self::key(&ep.addr);
            match st.held.get_mut(&key) {
                Some(h) => h.seen = now,
                None => missing.push(key),
            }
        }
        let limit = self.slots.len() * 3 / 4;
        let crowded = st.held.len() + missing.len() > limit;
        let gone: Vec<u64> = st
            .held
            .iter()
            .filter(|(_, h)| {
                h.seen != now
                    && (crowded || now.saturating_duration_since(h.seen) > self.config.window)
            })
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            if let Some(h) = st.held.remove(&k)
                && let Some(s) = self.slots.get(h.slot)
            {
                s.key.store(KEY_TOMBSTONE, Ordering::Release);
                st.tombstones += 1;
            }
        }
        for key in missing {
            if st.held.len() + st.tombstones >= limit {
                self.compact(st);
                if st.held.len() >= limit {
                    break; // Table full: the rest are modelled from their EWMA.
                }
            }
            let Some(slot) = self.claim(key) else { break };
            let Some(s) = self.slots.get(slot) else { break };
            if s.key.load(R) == KEY_TOMBSTONE {
                st.tombstones = st.tombstones.saturating_sub(1);
            }
            for g in &s.series.0 {
                g.clear();
            }
            s.key.store(key, Ordering::Release);
            st.held.insert(
                key,
                Held {
                    slot,
                    mean: None,
                    err: 0.0,
                    seen: now,
                },
            );
        }
    }

    /// First empty or tombstoned slot on `key`'s probe sequence (the key is known absent).
    fn claim(&self, key: u64) -> Option<usize> {
        let mut i = key as usize & self.mask;
        for _ in 0..=self.mask {
            match self.slots.get(i)?.key.load(R) {
                KEY_EMPTY | KEY_TOMBSTONE => return Some(i),
                _ => i = (i + 1) & self.mask,
            }
        }
        None
    }

    /// Rebuilds the table without tombstones (tracked endpoints lose their window).
    fn compact(&self, st: &mut State) {
        if st.tombstones == 0 {
            return;
        }
        for s in self.slots.iter() {
            s.key.store(KEY_EMPTY, Ordering::Release);
        }
        st.tombstones = 0;
        let keys: Vec<u64> = st.held.keys().copied().collect();
        for key in keys {
            if let Some(slot) = self.claim(key)
                && let Some(s) = self.slots.get(slot)
            {
                for g in &s.series.0 {
                    g.clear();
                }
                s.key.store(key, Ordering::Release);
                if let Some(h) = st.held.get_mut(&key) {
                    h.slot = slot;
                }
            }
        }
    }

    /// Scores every candidate; `None` when no endpoint has any latency information.
    fn score(
        &self,
        st: &mut State,
        set: &EndpointSet,
        now: Timestamp,
    ) -> Option<(Vec<CandidateScore>, f64)> {
        let any_available = set.endpoints().iter().any(|e| e.is_available(now));
        let mut models: Vec<Option<EpModel>> = Vec::with_capacity(set.len());
        let mut unknown = Vec::new();
        let mut samples = 0.0;
        for ep in set.endpoints() {
            if any_available && !ep.is_available(now) && !set.is_panic_forced() {
                continue;
            }
            let weight = f64::from(ep.weight);
            let key = Self::key(&ep.addr);
            let held = st.held.get_mut(&key);
            let snap = held
                .as_ref()
                .and_then(|h| self.slots.get(h.slot))
                .map(|s| s.series.snapshot());
            let mut dist = [0.0; BINS];
            let (mean, err) = match (snap, held) {
                (Some((counts, failures)), Some(h)) if counts.iter().sum::<f64>() > 0.0 => {
                    let n: f64 = counts.iter().sum();
                    samples += n;
                    for (d, c) in dist.iter_mut().zip(counts) {
                        *d = c / n;
                    }
                    let mean = mean_of(&dist);
                    let err = (failures / n).min(1.0);
                    h.mean = Some(mean);
                    h.err = err;
                    (mean, err)
                }
                (
                    _,
                    Some(&mut Held {
                        mean: Some(mean),
                        err,
                        ..
                    }),
                ) => (mean, err),
                _ => match ep.ewma_latency(now) {
                    Some(l) => (l.as_nanos() as f64, 0.0),
                    None => {
                        unknown.push(models.len());
                        models.push(Some(EpModel {
                            weight,
                            dist,
                            mean: 0.0,
                            err: 0.0,
                        }));
                        continue;
                    }
                },
            };
            if dist.iter().all(|&d| d == 0.0)
                && let Some(d) = dist.get_mut(bin_of(mean as u64))
            {
                *d = 1.0;
            }
            models.push(Some(EpModel {
                weight,
                dist,
                mean,
                err,
            }));
        }
        let mut models: Vec<EpModel> = models.into_iter().flatten().collect();
        // Never-sampled endpoints: assume the median known endpoint.
        let mut known: Vec<f64> = models
            .iter()
            .enumerate()
            .filter(|(i, _)| !unknown.contains(i))
            .map(|(_, m)| m.mean)
            .collect();
        if known.is_empty() {
            return None;
        }
        known.sort_by(f64::total_cmp);
        let median = known[known.len() / 2];
        for &i in &unknown {
            if let Some(m) = models.get_mut(i) {
                m.mean = median;
                if let Some(d) = m.dist.get_mut(bin_of(median as u64)) {
                    *d = 1.0;
                }
            }
        }
        let n = models.len() as f64;
        // Little's law: requests in flight per endpoint ≈ rate × mean latency / endpoints.
        let (obs, obs_fail) = self.observed.snapshot();
        let obs_n: f64 = obs.iter().sum();
        let span = now
            .saturating_duration_since(st.older_gen_started)
            .as_secs_f64()
            .max(1e-3);
        let mean_latency = models.iter().map(|m| m.mean).sum::<f64>() / n / 1e9;
        let k = samples / span * mean_latency / n;
        let beta = k / (1.0 + k);
        let cur = self.current.load(R);
        let scores = self
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let shares = shares(c.name(), &models, beta);
                let mut mix = [0.0; BINS];
                let (mut mean, mut err) = (0.0, 0.0);
                for (s, m) in shares.iter().zip(&models) {
                    for (x, d) in mix.iter_mut().zip(&m.dist) {
                        *x += s * d;
                    }
                    mean += s * m.mean;
                    err += s * m.err;
                }
                let p99 = quantile(&mix, 0.99);
                let active = i == cur;
                CandidateScore {
                    name: c.name(),
                    active,
                    estimated_p99: nanos(p99),
                    estimated_mean: nanos(mean),
                    estimated_error_rate: err,
                    score: p99 * (1.0 + self.config.error_weight * err),
                    observed_p99: (active && obs_n > 0.0).then(|| nanos(quantile(&obs, 0.99))),
                    observed_error_rate: (active && obs_n > 0.0).then(|| obs_fail / obs_n),
                    samples: if active { obs_n } else { samples } as u64,
                }
            })
            .collect();
        Some((scores, samples))
    }

    #[cfg(test)]
    pub(crate) fn set_current(&self, name: &str) {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            self.current.store(i, R);
        }
    }
}

fn normalize(v: &mut [f64]) {
    let total: f64 = v.iter().sum();
    if total > 0.0 && total.is_finite() {
        for x in v.iter_mut() {
            *x /= total;
        }
    } else {
        let n = v.len() as f64;
        v.iter_mut().for_each(|x| *x = 1.0 / n);
    }
}

/// Modelled traffic share of each endpoint under candidate `name` (sums to 1).
fn shares(name: &str, models: &[EpModel], beta: f64) -> Vec<f64> {
    let mut weighted: Vec<f64> = models.iter().map(|m| m.weight).collect();
    normalize(&mut weighted);
    let floor = 1.0; // ns: keeps 1/L finite.
    let mut out = match name {
        "round_robin" => vec![1.0; models.len()],
        "least_request" => {
            let mut load: Vec<f64> = models
                .iter()
                .map(|m| m.weight / m.mean.max(floor))
                .collect();
            normalize(&mut load);
            weighted
                .iter()
                .zip(&load)
                .map(|(w, l)| (1.0 - beta) * w + beta * l)
                .collect()
        }
        "p2c_ewma" => {
            let costs: Vec<f64> = models
                .iter()
                .map(|m| m.mean.max(floor) / m.weight)
                .collect();
            let rank = p2c_rank_shares(&weighted, &costs);
            let mut load: Vec<f64> = models
                .iter()
                .map(|m| m.weight / m.mean.max(floor).powi(2))
                .collect();
            normalize(&mut load);
            rank.iter()
                .zip(&load)
                .map(|(r, l)| (1.0 - beta) * r + beta * l)
                .collect()
        }
        _ => weighted,
    };
    normalize(&mut out);
    out
}

/// Shares of power-of-two-choices on fixed costs: the first draw ∝ `a`, the second ∝ `a` among
/// the others; the lower cost wins, ties split evenly.
fn p2c_rank_shares(a: &[f64], costs: &[f64]) -> Vec<f64> {
    let n = a.len();
    if n < 2 {
        return vec![1.0; n];
    }
    // P(pair {i, j}) = a_i·a_j·(1/(1-a_i) + 1/(1-a_j)) = a_i·a_j·(u_i + u_j).
    let u: Vec<f64> = a.iter().map(|&x| 1.0 / (1.0 - x).max(1e-12)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| costs[j].total_cmp(&costs[i])); // worst first
    let mut out = vec![0.0; n];
    // Sums over strictly worse endpoints: Σ a_j and Σ a_j·u_j.
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut g = 0;
    while g < n {
        let mut end = g;
        while end < n && costs[order[end]] == costs[order[g]] {
            end += 1;
        }
        let group = &order[g..end];
        let (g1, g2): (f64, f64) = group
            .iter()
            .fold((0.0, 0.0), |(x, y), &i| (x + a[i], y + a[i] * u[i]));
        for &i in group {
            let beats = a[i] * (u[i] * s1 + s2);
            let ties = a[i] * (u[i] * (g1 - a[i]) + (g2 - a[i] * u[i])) / 2.0;
            out[i] = beats + ties;
        }
        s1 += g1;
        s2 += g2;
        g = end;
    }
    out
}

impl Balancer for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn prepare(&self, set: &EndpointSet) {
        for c in self.candidates.iter() {
            c.prepare(set);
        }
    }

    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>> {
        match self.candidates.get(self.current.load(R)) {
            Some(c) => c.pick(set, ctx),
            None => self.candidates.first()?.pick(set, ctx),
        }
    }

    fn as_adaptive(&self) -> Option<&Adaptive> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
