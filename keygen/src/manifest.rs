//! The group manifest: the public description of a group (TOML). Every node of a group holds
//! the same manifest; its hash is bound into every share file.

use std::collections::{BTreeMap, BTreeSet};

use conclave_protocol::{read_bounded_to_string, GroupName, NodeId, ReadError};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest manifest file read (1 MiB: a 1000-member group fits easily).
pub const MAX_MANIFEST_LEN: u64 = 1024 * 1024;
/// Most participants a group may have.
pub const MAX_PARTICIPANTS: usize = 1000;

/// Domain separation for deriving FROST identifiers from identity keys.
const IDENTIFIER_CONTEXT: &[u8] = b"conclave/identifier/v1:";

/// The FROST identifier of the participant whose identity key is `node`. Binding the
/// identifier to the authenticated identity lets the coordinator map a TLS connection to an
/// identifier without trusting anything written in a message.
pub fn identifier_for(node: &NodeId) -> Result<frost::Identifier, frost::Error> {
    let mut input = IDENTIFIER_CONTEXT.to_vec();
    input.extend_from_slice(&node.0);
    frost::Identifier::derive(&input)
}

/// Checks a member's name and identity key (as written in a manifest or a plan) and derives
/// its FROST identifier. The error says what is wrong, for the caller to attach the name.
pub fn parse_identity(
    name: &str,
    identity_key: &str,
) -> Result<(NodeId, frost::Identifier), &'static str> {
    GroupName::new(name)
        .map_err(|_| "name must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")?;
    let node_id = NodeId::from_hex(identity_key)
        .map_err(|_| "identity_key is not a valid Ed25519 public key")?;
    // One spelling per key: every host compares keys as they are written, so a plan or
    // manifest may not spell a key two ways (upper case, spaces).
    if node_id.to_hex() != identity_key {
        return Err("identity_key must be written as 64 lowercase hex digits");
    }
    let identifier = identifier_for(&node_id).map_err(|_| "identifier cannot be derived")?;
    Ok((node_id, identifier))
}

/// One participant as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestParticipant {
    /// Operator-chosen name, unique in the group.
    pub name: String,
    /// FROST identifier (hex), derived from `identity_key`.
    pub identifier: String,
    /// Ed25519 identity public key (hex) the node authenticates with.
    pub identity_key: String,
    /// `host:port` the participant listens on.
    pub address: String,
    /// The participant's FROST verifying share (hex).
    pub verifying_share: String,
}

/// The public description of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupManifest {
    /// Group name.
    pub group: GroupName,
    /// Signatures need this many participants.
    pub threshold: u16,
    /// Bumped by every change of shares or membership.
    pub epoch: u64,
    /// The group's Ed25519 public key (hex): what verifiers use.
    pub group_public_key: String,
    pub participants: Vec<ManifestParticipant>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is not valid TOML for a group: {0}")]
    Syntax(String),
    #[error("manifest is larger than {MAX_MANIFEST_LEN} bytes: check the path")]
    TooLarge,
    #[error("cannot read the manifest: {0}")]
    Read(ReadError),
    #[error("threshold {t} is impossible with {n} participants")]
    BadThreshold { t: u16, n: usize },
    #[error("participant {name:?}: {what}")]
    BadParticipant { name: String, what: &'static str },
    #[error("group public key is not a valid Ed25519 key")]
    BadGroupKey,
    #[error("participant names and identity keys must be unique")]
    Duplicate,
    #[error("could not serialize the manifest: {0}")]
    Serialize(String),
}

/// A participant with every field parsed and checked.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub node_id: NodeId,
    pub identifier: frost::Identifier,
    pub address: String,
    pub verifying_share: frost::keys::VerifyingShare,
}

