//! The audit log of a conclave node: one JSON line per decision, append-only and hash-chained
//! (each record holds the SHA-256 of the line before it), with periodic checkpoints signed by
//! the node's identity key, so rewriting the chain needs the key and not just access to the
//! file. Writes are fsynced per record by default and fail closed: [`AuditLog::append`]
//! returns an error, and the caller refuses what it was about to do. Files rotate by size
//! (`audit.log` -> `audit.log.1`, `.2`, ...) and the chain continues across them. The latest
//! checkpoint is also kept beside the log (`<log>.checkpoint`), so truncating the log before
//! it is detected.
//!
//! No runtime, no clock: time is passed in. No secret and no message body belongs in a record
//! (digests and names only).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use conclave_protocol::{IdentityKey, NodeId};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest audit line read (a record is a few hundred bytes).
pub const MAX_LINE: usize = 16 * 1024;
/// Largest audit file read by [`verify`] (rotation keeps files far below this).
pub const MAX_FILE: u64 = 1 << 30;
const CHECKPOINT_DOMAIN: &[u8] = b"conclave-audit/checkpoint/v1\0";

/// One decision of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What was decided: "signed", "refused", "ceremony", ...
    pub action: String,
    /// Why, for a refusal (a code), or the outcome, for a ceremony.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Fingerprint of the client's identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The message kind ("raw", "sshsig:git", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// SHA-256 (hex) of the message: never the message itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Ceremonies: the plan fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// What else was recognised (for `ssh-auth`: the user and the key's fingerprint; for the
    /// coordinator: the signers), printable text only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Decision {
    /// A decision with only its action and result set.
    pub fn new(action: &str, result: &str) -> Self {
        Self {
            action: action.to_owned(),
            result: result.to_owned(),
            client: None,
            client_key: None,
            group: None,
            epoch: None,
            kind: None,
            message_sha256: None,
            request_id: None,
            plan: None,
            detail: None,
        }
    }
}

/// Where a node writes its decisions. [`AuditLog`] is the file; [`MemoryAudit`] is for the
/// simulator and tests. An error means the record is not stored: the caller must not do what
/// it decided (fail closed).
pub trait AuditSink: Send {
    fn record(&mut self, now: u64, decision: Decision) -> Result<(), AuditError>;

    /// Writes the record but may leave its fsync to [`Durable::wait`], which the caller must
    /// call (and see succeed) before doing what was decided. Several records waited for
    /// together share one fsync (group commit), and the wait need not hold the caller's locks.
    /// The default writes durably at once.
    fn record_deferred(&mut self, now: u64, decision: Decision) -> Result<Durable, AuditError> {
        self.record(now, decision).map(|()| Durable::done())
    }
}

impl AuditSink for AuditLog {
    fn record(&mut self, now: u64, decision: Decision) -> Result<(), AuditError> {
        self.append(now, decision)
    }

    fn record_deferred(&mut self, now: u64, decision: Decision) -> Result<Durable, AuditError> {
        self.append_deferred(now, decision)
    }
}

/// Group commit: the fsync state shared by a log and the [`Durable`] tokens it hands out.
#[derive(Debug)]
struct Syncer {
    path: PathBuf,
    /// The file the newest lines went to (a handle on the log's file).
    file: std::sync::Mutex<File>,
    /// Lines written so far (the log's next sequence number after the last write).
    written: std::sync::atomic::AtomicU64,
    /// Lines known to be on disk.
    synced: std::sync::atomic::AtomicU64,
    /// An fsync failed: nothing written since can be trusted to be on disk.
    failed: std::sync::atomic::AtomicBool,
}

