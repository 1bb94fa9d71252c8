//! Repair: rebuild the lost share of an existing member with the help of t others
//! (frost-ed25519 `keys::repairable`, RFC 9591's companion "repairable threshold scheme"), as
//! a [`Protocol`] over the ceremony relay. The group, its key, its epoch and the other
//! shares do not change; the rebuilt share is checked against the manifest's verifying share
//! before anything is written.
//!
//! Rounds: 1 *keys* (every member's per-ceremony X25519 key, signed by its identity key, so
//! no echo round is needed), 2 *deltas* (helper i splits ζ_i·s_i into one random delta per
//! helper and sends each sealed), 3 *sigmas* (each helper sums the deltas it received and
//! sends the sum sealed to the member being repaired, who adds them up).

use std::collections::BTreeMap;

use conclave_protocol::{Delivered, IdentityKey, NodeId};
use frost::keys::repairable::{Delta, Sigma};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ceremony::{
    CeremonyKind, CheckedPlan, Complaint, Ctx, EncryptionKey, Fault, Outcome, PlanError, Protocol,
    RngCoreCrypto, Role, Rounds, Step,
};
use crate::manifest::GroupManifest;
use crate::reshare::ReshareError;

/// Protocol rounds of a repair.
pub const ROUNDS: Rounds = Rounds {
    protocol: 3,
    names: round_name,
};

/// Progress names of the repair rounds.
pub fn round_name(round: u8) -> &'static str {
    match round {
        1 => "keys",
        2 => "deltas",
        3 => "sigmas",
        _ => "?",
    }
}

const KEY_DOMAIN: &[u8] = b"repair-key";

#[derive(Serialize, Deserialize)]
pub(crate) struct Round1 {
    encryption_key: [u8; 32],
    signature: Vec<u8>,
}

fn local(round: u8) -> Complaint {
    Complaint::new(round, Fault::LocalFailure, vec![])
}

/// One member's repair state.
pub struct Repair {
    manifest: GroupManifest,
    me: NodeId,
    /// The member being repaired.
    lost: (NodeId, frost::Identifier),
    helpers: Vec<(NodeId, frost::Identifier)>,
    key_package: Option<frost::keys::KeyPackage>,
    keys: BTreeMap<NodeId, [u8; 32]>,
    encryption: Option<EncryptionKey>,
    own_delta: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repair")
            .field("group", &self.manifest.group)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

impl Repair {
    /// The repair side of `me`. Helpers give their current share; the member being repaired
    /// gives none. The plan must have been checked against this host's own manifest
    /// ([`CheckedPlan::check`]): the member being repaired is then an existing member under
    /// exactly its manifest identity key, so the helpers' sigmas can only ever rebuild that
    /// member's own share, sealed to a key only that identity signed.
    pub fn new(
        checked: &CheckedPlan,
        me: &NodeId,
        share: Option<frost::keys::KeyPackage>,
    ) -> Result<Self, ReshareError> {
        let plan = checked.plan();
        let bad = |what| ReshareError::Plan(PlanError::Rule(what));
        if plan.kind != CeremonyKind::Repair {
            return Err(bad("not a repair plan"));
        }
        let manifest = checked
            .old_manifest()
            .ok_or(bad("a repair needs this host's manifest"))?;
        let lost = checked
            .entries()
            .iter()
            .find(|e| e.roles.contains(&Role::Repaired))
            .ok_or(bad("no member to repair"))?;
        let lost_member = manifest
            .members()
            .map_err(|_| ReshareError::WrongShare)?
            .into_iter()
            .find(|m| m.node_id == lost.node_id)
            .ok_or(bad("the member to repair is not in the manifest"))?;
        let lost = (lost_member.node_id, lost_member.identifier);
        let helpers: Vec<(NodeId, frost::Identifier)> = checked
            .dealers()
            .iter()
            .map(|d| (d.node_id, d.identifier))
            .collect();
        let is_helper = helpers.iter().any(|(n, _)| n == me);
        if !is_helper && lost.0 != *me {
            return Err(bad("this identity is not in the plan"));
        }
        let key_package = match (is_helper, share) {
            (false, _) => None,
            (true, None) => return Err(ReshareError::MissingShare),
            (true, Some(kp)) => {
                let pkp = manifest
                    .public_key_package()
                    .map_err(|_| ReshareError::WrongShare)?;
                let my_id =
                    crate::manifest::identifier_for(me).map_err(|_| ReshareError::WrongShare)?;
                if *kp.identifier() != my_id
                    || pkp.verifying_shares().get(&my_id) != Some(kp.verifying_share())
                    || pkp.verifying_key() != kp.verifying_key()
                {
                    return Err(ReshareError::WrongShare);
                }
                Some(kp)
            }
        };
        Ok(Self {
            manifest: manifest.clone(),
            me: *me,
            lost,
            helpers,
            key_package,
            keys: BTreeMap::new(),
            encryption: None,
            own_delta: None,
        })
    }

