//! Tampering of every kind is caught, naming the first bad record; writes fail closed.

use super::*;

fn decision(i: u64) -> Decision {
    Decision {
        action: "signed".into(),
        result: "ok".into(),
        client: Some("release-ci".into()),
        client_key: Some("8c9d2f01a3b4c5d6".into()),
        group: Some("release".into()),
        epoch: Some(1),
        kind: Some("raw".into()),
        message_sha256: Some(hex::encode([i as u8; 32])),
        request_id: Some(format!("{i:032x}")),
        plan: None,
        detail: None,
    }
}

/// A log of 10 decisions with a checkpoint every 4 (so checkpoints at seq 4, 9, 14 and a tail).
fn log(dir: &Path, key: &IdentityKey) -> PathBuf {
    let path = dir.join("audit.log");
    let mut l = AuditLog::open(
        &path,
        key.clone(),
        Options {
            checkpoint_every: 4,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..10 {
        l.append(1_700_000_000 + i, decision(i)).unwrap();
    }
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn an_intact_chain_verifies_and_continues_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = log(dir.path(), &key);
    let s = verify(std::slice::from_ref(&path), Some(key.node_id())).unwrap();
    assert_eq!((s.decisions, s.checkpoints), (10, 2));
    assert_eq!(s.unsigned_tail, 2);
    // Reopened, the chain goes on.
    let mut l = AuditLog::open(&path, key.clone(), Options::default()).unwrap();
    l.append(1_800_000_000, decision(99)).unwrap();
    l.checkpoint(1_800_000_001).unwrap();
    let s = verify(&[path], Some(key.node_id())).unwrap();
    assert_eq!((s.decisions, s.checkpoints, s.unsigned_tail), (11, 3, 0));
}

#[test]
fn flipping_deleting_swapping_or_truncating_names_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = log(dir.path(), &key);
    let good = lines(&path);
    let check = |mutated: Vec<String>, seq: u64, what: &str| {
        write(&path, &mutated);
        let err = verify(std::slice::from_ref(&path), Some(key.node_id())).unwrap_err();
        assert_eq!(err.seq, seq, "{what}: {err}");
    };
    // A flipped byte inside record 2 (its epoch): record 3 no longer chains to it.
    let mut m = good.clone();
    m[2] = m[2].replace("\"epoch\":1", "\"epoch\":2");
    check(m, 3, "flip");
    // Record 3 deleted.
    let mut m = good.clone();
    m.remove(3);
    check(m, 3, "delete");
    // Records 5 and 6 swapped.
    let mut m = good.clone();
    m.swap(5, 6);
    check(m, 5, "swap");
    // Cut before the last checkpoint (seq 9): the checkpoint beside the log is missing.
    check(good[..7].to_vec(), 9, "truncate");
    // A torn last line.
    let mut torn = good.join("\n");
    torn.truncate(torn.len() - 5);
    std::fs::write(&path, torn).unwrap();
    assert!(verify(std::slice::from_ref(&path), Some(key.node_id())).is_err());
    write(&path, &good);
    verify(std::slice::from_ref(&path), Some(key.node_id())).unwrap();
}

#[test]
fn a_whole_new_chain_without_the_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = log(dir.path(), &key);
    // The attacker rebuilds the whole file (and the checkpoint beside it) with its own key.
    let other = IdentityKey::generate(&mut rand::rngs::OsRng);
    std::fs::remove_file(&path).unwrap();
    let forged = log(dir.path(), &other);
    let err = verify(&[forged], Some(key.node_id())).unwrap_err();
    assert!(err.what.contains("signed by"), "{err}");
}

#[test]
fn rotation_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = dir.path().join("audit.log");
    let mut l = AuditLog::open(
        &path,
        key.clone(),
        Options {
            max_bytes: 20 * 1024,
            checkpoint_every: 10,
            fsync: false,
        },
    )
    .unwrap();
    for i in 0..200 {
        l.append(i, decision(i)).unwrap();
    }
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| dir.path().join(format!("audit.log.{n}")))
        .take_while(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "rotated {} times", files.len());
    files.push(path);
    let s = verify(&files, Some(key.node_id())).unwrap();
    assert_eq!(s.decisions, 200);
    // Leaving a rotated file out breaks the chain.
    files.remove(1);
    assert!(verify(&files, Some(key.node_id())).is_err());
}

#[test]
fn a_write_that_fails_is_an_error_so_the_caller_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = log(dir.path(), &key);
    let mut l = AuditLog::open(&path, key, Options::default()).unwrap();
    // The disk is full: /dev/full accepts the open and fails every write with ENOSPC.
    l.file = OpenOptions::new().append(true).open("/dev/full").unwrap();
    let err = l.append(1, decision(1)).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
}

#[test]
fn no_message_body_or_secret_field_exists_in_a_record() {
    // A record holds digests and names only: a message body has no field to go in.
    let r = Record {
        seq: 0,
        time: 0,
        prev: hex::encode([0u8; 32]),
        entry: Entry::Decision(Box::new(decision(0))),
    };
    let text = serde_json::to_string(&r).unwrap();
    for field in ["message\"", "share", "secret", "passphrase", "nonce"] {
        assert!(!text.contains(field), "{field} in {text}");
    }
}

#[test]
fn a_failed_write_stops_the_log_and_a_device_is_not_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let id = IdentityKey::generate(&mut rand::rngs::OsRng);
    let mut log = AuditLog::open(&path, id.clone(), Options::default()).unwrap();
    log.append(1, decision(1)).unwrap();
    // Simulate a failed write: after it nothing more is appended, even if the disk recovers.
    log.broken = true;
    assert!(matches!(
        log.append(2, decision(2)),
        Err(AuditError::Broken { .. })
    ));
    drop(log);
    if std::path::Path::new("/dev/full").exists() {
        let link = dir.path().join("full.log");
        std::os::unix::fs::symlink("/dev/full", &link).unwrap();
        assert!(matches!(
            AuditLog::open(&link, id, Options::default()),
            Err(AuditError::NotAFile { .. })
        ));
    }
}

