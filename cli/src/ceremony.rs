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

pub(crate) fn parse_node(spec: &str, what: &str) -> anyhow::Result<PlanNode> {
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

pub(crate) fn read_plan(path: &Path) -> anyhow::Result<CeremonyPlan> {
    CeremonyPlan::read(path).with_context(|| format!("plan {}", path.display()))
}

pub(crate) fn read_identity(dir: &Path) -> anyhow::Result<IdentityKey> {
    IdentityKey::read_from(&dir.join(conclave_protocol::identity::KEY_FILE))
        .with_context(|| format!("cannot read the identity in {}", dir.display()))
}

pub(crate) async fn relay(args: DkgRelayArgs) -> CmdResult {
    let plan = read_plan(&args.plan)?;
    eprintln!("{}", plan.summary());
    if plan.from.is_some() {
        crate::rotate::confirm("relay this ceremony", args.yes)?;
    }
    let identity = read_identity(&args.identity)?;
    if identity.node_id() != plan.coordinator_id()? {
        fail!(
            "this identity ({}) is not the plan's coordinator ({})",
            identity.node_id().short(),
            plan.coordinator.name
        );
    }
    let repair = plan.kind == conclave_keygen::ceremony::CeremonyKind::Repair;
    let manifest_file = plan_manifest_path(&args.out, &plan);
    if !repair && manifest_file.exists() {
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
        "relaying {} {} for group {} ({}-of-{n}) on {}; waiting for participants to join",
        plan.kind.label(),
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
            Err(Exit::refused(anyhow!(
                "{} aborted: {summary}",
                plan.kind.label()
            )))
        }
    }
}

/// The manifest a ceremony writes: `<group>.manifest.toml` for a new key, with the epoch
/// (`<group>.epoch<E>.manifest.toml`) for a rotation, next to the old one.
pub(crate) fn plan_manifest_path(dir: &Path, plan: &CeremonyPlan) -> PathBuf {
    match plan.from {
        None => manifest_path(dir, &plan.group),
        Some(_) => dir.join(format!("{}.epoch{}.manifest.toml", plan.group, plan.epoch)),
    }
}

