//! The conclave participant (signer node): a sans-IO state machine that holds key shares,
//! hands out round-1 commitments and signs round-2 packages, plus the thin QUIC driver that
//! runs it in production. The simulator drives the same state machine.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod ceremony;
pub mod hygiene;
pub mod server;
pub mod state;

pub use conclave_protocol::Transmit;
pub use state::{Fault, Participant, ParticipantConfig, ParticipantStats};
