//! Writes files the way conclave does, in a loop, until it is killed: the crash-consistency
//! test (`tests/tests/crash.rs`) sends it SIGKILL at random moments and then checks what is on
//! disk. It prints `ready` once set up, then one line per completed write.
//!
//!   crash-child share DIR     ShareFile::write of two alternating shares (a new share file)
//!   crash-child passwd DIR    `share passwd`: read under one passphrase, rewrite under the other
//!   crash-child store DIR     a ceremony's store: write_pending then activate, two outcomes in turn
//!   crash-child audit DIR     audit-log appends (fsync on) with a checkpoint every 5 records

use std::io::Write;
use std::path::Path;

use conclave_keygen::ceremony::{harness, Outcome};
use conclave_keygen::store::{FileShareStore, KdfCost, ShareStore};
use conclave_keygen::{deal, share_header, KdfParams, NewMember, Passphrase, ShareFile};
use conclave_protocol::{GroupName, IdentityKey};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: crash-child share|passwd|store|audit DIR");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let result = match mode.as_str() {
        "share" => share(dir, false),
        "passwd" => share(dir, true),
        "store" => store(dir),
        "audit" => audit(dir),
        _ => Err(format!("unknown mode {mode}")),
    };
    if let Err(e) = result {
        eprintln!("crash-child: {e}");
        std::process::exit(1);
    }
}

fn say(what: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{what}");
    let _ = out.flush();
}

/// The passphrases the share modes use, in turn.
pub const PASSES: [&str; 2] = ["crash test one", "crash test two"];

fn share(dir: &Path, passwd: bool) -> Result<(), String> {
    let mut rng = rand::rngs::OsRng;
    let members: Vec<NewMember> = (0..3)
        .map(|i| NewMember {
            name: format!("p{i}"),
            node_id: IdentityKey::generate(&mut rng).node_id(),
            address: "127.0.0.1:1".into(),
        })
        .collect();
    let group = GroupName::new("crash").map_err(|e| e.to_string())?;
    let (manifest, shares) = deal(group, 2, &members, &mut rng).map_err(|e| e.to_string())?;
    let path = dir.join("p0.share");
    let first = shares.first().ok_or("no share")?;
    let header = |kp| {
        share_header(
            &manifest,
            first.node_id,
            kp,
            KdfParams::light(&mut rand::rngs::OsRng),
        )
        .map_err(|e| e.to_string())
    };
    let pass = |i: usize| Passphrase::new(PASSES[i % 2].into());
    ShareFile::write(
        &path,
        &first.key_package,
        header(&first.key_package)?,
        &pass(0),
        true,
        &mut rng,
    )
    .map_err(|e| e.to_string())?;
    say("ready");
    for i in 1.. {
        if passwd {
            // What `conclave share passwd` does: read under the current passphrase, rewrite
            // under the new one (fresh salt and nonce) with temp file, fsync, rename.
            let current = ShareFile::read(&path, &pass(i - 1)).map_err(|e| e.to_string())?;
            let mut h = current.header.clone();
            if let Some(kdf) = h.kdf_mut() {
                rand::RngCore::fill_bytes(&mut rng, &mut kdf.salt);
            }
            ShareFile::write(&path, &current.key_package, h, &pass(i), true, &mut rng)
                .map_err(|e| e.to_string())?;
        } else {
            let kp = &shares.get(i % 2).ok_or("no share")?.key_package;
            ShareFile::write(&path, kp, header(kp)?, &pass(0), true, &mut rng)
                .map_err(|e| e.to_string())?;
        }
        say(&format!("wrote {i}"));
    }
    Ok(())
}

/// Two outcomes of one DKG plan (run twice in memory), for member 0.
fn store(dir: &Path) -> Result<(), String> {
    let (plan, ids) = harness::dkg_members("crash", 2, 3, &mut rand::rngs::OsRng)?;
    let mut outcomes = vec![];
    for _ in 0..2 {
        let (members, relay) = harness::dkg_run_parts(&plan, &ids)?;
        let run = harness::run(members, relay);
        let s = run.stores.first().ok_or("no store")?;
        let (manifest, kp) = s.active().ok_or("the DKG did not complete")?.clone();
        let done = s.completion().ok_or("no completion")?.clone();
        outcomes.push((
            Outcome {
                manifest,
                key_package: kp,
            },
            done,
        ));
    }
    let me = ids.first().ok_or("no member")?.node_id();
    std::fs::write(
        dir.join("plan.toml"),
        plan.to_toml().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    // The relay's completions (every member's acknowledgement), as `rotate resume` is shown.
    for (k, (_, done)) in outcomes.iter().enumerate() {
        std::fs::write(dir.join(format!("relay-{k}.completion")), done.to_toml())
            .map_err(|e| e.to_string())?;
    }
    say("ready");
    for i in 0.. {
        let (outcome, done) = outcomes.get(i % 2).ok_or("no outcome")?;
        let mut store = FileShareStore::for_member(
            &plan,
            &me,
            dir,
            Some(Passphrase::new(PASSES[0].into())),
            KdfCost::Light,
        );
        // As a member does: store with its own acknowledgement, activate once all are in.
        let mut own = done.clone();
        own.acks.retain(|k, _| *k == me.to_hex());
        store
            .write_pending(outcome, &own)
            .map_err(|e| e.to_string())?;
        store.activate(done).map_err(|e| e.to_string())?;
        say(&format!("activated {i}"));
    }
    Ok(())
}

fn audit(dir: &Path) -> Result<(), String> {
    // The same identity on every start, as a node's identity file gives it.
    let identity = IdentityKey::generate(
        &mut <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(42),
    );
    std::fs::write(dir.join("audit.key"), identity.node_id().to_hex())
        .map_err(|e| e.to_string())?;
    let mut log = conclave_audit::AuditLog::open(
        &dir.join("audit.log"),
        identity,
        conclave_audit::Options {
            fsync: true,
            max_bytes: 1 << 30,
            checkpoint_every: 5,
        },
    )
    .map_err(|e| e.to_string())?;
    say("ready");
    for i in 0u64.. {
        let mut d = conclave_audit::Decision::new("sign", "signed");
        d.client = Some("crash-test".into());
        d.detail = Some("x".repeat((i % 7) as usize * 300));
        log.append(1_800_000_000 + i, d)
            .map_err(|e| e.to_string())?;
        say(&format!("appended {i}"));
    }
    Ok(())
}
