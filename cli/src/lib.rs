//! The `conclave` command line: parses flags, validates them into real objects, and wires the
//! library crates together. No protocol logic lives here.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

/// Returns a usage/IO-class error (exit code 2) from a command.
macro_rules! fail {
    ($($t:tt)*) => {
        return Err(crate::Exit::from(anyhow::anyhow!($($t)*)))
    };
}

mod agent;
mod agent_socket;
mod ceremony;
mod checks;
mod clientcmd;
mod commands;
mod config;
mod confirm;
mod daemon;
mod faults;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod keystore_cmd;
mod migrate;
mod passphrase;
mod rotate;
pub mod scan;
mod signer;
mod sim;
mod textfile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use config::Mode;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 a signature did not verify or a signing request was refused
(typed, fail-closed); 2 any other error (bad input, unreadable file, unreachable node);
`logs scan`: 4 secret material found.

Start with `conclave demo`, then see README.md for a real cluster across hosts.";

/// Threshold Ed25519 signing: a key whose secret never exists in one place.
///
/// Key shares live on separate participant nodes (t-of-n); a coordinator runs the two FROST
/// rounds (RFC 9591) with any t of them over mutually authenticated QUIC and returns a standard
/// Ed25519 signature that OpenSSL, OpenSSH or libsodium verify unchanged.
#[derive(Parser, Debug)]
#[command(name = "conclave", version, after_help = AFTER_HELP)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or show this node's identity key (what peers pin).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Generate a group key and its shares.
    #[command(subcommand)]
    Keygen(KeygenCmd),
    /// Run a participant (signer) node: holds shares, answers the coordinator.
    Participant {
        /// Participant config file (TOML); see README.md, "Configuration".
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a coordinator: runs signing sessions for clients.
    Coordinator {
        /// Coordinator config file (TOML); see README.md, "Configuration".
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a running participant or coordinator re-read its files (as SIGHUP does) and say
    /// what changed; a bad new file is refused and the old state keeps serving.
    #[command(after_help = RELOAD_HELP)]
    Reload {
        /// The daemon's config file (its control socket is found from it).
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Incident control: this participant refuses every signature and ceremony for a group
    /// (or all groups), at once and across restarts, until `conclave unfreeze`.
    #[command(after_help = FREEZE_HELP)]
    Freeze(FreezeArgs),
    /// Lift `conclave freeze` (for one group, or everything).
    Unfreeze(FreezeArgs),
    /// Ask a coordinator for a signature of a message (from a file or stdin).
    Sign(SignArgs),
    /// Verify an Ed25519 signature against a group manifest or a public key.
    Verify(VerifyArgs),
    /// Check a participant or coordinator config in its mode (pass / warn / fail, with fixes).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Inspect a share file, change its passphrase, or migrate it to the node keystore.
    #[command(subcommand)]
    Share(ShareCmd),
    /// The node keystore: one passphrase and one Argon2id for every share of the node.
    #[command(subcommand, after_help = KEYSTORE_HELP)]
    Keystore(KeystoreCmd),
    /// Print a group's public key (hex, PEM for OpenSSL, OpenSSH, or a trusted-key-registry
    /// entry).
    Pubkey {
        /// Group manifest (without it: this host's copy named in the client config, else the
        /// key the coordinator reports for the group).
        #[arg(long, short)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        /// Without a manifest: accept the key the coordinator reports (never use that to set up
        /// trust: a coordinator alone could name a key of its own).
        #[arg(long)]
        trust_coordinator_key: bool,
        #[arg(long, value_enum, default_value_t = KeyFormat::Hex)]
        format: KeyFormat,
        /// registry-json: the entry's key_id (default "conclave:<group>").
        #[arg(long)]
        key_id: Option<String>,
    },
    /// The SIGNER_CMD convention: message bytes on stdin, the signature on stdout (base64).
    /// On failure nothing on stdout and `CODE: reason` on stderr. Docs: docs/CLIENTS.md.
    #[command(after_help = EXTERNAL_SIGNER_HELP)]
    ExternalSigner(ExternalSignerArgs),
    /// An ssh-agent whose keys are group keys: `ssh`, `ssh-add -L`, `ssh-keygen -Y sign` and
    /// git's SSH signing sign through the threshold. Docs: docs/CLIENTS.md.
    Agent(AgentArgs),
    /// Ask a coordinator about a group: key, threshold, epoch, reachable participants.
    Status(StatusArgs),
    /// Run a local 3-of-5 cluster on 127.0.0.1 and watch it sign, lose nodes, and fail closed.
    Demo {
        /// Print a JSON summary instead of the narration.
        #[arg(long)]
        json: bool,
        /// Keep the cluster's files (keys, manifest, shares, signature) in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Measure signing latency and throughput on a loopback cluster against in-process FROST.
    Bench(BenchArgs),
    /// The participant process `bench --rss` measures (not for direct use).
    #[command(hide = true)]
    BenchChild {
        /// What to run: participant-rss.
        what: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        nonces: usize,
    },
    /// Simulate a deployment (virtual network, faults, adversaries), or run a chaos proxy.
    Sim(Box<sim::SimArgs>),
    /// Change a group's shares under the same key: refresh, reshare to new members and
    /// threshold, repair a lost share; see status and retire superseded shares. Runbook:
    /// docs/ROTATION.md.
    #[command(subcommand, after_help = ROTATE_HELP)]
    Rotate(RotateCmd),
    /// Check or show a node's audit log (hash-chained, with checkpoints signed by the node).
    #[command(subcommand, after_help = AUDIT_HELP)]
    Audit(AuditCmd),
    /// Move to a new group key (made by DKG) with a key-transition statement signed by both
    /// keys; verify statements; destroy the old key's shares.
    #[command(subcommand, after_help = MIGRATE_HELP)]
    Migrate(MigrateCmd),
    /// Incident controls for logs: search log and telemetry files for share, identity-key or
    /// passphrase material.
    #[command(subcommand)]
    Logs(LogsCmd),
}

#[derive(Subcommand, Debug)]
enum LogsCmd {
    /// Search files for shares, identity keys and passphrases (raw, hex, base64, Debug forms);
    /// names file, offset, secret and encoding, never the secret. Exit 4 if any is found.
    #[command(after_help = scan::SCAN_HELP)]
    Scan(scan::ScanArgs),
}

const RELOAD_HELP: &str = "\
Re-read: manifests, shares (passphrases from their files or systemd credential; never a
prompt), policy, client and coordinator lists, timeouts. Not without a restart: identity,
listen, audit_log, metrics_listen, control_socket. Requests in flight finish; sessions begun
on an epoch a reload replaced finish on it. `systemctl reload` and SIGHUP do the same (the
outcome is then in the log). Exit 0 reloaded, 1 refused (old state kept), 2 error.
Runbook: docs/OPERATIONS.md.";

const FREEZE_HELP: &str = "\
Run on the participant's host with its config. A running daemon applies it within the
request (its control socket answers once it is in force), writes it to freeze_file (default
frozen.toml beside the audit log) and records it in the audit log; a stopped daemon starts
frozen. The coordinator reports frozen signers as `frozen`, not as faults; below the
threshold, signing fails closed with the code `frozen`. `dkg join` and `rotate join` refuse a
frozen group when given the freeze file (--freeze-file, or frozen.toml beside their
--audit-log) unless --while-frozen. Exit 0 done; 1 refused (e.g. no daemon answers and its
audit log is held: it is not frozen yet); 2 error. Runbook: docs/OPERATIONS.md.";

#[derive(clap::Args, Debug)]
pub(crate) struct FreezeArgs {
    /// The participant's config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Only this group (default: every group, present and future).
    #[arg(long)]
    group: Option<String>,
    /// Why (printable ASCII; goes into the audit record).
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
}

const EXTERNAL_SIGNER_HELP: &str = "\
Environment: SIGNER_TIMEOUT_MS (the whole call, connecting included; default the client
config's timeout_ms), SIGNER_OUTPUT (base64, hex or raw), CONCLAVE_CLIENT_CONFIG.
Exit codes and the first word on stderr: 0 signed; 10 SIGNER_UNAVAILABLE (no coordinator or
too few signers); 11 SIGNER_TIMEOUT; 12 SIGNER_REFUSED (not authorised, or another typed
refusal); 13 SIGNER_BAD_INPUT (empty or oversized stdin, bad --hash hex, bad config);
14 SIGNER_BAD_RESPONSE (a signature that does not verify: never printed).";

const MIGRATE_HELP: &str = "\
Steps: (1) make the new group with `conclave keygen dkg` (another group name); (2) serve both
groups (list both manifests in the coordinator config, both shares in each participant's);
(3) `migrate statement` writes the statement; (4) `migrate sign --key old` and `--key new`
add each group's threshold signature; (5) publish it; anyone checks it with `migrate verify`
(exit 0 valid, 1 invalid); (6) `migrate retire` destroys each old-key share once the new
group signs. Format: docs/ROTATION.md.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WhichKey {
    Old,
    New,
}

#[derive(Subcommand, Debug)]
enum MigrateCmd {
    /// Write an unsigned key-transition statement from the old and new manifests.
    Statement {
        #[arg(long)]
        old_manifest: PathBuf,
        #[arg(long)]
        new_manifest: PathBuf,
        /// Why the key changes (printable ASCII, one line, at most 1024 bytes).
        #[arg(long)]
        reason: String,
        /// Unix seconds from which verifiers should use the new key (default: now).
        #[arg(long)]
        not_before: Option<u64>,
        #[arg(long, default_value = "key-transition.toml")]
        out: PathBuf,
    },
    /// Have one group (old or new key) sign the statement through a coordinator; the
    /// signature is verified, then written into the statement file.
    Sign {
        #[arg(long)]
        statement: PathBuf,
        #[arg(long, value_enum)]
        key: WhichKey,
        #[command(flatten)]
        client: ClientArgsNoGroup,
    },
    /// Check both signatures of a statement (exit 0 valid, 1 invalid).
    Verify {
        statement: PathBuf,
        /// Print the exact signed bytes (to check with another Ed25519 verifier) and exit.
        #[arg(long)]
        print_message: bool,
        #[arg(long)]
        json: bool,
    },
    /// Destroy a share of the old key once the statement verifies and the new group signs.
    Retire {
        #[arg(long)]
        share: PathBuf,
        #[arg(long)]
        statement: PathBuf,
        #[command(flatten)]
        client: ClientArgsNoGroup,
        #[arg(long)]
        yes: bool,
    },
}

const ROTATE_HELP: &str = "\
Steps: (1) `rotate plan` writes the plan (prints it with its fingerprint and asks to confirm)
and you copy it to the coordinator and every member; (2) the coordinator runs `rotate relay`;
(3) every member of the old and of the new group that the plan names runs `rotate join`
(dealers pass --old-share). Every member checks the plan against its OWN copy of the old
manifest before anything secret leaves it (a joining member without one checks the group key
given by --expect-group-key), prints every member's key fingerprint and role and the plan
fingerprint: compare that fingerprint with the plan's author out of band (prod mode: pass it
as --expect-plan); (4) restart participants and the coordinator on the new share files and
manifest (epoch + 1; a repair only adds the rebuilt share file); (5) once the new group has
signed, `rotate retire` destroys each old share. All or nothing: a failure leaves the old
shares working and no new share anywhere; a member cut off after it acknowledged its new
share keeps it pending and finishes with `rotate resume`. Exit codes: 0 done; 1 the ceremony
aborted, was refused, is undecided, or the check before destroying failed; 2 bad input.";

const AUDIT_HELP: &str = "\
Give every file of one log in order: rotated files first (audit.log.1, audit.log.2, ...), the
current file last. Exit codes: 0 the chain and every checkpoint are intact; 1 a record was
modified, removed, reordered or inserted, the log was truncated before its last checkpoint, or
a checkpoint is not signed by the node (the first bad record is named); 2 bad input.";

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Verify the chain and the signed checkpoints; names the first bad record.
    Verify(AuditArgs),
    /// Print the records (after verifying them).
    Show(AuditArgs),
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// The log (its current file, e.g. audit.log); its rotated files (audit.log.1, .2, ...)
    /// are found beside it. A glob such as `audit.log*` names the same log.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The node's identity public key (hex, or an identity directory / identity.pub): the key
    /// every checkpoint must be signed by. Without it, checkpoints must agree on one key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// A checkpoint `SEQ:HASH` printed by an earlier `audit verify` and kept off the host: it
    /// must still be in the log (detects truncation back to an earlier checkpoint, which file
    /// access alone allows).
    #[arg(long, value_name = "SEQ:HASH")]
    expect_checkpoint: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum RotateCmd {
    /// Write a refresh, reshare or repair plan (public TOML) from the group's current manifest.
    Plan(RotatePlanArgs),
    /// Coordinator side: relay the ceremony (sees no secret), then write the new manifest.
    Relay(DkgRelayArgs),
    /// Member side: deal from the old share and/or receive a new share.
    Join(RotateJoinArgs),
    /// Epoch, threshold and members of each manifest, and which epoch the coordinator serves.
    Status(RotateStatusArgs),
    /// Destroy a superseded share once the new group has produced a verified signature.
    Retire(RetireArgs),
    /// Show, finish or abandon a ceremony this member left undecided (its new share acknowledged
    /// but pending): activates once every member's signed acknowledgement is at hand.
    Resume(RotateResumeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RotateKind {
    /// New shares for the same members and threshold (frost refresh DKG).
    Refresh,
    /// New members and/or threshold; a quorum of old members deals.
    Reshare,
    /// Rebuild one member's lost share (-p NAME) with t helpers (--dealer); nothing else changes.
    Repair,
}

#[derive(Args, Debug)]
struct RotatePlanArgs {
    #[arg(long, value_enum)]
    kind: RotateKind,
    /// The group's current manifest.
    #[arg(long)]
    old_manifest: PathBuf,
    /// Reshare: the new threshold.
    #[arg(long, short)]
    threshold: Option<u16>,
    /// Reshare: a member of the new group: NAME of a current member, or NAME=KEY@HOST:PORT
    /// for a new one. Repeat for every member of the new group.
    #[arg(
        long = "participant",
        short = 'p',
        value_name = "NAME | NAME=KEY@HOST:PORT"
    )]
    participants: Vec<String>,
    /// Reshare: an old member that deals (exactly old-threshold of them; default: members that
    /// stay first).
    #[arg(long = "dealer", value_name = "NAME")]
    dealers: Vec<String>,
    /// Reshare: give the existing member NAME a new identity key (a lost or compromised
    /// identity). Every host then shows "NAME: identity key CHANGES old -> new"; without this
    /// option a plan that changes the key behind a name is refused by every member. Repeat.
    #[arg(long = "replace", value_name = "NAME=KEY@HOST:PORT")]
    replace: Vec<String>,
    /// The coordinator relaying the ceremony, as NAME=KEY@HOST:PORT.
    #[arg(long, value_name = "NAME=KEY@HOST:PORT")]
    coordinator: String,
    /// Seconds each round may take once everyone has joined.
    #[arg(long, default_value_t = conclave_keygen::ceremony::plan::DEFAULT_ROUND_TIMEOUT_SECS)]
    timeout: u32,
    /// Seconds the relay waits for every member to join.
    #[arg(long, default_value_t = conclave_keygen::ceremony::plan::DEFAULT_JOIN_TIMEOUT_SECS)]
    join_timeout: u32,
    #[arg(long, default_value = "rotate-plan.toml")]
    out: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

#[derive(Args, Debug)]
struct RotateJoinArgs {
    #[arg(long)]
    plan: PathBuf,
    /// This node's identity directory.
    #[arg(long)]
    identity: PathBuf,
    /// This host's own copy of the group's current manifest: the plan is checked against it
    /// (required, except for a member joining a reshare, who may give --expect-group-key alone).
    #[arg(long)]
    old_manifest: Option<PathBuf>,
    /// The group public key (hex), as told out of band: required for a member that was not in
    /// the old group (joining) in prod mode; the dealers' commitments are checked against it.
    #[arg(long, value_name = "HEX")]
    expect_group_key: Option<String>,
    /// The plan fingerprint the plan's author printed (`rotate plan`): refuse any other plan.
    /// Given and matching, it confirms the plan; in prod mode --yes requires it.
    #[arg(long, value_name = "FINGERPRINT")]
    expect_plan: Option<String>,
    /// This node's current share: required when it deals; for any old member in prod mode, the
    /// proof from its own files that it belongs to the old group (only its header is read
    /// when it does not deal).
    #[arg(long)]
    old_share: Option<PathBuf>,
    /// File with the current share's passphrase.
    #[arg(long)]
    old_passphrase_file: Option<PathBuf>,
    /// Directory for the new share (`<group>.<name>.epoch<E>.share`) and manifest.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// File with the new share's passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// An audit log for this host's ceremonies (a directory of its own, not the running
    /// daemon's log: one writer per log): joining, with the plan fingerprint, and the outcome
    /// are recorded there; a join that cannot be recorded does not start.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    #[command(flatten)]
    node: JoinNodeArgs,
    #[arg(long, value_enum, default_value_t = Mode::Prod)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = KdfChoice::Standard)]
    kdf: KdfChoice,
    #[arg(long)]
    json: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

#[derive(Args, Debug)]
struct RotateResumeArgs {
    /// The ceremony's plan (the one `rotate join` ran).
    #[arg(long)]
    plan: PathBuf,
    /// This node's identity directory.
    #[arg(long)]
    identity: PathBuf,
    /// The directory `rotate join --out` wrote the pending files to.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// A completion file (`<ceremony>.completion.toml`) from another member or from the
    /// relay: the signed acknowledgements it holds are added to this member's. Repeat.
    #[arg(long = "completion", value_name = "FILE")]
    completions: Vec<PathBuf>,
    /// Discard the pending files instead (only when no member activated: check first).
    #[arg(long)]
    abandon: bool,
    /// Print the outcome as JSON: {"ceremony", "state": "activated" | "undecided",
    /// "acknowledged", "missing", "reason", "pending"} (or "share_file", "manifest").
    #[arg(long)]
    json: bool,
    /// Do not ask for confirmation (with --abandon).
    #[arg(long)]
    yes: bool,
}

#[derive(Args, Debug)]
struct RotateStatusArgs {
    /// Manifests of the group (old and new epochs). Repeat.
    #[arg(long = "manifest", required = true)]
    manifests: Vec<PathBuf>,
    /// A directory of share files on this host: lists shares of an older epoch than the newest
    /// manifest (not yet retired: t old holders could still sign with them) and pending files
    /// of an undecided ceremony. Repeat.
    #[arg(long = "share-dir", value_name = "DIR")]
    share_dirs: Vec<PathBuf>,
    /// Also ask a coordinator which epoch it serves.
    #[command(flatten)]
    client: Option<OptClientArgs>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct OptClientArgs {
    /// Coordinator address, HOST:PORT.
    #[arg(long, requires_all = ["coordinator_key", "identity"])]
    coordinator: Option<String>,
    #[arg(long)]
    coordinator_key: Option<String>,
    #[arg(long)]
    identity: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RetireArgs {
    /// The superseded share file to destroy.
    #[arg(long)]
    share: PathBuf,
    /// The group's new manifest.
    #[arg(long)]
    manifest: PathBuf,
    #[command(flatten)]
    client: ClientArgsNoGroup,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

#[derive(Args, Debug, Clone)]
struct ClientArgsNoGroup {
    /// Coordinator address, HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// Coordinator identity public key (hex, or path of its identity.pub).
    #[arg(long)]
    coordinator_key: String,
    /// A client identity directory the coordinator serves.
    #[arg(long)]
    identity: PathBuf,
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Create an identity key in a directory (identity.key mode 0600, identity.pub).
    Init {
        /// Directory to create the identity in.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the public key of an identity directory.
    Show {
        /// Identity directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a config and the files it names; exit 1 if any check fails.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ShareCmd {
    /// Show a share file's public header (group, epoch, identifier, KDF, created-at); no passphrase.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-seal share files of format 1 (each under its own passphrase) to the node keystore
    /// (format 2), in place and atomically; each is opened with the keystore before it
    /// replaces the old file. A file that fails is reported and left as it was.
    Migrate {
        /// Share files (format 1) to migrate.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The node keystore (`conclave keystore init`).
        #[arg(long)]
        keystore: PathBuf,
        /// File holding the keystore's passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// File holding the share files' passphrase (the same for all of them).
        #[arg(long)]
        share_passphrase_file: Option<PathBuf>,
        /// dev reads CONCLAVE_PASSPHRASE; test and prod do not.
        #[arg(long, value_enum, default_value_t = Mode::Prod)]
        mode: Mode,
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt a share file under a new passphrase, atomically (the old file stays valid
    /// until the new one is fully written and synced).
    Passwd {
        file: PathBuf,
        /// File holding the current passphrase.
        #[arg(long)]
        old_passphrase_file: Option<PathBuf>,
        /// File holding the new passphrase.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// prod refuses weak new passphrases, test warns, dev allows (and reads CONCLAVE_PASSPHRASE).
        #[arg(long, value_enum, default_value_t = Mode::Prod)]
        mode: Mode,
    },
}

const KEYSTORE_HELP: &str = "\
A node keystore holds an X25519 key, encrypted under the node passphrase (Argon2id, 64 MiB, 3
passes). Share files of format 2 are sealed to its public key: the participant runs one Argon2id
at start however many shares it holds, and a dealer or a ceremony writes a node's share from the
public key alone. Steps: (1) `conclave keystore init --identity DIR --out FILE` on the node;
(2) give its public key to the dealer (`keygen dealer --keystore NAME=KEY`), or migrate existing
files with `conclave share migrate --keystore FILE FILES...`; (3) in the participant config:
keystore = \"FILE\", passphrase_file = \"...\", shares_dir = \"DIR\". docs/THREAT-MODEL.md says what
a stolen disk, a stolen passphrase or both give an attacker.";

#[derive(Subcommand, Debug)]
enum KeystoreCmd {
    /// Create this node's keystore (mode 0600; refuses to replace one) and print its public key.
    Init {
        /// The node's identity directory (the keystore is bound to its key).
        #[arg(long)]
        identity: PathBuf,
        /// Where to write the keystore.
        #[arg(long)]
        out: PathBuf,
        /// File whose first line is the new node passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// prod refuses weak passphrases, test warns, dev allows (and reads CONCLAVE_PASSPHRASE).
        #[arg(long, value_enum, default_value_t = Mode::Prod)]
        mode: Mode,
        /// Argon2id cost: standard (64 MiB, 3 passes) or light (8 MiB, 1 pass; dev mode only).
        #[arg(long, value_enum, default_value_t = KdfChoice::Standard)]
        kdf: KdfChoice,
        #[arg(long)]
        json: bool,
    },
    /// Show a keystore's public key, owner and KDF (no passphrase needed).
    Show {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt the keystore under a new passphrase, atomically: one Argon2id, and the
    /// share files sealed to it stay as they are.
    Passwd {
        file: PathBuf,
        #[arg(long)]
        old_passphrase_file: Option<PathBuf>,
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Mode::Prod)]
        mode: Mode,
    },
}

#[derive(Subcommand, Debug)]
enum KeygenCmd {
    /// Trusted dealer: this host generates the key and splits it (it holds the whole key for a
    /// moment; for labs and tests; production deployments use DKG).
    Dealer(DealerArgs),
    /// Distributed key generation: every participant runs `join` on its own host, the
    /// coordinator runs `relay`; no host ever holds the whole key. Start with `plan`.
    #[command(subcommand, after_help = DKG_HELP)]
    Dkg(DkgCmd),
}

const DKG_HELP: &str = "\
Steps: (1) anyone writes the plan with `conclave keygen dkg plan` and copies it to every host;
(2) the coordinator runs `conclave keygen dkg relay --plan FILE --identity DIR`; (3) each
participant runs `conclave keygen dkg join --plan FILE --identity DIR --out DIR`, in any order.
The relay waits for everyone to join (--join-timeout), then every round must finish within
--timeout. Any failure aborts the ceremony everywhere and leaves no share file; run it again
with the same plan. Exit codes: 0 done; 1 the ceremony aborted (the reason names culprits);
2 bad input or an unusable file.";

#[derive(Subcommand, Debug)]
enum DkgCmd {
    /// Write a ceremony plan (public TOML) naming the group, threshold, participants and relay.
    Plan(DkgPlanArgs),
    /// Coordinator side: relay the ceremony's rounds (sees no secret), then write the manifest.
    Relay(DkgRelayArgs),
    /// Participant side: run the DKG, then write this participant's share file and the manifest.
    Join(DkgJoinArgs),
}

#[derive(Args, Debug)]
struct DkgPlanArgs {
    /// Group name (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    group: String,
    /// Signatures need this many participants.
    #[arg(long, short)]
    threshold: u16,
    /// A participant as NAME=KEY@HOST:PORT (KEY: identity public key in hex, or its identity
    /// directory or identity.pub; HOST:PORT: where it will listen for signing). Repeat.
    #[arg(
        long = "participant",
        short = 'p',
        value_name = "NAME=KEY@HOST:PORT",
        required = true
    )]
    participants: Vec<String>,
    /// The coordinator relaying the ceremony, as NAME=KEY@HOST:PORT (where it listens for it).
    #[arg(long, value_name = "NAME=KEY@HOST:PORT")]
    coordinator: String,
    /// Seconds each round may take once everyone has joined.
    #[arg(long, default_value_t = conclave_keygen::ceremony::plan::DEFAULT_ROUND_TIMEOUT_SECS)]
    timeout: u32,
    /// Seconds the relay waits for every participant to join.
    #[arg(long, default_value_t = conclave_keygen::ceremony::plan::DEFAULT_JOIN_TIMEOUT_SECS)]
    join_timeout: u32,
    /// Where to write the plan.
    #[arg(long, default_value = "dkg-plan.toml")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct DkgRelayArgs {
    /// The ceremony plan.
    #[arg(long)]
    plan: PathBuf,
    /// The coordinator's identity directory (must be the plan's coordinator).
    #[arg(long)]
    identity: PathBuf,
    /// Address to listen on (default: the plan's coordinator address).
    #[arg(long)]
    listen: Option<String>,
    /// Directory for the group manifest.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Count the outcome for Prometheus in this textfile (node_exporter's textfile
    /// collector): conclave_ceremony_outcomes_total{kind,role,outcome}.
    #[arg(long)]
    metrics_textfile: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Rotations: do not ask for confirmation of the plan.
    #[arg(long)]
    yes: bool,
}

/// What a join checks and reports on this node besides the ceremony (dkg and rotate alike).
#[derive(Args, Debug)]
struct JoinNodeArgs {
    /// The node keystore (`conclave keystore init`): the new share is sealed to it (no new
    /// passphrase is asked), and a current share sealed to it is opened with it (its
    /// passphrase from --old-passphrase-file).
    #[arg(long)]
    keystore: Option<PathBuf>,
    /// The participant's freeze file (its config's `freeze_file`; default: frozen.toml beside
    /// --audit-log): a node frozen for the plan's group (`conclave freeze`) refuses to join.
    #[arg(long)]
    freeze_file: Option<PathBuf>,
    /// Take part although the node is frozen for the group (the incident runbook's refresh
    /// or migration: signing stays frozen; only this ceremony goes ahead).
    #[arg(long)]
    while_frozen: bool,
    /// Count the outcome for Prometheus in this textfile (node_exporter's textfile
    /// collector): conclave_ceremony_outcomes_total{kind,role,outcome}.
    #[arg(long)]
    metrics_textfile: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DkgJoinArgs {
    /// The ceremony plan.
    #[arg(long)]
    plan: PathBuf,
    /// This participant's identity directory (must be in the plan).
    #[arg(long)]
    identity: PathBuf,
    /// Directory for this participant's share file and the manifest.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// File whose first line is the passphrase for the new share file.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// An audit log for this host's ceremonies (a directory of its own, not the running
    /// daemon's log: one writer per log): joining, with the plan fingerprint, and the outcome
    /// are recorded there; a join that cannot be recorded does not start.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    #[command(flatten)]
    node: JoinNodeArgs,
    /// Operating mode (dev allows CONCLAVE_PASSPHRASE and light KDF parameters).
    #[arg(long, value_enum, default_value_t = Mode::Prod)]
    mode: Mode,
    /// Argon2id cost: standard (64 MiB, 3 passes) or light (8 MiB, 1 pass; dev mode only).
    #[arg(long, value_enum, default_value_t = KdfChoice::Standard)]
    kdf: KdfChoice,
    /// The plan fingerprint its author printed (`keygen dkg plan`): refuse any other plan.
    /// Given and matching, it confirms the plan; in prod mode --yes requires it.
    #[arg(long, value_name = "FINGERPRINT")]
    expect_plan: Option<String>,
    #[arg(long)]
    json: bool,
    /// Do not ask for confirmation (prod mode: only with --expect-plan).
    #[arg(long)]
    yes: bool,
}

#[derive(Args, Debug)]
struct DealerArgs {
    /// Group name (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    group: String,
    /// Signatures need this many participants.
    #[arg(long, short)]
    threshold: u16,
    /// A participant as NAME=KEY@HOST:PORT, where KEY is its identity public key (hex) or the
    /// path of its identity directory or identity.pub. Repeat once per participant.
    #[arg(
        long = "participant",
        short = 'p',
        value_name = "NAME=KEY@HOST:PORT",
        required = true
    )]
    participants: Vec<String>,
    /// Directory for the manifest and the share files.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// File whose first line is the passphrase that encrypts every share file not sealed to
    /// a keystore.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Seal participant NAME's share to its node keystore: KEY is the keystore's public key
    /// (hex, `conclave keystore show`) or the path of the keystore. Repeat per participant;
    /// with one for every participant no passphrase is asked.
    #[arg(long = "keystore", value_name = "NAME=KEY")]
    keystores: Vec<String>,
    /// Operating mode (dev allows CONCLAVE_PASSPHRASE and light KDF parameters).
    #[arg(long, value_enum, default_value_t = Mode::Prod)]
    mode: Mode,
    /// Required in prod mode: acknowledges that this host holds the whole key for a moment.
    #[arg(long)]
    allow_dealer: bool,
    /// Argon2id cost: standard (64 MiB, 3 passes) or light (8 MiB, 1 pass; dev mode only).
    #[arg(long, value_enum, default_value_t = KdfChoice::Standard)]
    kdf: KdfChoice,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KdfChoice {
    Standard,
    Light,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// The agent's Unix socket (its directory is created 0700 if missing, and must not be open
    /// to others); point SSH_AUTH_SOCK at it.
    #[arg(long)]
    socket: PathBuf,
    /// A group whose key the agent serves (repeat for several; default: the client config's
    /// group).
    #[arg(long)]
    group: Vec<String>,
    /// A uid allowed to use the socket (repeat; default: the agent's own uid).
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args, Debug)]
struct ExternalSignerArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Stdin is a 32- or 64-byte digest in hex; those bytes are signed as the message
    /// (FROST(Ed25519) has no Ed25519ph: the verifier checks the signature over the digest).
    #[arg(long)]
    hash: bool,
    /// Output format (default: $SIGNER_OUTPUT, else base64).
    #[arg(long, value_enum)]
    output: Option<SigFormat>,
    /// Deadline in milliseconds (default: $SIGNER_TIMEOUT_MS, else the config's timeout_ms).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print the group's public key (hex) instead of signing: from this host's manifest when
    /// the client config lists one, else from the coordinator. Reads no stdin.
    #[arg(long, conflicts_with = "hash")]
    public_key: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SigFormat {
    Base64,
    Hex,
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KeyFormat {
    Hex,
    Pem,
    Openssh,
    /// {"key_id", "public_key" (hex), "alg": "ed25519"} for a trusted-key registry.
    RegistryJson,
}

/// Where a client connects, and as whom: the client config and the flags that override it.
#[derive(Args, Debug, Clone, Default)]
struct ConnArgs {
    /// Client config (identity, coordinators tried in order, group, timeout); default
    /// $CONCLAVE_CLIENT_CONFIG, else ~/.config/conclave/client.toml. Flags override it.
    #[arg(long, value_name = "PATH")]
    client_config: Option<PathBuf>,
    /// Coordinator address, HOST:PORT (instead of the config's coordinators).
    #[arg(long)]
    coordinator: Option<String>,
    /// Coordinator identity public key (hex, or path of its identity.pub).
    #[arg(long)]
    coordinator_key: Option<String>,
    /// This client's identity directory (its public key must be in the coordinator's clients).
    #[arg(long)]
    identity: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct ClientArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Group name.
    #[arg(long, short)]
    group: Option<String>,
}

#[derive(Args, Debug)]
struct SignArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// File holding the message; "-" or absent: standard input.
    #[arg(long, short)]
    message_file: Option<PathBuf>,
    /// Output format of the signature.
    #[arg(long, value_enum, default_value_t = SigFormat::Base64)]
    format: SigFormat,
    /// Print {"public_key", "signature", "message_sha256", "signers"} as JSON (on a refusal:
    /// {"error", "message", "refusals"}).
    #[arg(long)]
    json: bool,
    /// Seconds the whole request may take, connecting included (default: the client config's
    /// timeout_ms, else 10).
    #[arg(long)]
    timeout: Option<f64>,
    /// Group manifest (this host's own copy): refuse a signature under any other key, and sign
    /// the request for its epoch rather than the one the coordinator reports.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Declare the message kind (raw, sshsig:NAMESPACE, ssh-auth, transition) instead of
    /// recognising it from the bytes. The signers recognise it themselves and refuse a
    /// mismatch, so this is for testing policies.
    #[arg(long)]
    kind: Option<String>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The signature: base64 or hex text.
    #[arg(
        long,
        short,
        conflicts_with = "signature_file",
        required_unless_present = "signature_file"
    )]
    signature: Option<String>,
    /// File holding the signature (64 raw bytes, or base64/hex text).
    #[arg(long)]
    signature_file: Option<PathBuf>,
    /// Group manifest whose public key to verify against.
    #[arg(
        long,
        conflicts_with = "public_key",
        required_unless_present = "public_key"
    )]
    manifest: Option<PathBuf>,
    /// Ed25519 public key (hex).
    #[arg(long)]
    public_key: Option<String>,
    /// File holding the message; "-" or absent: standard input.
    #[arg(long, short)]
    message_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long)]
    json: bool,
}

