//! Every kind of ceremony in one place: the only module that knows the concrete protocols
//! (the generic ceremony layer — plan, check, member, relay — takes a [`Rounds`] and a
//! [`Protocol`] and knows none of them). It gives each kind's round shape, builds the protocol
//! a member runs from its plan ([`protocol_for`]), and builds rotation plans with their default
//! dealers and helpers ([`refresh_plan`], [`reshare_plan`], [`repair_plan`]).

use conclave_protocol::{IdentityKey, NodeId};
use frost_ed25519 as frost;
use rand::{CryptoRng, RngCore};

use crate::ceremony::{
    CeremonyKind, CeremonyPlan, CheckedPlan, Complaint, Ctx, PlanError, PlanNode, Protocol,
    RngCoreCrypto, Rounds, Step,
};
use crate::dkg::Dkg;
use crate::manifest::GroupManifest;
use crate::repair::Repair;
use crate::reshare::{Reshare, ReshareError};
use conclave_protocol::Delivered;

/// The rounds of a kind of ceremony.
pub fn rounds(kind: CeremonyKind) -> Rounds {
    match kind {
        CeremonyKind::Dkg | CeremonyKind::Refresh => crate::dkg::ROUNDS,
        CeremonyKind::Reshare => crate::reshare::ROUNDS,
        CeremonyKind::Repair => crate::repair::ROUNDS,
    }
}

/// The protocol of any kind, as one type (so a driver, or a test fault, can reach the
/// concrete one).
#[derive(Debug)]
pub enum AnyProtocol {
    Dkg(Box<Dkg>),
    Reshare(Box<Reshare>),
    Repair(Box<Repair>),
}

impl Protocol for AnyProtocol {
    fn rounds(&self) -> Rounds {
        match self {
            AnyProtocol::Dkg(p) => p.rounds(),
            AnyProtocol::Reshare(p) => p.rounds(),
            AnyProtocol::Repair(p) => p.rounds(),
        }
    }

    fn start(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        match self {
            AnyProtocol::Dkg(p) => p.start(ctx, identity, rng),
            AnyProtocol::Reshare(p) => p.start(ctx, identity, rng),
            AnyProtocol::Repair(p) => p.start(ctx, identity, rng),
        }
    }

    fn deliver(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        match self {
            AnyProtocol::Dkg(p) => p.deliver(ctx, identity, round, items, rng),
            AnyProtocol::Reshare(p) => p.deliver(ctx, identity, round, items, rng),
            AnyProtocol::Repair(p) => p.deliver(ctx, identity, round, items, rng),
        }
    }
}

/// What a member brings to a ceremony (built once per ceremony: the size of the share in
/// the enum does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Input<'a> {
    /// A DKG: nothing but the plan.
    Dkg(&'a CeremonyPlan),
    /// A refresh, reshare or repair: the plan checked against this host's own view of the old
    /// group, and this member's current share if it deals or helps.
    Rotation {
        checked: &'a CheckedPlan,
        old_share: Option<frost::keys::KeyPackage>,
    },
}

/// The protocol member `me` runs, from its plan.
pub fn protocol_for(input: Input<'_>, me: &NodeId) -> Result<AnyProtocol, ReshareError> {
    match input {
        Input::Dkg(plan) => {
            if plan.kind != CeremonyKind::Dkg {
                return Err(ReshareError::Plan(PlanError::NotThisKind(plan.kind)));
            }
            Ok(AnyProtocol::Dkg(Box::new(Dkg::new(plan, me)?)))
        }
        Input::Rotation { checked, old_share } => match checked.plan().kind {
            CeremonyKind::Refresh => {
                let kp = old_share.ok_or(ReshareError::MissingShare)?;
                Ok(AnyProtocol::Dkg(Box::new(Dkg::refresh(checked, me, kp)?)))
            }
            CeremonyKind::Reshare => Ok(AnyProtocol::Reshare(Box::new(Reshare::new(
                checked,
                me,
                old_share.as_ref(),
            )?))),
            CeremonyKind::Repair => Ok(AnyProtocol::Repair(Box::new(Repair::new(
                checked, me, old_share,
            )?))),
            CeremonyKind::Dkg => Err(ReshareError::Plan(PlanError::NotThisKind(
                CeremonyKind::Dkg,
            ))),
        },
    }
}

fn member_node(old: &GroupManifest, name: &str) -> Result<PlanNode, PlanError> {
    let p = old
        .participants
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| PlanError::BadNode {
            name: name.to_owned(),
            what: "is not a member of the old group",
        })?;
    Ok(PlanNode {
        name: p.name.clone(),
        identity_key: p.identity_key.clone(),
        address: p.address.clone(),
    })
}

/// A refresh of `old`: every member, same threshold, every member deals.
pub fn refresh_plan<R: RngCore + CryptoRng>(
    old: &GroupManifest,
    coordinator: PlanNode,
    rng: &mut R,
) -> Result<CeremonyPlan, PlanError> {
    let names: Vec<String> = old.participants.iter().map(|p| p.name.clone()).collect();
    let nodes = names
        .iter()
        .map(|n| member_node(old, n))
        .collect::<Result<Vec<_>, _>>()?;
    CeremonyPlan::new_rotation(
        CeremonyKind::Refresh,
        old,
        old.threshold,
        coordinator,
        nodes,
        &names,
        &[],
        rng,
    )
}

