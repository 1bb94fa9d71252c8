//! Distributed key generation: FROST DKG (frost-ed25519 `keys::dkg` part1/2/3) as a
//! [`Protocol`] over the ceremony relay. No host ever holds the group secret.
//!
//! Rounds (after the join round):
//! 1. *packages*: each member broadcasts its round-1 package (commitment to a random
//!    polynomial and a proof of knowledge of its constant term) and a fresh X25519 key.
//! 2. *echo*: each member signs the hash of the whole round-1 transcript it received (with
//!    its own message as it sent it) and broadcasts it; all n hashes must match before
//!    anyone goes on. This is what makes round 1 a broadcast although the relay could send
//!    each member something different: a substitution shows up as a mismatch, and the
//!    disagreeing members are named. Proofs of knowledge are checked only after the echo,
//!    so a failing proof is blamed on its real author.
//! 3. *shares*: each member sends every other member its secret share, HPKE-sealed to the
//!    recipient's round-1 key and signed by the sender; recipients check signatures, decrypt,
//!    and verify each share against the sender's commitment (part3), naming any culprit.
//!
//! The confirm and store rounds of [`crate::ceremony::Member`] follow.

use std::collections::BTreeMap;

use conclave_protocol::{Delivered, IdentityKey, NodeId};
use frost::keys::dkg;
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ceremony::{
    check_echoes, echo_post, transcript, CeremonyPlan, Complaint, Ctx, EncryptionKey, Fault,
    Outcome, PlanError, PlanMember, Protocol, RngCoreCrypto, Rounds, Step,
};
use crate::manifest::{GroupManifest, ManifestParticipant};

/// Protocol rounds of the DKG.
pub const ROUNDS: Rounds = Rounds {
    protocol: 3,
    names: round_name,
};

/// Progress names of the DKG rounds.
pub fn round_name(round: u8) -> &'static str {
    match round {
        1 => "packages",
        2 => "echo",
        3 => "shares",
        _ => "?",
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Round1 {
    /// `frost::keys::dkg::round1::Package`, serialized by frost.
    pub(crate) package: Vec<u8>,
    /// This member's X25519 key for this ceremony's direct messages.
    encryption_key: [u8; 32],
}

/// Test-only misbehaviour of a DKG member.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkgFault {
    /// Sends every other member the share meant for someone else (a valid scalar that does
    /// not match this member's commitment).
    BadShare,
}

/// One member's DKG state. Secret parts (frost's secret packages, the X25519 key) zeroize
/// on drop.
pub struct Dkg {
    plan: CeremonyPlan,
    members: Vec<PlanMember>,
    me: usize,
    secret1: Option<dkg::round1::SecretPackage>,
    secret2: Option<dkg::round2::SecretPackage>,
    my_round1: Vec<u8>,
    transcript: Vec<(NodeId, Vec<u8>)>,
    transcript_hash: [u8; 32],
    round1: BTreeMap<frost::Identifier, dkg::round1::Package>,
    keys: BTreeMap<NodeId, [u8; 32]>,
    encryption: Option<EncryptionKey>,
    /// Refresh: this member's current share and the group's public key package.
    refresh: Option<(frost::keys::KeyPackage, frost::keys::PublicKeyPackage)>,
    #[cfg(feature = "fault-injection")]
    fault: Option<DkgFault>,
}

impl std::fmt::Debug for Dkg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkg")
            .field("group", &self.plan.group)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

fn local(round: u8) -> Complaint {
    Complaint::new(round, Fault::LocalFailure, vec![])
}

impl Dkg {
    /// The DKG side of `me` in `plan`.
    pub fn new(plan: &CeremonyPlan, me: &NodeId) -> Result<Self, PlanError> {
        let members = plan.members()?;
        let me = members
            .iter()
            .position(|m| m.node_id == *me)
            .ok_or(PlanError::BadNode {
                name: me.short(),
                what: "this identity is not a participant of the plan",
            })?;
        Ok(Self {
            plan: plan.clone(),
            members,
            me,
            secret1: None,
            secret2: None,
            my_round1: vec![],
            transcript: vec![],
            transcript_hash: [0; 32],
            round1: BTreeMap::new(),
            keys: BTreeMap::new(),
            encryption: None,
            refresh: None,
            #[cfg(feature = "fault-injection")]
            fault: None,
        })
    }

