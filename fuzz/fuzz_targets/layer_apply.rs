//! Layer apply: a tar stream (plain, or gzip when it starts with gzip's magic) applied into a
//! target directory that sits beside a canary. Never a panic, and the canary directory is never
//! touched: no file created in it, its file keeps its bytes and mode.
#![no_main]
use berth_layer::{apply_layer, Limits, Whiteouts};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::PermissionsExt;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let canary = dir.path().join("canary");
    std::fs::create_dir(&canary).expect("canary dir");
    std::fs::write(canary.join("file"), b"canary").expect("canary file");
    std::fs::set_permissions(canary.join("file"), std::fs::Permissions::from_mode(0o400))
        .expect("chmod canary");
    let target = dir.path().join("a/b/target");
    std::fs::create_dir_all(&target).expect("target");
    let media = if data.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let limits = Limits {
        max_uncompressed_bytes: 16 << 20,
        max_entries: 4096,
    };
    for wh in [Whiteouts::Native, Whiteouts::Overlay] {
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).expect("target");
        let _ = apply_layer(data, media, &target, wh, &limits);
        let entries: Vec<_> = std::fs::read_dir(&canary)
            .expect("canary dir still there")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("file")], "canary dir changed");
        let meta = std::fs::symlink_metadata(canary.join("file")).expect("canary file");
        assert!(meta.is_file() && meta.permissions().mode() & 0o7777 == 0o400);
        assert_eq!(std::fs::read(canary.join("file")).expect("read canary"), b"canary");
        let top: Vec<_> = std::fs::read_dir(dir.path())
            .expect("temp dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(top.len() == 2, "something was made beside the target: {top:?}");
    }
});
