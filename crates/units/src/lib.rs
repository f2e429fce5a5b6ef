//! Shared config vocabulary of otlp-mesh: durations (`250ms`), byte sizes (`64KiB`) and the
//! value conditions routes and fault rules match headers with. A leaf crate, so the config model
//! and the crates whose settings it embeds (fault rules) speak the same units.

mod units;
mod value_match;

pub use units::{ByteSize, Duration};
pub use value_match::ValueMatch;