impl GroupManifest {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        if text.len() as u64 > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge);
        }
        let m: Self =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        m.validate()?;
        Ok(m)
    }

    /// Reads and validates a manifest file. A FIFO, a device or a file over
    /// [`MAX_MANIFEST_LEN`] is refused before any byte is read.
    pub fn read(path: &std::path::Path) -> Result<Self, ManifestError> {
        let text = read_bounded_to_string(path, MAX_MANIFEST_LEN).map_err(|e| match e {
            ReadError::TooLarge { .. } => ManifestError::TooLarge,
            other => ManifestError::Read(other),
        })?;
        Self::from_toml(&text)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        toml::to_string_pretty(self).map_err(|e| ManifestError::Serialize(e.to_string()))
    }

    /// SHA-256 over a canonical (postcard) encoding; independent of TOML formatting.
    pub fn hash(&self) -> Result<[u8; 32], ManifestError> {
        let bytes =
            postcard::to_allocvec(self).map_err(|e| ManifestError::Serialize(e.to_string()))?;
        Ok(Sha256::digest(&bytes).into())
    }

    /// Checks every field; see [`members`](Self::members) for the parsed form.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.members().map(|_| ())
    }

    /// The group verifying key.
    pub fn verifying_key(&self) -> Result<frost::VerifyingKey, ManifestError> {
        let bytes = hex::decode(&self.group_public_key).map_err(|_| ManifestError::BadGroupKey)?;
        let vk =
            frost::VerifyingKey::deserialize(&bytes).map_err(|_| ManifestError::BadGroupKey)?;
        ed25519_dalek::VerifyingKey::try_from(bytes.as_slice())
            .map_err(|_| ManifestError::BadGroupKey)?;
        Ok(vk)
    }

    /// The group public key as 32 bytes.
    pub fn public_key_bytes(&self) -> Result<[u8; 32], ManifestError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.group_public_key, &mut out)
            .map_err(|_| ManifestError::BadGroupKey)?;
        Ok(out)
    }

    /// Every participant, parsed and checked (identifier bound to identity key, valid shares,
    /// unique names and keys, a possible threshold).
    pub fn members(&self) -> Result<Vec<Member>, ManifestError> {
        let n = self.participants.len();
        if n > MAX_PARTICIPANTS || self.threshold < 2 || usize::from(self.threshold) > n {
            return Err(ManifestError::BadThreshold {
                t: self.threshold,
                n,
            });
        }
        self.verifying_key()?;
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut out = Vec::with_capacity(n);
        for p in &self.participants {
            let bad = |what| ManifestError::BadParticipant {
                name: p.name.clone(),
                what,
            };
            let (node_id, identifier) = parse_identity(&p.name, &p.identity_key).map_err(bad)?;
            if hex::encode(identifier.serialize()) != p.identifier {
                return Err(bad("identifier does not match the identity key"));
            }
            let vs =
                hex::decode(&p.verifying_share).map_err(|_| bad("verifying_share is not hex"))?;
            let verifying_share = frost::keys::VerifyingShare::deserialize(&vs)
                .map_err(|_| bad("verifying_share is not a valid point"))?;
            if p.address.is_empty() {
                return Err(bad("address is empty"));
            }
            if !names.insert(p.name.clone()) || !keys.insert(node_id) {
                return Err(ManifestError::Duplicate);
            }
            out.push(Member {
                name: p.name.clone(),
                node_id,
                identifier,
                address: p.address.clone(),
                verifying_share,
            });
        }
        Ok(out)
    }

    /// The FROST public key package (verifying shares and group key) for aggregation.
    pub fn public_key_package(&self) -> Result<frost::keys::PublicKeyPackage, ManifestError> {
        let shares: BTreeMap<_, _> = self
            .members()?
            .into_iter()
            .map(|m| (m.identifier, m.verifying_share))
            .collect();
        Ok(frost::keys::PublicKeyPackage::new(
            shares,
            self.verifying_key()?,
            Some(self.threshold),
        ))
    }
}

/// The group key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410), for OpenSSL and
/// other standard verifiers.
pub fn public_key_pem(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(key);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}
