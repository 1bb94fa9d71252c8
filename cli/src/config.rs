//! Configuration files of the daemons (TOML) and the operating modes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use conclave_protocol::NodeId;
use serde::Deserialize;

/// Largest config file read.
const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// How strict the node is about operator mistakes. Daemons default to `prod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Allows shortcuts (passphrase from an environment variable, light KDF parameters).
    Dev,
    /// Like prod, but warns instead of refusing.
    Test,
    /// Refuses unsafe choices.
    #[default]
    Prod,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Dev => "dev",
            Mode::Test => "test",
            Mode::Prod => "prod",
        })
    }
}

/// One share a participant serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareEntry {
    /// Path of the encrypted share file.
    pub file: PathBuf,
    /// File holding the passphrase (first line). Optional: see the passphrase sources.
    pub passphrase_file: Option<PathBuf>,
}

/// `conclave participant --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    #[serde(default)]
    pub mode: Mode,
    /// Identity directory made by `conclave node init`.
    pub identity: PathBuf,
    /// Address to listen on, e.g. "0.0.0.0:7001".
    pub listen: SocketAddr,
    /// Identity public keys (hex) of the coordinators allowed to connect.
    pub coordinators: Vec<String>,
    /// Share files listed one by one; any that cannot be read stops the start (or the reload).
    #[serde(default)]
    pub shares: Vec<ShareEntry>,
    /// A directory whose `*.share` files are all served: one that cannot be read is reported
    /// by name and skipped, the others serve. Picked up again on every reload.
    pub shares_dir: Option<PathBuf>,
    /// The node keystore (`conclave keystore init`): share files of format 2 are sealed to it.
    /// One passphrase, one Argon2id at start, however many shares.
    pub keystore: Option<PathBuf>,
    /// File holding the node passphrase (first line): the keystore's, and that of format-1
    /// files in `shares_dir`. Default: the systemd credential, then (dev) the environment, then
    /// the terminal.
    pub passphrase_file: Option<PathBuf>,
    /// Most unused nonces held for one coordinator over all groups (default 65,536; about 600
    /// bytes each). A coordinator asking beyond it gets `Overloaded`.
    pub max_total_nonces: Option<usize>,
    /// This signer's own policy (TOML): which client may have which group sign what. Default
    /// deny: a client it does not name gets nothing signed.
    pub policy: PathBuf,
    /// This node's audit log: a file in a directory of its own (rotated files go beside it).
    pub audit_log: PathBuf,
    /// fsync every audit record (default true). False trades the last records on a power
    /// loss for speed; a record that cannot be written still stops the signature.
    #[serde(default = "yes")]
    pub audit_fsync: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds after which an idle decrypted share is dropped from memory (zeroized) and
    /// decrypted again, from its passphrase source, on the next request. Default: kept.
    pub share_cache_ttl: Option<u64>,
    /// Seconds a SIGTERM gives requests in flight to finish (default 30).
    pub drain_grace_secs: Option<u64>,
    /// Most unused round-1 nonces held per coordinator and share (default 1024, at most
    /// 100,000; about 1 KiB of memory each). Raise it with the coordinators' `pool_target`.
    pub max_outstanding_nonces: Option<usize>,
    /// The control socket (`conclave reload`, `freeze`, `unfreeze`); default
    /// `control.sock` beside the audit log.
    pub control_socket: Option<PathBuf>,
    /// Where the frozen groups are kept across restarts; default `frozen.toml` beside the
    /// audit log.
    pub freeze_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Default drain grace.
pub const DEFAULT_DRAIN_GRACE_SECS: u64 = 30;
/// Longest share cache TTL accepted.
pub const MAX_SHARE_CACHE_TTL_SECS: u64 = 30 * 86400;

/// Largest `max_outstanding_nonces` a participant accepts.
pub const MAX_OUTSTANDING_NONCES: usize = 100_000;
/// Longest drain grace accepted.
pub const MAX_DRAIN_GRACE_SECS: u64 = 3600;
/// Largest `max_total_nonces` a participant accepts.
pub const MAX_TOTAL_NONCES: usize = 1_000_000;