    fn opened(
        &self,
        ctx: &Ctx,
        round: u8,
        items: &[Delivered],
        from: &NodeId,
    ) -> Result<Zeroizing<Vec<u8>>, Complaint> {
        let key = self.encryption.as_ref().ok_or_else(|| local(round))?;
        ctx.open_direct(key, round, items, from, &self.me)
    }

    fn seal_to(
        &self,
        ctx: &Ctx,
        identity: &IdentityKey,
        round: u8,
        to: &NodeId,
        plain: &[u8],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<(NodeId, Vec<u8>), Complaint> {
        let key = self.keys.get(to).ok_or_else(|| local(round))?;
        ctx.seal_direct(identity, round, to, key, plain, rng)
    }
}

impl Protocol for Repair {
    fn rounds(&self) -> Rounds {
        ROUNDS
    }

    fn start(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        let (key, encryption_key) = EncryptionKey::generate(&mut *rng);
        self.encryption = Some(key);
        let signature = ctx.sign(identity, KEY_DOMAIN, 1, None, &[&encryption_key]);
        Ok(Step::Post {
            broadcast: postcard::to_allocvec(&Round1 {
                encryption_key,
                signature,
            })
            .map_err(|_| local(1))?,
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
                // Keys, each signed by its member: the relay cannot substitute one.
                for d in items {
                    let r: Round1 = postcard::from_bytes(&d.broadcast)
                        .map_err(|_| Complaint::new(1, Fault::Missing, vec![d.from]))?;
                    if !ctx.verify(
                        &d.from,
                        &r.signature,
                        KEY_DOMAIN,
                        1,
                        None,
                        &[&r.encryption_key],
                    ) {
                        return Err(Complaint::new(1, Fault::BadSignature, vec![d.from]));
                    }
                    self.keys.insert(d.from, r.encryption_key);
                }
                let mut direct = vec![];
                if let Some(kp) = &self.key_package {
                    let ids: Vec<frost::Identifier> = self.helpers.iter().map(|h| h.1).collect();
                    let deltas = frost::keys::repairable::repair_share_part1::<
                        frost::Ed25519Sha512,
                        _,
                    >(&ids, kp, &mut &mut *rng, self.lost.1)
                    .map_err(|_| local(2))?;
                    for (node, id) in self.helpers.clone() {
                        let delta = deltas.get(&id).ok_or_else(|| local(2))?;
                        let bytes = Zeroizing::new(delta.serialize());
                        if node == self.me {
                            self.own_delta = Some(bytes);
                        } else {
                            direct.push(self.seal_to(ctx, identity, 2, &node, &bytes, rng)?);
                        }
                    }
                }
                Ok(Step::Post {
                    broadcast: vec![],
                    direct,
                })
            }
            2 => {
                let mut direct = vec![];
                if self.key_package.is_some() {
                    let mut deltas = Vec::with_capacity(self.helpers.len());
                    for (node, _) in self.helpers.clone() {
                        let bytes = if node == self.me {
                            self.own_delta.take().ok_or_else(|| local(2))?
                        } else {
                            self.opened(ctx, 2, items, &node)?
                        };
                        deltas.push(
                            Delta::deserialize(&bytes)
                                .map_err(|_| Complaint::new(2, Fault::Malformed, vec![node]))?,
                        );
                    }
                    let sigma = frost::keys::repairable::repair_share_part2(&deltas);
                    let bytes = Zeroizing::new(sigma.serialize());
                    let lost = self.lost.0;
                    direct.push(self.seal_to(ctx, identity, 3, &lost, &bytes, rng)?);
                }
                Ok(Step::Post {
                    broadcast: vec![],
                    direct,
                })
            }
            3 => {
                let mut key_package = None;
                if self.me == self.lost.0 {
                    let mut sigmas = Vec::with_capacity(self.helpers.len());
                    for (node, _) in self.helpers.clone() {
                        let bytes = self.opened(ctx, 3, items, &node)?;
                        sigmas.push(
                            Sigma::deserialize(&bytes)
                                .map_err(|_| Complaint::new(3, Fault::Malformed, vec![node]))?,
                        );
                    }
                    let pkp = self.manifest.public_key_package().map_err(|_| local(3))?;
                    let kp =
                        frost::keys::repairable::repair_share_part3(&sigmas, self.lost.1, &pkp)
                            .map_err(|_| local(3))?;
                    // The rebuilt share must be the one the manifest knows.
                    if pkp.verifying_shares().get(&self.lost.1) != Some(kp.verifying_share()) {
                        return Err(Complaint::new(3, Fault::InvalidSecretShare, vec![]));
                    }
                    key_package = Some(kp);
                }
                self.encryption = None;
                Ok(Step::Finished(Box::new(Outcome {
                    manifest: self.manifest.clone(),
                    key_package,
                })))
            }
            _ => Err(local(round)),
        }
    }
}
