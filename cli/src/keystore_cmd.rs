//! `conclave keystore init | show | passwd` and `conclave share migrate`: the node keystore
//! that one passphrase unlocks for every share of the node (format-2 share files).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use conclave_keygen::{KdfParams, Keys, Keystore, ShareFile};
use conclave_protocol::IdentityKey;

use crate::config::Mode;
use crate::{passphrase, CmdResult, Exit};

/// `conclave keystore init`.
pub(crate) fn init(
    identity: &Path,
    out: &Path,
    passphrase_file: Option<&Path>,
    mode: Mode,
    light: bool,
    json: bool,
) -> CmdResult {
    let id = IdentityKey::read_from(identity).context("cannot load the identity key")?;
    if out.exists() {
        return Err(anyhow!(
            "{} already exists; refusing to replace a keystore (every share sealed to it would be lost)",
            out.display()
        )
        .into());
    }
    let cost = conclave_keygen::store::KdfCost::choose(light, mode == Mode::Dev)
        .map_err(|e| anyhow!("{e} (this is {mode})"))?;
    let pass = passphrase::obtain(passphrase_file, mode, &out.display().to_string(), true)?;
    passphrase::check_new(&pass, mode)?;
    let mut rng = rand::rngs::OsRng;
    let kdf = match cost {
        conclave_keygen::store::KdfCost::Light => KdfParams::light(&mut rng),
        _ => KdfParams::standard(&mut rng),
    };
    let ks = Keystore::create(out, id.node_id(), &pass, kdf, &mut rng)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "keystore": out, "public_key": ks.public_key().to_hex(),
                "owner_identity": id.node_id().to_hex(),
            })
        );
    } else {
        println!("keystore {} for node {}", out.display(), id.node_id());
        println!("public key: {}", ks.public_key());
        eprintln!("Back it up with its passphrase: every share sealed to it needs both. Shares are sealed to it with `conclave keygen dealer --keystore NAME=KEY` or `conclave share migrate`.");
    }
    Ok(())
}

/// `conclave keystore show`.
pub(crate) fn show(file: &Path, json: bool) -> CmdResult {
    let h = Keystore::inspect(file)?;
    let k = &h.kdf;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "keystore": file, "public_key": h.public_key.to_hex(), "owner_identity": h.owner.to_hex(),
                "created_at_unix": h.created_at,
                "kdf": { "algorithm": "argon2id", "memory_kib": k.memory_kib, "iterations": k.iterations, "parallelism": k.parallelism },
            })
        );
    } else {
        println!("keystore {}", file.display());
        println!("  public key:     {}", h.public_key);
        println!("  owner identity: {}", h.owner);
        println!(
            "  kdf:            argon2id, {} KiB, {} passes, {} lanes",
            k.memory_kib, k.iterations, k.parallelism
        );
        println!("(header integrity checked; the passphrase is needed to check authenticity)");
    }
    Ok(())
}

/// `conclave keystore passwd`: one Argon2id, however many shares are sealed to it.
pub(crate) fn passwd(file: &Path, old: Option<&Path>, new: Option<&Path>, mode: Mode) -> CmdResult {
    let what = file.display().to_string();
    let old_pass = passphrase::obtain(old, mode, &format!("{what} (current)"), false)?;
    let ks = Keystore::open(file, &old_pass)?;
    drop(old_pass);
    let new_pass = passphrase::obtain(new, mode, &format!("{what} (new)"), true)?;
    passphrase::check_new(&new_pass, mode)?;
    ks.change_passphrase(&new_pass, &mut rand::rngs::OsRng)?;
    println!("{what}: re-encrypted under the new passphrase (the share files sealed to it are unchanged)");
    Ok(())
}

/// Where `share migrate` keeps the format-1 original: `FILE.format1`.
fn backup_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".format1");
    PathBuf::from(s)
}

/// What happened to one file of `conclave share migrate`.
enum Migrated {
    Done { group: String, epoch: u64 },
    Already,
    Failed(String),
}

/// Re-seals one format-1 file to the keystore, in place: decrypted with its passphrase, sealed
/// to the keystore, opened again with the keystore and compared before the file is replaced
/// (temp file, fsync, rename: a crash leaves the old file or the new one).
fn migrate_one(file: &Path, pass: &conclave_keygen::Passphrase, ks: &Keystore) -> Migrated {
    let run = || -> anyhow::Result<Migrated> {
        if ShareFile::inspect(file)?.keystore().is_some() {
            return Ok(Migrated::Already);
        }
        let share = ShareFile::read(file, pass)?;
        if share.header.owner != ks.header().owner {
            return Err(anyhow!(
                "{}: the share belongs to node {}, the keystore to node {}",
                file.display(),
                share.header.owner.short(),
                ks.header().owner.short()
            ));
        }
        let mut rng = rand::rngs::OsRng;
        let bytes = ShareFile::seal_to(
            &share.key_package,
            share.header.clone(),
            &ks.public_key(),
            &mut rng,
        )
        .map_err(|kind| anyhow!("{}: {kind}", file.display()))?;
        let back = ShareFile::open_with(
            &bytes,
            Keys {
                passphrase: None,
                keystore: Some(ks),
            },
        )
        .map_err(|kind| {
            anyhow!(
                "{}: the re-sealed share does not open: {kind}",
                file.display()
            )
        })?;
        if back.key_package != share.key_package || back.header.group != share.header.group {
            return Err(anyhow!("{}: the re-sealed share differs", file.display()));
        }
        // The old file is kept beside it (format 1, still under its own passphrase; not a
        // `.share` file, so no participant serves it) until the operator removes it.
        let old =
            conclave_protocol::read_bounded(file, conclave_keygen::sharefile::MAX_SHARE_FILE_LEN)
                .with_context(|| format!("cannot read {}", file.display()))?;
        conclave_keygen::sharefile::write_atomic(&backup_path(file), &old, &mut rng)
            .with_context(|| format!("cannot write the backup of {}", file.display()))?;
        conclave_keygen::sharefile::write_atomic(file, &bytes, &mut rng)
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(Migrated::Done {
            group: share.header.group.to_string(),
            epoch: share.header.epoch,
        })
    };
    run().unwrap_or_else(|e| Migrated::Failed(format!("{e:#}")))
}

