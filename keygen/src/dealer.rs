//! Trusted-dealer key generation (RFC 9591 appendix C). The dealer's host holds the whole key
//! for a moment: fine for labs and tests; production deployments use DKG.

use conclave_protocol::{GroupName, NodeId};
use frost_ed25519 as frost;
use rand::{CryptoRng, RngCore};

use crate::manifest::{identifier_for, GroupManifest, ManifestParticipant, MAX_PARTICIPANTS};
use crate::sharefile::{KdfParams, ShareHeader};
use crate::KeygenError;

/// A participant to deal a share to.
#[derive(Clone, Debug)]
pub struct NewMember {
    pub name: String,
    pub node_id: NodeId,
    pub address: String,
}

/// One participant's share, still in memory.
pub struct DealtShare {
    pub name: String,
    pub node_id: NodeId,
    pub key_package: frost::keys::KeyPackage,
}

impl std::fmt::Debug for DealtShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DealtShare {{ name: {:?}, key_package: [redacted] }}",
            self.name
        )
    }
}

impl DealtShare {
    /// The share-file header for this share under `manifest`.
    pub fn header(
        &self,
        manifest: &GroupManifest,
        kdf: KdfParams,
    ) -> Result<ShareHeader, KeygenError> {
        share_header(manifest, self.node_id, &self.key_package, kdf)
    }
}

/// The share-file header of `owner`'s `key_package` under `manifest` (any keygen ceremony).
pub fn share_header(
    manifest: &GroupManifest,
    owner: NodeId,
    key_package: &frost::keys::KeyPackage,
    kdf: KdfParams,
) -> Result<ShareHeader, KeygenError> {
    Ok(ShareHeader {
        group: manifest.group.clone(),
        epoch: manifest.epoch,
        threshold: manifest.threshold,
        owner,
        identifier: key_package
            .identifier()
            .serialize()
            .try_into()
            .map_err(|_| KeygenError::Frost(frost::Error::MalformedIdentifier))?,
        group_public_key: manifest.public_key_bytes()?,
        manifest_hash: manifest.hash()?,
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        protection: crate::sharefile::Protection::passphrase(kdf),
    })
}

/// Generates a fresh key and splits it `threshold`-of-`members.len()`, each share bound to the
/// member's identity key. Returns the manifest (epoch 1) and the shares.
pub fn deal<R: RngCore + CryptoRng>(
    group: GroupName,
    threshold: u16,
    members: &[NewMember],
    rng: &mut R,
) -> Result<(GroupManifest, Vec<DealtShare>), KeygenError> {
    let n = members.len();
    if n > MAX_PARTICIPANTS {
        return Err(KeygenError::TooMany {
            n,
            max: MAX_PARTICIPANTS,
        });
    }
    if threshold < 2 || usize::from(threshold) > n {
        return Err(KeygenError::BadThreshold { t: threshold, n });
    }
    let mut names = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    let mut ids = Vec::with_capacity(n);
    for m in members {
        if GroupName::new(&m.name).is_err() {
            return Err(KeygenError::BadName(m.name.clone()));
        }
        if !names.insert(m.name.clone()) {
            return Err(KeygenError::DuplicateName(m.name.clone()));
        }
        if !keys.insert(m.node_id) {
            return Err(KeygenError::DuplicateIdentity(m.node_id.to_hex()));
        }
        ids.push(identifier_for(&m.node_id)?);
    }
    let (secret_shares, public) = frost::keys::generate_with_dealer(
        n as u16,
        threshold,
        frost::keys::IdentifierList::Custom(&ids),
        rng,
    )?;
    let mut participants = Vec::with_capacity(n);
    let mut shares = Vec::with_capacity(n);
    for (m, id) in members.iter().zip(&ids) {
        let secret = secret_shares
            .get(id)
            .ok_or(frost::Error::UnknownIdentifier)?
            .clone();
        // Verifies the share against the dealer's commitment.
        let key_package = frost::keys::KeyPackage::try_from(secret)?;
        participants.push(ManifestParticipant {
            name: m.name.clone(),
            identifier: hex::encode(id.serialize()),
            identity_key: m.node_id.to_hex(),
            address: m.address.clone(),
            verifying_share: hex::encode(key_package.verifying_share().serialize()?),
        });
        shares.push(DealtShare {
            name: m.name.clone(),
            node_id: m.node_id,
            key_package,
        });
    }
    let manifest = GroupManifest {
        group,
        threshold,
        epoch: 1,
        group_public_key: hex::encode(public.verifying_key().serialize()?),
        participants,
    };
    manifest.validate()?;
    Ok((manifest, shares))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::IdentityKey;

    fn members(n: usize) -> Vec<NewMember> {
        (0..n)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rand::rngs::OsRng).node_id(),
                address: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect()
    }

    #[test]
    fn dealt_manifest_round_trips_through_toml_and_signs() {
        let mut rng = rand::rngs::OsRng;
        let (manifest, shares) =
            deal(GroupName::new("g").unwrap(), 3, &members(5), &mut rng).unwrap();
        let text = manifest.to_toml().unwrap();
        let back = GroupManifest::from_toml(&text).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(back.hash().unwrap(), manifest.hash().unwrap());
        // Any 3 shares sign under the manifest's key.
        let pkp = back.public_key_package().unwrap();
        let signers = &shares[1..4];
        let mut nonces = std::collections::BTreeMap::new();
        let mut commitments = std::collections::BTreeMap::new();
        for s in signers {
            let (n, c) = frost::round1::commit(s.key_package.signing_share(), &mut rng);
            nonces.insert(*s.key_package.identifier(), n);
            commitments.insert(*s.key_package.identifier(), c);
        }
        let pkg = frost::SigningPackage::new(commitments, b"msg");
        let mut sig_shares = std::collections::BTreeMap::new();
        for s in signers {
            let id = *s.key_package.identifier();
            sig_shares.insert(
                id,
                frost::round2::sign(&pkg, &nonces[&id], &s.key_package).unwrap(),
            );
        }
        let sig = frost::aggregate(&pkg, &sig_shares, &pkp).unwrap();
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&manifest.public_key_bytes().unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig.serialize().unwrap()).unwrap();
        vk.verify_strict(b"msg", &sig).unwrap();
    }

    #[test]
    fn bad_inputs_are_refused() {
        let g = GroupName::new("g").unwrap();
        let mut rng = rand::rngs::OsRng;
        assert!(matches!(
            deal(g.clone(), 1, &members(3), &mut rng),
            Err(KeygenError::BadThreshold { .. })
        ));
        assert!(matches!(
            deal(g.clone(), 4, &members(3), &mut rng),
            Err(KeygenError::BadThreshold { .. })
        ));
        let mut m = members(3);
        m[1].name = "p0".into();
        assert!(matches!(
            deal(g.clone(), 2, &m, &mut rng),
            Err(KeygenError::DuplicateName(_))
        ));
        let mut m = members(3);
        m[2].node_id = m[0].node_id;
        assert!(matches!(
            deal(g, 2, &m, &mut rng),
            Err(KeygenError::DuplicateIdentity(_))
        ));
    }

    #[test]
    fn manifest_with_identifier_not_bound_to_identity_is_refused() {
        let (mut manifest, _) = deal(
            GroupName::new("g").unwrap(),
            2,
            &members(3),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let other = manifest.participants[1].identifier.clone();
        manifest.participants[0].identifier = other;
        assert!(GroupManifest::from_toml(&manifest.to_toml().unwrap()).is_err());
    }
}
