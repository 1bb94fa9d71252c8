//! The typed outcome of a failed signing request, shared by the state machine, the driver and
//! the client library (it travels as a [`Refusal`] code).

use conclave_protocol::Refusal;

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
    #[error("internal error: {0}")]
    Internal(&'static str),
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
                max: conclave_protocol::MAX_SIGN_MESSAGE_LEN,
            },
            Refusal::SignerUnavailable { reachable, needed } => SignError::SignerUnavailable {
                reachable: reachable.into(),
                needed: needed.into(),
            },
            Refusal::DeadlineExceeded => SignError::DeadlineExceeded,
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
            SignError::Refused(_) => "refused",
            SignError::Unverified => "unverified",
            SignError::UnknownSigner => "unknown_signer",
            SignError::Internal(_) => "internal",
        }
    }
}