/// `--groups`: a whole list in one value.
#[derive(Clone, Debug)]
struct GroupList(Vec<(u16, usize)>);

fn group_list(s: &str) -> Result<GroupList, String> {
    conclave_lab::bench::parse_groups(s).map(GroupList)
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    /// Signatures at concurrency 1 for a 3-of-n group (a t-of-n group does 3/t as many, at
    /// least 10; higher concurrency does 4x as many).
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Only 3-of-5, fewer requests: a smoke run.
    #[arg(long)]
    quick: bool,
    /// The groups to measure, as TxN (threshold x participants), comma-separated.
    #[arg(long, default_value = "3x5,7x10", value_parser = group_list)]
    groups: GroupList,
    /// Concurrency levels (requests in flight at once), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Where the nodes write their audit records: fsync (a file, fsynced per record: the
    /// default of the daemons), file (not fsynced: audit_fsync = false) or memory (no disk).
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "file", "memory"])]
    audit: String,
    /// Fresh clusters per group, each measured at every concurrency level (for min/median).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Skip the authorization-cost section (three more 3-of-5 clusters).
    #[arg(long, conflicts_with = "authorization")]
    no_authorization: bool,
    /// Only the memory of a participant process: idle, and with --nonces pooled commitments
    /// for one coordinator.
    #[arg(long, conflicts_with_all = ["reshare", "authorization", "clients"])]
    rss: bool,
    /// Only the parts issue 15 changed (package decoding, commitment decoding, commitment
    /// making, aggregation), the old and the new way, in process.
    #[arg(long, conflicts_with_all = ["reshare", "authorization", "clients", "rss"])]
    parts: bool,
    /// Pooled commitments for --rss.
    #[arg(long, default_value_t = 10_000)]
    nonces: usize,
    /// Time reshare ceremonies (3-of-5 -> 5-of-7 and 67-of-100 -> 67-of-100) instead of signing.
    #[arg(long)]
    reshare: bool,
    /// Only the cost of authorization: 3-of-5 with the audit log in memory, in a file without
    /// fsync, and with fsync per record, next to the in-process cost of the checks.
    #[arg(long, conflicts_with = "reshare")]
    authorization: bool,
    /// One signature through each client front end (library, external-signer, ssh-agent via
    /// ssh-keygen) against the in-process pipeline.
    #[arg(long, conflicts_with_all = ["reshare", "authorization"])]
    clients: bool,
    /// Many keys per node: a 3-of-5 loopback cluster of real processes serving 1, 100 and
    /// this many groups (shares_dir, manifests_dir, node keystores): start time and memory,
    /// sign p50/p99 on one hot group and on random groups (warm and cold), the agent's
    /// identity list, and the simulator with --sim-groups groups. --requests per phase.
    #[arg(long, value_name = "N", conflicts_with_all = ["reshare", "authorization", "clients", "rss", "parts"])]
    groups_per_node: Option<usize>,
    /// Groups of the simulated run of --groups-per-node.
    #[arg(long, default_value_t = 10_000, requires = "groups_per_node")]
    sim_groups: usize,
}

