//! Crash consistency of files: a child process writes share files, re-encrypts one (`share
//! passwd`), stores and activates ceremony results, or appends to an audit log in a loop, and
//! is killed with SIGKILL at a random moment, again and again. After every kill each file must
//! be the old or the new version, never torn: share files open (their AEAD proves them whole),
//! manifests and completions parse, the store recovers with `rotate resume` (or `--abandon`)
//! to a share that matches its manifest, and `audit verify` passes or names only an unfinished
//! tail record. `CONCLAVE_CRASH_KILLS` sets the kills per mode (default 50: 200 in all).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use conclave_keygen::store::{FileShareStore, KdfCost};
use conclave_keygen::{Passphrase, ShareFile};

const PASSES: [&str; 2] = ["crash test one", "crash test two"];

fn kills() -> usize {
    std::env::var("CONCLAVE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn child_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crash-child"))
}

/// Starts the child, waits for `ready`, lets it write for a random 0–60 ms, kills it with -9.
/// Returns how many writes it reported completing.
fn run_and_kill(mode: &str, dir: &Path, seed: &mut u64) -> usize {
    let mut child = Command::new(child_bin())
        .args([mode, dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crash-child");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.trim() != "ready" {
        let _ = child.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("{mode}: the child did not get ready: {line:?} {err}");
    }
    // xorshift: a different moment every time, reproducible from the printed seed.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    std::thread::sleep(Duration::from_micros(*seed % 60_000));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "{mode}: the child was killed");
    out.lines().map_while(Result::ok).count()
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        })
        .count()
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash-test seed {s}");
    s
}

#[test]
fn share_writes_survive_kill_9() {
    let d = tempfile::tempdir().unwrap();
    let mut s = seed();
    let mut writes = 0;
    for i in 0..kills() {
        writes += run_and_kill("share", d.path(), &mut s);
        let path = d.path().join("p0.share");
        ShareFile::read(&path, &Passphrase::new(PASSES[0].into()))
            .unwrap_or_else(|e| panic!("kill {i}: the share file is torn: {e}"));
    }
    eprintln!(
        "share: {} kills, {writes} completed writes, {} temp files left",
        kills(),
        temp_files(d.path())
    );
    assert!(writes > 0, "the kills landed while writing");
}

#[test]
fn share_passwd_survives_kill_9() {
    let d = tempfile::tempdir().unwrap();
    let mut s = seed();
    let (mut old, mut new) = (0, 0);
    for i in 0..kills() {
        run_and_kill("passwd", d.path(), &mut s);
        let path = d.path().join("p0.share");
        if ShareFile::read(&path, &Passphrase::new(PASSES[0].into())).is_ok() {
            old += 1;
        } else {
            ShareFile::read(&path, &Passphrase::new(PASSES[1].into())).unwrap_or_else(|e| {
                panic!("kill {i}: the share opens under neither passphrase: {e}")
            });
            new += 1;
        }
    }
    eprintln!(
        "passwd: {} kills: {old} under the first passphrase, {new} under the second, {} temp files left",
        kills(),
        temp_files(d.path())
    );
    assert!(new > 0, "some kills came after a completed re-encryption");
}

