//! `conclave rotate plan | relay | join | status | retire`: refresh and reshare a group under
//! the same key, each participant acting on its own host and the coordinator relaying.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use conclave_keygen::ceremony::{CeremonyKind, CeremonyPlan, PlanNode};
use conclave_keygen::dkg::Dkg;
use conclave_keygen::reshare::Reshare;
use conclave_keygen::{GroupManifest, ShareFile};
use sha2::Digest;

use crate::ceremony::{
    parse_node, plan_manifest_path, read_identity, read_plan, run_join, Outputs,
};
use crate::{
    passphrase, CmdResult, Exit, RetireArgs, RotateJoinArgs, RotateKind, RotatePlanArgs,
    RotateStatusArgs,
};

fn read_manifest(path: &Path) -> anyhow::Result<GroupManifest> {
    GroupManifest::read(path).with_context(|| format!("manifest {}", path.display()))
}

/// Asks the operator to confirm, unless `yes`. Refuses without a terminal to ask on.
pub(crate) fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question}: no terminal to confirm on; re-run with --yes once you have checked the plan");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// `-p NAME` (a member of the old group, same key and address) or `-p NAME=KEY@HOST:PORT`.
fn new_member(spec: &str, old: &GroupManifest) -> anyhow::Result<PlanNode> {
    if spec.contains('=') {
        return parse_node(spec, "participant");
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

pub(crate) fn plan(args: RotatePlanArgs) -> CmdResult {
    let old = read_manifest(&args.old_manifest)?;
    let coordinator = parse_node(&args.coordinator, "--coordinator")?;
    let (kind, threshold, participants, dealers) = match args.kind {
        RotateKind::Refresh => {
            if args.threshold.is_some() || !args.participants.is_empty() || !args.dealers.is_empty()
            {
                fail!("a refresh keeps members and threshold; use `--kind reshare` to change them");
            }
            let all: Vec<String> = old.participants.iter().map(|p| p.name.clone()).collect();
            let nodes = all
                .iter()
                .map(|n| new_member(n, &old))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (CeremonyKind::Refresh, old.threshold, nodes, all)
        }
        RotateKind::Repair => {
            let [lost] = args.participants.as_slice() else {
                fail!("a repair names the one member whose share is lost: -p NAME");
            };
            let lost = new_member(lost, &old)?;
            let helpers: Vec<String> = if args.dealers.is_empty() {
                old.participants
                    .iter()
                    .filter(|p| p.identity_key != lost.identity_key)
                    .take(usize::from(old.threshold))
                    .map(|p| p.name.clone())
                    .collect()
            } else {
                args.dealers.clone()
            };
            (CeremonyKind::Repair, old.threshold, vec![lost], helpers)
        }
        RotateKind::Reshare => {
            let Some(t) = args.threshold else {
                fail!("--threshold is required for a reshare (the new group's threshold)");
            };
            if args.participants.is_empty() {
                fail!("--participant is required for a reshare (every member of the new group)");
            }
            let nodes = args
                .participants
                .iter()
                .map(|s| new_member(s, &old))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let dealers: Vec<String> = if args.dealers.is_empty() {
                // Default: old members that stay, then the others, first t of them.
                let mut order: Vec<String> = old
                    .participants
                    .iter()
                    .filter(|p| nodes.iter().any(|n| n.identity_key == p.identity_key))
                    .map(|p| p.name.clone())
                    .collect();
                order.extend(
                    old.participants
                        .iter()
                        .filter(|p| !nodes.iter().any(|n| n.identity_key == p.identity_key))
                        .map(|p| p.name.clone()),
                );
                order.truncate(usize::from(old.threshold));
                order
            } else {
                args.dealers.clone()
            };
            if dealers.len() != usize::from(old.threshold) {
                fail!(
                    "a reshare is dealt by exactly {} old members (the old threshold); {} given",
                    old.threshold,
                    dealers.len()
                );
            }
            (CeremonyKind::Reshare, t, nodes, dealers)
        }
    };
    let mut plan = CeremonyPlan::new_rotation(
        kind,
        &old,
        threshold,
        coordinator,
        participants,
        &dealers,
        &mut rand::rngs::OsRng,
    )?;
    plan.round_timeout_secs = args.timeout;
    plan.join_timeout_secs = args.join_timeout;
    plan.roster()?;
    if args.out.exists() {
        fail!(
            "{} already exists; refusing to overwrite a plan",
            args.out.display()
        );
    }
    eprintln!("{}", plan.summary());
    confirm("write this plan", args.yes)?;
    conclave_keygen::sharefile::write_atomic(
        &args.out,
        plan.to_toml()?.as_bytes(),
        &mut rand::rngs::OsRng,
    )
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", args.out.display());
    eprintln!(
        "Copy the plan to the coordinator and every member, then run\n  \
         coordinator:  conclave rotate relay --plan {0} --identity DIR --out DIR\n  \
         each member:  conclave rotate join --plan {0} --identity DIR --old-manifest FILE \
         [--old-share FILE] --out DIR",
        args.out.display()
    );
    Ok(())
}

pub(crate) async fn join(args: RotateJoinArgs) -> CmdResult {
    let plan = read_plan(&args.plan)?;
    let Some(from) = plan.from.clone() else {
        fail!("this is a DKG plan; run it with `conclave keygen dkg join`");
    };
    let identity = read_identity(&args.identity)?;
    let me = identity.node_id();
    let old = read_manifest(&args.old_manifest)?;
    if hex::encode(old.hash()?) != from.manifest_hash {
        fail!(
            "{} is not the manifest this plan changes (epoch {} of {}); pass the group's current manifest",
            args.old_manifest.display(),
            from.epoch,
            plan.group
        );
    }
    let deals = from.dealers.iter().any(|d| d.identity_key == me.to_hex());
    let old_share = if deals {
        let Some(path) = &args.old_share else {
            fail!("this node deals in the plan: pass its current share with --old-share FILE");
        };
        let pass = passphrase::obtain(
            args.old_passphrase_file.as_deref(),
            args.mode,
            "the current share file",
            false,
        )?;
        let share = ShareFile::read(path, &pass)?;
        if share.header.epoch != from.epoch || share.header.owner != me {
            fail!(
                "{} is this group's epoch-{} share of another node, or of another epoch (the plan changes epoch {})",
                path.display(),
                share.header.epoch,
                from.epoch
            );
        }
        Some(share.key_package)
    } else {
        None
    };
    eprintln!("{}", plan.summary());
    confirm("take part in this ceremony", args.yes)?;
    let out = Outputs {
        dir: args.out.clone(),
        share: None,
        manifest: (plan.kind != CeremonyKind::Repair).then(|| plan_manifest_path(&args.out, &plan)),
    };
    let protocol: Box<dyn conclave_keygen::ceremony::Protocol> = match plan.kind {
        CeremonyKind::Refresh => {
            let Some(kp) = old_share else {
                fail!("a refresh needs this member's current share (--old-share)");
            };
            Box::new(Dkg::refresh(&plan, &me, kp, &old)?)
        }
        CeremonyKind::Reshare => {
            #[allow(unused_mut)]
            let mut reshare = Reshare::new(&plan, &me, old_share.as_ref())?;
            #[cfg(feature = "fault-injection")]
            if std::env::var("CONCLAVE_TEST_FAULT").as_deref() == Ok("reshare-bad-sub-share") {
                tracing::warn!("TEST FAULT INJECTION ACTIVE: this dealer sends a bad sub-share");
                reshare.inject(conclave_keygen::reshare::ReshareFault::BadSubShare);
            }
            Box::new(reshare)
        }
        CeremonyKind::Repair => Box::new(conclave_keygen::repair::Repair::new(
            &plan, &me, &old, old_share,
        )?),
        CeremonyKind::Dkg => fail!("this is a DKG plan; run it with `conclave keygen dkg join`"),
    };
    run_join(
        &plan,
        identity,
        protocol,
        out,
        args.passphrase_file.as_deref(),
        args.mode,
        args.kdf,
        args.json,
    )
    .await
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
            coordinator,
            coordinator_key,
            identity,
            group,
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
        println!(
            "{}",
            serde_json::json!({ "manifests": groups, "coordinator": coord })
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
    if let Some(i) = served {
        println!(
            "coordinator serves epoch {}: {}-of-{}, {} member(s) reachable on that epoch",
            i.epoch,
            i.threshold,
            i.participants.len(),
            i.reachable
        );
        for (name, epoch) in &i.stale {
            println!(
                "  {name} is on epoch {epoch}: refused until it restarts on its epoch-{} share",
                i.epoch
            );
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
        coordinator: args.client.coordinator.clone(),
        coordinator_key: args.client.coordinator_key.clone(),
        identity: args.client.identity.clone(),
        group: new.group.to_string(),
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

/// Overwrites a file with random bytes, syncs it, unlinks it and syncs its directory.
pub(crate) fn destroy(path: &Path) -> anyhow::Result<()> {
    let len = std::fs::metadata(path)?.len();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let mut junk = vec![0u8; usize::try_from(len).unwrap_or(0)];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut junk);
        f.write_all(&junk)?;
        f.sync_all()?;
    }
    std::fs::remove_file(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
