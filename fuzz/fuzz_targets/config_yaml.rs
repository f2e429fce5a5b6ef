//! Config files: parsing and validation report errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = otlp_mesh_config::LoadedConfig::from_str(text, "fuzz.yaml");
    }
});
