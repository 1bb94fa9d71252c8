//! An async signing service over a conclave group: what an application holds instead of a
//! private key.
//!
//! ```no_run
//! # async fn run() -> Result<(), conclave_client::ServiceError> {
//! use conclave_client::{ClientConfig, SigningService, ThresholdSigner};
//! let config = ClientConfig::read(std::path::Path::new("/etc/conclave/client.toml"))?;
//! let signer = ThresholdSigner::connect(&config, None).await?;
//! let signature = signer.sign(b"release 1.2.3").await?;
//! signer.public_key().verify_strict(b"release 1.2.3", &signature).expect("verified");
//! # Ok(()) }
//! ```
//!
//! A runnable version is `examples/sign.rs`; the tests run it against a real cluster
//! (`tests/tests/client_library.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave_protocol::{GroupName, IdentityKey, NodeId, PolicyRule, Refusal, SignError};
use ed25519_dalek::{Signature, VerifyingKey};
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::client::{Client, ClientError};
use crate::config::{ClientConfig, ConfigError};
use crate::quic::TransportError;

/// Something that signs with an Ed25519 key it may not hold.
pub trait SigningService {
    /// The key every signature verifies under.
    fn public_key(&self) -> VerifyingKey;
    /// A signature of `message`, verified under [`public_key`](Self::public_key) before it is
    /// returned.
    fn sign(&self, message: &[u8]) -> impl Future<Output = Result<Signature, ServiceError>> + Send;
}

/// Why no signature came back. [`code`](Self::code) gives the stable codes the CLI's
/// `external-signer` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No coordinator reachable, or fewer than a threshold of signers.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed (connecting included).
    #[error("no signature within {0:?}")]
    Timeout(Duration),
    /// The signers' policies did not authorise the request.
    #[error("not authorized: {}", .refusals.iter().map(|(who, rule)| format!("{who}: {rule}")).collect::<Vec<_>>().join("; "))]
    NotAuthorized { refusals: Vec<(String, PolicyRule)> },
    /// Another typed refusal of the request.
    #[error("refused: {0}")]
    Refused(SignError),
    /// The coordinator answered something that is not a valid signature under the key.
    #[error("bad response from the coordinator: {0}")]
    BadResponse(String),
    /// The request itself cannot be made (configuration, message too large, ...).
    #[error("{0}")]
    BadInput(String),
}

impl ServiceError {
    /// `SIGNER_UNAVAILABLE`, `SIGNER_TIMEOUT`, `SIGNER_REFUSED`, `SIGNER_BAD_RESPONSE` or
    /// `SIGNER_BAD_INPUT`.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Unavailable(_) => "SIGNER_UNAVAILABLE",
            ServiceError::Timeout(_) => "SIGNER_TIMEOUT",
            ServiceError::NotAuthorized { .. } | ServiceError::Refused(_) => "SIGNER_REFUSED",
            ServiceError::BadResponse(_) => "SIGNER_BAD_RESPONSE",
            ServiceError::BadInput(_) => "SIGNER_BAD_INPUT",
        }
    }

    fn from_client(e: ClientError, timeout: Duration) -> Self {
        match e {
            ClientError::Transport(TransportError::Timeout(_)) => ServiceError::Timeout(timeout),
            ClientError::Transport(t) => ServiceError::Unavailable(t.to_string()),
            ClientError::Sign(SignError::NotAuthorized { refusals }) => {
                ServiceError::NotAuthorized { refusals }
            }
            ClientError::Sign(
                e @ (SignError::SignerUnavailable { .. } | SignError::AttemptFailed { .. }),
            ) => ServiceError::Unavailable(e.to_string()),
            ClientError::Sign(SignError::DeadlineExceeded) => ServiceError::Timeout(timeout),
            ClientError::Sign(e @ SignError::MessageTooLarge { .. }) => {
                ServiceError::BadInput(e.to_string())
            }
            ClientError::Sign(e) => ServiceError::Refused(e),
            e @ (ClientError::UnexpectedReply
            | ClientError::InvalidSignature
            | ClientError::WrongKey { .. }) => ServiceError::BadResponse(e.to_string()),
            e => ServiceError::BadInput(e.to_string()),
        }
    }
}

impl From<ConfigError> for ServiceError {
    fn from(e: ConfigError) -> Self {
        ServiceError::BadInput(e.to_string())
    }
}

