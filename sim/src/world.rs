//! The discrete-event simulator. One virtual clock, one seeded RNG (every node's RNG is derived
//! from it), one event queue ordered by (time, sequence number): the same scenario gives the
//! same event trace, byte for byte. It drives the real `Coordinator` and `Participant` state
//! machines; the only behaviour written here is the network's and the adversaries'.

use crate::queue::EventQueue;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use conclave_coordinator::{Coordinator, CoordinatorConfig, Event, SessionId};
use conclave_keygen::{deal, NewMember};
use conclave_participant::{Participant, ParticipantConfig};
use conclave_protocol::{Envelope, GroupName, IdentityKey, Message, NodeId, Refusal};
use frost_ed25519 as frost;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use crate::report::{Report, Violation, ViolationKind};
use crate::scenario::{Behaviour, Jitter, Scenario, ScenarioError, Transport};

/// Virtual time in nanoseconds since the start.
type Nanos = u64;

const MS: Nanos = 1_000_000;

fn ms(x: f64) -> Nanos {
    (x.max(0.0) * MS as f64) as Nanos
}

#[derive(Debug)]
enum Kind {
    /// A message arrives at a participant (index) from the coordinator.
    ToParticipant {
        p: usize,
        envelope: Envelope,
    },
    /// A message arrives at the coordinator from participant `p`.
    ToCoordinator {
        p: usize,
        envelope: Envelope,
    },
    CoordinatorWake,
    Crash {
        p: usize,
    },
    Restart {
        p: usize,
    },
    PeerDown {
        p: usize,
        incarnation: u32,
    },
    PeerUp {
        p: usize,
        incarnation: u32,
    },
}

struct Node {
    name: String,
    id: NodeId,
    /// Its share of every group (what a restart reads again).
    shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
    state: Option<Participant>,
    rng: ChaCha20Rng,
    incarnation: u32,
    /// The coordinator believes the connection is up.
    connected: bool,
    behaviour: Option<(Behaviour, f64)>,
    slow: Nanos,
    /// For replay: the last share this node produced, and the last reply it sent.
    last_share: Option<Vec<u8>>,
    /// Per commitment id: the share it sent in place of the real one (None: the real one), so
    /// that a duplicated request gets the same answer however late it comes.
    replay_decisions: BTreeMap<u64, Option<Vec<u8>>>,
    last_reply: Option<Envelope>,
}

struct Pending {
    submitted: Nanos,
    deadline: Nanos,
    /// The message (the same across the new requests of a retried submission).
    message: Vec<u8>,
    /// Requests sent for it so far (the client library sends at most three).
    tries: u32,
    /// Index of its group.
    group: usize,
    /// Nodes that sent an invalid (corrupted or replayed) share in this session.
    invalid_senders: BTreeSet<usize>,
}

/// A simulation in progress. Build with [`Simulation::new`], run with [`Simulation::run`].
pub struct Simulation<'t> {
    scenario: Scenario,
    rng: ChaCha20Rng,
    base: Instant,
    now: Nanos,
    queue: EventQueue<Kind>,
    coordinator: Coordinator,
    coordinator_id: NodeId,
    /// The simulated client: it signs every request, as the client library does.
    client: IdentityKey,
    client_rng: ChaCha20Rng,
    nodes: Vec<Node>,
    by_id: BTreeMap<NodeId, usize>,
    /// Every group, with its key.
    groups: Vec<(GroupName, ed25519_dalek::VerifyingKey)>,
    /// The policy every signer holds (names every group).
    policy_text: String,
    pending: BTreeMap<SessionId, Pending>,
    submitted: usize,
    /// Session of each message being signed (messages are derived from session ids).
    by_message: std::collections::HashMap<Vec<u8>, SessionId>,
    /// Commitments handed out: (node, incarnation, commitment id) → serialized commitments.
    handed_out: std::collections::HashMap<(usize, u32, u64), conclave_protocol::WireCommitments>,
    /// Commitments used to sign, per node: (node, serialized commitments). A second use is a
    /// nonce reuse.
    used_nonces: HashSet<(usize, conclave_protocol::WireCommitments)>,
    /// Wall time spent inside the state machines (the rest is the simulator's own).
    sm_time: Duration,
    wake_at: Option<Nanos>,
    report: Report,
    trace: Option<&'t mut dyn Write>,
    capture: Option<&'t mut dyn FnMut(&Envelope)>,
    hasher: Sha256,
    events: u64,
}

