//! Round 1 and round 2 of FROST for a participant, built on frost-core's documented
//! `internals` functions so that a commitment is made with fixed-base multiplications only.
//!
//! frost's own `round1::commit` computes each nonce commitment `d·B` with a variable-base
//! multiplication (its generator is an ordinary point), and the wire form needs `(d/8)·B` as
//! well (see [`crate::commitments`]). Here each commitment costs one fixed-base (table)
//! multiplication: `Q = (d/8)·B`, then `D = 8·Q` by three doublings. The nonces themselves are
//! frost's (`Nonce::new`: random bytes hashed with the share, RFC 9591's `nonce_generate`), and
//! round 2 is frost's `sign` step by step (binding factors, group commitment, Lagrange
//! coefficient, challenge, `z = d + e·ρ + λ·s·c`), with the same checks; a test compares every
//! share with frost's own `round2::sign` for the same nonces.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::Scalar;
use frost_ed25519 as frost;
use zeroize::{Zeroize, ZeroizeOnDrop};

use conclave_protocol::WireCommitments;

type E = frost::Ed25519Sha512;
type Nonce = frost_core::round1::Nonce<E>;

/// One participant's nonce pair for one signature, with its commitments and their wire form.
/// Used at most once; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SigningNonces {
    hiding: Nonce,
    binding: Nonce,
    #[zeroize(skip)]
    commitments: frost::round1::SigningCommitments,
    #[zeroize(skip)]
    wire: WireCommitments,
}

impl std::fmt::Debug for SigningNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningNonces")
            .field("hiding", &"[redacted]")
            .field("binding", &"[redacted]")
            .finish()
    }
}

/// `(Q, D)` for the nonce `n`: `Q = (n/8)·B` compressed and `D = 8·Q = n·B`.
fn commit_one(nonce: &Nonce) -> ([u8; 32], EdwardsPoint) {
    let mut n = nonce.to_scalar();
    let mut eighth = n * crate::commitments::inverse_of_eight();
    let q = EdwardsPoint::mul_base(&eighth);
    n.zeroize();
    eighth.zeroize();
    (q.compress().to_bytes(), q.mul_by_cofactor())
}

impl SigningNonces {
    /// Fresh nonces for `share` (frost's hedged generation) and their commitments.
    pub fn new<R: rand::RngCore + rand::CryptoRng>(
        share: &frost::keys::SigningShare,
        rng: &mut R,
    ) -> Self {
        let hiding = Nonce::new(share, rng);
        let binding = Nonce::new(share, rng);
        let (hq, hd) = commit_one(&hiding);
        let (bq, bd) = commit_one(&binding);
        Self {
            hiding,
            binding,
            commitments: frost::round1::SigningCommitments::new(
                frost::round1::NonceCommitment::new(hd),
                frost::round1::NonceCommitment::new(bd),
            ),
            wire: WireCommitments {
                hiding: hq,
                binding: bq,
            },
        }
    }

    /// The commitments `(d·B, e·B)`.
    pub fn commitments(&self) -> &frost::round1::SigningCommitments {
        &self.commitments
    }

    /// Their wire form.
    pub fn wire(&self) -> WireCommitments {
        self.wire
    }

    /// The hiding nonce (secret: for tests that look for it where it must not be).
    pub fn hiding(&self) -> &Nonce {
        &self.hiding
    }

    /// The binding nonce (secret, as above).
    pub fn binding(&self) -> &Nonce {
        &self.binding
    }
}

