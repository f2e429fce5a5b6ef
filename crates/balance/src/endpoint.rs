//! Endpoints with their live load statistics and health, and immutable endpoint-set snapshots.
//!
//! Everything the data path touches per request is an atomic: recording a completed request is a
//! handful of relaxed loads, stores and one compare-exchange, never a lock.

use crate::clock::{Clock, Timestamp, duration_nanos};
use crate::maglev::MaglevTable;
use crate::ring_hash::Ring;
use crate::select::AliasTable;
use crate::weighted_round_robin::Schedule;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Sentinel for "no timestamp" in atomics holding a [`Timestamp`].
const NONE: u64 = u64::MAX;
/// Sentinel bits for "no latency sample yet" (a NaN no arithmetic produces).
const NO_SAMPLE: u64 = u64::MAX;

/// Bumped after every health or ejection change of any endpoint, so that a set can remember
/// "nothing was available as of epoch E" and skip rescanning until something changes.
static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(1);

fn bump_health_epoch() {
    HEALTH_EPOCH.fetch_add(1, Ordering::Release);
}

/// Per-endpoint statistics settings shared by the endpoints of a set (the peak-EWMA
/// latency estimator lives on the endpoint, so every balancer reads the same estimate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointOptions {
    /// Decay time τ of the peak-EWMA latency estimate (linkerd's default: 10 s).
    pub ewma_decay: Duration,
    /// Latency assumed before the first sample (linkerd's default: 30 ms); it decays from the
    /// endpoint's creation like a sample, so an untried endpoint is eventually tried.
    pub default_rtt: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            ewma_decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// How a request to an endpoint ended, for its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response the endpoint is not to blame for (anything but a 5xx / gateway error).
    Success,
    /// A connect error, reset, 5xx or other failure the endpoint is to blame for.
    Failure,
    /// Neither: the request was dropped (client gone, timeout) before it completed.
    Cancelled,
}

/// One upstream address with its live load statistics.
#[derive(Debug)]
pub struct Endpoint {
    /// Where requests go; also the endpoint's identity for hashing and set updates.
    pub addr: SocketAddr,
    /// `ip:port` pre-parsed for building upstream URIs without re-parsing per request.
    pub authority: http::uri::Authority,
    /// Static weight (at least 1); slow start scales it while the endpoint ramps up.
    pub weight: u32,
    decay_ns: f64,
    default_ns: f64,
    in_flight: AtomicI64,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    // Peak-EWMA state: the estimate (f64 bits, or NO_SAMPLE) as of `ewma_at`. Reads decay it to
    // "now" without writing, so picks never write shared state.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    healthy: AtomicBool,
    ejected_until: AtomicU64,
    slow_start_from: AtomicU64,
}

