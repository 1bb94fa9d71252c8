//! Key ceremonies in the simulator: the real relay and member state machines
//! (`conclave_keygen::ceremony`) running a DKG, refresh, reshare or repair over simulated links (latency, jitter,
//! loss as retransmission delay or as drops), with a dealer that may crash mid-ceremony.
//! Deterministic: one seed drives the network, every member's randomness and the initial
//! dealer keygen.
//!
//! Invariants checked on every run: all-or-nothing, eventually (either every live member
//! activates the same result — members left undecided by a lost store round activating when
//! shown the signed completion of one that did, as `rotate resume` does — or none does), the group key never changes, a completed reshare's new shares
//! sign under it, and every live member learns the outcome before its own deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use conclave_keygen::ceremony::{
    Applied, CeremonyKind, CeremonyPlan, CheckedPlan, Completion, Member, MemberEnd, OldGroup,
    PlanNode, Relay, RelayEvent,
};
use conclave_keygen::kinds::{protocol_for, AnyProtocol, Input};
use conclave_keygen::store::MemoryShareStore;
use conclave_keygen::GroupManifest;
use conclave_protocol::{Envelope, NodeId};
use frost_ed25519 as frost;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::queue::EventQueue;
use crate::scenario::{Link, Transport};

const MS: u64 = 1_000_000;

/// A ceremony to simulate (the name is historical: every kind runs).
#[derive(Clone, Debug)]
pub struct ReshareScenario {
    /// Which ceremony: a reshare from `from` to `to`; a refresh or a repair (of the last
    /// member's share) of `from`; a DKG of `to`.
    pub kind: CeremonyKind,
    /// Old group: threshold and size.
    pub from: (u16, usize),
    /// New group: threshold and size (the first members of the old group stay).
    pub to: (u16, usize),
    /// Every member ↔ relay link.
    pub link: Link,
    pub transport: Transport,
    /// Crash the first dealer (DKG: the first member) this many virtual milliseconds after
    /// the start.
    pub crash_dealer_at_ms: Option<f64>,
    /// How long after a crash the relay notices the lost connection (QUIC idle timeout).
    pub connection_timeout_ms: f64,
    pub round_timeout_secs: u32,
    pub seed: u64,
}

impl Default for ReshareScenario {
    fn default() -> Self {
        Self {
            kind: CeremonyKind::Reshare,
            from: (3, 5),
            to: (4, 6),
            link: Link {
                latency_ms: 20.0,
                jitter_ms: 5.0,
                ..Link::default()
            },
            transport: Transport::Quic,
            crash_dealer_at_ms: None,
            connection_timeout_ms: 10_000.0,
            round_timeout_secs: 60,
            seed: 1,
        }
    }
}

/// How a simulated ceremony ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CeremonyOutcome {
    /// Every member activated the new shares.
    Completed,
    /// Every live member aborted; the reason as members reported it.
    Aborted(String),
}

/// What happened.
#[derive(Clone, Debug)]
pub struct CeremonyReport {
    pub outcome: CeremonyOutcome,
    /// Virtual time until the last live member finished.
    pub virtual_ms: f64,
    pub messages: u64,
    pub lost_transmissions: u64,
    /// Broken invariants (empty on a correct run).
    pub violations: Vec<String>,
}

enum Event {
    ToRelay { from: usize, env: Envelope },
    ToMember { to: usize, env: Envelope },
    Crash(usize),
    Down(usize),
    Wake,
}

/// Errors setting a scenario up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the reshare: {0}")]
pub struct SetupError(String);

fn setup_err(e: impl std::fmt::Display) -> SetupError {
    SetupError(e.to_string())
}

/// Runs a ceremony scenario to its end (any kind; see [`ReshareScenario::kind`]).
pub fn run_reshare(s: &ReshareScenario) -> Result<CeremonyReport, SetupError> {
    run_ceremony(s)
}