/// `conclave share migrate`: format-1 files (own passphrase) become format 2 (sealed to the
/// node keystore). Each file is handled on its own: a failure is reported and the others go on.
pub(crate) fn migrate(
    files: &[PathBuf],
    keystore: &Path,
    keystore_passphrase_file: Option<&Path>,
    share_passphrase_file: Option<&Path>,
    mode: Mode,
    json: bool,
) -> CmdResult {
    let ks_pass = passphrase::obtain(
        keystore_passphrase_file,
        mode,
        &format!("the keystore {}", keystore.display()),
        false,
    )?;
    let ks = Keystore::open(keystore, &ks_pass)?;
    drop(ks_pass);
    let pass = passphrase::obtain(
        share_passphrase_file,
        mode,
        "the share files to migrate",
        false,
    )?;
    let total = files.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let mut results: Vec<(usize, Migrated)> = Vec::with_capacity(total);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let show_progress = !json && total > 4;
    let mut lost = false;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        mine.push((i, migrate_one(file, &pass, &ks)));
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if show_progress {
                            eprint!("\rmigrated {n}/{total}");
                        }
                    }
                    mine
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(mine) => results.extend(mine),
                Err(_) => lost = true,
            }
        }
    });
    if show_progress {
        eprintln!();
    }
    results.sort_by_key(|(i, _)| *i);
    let mut failed = 0;
    let mut out = Vec::new();
    // A worker that died leaves its files unreported: each is counted failed (left as it was,
    // or migrated: `share inspect` tells).
    let reported: std::collections::HashSet<usize> = results.iter().map(|(i, _)| *i).collect();
    for (i, file) in files.iter().enumerate() {
        if lost && !reported.contains(&i) {
            results.push((
                i,
                Migrated::Failed(format!(
                    "{}: not reported (a worker failed): check it with `conclave share inspect`",
                    file.display()
                )),
            ));
        }
    }
    results.sort_by_key(|(i, _)| *i);
    for (i, r) in &results {
        let file = files
            .get(*i)
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        match r {
            Migrated::Done { group, epoch } => {
                let backup = files
                    .get(*i)
                    .map(|f| backup_path(f).display().to_string())
                    .unwrap_or_default();
                if !json {
                    println!("{file}: group {group} epoch {epoch} now sealed to the keystore (the original is kept as {backup})");
                }
                out.push(serde_json::json!({"file": file, "result": "migrated", "group": group, "epoch": epoch, "backup": backup}));
            }
            Migrated::Already => {
                if !json {
                    println!("{file}: already sealed to a keystore, unchanged");
                }
                out.push(serde_json::json!({"file": file, "result": "already"}));
            }
            Migrated::Failed(e) => {
                failed += 1;
                if !json {
                    eprintln!("conclave: {e}");
                }
                out.push(serde_json::json!({"file": file, "result": "failed", "error": e}));
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "keystore": keystore, "files": out, "failed": failed })
        );
    } else {
        println!(
            "{} of {total} migrated or already sealed; {failed} failed (unchanged)",
            total - failed
        );
        if total > failed {
            println!("Reload the participant (`conclave reload`); once it serves every group, remove the *.format1 originals (they still open with the old passphrase).");
        }
    }
    if failed > 0 {
        return Err(Exit::silent(1));
    }
    Ok(())
}

/// Reads a share file of either format for a command: format 2 with the keystore `keystore`
/// (opened with the passphrase from `passphrase_file` or the usual sources), format 1 with its
/// own passphrase from the same sources.
pub(crate) fn read_share(
    path: &Path,
    keystore: Option<&Path>,
    passphrase_file: Option<&Path>,
    mode: Mode,
    what: &str,
) -> anyhow::Result<ShareFile> {
    let header = ShareFile::inspect(path)?;
    match header.keystore() {
        Some(key) => {
            let Some(k) = keystore else {
                anyhow::bail!(
                    "{} is sealed to a node keystore ({}): pass --keystore FILE",
                    path.display(),
                    key.short()
                );
            };
            let pass = passphrase::obtain(
                passphrase_file,
                mode,
                &format!("the keystore {}", k.display()),
                false,
            )?;
            let ks = Keystore::open(k, &pass)?;
            Ok(ShareFile::read_with(
                path,
                Keys {
                    passphrase: None,
                    keystore: Some(&ks),
                },
            )?)
        }
        None => {
            let pass = passphrase::obtain(passphrase_file, mode, what, false)?;
            Ok(ShareFile::read(path, &pass)?)
        }
    }
}
