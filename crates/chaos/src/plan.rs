//! Deciding which faults a request gets: match rules, roll percentages, respect `max_active`,
//! count. Pure apart from the counters; the layer then executes the plan.

use crate::headers::{self, HeaderFaultLimits};
use crate::registry::{FaultRegistry, RuleSource, RuleStatus};
use crate::rule::{AbortAction, DelayPhase, FaultScope};
use crate::sample::roll;
use crate::stats::{ActiveGuard, FaultKind, RuleStats};
use http::Request;
use std::sync::Arc;
use std::time::Duration;

/// Where a layer instance sits: the listener, route and cluster names rules can match on, the
/// stack position it serves, and whether header-driven faults are enabled there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultTarget {
    /// Listener name (`match.listener`).
    pub listener: String,
    /// Route name (`match.route`).
    pub route: String,
    /// Cluster the route sends to (`match.cluster`), if known.
    pub cluster: Option<String>,
    /// Which rules this instance applies: `Request` (outside retries) or `Attempt` (inside).
    pub scope: FaultScope,
    /// `Some` enables `x-fault-*` headers with these caps; `None` (default) ignores them.
    pub header_faults: Option<HeaderFaultLimits>,
}

impl FaultTarget {
    /// A target for `listener` / `route` in the `Request` scope, header faults off.
    pub fn new(listener: impl Into<String>, route: impl Into<String>) -> Self {
        FaultTarget {
            listener: listener.into(),
            route: route.into(),
            ..FaultTarget::default()
        }
    }
}

/// One fault given to a request (for span attributes: `fault.kind`, `fault.rule`, `fault.delay_ms`).
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedFault {
    /// Rule name (`headers` for header-driven faults).
    pub rule: Arc<str>,
    /// Where the rule came from.
    pub source: RuleSource,
    /// What was injected.
    pub kind: FaultKind,
    /// The delay, for `Delay`.
    pub delay: Option<Duration>,
    /// The phase, for `Delay`.
    pub phase: Option<DelayPhase>,
    /// The HTTP status, for an HTTP `Abort`.
    pub http_status: Option<u16>,
    /// The gRPC status, for a gRPC `Abort`.
    pub grpc_status: Option<u8>,
    /// The rate, for `Throttle`.
    pub bytes_per_second: Option<u64>,
}

/// Every fault given to a request; inserted into the response extensions when non-empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedFaults(pub Vec<AppliedFault>);

impl AppliedFaults {
    /// `fault.kind`: kinds joined by commas (`delay,abort`).
    pub fn kinds(&self) -> String {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.0 {
            if !out.contains(&f.kind.as_str()) {
                out.push(f.kind.as_str());
            }
        }
        out.join(",")
    }

    /// `fault.rule`: rule names joined by commas, each once.
    pub fn rules(&self) -> String {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.0 {
            if !out.contains(&&*f.rule) {
                out.push(&f.rule);
            }
        }
        out.join(",")
    }

    /// `fault.delay_ms`: total injected delay (both phases).
    pub fn delay(&self) -> Duration {
        self.0.iter().filter_map(|f| f.delay).sum()
    }

    /// True when no fault was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a planned request ends early.
#[derive(Debug)]
pub(crate) enum Terminal {
    Abort(AbortAction),
    Reset,
}

/// The faults decided for one request.
///
/// Combination: rules are tried in order (header-driven faults first); each kind — request delay,
/// response delay, abort-or-reset, throttle — comes from the first rule whose roll hits, and later
/// rules do not roll for a kind already taken. Within a rule, reset is rolled before abort.
#[derive(Debug, Default)]
pub struct FaultPlan {
    pub(crate) request_delay: Option<Duration>,
    pub(crate) response_delay: Option<Duration>,
    pub(crate) terminal: Option<Terminal>,
    pub(crate) throttle: Option<u64>,
    pub(crate) applied: AppliedFaults,
    /// Released when the response head is produced.
    pub(crate) guards: Vec<ActiveGuard>,
    /// Released when the (throttled) response body ends.
    pub(crate) body_guards: Vec<ActiveGuard>,
}

impl FaultPlan {
    /// Delay before the request goes upstream.
    pub fn request_delay(&self) -> Option<Duration> {
        self.request_delay
    }
    /// Delay of the response head.
    pub fn response_delay(&self) -> Option<Duration> {
        self.response_delay
    }
    /// HTTP status of a planned HTTP abort.
    pub fn abort_http_status(&self) -> Option<u16> {
        match &self.terminal {
            Some(Terminal::Abort(AbortAction::Http { status, .. })) => Some(status.as_u16()),
            _ => None,
        }
    }
    /// gRPC status of a planned gRPC abort.
    pub fn abort_grpc_status(&self) -> Option<u8> {
        match &self.terminal {
            Some(Terminal::Abort(AbortAction::Grpc { code, .. })) => Some(*code),
            _ => None,
        }
    }
    /// Whether the request is to be reset.
    pub fn is_reset(&self) -> bool {
        matches!(self.terminal, Some(Terminal::Reset))
    }
    /// Planned throttle rate.
    pub fn throttle(&self) -> Option<u64> {
        self.throttle
    }
    /// The faults, for span attributes.
    pub fn applied(&self) -> &AppliedFaults {
        &self.applied
    }
}

/// What one rule (or the header pseudo-rule) offers, already rolled.
struct Hits {
    delay: Option<(Duration, DelayPhase)>,
    terminal: Option<Terminal>,
    throttle: Option<u64>,
}

impl Hits {
    fn is_empty(&self) -> bool {
        self.delay.is_none() && self.terminal.is_none() && self.throttle.is_none()
    }
}

impl FaultPlan {
    fn delay_free(&self, phase: DelayPhase) -> bool {
        match phase {
            DelayPhase::Request => self.request_delay.is_none(),
            DelayPhase::Response => self.response_delay.is_none(),
        }
    }

