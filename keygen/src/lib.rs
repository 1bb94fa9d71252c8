//! Key material of conclave: group manifests (public), encrypted share files (secret), the
//! share store that ceremonies end in, the trusted-dealer key generation, the key ceremonies
//! (DKG, refresh, reshare, repair) as sans-IO state machines, and key-transition statements.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod ceremony;
pub mod commitments;
pub mod dealer;
pub mod dkg;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keystore;
pub mod kinds;
pub mod manifest;
pub mod migrate;
pub mod repair;
pub mod reshare;
pub mod secret;
pub mod sharefile;
pub mod signing;
pub mod store;

pub use dealer::{deal, share_header, DealtShare, NewMember};
pub use keystore::{Keystore, KeystoreError, KeystoreKey};
pub use manifest::{identifier_for, GroupManifest, ManifestError, ManifestParticipant, Member};
pub use secret::Passphrase;
pub use sharefile::{
    KdfParams, Keys, Protection, ShareErrorKind, ShareFile, ShareFileError, ShareHeader,
};

/// Errors of key generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeygenError {
    #[error("threshold must be at least 2 and at most the number of participants ({n}), got {t}")]
    BadThreshold { t: u16, n: usize },
    #[error("at most {max} participants are supported, got {n}")]
    TooMany { n: usize, max: usize },
    #[error("participant name {0:?} is used twice")]
    DuplicateName(String),
    #[error("identity key {0} is used by two participants")]
    DuplicateIdentity(String),
    #[error(
        "invalid participant name {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
    )]
    BadName(String),
    #[error("FROST key generation failed")]
    Frost(#[from] frost_ed25519::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the plan cannot be made: {0}")]
    Plan(String),
}
