//! Sleeps for the open-loop schedule, finer than tokio's timer.
//!
//! tokio's timer counts whole milliseconds and fires a sleep up to about two of them after its
//! deadline. In open loop every request's latency runs from its *scheduled* start
//! (coordinated-omission correction), so that lateness was charged to the target: at 20 000
//! req/s straight to an upstream it was about 1 ms of a 1.5 ms median. On Linux each worker
//! sleeps on a timerfd instead (one per worker, in tokio's epoll like a socket), which the
//! kernel fires within its timer slack (50 µs by default) of the deadline; elsewhere, or when a
//! timerfd cannot be had, tokio's timer is used.

use std::time::Duration;
use tokio::time::Instant;

/// A worker's sleep-until-deadline, precise to tens of microseconds where the OS allows.
pub(crate) struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<linux::TimerFd>,
}

impl Pacer {
    /// A pacer on a timerfd of its own, or on tokio's timer when that is not available.
    pub(crate) fn new() -> Self {
        Pacer {
            #[cfg(target_os = "linux")]
            timer: linux::TimerFd::new()
                .map_err(|e| tracing::debug!(error = %e, "no timerfd; pacing on tokio's timer"))
                .ok(),
        }
    }

    /// Whether sleeps use the fine timer (false: tokio's millisecond timer).
    #[cfg(test)]
    pub(crate) fn is_fine(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.timer.is_some();
        #[cfg(not(target_os = "linux"))]
        return false;
    }

    /// Returns at `deadline` or just after it; at once when it has passed.
    pub(crate) async fn sleep_until(&mut self, deadline: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(timer) = &mut self.timer {
            // Bounded: each pass either returns or waits for an expiry of a timer armed for
            // the time still left, and the deadline does not move.
            loop {
                let now = Instant::now();
                if deadline <= now {
                    return;
                }
                if let Err(e) = timer.wait(deadline - now).await {
                    tracing::debug!(error = %e, "timerfd failed; pacing on tokio's timer");
                    self.timer = None;
                    break;
                }
            }
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Duration;
    use rustix::fd::OwnedFd;
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use std::io;
    use tokio::io::unix::AsyncFd;

    /// A non-blocking monotonic timerfd registered with tokio's reactor.
    pub(super) struct TimerFd(AsyncFd<OwnedFd>);

    impl TimerFd {
        pub(super) fn new() -> io::Result<Self> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // tokio 1.54 deprecated the safe `new` in favour of an `unsafe fn register` whose
            // contract is that the value's raw fd stays the same open file for its lifetime.
            // An `OwnedFd` owns its fd and never changes it, so the contract holds, and this
            // crate keeps no `unsafe` code.
            #[allow(deprecated)]
            Ok(TimerFd(AsyncFd::new(fd)?))
        }

        /// Arms the timer for `after` from now and waits for it to expire.
        pub(super) async fn wait(&mut self, after: Duration) -> io::Result<()> {
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                    // An all-zero value would disarm the timer instead of firing it.
                    tv_nsec: i64::from(after.subsec_nanos().max(1)),
                },
            };
            // Re-arming also zeroes the expiry count, so an expiry left over from a sleep that
            // was dropped before it read its timer cannot end this one early.
            timerfd_settime(self.0.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            let mut expirations = [0u8; 8];
            loop {
                let mut ready = self.0.readable().await?;
                match ready.try_io(|fd| {
                    rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)
                }) {
                    Ok(read) => return read.map(|_| ()),
                    // Readiness left from an earlier expiry: the read found nothing; wait again.
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_never_ends_before_its_deadline() {
        let mut pacer = Pacer::new();
        #[cfg(target_os = "linux")]
        assert!(pacer.is_fine(), "a timerfd is available on Linux");
        let begin = Instant::now();
        for step in 1..=50u64 {
            let deadline = begin + Duration::from_micros(137 * step);
            pacer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline, "woke before deadline {step}");
        }
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_returns_at_once() {
        let mut pacer = Pacer::new();
        let past = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        // A timer armed with an all-zero value would never fire: this must not hang.
        tokio::time::timeout(Duration::from_secs(5), pacer.sleep_until(past))
            .await
            .expect("a past deadline does not wait");
        tokio::time::timeout(
            Duration::from_secs(5),
            pacer.sleep_until(Instant::now() + Duration::from_nanos(1)),
        )
        .await
        .expect("a deadline a nanosecond away fires");
    }

    #[tokio::test]
    async fn a_sleep_dropped_before_it_fired_does_not_shorten_the_next() {
        let mut pacer = Pacer::new();
        // Arm for 1 ms, give up after 100 µs, then let that expiry pass unread.
        let _ = tokio::time::timeout(
            Duration::from_micros(100),
            pacer.sleep_until(Instant::now() + Duration::from_millis(1)),
        )
        .await;
        std::thread::sleep(Duration::from_millis(3));
        let deadline = Instant::now() + Duration::from_millis(20);
        pacer.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }
}