impl Syncer {
    /// Makes the first `lines` lines durable: at once if an fsync since covered them,
    /// otherwise with one fsync that covers every line written so far.
    fn sync_through(&self, lines: u64) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        let broken = || AuditError::Broken {
            path: self.path.clone(),
        };
        if self.failed.load(Ordering::Acquire) {
            return Err(broken());
        }
        if self.synced.load(Ordering::Acquire) >= lines {
            return Ok(());
        }
        let file = self.file.lock().map_err(|_| broken())?;
        // A waiter ahead of this one may have failed: after a failed fsync, Linux reports the
        // error once and marks the unwritten pages clean, so a second fsync would "succeed"
        // without the lines being on disk. Nothing is durable any more.
        if self.failed.load(Ordering::Acquire) {
            return Err(broken());
        }
        // Another waiter's fsync may have covered these lines while this one queued.
        if self.synced.load(Ordering::Acquire) >= lines {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        if let Err(e) = file.sync_data() {
            self.failed.store(true, Ordering::Release);
            return Err(AuditError::Io {
                path: self.path.clone(),
                source: e,
            });
        }
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }
}

/// A record written to the log whose fsync may still be pending: [`Durable::wait`] returns
/// once it is on disk (or fails: then it may not be, and the log takes no more records).
#[derive(Clone, Debug, Default)]
pub struct Durable(Option<(std::sync::Arc<Syncer>, u64)>);

impl Durable {
    /// A record already on disk (or a sink without fsync).
    pub fn done() -> Self {
        Self(None)
    }

    /// A record whose fsync failed: waiting for it fails. For tests of the callers' fail-closed
    /// path (a real fsync failure cannot be provoked on demand).
    pub fn failed() -> Self {
        let file = match File::open("/dev/null") {
            Ok(f) => f,
            Err(_) => return Self::done(),
        };
        Self(Some((
            std::sync::Arc::new(Syncer {
                path: PathBuf::from("<failed>"),
                file: std::sync::Mutex::new(file),
                written: 1.into(),
                synced: 0.into(),
                failed: true.into(),
            }),
            1,
        )))
    }

    /// True when waiting would not block.
    pub fn is_done(&self) -> bool {
        match &self.0 {
            None => true,
            Some((s, lines)) => {
                !s.failed.load(std::sync::atomic::Ordering::Acquire)
                    && s.synced.load(std::sync::atomic::Ordering::Acquire) >= *lines
            }
        }
    }

    /// Blocks until the record is on disk (one fsync, shared with every record written
    /// before it was called). Once an fsync of the log failed, every wait fails, also for
    /// records an earlier fsync covered: the caller cannot tell what the failure lost.
    pub fn wait(&self) -> Result<(), AuditError> {
        match &self.0 {
            None => Ok(()),
            Some((s, lines)) => s.sync_through(*lines),
        }
    }
}

/// Decisions kept in memory (shared, so a test can read them while the node runs), with a
/// switch that makes every write fail.
#[derive(Clone, Debug, Default)]
pub struct MemoryAudit {
    pub decisions: std::sync::Arc<std::sync::Mutex<Vec<Decision>>>,
    pub fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AuditSink for MemoryAudit {
    fn record(&mut self, _now: u64, decision: Decision) -> Result<(), AuditError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::Io {
                path: PathBuf::from("<memory>"),
                source: std::io::Error::other("writes switched off"),
            });
        }
        if let Ok(mut d) = self.decisions.lock() {
            d.push(decision);
        }
        Ok(())
    }
}

/// What a line holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Decision(Box<Decision>),
    /// The node's signature over the chain so far (`signature` covers the domain, `seq` and
    /// `prev`).
    Checkpoint {
        node: String,
        signature: String,
    },
    /// The first line of a file after rotation: the chain continues from the previous file.
    Rotated {
        previous: String,
    },
}

/// One line of the log (its fields, then the entry's, flattened into one JSON object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Seconds since the Unix epoch (from the caller's clock).
    pub time: u64,
    /// SHA-256 (hex) of the previous line (all zero for the first).
    pub prev: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// Why a record could not be written (the caller must refuse what it was about to do).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} is damaged at its end ({what}); run `conclave audit verify`")]
    Damaged { path: PathBuf, what: String },
    #[error("audit log {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("audit log {path} is in use by another process (one writer per log: give each process a log of its own)")]
    InUse { path: PathBuf },
    #[error("audit log {path}: an earlier write failed, so the chain may end in a torn record; nothing more is written until the node restarts")]
    Broken { path: PathBuf },
}