fn init_logging(verbose: u8, daemon: bool, narrated: bool) {
    let default = match (verbose, daemon) {
        (0, true) => "info",
        // demo and bench narrate on stdout; the in-process nodes' warnings (a stopped
        // participant is unreachable, as intended) would only interleave with it.
        (0, false) if narrated => "error",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // ssh-agent-lib logs whole requests at debug level (the data to sign, `ssh-add -x` lock
    // passphrases): never let them through, whatever the verbosity.
    let filter = match "ssh_agent_lib=warn".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// `conclave audit verify | show`.
fn audit_verify(args: AuditArgs, show: bool) -> CmdResult {
    let key = match &args.key {
        Some(k) => Some(
            conclave_protocol::identity::read_node_id(k)
                .map_err(|e| anyhow::anyhow!("--key {k:?}: {e}"))?,
        ),
        None => None,
    };
    // Any file of a log (a shell glob included) names the whole log, in rotation order; one
    // log at a time.
    let logs = conclave_audit::expand_args(&args.files)
        .map_err(|e| anyhow::anyhow!("cannot list the audit log's files: {e}"))?;
    let files = match logs.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(anyhow::anyhow!(
                "these files belong to {} different logs: verify one log at a time",
                logs.len()
            )
            .into())
        }
    };
    let args = AuditArgs { files, ..args };
    let expected = match &args.expect_checkpoint {
        Some(c) => Some(conclave_audit::parse_checkpoint(c).ok_or_else(|| {
            anyhow::anyhow!("--expect-checkpoint {c:?}: expected SEQ:HASH (64 hex digits)")
        })?),
        None => None,
    };
    let summary = match conclave_audit::verify_expecting(&args.files, key, expected) {
        Ok(s) => s,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "file": e.file, "seq": e.seq, "error": e.what})
                );
            }
            return Err(Exit::refused(anyhow::anyhow!("audit log damaged: {e}")));
        }
    };
    if show {
        let records = conclave_audit::records(&args.files)
            .map_err(|e| Exit::refused(anyhow::anyhow!("{e}")))?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"valid": true, "summary": summary, "records": records})
            );
        } else {
            for r in &records {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
        }
    } else if args.json {
        println!("{}", serde_json::json!({"valid": true, "summary": summary}));
    } else {
        println!(
            "valid: {} records ({} decisions, {} signed checkpoints{}), {} after the last checkpoint",
            summary.records,
            summary.decisions,
            summary.checkpoints,
            summary
                .node
                .as_deref()
                .map(|n| format!(" by {}", n.get(..16).unwrap_or(n)))
                .unwrap_or_default(),
            summary.unsigned_tail
        );
        if let Some(c) = &summary.last_checkpoint {
            println!("latest checkpoint: {c} (keep it off this host; --expect-checkpoint {c} later detects truncation back before it)");
        }
        if key.is_none() {
            eprintln!("note: no --key given: the checkpoints agree on one key, but nothing says it is the node's");
        }
    }
    Ok(())
}

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    code: u8,
    error: anyhow::Error,
}

