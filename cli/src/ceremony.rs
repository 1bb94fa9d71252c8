//! `conclave keygen dkg plan | relay | join`: wiring of the ceremony state machines
//! (conclave_keygen::ceremony) to their QUIC drivers, files and progress output.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context};
use conclave_keygen::ceremony::{
    CeremonyPlan, Member, MemberEnd, MemberEvent, PlanNode, RelayEvent,
};
use conclave_keygen::kinds;
use conclave_keygen::store::{self, FileShareStore, KdfCost, ShareStore};
use conclave_protocol::identity::read_node_id;
use conclave_protocol::{GroupName, IdentityKey};
use conclave_transport::member::Progress;
use conclave_transport::relay::{RelayEnd, RelayServer};

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
        crate::confirm::confirm("relay this ceremony", args.yes)?;
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
    let manifest_file = store::plan_manifest_path(&args.out, &plan);
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
    let mut relay = conclave_keygen::ceremony::Relay::new(
        &plan,
        conclave_keygen::kinds::rounds(plan.kind),
        Instant::now(),
    )?;
    crate::faults::FaultPlan::from_env().apply_relay(&mut relay);
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
    let rounds = conclave_keygen::kinds::rounds(plan.kind);
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
                    rounds.name_of(*round),
                    plan.name_of(node)
                );
            }
            RelayEvent::RoundComplete { round } => eprintln!(
                "round {round} ({}) complete after {:.1} s",
                rounds.name_of(*round),
                started.elapsed().as_secs_f64()
            ),
            _ => {}
        })
        .await;
    if let Some(file) = &args.metrics_textfile {
        let outcome = match &end {
            RelayEnd::Completed { .. } => "completed",
            RelayEnd::Aborted(_) => "aborted",
            RelayEnd::Failed(_) => "failed",
        };
        if let Err(e) = crate::textfile::record(file, &plan.kind.to_string(), "relay", outcome) {
            eprintln!("conclave: warning: {e:#}");
        }
    }
    match end {
        RelayEnd::Completed {
            manifest,
            completion,
        } => {
            let (manifest_file, completion_file) =
                store::write_relayed(&args.out, &plan, &manifest, &completion)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "group": plan.group.as_str(),
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key, "manifest": manifest_file,
                        "completion": completion_file,
                    })
                );
            } else {
                println!(
                    "group {}: public key {}",
                    plan.group, manifest.group_public_key
                );
                if let Some(m) = &manifest_file {
                    println!("manifest: {}", m.display());
                }
            }
            Ok(())
        }
        RelayEnd::Aborted(report) => Err(Exit::refused(anyhow!(
            "{} aborted: {}",
            plan.kind.label(),
            report.summary
        ))),
        RelayEnd::Failed(f) => Err(Exit::refused(anyhow!(
            "{} completed but its result is not usable: {f}{}",
            plan.kind.label(),
            f.culprit()
                .map(|n| format!(" ({})", plan.name_of(&n)))
                .unwrap_or_default()
        ))),
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
    crate::confirm::confirm_plan(&plan, args.expect_plan.as_deref(), args.yes, args.mode)?;
    let mut dkg = kinds::protocol_for(kinds::Input::Dkg(&plan), &me)?;
    crate::faults::FaultPlan::from_env().apply_protocol(&mut dkg);
    run_join(
        &plan,
        identity,
        dkg,
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

/// What a join does besides the ceremony: the freeze check and the metrics textfile.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extras<'a> {
    /// Seal the new share to this node keystore.
    pub keystore: Option<&'a Path>,
    pub freeze_file: Option<&'a Path>,
    pub metrics_textfile: Option<&'a Path>,
    /// The operator's explicit go-ahead for a ceremony of a frozen group.
    pub while_frozen: bool,
}

/// The node's audit records of one ceremony: "joined" before anything is sent (no record,
/// no join), then the outcome, each with the plan fingerprint.
struct CeremonyAudit {
    log: Option<conclave_audit::AuditLog>,
    base: conclave_audit::Decision,
}

impl CeremonyAudit {
    fn open(
        path: Option<&Path>,
        identity: &IdentityKey,
        plan: &CeremonyPlan,
    ) -> anyhow::Result<Self> {
        let mut base = conclave_audit::Decision::new("ceremony", "joined");
        base.group = Some(plan.group.to_string());
        base.epoch = Some(plan.epoch);
        base.plan = plan.fingerprint().ok();
        base.detail = Some(format!("kind={} ceremony={}", plan.kind, plan.ceremony));
        let log = match path {
            Some(p) => Some(
                crate::config::open_audit_log(p, identity, true)
                    .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Self { log, base })
    }

    fn record(&mut self, result: &str) -> anyhow::Result<()> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let mut d = self.base.clone();
        d.result = result.to_owned();
        log.append(conclave_transport::unix_now(), d)
            .context("cannot write the ceremony's audit record")
    }
}

