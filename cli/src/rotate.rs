//! `conclave rotate plan | relay | join | status | retire`: refresh and reshare a group under
//! the same key, each participant acting on its own host and the coordinator relaying.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use conclave_keygen::ceremony::{key_fingerprint, CeremonyPlan, CheckedPlan, OldGroup, PlanNode};
use conclave_keygen::kinds;
use conclave_keygen::{GroupManifest, ShareFile};
use sha2::Digest;

use crate::ceremony::{parse_node, read_identity, read_plan, run_join};
use crate::config::Mode;
use crate::confirm::{confirm, confirm_plan, destroy};
use crate::{
    CmdResult, Exit, RetireArgs, RotateJoinArgs, RotateKind, RotatePlanArgs, RotateResumeArgs,
    RotateStatusArgs,
};
use conclave_keygen::store::{self, FileShareStore, KdfCost, Resume};

fn read_manifest(path: &Path) -> anyhow::Result<GroupManifest> {
    GroupManifest::read(path).with_context(|| format!("manifest {}", path.display()))
}

/// `-p NAME` (a member of the old group, same key and address) or `-p NAME=KEY@HOST:PORT` (a
/// new member, or an old one moving to another address under the same key). A new key behind
/// an existing name, or an old member's key under a new name, is refused here: a key change
/// is made explicit with `--replace` (and every member refuses a plan that hides one anyway).
fn new_member(spec: &str, old: &GroupManifest) -> anyhow::Result<PlanNode> {
    if spec.contains('=') {
        let node = parse_node(spec, "participant")?;
        if let Some(p) = old.participants.iter().find(|p| p.name == node.name) {
            if !p.identity_key.eq_ignore_ascii_case(&node.identity_key) {
                bail!(
                    "participant {:?} is a member of the old group with identity key {}; to give it a new key use --replace {}=KEY@HOST:PORT (every host will then show the change)",
                    node.name,
                    fingerprint_hex(&p.identity_key),
                    node.name
                );
            }
        }
        if let Some(p) = old.participants.iter().find(|p| {
            p.identity_key.eq_ignore_ascii_case(&node.identity_key) && p.name != node.name
        }) {
            bail!(
                "identity key {} is already the key of old member {:?}; one identity key is one member",
                fingerprint_hex(&node.identity_key),
                p.name
            );
        }
        return Ok(node);
    }
    let p = old
        .participants
        .iter()
        .find(|p| p.name == spec)
        .ok_or_else(|| {
            anyhow!(
                "participant {spec:?} is not in the old group; new members are NAME=KEY@HOST:PORT"
            )
        })?;
    Ok(PlanNode {
        name: p.name.clone(),
        identity_key: p.identity_key.clone(),
        address: p.address.clone(),
    })
}

fn fingerprint_hex(hex_key: &str) -> String {
    conclave_protocol::NodeId::from_hex(hex_key)
        .map(|n| key_fingerprint(&n))
        .unwrap_or_else(|_| hex_key.to_owned())
}