impl Endpoint {
    /// An endpoint with default statistics settings, created now on the system clock.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Endpoint::with_options(
            addr,
            weight,
            &EndpointOptions::default(),
            Clock::System.now(),
        )
    }

    /// An endpoint created at `now` (the default RTT of an unsampled endpoint decays from then).
    pub fn with_options(
        addr: SocketAddr,
        weight: u32,
        options: &EndpointOptions,
        now: Timestamp,
    ) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Endpoint {
            addr,
            authority,
            weight: weight.max(1),
            decay_ns: (options.ewma_decay.as_secs_f64() * 1e9).max(1.0),
            default_ns: options.default_rtt.as_secs_f64() * 1e9,
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(NO_SAMPLE),
            ewma_at: AtomicU64::new(now.as_nanos()),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            slow_start_from: AtomicU64::new(NONE),
        }
    }

    /// A copy with another weight that keeps latency, counters, health and ramp (not in-flight:
    /// requests still running hold the old endpoint and decrement its count).
    fn reweighted(&self, weight: u32) -> Endpoint {
        let r = Ordering::Relaxed;
        Endpoint {
            addr: self.addr,
            authority: self.authority.clone(),
            weight: weight.max(1),
            decay_ns: self.decay_ns,
            default_ns: self.default_ns,
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(self.requests.load(r)),
            failures: AtomicU64::new(self.failures.load(r)),
            consecutive_failures: AtomicU32::new(self.consecutive_failures.load(r)),
            ewma_ns: AtomicU64::new(self.ewma_ns.load(r)),
            ewma_at: AtomicU64::new(self.ewma_at.load(r)),
            healthy: AtomicBool::new(self.healthy.load(r)),
            ejected_until: AtomicU64::new(self.ejected_until.load(r)),
            slow_start_from: AtomicU64::new(self.slow_start_from.load(r)),
        }
    }

    /// Marks a request as started now on the system clock; the guard records it when it ends.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(&Clock::System, Clock::System.now())
    }

    /// Marks a request as started at `now`; the guard reads `clock` when the request ends.
    pub fn start_at(self: &Arc<Self>, clock: &Clock, now: Timestamp) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            clock: clock.clone(),
            started: now,
            done: false,
        }
    }

    /// Counts a failure (prefer [`InFlight::complete`], which also records latency).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a finished request's latency and outcome (a few atomics, no lock).
    pub fn record(&self, latency: Duration, outcome: Outcome, now: Timestamp) {
        // Failures and cancellations may raise the estimate (a timeout is a latency peak) but
        // never lower it: a fast "connection refused" must not make a broken endpoint look fast.
        self.record_rtt(latency, now, outcome == Outcome::Success);
        match outcome {
            Outcome::Success => {
                // Load first so that the common case does not write a shared cache line.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => self.record_failure(),
            Outcome::Cancelled => {}
        }
    }

    fn record_rtt(&self, latency: Duration, now: Timestamp, may_lower: bool) {
        let rtt = duration_nanos(latency) as f64;
        let mut bits = self.ewma_ns.load(Ordering::Relaxed);
        loop {
            let unsampled = bits == NO_SAMPLE;
            let base = if unsampled {
                self.default_ns
            } else {
                f64::from_bits(bits)
            };
            let at = self.ewma_at.load(Ordering::Relaxed);
            let w = self.decay_weight(now.as_nanos().saturating_sub(at));
            let current = base * w;
            let next = if rtt >= current {
                // Peak sensitivity: a slower sample replaces the estimate at once.
                rtt
            } else if !may_lower {
                return;
            } else if unsampled {
                // The first real sample replaces the assumed default.
                rtt
            } else {
                // A faster sample pulls the estimate down, more so the longer since the last.
                current * w + rtt * (1.0 - w)
            };
            match self.ewma_ns.compare_exchange_weak(
                bits,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => bits = actual,
            }
        }
        // Not atomic with the estimate: a racing reader may decay a new estimate by an old
        // stamp for a moment, which only nudges one pick.
        self.ewma_at.store(now.as_nanos(), Ordering::Relaxed);
    }

    /// `e^(-elapsed/τ)`: the weight the previous estimate keeps after `elapsed_ns`.
    fn decay_weight(&self, elapsed_ns: u64) -> f64 {
        decay_weight(elapsed_ns as f64 / self.decay_ns)
    }

    /// The peak-EWMA latency estimate in nanoseconds at `now`: the last estimate decayed
    /// towards zero since it was recorded, or the default RTT decayed since the endpoint was
    /// created when it has no samples yet.
    pub fn rtt_estimate_ns(&self, now: Timestamp) -> f64 {
        let bits = self.ewma_ns.load(Ordering::Relaxed);
        let at = self.ewma_at.load(Ordering::Relaxed);
        let base = if bits == NO_SAMPLE {
            self.default_ns
        } else {
            f64::from_bits(bits)
        };
        base * self.decay_weight(now.as_nanos().saturating_sub(at))
    }

    /// The decayed latency estimate at `now`, or `None` before the first sample.
    pub fn ewma_latency(&self, now: Timestamp) -> Option<Duration> {
        if self.ewma_ns.load(Ordering::Relaxed) == NO_SAMPLE {
            return None;
        }
        Some(Duration::from_nanos(self.rtt_estimate_ns(now) as u64))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Requests started since the endpoint was created.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Failures recorded since the endpoint was created.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
    /// Clears the consecutive-failure count (e.g. after an outlier ejection).
    pub fn reset_consecutive_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Whether active health checking considers the endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health-check verdict; a recovery at `now` starts the slow-start ramp.
    pub fn set_healthy(&self, healthy: bool, now: Timestamp) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                self.slow_start_from
                    .store(now.as_nanos(), Ordering::Relaxed);
            }
            bump_health_epoch();
        }
    }

    /// Ejects the endpoint (outlier detection) until `until`; it then ramps up from `until`.
    pub fn eject_until(&self, until: Timestamp) {
        self.ejected_until
            .store(until.as_nanos(), Ordering::Relaxed);
        self.slow_start_from
            .store(until.as_nanos(), Ordering::Relaxed);
        bump_health_epoch();
    }

    /// Ends an ejection early at `now` (the ramp restarts from `now`).
    pub fn clear_ejection(&self, now: Timestamp) {
        let until = self.ejected_until.swap(0, Ordering::Relaxed);
        if until > now.as_nanos() {
            self.slow_start_from
                .store(now.as_nanos(), Ordering::Relaxed);
        }
        bump_health_epoch();
    }

    /// The end of the current or last ejection, if the endpoint was ever ejected.
    pub fn ejected_until(&self) -> Option<Timestamp> {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Timestamp::from_nanos(t)),
        }
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Timestamp) -> bool {
        now.as_nanos() < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Healthy and not ejected at `now`: balancers pick it while any such endpoint exists.
    pub fn is_available(&self, now: Timestamp) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && now.as_nanos() >= self.ejected_until.load(Ordering::Relaxed)
    }

    /// Starts the slow-start ramp at `now` (done for endpoints added by [`EndpointSet::update`]).
    pub fn begin_slow_start(&self, now: Timestamp) {
        self.slow_start_from
            .store(now.as_nanos(), Ordering::Relaxed);
    }

    /// When the current slow-start ramp began, if the endpoint ever ramped.
    pub fn slow_start_since(&self) -> Option<Timestamp> {
        match self.slow_start_from.load(Ordering::Relaxed) {
            NONE => None,
            t => Some(Timestamp::from_nanos(t)),
        }
    }

    /// A snapshot of the statistics for `/clusters`, metrics and the adaptive selector.
    pub fn stats(&self, now: Timestamp) -> EndpointStats {
        EndpointStats {
            addr: self.addr,
            weight: self.weight,
            in_flight: self.in_flight(),
            requests: self.requests(),
            failures: self.failures(),
            consecutive_failures: self.consecutive_failures(),
            ewma_latency: self.ewma_latency(now),
            healthy: self.is_healthy(),
            ejected_for: self
                .ejected_until()
                .filter(|&t| t > now)
                .map(|t| t.saturating_duration_since(now)),
            available: self.is_available(now),
            slow_start_since: self.slow_start_since(),
        }
    }
}

