//! `otlp-mesh bench`: an HTTP/1.1, h2c and unary gRPC load generator with HDR latency histograms,
//! closed-loop and fixed-rate open-loop modes (with coordinated-omission correction),
//! CPU and memory sampling of target processes, JSON/CSV/HTML reports, a JSON Lines run history
//! and baseline comparison; and an OTLP/gRPC load generator and sink ([`otlp`]) for forwarding
//! benchmarks.

mod baseline;
mod h1;
mod histogram;
pub mod history;
pub mod html;
mod load;
pub mod otlp;
mod pace;
mod report;
mod resources;
pub mod timeline;

pub use baseline::{Comparison, Delta, compare};
pub use histogram::{DistributionPoint, Latency, OpenLoopRecorder, Percentiles};
pub use load::{BenchConfig, GRPC_ECHO_METHOD, Protocol, check_grpc_method, grpc_frame, run};
pub use report::{Errors, ProcessUsage, Report};
pub use resources::ProcessSampler;