#[test]
fn one_writer_per_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let id = IdentityKey::generate(&mut rand::rngs::OsRng);
    let first = AuditLog::open(&path, id.clone(), Options::default()).unwrap();
    assert!(matches!(
        AuditLog::open(&path, id.clone(), Options::default()),
        Err(AuditError::InUse { .. })
    ));
    drop(first);
    AuditLog::open(&path, id, Options::default()).unwrap();
}

#[test]
fn any_file_of_a_log_names_the_whole_log_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    for n in [1, 2, 10] {
        std::fs::write(dir.path().join(format!("audit.log.{n}")), "").unwrap();
    }
    std::fs::write(dir.path().join("audit.log"), "").unwrap();
    std::fs::write(dir.path().join("audit.log.checkpoint"), "").unwrap();
    std::fs::write(dir.path().join("other.log"), "").unwrap();
    let want: Vec<_> = ["audit.log.1", "audit.log.2", "audit.log.10", "audit.log"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    // What a shell glob gives (current first, the sidecar, .10 before .2): the same log.
    let glob: Vec<_> = [
        "audit.log",
        "audit.log.1",
        "audit.log.10",
        "audit.log.2",
        "audit.log.checkpoint",
    ]
    .iter()
    .map(|f| dir.path().join(f))
    .collect();
    assert_eq!(expand_args(&glob).unwrap(), vec![want.clone()]);
    assert_eq!(expand_args(&[path]).unwrap(), vec![want]);
}

#[test]
fn a_checkpoint_kept_elsewhere_catches_truncation_back_to_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let id = IdentityKey::generate(&mut rand::rngs::OsRng);
    let opts = Options {
        checkpoint_every: 2,
        ..Options::default()
    };
    let mut log = AuditLog::open(&path, id.clone(), opts).unwrap();
    for i in 0..2 {
        log.append(i, decision(i)).unwrap();
    }
    let early = std::fs::read(&path).unwrap();
    let early_side = std::fs::read(dir.path().join("audit.log.checkpoint")).unwrap();
    for i in 2..6 {
        log.append(i, decision(i)).unwrap();
    }
    drop(log);
    let files = vec![path.clone()];
    let summary = verify(&files, Some(id.node_id())).unwrap();
    let latest = parse_checkpoint(summary.last_checkpoint.as_deref().unwrap()).unwrap();
    // With file access only: cut the log back to its first checkpoint, sidecar and all.
    std::fs::write(&path, &early).unwrap();
    std::fs::write(dir.path().join("audit.log.checkpoint"), &early_side).unwrap();
    // Locally consistent: plain verify cannot tell (stated in the docs)...
    assert!(verify(&files, Some(id.node_id())).is_ok());
    // ...but the checkpoint copied off the host earlier can.
    let err = verify_expecting(&files, Some(id.node_id()), Some(latest)).unwrap_err();
    assert!(err.what.contains("expected checkpoint"), "{err}");
}

#[test]
fn deferred_records_share_one_fsync_and_stay_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    let path = dir.path().join("audit.log");
    let mut l = AuditLog::open(&path, key.clone(), Options::default()).unwrap();
    let first = l.append_deferred(1_700_000_000, decision(0)).unwrap();
    let second = l.append_deferred(1_700_000_001, decision(1)).unwrap();
    // Written, not yet known to be on disk.
    assert!(!first.is_done() && !second.is_done());
    assert_eq!(lines(&path).len(), 2);
    // Waiting for the second covers the first: one fsync for both.
    second.wait().unwrap();
    assert!(first.is_done());
    first.wait().unwrap();
    // A record written durably at once after them makes a later token done too.
    let third = l.append_deferred(1_700_000_002, decision(2)).unwrap();
    l.append(1_700_000_003, decision(3)).unwrap();
    assert!(third.is_done());
    drop(l);
    let files = log_files(&path).unwrap();
    assert_eq!(records(&files).unwrap().len(), 4);
    // Without fsync there is nothing to wait for.
    let mut nosync = AuditLog::open(
        &dir.path().join("other.log"),
        key,
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(nosync
        .append_deferred(1_700_000_000, decision(0))
        .unwrap()
        .is_done());
}

#[test]
fn a_waiter_queued_behind_a_failed_fsync_is_told_so() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("x")).unwrap();
    let s = std::sync::Arc::new(super::Syncer {
        path: dir.path().join("x"),
        file: std::sync::Mutex::new(f),
        written: 6.into(),
        synced: 3.into(),
        failed: false.into(),
    });
    // Waiter A holds the file lock (its fsync under way) ...
    let guard = s.file.lock().unwrap();
    let s2 = s.clone();
    let b = std::thread::spawn(move || super::Durable(Some((s2, 6))).wait());
    std::thread::sleep(std::time::Duration::from_millis(100));
    // ... and it fails: the log is marked failed. B's own fsync on the same file would
    // return 0 on Linux (the error is reported once), which a healthy file stands for here.
    s.failed.store(true, Ordering::Release);
    drop(guard);
    assert!(
        b.join().unwrap().is_err(),
        "B was told its record is durable"
    );
    // Tokens an fsync covered before the failure are not "done" either.
    assert!(!super::Durable(Some((s.clone(), 2))).is_done());
    assert!(super::Durable(Some((s, 2))).wait().is_err());
}