/// Runs a ceremony scenario to its end.
pub fn run_ceremony(s: &ReshareScenario) -> Result<CeremonyReport, SetupError> {
    let mut rng = ChaCha20Rng::seed_from_u64(s.seed);
    let old_size = if s.kind == CeremonyKind::Reshare {
        s.to
    } else {
        s.from
    };
    let f = conclave_keygen::kinds::reshare_fixture(
        "sim",
        s.from,
        old_size,
        |i| format!("10.0.0.{i}:7000"),
        "10.0.0.254:7400",
        &mut rng,
    )
    .map_err(setup_err)?;
    let coordinator = PlanNode {
        name: "coordinator".into(),
        identity_key: f.coordinator.node_id().to_hex(),
        address: "10.0.0.254:7400".into(),
    };
    let (old, mut keys, mut old_shares) = (f.old, f.identities, f.old_shares);
    let lost = old
        .participants
        .last()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let mut plan = match s.kind {
        CeremonyKind::Reshare => f.plan,
        CeremonyKind::Refresh => {
            conclave_keygen::kinds::refresh_plan(&old, coordinator, &mut rng).map_err(setup_err)?
        }
        CeremonyKind::Repair => {
            // The last member lost its share; the first `threshold` others help.
            if let Some(p) = old.participants.last() {
                old_shares.retain(|node, _| node.to_hex() != p.identity_key);
            }
            conclave_keygen::kinds::repair_plan(&old, &lost, &[], coordinator, &mut rng)
                .map_err(setup_err)?
        }
        CeremonyKind::Dkg => {
            keys = (0..s.to.1)
                .map(|_| conclave_protocol::IdentityKey::generate(&mut rng))
                .collect();
            old_shares.clear();
            let nodes = keys
                .iter()
                .enumerate()
                .map(|(i, k)| PlanNode {
                    name: format!("m{i}"),
                    identity_key: k.node_id().to_hex(),
                    address: format!("10.0.0.{i}:7000"),
                })
                .collect();
            CeremonyPlan::new_dkg(old.group.clone(), s.to.0, coordinator, nodes, &mut rng)
                .map_err(setup_err)?
        }
    };
    plan.round_timeout_secs = s.round_timeout_secs;
    plan.join_timeout_secs = s.round_timeout_secs;
    // Every member checks the plan against its own copy of the old manifest, as in production.
    let checked = match s.kind {
        CeremonyKind::Dkg => None,
        _ => Some(CheckedPlan::check(&plan, OldGroup::Manifest(&old)).map_err(setup_err)?),
    };
    let roster: Vec<NodeId> = plan
        .roster()
        .map_err(setup_err)?
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    let mut members = vec![];
    for node in &roster {
        let key = keys
            .iter()
            .find(|k| k.node_id() == *node)
            .ok_or_else(|| setup_err("identity"))?;
        let input = match &checked {
            None => Input::Dkg(&plan),
            Some(checked) => Input::Rotation {
                checked,
                old_share: old_shares.get(node).cloned(),
            },
        };
        let p = protocol_for(input, node).map_err(setup_err)?;
        members.push(Member::new(&plan, key.clone(), p).map_err(setup_err)?);
    }
    let old = (s.kind != CeremonyKind::Dkg).then_some(old);
    let members_len = roster.len();
    let first_dealer = roster
        .iter()
        .position(|n| Some(*n) == keys.first().map(|k| k.node_id()));
    World {
        s,
        base: Instant::now(),
        now: 0,
        queue: EventQueue::new(),
        rng,
        relay: Relay::new(
            &plan,
            conclave_keygen::kinds::rounds(plan.kind),
            Instant::now(),
        )
        .map_err(setup_err)?,
        members,
        roster,
        crashed: vec![],
        stores: (0..members_len)
            .map(|_| MemoryShareStore::default())
            .collect(),
        activated: vec![],
        completions: BTreeMap::new(),
        undecided: vec![],
        aborted: BTreeMap::new(),
        finished_at: BTreeMap::new(),
        messages: 0,
        lost: 0,
        violations: vec![],
        old,
        old_shares,
        plan,
        first_dealer,
    }
    .run()
}

struct World<'s> {
    s: &'s ReshareScenario,
    base: Instant,
    now: u64,
    queue: EventQueue<Event>,
    rng: ChaCha20Rng,
    relay: Relay,
    members: Vec<Member<AnyProtocol>>,
    roster: Vec<NodeId>,
    crashed: Vec<usize>,
    stores: Vec<MemoryShareStore>,
    activated: Vec<usize>,
    completions: BTreeMap<usize, Completion>,
    undecided: Vec<usize>,
    aborted: BTreeMap<usize, String>,
    finished_at: BTreeMap<usize, u64>,
    messages: u64,
    lost: u64,
    violations: Vec<String>,
    /// The group before the ceremony (none for a DKG).
    old: Option<GroupManifest>,
    /// Its shares: a repair's new share signs with the helpers' unchanged ones.
    old_shares: BTreeMap<NodeId, frost::keys::KeyPackage>,
    plan: CeremonyPlan,
    first_dealer: Option<usize>,
}