/// The kept connection and the index of the coordinator it goes to, shared by the signers of
/// one [`ThresholdSigner::connect_groups`].
type SharedConn = Arc<Mutex<Option<(Arc<Client>, usize)>>>;

/// A threshold signer for one group: one kept-open connection to the first coordinator that
/// answers, reconnecting (and failing over to the next coordinator) when it drops. Cheap to
/// share behind an `Arc`; requests from several tasks share the connection.
pub struct ThresholdSigner {
    identity: IdentityKey,
    coordinators: Vec<(String, NodeId)>,
    group: GroupName,
    public_key: VerifyingKey,
    /// The epoch from this host's manifest, when it has one.
    epoch: Option<u64>,
    timeout: Duration,
    /// The kept connection, shared by every signer made together (one per group), and the
    /// index of the coordinator it goes to.
    conn: SharedConn,
    /// Where the next connection attempt starts (after a failover, the next coordinator).
    preferred: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for ThresholdSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThresholdSigner")
            .field("group", &self.group)
            .field("public_key", &hex::encode(self.public_key.as_bytes()))
            .finish_non_exhaustive()
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, ServiceError> {
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ServiceError::Unavailable(format!("cannot resolve {address}")))
}

/// The public key and epoch of every group this host's own manifests name (the config's
/// `manifests`, then `manifests_dir`), read once.
#[derive(Clone, Debug, Default)]
pub struct ManifestIndex {
    groups: BTreeMap<GroupName, (VerifyingKey, u64)>,
}

/// Most manifests read from a client's `manifests_dir`.
const MAX_DIR_MANIFESTS: usize = 100_000;

fn read_head(path: &Path) -> Result<(GroupName, VerifyingKey, u64), ServiceError> {
    let bad = |why: String| ServiceError::BadInput(format!("manifest {}: {why}", path.display()));
    let text = conclave_protocol::read_bounded_to_string(path, 1024 * 1024)
        .map_err(|e| bad(e.to_string()))?;
    let m: ManifestHead = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
    let group = GroupName::new(&m.group).map_err(|e| bad(format!("group: {e}")))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&m.group_public_key, &mut key)
        .map_err(|_| bad("bad group_public_key".into()))?;
    let vk = VerifyingKey::from_bytes(&key).map_err(|_| bad("bad group_public_key".into()))?;
    Ok((group, vk, m.epoch))
}

