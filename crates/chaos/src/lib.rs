//! Fault injection for chaos testing (delays, aborts, throttling, resets) as a tower layer.
//!
//! Not built yet: the fault-injection issue fills this crate. It sits in the route stack
//! between the rate limiter and the timeout (see DESIGN.md), so faults apply before retries.
