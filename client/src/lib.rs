//! The conclave client library: threshold Ed25519 signatures from a conclave cluster, with the
//! key's secret never in one place.
//!
//! - [`Client`]: one kept-open QUIC connection to a coordinator (pinned by its identity key),
//!   signed requests, verified signatures.
//! - [`ClientConfig`]: the client config file (identity, coordinators tried in order, group,
//!   timeout), shared with the `conclave` CLI.
//! - [`ThresholdSigner`]: an async [`SigningService`] for one group, with failover across
//!   coordinators and the public key known locally; it also implements the `signature` crate's
//!   [`signature::AsyncSigner`] and [`signature::KeypairRef`], so generic Ed25519 code uses it
//!   as is.
//! - [`quic`]: the pinned mutual-TLS QUIC layer every conclave node uses.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod client;
pub mod config;
pub mod quic;
pub mod service;

pub use client::{Client, ClientError, RemoteGroup, Signed};
pub use conclave_protocol::SignError;
pub use config::{ClientConfig, CoordinatorEntry};
pub use service::{ManifestIndex, ServiceError, SigningService, ThresholdSigner};

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970): the wall
/// time that request validity and audit records use.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