/// How the log is written.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// fsync every record (default). Off trades durability of the last records for speed.
    pub fsync: bool,
    /// Rotate once the file would grow beyond this many bytes.
    pub max_bytes: u64,
    /// A signed checkpoint after this many records.
    pub checkpoint_every: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fsync: true,
            max_bytes: 64 * 1024 * 1024,
            checkpoint_every: 100,
        }
    }
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    identity: IdentityKey,
    options: Options,
    next_seq: u64,
    prev: [u8; 32],
    size: u64,
    since_checkpoint: u64,
    /// An earlier write failed: the file may end in a torn line, so nothing more is appended.
    broken: bool,
    syncer: std::sync::Arc<Syncer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev.as_bytes());
    m
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".checkpoint");
    PathBuf::from(s)
}

/// One writer per log: two processes appending with their own sequence counters would break
/// the chain. An exclusive advisory lock, held as long as the file is open (fail closed).
#[cfg(unix)]
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            AuditError::InUse {
                path: path.to_path_buf(),
            }
        } else {
            AuditError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            }
        }
    })
}

#[cfg(not(unix))]
fn lock(_file: &File, _path: &Path) -> Result<(), AuditError> {
    Ok(())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The last line of `bytes` (without its newline), if any.
fn last_line(bytes: &[u8]) -> Option<&[u8]> {
    let trimmed = bytes.strip_suffix(b"\n")?;
    Some(match trimmed.iter().rposition(|b| *b == b'\n') {
        Some(i) => trimmed.get(i + 1..).unwrap_or_default(),
        None => trimmed,
    })
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and continues its chain.
    pub fn open(path: &Path, identity: IdentityKey, options: Options) -> Result<Self, AuditError> {
        let mut opts = OpenOptions::new();
        opts.append(true).create(true).read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(io(path))?;
        if !file.metadata().map_err(io(path))?.is_file() {
            return Err(AuditError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        lock(&file, path)?;
        let bytes =
            conclave_protocol::read_bounded(path, options.max_bytes.max(MAX_LINE as u64) * 2)
                .map_err(|e| AuditError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(e),
                })?;
        let (next_seq, prev) = match last_line(&bytes) {
            None if bytes.is_empty() => (0, [0u8; 32]),
            None => {
                return Err(AuditError::Damaged {
                    path: path.to_path_buf(),
                    what: "an unfinished last line".into(),
                })
            }
            Some(line) => {
                let r: Record = serde_json::from_slice(line).map_err(|e| AuditError::Damaged {
                    path: path.to_path_buf(),
                    what: e.to_string(),
                })?;
                (r.seq + 1, line_hash(line))
            }
        };
        let syncer = std::sync::Arc::new(Syncer {
            path: path.to_path_buf(),
            file: std::sync::Mutex::new(file.try_clone().map_err(io(path))?),
            written: next_seq.into(),
            synced: next_seq.into(),
            failed: false.into(),
        });
        Ok(Self {
            path: path.to_path_buf(),
            file,
            identity,
            options,
            next_seq,
            prev,
            size: bytes.len() as u64,
            since_checkpoint: 0,
            broken: false,
            syncer,
        })
    }

    fn write_line(&mut self, now: u64, entry: Entry) -> Result<(), AuditError> {
        self.write_line_maybe_deferred(now, entry, false)
    }

    fn write_line_maybe_deferred(
        &mut self,
        now: u64,
        entry: Entry,
        defer: bool,
    ) -> Result<(), AuditError> {
        if self.broken
            || self
                .syncer
                .failed
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.broken = true;
            return Err(AuditError::Broken {
                path: self.path.clone(),
            });
        }
        let result = self.write_line_inner(now, entry, defer);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn write_line_inner(&mut self, now: u64, entry: Entry, defer: bool) -> Result<(), AuditError> {
        let record = Record {
            seq: self.next_seq,
            time: now,
            prev: hex::encode(self.prev),
            entry,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let hash = line_hash(&line);
        line.push(b'\n');
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.next_seq += 1;
        self.prev = hash;
        self.size += line.len() as u64;
        self.syncer
            .written
            .store(self.next_seq, std::sync::atomic::Ordering::Release);
        if self.options.fsync && !defer {
            self.syncer.sync_through(self.next_seq)?;
        }
        Ok(())
    }

    fn rotate(&mut self, now: u64) -> Result<(), AuditError> {
        let mut n = 1u32;
        let target = loop {
            let mut s = self.path.as_os_str().to_owned();
            s.push(format!(".{n}"));
            let p = PathBuf::from(s);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        // Every line of the file being rotated out is on disk before it is renamed.
        self.syncer.sync_through(self.next_seq)?;
        std::fs::rename(&self.path, &target).map_err(io(&self.path))?;
        let mut opts = OpenOptions::new();
        opts.append(true).create_new(true).read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        self.file = opts.open(&self.path).map_err(io(&self.path))?;
        lock(&self.file, &self.path)?;
        let handle = self.file.try_clone().map_err(io(&self.path))?;
        match self.syncer.file.lock() {
            Ok(mut f) => *f = handle,
            Err(_) => {
                return Err(AuditError::Broken {
                    path: self.path.clone(),
                })
            }
        }
        sync_dir(parent(&self.path)).map_err(io(&self.path))?;
        self.size = 0;
        let previous = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.write_line(now, Entry::Rotated { previous })
    }

    /// Appends one decision (and a checkpoint when one is due). An error means the record is
    /// not on disk: refuse what was decided.
    pub fn append(&mut self, now: u64, decision: Decision) -> Result<(), AuditError> {
        if self.size > 0 && self.size + MAX_LINE as u64 > self.options.max_bytes {
            self.rotate(now)?;
        }
        self.write_line(now, Entry::Decision(Box::new(decision)))?;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.options.checkpoint_every {
            self.checkpoint(now)?;
        }
        Ok(())
    }

    /// Like [`AuditLog::append`], but the decision's fsync is left to the returned
    /// [`Durable`] (group commit): wait for it before acting on the decision.
    pub fn append_deferred(&mut self, now: u64, decision: Decision) -> Result<Durable, AuditError> {
        if self.size > 0 && self.size + MAX_LINE as u64 > self.options.max_bytes {
            self.rotate(now)?;
        }
        self.write_line_maybe_deferred(now, Entry::Decision(Box::new(decision)), true)?;
        let token = if self.options.fsync {
            Durable(Some((self.syncer.clone(), self.next_seq)))
        } else {
            Durable::done()
        };
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.options.checkpoint_every {
            // Written and fsynced at once, which makes the decision durable too.
            self.checkpoint(now)?;
        }
        Ok(token)
    }

    /// Writes a signed checkpoint over the chain so far, in the log and beside it.
    pub fn checkpoint(&mut self, now: u64) -> Result<(), AuditError> {
        let seq = self.next_seq;
        let prev = hex::encode(self.prev);
        let signature = self
            .identity
            .signing_key()
            .sign(&checkpoint_message(seq, &prev));
        self.write_line(
            now,
            Entry::Checkpoint {
                node: self.identity.node_id().to_hex(),
                signature: hex::encode(signature.to_bytes()),
            },
        )?;
        // Beside the log: the checkpoint's own line hash and seq, so cutting the log before it
        // shows.
        let marker = format!("{seq} {}\n", hex::encode(self.prev));
        let side = sidecar(&self.path);
        let tmp = side.with_extension("checkpoint.tmp");
        std::fs::write(&tmp, marker)
            .and_then(|()| std::fs::rename(&tmp, &side))
            .and_then(|()| sync_dir(parent(&side)))
            .map_err(io(&side))?;
        self.since_checkpoint = 0;
        Ok(())
    }
}

/// The files of the log at `path`, oldest first: its rotated files (`<path>.1`, `<path>.2`,
/// ... in numeric order), then `path` itself. Any argument naming one of them, or the
/// checkpoint sidecar, names the same log.
pub fn log_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let base = base_of(path);
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(parent(&base))? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = file
            .strip_prefix(&name)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            rotated.push((n, entry.path()));
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(base);
    Ok(files)
}

/// `audit.log.3`, `audit.log.checkpoint` → `audit.log`.
fn base_of(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    if let Some(b) = s.strip_suffix(".checkpoint") {
        return PathBuf::from(b);
    }
    if let Some((b, n)) = s.rsplit_once('.') {
        if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) {
            return PathBuf::from(b);
        }
    }
    path.to_path_buf()
}

/// The distinct logs named by `args` (any of their files), each expanded to its files in
/// order: what `conclave audit verify audit.log*` means.
pub fn expand_args(args: &[PathBuf]) -> std::io::Result<Vec<Vec<PathBuf>>> {
    let mut bases: Vec<PathBuf> = Vec::new();
    for a in args {
        let b = base_of(a);
        if !bases.contains(&b) {
            bases.push(b);
        }
    }
    bases.iter().map(|b| log_files(b)).collect()
}

/// What [`verify`] found wrong: the first bad record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: record {seq}: {what}")]
pub struct VerifyError {
    pub file: PathBuf,
    /// The sequence number expected at the bad place.
    pub seq: u64,
    pub what: String,
}

/// What a valid log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records: u64,
    pub decisions: u64,
    pub checkpoints: u64,
    /// Records after the last checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    pub node: Option<String>,
    /// The latest checkpoint, as `SEQ:HASH` (the checkpoint line's SHA-256): kept off the host,
    /// it detects a later truncation back to an earlier state (`verify_expecting`).
    pub last_checkpoint: Option<String>,
}

/// Parses a `SEQ:HASH` checkpoint reference.
pub fn parse_checkpoint(s: &str) -> Option<(u64, [u8; 32])> {
    let (seq, hash) = s.trim().split_once(':')?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).ok()?;
    Some((seq.parse().ok()?, h))
}

