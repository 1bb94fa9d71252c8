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
    // Scalars (not frost's `Nonce`): their zeroize is a volatile write.
    hiding: Scalar,
    binding: Scalar,
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
fn commit_one(n: &Scalar) -> ([u8; 32], EdwardsPoint) {
    let mut eighth = n * crate::commitments::inverse_of_eight();
    let q = EdwardsPoint::mul_base(&eighth);
    eighth.zeroize();
    (q.compress().to_bytes(), q.mul_by_cofactor())
}

impl SigningNonces {
    /// Fresh nonces for `share` (frost's hedged generation) and their commitments.
    pub fn new<R: rand::RngCore + rand::CryptoRng>(
        share: &frost::keys::SigningShare,
        rng: &mut R,
    ) -> Self {
        Self::from_nonces(Nonce::new(share, rng), Nonce::new(share, rng))
    }

    /// The commitments to the nonces `hiding` and `binding` (each used at most once).
    pub fn from_nonces(hiding: Nonce, binding: Nonce) -> Self {
        let mut hiding_nonce = hiding;
        let mut binding_nonce = binding;
        let hiding = hiding_nonce.to_scalar();
        let binding = binding_nonce.to_scalar();
        hiding_nonce.zeroize();
        binding_nonce.zeroize();
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

    /// The nonces' bytes, for tests that look for them where they must not be (the feature
    /// `test-secrets`, which no build of the daemons enables).
    #[cfg(any(test, feature = "test-secrets"))]
    pub fn secret_bytes(&self) -> [[u8; 32]; 2] {
        [self.hiding.to_bytes(), self.binding.to_bytes()]
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
    // Through the ciphersuite, as frost does. frost-ed25519 3.0.0 overrides none of the hooks
    // frost's sign calls (pre_sign, pre_commitment_sign, challenge, compute_signature_share):
    // check again whenever the exact pin in Cargo.toml moves.
    let challenge = <E as frost_core::Ciphersuite>::challenge(
        &group_commitment.to_element(),
        key_package.verifying_key(),
        package.message(),
    )?
    .to_scalar();
    let mut secret = key_package.signing_share().to_scalar();
    let mut z = nonces.binding * rho;
    z += nonces.hiding;
    let mut lambda_secret = lambda * secret;
    z += lambda_secret * challenge;
    secret.zeroize();
    lambda_secret.zeroize();
    let share = frost::round2::SignatureShare::deserialize(z.as_bytes());
    z.zeroize();
    share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{deal, NewMember};
    use conclave_protocol::{GroupName, IdentityKey};
    use std::collections::BTreeMap;

    /// frost's nonces holding the same scalars as `n`.
    fn frost_nonces(n: &SigningNonces) -> frost::round1::SigningNonces {
        frost::round1::SigningNonces::from_nonces(
            Nonce::from_scalar(n.hiding),
            Nonce::from_scalar(n.binding),
        )
    }

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
                let theirs = frost_nonces(nonces);
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
                let theirs = frost_nonces(nonces);
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
            // Enough signers, but not this one.
            let others: BTreeMap<_, _> = shares[1..]
                .iter()
                .map(|s| {
                    let n = SigningNonces::new(s.key_package.signing_share(), &mut rng);
                    (*s.key_package.identifier(), *n.commitments())
                })
                .collect();
            let without = frost::SigningPackage::new(others, b"x");
            assert_eq!(
                sign(&without, &ours[0], &first.key_package),
                Err(frost::Error::MissingCommitment)
            );
            // An identity commitment among the others.
            let mut with_identity = package.signing_commitments().clone();
            let identity = frost::round1::NonceCommitment::new(EdwardsPoint::default());
            with_identity.insert(
                *signers[1].key_package.identifier(),
                frost::round1::SigningCommitments::new(identity, identity),
            );
            let bad = frost::SigningPackage::new(with_identity, b"x");
            let refused = sign(&bad, &ours[0], &first.key_package);
            assert!(refused.is_err());
            assert_eq!(
                refused,
                frost::round2::sign(&bad, &frost_nonces(&ours[0]), &first.key_package)
            );
        }
    }
}
