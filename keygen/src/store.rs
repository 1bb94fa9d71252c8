//! Where key material lands. A [`ShareStore`] takes a ceremony's results for one member as
//! *pending*, makes them active when every member has acknowledged, keeps them when the member
//! is left undecided, or discards them; the member state machine decides which
//! ([`crate::ceremony::Member::apply`]), so every driver — the QUIC member driver, the
//! simulator, the benches — runs the same all-or-nothing rules. [`FileShareStore`] writes files
//! (atomic, fsynced, mode 0600); [`MemoryShareStore`] keeps them in memory.
//!
//! The dealer's all-or-nothing write ([`write_dealt`]) and the naming of share, manifest and
//! completion files live here too, so the CLI only parses, confirms, calls and prints.

use std::path::{Path, PathBuf};

use conclave_protocol::{GroupName, NodeId};
use frost_ed25519 as frost;

use crate::ceremony::{CeremonyKind, CeremonyPlan, Completion, CompletionError, Outcome};
use crate::keystore::KeystoreKey;
use crate::manifest::GroupManifest;
use crate::secret::Passphrase;
use crate::sharefile::{write_atomic, KdfParams, ShareFile, ShareFileError};

/// Largest completion file read.
pub const MAX_COMPLETION_LEN: u64 = 1024 * 1024;

/// The Argon2id cost of new share files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfCost {
    /// 64 MiB, 3 passes: every mode.
    Standard,
    /// 8 MiB, 1 pass: dev mode only.
    Light,
}

impl KdfCost {
    /// The cost to use: `light` is refused unless `dev` (the one place this rule lives).
    pub fn choose(light: bool, dev: bool) -> Result<Self, StoreError> {
        match (light, dev) {
            (true, false) => Err(StoreError::LightKdfOutsideDev),
            (true, true) => Ok(KdfCost::Light),
            (false, _) => Ok(KdfCost::Standard),
        }
    }

    fn params<R: rand::RngCore + rand::CryptoRng>(self, rng: &mut R) -> KdfParams {
        match self {
            KdfCost::Standard => KdfParams::standard(rng),
            KdfCost::Light => KdfParams::light(rng),
        }
    }
}

/// Why key material could not be stored, activated or resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("--kdf light is for dev mode only; add --mode dev for a lab setup")]
    LightKdfOutsideDev,
    #[error("{0} already exists; refusing to overwrite key material (choose another --out)")]
    Exists(PathBuf),
    #[error("{} left by an unfinished ceremony: it may be acknowledged (others may have activated); run `conclave rotate resume` to finish it, or abandon it once you know no member activated", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Unfinished(Vec<PathBuf>),
    #[error("the ceremony gave this member no share, but the plan lists it in the new group")]
    NoShare,
    #[error(
        "the ceremony gave this member a share, but the plan does not list it in the new group"
    )]
    UnexpectedShare,
    #[error("no new passphrase was given for this member's new share")]
    NoPassphrase,
    #[error("no pending result to activate")]
    NothingPending,
    #[error("{shares} shares but {names} names")]
    Mismatch { shares: usize, names: usize },
    #[error("{0} is missing: nothing binds the pending files to this plan (were they made by another ceremony?)")]
    NoRecord(PathBuf),
    #[error("the pending files are not this member's from this plan and run")]
    NotThisCeremony,
    #[error("{0} is missing (neither pending nor already activated): the ceremony's files are incomplete; nothing was activated")]
    Incomplete(PathBuf),
    #[error(transparent)]
    Completion(#[from] CompletionError),
    #[error(transparent)]
    Share(#[from] ShareFileError),
    #[error(transparent)]
    Manifest(#[from] crate::ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The results of a ceremony for one member, handled by the member state machine.
pub trait ShareStore {
    /// Writes `outcome` (this member's new share, if any, and the new manifest) as pending,
    /// with this member's own acknowledgement `ack` (the record that binds them to this run).
    fn write_pending(&mut self, outcome: &Outcome, ack: &Completion) -> Result<(), StoreError>;
    /// Every member acknowledged: the pending results become active; `completion` is kept.
    fn activate(&mut self, completion: &Completion) -> Result<(), StoreError>;
    /// This member acknowledged but never saw every acknowledgement: the pending results
    /// stay, with what it knows of the acknowledgements.
    fn keep_undecided(&mut self, partial: &Completion) -> Result<(), StoreError>;
    /// The ceremony ended before this member acknowledged: every pending result goes.
    fn discard(&mut self);
}

/// `<group>.<member>.share`: a share made by the dealer or a DKG.
pub fn share_path(dir: &Path, group: &GroupName, member: &str) -> PathBuf {
    dir.join(format!("{group}.{member}.share"))
}

/// `<group>.manifest.toml`: the manifest of a new key.
pub fn manifest_path(dir: &Path, group: &GroupName) -> PathBuf {
    dir.join(format!("{group}.manifest.toml"))
}

/// The manifest a ceremony writes: `<group>.manifest.toml` for a new key, with the epoch
/// (`<group>.epoch<E>.manifest.toml`) for a rotation, next to the old one.
pub fn plan_manifest_path(dir: &Path, plan: &CeremonyPlan) -> PathBuf {
    match plan.from {
        None => manifest_path(dir, &plan.group),
        Some(_) => dir.join(format!("{}.epoch{}.manifest.toml", plan.group, plan.epoch)),
    }
}

/// The share file a ceremony writes for `name` (with the epoch for a rotation).
pub fn plan_share_path(dir: &Path, plan: &CeremonyPlan, name: &str) -> PathBuf {
    match plan.from {
        None => share_path(dir, &plan.group, name),
        Some(_) => dir.join(format!("{}.{name}.epoch{}.share", plan.group, plan.epoch)),
    }
}

/// The signed acknowledgements of a ceremony (public): `<dir>/<ceremony id>.completion.toml`.
pub fn completion_path(dir: &Path, plan: &CeremonyPlan) -> PathBuf {
    dir.join(format!("{}.completion.toml", plan.ceremony))
}

/// Where a file waits until every member has acknowledged the ceremony.
pub fn pending_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".pending");
    PathBuf::from(s)
}

/// Reads a completion file (bounded).
pub fn read_completion(path: &Path) -> Result<Completion, StoreError> {
    let text =
        conclave_protocol::read_bounded_to_string(path, MAX_COMPLETION_LEN).map_err(|e| {
            StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            }
        })?;
    Ok(Completion::from_toml(&text)?)
}

