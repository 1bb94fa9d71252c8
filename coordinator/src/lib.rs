//! The conclave coordinator: a sans-IO state machine that runs FROST signing sessions over a
//! group's participants (quorum choice, commitment pools, retries, culprit exclusion,
//! verification), its QUIC driver, and the client library that talks to it.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod ceremony;
pub mod client;
pub mod error;
pub mod server;
pub mod state;

pub use error::SignError;
pub use state::{Coordinator, CoordinatorConfig, Event, GroupInfo, SessionId, SignOutcome};
