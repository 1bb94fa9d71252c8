//! Round-1 commitments on the wire, sent so that checking one costs a point decompression
//! instead of a scalar multiplication.
//!
//! RFC 9591 (section 5.2) has every signer validate each element of the commitment list it is
//! asked to sign over: a point on the curve, in the prime-order subgroup, not the identity.
//! frost's own decoder does the subgroup check with `is_torsion_free`, a constant-time
//! multiplication by the 253-bit group order: about 39 µs per point on the reference machine,
//! and a package holds 2t points, checked by each of the t signers (2t² checks per signature,
//! plus 2t at the coordinator when the commitments enter its pool).
//!
//! Here the participant that makes a nonce commitment `D = d·B` sends `Q = (d/8)·B` instead
//! (`d/8` is `d` times the inverse of 8 modulo the group order ℓ, so `8·Q = D`). Every receiver
//! decodes `Q` as a point of the curve and uses `D = 8·Q`. This is sound by construction, not
//! by probability:
//!
//! - The curve group is the direct product of the prime-order subgroup (order ℓ) and the
//!   torsion subgroup of order 8, so for any point `Q = P + T` (P of order ℓ, T of order
//!   dividing 8), `8·Q = 8·P` lies in the prime-order subgroup. Whatever bytes a sender (or a
//!   coordinator that rewrites them) puts on the wire, the point every node uses is in that
//!   subgroup: the torsion check cannot fail, so it is not run.
//! - What remains is the identity check: `8·Q` is the identity exactly when `Q` has small
//!   order, and such a commitment is refused (frost's decoder refuses the identity too).
//! - A different encoding of the same `D` (Q plus a small-order point, or a non-canonical
//!   encoding of Q) changes nothing: every node signs over `D`, and the binding factors and the
//!   group commitment are computed from `D`'s canonical encoding, as in RFC 9591.
//!
//! A batched check (one random linear combination per package) would not be sound here: the
//! torsion subgroup has order 8, so a combination with random coefficients misses a torsion
//! component with probability up to 1/2 (two points with the same order-2 component cancel
//! whenever their coefficients have the same parity).
//!
//! Cost: decompression ≈ 5 µs and three doublings ≈ 0.3 µs per point at every receiver. The
//! committer makes `Q` with the fixed-base table and `D = 8·Q` from it
//! ([`crate::signing::SigningNonces`]), cheaper than frost's own commit.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use conclave_protocol::{PackageEntry, SignPackage, WireCommitments};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::traits::IsIdentity;
use curve25519_dalek::Scalar;
use frost_ed25519 as frost;

/// Why a commitment list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitmentError {
    #[error("a commitment is not a point of the curve")]
    NotAPoint,
    #[error("a commitment is the identity (a small-order point on the wire)")]
    Identity,
    #[error("an identifier is not a non-zero scalar")]
    BadIdentifier,
    #[error("an identifier appears twice")]
    DuplicateIdentifier,
}

pub(crate) fn inverse_of_eight() -> &'static Scalar {
    static INV8: OnceLock<Scalar> = OnceLock::new();
    INV8.get_or_init(|| Scalar::from(8u64).invert())
}

/// `8·Q` for the point `Q` encoded in `bytes`: in the prime-order subgroup by construction.
fn point(bytes: &[u8; 32]) -> Result<EdwardsPoint, CommitmentError> {
    let q = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(CommitmentError::NotAPoint)?;
    let d = q.mul_by_cofactor();
    if d.is_identity() {
        return Err(CommitmentError::Identity);
    }
    Ok(d)
}

/// The frost commitments that `wire` stands for, checked (see the module documentation).
pub fn from_wire(
    wire: &WireCommitments,
) -> Result<frost::round1::SigningCommitments, CommitmentError> {
    let hiding = frost::round1::NonceCommitment::new(point(&wire.hiding)?);
    let binding = frost::round1::NonceCommitment::new(point(&wire.binding)?);
    Ok(frost::round1::SigningCommitments::new(hiding, binding))
}

/// The frost signing package that `package` stands for, every element checked. The caller
/// bounds the number of entries and the message length before calling.
pub fn package_from_wire(package: &SignPackage) -> Result<frost::SigningPackage, CommitmentError> {
    let mut commitments = BTreeMap::new();
    for entry in &package.commitments {
        let id = frost::Identifier::deserialize(&entry.identifier)
            .map_err(|_| CommitmentError::BadIdentifier)?;
        if commitments
            .insert(id, from_wire(&entry.commitments)?)
            .is_some()
        {
            return Err(CommitmentError::DuplicateIdentifier);
        }
    }
    Ok(frost::SigningPackage::new(commitments, &package.message))
}