    /// The refresh side of `me` (frost's refresh DKG: every member adds a sharing of zero to
    /// its share; same members, threshold and group key). `old` is this member's current key
    /// package; the plan must have been checked against this host's own manifest
    /// ([`crate::ceremony::CheckedPlan::check`], which refuses any change of members or keys).
    pub fn refresh(
        checked: &crate::ceremony::CheckedPlan,
        me: &NodeId,
        old: frost::keys::KeyPackage,
    ) -> Result<Self, crate::reshare::ReshareError> {
        use crate::reshare::ReshareError;
        let plan = checked.plan();
        let old_manifest = checked
            .old_manifest()
            .filter(|_| plan.kind == crate::ceremony::CeremonyKind::Refresh)
            .ok_or(ReshareError::Plan(PlanError::Rule(
                "not a refresh plan checked against this host's manifest",
            )))?;
        let pkp = old_manifest
            .public_key_package()
            .map_err(|_| ReshareError::WrongShare)?;
        let my_id = crate::manifest::identifier_for(me).map_err(|_| ReshareError::WrongShare)?;
        let vs = old.verifying_share();
        if *old.identifier() != my_id
            || pkp.verifying_shares().get(&my_id) != Some(vs)
            || pkp.verifying_key() != old.verifying_key()
        {
            return Err(ReshareError::WrongShare);
        }
        let mut dkg = Self::new(plan, me)?;
        dkg.refresh = Some((old, pkp));
        Ok(dkg)
    }

    /// Makes this member misbehave (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn inject(&mut self, fault: DkgFault) {
        self.fault = Some(fault);
    }

    fn my_node(&self) -> Result<NodeId, Complaint> {
        self.members
            .get(self.me)
            .map(|m| m.node_id)
            .ok_or_else(|| local(0))
    }

    fn identifier_of(&self, node: &NodeId) -> Option<frost::Identifier> {
        self.members
            .iter()
            .find(|m| m.node_id == *node)
            .map(|m| m.identifier)
    }

    fn node_of(&self, id: &frost::Identifier) -> Option<NodeId> {
        self.members
            .iter()
            .find(|m| m.identifier == *id)
            .map(|m| m.node_id)
    }

    /// Round 1 delivered: keep the transcript and echo its hash.
    fn on_packages(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        items: &[Delivered],
    ) -> Result<Step, Complaint> {
        let me = self.my_node()?;
        self.transcript = transcript(items, &me, &self.my_round1);
        let (hash, step) = echo_post(ctx, identity, 2, &self.transcript)?;
        self.transcript_hash = hash;
        Ok(step)
    }

    /// Round 2 delivered: every echo must match ours; then round 1 is trusted, the proofs of
    /// knowledge are checked (part2), and the shares go out sealed.
    fn on_echoes(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        check_echoes(ctx, 2, items, &self.transcript_hash)?;
        // Everyone saw the same round 1: parse it; a malformed message is its author's fault.
        let me = self.my_node()?;
        let mut malformed = vec![];
        for (from, bytes) in &self.transcript {
            let parsed = postcard::from_bytes::<Round1>(bytes).ok().and_then(|r| {
                dkg::round1::Package::deserialize(&r.package)
                    .ok()
                    .map(|p| (p, r.encryption_key))
            });
            match (parsed, self.identifier_of(from)) {
                (Some((package, key)), Some(id)) => {
                    if *from != me {
                        self.round1.insert(id, package);
                    }
                    self.keys.insert(*from, key);
                }
                _ => malformed.push(*from),
            }
        }
        if !malformed.is_empty() {
            return Err(Complaint::new(1, Fault::Malformed, malformed));
        }
        let secret1 = self.secret1.take().ok_or_else(|| local(2))?;
        let parted = if self.refresh.is_some() {
            frost::keys::refresh::refresh_dkg_part2(secret1, &self.round1)
        } else {
            dkg::part2(secret1, &self.round1)
        };
        let (secret2, packages) = parted.map_err(|e| match e {
            frost::Error::InvalidProofOfKnowledge { culprit } => Complaint::new(
                1,
                Fault::InvalidProofOfKnowledge,
                self.node_of(&culprit).into_iter().collect(),
            ),
            _ => Complaint::new(1, Fault::Malformed, vec![]),
        })?;
        self.secret2 = Some(secret2);
        let mut direct = Vec::with_capacity(packages.len());
        let others: Vec<NodeId> = self
            .members
            .iter()
            .map(|m| m.node_id)
            .filter(|n| *n != me)
            .collect();
        for (i, to) in others.iter().enumerate() {
            let id = self.identifier_of(to).ok_or_else(|| local(3))?;
            #[allow(unused_mut)]
            let mut which = id;
            #[cfg(feature = "fault-injection")]
            if self.fault == Some(DkgFault::BadShare) {
                if let Some(other) = others.get((i + 1) % others.len()) {
                    which = self.identifier_of(other).ok_or_else(|| local(3))?;
                }
            }
            let _ = i;
            let package = packages.get(&which).ok_or_else(|| local(3))?;
            let plain = Zeroizing::new(package.serialize().map_err(|_| local(3))?);
            let key = self.keys.get(to).ok_or_else(|| local(3))?;
            direct.push(ctx.seal_direct(identity, 3, to, key, &plain, rng)?);
        }
        Ok(Step::Post {
            broadcast: vec![],
            direct,
        })
    }

    /// Round 3 delivered: open and verify every share (part3), build the manifest.
    fn on_shares(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        items: &[Delivered],
    ) -> Result<Step, Complaint> {
        let me = identity.node_id();
        let key = self.encryption.as_ref().ok_or_else(|| local(3))?;
        let mut shares = BTreeMap::new();
        for d in items.iter().filter(|d| d.from != me) {
            let blame = |fault| Complaint::new(3, fault, vec![d.from]);
            let plain = ctx.open_direct(key, 3, items, &d.from, &me)?;
            let package =
                dkg::round2::Package::deserialize(&plain).map_err(|_| blame(Fault::Malformed))?;
            let id = self.identifier_of(&d.from).ok_or_else(|| local(3))?;
            shares.insert(id, package);
        }
        let secret2 = self.secret2.take().ok_or_else(|| local(3))?;
        let finished = match &self.refresh {
            Some((old, pkp)) => frost::keys::refresh::refresh_dkg_shares(
                &secret2,
                &self.round1,
                &shares,
                pkp.clone(),
                old.clone(),
            ),
            None => dkg::part3(&secret2, &self.round1, &shares),
        };
        let (key_package, public) = finished.map_err(|e| match e {
            frost::Error::InvalidSecretShare { culprit } => Complaint::new(
                3,
                Fault::InvalidSecretShare,
                culprit.and_then(|c| self.node_of(&c)).into_iter().collect(),
            ),
            _ => Complaint::new(3, Fault::Malformed, vec![]),
        })?;
        self.encryption = None;
        let manifest = manifest_from(&self.plan, &self.members, &public).map_err(|_| local(3))?;
        Ok(Step::Finished(Box::new(Outcome {
            manifest,
            key_package: Some(key_package),
        })))
    }
}

