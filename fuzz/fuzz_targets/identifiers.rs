//! Identifiers, references and digests: validation never panics, and whatever is accepted
//! round-trips (a digest's text is itself; a reference's name parses again to the same name).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for kind in ["container", "namespace", "lease", "snapshot"] {
        let _ = berth_metadata::validate::identifier(kind, s);
    }
    if let Ok(d) = berth_oci::Digest::parse(s) {
        assert_eq!(d.to_string(), s, "a parsed digest prints as its input");
    }
    let _ = berth_registry::reference::parse_digest(s);
    if let Ok(r) = berth_registry::Reference::parse(s) {
        let again = r.to_string();
        let r2 = berth_registry::Reference::parse(&again)
            .unwrap_or_else(|e| panic!("{s:?} parsed as {again:?}, which does not parse: {e}"));
        assert_eq!(r2.to_string(), again);
    }
    let _ = berth_archive::reference::Named::parse_normalized(s);
    let _ = berth_archive::reference::Named::parse_docker_ref(s);
    let _ = berth_archive::platform::Platform::parse(s);
    let _ = berth_registry::Platform::parse(s);
});
