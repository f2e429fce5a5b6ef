//! The set of fault rules: from the config file and from the admin API, read lock-free on the
//! request path (an `arc-swap` snapshot), changed by swapping in a new snapshot.

use crate::rule::{CompiledRule, FaultRule, FieldError};
use crate::stats::{self, FaultKind, RuleStats, StatsSnapshot};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::time::Instant;

/// Where a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// The config file; replaced on reload.
    Config,
    /// The admin API; survives config reloads.
    Api,
    /// Header-driven faults (`x-fault-*`), shown as one pseudo-rule.
    Header,
}

impl RuleSource {
    /// Lower-case name used in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSource::Config => "config",
            RuleSource::Api => "api",
            RuleSource::Header => "header",
        }
    }
}

/// Whether a rule injects faults right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    /// On: matching requests may get faults.
    Active,
    /// `enabled: false`.
    Disabled,
    /// Before `schedule.start`.
    Pending,
    /// After `schedule.stop` or `schedule.duration`.
    Expired,
    /// The global kill switch is on (`disable_all`).
    Killed,
}

/// Result of [`FaultRegistry::put`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// No rule had this name.
    Created,
    /// A rule with this name (from either source) was replaced.
    Replaced,
}

/// A rule as loaded: its spec, compiled form, source, counters and schedule clock.
#[derive(Debug)]
pub(crate) struct LiveRule {
    pub name: Arc<str>,
    pub spec: FaultRule,
    pub compiled: CompiledRule,
    pub source: RuleSource,
    pub stats: Arc<RuleStats>,
    /// When `schedule.duration` (without `start`) runs out.
    pub expires_at: Option<Instant>,
    /// `schedule.stop`, or `start + duration`.
    pub stop: Option<SystemTime>,
    loaded_at: Instant,
}

impl LiveRule {
    fn new(
        spec: FaultRule,
        compiled: CompiledRule,
        source: RuleSource,
        stats: Arc<RuleStats>,
        loaded_at: Instant,
    ) -> Self {
        let (expires_at, stop) = match (compiled.start, compiled.duration) {
            (Some(start), Some(d)) => (None, Some(start + d)),
            (None, Some(d)) => (Some(loaded_at + d), compiled.stop),
            (_, None) => (None, compiled.stop),
        };
        LiveRule {
            name: Arc::from(spec.name.as_str()),
            spec,
            compiled,
            source,
            stats,
            expires_at,
            stop,
            loaded_at,
        }
    }

    /// The rule's status, ignoring the kill switch.
    pub fn status(&self) -> RuleStatus {
        if !self.spec.enabled {
            return RuleStatus::Disabled;
        }
        if self.expires_at.is_some_and(|t| Instant::now() >= t) {
            return RuleStatus::Expired;
        }
        if self.compiled.start.is_some() || self.stop.is_some() {
            let now = SystemTime::now();
            if self.compiled.start.is_some_and(|s| now < s) {
                return RuleStatus::Pending;
            }
            if self.stop.is_some_and(|s| now >= s) {
                return RuleStatus::Expired;
            }
        }
        RuleStatus::Active
    }
}

/// One immutable set of rules, in evaluation order.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub rules: Vec<Arc<LiveRule>>,
}

#[derive(Debug)]
struct Inner {
    snapshot: ArcSwap<Snapshot>,
    /// How many rules `snapshot` holds, so that requests skip loading it while there are none
    /// (one atomic load instead of the snapshot's reference dance, twice per request).
    rule_count: AtomicUsize,
    /// Serialises writers (readers never take it).
    writer: Mutex<()>,
    killed: AtomicBool,
    seed: Option<u64>,
    seq: AtomicU64,
    header_stats: Arc<RuleStats>,
    header_rule: Arc<str>,
}

/// Name under which header-driven faults are counted and reported.
pub(crate) const HEADER_RULE: &str = "headers";

