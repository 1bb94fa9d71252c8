//! Wire protocol of conclave: message types, the bounded frame codec, node identities and
//! bounded file reads. No runtime and no TLS: the pinned mutual-TLS QUIC setup lives in
//! `conclave-transport`, so nothing that depends on this crate can touch a socket.
//!
//! Nothing in this crate knows about FROST rounds; FROST values travel as bytes inside
//! [`Message`] variants and are decoded by the crates that own them (round-1 commitments by
//! `conclave_keygen::commitments`).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod codec;
pub mod error;
pub mod fsread;
pub mod identity;
pub mod message;
pub mod request;

pub use codec::{
    decode_frame, encode_frame, CodecError, EncodeError, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
pub use error::SignError;
pub use fsread::{read_bounded, read_bounded_to_string, read_limited, ReadError};
pub use identity::{IdentityError, IdentityKey, NodeId};
pub use message::{
    AbortWhy, CommitmentEntry, Delivered, Envelope, GroupName, Message, PackageEntry, PolicyRule,
    PostBody, Refusal, SignPackage, Transmit, WireCommitments, MAX_BATCH, MAX_GROUP_NAME_LEN,
    MAX_SIGN_MESSAGE_LEN,
};

/// The first bytes of a key-transition statement (`conclave rotate migrate`): signers
/// recognise the `transition` message kind by them.
pub const TRANSITION_PREFIX: &[u8] = b"\0conclave-key-transition/v1\n";

/// Application protocol negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"conclave/1";

/// Version byte carried by every frame.
pub const PROTOCOL_VERSION: u8 = 3;
