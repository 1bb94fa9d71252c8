//! A campaign: many simulations, each over a fault mix drawn at random from its own seed
//! (loss, duplication, reordering, partitions, crashes with and without restarts, slow nodes,
//! skewed clocks, byzantine signers up to n − t; and every ceremony kind with a crashing
//! member), counting sessions and every invariant violation. A failing run is named by its
//! run seed, and [`draw`] turns that seed back into exactly the same scenario.

use std::collections::BTreeMap;
use std::time::Instant;

use conclave_keygen::ceremony::CeremonyKind;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::ceremony::{run_ceremony, CeremonyOutcome, ReshareScenario};
use crate::scenario::{Behaviour, Byzantine, Jitter, Link, Scenario, Skew, Transport};

/// One drawn run.
#[derive(Clone, Debug)]
pub enum Drawn {
    Signing(Box<Scenario>),
    Ceremony(ReshareScenario),
}

/// The scenario of run seed `seed` (a pure function: replaying a seed replays the run).
/// About one run in ten is a ceremony; the rest are signing runs of 20 to 200 sessions.
pub fn draw(seed: u64) -> Drawn {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    if r.gen_bool(0.1) {
        return Drawn::Ceremony(draw_ceremony(&mut r, seed));
    }
    let n = r.gen_range(3..=7usize);
    let t = r.gen_range(2..=n) as u16;
    let faulty = n - usize::from(t);
    let mut s = Scenario::new(t, n)
        .requests(r.gen_range(20..=200))
        .concurrency(*[1usize, 4, 16].choose(&mut r).unwrap_or(&1))
        .seed(r.next_u64() >> 1); // a TOML integer, so the scenario prints
    s.transport = if r.gen_bool(0.7) {
        Transport::Quic
    } else {
        Transport::Datagram
    };
    s.link = link(&mut r);
    s.request_timeout_ms = r.gen_range(2_000..=10_000);
    s.participant_timeout_ms = r.gen_range(200..=2_000);
    // The floor of the adaptive round-2 timeout, anywhere up to the ceiling.
    s.min_participant_timeout_ms = r.gen_range(50..=s.participant_timeout_ms);
    s.pool_target = *[1u16, 8, 32].choose(&mut r).unwrap_or(&8);
    // A few participants get a worse link of their own.
    for p in 1..=n {
        if r.gen_bool(0.15) {
            s.links.push(crate::scenario::LinkOverride {
                participant: p,
                link: link(&mut r),
            });
        }
    }
    let horizon = (s.requests as u64 * 20).max(1_000);
    let mut who: Vec<usize> = (1..=n).collect();
    who.shuffle(&mut r);
    // Up to n − t participants are faulty for good (byzantine, or crashed and never back).
    let permanent = r.gen_range(0..=faulty);
    for &p in who.iter().take(permanent) {
        if r.gen_bool(0.7) {
            let behaviour = *[
                Behaviour::InvalidShares,
                Behaviour::Replay,
                Behaviour::RefuseCommitments,
                Behaviour::Selective,
            ]
            .choose(&mut r)
            .unwrap_or(&Behaviour::InvalidShares);
            s.byzantine.push(Byzantine {
                participant: p,
                behaviour,
                rate: r.gen_range(0.1..0.9),
            });
        } else {
            s = s.crash(p, r.gen_range(0..horizon), None);
        }
    }
    // Transient faults hit anyone: crashes that restart, partitions, slowness, clock skew.
    for _ in 0..r.gen_range(0..=3) {
        let p = r.gen_range(1..=n);
        let at = r.gen_range(0..horizon);
        s = s.crash(p, at, Some(at + r.gen_range(1..=3_000)));
    }
    for _ in 0..r.gen_range(0..=2) {
        let k = r.gen_range(1..=n);
        let ps: Vec<usize> = who.iter().copied().take(k).collect();
        let from = r.gen_range(0..horizon);
        s = s.partition(ps, from, from + r.gen_range(1..=5_000));
    }
    for _ in 0..r.gen_range(0..=2) {
        s = s.slow(r.gen_range(1..=n), r.gen_range(1..=3_000));
    }
    for _ in 0..r.gen_range(0..=2) {
        let (participant, offset_secs) = (r.gen_range(1..=n), r.gen_range(-600..=600));
        // One clock per participant (a scenario refuses two entries for one).
        if s.skew.iter().all(|k| k.participant != participant) {
            s.skew.push(Skew {
                participant,
                offset_secs,
            });
        }
    }
    // Idle pools: empty (every group cold), the default, or as large as busy ones.
    s.pool_idle = *[0u16, 1, s.pool_target].choose(&mut r).unwrap_or(&1);
    Drawn::Signing(Box::new(s))
}