fn remove_if_present(path: &Path) -> bool {
    std::fs::remove_file(path).is_ok()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// One member's ceremony results as files in a directory: the share (if the member is in the
/// new group), the manifest (if the ceremony changes it) and the completion record, each
/// written pending first.
pub struct FileShareStore {
    dir: PathBuf,
    owner: NodeId,
    share: Option<PathBuf>,
    manifest: Option<PathBuf>,
    completion: PathBuf,
    passphrase: Option<Passphrase>,
    kdf: KdfCost,
    /// Seal the new share to this node keystore instead of under `passphrase`.
    keystore: Option<KeystoreKey>,
}

impl std::fmt::Debug for FileShareStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileShareStore")
            .field("dir", &self.dir)
            .field("share", &self.share)
            .field("manifest", &self.manifest)
            .field("passphrase", &"[redacted]")
            .finish()
    }
}

/// What `rotate resume` found.
#[derive(Debug)]
pub enum Resume {
    /// Nothing was pending: the ceremony is active on this host.
    AlreadyActive,
    /// Every member's acknowledgement verified: the pending files are now active.
    Activated(Completion),
    /// Every member's acknowledgement verifies, nothing was activated ([`FileShareStore::inspect`]).
    Complete(Completion),
    /// Still undecided: who acknowledged, who is missing, and why activation was refused.
    Undecided {
        acknowledged: Vec<String>,
        missing: Vec<String>,
        reason: CompletionError,
        pending: Vec<PathBuf>,
    },
}

impl FileShareStore {
    /// The files member `me` of `plan` writes under `dir`. `passphrase` encrypts its new share
    /// (required if it is in the new group).
    pub fn for_member(
        plan: &CeremonyPlan,
        me: &NodeId,
        dir: &Path,
        passphrase: Option<Passphrase>,
        kdf: KdfCost,
    ) -> Self {
        let name = plan.name_of(me);
        Self {
            dir: dir.to_path_buf(),
            owner: *me,
            share: plan
                .is_new_member(me)
                .then(|| plan_share_path(dir, plan, &name)),
            manifest: (plan.kind != CeremonyKind::Repair).then(|| plan_manifest_path(dir, plan)),
            completion: completion_path(dir, plan),
            passphrase,
            kdf,
            keystore: None,
        }
    }

