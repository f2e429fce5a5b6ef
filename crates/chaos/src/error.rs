use crate::plan::AppliedFaults;
use std::fmt;

/// The layer decided to reset this request. The proxy should answer it by closing the client
/// connection (HTTP/1.1) or resetting the stream (h2, `RST_STREAM`), not with a response.
/// The inner service's error type must implement `From<FaultReset>`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultReset {
    /// The faults given to the request (the reset, and any delay before it).
    pub applied: AppliedFaults,
}

impl FaultReset {
    /// Name of the rule that asked for the reset.
    pub fn rule(&self) -> Option<&str> {
        self.applied
            .0
            .iter()
            .find(|f| f.kind == crate::FaultKind::Reset)
            .map(|f| &*f.rule)
    }
}

impl fmt::Display for FaultReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule() {
            Some(rule) => write!(f, "connection reset by fault rule `{rule}`"),
            None => write!(f, "connection reset by fault injection"),
        }
    }
}

impl std::error::Error for FaultReset {}
