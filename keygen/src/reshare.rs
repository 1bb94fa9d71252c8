//! Resharing: from (t, S) to (t', S') under the same group key, as a [`Protocol`] over the
//! ceremony relay. frost-ed25519 cannot change the threshold or the members; this does.
//!
//! A quorum Q of exactly t old members deals. Dealer i (old share s_i, old verifying share
//! Y_i = s_i·B, identifier x_i) draws a random polynomial g_i of degree t'−1 with
//! g_i(0) = λ_i·s_i, where λ_i = Π_{j∈Q, j≠i} x_j / (x_j − x_i) is its Lagrange coefficient at 0
//! over Q, and publishes Feldman commitments C_ik = a_ik·B (k = 0..t'−1). New member j (id x_j)
//! receives g_i(x_j) from every dealer, sealed end to end, and checks
//!   g_i(x_j)·B = Σ_k C_ik·x_j^k            (the sub-share matches the commitments)
//!   C_i0 = λ_i·Y_i                          (the dealer dealt its real old share)
//! Its new share is s'_j = Σ_i g_i(x_j). Everyone computes the new verifying shares
//! Y'_m = Σ_i Σ_k C_ik·x_m^k and checks Σ_i C_i0 = Y (the group key is unchanged:
//! Σ_i λ_i·s_i = s by Lagrange interpolation). The confirm round then makes every member
//! agree on the same new manifest before anyone stores a share.
//!
//! Rounds: 1 *deal* (X25519 keys of all members; commitments of the dealers), 2 *echo* (the
//! round-1 transcript, as in DKG), 3 *sub-shares* (sealed and signed).

use std::collections::BTreeMap;

use conclave_protocol::{Delivered, IdentityKey, NodeId};
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ceremony::{
    check_echoes, echo_post, transcript, CeremonyKind, CeremonyPlan, CheckedPlan, Complaint, Ctx,
    EncryptionKey, Fault, Outcome, PlanCheckError, PlanError, PlanMember, Protocol, RngCoreCrypto,
    Rounds, Step,
};
use crate::manifest::{GroupManifest, ManifestParticipant};

/// Protocol rounds of a reshare.
pub const ROUNDS: Rounds = Rounds {
    protocol: 3,
    names: round_name,
};

/// Progress names of the reshare rounds.
pub fn round_name(round: u8) -> &'static str {
    match round {
        1 => "deal",
        2 => "echo",
        3 => "sub-shares",
        _ => "?",
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Round1 {
    encryption_key: [u8; 32],
    /// Dealers: C_i0..C_i(t'-1), compressed. Others: empty.
    pub(crate) commitments: Vec<[u8; 32]>,
}

/// Test-only misbehaviour of a dealer.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshareFault {
    /// Sends one new member a sub-share that does not match the dealer's commitments.
    BadSubShare,
}

/// Why a member cannot take part in a reshare.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReshareError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the plan was refused: {0}")]
    Check(#[from] PlanCheckError),
    #[error("this node deals but no old share was given")]
    MissingShare,
    #[error("the old share does not belong to this plan's group, member or epoch")]
    WrongShare,
}

struct Dealer {
    node: NodeId,
    x: Scalar,
    lambda: Scalar,
    old_verifying_share: EdwardsPoint,
}

/// One member's reshare state. The polynomial, the old share and the sub-shares zeroize on
/// drop.
pub struct Reshare {
    plan: CeremonyPlan,
    new_members: Vec<PlanMember>,
    me: NodeId,
    dealers: Vec<Dealer>,
    group_key: EdwardsPoint,
    old_share: Option<Zeroizing<Scalar>>,
    coefficients: Zeroizing<Vec<Scalar>>,
    own_sub_share: Option<Zeroizing<Scalar>>,
    my_round1: Vec<u8>,
    transcript: Vec<(NodeId, Vec<u8>)>,
    transcript_hash: [u8; 32],
    commitments: BTreeMap<NodeId, Vec<EdwardsPoint>>,
    keys: BTreeMap<NodeId, [u8; 32]>,
    encryption: Option<EncryptionKey>,
    #[cfg(feature = "fault-injection")]
    fault: Option<ReshareFault>,
}

