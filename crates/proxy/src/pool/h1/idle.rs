//! One endpoint's idle connections of one kind.

use super::H1Settings;
use otlp_mesh_balance::Timestamp;
use std::sync::{Arc, Mutex, MutexGuard};

/// A connection an [`IdleList`] keeps.
pub(crate) trait Reusable {
    /// False once the server closed it (or it cannot carry another exchange).
    fn is_open(&mut self) -> bool;
}

/// Idle connections, newest last: taken newest first (so the oldest age out under light load),
/// at most `max_idle`, dropped past `idle_timeout` or once closed.
#[derive(Debug)]
pub(crate) struct IdleList<C> {
    // A short critical section per checkout and per return, never held across an await; one
    // lock per endpoint and kind, not per pool.
    idle: Mutex<Vec<(C, Timestamp)>>,
    settings: Arc<H1Settings>,
}

impl<C: Reusable> IdleList<C> {
    pub(crate) fn new(settings: Arc<H1Settings>) -> Self {
        IdleList {
            idle: Mutex::new(Vec::new()),
            settings,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<(C, Timestamp)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usable(&self, conn: &mut C, since: Timestamp, now: Timestamp) -> bool {
        now.saturating_duration_since(since) < self.settings.idle_timeout && conn.is_open()
    }

    /// The newest idle connection still open and fresh; closed and expired ones are dropped.
    pub(crate) fn checkout(&self, now: Timestamp) -> Option<C> {
        let mut idle = self.lock();
        while let Some((mut conn, since)) = idle.pop() {
            if self.usable(&mut conn, since, now) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange has ended, unless there are enough idle ones.
    pub(crate) fn put(&self, conn: C) {
        let since = self.settings.clock.now();
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push((conn, since));
        }
    }

    /// Drops idle connections that are closed or past the idle timeout.
    pub(crate) fn sweep(&self, now: Timestamp) {
        self.lock()
            .retain_mut(|(conn, since)| self.usable(conn, *since, now));
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
