//! Fuzz target: see `xiaozhi_server::fuzz::ota_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xiaozhi_server::fuzz::ota_request(data));
