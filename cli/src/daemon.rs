//! The participant and coordinator daemons: start-up, hot reload (SIGHUP or `conclave
//! reload` on the control socket), incident controls (`conclave freeze` / `unfreeze`), the
//! drain on SIGTERM, systemd readiness notifications and the metrics endpoint.
//!
//! A reload re-reads everything from the node's own files (config, manifests, shares with
//! their passphrases from their unattended sources, policy, client and coordinator lists) and
//! applies it as a whole, or not at all: a bad new file keeps the old state serving, and the
//! reason is logged, returned to `conclave reload`, counted and written to the audit log.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use conclave_audit::Decision;
use conclave_keygen::store::ServedShares;
use conclave_keygen::{GroupManifest, Keys, Keystore, ShareFile};
use conclave_participant::Freeze;
use conclave_protocol::{GroupName, IdentityKey, NodeId};
use conclave_transport::coordinator::{CoordinatorHandle, CoordinatorUpdate};
use conclave_transport::metrics::{Metrics, ResultLabel};
use conclave_transport::participant::{ParticipantHandle, ParticipantUpdate, ShareLoader};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::config::{self, Mode, ParticipantConfig, ShareEntry};
use crate::{passphrase, CmdResult, Exit};

/// Exit code of a daemon whose drain grace ran out with work still in flight.
pub const EXIT_DRAIN_INCOMPLETE: u8 = 5;
/// Largest control request read.
const MAX_CONTROL_REQUEST: u64 = 64 * 1024;
/// How long `conclave reload` / `freeze` wait for the daemon's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

// ----- systemd -----------------------------------------------------------------------------

/// Tells systemd (Type=notify) what the daemon is doing; nothing without $NOTIFY_SOCKET.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// READY=1 (the agent, once its socket is bound).
pub(crate) fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

fn notify_reloading() {
    let usec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let monotonic = format!("MONOTONIC_USEC={}", monotonic_usec().unwrap_or(usec as u64));
    notify(&[
        sd_notify::NotifyState::Reloading,
        sd_notify::NotifyState::Custom(&monotonic),
    ]);
}

/// CLOCK_MONOTONIC in microseconds (what systemd's Type=notify-reload compares).
fn monotonic_usec() -> Option<u64> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000 + nanos / 1000)
}

/// Completes on SIGTERM or ctrl-c, with the drain grace.
async fn drain_signal(grace: Duration) -> Duration {
    crate::commands::shutdown_signal().await;
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "stop requested: draining (a second signal does not hurry it; the grace bounds it)"
    );
    grace
}

// ----- freeze file -------------------------------------------------------------------------

const MAX_FREEZE_FILE: u64 = 64 * 1024;

/// Reads the freeze file: absent means nothing frozen; unreadable or malformed is an error
/// (the node refuses to start rather than guess).
pub(crate) fn read_freeze(path: &Path) -> anyhow::Result<Freeze> {
    if !path.exists() {
        return Ok(Freeze::default());
    }
    let text = conclave_protocol::read_bounded_to_string(path, MAX_FREEZE_FILE)
        .with_context(|| format!("cannot read the freeze file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow!(
            "freeze file {} is malformed: {} (fix it or remove it; `conclave freeze` writes it)",
            path.display(),
            e.message()
        )
    })
}

fn write_freeze(path: &Path, freeze: &Freeze) -> anyhow::Result<()> {
    let body = toml::to_string(freeze).context("cannot encode the freeze state")?;
    let text = format!(
        "# Written by `conclave freeze` / `conclave unfreeze`; read at start and kept across restarts.\n{body}"
    );
    conclave_keygen::sharefile::write_atomic(path, text.as_bytes(), &mut rand::rngs::OsRng)
        .with_context(|| format!("cannot write the freeze file {}", path.display()))
}

fn describe_freeze(f: &Freeze) -> String {
    if f.all {
        "all groups".into()
    } else if f.groups.is_empty() {
        "nothing".into()
    } else {
        f.groups
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The freeze state after `freeze` (true) or `unfreeze` of `group` (None: all).
fn apply_freeze(mut f: Freeze, freeze: bool, group: Option<&GroupName>) -> Freeze {
    match (freeze, group) {
        (true, None) => f.all = true,
        (true, Some(g)) => {
            f.groups.insert(g.clone());
        }
        (false, None) => f = Freeze::default(),
        (false, Some(g)) => {
            f.groups.remove(g);
        }
    }
    f
}

// ----- the control socket ------------------------------------------------------------------

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum ControlRequest {
    Reload,
    Freeze {
        group: Option<GroupName>,
        reason: Option<String>,
    },
    Unfreeze {
        group: Option<GroupName>,
        reason: Option<String>,
    },
    Status,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ControlReply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen: Option<Freeze>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<(GroupName, u64)>,
}

impl ControlReply {
    fn error(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

type Handler = Arc<
    dyn Fn(
            ControlRequest,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControlReply> + Send>>
        + Send
        + Sync,
>;

/// Serves the control socket: one JSON request per connection, from this uid or root only.
fn serve_control(path: &Path, handler: Handler) -> anyhow::Result<()> {
    let listener =
        crate::agent::bind(path).with_context(|| format!("control socket {}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            if uid != Some(me) && uid != Some(0) {
                tracing::warn!(?uid, "control connection from another user refused");
                continue;
            }
            let handler = handler.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(
                    read,
                    MAX_CONTROL_REQUEST,
                ));
                let reply = match tokio::time::timeout(
                    Duration::from_secs(10),
                    reader.read_line(&mut line),
                )
                .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(line.trim()) {
                        Ok(req) => handler(req).await,
                        Err(e) => ControlReply::error(format!("bad control request: {e}")),
                    },
                    _ => ControlReply::error("no control request"),
                };
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                let _ = write.write_all(&out).await;
            });
        }
    });
    Ok(())
}

/// Sends one request to a daemon's control socket. `Ok(None)`: no daemon listens there.
async fn control(path: &Path, request: &ControlRequest) -> anyhow::Result<Option<ControlReply>> {
    let stream = match tokio::net::UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot connect to the control socket {}",
                path.display()
            )))
        }
    };
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(request)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_CONTROL_REQUEST));
    tokio::time::timeout(CONTROL_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| anyhow!("the daemon did not answer within {CONTROL_TIMEOUT:?}"))??;
    let reply = serde_json::from_str(line.trim())
        .with_context(|| "the daemon's answer is not a control reply".to_owned())?;
    Ok(Some(reply))
}

// ----- the participant ---------------------------------------------------------------------