pub(crate) fn plan(args: RotatePlanArgs) -> CmdResult {
    let old = read_manifest(&args.old_manifest)?;
    let coordinator = parse_node(&args.coordinator, "--coordinator")?;
    if !args.replace.is_empty() && args.kind != RotateKind::Reshare {
        fail!("--replace gives a member a new identity key: only a reshare can do that (`--kind reshare`)");
    }
    let mut rng = rand::rngs::OsRng;
    let mut plan = match args.kind {
        RotateKind::Refresh => {
            if args.threshold.is_some() || !args.participants.is_empty() || !args.dealers.is_empty()
            {
                fail!("a refresh keeps members and threshold; use `--kind reshare` to change them");
            }
            kinds::refresh_plan(&old, coordinator, &mut rng)?
        }
        RotateKind::Repair => {
            let [lost] = args.participants.as_slice() else {
                fail!("a repair names the one member whose share is lost: -p NAME");
            };
            if lost.contains('=') {
                fail!(
                    "a repair rebuilds the share of an existing member under its own identity key: name it as -p NAME (the key and address come from the manifest); a member that lost its identity key is replaced with a reshare (--replace)"
                );
            }
            kinds::repair_plan(&old, lost, &args.dealers, coordinator, &mut rng)?
        }
        RotateKind::Reshare => {
            let Some(t) = args.threshold else {
                fail!("--threshold is required for a reshare (the new group's threshold)");
            };
            if args.participants.is_empty() && args.replace.is_empty() {
                fail!("--participant is required for a reshare (every member of the new group)");
            }
            let mut nodes = args
                .participants
                .iter()
                .map(|s| new_member(s, &old))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut replace = vec![];
            for spec in &args.replace {
                let node = parse_node(spec, "--replace")?;
                let Some(p) = old.participants.iter().find(|p| p.name == node.name) else {
                    fail!(
                        "--replace {:?}: not a member of the old group (a new member is -p NAME=KEY@HOST:PORT)",
                        node.name
                    );
                };
                if p.identity_key.eq_ignore_ascii_case(&node.identity_key) {
                    fail!(
                        "--replace {:?}: that is its current key; nothing to replace",
                        node.name
                    );
                }
                if nodes.iter().any(|n| n.name == node.name) {
                    fail!(
                        "{:?} is given both with -p and with --replace; give it once",
                        node.name
                    );
                }
                replace.push(node.name.clone());
                nodes.push(node);
            }
            if !args.dealers.is_empty() && args.dealers.len() != usize::from(old.threshold) {
                fail!(
                    "a reshare is dealt by exactly {} old members (the old threshold); {} given",
                    old.threshold,
                    args.dealers.len()
                );
            }
            kinds::reshare_plan(
                &old,
                t,
                nodes,
                &args.dealers,
                &replace,
                coordinator,
                &mut rng,
            )?
        }
    };
    plan.round_timeout_secs = args.timeout;
    plan.join_timeout_secs = args.join_timeout;
    plan.roster()?;
    // The author checks the plan as every member will, against the same manifest.
    let checked = CheckedPlan::check(&plan, OldGroup::Manifest(&old))
        .map_err(|e| anyhow!("the plan would be refused by every member: {e}"))?;
    if args.out.exists() {
        fail!(
            "{} already exists; refusing to overwrite a plan",
            args.out.display()
        );
    }
    eprintln!("{}", checked.summary());
    confirm("write this plan", args.yes)?;
    conclave_keygen::sharefile::write_atomic(
        &args.out,
        plan.to_toml()?.as_bytes(),
        &mut rand::rngs::OsRng,
    )
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", args.out.display());
    eprintln!(
        "plan fingerprint {1}: give it to every member's operator by a channel other than the plan file.\n\
         Copy the plan to the coordinator and every member, then run\n  \
         coordinator:  conclave rotate relay --plan {0} --identity DIR --out DIR\n  \
         each member:  conclave rotate join --plan {0} --identity DIR --old-manifest FILE \
         [--old-share FILE] --out DIR --expect-plan {1}",
        args.out.display(),
        checked.fingerprint()
    );
    Ok(())
}