/// The signature share of `key_package` over `package` with `nonces`: frost's `round2::sign`
/// (RFC 9591 section 5.2), with its checks: enough signers, this signer's own commitment in
/// the package and equal to `nonces`' commitments.
pub fn sign(
    package: &frost::SigningPackage,
    nonces: &SigningNonces,
    key_package: &frost::keys::KeyPackage,
) -> Result<frost::round2::SignatureShare, frost::Error> {
    if package.signing_commitments().len() < usize::from(*key_package.min_signers()) {
        return Err(frost::Error::IncorrectNumberOfCommitments);
    }
    let own = package
        .signing_commitment(key_package.identifier())
        .ok_or(frost::Error::MissingCommitment)?;
    if own != nonces.commitments {
        return Err(frost::Error::IncorrectCommitment);
    }
    let binding_factors =
        frost_core::compute_binding_factor_list(package, key_package.verifying_key(), &[])?;
    let rho = binding_factors
        .get(key_package.identifier())
        .ok_or(frost::Error::UnknownIdentifier)?;
    let rho: [u8; 32] = rho
        .serialize()
        .try_into()
        .map_err(|_| frost::Error::DeserializationError)?;
    let rho = Option::<Scalar>::from(Scalar::from_canonical_bytes(rho))
        .ok_or(frost::Error::DeserializationError)?;
    let group_commitment = frost_core::compute_group_commitment(package, &binding_factors)?;
    let lambda = frost_core::derive_interpolating_value(key_package.identifier(), package)?;
    let challenge = frost_core::challenge(
        &group_commitment.to_element(),
        key_package.verifying_key(),
        package.message(),
    )?
    .to_scalar();
    let mut secret = key_package.signing_share().to_scalar();
    let mut d = nonces.hiding.to_scalar();
    let mut e = nonces.binding.to_scalar();
    let z = d + e * rho + lambda * secret * challenge;
    secret.zeroize();
    d.zeroize();
    e.zeroize();
    frost::round2::SignatureShare::deserialize(z.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{deal, NewMember};
    use conclave_protocol::{GroupName, IdentityKey};
    use std::collections::BTreeMap;

    #[test]
    fn commitments_and_shares_equal_frosts_own_and_the_signature_verifies() {
        let mut rng = rand::rngs::OsRng;
        for (t, n) in [(2u16, 3usize), (3, 5)] {
            let members: Vec<NewMember> = (0..n)
                .map(|i| NewMember {
                    name: format!("p{i}"),
                    node_id: IdentityKey::generate(&mut rng).node_id(),
                    address: "x:1".into(),
                })
                .collect();
            let (manifest, shares) =
                deal(GroupName::new("g").unwrap(), t, &members, &mut rng).unwrap();
            let signers = &shares[..usize::from(t)];
            let ours: Vec<SigningNonces> = signers
                .iter()
                .map(|s| SigningNonces::new(s.key_package.signing_share(), &mut rng))
                .collect();
            let mut commitments = BTreeMap::new();
            for (s, nonces) in signers.iter().zip(&ours) {
                // The same nonces through frost: the same commitments.
                let theirs =
                    frost::round1::SigningNonces::from_nonces(*nonces.hiding(), *nonces.binding());
                assert_eq!(theirs.commitments(), nonces.commitments());
                // And the wire form decodes to them.
                assert_eq!(
                    &crate::commitments::from_wire(&nonces.wire()).unwrap(),
                    nonces.commitments()
                );
                commitments.insert(*s.key_package.identifier(), *nonces.commitments());
            }
            let package = frost::SigningPackage::new(commitments, b"compare with frost");
            let mut sig_shares = BTreeMap::new();
            for (s, nonces) in signers.iter().zip(&ours) {
                let share = sign(&package, nonces, &s.key_package).unwrap();
                let theirs =
                    frost::round1::SigningNonces::from_nonces(*nonces.hiding(), *nonces.binding());
                let expected = frost::round2::sign(&package, &theirs, &s.key_package).unwrap();
                assert_eq!(share, expected);
                sig_shares.insert(*s.key_package.identifier(), share);
            }
            let pkp = manifest.public_key_package().unwrap();
            frost::aggregate(&package, &sig_shares, &pkp).unwrap();
            // The checks frost makes: another signer's nonces, a package without this signer.
            let first = &signers[0];
            assert_eq!(
                sign(&package, &ours[1], &first.key_package),
                Err(frost::Error::IncorrectCommitment)
            );
            let others: BTreeMap<_, _> = package
                .signing_commitments()
                .iter()
                .filter(|(id, _)| *id != first.key_package.identifier())
                .map(|(id, c)| (*id, *c))
                .collect();
            let without = frost::SigningPackage::new(others, b"x");
            assert!(sign(&without, &ours[0], &first.key_package).is_err());
        }
    }
}
