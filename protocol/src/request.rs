//! A client's sign request, signed end to end by the client's identity key, so that every
//! participant can check for itself who asked for what (the coordinator only forwards it).
//!
//! Canonical encoding (what the client signs), all integers big-endian:
//!
//! ```text
//! "conclave/sign-request/v1\0"
//! u8  len(group) ‖ group                  (1..=64 bytes, [A-Za-z0-9._-])
//! u64 epoch
//! u8  message form: 0 = the message itself, 1 = its SHA-512
//! u32 len ‖ bytes                          (the message, or 64 bytes of SHA-512)
//! u8  len(kind) ‖ kind                     (e.g. "raw", "sshsig:git"; at most 64 bytes)
//! 16  request id                           (random)
//! u64 not_after                            (Unix seconds)
//! ```
//!
//! The signature is Ed25519 (strict verification) over those bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::{GroupName, IdentityKey, NodeId};

const DOMAIN: &[u8] = b"conclave/sign-request/v1\0";
/// Longest message kind.
pub const MAX_KIND_LEN: usize = 64;

/// What a request says about the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageRef {
    /// The message itself.
    Full(Vec<u8>),
    /// Its SHA-512 (for long messages): the signer checks it against the signing package.
    Sha512(#[serde(with = "serde_bytes64")] [u8; 64]),
}

mod serde_bytes64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Vec::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a SHA-512 is 64 bytes"))
    }
}

impl MessageRef {
    /// True if `message` is the message this refers to.
    pub fn matches(&self, message: &[u8]) -> bool {
        match self {
            MessageRef::Full(m) => m == message,
            MessageRef::Sha512(h) => Sha512::digest(message).as_slice() == h.as_slice(),
        }
    }
}

/// What the client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequestBody {
    pub group: GroupName,
    pub epoch: u64,
    pub message: MessageRef,
    /// The kind the client declares; every signer recognises the kind from the bytes and
    /// refuses a mismatch.
    pub kind: String,
    pub request_id: [u8; 16],
    /// Unix seconds after which no signer accepts the request.
    pub not_after: u64,
}

/// A request with the client's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    pub body: SignRequestBody,
    pub client: NodeId,
    pub signature: Vec<u8>,
}

/// Why a signed request is not acceptable as such.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("the message kind is longer than {MAX_KIND_LEN} bytes")]
    KindTooLong,
    #[error("the client's signature does not verify")]
    BadSignature,
}

impl SignRequestBody {
    /// The canonical bytes the client signs (see the module documentation).
    pub fn canonical(&self) -> Result<Vec<u8>, RequestError> {
        let kind = self.kind.as_bytes();
        let kind_len = u8::try_from(kind.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_KIND_LEN)
            .ok_or(RequestError::KindTooLong)?;
        let group = self.group.as_str().as_bytes();
        let mut out = Vec::with_capacity(DOMAIN.len() + group.len() + kind.len() + 160);
        out.extend_from_slice(DOMAIN);
        // Group names are at most 64 bytes (GroupName checks it).
        out.push(u8::try_from(group.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(group);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        let (form, bytes): (u8, &[u8]) = match &self.message {
            MessageRef::Full(m) => (0, m),
            MessageRef::Sha512(h) => (1, h),
        };
        out.push(form);
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
        out.push(kind_len);
        out.extend_from_slice(kind);
        out.extend_from_slice(&self.request_id);
        out.extend_from_slice(&self.not_after.to_be_bytes());
        Ok(out)
    }

    /// Signs this request with the client's identity.
    pub fn sign(self, identity: &IdentityKey) -> Result<SignedRequest, RequestError> {
        use ed25519_dalek::Signer;
        let bytes = self.canonical()?;
        let signature = identity.signing_key().sign(&bytes).to_bytes().to_vec();
        Ok(SignedRequest {
            body: self,
            client: identity.node_id(),
            signature,
        })
    }
}

impl SignedRequest {
    /// Checks the client's signature (strict Ed25519).
    pub fn verify(&self) -> Result<(), RequestError> {
        let bytes = self.body.canonical()?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.client.0)
            .map_err(|_| RequestError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(&self.signature)
            .map_err(|_| RequestError::BadSignature)?;
        key.verify_strict(&bytes, &sig)
            .map_err(|_| RequestError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(message: &[u8]) -> SignRequestBody {
        SignRequestBody {
            group: GroupName::new("release").unwrap(),
            epoch: 3,
            message: MessageRef::Full(message.to_vec()),
            kind: "raw".into(),
            request_id: [7; 16],
            not_after: 1_800_000_000,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let id = IdentityKey::generate(&mut rand::rngs::OsRng);
        let signed = body(b"release 1.2.3").sign(&id).unwrap();
        signed.verify().unwrap();
        let mut m = signed.clone();
        m.body.message = MessageRef::Full(b"release 6.6.6".to_vec());
        assert_eq!(m.verify(), Err(RequestError::BadSignature));
        let mut m = signed.clone();
        m.body.epoch = 4;
        assert_eq!(m.verify(), Err(RequestError::BadSignature));
        let mut m = signed.clone();
        m.body.kind = "sshsig:git".into();
        assert_eq!(m.verify(), Err(RequestError::BadSignature));
        let mut m = signed.clone();
        m.body.not_after += 1;
        assert_eq!(m.verify(), Err(RequestError::BadSignature));
        let mut m = signed;
        m.client = IdentityKey::generate(&mut rand::rngs::OsRng).node_id();
        assert_eq!(m.verify(), Err(RequestError::BadSignature));
    }

    #[test]
    fn the_encoding_is_unambiguous_between_fields() {
        // Moving a byte from the message into the kind changes the canonical bytes.
        let mut a = body(b"ab");
        a.kind = "c".into();
        let mut b = body(b"a");
        b.kind = "bc".into();
        assert_ne!(a.canonical().unwrap(), b.canonical().unwrap());
        let mut long = body(b"x");
        long.kind = "k".repeat(65);
        assert_eq!(long.canonical(), Err(RequestError::KindTooLong));
    }

    #[test]
    fn a_digest_reference_matches_only_its_message() {
        let h: [u8; 64] = Sha512::digest(b"a long release tarball").into();
        let r = MessageRef::Sha512(h);
        assert!(r.matches(b"a long release tarball"));
        assert!(!r.matches(b"another tarball"));
        assert!(MessageRef::Full(b"x".to_vec()).matches(b"x"));
    }
}