fn link(r: &mut ChaCha20Rng) -> Link {
    Link {
        latency_ms: r.gen_range(0.1..80.0),
        jitter_ms: r.gen_range(0.0..20.0),
        jitter: if r.gen_bool(0.5) {
            Jitter::Uniform
        } else {
            Jitter::Exponential
        },
        loss: if r.gen_bool(0.5) {
            r.gen_range(0.0..0.2)
        } else {
            0.0
        },
        duplicate: if r.gen_bool(0.3) {
            r.gen_range(0.0..0.1)
        } else {
            0.0
        },
        reorder: if r.gen_bool(0.3) {
            r.gen_range(0.0..0.2)
        } else {
            0.0
        },
    }
}

fn draw_ceremony(r: &mut ChaCha20Rng, seed: u64) -> ReshareScenario {
    let kind = *[
        CeremonyKind::Dkg,
        CeremonyKind::Refresh,
        CeremonyKind::Reshare,
        CeremonyKind::Repair,
    ]
    .choose(r)
    .unwrap_or(&CeremonyKind::Reshare);
    let n = r.gen_range(3..=6usize);
    let mut t = r.gen_range(2..=n) as u16;
    if kind == CeremonyKind::Repair {
        // A repair needs t helpers besides the member who lost its share.
        t = t.min(n as u16 - 1);
    }
    let n2 = r.gen_range(3..=6usize);
    let t2 = r.gen_range(2..=n2) as u16;
    ReshareScenario {
        kind,
        from: (t, n),
        to: (t2, n2),
        link: link(r),
        transport: if r.gen_bool(0.7) {
            Transport::Quic
        } else {
            Transport::Datagram
        },
        crash_dealer_at_ms: r.gen_bool(0.3).then(|| r.gen_range(0.0..400.0)),
        connection_timeout_ms: 10_000.0,
        round_timeout_secs: r.gen_range(5..=60),
        seed,
    }
}

/// A run that broke an invariant (or could not be set up).
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub run_seed: u64,
    pub what: String,
    pub violations: Vec<String>,
}

/// What a campaign found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CampaignReport {
    pub seed: u64,
    /// Signing sessions plus ceremonies run.
    pub sessions: u64,
    pub runs: u64,
    pub signing_sessions: u64,
    pub signed: u64,
    /// Sessions that ended without a signature (faults can make that the right answer).
    pub unsigned: u64,
    /// Ceremonies by kind: (completed, aborted).
    pub ceremonies: BTreeMap<String, (u64, u64)>,
    /// Faults drawn, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Violations by invariant (nonce-reuse, unverified-signature, culprit-missed,
    /// honest-accused, missed-deadline, livelock, and the ceremony invariants).
    pub violations: BTreeMap<String, u64>,
    pub nonce_reuse: u64,
    pub failures: Vec<Failure>,
    pub wall_s: f64,
    pub sessions_per_s: f64,
}

fn kind_name(k: crate::report::ViolationKind) -> &'static str {
    use crate::report::ViolationKind as V;
    match k {
        V::NonceReuse => "nonce-reuse",
        V::UnverifiedSignature => "unverified-signature",
        V::CulpritMissed => "culprit-missed",
        V::HonestAccused => "honest-accused",
        V::MissedDeadline => "missed-deadline",
        V::Livelock => "livelock",
    }
}

