//! The messages nodes exchange. Each request travels in its own QUIC stream inside an
//! [`Envelope`] carrying a request id; the reply echoes that id.

use serde::{Deserialize, Serialize};

/// Longest group name accepted anywhere.
pub const MAX_GROUP_NAME_LEN: usize = 64;
/// Largest message a client may ask to sign (64 KiB).
pub const MAX_SIGN_MESSAGE_LEN: usize = 64 * 1024;
/// Most round-1 commitments one `Commit` request may ask for.
pub const MAX_BATCH: u16 = 256;

/// A group's name, as written in its manifest. Validated on decode: 1..=64 bytes of
/// `[A-Za-z0-9._-]`, so it can be printed and used in file names safely.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    /// Checks and wraps a group name.
    pub fn new(name: &str) -> Result<Self, InvalidGroupName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_GROUP_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidGroupName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GroupName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A group name that breaks the naming rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("group names are 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
pub struct InvalidGroupName;

/// One request or reply with its id. Replies echo the id of the request they answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub msg: Message,
}

/// A message a state machine wants sent: the output of `poll_transmit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The authenticated peer to send it to.
    pub to: crate::NodeId,
    pub envelope: Envelope,
}

/// A round-1 commitment pair (hiding, binding) as it travels: each nonce commitment `D` is
/// sent as the compressed Edwards point `Q` with `8·Q = D`, so that a receiver gets a point of
/// the prime-order subgroup by multiplying by the cofactor instead of checking it with a scalar
/// multiplication. Decoded (and why that is sound) in `conclave_keygen::commitments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireCommitments {
    pub hiding: [u8; 32],
    pub binding: [u8; 32],
}

/// One round-1 commitment held by a participant, named by the participant's own id for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitmentEntry {
    /// The participant's handle for the nonces behind this commitment.
    pub id: u64,
    pub commitments: WireCommitments,
}

/// One signer's entry in a [`SignPackage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageEntry {
    /// The signer's FROST identifier (a serialized non-zero scalar).
    pub identifier: [u8; 32],
    pub commitments: WireCommitments,
}

/// The round-2 signing package: the message and every chosen signer's commitments (the
/// content of a `frost_ed25519::SigningPackage`, with the commitments as [`WireCommitments`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignPackage {
    pub message: Vec<u8>,
    pub commitments: Vec<PackageEntry>,
}

