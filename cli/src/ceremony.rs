//! `conclave keygen dkg plan | relay | join`: wiring of the ceremony state machines
//! (conclave_keygen::ceremony) to their QUIC drivers, files and progress output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use conclave_coordinator::ceremony::{RelayEnd, RelayServer};
use conclave_keygen::ceremony::{
    completed_manifest, describe_abort, CeremonyPlan, Ctx, Member, MemberEvent, PlanNode,
    RelayEvent,
};
use conclave_keygen::dkg::Dkg;
use conclave_keygen::{share_header, KdfParams, ShareFile};
use conclave_protocol::identity::read_node_id;
use conclave_protocol::{GroupName, IdentityKey};

use crate::commands::{manifest_path, share_path};
use crate::config::Mode;
use crate::{passphrase, CmdResult, DkgJoinArgs, DkgPlanArgs, DkgRelayArgs, Exit, KdfChoice};

fn parse_node(spec: &str, what: &str) -> anyhow::Result<PlanNode> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("{what} {spec:?}: expected NAME=KEY@HOST:PORT"))?;
    let (key, address) = rest
        .rsplit_once('@')
        .ok_or_else(|| anyhow!("{what} {spec:?}: expected NAME=KEY@HOST:PORT (no '@')"))?;
    if address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        anyhow::bail!("{what} {name:?}: address {address:?} must be HOST:PORT");
    }
    let node = read_node_id(key).with_context(|| {
        format!(
            "{what} {name:?}: {key:?} is neither a hex identity key nor a readable identity.pub"
        )
    })?;
    Ok(PlanNode {
        name: name.to_owned(),
        identity_key: node.to_hex(),
        address: address.to_owned(),
    })
}

pub(crate) fn plan(args: DkgPlanArgs) -> CmdResult {
    let group =
        GroupName::new(&args.group).map_err(|e| anyhow!("--group {:?}: {e}", args.group))?;
    let participants = args
        .participants
        .iter()
        .map(|s| parse_node(s, "participant"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let coordinator = parse_node(&args.coordinator, "--coordinator")?;
    let mut plan = CeremonyPlan::new_dkg(
        group,
        args.threshold,
        coordinator,
        participants,
        &mut rand::rngs::OsRng,
    )?;
    plan.round_timeout_secs = args.timeout;
    plan.join_timeout_secs = args.join_timeout;
    plan.members()?;
    let text = plan.to_toml()?;
    if args.out.exists() {
        fail!(
            "{} already exists; refusing to overwrite a plan",
            args.out.display()
        );
    }
    conclave_keygen::sharefile::write_atomic(&args.out, text.as_bytes(), &mut rand::rngs::OsRng)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", args.out.display());
    eprintln!(
        "DKG plan {} for group {}: {}-of-{}, relayed by {} at {}.\n\
         Copy this file to the coordinator and to every participant, then run\n  \
         coordinator:  conclave keygen dkg relay --plan {} --identity DIR\n  \
         each participant: conclave keygen dkg join --plan {} --identity DIR --out DIR",
        plan.ceremony,
        plan.group,
        plan.threshold,
        plan.participants.len(),
        plan.coordinator.name,
        plan.coordinator.address,
        args.out.display(),
        args.out.display(),
    );
    Ok(())
}

fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .ok_or_else(|| anyhow!("{address} resolves to no address"))
}

fn read_plan(path: &Path) -> anyhow::Result<CeremonyPlan> {
    CeremonyPlan::read(path).with_context(|| format!("plan {}", path.display()))
}

fn read_identity(dir: &Path) -> anyhow::Result<IdentityKey> {
    IdentityKey::read_from(&dir.join(conclave_protocol::identity::KEY_FILE))
        .with_context(|| format!("cannot read the identity in {}", dir.display()))
}

pub(crate) async fn relay(args: DkgRelayArgs) -> CmdResult {
    let plan = read_plan(&args.plan)?;
    let identity = read_identity(&args.identity)?;
    if identity.node_id() != plan.coordinator_id()? {
        fail!(
            "this identity ({}) is not the plan's coordinator ({})",
            identity.node_id().short(),
            plan.coordinator.name
        );
    }
    let manifest_file = manifest_path(&args.out, &plan.group);
    if manifest_file.exists() {
        fail!(
            "{} already exists; refusing to overwrite a manifest",
            manifest_file.display()
        );
    }
    let listen = match &args.listen {
        Some(a) => resolve(a)?,
        None => resolve(&plan.coordinator.address)?,
    };
    #[allow(unused_mut)]
    let mut relay = conclave_keygen::ceremony::Relay::new(&plan, Instant::now())?;
    #[cfg(feature = "fault-injection")]
    if std::env::var("CONCLAVE_TEST_FAULT").as_deref() == Ok("dkg-substitute-round1") {
        tracing::warn!("TEST FAULT INJECTION ACTIVE: this relay substitutes a round-1 package");
        relay.inject(conclave_keygen::ceremony::RelayFault::SubstituteRound1);
    }
    let server = RelayServer::bind(&plan, &identity, listen)?;
    let n = plan.participants.len();
    eprintln!(
        "relaying DKG {} for group {} ({}-of-{n}) on {}; waiting for participants to join",
        plan.ceremony,
        plan.group,
        plan.threshold,
        server.local_addr()?
    );
    let kind = plan.kind;
    let started = Instant::now();
    let end = server
        .run(relay, |_, ev| match ev {
            RelayEvent::Posted {
                round,
                node,
                posted,
                of,
            } => {
                eprintln!(
                    "  round {round} ({}): {} [{posted}/{of}]",
                    kind.round_name(*round),
                    plan.name_of(node)
                );
            }
            RelayEvent::RoundComplete { round } => eprintln!(
                "round {round} ({}) complete after {:.1} s",
                kind.round_name(*round),
                started.elapsed().as_secs_f64()
            ),
            _ => {}
        })
        .await;
    let ctx = Ctx::of(&plan)?;
    match end {
        RelayEnd::Completed { confirm, store } => {
            let manifest = completed_manifest(&plan, &confirm, &store).map_err(|e| {
                anyhow!("the ceremony completed but its manifest is not usable: {e}")
            })?;
            conclave_protocol::identity::create_private_dir(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            conclave_keygen::sharefile::write_atomic(
                &manifest_file,
                manifest.to_toml()?.as_bytes(),
                &mut rand::rngs::OsRng,
            )
            .with_context(|| format!("cannot write {}", manifest_file.display()))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "group": plan.group.as_str(),
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key, "manifest": manifest_file,
                    })
                );
            } else {
                println!(
                    "group {}: public key {}",
                    plan.group, manifest.group_public_key
                );
                println!("manifest: {}", manifest_file.display());
            }
            Ok(())
        }
        RelayEnd::Aborted(why) => {
            let (summary, _) = describe_abort(&plan, &ctx, &why);
            Err(Exit::refused(anyhow!("DKG aborted: {summary}")))
        }
    }
}