    /// Seals the new share to the node keystore `key` (format 2; no passphrase needed).
    pub fn with_keystore(mut self, key: Option<KeystoreKey>) -> Self {
        self.keystore = key;
        self
    }

    /// The share file this member ends with (if it is in the new group).
    pub fn share_file(&self) -> Option<&Path> {
        self.share.as_deref()
    }

    /// The manifest file this member ends with (if the ceremony changes the manifest).
    pub fn manifest_file(&self) -> Option<&Path> {
        self.manifest.as_deref()
    }

    /// The completion file (this member's record of the acknowledgements).
    pub fn completion_file(&self) -> &Path {
        &self.completion
    }

    fn finals(&self) -> impl Iterator<Item = &PathBuf> {
        self.share.iter().chain(self.manifest.iter())
    }

    /// Pending files present on disk.
    pub fn pending_present(&self) -> Vec<PathBuf> {
        self.finals()
            .map(|p| pending_path(p))
            .filter(|p| p.exists())
            .collect()
    }

    /// Refuses to start over existing key material or over a pending file of an unfinished
    /// ceremony (which may be acknowledged: nothing is discarded by accident). Creates the
    /// directory (0700).
    pub fn check_fresh(&self) -> Result<(), StoreError> {
        if let Some(p) = self.finals().find(|p| p.exists()) {
            return Err(StoreError::Exists(p.clone()));
        }
        let left = self.pending_present();
        if !left.is_empty() {
            return Err(StoreError::Unfinished(left));
        }
        conclave_protocol::identity::create_private_dir(&self.dir).map_err(|e| StoreError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })
    }

    fn activate_files(&self) -> Result<(), StoreError> {
        for p in self.finals() {
            let pending = pending_path(p);
            if pending.exists() {
                std::fs::rename(&pending, p).map_err(io(&pending))?;
            }
        }
        sync_dir(&self.dir)
    }

    fn write_completion(&self, c: &Completion) -> Result<(), StoreError> {
        write_atomic(
            &self.completion,
            c.to_toml().as_bytes(),
            &mut rand::rngs::OsRng,
        )
        .map_err(io(&self.completion))
    }

    /// `rotate resume`: checks that the pending files are this member's from `plan` (the
    /// record written with them names this plan, run, member and manifest), merges `others`
    /// (completion files of the relay or of members that activated; same run only) and
    /// activates once every member's acknowledgement verifies.
    pub fn resume(
        &mut self,
        plan: &CeremonyPlan,
        others: &[Completion],
    ) -> Result<Resume, StoreError> {
        self.resume_or_inspect(plan, others, true)
    }

    /// What [`resume`](Self::resume) would find, without activating anything (for
    /// `--abandon`, which must refuse a ceremony every member acknowledged).
    pub fn inspect(
        &mut self,
        plan: &CeremonyPlan,
        others: &[Completion],
    ) -> Result<Resume, StoreError> {
        self.resume_or_inspect(plan, others, false)
    }

    fn resume_or_inspect(
        &mut self,
        plan: &CeremonyPlan,
        others: &[Completion],
        activate: bool,
    ) -> Result<Resume, StoreError> {
        let pending = self.pending_present();
        if pending.is_empty() {
            if self.finals().all(|p| p.exists()) {
                return Ok(Resume::AlreadyActive);
            }
            return Err(StoreError::NothingPending);
        }
        // The manifest hash the pending files were written for, from this host's own files.
        let manifest_hash = match (&self.share, &self.manifest) {
            (Some(share), _) if pending_path(share).exists() => {
                ShareFile::inspect(&pending_path(share))?.manifest_hash
            }
            (_, Some(m)) => GroupManifest::read(&pending_path(m))?.hash()?,
            _ => return Err(StoreError::NothingPending),
        };
        if let Some(m) = &self.manifest {
            let p = pending_path(m);
            if p.exists() && GroupManifest::read(&p)?.hash()? != manifest_hash {
                return Err(StoreError::NotThisCeremony);
            }
        }
        // Every file of the set is pending, or already activated by an interrupted activation
        // (a crash between its renames): never activate part of a set.
        if let Some(share) = &self.share {
            let activated = || {
                share.exists()
                    && ShareFile::inspect(share).is_ok_and(|h| h.manifest_hash == manifest_hash)
            };
            if !pending_path(share).exists() && !activated() {
                return Err(StoreError::Incomplete(pending_path(share)));
            }
        }
        if let Some(m) = &self.manifest {
            let activated = || {
                m.exists()
                    && GroupManifest::read(m)
                        .ok()
                        .and_then(|g| g.hash().ok())
                        .is_some_and(|h| h == manifest_hash)
            };
            if !pending_path(m).exists() && !activated() {
                return Err(StoreError::Incomplete(pending_path(m)));
            }
        }
        if !self.completion.exists() {
            return Err(StoreError::NoRecord(self.completion.clone()));
        }
        let mut completion = read_completion(&self.completion)?;
        if completion.ceremony != plan.ceremony
            || plan.hash().ok().map(hex::encode) != Some(completion.plan_hash.clone())
            || completion.manifest_hash != hex::encode(manifest_hash)
            || !completion.acks.contains_key(&self.owner.to_hex())
        {
            return Err(StoreError::NotThisCeremony);
        }
        for other in others {
            completion.merge(other)?;
        }
        match completion.verify(plan, &manifest_hash) {
            Ok(()) if !activate => Ok(Resume::Complete(completion)),
            Ok(()) => {
                self.write_completion(&completion)?;
                self.activate_files()?;
                Ok(Resume::Activated(completion))
            }
            Err(reason) => {
                let roster = plan.roster().unwrap_or_default();
                let (acknowledged, missing): (Vec<_>, Vec<_>) = roster
                    .iter()
                    .partition(|m| completion.acks.contains_key(&m.node_id.to_hex()));
                Ok(Resume::Undecided {
                    acknowledged: acknowledged.iter().map(|m| m.name.clone()).collect(),
                    missing: missing.iter().map(|m| m.name.clone()).collect(),
                    reason,
                    pending,
                })
            }
        }
    }

    /// Discards the pending files and the record (the operator's decision that no member
    /// activated).
    pub fn abandon(&mut self) {
        self.discard();
    }
}