/// Verifies the chain through `files` (rotated files first, the current one last): every line
/// parses, sequence numbers follow each other, each `prev` is the hash of the line before, and
/// every checkpoint is signed by `key` (or, unpinned, by the same key throughout). The latest
/// checkpoint recorded beside the last file must be in the chain (truncation before it shows).
pub fn verify(files: &[PathBuf], key: Option<NodeId>) -> Result<Summary, VerifyError> {
    verify_expecting(files, key, None)
}

/// Like [`verify`], and the checkpoint `expected` (`SEQ`, line hash), from a copy kept
/// elsewhere, must be in the chain: with file access alone one can cut a log back to an earlier
/// checkpoint (and its sidecar with it), but not past a checkpoint recorded off the host.
pub fn verify_expecting(
    files: &[PathBuf],
    key: Option<NodeId>,
    expected: Option<(u64, [u8; 32])>,
) -> Result<Summary, VerifyError> {
    verify_with(
        files,
        key,
        expected,
        &mut |file| conclave_protocol::read_bounded(file, MAX_FILE).map_err(|e| e.to_string()),
        &mut |last| conclave_protocol::read_bounded_to_string(&sidecar(last), 4096).ok(),
    )
}

/// [`verify_expecting`] over any source of bytes: `read` gives a file's contents (at most
/// [`MAX_FILE`] bytes), `sidecar_of` the checkpoint recorded beside the last file, if any.
/// The fuzz target and the corpus replay call it on bytes in memory.
pub fn verify_with(
    files: &[PathBuf],
    key: Option<NodeId>,
    expected: Option<(u64, [u8; 32])>,
    read: &mut dyn FnMut(&Path) -> Result<Vec<u8>, String>,
    sidecar_of: &mut dyn FnMut(&Path) -> Option<String>,
) -> Result<Summary, VerifyError> {
    let mut expect_seq = 0u64;
    let mut prev = [0u8; 32];
    let mut summary = Summary {
        records: 0,
        decisions: 0,
        checkpoints: 0,
        unsigned_tail: 0,
        node: key.map(|k| k.to_hex()),
        last_checkpoint: None,
    };
    let mut signer: Option<NodeId> = key;
    let mut checkpoints_seen: Vec<(u64, [u8; 32])> = vec![];
    for file in files {
        let bad = |seq: u64, what: String| VerifyError {
            file: file.clone(),
            seq,
            what,
        };
        let bytes = read(file).map_err(|e| bad(expect_seq, format!("cannot read: {e}")))?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            return Err(bad(
                expect_seq,
                "the last line is unfinished (a torn write)".into(),
            ));
        }
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if line.len() > MAX_LINE {
                return Err(bad(expect_seq, "line too long".into()));
            }
            let r: Record = serde_json::from_slice(line)
                .map_err(|e| bad(expect_seq, format!("not a record ({e})")))?;
            if r.seq != expect_seq {
                return Err(bad(
                    expect_seq,
                    format!("sequence number {} where {expect_seq} was expected (a record was removed, reordered or inserted)", r.seq),
                ));
            }
            if r.prev != hex::encode(prev) {
                return Err(bad(
                    r.seq,
                    "does not chain to the record before it (modified, removed or reordered)"
                        .into(),
                ));
            }
            match &r.entry {
                Entry::Decision(_) => {
                    summary.decisions += 1;
                    summary.unsigned_tail += 1;
                }
                Entry::Rotated { .. } => summary.unsigned_tail += 1,
                Entry::Checkpoint { node, signature } => {
                    let node_id = NodeId::from_hex(node)
                        .map_err(|_| bad(r.seq, "checkpoint by no valid key".into()))?;
                    match signer {
                        Some(k) if k != node_id => {
                            return Err(bad(
                                r.seq,
                                format!(
                                    "checkpoint signed by {}, not by {}",
                                    node_id.short(),
                                    k.short()
                                ),
                            ))
                        }
                        _ => signer = Some(node_id),
                    }
                    let ok = ed25519_dalek::VerifyingKey::from_bytes(&node_id.0)
                        .ok()
                        .zip(
                            hex::decode(signature)
                                .ok()
                                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok()),
                        )
                        .is_some_and(|(vk, sig)| {
                            vk.verify_strict(&checkpoint_message(r.seq, &r.prev), &sig)
                                .is_ok()
                        });
                    if !ok {
                        return Err(bad(r.seq, "checkpoint signature does not verify".into()));
                    }
                    summary.checkpoints += 1;
                    summary.unsigned_tail = 0;
                    checkpoints_seen.push((r.seq, line_hash(line)));
                }
            }
            prev = line_hash(line);
            expect_seq += 1;
            summary.records += 1;
        }
    }
    // The latest checkpoint recorded beside the log must be in the chain.
    if let Some(last) = files.last() {
        if let Some(text) = sidecar_of(last) {
            let mut parts = text.split_whitespace();
            let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
            let hash = parts.next().map(str::to_owned);
            let found = match (seq, hash) {
                (Some(seq), Some(hash)) => checkpoints_seen
                    .iter()
                    .any(|(s, p)| *s == seq && hex::encode(p) == hash),
                _ => false,
            };
            if !found {
                return Err(VerifyError {
                    file: last.clone(),
                    seq: seq.unwrap_or(expect_seq),
                    what: "the checkpoint recorded beside the log is not in it (the log was truncated or replaced)".into(),
                });
            }
        }
    }
    if let Some((seq, hash)) = expected {
        if !checkpoints_seen
            .iter()
            .any(|(s, h)| *s == seq && *h == hash)
        {
            return Err(VerifyError {
                file: files.last().cloned().unwrap_or_default(),
                seq,
                what:
                    "the expected checkpoint is not in the log (it was truncated back or replaced)"
                        .into(),
            });
        }
    }
    summary.last_checkpoint = checkpoints_seen
        .last()
        .map(|(seq, h)| format!("{seq}:{}", hex::encode(h)));
    summary.node = signer.map(|k| k.to_hex()).or(summary.node);
    Ok(summary)
}

/// Every record of `files`, in order (after [`verify`] for trusted output).
pub fn records(files: &[PathBuf]) -> Result<Vec<Record>, VerifyError> {
    let mut out = vec![];
    for file in files {
        let bytes = conclave_protocol::read_bounded(file, MAX_FILE).map_err(|e| VerifyError {
            file: file.clone(),
            seq: 0,
            what: format!("cannot read: {e}"),
        })?;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).map_err(|e| VerifyError {
                file: file.clone(),
                seq: out.len() as u64,
                what: format!("not a record ({e})"),
            })?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
