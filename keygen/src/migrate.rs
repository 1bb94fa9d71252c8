//! Key-transition statements: "the group key OLD is succeeded by NEW from NOT-BEFORE, for
//! REASON", signed by the old key and by the new key, each through normal threshold signing.
//! A verifier that trusts the old key learns the new one from a statement the old group
//! signed; the new key's signature shows its holders accept the statement.
//!
//! The file is TOML (see docs/ROTATION.md); the signed bytes are a canonical text, so anyone
//! can check the signatures with any Ed25519 verifier (`conclave migrate verify
//! --print-message` writes them).

use serde::{Deserialize, Serialize};

use conclave_protocol::GroupName;

/// The format tag of version 1.
pub const FORMAT: &str = "conclave-key-transition/v1";
/// The first bytes of every signed statement text ([`Statement::message`]): a NUL byte, then
/// the format tag and a newline. The leading NUL keeps any ordinary text message (a release
/// note, a commit, a document someone asks the group to sign) from ever reading as a
/// key-transition statement, and lets a signer classify what it is asked to sign
/// ([`is_transition_message`]).
pub const MESSAGE_PREFIX: &[u8] = conclave_protocol::TRANSITION_PREFIX;
/// Longest reason accepted.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest statement file read.
pub const MAX_STATEMENT_LEN: u64 = 64 * 1024;

/// A key-transition statement, with the signatures collected so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub format: String,
    pub old_group: GroupName,
    /// Old group public key (hex, 32 bytes).
    pub old_public_key: String,
    pub new_group: GroupName,
    /// New group public key (hex, 32 bytes).
    pub new_public_key: String,
    /// The epoch the new group starts at.
    pub new_epoch: u64,
    /// Unix seconds from which verifiers should use the new key.
    pub not_before: u64,
    /// One line of printable ASCII (0x20 to 0x7E), at most 1024 bytes.
    pub reason: String,
    /// Ed25519 signature (hex) of [`message`](Self::message) by the old key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_signature: Option<String>,
    /// Ed25519 signature (hex) of [`message`](Self::message) by the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_signature: Option<String>,
}