impl std::fmt::Debug for Reshare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reshare")
            .field("group", &self.plan.group)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

fn local(round: u8) -> Complaint {
    Complaint::new(round, Fault::LocalFailure, vec![])
}

fn id_scalar(id: &frost::Identifier) -> Option<Scalar> {
    let bytes: [u8; 32] = id.serialize().try_into().ok()?;
    Scalar::from_canonical_bytes(bytes).into()
}

/// A point from its canonical encoding only (a y not reduced mod p, or a sign bit on x = 0,
/// is refused, as frost and RFC 8032 refuse them).
pub(crate) fn point(bytes: &[u8]) -> Option<EdwardsPoint> {
    let p = CompressedEdwardsY::from_slice(bytes).ok()?.decompress()?;
    (p.compress().as_bytes() == bytes).then_some(p)
}

/// Σ_k C_k·x^k (public values: variable-time multiscalar multiplication).
fn eval_commitments(c: &[EdwardsPoint], x: &Scalar) -> EdwardsPoint {
    let mut powers = Vec::with_capacity(c.len());
    let mut p = Scalar::ONE;
    for _ in c {
        powers.push(p);
        p *= x;
    }
    EdwardsPoint::vartime_multiscalar_mul(&powers, c)
}

/// Σ_k a_k·x^k (Horner).
fn eval_polynomial(a: &[Scalar], x: &Scalar) -> Scalar {
    a.iter().rev().fold(Scalar::ZERO, |acc, ak| acc * x + ak)
}