/// The share file a ceremony writes for `name` (with the epoch for a rotation).
pub(crate) fn plan_share_path(dir: &Path, plan: &CeremonyPlan, name: &str) -> PathBuf {
    match plan.from {
        None => share_path(dir, &plan.group, name),
        Some(_) => dir.join(format!("{}.{name}.epoch{}.share", plan.group, plan.epoch)),
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
    if plan.kind != conclave_keygen::ceremony::CeremonyKind::Dkg {
        fail!(
            "this is a {} plan; run it with `conclave rotate join`",
            plan.kind
        );
    }
    let identity = read_identity(&args.identity)?;
    let me = identity.node_id();
    #[allow(unused_mut)]
    let mut dkg = Dkg::new(&plan, &me)?;
    #[cfg(feature = "fault-injection")]
    if std::env::var("CONCLAVE_TEST_FAULT").as_deref() == Ok("dkg-bad-share") {
        tracing::warn!("TEST FAULT INJECTION ACTIVE: this member sends bad round-2 shares");
        dkg.inject(conclave_keygen::dkg::DkgFault::BadShare);
    }
    let out = Outputs {
        dir: args.out.clone(),
        share: None,
        manifest: Some(plan_manifest_path(&args.out, &plan)),
    };
    run_join(
        &plan,
        identity,
        dkg,
        out,
        args.passphrase_file.as_deref(),
        args.mode,
        args.kdf,
        args.json,
    )
    .await
}

/// Where a member writes its results.
pub(crate) struct Outputs {
    pub dir: PathBuf,
    /// The share file (default: `<dir>/<group>.<name>.share`).
    pub share: Option<PathBuf>,
    /// Where to write the resulting manifest (`None`: the manifest does not change).
    pub manifest: Option<PathBuf>,
}

/// Runs one member's side of any ceremony: checks the outputs, gets the new passphrase,
/// runs the protocol over the relay, stores the share as pending, activates it when every
/// member has stored, and cleans up on abort.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_join<P: conclave_keygen::ceremony::Protocol>(
    plan: &CeremonyPlan,
    identity: IdentityKey,
    protocol: P,
    out: Outputs,
    passphrase_file: Option<&Path>,
    mode: Mode,
    kdf_choice: KdfChoice,
    json: bool,
) -> CmdResult {
    let me = identity.node_id();
    let my_name = plan.name_of(&me);
    let in_new_group = plan
        .participants
        .iter()
        .any(|p| p.identity_key == me.to_hex());
    if kdf_choice == KdfChoice::Light && mode != Mode::Dev {
        fail!("--kdf light is for dev mode only (this is {mode}); add --mode dev for a lab setup");
    }
    let share_file = out
        .share
        .clone()
        .unwrap_or_else(|| plan_share_path(&out.dir, plan, &my_name));
    let manifest_file = out.manifest.clone();
    let pending = pending_path(&share_file);
    let writes_share = in_new_group.then_some(&share_file);
    for p in writes_share.into_iter().chain(manifest_file.as_ref()) {
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
    let pass = if in_new_group {
        let pass = passphrase::obtain(passphrase_file, mode, "the new share file", true)?;
        passphrase::check_new(&pass, mode)?;
        Some(pass)
    } else {
        None
    };
    conclave_protocol::identity::create_private_dir(&out.dir)
        .with_context(|| format!("cannot create {}", out.dir.display()))?;
    let relay_id = plan.coordinator_id()?;
    let relay_addr = resolve(&plan.coordinator.address)?;
    #[cfg(feature = "fault-injection")]
    let exit_after: Option<u8> = std::env::var("CONCLAVE_TEST_FAULT").ok().and_then(|s| {
        s.strip_prefix("dkg-exit-after-round=")
            .and_then(|r| r.parse().ok())
    });
    let mut member = Member::new(plan, identity.clone(), protocol)?;
    let kind = plan.kind;
    let total = kind.final_round();
    eprintln!(
        "joining {} {} for group {} as {my_name}; relay {} at {}",
        kind.label(),
        plan.ceremony,
        plan.group,
        plan.coordinator.name,
        plan.coordinator.address
    );
    let mut rng = rand::rngs::OsRng;
    let mut result: Option<Result<conclave_keygen::GroupManifest, String>> = None;
    let mut manifest_held = None;
    let mut wrote_share = false;
    let started = Instant::now();
    conclave_participant::ceremony::run_member(
        &mut member,
        &identity,
        relay_id,
        relay_addr,
        |ev| {
            match ev {
                MemberEvent::Joined => {
                    eprintln!(
                        "all {} members joined",
                        plan.roster().map(|r| r.len()).unwrap_or(0)
                    )
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
                        if let (Some(kp), Some(pass)) =
                            (outcome.key_package.as_ref(), pass.as_ref())
                        {
                            let kdf = match kdf_choice {
                                KdfChoice::Standard => KdfParams::standard(&mut rng),
                                KdfChoice::Light => KdfParams::light(&mut rng),
                            };
                            let header = share_header(&outcome.manifest, me, kp, kdf)?;
                            ShareFile::write(&pending, kp, header, pass, false, &mut rng)?;
                            wrote_share = true;
                        } else if in_new_group {
                            anyhow::bail!("the ceremony gave this member no share");
                        }
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
                            .ok_or_else(|| anyhow!("no stored result to activate"))?;
                        if wrote_share {
                            std::fs::rename(&pending, &share_file)?;
                        }
                        if let Some(path) = &manifest_file {
                            conclave_keygen::sharefile::write_atomic(
                                path,
                                manifest.to_toml()?.as_bytes(),
                                &mut rng,
                            )?;
                        }
                        std::fs::File::open(&out.dir)?.sync_all()?;
                        Ok(manifest)
                    })();
                    result = Some(activated.map_err(|e| format!("{e:#}")));
                }
                MemberEvent::Aborted(report) => {
                    remove_if_present(&pending);
                    result = Some(Err(format!("{} aborted: {}", kind.label(), report.summary)));
                }
            }
            false
        },
    )
    .await?;
    match result {
        Some(Ok(manifest)) => {
            let share_out = wrote_share.then_some(&share_file);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "kind": kind.to_string(),
                        "group": plan.group.as_str(), "name": my_name,
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key,
                        "share_file": share_out, "manifest": manifest_file,
                    })
                );
            } else {
                println!(
                    "group {}: public key {}",
                    plan.group, manifest.group_public_key
                );
                match share_out {
                    Some(f) => println!("share for {my_name}: {}", f.display()),
                    None => println!("{my_name} is not a member of the new group (no new share)"),
                }
                if let Some(path) = &manifest_file {
                    println!("manifest: {}", path.display());
                }
            }
            Ok(())
        }
        Some(Err(e)) => {
            remove_if_present(&pending);
            Err(Exit::refused(anyhow!(e)))
        }
        None => {
            remove_if_present(&pending);
            Err(Exit::refused(anyhow!("{kind} ended without a result")))
        }
    }
}