pub(crate) async fn join(args: RotateJoinArgs) -> CmdResult {
    // A plan that breaks the rules (a name under two keys, a dealer count that cannot be, ...)
    // is refused like one that contradicts this host's manifest.
    let plan = CeremonyPlan::read(&args.plan).map_err(|e| {
        let err = anyhow!("plan {}: {e}", args.plan.display());
        if CeremonyPlan::is_refusal(&e) {
            Exit::refused(anyhow!("plan refused, nothing was sent: {err:#}"))
        } else {
            Exit::from(err)
        }
    })?;
    if plan.from.is_none() {
        fail!("this is a DKG plan; run it with `conclave keygen dkg join`");
    }
    let identity = read_identity(&args.identity)?;
    let me = identity.node_id();
    let expected_key = match &args.expect_group_key {
        Some(hex_key) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(hex_key.trim(), &mut k).map_err(|_| {
                anyhow!("--expect-group-key: expected 64 hex digits (the group public key)")
            })?;
            Some(k)
        }
        None => None,
    };
    let old = args
        .old_manifest
        .as_deref()
        .map(read_manifest)
        .transpose()?;
    // Membership of the old group is proven by this node's own share file (owner and the
    // manifest it was made with), not by a manifest that may have come with the plan.
    let own_header = match &args.old_share {
        Some(p) => Some(ShareFile::inspect(p)?),
        None => None,
    };
    let was_member = match (&old, &own_header) {
        (Some(m), Some(h)) => h.owner == me && h.manifest_hash == m.hash()?,
        _ => false,
    };
    let view = match (&old, expected_key) {
        (Some(m), _) => OldGroup::Manifest(m),
        (None, Some(k)) => OldGroup::Joining {
            expected_group_key: k,
        },
        (None, None) => fail!(
            "pass this host's copy of the group's current manifest (--old-manifest), or, for a member joining the group, the group public key told out of band (--expect-group-key)"
        ),
    };
    if !was_member && expected_key.is_none() && args.mode == Mode::Prod {
        fail!(
            "nothing on this host proves it is a member of the old group: in prod mode pass its current share (--old-share: its header names the manifest it was made with), or, for a member joining the group, the group public key told out of band (--expect-group-key HEX); a manifest copied with the plan proves nothing"
        );
    }
    let checked = CheckedPlan::check(&plan, view)
        .map_err(|e| Exit::refused(anyhow!("plan refused, nothing was sent: {e}")))?;
    if let (Some(k), Some(m)) = (expected_key, &old) {
        if m.public_key_bytes()? != k {
            return Err(Exit::refused(anyhow!(
                "plan refused, nothing was sent: the manifest's group key {} is not the expected {}",
                m.group_public_key,
                hex::encode(k)
            )));
        }
    }
    let deals = checked.dealers().iter().any(|d| d.node_id == me);
    let old_share = if deals {
        let Some(path) = &args.old_share else {
            fail!("this node deals in the plan: pass its current share with --old-share FILE");
        };
        let share = crate::keystore_cmd::read_share(
            path,
            args.node.keystore.as_deref(),
            args.old_passphrase_file.as_deref(),
            args.mode,
            "the current share file",
        )?;
        let from_epoch = old.as_ref().map_or(0, |m| m.epoch);
        if share.header.epoch != from_epoch || share.header.owner != me {
            fail!(
                "{} is this group's epoch-{} share of another node, or of another epoch (the plan changes epoch {})",
                path.display(),
                share.header.epoch,
                from_epoch
            );
        }
        // The share itself names the manifest it was made with: this host's own evidence
        // that the manifest the plan was checked against is the real one.
        if let Some(m) = &old {
            if share.header.manifest_hash != m.hash()? {
                return Err(Exit::refused(anyhow!(
                    "plan refused, nothing was sent: {} was made with another manifest than {}",
                    path.display(),
                    args.old_manifest
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display()
                )));
            }
        }
        Some(share.key_package)
    } else {
        None
    };
    eprintln!("{}", checked.summary());
    confirm_plan(&plan, args.expect_plan.as_deref(), args.yes, args.mode)?;
    if plan.kind == conclave_keygen::ceremony::CeremonyKind::Refresh && old_share.is_none() {
        fail!("a refresh needs this member's current share (--old-share)");
    }
    let mut protocol = kinds::protocol_for(
        kinds::Input::Rotation {
            checked: &checked,
            old_share,
        },
        &me,
    )?;
    crate::faults::FaultPlan::from_env().apply_protocol(&mut protocol);
    run_join(
        &plan,
        identity,
        protocol,
        &args.out,
        args.passphrase_file.as_deref(),
        args.audit_log.as_deref(),
        crate::ceremony::Extras {
            keystore: args.node.keystore.as_deref(),
            freeze_file: args.node.freeze_file.as_deref(),
            metrics_textfile: args.node.metrics_textfile.as_deref(),
            while_frozen: args.node.while_frozen,
        },
        args.mode,
        args.kdf,
        args.json,
    )
    .await
}

