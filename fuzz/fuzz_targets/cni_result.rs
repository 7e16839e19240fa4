//! A CNI plugin's answer, whatever JSON it prints and whatever version it claims: parsed or
//! refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = berth_net::CniResult::parse("fuzz", &v);
    }
});
