//! A plan is a claim, never an authority. Before any secret leaves a member, the member checks
//! everything a rotation plan says about the old group against its **own** copy of the old
//! manifest (or, for a member joining without one, against the group key it was told out of
//! band). [`CheckedPlan::check`] is that check, and a [`CheckedPlan`] is the only way to build
//! a refresh, reshare or repair protocol, so every driver (the CLI, the simulator, a library
//! user) runs it.
//!
//! What is checked against the member's manifest:
//! - the old manifest's hash, group, epoch, threshold and group public key;
//! - every dealer's (helper's) name, identity key, identifier and verifying share;
//! - every member of the new group: a name of the old group keeps its identity key unless the
//!   plan lists it under `replace` (and then the change is shown on every host); an identity
//!   key of the old group keeps its name (no key under two names); a repair's target is an
//!   existing member with exactly its manifest key; a refresh keeps every member.

use conclave_protocol::NodeId;
use frost_ed25519 as frost;

use super::plan::{CeremonyKind, CeremonyPlan, PlanError};
use crate::manifest::{identifier_for, GroupManifest};

/// What a member knows of the old group from its own files.
#[derive(Clone, Copy, Debug)]
pub enum OldGroup<'a> {
    /// Its own copy of the old manifest (a member of the old group, or a joiner who was given
    /// it and chooses to check against it).
    Manifest(&'a GroupManifest),
    /// A member joining a reshare with no old manifest: it knows only the group public key,
    /// told out of band (`--expect-group-key`). It checks the dealers' commitments against it.
    Joining { expected_group_key: [u8; 32] },
}

/// What one node does in a ceremony, as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// An old member whose share deals (reshare, refresh).
    Dealer,
    /// An old member whose share helps rebuild a lost one (repair).
    Helper,
    /// A member of the new group (gets a new share).
    Receiver,
    /// A member of the new group that was not in the old one.
    Joining,
    /// An old member not in the new group.
    Leaving,
    /// A name of the old group that comes back with another identity key (`old_key` is the
    /// key in this host's manifest; `None` for a joiner that has no manifest).
    Replaced { old_key: Option<NodeId> },
    /// The member whose lost share a repair rebuilds.
    Repaired,
}

impl Role {
    fn label(&self) -> &'static str {
        match self {
            Role::Dealer => "dealer",
            Role::Helper => "helper",
            Role::Receiver => "receiver",
            Role::Joining => "joining",
            Role::Leaving => "leaving",
            Role::Replaced { .. } => "REPLACED",
            Role::Repaired => "repaired",
        }
    }
}

/// One node named by the plan (or by the old manifest), with its roles.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub node_id: NodeId,
    pub roles: Vec<Role>,
    /// False for an old member that neither deals nor stays (not in the ceremony at all).
    pub in_ceremony: bool,
}

/// An old member as this host knows it (from its own manifest, or from the plan for a joiner
/// without one, in which case `checked` is false).
#[derive(Clone, Debug)]
pub struct CheckedDealer {
    pub name: String,
    pub node_id: NodeId,
    pub identifier: frost::Identifier,
    /// Compressed verifying share.
    pub verifying_share: [u8; 32],
}

/// Why a member refuses a plan. Nothing has been sent when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanCheckError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("this is a {0} plan; only refresh, reshare and repair plans change an old group")]
    NotARotation(CeremonyKind),
    #[error("a {0} needs this host's copy of the old manifest (only a member joining a reshare can go without it, with --expect-group-key)")]
    NeedsManifest(CeremonyKind),
    #[error("the plan changes manifest {plan}, but this host's manifest has hash {own}: pass the group's current manifest, or the plan is not for this group")]
    ManifestHash { plan: String, own: String },
    #[error("the plan says the old group's {field} is {plan}, this host's manifest says {own}")]
    Field {
        field: &'static str,
        plan: String,
        own: String,
    },
    #[error("{name:?} ({role}) is not a member of this host's manifest of the old group")]
    NotAMember { name: String, role: &'static str },
    #[error("{name:?} ({role}): the plan gives identity key {plan}, this host's manifest has {expected}")]
    IdentityMismatch {
        name: String,
        role: &'static str,
        /// Fingerprint of the key in this host's manifest.
        expected: String,
        /// Fingerprint of the key in the plan.
        plan: String,
    },
    #[error("dealer {name:?}: the plan's verifying share is not the one in this host's manifest")]
    VerifyingShareMismatch { name: String },
    #[error("{name:?}: the plan changes its identity key {expected} -> {plan} without saying so; a key change must be made explicit (`rotate plan --replace {name}=KEY@HOST:PORT`)")]
    UnapprovedReplacement {
        name: String,
        expected: String,
        plan: String,
    },
    #[error("identity key {key} appears under two names ({first:?} and {second:?}); one identity key is one member")]
    KeyUnderTwoNames {
        key: String,
        first: String,
        second: String,
    },
    #[error("{name:?} is listed under replace, but {what}")]
    BadReplacement { name: String, what: &'static str },
    #[error("a refresh keeps every member of the old group with its key; {name:?} {what}")]
    RefreshChangesMembers { name: String, what: &'static str },
    #[error(
        "the plan's group key {plan} is not the key this host was told to expect ({expected})"
    )]
    UnexpectedGroupKey { plan: String, expected: String },
}