impl Reshare {
    /// The reshare side of `me`; `old` is its old key package if it deals. The plan must have
    /// been checked against this host's own view of the old group ([`CheckedPlan::check`]):
    /// the group key and every dealer's verifying share come from that view, never from the
    /// plan alone.
    pub fn new(
        checked: &CheckedPlan,
        me: &NodeId,
        old: Option<&frost::keys::KeyPackage>,
    ) -> Result<Self, ReshareError> {
        let plan = checked.plan();
        let bad = |what| PlanError::Rule(what);
        let roster = plan.roster()?;
        if !roster.iter().any(|m| m.node_id == *me) {
            return Err(bad("this identity is not a member of the plan").into());
        }
        if plan.kind != CeremonyKind::Reshare {
            return Err(bad("not a reshare plan").into());
        }
        let group_key =
            point(&checked.group_key()).ok_or(bad("group public key is not a point"))?;
        let mut dealers = Vec::with_capacity(checked.dealers().len());
        for d in checked.dealers() {
            dealers.push(Dealer {
                node: d.node_id,
                x: id_scalar(&d.identifier).ok_or(bad("dealer identifier is not a scalar"))?,
                lambda: Scalar::ZERO,
                old_verifying_share: point(&d.verifying_share)
                    .ok_or(bad("dealer verifying share is not a point"))?,
            });
        }
        let xs: Vec<Scalar> = dealers.iter().map(|d| d.x).collect();
        for d in &mut dealers {
            let mut num = Scalar::ONE;
            let mut den = Scalar::ONE;
            for xj in xs.iter().filter(|x| **x != d.x) {
                num *= xj;
                den *= xj - d.x;
            }
            d.lambda = num * den.invert();
        }
        if old.is_some() && checked.old_manifest().is_none() {
            // A dealer's plan must have been checked against its own manifest: in joining mode
            // nothing about the co-dealers was checked, and dealing could hand λ·s to outsiders.
            return Err(bad("a dealer must check the plan against its own manifest").into());
        }
        let old_share = match (dealers.iter().find(|d| d.node == *me), old) {
            (None, _) => None,
            (Some(_), None) => return Err(ReshareError::MissingShare),
            (Some(d), Some(kp)) => {
                let bytes: [u8; 32] = kp
                    .signing_share()
                    .serialize()
                    .try_into()
                    .map_err(|_| ReshareError::WrongShare)?;
                let s = Zeroizing::new(
                    Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))
                        .ok_or(ReshareError::WrongShare)?,
                );
                // The share must be this dealer's share of this group.
                let my_id =
                    crate::manifest::identifier_for(me).map_err(|_| ReshareError::WrongShare)?;
                let vk = kp
                    .verifying_key()
                    .serialize()
                    .map_err(|_| ReshareError::WrongShare)?;
                if *kp.identifier() != my_id
                    || ED25519_BASEPOINT_TABLE * &*s != d.old_verifying_share
                    || point(&vk) != Some(group_key)
                {
                    return Err(ReshareError::WrongShare);
                }
                Some(s)
            }
        };
        Ok(Self {
            plan: plan.clone(),
            new_members: plan.members()?,
            me: *me,
            dealers,
            group_key,
            old_share,
            coefficients: Zeroizing::new(vec![]),
            own_sub_share: None,
            my_round1: vec![],
            transcript: vec![],
            transcript_hash: [0; 32],
            commitments: BTreeMap::new(),
            keys: BTreeMap::new(),
            encryption: None,
            #[cfg(feature = "fault-injection")]
            fault: None,
        })
    }

    /// Makes this dealer misbehave (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn inject(&mut self, fault: ReshareFault) {
        self.fault = Some(fault);
    }

    fn my_dealer(&self) -> Option<&Dealer> {
        self.dealers.iter().find(|d| d.node == self.me)
    }

    fn new_member_x(&self, node: &NodeId) -> Option<Scalar> {
        self.new_members
            .iter()
            .find(|m| m.node_id == *node)
            .and_then(|m| id_scalar(&m.identifier))
    }

    /// Round 2 delivered: check the echo, parse round 1, check every dealer's commitment
    /// against its old verifying share, then (dealers) send sub-shares.
    fn on_echoes(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        check_echoes(ctx, 2, items, &self.transcript_hash)?;
        let t_new = usize::from(self.plan.threshold);
        let mut malformed = vec![];
        let mut inconsistent = vec![];
        for (from, bytes) in &self.transcript {
            let Ok(r1) = postcard::from_bytes::<Round1>(bytes) else {
                malformed.push(*from);
                continue;
            };
            self.keys.insert(*from, r1.encryption_key);
            let Some(dealer) = self.dealers.iter().find(|d| d.node == *from) else {
                if !r1.commitments.is_empty() {
                    malformed.push(*from);
                }
                continue;
            };
            let points: Option<Vec<EdwardsPoint>> =
                r1.commitments.iter().map(|c| point(c)).collect();
            match points {
                Some(p)
                    if p.len() == t_new
                        && p.first() == Some(&(dealer.old_verifying_share * dealer.lambda)) =>
                {
                    self.commitments.insert(*from, p);
                }
                _ => inconsistent.push(*from),
            }
        }
        if !malformed.is_empty() {
            return Err(Complaint::new(1, Fault::Malformed, malformed));
        }
        if !inconsistent.is_empty() {
            return Err(Complaint::new(
                1,
                Fault::InconsistentCommitment,
                inconsistent,
            ));
        }
        let sum: EdwardsPoint = self
            .commitments
            .values()
            .filter_map(|c| c.first())
            .fold(EdwardsPoint::identity(), |a, b| a + b);
        if sum != self.group_key {
            return Err(Complaint::new(1, Fault::ResultMismatch, vec![]));
        }
        let mut direct = vec![];
        if self.my_dealer().is_some() {
            #[cfg(feature = "fault-injection")]
            let mut spoil = self.fault == Some(ReshareFault::BadSubShare);
            #[cfg(not(feature = "fault-injection"))]
            let mut spoil = false;
            for m in &self.new_members {
                let x = id_scalar(&m.identifier).ok_or_else(|| local(3))?;
                let mut v = Zeroizing::new(eval_polynomial(&self.coefficients, &x));
                if m.node_id == self.me {
                    self.own_sub_share = Some(v);
                    continue;
                }
                if spoil {
                    *v += Scalar::ONE;
                    spoil = false;
                }
                let key = self.keys.get(&m.node_id).ok_or_else(|| local(3))?;
                let plain = Zeroizing::new(v.to_bytes());
                direct.push(ctx.seal_direct(
                    identity,
                    3,
                    &m.node_id,
                    key,
                    plain.as_slice(),
                    rng,
                )?);
            }
            // The polynomial is no longer needed.
            self.coefficients = Zeroizing::new(vec![]);
            self.old_share = None;
        }
        Ok(Step::Post {
            broadcast: vec![],
            direct,
        })
    }

    /// Round 3 delivered: new members open and check their sub-shares; everyone computes the
    /// new verifying shares and the manifest.
    fn on_sub_shares(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        items: &[Delivered],
    ) -> Result<Step, Complaint> {
        // The dealers' commitments summed coefficient by coefficient: A_k = Σ_i C_ik. Then
        // Σ_i g_i(x)·B = Σ_k A_k·x^k, so one evaluation checks all sub-shares of a member at
        // once and gives every new verifying share (per-dealer checks only find a culprit).
        let t_new = usize::from(self.plan.threshold);
        let mut aggregate = vec![EdwardsPoint::identity(); t_new];
        for c in self.commitments.values() {
            for (a, ck) in aggregate.iter_mut().zip(c) {
                *a += ck;
            }
        }
        let my_x = self.new_member_x(&self.me);
        let mut share: Option<Zeroizing<Scalar>> = None;
        if let Some(x) = my_x {
            let key = self.encryption.as_ref().ok_or_else(|| local(3))?;
            let mut sum = Zeroizing::new(Scalar::ZERO);
            let mut received: Vec<(NodeId, Zeroizing<Scalar>)> =
                Vec::with_capacity(self.dealers.len());
            for dealer in &self.dealers {
                let v = if dealer.node == self.me {
                    self.own_sub_share.take().ok_or_else(|| local(3))?
                } else {
                    let blame = |fault| Complaint::new(3, fault, vec![dealer.node]);
                    let plain = ctx.open_direct(key, 3, items, &dealer.node, &self.me)?;
                    let bytes: [u8; 32] = plain
                        .as_slice()
                        .try_into()
                        .map_err(|_| blame(Fault::Malformed))?;
                    Zeroizing::new(
                        Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))
                            .ok_or_else(|| blame(Fault::Malformed))?,
                    )
                };
                *sum += *v;
                received.push((dealer.node, v));
            }
            if ED25519_BASEPOINT_TABLE * &*sum != eval_commitments(&aggregate, &x) {
                let culprits: Vec<NodeId> = received
                    .iter()
                    .filter(|(node, v)| {
                        self.commitments.get(node).is_none_or(|c| {
                            ED25519_BASEPOINT_TABLE * &**v != eval_commitments(c, &x)
                        })
                    })
                    .map(|(node, _)| *node)
                    .collect();
                return Err(Complaint::new(3, Fault::InvalidSecretShare, culprits));
            }
            share = Some(sum);
        }
        self.encryption = None;
        // New verifying shares from the public commitments alone.
        let mut verifying = BTreeMap::new();
        let mut participants = Vec::with_capacity(self.new_members.len());
        for m in &self.new_members {
            let x = id_scalar(&m.identifier).ok_or_else(|| local(3))?;
            let y = eval_commitments(&aggregate, &x);
            let vs = frost::keys::VerifyingShare::deserialize(y.compress().as_bytes())
                .map_err(|_| local(3))?;
            verifying.insert(m.identifier, vs);
            participants.push(ManifestParticipant {
                name: m.name.clone(),
                identifier: hex::encode(m.identifier.serialize()),
                identity_key: m.node_id.to_hex(),
                address: m.address.clone(),
                verifying_share: hex::encode(y.compress().as_bytes()),
            });
        }
        let manifest = GroupManifest {
            group: self.plan.group.clone(),
            threshold: self.plan.threshold,
            epoch: self.plan.epoch,
            group_public_key: hex::encode(self.group_key.compress().as_bytes()),
            participants,
        };
        manifest.validate().map_err(|_| local(3))?;
        let key_package = match share {
            None => None,
            Some(s) => {
                let me = self
                    .new_members
                    .iter()
                    .find(|m| m.node_id == identity.node_id())
                    .ok_or_else(|| local(3))?;
                let vs = *verifying.get(&me.identifier).ok_or_else(|| local(3))?;
                let signing =
                    frost::keys::SigningShare::deserialize(&s.to_bytes()).map_err(|_| local(3))?;
                let vk = frost::VerifyingKey::deserialize(self.group_key.compress().as_bytes())
                    .map_err(|_| local(3))?;
                if frost::keys::VerifyingShare::from(signing) != vs {
                    return Err(local(3));
                }
                Some(frost::keys::KeyPackage::new(
                    me.identifier,
                    signing,
                    vs,
                    vk,
                    self.plan.threshold,
                ))
            }
        };
        Ok(Step::Finished(Box::new(Outcome {
            manifest,
            key_package,
        })))
    }
}

