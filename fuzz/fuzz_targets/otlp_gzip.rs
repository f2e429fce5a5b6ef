//! Compressed bodies: decompression respects its bound and never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use otlp_mesh_telemetry::otlp::decode::{Encoding, decompress};

fuzz_target!(|data: &[u8]| {
    for enc in [Encoding::Gzip, Encoding::Zstd] {
        if let Ok(out) = decompress(enc, Bytes::copy_from_slice(data), 1 << 16) {
            assert!(out.len() <= 1 << 16);
        }
    }
});