/// A fingerprint operators compare: the first 16 hex digits of an identity key.
pub fn key_fingerprint(node: &NodeId) -> String {
    node.short()
}

fn fp_hex(hex_key: &str) -> String {
    NodeId::from_hex(hex_key)
        .map(|n| key_fingerprint(&n))
        .unwrap_or_else(|_| "(not a key)".into())
}

/// A rotation plan checked against what this host knows of the old group.
#[derive(Clone, Debug)]
pub struct CheckedPlan {
    plan: CeremonyPlan,
    /// The manifest the plan was checked against; `None` for a joiner without one.
    old: Option<GroupManifest>,
    group_key: [u8; 32],
    dealers: Vec<CheckedDealer>,
    entries: Vec<Entry>,
    /// Continuing members whose address changes: (name, old, new).
    address_changes: Vec<(String, String, String)>,
    fingerprint: String,
}

fn mismatch(field: &'static str, plan: impl ToString, own: impl ToString) -> PlanCheckError {
    PlanCheckError::Field {
        field,
        plan: plan.to_string(),
        own: own.to_string(),
    }
}

fn push_role(entries: &mut Vec<Entry>, name: &str, node_id: NodeId, role: Role, in_ceremony: bool) {
    match entries.iter_mut().find(|e| e.node_id == node_id) {
        Some(e) => e.roles.push(role),
        None => entries.push(Entry {
            name: name.to_owned(),
            node_id,
            roles: vec![role],
            in_ceremony,
        }),
    }
}