/// Everything a participant reads from its files.
struct LoadedParticipant {
    cfg: ParticipantConfig,
    identity: IdentityKey,
    coordinators: HashSet<NodeId>,
    shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
    policy: conclave_policy::Policy,
    sources: Sources,
    /// Files of `shares_dir` that could not be served, each with why (the others serve).
    problems: Vec<String>,
}

/// Where one served share was read from.
#[derive(Clone)]
struct ShareSource {
    file: PathBuf,
    /// Format 1: where its passphrase comes from (`None`: the node's sources).
    passphrase_file: Option<PathBuf>,
    /// Format 2: sealed to the keystore.
    sealed: bool,
}

/// The share files served, by group and epoch, and how to open them again (the share cache
/// TTL drops a share from memory and reads it again on its next request).
#[derive(Clone, Default)]
struct Sources {
    mode: Mode,
    by_group: HashMap<(GroupName, u64), ShareSource>,
    /// Kept open only with a share cache TTL (a dropped share is read again without an
    /// Argon2id); without one it is closed once the shares are loaded.
    keystore: Option<Arc<Keystore>>,
}

/// Argon2id parameters a format-1 file in `shares_dir` may bring: bounded above (a planted
/// file must not make the node allocate a GiB or spin), and no cheaper than the standard cost
/// outside dev mode.
fn kdf_acceptable(k: &conclave_keygen::KdfParams, mode: Mode) -> bool {
    let bounded = k.memory_kib <= 256 * 1024 && k.iterations <= 8 && k.parallelism <= 4;
    let strong = mode == Mode::Dev || (k.memory_kib >= 64 * 1024 && k.iterations >= 3);
    bounded && strong
}

/// Largest number of files read from `shares_dir` or `manifests_dir`.
const MAX_DIR_FILES: usize = 100_000;

