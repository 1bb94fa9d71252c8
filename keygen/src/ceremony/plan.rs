//! The ceremony plan: a public TOML file that every host of a ceremony holds (the operator
//! copies it to each). Its SHA-256 is bound into every signed ceremony message, so members
//! holding different plans never agree on anything.

use std::collections::BTreeSet;

use conclave_protocol::{GroupName, NodeId};
use frost_ed25519 as frost;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{identifier_for, MAX_PARTICIPANTS};

/// Largest plan file read.
pub const MAX_PLAN_LEN: u64 = 1024 * 1024;
/// Default time a round may take once every member has joined.
pub const DEFAULT_ROUND_TIMEOUT_SECS: u32 = 60;
/// Default time the relay waits for every member to join.
pub const DEFAULT_JOIN_TIMEOUT_SECS: u32 = 600;

/// Which ceremony a plan describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CeremonyKind {
    /// Distributed key generation: a new group key, nobody ever holds it whole.
    Dkg,
    /// New shares for the same members and threshold, same group key (frost's refresh DKG).
    Refresh,
    /// From (t, S) to (t', S'), same group key: a quorum of t old members deals.
    Reshare,
    /// Rebuild one member's lost share with t helpers; nothing else changes.
    Repair,
}

impl CeremonyKind {
    /// The name operators read: "DKG", "refresh", "reshare".
    pub fn label(self) -> &'static str {
        match self {
            CeremonyKind::Dkg => "DKG",
            CeremonyKind::Refresh => "refresh",
            CeremonyKind::Reshare => "reshare",
            CeremonyKind::Repair => "repair",
        }
    }
}

impl std::fmt::Display for CeremonyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CeremonyKind::Dkg => "dkg",
            CeremonyKind::Refresh => "refresh",
            CeremonyKind::Reshare => "reshare",
            CeremonyKind::Repair => "repair",
        })
    }
}

/// A node as named in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanNode {
    pub name: String,
    /// Ed25519 identity public key (hex).
    pub identity_key: String,
    /// `host:port`: where a participant will listen for signing (goes into the manifest), or
    /// where the coordinator listens for the ceremony.
    pub address: String,
}

/// The public description of one ceremony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyPlan {
    /// Random ceremony id (32 hex characters).
    pub ceremony: String,
    pub kind: CeremonyKind,
    pub group: GroupName,
    pub threshold: u16,
    /// The epoch the resulting group starts at.
    pub epoch: u64,
    /// A round that has not completed this long after the previous one aborts the ceremony.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: u32,
    /// How long the relay waits for every member to join.
    #[serde(default = "default_join_timeout")]
    pub join_timeout_secs: u32,
    /// The coordinator relaying the ceremony.
    pub coordinator: PlanNode,
    /// The members of the resulting group (roster order).
    pub participants: Vec<PlanNode>,
    /// Refresh and reshare: the group being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromGroup>,
}

/// The group a refresh or reshare starts from, as every host must see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromGroup {
    /// SHA-256 (hex) of the old manifest; every dealer checks its own copy against it.
    pub manifest_hash: String,
    pub epoch: u64,
    pub threshold: u16,
    pub group_public_key: String,
    /// The old members who deal (reshare: exactly `threshold` of them; refresh: every member).
    pub dealers: Vec<OldMember>,
    /// Reshare: names of old members that come back under another identity key (made with
    /// `rotate plan --replace`). A name whose key changes without being listed here is
    /// refused by every member. Last field: its absence keeps the hash of older plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<String>,
}

/// A dealing member of the old group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldMember {
    pub name: String,
    pub identity_key: String,
    /// Its verifying share in the old group (hex).
    pub verifying_share: String,
}

fn default_round_timeout() -> u32 {
    DEFAULT_ROUND_TIMEOUT_SECS
}
fn default_join_timeout() -> u32 {
    DEFAULT_JOIN_TIMEOUT_SECS
}