impl CheckedPlan {
    /// Checks `plan` (refresh, reshare or repair) against what this host knows of the old
    /// group. Nothing about the old group is taken from the plan when a manifest is given.
    pub fn check(plan: &CeremonyPlan, old: OldGroup<'_>) -> Result<Self, PlanCheckError> {
        plan.roster()?;
        let from = match (&plan.from, plan.kind) {
            (_, CeremonyKind::Dkg) | (None, _) => {
                return Err(PlanCheckError::NotARotation(plan.kind))
            }
            (Some(f), _) => f,
        };
        let fingerprint = plan.fingerprint()?;
        let helper_role = if plan.kind == CeremonyKind::Repair {
            Role::Helper
        } else {
            Role::Dealer
        };
        let role_name = if plan.kind == CeremonyKind::Repair {
            "helper"
        } else {
            "dealer"
        };
        let manifest = match old {
            OldGroup::Manifest(m) => m,
            OldGroup::Joining { expected_group_key } => {
                if plan.kind != CeremonyKind::Reshare {
                    return Err(PlanCheckError::NeedsManifest(plan.kind));
                }
                return Self::check_joining(plan, expected_group_key, fingerprint);
            }
        };
        // The old group as this host knows it.
        let own_hash = hex::encode(
            manifest
                .hash()
                .map_err(|e| PlanCheckError::Plan(PlanError::Serialize(e.to_string())))?,
        );
        if !from.manifest_hash.eq_ignore_ascii_case(&own_hash) {
            return Err(PlanCheckError::ManifestHash {
                plan: from.manifest_hash.clone(),
                own: own_hash,
            });
        }
        if plan.group != manifest.group {
            return Err(mismatch("group", &plan.group, &manifest.group));
        }
        if from.epoch != manifest.epoch {
            return Err(mismatch("epoch", from.epoch, manifest.epoch));
        }
        if from.threshold != manifest.threshold {
            return Err(mismatch("threshold", from.threshold, manifest.threshold));
        }
        let group_key = manifest
            .public_key_bytes()
            .map_err(|e| PlanCheckError::Plan(PlanError::Serialize(e.to_string())))?;
        if !from
            .group_public_key
            .eq_ignore_ascii_case(&hex::encode(group_key))
        {
            return Err(mismatch(
                "group public key",
                &from.group_public_key,
                hex::encode(group_key),
            ));
        }
        let members = manifest
            .members()
            .map_err(|e| PlanCheckError::Plan(PlanError::Serialize(e.to_string())))?;
        let mut entries: Vec<Entry> = vec![];
        let mut address_changes = vec![];
        let mut dealers = Vec::with_capacity(from.dealers.len());
        for d in &from.dealers {
            let own = members.iter().find(|m| m.name == d.name).ok_or_else(|| {
                PlanCheckError::NotAMember {
                    name: d.name.clone(),
                    role: role_name,
                }
            })?;
            let claimed = NodeId::from_hex(&d.identity_key).ok();
            if claimed != Some(own.node_id) {
                return Err(PlanCheckError::IdentityMismatch {
                    name: d.name.clone(),
                    role: role_name,
                    expected: key_fingerprint(&own.node_id),
                    plan: fp_hex(&d.identity_key),
                });
            }
            let own_vs: [u8; 32] = own
                .verifying_share
                .serialize()
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| PlanCheckError::VerifyingShareMismatch {
                    name: d.name.clone(),
                })?;
            if !d.verifying_share.eq_ignore_ascii_case(&hex::encode(own_vs)) {
                return Err(PlanCheckError::VerifyingShareMismatch {
                    name: d.name.clone(),
                });
            }
            let derived = identifier_for(&own.node_id).map_err(|_| {
                PlanCheckError::Plan(PlanError::BadNode {
                    name: d.name.clone(),
                    what: "identifier cannot be derived",
                })
            })?;
            if derived != own.identifier {
                return Err(mismatch("identifier", d.name.clone(), "the manifest's"));
            }
            dealers.push(CheckedDealer {
                name: own.name.clone(),
                node_id: own.node_id,
                identifier: own.identifier,
                verifying_share: own_vs,
            });
            push_role(
                &mut entries,
                &own.name,
                own.node_id,
                helper_role.clone(),
                true,
            );
        }
        // Replacements: old names that come back with another key.
        let mut replaced = std::collections::BTreeSet::new();
        for name in &from.replace {
            let bad = |what| PlanCheckError::BadReplacement {
                name: name.clone(),
                what,
            };
            if plan.kind != CeremonyKind::Reshare {
                return Err(bad("only a reshare can replace a member's key"));
            }
            if !members.iter().any(|m| &m.name == name) {
                return Err(bad("it is not a member of this host's manifest"));
            }
            if from.dealers.iter().any(|d| &d.name == name) {
                return Err(bad("a replaced member cannot deal with its old key"));
            }
            if !replaced.insert(name.clone()) {
                return Err(bad("it is listed twice"));
            }
        }
        for p in &plan.participants {
            let key = NodeId::from_hex(&p.identity_key).map_err(|_| {
                PlanCheckError::Plan(PlanError::BadNode {
                    name: p.name.clone(),
                    what: "identity_key is not a valid Ed25519 public key",
                })
            })?;
            let by_name = members.iter().find(|m| m.name == p.name);
            let by_key = members.iter().find(|m| m.node_id == key);
            if let Some(other) = by_key.filter(|m| m.name != p.name) {
                return Err(PlanCheckError::KeyUnderTwoNames {
                    key: key_fingerprint(&key),
                    first: other.name.clone(),
                    second: p.name.clone(),
                });
            }
            let mut roles = vec![Role::Receiver];
            match by_name {
                Some(own) if own.node_id == key => {
                    if replaced.contains(&p.name) {
                        return Err(PlanCheckError::BadReplacement {
                            name: p.name.clone(),
                            what: "its identity key does not change",
                        });
                    }
                    if plan.kind == CeremonyKind::Repair {
                        roles = vec![Role::Repaired];
                    }
                    if own.address != p.address {
                        if plan.kind == CeremonyKind::Refresh {
                            return Err(PlanCheckError::RefreshChangesMembers {
                                name: p.name.clone(),
                                what: "changes its address",
                            });
                        }
                        address_changes.push((
                            p.name.clone(),
                            own.address.clone(),
                            p.address.clone(),
                        ));
                    }
                }
                Some(own) => {
                    if !replaced.contains(&p.name) {
                        return Err(PlanCheckError::UnapprovedReplacement {
                            name: p.name.clone(),
                            expected: key_fingerprint(&own.node_id),
                            plan: key_fingerprint(&key),
                        });
                    }
                    roles.push(Role::Replaced {
                        old_key: Some(own.node_id),
                    });
                }
                None => {
                    if plan.kind == CeremonyKind::Repair {
                        return Err(PlanCheckError::NotAMember {
                            name: p.name.clone(),
                            role: "member to repair",
                        });
                    }
                    if plan.kind == CeremonyKind::Refresh {
                        return Err(PlanCheckError::RefreshChangesMembers {
                            name: p.name.clone(),
                            what: "is not in the old group",
                        });
                    }
                    roles.push(Role::Joining);
                }
            }
            for r in roles {
                push_role(&mut entries, &p.name, key, r, true);
            }
        }
        for name in &replaced {
            if !plan.participants.iter().any(|p| &p.name == name) {
                return Err(PlanCheckError::BadReplacement {
                    name: name.clone(),
                    what: "it is not a member of the new group",
                });
            }
        }
        // Old members that do not stay under their key: leaving.
        for m in &members {
            let stays = plan
                .participants
                .iter()
                .any(|p| NodeId::from_hex(&p.identity_key).ok() == Some(m.node_id));
            if !stays && plan.kind != CeremonyKind::Repair {
                if plan.kind == CeremonyKind::Refresh {
                    return Err(PlanCheckError::RefreshChangesMembers {
                        name: m.name.clone(),
                        what: "is missing from the plan",
                    });
                }
                let dealing = dealers.iter().any(|d| d.node_id == m.node_id);
                push_role(&mut entries, &m.name, m.node_id, Role::Leaving, dealing);
            }
        }
        if plan.kind == CeremonyKind::Refresh && dealers.len() != members.len() {
            return Err(PlanCheckError::RefreshChangesMembers {
                name: plan.group.to_string(),
                what: "must be dealt by every old member",
            });
        }
        Ok(Self {
            plan: plan.clone(),
            old: Some(manifest.clone()),
            group_key,
            dealers,
            entries,
            address_changes,
            fingerprint,
        })
    }

    fn check_joining(
        plan: &CeremonyPlan,
        expected: [u8; 32],
        fingerprint: String,
    ) -> Result<Self, PlanCheckError> {
        let from = plan
            .from
            .as_ref()
            .ok_or(PlanCheckError::NotARotation(plan.kind))?;
        if !from
            .group_public_key
            .eq_ignore_ascii_case(&hex::encode(expected))
        {
            return Err(PlanCheckError::UnexpectedGroupKey {
                plan: from.group_public_key.clone(),
                expected: hex::encode(expected),
            });
        }
        let bad = |name: &str, what| {
            PlanCheckError::Plan(PlanError::BadNode {
                name: name.to_owned(),
                what,
            })
        };
        let mut entries = vec![];
        let mut dealers = vec![];
        for d in &from.dealers {
            let node_id = NodeId::from_hex(&d.identity_key)
                .map_err(|_| bad(&d.name, "identity_key is not a valid Ed25519 public key"))?;
            let identifier = identifier_for(&node_id)
                .map_err(|_| bad(&d.name, "identifier cannot be derived"))?;
            let mut vs = [0u8; 32];
            hex::decode_to_slice(&d.verifying_share, &mut vs)
                .map_err(|_| bad(&d.name, "verifying_share is not 32 bytes of hex"))?;
            dealers.push(CheckedDealer {
                name: d.name.clone(),
                node_id,
                identifier,
                verifying_share: vs,
            });
            push_role(&mut entries, &d.name, node_id, Role::Dealer, true);
        }
        for p in &plan.participants {
            let node_id = NodeId::from_hex(&p.identity_key)
                .map_err(|_| bad(&p.name, "identity_key is not a valid Ed25519 public key"))?;
            push_role(&mut entries, &p.name, node_id, Role::Receiver, true);
            if from.replace.contains(&p.name) {
                push_role(
                    &mut entries,
                    &p.name,
                    node_id,
                    Role::Replaced { old_key: None },
                    true,
                );
            }
        }
        Ok(Self {
            plan: plan.clone(),
            old: None,
            group_key: expected,
            dealers,
            entries,
            address_changes: vec![],
            fingerprint,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &CeremonyPlan {
        &self.plan
    }

    /// The old manifest the plan was checked against (`None`: a joiner without one).
    pub fn old_manifest(&self) -> Option<&GroupManifest> {
        self.old.as_ref()
    }

    /// The group public key, as this host knows it (its manifest, or `--expect-group-key`).
    pub fn group_key(&self) -> [u8; 32] {
        self.group_key
    }

    /// The dealers (helpers), with the values of this host's manifest.
    pub fn dealers(&self) -> &[CheckedDealer] {
        &self.dealers
    }

    /// Every node and its roles, for the confirmation.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The plan's fingerprint (see [`CeremonyPlan::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The roles of `node`.
    pub fn roles_of(&self, node: &NodeId) -> &[Role] {
        self.entries
            .iter()
            .find(|e| e.node_id == *node)
            .map(|e| e.roles.as_slice())
            .unwrap_or_default()
    }

    /// True if `node` was not a member of the old group as this host knows it.
    pub fn is_joining(&self, node: &NodeId) -> bool {
        self.roles_of(node)
            .iter()
            .any(|r| matches!(r, Role::Joining | Role::Replaced { .. }))
            || (self.old.is_none() && !self.dealers.iter().any(|d| d.node_id == *node))
    }

    /// What the ceremony will do, for an operator to confirm and compare with the other
    /// hosts: the plan fingerprint, the old group as checked, every node with its key
    /// fingerprint and roles, every identity-key change, what is destroyed afterwards.
    pub fn summary(&self) -> String {
        let plan = &self.plan;
        let Some(from) = &plan.from else {
            return plan.summary();
        };
        let mut out = format!(
            "{} {} of group {}\n  plan fingerprint: {}   (compare it with every other host before you confirm)\n",
            plan.kind.label(),
            plan.ceremony,
            plan.group,
            self.fingerprint
        );
        match &self.old {
            Some(m) => {
                out += &format!(
                    "  old group checked against this host's manifest: epoch {}, {}-of-{}, manifest {}\n  group key {} (unchanged)\n",
                    m.epoch,
                    m.threshold,
                    m.participants.len(),
                    &from.manifest_hash.get(..16).unwrap_or(&from.manifest_hash),
                    hex::encode(self.group_key)
                );
            }
            None => {
                out += &format!(
                    "  this host has no old manifest: the old members below are the plan's claim\n  group key {} (as expected by --expect-group-key; the dealers' commitments are checked against it)\n",
                    hex::encode(self.group_key)
                );
            }
        }
        if plan.kind == CeremonyKind::Repair {
            out += &format!(
                "  epoch {} and threshold {} do not change; nothing is destroyed\n",
                plan.epoch, plan.threshold
            );
        } else {
            out += &format!(
                "  epoch {} -> {}, threshold {} -> {}, {} member(s) in the new group\n",
                from.epoch,
                plan.epoch,
                from.threshold,
                plan.threshold,
                plan.participants.len()
            );
        }
        out += "  members (name, identity-key fingerprint, role):\n";
        let width = self.entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        for e in &self.entries {
            let roles: Vec<&str> = e.roles.iter().map(Role::label).collect();
            let note = if e.in_ceremony {
                ""
            } else {
                " (takes no part)"
            };
            out += &format!(
                "    {:width$}  {}  {}{note}\n",
                e.name,
                key_fingerprint(&e.node_id),
                roles.join(", ")
            );
        }
        for e in &self.entries {
            for r in &e.roles {
                if let Role::Replaced { old_key } = r {
                    let old = old_key
                        .as_ref()
                        .map(key_fingerprint)
                        .unwrap_or_else(|| "(unknown here)".into());
                    out += &format!(
                        "  {}: identity key CHANGES {} -> {}\n",
                        e.name,
                        old,
                        key_fingerprint(&e.node_id)
                    );
                }
            }
        }
        for (name, old, new) in &self.address_changes {
            out += &format!("  {name}: address CHANGES {old} -> {new}\n");
        }
        if plan.kind == CeremonyKind::Repair {
            out += "  the rebuilt share is sent only to the member's own identity key and checked against the manifest before it is written\n";
        } else {
            out += &format!(
                "  destroyed afterwards: every epoch-{} share of the group, once the new shares have produced a verified signature (`conclave rotate retire`)\n",
                from.epoch
            );
        }
        out += &format!(
            "  relay: {} at {}; round timeout {} s",
            plan.coordinator.name, plan.coordinator.address, plan.round_timeout_secs
        );
        out
    }
}
