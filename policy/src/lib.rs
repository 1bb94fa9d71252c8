//! What a conclave signer allows: message kinds recognised from the bytes themselves
//! ([`kinds`]) and the signer's own per-client policy with rate limits and replay protection
//! ([`policy`]). Sans-IO and runtime-free: participants are the authority and run it before
//! any signature share leaves them; the coordinator may run it too, for early refusal; the
//! ssh-agent and other front ends use the same code.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod kinds;
pub mod policy;

pub use kinds::{classify, MessageKind};
pub use policy::{
    Grant, Policy, PolicyError, Rule, MAX_POLICY_LEN, MAX_REMEMBERED, MAX_VALIDITY_SECS,
};