/// A plan that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("plan is not valid TOML for a ceremony: {0}")]
    Syntax(String),
    #[error("plan is larger than {MAX_PLAN_LEN} bytes")]
    TooLarge,
    #[error("cannot read the plan: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the plan: {0}")]
    Read(conclave_protocol::ReadError),
    #[error("threshold {t} is impossible with {n} participants (need 2 <= t <= n <= {MAX_PARTICIPANTS})")]
    BadThreshold { t: u16, n: usize },
    #[error("{name:?}: {what}")]
    BadNode { name: String, what: &'static str },
    #[error("participant names and identity keys must be unique, and the coordinator cannot be a participant")]
    Duplicate,
    #[error("ceremony id must be 32 hex characters")]
    BadId,
    #[error("timeouts must be between 1 and 86400 seconds")]
    BadTimeout,
    #[error("could not serialize the plan: {0}")]
    Serialize(String),
    #[error("{0}")]
    Rule(&'static str),
    #[error("this is a {0} plan; it runs with another command (`keygen dkg join` for a DKG, `rotate join` otherwise)")]
    NotThisKind(CeremonyKind),
}

/// A plan participant with its keys parsed.
#[derive(Clone, Debug)]
pub struct PlanMember {
    pub name: String,
    pub node_id: NodeId,
    pub identifier: frost::Identifier,
    pub address: String,
}

impl CeremonyPlan {
    /// A new DKG plan with a random ceremony id.
    pub fn new_dkg<R: RngCore + CryptoRng>(
        group: GroupName,
        threshold: u16,
        coordinator: PlanNode,
        participants: Vec<PlanNode>,
        rng: &mut R,
    ) -> Result<Self, PlanError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let plan = Self {
            ceremony: hex::encode(id),
            kind: CeremonyKind::Dkg,
            group,
            threshold,
            epoch: 1,
            round_timeout_secs: DEFAULT_ROUND_TIMEOUT_SECS,
            join_timeout_secs: DEFAULT_JOIN_TIMEOUT_SECS,
            coordinator,
            participants,
            from: None,
        };
        plan.members()?;
        Ok(plan)
    }

    /// A refresh (same members, threshold and key) or reshare plan changing `old`: the new
    /// group has `threshold` and `participants`; `dealers` (names of old members) deal.
    #[allow(clippy::too_many_arguments)]
    pub fn new_rotation<R: RngCore + CryptoRng>(
        kind: CeremonyKind,
        old: &crate::manifest::GroupManifest,
        threshold: u16,
        coordinator: PlanNode,
        participants: Vec<PlanNode>,
        dealers: &[String],
        replace: &[String],
        rng: &mut R,
    ) -> Result<Self, PlanError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let mut chosen = Vec::with_capacity(dealers.len());
        for name in dealers {
            let p = old
                .participants
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| PlanError::BadNode {
                    name: name.clone(),
                    what: "is not a member of the old group",
                })?;
            chosen.push(OldMember {
                name: p.name.clone(),
                identity_key: p.identity_key.clone(),
                verifying_share: p.verifying_share.clone(),
            });
        }
        let plan = Self {
            ceremony: hex::encode(id),
            kind,
            group: old.group.clone(),
            threshold,
            epoch: if kind == CeremonyKind::Repair {
                old.epoch
            } else {
                old.epoch + 1
            },
            round_timeout_secs: DEFAULT_ROUND_TIMEOUT_SECS,
            join_timeout_secs: DEFAULT_JOIN_TIMEOUT_SECS,
            coordinator,
            participants,
            from: Some(FromGroup {
                manifest_hash: hex::encode(
                    old.hash()
                        .map_err(|e| PlanError::Serialize(e.to_string()))?,
                ),
                epoch: old.epoch,
                threshold: old.threshold,
                group_public_key: old.group_public_key.clone(),
                dealers: chosen,
                replace: replace.to_vec(),
            }),
        };
        plan.roster()?;
        Ok(plan)
    }

    /// Every member of the ceremony in roster order: the new group's members, then the
    /// dealers who leave the group (their address is empty).
    pub fn roster(&self) -> Result<Vec<PlanMember>, PlanError> {
        let mut out = self.members()?;
        match (self.kind, &self.from) {
            (CeremonyKind::Dkg, None) => return Ok(out),
            (CeremonyKind::Dkg, Some(_)) | (_, None) => {
                return Err(PlanError::Rule(
                    "a DKG plan has no old group; a refresh or reshare plan needs one",
                ))
            }
            _ => {}
        }
        let Some(from) = &self.from else {
            return Ok(out);
        };
        let n_old = from.dealers.len();
        let bad = |what| PlanError::Rule(what);
        if from.threshold < 2 || n_old < usize::from(from.threshold) {
            return Err(bad("fewer dealers than the old threshold"));
        }
        if matches!(self.kind, CeremonyKind::Reshare) && n_old != usize::from(from.threshold) {
            return Err(bad("a reshare needs exactly old-threshold dealers"));
        }
        if matches!(self.kind, CeremonyKind::Refresh | CeremonyKind::Repair)
            && self.threshold != from.threshold
        {
            return Err(bad("a refresh or repair keeps the threshold"));
        }
        if self.kind == CeremonyKind::Repair {
            if self.epoch != from.epoch {
                return Err(bad("a repair keeps the epoch"));
            }
            if self.participants.len() != 1 || n_old != usize::from(from.threshold) {
                return Err(bad(
                    "a repair names one member to repair and exactly threshold helpers",
                ));
            }
            if from.dealers.iter().any(|d| {
                self.participants.iter().any(|p| {
                    NodeId::from_hex(&p.identity_key).ok() == NodeId::from_hex(&d.identity_key).ok()
                })
            }) {
                return Err(bad("the member being repaired cannot help"));
            }
        } else if self.epoch != from.epoch + 1 {
            return Err(bad("the new epoch must be the old epoch + 1"));
        }
        let mut seen = BTreeSet::new();
        for d in &from.dealers {
            let (node_id, _) =
                crate::manifest::parse_identity(&d.name, &d.identity_key).map_err(|what| {
                    PlanError::BadNode {
                        name: d.name.clone(),
                        what,
                    }
                })?;
            if !seen.insert(node_id) {
                return Err(PlanError::Duplicate);
            }
            if let Some(m) = out.iter().find(|m| m.node_id == node_id) {
                // One identity key is one member: a dealer that stays keeps its name.
                if m.name != d.name {
                    return Err(PlanError::Duplicate);
                }
                continue;
            }
            if out.iter().any(|m| m.name == d.name) {
                // One name is one key: a dealer's name in the new group under another key
                // would be a replaced member dealing with its old key.
                return Err(PlanError::Duplicate);
            }
            let identifier = identifier_for(&node_id).map_err(|_| PlanError::BadNode {
                name: d.name.clone(),
                what: "identifier cannot be derived",
            })?;
            out.push(PlanMember {
                name: d.name.clone(),
                node_id,
                identifier,
                address: String::new(),
            });
        }
        Ok(out)
    }

    /// Parses and validates a plan.
    pub fn from_toml(text: &str) -> Result<Self, PlanError> {
        if text.len() as u64 > MAX_PLAN_LEN {
            return Err(PlanError::TooLarge);
        }
        let p: Self =
            toml::from_str(text).map_err(|e| PlanError::Syntax(e.message().to_owned()))?;
        p.roster()?;
        Ok(p)
    }

    /// Reads and validates a plan file.
    pub fn read(path: &std::path::Path) -> Result<Self, PlanError> {
        let text =
            conclave_protocol::read_bounded_to_string(path, MAX_PLAN_LEN).map_err(|e| match e {
                conclave_protocol::ReadError::TooLarge { .. } => PlanError::TooLarge,
                conclave_protocol::ReadError::Io(e) => PlanError::Io(e),
                other => PlanError::Read(other),
            })?;
        Self::from_toml(&text)
    }

    /// True for an error about what the plan says (not about reading or parsing the file):
    /// a member refuses such a plan.
    pub fn is_refusal(err: &PlanError) -> bool {
        !matches!(
            err,
            PlanError::Syntax(_) | PlanError::TooLarge | PlanError::Io(_) | PlanError::Read(_)
        )
    }

    /// The TOML text.
    pub fn to_toml(&self) -> Result<String, PlanError> {
        toml::to_string_pretty(self).map_err(|e| PlanError::Serialize(e.to_string()))
    }

    /// SHA-256 over a canonical (postcard) encoding.
    pub fn hash(&self) -> Result<[u8; 32], PlanError> {
        let bytes = postcard::to_allocvec(self).map_err(|e| PlanError::Serialize(e.to_string()))?;
        Ok(Sha256::digest(&bytes).into())
    }

    /// A fingerprint of the plan for operators to compare out of band: the first 128 bits of
    /// [`hash`](Self::hash), as eight groups of four hex digits
    /// (`3f2a-91c0-7d4e-b815-22aa-0c4d-9e1f-6b70`; 128 bits so that nobody can make two plans
    /// that share one). Every host prints it before it confirms.
    pub fn fingerprint(&self) -> Result<String, PlanError> {
        let hash = self.hash()?;
        let hex = hex::encode(hash.get(..16).unwrap_or_default());
        let groups: Vec<&str> = (0..8).filter_map(|i| hex.get(i * 4..i * 4 + 4)).collect();
        Ok(groups.join("-"))
    }

    /// True if `given` names this plan: its fingerprint or full hash, in any case, with or
    /// without the dashes.
    pub fn matches_fingerprint(&self, given: &str) -> bool {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| !matches!(c, '-' | ':' | ' '))
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let given = norm(given);
        let Ok(hash) = self.hash() else { return false };
        let full = hex::encode(hash);
        given.len() >= 32 && full.starts_with(&given)
    }

    /// The ceremony id.
    pub fn id(&self) -> Result<[u8; 16], PlanError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(&self.ceremony, &mut out).map_err(|_| PlanError::BadId)?;
        Ok(out)
    }

    /// The coordinator's identity.
    pub fn coordinator_id(&self) -> Result<NodeId, PlanError> {
        crate::manifest::parse_identity(&self.coordinator.name, &self.coordinator.identity_key)
            .map(|(n, _)| n)
            .map_err(|what| PlanError::BadNode {
                name: self.coordinator.name.clone(),
                what,
            })
    }

    /// Every participant, parsed and checked, in roster order.
    pub fn members(&self) -> Result<Vec<PlanMember>, PlanError> {
        self.id()?;
        let n = self.participants.len();
        // A repair plan names only the member being repaired; its threshold is the group's.
        let n_for_threshold = if self.kind == CeremonyKind::Repair {
            MAX_PARTICIPANTS
        } else {
            n
        };
        if n > MAX_PARTICIPANTS
            || self.threshold < 2
            || usize::from(self.threshold) > n_for_threshold
        {
            return Err(PlanError::BadThreshold {
                t: self.threshold,
                n,
            });
        }
        for t in [self.round_timeout_secs, self.join_timeout_secs] {
            if !(1..=86_400).contains(&t) {
                return Err(PlanError::BadTimeout);
            }
        }
        let coordinator = self.coordinator_id()?;
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::from([coordinator]);
        let mut out = Vec::with_capacity(n);
        for p in &self.participants {
            let bad = |what| PlanError::BadNode {
                name: p.name.clone(),
                what,
            };
            let (node_id, identifier) =
                crate::manifest::parse_identity(&p.name, &p.identity_key).map_err(bad)?;
            if p.address.rsplit_once(':').is_none() {
                return Err(bad("address must be HOST:PORT"));
            }
            if !names.insert(p.name.clone()) || !keys.insert(node_id) {
                return Err(PlanError::Duplicate);
            }
            out.push(PlanMember {
                name: p.name.clone(),
                node_id,
                identifier,
                address: p.address.clone(),
            });
        }
        Ok(out)
    }

    /// The name of `node` in this plan (its hex prefix if it is not in the plan).
    pub fn name_of(&self, node: &NodeId) -> String {
        let is = |k: &str| NodeId::from_hex(k).ok().as_ref() == Some(node);
        if is(&self.coordinator.identity_key) {
            return self.coordinator.name.clone();
        }
        self.participants
            .iter()
            .find(|p| is(&p.identity_key))
            .map(|p| p.name.clone())
            .or_else(|| {
                self.from.as_ref().and_then(|f| {
                    f.dealers
                        .iter()
                        .find(|d| is(&d.identity_key))
                        .map(|d| d.name.clone())
                })
            })
            .unwrap_or_else(|| node.short())
    }

    /// True if `node` is a member of the group this plan makes.
    pub fn is_new_member(&self, node: &NodeId) -> bool {
        self.participants
            .iter()
            .any(|p| NodeId::from_hex(&p.identity_key).ok().as_ref() == Some(node))
    }
}

