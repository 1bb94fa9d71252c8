//! `conclave keygen dkg plan | relay | join`: wiring of the ceremony state machines
//! (conclave_keygen::ceremony) to their QUIC drivers, files and progress output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use conclave_keygen::ceremony::{
    completed_manifest, describe_abort, CeremonyPlan, Member, MemberEvent, PlanNode, RelayEvent,
};
use conclave_keygen::dkg::Dkg;
use conclave_keygen::{share_header, KdfParams, ShareFile};
use conclave_protocol::identity::read_node_id;
use conclave_protocol::{GroupName, IdentityKey};
use conclave_transport::relay::{RelayEnd, RelayServer};

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
    eprintln!("{}", plan.summary());
    eprintln!(
        "DKG plan {} for group {}: {}-of-{}, relayed by {} at {}.\n\
         Copy this file to the coordinator and to every participant, then run\n  \
         coordinator:  conclave keygen dkg relay --plan {} --identity DIR\n  \
         each participant: conclave keygen dkg join --plan {} --identity DIR --out DIR --expect-plan {}\n\
         Give every participant's operator the plan fingerprint ({}) by another channel than the plan file.",
        plan.ceremony,
        plan.group,
        plan.threshold,
        plan.participants.len(),
        plan.coordinator.name,
        plan.coordinator.address,
        args.out.display(),
        args.out.display(),
        plan.fingerprint()?,
        plan.fingerprint()?,
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
    #[cfg(feature = "fault-injection")]
    if std::env::var("CONCLAVE_TEST_FAULT").as_deref() == Ok("relay-withhold-store") {
        tracing::warn!(
            "TEST FAULT INJECTION ACTIVE: this relay withholds the last member's store round"
        );
        relay.inject(conclave_keygen::ceremony::RelayFault::WithholdStore);
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
    match end {
        RelayEnd::Completed {
            joins,
            confirm,
            store,
        } => {
            let (manifest, completion) = completed_manifest(&plan, &joins, &confirm, &store)
                .map_err(|e| {
                    anyhow!("the ceremony completed but its manifest is not usable: {e}")
                })?;
            conclave_protocol::identity::create_private_dir(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            if !repair {
                conclave_keygen::sharefile::write_atomic(
                    &manifest_file,
                    manifest.to_toml()?.as_bytes(),
                    &mut rand::rngs::OsRng,
                )
                .with_context(|| format!("cannot write {}", manifest_file.display()))?;
            }
            // Every member's signed acknowledgement: lets a member left undecided finish.
            let completion_file = completion_path(&args.out, &plan);
            conclave_keygen::sharefile::write_atomic(
                &completion_file,
                completion.to_toml().as_bytes(),
                &mut rand::rngs::OsRng,
            )
            .with_context(|| format!("cannot write {}", completion_file.display()))?;
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
        RelayEnd::Aborted { why, ctx } => {
            let report = describe_abort(&plan, &ctx, &why);
            Err(Exit::refused(anyhow!(
                "{} aborted: {}",
                plan.kind.label(),
                report.summary
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

/// Where a file waits until every member has acknowledged the ceremony.
pub(crate) fn pending_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".pending");
    PathBuf::from(s)
}

/// The signed acknowledgements of a ceremony (public): `<dir>/<ceremony id>.completion.toml`.
pub(crate) fn completion_path(dir: &Path, plan: &CeremonyPlan) -> PathBuf {
    dir.join(format!("{}.completion.toml", plan.ceremony))
}

/// The files one member of a ceremony writes: its share (if it is in the new group) and the
/// new manifest (if the ceremony changes it), each first as a pending file.
pub(crate) struct MemberFiles {
    pub dir: PathBuf,
    pub share: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
}

impl MemberFiles {
    fn finals(&self) -> impl Iterator<Item = &PathBuf> {
        self.share.iter().chain(self.manifest.iter())
    }

    /// Pending files present on disk.
    pub(crate) fn pending_present(&self) -> Vec<PathBuf> {
        self.finals()
            .map(|p| pending_path(p))
            .filter(|p| p.exists())
            .collect()
    }

    /// Removes every pending file.
    pub(crate) fn discard(&self) {
        for p in self.finals() {
            remove_if_present(&pending_path(p));
        }
    }

    /// Activates the pending files (rename, then sync the directory) and keeps the
    /// completion next to them.
    pub(crate) fn activate(
        &self,
        completion_file: &Path,
        completion: &conclave_keygen::ceremony::Completion,
    ) -> anyhow::Result<()> {
        for p in self.finals() {
            let pending = pending_path(p);
            if pending.exists() {
                std::fs::rename(&pending, p)
                    .with_context(|| format!("cannot activate {}", pending.display()))?;
            }
        }
        conclave_keygen::sharefile::write_atomic(
            completion_file,
            completion.to_toml().as_bytes(),
            &mut rand::rngs::OsRng,
        )
        .with_context(|| format!("cannot write {}", completion_file.display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
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
    // A DKG makes a new key: there is no old group to check the plan against, so the operator
    // compares the fingerprint and the members' key fingerprints with the plan's author.
    eprintln!("{}", plan.summary());
    crate::rotate::confirm_plan(&plan, args.expect_plan.as_deref(), args.yes, args.mode)?;
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

/// The files `member`'s side of `plan` writes under `out`.
pub(crate) fn member_files(
    plan: &CeremonyPlan,
    me: &conclave_protocol::NodeId,
    out: &Outputs,
) -> MemberFiles {
    let my_name = plan.name_of(me);
    let in_new_group = plan.is_new_member(me);
    MemberFiles {
        dir: out.dir.clone(),
        share: in_new_group.then(|| {
            out.share
                .clone()
                .unwrap_or_else(|| plan_share_path(&out.dir, plan, &my_name))
        }),
        manifest: out.manifest.clone(),
    }
}

/// Runs one member's side of any ceremony: checks the outputs, gets the new passphrase,
/// runs the protocol over the relay, stores the share (and manifest) as pending, activates
/// them when every member has signed that it stored, and cleans up on abort. A member left
/// undecided (it acknowledged, but never saw every acknowledgement) keeps its pending files.
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
    if kdf_choice == KdfChoice::Light && mode != Mode::Dev {
        fail!("--kdf light is for dev mode only (this is {mode}); add --mode dev for a lab setup");
    }
    let files = member_files(plan, &me, &out);
    let in_new_group = files.share.is_some();
    for p in files.finals() {
        if p.exists() {
            fail!(
                "{} already exists; refusing to overwrite key material (choose another --out)",
                p.display()
            );
        }
    }
    let left = files.pending_present();
    if !left.is_empty() {
        fail!(
            "{} left by an unfinished ceremony: it may be acknowledged (others may have activated). \
             Run `conclave rotate resume --plan PLAN --identity DIR --out {}` to finish it, or \
             `--abandon` it once you know no member activated",
            left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            out.dir.display()
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
    let completion_file = completion_path(&out.dir, plan);
    let mut rng = rand::rngs::OsRng;
    enum End {
        Done(conclave_keygen::GroupManifest),
        Undecided(String),
        Failed(String),
    }
    let mut result: Option<End> = None;
    let mut manifest_held = None;
    let started = Instant::now();
    conclave_transport::member::run_member(&mut member, &identity, relay_id, relay_addr, |ev| {
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
            MemberEvent::Store { outcome, ack } => {
                let written = (|| -> anyhow::Result<()> {
                    // First the record of this run and this member's acknowledgement: it
                    // binds the pending files to this plan and run (`rotate resume`).
                    conclave_keygen::sharefile::write_atomic(
                        &completion_file,
                        ack.to_toml().as_bytes(),
                        &mut rng,
                    )?;
                    match (&files.share, outcome.key_package.as_ref(), pass.as_ref()) {
                        (Some(share), Some(kp), Some(pass)) => {
                            let kdf = match kdf_choice {
                                KdfChoice::Standard => KdfParams::standard(&mut rng),
                                KdfChoice::Light => KdfParams::light(&mut rng),
                            };
                            let header = share_header(&outcome.manifest, me, kp, kdf)?;
                            ShareFile::write(
                                &pending_path(share),
                                kp,
                                header,
                                pass,
                                false,
                                &mut rng,
                            )?;
                        }
                        (Some(_), _, _) => {
                            anyhow::bail!("the ceremony gave this member no share")
                        }
                        (None, Some(_), _) => anyhow::bail!(
                            "the ceremony gave this member a share, but the plan does not list it in the new group"
                        ),
                        (None, None, _) => {}
                    }
                    if let Some(path) = &files.manifest {
                        conclave_keygen::sharefile::write_atomic(
                            &pending_path(path),
                            outcome.manifest.to_toml()?.as_bytes(),
                            &mut rng,
                        )?;
                    }
                    std::fs::File::open(&files.dir)?.sync_all()?;
                    Ok(())
                })();
                return match written {
                    Ok(()) => {
                        manifest_held = Some(outcome.manifest.clone());
                        true
                    }
                    Err(e) => {
                        eprintln!("cannot store the new share: {e:#}");
                        files.discard();
                        remove_if_present(&completion_file);
                        false
                    }
                };
            }
            MemberEvent::Activate(completion) => {
                let activated = (|| -> anyhow::Result<conclave_keygen::GroupManifest> {
                    let manifest = manifest_held
                        .take()
                        .ok_or_else(|| anyhow!("no stored result to activate"))?;
                    files.activate(&completion_file, &completion)?;
                    Ok(manifest)
                })();
                // Every member acknowledged: others may have activated, so a failure here keeps
                // the pending files (undecided), never discards them.
                result = Some(match activated {
                    Ok(m) => End::Done(m),
                    Err(e) => End::Undecided(format!(
                        "every member acknowledged, but activating here failed: {e:#}; the pending files are kept: fix the cause and run `conclave rotate resume`"
                    )),
                });
            }
            MemberEvent::Undecided { report, partial } => {
                // Keep the pending files and what we know of the acknowledgements.
                let mut merged = partial;
                if let Some(existing) = read_completion(&completion_file) {
                    let _ = merged.merge(&existing);
                }
                let saved = conclave_keygen::sharefile::write_atomic(
                    &completion_file,
                    merged.to_toml().as_bytes(),
                    &mut rng,
                );
                result = Some(End::Undecided(format!(
                    "{} undecided: {}; pending files kept, acknowledgements known so far in {}{}",
                    kind.label(),
                    report.summary,
                    completion_file.display(),
                    if saved.is_err() {
                        " (could not be written)"
                    } else {
                        ""
                    }
                )));
            }
            MemberEvent::Aborted(report) => {
                files.discard();
                remove_if_present(&completion_file);
                result = Some(End::Failed(format!(
                    "{} aborted: {}",
                    kind.label(),
                    report.summary
                )));
            }
        }
        false
    })
    .await?;
    match result {
        Some(End::Done(manifest)) => {
            let share_out = files.share.as_ref();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "kind": kind.to_string(),
                        "group": plan.group.as_str(), "name": my_name,
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key,
                        "share_file": share_out, "manifest": files.manifest,
                        "completion": completion_file,
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
                if let Some(path) = &files.manifest {
                    println!("manifest: {}", path.display());
                }
            }
            Ok(())
        }
        Some(End::Undecided(e)) => Err(Exit::refused(anyhow!(e))),
        Some(End::Failed(e)) => Err(Exit::refused(anyhow!(e))),
        None => {
            // The driver stopped without an event (connection lost before the end): if this
            // member had acknowledged, others may have activated.
            if member.is_acknowledged() {
                Err(Exit::refused(anyhow!(
                    "{kind} ended without a result after this member acknowledged its pending share: it is kept; finish with `conclave rotate resume`"
                )))
            } else {
                files.discard();
                remove_if_present(&completion_file);
                Err(Exit::refused(anyhow!("{kind} ended without a result")))
            }
        }
    }
}

/// A completion file, if present and readable.
pub(crate) fn read_completion(path: &Path) -> Option<conclave_keygen::ceremony::Completion> {
    let text = conclave_protocol::fsread::read_bounded_to_string(path, 1024 * 1024).ok()?;
    conclave_keygen::ceremony::Completion::from_toml(&text).ok()
}