/// `e^-x` for `x ≥ 0`: the weight an estimate keeps after `x` decay periods.
///
/// Between requests `x` is tiny (1 ms of a 10 s decay is 1e-4), where the series' first five
/// terms already equal `exp` to within a few ulp (the next term is below 1e-17) at a fraction of
/// its cost: this runs on every response and twice per P2C pick.
fn decay_weight(x: f64) -> f64 {
    const SERIES_BELOW: f64 = 1e-3;
    if x < SERIES_BELOW {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0)))
    } else {
        (-x).exp()
    }
}

/// A point-in-time copy of one endpoint's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStats {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Static weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: i64,
    /// Requests started.
    pub requests: u64,
    /// Failures recorded.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Decayed peak-EWMA latency; `None` before the first sample.
    pub ewma_latency: Option<Duration>,
    /// Health-check verdict.
    pub healthy: bool,
    /// Remaining ejection time, if ejected now.
    pub ejected_for: Option<Duration>,
    /// Healthy and not ejected.
    pub available: bool,
    /// Start of the current or last slow-start ramp.
    pub slow_start_since: Option<Timestamp>,
}

/// Guard for one in-flight request on an endpoint: records its latency and outcome once.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    clock: Clock,
    started: Timestamp,
    done: bool,
}

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// When the request started.
    pub fn started(&self) -> Timestamp {
        self.started
    }

    /// Records latency (start to now) and outcome; later calls and the drop record nothing more.
    /// The request stays counted in flight until the guard is dropped.
    pub fn complete(&mut self, outcome: Outcome) {
        let now = self.clock.now();
        self.complete_at(now, outcome);
    }

    /// [`InFlight::complete`] at an explicit time.
    pub fn complete_at(&mut self, now: Timestamp, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.endpoint
                .record(now.saturating_duration_since(self.started), outcome, now);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // An uncompleted request (timeout, client gone) still tells us it took at least this
        // long: a black-holing endpoint must not look fast (linkerd records RTT on drop too).
        if !self.done {
            self.complete(Outcome::Cancelled);
        }
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-set tables built once per endpoint set (off the data path via
/// [`Balancer::prepare`](crate::Balancer::prepare)); picks only read them.
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) alias: OnceLock<AliasTable>,
    pub(crate) schedule: OnceLock<Schedule>,
    pub(crate) ring: OnceLock<Ring>,
    pub(crate) maglev: OnceLock<MaglevTable>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tables can hold millions of entries; show which exist, not their contents.
        f.debug_struct("Tables")
            .field("alias", &self.alias.get().is_some())
            .field(
                "schedule",
                &self.schedule.get().map(|s| (s.len(), s.is_exact())),
            )
            .field("ring", &self.ring.get().map(Ring::len))
            .field("maglev", &self.maglev.get().map(MaglevTable::len))
            .finish()
    }
}