    /// Takes a slot and records the hits, or counts a `max_active` skip.
    fn apply(
        &mut self,
        rule: &Arc<str>,
        source: RuleSource,
        stats: &Arc<RuleStats>,
        max_active: Option<u32>,
        hits: Hits,
    ) {
        let Some(guard) = stats.try_acquire(max_active) else {
            stats.record_skipped();
            return;
        };
        let base = AppliedFault {
            rule: rule.clone(),
            source,
            kind: FaultKind::Delay,
            delay: None,
            phase: None,
            http_status: None,
            grpc_status: None,
            bytes_per_second: None,
        };
        if let Some((d, phase)) = hits.delay {
            stats.record_injected(FaultKind::Delay);
            stats.record_delay(d);
            match phase {
                DelayPhase::Request => self.request_delay = Some(d),
                DelayPhase::Response => self.response_delay = Some(d),
            }
            self.applied.0.push(AppliedFault {
                delay: Some(d),
                phase: Some(phase),
                ..base.clone()
            });
        }
        if let Some(t) = hits.terminal {
            let fault = match &t {
                Terminal::Reset => AppliedFault {
                    kind: FaultKind::Reset,
                    ..base.clone()
                },
                Terminal::Abort(AbortAction::Http { status, .. }) => AppliedFault {
                    kind: FaultKind::Abort,
                    http_status: Some(status.as_u16()),
                    ..base.clone()
                },
                Terminal::Abort(AbortAction::Grpc { code, .. }) => AppliedFault {
                    kind: FaultKind::Abort,
                    grpc_status: Some(*code),
                    ..base.clone()
                },
            };
            stats.record_injected(fault.kind);
            self.applied.0.push(fault);
            self.terminal = Some(t);
        }
        if let Some(bps) = hits.throttle {
            stats.record_injected(FaultKind::Throttle);
            self.throttle = Some(bps);
            self.applied.0.push(AppliedFault {
                kind: FaultKind::Throttle,
                bytes_per_second: Some(bps),
                ..base
            });
            self.body_guards.push(guard);
        } else {
            self.guards.push(guard);
        }
    }
}

impl FaultRegistry {
    /// Decides the faults for a request reaching the layer at `target`; `None` when it gets none.
    /// Counts matches, injections and `max_active` skips.
    pub fn plan<B>(
        &self,
        req: &Request<B>,
        target: &FaultTarget,
        rng: &mut fastrand::Rng,
    ) -> Option<FaultPlan> {
        if !self.is_enabled() {
            return None;
        }
        let snap = self.load_if_any();
        if snap.is_none() && target.header_faults.is_none() {
            // Nothing could apply: the common case costs no plan to build and drop.
            return None;
        }
        let mut plan = FaultPlan::default();

        if let Some(limits) = &target.header_faults
            && let Some(h) = headers::parse(req.headers(), limits)
        {
            let (name, stats) = self.header_stats();
            stats.record_matched();
            if roll(rng, h.percent) {
                let hits = Hits {
                    delay: h.delay.map(|d| (d, DelayPhase::Request)),
                    terminal: h.abort.map(Terminal::Abort),
                    throttle: h.throttle,
                };
                if !hits.is_empty() {
                    plan.apply(name, RuleSource::Header, stats, limits.max_active, hits);
                }
            }
        }

        for rule in snap.iter().flat_map(|s| s.rules.iter()) {
            if rule.spec.scope != target.scope {
                continue;
            }
            if !rule
                .compiled
                .matcher
                .matches(req.method(), req.uri(), req.headers(), target)
            {
                continue;
            }
            if rule.status() != RuleStatus::Active {
                continue;
            }
            rule.stats.record_matched();
            let c = &rule.compiled;
            let delay = c
                .delay
                .as_ref()
                .filter(|d| plan.delay_free(d.phase) && roll(rng, d.percent))
                .map(|d| (d.dist.sample(rng, d.cap), d.phase));
            let mut terminal = None;
            if plan.terminal.is_none() {
                if c.reset.is_some_and(|p| roll(rng, p)) {
                    terminal = Some(Terminal::Reset);
                } else if let Some((p, action)) = &c.abort
                    && roll(rng, *p)
                {
                    terminal = Some(Terminal::Abort(action.clone()));
                }
            }
            let throttle = c
                .throttle
                .filter(|(p, _)| plan.throttle.is_none() && roll(rng, *p))
                .map(|(_, bps)| bps);
            let hits = Hits {
                delay,
                terminal,
                throttle,
            };
            if hits.is_empty() {
                continue;
            }
            plan.apply(
                &rule.name,
                rule.source,
                &rule.stats,
                rule.spec.max_active,
                hits,
            );
        }
        if plan.applied.is_empty() {
            return None;
        }
        tracing::debug!(
            listener = %target.listener,
            route = %target.route,
            fault.kind = %plan.applied.kinds(),
            fault.rule = %plan.applied.rules(),
            fault.delay_ms = plan.applied.delay().as_millis() as u64,
            "fault injected"
        );
        Some(plan)
    }
}
