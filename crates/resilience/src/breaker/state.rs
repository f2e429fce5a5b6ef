//! The breaker's shared state: one atomic word for `(generation, half-open probes, state)`,
//! atomics for the concurrency gauges and the consecutive-failure count, an optional lock-free
//! error-rate window, and a mutex taken only for state transitions (rare: it serialises the
//! open-duration bookkeeping and logging; the closed-state path never takes it).
//!
//! Every transition bumps the generation. A request remembers the generation it was admitted
//! under; its outcome only drives transitions if the generation is unchanged, so results of
//! requests from an earlier period (e.g. slow failures finishing after the breaker opened, or a
//! probe finishing after another probe already re-opened it) cannot cause spurious transitions.

use super::error::{CircuitOpen, Overloaded, Reject, Threshold};
use super::{BreakerConfig, BreakerStats, CircuitState};
use crate::retry::Backoff;
use crate::window::{Buckets, Clock, nanos};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const PROBE_SHIFT: u32 = 2;
const PROBE_ONE: u64 = 1 << PROBE_SHIFT;
const GEN_SHIFT: u32 = 18;

fn pack(generation: u64, probes: u32, state: CircuitState) -> u64 {
    (generation << GEN_SHIFT) | (u64::from(probes & 0xFFFF) << PROBE_SHIFT) | state as u64
}

fn state_of(w: u64) -> CircuitState {
    match w & 3 {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        _ => CircuitState::HalfOpen,
    }
}

fn probes_of(w: u64) -> u32 {
    ((w >> PROBE_SHIFT) & 0xFFFF) as u32
}

fn gen_of(w: u64) -> u64 {
    w >> GEN_SHIFT
}

#[derive(Debug)]
struct RateWindow {
    clock: Clock,
    requests: Buckets,
    failures: Buckets,
    threshold: f64,
    min_requests: u64,
}

/// How a finished request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    /// Neither (a local rejection or the request's own fault).
    Ignored,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) name: Box<str>,
    word: AtomicU64,
    origin: Instant,
    open_until: AtomicU64,
    since: AtomicU64,
    consecutive: AtomicU32,
    window: Option<RateWindow>,
    active: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    max_active: u32,
    max_pending: u32,
    max_retries: u32,
    consecutive_limit: u32,
    max_probes: u32,
    open: Backoff,
    pub(crate) failure_on: crate::Conditions,
    /// Re-opens since the last close; held only while transitioning.
    transition: Mutex<u32>,
    pub(crate) stats: Arc<BreakerStats>,
}

fn try_inc(c: &AtomicU32, max: u32) -> bool {
    if c.fetch_add(1, Ordering::AcqRel) >= max {
        c.fetch_sub(1, Ordering::AcqRel);
        false
    } else {
        true
    }
}

impl Inner {
    pub(crate) fn new(config: &BreakerConfig, stats: Arc<BreakerStats>) -> Self {
        let origin = Instant::now();
        let window = config.error_rate.map(|r| {
            let buckets = r.buckets.max(1);
            RateWindow {
                clock: Clock::new(origin, (r.window / buckets).max(Duration::from_nanos(1))),
                requests: Buckets::new(buckets),
                failures: Buckets::new(buckets),
                threshold: r.threshold,
                min_requests: u64::from(r.min_requests.max(1)),
            }
        });
        Inner {
            name: config.name.clone().into_boxed_str(),
            word: AtomicU64::new(pack(0, 0, CircuitState::Closed)),
            origin,
            open_until: AtomicU64::new(0),
            since: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window,
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            max_active: config.max_active.unwrap_or(u32::MAX),
            max_pending: config.max_pending.unwrap_or(u32::MAX),
            max_retries: config.max_retries.unwrap_or(u32::MAX),
            consecutive_limit: config.consecutive_failures.unwrap_or(0),
            max_probes: config.half_open_probes.clamp(1, 0xFFFF),
            open: Backoff {
                base: config.open_base,
                max: config.open_max.max(config.open_base),
            },
            failure_on: config.failure_on,
            transition: Mutex::new(0),
            stats,
        }
    }