#[test]
fn ceremony_store_and_activate_survive_kill_9() {
    use conclave_keygen::ceremony::CeremonyPlan;
    let d = tempfile::tempdir().unwrap();
    let mut s = seed();
    let (mut resumed, mut abandoned, mut clean) = (0, 0, 0);
    for i in 0..kills() {
        run_and_kill("store", d.path(), &mut s);
        let plan = CeremonyPlan::read(&d.path().join("plan.toml")).unwrap();
        let me = plan.members().unwrap().first().unwrap().node_id;
        let pass = || Some(Passphrase::new(PASSES[0].into()));
        let mut store = FileShareStore::for_member(&plan, &me, d.path(), pass(), KdfCost::Light);
        // Every file on disk is whole, pending or not.
        for p in [store.share_file().unwrap().to_path_buf()]
            .into_iter()
            .flat_map(|p| [conclave_keygen::store::pending_path(&p), p])
        {
            if p.exists() {
                ShareFile::read(&p, &Passphrase::new(PASSES[0].into()))
                    .unwrap_or_else(|e| panic!("kill {i}: {} is torn: {e}", p.display()));
            }
        }
        let manifest = store.manifest_file().unwrap().to_path_buf();
        for p in [
            conclave_keygen::store::pending_path(&manifest),
            manifest.clone(),
        ] {
            if p.exists() {
                conclave_keygen::GroupManifest::read(&p)
                    .unwrap_or_else(|e| panic!("kill {i}: {} is torn: {e}", p.display()));
            }
        }
        if store.completion_file().exists() {
            conclave_keygen::store::read_completion(store.completion_file())
                .unwrap_or_else(|e| panic!("kill {i}: the completion is torn: {e}"));
        }
        let listing = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let before = listing(d.path());
        // Recovery as an operator does it: `rotate resume`, or `--abandon` if it cannot.
        if store.pending_present().is_empty() {
            clean += 1;
        } else {
            let local = conclave_keygen::store::read_completion(store.completion_file()).ok();
            let relay: Vec<_> = (0..2)
                .filter_map(|k| {
                    let p = d.path().join(format!("relay-{k}.completion"));
                    conclave_keygen::ceremony::Completion::from_toml(
                        &std::fs::read_to_string(p).ok()?,
                    )
                    .ok()
                })
                .filter(|c| {
                    local
                        .as_ref()
                        .is_some_and(|l| l.manifest_hash == c.manifest_hash)
                })
                .collect();
            match store.resume(&plan, &relay) {
                Ok(conclave_keygen::store::Resume::Activated(_)) => resumed += 1,
                other => {
                    eprintln!("kill {i}: resume: {other:?} with {before:?}; abandoned");
                    store.abandon();
                    assert!(store.pending_present().is_empty(), "kill {i}: abandon");
                    abandoned += 1;
                }
            }
        }
        // Now the share matches the manifest beside it.
        let share_path = store.share_file().unwrap();
        if share_path.exists() {
            let share = ShareFile::read(share_path, &Passphrase::new(PASSES[0].into())).unwrap();
            let m = conclave_keygen::GroupManifest::read(&manifest)
                .unwrap_or_else(|e| panic!("kill {i}: a share without its manifest: {e}"));
            let pkp = m.public_key_package().unwrap();
            let vs = pkp
                .verifying_shares()
                .get(share.key_package.identifier())
                .copied();
            assert_eq!(
                vs,
                Some(*share.key_package.verifying_share()),
                "kill {i}: after recovery the share does not match its manifest"
            );
        }
    }
    eprintln!(
        "store: {} kills: {clean} clean, {resumed} resumed, {abandoned} abandoned, {} temp files left",
        kills(),
        temp_files(d.path())
    );
}

#[test]
fn audit_appends_survive_kill_9() {
    let d = tempfile::tempdir().unwrap();
    let mut s = seed();
    let (mut passes, mut torn_tail) = (0, 0);
    let mut records = 0;
    for i in 0..kills() {
        run_and_kill("audit", d.path(), &mut s);
        let log = d.path().join("audit.log");
        let key = std::fs::read_to_string(d.path().join("audit.key")).unwrap();
        let out = common::conclave(&[
            "audit",
            "verify",
            log.to_str().unwrap(),
            "--key",
            key.trim(),
            "--json",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            passes += 1;
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            records = j["summary"]["records"].as_u64().unwrap_or(records);
        } else {
            assert!(
                text.contains("unfinished"),
                "kill {i}: audit verify failed on more than an unfinished tail: {text}"
            );
            torn_tail += 1;
            // An operator's repair: cut the unfinished line; then the chain verifies.
            let bytes = std::fs::read(&log).unwrap();
            let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            std::fs::write(&log, &bytes[..end]).unwrap();
        }
    }
    eprintln!(
        "audit: {} kills: verify passed {passes}, unfinished tail {torn_tail}; {records} records",
        kills()
    );
    assert!(records > 0);
}