impl<'t> Simulation<'t> {
    /// Sets up the group (dealer keygen from the seeded RNG) and the nodes.
    pub fn new(scenario: Scenario) -> Result<Self, ScenarioError> {
        scenario.validate()?;
        let mut rng = ChaCha20Rng::seed_from_u64(scenario.seed);
        let n = scenario.participants;
        let identities: Vec<IdentityKey> =
            (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let members: Vec<NewMember> = identities
            .iter()
            .enumerate()
            .map(|(i, id)| NewMember {
                name: format!("p{}", i + 1),
                node_id: id.node_id(),
                address: format!("sim:{}", i + 1),
            })
            .collect();
        // One group is named "sim" (the traces of one-group scenarios stay as they were);
        // more are "sim-0", "sim-1", ...
        let names: Vec<GroupName> = if scenario.groups <= 1 {
            vec![GroupName::new("sim").map_err(|e| ScenarioError(e.to_string()))?]
        } else {
            (0..scenario.groups)
                .map(|i| GroupName::new(&format!("sim-{i}")))
                .collect::<Result<_, _>>()
                .map_err(|e| ScenarioError(e.to_string()))?
        };
        let mut manifests = Vec::with_capacity(names.len());
        let mut groups = Vec::with_capacity(names.len());
        let mut per_node: Vec<Vec<(GroupName, u64, frost::keys::KeyPackage)>> =
            vec![Vec::with_capacity(names.len()); n];
        let mut dealt_names = Vec::new();
        for group in &names {
            let (manifest, shares) = deal(group.clone(), scenario.threshold, &members, &mut rng)
                .map_err(|e| ScenarioError(e.to_string()))?;
            let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(
                &manifest
                    .public_key_bytes()
                    .map_err(|e| ScenarioError(e.to_string()))?,
            )
            .map_err(|e| ScenarioError(e.to_string()))?;
            groups.push((group.clone(), verifying_key));
            manifests.push(manifest);
            dealt_names = shares.iter().map(|s| (s.name.clone(), s.node_id)).collect();
            for (i, share) in shares.into_iter().enumerate() {
                if let Some(v) = per_node.get_mut(i) {
                    v.push((group.clone(), 1, share.key_package));
                }
            }
        }
        let config = CoordinatorConfig {
            participant_timeout: Duration::from_millis(scenario.participant_timeout_ms),
            min_participant_timeout: Duration::from_millis(scenario.min_participant_timeout_ms),
            default_timeout: Duration::from_millis(scenario.request_timeout_ms),
            max_timeout: Duration::from_millis(scenario.request_timeout_ms.max(1)),
            pool_target: scenario.pool_target,
            pool_idle: scenario.pool_idle,
            ..CoordinatorConfig::default()
        };
        let coordinator =
            Coordinator::new(manifests, config).map_err(|e| ScenarioError(e.to_string()))?;
        let coordinator_id = IdentityKey::generate(&mut rng).node_id();
        // The client draws from its own stream, so the scenario's stream is unchanged.
        let mut client_rng = ChaCha20Rng::seed_from_u64(scenario.seed ^ 0x636c_6965_6e74);
        let client = IdentityKey::generate(&mut client_rng);
        let policy_text = sim_policy(&client, groups.iter().map(|(g, _)| g));
        let policy = || {
            conclave_policy::Policy::from_toml(&policy_text)
                .map_err(|e| ScenarioError(e.to_string()))
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, ((name, node_id), shares)) in dealt_names.into_iter().zip(per_node).enumerate() {
            let number = i + 1;
            let mut node_rng = ChaCha20Rng::seed_from_u64(rng.next_u64());
            let state = Participant::new(
                shares.clone(),
                ParticipantConfig::default(),
                policy()?,
                Box::new(conclave_audit::MemoryAudit::default()),
                &mut node_rng,
            );
            nodes.push(Node {
                name,
                id: node_id,
                shares,
                state: Some(state),
                rng: node_rng,
                incarnation: 0,
                connected: false,
                behaviour: scenario
                    .byzantine
                    .iter()
                    .rev()
                    .find(|b| b.participant == number)
                    .map(|b| (b.behaviour, b.rate)),
                slow: scenario
                    .slow
                    .iter()
                    .filter(|s| s.participant == number)
                    .map(|s| s.delay_ms * MS)
                    .sum(),
                last_share: None,
                replay_decisions: BTreeMap::new(),
                last_reply: None,
            });
        }
        let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        let mut sim = Simulation {
            report: Report::new(&scenario),
            scenario,
            rng,
            base: Instant::now(),
            now: 0,
            queue: EventQueue::new(),
            coordinator,
            coordinator_id,
            client,
            client_rng,
            nodes,
            by_id,
            groups,
            policy_text,
            pending: BTreeMap::new(),
            submitted: 0,
            by_message: std::collections::HashMap::new(),
            handed_out: std::collections::HashMap::new(),
            used_nonces: HashSet::new(),
            sm_time: Duration::ZERO,
            wake_at: None,
            trace: None,
            capture: None,
            hasher: Sha256::new(),
            events: 0,
        };
        for c in sim.scenario.crashes.clone() {
            sim.schedule(
                c.at_ms * MS,
                Kind::Crash {
                    p: c.participant - 1,
                },
            );
            if let Some(r) = c.restart_at_ms {
                sim.schedule(
                    r * MS,
                    Kind::Restart {
                        p: c.participant - 1,
                    },
                );
            }
        }
        for part in sim.scenario.partitions.clone() {
            for &i in &part.participants {
                let p = i - 1;
                // A partition longer than the connection timeout brings the connection down;
                // it comes back after the partition heals.
                let down_at = part.from_ms + sim.scenario.connection_timeout_ms;
                if down_at < part.until_ms {
                    sim.schedule(
                        down_at * MS,
                        Kind::PeerDown {
                            p,
                            incarnation: u32::MAX,
                        },
                    );
                    sim.schedule(
                        (part.until_ms + sim.scenario.reconnect_ms) * MS,
                        Kind::PeerUp {
                            p,
                            incarnation: u32::MAX,
                        },
                    );
                }
            }
        }
        Ok(sim)
    }

    /// Writes every event as a line of text to `out` as the simulation runs.
    pub fn with_trace(mut self, out: &'t mut dyn Write) -> Self {
        self.trace = Some(out);
        self
    }

    /// Hands every message sent on the virtual network (both ways, before loss) to `f`: the
    /// fuzz corpus is seeded from these.
    pub fn with_capture(mut self, f: &'t mut dyn FnMut(&Envelope)) -> Self {
        self.capture = Some(f);
        self
    }

    /// Runs `f` on the coordinator, counting its wall time as state-machine time.
    fn timed<T>(&mut self, f: impl FnOnce(&mut Coordinator) -> T) -> T {
        let started = std::time::Instant::now();
        let out = f(&mut self.coordinator);
        self.sm_time += started.elapsed();
        out
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn schedule(&mut self, at: Nanos, kind: Kind) {
        self.queue.push(at, kind);
    }

    fn log(&mut self, line: String) {
        let text = format!("{:>12} {line}\n", self.now / 1000);
        self.hasher.update(text.as_bytes());
        if let Some(t) = self.trace.as_mut() {
            if t.write_all(text.as_bytes()).is_err() {
                self.trace = None;
            }
        }
    }

    fn partitioned(&self, p: usize) -> bool {
        let t = self.now / MS;
        let number = p + 1;
        self.scenario
            .partitions
            .iter()
            .any(|x| x.participants.contains(&number) && (x.from_ms..x.until_ms).contains(&t))
    }

    fn violation(&mut self, kind: ViolationKind, detail: String) {
        self.log(format!("VIOLATION {kind:?} {detail}"));
        self.report.violations.push(Violation {
            kind,
            at_ms: self.now as f64 / MS as f64,
            detail,
        });
    }

    /// Schedules the delivery of a message over participant `p`'s link, with loss, duplication,
    /// reordering, partitions.
    fn transmit(&mut self, p: usize, to_coordinator: bool, envelope: Envelope, extra: Nanos) {
        if let Some(capture) = self.capture.as_mut() {
            capture(&envelope);
        }
        let link = self.scenario.link_of(p + 1);
        let copies = if self.rng.gen_bool(link.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            if self.partitioned(p) {
                self.report.dropped += 1;
                self.log(format!(
                    "drop partition {} {}",
                    self.nodes[p].name,
                    kind_of(&envelope.msg)
                ));
                continue;
            }
            let base = ms(link.latency_ms);
            let jitter = match link.jitter {
                Jitter::Uniform if link.jitter_ms > 0.0 => {
                    self.rng.gen_range(-link.jitter_ms..=link.jitter_ms)
                }
                Jitter::Exponential if link.jitter_ms > 0.0 => {
                    -link.jitter_ms * (1.0 - self.rng.gen::<f64>()).ln()
                }
                _ => 0.0,
            };
            let mut delay = (base as f64 + jitter * MS as f64).max(0.0) as Nanos + extra;
            if self.rng.gen_bool(link.reorder) {
                delay += self.rng.gen_range(0..=2 * base.max(MS));
            }
            let mut lost = false;
            while self.rng.gen_bool(link.loss) {
                self.report.lost_transmissions += 1;
                match self.scenario.transport {
                    Transport::Quic => delay += (6 * base).max(10 * MS),
                    Transport::Datagram => {
                        lost = true;
                        break;
                    }
                }
            }
            if lost {
                self.log(format!(
                    "lost {} {}",
                    self.nodes[p].name,
                    kind_of(&envelope.msg)
                ));
                continue;
            }
            if copy == 1 {
                self.report.duplicated += 1;
            }
            let kind = if to_coordinator {
                Kind::ToCoordinator {
                    p,
                    envelope: envelope.clone(),
                }
            } else {
                Kind::ToParticipant {
                    p,
                    envelope: envelope.clone(),
                }
            };
            self.schedule(self.now + delay, kind);
        }
    }

    /// Sends what the coordinator queued, handles its events, re-arms its timer.
    fn drain_coordinator(&mut self) {
        // Handling an event can submit a new request, which queues new transmits: loop until
        // the coordinator has nothing more to say at this instant.
        loop {
            let mut progressed = false;
            while let Some(t) = self.timed(|c| c.poll_transmit()) {
                progressed = true;
                let Some(&p) = self.by_id.get(&t.to) else {
                    continue;
                };
                self.log(format!(
                    "send c->{} #{} {}",
                    self.nodes[p].name,
                    t.envelope.id,
                    kind_of(&t.envelope.msg)
                ));
                self.transmit(p, false, t.envelope, 0);
            }
            while let Some(e) = self.timed(|c| c.poll_event()) {
                progressed = true;
                self.on_event(e);
            }
            if !progressed {
                break;
            }
        }
        if let Some(at) = self.coordinator.poll_timeout() {
            let at = at.saturating_duration_since(self.base).as_nanos() as Nanos;
            if self.wake_at.is_none_or(|w| at < w || w <= self.now) {
                self.wake_at = Some(at);
                self.schedule(at.max(self.now), Kind::CoordinatorWake);
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::SignDone {
                session, result, ..
            } => {
                let Some(p) = self.pending.remove(&session) else {
                    return;
                };
                self.by_message.remove(&p.message);
                // Like the client library: an attempt that failed after round 2 began is sent
                // again as a new request (a new id: each signer signs a request at most once).
                if matches!(
                    result,
                    Err(conclave_coordinator::SignError::AttemptFailed { .. })
                ) && self.now < p.deadline
                    && p.tries < 3
                {
                    self.log(format!("retry s{} as a new request", session.0));
                    self.report.retries += 1;
                    self.resubmit(p);
                    return;
                }
                let latency = self.now - p.submitted;
                if self.now > p.deadline {
                    self.violation(
                        ViolationKind::MissedDeadline,
                        format!(
                            "session {} ended {} µs after its deadline",
                            session.0,
                            (self.now - p.deadline) / 1000
                        ),
                    );
                }
                match result {
                    Ok(o) => {
                        let message = &p.message;
                        let sig = ed25519_dalek::Signature::from_bytes(&o.signature);
                        let key = self.groups.get(p.group).map(|(_, k)| *k);
                        if key.is_none_or(|k| {
                            o.public_key != k.to_bytes() || k.verify_strict(message, &sig).is_err()
                        }) {
                            self.violation(
                                ViolationKind::UnverifiedSignature,
                                format!("session {}", session.0),
                            );
                        }
                        for name in &o.signers {
                            if let Some(i) = self.nodes.iter().position(|n| &n.name == name) {
                                if p.invalid_senders.contains(&i) {
                                    self.violation(ViolationKind::CulpritMissed, format!("session {}: {name} sent an invalid share yet is a signer", session.0));
                                }
                            }
                        }
                        self.log(format!(
                            "done s{} ok attempts={} signers={}",
                            session.0,
                            o.attempts,
                            o.signers.join(",")
                        ));
                        self.report.record_ok(latency, o.attempts);
                    }
                    Err(err) => {
                        self.log(format!("done s{} err {}", session.0, err.code()));
                        self.report.record_err(latency, &err);
                    }
                }
                self.submit_next();
            }
            Event::CulpritDetected {
                session,
                node,
                name,
                ..
            } => {
                self.log(format!("culprit s{} {name}", session.0));
                *self.report.culprits.entry(name.clone()).or_default() += 1;
                let idx = self.by_id.get(&node).copied();
                let guilty = idx.is_some_and(|i| {
                    self.pending
                        .get(&session)
                        .is_some_and(|p| p.invalid_senders.contains(&i))
                });
                if !guilty {
                    self.violation(
                        ViolationKind::HonestAccused,
                        format!(
                            "session {}: {name} named culprit without sending an invalid share",
                            session.0
                        ),
                    );
                }
            }
            Event::StaleEpoch { name, .. } => {
                self.log(format!("stale-epoch {name}"));
            }
            Event::Frozen { name, .. } => {
                self.log(format!("frozen {name}"));
            }
        }
    }

    fn submit_next(&mut self) {
        if self.submitted >= self.scenario.requests {
            return;
        }
        self.submitted += 1;
        let timeout = Duration::from_millis(self.scenario.request_timeout_ms);
        // Messages are numbered by submission (a retried one keeps its message).
        let next_id = self.report.requests_submitted + 1;
        let message = message_for(next_id, self.scenario.message_bytes);
        self.report.requests_submitted += 1;
        // Drawn only with several groups, so one-group scenarios keep their client stream.
        let group = match (self.groups.len(), self.scenario.group_choice) {
            (0 | 1, _) | (_, crate::scenario::GroupChoice::Hot) => 0,
            (g, crate::scenario::GroupChoice::Random) => {
                (self.client_rng.next_u64() % g as u64) as usize
            }
        };
        let pending = Pending {
            submitted: self.now,
            deadline: self.now + timeout.as_nanos() as Nanos,
            message,
            group,
            tries: 0,
            invalid_senders: BTreeSet::new(),
        };
        self.resubmit(pending);
    }

    /// Submits `p.message` as a new signed request, due at `p.deadline`.
    fn resubmit(&mut self, p: Pending) {
        let now = self.instant();
        let timeout = Duration::from_nanos(p.deadline.saturating_sub(self.now));
        let mut request_id = [0u8; 16];
        self.client_rng.fill_bytes(&mut request_id);
        let unix = self.unix_now();
        let request = conclave_protocol::request::SignRequestBody {
            group: self
                .groups
                .get(p.group)
                .map(|(g, _)| g.clone())
                .unwrap_or_else(|| self.groups[0].0.clone()),
            epoch: 1,
            message: conclave_protocol::request::MessageRef::Full(p.message.clone()),
            kind: conclave_policy::classify(&p.message).name(),
            request_id,
            not_after: unix + timeout.as_secs() + 60,
        }
        .sign(&self.client);
        let Ok(request) = request else {
            self.violation(
                ViolationKind::UnverifiedSignature,
                "could not sign a request".into(),
            );
            return;
        };
        let msg = p.message.clone();
        let sid = self.timed(|c| c.submit(now, unix, request, msg, Some(timeout)));
        self.by_message.insert(p.message.clone(), sid);
        self.pending.insert(
            sid,
            Pending {
                invalid_senders: BTreeSet::new(),
                tries: p.tries + 1,
                ..p
            },
        );
        self.log(format!("submit s{}", sid.0));
    }

    /// The simulated wall clock: a fixed Unix time plus the virtual time elapsed.
    fn unix_now(&self) -> u64 {
        SIM_UNIX_EPOCH + self.now / 1_000_000_000
    }

    fn deliver_to_participant(&mut self, p: usize, envelope: Envelope) {
        let coordinator_id = self.coordinator_id;
        let now = self.instant();
        let skew: i64 = self
            .scenario
            .skew
            .iter()
            .filter(|s| s.participant == p + 1)
            .map(|s| s.offset_secs)
            .sum();
        let unix = self.unix_now().saturating_add_signed(skew);
        let node = &mut self.nodes[p];
        let Some(state) = node.state.as_mut() else {
            self.log(format!(
                "drop crashed {} #{}",
                self.nodes[p].name, envelope.id
            ));
            return;
        };
        if let Some((Behaviour::Selective, rate)) = node.behaviour {
            if !self.rng.gen_bool(rate) {
                self.log(format!("ignore {} #{}", self.nodes[p].name, envelope.id));
                return;
            }
        }
        let request_package = match &envelope.msg {
            Message::Sign {
                signing_package, ..
            } => Some(signing_package.clone()),
            _ => None,
        };
        let id = envelope.id;
        let refuse = matches!(node.behaviour, Some((Behaviour::RefuseCommitments, _)))
            && request_package.is_some();
        let mut reply = if refuse {
            // Keeps its nonce (it never signs) and refuses, as if it did not know the commitment.
            Envelope {
                id,
                msg: Message::Refused(Refusal::UnknownCommitment),
            }
        } else {
            let started = std::time::Instant::now();
            state.handle(now, unix, coordinator_id, envelope, &mut node.rng);
            let reply = state.poll_transmit();
            self.sm_time += started.elapsed();
            match reply {
                Some(t) => t.envelope,
                None => return,
            }
        };
        let node = &mut self.nodes[p];
        if let Message::Commitments { entries, .. } = &reply.msg {
            for e in entries {
                self.handed_out
                    .insert((p, node.incarnation, e.id), e.commitments);
            }
        }
        let mut invalid = false;
        if let Message::SignatureShare {
            share,
            commitment_id,
        } = &mut reply.msg
        {
            // Invariant: a nonce signs at most once. The commitment is known by the bytes the
            // participant handed out under this id; no parsing needed.
            if let Some(c) = self
                .handed_out
                .remove(&(p, node.incarnation, *commitment_id))
            {
                if !self.used_nonces.insert((p, c)) {
                    let name = node.name.clone();
                    self.violation(
                        ViolationKind::NonceReuse,
                        format!("{name} signed twice with one commitment"),
                    );
                }
            }
            let node = &mut self.nodes[p];
            match node.behaviour {
                Some((Behaviour::InvalidShares, _)) => {
                    conclave_participant::corrupt_share(share);
                    invalid = true;
                }
                Some((Behaviour::Replay, _)) => {
                    // A duplicated request (also one delivered again after later ones) gets the
                    // participant's remembered answer again: the replayer makes the same choice
                    // for it as the first time, consistently, per commitment.
                    let substitute = match node.replay_decisions.get(commitment_id) {
                        Some(decided) => decided.clone(),
                        None => {
                            let old = node.last_share.replace(share.clone());
                            // The same share again is no substitute.
                            let decided = old.filter(|o| o != share);
                            if node.replay_decisions.len() >= 100_000 {
                                node.replay_decisions.clear();
                            }
                            node.replay_decisions
                                .insert(*commitment_id, decided.clone());
                            decided
                        }
                    };
                    if let Some(old) = substitute {
                        *share = old;
                        invalid = true;
                    }
                }
                _ => {}
            }
        }
        if invalid {
            // Remember which session this invalid share belongs to (for the culprit invariants).
            let sid = request_package
                .as_ref()
                .and_then(|pkg| self.by_message.get(&pkg.message).copied());
            if let Some(pend) = sid.and_then(|sid| self.pending.get_mut(&sid)) {
                pend.invalid_senders.insert(p);
            }
        }
        let node = &mut self.nodes[p];
        let replay_old = matches!(node.behaviour, Some((Behaviour::Replay, _)))
            .then(|| node.last_reply.replace(reply.clone()))
            .flatten();
        let slow = node.slow;
        self.log(format!(
            "reply {}->c #{} {}",
            self.nodes[p].name,
            reply.id,
            kind_of(&reply.msg)
        ));
        self.transmit(p, true, reply, slow);
        if let Some(old) = replay_old {
            self.log(format!(
                "replay {}->c #{} {}",
                self.nodes[p].name,
                old.id,
                kind_of(&old.msg)
            ));
            self.transmit(p, true, old, slow);
        }
    }

    /// Runs to the end and returns the report.
    pub fn run(mut self) -> Report {
        let wall = std::time::Instant::now();
        for p in 0..self.nodes.len() {
            self.nodes[p].connected = true;
            let now = self.instant();
            self.coordinator.peer_up(now, self.nodes[p].id);
        }
        for _ in 0..self.scenario.concurrency {
            self.submit_next();
        }
        self.drain_coordinator();
        let max_events =
            200 * self.scenario.requests as u64 * self.scenario.participants as u64 + 100_000;
        while let Some((at, kind)) = self.queue.pop() {
            self.events += 1;
            if self.events > max_events {
                self.violation(
                    ViolationKind::Livelock,
                    format!("more than {max_events} events"),
                );
                break;
            }
            self.now = at;
            let now = self.instant();
            match kind {
                Kind::ToParticipant { p, envelope } => self.deliver_to_participant(p, envelope),
                Kind::ToCoordinator { p, envelope } => {
                    let from = self.nodes[p].id;
                    self.timed(|c| c.handle(now, from, envelope));
                }
                Kind::CoordinatorWake => {
                    if self.wake_at == Some(self.now) {
                        self.wake_at = None;
                    }
                    self.timed(|c| c.handle_timeout(now));
                }
                Kind::Crash { p } => {
                    self.log(format!("crash {}", self.nodes[p].name));
                    self.nodes[p].state = None;
                    self.nodes[p].incarnation += 1;
                    let inc = self.nodes[p].incarnation;
                    // No goodbye: the coordinator notices when the connection times out.
                    self.schedule(
                        self.now + self.scenario.connection_timeout_ms * MS,
                        Kind::PeerDown {
                            p,
                            incarnation: inc,
                        },
                    );
                }
                Kind::Restart { p } => {
                    self.log(format!("restart {}", self.nodes[p].name));
                    // The restarted process reads its policy again (its replay memory is empty:
                    // the requests it answered before are past their validity in practice).
                    let policy = conclave_policy::Policy::from_toml(&self.policy_text)
                        .unwrap_or_else(|_| conclave_policy::Policy::deny_all());
                    let node = &mut self.nodes[p];
                    let state = Participant::new(
                        node.shares.clone(),
                        ParticipantConfig::default(),
                        policy,
                        Box::new(conclave_audit::MemoryAudit::default()),
                        &mut node.rng,
                    );
                    node.state = Some(state);
                    node.incarnation += 1;
                    let inc = node.incarnation;
                    if node.connected {
                        // The old connection gets a stateless reset from the new process.
                        node.connected = false;
                        let id = node.id;
                        self.coordinator.peer_down(now, id);
                        self.log(format!("peer-down {}", self.nodes[p].name));
                    }
                    self.schedule(
                        self.now + self.scenario.reconnect_ms * MS,
                        Kind::PeerUp {
                            p,
                            incarnation: inc,
                        },
                    );
                }
                Kind::PeerDown { p, incarnation } => {
                    let node = &mut self.nodes[p];
                    if node.connected
                        && (incarnation == u32::MAX || incarnation == node.incarnation)
                    {
                        node.connected = false;
                        let id = node.id;
                        self.coordinator.peer_down(now, id);
                        self.log(format!("peer-down {}", self.nodes[p].name));
                    }
                }
                Kind::PeerUp { p, incarnation } => {
                    let node = &mut self.nodes[p];
                    let alive = node.state.is_some()
                        && (incarnation == u32::MAX || incarnation == node.incarnation);
                    if !node.connected && alive && !self.partitioned(p) {
                        self.nodes[p].connected = true;
                        let id = self.nodes[p].id;
                        self.coordinator.peer_up(now, id);
                        self.log(format!("peer-up {}", self.nodes[p].name));
                    }
                }
            }
            self.drain_coordinator();
            if self.pending.is_empty() && self.submitted >= self.scenario.requests {
                break;
            }
        }
        if !self.pending.is_empty() {
            let n = self.pending.len();
            self.violation(
                ViolationKind::MissedDeadline,
                format!("{n} requests never ended"),
            );
        }
        self.report.virtual_ms = self.now as f64 / MS as f64;
        self.report.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
        self.report.events = self.events;
        self.report.state_machine_ms = self.sm_time.as_secs_f64() * 1e3;
        let stats = self.coordinator.stats;
        self.report.timeouts = stats.timeouts;
        self.report.trace_hash = hex::encode(self.hasher.finalize());
        self.report.finish();
        self.report
    }
}

/// The message signed by session `id`: deterministic, so the simulator can verify results.
/// Every simulated signer's policy: the simulated client may have the group sign anything.
fn sim_policy<'a>(client: &IdentityKey, groups: impl Iterator<Item = &'a GroupName>) -> String {
    let names: Vec<String> = groups.map(|g| format!("\"{g}\"")).collect();
    format!(
        "[[client]]\nname = \"sim-client\"\nkey = \"{}\"\ngroups = [{}]\nkinds = [\"raw\", \"ssh-auth\", \"transition\"]\nmax_message_bytes = 65536\nrate = \"1000000/s\"\n",
        client.node_id().to_hex(),
        names.join(", ")
    )
}

/// The Unix time at which every simulation starts (2027-01-15).
const SIM_UNIX_EPOCH: u64 = 1_800_000_000;

pub fn message_for(id: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter = 0u64;
    while out.len() < len {
        let block = Sha256::new()
            .chain_update(id.to_be_bytes())
            .chain_update(counter.to_be_bytes())
            .finalize();
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    out
}

fn kind_of(m: &Message) -> &'static str {
    match m {
        Message::Commit { .. } => "commit",
        Message::Commitments { .. } => "commitments",
        Message::Sign { .. } => "sign",
        Message::SignatureShare { .. } => "share",
        Message::Refused(_) => "refused",
        Message::Ping => "ping",
        Message::Pong { .. } => "pong",
        _ => "other",
    }
}

/// Runs a scenario without a trace.
pub fn run(scenario: Scenario) -> Result<Report, ScenarioError> {
    Ok(Simulation::new(scenario)?.run())
}
