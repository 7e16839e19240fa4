use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn store() -> (tempfile::TempDir, ContentStore) {
    let tmp = tempfile::tempdir().unwrap();
    let cs = ContentStore::open(&tmp.path().join("content")).unwrap();
    (tmp, cs)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn blob_count(cs: &ContentStore) -> usize {
    cs.walk_blobs().unwrap().len()
}

fn ingest_entries(tmp: &tempfile::TempDir) -> usize {
    fs::read_dir(tmp.path().join("content/ingest"))
        .unwrap()
        .count()
}

#[test]
fn store_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<ContentStore>();
    fn send<T: Send>() {}
    send::<Writer>();
}

#[test]
fn write_commit_read_back() {
    let (tmp, cs) = store();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = Digest::of_bytes(&data);

    let mut w = cs.writer("default/layer", 0, None).unwrap();
    let mut off = 0i64;
    for chunk in data.chunks(1 << 20) {
        w.write_at(off, chunk).unwrap();
        off += chunk.len() as i64;
    }
    assert_eq!(w.digest(), want);
    assert_eq!(w.status().offset, data.len() as i64);
    let c = w.commit(data.len() as i64, Some(&want)).unwrap();
    assert_eq!(
        c,
        Committed {
            digest: want.clone(),
            size: data.len() as u64,
            already_existed: false
        }
    );

    assert_eq!(cs.blob_size(&want).unwrap(), Some(data.len() as u64));
    let path = cs.blob_path(&want);
    assert_eq!(
        path,
        tmp.path().join("content/blobs/sha256").join(want.hex())
    );
    assert_eq!(mode(&path), 0o444);
    assert_eq!(mode(&tmp.path().join("content/blobs/sha256")), 0o700);
    assert_eq!(mode(&tmp.path().join("content/ingest")), 0o700);

    let mut all = Vec::new();
    cs.open_blob(&want).unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    let mut buf = vec![0u8; 100];
    assert_eq!(cs.read_at(&want, 1_000_000, &mut buf).unwrap(), 100);
    assert_eq!(&buf[..], &data[1_000_000..1_000_100]);
    // Short read only at the end; at the end exactly: 0; past it: OutOfRange.
    assert_eq!(
        cs.read_at(&want, data.len() as u64 - 10, &mut buf).unwrap(),
        10
    );
    assert_eq!(cs.read_at(&want, data.len() as u64, &mut buf).unwrap(), 0);
    assert!(matches!(
        cs.read_at(&want, data.len() as u64 + 1, &mut buf),
        Err(ref e) if e.kind() == berth_errdefs::Kind::OutOfRange
    ));

    assert_eq!(
        cs.walk_blobs().unwrap(),
        vec![(want.clone(), data.len() as u64)]
    );
    assert!(cs.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&tmp), 0);
    assert!(cs.status("default/layer").unwrap_err().is_not_found());
}

#[test]
fn empty_blob_commits() {
    let (_tmp, cs) = store();
    let w = cs.writer("k", 0, None).unwrap();
    let c = w.commit(0, Some(&Digest::of_bytes(b""))).unwrap();
    assert_eq!(c.size, 0);
    assert_eq!(cs.blob_size(&Digest::of_bytes(b"")).unwrap(), Some(0));
}

#[test]
fn missing_blob_errors() {
    let (_tmp, cs) = store();
    let d = Digest::of_bytes(b"nope");
    assert_eq!(cs.blob_size(&d).unwrap(), None);
    match cs.open_blob(&d) {
        Err(e) if e.is_not_found() => assert_eq!(e.message(), format!("content {d} not found")),
        other => panic!("{other:?}"),
    }
    assert!(cs.read_at(&d, 0, &mut [0; 4]).unwrap_err().is_not_found());
    assert!(cs.delete_blob(&d).unwrap_err().is_not_found());
}

#[test]
fn delete_blob_removes_it() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    let d = w.commit(3, None).unwrap().digest;
    cs.delete_blob(&d).unwrap();
    assert_eq!(cs.blob_size(&d).unwrap(), None);
    assert!(cs.delete_blob(&d).unwrap_err().is_not_found());
}