/// What is wrong with a statement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementError {
    #[error("not a key-transition statement: {0}")]
    Syntax(String),
    #[error("unknown statement format {0:?} (expected {FORMAT:?})")]
    Format(String),
    #[error("{0} is not a valid Ed25519 public key")]
    BadKey(&'static str),
    #[error("the old and new keys are the same")]
    SameKey,
    #[error("the reason must be printable ASCII (letters, digits, punctuation and spaces; no tabs, line breaks or other Unicode), at most {MAX_REASON_LEN} bytes")]
    BadReason,
    #[error("the {0} signature is missing")]
    Missing(&'static str),
    #[error("the {0} signature does not verify")]
    BadSignature(&'static str),
    #[error("statement file is larger than {MAX_STATEMENT_LEN} bytes")]
    TooLarge,
}

/// Whether `bytes` is the signed text of a key-transition statement (starts with
/// [`MESSAGE_PREFIX`]), as opposed to an ordinary message.
pub fn is_transition_message(bytes: &[u8]) -> bool {
    bytes.starts_with(MESSAGE_PREFIX)
}

/// A reason is printable ASCII only (0x20 to 0x7E): no line breaks (U+2028 and U+2029
/// included), no tabs, no bidirectional overrides, nothing a parser of the signed text, or a
/// terminal showing it, could read as another line or another field.
fn reason_is_valid(reason: &str) -> bool {
    reason.len() <= MAX_REASON_LEN && reason.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn key(hex_str: &str, what: &'static str) -> Result<ed25519_dalek::VerifyingKey, StatementError> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut b).map_err(|_| StatementError::BadKey(what))?;
    ed25519_dalek::VerifyingKey::from_bytes(&b).map_err(|_| StatementError::BadKey(what))
}

impl Statement {
    /// Parses and checks the fields (not the signatures).
    pub fn from_toml(text: &str) -> Result<Self, StatementError> {
        if text.len() as u64 > MAX_STATEMENT_LEN {
            return Err(StatementError::TooLarge);
        }
        let s: Self =
            toml::from_str(text).map_err(|e| StatementError::Syntax(e.message().to_owned()))?;
        s.check_fields()?;
        Ok(s)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> Result<String, StatementError> {
        toml::to_string_pretty(self).map_err(|e| StatementError::Syntax(e.to_string()))
    }

    /// Checks everything but the signatures.
    pub fn check_fields(&self) -> Result<(), StatementError> {
        if self.format != FORMAT {
            return Err(StatementError::Format(self.format.clone()));
        }
        let old = key(&self.old_public_key, "old_public_key")?;
        let new = key(&self.new_public_key, "new_public_key")?;
        if old == new {
            return Err(StatementError::SameKey);
        }
        if !reason_is_valid(&self.reason) {
            return Err(StatementError::BadReason);
        }
        Ok(())
    }

    /// The exact bytes both keys sign: [`MESSAGE_PREFIX`], then one `name=value` line per
    /// field.
    pub fn message(&self) -> Vec<u8> {
        let mut out = MESSAGE_PREFIX.to_vec();
        out.extend_from_slice(
            format!(
                "old_group={}\nold_public_key={}\nnew_group={}\nnew_public_key={}\nnew_epoch={}\nnot_before={}\nreason={}\n",
                self.old_group,
                self.old_public_key.to_ascii_lowercase(),
                self.new_group,
                self.new_public_key.to_ascii_lowercase(),
                self.new_epoch,
                self.not_before,
                self.reason
            )
            .as_bytes(),
        );
        out
    }

    /// Checks both signatures (strict Ed25519) over [`message`](Self::message).
    pub fn verify(&self) -> Result<(), StatementError> {
        self.check_fields()?;
        let msg = self.message();
        for (what, key_hex, sig) in [
            ("old", &self.old_public_key, &self.old_signature),
            ("new", &self.new_public_key, &self.new_signature),
        ] {
            let sig = sig.as_deref().ok_or(StatementError::Missing(what))?;
            let bytes = hex::decode(sig).map_err(|_| StatementError::BadSignature(what))?;
            let sig = ed25519_dalek::Signature::from_slice(&bytes)
                .map_err(|_| StatementError::BadSignature(what))?;
            key(key_hex, "key")?
                .verify_strict(&msg, &sig)
                .map_err(|_| StatementError::BadSignature(what))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn signed() -> (
        Statement,
        ed25519_dalek::SigningKey,
        ed25519_dalek::SigningKey,
    ) {
        let mut rng = rand::rngs::OsRng;
        let old = ed25519_dalek::SigningKey::generate(&mut rng);
        let new = ed25519_dalek::SigningKey::generate(&mut rng);
        let mut s = Statement {
            format: FORMAT.into(),
            old_group: GroupName::new("release").unwrap(),
            old_public_key: hex::encode(old.verifying_key().to_bytes()),
            new_group: GroupName::new("release-2").unwrap(),
            new_public_key: hex::encode(new.verifying_key().to_bytes()),
            new_epoch: 1,
            not_before: 1_800_000_000,
            reason: "suspected compromise of p3".into(),
            old_signature: None,
            new_signature: None,
        };
        let msg = s.message();
        s.old_signature = Some(hex::encode(old.sign(&msg).to_bytes()));
        s.new_signature = Some(hex::encode(new.sign(&msg).to_bytes()));
        (s, old, new)
    }

    #[test]
    fn a_signed_statement_round_trips_and_verifies() {
        let (s, _, _) = signed();
        let back = Statement::from_toml(&s.to_toml().unwrap()).unwrap();
        assert_eq!(back, s);
        back.verify().unwrap();
    }

    #[test]
    fn tampering_with_a_signature_or_a_field_is_detected() {
        let (s, old, _) = signed();
        let mut t = s.clone();
        let mut sig = hex::decode(t.old_signature.unwrap()).unwrap();
        sig[5] ^= 1;
        t.old_signature = Some(hex::encode(sig));
        assert_eq!(t.verify(), Err(StatementError::BadSignature("old")));
        let mut t = s.clone();
        let mut sig = hex::decode(t.new_signature.unwrap()).unwrap();
        sig[40] ^= 1;
        t.new_signature = Some(hex::encode(sig));
        assert_eq!(t.verify(), Err(StatementError::BadSignature("new")));
        let mut t = s.clone();
        t.not_before += 1;
        assert_eq!(t.verify(), Err(StatementError::BadSignature("old")));
        // The new key swapped for an attacker's, signed by the attacker: the old signature fails.
        let mut t = s.clone();
        let attacker = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        t.new_public_key = hex::encode(attacker.verifying_key().to_bytes());
        t.new_signature = Some(hex::encode(attacker.sign(&t.message()).to_bytes()));
        assert_eq!(t.verify(), Err(StatementError::BadSignature("old")));
        let mut t = s.clone();
        t.new_signature = None;
        assert_eq!(t.verify(), Err(StatementError::Missing("new")));
        let mut t = s;
        t.reason = "two\nlines".into();
        assert_eq!(t.verify(), Err(StatementError::BadReason));
        let _ = old;
    }

    #[test]
    fn a_reason_that_is_not_printable_ascii_is_refused() {
        let (s, _, _) = signed();
        for reason in [
            "rotation\u{2028}not_before=1", // LINE SEPARATOR: a new line to some parsers
            "rotation\u{2029}not_before=1", // PARAGRAPH SEPARATOR
            "rotation \u{202e}1=erofeb_ton", // RIGHT-TO-LEFT OVERRIDE
            "rotation\tnot_before=1",       // a tab
            "compromise of p\u{e9}",        // a non-ASCII letter
            "nul\0byte",
            "delete\u{7f}",
        ] {
            let mut t = s.clone();
            t.reason = reason.into();
            assert_eq!(
                t.check_fields(),
                Err(StatementError::BadReason),
                "{reason:?}"
            );
        }
        let mut t = s;
        t.reason = " !\"#$%&'()*+,-./0-9:;<=>?@A-Z[\\]^_`a-z{|}~".into();
        t.check_fields().unwrap();
        t.reason = "x".repeat(MAX_REASON_LEN + 1);
        assert_eq!(t.check_fields(), Err(StatementError::BadReason));
        t.reason = "x".repeat(MAX_REASON_LEN);
        t.check_fields().unwrap();
    }

    #[test]
    fn the_signed_text_starts_with_the_domain_separation_prefix() {
        let (s, _, _) = signed();
        let msg = s.message();
        assert!(msg.starts_with(b"\0conclave-key-transition/v1\nold_group=release\n"));
        assert!(is_transition_message(&msg));
        assert_eq!(
            MESSAGE_PREFIX.strip_prefix(b"\0"),
            Some(format!("{FORMAT}\n").as_bytes())
        );
    }

    #[test]
    fn an_ordinary_message_is_not_a_transition_message() {
        for msg in [
            &b""[..],
            b"release v1.2.3",
            b"conclave-key-transition/v1\nold_group=release\n",
            b"conclave key transition v1\nold_group=release\n",
            b"\0conclave-key-transition/v1",
        ] {
            assert!(!is_transition_message(msg), "{msg:?}");
        }
    }
}
