//! `otlp-mesh bench`: an HTTP/1.1 and h2c load generator with HDR latency histograms,
//! closed-loop and fixed-rate open-loop modes (with coordinated-omission correction),
//! CPU and memory sampling of target processes, JSON/CSV reports and baseline comparison.

mod baseline;
mod histogram;
mod load;
mod report;
mod resources;

pub use baseline::{Comparison, Delta, compare};
pub use histogram::{Latency, OpenLoopRecorder};
pub use load::{BenchConfig, Protocol, run};
pub use report::{Errors, ProcessUsage, Report};
pub use resources::ProcessSampler;
