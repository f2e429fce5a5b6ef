//! OTLP/JSON bodies of all three signals: decoding never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use otlp_mesh_telemetry::Signal;
use otlp_mesh_telemetry::otlp::decode::{Format, decode};

fuzz_target!(|data: &[u8]| {
    for signal in Signal::ALL {
        let _ = decode(signal, Format::Json, Bytes::copy_from_slice(data));
    }
});