/// Health of a set at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetHealth {
    /// Endpoints in the set.
    pub total: usize,
    /// Healthy and not ejected.
    pub available: usize,
    /// Balancers ignore health now: nothing is available, or panic mode was forced.
    pub panic: bool,
}

/// An immutable snapshot of a cluster's endpoints (their statistics stay live).
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    options: EndpointOptions,
    uniform_weights: bool,
    total_weight: u64,
    force_panic: AtomicBool,
    // (health epoch low 32 bits << 32) | whole seconds until an ejection may end: "as of that
    // epoch nothing is available before then". 0 = unknown.
    all_down_hint: AtomicU64,
    pub(crate) tables: Tables,
}

impl Default for EndpointSet {
    fn default() -> Self {
        EndpointSet::new(Vec::new())
    }
}

impl EndpointSet {
    /// A set of these endpoints, in this order.
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        EndpointSet::with_options(endpoints, EndpointOptions::default())
    }

    fn with_options(endpoints: Vec<Arc<Endpoint>>, options: EndpointOptions) -> Self {
        let first = endpoints.first().map_or(1, |e| e.weight);
        EndpointSet {
            uniform_weights: endpoints.iter().all(|e| e.weight == first),
            total_weight: endpoints.iter().map(|e| u64::from(e.weight)).sum(),
            endpoints,
            options,
            force_panic: AtomicBool::new(false),
            all_down_hint: AtomicU64::new(0),
            tables: Tables::default(),
        }
    }

    /// Weight-1 endpoints with default options (none in slow start).
    pub fn from_addrs(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        EndpointSet::new(
            addrs
                .into_iter()
                .map(|a| Arc::new(Endpoint::new(a, 1)))
                .collect(),
        )
    }

    /// A cluster's first set: weighted addresses (duplicates dropped, weight 0 counts as 1),
    /// created at `now`; none is in slow start.
    pub fn from_weighted(
        addrs: impl IntoIterator<Item = (SocketAddr, u32)>,
        options: EndpointOptions,
        now: Timestamp,
    ) -> Self {
        let mut seen = HashSet::new();
        let endpoints = addrs
            .into_iter()
            .filter(|(a, _)| seen.insert(*a))
            .map(|(a, w)| Arc::new(Endpoint::with_options(a, w, &options, now)))
            .collect();
        EndpointSet::with_options(endpoints, options)
    }

    /// The next set after a discovery update at `now`: endpoints already present keep their
    /// statistics (the same `Arc`, or a copy if the weight changed); new ones start slow start.
    /// A forced panic mode carries over. Build tables with `Balancer::prepare` before publishing.
    pub fn update(
        &self,
        addrs: impl IntoIterator<Item = (SocketAddr, u32)>,
        now: Timestamp,
    ) -> EndpointSet {
        let known: HashMap<SocketAddr, &Arc<Endpoint>> =
            self.endpoints.iter().map(|e| (e.addr, e)).collect();
        let mut seen = HashSet::new();
        let mut endpoints = Vec::new();
        for (addr, weight) in addrs {
            if !seen.insert(addr) {
                continue;
            }
            let weight = weight.max(1);
            endpoints.push(match known.get(&addr) {
                Some(ep) if ep.weight == weight => Arc::clone(ep),
                Some(ep) => Arc::new(ep.reweighted(weight)),
                None => {
                    let ep = Endpoint::with_options(addr, weight, &self.options, now);
                    ep.begin_slow_start(now);
                    Arc::new(ep)
                }
            });
        }
        let set = EndpointSet::with_options(endpoints, self.options);
        set.force_panic(self.is_panic_forced());
        set
    }

    /// Whether `addrs` (duplicates dropped, weight 0 as 1) names exactly these endpoints with
    /// these weights, in any order: a discovery refresh that changes nothing can keep the set
    /// and its tables instead of rebuilding them.
    pub fn has_same_endpoints(&self, addrs: impl IntoIterator<Item = (SocketAddr, u32)>) -> bool {
        let mine: HashMap<SocketAddr, u32> =
            self.endpoints.iter().map(|e| (e.addr, e.weight)).collect();
        let mut seen = HashSet::new();
        for (addr, weight) in addrs {
            if !seen.insert(addr) {
                continue;
            }
            if mine.get(&addr) != Some(&weight.max(1)) {
                return false;
            }
        }
        seen.len() == mine.len()
    }

    /// The endpoints, in discovery order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
    /// Whether the set has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
    /// Statistics settings for endpoints this set creates.
    pub fn options(&self) -> EndpointOptions {
        self.options
    }
    /// Sum of static weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }
    /// Whether every endpoint has the same static weight.
    pub fn has_uniform_weights(&self) -> bool {
        self.uniform_weights
    }

    /// Forces panic mode (balance over all endpoints, ignoring health), e.g. when an outlier
    /// detector finds fewer healthy endpoints than its panic threshold.
    pub fn force_panic(&self, on: bool) {
        self.force_panic.store(on, Ordering::Relaxed);
    }

    /// Whether panic mode is forced.
    pub fn is_panic_forced(&self) -> bool {
        self.force_panic.load(Ordering::Relaxed)
    }

    /// Counts available endpoints at `now` (O(n): for control loops and `/clusters`).
    pub fn health(&self, now: Timestamp) -> SetHealth {
        let available = self
            .endpoints
            .iter()
            .filter(|e| e.is_available(now))
            .count();
        SetHealth {
            total: self.len(),
            available,
            panic: self.is_panic_forced() || (available == 0 && !self.is_empty()),
        }
    }

    /// An index drawn in proportion to static weight.
    pub(crate) fn sample(&self) -> usize {
        let n = self.endpoints.len();
        if self.uniform_weights || n < 2 {
            return fastrand::usize(..n.max(1));
        }
        self.tables
            .alias
            .get_or_init(|| AliasTable::build(&self.endpoints))
            .sample()
    }

    /// Builds the weighted-sampling table if this set needs one.
    pub(crate) fn prepare_alias(&self) {
        if !self.uniform_weights && self.endpoints.len() > 1 {
            self.tables
                .alias
                .get_or_init(|| AliasTable::build(&self.endpoints));
        }
    }

    /// The first available endpoint at or after `start` (wrapping), or `None` when none is
    /// available at `now`. The O(n) scan runs only when cheaper draws failed; a fruitless scan
    /// is remembered until any health changes or an ejection may have ended.
    pub(crate) fn scan_available(&self, start: usize, now: Timestamp) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 || self.known_all_down(now) {
            return None;
        }
        // Read the epoch before scanning: a change during the scan makes the hint stale.
        let epoch = HEALTH_EPOCH.load(Ordering::Acquire);
        let mut earliest = u64::MAX;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(ep) = self.endpoints.get(i) else {
                continue;
            };
            if ep.is_available(now) {
                return Some(i);
            }
            if ep.is_healthy() {
                earliest = earliest.min(ep.ejected_until.load(Ordering::Relaxed));
            }
        }
        let secs = (earliest / 1_000_000_000).min(u64::from(u32::MAX));
        self.all_down_hint
            .store(((epoch & 0xffff_ffff) << 32) | secs, Ordering::Relaxed);
        None
    }

    /// Whether a recent scan found nothing available and nothing has changed since.
    pub(crate) fn known_all_down(&self, now: Timestamp) -> bool {
        let hint = self.all_down_hint.load(Ordering::Relaxed);
        if hint == 0 {
            return false;
        }
        let epoch = HEALTH_EPOCH.load(Ordering::Acquire) & 0xffff_ffff;
        hint >> 32 == epoch && now.as_nanos() / 1_000_000_000 < hint & 0xffff_ffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], i))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(d: Duration) -> Timestamp {
        Timestamp::ZERO + d
    }

    #[test]
    fn decay_weight_matches_exp_on_both_sides_of_the_series_limit() {
        assert_eq!(decay_weight(0.0), 1.0);
        // From one nanosecond of a 10 s decay to many periods, through the switch at 1e-3.
        let mut x = 1e-10;
        while x < 50.0 {
            let (got, want) = (decay_weight(x), (-x).exp());
            assert!(
                (got - want).abs() <= want * 4.0 * f64::EPSILON,
                "x = {x}: {got} vs {want}"
            );
            x *= 1.37;
        }
        for x in [0.999e-3, 1e-3, 1.001e-3] {
            assert!((decay_weight(x) - (-x).exp()).abs() <= 4.0 * f64::EPSILON);
        }
    }

    #[test]
    fn guard_counts_in_flight_and_records_latency_once() {
        let clock = ManualClock::new();
        let ep = Arc::new(Endpoint::with_options(
            addr(1),
            1,
            &EndpointOptions::default(),
            clock.now(),
        ));
        let mut g = ep.start_at(&clock.clone().into(), clock.now());
        assert_eq!(ep.in_flight(), 1);
        clock.advance(ms(40));
        g.complete(Outcome::Success);
        clock.advance(ms(500));
        g.complete(Outcome::Failure);
        assert_eq!(ep.in_flight(), 1, "still in flight until the body is done");
        drop(g);
        assert_eq!(ep.in_flight(), 0);
        assert_eq!(ep.failures(), 0);
        assert_eq!(ep.requests(), 1);
        assert_eq!(ep.ewma_latency(at(ms(40))), Some(ms(40)));
    }

    #[test]
    fn dropped_request_records_its_duration_as_a_peak_only() {
        let clock = ManualClock::new();
        let ep = Arc::new(Endpoint::with_options(
            addr(1),
            1,
            &EndpointOptions::default(),
            clock.now(),
        ));
        ep.record(ms(10), Outcome::Success, clock.now());
        let g = ep.start_at(&clock.clone().into(), clock.now());
        clock.advance(ms(2000));
        drop(g); // e.g. a timeout
        let est = ep.ewma_latency(clock.now()).unwrap();
        assert_eq!(est, ms(2000), "a timeout is a peak");
        // A fast cancellation does not lower the estimate.
        let g = ep.start_at(&clock.clone().into(), clock.now());
        clock.advance(ms(1));
        drop(g);
        assert!(ep.ewma_latency(clock.now()).unwrap() > ms(1900));
    }

    #[test]
    fn a_fast_first_failure_does_not_replace_the_default() {
        let ep = Endpoint::with_options(addr(1), 1, &EndpointOptions::default(), Timestamp::ZERO);
        ep.record(ms(1), Outcome::Failure, Timestamp::ZERO);
        assert_eq!(ep.ewma_latency(Timestamp::ZERO), None);
        assert_eq!(ep.rtt_estimate_ns(Timestamp::ZERO), 30e6);
        // A slow one (a timeout) does: it is a peak above the default.
        ep.record(ms(900), Outcome::Cancelled, Timestamp::ZERO);
        assert_eq!(ep.ewma_latency(Timestamp::ZERO), Some(ms(900)));
    }

    #[test]
    fn failures_count_and_never_lower_latency() {
        let ep = Endpoint::with_options(addr(1), 1, &EndpointOptions::default(), Timestamp::ZERO);
        ep.record(ms(100), Outcome::Success, at(ms(0)));
        ep.record(ms(1), Outcome::Failure, at(ms(10)));
        ep.record(ms(1), Outcome::Failure, at(ms(20)));
        assert_eq!(ep.failures(), 2);
        assert_eq!(ep.consecutive_failures(), 2);
        assert!(ep.ewma_latency(at(ms(20))).unwrap() > ms(99));
        ep.record(ms(100), Outcome::Success, at(ms(30)));
        assert_eq!(ep.consecutive_failures(), 0);
    }

    #[test]
    fn peak_ewma_semantics() {
        let tau = Duration::from_secs(10);
        let ep = Endpoint::with_options(
            addr(1),
            1,
            &EndpointOptions {
                ewma_decay: tau,
                default_rtt: ms(30),
            },
            Timestamp::ZERO,
        );
        // Unsampled: the default, decaying from creation.
        assert_eq!(ep.rtt_estimate_ns(Timestamp::ZERO), 30e6);
        let d = ep.rtt_estimate_ns(at(tau));
        assert!((d - 30e6 / std::f64::consts::E).abs() < 1.0, "{d}");
        assert_eq!(ep.ewma_latency(Timestamp::ZERO), None);

        ep.record(ms(10), Outcome::Success, at(ms(0)));
        assert_eq!(ep.ewma_latency(at(ms(0))), Some(ms(10)));
        // Peak: a slower sample replaces the estimate.
        ep.record(ms(50), Outcome::Success, at(ms(1)));
        assert_eq!(ep.ewma_latency(at(ms(1))), Some(ms(50)));
        // A faster sample shortly after barely moves it.
        ep.record(ms(10), Outcome::Success, at(ms(2)));
        let e = ep.ewma_latency(at(ms(2))).unwrap();
        assert!(e > ms(49) && e < ms(50), "{e:?}");
        // Decay: after τ with no samples the estimate is e^-1 of what it was.
        let later = ep.rtt_estimate_ns(at(ms(2) + tau));
        let expected = e.as_nanos() as f64 / std::f64::consts::E;
        assert!((later - expected).abs() / expected < 1e-6);
        // A faster sample after a long gap takes most of the weight.
        ep.record(ms(10), Outcome::Success, at(ms(2) + tau * 3));
        let e = ep.ewma_latency(at(ms(2) + tau * 3)).unwrap();
        assert!(e >= ms(10) && e < ms(11), "{e:?}");
    }

    #[test]
    fn concurrent_recording_stays_within_the_samples() {
        let ep = Arc::new(Endpoint::with_options(
            addr(1),
            1,
            &EndpointOptions::default(),
            Timestamp::ZERO,
        ));
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let ep = &ep;
                scope.spawn(move || {
                    for i in 0..5_000u64 {
                        let rtt = ms(10 + (i + t) % 11);
                        let mut g = ep.start_at(&Clock::System, at(ms(i)));
                        g.complete_at(at(ms(i) + rtt), Outcome::Success);
                    }
                });
            }
        });
        assert_eq!(ep.in_flight(), 0);
        assert_eq!(ep.requests(), 20_000);
        let e = ep.ewma_latency(at(ms(5_000))).unwrap();
        assert!(e >= ms(9) && e <= ms(20), "{e:?}");
    }

    #[test]
    fn health_ejection_and_slow_start_marks() {
        let ep = Endpoint::with_options(addr(1), 0, &EndpointOptions::default(), Timestamp::ZERO);
        assert_eq!(ep.weight, 1, "weight 0 counts as 1");
        assert!(ep.is_available(Timestamp::ZERO));
        assert_eq!(ep.slow_start_since(), None);
        ep.eject_until(at(ms(100)));
        assert!(!ep.is_available(at(ms(99))));
        assert!(ep.is_available(at(ms(100))));
        assert_eq!(ep.slow_start_since(), Some(at(ms(100))));
        ep.set_healthy(false, at(ms(200)));
        assert!(!ep.is_available(at(ms(300))));
        ep.set_healthy(true, at(ms(400)));
        assert_eq!(ep.slow_start_since(), Some(at(ms(400))));
        ep.eject_until(at(ms(1000)));
        ep.clear_ejection(at(ms(500)));
        assert!(ep.is_available(at(ms(500))));
        assert_eq!(ep.slow_start_since(), Some(at(ms(500))));
        let s = ep.stats(at(ms(500)));
        assert!(s.available && s.healthy && s.ejected_for.is_none());
    }

    #[test]
    fn update_keeps_stats_and_ramps_new_endpoints() {
        let old = EndpointSet::from_weighted(
            [(addr(1), 1), (addr(2), 1), (addr(3), 1)],
            EndpointOptions::default(),
            Timestamp::ZERO,
        );
        old.endpoints()[0].record(ms(5), Outcome::Failure, Timestamp::ZERO);
        old.force_panic(true);
        let t = at(Duration::from_secs(60));
        let new = old.update([(addr(1), 1), (addr(3), 4), (addr(4), 1), (addr(4), 9)], t);
        assert_eq!(new.len(), 3);
        assert!(Arc::ptr_eq(&new.endpoints()[0], &old.endpoints()[0]));
        assert_eq!(new.endpoints()[0].failures(), 1);
        assert_eq!(new.endpoints()[1].weight, 4);
        assert_eq!(new.endpoints()[1].slow_start_since(), None);
        assert_eq!(new.endpoints()[2].slow_start_since(), Some(t));
        assert_eq!(new.endpoints()[2].weight, 1, "first duplicate wins");
        assert!(new.is_panic_forced());
        assert!(new.has_same_endpoints([(addr(4), 1), (addr(1), 1), (addr(3), 4), (addr(1), 7)]));
        assert!(!new.has_same_endpoints([(addr(4), 1), (addr(1), 1), (addr(3), 1)]));
        assert!(!new.has_same_endpoints([(addr(4), 1), (addr(1), 1)]));
        assert!(!new.has_same_endpoints([(addr(4), 1), (addr(1), 1), (addr(3), 4), (addr(5), 1)]));
        assert_eq!(new.total_weight(), 6);
        assert!(!new.has_uniform_weights());
    }

    #[test]
    fn scan_remembers_that_nothing_is_available_until_something_changes() {
        let clock = ManualClock::new();
        let set = EndpointSet::from_weighted(
            (1..=4).map(|i| (addr(i), 1)),
            EndpointOptions::default(),
            clock.now(),
        );
        for ep in set.endpoints() {
            ep.eject_until(at(Duration::from_secs(30)));
        }
        let now = at(Duration::from_secs(1));
        // Other tests change health concurrently (the epoch is process-wide), which only ever
        // invalidates the hint; retry until one scan's hint survives to the check.
        assert!((0..1000).any(|_| {
            assert_eq!(set.scan_available(0, now), None);
            set.known_all_down(now)
        }));
        // The hint expires with the earliest ejection...
        assert!(!set.known_all_down(at(Duration::from_secs(30))));
        assert_eq!(set.scan_available(2, at(Duration::from_secs(30))), Some(2));
        // ...and is invalidated by any health change.
        assert_eq!(set.scan_available(0, now), None);
        set.endpoints()[3].clear_ejection(now);
        assert!(!set.known_all_down(now));
        assert_eq!(set.scan_available(0, now), Some(3));
        assert_eq!(
            set.health(now),
            SetHealth {
                total: 4,
                available: 1,
                panic: false
            }
        );
    }
}