/// `rotate resume`: a member left undecided (it acknowledged its pending share, but never saw
/// every member's acknowledgement) shows what it knows, activates once every acknowledgement
/// is at hand (from the relay's or another member's completion file), or abandons. The rules
/// live in [`FileShareStore::resume`].
pub(crate) fn resume(args: RotateResumeArgs) -> CmdResult {
    let plan = read_plan(&args.plan)?;
    let identity = read_identity(&args.identity)?;
    let me = identity.node_id();
    if !plan.roster()?.iter().any(|m| m.node_id == me) {
        fail!(
            "this identity ({}) is not a member of the plan's ceremony",
            me.short()
        );
    }
    let mut store = FileShareStore::for_member(&plan, &me, &args.out, None, KdfCost::Standard);
    let mut others = vec![];
    for f in &args.completions {
        others.push(store::read_completion(f).with_context(|| f.display().to_string())?);
    }
    if args.abandon {
        // Check first, activate nothing: a ceremony every member acknowledged is not abandoned.
        let inspected = match store.inspect(&plan, &others) {
            // A set with a file missing was never acknowledged by this member (it acknowledges
            // only after the whole set is written), so no member can have activated with it.
            Err(store::StoreError::Incomplete(missing)) => {
                eprintln!(
                    "{} is missing: this member never acknowledged the ceremony",
                    missing.display()
                );
                Resume::Undecided {
                    acknowledged: vec![],
                    missing: vec![],
                    reason: conclave_keygen::ceremony::CompletionError::Missing(
                        missing.display().to_string(),
                    ),
                    pending: store.pending_present(),
                }
            }
            other => other?,
        };
        let pending = match inspected {
            Resume::AlreadyActive => {
                println!("nothing pending: ceremony {} is active on this host", plan.ceremony);
                return Ok(());
            }
            Resume::Activated(_) | Resume::Complete(_) => fail!(
                "every member acknowledged this ceremony: it completed, so abandon is refused; run resume without --abandon to activate"
            ),
            Resume::Undecided { pending, .. } => pending,
        };
        eprintln!(
            "abandon ceremony {} on this host: removes {}. Only safe if NO member activated (ask every member's operator first).",
            plan.ceremony,
            pending.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        confirm("discard the pending files", args.yes)?;
        store.abandon();
        println!("abandoned: pending files removed");
        return Ok(());
    }
    let state = store.resume(&plan, &others)?;
    match state {
        Resume::AlreadyActive => {
            println!(
                "nothing pending: ceremony {} is active on this host",
                plan.ceremony
            );
            Ok(())
        }
        Resume::Activated(_) | Resume::Complete(_) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony": plan.ceremony, "state": "activated",
                        "share_file": store.share_file(), "manifest": store.manifest_file()})
                );
            } else {
                println!(
                    "activated: every member acknowledged ceremony {}{}",
                    plan.ceremony,
                    store
                        .share_file()
                        .map(|s| format!("; share {}", s.display()))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Resume::Undecided {
            acknowledged,
            missing,
            reason,
            pending,
        } => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony": plan.ceremony, "state": "undecided",
                        "acknowledged": acknowledged, "missing": missing,
                        "reason": reason.to_string(), "pending": pending})
                );
            } else {
                println!(
                    "undecided: ceremony {} pending on this host; acknowledged by {}; missing: {}\n  ({reason})\n  \
                     get `{}.completion.toml` from the relay's --out directory or from a member that activated, and run again with --completion FILE",
                    plan.ceremony,
                    if acknowledged.is_empty() { "nobody".into() } else { acknowledged.join(", ") },
                    missing.join(", "),
                    plan.ceremony
                );
            }
            Err(Exit::refused(anyhow!(
                "not every acknowledgement is at hand"
            )))
        }
    }
}