/// Runs one drawn run into `report`.
pub fn run_one(run_seed: u64, report: &mut CampaignReport) {
    match draw(run_seed) {
        Drawn::Signing(s) => {
            let n = s.participants;
            let what = format!(
                "signing {}-of-{n}, {} requests, {} crashes, {} partitions, {} slow, {} skewed, {} byzantine",
                s.threshold,
                s.requests,
                s.crashes.len(),
                s.partitions.len(),
                s.slow.len(),
                s.skew.len(),
                s.byzantine.len()
            );
            for (k, c) in [
                (
                    "crash",
                    s.crashes
                        .iter()
                        .filter(|c| c.restart_at_ms.is_none())
                        .count(),
                ),
                (
                    "crash+restart",
                    s.crashes
                        .iter()
                        .filter(|c| c.restart_at_ms.is_some())
                        .count(),
                ),
                ("partition", s.partitions.len()),
                ("slow", s.slow.len()),
                ("clock-skew", s.skew.len()),
                (
                    "lossy-link",
                    usize::from(s.link.loss > 0.0)
                        + s.links.iter().filter(|l| l.link.loss > 0.0).count(),
                ),
            ] {
                *report.faults.entry(k.into()).or_default() += c as u64;
            }
            for b in &s.byzantine {
                *report
                    .faults
                    .entry(format!("byzantine:{:?}", b.behaviour).to_lowercase())
                    .or_default() += 1;
            }
            match crate::world::run(*s) {
                Ok(r) => {
                    report.sessions += r.requests_submitted;
                    report.signing_sessions += r.requests_submitted;
                    report.signed += r.ok;
                    report.unsigned += r.failed_total();
                    for v in &r.violations {
                        *report
                            .violations
                            .entry(kind_name(v.kind).into())
                            .or_default() += 1;
                        if v.kind == crate::report::ViolationKind::NonceReuse {
                            report.nonce_reuse += 1;
                        }
                    }
                    if !r.violations.is_empty() {
                        report.failures.push(Failure {
                            run_seed,
                            what,
                            violations: r
                                .violations
                                .iter()
                                .map(|v| format!("{:?}: {}", v.kind, v.detail))
                                .collect(),
                        });
                    }
                }
                Err(e) => report.failures.push(Failure {
                    run_seed,
                    what,
                    violations: vec![format!("setup: {e}")],
                }),
            }
        }
        Drawn::Ceremony(c) => {
            let what = format!(
                "{} {}-of-{} → {}-of-{}{}",
                c.kind.label(),
                c.from.0,
                c.from.1,
                c.to.0,
                c.to.1,
                if c.crash_dealer_at_ms.is_some() {
                    ", a member crashes"
                } else {
                    ""
                }
            );
            if c.crash_dealer_at_ms.is_some() {
                *report.faults.entry("ceremony-crash".into()).or_default() += 1;
            }
            report.sessions += 1;
            match run_ceremony(&c) {
                Ok(r) => {
                    let e = report.ceremonies.entry(c.kind.label().into()).or_default();
                    match r.outcome {
                        CeremonyOutcome::Completed => e.0 += 1,
                        CeremonyOutcome::Aborted(_) => e.1 += 1,
                    }
                    for v in &r.violations {
                        *report
                            .violations
                            .entry(format!("ceremony: {v}"))
                            .or_default() += 1;
                    }
                    if !r.violations.is_empty() {
                        report.failures.push(Failure {
                            run_seed,
                            what,
                            violations: r.violations,
                        });
                    }
                }
                Err(e) => report.failures.push(Failure {
                    run_seed,
                    what,
                    violations: vec![format!("setup: {e}")],
                }),
            }
        }
    }
    report.runs += 1;
}

/// Runs drawn runs from `seed` until `sessions` sessions have run; `progress` sees the
/// report after every run.
pub fn run_campaign(
    sessions: u64,
    seed: u64,
    progress: &mut dyn FnMut(&CampaignReport),
) -> CampaignReport {
    let started = Instant::now();
    let mut seeds = ChaCha20Rng::seed_from_u64(seed);
    let mut report = CampaignReport {
        seed,
        ..CampaignReport::default()
    };
    while report.sessions < sessions {
        run_one(seeds.next_u64(), &mut report);
        report.wall_s = started.elapsed().as_secs_f64();
        report.sessions_per_s = report.sessions as f64 / report.wall_s.max(1e-9);
        progress(&report);
    }
    report
}