impl ShareStore for FileShareStore {
    fn write_pending(&mut self, outcome: &Outcome, ack: &Completion) -> Result<(), StoreError> {
        let mut rng = rand::rngs::OsRng;
        let written = (|| {
            // First the record of this run and this member's acknowledgement.
            self.write_completion(ack)?;
            match (&self.share, &outcome.key_package) {
                (Some(share), Some(kp)) => {
                    let seal = match (self.keystore, self.passphrase.as_ref()) {
                        (Some(k), _) => Seal::Keystore(k),
                        (None, Some(pass)) => Seal::Passphrase(pass, self.kdf),
                        (None, None) => return Err(StoreError::NoPassphrase),
                    };
                    seal.write(&pending_path(share), kp, &outcome.manifest, self.owner)?;
                }
                (Some(_), None) => return Err(StoreError::NoShare),
                (None, Some(_)) => return Err(StoreError::UnexpectedShare),
                (None, None) => {}
            }
            if let Some(path) = &self.manifest {
                let pending = pending_path(path);
                write_atomic(&pending, outcome.manifest.to_toml()?.as_bytes(), &mut rng)
                    .map_err(io(&pending))?;
            }
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            self.discard();
        }
        written
    }

    fn activate(&mut self, completion: &Completion) -> Result<(), StoreError> {
        // The full completion first: if a rename then fails, `rotate resume` has every
        // acknowledgement at hand.
        self.write_completion(completion)?;
        self.activate_files()
    }

    fn keep_undecided(&mut self, partial: &Completion) -> Result<(), StoreError> {
        let mut merged = partial.clone();
        if let Ok(existing) = read_completion(&self.completion) {
            let _ = merged.merge(&existing);
        }
        self.write_completion(&merged)
    }

    fn discard(&mut self) {
        for p in self.finals() {
            remove_if_present(&pending_path(p));
        }
        remove_if_present(&self.completion);
    }
}

/// One member's ceremony results in memory (the simulator, tests, benches).
#[derive(Default)]
pub struct MemoryShareStore {
    pending: Option<(GroupManifest, Option<frost::keys::KeyPackage>)>,
    active: Option<(GroupManifest, Option<frost::keys::KeyPackage>)>,
    completion: Option<Completion>,
}

impl std::fmt::Debug for MemoryShareStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryShareStore")
            .field("pending", &self.pending.is_some())
            .field("active", &self.active.is_some())
            .field("key_packages", &"[redacted]")
            .finish()
    }
}