/// Removes a file if present; true if it was there.
fn remove_if_present(path: &Path) -> bool {
    std::fs::remove_file(path).is_ok()
}

fn pending_path(share: &Path) -> PathBuf {
    let mut s = share.as_os_str().to_owned();
    s.push(".pending");
    PathBuf::from(s)
}

pub(crate) async fn join(args: DkgJoinArgs) -> CmdResult {
    let plan = read_plan(&args.plan)?;
    let identity = read_identity(&args.identity)?;
    let me = identity.node_id();
    let my_name = plan
        .participants
        .iter()
        .find(|p| p.identity_key == me.to_hex())
        .map(|p| p.name.clone())
        .ok_or_else(|| {
            anyhow!(
                "this identity ({}) is not a participant of the plan",
                me.short()
            )
        })?;
    if args.kdf == KdfChoice::Light && args.mode != Mode::Dev {
        fail!(
            "--kdf light is for dev mode only (this is {}); add --mode dev for a lab setup",
            args.mode
        );
    }
    let share_file = share_path(&args.out, &plan.group, &my_name);
    let manifest_file = manifest_path(&args.out, &plan.group);
    let pending = pending_path(&share_file);
    for p in [&share_file, &manifest_file] {
        if p.exists() {
            fail!(
                "{} already exists; refusing to overwrite key material (choose another --out)",
                p.display()
            );
        }
    }
    if remove_if_present(&pending) {
        eprintln!(
            "removed {} left by an earlier, unfinished ceremony",
            pending.display()
        );
    }
    // Ask for the passphrase before joining, so nobody waits on a prompt mid-ceremony.
    let pass = passphrase::obtain(
        args.passphrase_file.as_deref(),
        args.mode,
        "the new share file",
        true,
    )?;
    passphrase::check_new(&pass, args.mode)?;
    conclave_protocol::identity::create_private_dir(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let relay_id = plan.coordinator_id()?;
    let relay_addr = resolve(&plan.coordinator.address)?;
    #[allow(unused_mut)]
    let mut dkg = Dkg::new(&plan, &me)?;
    #[cfg(feature = "fault-injection")]
    let exit_after: Option<u8> = match std::env::var("CONCLAVE_TEST_FAULT").as_deref() {
        Ok("dkg-bad-share") => {
            tracing::warn!("TEST FAULT INJECTION ACTIVE: this member sends bad round-2 shares");
            dkg.inject(conclave_keygen::dkg::DkgFault::BadShare);
            None
        }
        Ok(s) => s
            .strip_prefix("dkg-exit-after-round=")
            .and_then(|r| r.parse().ok()),
        Err(_) => None,
    };
    let mut member = Member::new(&plan, identity.clone(), dkg)?;
    let kind = plan.kind;
    let total = kind.final_round();
    eprintln!(
        "joining DKG {} for group {} as {my_name}; relay {} at {}",
        plan.ceremony, plan.group, plan.coordinator.name, plan.coordinator.address
    );
    let mut rng = rand::rngs::OsRng;
    let mut result: Option<Result<conclave_keygen::GroupManifest, String>> = None;
    let mut manifest_held = None;
    let started = Instant::now();
    conclave_participant::ceremony::run_member(
        &mut member,
        &identity,
        relay_id,
        relay_addr,
        |ev| {
            match ev {
                MemberEvent::Joined => {
                    eprintln!("all {} participants joined", plan.participants.len())
                }
                MemberEvent::RoundComplete { round } => {
                    eprintln!(
                        "round {round}/{total} ({}) complete after {:.1} s",
                        kind.round_name(round),
                        started.elapsed().as_secs_f64()
                    );
                    #[cfg(feature = "fault-injection")]
                    if exit_after == Some(round) {
                        eprintln!("TEST FAULT INJECTION: exiting abruptly after round {round}");
                        std::process::exit(9);
                    }
                }
                MemberEvent::Store(outcome) => {
                    let written = (|| -> anyhow::Result<()> {
                        let kp = outcome
                            .key_package
                            .as_ref()
                            .ok_or_else(|| anyhow!("the ceremony gave this member no share"))?;
                        let kdf = match args.kdf {
                            KdfChoice::Standard => KdfParams::standard(&mut rng),
                            KdfChoice::Light => KdfParams::light(&mut rng),
                        };
                        let header = share_header(&outcome.manifest, me, kp, kdf)?;
                        ShareFile::write(&pending, kp, header, &pass, false, &mut rng)?;
                        Ok(())
                    })();
                    return match written {
                        Ok(()) => {
                            manifest_held = Some(outcome.manifest.clone());
                            true
                        }
                        Err(e) => {
                            eprintln!("cannot store the new share: {e:#}");
                            remove_if_present(&pending);
                            false
                        }
                    };
                }
                MemberEvent::Activate => {
                    let activated = (|| -> anyhow::Result<conclave_keygen::GroupManifest> {
                        let manifest = manifest_held
                            .take()
                            .ok_or_else(|| anyhow!("no stored share to activate"))?;
                        std::fs::rename(&pending, &share_file)?;
                        conclave_keygen::sharefile::write_atomic(
                            &manifest_file,
                            manifest.to_toml()?.as_bytes(),
                            &mut rng,
                        )?;
                        std::fs::File::open(&args.out)?.sync_all()?;
                        Ok(manifest)
                    })();
                    result = Some(activated.map_err(|e| format!("{e:#}")));
                }
                MemberEvent::Aborted(report) => {
                    remove_if_present(&pending);
                    result = Some(Err(format!("DKG aborted: {}", report.summary)));
                }
            }
            false
        },
    )
    .await?;
    match result {
        Some(Ok(manifest)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "group": plan.group.as_str(), "name": my_name,
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key,
                        "share_file": share_file, "manifest": manifest_file,
                    })
                );
            } else {
                println!(
                    "group {}: public key {}",
                    plan.group, manifest.group_public_key
                );
                println!("share for {my_name}: {}", share_file.display());
                println!("manifest: {}", manifest_file.display());
            }
            Ok(())
        }
        Some(Err(e)) => {
            remove_if_present(&pending);
            Err(Exit::refused(anyhow!(e)))
        }
        None => {
            remove_if_present(&pending);
            Err(Exit::refused(anyhow!("DKG ended without a result")))
        }
    }
}