/// A repair of `lost`'s share (an existing member, under its manifest key and address) by
/// `helpers` (default: the first `threshold` other members).
pub fn repair_plan<R: RngCore + CryptoRng>(
    old: &GroupManifest,
    lost: &str,
    helpers: &[String],
    coordinator: PlanNode,
    rng: &mut R,
) -> Result<CeremonyPlan, PlanError> {
    let lost = member_node(old, lost)?;
    let helpers: Vec<String> = if helpers.is_empty() {
        old.participants
            .iter()
            .filter(|p| p.identity_key != lost.identity_key)
            .take(usize::from(old.threshold))
            .map(|p| p.name.clone())
            .collect()
    } else {
        helpers.to_vec()
    };
    CeremonyPlan::new_rotation(
        CeremonyKind::Repair,
        old,
        old.threshold,
        coordinator,
        vec![lost],
        &helpers,
        &[],
        rng,
    )
}

/// A reshare of `old` to `threshold` over `participants` (the whole new group; names of
/// `replace` come back under a new key), dealt by `dealers` (default: old members that stay
/// under their key, then the others, the first old-threshold of them).
pub fn reshare_plan<R: RngCore + CryptoRng>(
    old: &GroupManifest,
    threshold: u16,
    participants: Vec<PlanNode>,
    dealers: &[String],
    replace: &[String],
    coordinator: PlanNode,
    rng: &mut R,
) -> Result<CeremonyPlan, PlanError> {
    let dealers: Vec<String> = if dealers.is_empty() {
        let stays = |key: &str| participants.iter().any(|n| n.identity_key == key);
        let eligible = old
            .participants
            .iter()
            .filter(|p| !replace.contains(&p.name));
        let mut order: Vec<String> = eligible
            .clone()
            .filter(|p| stays(&p.identity_key))
            .map(|p| p.name.clone())
            .collect();
        order.extend(
            eligible
                .filter(|p| !stays(&p.identity_key))
                .map(|p| p.name.clone()),
        );
        order.truncate(usize::from(old.threshold));
        order
    } else {
        dealers.to_vec()
    };
    CeremonyPlan::new_rotation(
        CeremonyKind::Reshare,
        old,
        threshold,
        coordinator,
        participants,
        &dealers,
        replace,
        rng,
    )
}

/// A reshare set up for a run: an old group `from` = (t, n) made by the dealer, and a plan to
/// `to` = (t', n') dealt by the first t old members (members are named `m0`, `m1`, ...; the
/// first min(n, n') stay). Used by the simulator and the reshare benchmark.
pub struct ReshareFixture {
    pub plan: CeremonyPlan,
    pub old: crate::manifest::GroupManifest,
    /// Every node's identity (old and new members), in member order.
    pub identities: Vec<conclave_protocol::IdentityKey>,
    /// The old members' key packages.
    pub old_shares: std::collections::BTreeMap<NodeId, frost_ed25519::keys::KeyPackage>,
    /// The relay's identity.
    pub coordinator: conclave_protocol::IdentityKey,
}

impl std::fmt::Debug for ReshareFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReshareFixture")
            .field("plan", &self.plan.ceremony)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// Builds a [`ReshareFixture`]; `address(i)` is member i's address, `relay` the relay's.
pub fn reshare_fixture<R: rand::RngCore + rand::CryptoRng>(
    group: &str,
    from: (u16, usize),
    to: (u16, usize),
    address: impl Fn(usize) -> String,
    relay: &str,
    rng: &mut R,
) -> Result<ReshareFixture, crate::KeygenError> {
    use conclave_protocol::{GroupName, IdentityKey};
    let ((t, n), (t2, n2)) = (from, to);
    let identities: Vec<IdentityKey> = (0..n.max(n2))
        .map(|_| IdentityKey::generate(&mut *rng))
        .collect();
    let members: Vec<crate::NewMember> = identities
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, k)| crate::NewMember {
            name: format!("m{i}"),
            node_id: k.node_id(),
            address: address(i),
        })
        .collect();
    let group = GroupName::new(group).map_err(|_| crate::KeygenError::BadName(group.into()))?;
    let (old, shares) = crate::deal(group, t, &members, &mut *rng)?;
    let coordinator = IdentityKey::generate(&mut *rng);
    let new_group = identities
        .iter()
        .take(n2)
        .enumerate()
        .map(|(i, k)| PlanNode {
            name: format!("m{i}"),
            identity_key: k.node_id().to_hex(),
            address: address(i),
        })
        .collect();
    let dealers: Vec<String> = (0..usize::from(t)).map(|i| format!("m{i}")).collect();
    let plan = reshare_plan(
        &old,
        t2,
        new_group,
        &dealers,
        &[],
        PlanNode {
            name: "coordinator".into(),
            identity_key: coordinator.node_id().to_hex(),
            address: relay.into(),
        },
        &mut *rng,
    )
    .map_err(|e| crate::KeygenError::Plan(e.to_string()))?;
    Ok(ReshareFixture {
        plan,
        old,
        identities,
        old_shares: shares
            .into_iter()
            .map(|s| (s.node_id, s.key_package))
            .collect(),
        coordinator,
    })
}
