//! Fuzz target: see `xiaozhi_server::fuzz::mqtt_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xiaozhi_server::fuzz::mqtt_packet(data));