impl MemoryShareStore {
    /// The active manifest and share, once activated.
    pub fn active(&self) -> Option<&(GroupManifest, Option<frost::keys::KeyPackage>)> {
        self.active.as_ref()
    }

    /// The pending manifest and share (written, not yet activated).
    pub fn pending(&self) -> Option<&(GroupManifest, Option<frost::keys::KeyPackage>)> {
        self.pending.as_ref()
    }

    /// The acknowledgements known: complete once activated, partial while undecided.
    pub fn completion(&self) -> Option<&Completion> {
        self.completion.as_ref()
    }

    /// `rotate resume` in memory: activates the pending results if `others` completes the
    /// acknowledgements for `plan`.
    pub fn resume(&mut self, plan: &CeremonyPlan, others: &Completion) -> Result<(), StoreError> {
        let (manifest, _) = self.pending.as_ref().ok_or(StoreError::NothingPending)?;
        let hash = manifest.hash()?;
        let mut c = self.completion.clone().ok_or(StoreError::NothingPending)?;
        c.merge(others)?;
        c.verify(plan, &hash)?;
        self.active = self.pending.take();
        self.completion = Some(c);
        Ok(())
    }
}

impl ShareStore for MemoryShareStore {
    fn write_pending(&mut self, outcome: &Outcome, ack: &Completion) -> Result<(), StoreError> {
        self.pending = Some((outcome.manifest.clone(), outcome.key_package.clone()));
        self.completion = Some(ack.clone());
        Ok(())
    }

    fn activate(&mut self, completion: &Completion) -> Result<(), StoreError> {
        self.active = Some(self.pending.take().ok_or(StoreError::NothingPending)?);
        self.completion = Some(completion.clone());
        Ok(())
    }

    fn keep_undecided(&mut self, partial: &Completion) -> Result<(), StoreError> {
        let mut merged = partial.clone();
        if let Some(existing) = &self.completion {
            let _ = merged.merge(existing);
        }
        self.completion = Some(merged);
        Ok(())
    }

    fn discard(&mut self) {
        self.pending = None;
        self.completion = None;
    }
}

/// How one new share file is encrypted.
#[derive(Clone, Copy, Debug)]
pub enum Seal<'a> {
    /// Format 1: under a passphrase, with this Argon2id cost.
    Passphrase(&'a Passphrase, KdfCost),
    /// Format 2: to the member's node keystore (its public key is all the writer needs).
    Keystore(KeystoreKey),
}

impl Seal<'_> {
    /// Writes `key_package` to `path` (refusing to replace a file).
    pub fn write(
        &self,
        path: &Path,
        key_package: &frost::keys::KeyPackage,
        manifest: &GroupManifest,
        owner: NodeId,
    ) -> Result<(), StoreError> {
        let mut rng = rand::rngs::OsRng;
        let kdf = match self {
            Seal::Passphrase(_, cost) => cost.params(&mut rng),
            // Replaced by the keystore protection when sealing.
            Seal::Keystore(_) => KdfCost::Light.params(&mut rng),
        };
        let header =
            crate::dealer::share_header(manifest, owner, key_package, kdf).map_err(|e| {
                StoreError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(e),
                }
            })?;
        match self {
            Seal::Passphrase(pass, _) => {
                ShareFile::write(path, key_package, header, pass, false, &mut rng)?
            }
            Seal::Keystore(to) => {
                ShareFile::write_to(path, key_package, header, to, false, &mut rng)?
            }
        }
        Ok(())
    }
}

/// The dealer's all-or-nothing write: every share (encrypted under `passphrase`) and the
/// manifest go to `dir` as pending files first, then all are activated; on any failure every
/// file written is removed. Returns the manifest file and the share files in member order.
pub fn write_dealt(
    dir: &Path,
    manifest: &GroupManifest,
    shares: &[crate::DealtShare],
    names: &[String],
    passphrase: &Passphrase,
    kdf: KdfCost,
) -> Result<(PathBuf, Vec<PathBuf>), StoreError> {
    let seals = vec![Seal::Passphrase(passphrase, kdf); shares.len()];
    write_dealt_sealed(dir, manifest, shares, names, &seals)
}

