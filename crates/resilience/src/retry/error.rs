use std::fmt;

/// Error of a [`super::ReplayBody`]: the original body's error, or why a replay is impossible.
#[derive(Debug)]
pub enum ReplayError<E> {
    /// The original body failed (passed through to the attempt that was reading it).
    Body(E),
    /// The body outgrew the replay buffer, so this copy cannot be replayed (the retry layer
    /// never retries such a body; this guards against misuse instead of truncating).
    Capped,
    /// The original body failed during an earlier attempt, so it cannot be replayed.
    Failed,
}

impl<E: fmt::Display> fmt::Display for ReplayError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Body(e) => e.fmt(f),
            ReplayError::Capped => {
                f.write_str("request body exceeded the replay buffer; cannot replay it")
            }
            ReplayError::Failed => {
                f.write_str("request body failed in an earlier attempt; cannot replay it")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ReplayError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::Body(e) => Some(e),
            _ => None,
        }
    }
}
