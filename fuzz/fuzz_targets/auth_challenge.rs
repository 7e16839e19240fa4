//! A registry's WWW-Authenticate header: any text yields challenges (possibly none), never a
//! panic; every challenge has a scheme.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for c in berth_registry::auth::parse_challenges(s) {
        assert!(!c.scheme.is_empty(), "a challenge without a scheme from {s:?}");
    }
});
