//! The typed outcome of a failed signing request, shared by the state machine, the driver and
//! the client library (it travels as a [`Refusal`] code).

use crate::{PolicyRule, Refusal};

/// Why no signature was returned. Failure is always closed: an error, never an unverified
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("unknown group")]
    UnknownGroup,
    #[error("message is larger than {max} bytes")]
    MessageTooLarge { max: usize },
    #[error("signers unavailable: {reachable} reachable, {needed} needed")]
    SignerUnavailable { reachable: usize, needed: usize },
    #[error("deadline exceeded before enough signers answered")]
    DeadlineExceeded,
    #[error("the coordinator refused the request: {0}")]
    Refused(Refusal),
    /// The aggregate did not verify under the group key (fail closed: it was not returned).
    #[error("the aggregated signature did not verify; nothing was returned")]
    Unverified,
    /// An invalid share came from no member of the group.
    #[error("an invalid signature share came from a signer outside the group")]
    UnknownSigner,
    /// Fewer than a threshold of signers authorised the request: each refusing signer (or
    /// "coordinator", for the coordinator's own early check) with the rule it applied. A
    /// policy refusal is not a fault: nobody is blamed and no other signers are tried.
    #[error("not authorized: {}", describe_refusals(.refusals))]
    NotAuthorized { refusals: Vec<(String, PolicyRule)> },
    /// Round 2 failed (an invalid share, or a signer that did not answer) and too few signers
    /// that have not yet answered this request remain: each signer releases at most one share
    /// per request id, so the client retries with a new request (the client library does so).
    #[error("a signing attempt failed after round 2 began{}; retry with a new request", if .culprits.is_empty() { String::new() } else { format!(" (culprits: {})", .culprits.join(", ")) })]
    AttemptFailed { culprits: Vec<String> },
    /// The coordinator could not write its audit record, so it returns nothing (fail closed).
    #[error("the coordinator's audit log cannot be written; nothing was returned")]
    AuditFailed,
    /// Fewer than a threshold of signers are available because some are frozen by their
    /// operators (`conclave freeze`): an incident control, not a fault.
    #[error("signing is frozen: {frozen} signer(s) frozen by their operators{} ({reachable} available, {needed} needed)", if .names.is_empty() { String::new() } else { format!(": {}", .names.join(", ")) })]
    Frozen {
        frozen: usize,
        /// Their names, where known (the coordinator knows them; a client learns the count).
        names: Vec<String>,
        reachable: usize,
        needed: usize,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

fn describe_refusals(refusals: &[(String, PolicyRule)]) -> String {
    if refusals.is_empty() {
        return "refused".into();
    }
    refusals
        .iter()
        .map(|(who, rule)| format!("{who}: {rule}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl SignError {
    /// The wire code for this error.
    pub fn to_refusal(&self) -> Refusal {
        match *self {
            SignError::UnknownGroup => Refusal::UnknownGroup,
            SignError::MessageTooLarge { .. } => Refusal::MessageTooLarge,
            SignError::SignerUnavailable { reachable, needed } => Refusal::SignerUnavailable {
                reachable: u16::try_from(reachable).unwrap_or(u16::MAX),
                needed: u16::try_from(needed).unwrap_or(u16::MAX),
            },
            SignError::DeadlineExceeded => Refusal::DeadlineExceeded,
            SignError::Refused(r) => r,
            SignError::NotAuthorized { ref refusals } => Refusal::NotAuthorized {
                rule: refusals
                    .first()
                    .map_or(PolicyRule::UnknownClient, |(_, r)| *r),
            },
            SignError::AuditFailed => Refusal::AuditFailed,
            SignError::AttemptFailed { .. } => Refusal::AttemptFailed,
            SignError::Frozen {
                frozen,
                reachable,
                needed,
                ..
            } => Refusal::Frozen {
                frozen: u16::try_from(frozen).unwrap_or(u16::MAX),
                reachable: u16::try_from(reachable).unwrap_or(u16::MAX),
                needed: u16::try_from(needed).unwrap_or(u16::MAX),
            },
            SignError::Internal(_) | SignError::Unverified | SignError::UnknownSigner => {
                Refusal::Internal
            }
        }
    }

    /// The error a client reports for a refusal code.
    pub fn from_refusal(r: Refusal) -> Self {
        match r {
            Refusal::UnknownGroup => SignError::UnknownGroup,
            Refusal::MessageTooLarge => SignError::MessageTooLarge {
                max: crate::MAX_SIGN_MESSAGE_LEN,
            },
            Refusal::SignerUnavailable { reachable, needed } => SignError::SignerUnavailable {
                reachable: reachable.into(),
                needed: needed.into(),
            },
            Refusal::DeadlineExceeded => SignError::DeadlineExceeded,
            Refusal::NotAuthorized { rule } => SignError::NotAuthorized {
                refusals: vec![("coordinator".into(), rule)],
            },
            Refusal::AuditFailed => SignError::AuditFailed,
            Refusal::AttemptFailed => SignError::AttemptFailed { culprits: vec![] },
            Refusal::Frozen {
                frozen,
                reachable,
                needed,
            } => SignError::Frozen {
                frozen: frozen.into(),
                names: Vec::new(),
                reachable: reachable.into(),
                needed: needed.into(),
            },
            other => SignError::Refused(other),
        }
    }

    /// A stable, script-friendly code.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::UnknownGroup => "unknown_group",
            SignError::MessageTooLarge { .. } => "message_too_large",
            SignError::SignerUnavailable { .. } => "signer_unavailable",
            SignError::DeadlineExceeded => "deadline_exceeded",
            SignError::Refused(Refusal::EpochSuperseded { .. }) => "epoch_superseded",
            SignError::Refused(Refusal::ShuttingDown) => "shutting_down",
            SignError::Refused(_) => "refused",
            SignError::NotAuthorized { .. } => "not_authorized",
            SignError::AuditFailed => "audit_failed",
            SignError::AttemptFailed { .. } => "attempt_failed",
            SignError::Unverified => "unverified",
            SignError::UnknownSigner => "unknown_signer",
            SignError::Frozen { .. } => "frozen",
            SignError::Internal(_) => "internal",
        }
    }
}