    fn at(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.origin))
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.word.load(Ordering::Acquire))
    }

    pub(crate) fn since(&self) -> Instant {
        self.origin + Duration::from_nanos(self.since.load(Ordering::Acquire))
    }

    pub(crate) fn open_until(&self) -> Option<Instant> {
        (self.state() == CircuitState::Open)
            .then(|| self.origin + Duration::from_nanos(self.open_until.load(Ordering::Acquire)))
    }

    pub(crate) fn gauges(&self) -> (u32, u32, u32, u32) {
        (
            self.active.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.consecutive.load(Ordering::Relaxed),
        )
    }

    /// Lets a request through the state machine: `(generation, is_probe)`.
    fn admit_state(&self) -> Result<(u64, bool), CircuitOpen> {
        loop {
            let w = self.word.load(Ordering::Acquire);
            match state_of(w) {
                CircuitState::Closed => return Ok((gen_of(w), false)),
                CircuitState::Open => {
                    let now = Instant::now();
                    let at = self.at(now);
                    let until = self.open_until.load(Ordering::Acquire);
                    if at < until {
                        BreakerStats::bump(&self.stats.rejected_open);
                        return Err(CircuitOpen {
                            state: CircuitState::Open,
                            retry_in: Duration::from_nanos(until - at),
                        });
                    }
                    // The open period is over: this request becomes the first probe.
                    if let Some(nw) = self.transition(w, CircuitState::HalfOpen, now) {
                        return Ok((gen_of(nw), true));
                    }
                }
                CircuitState::HalfOpen => {
                    if probes_of(w) >= self.max_probes {
                        BreakerStats::bump(&self.stats.rejected_open);
                        return Err(CircuitOpen {
                            state: CircuitState::HalfOpen,
                            retry_in: Duration::ZERO,
                        });
                    }
                    if self
                        .word
                        .compare_exchange(w, w + PROBE_ONE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok((gen_of(w), true));
                    }
                }
            }
        }
    }

    /// Moves from the state observed in `observed` to `to`, unless another transition happened
    /// first (generation changed); returns the new word.
    fn transition(&self, observed: u64, to: CircuitState, now: Instant) -> Option<u64> {
        let mut reopens = self
            .transition
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut cur = self.word.load(Ordering::Acquire);
        let open_for = self.open.ceiling(*reopens + 1);
        if to == CircuitState::Open {
            // Only published once the word below is swapped (readers check the state first).
            if gen_of(cur) != gen_of(observed) {
                return None;
            }
            self.open_until
                .store(self.at(now) + nanos(open_for), Ordering::Release);
        }
        let new = loop {
            if gen_of(cur) != gen_of(observed) {
                return None;
            }
            let probes = u32::from(to == CircuitState::HalfOpen);
            let new = pack(gen_of(cur) + 1, probes, to);
            match self
                .word
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break new,
                Err(v) => cur = v,
            }
        };
        let from = state_of(cur);
        self.since.store(self.at(now), Ordering::Release);
        match to {
            CircuitState::Open => {
                *reopens = reopens.saturating_add(1);
                BreakerStats::bump(&self.stats.opened);
                tracing::warn!(
                    breaker = %self.name,
                    from = from.as_str(),
                    to = to.as_str(),
                    open_for_ms = open_for.as_millis() as u64,
                    consecutive_failures = self.consecutive.load(Ordering::Relaxed),
                    "circuit breaker opened"
                );
            }
            CircuitState::HalfOpen => {
                BreakerStats::bump(&self.stats.half_opened);
                tracing::info!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker half-open");
            }
            CircuitState::Closed => {
                *reopens = 0;
                self.consecutive.store(0, Ordering::Relaxed);
                if let Some(w) = &self.window {
                    w.requests.clear();
                    w.failures.clear();
                }
                BreakerStats::bump(&self.stats.closed);
                tracing::info!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker closed");
            }
        }
        Some(new)
    }

    /// Takes a `max_retries` slot.
    pub(crate) fn try_retry(&self) -> bool {
        let ok = try_inc(&self.retries, self.max_retries);
        if !ok {
            BreakerStats::bump(&self.stats.overloaded_retries);
        }
        ok
    }

    pub(crate) fn release_retry(&self) {
        self.retries.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Admits a request: state machine first, then `max_pending` (if the inner service was not
    /// ready) or `max_active`.
    pub(crate) fn admit(self: &Arc<Self>, pending: bool) -> Result<Admission, Reject> {
        let (generation, probe) = self.admit_state().map_err(Reject::Open)?;
        let mut adm = Admission {
            inner: self.clone(),
            generation,
            probe,
            active: false,
            pending: false,
            settled: false,
        };
        if pending {
            if !try_inc(&self.pending, self.max_pending) {
                adm.settled = true;
                BreakerStats::bump(&self.stats.overloaded_pending);
                return Err(Reject::Overloaded(Overloaded {
                    threshold: Threshold::PendingRequests,
                    limit: self.max_pending,
                }));
            }
            adm.pending = true;
        } else {
            adm.activate().map_err(Reject::Overloaded)?;
        }
        Ok(adm)
    }
}

/// One admitted request: holds its concurrency slots and probe slot until dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    inner: Arc<Inner>,
    generation: u64,
    probe: bool,
    active: bool,
    pending: bool,
    /// An outcome was recorded (or the request was rejected): not a cancellation.
    settled: bool,
}

