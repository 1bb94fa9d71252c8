//! The conclave coordinator: a sans-IO state machine that runs FROST signing sessions over a
//! group's participants (quorum choice, commitment pools, retries, culprit exclusion,
//! verification). No runtime, no socket, no clock: the QUIC daemon and the client library
//! live in `conclave-transport`, the simulator in `conclave-sim`.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod state;

/// The typed outcome of a failed signing request (defined in `conclave-protocol`, where the
/// client library finds it too).
pub use conclave_protocol::SignError;
#[cfg(feature = "fault-injection")]
pub use state::Misbehaviour;
pub use state::{
    sum_and_verify, Coordinator, CoordinatorConfig, Event, GroupInfo, ReloadSummary, SessionId,
    SignOutcome,
};
