//! The conclave participant (signer node): a sans-IO state machine that holds key shares,
//! hands out round-1 commitments and signs round-2 packages. No runtime, no socket, no clock:
//! the QUIC daemon (`conclave-transport`) and the simulator (`conclave-sim`) are two drivers
//! of this same code.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod state;

pub use conclave_protocol::Transmit;
pub use state::{
    corrupt_share, Freeze, Misbehaviour, Participant, ParticipantConfig, ParticipantStats,
    ShareChanges,
};