impl World<'_> {
    fn at(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.queue.push(at, event);
    }

    /// One transmission over a link: latency, jitter, loss (retransmitted or dropped).
    fn send(&mut self, event: Event) {
        self.messages += 1;
        let l = self.s.link;
        let base = (l.latency_ms * MS as f64) as u64;
        let jitter = if l.jitter_ms > 0.0 {
            self.rng.gen_range(-l.jitter_ms..=l.jitter_ms)
        } else {
            0.0
        };
        let mut delay = (base as f64 + jitter * MS as f64).max(0.0) as u64;
        while l.loss > 0.0 && self.rng.gen_bool(l.loss) {
            self.lost += 1;
            match self.s.transport {
                Transport::Quic => delay += (6 * base).max(10 * MS),
                Transport::Datagram => return,
            }
        }
        self.schedule(self.now + delay, event);
    }

    fn drain(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.members.len() {
                if self.crashed.contains(&i) {
                    continue;
                }
                while let Some(env) = self.members.get_mut(i).and_then(Member::poll_transmit) {
                    self.send(Event::ToRelay { from: i, env });
                    progress = true;
                }
                while let Some(ev) = self.members.get_mut(i).and_then(Member::poll_event) {
                    progress = true;
                    let now = self.at();
                    // The production store rules (pending, activate, keep undecided,
                    // discard), applied to an in-memory store.
                    let (Some(m), Some(store)) = (self.members.get_mut(i), self.stores.get_mut(i))
                    else {
                        continue;
                    };
                    match m.apply(now, ev, store) {
                        Applied::End(MemberEnd::Activated { completion, .. }) => {
                            self.activated.push(i);
                            self.completions.insert(i, completion);
                            self.finished_at.insert(i, self.now);
                        }
                        Applied::End(MemberEnd::Undecided(_)) => {
                            self.undecided.push(i);
                            self.finished_at.insert(i, self.now);
                        }
                        Applied::End(MemberEnd::Aborted(r)) => {
                            self.aborted.insert(i, r.summary);
                            self.finished_at.insert(i, self.now);
                        }
                        Applied::Progress(_) | Applied::Stored(_) => {}
                    }
                }
            }
            while let Some(t) = self.relay.poll_transmit() {
                if let Some(to) = self.roster.iter().position(|n| *n == t.to) {
                    self.send(Event::ToMember {
                        to,
                        env: t.envelope,
                    });
                    progress = true;
                }
            }
            while let Some(ev) = self.relay.poll_event() {
                progress = true;
                if let RelayEvent::Completed { .. } = ev {
                    // The relay's view; members decide for themselves.
                }
            }
            if !progress {
                break;
            }
        }
        // Wake-ups for the relay's and the members' deadlines.
        let mut wakes: Vec<Instant> = self.relay.poll_timeout().into_iter().collect();
        for (i, m) in self.members.iter().enumerate() {
            if !self.crashed.contains(&i) {
                wakes.extend(m.poll_timeout());
            }
        }
        if let Some(w) = wakes.into_iter().min() {
            let at = w.saturating_duration_since(self.base).as_nanos() as u64;
            if at > self.now {
                self.schedule(at, Event::Wake);
            }
        }
    }

    fn run(mut self) -> Result<CeremonyReport, SetupError> {
        let now = self.at();
        for m in &mut self.members {
            let mut rng = ChaCha20Rng::seed_from_u64(self.rng.gen());
            m.start(now, &mut rng);
        }
        if let (Some(at), Some(d)) = (self.s.crash_dealer_at_ms, self.first_dealer) {
            self.schedule((at * MS as f64) as u64, Event::Crash(d));
        }
        self.drain();
        let horizon = u64::from(self.s.round_timeout_secs) * 20 * 1_000 * MS;
        while let Some((at, event)) = self.queue.pop() {
            if at > horizon {
                self.violations
                    .push("livelock: the ceremony did not end within 20 round timeouts".into());
                break;
            }
            self.now = self.now.max(at);
            let now = self.at();
            match event {
                Event::ToRelay { from, env } => {
                    if !self.crashed.contains(&from) {
                        let node = self.roster[from];
                        self.relay.handle(now, node, env);
                    }
                }
                Event::ToMember { to, env } => {
                    if !self.crashed.contains(&to) {
                        let mut rng = ChaCha20Rng::seed_from_u64(self.rng.gen());
                        if let Some(m) = self.members.get_mut(to) {
                            m.handle(now, env, &mut rng);
                        }
                    }
                }
                Event::Crash(i) => {
                    if !self.crashed.contains(&i) && !self.finished_at.contains_key(&i) {
                        self.crashed.push(i);
                        let at = self.now + (self.s.connection_timeout_ms * MS as f64) as u64;
                        self.schedule(at, Event::Down(i));
                    }
                }
                Event::Down(i) => {
                    let node = self.roster[i];
                    self.relay.peer_down(now, node);
                }
                Event::Wake => {
                    self.relay.handle_timeout(now);
                    for (i, m) in self.members.iter_mut().enumerate() {
                        if !self.crashed.contains(&i) {
                            m.handle_timeout(now);
                        }
                    }
                }
            }
            self.drain();
            let live = (0..self.members.len()).filter(|i| !self.crashed.contains(i));
            if live.clone().all(|i| self.finished_at.contains_key(&i)) {
                break;
            }
        }
        self.check()
    }

    fn check(mut self) -> Result<CeremonyReport, SetupError> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| !self.crashed.contains(i))
            .collect();
        // `rotate resume`: an undecided member shown an activated member's completion
        // activates if (and only if) it verifies against its own pending manifest.
        if let Some(done) = self.completions.values().next().cloned() {
            for i in std::mem::take(&mut self.undecided) {
                let resumed = self
                    .stores
                    .get_mut(i)
                    .is_some_and(|st| st.resume(&self.plan, &done).is_ok());
                if resumed {
                    self.activated.push(i);
                } else {
                    self.violations.push(format!(
                        "undecided member m{i} cannot activate with a completion of the ceremony"
                    ));
                }
            }
        }
        let all_activated = live.iter().all(|i| self.activated.contains(i));
        let none_activated = live.iter().all(|i| !self.activated.contains(i));
        if !all_activated && !none_activated {
            self.violations.push(format!(
                "all-or-nothing broken: {} of {} live members activated",
                self.activated.len(),
                live.len()
            ));
        }
        for i in &live {
            if !self.finished_at.contains_key(i) {
                self.violations
                    .push(format!("member m{i} never learned the outcome"));
            }
        }
        let mut results: BTreeMap<usize, (GroupManifest, Option<frost::keys::KeyPackage>)> = self
            .stores
            .iter()
            .enumerate()
            // A member that crashed after acknowledging holds its share pending: it activates
            // when it restarts (`rotate resume`), so its share counts for the signing check.
            .filter_map(|(i, st)| st.active().or(st.pending()).map(|a| (i, a.clone())))
            .collect();
        let outcome = if all_activated && !live.is_empty() {
            let manifests: Vec<&GroupManifest> = results.values().map(|(m, _)| m).collect();
            if manifests.windows(2).any(|w| w.first() != w.get(1)) {
                self.violations
                    .push("members activated different manifests".into());
            }
            if let Some(m) = manifests.first().map(|m| (*m).clone()) {
                if self
                    .old
                    .as_ref()
                    .is_some_and(|old| m.group_public_key != old.group_public_key)
                {
                    self.violations.push("the group key changed".into());
                }
                if self.s.kind == CeremonyKind::Repair {
                    // Only the lost member's share is new: it signs with the helpers' own.
                    for (next, kp) in (self.members.len()..).zip(self.old_shares.values()) {
                        results.insert(next, (m.clone(), Some(kp.clone())));
                    }
                }
                if let Err(e) = signs(&m, &results) {
                    self.violations.push(format!("new shares do not sign: {e}"));
                }
            }
            CeremonyOutcome::Completed
        } else {
            let reason = self
                .aborted
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "no member finished".into());
            CeremonyOutcome::Aborted(reason)
        };
        let last = self.finished_at.values().max().copied().unwrap_or(self.now);
        Ok(CeremonyReport {
            outcome,
            virtual_ms: last as f64 / MS as f64,
            messages: self.messages,
            lost_transmissions: self.lost,
            violations: self.violations,
        })
    }
}

/// Signs with the first `threshold` new shares and verifies under the manifest's key.
fn signs(
    manifest: &GroupManifest,
    results: &BTreeMap<usize, (GroupManifest, Option<frost::keys::KeyPackage>)>,
) -> Result<(), String> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let kps: Vec<&frost::keys::KeyPackage> = results
        .values()
        .filter_map(|(_, k)| k.as_ref())
        .take(usize::from(manifest.threshold))
        .collect();
    let pkp = manifest.public_key_package().map_err(|e| e.to_string())?;
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for kp in &kps {
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let pkg = frost::SigningPackage::new(commitments, b"sim reshare");
    let mut shares = BTreeMap::new();
    for kp in &kps {
        let n = nonces.get(kp.identifier()).ok_or("nonce")?;
        shares.insert(
            *kp.identifier(),
            frost::round2::sign(&pkg, n, kp).map_err(|e| e.to_string())?,
        );
    }
    let sig = frost::aggregate(&pkg, &shares, &pkp).map_err(|e| e.to_string())?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(
        &manifest.public_key_bytes().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&sig.serialize().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    vk.verify_strict(b"sim reshare", &sig)
        .map_err(|e| e.to_string())
}