/// Every message of the protocol. The direction is given in each variant's comment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Any node → any node: liveness check.
    Ping,
    /// Reply to `Ping`: the groups (and their epochs) the node serves.
    Pong { groups: Vec<(GroupName, u64)> },

    /// Coordinator → participant: make `count` fresh round-1 commitments for `group` at `epoch`
    /// (preprocessing: the coordinator pools them and uses one per signature).
    Commit {
        group: GroupName,
        epoch: u64,
        count: u16,
    },
    /// Participant → coordinator: the commitments made for a `Commit`.
    Commitments {
        group: GroupName,
        epoch: u64,
        entries: Vec<CommitmentEntry>,
    },

    /// Coordinator → participant: round 2. `signing_package` must contain the commitment
    /// named by `commitment_id`; it is shared (not copied) between the messages to the signers
    /// of one session.
    Sign {
        group: GroupName,
        epoch: u64,
        commitment_id: u64,
        signing_package: std::sync::Arc<SignPackage>,
        /// The client's signed request, forwarded unchanged: the participant checks the
        /// client's signature, its own policy, and that the package signs exactly that message.
        request: Box<crate::request::SignedRequest>,
    },
    /// Participant → coordinator: a serialized `frost_ed25519::round2::SignatureShare`.
    SignatureShare { commitment_id: u64, share: Vec<u8> },

    /// Client → coordinator: sign `message` as `request` (signed by the client) says, answering
    /// within `timeout_ms`. `message` is the full message also when the request names only its
    /// SHA-512.
    SignRequest {
        request: Box<crate::request::SignedRequest>,
        message: Vec<u8>,
        timeout_ms: u32,
    },
    /// Coordinator → client: fewer than a threshold of signers authorised the request. Each
    /// entry names a refusing signer (or "coordinator", for its own early check) and the rule.
    NotAuthorized { refusals: Vec<(String, PolicyRule)> },
    /// Coordinator → client: a signature that the coordinator verified (`verify_strict`).
    Signature {
        public_key: [u8; 32],
        signature: Vec<u8>,
        /// Names of the participants whose shares made the signature.
        signers: Vec<String>,
    },

    /// Client → coordinator: the public key and threshold of a group.
    GroupInfoRequest { group: GroupName },
    /// Coordinator → client.
    GroupInfo {
        group: GroupName,
        public_key: [u8; 32],
        threshold: u16,
        epoch: u64,
        participants: Vec<String>,
        /// How many participants the coordinator can reach right now.
        reachable: u16,
        /// Participants that answered on another epoch (name, their epoch).
        stale: Vec<(String, u64)>,
        /// Participants frozen by their operators (`conclave freeze`).
        frozen: Vec<String>,
    },

    /// Ceremony member → relay (coordinator): this member's messages for `round` of the key
    /// ceremony `ceremony` (DKG, refresh, reshare, repair). The relay answers when every
    /// member has posted the round (a long poll): `CeremonyRound`, or `CeremonyAborted`.
    CeremonyPost {
        ceremony: [u8; 16],
        /// SHA-256 of the ceremony plan; the relay refuses a member holding another plan.
        plan_hash: [u8; 32],
        round: u8,
        body: PostBody,
    },
    /// Relay → member: everything addressed to this member in `round`, one item per member
    /// in roster order.
    CeremonyRound {
        ceremony: [u8; 16],
        round: u8,
        items: Vec<Delivered>,
    },
    /// Relay → member: the ceremony is over without a result.
    CeremonyAborted { ceremony: [u8; 16], why: AbortWhy },

    /// Any direction: the request was refused. A code, never free text.
    Refused(Refusal),
}

/// What a ceremony member posts for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostBody {
    /// A message for every member, and one message per named member (encrypted end to end
    /// by the ceremony layer; the relay cannot read them).
    Round {
        broadcast: Vec<u8>,
        direct: Vec<(crate::NodeId, Vec<u8>)>,
    },
    /// The member stops the ceremony; `complaint` is a complaint signed by the member (opaque
    /// to the relay, checked by every other member).
    Abort { complaint: Vec<u8> },
}

/// One member's contribution to a round, as delivered to one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub from: crate::NodeId,
    pub broadcast: Vec<u8>,
    /// What `from` addressed to the recipient, if anything.
    pub direct: Option<Vec<u8>>,
}

/// Why a ceremony ended without a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortWhy {
    /// A member complained (signed complaint, checked by the recipients).
    Complaint {
        from: crate::NodeId,
        complaint: Vec<u8>,
    },
    /// These members did not post `round` before its deadline.
    Timeout {
        round: u8,
        missing: Vec<crate::NodeId>,
    },
    /// This member's connection closed mid-ceremony (its ceremony state is gone).
    Disconnected { node: crate::NodeId },
    /// Posts did not follow the protocol (wrong round, missing or unexpected direct messages).
    Malformed { node: crate::NodeId },
}