/// Fault rules with their source and counters; cheap to clone (one `Arc`).
///
/// Rules are evaluated in order: config rules in file order, then API rules in creation order.
/// A `put` with the name of a config rule replaces it (the rule becomes an API rule and moves to
/// the API part); a config reload then keeps the API version. Changes apply to requests that
/// start after them; a request in flight keeps the faults it was given.
#[derive(Clone, Debug)]
pub struct FaultRegistry {
    inner: Arc<Inner>,
}

impl Default for FaultRegistry {
    fn default() -> Self {
        FaultRegistry::new()
    }
}

impl FaultRegistry {
    /// An empty registry drawing randomness from the thread-local `fastrand` generator.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty registry whose services draw from generators seeded from `seed` (reproducible tests).
    pub fn with_seed(seed: u64) -> Self {
        Self::build(Some(seed))
    }

    fn build(seed: Option<u64>) -> Self {
        FaultRegistry {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                rule_count: AtomicUsize::new(0),
                writer: Mutex::new(()),
                killed: AtomicBool::new(false),
                seed,
                seq: AtomicU64::new(0),
                header_stats: Arc::new(RuleStats::default()),
                header_rule: Arc::from(HEADER_RULE),
            }),
        }
    }

    /// A generator for one service: seeded (distinct per call) or fresh.
    pub fn rng(&self) -> fastrand::Rng {
        match self.inner.seed {
            Some(seed) => {
                let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
                fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }
            None => fastrand::Rng::new(),
        }
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.snapshot.load()
    }

    /// The rules, unless there are none (then without touching the snapshot).
    pub(crate) fn load_if_any(&self) -> Option<arc_swap::Guard<Arc<Snapshot>>> {
        (self.inner.rule_count.load(Ordering::Acquire) > 0).then(|| self.load())
    }

    pub(crate) fn header_stats(&self) -> (&Arc<str>, &Arc<RuleStats>) {
        (&self.inner.header_rule, &self.inner.header_stats)
    }

    /// False while the global kill switch is on.
    pub fn is_enabled(&self) -> bool {
        !self.inner.killed.load(Ordering::Acquire)
    }

    /// Global kill switch: no rule (nor header-driven fault) injects until [`Self::enable_all`].
    /// Rules stay loaded; faults already given to requests in flight finish.
    pub fn disable_all(&self) {
        self.inner.killed.store(true, Ordering::Release);
        tracing::info!("fault injection disabled (kill switch)");
    }

    /// Turns the kill switch off again.
    pub fn enable_all(&self) {
        self.inner.killed.store(false, Ordering::Release);
        tracing::info!("fault injection enabled");
    }

    fn write(&self, f: impl FnOnce(&[Arc<LiveRule>]) -> Vec<Arc<LiveRule>>) {
        let _w = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.inner.snapshot.load_full();
        let rules = f(&current.rules);
        let count = rules.len();
        self.inner.snapshot.store(Arc::new(Snapshot { rules }));
        self.inner.rule_count.store(count, Ordering::Release);
    }

    /// Replaces the config-sourced rules (all or nothing); API rules stay, and win over a config
    /// rule of the same name. Counters carry over by name; an unchanged rule also keeps its
    /// schedule clock (`duration` does not restart on an unrelated reload).
    /// Errors name the rule by index: `[2].delay.percent`; duplicate names are errors too.
    pub fn load_config(&self, rules: Vec<FaultRule>) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut compiled = Vec::with_capacity(rules.len());
        let mut seen = HashMap::new();
        for (i, rule) in rules.into_iter().enumerate() {
            if let Some(first) = seen.insert(rule.name.clone(), i) {
                errs.push(FieldError::new(
                    format!("[{i}].name"),
                    format!("`{}` is also the name of rule [{first}]", rule.name),
                ));
            }
            match rule.compile() {
                Ok(c) => compiled.push((rule, c)),
                Err(e) => errs.extend(e.into_iter().map(|e| FieldError {
                    field: format!("[{i}].{}", e.field),
                    message: e.message,
                })),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let count = compiled.len();
        self.write(|current| {
            let now = Instant::now();
            let api: Vec<Arc<LiveRule>> = current
                .iter()
                .filter(|r| r.source == RuleSource::Api)
                .cloned()
                .collect();
            let mut out = Vec::with_capacity(compiled.len() + api.len());
            for (spec, c) in compiled {
                if api.iter().any(|r| *r.name == *spec.name) {
                    continue;
                }
                let old = current.iter().find(|r| *r.name == *spec.name);
                let stats = old.map_or_else(Arc::default, |r| r.stats.clone());
                let loaded_at = match old {
                    Some(r) if r.source == RuleSource::Config && r.spec == spec => r.loaded_at,
                    _ => now,
                };
                out.push(Arc::new(LiveRule::new(
                    spec,
                    c,
                    RuleSource::Config,
                    stats,
                    loaded_at,
                )));
            }
            out.extend(api);
            out
        });
        tracing::info!(rules = count, "fault rules loaded from config");
        Ok(())
    }

    /// Creates or replaces an API rule (validated first). Counters carry over to a replacement;
    /// the schedule clock (`duration`) restarts.
    pub fn put(&self, rule: FaultRule) -> Result<PutOutcome, Vec<FieldError>> {
        let compiled = rule.compile()?;
        let mut outcome = PutOutcome::Created;
        let name = rule.name.clone();
        self.write(|current| {
            let old = current.iter().find(|r| *r.name == *rule.name);
            let stats = old.map_or_else(Arc::default, |r| r.stats.clone());
            let live = Arc::new(LiveRule::new(
                rule,
                compiled,
                RuleSource::Api,
                stats,
                Instant::now(),
            ));
            let mut out: Vec<Arc<LiveRule>> = Vec::with_capacity(current.len() + 1);
            let mut placed = false;
            for r in current {
                if r.name != live.name {
                    out.push(r.clone());
                } else if r.source == RuleSource::Api {
                    // Replace in place, keeping the API rules' creation order.
                    outcome = PutOutcome::Replaced;
                    out.push(live.clone());
                    placed = true;
                } else {
                    outcome = PutOutcome::Replaced;
                }
            }
            if !placed {
                out.push(live);
            }
            out
        });
        tracing::info!(rule = %name, ?outcome, "fault rule put");
        Ok(outcome)
    }

    /// Removes a rule by name and says which source it had. A removed config rule comes back
    /// at the next config reload if the file still has it.
    pub fn delete(&self, name: &str) -> Option<RuleSource> {
        let mut removed = None;
        self.write(|current| {
            current
                .iter()
                .filter(|r| {
                    let hit = *r.name == *name;
                    if hit {
                        removed = Some(r.source);
                    }
                    !hit
                })
                .cloned()
                .collect()
        });
        if removed.is_some() {
            tracing::info!(rule = %name, "fault rule deleted");
        }
        removed
    }

    /// The rule with this name, with its source, status and counters.
    pub fn get(&self, name: &str) -> Option<RuleView> {
        let killed = !self.is_enabled();
        self.load()
            .rules
            .iter()
            .find(|r| *r.name == *name)
            .map(|r| RuleView::of(r, killed))
    }

    /// Counters of the named rule (live, not a copy).
    pub fn stats(&self, name: &str) -> Option<Arc<RuleStats>> {
        self.load()
            .rules
            .iter()
            .find(|r| *r.name == *name)
            .map(|r| r.stats.clone())
    }

    /// Every rule with source, status and counters, plus the kill switch and header-fault counters
    /// (the body of `GET /chaos`).
    pub fn view(&self) -> ChaosView {
        let killed = !self.is_enabled();
        ChaosView {
            enabled: !killed,
            rules: self
                .load()
                .rules
                .iter()
                .map(|r| RuleView::of(r, killed))
                .collect(),
            header_faults: self.inner.header_stats.snapshot(),
        }
    }

    /// Appends the fault metrics in the Prometheus text format (families `otlp_mesh_fault_*`).
    pub fn render_prometheus(&self, out: &mut String) {
        let snap = self.load();
        let header = ("headers", RuleSource::Header, &self.inner.header_stats);
        let rows: Vec<(&str, RuleSource, &Arc<RuleStats>)> = snap
            .rules
            .iter()
            .map(|r| (&*r.name, r.source, &r.stats))
            .chain(std::iter::once(header))
            .collect();

        stats::family(
            out,
            "otlp_mesh_fault_injection_enabled",
            "gauge",
            "1 unless the fault-injection kill switch is on.",
        );
        stats::sample(
            out,
            "otlp_mesh_fault_injection_enabled",
            &[],
            u8::from(self.is_enabled()),
        );
        stats::family(
            out,
            "otlp_mesh_fault_matched_total",
            "counter",
            "Requests that matched a fault rule while it was on.",
        );
        for (rule, source, s) in &rows {
            let labels = [("rule", *rule), ("source", source.as_str())];
            stats::sample(out, "otlp_mesh_fault_matched_total", &labels, s.matched());
        }
        stats::family(
            out,
            "otlp_mesh_fault_injected_total",
            "counter",
            "Faults injected, by rule and kind.",
        );
        for (rule, source, s) in &rows {
            for kind in FaultKind::ALL {
                let labels = [
                    ("rule", *rule),
                    ("source", source.as_str()),
                    ("kind", kind.as_str()),
                ];
                stats::sample(
                    out,
                    "otlp_mesh_fault_injected_total",
                    &labels,
                    s.injected(kind),
                );
            }
        }
        stats::family(
            out,
            "otlp_mesh_fault_skipped_total",
            "counter",
            "Faults not injected because the rule's max_active faults were active.",
        );
        for (rule, source, s) in &rows {
            let labels = [
                ("rule", *rule),
                ("source", source.as_str()),
                ("reason", "max_active"),
            ];
            stats::sample(
                out,
                "otlp_mesh_fault_skipped_total",
                &labels,
                s.skipped_max_active(),
            );
        }
        stats::family(
            out,
            "otlp_mesh_fault_active",
            "gauge",
            "Requests with an active fault, by rule.",
        );
        for (rule, source, s) in &rows {
            let labels = [("rule", *rule), ("source", source.as_str())];
            stats::sample(out, "otlp_mesh_fault_active", &labels, s.active());
        }
        stats::family(
            out,
            "otlp_mesh_fault_delay_seconds",
            "histogram",
            "Injected delays, by rule.",
        );
        for (rule, source, s) in &rows {
            let snap = s.snapshot();
            let h = &snap.delay_ms;
            let mut acc = 0;
            for (i, n) in h.counts.iter().enumerate() {
                acc += n;
                let le = h
                    .bounds_ms
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| (*b as f64 / 1000.0).to_string());
                let labels = [
                    ("rule", *rule),
                    ("source", source.as_str()),
                    ("le", le.as_str()),
                ];
                stats::sample(out, "otlp_mesh_fault_delay_seconds_bucket", &labels, acc);
            }
            let labels = [("rule", *rule), ("source", source.as_str())];
            stats::sample(
                out,
                "otlp_mesh_fault_delay_seconds_sum",
                &labels,
                h.sum_ms / 1000.0,
            );
            stats::sample(out, "otlp_mesh_fault_delay_seconds_count", &labels, h.count);
        }
    }
}

/// The body of `GET /chaos`.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosView {
    /// False while the kill switch is on.
    pub enabled: bool,
    /// Rules in evaluation order.
    pub rules: Vec<RuleView>,
    /// Counters of header-driven faults.
    pub header_faults: StatsSnapshot,
}

/// One rule in `GET /chaos`: `rule` is exactly what a `PUT` accepts.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    /// Where the rule came from.
    pub source: RuleSource,
    /// Whether it injects right now.
    pub status: RuleStatus,
    /// The rule as written.
    pub rule: FaultRule,
    /// Its counters.
    pub stats: StatsSnapshot,
}

impl RuleView {
    fn of(r: &LiveRule, killed: bool) -> Self {
        let status = match r.status() {
            RuleStatus::Active if killed => RuleStatus::Killed,
            s => s,
        };
        RuleView {
            source: r.source,
            status,
            rule: r.spec.clone(),
            stats: r.stats.snapshot(),
        }
    }
}
