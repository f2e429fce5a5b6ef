//! Passive outlier detection (Envoy semantics) and the cluster's panic threshold.
//!
//! The data path reports each response head (or transport failure) with
//! [`OutlierDetector::observe`]: a map lookup through an `ArcSwap` and a few relaxed atomics,
//! no lock. When a consecutive-error counter reaches its threshold the endpoint is sent to the
//! detector's control loop over an unbounded channel (rare), which ejects it at once.
//! Every `interval` the loop also:
//! - evaluates success rates (Envoy's statistical rule: eject endpoints whose success rate is
//!   below `mean − stdev × stdev_factor`, among endpoints with at least `request_volume`
//!   requests in the interval, when at least `minimum_hosts` such endpoints exist), and
//!   failure percentages (a fixed threshold with the same volume rules);
//! - decrements the ejection multiplier of every endpoint that is not ejected.
//!
//! An ejection lasts `base_ejection_time × multiplier` (capped at `max_ejection_time`); the
//! multiplier grows by one per ejection. At most `max_ejection_percent` of the endpoints are
//! ejected at once, though one ejection is always allowed. Ejection ends by itself (the
//! endpoint's `ejected_until` passes) and the endpoint then ramps up through slow start.
//! Transport errors (connect failures, resets) count as 503s: they are 5xx and gateway errors.
//! Requests cancelled before their response head (route timeouts, clients gone) are not seen.

use arc_swap::ArcSwap;
use otlp_mesh_balance::{Clock, EndpointSet, Timestamp};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[cfg(test)]
mod tests;

/// Statistical success-rate ejection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
}

/// Fixed-threshold failure-percentage ejection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailurePercentage {
    /// Percent (0–100).
    pub threshold: f64,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

/// Outlier detection settings (`None` / `0` thresholds are off).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    pub cluster: String,
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Percent (0–100).
    pub max_ejection_percent: f64,
    pub success_rate: Option<SuccessRate>,
    pub failure_percentage: Option<FailurePercentage>,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            cluster: String::new(),
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: Some(5),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10.0,
            success_rate: None,
            failure_percentage: None,
        }
    }
}

/// What the data path saw from an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A response head with this status.
    Status(u16),
    /// The connection could not be made.
    ConnectFailure,
    /// Reset, protocol error or other transport failure after connecting.
    TransportError,
}

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    SuccessRate,
    FailurePercentage,
}

impl EjectReason {
    const ALL: [EjectReason; 4] = [
        EjectReason::Consecutive5xx,
        EjectReason::ConsecutiveGatewayErrors,
        EjectReason::SuccessRate,
        EjectReason::FailurePercentage,
    ];

    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            EjectReason::SuccessRate => "success_rate",
            EjectReason::FailurePercentage => "failure_percentage",
        }
    }

    fn index(self) -> usize {
        match self {
            EjectReason::Consecutive5xx => 0,
            EjectReason::ConsecutiveGatewayErrors => 1,
            EjectReason::SuccessRate => 2,
            EjectReason::FailurePercentage => 3,
        }
    }
}

/// Per-endpoint counters written by the data path.
#[derive(Debug, Default)]
struct HostCounters {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    success: AtomicU64,
    failure: AtomicU64,
}

impl HostCounters {
    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }
}

/// Counters of a detector, for `/metrics`.
#[derive(Debug, Default)]
pub struct OutlierStats {
    ejections: [AtomicU64; 4],
    /// Ejections skipped because `max_ejection_percent` was reached.
    pub ejections_overflow: AtomicU64,
    /// Endpoints ejected now (as of the control loop's last look).
    pub ejected: AtomicU64,
}

impl OutlierStats {
    /// Ejections so far for `reason`.
    pub fn ejections(&self, reason: EjectReason) -> u64 {
        self.ejections[reason.index()].load(Ordering::Relaxed)
    }

