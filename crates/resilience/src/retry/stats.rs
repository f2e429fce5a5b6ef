use crate::FailureKind;
use crate::classify::ResponseFailure;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an attempt was retried (a counter label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The connection could not be established.
    ConnectFailure,
    /// The upstream refused the stream.
    RefusedStream,
    /// The connection or stream was reset.
    Reset,
    /// The attempt hit its per-try timeout.
    Timeout,
    /// Another upstream failure.
    Other,
    /// A retriable HTTP status.
    Status,
    /// A retriable gRPC status.
    Grpc,
}

impl RetryReason {
    /// All reasons, in counter order.
    pub const ALL: [RetryReason; 7] = [
        RetryReason::ConnectFailure,
        RetryReason::RefusedStream,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Other,
        RetryReason::Status,
        RetryReason::Grpc,
    ];

    /// Metric label value (`connect_failure`, `status`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Other => "other",
            RetryReason::Status => "status",
            RetryReason::Grpc => "grpc",
        }
    }

    pub(crate) fn from_kind(kind: FailureKind) -> RetryReason {
        match kind {
            FailureKind::ConnectFailure => RetryReason::ConnectFailure,
            FailureKind::RefusedStream => RetryReason::RefusedStream,
            FailureKind::Reset => RetryReason::Reset,
            FailureKind::Timeout => RetryReason::Timeout,
            FailureKind::Rejected | FailureKind::Local | FailureKind::Other => RetryReason::Other,
        }
    }

    pub(crate) fn from_response(f: ResponseFailure) -> RetryReason {
        match f {
            ResponseFailure::Status(_) => RetryReason::Status,
            ResponseFailure::Grpc(_) => RetryReason::Grpc,
        }
    }
}

/// Retry counters (monotonic, relaxed atomics); the proxy renders them in `/metrics`.
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Original requests seen.
    pub requests: AtomicU64,
    /// Retries sent, indexed like [`RetryReason::ALL`]; use [`RetryStats::retries`].
    pub retries_by_reason: [AtomicU64; 7],
    /// Retriable failures not retried because the budget was exhausted.
    pub budget_exhausted: AtomicU64,
    /// Retriable failures not retried because the request body outgrew the replay buffer (or failed).
    pub body_too_large: AtomicU64,
    /// Retriable failures not retried because `max_attempts` was reached.
    pub attempts_exhausted: AtomicU64,
    /// Retriable failures not retried because the breaker's `max_retries` was reached.
    pub retry_overflow: AtomicU64,
    /// Requests that succeeded (non-retriable outcome) after at least one retry.
    pub succeeded_after_retry: AtomicU64,
}

impl RetryStats {
    /// Retries sent for one reason.
    pub fn retries(&self, reason: RetryReason) -> u64 {
        self.retries_by_reason[reason as usize].load(Ordering::Relaxed)
    }

    /// Retries sent, all reasons.
    pub fn retries_total(&self) -> u64 {
        self.retries_by_reason
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Calls `f(counter, reason, value)` for every counter; `reason` is set for `retries`
    /// (one call per [`RetryReason`]) and `None` for the others.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, Option<&'static str>, u64)) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        f("requests", None, r(&self.requests));
        for reason in RetryReason::ALL {
            f("retries", Some(reason.as_str()), self.retries(reason));
        }
        f("budget_exhausted", None, r(&self.budget_exhausted));
        f("body_too_large", None, r(&self.body_too_large));
        f("attempts_exhausted", None, r(&self.attempts_exhausted));
        f("retry_overflow", None, r(&self.retry_overflow));
        f(
            "succeeded_after_retry",
            None,
            r(&self.succeeded_after_retry),
        );
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
