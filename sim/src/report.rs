//! What a simulation found: outcomes, virtual latencies, faults injected, culprits, and every
//! invariant violation by name.

use std::collections::BTreeMap;
use std::fmt;

use conclave_coordinator::SignError;
use serde::Serialize;

use crate::scenario::Scenario;

/// The invariants checked at every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// A participant signed twice with the same commitment (nonce).
    NonceReuse,
    /// The coordinator returned a signature that does not pass `verify_strict` under the group key.
    UnverifiedSignature,
    /// A participant that sent an invalid share ended up among a signature's signers.
    CulpritMissed,
    /// A participant was named culprit without having sent an invalid share.
    HonestAccused,
    /// A request ended after its deadline, or never.
    MissedDeadline,
    /// The event budget ran out (the system did not settle).
    Livelock,
}

/// One invariant violation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at_ms: f64,
    pub detail: String,
}

/// Latency percentiles, in virtual milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The result of a simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub threshold: u16,
    pub participants: usize,
    pub seed: u64,
    pub requests_submitted: u64,
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
    /// Latency of successful requests.
    pub latency_ms: Latency,
    /// Attempts beyond the first, over all successful requests, plus the new requests the
    /// client sent after an attempt failed once round 2 had begun.
    pub retries: u64,
    /// Per-participant timeouts seen by the coordinator.
    pub timeouts: u64,
    /// Culprit detections, by participant name.
    pub culprits: BTreeMap<String, u64>,
    pub lost_transmissions: u64,
    pub duplicated: u64,
    pub dropped: u64,
    pub violations: Vec<Violation>,
    pub virtual_ms: f64,
    pub wall_ms: f64,
    /// Wall time inside the coordinator and participant state machines (crypto included);
    /// the rest of `wall_ms` is the simulator's own work (network model, invariants, trace).
    pub state_machine_ms: f64,
    pub sessions_per_wall_second: f64,
    pub events: u64,
    /// SHA-256 of the event trace: equal seeds and scenarios give equal hashes.
    pub trace_hash: String,
    #[serde(skip)]
    pub latencies_ns: Vec<u64>,
}

impl Report {
    pub(crate) fn new(s: &Scenario) -> Self {
        Self {
            threshold: s.threshold,
            participants: s.participants,
            seed: s.seed,
            requests_submitted: 0,
            ok: 0,
            failed: BTreeMap::new(),
            latency_ms: Latency::default(),
            retries: 0,
            timeouts: 0,
            culprits: BTreeMap::new(),
            lost_transmissions: 0,
            duplicated: 0,
            dropped: 0,
            violations: Vec::new(),
            virtual_ms: 0.0,
            wall_ms: 0.0,
            state_machine_ms: 0.0,
            sessions_per_wall_second: 0.0,
            events: 0,
            trace_hash: String::new(),
            latencies_ns: Vec::new(),
        }
    }

    pub(crate) fn record_ok(&mut self, latency_ns: u64, attempts: u32) {
        self.ok += 1;
        self.retries += u64::from(attempts.saturating_sub(1));
        self.latencies_ns.push(latency_ns);
    }

    pub(crate) fn record_err(&mut self, _latency_ns: u64, err: &SignError) {
        *self.failed.entry(err.code().to_owned()).or_default() += 1;
    }

    pub(crate) fn finish(&mut self) {
        self.latencies_ns.sort_unstable();
        let pick = |p: f64| -> f64 {
            let v = &self.latencies_ns;
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            v.get(i.min(v.len() - 1)).copied().unwrap_or(0) as f64 / 1e6
        };
        self.latency_ms = Latency {
            p50: pick(0.5),
            p90: pick(0.9),
            p99: pick(0.99),
            max: pick(1.0),
        };
        let done = self.ok + self.failed.values().sum::<u64>();
        self.sessions_per_wall_second = if self.wall_ms > 0.0 {
            done as f64 / (self.wall_ms / 1e3)
        } else {
            0.0
        };
    }

    /// Number of violations of each invariant (all zero is the expected result).
    pub fn violation_counts(&self) -> BTreeMap<ViolationKind, usize> {
        let mut out = BTreeMap::new();
        for v in &self.violations {
            *out.entry(v.kind).or_default() += 1;
        }
        out
    }

    /// Total failed requests.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulated {}-of-{}, seed {}",
            self.threshold, self.participants, self.seed
        )?;
        write!(
            f,
            "requests: {} ok, {} failed",
            self.ok,
            self.failed_total()
        )?;
        for (code, n) in &self.failed {
            write!(f, " [{code}: {n}]")?;
        }
        writeln!(f, " of {}", self.requests_submitted)?;
        let l = self.latency_ms;
        writeln!(
            f,
            "latency (virtual ms): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.max
        )?;
        writeln!(
            f,
            "retries: {}   participant timeouts: {}",
            self.retries, self.timeouts
        )?;
        if self.culprits.is_empty() {
            writeln!(f, "culprits identified: none")?;
        } else {
            let list: Vec<String> = self
                .culprits
                .iter()
                .map(|(n, c)| format!("{n} ({c}x)"))
                .collect();
            writeln!(f, "culprits identified: {}", list.join(", "))?;
        }
        writeln!(
            f,
            "network: {} transmissions lost, {} duplicated, {} dropped by partitions",
            self.lost_transmissions, self.duplicated, self.dropped
        )?;
        if self.violations.is_empty() {
            writeln!(f, "invariant violations: 0 (nonce reuse, unverified signature, culprit missed, honest accused, missed deadline, livelock)")?;
        } else {
            writeln!(f, "INVARIANT VIOLATIONS: {}", self.violations.len())?;
            for v in self.violations.iter().take(20) {
                writeln!(f, "  {:?} at {:.3} ms: {}", v.kind, v.at_ms, v.detail)?;
            }
        }
        writeln!(
            f,
            "{:.0} virtual ms in {:.0} wall ms: {:.0} signing sessions per wall-clock second ({} events)",
            self.virtual_ms, self.wall_ms, self.sessions_per_wall_second, self.events
        )?;
        writeln!(
            f,
            "wall time: {:.0} ms in the state machines, {:.0} ms in the simulator itself ({:.0} %)",
            self.state_machine_ms,
            self.wall_ms - self.state_machine_ms,
            100.0 * (self.wall_ms - self.state_machine_ms) / self.wall_ms.max(1e-9)
        )?;
        write!(f, "trace hash: {}", self.trace_hash)
    }
}