impl Exit {
    pub(crate) fn refused(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }

    /// A failure whose message the command already printed.
    pub(crate) fn silent(code: u8) -> Self {
        Self {
            code,
            error: anyhow::anyhow!(""),
        }
    }

    /// The signers' policies did not authorise the request (exit code 3).
    pub(crate) fn not_authorized(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 3,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Self {
            code: 2,
            error: e.into(),
        }
    }
}

pub(crate) type CmdResult = Result<(), Exit>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // The external signer's callers read one stable code on stderr: a usage error is
        // SIGNER_BAD_INPUT (exit 13) there, as everywhere else in its contract.
        Err(e)
            if std::env::args().nth(1).as_deref() == Some("external-signer") && e.use_stderr() =>
        {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("bad arguments");
            eprintln!("SIGNER_BAD_INPUT: {first}");
            return ExitCode::from(signer::EXIT_BAD_INPUT);
        }
        Err(e) => e.exit(),
    };
    let daemon = matches!(
        cli.command,
        Command::Participant { .. } | Command::Coordinator { .. } | Command::Agent(_)
    );
    let narrated = matches!(
        cli.command,
        Command::Demo { .. } | Command::Bench(_) | Command::Sim(_)
    );
    let daemon = daemon || matches!(&cli.command, Command::Sim(a) if a.is_proxy());
    init_logging(cli.verbose, daemon, narrated);
    let result = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit { code, error }) => {
            if !error.to_string().is_empty() {
                eprintln!("conclave: error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(command: Command) -> CmdResult {
    match command {
        Command::Node(NodeCmd::Init { out, json }) => commands::node_init(&out, json),
        Command::Node(NodeCmd::Show { dir }) => commands::node_show(&dir),
        Command::Keygen(KeygenCmd::Dealer(args)) => commands::keygen_dealer(args),
        Command::Keygen(KeygenCmd::Dkg(DkgCmd::Plan(args))) => ceremony::plan(args),
        Command::Keygen(KeygenCmd::Dkg(DkgCmd::Relay(args))) => {
            runtime()?.block_on(ceremony::relay(args))
        }
        Command::Keygen(KeygenCmd::Dkg(DkgCmd::Join(args))) => {
            runtime()?.block_on(ceremony::join(args))
        }
        Command::Participant { config } => runtime()?.block_on(daemon::run_participant(&config)),
        Command::Coordinator { config } => runtime()?.block_on(daemon::run_coordinator(&config)),
        Command::Reload { config, json } => runtime()?.block_on(daemon::reload_cmd(&config, json)),
        Command::Freeze(a) => runtime()?.block_on(daemon::freeze_cmd(
            &a.config, true, a.group, a.reason, a.json,
        )),
        Command::Unfreeze(a) => runtime()?.block_on(daemon::freeze_cmd(
            &a.config, false, a.group, a.reason, a.json,
        )),
        Command::Sign(args) => runtime()?.block_on(commands::sign(args)),
        Command::Verify(args) => commands::verify(args),
        Command::Pubkey {
            manifest,
            client,
            trust_coordinator_key,
            format,
            key_id,
        } => runtime()?.block_on(commands::pubkey(
            manifest.as_deref(),
            &client,
            trust_coordinator_key,
            format,
            key_id.as_deref(),
        )),
        // One short request: a single-threaded runtime starts faster.
        Command::ExternalSigner(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(signer::run(args)),
        Command::Agent(args) => runtime()?.block_on(agent::run(args)),
        Command::Config(ConfigCmd::Check { config, json }) => commands::config_check(&config, json),
        Command::Share(ShareCmd::Inspect { file, json }) => commands::share_inspect(&file, json),
        Command::Share(ShareCmd::Migrate {
            files,
            keystore,
            passphrase_file,
            share_passphrase_file,
            mode,
            json,
        }) => keystore_cmd::migrate(
            &files,
            &keystore,
            passphrase_file.as_deref(),
            share_passphrase_file.as_deref(),
            mode,
            json,
        ),
        Command::Keystore(KeystoreCmd::Init {
            identity,
            out,
            passphrase_file,
            mode,
            kdf,
            json,
        }) => keystore_cmd::init(
            &identity,
            &out,
            passphrase_file.as_deref(),
            mode,
            kdf == KdfChoice::Light,
            json,
        ),
        Command::Keystore(KeystoreCmd::Show { file, json }) => keystore_cmd::show(&file, json),
        Command::Keystore(KeystoreCmd::Passwd {
            file,
            old_passphrase_file,
            new_passphrase_file,
            mode,
        }) => keystore_cmd::passwd(
            &file,
            old_passphrase_file.as_deref(),
            new_passphrase_file.as_deref(),
            mode,
        ),
        Command::Share(ShareCmd::Passwd {
            file,
            old_passphrase_file,
            new_passphrase_file,
            mode,
        }) => commands::share_passwd(
            &file,
            old_passphrase_file.as_deref(),
            new_passphrase_file.as_deref(),
            mode,
        ),
        Command::Status(args) => runtime()?.block_on(commands::status(args)),
        Command::Demo { json, keep } => {
            Ok(runtime()?.block_on(conclave_lab::demo::run(json, keep))?)
        }
        Command::Bench(args) if args.clients => {
            Ok(runtime()?.block_on(conclave_lab::bench_clients::run(args.json, args.quick))?)
        }
        Command::BenchChild { what, dir, nonces } if what == "participant-rss" => {
            Ok(runtime()?.block_on(conclave_lab::bench_rss::participant_child(&dir, nonces))?)
        }
        Command::BenchChild { what, .. } => {
            Err(Exit::from(anyhow::anyhow!("unknown bench child {what:?}")))
        }
        Command::Bench(args) if args.groups_per_node.is_some() => {
            let exe = std::env::current_exe().map_err(anyhow::Error::from)?;
            let opts = conclave_lab::bench_scale::ScaleOptions {
                groups_per_node: args.groups_per_node.unwrap_or(1000),
                requests: if args.quick { 50 } else { args.requests },
                sim_groups: args.sim_groups,
                json: args.json,
            };
            Ok(runtime()?.block_on(conclave_lab::bench_scale::run(&exe, opts))?)
        }
        Command::Bench(args) if args.parts => {
            Ok(conclave_lab::bench_parts::run(args.json, args.quick)?)
        }
        Command::Bench(args) if args.rss => runtime()?.block_on(bench_rss(args.nonces, args.json)),
        Command::Bench(args) if args.reshare => {
            Ok(runtime()?.block_on(conclave_lab::bench_reshare::run(args.json, args.quick))?)
        }
        Command::Bench(args) => Ok(runtime()?.block_on(conclave_lab::bench::run(
            conclave_lab::bench::BenchOptions {
                json: args.json,
                requests: args.requests,
                quick: args.quick,
                authorization_only: args.authorization,
                groups: args.groups.0.clone(),
                concurrency: args.concurrency.clone(),
                audit: match args.audit.as_str() {
                    "memory" => conclave_lab::cluster::Audit::Memory,
                    "file" => conclave_lab::cluster::Audit::Files { fsync: false },
                    _ => conclave_lab::cluster::Audit::Files { fsync: true },
                },
                runs: args.runs,
                no_authorization: args.no_authorization,
            },
        ))?),
        Command::Sim(args) => runtime()?.block_on(sim::run(*args)),
        Command::Migrate(cmd) => runtime()?.block_on(migrate::run(cmd)),
        Command::Audit(AuditCmd::Verify(args)) => audit_verify(args, false),
        Command::Audit(AuditCmd::Show(args)) => audit_verify(args, true),
        Command::Rotate(RotateCmd::Plan(args)) => rotate::plan(args),
        Command::Rotate(RotateCmd::Relay(args)) => runtime()?.block_on(ceremony::relay(args)),
        Command::Rotate(RotateCmd::Join(args)) => runtime()?.block_on(rotate::join(args)),
        Command::Rotate(RotateCmd::Status(args)) => runtime()?.block_on(rotate::status(args)),
        Command::Rotate(RotateCmd::Retire(args)) => runtime()?.block_on(rotate::retire(args)),
        Command::Rotate(RotateCmd::Resume(args)) => rotate::resume(args),
        Command::Logs(LogsCmd::Scan(args)) => scan::run(args),
    }
}

async fn bench_rss(nonces: usize, json: bool) -> CmdResult {
    if !(1..=config::MAX_OUTSTANDING_NONCES).contains(&nonces) {
        return Err(Exit::from(anyhow::anyhow!(
            "--nonces is between 1 and {}",
            config::MAX_OUTSTANDING_NONCES
        )));
    }
    let exe = std::env::current_exe().map_err(|e| Exit::from(anyhow::anyhow!("{e}")))?;
    if !json {
        eprintln!(
            "starting a participant process and filling its pool to {nonces} commitments ..."
        );
    }
    let r = conclave_lab::bench_rss::measure(&exe, nonces).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "participant_rss", "nonces": r.nonces,
                "idle_rss_kib": r.idle_kib, "pooled_rss_kib": r.pooled_kib,
                "per_nonce_bytes": r.per_nonce_bytes(), "fill_ms": r.fill.as_secs_f64() * 1e3,
            })
        );
    } else {
        println!(
            "participant process RSS: idle {:.1} MiB, with {} pooled nonces {:.1} MiB ({:.0} bytes per nonce; pool filled in {} ms)",
            r.idle_kib as f64 / 1024.0,
            r.nonces,
            r.pooled_kib as f64 / 1024.0,
            r.per_nonce_bytes(),
            r.fill.as_millis()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