/// The manifest of a group made by `plan`, with the verifying shares of `public`.
pub fn manifest_from(
    plan: &CeremonyPlan,
    members: &[PlanMember],
    public: &frost::keys::PublicKeyPackage,
) -> Result<GroupManifest, crate::KeygenError> {
    let mut participants = Vec::with_capacity(members.len());
    for m in members {
        let share = public
            .verifying_shares()
            .get(&m.identifier)
            .ok_or(frost::Error::UnknownIdentifier)?;
        participants.push(ManifestParticipant {
            name: m.name.clone(),
            identifier: hex::encode(m.identifier.serialize()),
            identity_key: m.node_id.to_hex(),
            address: m.address.clone(),
            verifying_share: hex::encode(share.serialize()?),
        });
    }
    let manifest = GroupManifest {
        group: plan.group.clone(),
        threshold: plan.threshold,
        epoch: plan.epoch,
        group_public_key: hex::encode(public.verifying_key().serialize()?),
        participants,
    };
    manifest.validate()?;
    Ok(manifest)
}

impl Protocol for Dkg {
    fn rounds(&self) -> Rounds {
        ROUNDS
    }

    fn start(
        &mut self,
        _ctx: &Ctx,
        _identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        let n = self.members.len() as u16;
        let id = self
            .members
            .get(self.me)
            .ok_or_else(|| local(1))?
            .identifier;
        let (secret, package) = if self.refresh.is_some() {
            frost::keys::refresh::refresh_dkg_part1(id, n, self.plan.threshold, &mut *rng)
        } else {
            dkg::part1(id, n, self.plan.threshold, &mut *rng)
        }
        .map_err(|_| local(1))?;
        let (key, encryption_key) = EncryptionKey::generate(&mut *rng);
        self.secret1 = Some(secret);
        self.encryption = Some(key);
        self.my_round1 = postcard::to_allocvec(&Round1 {
            package: package.serialize().map_err(|_| local(1))?,
            encryption_key,
        })
        .map_err(|_| local(1))?;
        Ok(Step::Post {
            broadcast: self.my_round1.clone(),
            direct: vec![],
        })
    }

    fn deliver(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        match round {
            1 => self.on_packages(ctx, identity, items),
            2 => self.on_echoes(ctx, identity, items, rng),
            3 => self.on_shares(ctx, identity, items),
            _ => Err(local(round)),
        }
    }
}