/// `rotate status`: each manifest's epoch, threshold and members; with a coordinator, which
/// epoch it serves and how many members it reaches (members on another epoch are refused
/// by it, so they do not count as reachable).
pub(crate) async fn status(args: RotateStatusArgs) -> CmdResult {
    let mut rows = vec![];
    for path in &args.manifests {
        let m = read_manifest(path)?;
        rows.push((path.clone(), m));
    }
    rows.sort_by_key(|(_, m)| (m.group.clone(), m.epoch));
    // Share files on this host older than the newest manifest of their group, and pending
    // files of ceremonies that are not finished.
    let mut superseded = vec![];
    let mut pending = vec![];
    for dir in &args.share_dirs {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        let mut paths: Vec<std::path::PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".pending") {
                pending.push(path.clone());
                continue;
            }
            if !name.ends_with(".share") {
                continue;
            }
            let Ok(h) = ShareFile::inspect(&path) else {
                continue;
            };
            let newest = rows
                .iter()
                .filter(|(_, m)| m.group == h.group)
                .map(|(_, m)| m.epoch)
                .max();
            if let Some(newest) = newest.filter(|n| *n > h.epoch) {
                superseded.push((path.clone(), h.group.to_string(), h.epoch, newest));
            }
        }
    }
    let mut served = None;
    if let Some(crate::OptClientArgs {
        coordinator: Some(coordinator),
        coordinator_key: Some(coordinator_key),
        identity: Some(identity),
    }) = args.client.clone()
    {
        let group = rows
            .first()
            .map(|(_, m)| m.group.to_string())
            .ok_or_else(|| anyhow!("give at least one --manifest"))?;
        let c = crate::ClientArgs {
            conn: crate::ConnArgs {
                coordinator: Some(coordinator),
                coordinator_key: Some(coordinator_key),
                identity: Some(identity),
                ..Default::default()
            },
            group: Some(group),
        };
        let (client, group) = crate::commands::connect(&c).await?;
        let info = client
            .group_info(&group)
            .await
            .map_err(|e| anyhow!("coordinator: {e}"))?;
        served = Some(info);
    }
    if args.json {
        let groups: Vec<_> = rows
            .iter()
            .map(|(p, m)| {
                serde_json::json!({
                    "manifest": p, "group": m.group.as_str(), "epoch": m.epoch,
                    "threshold": m.threshold, "public_key": m.group_public_key,
                    "members": m.participants.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let coord = served.as_ref().map(|i| {
            serde_json::json!({
                "epoch": i.epoch, "threshold": i.threshold, "reachable": i.reachable,
                "members": i.participants,
                "on_other_epochs": i.stale.iter().map(|(n, e)| serde_json::json!({"name": n, "epoch": e})).collect::<Vec<_>>(),
            })
        });
        let superseded_json: Vec<_> = superseded
            .iter()
            .map(|(p, g, e, n)| serde_json::json!({"file": p, "group": g, "epoch": e, "newest_epoch": n}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "manifests": groups, "coordinator": coord,
                "superseded_shares": superseded_json, "pending": pending,
            })
        );
        return Ok(());
    }
    for (p, m) in &rows {
        let names: Vec<&str> = m.participants.iter().map(|p| p.name.as_str()).collect();
        println!(
            "{} epoch {}: {}-of-{} [{}]  key {}  ({})",
            m.group,
            m.epoch,
            m.threshold,
            names.len(),
            names.join(", "),
            m.group_public_key,
            p.display()
        );
    }
    for (p, g, e, n) in &superseded {
        println!(
            "{}: epoch-{e} share of {g}, superseded by epoch {n}: not retired (t old holders could still sign with their old shares); `conclave rotate retire --share {}` once epoch {n} signs",
            p.display(),
            p.display()
        );
    }
    for p in &pending {
        println!(
            "{}: pending file of an unfinished ceremony: `conclave rotate resume` shows and finishes it",
            p.display()
        );
    }
    if let Some(i) = served {
        println!(
            "coordinator serves epoch {}: {}-of-{}, {} member(s) reachable on that epoch",
            i.epoch,
            i.threshold,
            i.participants.len(),
            i.reachable
        );
        for (name, epoch) in &i.stale {
            if *epoch < i.epoch {
                println!(
                    "  {name} is on epoch {epoch}: refused until it serves its epoch-{} share (reload it) (its epoch-{epoch} share still exists: retire it)",
                    i.epoch
                );
            } else {
                println!(
                    "  {name} is on epoch {epoch}: refused until it serves its epoch-{} share (reload it)",
                    i.epoch
                );
            }
        }
        if let Some((_, newest)) = rows.last() {
            if newest.epoch != i.epoch {
                println!(
                    "warning: the newest manifest is epoch {} but the coordinator serves epoch {}: restart it with the new manifest",
                    newest.epoch, i.epoch
                );
            }
        }
    }
    Ok(())
}

/// `rotate retire`: destroys an old share (overwrite, sync, unlink) once the coordinator
/// serves the group at a newer epoch and has just produced a verified signature with it.
pub(crate) async fn retire(args: RetireArgs) -> CmdResult {
    let header = ShareFile::inspect(&args.share)?;
    let new = read_manifest(&args.manifest)?;
    if new.group != header.group || new.public_key_bytes()? != header.group_public_key {
        fail!(
            "{} is a share of another group or key than {}",
            args.share.display(),
            args.manifest.display()
        );
    }
    if new.epoch <= header.epoch {
        fail!(
            "{} is an epoch-{} share and the manifest is epoch {}: it is not superseded",
            args.share.display(),
            header.epoch,
            new.epoch
        );
    }
    let client_args = crate::ClientArgs {
        conn: crate::ConnArgs {
            coordinator: Some(args.client.coordinator.clone()),
            coordinator_key: Some(args.client.coordinator_key.clone()),
            identity: Some(args.client.identity.clone()),
            ..Default::default()
        },
        group: Some(new.group.to_string()),
    };
    let (client, group) = crate::commands::connect(&client_args).await?;
    let info = client
        .group_info(&group)
        .await
        .map_err(|e| anyhow!("coordinator: {e}"))?;
    if info.epoch != new.epoch {
        return Err(Exit::refused(anyhow!(
            "the coordinator serves epoch {} of {group}, not epoch {}: the new shares are not in service yet; nothing destroyed",
            info.epoch,
            new.epoch
        )));
    }
    let mut challenge = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut challenge);
    let message = format!(
        "conclave retire check: {} epoch {} {}",
        new.group,
        new.epoch,
        hex::encode(challenge)
    );
    let sig = client
        .sign(
            &group,
            message.as_bytes(),
            std::time::Duration::from_secs(10),
            Some(new.public_key_bytes()?),
        )
        .await
        .map_err(|e| {
            Exit::refused(anyhow!(
                "the new group did not sign: {e}; nothing destroyed"
            ))
        })?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&new.public_key_bytes()?)?;
    let signature = ed25519_dalek::Signature::from_slice(&sig.signature)?;
    if vk.verify_strict(message.as_bytes(), &signature).is_err() {
        return Err(Exit::refused(anyhow!(
            "the signature does not verify; nothing destroyed"
        )));
    }
    eprintln!(
        "epoch {} of {} signed (verified) by {}; about to destroy the epoch-{} share {}",
        new.epoch,
        new.group,
        sig.signers.join(", "),
        header.epoch,
        args.share.display()
    );
    confirm("destroy the old share", args.yes)?;
    destroy(&args.share)?;
    println!(
        "destroyed {} (sha256 of the check message: {})",
        args.share.display(),
        hex::encode(sha2::Sha256::digest(message.as_bytes()))
    );
    Ok(())
}
