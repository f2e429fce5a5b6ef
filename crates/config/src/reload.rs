//! Hot reload: watch the config file (polling and on demand), validate, publish the new snapshot.
//!
//! The watcher owns a `watch::Sender`; consumers (the proxy, the admin server) hold receivers
//! and swap their own `Arc` snapshots when a new valid config arrives. An invalid file never
//! reaches them: the old config keeps serving and the failure is logged and counted.

use crate::{LoadedConfig, load_file};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

/// Reload outcome counters and the last rejection's reasons, shared with the admin server.
#[derive(Debug, Default)]
pub struct ReloadStats {
    successes: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Vec<String>>,
}

impl ReloadStats {
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Counts a config that was applied.
    pub fn record_success(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            last.clear();
        }
    }
    /// Counts a config that was refused (invalid, unreadable, or failed to apply), with why.
    pub fn record_failure(&self, reasons: &[String]) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = reasons.to_vec();
        }
    }
    /// Reasons the most recent rejected file was refused (empty once a later reload succeeds).
    pub fn last_error(&self) -> Vec<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

/// What one check of the config file did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file has the content last seen (applied or rejected).
    Unchanged,
    /// A new valid config was published; carries its hash.
    Applied(String),
    /// The file changed but is invalid or unreadable; the old config stays.
    Rejected(Vec<String>),
}

/// Watches one config file and publishes each new valid version.
pub struct ConfigWatcher {
    path: PathBuf,
    interval: std::time::Duration,
    tx: watch::Sender<Arc<LoadedConfig>>,
    stats: Arc<ReloadStats>,
    trigger: Arc<Notify>,
    last_seen: String,
}

impl ConfigWatcher {
    /// A watcher for `path` that starts from the already loaded `initial` config.
    pub fn new(
        path: PathBuf,
        initial: Arc<LoadedConfig>,
        stats: Arc<ReloadStats>,
    ) -> (Self, watch::Receiver<Arc<LoadedConfig>>) {
        let interval = initial.config.runtime.reload_interval.into();
        let last_seen = initial.hash.clone();
        let (tx, rx) = watch::channel(initial);
        let watcher = ConfigWatcher {
            path,
            interval,
            tx,
            stats,
            trigger: Arc::new(Notify::new()),
            last_seen,
        };
        (watcher, rx)
    }

    /// Notifying this makes the watcher re-read the file at once (wired to SIGHUP).
    pub fn trigger(&self) -> Arc<Notify> {
        self.trigger.clone()
    }

    /// Re-reads the file once and publishes it if it changed and is valid.
    pub fn check_now(&mut self) -> ReloadOutcome {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) => {
                let reason = format!("cannot read config file {}: {e}", self.path.display());
                let seen = format!("io:{e}");
                if seen == self.last_seen {
                    return ReloadOutcome::Unchanged;
                }
                self.last_seen = seen;
                return self.reject(vec![reason]);
            }
        };
        let hash = crate::load::content_hash(&raw);
        if hash == self.last_seen {
            return ReloadOutcome::Unchanged;
        }
        self.last_seen = hash;
        match load_file(&self.path) {
            Ok(loaded) => {
                let hash = loaded.hash.clone();
                self.interval = loaded.config.runtime.reload_interval.into();
                // Success is counted by whoever applies it: applying can still fail (a port in use).
                self.tx.send_replace(Arc::new(loaded));
                tracing::info!(config = %self.path.display(), hash = %hash, "config file changed and is valid");
                ReloadOutcome::Applied(hash)
            }
            Err(e) => self.reject(e.messages()),
        }
    }

    fn reject(&mut self, reasons: Vec<String>) -> ReloadOutcome {
        self.stats.record_failure(&reasons);
        for reason in &reasons {
            tracing::error!(config = %self.path.display(), "config reload rejected, keeping the running config: {reason}");
        }
        ReloadOutcome::Rejected(reasons)
    }

    /// Runs until every receiver is gone: polls at the configured interval and on each trigger.
    pub async fn run(mut self) {
        let trigger = self.trigger.clone();
        loop {
            if self.tx.is_closed() {
                return;
            }
            if self.interval.is_zero() {
                trigger.notified().await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = trigger.notified() => {}
                }
            }
            self.check_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const GOOD: &str = "listeners:\n  - name: a\n    bind: 127.0.0.1:0\n";
    const GOOD2: &str = "listeners:\n  - name: b\n    bind: 127.0.0.1:0\n";
    const BAD: &str = "listeners:\n  - name: a\n    bind: nowhere\n";

    fn write(path: &std::path::Path, text: &str) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_valid_changes_and_keeps_old_config_on_invalid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        write(&path, GOOD);
        let initial = Arc::new(load_file(&path).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let (mut watcher, rx) = ConfigWatcher::new(path.clone(), initial, stats.clone());

        assert_eq!(watcher.check_now(), ReloadOutcome::Unchanged);

        write(&path, BAD);
        let ReloadOutcome::Rejected(reasons) = watcher.check_now() else {
            panic!("invalid file must be rejected")
        };
        assert!(reasons[0].contains("listeners[0].bind"), "{reasons:?}");
        assert_eq!(stats.failures(), 1);
        assert_eq!(rx.borrow().config.listeners[0].name.value, "a");
        // The same bad content is not counted twice.
        assert_eq!(watcher.check_now(), ReloadOutcome::Unchanged);
        assert_eq!(stats.failures(), 1);

        write(&path, GOOD2);
        assert!(matches!(watcher.check_now(), ReloadOutcome::Applied(_)));
        assert_eq!(rx.borrow().config.listeners[0].name.value, "b");
        assert_eq!(
            stats.last_error().len(),
            1,
            "success is recorded by the applier"
        );
        stats.record_success();
        assert!(stats.last_error().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn run_loop_polls_at_the_interval_and_on_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        write(&path, "runtime: { reload_interval: 5s }\n");
        let initial = Arc::new(load_file(&path).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let (watcher, mut rx) = ConfigWatcher::new(path.clone(), initial, stats.clone());
        let trigger = watcher.trigger();
        tokio::spawn(watcher.run());

        write(&path, "runtime: { reload_interval: 5s }\nlisteners: []\n");
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "must not reload before the interval"
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert!(rx.has_changed().unwrap(), "must reload after the interval");
        rx.borrow_and_update();

        write(
            &path,
            "runtime: { reload_interval: 5s }\nlisteners: []\nclusters: []\n",
        );
        trigger.notify_one();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(rx.has_changed().unwrap(), "trigger must reload at once");
        assert_eq!(stats.failures(), 0);
    }

    #[test]
    fn unreadable_file_is_rejected_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        write(&path, GOOD);
        let initial = Arc::new(load_file(&path).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let (mut watcher, _rx) = ConfigWatcher::new(path.clone(), initial, stats.clone());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(watcher.check_now(), ReloadOutcome::Rejected(_)));
        assert_eq!(watcher.check_now(), ReloadOutcome::Unchanged);
        assert_eq!(stats.failures(), 1);
    }
}
