//! Endpoint sets with per-endpoint load stats, and the load balancers that pick from them.
//!
//! An [`EndpointSet`] is an immutable snapshot published by discovery; a [`Balancer`] picks from
//! it without locks or allocation. The load-balancing issue adds weighted, least-request,
//! P2C peak-EWMA, ring hash, Maglev and adaptive balancers behind the same trait.

mod endpoint;
mod round_robin;

pub use endpoint::{Endpoint, EndpointSet, InFlight};
pub use round_robin::RoundRobin;

/// Picks one endpoint from a set for each request.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Algorithm name shown in `/clusters`.
    fn name(&self) -> &'static str;
    /// The endpoint for the next request, or `None` when the set is empty.
    fn pick<'a>(&self, set: &'a EndpointSet) -> Option<&'a std::sync::Arc<Endpoint>>;
}