    /// Ejections by reason (all reasons, zeros included).
    pub fn for_each_ejection(&self, mut f: impl FnMut(&'static str, u64)) {
        for r in EjectReason::ALL {
            f(r.as_str(), self.ejections(r));
        }
    }
}

/// The panic threshold: when fewer than `threshold` percent of a set's endpoints are available,
/// forces panic mode (balance over all endpoints) and says so. Shared by the outlier detector
/// and the active health checker of a cluster.
#[derive(Debug)]
pub struct PanicGuard {
    cluster: String,
    threshold: f64,
    active: AtomicBool,
    entered: AtomicU64,
}

impl PanicGuard {
    /// `threshold` in percent; 0 never forces panic.
    pub fn new(cluster: impl Into<String>, threshold: f64) -> Self {
        PanicGuard {
            cluster: cluster.into(),
            threshold,
            active: AtomicBool::new(false),
            entered: AtomicU64::new(0),
        }
    }

    /// Re-evaluates the set at `now`; returns whether panic mode is forced.
    pub fn evaluate(&self, set: &EndpointSet, now: Timestamp) -> bool {
        let health = set.health(now);
        let want = health.total > 0
            && self.threshold > 0.0
            && (health.available as f64) * 100.0 < self.threshold * health.total as f64;
        if set.is_panic_forced() != want {
            set.force_panic(want);
        }
        let was = self.active.swap(want, Ordering::Relaxed);
        if want && !was {
            self.entered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = %self.cluster,
                available = health.available,
                total = health.total,
                threshold = self.threshold,
                "panic mode: too few endpoints available, balancing over all of them"
            );
        } else if was && !want {
            tracing::info!(cluster = %self.cluster, available = health.available, total = health.total, "panic mode over");
        }
        want
    }

    /// Whether the guard forces panic mode now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Times panic mode was entered.
    pub fn entered_total(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }
}

/// A cluster's passive outlier detector: data-path counters plus the ejection rules.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    hosts: ArcSwap<HashMap<SocketAddr, Arc<HostCounters>>>,
    trigger: mpsc::UnboundedSender<(SocketAddr, EjectReason)>,
    stats: OutlierStats,
}

/// Receives the endpoints whose consecutive-error counters reached a threshold.
pub type Triggers = mpsc::UnboundedReceiver<(SocketAddr, EjectReason)>;

/// Control-loop state: ejection multipliers and who is ejected.
#[derive(Debug, Default)]
pub struct DetectorState {
    multipliers: HashMap<SocketAddr, u32>,
    ejected: HashSet<SocketAddr>,
}

impl DetectorState {
    /// The ejection multiplier of `addr` (0 when never ejected or fully decayed).
    pub fn multiplier(&self, addr: &SocketAddr) -> u32 {
        self.multipliers.get(addr).copied().unwrap_or(0)
    }
}