#[test]
fn walk_skips_strays() {
    let (tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    let d = w.commit(0, None).unwrap().digest;
    let blobs = tmp.path().join("content/blobs/sha256");
    fs::write(blobs.join("not-a-digest"), b"x").unwrap();
    fs::write(blobs.join(d.hex().to_uppercase()), b"x").unwrap();
    fs::create_dir(blobs.join(Digest::of_bytes(b"dir").hex())).unwrap();
    assert_eq!(cs.walk_blobs().unwrap(), vec![(d, 3)]);
}

#[test]
fn resume_after_dropping_writer() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("ns/ref", 0, None).unwrap();
    w.write_at(0, b"hello ").unwrap();
    drop(w);

    let st = cs.status("ns/ref").unwrap();
    assert_eq!((st.key.as_str(), st.offset), ("ns/ref", 6));

    let mut w = cs.writer("ns/ref", 0, None).unwrap();
    assert_eq!(w.status().offset, 6);
    assert_eq!(w.digest(), Digest::of_bytes(b"hello "));
    assert!(
        matches!(w.write_at(7, b"x"), Err(ref e) if e.kind() == berth_errdefs::Kind::OutOfRange)
    );
    w.write_at(6, b"world").unwrap();
    let c = w
        .commit(11, Some(&Digest::of_bytes(b"hello world")))
        .unwrap();
    assert_eq!(c.digest, Digest::of_bytes(b"hello world"));
}

#[test]
fn resume_after_restart_keeps_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("content");
    let full = b"0123456789abcdef";
    let want = Digest::of_bytes(full);
    let started;
    {
        let cs = ContentStore::open(&root).unwrap();
        let mut w = cs.writer("ns/tar-blobs/sha256/ab", 16, None).unwrap();
        w.set_expected(want.clone());
        w.write_at(0, &full[..10]).unwrap();
        started = w.status().started_at;
        // Simulate kill -9: the Writer's Drop never runs, the store is gone.
        std::mem::forget(w);
    }
    let cs = ContentStore::open(&root).unwrap();
    let st = cs.status("ns/tar-blobs/sha256/ab").unwrap();
    assert_eq!(st.offset, 10);
    assert_eq!(st.total, 16);
    assert_eq!(st.expected.as_ref(), Some(&want));
    assert_eq!(st.started_at, started);
    assert!(st.updated_at >= st.started_at);
    assert_eq!(cs.list_ingests().unwrap(), vec![st]);

    let mut w = cs.writer("ns/tar-blobs/sha256/ab", 0, None).unwrap();
    assert_eq!(w.status().offset, 10);
    assert_eq!(w.status().total, 16);
    assert_eq!(w.status().started_at, started);
    assert_eq!(w.digest(), Digest::of_bytes(&full[..10]));
    w.write_at(10, &full[10..]).unwrap();
    // The recorded total and expected digest are enforced without being passed again.
    let c = w.commit(0, None).unwrap();
    assert_eq!(c.digest, want);
}

