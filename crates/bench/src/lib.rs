//! Load generation, HDR latency histograms and benchmark reports (`otlp-mesh bench`).
//!
//! Not built yet: the benchmark issue fills this crate. Until then `docs/benchmarks.md`
//! records measurements taken with `wrk` (see the commands there).