impl OutlierDetector {
    /// A detector for the endpoints of `set`; the receiver goes to [`spawn`] (or to tests).
    pub fn new(config: OutlierConfig, set: &EndpointSet) -> (Arc<Self>, Triggers) {
        let (trigger, rx) = mpsc::unbounded_channel();
        let d = OutlierDetector {
            config,
            hosts: ArcSwap::from_pointee(HashMap::new()),
            trigger,
            stats: OutlierStats::default(),
        };
        d.sync_hosts(set);
        (Arc::new(d), rx)
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    pub fn stats(&self) -> &OutlierStats {
        &self.stats
    }

    /// Records what the data path saw from `addr` (lock-free).
    pub fn observe(&self, addr: SocketAddr, obs: Observation) {
        let hosts = self.hosts.load();
        let Some(h) = hosts.get(&addr) else {
            return;
        };
        let status = match obs {
            Observation::Status(s) => s,
            Observation::ConnectFailure | Observation::TransportError => 503,
        };
        let r = Ordering::Relaxed;
        if !(500..600).contains(&status) {
            h.success.fetch_add(1, r);
            if h.consecutive_5xx.load(r) != 0 {
                h.consecutive_5xx.store(0, r);
            }
            if h.consecutive_gateway.load(r) != 0 {
                h.consecutive_gateway.store(0, r);
            }
            return;
        }
        h.failure.fetch_add(1, r);
        if matches!(status, 502..=504) {
            let n = h.consecutive_gateway.fetch_add(1, r) + 1;
            if self.config.consecutive_gateway_errors == Some(n) {
                let _ = self
                    .trigger
                    .send((addr, EjectReason::ConsecutiveGatewayErrors));
            }
        } else {
            h.consecutive_gateway.store(0, r);
        }
        let n = h.consecutive_5xx.fetch_add(1, r) + 1;
        if self.config.consecutive_5xx == Some(n) {
            let _ = self.trigger.send((addr, EjectReason::Consecutive5xx));
        }
    }

    /// Makes sure every endpoint of `set` has counters (and forgets removed ones).
    pub fn sync_hosts(&self, set: &EndpointSet) {
        let current = self.hosts.load();
        let same = current.len() == set.len()
            && set
                .endpoints()
                .iter()
                .all(|e| current.contains_key(&e.addr));
        if same {
            return;
        }
        let next: HashMap<_, _> = set
            .endpoints()
            .iter()
            .map(|e| {
                let c = current.get(&e.addr).cloned().unwrap_or_default();
                (e.addr, c)
            })
            .collect();
        self.hosts.store(Arc::new(next));
    }

    /// A consecutive-error threshold was reached for `addr`: ejects it if allowed.
    pub fn on_trigger(
        &self,
        state: &mut DetectorState,
        set: &EndpointSet,
        addr: SocketAddr,
        reason: EjectReason,
        now: Timestamp,
    ) -> bool {
        if let Some(h) = self.hosts.load().get(&addr) {
            h.reset_consecutive();
        }
        self.try_eject(state, set, addr, reason, now)
    }

    /// The periodic pass: forgets ended ejections, decays multipliers, then applies the
    /// success-rate and failure-percentage rules to this interval's counts (and resets them).
    /// Returns the endpoints ejected.
    pub fn on_interval(
        &self,
        state: &mut DetectorState,
        set: &EndpointSet,
        now: Timestamp,
    ) -> Vec<(SocketAddr, EjectReason)> {
        self.sync_hosts(set);
        self.reap(state, set, now);
        for ep in set.endpoints() {
            if !ep.is_ejected(now)
                && let Some(m) = state.multipliers.get_mut(&ep.addr)
            {
                *m = m.saturating_sub(1);
            }
        }
        state.multipliers.retain(|_, m| *m > 0);

        // (addr, success, total) of this interval, for endpoints not ejected now.
        let hosts = self.hosts.load();
        let counts: Vec<(SocketAddr, u64, u64)> = set
            .endpoints()
            .iter()
            .filter_map(|ep| {
                let h = hosts.get(&ep.addr)?;
                let s = h.success.swap(0, Ordering::Relaxed);
                let f = h.failure.swap(0, Ordering::Relaxed);
                (!ep.is_ejected(now)).then_some((ep.addr, s, s + f))
            })
            .collect();
        let mut out = Vec::new();
        if let Some(sr) = self.config.success_rate {
            let judged: Vec<(SocketAddr, f64)> = counts
                .iter()
                .filter(|(_, _, t)| *t >= u64::from(sr.request_volume) && *t > 0)
                .map(|&(a, s, t)| (a, s as f64 * 100.0 / t as f64))
                .collect();
            if judged.len() >= sr.minimum_hosts as usize && !judged.is_empty() {
                let n = judged.len() as f64;
                let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
                let var = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let limit = mean - var.sqrt() * sr.stdev_factor;
                for &(a, rate) in &judged {
                    if rate < limit && self.try_eject(state, set, a, EjectReason::SuccessRate, now)
                    {
                        out.push((a, EjectReason::SuccessRate));
                    }
                }
            }
        }
        if let Some(fp) = self.config.failure_percentage {
            let judged: Vec<(SocketAddr, f64)> = counts
                .iter()
                .filter(|(_, _, t)| *t >= u64::from(fp.request_volume) && *t > 0)
                .map(|&(a, s, t)| (a, (t - s) as f64 * 100.0 / t as f64))
                .collect();
            if judged.len() >= fp.minimum_hosts as usize {
                for &(a, pct) in &judged {
                    if pct >= fp.threshold
                        && self.try_eject(state, set, a, EjectReason::FailurePercentage, now)
                    {
                        out.push((a, EjectReason::FailurePercentage));
                    }
                }
            }
        }
        out
    }

    /// Forgets ejections that have ended by `now` and refreshes the `ejected` gauge.
    /// Returns when the next current ejection ends.
    pub fn reap(
        &self,
        state: &mut DetectorState,
        set: &EndpointSet,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let by_addr: HashMap<SocketAddr, _> = set.endpoints().iter().map(|e| (e.addr, e)).collect();
        let mut next: Option<Timestamp> = None;
        state.ejected.retain(|addr| match by_addr.get(addr) {
            Some(ep) if ep.is_ejected(now) => {
                if let Some(t) = ep.ejected_until() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                true
            }
            Some(_) => {
                tracing::info!(cluster = %self.config.cluster, endpoint = %addr, "ejection over: endpoint returns (through slow start)");
                false
            }
            None => false,
        });
        self.stats
            .ejected
            .store(state.ejected.len() as u64, Ordering::Relaxed);
        next
    }

    fn try_eject(
        &self,
        state: &mut DetectorState,
        set: &EndpointSet,
        addr: SocketAddr,
        reason: EjectReason,
        now: Timestamp,
    ) -> bool {
        let Some(ep) = set.endpoints().iter().find(|e| e.addr == addr) else {
            return false;
        };
        if ep.is_ejected(now) {
            return false;
        }
        let total = set.len();
        let ejected = set.endpoints().iter().filter(|e| e.is_ejected(now)).count();
        if ejected > 0
            && (ejected + 1) as f64 * 100.0 > self.config.max_ejection_percent * total as f64
        {
            self.stats
                .ejections_overflow
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %self.config.cluster, endpoint = %addr, reason = reason.as_str(), "not ejected: max_ejection_percent reached");
            return false;
        }
        let m = state.multipliers.entry(addr).or_insert(0);
        *m = m.saturating_add(1);
        let cap = self
            .config
            .max_ejection_time
            .max(self.config.base_ejection_time);
        let duration = self.config.base_ejection_time.saturating_mul(*m).min(cap);
        ep.eject_until(now + duration);
        if let Some(h) = self.hosts.load().get(&addr) {
            h.reset_consecutive();
        }
        state.ejected.insert(addr);
        self.stats.ejections[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.stats
            .ejected
            .store(state.ejected.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            cluster = %self.config.cluster,
            endpoint = %addr,
            reason = reason.as_str(),
            ejected_for_ms = duration.as_millis() as u64,
            times = *m,
            "outlier ejected"
        );
        true
    }
}

/// Runs the detector's control loop until the handle is aborted (the cluster's `Drop` does).
pub fn spawn(
    detector: Arc<OutlierDetector>,
    mut triggers: Triggers,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    clock: Clock,
    panic: Option<Arc<PanicGuard>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = DetectorState::default();
        let interval = detector.config.interval.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Endpoints added by discovery get counters within a second, not only at the interval.
        let mut refresh = tokio::time::interval(Duration::from_secs(1).min(interval));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_end: Option<Timestamp> = None;
        loop {
            let wake = next_end
                .map(|t| tokio::time::Instant::now() + t.saturating_duration_since(clock.now()));
            tokio::select! {
                msg = triggers.recv() => {
                    let Some((addr, reason)) = msg else { return };
                    let set = endpoints.load();
                    detector.sync_hosts(&set);
                    detector.on_trigger(&mut state, &set, addr, reason, clock.now());
                }
                _ = refresh.tick() => {
                    detector.sync_hosts(&endpoints.load());
                }
                _ = tick.tick() => {
                    let set = endpoints.load();
                    detector.on_interval(&mut state, &set, clock.now());
                }
                _ = async { if let Some(w) = wake { tokio::time::sleep_until(w).await } }, if wake.is_some() => {}
            }
            let set = endpoints.load();
            let now = clock.now();
            next_end = detector.reap(&mut state, &set, now);
            if let Some(p) = &panic {
                p.evaluate(&set, now);
            }
        }
    })
}
