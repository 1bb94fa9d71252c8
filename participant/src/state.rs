//! The participant state machine.
//!
//! Inputs: [`Participant::handle`] (a request from an authenticated peer, the time, an RNG) and
//! [`Participant::handle_timeout`]. Outputs: [`Participant::poll_transmit`] (exactly one reply per
//! request) and [`Participant::poll_timeout`] (when to call `handle_timeout` next). No clock,
//! no sockets, no threads.
//!
//! Nonce discipline: every commitment's nonces live only in memory, belong to the coordinator
//! that asked for them, and are removed from the table *before* a signature share is computed,
//! so each can be used at most once whatever happens next. A restart loses them all.
//!
//! Authorization: a round-2 request carries the client's signed request. The participant
//! decides from its own [`Policy`] (client signature, group, epoch, the message of the package
//! being exactly the one the client signed, kind recognised from the bytes, size, rate,
//! replay) and writes its decision to its [`AuditSink`] before a share leaves; a share whose
//! record cannot be written is dropped and the request refused (fail closed).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use conclave_audit::{AuditSink, Decision, Durable};
use conclave_policy::{MessageKind, Policy};
use conclave_protocol::request::SignedRequest;
use conclave_protocol::{
    CommitmentEntry, Envelope, GroupName, Message, NodeId, Refusal, SignPackage, Transmit,
    MAX_BATCH, MAX_SIGN_MESSAGE_LEN,
};
use frost_ed25519 as frost;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// Round-2 answers remembered for duplicated requests.
const MAX_ANSWERED: usize = 4096;

/// Which groups a participant refuses to sign for (`conclave freeze`): all of them, or some.
/// The node's operator decides it; the driver persists it and hands it over.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// Every group, present and future.
    #[serde(default)]
    pub all: bool,
    /// These groups.
    #[serde(default)]
    pub groups: std::collections::BTreeSet<GroupName>,
}

impl Freeze {
    /// True when `group` is frozen.
    pub fn covers(&self, group: &GroupName) -> bool {
        self.all || self.groups.contains(group)
    }

    /// True when nothing is frozen.
    pub fn is_empty(&self) -> bool {
        !self.all && self.groups.is_empty()
    }
}

/// What [`Participant::set_shares`] changed, by (group, epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareChanges {
    pub added: Vec<(GroupName, u64)>,
    pub removed: Vec<(GroupName, u64)>,
    /// Same group and epoch, another share (a repaired or re-encrypted file holds the same
    /// share and is not listed here).
    pub replaced: Vec<(GroupName, u64)>,
    pub kept: Vec<(GroupName, u64)>,
}

/// Limits of a participant.
#[derive(Clone, Debug)]
pub struct ParticipantConfig {
    /// Most unused commitments kept per group and coordinator.
    pub max_outstanding: usize,
    /// Most unused commitments kept for one coordinator over all groups: the node's memory
    /// stays bounded however many groups it serves (beyond it, `Overloaded`).
    pub max_total_nonces: usize,
    /// How long an unused commitment stays valid.
    pub nonce_ttl: Duration,
    /// Most signers a signing package may name.
    pub max_signers: usize,
    /// Drop a decrypted share from memory once it has not been used for this long (the
    /// driver decrypts it again, through [`Participant::needs_share`] and
    /// [`Participant::restore_share`], before the next request that needs it). `None` keeps
    /// shares in memory for the life of the process.
    pub share_cache_ttl: Option<Duration>,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        Self {
            max_outstanding: 1024,
            max_total_nonces: 65_536,
            nonce_ttl: Duration::from_secs(600),
            max_signers: 1000,
            share_cache_ttl: None,
        }
    }
}

/// Test-only misbehaviour of a signer: the type is always there, but only the
/// `fault-injection` build can switch it on.
/// (Not to be confused with `conclave_keygen::ceremony::Fault`, a ceremony complaint code.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Return signature shares that do not verify ([`corrupt_share`]).
    CorruptShares,
}

/// What a corrupted signature share is, defined once: the fault-injection build of the
/// participant and the simulator's byzantine signers both use it. The share plus one (mod ℓ):
/// every corrupt signer adds the same, so the errors of several in one attempt add up and never
/// cancel. (Flipping the low bit did cancel: +1 at one signer and −1 at another left the sum,
/// the aggregate verified, and the coordinator, which checks shares one by one only when the
/// aggregate fails, as RFC 9591 does, rightly named no one: the simulator found it.)
pub fn corrupt_share(share: &mut [u8]) {
    let scalar = <[u8; 32]>::try_from(&*share).ok().and_then(|b| {
        Option::<curve25519_dalek::Scalar>::from(curve25519_dalek::Scalar::from_canonical_bytes(b))
    });
    match scalar {
        Some(s) => {
            let spoiled = (s + curve25519_dalek::Scalar::ONE).to_bytes();
            for (d, b) in share.iter_mut().zip(spoiled) {
                *d = b;
            }
        }
        // Not a share at all: any change spoils it.
        None => {
            if let Some(b) = share.first_mut() {
                *b ^= 0x01;
            }
        }
    }
}

/// A round-2 answer kept for duplicates: the request's digest, the share, and its audit
/// record's durability (a duplicate is not answered before the first answer could be).
type Answered = ([u8; 32], Vec<u8>, Durable);

/// One unused nonce pair (its commitments are inside `nonces`). About 500 bytes, boxed so
/// that the map's spare capacity costs a pointer per slot, not a whole entry.
struct PendingNonce {
    owner: NodeId,
    nonces: conclave_keygen::signing::SigningNonces,
    expires: Instant,
}

struct GroupShare {
    /// `None` while dropped from memory by the share cache TTL.
    key_package: Option<frost::keys::KeyPackage>,
    /// The public part, kept while the share is dropped: identifier, verifying share, minimum
    /// signers (what tells this share from the node's other shares).
    identifier: frost::Identifier,
    verifying_share: frost::keys::VerifyingShare,
    min_signers: u16,
    last_used: Instant,
    nonces: Nonces,
}

/// The unused nonces of one share, by commitment id, with the ids each coordinator holds
/// (oldest first: ids only grow), so a commit request is checked without a scan and a
/// coordinator's oldest nonces can be dropped when it asks beyond its limit.
#[derive(Default)]
struct Nonces {
    by_id: HashMap<u64, Box<PendingNonce>>,
    per_owner: HashMap<NodeId, std::collections::BTreeSet<u64>>,
}

impl Nonces {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn held_by(&self, owner: &NodeId) -> usize {
        self.per_owner.get(owner).map_or(0, |s| s.len())
    }

    fn get(&self, id: &u64) -> Option<&PendingNonce> {
        self.by_id.get(id).map(|b| &**b)
    }

    #[cfg(test)]
    fn contains_key(&self, id: &u64) -> bool {
        self.by_id.contains_key(id)
    }

    fn values(&self) -> impl Iterator<Item = &PendingNonce> {
        self.by_id.values().map(|b| &**b)
    }

    fn insert(&mut self, id: u64, nonce: Box<PendingNonce>) {
        let owner = nonce.owner;
        if let Some(old) = self.by_id.insert(id, nonce) {
            self.forget(&old.owner, id);
        }
        self.per_owner.entry(owner).or_default().insert(id);
    }

    fn remove(&mut self, id: &u64) -> Option<Box<PendingNonce>> {
        let nonce = self.by_id.remove(id)?;
        self.forget(&nonce.owner, *id);
        Some(nonce)
    }

    fn forget(&mut self, owner: &NodeId, id: u64) {
        if let Some(ids) = self.per_owner.get_mut(owner) {
            ids.remove(&id);
            if ids.is_empty() {
                self.per_owner.remove(owner);
            }
        }
    }

    /// Drops (zeroizing) the `count` oldest nonces `owner` holds; returns how many.
    fn evict_oldest(&mut self, owner: &NodeId, count: usize) -> usize {
        let oldest: Vec<u64> = self
            .per_owner
            .get(owner)
            .map(|ids| ids.iter().take(count).copied().collect())
            .unwrap_or_default();
        for id in &oldest {
            self.remove(id);
        }
        oldest.len()
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.per_owner.clear();
    }