/// [`write_dealt`] with each member's share sealed as `seals` (in member order) says.
pub fn write_dealt_sealed(
    dir: &Path,
    manifest: &GroupManifest,
    shares: &[crate::DealtShare],
    names: &[String],
    seals: &[Seal<'_>],
) -> Result<(PathBuf, Vec<PathBuf>), StoreError> {
    if names.len() != shares.len() || seals.len() != shares.len() {
        return Err(StoreError::Mismatch {
            shares: shares.len(),
            names: names.len(),
        });
    }
    let mut rng = rand::rngs::OsRng;
    let manifest_file = manifest_path(dir, &manifest.group);
    let share_files: Vec<PathBuf> = names
        .iter()
        .map(|n| share_path(dir, &manifest.group, n))
        .collect();
    let all: Vec<&PathBuf> = std::iter::once(&manifest_file)
        .chain(&share_files)
        .collect();
    for p in &all {
        if p.exists() {
            return Err(StoreError::Exists((*p).clone()));
        }
        if pending_path(p).exists() {
            return Err(StoreError::Exists(pending_path(p)));
        }
    }
    conclave_protocol::identity::create_private_dir(dir).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let written = (|| {
        for ((share, path), seal) in shares.iter().zip(&share_files).zip(seals) {
            seal.write(
                &pending_path(path),
                &share.key_package,
                manifest,
                share.node_id,
            )?;
        }
        let pending = pending_path(&manifest_file);
        write_atomic(&pending, manifest.to_toml()?.as_bytes(), &mut rng).map_err(io(&pending))?;
        sync_dir(dir)?;
        for p in &all {
            let pending = pending_path(p);
            std::fs::rename(&pending, p).map_err(io(&pending))?;
        }
        sync_dir(dir)
    })();
    if written.is_err() {
        for p in &all {
            remove_if_present(&pending_path(p));
            remove_if_present(p);
        }
    }
    written.map(|()| (manifest_file, share_files))
}

/// The relay's files of a completed ceremony in `dir`: the new manifest (unless the ceremony
/// keeps it, as a repair does) and the completion, whose n signed acknowledgements let any
/// member left undecided activate. Returns the manifest file (if written) and the completion
/// file.
pub fn write_relayed(
    dir: &Path,
    plan: &CeremonyPlan,
    manifest: &GroupManifest,
    completion: &Completion,
) -> Result<(Option<PathBuf>, PathBuf), StoreError> {
    let mut rng = rand::rngs::OsRng;
    conclave_protocol::identity::create_private_dir(dir).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    // The completion first: members left undecided need it even if the manifest write fails.
    let completion_file = completion_path(dir, plan);
    write_atomic(&completion_file, completion.to_toml().as_bytes(), &mut rng)
        .map_err(io(&completion_file))?;
    let manifest_file = (plan.kind != CeremonyKind::Repair).then(|| plan_manifest_path(dir, plan));
    if let Some(path) = &manifest_file {
        write_atomic(path, manifest.to_toml()?.as_bytes(), &mut rng).map_err(io(path))?;
    }
    Ok((manifest_file, completion_file))
}

/// Why a share cannot be served by this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("{path}: this share belongs to node {owner}, but this node's identity is {me}")]
    NotMine {
        path: PathBuf,
        owner: String,
        me: String,
    },
    #[error("{path}: a second share of group {group} at epoch {epoch} (one share per group and epoch; two epochs side by side only during a rotation switch)")]
    SecondShare {
        path: PathBuf,
        group: GroupName,
        epoch: u64,
    },
}

/// The shares a participant serves, with the rules for loading them in one place: each share
/// belongs to this node's identity, and there is one share per group and epoch (a group's old
/// and new epoch side by side while a rotation switch is under way).
pub struct ServedShares {
    me: NodeId,
    shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
}

impl ServedShares {
    /// No share yet, for the node `me`.
    pub fn new(me: NodeId) -> Self {
        Self { me, shares: vec![] }
    }