/// The wire form of a whole frost package, from its commitments alone (without the nonces):
/// one variable-base scalar multiplication per point. For tests and tools; the nodes use
/// [`crate::signing::SigningNonces::wire`] and keep the wire form of what they pooled.
pub fn package_to_wire(package: &frost::SigningPackage) -> SignPackage {
    let eighth_of =
        |c: &frost::round1::NonceCommitment| (c.value() * inverse_of_eight()).compress().to_bytes();
    SignPackage {
        message: package.message().clone(),
        commitments: package
            .signing_commitments()
            .iter()
            .map(|(id, c)| {
                package_entry(
                    id,
                    WireCommitments {
                        hiding: eighth_of(c.hiding()),
                        binding: eighth_of(c.binding()),
                    },
                )
            })
            .collect(),
    }
}

/// A package entry for `identifier` (the coordinator's side).
pub fn package_entry(identifier: &frost::Identifier, commitments: WireCommitments) -> PackageEntry {
    let mut id = [0u8; 32];
    let bytes = identifier.serialize();
    for (d, s) in id.iter_mut().zip(bytes.iter()) {
        *d = *s;
    }
    PackageEntry {
        identifier: id,
        commitments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    fn nonces() -> crate::signing::SigningNonces {
        let mut rng = rand::rngs::OsRng;
        let share = frost::keys::SigningShare::new(Scalar::random(&mut rng));
        crate::signing::SigningNonces::new(&share, &mut rng)
    }

    fn to_wire(n: &crate::signing::SigningNonces) -> WireCommitments {
        n.wire()
    }

    #[test]
    fn wire_form_decodes_to_the_same_commitments() {
        let n = nonces();
        let back = from_wire(&to_wire(&n)).unwrap();
        assert_eq!(&back, n.commitments());
        // And serializes exactly as frost's own commitments do (what the binding factors hash).
        assert_eq!(
            back.serialize().unwrap(),
            n.commitments().serialize().unwrap()
        );
    }

    #[test]
    fn torsion_on_the_wire_is_cleared_and_small_order_is_refused() {
        let n = nonces();
        let mut wire = to_wire(&n);
        // Q + T for a point T of order 8: another encoding of the same D.
        let q = CompressedEdwardsY(wire.hiding).decompress().unwrap();
        wire.hiding = (q + EIGHT_TORSION[1]).compress().to_bytes();
        let back = from_wire(&wire).unwrap();
        assert_eq!(&back, n.commitments());
        assert!(back.hiding().value().is_torsion_free());
        // A small-order point is the identity once multiplied by the cofactor: refused.
        for t in EIGHT_TORSION {
            let mut w = to_wire(&n);
            w.binding = t.compress().to_bytes();
            assert_eq!(from_wire(&w), Err(CommitmentError::Identity));
        }
        // Bytes that are no point at all.
        let mut w = to_wire(&n);
        w.hiding = [0xff; 32];
        w.hiding[0] = 2; // y = 2 is not on the curve
        assert!(from_wire(&w).is_err());
    }

    #[test]
    fn package_refuses_bad_and_duplicate_identifiers() {
        let n = nonces();
        let id = frost::Identifier::try_from(3u16).unwrap();
        let entry = package_entry(&id, to_wire(&n));
        let ok = SignPackage {
            message: b"m".to_vec(),
            commitments: vec![entry],
        };
        let p = package_from_wire(&ok).unwrap();
        assert_eq!(p.signing_commitment(&id).as_ref(), Some(n.commitments()));
        assert_eq!(package_to_wire(&p), ok);
        let twice = SignPackage {
            message: b"m".to_vec(),
            commitments: vec![entry, entry],
        };
        assert_eq!(
            package_from_wire(&twice).unwrap_err(),
            CommitmentError::DuplicateIdentifier
        );
        let mut zero = entry;
        zero.identifier = [0; 32];
        let bad = SignPackage {
            message: b"m".to_vec(),
            commitments: vec![zero],
        };
        assert_eq!(
            package_from_wire(&bad).unwrap_err(),
            CommitmentError::BadIdentifier
        );
    }
}