    /// Keeps the nonces that have not expired at `now`; returns how many were dropped.
    fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len()
    }
}

impl GroupShare {
    fn new(key_package: frost::keys::KeyPackage, now: Instant) -> Self {
        Self {
            identifier: *key_package.identifier(),
            verifying_share: *key_package.verifying_share(),
            min_signers: *key_package.min_signers(),
            key_package: Some(key_package),
            last_used: now,
            nonces: Nonces::default(),
        }
    }
}

/// A signer node's protocol state for every group it holds a share of.
pub struct Participant {
    config: ParticipantConfig,
    /// Every share served, by group and epoch: during a rotation switch a node serves the old
    /// and the new epoch of a group side by side, so that no request fails while the
    /// coordinators move over.
    groups: BTreeMap<(GroupName, u64), GroupShare>,
    freeze: Freeze,
    next_commitment_id: u64,
    /// Replies, each with the durability of the audit record it depends on.
    outbox: VecDeque<(Transmit, Durable)>,
    /// The audit record the reply being built waits for (set by `sign`).
    reply_durable: Durable,
    next_sweep: Option<Instant>,
    fault: Option<Misbehaviour>,
    policy: Policy,
    audit: Box<dyn AuditSink>,
    /// Recent answers to round-2 requests, so that a duplicated request (the network may
    /// deliver one twice) gets the same share again instead of a refusal: (coordinator,
    /// commitment id) → (digest of the request, the share).
    answered: HashMap<(NodeId, u64), Answered>,
    answered_order: VecDeque<(NodeId, u64)>,
    /// Counters, for logs and the simulator.
    pub stats: ParticipantStats,
}

/// What the participant has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub commitments_made: u64,
    pub shares_signed: u64,
    pub refusals: u64,
    /// Requests the policy refused.
    pub not_authorized: u64,
    /// Shares dropped because their audit record could not be written.
    pub audit_failures: u64,
    pub nonces_expired: u64,
    /// Nonces dropped because their coordinator asked beyond `max_outstanding`.
    pub nonces_evicted: u64,
    /// Requests refused because the group is frozen.
    pub frozen_refusals: u64,
    /// Shares dropped from memory by the share cache TTL.
    pub shares_evicted: u64,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .field("freeze", &self.freeze)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

impl Participant {
    /// A participant holding `shares` (group, epoch, key package), deciding from `policy` and
    /// recording every decision in `audit`. Commitment ids start at a random point so that ids
    /// from before a restart do not name new nonces.
    pub fn new<R: RngCore + CryptoRng>(
        shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
        config: ParticipantConfig,
        policy: Policy,
        audit: Box<dyn AuditSink>,
        rng: &mut R,
    ) -> Self {
        let now = Instant::now();
        let groups = shares
            .into_iter()
            .map(|(g, epoch, key_package)| ((g, epoch), GroupShare::new(key_package, now)))
            .collect();
        let next_sweep = config.share_cache_ttl.map(|ttl| now + ttl);
        Self {
            config,
            groups,
            freeze: Freeze::default(),
            next_commitment_id: rng.next_u64() >> 1,
            outbox: VecDeque::new(),
            reply_durable: Durable::done(),
            next_sweep,
            fault: None,
            policy,
            audit,
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            stats: ParticipantStats::default(),
        }
    }

    /// Replaces the policy. The replay memory and rate buckets carry over (see
    /// [`Policy::take_state`]): a reload does not make an old request signable again.
    pub fn set_policy(&mut self, mut policy: Policy) {
        policy.take_state(&mut self.policy);
        self.policy = policy;
    }

    /// Replaces the shares served (a reload). A share whose group, epoch and key are
    /// unchanged keeps its pooled nonces, so requests in flight finish; every other share's
    /// nonces are dropped (zeroized) with it.
    pub fn set_shares(
        &mut self,
        now: Instant,
        shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
    ) -> ShareChanges {
        let mut changes = ShareChanges::default();
        let mut old = std::mem::take(&mut self.groups);
        for (g, epoch, key_package) in shares {
            let key = (g, epoch);
            match old.remove(&key) {
                Some(mut existing)
                    if existing.identifier == *key_package.identifier()
                        && existing.verifying_share == *key_package.verifying_share() =>
                {
                    existing.min_signers = *key_package.min_signers();
                    existing.key_package = Some(key_package);
                    changes.kept.push(key.clone());
                    self.groups.insert(key, existing);
                }
                Some(_) => {
                    changes.replaced.push(key.clone());
                    self.groups.insert(key, GroupShare::new(key_package, now));
                }
                None => {
                    changes.added.push(key.clone());
                    self.groups.insert(key, GroupShare::new(key_package, now));
                }
            }
        }
        changes.removed = old.into_keys().collect();
        self.next_sweep = Some(now);
        changes
    }

    /// Freezes or unfreezes groups: a frozen group gets no commitment and no signature share
    /// from this node (refused as `NodeFrozen`), whatever the coordinator or the client says.
    /// Freezing drops the group's pooled nonces.
    pub fn set_freeze(&mut self, freeze: Freeze) {
        for ((g, _), share) in self.groups.iter_mut() {
            if freeze.covers(g) {
                share.nonces.clear();
            }
        }
        self.freeze = freeze;
    }

    /// Writes an operator action (reload, freeze) to this node's audit log.
    pub fn record(
        &mut self,
        unix_now: u64,
        decision: Decision,
    ) -> Result<(), conclave_audit::AuditError> {
        self.audit.record(unix_now, decision)
    }

    /// The name this node's policy gives a client.
    pub fn client_name(&self, key: &NodeId) -> Option<&str> {
        self.policy.client_name(key)
    }

    /// What is frozen.
    pub fn freeze(&self) -> &Freeze {
        &self.freeze
    }

    /// The (group, epoch) whose share a request needs and which the share cache TTL dropped
    /// from memory: the driver decrypts it and calls [`restore_share`](Self::restore_share)
    /// before [`handle`](Self::handle).
    pub fn needs_share(&self, request: &Envelope) -> Option<(GroupName, u64)> {
        let key = match &request.msg {
            Message::Commit { group, epoch, .. } | Message::Sign { group, epoch, .. } => {
                (group.clone(), *epoch)
            }
            _ => return None,
        };
        if self.freeze.covers(&key.0) {
            return None;
        }
        match self.groups.get(&key) {
            Some(share) if share.key_package.is_none() => Some(key),
            _ => None,
        }
    }

    /// Puts back a share the TTL dropped. Refused (false) unless it is the same share.
    pub fn restore_share(
        &mut self,
        now: Instant,
        group: &GroupName,
        epoch: u64,
        key_package: frost::keys::KeyPackage,
    ) -> bool {
        let Some(share) = self.groups.get_mut(&(group.clone(), epoch)) else {
            return false;
        };
        if share.identifier != *key_package.identifier()
            || share.verifying_share != *key_package.verifying_share()
        {
            return false;
        }
        share.key_package = Some(key_package);
        share.last_used = now;
        self.schedule_ttl(now);
        true
    }

    /// Number of shares decrypted in memory right now.
    pub fn shares_in_memory(&self) -> usize {
        self.groups
            .values()
            .filter(|s| s.key_package.is_some())
            .count()
    }

    /// Turns on a test-only fault.
    #[cfg(feature = "fault-injection")]
    pub fn set_fault(&mut self, fault: Option<Misbehaviour>) {
        self.fault = fault;
    }

    /// The groups served and their epochs (a group twice during a rotation switch).
    pub fn groups(&self) -> Vec<(GroupName, u64)> {
        self.groups.keys().cloned().collect()
    }

    /// True when some epoch of `group` is served.
    pub fn serves(&self, group: &GroupName) -> bool {
        self.groups.keys().any(|(g, _)| g == group)
    }