/// Why a request was refused. Codes only: a refusal never carries text that could hold
/// secret bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("malformed request")]
    Malformed,
    #[error("unknown group")]
    UnknownGroup,
    #[error("epoch mismatch: the node is at epoch {current}")]
    EpochMismatch { current: u64 },
    #[error("unknown or already used commitment")]
    UnknownCommitment,
    #[error("invalid signing package")]
    InvalidSigningPackage,
    /// A signer's (or the coordinator's) policy refused the request: not a fault.
    #[error("not authorized: {rule}")]
    NotAuthorized { rule: PolicyRule },
    /// The node could not write its audit record, so it did not do what was asked (fail closed).
    #[error("the node's audit log cannot be written; it refuses to sign")]
    AuditFailed,
    /// Round 2 failed and the signers that answered will not sign this request again: retry
    /// with a new request.
    #[error("a signing attempt failed after round 2 began; retry with a new request")]
    AttemptFailed,
    #[error("overloaded: too many outstanding commitments")]
    Overloaded,
    #[error("message too large")]
    MessageTooLarge,
    #[error("signers unavailable: {reachable} reachable, {needed} needed")]
    SignerUnavailable { reachable: u16, needed: u16 },
    #[error("deadline exceeded before enough signers answered")]
    DeadlineExceeded,
    #[error("internal error")]
    Internal,
    #[error("request not understood by this kind of node")]
    UnexpectedRequest,
    #[error("unknown ceremony, or the member holds a different ceremony plan")]
    UnknownCeremony,
    #[error("not a member of this ceremony")]
    NotAMember,
    #[error("post for the wrong round of the ceremony")]
    WrongRound,
    /// The coordinator serves `serving`, but a threshold of the group's members report the
    /// newer epoch `newer`: the old shares are superseded and it will not ask them to sign.
    #[error("epoch {serving} is superseded: a threshold of members serve epoch {newer}; reload the coordinator on the new manifest")]
    EpochSuperseded { serving: u64, newer: u64 },
    /// The signer's operator froze this group (`conclave freeze`): it signs nothing for it.
    #[error("the signer is frozen for this group")]
    NodeFrozen,
    /// Too few signers are available because `frozen` of them are frozen by their operators.
    #[error("signing is frozen: {frozen} signer(s) frozen by their operators, {reachable} available, {needed} needed")]
    Frozen {
        frozen: u16,
        reachable: u16,
        needed: u16,
    },
    /// The node is draining before it stops: it takes no new work (ask another coordinator).
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Which policy rule refused a sign request. A code: never text from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRule {
    #[error("the client's signature on the request does not verify")]
    BadSignature,
    #[error("the client is not in this signer's policy")]
    UnknownClient,
    #[error("the request was signed by another client than the one connected")]
    NotRequester,
    #[error("the request has expired")]
    Expired,
    #[error("the request is valid for longer than this signer accepts")]
    TooLong,
    #[error("the client may not use this group")]
    Group,
    #[error("the request is for another epoch")]
    Epoch,
    #[error("the message to sign is not the one the client signed")]
    MessageMismatch,
    #[error("the message is larger than the client may have signed")]
    TooLarge,
    #[error("the message is not of the kind the client declared")]
    KindMismatch,
    #[error("the client may not have this kind of message signed")]
    Kind,
    #[error("the message does not start with the client's required prefix")]
    Prefix,
    #[error("outside the client's signing window")]
    Window,
    #[error("this request was already answered (replay)")]
    Replay,
    #[error("the client's rate limit is reached")]
    Rate,
    #[error("too many requests remembered: retry when older ones expire")]
    Busy,
}

impl PolicyRule {
    /// A stable, script-friendly name (`unknown_client`, `rate`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            PolicyRule::BadSignature => "bad_signature",
            PolicyRule::UnknownClient => "unknown_client",
            PolicyRule::NotRequester => "not_requester",
            PolicyRule::Expired => "expired",
            PolicyRule::TooLong => "too_long",
            PolicyRule::Group => "group",
            PolicyRule::Epoch => "epoch",
            PolicyRule::MessageMismatch => "message_mismatch",
            PolicyRule::TooLarge => "too_large",
            PolicyRule::KindMismatch => "kind_mismatch",
            PolicyRule::Kind => "kind",
            PolicyRule::Prefix => "prefix",
            PolicyRule::Window => "window",
            PolicyRule::Replay => "replay",
            PolicyRule::Rate => "rate",
            PolicyRule::Busy => "busy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_checked() {
        assert!(GroupName::new("release-signing.v2").is_ok());
        assert!(GroupName::new("").is_err());
        assert!(GroupName::new("a/b").is_err());
        assert!(GroupName::new(&"x".repeat(65)).is_err());
    }
}
