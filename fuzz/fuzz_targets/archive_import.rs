//! The OCI / docker archive reader: any byte stream imports or is refused, never a panic, and
//! nothing is written outside the content store's root.
#![no_main]
use berth_archive::{import_blocking, ImportOptions, StoreSink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = berth_content::ContentStore::open(&dir.path().join("content")).expect("store");
    let sink = StoreSink { store };
    let _ = import_blocking(std::io::Cursor::new(data), &sink, &ImportOptions::default());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        names.iter().all(|n| n == "content"),
        "import wrote beside the store: {names:?}"
    );
});
