//! The shim's protocol lines: any line decodes or is refused, and a decoded request encodes to a
//! line that decodes to the same request.
#![no_main]
use berth_shim::protocol::{decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let line = encode_request(&req);
        let again = decode_request(line.strip_suffix(b"\n").unwrap_or(&line))
            .expect("an encoded request decodes");
        // `update` carries free JSON whose floats need not survive a print and re-parse bit for
        // bit (serde_json's default float parsing); every other request must.
        if !matches!(req, berth_shim::protocol::Request::Update { .. }) {
            assert_eq!(again, req);
        }
    }
});