/// The regular files of `dir` whose names end in `suffix` (hidden files, temp files and
/// pending ceremony files excluded), sorted by name.
pub(crate) fn dir_files(dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot read the directory {}", dir.display()))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(suffix) {
            continue;
        }
        if !e.path().is_file() {
            continue;
        }
        files.push(e.path());
        if files.len() > MAX_DIR_FILES {
            bail!(
                "{} holds more than {MAX_DIR_FILES} {suffix} files",
                dir.display()
            );
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and checks the participant's files. `attended`: a passphrase may be typed (start-up
/// on a terminal); a reload never prompts.
fn load_participant(path: &Path, attended: bool) -> anyhow::Result<LoadedParticipant> {
    let cfg = ParticipantConfig::read(path)?;
    crate::commands::enforce(&crate::checks::participant(path, &cfg))?;
    let identity = IdentityKey::read_from(&cfg.identity).context("cannot load the identity key")?;
    let coordinators = config::node_ids(&cfg.coordinators, "coordinators")?;
    let me = identity.node_id();
    // The node passphrase: asked at most once, dropped once the shares are read.
    let mut node_pass: Option<conclave_keygen::Passphrase> = None;
    let node_passphrase = |what: &str| -> anyhow::Result<conclave_keygen::Passphrase> {
        if attended {
            passphrase::obtain(cfg.passphrase_file.as_deref(), cfg.mode, what, false)
        } else {
            passphrase::obtain_unattended(cfg.passphrase_file.as_deref(), cfg.mode, what)
        }
    };
    let keystore = match &cfg.keystore {
        None => None,
        Some(k) => {
            let pass = node_passphrase(&format!("the keystore {}", k.display()))?;
            let ks = Keystore::open(k, &pass)?;
            if ks.header().owner != me {
                bail!(
                    "keystore {} belongs to the node {}, not to this node {}",
                    k.display(),
                    ks.header().owner.short(),
                    me.short()
                );
            }
            node_pass = Some(pass);
            tracing::info!(keystore = %k.display(), public_key = %ks.public_key(), "keystore open");
            Some(ks)
        }
    };
    let mut sources = Sources {
        mode: cfg.mode,
        ..Default::default()
    };
    let mut shares = ServedShares::new(me);
    let mut listed = HashSet::new();
    for entry in &cfg.shares {
        let header = ShareFile::inspect(&entry.file)?;
        let sealed = header.keystore().is_some();
        if cfg.share_cache_ttl.is_some()
            && !sealed
            && !passphrase::unattended_source(entry.passphrase_file.as_deref(), cfg.mode)
        {
            bail!(
                "share_cache_ttl needs every share's passphrase from a file or a systemd credential (it is decrypted again later, with nobody at a terminal): {} has none",
                entry.file.display()
            );
        }
        let share = if sealed {
            let keys = Keys {
                passphrase: None,
                keystore: keystore.as_ref(),
            };
            ShareFile::read_with(&entry.file, keys)?
        } else {
            read_share(entry, cfg.mode, attended)?
        };
        let (group, epoch) = (share.header.group.clone(), share.header.epoch);
        shares.add(&entry.file, share)?;
        tracing::info!(%group, epoch, "loaded share {}", entry.file.display());
        listed.insert(std::fs::canonicalize(&entry.file).unwrap_or_else(|_| entry.file.clone()));
        sources.by_group.insert(
            (group, epoch),
            ShareSource {
                file: entry.file.clone(),
                passphrase_file: entry.passphrase_file.clone(),
                sealed,
            },
        );
    }
    let mut problems = Vec::new();
    if let Some(dir) = &cfg.shares_dir {
        let mut candidates: Vec<(PathBuf, ShareFile, bool)> = Vec::new();
        let (mut sealed_seen, mut keystore_misses) = (0usize, 0usize);
        for file in dir_files(dir, ".share")? {
            if listed.contains(&std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone())) {
                continue;
            }
            let header = match ShareFile::inspect(&file) {
                Ok(h) => h,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let sealed = header.keystore().is_some();
            if sealed {
                sealed_seen += 1;
            } else {
                // A file that brings its own Argon2id parameters: beside a keystore it has no
                // business here (and would turn the directory into a passphrase oracle);
                // without one, only sane costs are run.
                if keystore.is_some() {
                    problems.push(format!(
                        "{}: encrypted under its own passphrase (format 1) beside the node keystore: seal it to the keystore with `conclave share migrate`",
                        file.display()
                    ));
                    continue;
                }
                if let Some(k) = header.kdf().filter(|k| !kdf_acceptable(k, cfg.mode)) {
                    problems.push(format!(
                        "{}: Argon2id parameters ({} KiB, {} passes, {} lanes) outside what shares_dir accepts (at most 256 MiB, 8 passes, 4 lanes; at least 64 MiB and 3 passes outside dev mode)",
                        file.display(),
                        k.memory_kib,
                        k.iterations,
                        k.parallelism
                    ));
                    continue;
                }
                if cfg.share_cache_ttl.is_some()
                    && !passphrase::unattended_source(cfg.passphrase_file.as_deref(), cfg.mode)
                {
                    problems.push(format!(
                        "{}: share_cache_ttl needs the node passphrase from a file or a systemd credential (the share is decrypted again with nobody at a terminal)",
                        file.display()
                    ));
                    continue;
                }
                if node_pass.is_none() {
                    match node_passphrase(&format!("the format-1 share files in {}", dir.display()))
                    {
                        Ok(p) => node_pass = Some(p),
                        Err(e) => {
                            problems.push(format!("{}: {e:#}", file.display()));
                            continue;
                        }
                    }
                }
            }
            let keys = Keys {
                passphrase: node_pass.as_ref(),
                keystore: keystore.as_ref(),
            };
            match ShareFile::read_with(&file, keys) {
                Ok(share) => candidates.push((file, share, sealed)),
                Err(e) => {
                    if matches!(
                        e.kind,
                        conclave_keygen::ShareErrorKind::NeedsKeystore(_)
                            | conclave_keygen::ShareErrorKind::OtherKeystore { .. }
                    ) {
                        keystore_misses += 1;
                    }
                    problems.push(e.to_string());
                }
            }
        }
        if sealed_seen > 0 && keystore_misses == sealed_seen {
            bail!(
                "none of the {sealed_seen} share files of {} sealed to a keystore opens with {}: is `keystore` this node's? ({})",
                dir.display(),
                cfg.keystore
                    .as_ref()
                    .map_or("no keystore configured".to_owned(), |k| format!("the keystore {}", k.display())),
                problems.last().cloned().unwrap_or_default()
            );
        }
        // A group and epoch with two files (two shares, or a planted one): none of them is
        // served from the directory, whichever sorts first.
        let mut count: HashMap<(GroupName, u64), usize> = HashMap::new();
        for (_, share, _) in &candidates {
            *count
                .entry((share.header.group.clone(), share.header.epoch))
                .or_default() += 1;
        }
        let mut loaded = 0usize;
        for (file, share, sealed) in candidates {
            let key = (share.header.group.clone(), share.header.epoch);
            if let Some(first) = sources.by_group.get(&key) {
                problems.push(format!(
                    "{}: group {} epoch {} is already served from {} ([[shares]]): not served from the directory",
                    file.display(),
                    key.0,
                    key.1,
                    first.file.display()
                ));
                continue;
            }
            let n = count.get(&key).copied().unwrap_or(0);
            if n > 1 {
                problems.push(format!(
                    "{}: group {} epoch {} has {n} share files in {}: none of them is served (remove the wrong one)",
                    file.display(),
                    key.0,
                    key.1,
                    dir.display()
                ));
                continue;
            }
            if let Err(e) = shares.add(&file, share) {
                problems.push(e.to_string());
                continue;
            }
            loaded += 1;
            sources.by_group.insert(
                key,
                ShareSource {
                    file,
                    passphrase_file: cfg.passphrase_file.clone(),
                    sealed,
                },
            );
        }
        tracing::info!(dir = %dir.display(), loaded, not_served = problems.len(), "loaded the shares of shares_dir");
    }
    if sources.by_group.is_empty() {
        bail!(
            "no share to serve{}",
            if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        );
    }
    drop(node_pass);
    if cfg.share_cache_ttl.is_some() {
        sources.keystore = keystore.map(Arc::new);
    }
    let policy = conclave_policy::Policy::read(&cfg.policy)?;
    Ok(LoadedParticipant {
        cfg,
        identity,
        coordinators,
        shares: shares.into_inner(),
        policy,
        sources,
        problems,
    })
}

fn read_share(entry: &ShareEntry, mode: Mode, attended: bool) -> anyhow::Result<ShareFile> {
    let what = entry.file.display().to_string();
    let pass = if attended {
        passphrase::obtain(entry.passphrase_file.as_deref(), mode, &what, false)?
    } else {
        passphrase::obtain_unattended(entry.passphrase_file.as_deref(), mode, &what)?
    };
    Ok(ShareFile::read(&entry.file, &pass)?)
}

/// The share sources the TTL decrypts from (replaced on each reload).
type SharedSources = Arc<Mutex<Sources>>;

fn share_loader(sources: SharedSources) -> ShareLoader {
    Arc::new(move |group: &GroupName, epoch: u64| {
        let (mode, source, keystore) = sources
            .lock()
            .map(|s| {
                (
                    s.mode,
                    s.by_group.get(&(group.clone(), epoch)).cloned(),
                    s.keystore.clone(),
                )
            })
            .map_err(|_| "share sources poisoned".to_owned())?;
        let Some(source) = source else {
            return Err(format!(
                "no share file of group {group} at epoch {epoch} in the config"
            ));
        };
        let share = if source.sealed {
            let keys = Keys {
                passphrase: None,
                keystore: keystore.as_deref(),
            };
            ShareFile::read_with(&source.file, keys).map_err(|e| e.to_string())?
        } else {
            let entry = ShareEntry {
                file: source.file,
                passphrase_file: source.passphrase_file,
            };
            read_share(&entry, mode, false).map_err(|e| format!("{e:#}"))?
        };
        if share.header.group != *group || share.header.epoch != epoch {
            return Err(format!(
                "the share file of group {group} at epoch {epoch} now holds another share: reload"
            ));
        }
        Ok(share.key_package.clone())
    })
}

/// What the running participant keeps to reload itself.
struct ParticipantDaemon {
    config_path: PathBuf,
    handle: ParticipantHandle,
    sources: SharedSources,
    /// What a reload cannot change without a restart.
    started: StartedParticipant,
    freeze_file: PathBuf,
    metrics: Option<Arc<Metrics>>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    /// One freeze or unfreeze at a time (never waiting behind a reload's decryption).
    freezing: tokio::sync::Mutex<()>,
}

#[derive(Clone, PartialEq, Eq)]
struct StartedParticipant {
    identity: NodeId,
    listen: std::net::SocketAddr,
    audit_log: PathBuf,
    audit_fsync: bool,
    metrics_listen: Option<std::net::SocketAddr>,
    share_cache_ttl: Option<u64>,
    max_outstanding_nonces: Option<usize>,
    max_total_nonces: Option<usize>,
    control_socket: PathBuf,
    freeze_file: PathBuf,
}

impl StartedParticipant {
    fn of(cfg: &ParticipantConfig, identity: NodeId) -> Self {
        Self {
            identity,
            listen: cfg.listen,
            audit_log: cfg.audit_log.clone(),
            audit_fsync: cfg.audit_fsync,
            metrics_listen: cfg.metrics_listen,
            share_cache_ttl: cfg.share_cache_ttl,
            max_outstanding_nonces: cfg.max_outstanding_nonces,
            max_total_nonces: cfg.max_total_nonces,
            control_socket: cfg.control_socket(),
            freeze_file: cfg.freeze_file(),
        }
    }

    /// What differs and needs a restart.
    fn restart_needed(&self, new: &Self) -> Vec<String> {
        let mut w = Vec::new();
        let mut diff = |changed: bool, what: &str| {
            if changed {
                w.push(format!("{what} changed: takes effect at the next restart"));
            }
        };
        diff(self.listen != new.listen, "listen");
        diff(self.audit_log != new.audit_log, "audit_log");
        diff(self.audit_fsync != new.audit_fsync, "audit_fsync");
        diff(self.metrics_listen != new.metrics_listen, "metrics_listen");
        diff(
            self.share_cache_ttl != new.share_cache_ttl,
            "share_cache_ttl",
        );
        diff(
            self.max_outstanding_nonces != new.max_outstanding_nonces,
            "max_outstanding_nonces",
        );
        diff(
            self.max_total_nonces != new.max_total_nonces,
            "max_total_nonces",
        );
        diff(self.control_socket != new.control_socket, "control_socket");
        diff(self.freeze_file != new.freeze_file, "freeze_file");
        w
    }
}

/// Counts, logs and tells systemd how a reload ended (READY=1 also after a refusal: the old
/// state serves).
fn finish_reload(metrics: &Option<Arc<Metrics>>, reply: ControlReply) -> ControlReply {
    if let Some(m) = metrics {
        m.reloads
            .get_or_create(&ResultLabel {
                result: if reply.ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }
    if reply.ok {
        tracing::info!(changes = ?reply.changes, "reloaded");
        for w in &reply.warnings {
            tracing::warn!("{w}");
        }
    } else {
        tracing::error!(
            error = reply.error.as_deref().unwrap_or(""),
            "reload refused: still serving the previous files"
        );
    }
    notify(&[sd_notify::NotifyState::Ready]);
    reply
}

impl ParticipantDaemon {
    async fn reload(&self) -> ControlReply {
        let _one = self.busy.lock().await;
        notify_reloading();
        let path = self.config_path.clone();
        // Decrypting is slow (Argon2): off the runtime, and outside the state's lock, so
        // requests keep being answered meanwhile.
        let loaded = tokio::task::spawn_blocking(move || load_participant(&path, false))
            .await
            .map_err(|_| anyhow!("the reload task failed"))
            .and_then(|r| r);
        let reply = match loaded {
            Err(e) => ControlReply::error(format!("{e:#}")),
            Ok(l) if l.identity.node_id() != self.started.identity => ControlReply::error(
                "the identity key changed: a node's identity changes only with a restart",
            ),
            Ok(l) => {
                let mut warnings = self
                    .started
                    .restart_needed(&StartedParticipant::of(&l.cfg, l.identity.node_id()));
                for p in &l.problems {
                    tracing::error!("share not served: {p}");
                    warnings.push(format!("share not served: {p}"));
                }
                let sources = l.sources;
                // The freeze file may have been written while the control socket did not answer
                // (`conclave freeze` then writes it alone): a reload applies what it adds.
                let _freezing = self.freezing.lock().await;
                match read_freeze(&self.freeze_file) {
                    Ok(on_disk) if !on_disk.is_empty() => {
                        let mut now = self.handle.freeze();
                        let before = now.clone();
                        now.all |= on_disk.all;
                        now.groups.extend(on_disk.groups);
                        if now != before {
                            tracing::warn!(frozen = %describe_freeze(&now), "freeze file adds frozen groups: applied");
                            self.handle.set_freeze(now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "freeze file unreadable: the freeze in memory stays as it is")
                    }
                }
                match self.handle.reload(ParticipantUpdate {
                    shares: l.shares,
                    policy: l.policy,
                    coordinators: l.coordinators,
                }) {
                    Ok(changes) => {
                        if let Ok(mut s) = self.sources.lock() {
                            *s = sources;
                        }
                        let mut lines = Vec::new();
                        let fmt = |(g, e): &(GroupName, u64)| format!("{g}@{e}");
                        for (what, list) in [
                            ("added", &changes.added),
                            ("removed", &changes.removed),
                            ("replaced", &changes.replaced),
                            ("kept", &changes.kept),
                        ] {
                            if list.len() > 20 {
                                lines.push(format!("shares {what}: {} groups", list.len()));
                            } else if !list.is_empty() {
                                lines.push(format!(
                                    "shares {what}: {}",
                                    list.iter().map(fmt).collect::<Vec<_>>().join(", ")
                                ));
                            }
                        }
                        lines.push("policy and coordinator list re-read".into());
                        ControlReply {
                            ok: true,
                            changes: lines,
                            warnings,
                            groups: self.handle.groups(),
                            ..Default::default()
                        }
                    }
                    Err(e) => ControlReply::error(e),
                }
            }
        };
        let mut record =
            Decision::new("reload", if reply.ok { "ok" } else { "refused:bad_config" });
        record.detail = Some(if reply.ok {
            reply.changes.join("; ")
        } else {
            reply.error.clone().unwrap_or_default()
        });
        if let Err(e) = self.handle.record(record) {
            tracing::error!(error = %e, "cannot write the audit record of the reload");
        }
        finish_reload(&self.metrics, reply)
    }

    async fn freeze(
        &self,
        freeze: bool,
        group: Option<GroupName>,
        reason: Option<String>,
    ) -> ControlReply {
        let _one = self.freezing.lock().await;
        let before = self.handle.freeze();
        let after = apply_freeze(before.clone(), freeze, group.as_ref());
        let persisted = write_freeze(&self.freeze_file, &after);
        if let Err(e) = &persisted {
            if !freeze {
                // Unfreezing only once it is on disk: a restart must not undo a freeze quietly,
                // nor a failed write undo an unfreeze's opposite.
                return ControlReply::error(format!(
                    "{e:#}: still frozen ({})",
                    describe_freeze(&before)
                ));
            }
        }
        // Freezing applies at once, persisted or not (failing towards refusing).
        self.handle.set_freeze(after.clone());
        let mut record = Decision::new(if freeze { "freeze" } else { "unfreeze" }, "ok");
        record.group = group.as_ref().map(|g| g.to_string());
        record.detail = Some(format!(
            "frozen now: {}{}",
            describe_freeze(&after),
            reason
                .as_deref()
                .map(|r| format!("; reason: {}", printable(r)))
                .unwrap_or_default()
        ));
        let audit = self.handle.record(record);
        let mut warnings = Vec::new();
        if !freeze && group.is_some() && after.all {
            warnings.push("every group is frozen (`freeze` without --group): `unfreeze` without --group lifts it".into());
        }
        if let Err(e) = persisted {
            warnings.push(format!(
                "frozen in memory but NOT persisted ({e:#}): a restart would lose it"
            ));
        }
        if let Err(e) = audit {
            warnings.push(format!("cannot write the audit record: {e}"));
        }
        tracing::warn!(frozen = %describe_freeze(&after), "{}", if freeze { "frozen by the operator" } else { "unfrozen by the operator" });
        ControlReply {
            ok: true,
            frozen: Some(after),
            warnings,
            ..Default::default()
        }
    }
}

/// Only printable ASCII of an operator's free text goes into records.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

fn harden() {
    // Before any secret is read: no core dumps, memory locked if the limits allow.
    let hardening = conclave_transport::hygiene::harden_process();
    if hardening.core_dumps_disabled {
        tracing::info!(
            memory_locked = hardening.memory_locked,
            "core dumps disabled"
        );
    }
    for problem in &hardening.problems {
        tracing::warn!("{problem}");
    }
}

/// Starts the metrics endpoint when the config asks for one; its address is printed after
/// the "listening on" line (scripts read that line first).
async fn start_metrics(
    listen: Option<std::net::SocketAddr>,
    role: &str,
) -> anyhow::Result<(Option<Arc<Metrics>>, Option<std::net::SocketAddr>)> {
    let Some(listen) = listen else {
        return Ok((None, None));
    };
    let metrics = Metrics::new(role);
    let addr = conclave_transport::metrics::serve(listen, metrics.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {listen}"))?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok((Some(metrics), Some(addr)))
}

fn print_listening(line: String, metrics: Option<std::net::SocketAddr>) -> std::io::Result<()> {
    println!("{line}");
    if let Some(addr) = metrics {
        println!("metrics on http://{addr}/metrics");
    }
    std::io::stdout().flush()
}

/// SIGHUP → the same reload as `conclave reload`.
fn on_sighup<F, Fut>(reload: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            reload().await;
        }
    });
    Ok(())
}

pub(crate) async fn run_participant(path: &Path) -> CmdResult {
    harden();
    #[cfg(unix)]
    let _file_size_limit = conclave_transport::hygiene::survive_file_size_limit();
    let config_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let loaded = load_participant(&config_path, true)?;
    let LoadedParticipant {
        cfg,
        identity,
        coordinators,
        shares,
        policy,
        sources,
        problems,
    } = loaded;
    for p in &problems {
        tracing::error!("share not served: {p}");
    }
    tracing::info!(
        shares = shares.len(),
        not_served = problems.len(),
        "shares loaded"
    );
    let freeze_file = cfg.freeze_file();
    let freeze = read_freeze(&freeze_file)?;
    if !freeze.is_empty() {
        tracing::warn!(frozen = %describe_freeze(&freeze), file = %freeze_file.display(), "starting frozen (conclave unfreeze to lift it)");
    }
    tracing::info!(policy = %cfg.policy.display(), clients = ?policy.clients(), "policy loaded");
    let audit = config::open_audit_log(&cfg.audit_log, &identity, cfg.audit_fsync)?;
    tracing::info!(audit_log = %cfg.audit_log.display(), fsync = cfg.audit_fsync, "audit log open");
    let defaults = conclave_participant::ParticipantConfig::default();
    let sm_config = conclave_participant::ParticipantConfig {
        share_cache_ttl: cfg.share_cache_ttl.map(Duration::from_secs),
        max_outstanding: cfg
            .max_outstanding_nonces
            .unwrap_or(defaults.max_outstanding),
        max_total_nonces: cfg.max_total_nonces.unwrap_or(defaults.max_total_nonces),
        ..defaults
    };
    let mut participant = conclave_participant::Participant::new(
        shares,
        sm_config,
        policy,
        Box::new(audit),
        &mut rand::rngs::OsRng,
    );
    participant.set_freeze(freeze);
    crate::faults::FaultPlan::from_env().apply_participant(&mut participant);
    let (metrics, metrics_addr) = start_metrics(cfg.metrics_listen, "participant").await?;
    let sources: SharedSources = Arc::new(Mutex::new(sources));
    let mut server =
        conclave_transport::participant::Server::bind(&identity, cfg.listen, coordinators)?
            .with_share_loader(share_loader(sources.clone()));
    if let Some(m) = &metrics {
        server = server.with_metrics(m.clone());
    }
    let handle = server.handle_for(participant);
    let daemon = Arc::new(ParticipantDaemon {
        config_path,
        handle: handle.clone(),
        sources,
        started: StartedParticipant::of(&cfg, identity.node_id()),
        freeze_file,
        metrics,
        busy: tokio::sync::Mutex::new(()),
        freezing: tokio::sync::Mutex::new(()),
    });
    let control_path = cfg.control_socket();
    {
        let daemon = daemon.clone();
        serve_control(
            &control_path,
            Arc::new(move |req| {
                let daemon = daemon.clone();
                Box::pin(async move {
                    match req {
                        ControlRequest::Reload => daemon.reload().await,
                        ControlRequest::Freeze { group, reason } => {
                            daemon.freeze(true, group, reason).await
                        }
                        ControlRequest::Unfreeze { group, reason } => {
                            daemon.freeze(false, group, reason).await
                        }
                        ControlRequest::Status => ControlReply {
                            ok: true,
                            frozen: Some(daemon.handle.freeze()),
                            groups: daemon.handle.groups(),
                            ..Default::default()
                        },
                    }
                })
            }),
        )?;
    }
    {
        let daemon = daemon.clone();
        on_sighup(move || {
            let daemon = daemon.clone();
            async move {
                daemon.reload().await;
            }
        })?;
    }
    tracing::info!(mode = %cfg.mode, control = %control_path.display(), "participant starting");
    let addr = server.local_addr()?;
    print_listening(
        format!("participant {} listening on {addr}", identity.node_id()),
        metrics_addr,
    )?;
    notify(&[sd_notify::NotifyState::Ready]);
    let clean = server
        .run_with(handle, drain_signal(cfg.drain_grace()))
        .await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!(clean, "participant stopped");
    if clean {
        Ok(())
    } else {
        Err(Exit::silent(EXIT_DRAIN_INCOMPLETE))
    }
}

// ----- the coordinator ---------------------------------------------------------------------

struct LoadedCoordinator {
    cfg: config::CoordinatorConfig,
    identity: IdentityKey,
    clients: HashSet<NodeId>,
    manifests: Vec<GroupManifest>,
    addresses: HashMap<NodeId, String>,
    policy: Option<conclave_policy::Policy>,
    sm_config: conclave_coordinator::CoordinatorConfig,
    /// Files of `manifests_dir` that could not be served, each with why.
    problems: Vec<String>,
}

/// Records each member's address; two manifests that give one node two addresses are
/// reported (the first read is dialled: `manifests` before `manifests_dir`, then name order),
/// so that a manifest cannot quietly send the coordinator's connections elsewhere.
fn note_addresses(
    addresses: &mut HashMap<NodeId, (String, PathBuf)>,
    members: Vec<conclave_keygen::Member>,
    source: &Path,
    problems: &mut Vec<String>,
) {
    for p in members {
        match addresses.get(&p.node_id) {
            Some((addr, first)) if *addr != p.address => problems.push(format!(
                "{}: gives node {} ({}) the address {}, but {} gives {}: dialling {}",
                source.display(),
                p.node_id.short(),
                p.name,
                p.address,
                first.display(),
                addr,
                addr
            )),
            Some(_) => {}
            None => {
                addresses.insert(p.node_id, (p.address, source.to_path_buf()));
            }
        }
    }
}

fn load_coordinator(path: &Path) -> anyhow::Result<LoadedCoordinator> {
    let cfg = config::CoordinatorConfig::read(path)?;
    crate::commands::enforce(&crate::checks::coordinator(path, &cfg))?;
    let identity = IdentityKey::read_from(&cfg.identity).context("cannot load the identity key")?;
    let clients = config::node_ids(&cfg.clients, "clients")?;
    let mut manifests = Vec::new();
    let mut addresses: HashMap<NodeId, (String, PathBuf)> = HashMap::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<GroupName, PathBuf> = HashMap::new();
    for m in &cfg.manifests {
        let manifest =
            GroupManifest::read(m).with_context(|| format!("manifest {}", m.display()))?;
        let members = manifest
            .members()
            .with_context(|| format!("manifest {}", m.display()))?;
        if let Some(first) = seen.insert(manifest.group.clone(), m.clone()) {
            bail!(
                "manifests {} and {} are both for group {}: list one epoch per group",
                first.display(),
                m.display(),
                manifest.group
            );
        }
        note_addresses(&mut addresses, members, m, &mut problems);
        manifests.push(manifest);
    }
    if let Some(dir) = &cfg.manifests_dir {
        let listed: HashSet<PathBuf> = cfg
            .manifests
            .iter()
            .map(|m| std::fs::canonicalize(m).unwrap_or_else(|_| m.clone()))
            .collect();
        let mut from_dir: std::collections::BTreeMap<
            GroupName,
            (GroupManifest, PathBuf, Vec<conclave_keygen::Member>),
        > = Default::default();
        for m in dir_files(dir, ".toml")? {
            if listed.contains(&std::fs::canonicalize(&m).unwrap_or_else(|_| m.clone())) {
                continue;
            }
            let read = GroupManifest::read(&m)
                .map_err(anyhow::Error::from)
                .and_then(|manifest| {
                    let members = manifest.members()?;
                    // Checked here too, so that one bad file is skipped, not the whole set.
                    manifest.public_key_package()?;
                    Ok((manifest, members))
                });
            match read {
                Err(e) => problems.push(format!("{}: {e:#}", m.display())),
                Ok((manifest, _)) if seen.contains_key(&manifest.group) => {
                    problems.push(format!(
                        "{}: group {} is already listed in manifests ({})",
                        m.display(),
                        manifest.group,
                        seen.get(&manifest.group)
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                }
                Ok((manifest, members)) => match from_dir.get(&manifest.group) {
                    // Two epochs of a group in the directory (a rotation's new manifest
                    // beside the old one): the newest is served.
                    Some((old, old_path, _)) if old.epoch >= manifest.epoch => {
                        problems.push(format!(
                            "{}: group {} epoch {} is superseded by epoch {} ({}): not served",
                            m.display(),
                            manifest.group,
                            manifest.epoch,
                            old.epoch,
                            old_path.display()
                        ))
                    }
                    previous => {
                        if let Some((old, old_path, _)) = previous {
                            problems.push(format!(
                                "{}: group {} epoch {} is superseded by epoch {} ({}): not served",
                                old_path.display(),
                                old.group,
                                old.epoch,
                                manifest.epoch,
                                m.display()
                            ));
                        }
                        from_dir.insert(manifest.group.clone(), (manifest, m.clone(), members));
                    }
                },
            }
        }
        for (_, (manifest, path, members)) in from_dir {
            note_addresses(&mut addresses, members, &path, &mut problems);
            manifests.push(manifest);
        }
        tracing::info!(dir = %dir.display(), loaded = manifests.len(), skipped = problems.len(), "read the manifests of manifests_dir");
    }
    if manifests.is_empty() {
        bail!(
            "no group to serve: every manifest was refused ({})",
            problems.join("; ")
        );
    }
    let defaults = conclave_coordinator::CoordinatorConfig::default();
    let sm_config = conclave_coordinator::CoordinatorConfig {
        participant_timeout: cfg
            .participant_timeout_ms
            .map_or(defaults.participant_timeout, Duration::from_millis),
        min_participant_timeout: cfg
            .min_participant_timeout_ms
            .map_or(defaults.min_participant_timeout, Duration::from_millis),
        default_timeout: cfg
            .default_timeout_ms
            .map_or(defaults.default_timeout, Duration::from_millis),
        pool_target: cfg.pool_target.unwrap_or(defaults.pool_target),
        pool_idle: cfg.pool_idle.unwrap_or(defaults.pool_idle),
        ..defaults
    };
    let policy = match &cfg.policy {
        Some(p) => Some(conclave_policy::Policy::read(p)?),
        None => None,
    };
    Ok(LoadedCoordinator {
        cfg,
        identity,
        clients,
        manifests,
        addresses: addresses.into_iter().map(|(n, (a, _))| (n, a)).collect(),
        policy,
        sm_config,
        problems,
    })
}

struct CoordinatorDaemon {
    config_path: PathBuf,
    handle: CoordinatorHandle,
    identity: NodeId,
    listen: std::net::SocketAddr,
    metrics: Option<Arc<Metrics>>,
    busy: tokio::sync::Mutex<()>,
}

impl CoordinatorDaemon {
    async fn reload(&self) -> ControlReply {
        let _one = self.busy.lock().await;
        notify_reloading();
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || load_coordinator(&path))
            .await
            .map_err(|_| anyhow!("the reload task failed"))
            .and_then(|r| r);
        let reply = match loaded {
            Err(e) => ControlReply::error(format!("{e:#}")),
            Ok(l) if l.identity.node_id() != self.identity => ControlReply::error(
                "the identity key changed: a node's identity changes only with a restart",
            ),
            Ok(l) => {
                let mut warnings = Vec::new();
                for p in &l.problems {
                    tracing::error!("manifest not served: {p}");
                    warnings.push(format!("manifest not served: {p}"));
                }
                if l.cfg.listen != self.listen {
                    warnings.push("listen changed: takes effect at the next restart".into());
                }
                let update = CoordinatorUpdate {
                    manifests: l.manifests,
                    addresses: l.addresses,
                    clients: l.clients,
                    policy: l.policy,
                    config: l.sm_config,
                };
                match self.handle.reload(update).await {
                    Ok(s) => {
                        let mut changes = Vec::new();
                        for (g, old, new) in &s.changed {
                            changes.push(format!("group {g}: epoch {old} -> {new} (sessions begun on {old} finish on it)"));
                        }
                        for g in &s.added {
                            changes.push(format!("group {g}: added"));
                        }
                        for g in &s.removed {
                            changes.push(format!("group {g}: no longer served"));
                        }
                        if s.unchanged.len() > 20 {
                            changes.push(format!("{} groups unchanged", s.unchanged.len()));
                        } else {
                            for g in &s.unchanged {
                                changes.push(format!("group {g}: unchanged"));
                            }
                        }
                        changes.push("policy and client list re-read".into());
                        ControlReply {
                            ok: true,
                            changes,
                            warnings,
                            groups: self
                                .handle
                                .groups()
                                .await
                                .into_iter()
                                .map(|g| (g.group, g.epoch))
                                .collect(),
                            ..Default::default()
                        }
                    }
                    Err(e) => ControlReply::error(e),
                }
            }
        };
        finish_reload(&self.metrics, reply)
    }
}

pub(crate) async fn run_coordinator(path: &Path) -> CmdResult {
    #[cfg(unix)]
    let _file_size_limit = conclave_transport::hygiene::survive_file_size_limit();
    let config_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let l = load_coordinator(&config_path)?;
    for p in &l.problems {
        tracing::error!("manifest not served: {p}");
    }
    if l.manifests.len() <= 20 {
        for m in &l.manifests {
            tracing::info!(group = %m.group, threshold = m.threshold, epoch = m.epoch, "serving group");
        }
    } else {
        tracing::info!(groups = l.manifests.len(), "serving groups");
    }
    let mut coordinator = conclave_coordinator::Coordinator::new(l.manifests, l.sm_config)?;
    if let Some(policy) = l.policy {
        tracing::info!(clients = ?policy.clients(), "policy loaded (early refusal; the participants decide for themselves)");
        coordinator.set_policy(Some(policy));
    }
    crate::faults::FaultPlan::from_env().apply_coordinator(&mut coordinator, &l.identity);
    let audit = config::open_audit_log(&l.cfg.audit_log, &l.identity, l.cfg.audit_fsync)?;
    let (metrics, metrics_addr) = start_metrics(l.cfg.metrics_listen, "coordinator").await?;
    let mut server =
        conclave_transport::coordinator::Server::bind(l.identity.clone(), l.cfg.listen, l.clients)?
            .with_audit(Box::new(audit));
    if let Some(m) = &metrics {
        server = server.with_metrics(m.clone());
    }
    let daemon = Arc::new(CoordinatorDaemon {
        config_path,
        handle: server.handle(),
        identity: l.identity.node_id(),
        listen: l.cfg.listen,
        metrics,
        busy: tokio::sync::Mutex::new(()),
    });
    let control_path = l.cfg.control_socket();
    {
        let daemon = daemon.clone();
        serve_control(
            &control_path,
            Arc::new(move |req| {
                let daemon = daemon.clone();
                Box::pin(async move {
                    match req {
                        ControlRequest::Reload => daemon.reload().await,
                        ControlRequest::Status => ControlReply {
                            ok: true,
                            groups: daemon
                                .handle
                                .groups()
                                .await
                                .into_iter()
                                .map(|g| (g.group, g.epoch))
                                .collect(),
                            ..Default::default()
                        },
                        ControlRequest::Freeze { .. } | ControlRequest::Unfreeze { .. } => {
                            ControlReply::error("freeze and unfreeze are participant controls: a signer freezes itself (run them on the participant's host)")
                        }
                    }
                })
            }),
        )?;
    }
    {
        let daemon = daemon.clone();
        on_sighup(move || {
            let daemon = daemon.clone();
            async move {
                daemon.reload().await;
            }
        })?;
    }
    let addr = server.local_addr()?;
    tracing::info!(mode = %l.cfg.mode, control = %control_path.display(), "coordinator starting");
    print_listening(
        format!("coordinator {} listening on {addr}", l.identity.node_id()),
        metrics_addr,
    )?;
    notify(&[sd_notify::NotifyState::Ready]);
    let stopped = server
        .run(coordinator, l.addresses, drain_signal(l.cfg.drain_grace()))
        .await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!(abandoned = stopped.abandoned, "coordinator stopped");
    if stopped.abandoned == 0 {
        Ok(())
    } else {
        Err(Exit::silent(EXIT_DRAIN_INCOMPLETE))
    }
}

// ----- the operator commands ---------------------------------------------------------------

/// Which daemon a config file belongs to, and its control socket.
fn control_socket_of(path: &Path) -> anyhow::Result<(PathBuf, bool)> {
    if let Ok(c) = ParticipantConfig::read(path) {
        return Ok((c.control_socket(), true));
    }
    match config::CoordinatorConfig::read(path) {
        Ok(c) => Ok((c.control_socket(), false)),
        Err(e) => Err(e.context(format!(
            "{} is neither a participant nor a coordinator config",
            path.display()
        ))),
    }
}

fn print_reply(reply: &ControlReply, json: bool, done: &str) {
    if json {
        println!("{}", serde_json::to_string(reply).unwrap_or_default());
        return;
    }
    if reply.ok {
        println!("{done}");
        for c in &reply.changes {
            println!("  {c}");
        }
        if let Some(f) = &reply.frozen {
            println!("  frozen: {}", describe_freeze(f));
        }
        if reply.groups.len() > 20 {
            println!(
                "  serving {} groups (--json lists them)",
                reply.groups.len()
            );
        } else {
            for (g, e) in &reply.groups {
                println!("  serving {g} at epoch {e}");
            }
        }
    }
    for w in &reply.warnings {
        eprintln!("conclave: warning: {w}");
    }
}

/// `conclave reload --config FILE`.
pub(crate) async fn reload_cmd(config: &Path, json: bool) -> CmdResult {
    let (socket, _) = control_socket_of(config)?;
    match control(&socket, &ControlRequest::Reload).await? {
        None => Err(Exit::refused(anyhow!(
            "no daemon answers on {} (is it running with this config?)",
            socket.display()
        ))),
        Some(reply) if reply.ok => {
            print_reply(&reply, json, "reloaded");
            Ok(())
        }
        Some(reply) => {
            if json {
                print_reply(&reply, true, "");
                return Err(Exit::silent(1));
            }
            Err(Exit::refused(anyhow!(
                "reload refused, the daemon goes on with its previous files: {}",
                reply.error.unwrap_or_default()
            )))
        }
    }
}

/// `conclave freeze` / `conclave unfreeze --config FILE [--group G]`.
pub(crate) async fn freeze_cmd(
    config: &Path,
    freeze: bool,
    group: Option<String>,
    reason: Option<String>,
    json: bool,
) -> CmdResult {
    let group = group
        .map(|g| GroupName::new(&g).map_err(|e| anyhow!("--group {g:?}: {e}")))
        .transpose()?;
    let cfg = ParticipantConfig::read(config).map_err(|e| {
        e.context("freeze and unfreeze take a participant's config (a signer freezes itself)")
    })?;
    let request = if freeze {
        ControlRequest::Freeze {
            group: group.clone(),
            reason: reason.clone(),
        }
    } else {
        ControlRequest::Unfreeze {
            group: group.clone(),
            reason: reason.clone(),
        }
    };
    let what = if freeze { "frozen" } else { "unfrozen" };
    match control(&cfg.control_socket(), &request).await? {
        Some(reply) if reply.ok => {
            print_reply(&reply, json, what);
            Ok(())
        }
        Some(reply) => Err(Exit::refused(anyhow!(
            "{}",
            reply.error.unwrap_or_default()
        ))),
        None => {
            // The daemon is not running: the file is the state it starts with, and this
            // command records the change in the node's audit log itself (it is free now).
            let file = cfg.freeze_file();
            let after = apply_freeze(read_freeze(&file)?, freeze, group.as_ref());
            write_freeze(&file, &after)?;
            let identity =
                IdentityKey::read_from(&cfg.identity).context("cannot load the identity key")?;
            let mut record = Decision::new(if freeze { "freeze" } else { "unfreeze" }, "ok");
            record.group = group.as_ref().map(|g| g.to_string());
            record.detail = Some(format!(
                "frozen now: {} (daemon not running){}",
                describe_freeze(&after),
                reason
                    .as_deref()
                    .map(|r| format!("; reason: {}", printable(r)))
                    .unwrap_or_default()
            ));
            let mut warnings = vec![format!(
                "no participant daemon answers on {}: written to {}, in force when it starts",
                cfg.control_socket().display(),
                file.display()
            )];
            if !freeze && group.is_some() && after.all {
                warnings.push("every group is frozen (`freeze` without --group): `unfreeze` without --group lifts it".into());
            }
            match config::open_audit_log(&cfg.audit_log, &identity, cfg.audit_fsync) {
                Ok(mut log) => {
                    if let Err(e) = conclave_audit::AuditSink::record(
                        &mut log,
                        conclave_transport::unix_now(),
                        record,
                    ) {
                        warnings.push(format!("cannot write the audit record: {e}"));
                    }
                }
                // The log is locked, or unusable: a daemon may be running without answering on
                // this socket (another control_socket, a deleted socket). Say so; never claim
                // a freeze that a running daemon does not apply.
                Err(e) => {
                    return Err(Exit::refused(anyhow!(
                        "wrote {} ({}), but no daemon answers on {} and the audit log cannot be opened ({e:#}): if a participant is running, it is NOT frozen yet; send it SIGHUP (systemctl reload conclave-participant), which applies the file, or restart it",
                        file.display(),
                        describe_freeze(&after),
                        cfg.control_socket().display()
                    )))
                }
            }
            let reply = ControlReply {
                ok: true,
                frozen: Some(after),
                warnings,
                ..Default::default()
            };
            print_reply(&reply, json, what);
            Ok(())
        }
    }
}

/// Refuses a ceremony for a frozen group: checked by `dkg join` and `rotate join` against
/// the node's freeze file (`--freeze-file`, or frozen.toml beside `--audit-log`).
pub(crate) fn refuse_if_frozen(
    freeze_file: Option<&Path>,
    group: &GroupName,
) -> anyhow::Result<()> {
    let Some(file) = freeze_file else {
        return Ok(());
    };
    let freeze = read_freeze(file)?;
    if freeze.covers(group) {
        bail!(
            "this node is frozen for group {group} ({}): it takes part in no ceremony for it until `conclave unfreeze`",
            file.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_group_refuses_ceremonies_and_a_malformed_freeze_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("frozen.toml");
        let g = GroupName::new("g").unwrap();
        let h = GroupName::new("h").unwrap();
        // No file, no freeze; no file named at all, nothing checked.
        refuse_if_frozen(Some(&file), &g).unwrap();
        refuse_if_frozen(None, &g).unwrap();
        let one = apply_freeze(Freeze::default(), true, Some(&g));
        write_freeze(&file, &one).unwrap();
        assert_eq!(read_freeze(&file).unwrap(), one);
        assert!(refuse_if_frozen(Some(&file), &g).is_err());
        refuse_if_frozen(Some(&file), &h).unwrap();
        let all = apply_freeze(one, true, None);
        write_freeze(&file, &all).unwrap();
        assert!(refuse_if_frozen(Some(&file), &h).is_err());
        // Unfreezing one group of "all" leaves all frozen; unfreezing everything clears it.
        let still = apply_freeze(all.clone(), false, Some(&h));
        assert!(still.covers(&h));
        assert!(apply_freeze(all, false, None).is_empty());
        std::fs::write(&file, "all = \"yes\"\n").unwrap();
        assert!(read_freeze(&file).is_err());
        assert!(refuse_if_frozen(Some(&file), &h).is_err());
    }
}
