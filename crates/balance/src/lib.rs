//! Endpoint sets with per-endpoint load stats, and the load balancers that pick from them.
//!
//! An [`EndpointSet`] is an immutable snapshot published by discovery; its endpoints carry live
//! statistics (in flight, peak-EWMA latency, failures, health, ejection, slow start) updated with
//! atomics. A [`Balancer`] picks from a set without locks or allocation; tables that are costly
//! to build (hash ring, Maglev table, weighted schedule) are built once per set by
//! [`Balancer::prepare`], before the set is published.
//!
//! Per request: `let now = clock.now();` → `balancer.pick(&set, &PickContext::new(now))` →
//! `pick.endpoint.start_at(&clock, now)` → `guard.complete(outcome)` at response headers →
//! drop the guard when the body is done.

mod adaptive;
mod clock;
mod endpoint;
mod hash;
mod least_request;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;
mod select;
mod slow_start;
mod weighted_round_robin;

pub use adaptive::{Adaptive, AdaptiveConfig, CandidateScore, Switch};
pub use clock::{Clock, ManualClock, Timestamp};
pub use endpoint::{
    Endpoint, EndpointOptions, EndpointSet, EndpointStats, InFlight, Outcome, SetHealth,
};
pub use hash::hash_key;
pub use least_request::LeastRequest;
pub use maglev::{Maglev, MaglevConfig};
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use ring_hash::{RingHash, RingHashConfig};
pub use round_robin::RoundRobin;
pub use slow_start::SlowStart;
pub use weighted_round_robin::WeightedRoundRobin;

use std::sync::Arc;

/// Per-request inputs to a pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickContext {
    /// The current time (read once per request and reused for [`Endpoint::start_at`]).
    pub now: Timestamp,
    /// Hash of the request's affinity key (header, cookie, client address) for ring hash and
    /// Maglev; without one they pick a random endpoint.
    pub key: Option<u64>,
}

impl PickContext {
    /// A context at `now` without a hash key.
    pub fn new(now: Timestamp) -> Self {
        PickContext { now, key: None }
    }

    /// The same context with hash key `key` (see [`hash_key`]).
    pub fn with_key(self, key: u64) -> Self {
        PickContext {
            key: Some(key),
            ..self
        }
    }
}

/// The endpoint chosen for a request.
#[derive(Clone, Copy, Debug)]
pub struct Pick<'a> {
    /// The endpoint to send the request to.
    pub endpoint: &'a Arc<Endpoint>,
    /// Picked in panic mode: no endpoint was available (or panic was forced), so health was
    /// ignored. Worth a metric and a rate-limited log line.
    pub panic: bool,
}

impl<'a> Pick<'a> {
    pub(crate) fn healthy(endpoint: &'a Arc<Endpoint>) -> Self {
        Pick {
            endpoint,
            panic: false,
        }
    }

    pub(crate) fn panic(endpoint: &'a Arc<Endpoint>) -> Self {
        Pick {
            endpoint,
            panic: true,
        }
    }
}

/// Picks one endpoint from a set for each request.
///
/// Every implementation picks an available endpoint (healthy, not ejected) whenever one exists,
/// and falls back to all endpoints (reporting `Pick { panic: true, .. }`) only when none is
/// available or [`EndpointSet::force_panic`] is on.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Algorithm name shown in `/clusters`.
    fn name(&self) -> &'static str;

    /// Builds this algorithm's per-set tables, so that picks never build them. Call on each new
    /// set before publishing it (may take milliseconds for large sets: run it off the async
    /// executor). Picking from an unprepared set still works but builds on first use.
    fn prepare(&self, _set: &EndpointSet) {}

    /// The endpoint for the next request, or `None` when the set is empty.
    fn pick<'a>(&self, set: &'a EndpointSet, ctx: &PickContext) -> Option<Pick<'a>>;

    /// The adaptive balancer behind this one, if it is one (to record completions and evaluate).
    fn as_adaptive(&self) -> Option<&Adaptive> {
        None
    }
}