/// Runs one member's side of any ceremony: checks the outputs, gets the new passphrase (before
/// joining, so nobody waits on a prompt mid-ceremony), runs the protocol over the relay with a
/// [`FileShareStore`] (the library decides what is pending, active, kept or discarded), and
/// prints the outcome.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_join<P: conclave_keygen::ceremony::Protocol>(
    plan: &CeremonyPlan,
    identity: IdentityKey,
    protocol: P,
    out: &Path,
    passphrase_file: Option<&Path>,
    audit_log: Option<&Path>,
    extras: Extras<'_>,
    mode: Mode,
    kdf_choice: KdfChoice,
    json: bool,
) -> CmdResult {
    // A node frozen for this group (`conclave freeze`) takes part in no ceremony for it.
    let freeze_file = extras
        .freeze_file
        .map(Path::to_path_buf)
        .or_else(|| audit_log.map(|l| crate::config::state_dir(l).join("frozen.toml")));
    if let Err(e) = crate::daemon::refuse_if_frozen(freeze_file.as_deref(), &plan.group) {
        if !extras.while_frozen {
            return Err(Exit::refused(anyhow!(
                "{e:#} (--while-frozen takes part anyway, signing staying frozen)"
            )));
        }
        eprintln!(
            "conclave: warning: {e:#}; taking part anyway (--while-frozen): signing stays frozen"
        );
    }
    let mut audit = CeremonyAudit::open(audit_log, &identity, plan)?;
    let me = identity.node_id();
    let my_name = plan.name_of(&me);
    let kdf = KdfCost::choose(kdf_choice == KdfChoice::Light, mode == Mode::Dev)
        .map_err(|e| anyhow!("{e} (this is {mode})"))?;
    // Refuse existing or pending files before asking anything.
    FileShareStore::for_member(plan, &me, out, None, kdf)
        .check_fresh()
        .map_err(|e| match e {
            store::StoreError::Unfinished(_) => anyhow!(
                "{e}\n  conclave rotate resume --plan PLAN --identity DIR --out {}",
                out.display()
            ),
            e => anyhow!(e),
        })?;
    let keystore = match extras.keystore {
        Some(k) => {
            let h = conclave_keygen::Keystore::inspect(k)?;
            if h.owner != me {
                return Err(Exit::refused(anyhow!(
                    "keystore {} belongs to node {}, not to this node",
                    k.display(),
                    h.owner.short()
                )));
            }
            Some(h.public_key)
        }
        None => None,
    };
    let pass = if plan.is_new_member(&me) && keystore.is_none() {
        let pass = passphrase::obtain(passphrase_file, mode, "the new share file", true)?;
        passphrase::check_new(&pass, mode)?;
        Some(pass)
    } else {
        None
    };
    let mut store = FileShareStore::for_member(plan, &me, out, pass, kdf).with_keystore(keystore);
    let relay_id = plan.coordinator_id()?;
    let relay_addr = resolve(&plan.coordinator.address)?;
    let faults = crate::faults::FaultPlan::from_env();
    let mut member = Member::new(plan, identity.clone(), protocol)?;
    let kind = plan.kind;
    let rounds = conclave_keygen::kinds::rounds(kind);
    let total = rounds.final_round();
    eprintln!(
        "joining {} {} for group {} as {my_name}; relay {} at {}",
        kind.label(),
        plan.ceremony,
        plan.group,
        plan.coordinator.name,
        plan.coordinator.address
    );
    let started = Instant::now();
    let n = plan.roster().map(|r| r.len()).unwrap_or(0);
    // No record, no join (fail closed).
    audit.record("joined")?;
    let end = conclave_transport::member::run_member(
        &mut member,
        &identity,
        relay_id,
        relay_addr,
        &mut store,
        |p| match p {
            Progress::Event(MemberEvent::Joined) => eprintln!("all {n} members joined"),
            Progress::Event(MemberEvent::RoundComplete { round }) => {
                eprintln!(
                    "round {round}/{total} ({}) complete after {:.1} s",
                    rounds.name_of(*round),
                    started.elapsed().as_secs_f64()
                );
                faults.exit_after_round(*round);
            }
            Progress::Event(_) => {}
            Progress::StoreFailed(e) => eprintln!("cannot store the new share: {e}"),
        },
    )
    .await;
    let outcome = match &end {
        Ok(Some(MemberEnd::Activated { .. })) => "completed",
        Ok(Some(MemberEnd::Undecided(_))) => "undecided",
        Ok(Some(MemberEnd::Aborted(_))) => "aborted",
        Ok(None) => "ended_without_result",
        Err(_) => "failed",
    };
    if let Err(e) = audit.record(outcome) {
        eprintln!("conclave: warning: {e:#}");
    }
    if let Some(file) = extras.metrics_textfile {
        if let Err(e) = crate::textfile::record(file, &plan.kind.to_string(), "member", outcome) {
            eprintln!("conclave: warning: {e:#}");
        }
    }
    match end? {
        Some(MemberEnd::Activated { manifest, .. }) => {
            let share_out = store.share_file();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ceremony": plan.ceremony, "kind": kind.to_string(),
                        "group": plan.group.as_str(), "name": my_name,
                        "threshold": manifest.threshold, "epoch": manifest.epoch,
                        "public_key": manifest.group_public_key,
                        "share_file": share_out, "manifest": store.manifest_file(),
                        "completion": store.completion_file(),
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
                if let Some(path) = store.manifest_file() {
                    println!("manifest: {}", path.display());
                }
            }
            Ok(())
        }
        Some(MemberEnd::Undecided(report)) => Err(Exit::refused(anyhow!(
            "{} undecided: {}; pending files kept, acknowledgements known so far in {}",
            kind.label(),
            report.summary,
            store.completion_file().display()
        ))),
        Some(MemberEnd::Aborted(report)) => Err(Exit::refused(anyhow!(
            "{} aborted: {}",
            kind.label(),
            report.summary
        ))),
        None if member.is_acknowledged() => Err(Exit::refused(anyhow!(
            "{kind} ended without a result after this member acknowledged its pending share: it is kept; finish with `conclave rotate resume`"
        ))),
        None => {
            store.discard();
            Err(Exit::refused(anyhow!("{kind} ended without a result")))
        }
    }
}