impl Admission {
    /// Pending → active (or straight to active), checking `max_active`.
    pub(crate) fn activate(&mut self) -> Result<(), Overloaded> {
        let inner = &*self.inner;
        if self.pending {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            self.pending = false;
        }
        if !try_inc(&inner.active, inner.max_active) {
            self.settled = true;
            BreakerStats::bump(&inner.stats.overloaded_active);
            return Err(Overloaded {
                threshold: Threshold::ActiveRequests,
                limit: inner.max_active,
            });
        }
        self.active = true;
        Ok(())
    }

    /// Records how the request ended and runs the state machine.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        self.settled = true;
        let inner = &*self.inner;
        match outcome {
            Outcome::Success => BreakerStats::bump(&inner.stats.successes),
            Outcome::Failure => BreakerStats::bump(&inner.stats.failures),
            Outcome::Ignored => return,
        }
        let failure = outcome == Outcome::Failure;
        let w = inner.word.load(Ordering::Acquire);
        if gen_of(w) != self.generation {
            return; // admitted under an earlier state: counted, but no transition
        }
        match state_of(w) {
            CircuitState::Closed => {
                let mut now = None;
                let mut trip = false;
                if let Some(win) = &inner.window {
                    let t = Instant::now();
                    now = Some(t);
                    let epoch = win.clock.epoch(t);
                    win.requests.add(epoch, 1);
                    if failure {
                        win.failures.add(epoch, 1);
                        let total = win.requests.sum(epoch);
                        let failed = win.failures.sum(epoch);
                        trip = total >= win.min_requests
                            && failed as f64 >= win.threshold * total as f64;
                    }
                }
                if failure {
                    let n = inner.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                    trip |= inner.consecutive_limit > 0 && n >= inner.consecutive_limit;
                    if trip {
                        inner.transition(w, CircuitState::Open, now.unwrap_or_else(Instant::now));
                    }
                } else if inner.consecutive.load(Ordering::Relaxed) != 0 {
                    inner.consecutive.store(0, Ordering::Relaxed);
                }
            }
            CircuitState::HalfOpen if self.probe => {
                let to = if failure {
                    CircuitState::Open
                } else {
                    CircuitState::Closed
                };
                inner.transition(w, to, Instant::now());
            }
            _ => {}
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let inner = &*self.inner;
        if self.active {
            inner.active.fetch_sub(1, Ordering::AcqRel);
        }
        if self.pending {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if !self.settled {
            BreakerStats::bump(&inner.stats.cancelled);
        }
        if self.probe {
            // Give the probe slot back unless this probe's result already changed the state.
            let mut w = inner.word.load(Ordering::Acquire);
            while gen_of(w) == self.generation
                && state_of(w) == CircuitState::HalfOpen
                && probes_of(w) > 0
            {
                match inner.word.compare_exchange(
                    w,
                    w - PROBE_ONE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(v) => w = v,
                }
            }
        }
    }
}

impl Admission {
    /// The breaker's failure conditions.
    pub(crate) fn failure_on(&self) -> crate::Conditions {
        self.inner.failure_on
    }
}