    /// Number of unused commitments held for `group` (every epoch).
    pub fn outstanding(&self, group: &GroupName) -> usize {
        self.groups
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|(_, s)| s.nonces.len())
            .sum()
    }

    /// Handles one request from the authenticated peer `from`. Queues exactly one reply.
    /// `unix_now` is the wall-clock time (seconds since the Unix epoch) that request validity
    /// and audit records use; `now` drives nonce expiry.
    pub fn handle<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: NodeId,
        request: Envelope,
        rng: &mut R,
    ) {
        let reply = match request.msg {
            Message::Ping => Ok(Message::Pong {
                groups: self.groups(),
            }),
            Message::Commit {
                group,
                epoch,
                count,
            } => self.commit(now, from, &group, epoch, count, rng),
            Message::Sign {
                group,
                epoch,
                commitment_id,
                signing_package,
                request,
            } => self.sign(
                now,
                unix_now,
                from,
                &group,
                epoch,
                commitment_id,
                &signing_package,
                &request,
            ),
            _ => Err(Refusal::UnexpectedRequest),
        };
        let msg = reply.unwrap_or_else(|refusal| {
            self.stats.refusals += 1;
            tracing::debug!(peer = %from.short(), ?refusal, "refused request");
            Message::Refused(refusal)
        });
        let durable = std::mem::take(&mut self.reply_durable);
        self.outbox.push_back((
            Transmit {
                to: from,
                envelope: Envelope {
                    id: request.id,
                    msg,
                },
            },
            durable,
        ));
        self.schedule_ttl(now);
    }

    /// With a share cache TTL, a sweep is due at most one TTL after the last use.
    fn schedule_ttl(&mut self, now: Instant) {
        if let Some(ttl) = self.config.share_cache_ttl {
            let at = now + ttl;
            self.next_sweep = Some(self.next_sweep.map_or(at, |t| t.min(at)));
        }
    }

    /// The share of `group` at `epoch`; refused when the group is frozen, unknown, or served
    /// at other epochs only (the newest is reported).
    fn group<'a>(
        groups: &'a mut BTreeMap<(GroupName, u64), GroupShare>,
        freeze: &Freeze,
        group: &GroupName,
        epoch: u64,
    ) -> Result<&'a mut GroupShare, Refusal> {
        if freeze.covers(group) {
            return Err(Refusal::NodeFrozen);
        }
        if !groups.contains_key(&(group.clone(), epoch)) {
            let newest = groups
                .keys()
                .filter(|(g, _)| g == group)
                .map(|(_, e)| *e)
                .max();
            return Err(match newest {
                Some(current) => Refusal::EpochMismatch { current },
                None => Refusal::UnknownGroup,
            });
        }
        groups
            .get_mut(&(group.clone(), epoch))
            .ok_or(Refusal::UnknownGroup)
    }

    fn commit<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        from: NodeId,
        group: &GroupName,
        epoch: u64,
        count: u16,
        rng: &mut R,
    ) -> Result<Message, Refusal> {
        if count == 0 || count > MAX_BATCH {
            return Err(Refusal::Malformed);
        }
        let max = self.config.max_outstanding;
        let expires = now + self.config.nonce_ttl;
        let mut next_id = self.next_commitment_id;
        // Held for this coordinator over every group (one lookup per group served).
        let total: usize = self.groups.values().map(|s| s.nonces.held_by(&from)).sum();
        let share = Self::group(&mut self.groups, &self.freeze, group, epoch)?;
        let held_here = share.nonces.held_by(&from);
        // What this coordinator may hold for this group: its per-group limit, and what the
        // total limit leaves after its other groups.
        let other_groups = total.saturating_sub(held_here);
        let cap = max.min(self.config.max_total_nonces.saturating_sub(other_groups));
        let Some(key_package) = share.key_package.as_ref() else {
            tracing::error!(%group, epoch, "share not in memory (the driver did not restore it)");
            return Err(Refusal::Internal);
        };
        share.last_used = now;
        let room = usize::from(count).min(cap);
        if room == 0 {
            tracing::warn!(%group, epoch, coordinator = %from.short(), total, "a coordinator holds max_total_nonces over all groups: refused (raise max_total_nonces, or lower its pool_idle / pool_target)");
            return Err(Refusal::Overloaded);
        }
        let held = held_here;
        if held + room > cap {
            // This coordinator asks for more than its limit allows: it has lost track of
            // nonces it was given (a dropped pool after a timeout or a restart), or its
            // pool_target is above max_outstanding_nonces. Its oldest nonces go (zeroized);
            // only it could spend them, so no other coordinator loses anything.
            let evicted = share.nonces.evict_oldest(&from, held + room - cap);
            self.stats.nonces_evicted += evicted as u64;
            tracing::warn!(%group, epoch, coordinator = %from.short(), evicted, "a coordinator asked beyond max_outstanding_nonces: its oldest nonces were dropped (keep its pool_target at most max_outstanding_nonces)");
        }
        let mut entries = Vec::with_capacity(room);
        for _ in 0..room {
            let nonces =
                conclave_keygen::signing::SigningNonces::new(key_package.signing_share(), rng);
            let wire = nonces.wire();
            let id = next_id;
            next_id = next_id.wrapping_add(1);
            share.nonces.insert(
                id,
                Box::new(PendingNonce {
                    owner: from,
                    nonces,
                    expires,
                }),
            );
            entries.push(CommitmentEntry {
                id,
                commitments: wire,
            });
        }
        self.next_commitment_id = next_id;
        self.stats.commitments_made += entries.len() as u64;
        self.next_sweep = Some(self.next_sweep.map_or(expires, |t| t.min(expires)));
        Ok(Message::Commitments {
            group: group.clone(),
            epoch,
            entries,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn sign(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: NodeId,
        group: &GroupName,
        epoch: u64,
        commitment_id: u64,
        wire_package: &SignPackage,
        request: &SignedRequest,
    ) -> Result<Message, Refusal> {
        let max_signers = self.config.max_signers;
        let fault = self.fault;
        // Frozen, or no longer served: nothing leaves, not even a remembered answer.
        if self.freeze.covers(group) {
            self.stats.frozen_refusals += 1;
            // Recorded only for a request its client really signed: a coordinator cannot fill
            // the log with made-up refusals.
            if request.verify().is_ok() {
                let mut record = Decision::new("sign", "refused:frozen");
                record.client = self.policy.client_name(&request.client).map(str::to_owned);
                record.client_key = Some(request.client.to_hex());
                record.group = Some(group.to_string());
                record.epoch = Some(epoch);
                record.request_id = Some(hex::encode(request.body.request_id));
                if let Err(e) = self.audit.record(unix_now, record) {
                    tracing::error!(error = %e, "cannot write the audit record of a refusal");
                }
            }
            return Err(Refusal::NodeFrozen);
        }
        Self::group(&mut self.groups, &self.freeze, group, epoch)?;
        // The same request again (a duplicate): the same answer, computed once.
        let digest: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(group.as_str().as_bytes());
            h.update([0]);
            h.update(epoch.to_le_bytes());
            // The whole request, not just its signature: a remembered share answers exactly
            // the request it was made for.
            match postcard::to_stdvec(request) {
                Ok(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(_) => return Err(Refusal::Malformed),
            }
            h.update((wire_package.message.len() as u64).to_le_bytes());
            h.update(&wire_package.message);
            for e in &wire_package.commitments {
                h.update(e.identifier);
                h.update(e.commitments.hiding);
                h.update(e.commitments.binding);
            }
            h.update(&request.signature);
            h.finalize().into()
        };
        if let Some((d, share, durable)) = self.answered.get(&(from, commitment_id)) {
            if *d == digest {
                // Not before the first answer's record is on disk.
                self.reply_durable = durable.clone();
                return Ok(Message::SignatureShare {
                    commitment_id,
                    share: share.clone(),
                });
            }
        }
        let share = Self::group(&mut self.groups, &self.freeze, group, epoch)?;
        // Only the coordinator that asked for a commitment may spend it.
        match share.nonces.get(&commitment_id) {
            Some(p) if p.owner == from => {}
            _ => return Err(Refusal::UnknownCommitment),
        }
        // Remove the nonces before anything else: whatever happens below, they are spent.
        let pending = share
            .nonces
            .remove(&commitment_id)
            .ok_or(Refusal::UnknownCommitment)?;
        if wire_package.message.len() > MAX_SIGN_MESSAGE_LEN {
            return Err(Refusal::MessageTooLarge);
        }
        let signers = wire_package.commitments.len();
        if signers < usize::from(share.min_signers) || signers > max_signers {
            return Err(Refusal::InvalidSigningPackage);
        }
        // Every commitment checked: a point of the prime-order subgroup by construction, not
        // the identity, identifiers distinct (see conclave_keygen::commitments).
        let package = conclave_keygen::commitments::package_from_wire(wire_package)
            .map_err(|_| Refusal::InvalidSigningPackage)?;
        if package.signing_commitment(&share.identifier).as_ref()
            != Some(pending.nonces.commitments())
        {
            return Err(Refusal::InvalidSigningPackage);
        }
        share.last_used = now;
        // The signer's own decision: the coordinator's word counts for nothing here.
        let message = package.message();
        let mut record = Decision::new("sign", "signed");
        record.client = self.policy.client_name(&request.client).map(str::to_owned);
        record.client_key = Some(request.client.to_hex());
        record.group = Some(group.to_string());
        record.epoch = Some(epoch);
        record.message_sha256 = Some(hex::encode(Sha256::digest(message)));
        record.request_id = Some(hex::encode(request.body.request_id));
        let kind = conclave_policy::classify(message);
        record.kind = Some(kind.name());
        let mut detail = format!("coordinator={}", from.short());
        if let MessageKind::SshAuth {
            user,
            key_fingerprint,
        } = &kind
        {
            detail.push_str(&format!(" user={user} key={key_fingerprint}"));
        }
        record.detail = Some(detail);
        if let Err(rule) = self.policy.decide(unix_now, request, group, epoch, message) {
            self.stats.not_authorized += 1;
            record.result = format!("refused:{}", rule.code());
            if let Err(e) = self.audit.record(unix_now, record) {
                tracing::error!(error = %e, "cannot write the audit record of a refusal");
            }
            tracing::info!(%group, client = %request.client.short(), rule = rule.code(), "sign request refused by policy");
            return Err(Refusal::NotAuthorized { rule });
        }
        // After the grant the request is spent here: a failure now is Internal, not
        // InvalidSigningPackage (which says the policy did not run, so asking again is fine).
        let key_package = match self.groups.get(&(group.clone(), epoch)) {
            Some(GroupShare {
                key_package: Some(k),
                ..
            }) => k,
            _ => {
                tracing::error!(%group, epoch, "share not in memory (the driver did not restore it)");
                return Err(Refusal::Internal);
            }
        };
        let signature_share =
            conclave_keygen::signing::sign(&package, &pending.nonces, key_package)
                .map_err(|_| Refusal::Internal)?;
        drop(pending); // zeroizes the nonces
        let mut bytes = signature_share.serialize();
        if fault == Some(Misbehaviour::CorruptShares) {
            corrupt_share(&mut bytes);
        }
        // No record, no share (fail closed). The record's fsync may be pending: the share
        // leaves only once it is on disk (see poll_transmit).
        let durable = match self.audit.record_deferred(unix_now, record) {
            Ok(d) => d,
            Err(e) => {
                self.stats.audit_failures += 1;
                tracing::error!(error = %e, %group, "cannot write the audit record: refusing to sign");
                return Err(Refusal::AuditFailed);
            }
        };
        self.reply_durable = durable.clone();
        self.stats.shares_signed += 1;
        tracing::info!(%group, client = %request.client.short(), kind = %kind.name(), "signature share released");
        if self.answered_order.len() >= MAX_ANSWERED {
            if let Some(old) = self.answered_order.pop_front() {
                self.answered.remove(&old);
            }
        }
        self.answered_order.push_back((from, commitment_id));
        self.answered
            .insert((from, commitment_id), (digest, bytes.clone(), durable));
        Ok(Message::SignatureShare {
            commitment_id,
            share: bytes,
        })
    }

    /// Drops expired commitments, and decrypted shares idle for longer than the share
    /// cache TTL.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let ttl = self.config.share_cache_ttl;
        let mut next: Option<Instant> = None;
        for ((group, epoch), share) in self.groups.iter_mut() {
            self.stats.nonces_expired += share.nonces.expire(now) as u64;
            for p in share.nonces.values() {
                next = Some(next.map_or(p.expires, |t| t.min(p.expires)));
            }
            if let (Some(ttl), true) = (ttl, share.key_package.is_some()) {
                let idle_until = share.last_used + ttl;
                if idle_until <= now {
                    // KeyPackage zeroizes its signing share on drop.
                    share.key_package = None;
                    self.stats.shares_evicted += 1;
                    tracing::info!(%group, epoch, "share dropped from memory after being idle for the share cache TTL");
                } else {
                    next = Some(next.map_or(idle_until, |t| t.min(idle_until)));
                }
            }
        }
        self.next_sweep = next;
    }

    /// The next reply to send. A signature share whose audit record is not on disk yet
    /// waits here for its fsync (and becomes `AuditFailed` if that fails); a driver that wants
    /// to wait outside its lock, sharing one fsync among concurrent requests, uses
    /// [`poll_transmit_deferred`](Self::poll_transmit_deferred).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let (mut transmit, durable) = self.outbox.pop_front()?;
        if durable.wait().is_err() {
            self.stats.audit_failures += 1;
            transmit.envelope.msg = Message::Refused(Refusal::AuditFailed);
        }
        Some(transmit)
    }

    /// The next reply and the audit record it waits for: the caller must see
    /// [`Durable::wait`] succeed before sending it, and send `Refused(AuditFailed)` instead
    /// when it fails (fail closed: no share before its record is on disk).
    pub fn poll_transmit_deferred(&mut self) -> Option<(Transmit, Durable)> {
        self.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_shares_of_two_signers_never_cancel_out() {
        use curve25519_dalek::Scalar;
        let sum = |a: &[u8; 32], b: &[u8; 32]| {
            Scalar::from_canonical_bytes(*a).unwrap() + Scalar::from_canonical_bytes(*b).unwrap()
        };
        // An even and an odd share: flipping the low bit gives +1 and -1.
        let (a, b) = (
            Scalar::from(10u64).to_bytes(),
            Scalar::from(7u64).to_bytes(),
        );
        let (mut a2, mut b2) = (a, b);
        corrupt_share(&mut a2);
        corrupt_share(&mut b2);
        assert_ne!(sum(&a2, &b2), sum(&a, &b));
        assert_eq!(sum(&a2, &b2), sum(&a, &b) + Scalar::from(2u64));
    }
    use conclave_keygen::{deal, NewMember};
    use conclave_protocol::IdentityKey;

    use conclave_audit::MemoryAudit;
    use conclave_protocol::request::{MessageRef, SignRequestBody};

    const UNIX: u64 = 1_800_000_000;

    struct Fixture {
        participants: Vec<Participant>,
        audits: Vec<MemoryAudit>,
        ids: Vec<frost::Identifier>,
        pkp: frost::keys::PublicKeyPackage,
        group: GroupName,
        coordinator: NodeId,
        client: IdentityKey,
    }

    fn allow(client: &IdentityKey) -> Policy {
        Policy::from_toml(&format!(
            "[[client]]\nname = \"ci\"\nkey = \"{}\"\ngroups = [\"g\"]\nkinds = [\"raw\"]\nmax_message_bytes = 4096\nrate = \"1000/min\"\n",
            client.node_id().to_hex()
        ))
        .unwrap()
    }

    fn request_for(client: &IdentityKey, group: &GroupName, message: &[u8]) -> SignedRequest {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        SignRequestBody {
            group: group.clone(),
            epoch: 1,
            message: MessageRef::Full(message.to_vec()),
            kind: conclave_policy::classify(message).name(),
            request_id: id,
            not_after: UNIX + 60,
        }
        .sign(client)
        .unwrap()
    }

    fn fixture() -> Fixture {
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..3)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let group = GroupName::new("g").unwrap();
        let (manifest, shares) = deal(group.clone(), 2, &members, &mut rng).unwrap();
        let ids = shares.iter().map(|s| *s.key_package.identifier()).collect();
        let client = IdentityKey::generate(&mut rng);
        let audits: Vec<MemoryAudit> = (0..3).map(|_| MemoryAudit::default()).collect();
        let participants = shares
            .into_iter()
            .zip(&audits)
            .map(|(s, audit)| {
                Participant::new(
                    vec![(group.clone(), 1, s.key_package)],
                    ParticipantConfig::default(),
                    allow(&client),
                    Box::new(audit.clone()),
                    &mut rng,
                )
            })
            .collect();
        Fixture {
            participants,
            audits,
            ids,
            pkp: manifest.public_key_package().unwrap(),
            group,
            coordinator: IdentityKey::generate(&mut rng).node_id(),
            client,
        }
    }

    #[test]
    fn a_coordinator_holds_at_most_max_total_nonces_over_all_groups() {
        let mut rng = rand::rngs::OsRng;
        let members: Vec<conclave_keygen::NewMember> = (0..2)
            .map(|i| conclave_keygen::NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let groups: Vec<GroupName> = (0..3)
            .map(|i| GroupName::new(&format!("g{i}")).unwrap())
            .collect();
        let shares = groups
            .iter()
            .map(|g| {
                let (_, dealt) = conclave_keygen::deal(g.clone(), 2, &members, &mut rng).unwrap();
                (g.clone(), 1, dealt.into_iter().next().unwrap().key_package)
            })
            .collect();
        let client = IdentityKey::generate(&mut rng);
        let mut p = Participant::new(
            shares,
            ParticipantConfig {
                max_outstanding: 8,
                max_total_nonces: 10,
                ..Default::default()
            },
            allow(&client),
            Box::new(conclave_audit::MemoryAudit::default()),
            &mut rng,
        );
        let coord = IdentityKey::generate(&mut rng).node_id();
        let commit = |g: &GroupName, count: u16| Message::Commit {
            group: g.clone(),
            epoch: 1,
            count,
        };
        let got = |m: Message| match m {
            Message::Commitments { entries, .. } => entries.len(),
            Message::Refused(r) => panic!("refused: {r:?}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(got(ask(&mut p, coord, commit(&groups[0], 8))), 8);
        // Two left over all groups: a second group gets two, a third none.
        assert_eq!(got(ask(&mut p, coord, commit(&groups[1], 5))), 2);
        assert!(matches!(
            ask(&mut p, coord, commit(&groups[2], 1)),
            Message::Refused(Refusal::Overloaded)
        ));
        // Asking again for a full group drops its own oldest instead of growing the total.
        assert_eq!(got(ask(&mut p, coord, commit(&groups[1], 3))), 2);
        let total: usize = groups.iter().map(|g| p.outstanding(g)).sum();
        assert_eq!(total, 10);
        // Another coordinator has a total of its own.
        let other = IdentityKey::generate(&mut rng).node_id();
        assert_eq!(got(ask(&mut p, other, commit(&groups[2], 4))), 4);
    }

    fn ask(p: &mut Participant, from: NodeId, msg: Message) -> Message {
        p.handle(
            Instant::now(),
            UNIX,
            from,
            Envelope { id: 9, msg },
            &mut rand::rngs::OsRng,
        );
        let t = p.poll_transmit().unwrap();
        assert_eq!((t.to, t.envelope.id), (from, 9));
        assert!(p.poll_transmit().is_none(), "exactly one reply per request");
        t.envelope.msg
    }

    fn commitment(f: &mut Fixture, i: usize) -> (u64, frost::round1::SigningCommitments) {
        let msg = Message::Commit {
            group: f.group.clone(),
            epoch: 1,
            count: 1,
        };
        match ask(&mut f.participants[i], f.coordinator, msg) {
            Message::Commitments { entries, .. } => {
                let e = &entries[0];
                (
                    e.id,
                    conclave_keygen::commitments::from_wire(&e.commitments).unwrap(),
                )
            }
            other => panic!("{other:?}"),
        }
    }

    fn sign_msg(f: &Fixture, id: u64, package: &frost::SigningPackage) -> Message {
        sign_as(
            f,
            id,
            package,
            request_for(&f.client, &f.group, package.message()),
        )
    }

    fn sign_as(
        f: &Fixture,
        id: u64,
        package: &frost::SigningPackage,
        request: SignedRequest,
    ) -> Message {
        Message::Sign {
            group: f.group.clone(),
            epoch: 1,
            commitment_id: id,
            signing_package: std::sync::Arc::new(conclave_keygen::commitments::package_to_wire(
                package,
            )),
            request: Box::new(request),
        }
    }

    #[test]
    fn only_what_the_policy_allows_is_signed_and_every_decision_is_recorded() {
        let mut f = fixture();
        let coord = f.coordinator;
        let stranger = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut cases: Vec<(SignedRequest, &[u8], Refusal)> = vec![];
        // A client outside the policy (or the coordinator forging its own request).
        cases.push((
            request_for(&stranger, &f.group, b"m"),
            b"m",
            Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::UnknownClient,
            },
        ));
        // The message changed after the client signed.
        cases.push((
            request_for(&f.client, &f.group, b"release 1"),
            b"release 6",
            Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::MessageMismatch,
            },
        ));
        // A request for another group, presented for this one.
        cases.push((
            request_for(&f.client, &GroupName::new("other").unwrap(), b"m"),
            b"m",
            Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::Group,
            },
        ));
        // The client's name claimed with another key's signature.
        let mut forged = request_for(&stranger, &f.group, b"m");
        forged.client = f.client.node_id();
        cases.push((
            forged,
            b"m",
            Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::BadSignature,
            },
        ));
        for (request, message, expected) in cases {
            let (c0, k0) = commitment(&mut f, 0);
            let (_, k1) = commitment(&mut f, 1);
            let package =
                frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), message);
            let m = sign_as(&f, c0, &package, request);
            assert_eq!(
                ask(&mut f.participants[0], coord, m),
                Message::Refused(expected)
            );
        }
        // An allowed request is signed once; the same request again is a replay.
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"ok");
        let request = request_for(&f.client, &f.group, b"ok");
        let m = sign_as(&f, c0, &package, request.clone());
        assert!(matches!(
            ask(&mut f.participants[0], coord, m),
            Message::SignatureShare { .. }
        ));
        let (c0, k0) = commitment(&mut f, 0);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"ok");
        let m = sign_as(&f, c0, &package, request);
        assert_eq!(
            ask(&mut f.participants[0], coord, m),
            Message::Refused(Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::Replay
            })
        );
        let log = f.audits[0].decisions.lock().unwrap().clone();
        let results: Vec<&str> = log.iter().map(|d| d.result.as_str()).collect();
        assert_eq!(
            results,
            [
                "refused:unknown_client",
                "refused:message_mismatch",
                "refused:group",
                "refused:bad_signature",
                "signed",
                "refused:replay"
            ]
        );
        let signed = &log[4];
        assert_eq!(signed.client.as_deref(), Some("ci"));
        assert_eq!(signed.kind.as_deref(), Some("raw"));
        assert_eq!(
            signed.message_sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"ok")).as_str())
        );
        assert_eq!(f.participants[0].stats.shares_signed, 1);
    }

    #[test]
    fn a_duplicated_request_gets_the_same_share_and_is_recorded_once() {
        let mut f = fixture();
        let coord = f.coordinator;
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let m = sign_msg(&f, c0, &package);
        let first = ask(&mut f.participants[0], coord, m.clone());
        assert!(matches!(first, Message::SignatureShare { .. }));
        // The network delivers the same request again: the same answer, no second decision.
        assert_eq!(ask(&mut f.participants[0], coord, m), first);
        assert_eq!(f.participants[0].stats.shares_signed, 1);
        assert_eq!(f.audits[0].decisions.lock().unwrap().len(), 1);
        // Another package for the spent commitment is no duplicate.
        let other = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"n");
        let m = sign_msg(&f, c0, &other);
        assert_eq!(
            ask(&mut f.participants[0], coord, m),
            Message::Refused(Refusal::UnknownCommitment)
        );
    }

    #[test]
    fn no_share_leaves_without_its_audit_record() {
        let mut f = fixture();
        let coord = f.coordinator;
        f.audits[0]
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let m = sign_msg(&f, c0, &package);
        assert_eq!(
            ask(&mut f.participants[0], coord, m),
            Message::Refused(Refusal::AuditFailed)
        );
        assert_eq!(f.participants[0].stats.shares_signed, 0);
        assert_eq!(f.participants[0].stats.audit_failures, 1);
        // The nonce is spent all the same.
        assert_eq!(f.participants[0].outstanding(&f.group), 0);
    }

    /// Writes every record, but none ever becomes durable (its fsync fails).
    struct UnsyncedAudit;

    impl AuditSink for UnsyncedAudit {
        fn record(&mut self, _: u64, _: Decision) -> Result<(), conclave_audit::AuditError> {
            Ok(())
        }

        fn record_deferred(
            &mut self,
            _: u64,
            _: Decision,
        ) -> Result<Durable, conclave_audit::AuditError> {
            Ok(Durable::failed())
        }
    }

    #[test]
    fn a_share_whose_record_never_reaches_the_disk_is_withheld() {
        let mut f = fixture();
        let coord = f.coordinator;
        f.participants[0].audit = Box::new(UnsyncedAudit);
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let m = sign_msg(&f, c0, &package);
        // The driver's path: the share comes with a record whose fsync fails, so the driver
        // must not send it.
        f.participants[0].handle(
            Instant::now(),
            UNIX,
            coord,
            Envelope {
                id: 1,
                msg: m.clone(),
            },
            &mut rand::rngs::OsRng,
        );
        let (t, durable) = f.participants[0].poll_transmit_deferred().unwrap();
        assert!(matches!(t.envelope.msg, Message::SignatureShare { .. }));
        assert!(!durable.is_done());
        assert!(durable.wait().is_err());
        // poll_transmit waits itself: the duplicate (answered from memory) is refused.
        assert_eq!(
            ask(&mut f.participants[0], coord, m),
            Message::Refused(Refusal::AuditFailed)
        );
    }

    #[test]
    fn two_participants_produce_a_valid_signature() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (c1, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"hello");
        let mut shares = BTreeMap::new();
        for (i, c) in [(0, c0), (1, c1)] {
            let coord = f.coordinator;
            let m = sign_msg(&f, c, &package);
            let reply = ask(&mut f.participants[i], coord, m);
            match reply {
                Message::SignatureShare { share, .. } => {
                    shares.insert(
                        f.ids[i],
                        frost::round2::SignatureShare::deserialize(&share).unwrap(),
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        frost::aggregate(&package, &shares, &f.pkp).unwrap();
    }

    #[test]
    fn a_commitment_cannot_be_signed_twice_even_for_another_message() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let first = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"one");
        let second = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"two");
        let coord = f.coordinator;
        assert!(matches!(
            {
                let m = sign_msg(&f, c0, &first);
                ask(&mut f.participants[0], coord, m)
            },
            Message::SignatureShare { .. }
        ));
        assert_eq!(
            {
                let m = sign_msg(&f, c0, &second);
                ask(&mut f.participants[0], coord, m)
            },
            Message::Refused(Refusal::UnknownCommitment)
        );
        assert_eq!(f.participants[0].outstanding(&f.group), 0);
    }

    #[test]
    fn a_rejected_package_still_burns_the_nonce() {
        let mut f = fixture();
        let (c0, _k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let (_, other) = commitment(&mut f, 0); // a different commitment of participant 0
        let wrong = frost::SigningPackage::new([(f.ids[0], other), (f.ids[1], k1)].into(), b"x");
        let coord = f.coordinator;
        assert_eq!(
            {
                let m = sign_msg(&f, c0, &wrong);
                ask(&mut f.participants[0], coord, m)
            },
            Message::Refused(Refusal::InvalidSigningPackage)
        );
        assert_eq!(
            {
                let m = sign_msg(&f, c0, &wrong);
                ask(&mut f.participants[0], coord, m)
            },
            Message::Refused(Refusal::UnknownCommitment)
        );
    }

    #[test]
    fn package_below_threshold_is_refused() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let lonely = frost::SigningPackage::new([(f.ids[0], k0)].into(), b"x");
        let coord = f.coordinator;
        assert_eq!(
            {
                let m = sign_msg(&f, c0, &lonely);
                ask(&mut f.participants[0], coord, m)
            },
            Message::Refused(Refusal::InvalidSigningPackage)
        );
    }

    #[test]
    fn another_coordinator_cannot_spend_or_burn_a_commitment() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"x");
        let intruder = IdentityKey::generate(&mut rand::rngs::OsRng).node_id();
        assert_eq!(
            {
                let m = sign_msg(&f, c0, &package);
                ask(&mut f.participants[0], intruder, m)
            },
            Message::Refused(Refusal::UnknownCommitment)
        );
        let coord = f.coordinator;
        assert!(matches!(
            {
                let m = sign_msg(&f, c0, &package);
                ask(&mut f.participants[0], coord, m)
            },
            Message::SignatureShare { .. }
        ));
    }

    #[test]
    fn wrong_epoch_and_unknown_group_are_refused() {
        let mut f = fixture();
        let coord = f.coordinator;
        let g = f.group.clone();
        assert_eq!(
            ask(
                &mut f.participants[0],
                coord,
                Message::Commit {
                    group: g,
                    epoch: 2,
                    count: 1
                }
            ),
            Message::Refused(Refusal::EpochMismatch { current: 1 })
        );
        let other = GroupName::new("other").unwrap();
        assert_eq!(
            ask(
                &mut f.participants[0],
                coord,
                Message::Commit {
                    group: other,
                    epoch: 1,
                    count: 1
                }
            ),
            Message::Refused(Refusal::UnknownGroup)
        );
    }

    #[test]
    fn outstanding_commitments_are_bounded_and_expire() {
        let mut f = fixture();
        f.participants[0].config.max_outstanding = 5;
        let coord = f.coordinator;
        let g = f.group.clone();
        let now = Instant::now();
        let p = &mut f.participants[0];
        p.handle(
            now,
            UNIX,
            coord,
            Envelope {
                id: 1,
                msg: Message::Commit {
                    group: g.clone(),
                    epoch: 1,
                    count: 8,
                },
            },
            &mut rand::rngs::OsRng,
        );
        let first = match p.poll_transmit().unwrap().envelope.msg {
            Message::Commitments { entries, .. } => entries,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.len(), 5);
        // Asking beyond the limit (a coordinator that lost its pool) drops its oldest nonces
        // instead of refusing it until they expire.
        let more = Message::Commit {
            group: g.clone(),
            epoch: 1,
            count: 2,
        };
        let Message::Commitments { entries, .. } = ask(p, coord, more) else {
            panic!("refused")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(p.outstanding(&g), 5);
        assert_eq!(p.stats.nonces_evicted, 2);
        let held = &p.groups[&(g.clone(), 1)].nonces;
        assert!(!held.contains_key(&first[0].id) && !held.contains_key(&first[1].id));
        assert!(held.contains_key(&first[2].id) && held.contains_key(&entries[1].id));
        // Another coordinator's nonces are never touched by it.
        let other = IdentityKey::generate(&mut rand::rngs::OsRng).node_id();
        let one = Message::Commit {
            group: g.clone(),
            epoch: 1,
            count: 1,
        };
        assert!(matches!(
            ask(p, other, one.clone()),
            Message::Commitments { .. }
        ));
        assert!(matches!(ask(p, coord, one), Message::Commitments { .. }));
        assert_eq!(p.outstanding(&g), 6);
        assert_eq!(p.groups[&(g.clone(), 1)].nonces.held_by(&other), 1);
        let deadline = p.poll_timeout().unwrap();
        p.handle_timeout(deadline + Duration::from_secs(60));
        assert_eq!(p.outstanding(&g), 0);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.stats.nonces_expired, 6);
    }

    /// Every printable form of `secret` a careless log line could carry.
    fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        use base64::Engine as _;
        let mut forms = vec![
            secret.to_vec(),
            hex::encode(secret).into_bytes(),
            hex::encode_upper(secret).into_bytes(),
            format!("{secret:?}").into_bytes(),
        ];
        for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            forms.push(e.encode(secret).into_bytes());
        }
        forms
    }

    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Secret leakage: a signing flow and its failures (reused commitment, tampered package,
    /// wrong epoch, unknown group, foreign coordinator) logged at TRACE level; no log line,
    /// audit record, reply or Debug output holds a nonce or the share in raw, hex or base64 form.
    #[test]
    fn no_nonce_or_share_reaches_logs_replies_or_debug_output() {
        // A global subscriber: a scoped one (`with_default`) misses events whose callsites
        // other test threads registered first without a subscriber. Other tests of this
        // binary log into it too, which only adds haystack.
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        let capture = CAPTURE
            .get_or_init(|| {
                let capture = Capture::default();
                let writer = capture.clone();
                let subscriber = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .finish();
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other global subscriber in this test binary");
                capture
            })
            .clone();
        let mut secrets: Vec<Vec<u8>> = vec![];
        let mut visible: Vec<u8> = vec![];
        {
            let mut f = fixture();
            for p in &f.participants {
                for g in p.groups.values() {
                    if let Some(k) = &g.key_package {
                        secrets.push(k.signing_share().serialize());
                    }
                }
            }
            let (c0, k0) = commitment(&mut f, 0);
            let (c1, k1) = commitment(&mut f, 1);
            let (c2, k2) = commitment(&mut f, 2);
            for (i, c) in [(0, c0), (1, c1), (2, c2)] {
                let pending = &f.participants[i].groups[&(f.group.clone(), 1)]
                    .nonces
                    .get(&c)
                    .unwrap()
                    .nonces;
                for s in pending.secret_bytes() {
                    secrets.push(s.to_vec());
                }
            }
            let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
            let coord = f.coordinator;
            let mut replies = vec![];
            // Success, then a reuse of the same commitment.
            for _ in 0..2 {
                let m = sign_msg(&f, c0, &package);
                replies.push(ask(&mut f.participants[0], coord, m));
            }
            // A package that does not hold the participant's commitment.
            let other = frost::SigningPackage::new([(f.ids[1], k1), (f.ids[2], k2)].into(), b"m");
            let m = sign_msg(&f, c1, &other);
            replies.push(ask(&mut f.participants[1], coord, m));
            // Garbage package bytes, a wrong epoch, an unknown group, a foreign coordinator.
            let m = Message::Sign {
                group: f.group.clone(),
                epoch: 1,
                commitment_id: c2,
                signing_package: std::sync::Arc::new(SignPackage {
                    message: b"m".to_vec(),
                    commitments: vec![
                        conclave_protocol::PackageEntry {
                            identifier: [7; 32],
                            commitments: conclave_protocol::WireCommitments {
                                hiding: [7; 32],
                                binding: [7; 32],
                            },
                        };
                        2
                    ],
                }),
                request: Box::new(request_for(&f.client, &f.group, b"m")),
            };
            replies.push(ask(&mut f.participants[2], coord, m));
            let m = Message::Commit {
                group: f.group.clone(),
                epoch: 2,
                count: 1,
            };
            replies.push(ask(&mut f.participants[2], coord, m));
            let m = Message::Commit {
                group: GroupName::new("nope").unwrap(),
                epoch: 1,
                count: 1,
            };
            replies.push(ask(&mut f.participants[2], coord, m));
            let stranger = IdentityKey::generate(&mut rand::rngs::OsRng).node_id();
            let m = sign_msg(&f, c2, &package);
            replies.push(ask(&mut f.participants[2], stranger, m));
            f.participants[2].handle_timeout(Instant::now() + std::time::Duration::from_secs(3600));
            for r in &replies {
                visible.extend_from_slice(format!("{r:?}").as_bytes());
            }
            for p in &f.participants {
                visible.extend_from_slice(format!("{p:?}").as_bytes());
            }
            // The audit records of every decision, as the log file would hold them.
            for a in &f.audits {
                for d in a.decisions.lock().unwrap().iter() {
                    visible.extend_from_slice(&serde_json::to_vec(d).unwrap());
                }
            }
            assert!(!f.audits[0].decisions.lock().unwrap().is_empty());
        }
        let logs = capture.0.lock().unwrap().clone();
        assert!(
            logs.len() > 200,
            "the flows must have logged something to check"
        );
        assert_eq!(secrets.len(), 3 + 6);
        for haystack in [&logs, &visible] {
            for s in &secrets {
                for form in leak_forms(s) {
                    assert!(
                        !haystack.windows(form.len()).any(|w| w == form.as_slice()),
                        "a secret appeared in logs or debug output"
                    );
                }
            }
        }
    }

    /// One participant (of a 2-of-3 group) with its key package kept for reloads.
    fn lone() -> (Participant, frost::keys::KeyPackage, MemoryAudit, Fixture) {
        let f = fixture();
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..3)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let (_, mut shares) = deal(f.group.clone(), 2, &members, &mut rng).unwrap();
        let kp = shares.remove(0).key_package;
        let audit = MemoryAudit::default();
        let p = Participant::new(
            vec![(f.group.clone(), 1, kp.clone())],
            ParticipantConfig {
                share_cache_ttl: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            allow(&f.client),
            Box::new(audit.clone()),
            &mut rng,
        );
        (p, kp, audit, f)
    }

    fn commit_at(p: &mut Participant, f: &Fixture, epoch: u64) -> Message {
        ask(
            p,
            f.coordinator,
            Message::Commit {
                group: f.group.clone(),
                epoch,
                count: 1,
            },
        )
    }

    #[test]
    fn a_reload_keeps_unchanged_shares_with_their_nonces_and_serves_two_epochs_side_by_side() {
        let (mut p, kp, _, f) = lone();
        let Message::Commitments { entries, .. } = commit_at(&mut p, &f, 1) else {
            panic!("no commitment")
        };
        let now = Instant::now();
        let changes = p.set_shares(
            now,
            vec![
                (f.group.clone(), 1, kp.clone()),
                (f.group.clone(), 2, kp.clone()),
            ],
        );
        assert_eq!(changes.kept, vec![(f.group.clone(), 1)]);
        assert_eq!(changes.added, vec![(f.group.clone(), 2)]);
        // The epoch-1 commitment handed out before the reload is still there.
        assert_eq!(p.outstanding(&f.group), 1);
        assert!(p.groups[&(f.group.clone(), 1)]
            .nonces
            .contains_key(&entries[0].id));
        assert!(matches!(
            commit_at(&mut p, &f, 2),
            Message::Commitments { epoch: 2, .. }
        ));
        assert_eq!(p.groups(), vec![(f.group.clone(), 1), (f.group.clone(), 2)]);
        // The old epoch removed: its nonces go with it, and it is refused as another epoch.
        let changes = p.set_shares(now, vec![(f.group.clone(), 2, kp)]);
        assert_eq!(changes.removed, vec![(f.group.clone(), 1)]);
        assert_eq!(
            commit_at(&mut p, &f, 1),
            Message::Refused(Refusal::EpochMismatch { current: 2 })
        );
    }

    #[test]
    fn a_reload_with_another_share_for_the_same_epoch_drops_the_old_nonces() {
        let (mut p, _, _, f) = lone();
        let _ = commit_at(&mut p, &f, 1);
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..3)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let (_, mut shares) = deal(f.group.clone(), 2, &members, &mut rng).unwrap();
        let changes = p.set_shares(
            Instant::now(),
            vec![(f.group.clone(), 1, shares.remove(0).key_package)],
        );
        assert_eq!(changes.replaced, vec![(f.group.clone(), 1)]);
        assert_eq!(p.outstanding(&f.group), 0);
    }

    #[test]
    fn a_frozen_group_gets_no_commitment_and_no_share_and_the_refusal_is_recorded() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let coord = f.coordinator;
        f.participants[0].set_freeze(Freeze {
            all: false,
            groups: [f.group.clone()].into(),
        });
        // Freezing dropped the pooled nonces; a share for the old commitment is refused.
        assert_eq!(f.participants[0].outstanding(&f.group), 0);
        let msg = sign_msg(&f, c0, &package);
        assert_eq!(
            ask(&mut f.participants[0], coord, msg),
            Message::Refused(Refusal::NodeFrozen)
        );
        let records = f.audits[0].decisions.lock().unwrap().clone();
        assert_eq!(
            records.last().map(|r| r.result.as_str()),
            Some("refused:frozen")
        );
        let commit = Message::Commit {
            group: f.group.clone(),
            epoch: 1,
            count: 1,
        };
        assert_eq!(
            ask(&mut f.participants[0], coord, commit.clone()),
            Message::Refused(Refusal::NodeFrozen)
        );
        // Freezing everything covers groups by name it never saw.
        f.participants[1].set_freeze(Freeze {
            all: true,
            groups: Default::default(),
        });
        assert_eq!(
            ask(&mut f.participants[1], coord, commit.clone()),
            Message::Refused(Refusal::NodeFrozen)
        );
        f.participants[0].set_freeze(Freeze::default());
        assert!(matches!(
            ask(&mut f.participants[0], coord, commit),
            Message::Commitments { .. }
        ));
    }

    #[test]
    fn the_share_cache_ttl_drops_an_idle_share_until_the_driver_restores_it() {
        let (mut p, kp, _, f) = lone();
        let start = Instant::now();
        assert_eq!(p.shares_in_memory(), 1);
        // Used: the TTL counts from the last use.
        let _ = commit_at(&mut p, &f, 1);
        p.handle_timeout(start + Duration::from_secs(5));
        assert_eq!(p.shares_in_memory(), 1);
        let wake = p.poll_timeout().expect("a timer for the TTL");
        assert!(wake <= Instant::now() + Duration::from_secs(10));
        p.handle_timeout(Instant::now() + Duration::from_secs(11));
        assert_eq!(p.shares_in_memory(), 0);
        assert_eq!(p.stats.shares_evicted, 1);
        let commit = Envelope {
            id: 1,
            msg: Message::Commit {
                group: f.group.clone(),
                epoch: 1,
                count: 1,
            },
        };
        assert_eq!(p.needs_share(&commit), Some((f.group.clone(), 1)));
        // Not restored: refused, never a commitment made without the share.
        assert_eq!(
            commit_at(&mut p, &f, 1),
            Message::Refused(Refusal::Internal)
        );
        // A share of another member is not taken for this one.
        let other = lone().1;
        assert!(!p.restore_share(Instant::now(), &f.group, 1, other));
        assert!(p.restore_share(Instant::now(), &f.group, 1, kp));
        assert_eq!(p.needs_share(&commit), None);
        assert!(matches!(
            commit_at(&mut p, &f, 1),
            Message::Commitments { .. }
        ));
    }

    #[test]
    fn a_new_policy_keeps_the_replay_memory() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (c1, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let request = request_for(&f.client, &f.group, b"m");
        let coord = f.coordinator;
        let msg = sign_as(&f, c0, &package, request.clone());
        assert!(matches!(
            ask(&mut f.participants[0], coord, msg),
            Message::SignatureShare { .. }
        ));
        // A reload replaces the policy: the request already signed stays spent.
        let fresh = allow(&f.client);
        f.participants[0].set_policy(fresh);
        let (c2, k2) = commitment(&mut f, 0);
        let package = frost::SigningPackage::new([(f.ids[0], k2), (f.ids[1], k1)].into(), b"m");
        let _ = c1;
        let msg = sign_as(&f, c2, &package, request);
        assert_eq!(
            ask(&mut f.participants[0], coord, msg),
            Message::Refused(Refusal::NotAuthorized {
                rule: conclave_protocol::PolicyRule::Replay
            })
        );
    }

    #[test]
    fn a_frozen_node_does_not_release_a_remembered_share_either() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let coord = f.coordinator;
        let msg = sign_msg(&f, c0, &package);
        assert!(matches!(
            ask(&mut f.participants[0], coord, msg.clone()),
            Message::SignatureShare { .. }
        ));
        // The same request again, after a freeze: refused, although the answer is remembered.
        f.participants[0].set_freeze(Freeze {
            all: true,
            groups: Default::default(),
        });
        assert_eq!(
            ask(&mut f.participants[0], coord, msg.clone()),
            Message::Refused(Refusal::NodeFrozen)
        );
        // Unfrozen but the share removed: refused too.
        f.participants[0].set_freeze(Freeze::default());
        f.participants[0].set_shares(Instant::now(), vec![]);
        assert_eq!(
            ask(&mut f.participants[0], coord, msg),
            Message::Refused(Refusal::UnknownGroup)
        );
    }

    #[test]
    fn a_frozen_refusal_is_recorded_only_for_a_request_its_client_signed() {
        let mut f = fixture();
        let (c0, k0) = commitment(&mut f, 0);
        let (_, k1) = commitment(&mut f, 1);
        let package = frost::SigningPackage::new([(f.ids[0], k0), (f.ids[1], k1)].into(), b"m");
        let coord = f.coordinator;
        f.participants[0].set_freeze(Freeze {
            all: true,
            groups: Default::default(),
        });
        let before = f.audits[0].decisions.lock().unwrap().len();
        let mut forged = request_for(&f.client, &f.group, b"m");
        forged.signature[0] ^= 1;
        let msg = sign_as(&f, c0, &package, forged);
        assert_eq!(
            ask(&mut f.participants[0], coord, msg),
            Message::Refused(Refusal::NodeFrozen)
        );
        assert_eq!(f.audits[0].decisions.lock().unwrap().len(), before);
    }

    #[test]
    fn another_share_of_the_same_node_is_not_taken_for_the_dropped_one() {
        let f = fixture();
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..2)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        // The same members in two groups: the same identifiers, other shares.
        let (_, mut g) = deal(f.group.clone(), 2, &members, &mut rng).unwrap();
        let (_, mut h) = deal(GroupName::new("h").unwrap(), 2, &members, &mut rng).unwrap();
        let (mine, theirs) = (g.remove(0).key_package, h.remove(0).key_package);
        assert_eq!(mine.identifier(), theirs.identifier());
        let mut p = Participant::new(
            vec![(f.group.clone(), 1, mine.clone())],
            ParticipantConfig {
                share_cache_ttl: Some(Duration::from_secs(1)),
                ..Default::default()
            },
            allow(&f.client),
            Box::new(MemoryAudit::default()),
            &mut rng,
        );
        p.handle_timeout(Instant::now() + Duration::from_secs(2));
        assert_eq!(p.shares_in_memory(), 0);
        assert!(!p.restore_share(Instant::now(), &f.group, 1, theirs.clone()));
        // A reload with the other share under this group's name is a replacement, not "kept".
        let changes = p.set_shares(Instant::now(), vec![(f.group.clone(), 1, theirs)]);
        assert_eq!(changes.replaced, vec![(f.group.clone(), 1)]);
        let _ = mine;
    }
}