/// The directory of a node's state: its audit log's directory.
pub fn state_dir(audit_log: &Path) -> PathBuf {
    match audit_log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn drain_grace(v: Option<u64>, path: &Path) -> Result<std::time::Duration> {
    let secs = v.unwrap_or(DEFAULT_DRAIN_GRACE_SECS);
    if secs > MAX_DRAIN_GRACE_SECS {
        bail!(
            "config {}: drain_grace_secs is at most {MAX_DRAIN_GRACE_SECS}",
            path.display()
        );
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// `conclave coordinator --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    #[serde(default)]
    pub mode: Mode,
    /// Identity directory made by `conclave node init`.
    pub identity: PathBuf,
    /// Address clients connect to, e.g. "0.0.0.0:7000".
    pub listen: SocketAddr,
    /// Identity public keys (hex) of the clients allowed to request signatures.
    pub clients: Vec<String>,
    /// Group manifests to serve, listed one by one; any that cannot be read stops the start
    /// (or the reload).
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// A directory whose `*.toml` manifests are all served: one that cannot be read is
    /// reported by name and skipped, the others serve. Picked up again on every reload.
    pub manifests_dir: Option<PathBuf>,
    /// Commitments kept pooled per participant for a group with no recent request (default 1,
    /// at most `pool_target`): the first request on an idle group uses it and the pool grows
    /// with the group's demand. 0 keeps idle pools empty (a cold group's first request then
    /// pays one more round trip).
    pub pool_idle: Option<u16>,
    /// How long one participant may take to answer one request (default 2000); the ceiling
    /// of each signer's adaptive round-2 timeout.
    pub participant_timeout_ms: Option<u64>,
    /// The floor of each signer's adaptive round-2 timeout (default 250).
    pub min_participant_timeout_ms: Option<u64>,
    /// Deadline of a request whose client gives none (default 10000).
    pub default_timeout_ms: Option<u64>,
    /// Round-1 commitments kept pooled per participant and group (default 32, up to 65535;
    /// fetched 256 at a time). Each participant holds as many unused nonces for this
    /// coordinator, so raise their `max_outstanding_nonces` with it.
    pub pool_target: Option<u16>,
    /// Optional policy, for early refusal (same format as the participants'; they remain the
    /// authority and decide for themselves).
    pub policy: Option<PathBuf>,
    /// This node's audit log: a file in a directory of its own (rotated files go beside it).
    pub audit_log: PathBuf,
    /// fsync every audit record (default true).
    #[serde(default = "yes")]
    pub audit_fsync: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds a SIGTERM gives sessions in flight to finish (default 30).
    pub drain_grace_secs: Option<u64>,
    /// The control socket (`conclave reload`); default `control.sock` beside the audit log.
    pub control_socket: Option<PathBuf>,
}

fn read_text(path: &Path) -> Result<String> {
    conclave_protocol::read_bounded_to_string(path, MAX_CONFIG_LEN)
        .with_context(|| format!("cannot read config {}", path.display()))
}

fn parse_toml<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))
}

/// Resolves `p` against the directory of the config file.
pub fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Parses a list of hex identity keys.
pub fn node_ids(keys: &[String], what: &str) -> Result<HashSet<NodeId>> {
    keys.iter()
        .map(|k| {
            NodeId::from_hex(k).with_context(|| {
                format!("{what}: {k:?} is not an identity public key (64 hex characters)")
            })
        })
        .collect()
}