impl CeremonyPlan {
    /// What the ceremony will do, for an operator to confirm: who deals, who receives, old
    /// and new threshold and members, what is destroyed afterwards.
    pub fn summary(&self) -> String {
        let new: Vec<&str> = self.participants.iter().map(|p| p.name.as_str()).collect();
        let mut out = format!(
            "{} {} of group {}\n  plan fingerprint: {}\n",
            self.kind.label(),
            self.ceremony,
            self.group,
            self.fingerprint().unwrap_or_else(|_| "?".into())
        );
        match &self.from {
            Some(from) if self.kind == CeremonyKind::Repair => {
                let helpers: Vec<&str> = from.dealers.iter().map(|d| d.name.as_str()).collect();
                out += &format!(
                    "  rebuild the lost share of {} (epoch {}, {}-of-n, key {} as the plan claims: every member checks it against its own manifest)\n  helpers (their shares are used, not changed): {}\n  nothing is destroyed; the rebuilt share is checked against the manifest before it is written\n",
                    new.join(", "),
                    self.epoch,
                    self.threshold,
                    from.group_public_key,
                    helpers.join(", ")
                );
            }
            None => {
                out += &format!(
                    "  new key, {}-of-{}, epoch {}; members (name, identity-key fingerprint):\n",
                    self.threshold,
                    new.len(),
                    self.epoch,
                );
                for p in &self.participants {
                    let fp = NodeId::from_hex(&p.identity_key)
                        .map(|n| n.short())
                        .unwrap_or_else(|_| "(not a key)".into());
                    out += &format!("    {}  {fp}\n", p.name);
                }
            }
            Some(from) => {
                let dealers: Vec<&str> = from.dealers.iter().map(|d| d.name.as_str()).collect();
                out += &format!(
                    "  group key {} (as the plan claims: every member checks it against its own manifest)\n  epoch {} -> {}\n  threshold {} -> {}\n",
                    from.group_public_key, from.epoch, self.epoch, from.threshold, self.threshold
                );
                out += &format!("  dealers (old shares used): {}\n", dealers.join(", "));
                out += &format!(
                    "  receivers (new group, {}): {}\n",
                    new.len(),
                    new.join(", ")
                );
                let old_keys: Vec<&str> = from
                    .dealers
                    .iter()
                    .map(|d| d.identity_key.as_str())
                    .collect();
                let added: Vec<&str> = self
                    .participants
                    .iter()
                    .filter(|p| !old_keys.contains(&p.identity_key.as_str()))
                    .map(|p| p.name.as_str())
                    .collect();
                let leaving: Vec<&str> = from
                    .dealers
                    .iter()
                    .filter(|d| {
                        !self
                            .participants
                            .iter()
                            .any(|p| p.identity_key == d.identity_key)
                    })
                    .map(|d| d.name.as_str())
                    .collect();
                if !added.is_empty() {
                    out += &format!("  joining: {}\n", added.join(", "));
                }
                if !leaving.is_empty() {
                    out += &format!("  leaving (dealers): {}\n", leaving.join(", "));
                }
                out += &format!(
                    "  destroyed afterwards: every epoch-{} share of the group, once the new shares have produced a verified signature (`conclave rotate retire`)\n",
                    from.epoch
                );
            }
        }
        out += &format!(
            "  relay: {} at {}; round timeout {} s",
            self.coordinator.name, self.coordinator.address, self.round_timeout_secs
        );
        out
    }
}
