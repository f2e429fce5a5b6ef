/// The request's deadline passed before the inner service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub std::time::Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}