    /// Adds the share read from `path`.
    pub fn add(&mut self, path: &Path, share: ShareFile) -> Result<(), ServeError> {
        if share.header.owner != self.me {
            return Err(ServeError::NotMine {
                path: path.to_path_buf(),
                owner: share.header.owner.short(),
                me: self.me.short(),
            });
        }
        if self
            .shares
            .iter()
            .any(|(g, e, _)| *g == share.header.group && *e == share.header.epoch)
        {
            return Err(ServeError::SecondShare {
                path: path.to_path_buf(),
                group: share.header.group.clone(),
                epoch: share.header.epoch,
            });
        }
        self.shares.push((
            share.header.group.clone(),
            share.header.epoch,
            share.key_package.clone(),
        ));
        Ok(())
    }

    /// (group, epoch, key package) of every share, for the participant state machine.
    pub fn into_inner(self) -> Vec<(GroupName, u64, frost::keys::KeyPackage)> {
        self.shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceremony::{harness, CeremonyPlan, Member, PlanNode, Relay, RelayEvent};
    use conclave_protocol::IdentityKey;

    fn dkg(n: usize) -> (CeremonyPlan, Vec<IdentityKey>) {
        let mut rng = rand::rngs::OsRng;
        let ids: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let node = |name: String, k: &IdentityKey| PlanNode {
            name,
            identity_key: k.node_id().to_hex(),
            address: "127.0.0.1:7000".into(),
        };
        let plan = CeremonyPlan::new_dkg(
            GroupName::new("g").unwrap(),
            2,
            node("coord".into(), &IdentityKey::generate(&mut rng)),
            ids.iter()
                .enumerate()
                .map(|(i, k)| node(format!("p{i}"), k))
                .collect(),
            &mut rng,
        )
        .unwrap();
        (plan, ids)
    }

    /// Runs a DKG in memory; returns the plan, each member's outcome and the relay's completion.
    fn completed() -> (CeremonyPlan, Vec<IdentityKey>, harness::Run, Completion) {
        let (plan, ids) = dkg(3);
        let members = ids
            .iter()
            .map(|k| {
                let p = crate::kinds::protocol_for(crate::kinds::Input::Dkg(&plan), &k.node_id())
                    .unwrap();
                Member::new(&plan, k.clone(), p).unwrap()
            })
            .collect();
        let relay = Relay::new(
            &plan,
            crate::kinds::rounds(plan.kind),
            std::time::Instant::now(),
        )
        .unwrap();
        let run = harness::run(members, relay);
        let Some(RelayEvent::Completed { completion, .. }) = run.relay_events.last().cloned()
        else {
            panic!("completed");
        };
        (plan, ids, run, completion)
    }

    /// Review finding: the pending files of an undecided member must still be resumable, and
    /// `--abandon` must only inspect: a ceremony every member acknowledged is never abandoned
    /// nor activated by it.
    #[test]
    fn inspect_never_activates_and_resume_activates_with_every_acknowledgement() {
        let (plan, ids, run, completion) = completed();
        let dir = tempfile::tempdir().unwrap();
        let me = ids[0].node_id();
        let mut store = FileShareStore::for_member(
            &plan,
            &me,
            dir.path(),
            Some(Passphrase::new("a passphrase for the test".into())),
            KdfCost::Light,
        );
        store.check_fresh().unwrap();
        // Stored and acknowledged, then cut off: the record holds only this member's ack.
        let (manifest, kp) = run.stores[0].active().unwrap().clone();
        let outcome = Outcome {
            manifest,
            key_package: kp,
        };
        let mut own = completion.clone();
        own.acks.retain(|k, _| *k == me.to_hex());
        store.write_pending(&outcome, &own).unwrap();
        assert_eq!(store.pending_present().len(), 2);
        assert!(matches!(
            store.check_fresh(),
            Err(StoreError::Unfinished(_))
        ));
        // Inspect with the relay's completion: complete, but nothing is activated.
        let seen = store
            .inspect(&plan, std::slice::from_ref(&completion))
            .unwrap();
        assert!(matches!(seen, Resume::Complete(_)));
        assert_eq!(store.pending_present().len(), 2);
        assert!(!store.share_file().unwrap().exists());
        // Without the others' acks: undecided, missing named.
        match store.resume(&plan, &[]).unwrap() {
            Resume::Undecided { missing, .. } => assert_eq!(missing, vec!["p1", "p2"]),
            other => panic!("{other:?}"),
        }
        // With them: activated, the full completion written.
        assert!(matches!(
            store.resume(&plan, &[completion]).unwrap(),
            Resume::Activated(_)
        ));
        assert!(store.pending_present().is_empty());
        assert!(store.share_file().unwrap().exists());
        let kept = read_completion(store.completion_file()).unwrap();
        assert_eq!(kept.acks.len(), 3);
    }

    /// Crash-test finding (tests/tests/crash.rs): with a file of the set missing (a pending
    /// manifest lost after a crash, or deleted), `rotate resume` activated the share alone,
    /// leaving a share without its manifest. It must refuse; after a crash between the
    /// renames of activation (share already final, manifest still pending) it must finish.
    #[test]
    fn resume_never_activates_part_of_a_set_but_finishes_an_interrupted_activation() {
        let (plan, ids, run, completion) = completed();
        let dir = tempfile::tempdir().unwrap();
        let me = ids[0].node_id();
        let mut store = FileShareStore::for_member(
            &plan,
            &me,
            dir.path(),
            Some(Passphrase::new("a passphrase for the test".into())),
            KdfCost::Light,
        );
        let (manifest, kp) = run.stores[0].active().unwrap().clone();
        let outcome = Outcome {
            manifest,
            key_package: kp,
        };
        store.write_pending(&outcome, &completion).unwrap();
        let pending_manifest = pending_path(store.manifest_file().unwrap());
        let kept = std::fs::read(&pending_manifest).unwrap();
        std::fs::remove_file(&pending_manifest).unwrap();
        assert!(matches!(
            store.resume(&plan, std::slice::from_ref(&completion)),
            Err(StoreError::Incomplete(_))
        ));
        assert!(!store.share_file().unwrap().exists(), "nothing activated");
        // Interrupted activation: the share is final, the manifest still pending.
        std::fs::write(&pending_manifest, kept).unwrap();
        let share = store.share_file().unwrap().to_path_buf();
        std::fs::rename(pending_path(&share), &share).unwrap();
        assert!(matches!(
            store.resume(&plan, &[completion]).unwrap(),
            Resume::Activated(_)
        ));
        assert!(store.pending_present().is_empty());
        assert!(store.manifest_file().unwrap().exists());
    }

    /// Review finding: acknowledgements are signed under the confirm/store round labels of the
    /// three-round protocols (4 and 5), as before the labels were fixed, so completion files
    /// written by the earlier version still verify.
    #[test]
    fn acknowledgement_labels_are_those_of_the_earlier_format() {
        let (plan, ids, run, completion) = completed();
        let hash = run.stores[0].active().unwrap().0.hash().unwrap();
        completion.verify(&plan, &hash).unwrap();
        // Re-sign one acknowledgement exactly as the earlier version did (round = final
        // round of a DKG = 5) and check it verifies.
        let mut ctx = crate::ceremony::Ctx::of(&plan).unwrap();
        hex::decode_to_slice(&completion.session, &mut ctx.session).unwrap();
        assert_eq!(crate::kinds::rounds(plan.kind).final_round(), 5);
        let sig = ctx.sign(&ids[1], b"stored", 5, None, &[&hash]);
        let mut again = completion.clone();
        again
            .acks
            .insert(ids[1].node_id().to_hex(), hex::encode(sig));
        again.verify(&plan, &hash).unwrap();
    }

    /// Review finding: the dealer's write refuses mismatched lists (it used to zip them).
    #[test]
    fn the_dealers_write_is_all_or_nothing() {
        let mut rng = rand::rngs::OsRng;
        let members: Vec<crate::NewMember> = ["a", "b", "c"]
            .iter()
            .map(|n| crate::NewMember {
                name: n.to_string(),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let (manifest, shares) =
            crate::deal(GroupName::new("g").unwrap(), 2, &members, &mut rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("a passphrase for the test".into());
        let names = vec!["a".to_string()];
        assert!(matches!(
            write_dealt(
                dir.path(),
                &manifest,
                &shares,
                &names,
                &pass,
                KdfCost::Light
            ),
            Err(StoreError::Mismatch { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let (m, files) = write_dealt(
            dir.path(),
            &manifest,
            &shares,
            &names,
            &pass,
            KdfCost::Light,
        )
        .unwrap();
        assert!(m.exists() && files.iter().all(|f| f.exists()));
        // A second write refuses to overwrite anything.
        assert!(matches!(
            write_dealt(
                dir.path(),
                &manifest,
                &shares,
                &names,
                &pass,
                KdfCost::Light
            ),
            Err(StoreError::Exists(_))
        ));
    }
}