impl ManifestIndex {
    /// Reads the config's manifests: a listed one that cannot be read is an error, and wins
    /// over the directory for its group; one in `manifests_dir` that cannot be read is
    /// skipped with a warning. Of two in the directory for one group, the newest epoch wins if
    /// they name the same group key; two keys for one group: the group is left out (a
    /// planted file must not replace the key this host trusts).
    pub fn read(config: &ClientConfig) -> Result<Self, ServiceError> {
        let mut index = Self::default();
        for path in &config.manifests {
            let (g, vk, epoch) = read_head(path)?;
            index.insert(g, vk, epoch);
        }
        if let Some(dir) = &config.manifests_dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                ServiceError::BadInput(format!("manifests_dir {}: {e}", dir.display()))
            })?;
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.') && n.ends_with(".toml"))
                })
                .collect();
            if files.len() > MAX_DIR_MANIFESTS {
                return Err(ServiceError::BadInput(format!(
                    "manifests_dir {} holds more than {MAX_DIR_MANIFESTS} manifests",
                    dir.display()
                )));
            }
            files.sort();
            let listed: Vec<GroupName> = index.groups.keys().cloned().collect();
            let mut from_dir = Self::default();
            let mut conflicting = std::collections::BTreeSet::new();
            for path in files {
                match read_head(&path) {
                    Ok((g, _, _)) if listed.contains(&g) => {
                        tracing::warn!(group = %g, "{}: the group's manifest listed in `manifests` is used instead", path.display());
                    }
                    Ok((g, vk, epoch)) => match from_dir.groups.get(&g) {
                        Some((other, _)) if *other != vk => {
                            tracing::warn!(group = %g, "{}: another group key than an earlier manifest of the group: the group is left out", path.display());
                            conflicting.insert(g);
                        }
                        _ => from_dir.insert(g, vk, epoch),
                    },
                    Err(e) => tracing::warn!("skipped: {e}"),
                }
            }
            for (g, entry) in from_dir.groups {
                if !conflicting.contains(&g) {
                    index.groups.insert(g, entry);
                }
            }
        }
        Ok(index)
    }

    fn insert(&mut self, group: GroupName, vk: VerifyingKey, epoch: u64) {
        match self.groups.get(&group) {
            Some((_, e)) if *e >= epoch => {}
            _ => {
                self.groups.insert(group, (vk, epoch));
            }
        }
    }

    /// The public key and epoch of `group`, if a manifest names it.
    pub fn get(&self, group: &GroupName) -> Option<(VerifyingKey, u64)> {
        self.groups.get(group).copied()
    }

    /// Every group named, sorted.
    pub fn groups(&self) -> impl Iterator<Item = &GroupName> {
        self.groups.keys()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The fields of a group manifest a client needs (the rest is ignored).
#[derive(serde::Deserialize)]
struct ManifestHead {
    group: String,
    epoch: u64,
    group_public_key: String,
}

impl ThresholdSigner {
    /// Connects for `group` (or the config's default group): the public key comes from this
    /// host's manifest when the config lists one for the group, else from the coordinator at
    /// connect (and is then pinned for the life of the signer).
    pub async fn connect(config: &ClientConfig, group: Option<&str>) -> Result<Self, ServiceError> {
        let name = group.or(config.group.as_deref()).ok_or_else(|| {
            ServiceError::BadInput(
                "no group given and no default group in the client config".into(),
            )
        })?;
        let mut all = Self::connect_groups(config, &[name]).await?;
        all.pop()
            .ok_or_else(|| ServiceError::BadInput("no group".into()))
    }

    /// Signers for several groups over one kept connection (what the ssh-agent serves): one
    /// connection, one handshake, whatever the number of groups; each signer is a
    /// [`SigningService`] of its own.
    pub async fn connect_groups(
        config: &ClientConfig,
        groups: &[&str],
    ) -> Result<Vec<Self>, ServiceError> {
        let index = ManifestIndex::read(config)?;
        Self::connect_indexed(config, &index, groups).await
    }

    /// Signers for every group this host's manifests name (the config's `manifests` and
    /// `manifests_dir`), over one kept connection, in group-name order.
    pub async fn connect_all(config: &ClientConfig) -> Result<Vec<Self>, ServiceError> {
        let index = ManifestIndex::read(config)?;
        if index.is_empty() {
            return Err(ServiceError::BadInput(
                "the client config names no manifest (manifests or manifests_dir): no group to sign for"
                    .into(),
            ));
        }
        let names: Vec<String> = index.groups().map(|g| g.to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Self::connect_indexed(config, &index, &names).await
    }

    async fn connect_indexed(
        config: &ClientConfig,
        index: &ManifestIndex,
        groups: &[&str],
    ) -> Result<Vec<Self>, ServiceError> {
        let mut out = Vec::with_capacity(groups.len());
        let shared: SharedConn = Arc::new(Mutex::new(None));
        let preferred = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deadline = Instant::now() + config.timeout();
        if config.coordinators.is_empty() {
            return Err(ServiceError::BadInput(
                "the client config lists no [[coordinator]]".into(),
            ));
        }
        let identity = IdentityKey::read_from(&config.identity).map_err(|e| {
            ServiceError::BadInput(format!(
                "cannot load the client identity {}: {e}",
                config.identity.display()
            ))
        })?;
        for name in groups {
            out.push(
                Self::connect_one(
                    config,
                    index,
                    &identity,
                    name,
                    shared.clone(),
                    preferred.clone(),
                    deadline,
                )
                .await?,
            );
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn connect_one(
        config: &ClientConfig,
        index: &ManifestIndex,
        identity: &IdentityKey,
        name: &str,
        shared: SharedConn,
        preferred: Arc<std::sync::atomic::AtomicUsize>,
        deadline: Instant,
    ) -> Result<Self, ServiceError> {
        let group = GroupName::new(name)
            .map_err(|e| ServiceError::BadInput(format!("group {name:?}: {e}")))?;
        let identity = identity.clone();
        let coordinators = config
            .coordinators
            .iter()
            .map(|c| Ok((c.address.clone(), c.node_id()?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let local = index.get(&group);
        let timeout = config.timeout();
        let mut signer = Self {
            identity,
            coordinators,
            group,
            // Replaced below: from the manifest, or from the coordinator.
            public_key: VerifyingKey::default(),
            epoch: local.map(|(_, e)| e),
            timeout,
            conn: shared,
            preferred,
        };
        let (client, _) = signer.client(deadline).await?;
        signer.public_key = match local {
            Some((vk, _)) => vk,
            None if !config.trust_coordinator_key => {
                return Err(ServiceError::BadInput(format!(
                    "no manifest for group {} in the client config: list this host's copy in `manifests` (the group key must not come from the coordinator alone), or set trust_coordinator_key = true",
                    signer.group
                )))
            }
            None => {
                tracing::warn!(group = %signer.group, "trusting the group key the coordinator reports (trust_coordinator_key)");
                let info = tokio::time::timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    client.group_info(&signer.group),
                )
                .await
                .map_err(|_| ServiceError::Timeout(timeout))?
                .map_err(|e| ServiceError::from_client(e, timeout))?;
                VerifyingKey::from_bytes(&info.public_key).map_err(|_| {
                    ServiceError::BadResponse("the group key is not a valid Ed25519 key".into())
                })?
            }
        };
        if let Some(e) = signer.epoch {
            client.pin_epoch(&signer.group, e);
        }
        Ok(signer)
    }

    /// The kept connection, (re)opened if needed. The lock is never held while a request runs.
    async fn client(&self, deadline: Instant) -> Result<(Arc<Client>, usize), ServiceError> {
        // Held while (re)connecting, so that one connect serves every waiting caller; each
        // waits no longer than its own deadline.
        let mut conn = tokio::time::timeout_at(deadline.into(), self.conn.lock())
            .await
            .map_err(|_| {
                ServiceError::Unavailable(
                    "no coordinator connection within the deadline (another caller is still connecting)"
                        .into(),
                )
            })?;
        if let Some((c, i)) = conn.as_ref().filter(|(c, _)| c.is_open()) {
            return Ok((c.clone(), *i));
        }
        let (c, i) = self.open(deadline).await?;
        let c = Arc::new(c);
        *conn = Some((c.clone(), i));
        Ok((c, i))
    }

    /// Opens the kept connection if it is down (failing over in config order), within the
    /// configured timeout. A long-running front end (the ssh-agent) calls it in the
    /// background with backoff, so a request rarely waits for a handshake.
    pub async fn ensure_connected(&self) -> Result<(), ServiceError> {
        self.client(Instant::now() + self.timeout).await.map(|_| ())
    }

    /// Forgets the kept connection (if it is still `client`) and starts the next attempt at
    /// the coordinator after `index`.
    async fn fail_over(&self, client: &Arc<Client>, index: usize) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, client)) {
            *conn = None;
            let next = (index + 1) % self.coordinators.len().max(1);
            self.preferred
                .store(next, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The group signed for.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// Connects to the first coordinator that answers before `deadline`, in config order
    /// starting at the preferred one; each attempt gets an even part of the time left, so a
    /// dead coordinator cannot use up the whole budget.
    async fn open(&self, deadline: Instant) -> Result<(Client, usize), ServiceError> {
        let mut last = String::from("no coordinator configured");
        let n = self.coordinators.len();
        let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % n.max(1);
        for k in 0..n {
            let index = (start + k) % n;
            let Some((address, key)) = self.coordinators.get(index) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let left = left / u32::try_from(n - k).unwrap_or(1);
            let addr = match resolve(address).await {
                Ok(a) => a,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match Client::connect_within(&self.identity, addr, *key, left).await {
                Ok(c) => {
                    if let Some(e) = self.epoch {
                        c.pin_epoch(&self.group, e);
                    }
                    tracing::debug!(coordinator = %address, "connected");
                    self.preferred
                        .store(index, std::sync::atomic::Ordering::Relaxed);
                    return Ok((c, index));
                }
                Err(e) => {
                    tracing::debug!(coordinator = %address, error = %e, "coordinator not reachable; trying the next");
                    last = format!("{address}: {e}");
                }
            }
        }
        // No coordinator answered in time: unavailable (not a slow signature).
        Err(ServiceError::Unavailable(format!(
            "no coordinator reachable ({last})"
        )))
    }

    /// Signs `message`, declaring `kind` instead of recognising it from the bytes, within the
    /// configured timeout.
    pub async fn sign_kind(
        &self,
        message: &[u8],
        kind: Option<&str>,
    ) -> Result<Signature, ServiceError> {
        self.sign_within(message, kind, self.timeout).await
    }

    /// Signs `message` within `budget` (connecting, when the kept connection is gone, included).
    pub async fn sign_within(
        &self,
        message: &[u8],
        kind: Option<&str>,
        budget: Duration,
    ) -> Result<Signature, ServiceError> {
        let deadline = Instant::now() + budget;
        let several = self.coordinators.len() > 1;
        // One reconnect (and failover) per request when the kept connection breaks.
        for attempt in 0..2 {
            let (client, index) = self.client(deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Timeout(budget));
            }
            // A coordinator that died without closing its connection answers nothing: with
            // another coordinator to go to, the first try gets half the time, and a signature
            // slower than PROBE_AFTER has the coordinator pinged; no pong, and the request goes
            // to the next coordinator at once instead of waiting for the half.
            let probing = several && attempt == 0;
            let this_try = if probing { left / 2 } else { left };
            let sign = tokio::time::timeout(
                this_try,
                client.sign_kind(
                    &self.group,
                    message,
                    kind,
                    this_try,
                    Some(self.public_key.to_bytes()),
                ),
            );
            // Biased: a signature ready in the same poll as a failed ping is kept.
            let result = tokio::select! {
                biased;
                r = sign => Some(r),
                () = dead(&client), if probing => None,
            };
            let Some(result) = result else {
                tracing::debug!("the coordinator answers no ping; failing over");
                self.fail_over(&client, index).await;
                continue;
            };
            match result {
                Err(_) | Ok(Err(ClientError::Transport(TransportError::Timeout(_)))) if probing => {
                    tracing::debug!("no answer from the coordinator; failing over");
                    self.fail_over(&client, index).await;
                }
                Err(_) => return Err(ServiceError::Timeout(budget)),
                Ok(Ok(signed)) => return Ok(Signature::from_bytes(&signed.signature)),
                // The coordinator is draining before it stops: the next one takes the request.
                Ok(Err(ClientError::Sign(SignError::Refused(Refusal::ShuttingDown))))
                    if several =>
                {
                    tracing::debug!("the coordinator is shutting down; failing over");
                    self.fail_over(&client, index).await;
                }
                // The connection broke: forget it (the next try reconnects, failing over).
                Ok(Err(ClientError::Transport(e))) if !matches!(e, TransportError::Timeout(_)) => {
                    tracing::debug!(error = %e, "connection to the coordinator lost; reconnecting");
                    self.fail_over(&client, index).await;
                }
                Ok(Err(e)) => return Err(ServiceError::from_client(e, budget)),
            }
        }
        Err(ServiceError::Unavailable(
            "the coordinator connection keeps failing".into(),
        ))
    }

    /// Closes the kept connection cleanly.
    pub async fn close(&self) {
        let taken = self.conn.lock().await.take();
        if let Some(c) = taken.and_then(|(c, _)| Arc::try_unwrap(c).ok()) {
            c.close().await;
        }
    }
}

/// How long a signature may take before the coordinator is pinged, and how long the pong may
/// take. A signature takes tens of milliseconds when the signers are up; one that waits for a
/// signer that stopped answering takes up to the coordinator's participant timeout (2 s), and
/// a live coordinator still answers pings meanwhile.
const PROBE_AFTER: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Resolves when `client`'s coordinator fails to answer a ping sent after `PROBE_AFTER`
/// (and every `PROBE_AFTER` after that); never while it answers.
async fn dead(client: &Client) {
    loop {
        tokio::time::sleep(PROBE_AFTER).await;
        if client.ping(PROBE_TIMEOUT).await.is_err() {
            return;
        }
    }
}

impl SigningService for ThresholdSigner {
    fn public_key(&self) -> VerifyingKey {
        self.public_key
    }

    fn sign(&self, message: &[u8]) -> impl Future<Output = Result<Signature, ServiceError>> + Send {
        self.sign_kind(message, None)
    }
}

impl async_signature::AsyncSigner<Signature> for ThresholdSigner {
    async fn sign_async(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        self.sign_kind(msg, None)
            .await
            .map_err(signature::Error::from_source)
    }
}

impl AsRef<VerifyingKey> for ThresholdSigner {
    fn as_ref(&self) -> &VerifyingKey {
        &self.public_key
    }
}

impl signature::KeypairRef for ThresholdSigner {
    type VerifyingKey = VerifyingKey;
}