/// A load-balancing algorithm and its parameters, as configured for a cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// Each endpoint in turn, ignoring weights.
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// Power of two random choices on in-flight requests, weighted.
    LeastRequest,
    /// Power of two random choices on peak-EWMA latency × pending requests (linkerd).
    /// (Estimator parameters are per set: [`EndpointOptions`].)
    PeakEwma,
    /// Weighted random.
    Random,
    /// Ketama-style consistent hashing on the request key.
    RingHash(RingHashConfig),
    /// Maglev consistent hashing on the request key.
    Maglev(MaglevConfig),
    /// Switches between candidate algorithms by measured latency and errors.
    Adaptive(AdaptiveConfig),
}

/// Error for an algorithm that cannot be built as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAlgorithm(pub String);

impl std::fmt::Display for InvalidAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidAlgorithm {}

impl Algorithm {
    /// Config names of all algorithms, in [`Algorithm::from_name`] spelling.
    pub const NAMES: [&'static str; 8] = [
        "round_robin",
        "weighted_round_robin",
        "least_request",
        "p2c_ewma",
        "random",
        "ring_hash",
        "maglev",
        "adaptive",
    ];

    /// The algorithm with this config name and default parameters.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "round_robin" => Algorithm::RoundRobin,
            "weighted_round_robin" => Algorithm::WeightedRoundRobin,
            "least_request" => Algorithm::LeastRequest,
            "p2c_ewma" => Algorithm::PeakEwma,
            "random" => Algorithm::Random,
            "ring_hash" => Algorithm::RingHash(RingHashConfig::default()),
            "maglev" => Algorithm::Maglev(MaglevConfig::default()),
            "adaptive" => Algorithm::Adaptive(AdaptiveConfig::default()),
            _ => return None,
        })
    }

    /// Config name (also the built balancer's [`Balancer::name`]).
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastRequest => "least_request",
            Algorithm::PeakEwma => "p2c_ewma",
            Algorithm::Random => "random",
            Algorithm::RingHash(_) => "ring_hash",
            Algorithm::Maglev(_) => "maglev",
            Algorithm::Adaptive(_) => "adaptive",
        }
    }

    /// Whether picks need [`PickContext::key`] (consistent hashing).
    pub fn uses_key(&self) -> bool {
        matches!(self, Algorithm::RingHash(_) | Algorithm::Maglev(_))
    }

    /// Checks parameters (Maglev table size prime, ring sizes non-zero and ordered).
    pub fn validate(&self) -> Result<(), InvalidAlgorithm> {
        match self {
            Algorithm::Maglev(c) => c.validate(),
            Algorithm::RingHash(c) => c.validate(),
            Algorithm::Adaptive(c) => c.validate(),
            _ => Ok(()),
        }
    }

    /// A balancer for this algorithm. Invalid parameters are corrected rather than rejected
    /// (see [`Algorithm::validate`] to report them). Hash algorithms ignore slow start: ramping
    /// a weight would move keys.
    pub fn build(&self, slow_start: SlowStart) -> Box<dyn Balancer> {
        match self {
            Algorithm::RoundRobin => Box::new(RoundRobin::new(slow_start)),
            Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(slow_start)),
            Algorithm::LeastRequest => Box::new(LeastRequest::new(slow_start)),
            Algorithm::PeakEwma => Box::new(PeakEwma::new(slow_start)),
            Algorithm::Random => Box::new(Random::new(slow_start)),
            Algorithm::RingHash(c) => Box::new(RingHash::new(*c)),
            Algorithm::Maglev(c) => Box::new(Maglev::new(*c)),
            Algorithm::Adaptive(c) => Box::new(Adaptive::new(c.clone(), slow_start)),
        }
    }
}

#[cfg(test)]
mod tests;
