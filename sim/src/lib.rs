//! conclave's simulator: deterministic discrete-event runs of the real coordinator and
//! participant state machines (virtual clock, one seeded RNG, a network model, crashes,
//! partitions, byzantine participants, invariants checked at every step), for signing and for
//! key ceremonies. No runtime, no socket: the chaos UDP proxy for real processes lives in
//! `conclave-transport`.
//!
//! ```no_run
//! use conclave_sim::{run, Behaviour, Scenario};
//! let report = run(Scenario::new(3, 5).requests(200).byzantine(2, Behaviour::InvalidShares)).unwrap();
//! assert!(report.violations.is_empty());
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod campaign;
pub mod ceremony;
pub mod plot;
mod queue;
pub mod report;
pub mod scenario;
pub mod world;

pub use ceremony::{run_ceremony, run_reshare, CeremonyOutcome, CeremonyReport, ReshareScenario};
pub use report::{Report, Violation, ViolationKind};
pub use scenario::{
    Behaviour, Byzantine, Crash, GroupChoice, Jitter, Link, Partition, Scenario, ScenarioError,
    Skew, Slow, Transport,
};
pub use world::{run, Simulation};