impl ParticipantConfig {
    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| state_dir(&self.audit_log).join("control.sock"))
    }

    /// The freeze file's path.
    pub fn freeze_file(&self) -> PathBuf {
        self.freeze_file
            .clone()
            .unwrap_or_else(|| state_dir(&self.audit_log).join("frozen.toml"))
    }

    pub fn drain_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.drain_grace_secs
                .unwrap_or(DEFAULT_DRAIN_GRACE_SECS)
                .min(MAX_DRAIN_GRACE_SECS),
        )
    }

    pub fn read(path: &Path) -> Result<Self> {
        Self::parse(path, &read_text(path)?)
    }

    /// Parses and checks the text of the config file at `path` (relative paths in it are
    /// resolved against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut c: Self = parse_toml(path, text)?;
        c.identity = relative_to(path, &c.identity);
        c.policy = relative_to(path, &c.policy);
        c.audit_log = relative_to(path, &c.audit_log);
        for s in &mut c.shares {
            s.file = relative_to(path, &s.file);
            s.passphrase_file = s.passphrase_file.as_ref().map(|p| relative_to(path, p));
        }
        c.shares_dir = c.shares_dir.as_ref().map(|p| relative_to(path, p));
        c.keystore = c.keystore.as_ref().map(|p| relative_to(path, p));
        c.passphrase_file = c.passphrase_file.as_ref().map(|p| relative_to(path, p));
        if c.max_total_nonces
            .is_some_and(|n| n == 0 || n > MAX_TOTAL_NONCES)
        {
            bail!(
                "config {}: max_total_nonces is between 1 and {MAX_TOTAL_NONCES}",
                path.display()
            );
        }
        c.control_socket = c.control_socket.as_ref().map(|p| relative_to(path, p));
        c.freeze_file = c.freeze_file.as_ref().map(|p| relative_to(path, p));
        if c.share_cache_ttl
            .is_some_and(|t| t > MAX_SHARE_CACHE_TTL_SECS)
        {
            bail!(
                "config {}: share_cache_ttl is at most {MAX_SHARE_CACHE_TTL_SECS} seconds (30 days)",
                path.display()
            );
        }
        if c.max_outstanding_nonces
            .is_some_and(|n| n == 0 || n > MAX_OUTSTANDING_NONCES)
        {
            bail!(
                "config {}: max_outstanding_nonces is between 1 and {MAX_OUTSTANDING_NONCES}",
                path.display()
            );
        }
        if c.share_cache_ttl == Some(0) {
            bail!(
                "config {}: share_cache_ttl must be at least 1 second (leave it out to keep shares in memory)",
                path.display()
            );
        }
        drain_grace(c.drain_grace_secs, path)?;
        if c.shares.is_empty() && c.shares_dir.is_none() {
            bail!(
                "config {}: no shares: list [[shares]] or give shares_dir",
                path.display()
            );
        }
        if c.coordinators.is_empty() {
            bail!(
                "config {}: no coordinators listed; nobody could connect",
                path.display()
            );
        }
        Ok(c)
    }
}

impl CoordinatorConfig {
    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| state_dir(&self.audit_log).join("control.sock"))
    }

    pub fn drain_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.drain_grace_secs
                .unwrap_or(DEFAULT_DRAIN_GRACE_SECS)
                .min(MAX_DRAIN_GRACE_SECS),
        )
    }

    pub fn read(path: &Path) -> Result<Self> {
        Self::parse(path, &read_text(path)?)
    }

    /// Parses and checks the text of the config file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut c: Self = parse_toml(path, text)?;
        c.identity = relative_to(path, &c.identity);
        c.policy = c.policy.as_ref().map(|p| relative_to(path, p));
        c.audit_log = relative_to(path, &c.audit_log);
        c.manifests = c.manifests.iter().map(|m| relative_to(path, m)).collect();
        c.manifests_dir = c.manifests_dir.as_ref().map(|p| relative_to(path, p));
        c.control_socket = c.control_socket.as_ref().map(|p| relative_to(path, p));
        drain_grace(c.drain_grace_secs, path)?;
        if c.manifests.is_empty() && c.manifests_dir.is_none() {
            bail!(
                "config {}: no manifests: list manifests or give manifests_dir",
                path.display()
            );
        }
        Ok(c)
    }
}

/// Opens a daemon's audit log: creates its directory (mode 0700) if needed and refuses a
/// directory others can read or write, then continues the chain (fail closed on a damaged
/// end).
pub fn open_audit_log(
    path: &Path,
    identity: &conclave_protocol::IdentityKey,
    fsync: bool,
) -> Result<conclave_audit::AuditLog> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        conclave_protocol::identity::create_private_dir(&dir)
            .with_context(|| format!("cannot create the audit directory {}", dir.display()))?;
    }
    let log = conclave_audit::AuditLog::open(
        path,
        identity.clone(),
        conclave_audit::Options {
            fsync,
            ..Default::default()
        },
    )?;
    Ok(log)
}