impl Protocol for Reshare {
    fn rounds(&self) -> Rounds {
        ROUNDS
    }

    fn start(
        &mut self,
        _ctx: &Ctx,
        _identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        let (key, encryption_key) = EncryptionKey::generate(&mut *rng);
        self.encryption = Some(key);
        let mut commitments = vec![];
        if let (Some(d), Some(s)) = (self.my_dealer(), self.old_share.as_ref()) {
            let mut a = Zeroizing::new(Vec::with_capacity(usize::from(self.plan.threshold)));
            a.push(d.lambda * **s);
            for _ in 1..self.plan.threshold {
                let mut wide = Zeroizing::new([0u8; 64]);
                rng.fill_bytes(wide.as_mut_slice());
                a.push(Scalar::from_bytes_mod_order_wide(&wide));
            }
            commitments = a
                .iter()
                .map(|ak| (ED25519_BASEPOINT_TABLE * ak).compress().to_bytes())
                .collect();
            self.coefficients = a;
        }
        self.my_round1 = postcard::to_allocvec(&Round1 {
            encryption_key,
            commitments,
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
            1 => {
                self.transcript = transcript(items, &self.me, &self.my_round1);
                let (hash, step) = echo_post(ctx, identity, 2, &self.transcript)?;
                self.transcript_hash = hash;
                Ok(step)
            }
            2 => self.on_echoes(ctx, identity, items, rng),
            3 => self.on_sub_shares(ctx, identity, items),
            _ => Err(local(round)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Fuzzing finding (target `ceremony_payload`, corpus file `crash-96787a9f…`): a dealer's
    /// round-1 commitment in a non-canonical encoding (y not reduced mod p) was accepted, where
    /// frost and RFC 8032 refuse it. Every receiver decodes the same point from it, so the
    /// ceremony's result was not at stake, but one point had two encodings on the wire.
    #[test]
    fn a_commitment_in_a_non_canonical_encoding_is_refused() {
        // y = p + 1 (encodes y = 1, the identity's y, unreduced).
        let mut noncanonical = [0xffu8; 32];
        noncanonical[0] = 0xee;
        noncanonical[31] = 0x7f;
        assert!(super::point(&noncanonical).is_none());
        let canonical = curve25519_dalek::constants::ED25519_BASEPOINT_POINT
            .compress()
            .to_bytes();
        assert!(super::point(&canonical).is_some());
    }
}
