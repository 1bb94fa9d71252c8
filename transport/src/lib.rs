//! Everything of conclave that touches a socket or a runtime, as quinn is to quinn-proto: the
//! pinned mutual-TLS QUIC setup ([`quic`]) and the thin drivers around the sans-IO state
//! machines — the participant daemon ([`participant`]), the coordinator daemon and its client
//! handle ([`coordinator`]), the key-ceremony relay ([`relay`]) and member ([`member`])
//! drivers, the client library ([`client`]) — plus process hardening for signer daemons
//! ([`hygiene`]) and the chaos UDP proxy for tests between real processes ([`proxy`]).
//!
//! No protocol decision is made here: every rule lives in `conclave-participant`,
//! `conclave-coordinator` or `conclave-keygen`, which the simulator drives too.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod coordinator;
pub mod hygiene;
pub mod member;
pub mod metrics;
pub mod participant;
pub mod proxy;
pub mod relay;

/// The QUIC/TLS layer and the client library live in `conclave-client` (so that a client
/// application needs nothing else); re-exported here for the daemons.
pub use conclave_client::{client, quic};

pub use conclave_client::unix_now;