#[test]
fn concurrent_writer_is_unavailable() {
    let (_tmp, cs) = store();
    let w = cs.writer("ns/ref", 0, None).unwrap();
    let cs2 = cs.clone();
    let err = std::thread::spawn(move || cs2.writer("ns/ref", 0, None).unwrap_err())
        .join()
        .unwrap();
    match err {
        e if e.kind() == berth_errdefs::Kind::Unavailable => {
            assert!(e.message().starts_with("ref ns/ref locked"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(cs.abort("ns/ref"), Err(ref e) if e.kind() == berth_errdefs::Kind::Unavailable)
    );
    // Other keys are independent.
    drop(cs.writer("ns/other", 0, None).unwrap());
    drop(w);
    drop(cs.writer("ns/ref", 0, None).unwrap());
}

#[test]
fn lock_retry_waits_for_a_closing_writer() {
    let (_tmp, cs) = store();
    let w = cs.writer("ns/ref", 0, None).unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(w);
    });
    // The brief retry covers a client reconnecting while its old stream is still closing.
    cs.writer("ns/ref", 0, None).unwrap();
    t.join().unwrap();
}

#[test]
fn wrong_size_is_rejected_and_ingest_kept() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    match w.commit(4, None) {
        Err(e) if e.kind() == berth_errdefs::Kind::FailedPrecondition => {
            assert_eq!(e.message(), "unexpected commit size 3, expected 4")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(blob_count(&cs), 0);
    // As in containerd the ingest survives a failed commit and can be resumed...
    assert_eq!(cs.status("k").unwrap().offset, 3);
    let w = cs.writer("k", 0, None).unwrap();
    assert_eq!(w.digest(), Digest::of_bytes(b"abc"));
    drop(w);
    // ...or aborted.
    cs.abort("k").unwrap();
}

#[test]
fn recorded_total_is_checked_at_commit() {
    let (_tmp, cs) = store();
    let w = cs.writer("k", 5, None).unwrap();
    assert!(matches!(
        w.commit(0, None),
        Err(ref e) if e.kind() == berth_errdefs::Kind::FailedPrecondition
    ));
    assert_eq!(blob_count(&cs), 0);
}

#[test]
fn wrong_digest_is_rejected() {
    let (_tmp, cs) = store();
    let bad = Digest::of_bytes(b"other");
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    match w.commit(3, Some(&bad)) {
        Err(e) if e.kind() == berth_errdefs::Kind::FailedPrecondition => assert_eq!(
            e.message(),
            format!(
                "unexpected commit digest {}, expected {bad}",
                Digest::of_bytes(b"abc")
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(blob_count(&cs), 0);

    // A digest recorded at open time is enforced too.
    let mut w = cs.writer("k2", 0, Some(bad.clone())).unwrap();
    w.write_at(0, b"abc").unwrap();
    assert!(matches!(
        w.commit(0, None),
        Err(ref e) if e.kind() == berth_errdefs::Kind::FailedPrecondition
    ));
    assert_eq!(blob_count(&cs), 0);
    assert_eq!(cs.list_ingests().unwrap().len(), 2);
}

#[test]
fn committing_existing_blob_reports_already_existed() {
    let (tmp, cs) = store();
    for (i, key) in ["a/ref", "b/ref"].into_iter().enumerate() {
        let mut w = cs.writer(key, 0, None).unwrap();
        w.write_at(0, b"same").unwrap();
        let c = w.commit(4, None).unwrap();
        assert_eq!(c.already_existed, i == 1);
        assert_eq!(c.digest, Digest::of_bytes(b"same"));
    }
    assert_eq!(blob_count(&cs), 1);
    assert_eq!(ingest_entries(&tmp), 0);
    // The expected digest existing is not an error at writer() time (namespaces decide that).
    let w = cs
        .writer("c/ref", 0, Some(Digest::of_bytes(b"same")))
        .unwrap();
    drop(w);
}

#[test]
fn offset_mismatch_is_out_of_range() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    match w.write_at(5, b"x") {
        Err(e) if e.kind() == berth_errdefs::Kind::OutOfRange => {
            assert_eq!(
                e.message(),
                "write offset 5 does not match current offset 0"
            )
        }
        other => panic!("{other:?}"),
    }
    w.write_at(0, b"abc").unwrap();
    assert!(
        matches!(w.write_at(2, b"x"), Err(ref e) if e.kind() == berth_errdefs::Kind::OutOfRange)
    );
    assert!(
        matches!(w.write_at(4, b"x"), Err(ref e) if e.kind() == berth_errdefs::Kind::OutOfRange)
    );
    assert!(
        matches!(w.write_at(-1, b"x"), Err(ref e) if e.kind() == berth_errdefs::Kind::OutOfRange)
    );
    assert_eq!(w.status().offset, 3);
    assert_eq!(w.digest(), Digest::of_bytes(b"abc"));
}

#[test]
fn offset_zero_truncates() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abcdef").unwrap();
    w.write_at(0, b"xy").unwrap();
    assert_eq!(w.status().offset, 2);
    assert_eq!(w.digest(), Digest::of_bytes(b"xy"));
    w.write_at(2, b"z").unwrap();
    let d = w.commit(3, None).unwrap().digest;
    let mut buf = [0u8; 8];
    let n = cs.read_at(&d, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"xyz");
}

#[test]
fn write_past_total_is_invalid() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 4, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    assert!(matches!(
        w.write_at(3, b"de"),
        Err(ref e) if e.kind() == berth_errdefs::Kind::InvalidArgument
    ));
    assert_eq!(w.status().offset, 3);
    // A commit message may raise the total before its data is written.
    w.set_total(5);
    w.write_at(3, b"de").unwrap();
    w.commit(5, None).unwrap();
}

#[test]
fn different_total_on_resume_restarts() {
    let (_tmp, cs) = store();
    let mut w = cs.writer("k", 10, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    let started = w.status().started_at;
    drop(w);
    // Same total, or none given: resumed.
    assert_eq!(cs.writer("k", 10, None).unwrap().status().offset, 3);
    assert_eq!(cs.writer("k", 0, None).unwrap().status().offset, 3);
    // containerd treats a differing total as "cannot resume" and starts the ingest over.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let w = cs.writer("k", 20, None).unwrap();
    let st = w.status();
    assert_eq!((st.offset, st.total), (0, 20));
    assert!(st.started_at > started);
    assert_eq!(w.digest(), Digest::of_bytes(b""));
    drop(w);
    assert_eq!(cs.status("k").unwrap().offset, 0);
}

#[test]
fn total_given_on_resume_is_recorded() {
    let (_tmp, cs) = store();
    drop(cs.writer("k", 0, None).unwrap());
    drop(cs.writer("k", 7, None).unwrap());
    assert_eq!(cs.status("k").unwrap().total, 7);
}

#[test]
fn abort_removes_ingest() {
    let (tmp, cs) = store();
    assert!(cs.abort("k").unwrap_err().is_not_found());
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    drop(w);
    cs.abort("k").unwrap();
    assert!(cs.status("k").unwrap_err().is_not_found());
    assert_eq!(ingest_entries(&tmp), 0);
    assert!(cs.abort("k").unwrap_err().is_not_found());
    assert_eq!(cs.writer("k", 0, None).unwrap().status().offset, 0);
}

#[test]
fn empty_key_is_invalid() {
    let (_tmp, cs) = store();
    assert!(matches!(
        cs.writer("", 0, None),
        Err(ref e) if e.kind() == berth_errdefs::Kind::InvalidArgument
    ));
}

#[test]
fn hostile_keys_stay_inside_ingest_dir() {
    let (tmp, cs) = store();
    let long = "x/".repeat(5000);
    let keys = [
        "..",
        ".",
        "/",
        "../../../../etc/passwd",
        "ns/../../blobs/sha256/evil",
        "ns/manifest-sha256:abcdef",
        "ns/tar-blobs/sha256/abc",
        "a\nb\rc\td",
        "ünïcødé/☃",
        "back\\slash",
        "with\0nul",
        long.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let mut w = cs.writer(key, 0, None).unwrap();
        w.write_at(0, &[i as u8]).unwrap();
    }
    let mut listed: Vec<String> = cs
        .list_ingests()
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    for (i, key) in keys.iter().enumerate() {
        let st = cs.status(key).unwrap();
        assert_eq!((st.key.as_str(), st.offset), (*key, 1));
        let w = cs.writer(key, 0, None).unwrap();
        assert_eq!(w.digest(), Digest::of_bytes(&[i as u8]));
    }
    // Every ingest directory is a 64-hex name directly under ingest/, nothing escaped.
    for e in fs::read_dir(tmp.path().join("content/ingest")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert_eq!(name.len(), 64);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let top: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(top.len(), 1);
    assert!(fs::read_dir(tmp.path().join("content/blobs/sha256"))
        .unwrap()
        .next()
        .is_none());
    for key in keys {
        cs.abort(key).unwrap();
    }
    assert_eq!(ingest_entries(&tmp), 0);
}

#[test]
fn corrupt_ingest_is_skipped_and_recreated() {
    let (tmp, cs) = store();
    let mut w = cs.writer("k", 0, None).unwrap();
    w.write_at(0, b"abc").unwrap();
    drop(w);
    let dir = tmp
        .path()
        .join("content/ingest")
        .join(ingest::dir_name("k"));
    fs::write(dir.join("meta"), b"garbage").unwrap();
    assert!(matches!(cs.status("k"), Err(ref e) if e.kind() == berth_errdefs::Kind::Internal));
    assert!(cs.list_ingests().unwrap().is_empty());
    let w = cs.writer("k", 0, None).unwrap();
    assert_eq!(w.status().offset, 0);
    drop(w);
    assert_eq!(cs.status("k").unwrap().offset, 0);
    // Stray files in ingest/ don't break listing either.
    fs::write(tmp.path().join("content/ingest/stray"), b"x").unwrap();
    assert_eq!(cs.list_ingests().unwrap().len(), 1);
}

#[test]
fn ingest_files_are_private() {
    let (tmp, cs) = store();
    let _w = cs.writer("k", 0, None).unwrap();
    let dir = tmp
        .path()
        .join("content/ingest")
        .join(ingest::dir_name("k"));
    assert_eq!(mode(&dir), 0o700);
    for f in ["data", "key", "meta"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}

#[test]
fn reopen_keeps_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("content");
    let d = {
        let cs = ContentStore::open(&root).unwrap();
        let mut w = cs.writer("k", 0, None).unwrap();
        w.write_at(0, b"persist").unwrap();
        w.commit(7, None).unwrap().digest
    };
    let cs = ContentStore::open(&root).unwrap();
    assert_eq!(cs.blob_size(&d).unwrap(), Some(7));
}

#[test]
fn ingests_a_crash_left_without_data_or_meta_go_when_the_store_opens() {
    let (tmp, cs) = store();
    // A live ingest with bytes: kept.
    let mut w = cs.writer("kept", 0, None).unwrap();
    w.write_at(0, b"half").unwrap();
    drop(w);
    // Killed after a commit's rename (key and meta, no data), and while a fresh ingest was being
    // made (key and data, no meta).
    for (key, gone) in [("committed", "data"), ("half-made", "meta")] {
        let w = cs.writer(key, 0, None).unwrap();
        drop(w);
        let dir = cs.ingest_dir(key);
        fs::remove_file(dir.join(gone)).unwrap();
    }
    assert_eq!(ingest_entries(&tmp), 3);
    let cs = ContentStore::open(&tmp.path().join("content")).unwrap();
    assert_eq!(ingest_entries(&tmp), 1);
    assert_eq!(cs.status("kept").unwrap().offset, 4);
}
