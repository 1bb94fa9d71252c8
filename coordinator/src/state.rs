//! The coordinator state machine.
//!
//! Inputs: [`Coordinator::submit`] (a client's sign request), [`Coordinator::handle`] (a reply
//! from an authenticated participant), [`Coordinator::handle_failure`] (a request the transport
//! could not deliver), [`Coordinator::peer_up`] / [`Coordinator::peer_down`] (connection state)
//! and [`Coordinator::handle_timeout`]. Outputs: [`Coordinator::poll_transmit`] (requests to
//! send), [`Coordinator::poll_event`] (finished sessions, culprits, stale nodes) and
//! [`Coordinator::poll_timeout`]. Time comes in as arguments; nothing here reads a clock or
//! touches a socket, so the QUIC driver and the simulator run exactly this code. Every map is
//! ordered (BTreeMap), so the same inputs give the same outputs in the same order.
//!
//! A signing session picks `threshold` reachable participants, takes one pooled round-1
//! commitment from each (fetching a batch when a pool is empty), sends them the signing package,
//! aggregates their shares with cheater detection and verifies the result with
//! `verify_strict`. A participant that times out, refuses or sends an invalid share is
//! excluded from the session and the session starts a new attempt with another subset, until
//! its deadline. Participants are known by the identity their connection authenticated, never
//! by anything written in a message.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use conclave_keygen::GroupManifest;
use conclave_protocol::{
    Envelope, GroupName, Message, NodeId, Refusal, Transmit, MAX_BATCH, MAX_SIGN_MESSAGE_LEN,
};
use frost_ed25519 as frost;

use crate::error::SignError;

/// Tunables of the coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How long one participant may take to answer one request.
    pub participant_timeout: Duration,
    /// Deadline of a request whose client gave none.
    pub default_timeout: Duration,
    /// Longest deadline a client may ask for.
    pub max_timeout: Duration,
    /// Commitments to keep pooled per participant and group (preprocessing).
    pub pool_target: u16,
    /// How long a participant named as culprit is chosen only as a last resort.
    pub culprit_penalty: Duration,
    /// How long a participant that timed out or failed is chosen only as a last resort.
    pub failure_penalty: Duration,
    /// Most signing sessions at once; more are refused as `Overloaded`.
    pub max_sessions: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            participant_timeout: Duration::from_secs(2),
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(120),
            pool_target: 32,
            culprit_penalty: Duration::from_secs(300),
            failure_penalty: Duration::from_secs(5),
            max_sessions: 4096,
        }
    }
}

/// Names one signing session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A verified signature and how it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOutcome {
    pub group: GroupName,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
    /// The participants whose shares made the signature, by name.
    pub signers: Vec<String>,
    /// Attempts used (1 when the first subset succeeded).
    pub attempts: u32,
    /// Participants named as culprits during this session.
    pub culprits: Vec<NodeId>,
}

/// Something the driver or the simulator should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session ended: a signature that verified under the group key, or a typed error.
    SignDone {
        session: SessionId,
        result: Result<SignOutcome, SignError>,
        /// Participants named as culprits during the session, also when it failed.
        culprits: Vec<NodeId>,
    },
    /// A participant sent an invalid signature share (or bytes that are not one).
    CulpritDetected {
        session: SessionId,
        group: GroupName,
        node: NodeId,
        name: String,
    },
    /// A participant is on another epoch than the group manifest.
    StaleEpoch {
        group: GroupName,
        node: NodeId,
        name: String,
        node_epoch: u64,
        group_epoch: u64,
    },
}

/// Public facts about a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: GroupName,
    pub public_key: [u8; 32],
    pub threshold: u16,
    pub epoch: u64,
    pub participants: Vec<String>,
    /// Participants connected and on the group's epoch right now.
    pub reachable: usize,
    /// Participants that answered on another epoch (name, their epoch): refused until they
    /// reconnect on the group's epoch.
    pub stale: Vec<(String, u64)>,
}

/// Counters, for logs, benchmarks and the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub sessions_started: u64,
    pub signatures: u64,
    pub failures: u64,
    pub attempts: u64,
    pub culprits: u64,
    pub timeouts: u64,
}

/// Errors setting up a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("group {0} is configured twice")]
    DuplicateGroup(GroupName),
    #[error("group {group}")]
    Manifest {
        group: GroupName,
        #[source]
        source: conclave_keygen::ManifestError,
    },
}

struct MemberInfo {
    name: String,
    node: NodeId,
    identifier: frost::Identifier,
}

struct GroupState {
    info: GroupInfo,
    members: Vec<MemberInfo>,
    by_identifier: BTreeMap<frost::Identifier, usize>,
    by_node: BTreeMap<NodeId, usize>,
    public_key_package: frost::keys::PublicKeyPackage,
    verifying_key: ed25519_dalek::VerifyingKey,
}

#[derive(Default)]
struct PeerState {
    connected: bool,
    penalty_until: Option<Instant>,
    /// Groups for which this node answered with another epoch: group → its epoch.
    stale: BTreeMap<GroupName, u64>,
}

#[derive(Default)]
struct Pool {
    entries: VecDeque<(u64, frost::round1::SigningCommitments)>,
    fetching: Option<u64>,
}

enum RequestKind {
    Commit {
        group: GroupName,
        count: u16,
    },
    Sign {
        session: SessionId,
        attempt: u32,
        /// The participant's commitment the package asks it to spend; its reply must name it.
        commitment: u64,
    },
}

struct InFlight {
    to: NodeId,
    kind: RequestKind,
    deadline: Instant,
}

type Collected = BTreeMap<NodeId, (u64, frost::round1::SigningCommitments)>;

enum Phase {
    /// Needs a subset of signers.
    Select,
    /// Waiting for a commitment from each of `signers`.
    Collect {
        signers: Vec<NodeId>,
        have: Collected,
    },
    /// Round 2 sent; waiting for shares.
    Sign {
        package: frost::SigningPackage,
        shares: BTreeMap<frost::Identifier, frost::round2::SignatureShare>,
        waiting: BTreeMap<NodeId, u64>,
    },
}

struct Session {
    group: GroupName,
    message: Vec<u8>,
    deadline: Instant,
    excluded: BTreeSet<NodeId>,
    /// Nodes whose stale commitments this session already forgave once.
    forgiven: BTreeSet<NodeId>,
    culprits: Vec<NodeId>,
    attempt: u32,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request(u64),
    Session(SessionId),
}

/// Why a participant's request did not produce a usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Timeout,
    Transport,
    Refused(Refusal),
    BadReply,
}

/// The coordinator's protocol state for all its groups.
pub struct Coordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<GroupName, GroupState>,
    peers: BTreeMap<NodeId, PeerState>,
    pools: BTreeMap<(NodeId, GroupName), Pool>,
    inflight: BTreeMap<u64, InFlight>,
    sessions: BTreeMap<SessionId, Session>,
    timers: BTreeSet<(Instant, Timer)>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_request: u64,
    next_session: u64,
    pub stats: CoordinatorStats,
}

impl Coordinator {
    /// A coordinator serving `groups`. No participant is connected yet: the driver reports
    /// connections with [`peer_up`](Self::peer_up).
    pub fn new(groups: Vec<GroupManifest>, config: CoordinatorConfig) -> Result<Self, SetupError> {
        let mut states = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for manifest in groups {
            let group = manifest.group.clone();
            let err = |source| SetupError::Manifest {
                group: group.clone(),
                source,
            };
            let members = manifest.members().map_err(err)?;
            let public_key_package = manifest.public_key_package().map_err(err)?;
            let public_key = manifest.public_key_bytes().map_err(err)?;
            let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&public_key)
                .map_err(|_| err(conclave_keygen::ManifestError::BadGroupKey))?;
            let members: Vec<MemberInfo> = members
                .into_iter()
                .map(|m| MemberInfo {
                    name: m.name,
                    node: m.node_id,
                    identifier: m.identifier,
                })
                .collect();
            for m in &members {
                peers.entry(m.node).or_insert_with(PeerState::default);
            }
            let state = GroupState {
                info: GroupInfo {
                    group: group.clone(),
                    public_key,
                    threshold: manifest.threshold,
                    epoch: manifest.epoch,
                    participants: members.iter().map(|m| m.name.clone()).collect(),
                    reachable: 0,
                    stale: vec![],
                },
                by_identifier: members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.identifier, i))
                    .collect(),
                by_node: members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.node, i))
                    .collect(),
                members,
                public_key_package,
                verifying_key,
            };
            if states.insert(group.clone(), state).is_some() {
                return Err(SetupError::DuplicateGroup(group));
            }
        }
        Ok(Self {
            config,
            groups: states,
            peers,
            pools: BTreeMap::new(),
            inflight: BTreeMap::new(),
            sessions: BTreeMap::new(),
            timers: BTreeSet::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_request: 1,
            next_session: 1,
            stats: CoordinatorStats::default(),
        })
    }

    /// Every participant of every group: the nodes the driver should keep connections to.
    pub fn participants(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Public facts about a group.
    pub fn group_info(&self, group: &GroupName) -> Option<GroupInfo> {
        let g = self.groups.get(group)?;
        let reachable = g
            .members
            .iter()
            .filter(|m| self.usable(&m.node, group))
            .count();
        let stale = g
            .members
            .iter()
            .filter_map(|m| {
                let e = self.peers.get(&m.node)?.stale.get(group)?;
                Some((m.name.clone(), *e))
            })
            .collect();
        Some(GroupInfo {
            reachable,
            stale,
            ..g.info.clone()
        })
    }

    /// All groups served.
    pub fn groups(&self) -> Vec<GroupInfo> {
        self.groups
            .keys()
            .filter_map(|g| self.group_info(g))
            .collect()
    }

    /// Number of sessions still running.
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Number of pooled commitments for one participant of one group.
    pub fn pooled(&self, node: NodeId, group: &GroupName) -> usize {
        self.pools
            .get(&(node, group.clone()))
            .map_or(0, |p| p.entries.len())
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Starts a signing session. Its end is reported as [`Event::SignDone`].
    pub fn submit(
        &mut self,
        now: Instant,
        group: GroupName,
        message: Vec<u8>,
        timeout: Option<Duration>,
    ) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.stats.sessions_started += 1;
        if self.sessions.len() >= self.config.max_sessions {
            self.finish_early(id, SignError::Refused(Refusal::Overloaded));
            return id;
        }
        let Some(g) = self.groups.get(&group) else {
            self.finish_early(id, SignError::UnknownGroup);
            return id;
        };
        if message.len() > MAX_SIGN_MESSAGE_LEN {
            self.finish_early(
                id,
                SignError::MessageTooLarge {
                    max: MAX_SIGN_MESSAGE_LEN,
                },
            );
            return id;
        }
        // Once a threshold of the group's members report a newer epoch, the shares of the epoch
        // this coordinator serves are superseded: t old holders could still sign with them,
        // but this coordinator will not ask them to (one member alone cannot trigger this).
        let newer: Vec<u64> = g
            .members
            .iter()
            .filter_map(|m| self.peers.get(&m.node)?.stale.get(&group).copied())
            .filter(|e| *e > g.info.epoch)
            .collect();
        if newer.len() >= usize::from(g.info.threshold) {
            let serving = g.info.epoch;
            let newest = newer.iter().copied().max().unwrap_or(serving);
            tracing::warn!(%group, serving, newer = newest, "refusing to sign at a superseded epoch: a threshold of members serve a newer one");
            self.finish_early(
                id,
                SignError::Refused(Refusal::EpochSuperseded {
                    serving,
                    newer: newest,
                }),
            );
            return id;
        }
        let timeout = timeout
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);
        let deadline = now + timeout;
        self.sessions.insert(
            id,
            Session {
                group,
                message,
                deadline,
                excluded: BTreeSet::new(),
                forgiven: BTreeSet::new(),
                culprits: Vec::new(),
                attempt: 0,
                phase: Phase::Select,
            },
        );
        self.timers.insert((deadline, Timer::Session(id)));
        self.advance(now, id);
        id
    }

    /// A connection to `node` is established.
    pub fn peer_up(&mut self, now: Instant, node: NodeId) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.connected = true;
        peer.stale.clear();
        let groups: Vec<GroupName> = self
            .groups
            .iter()
            .filter(|(_, g)| g.by_node.contains_key(&node))
            .map(|(n, _)| n.clone())
            .collect();
        for group in groups {
            self.refill(now, node, &group);
        }
    }

    /// The connection to `node` is gone. Its pooled commitments are dropped (a restarted
    /// participant has lost their nonces) and its requests fail now rather than at their
    /// timeout.
    pub fn peer_down(&mut self, now: Instant, node: NodeId) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.connected = false;
        self.pools.retain(|(n, _), _| *n != node);
        let failed: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.to == node)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            self.fail_request(now, id, Failure::Transport);
        }
    }

    /// A reply from the authenticated participant `from`.
    pub fn handle(&mut self, now: Instant, from: NodeId, reply: Envelope) {
        let Some(request) = self.inflight.get(&reply.id) else {
            tracing::debug!(peer = %from.short(), id = reply.id, "reply to no pending request");
            return;
        };
        if request.to != from {
            tracing::warn!(peer = %from.short(), id = reply.id, "reply to a request sent to another participant; ignored");
            return;
        }
        match reply.msg {
            Message::Refused(refusal) => {
                self.fail_request(now, reply.id, Failure::Refused(refusal))
            }
            Message::Commitments {
                group,
                epoch,
                entries,
            } => self.on_commitments(now, reply.id, group, epoch, entries),
            Message::SignatureShare {
                commitment_id,
                share,
            } => self.on_share(now, reply.id, commitment_id, &share),
            _ => self.fail_request(now, reply.id, Failure::BadReply),
        }
    }

    /// The transport could not deliver request `id` or read its reply.
    pub fn handle_failure(&mut self, now: Instant, id: u64) {
        if self.inflight.contains_key(&id) {
            self.fail_request(now, id, Failure::Transport);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Request(id) => {
                    if self.inflight.contains_key(&id) {
                        self.stats.timeouts += 1;
                        self.fail_request(now, id, Failure::Timeout);
                    }
                }
                Timer::Session(id) => {
                    if let Some(s) = self.sessions.get(&id) {
                        let reachable = self.reachable(now, &s.group, &s.excluded);
                        let needed = self.threshold(&s.group);
                        let err = if reachable < needed {
                            SignError::SignerUnavailable { reachable, needed }
                        } else {
                            SignError::DeadlineExceeded
                        };
                        self.finish(id, Err(err));
                    }
                }
            }
        }
    }

    // ----- outputs ------------------------------------------------------------------------

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ----- internals ----------------------------------------------------------------------

    fn threshold(&self, group: &GroupName) -> usize {
        self.groups
            .get(group)
            .map_or(usize::MAX, |g| usize::from(g.info.threshold))
    }

    fn usable(&self, node: &NodeId, group: &GroupName) -> bool {
        self.peers
            .get(node)
            .is_some_and(|p| p.connected && !p.stale.contains_key(group))
    }

    fn reachable(&self, _now: Instant, group: &GroupName, excluded: &BTreeSet<NodeId>) -> usize {
        self.groups.get(group).map_or(0, |g| {
            g.members
                .iter()
                .filter(|m| !excluded.contains(&m.node) && self.usable(&m.node, group))
                .count()
        })
    }

    fn send(&mut self, now: Instant, to: NodeId, kind: RequestKind, msg: Message) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        let deadline = now + self.config.participant_timeout;
        self.inflight.insert(id, InFlight { to, kind, deadline });
        self.timers.insert((deadline, Timer::Request(id)));
        self.outbox.push_back(Transmit {
            to,
            envelope: Envelope { id, msg },
        });
        id
    }

    /// Asks `node` for more commitments if its pool runs low and no fetch is under way.
    fn refill(&mut self, now: Instant, node: NodeId, group: &GroupName) {
        if !self.usable(&node, group) {
            return;
        }
        let Some(epoch) = self.groups.get(group).map(|g| g.info.epoch) else {
            return;
        };
        let target = self.config.pool_target.clamp(1, MAX_BATCH);
        let pool = self.pools.entry((node, group.clone())).or_default();
        let have = pool.entries.len();
        if pool.fetching.is_some() || have >= usize::from(target).div_ceil(2) {
            return;
        }
        let count = target - u16::try_from(have).unwrap_or(target);
        let msg = Message::Commit {
            group: group.clone(),
            epoch,
            count,
        };
        let id = self.send(
            now,
            node,
            RequestKind::Commit {
                group: group.clone(),
                count,
            },
            msg,
        );
        if let Some(pool) = self.pools.get_mut(&(node, group.clone())) {
            pool.fetching = Some(id);
        }
    }

    fn penalize(&mut self, now: Instant, node: NodeId, for_: Duration) {
        if let Some(p) = self.peers.get_mut(&node) {
            let until = now + for_;
            p.penalty_until = Some(p.penalty_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Moves a session forward as far as it can go without new input.
    fn advance(&mut self, now: Instant, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if matches!(session.phase, Phase::Select) {
            if let Err(e) = self.select(now, id) {
                self.finish(id, Err(e));
                return;
            }
        }
        self.collect(now, id);
    }

    /// Chooses `threshold` signers for a new attempt: usable, not excluded, preferring those
    /// without a penalty and with pooled commitments, rotating by session so load spreads.
    fn select(&mut self, now: Instant, id: SessionId) -> Result<(), SignError> {
        let session = self
            .sessions
            .get(&id)
            .ok_or(SignError::Internal("no session"))?;
        let group = self
            .groups
            .get(&session.group)
            .ok_or(SignError::UnknownGroup)?;
        let t = usize::from(group.info.threshold);
        let n = group.members.len().max(1);
        let mut candidates: Vec<(bool, bool, usize, NodeId)> = group
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                !session.excluded.contains(&m.node) && self.usable(&m.node, &session.group)
            })
            .map(|(i, m)| {
                let penalized = self
                    .peers
                    .get(&m.node)
                    .and_then(|p| p.penalty_until)
                    .is_some_and(|u| u > now);
                let empty = self
                    .pools
                    .get(&(m.node, session.group.clone()))
                    .is_none_or(|p| p.entries.is_empty());
                let rotation = (i + n - (id.0 as usize % n)) % n;
                (penalized, empty, rotation, m.node)
            })
            .collect();
        if candidates.len() < t {
            return Err(SignError::SignerUnavailable {
                reachable: candidates.len(),
                needed: t,
            });
        }
        candidates.sort();
        let signers = candidates.into_iter().take(t).map(|c| c.3).collect();
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(SignError::Internal("no session"))?;
        session.attempt += 1;
        session.phase = Phase::Collect {
            signers,
            have: BTreeMap::new(),
        };
        self.stats.attempts += 1;
        Ok(())
    }

    /// In the collect phase: takes pooled commitments, fetches missing ones, and once every
    /// signer has one, sends round 2.
    fn collect(&mut self, now: Instant, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let group_name = session.group.clone();
        let Phase::Collect { signers, have } = &mut session.phase else {
            return;
        };
        let mut missing = Vec::new();
        for node in signers.iter() {
            if have.contains_key(node) {
                continue;
            }
            match self
                .pools
                .get_mut(&(*node, group_name.clone()))
                .and_then(|p| p.entries.pop_front())
            {
                Some(c) => {
                    have.insert(*node, c);
                }
                None => missing.push(*node),
            }
        }
        let complete = missing.is_empty();
        let signers = signers.clone();
        // Round 2 goes out first; refills of the pools follow it off the critical path.
        if complete {
            self.start_round2(now, id);
        }
        for node in signers.iter() {
            self.refill(now, *node, &group_name);
        }
    }

    fn start_round2(&mut self, now: Instant, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(group) = self.groups.get(&session.group) else {
            return;
        };
        let Phase::Collect { have, .. } = std::mem::replace(&mut session.phase, Phase::Select)
        else {
            return;
        };
        let mut commitments = BTreeMap::new();
        for (node, (_, c)) in &have {
            let Some(&i) = group.by_node.get(node) else {
                continue;
            };
            let Some(member) = group.members.get(i) else {
                continue;
            };
            commitments.insert(member.identifier, *c);
        }
        let package = frost::SigningPackage::new(commitments, &session.message);
        let bytes = match package.serialize() {
            Ok(b) => b,
            Err(_) => {
                self.finish(
                    id,
                    Err(SignError::Internal(
                        "could not serialize the signing package",
                    )),
                );
                return;
            }
        };
        let (group_name, epoch, attempt) =
            (session.group.clone(), group.info.epoch, session.attempt);
        let mut waiting = BTreeMap::new();
        for (node, (commitment_id, _)) in have {
            let msg = Message::Sign {
                group: group_name.clone(),
                epoch,
                commitment_id,
                signing_package: bytes.clone(),
            };
            let req = self.send(
                now,
                node,
                RequestKind::Sign {
                    session: id,
                    attempt,
                    commitment: commitment_id,
                },
                msg,
            );
            waiting.insert(node, req);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.phase = Phase::Sign {
                package,
                shares: BTreeMap::new(),
                waiting,
            };
        }
    }

    fn on_commitments(
        &mut self,
        now: Instant,
        req: u64,
        group: GroupName,
        epoch: u64,
        entries: Vec<conclave_protocol::CommitmentEntry>,
    ) {
        let Some(InFlight {
            to,
            kind:
                RequestKind::Commit {
                    group: asked,
                    count,
                },
            ..
        }) = self.inflight.get(&req)
        else {
            self.fail_request(now, req, Failure::BadReply);
            return;
        };
        let (to, asked, count) = (*to, asked.clone(), *count);
        let expected_epoch = self.groups.get(&asked).map(|g| g.info.epoch);
        if group != asked
            || Some(epoch) != expected_epoch
            || entries.is_empty()
            || entries.len() > usize::from(count)
        {
            self.fail_request(now, req, Failure::BadReply);
            return;
        }
        let mut parsed = Vec::with_capacity(entries.len());
        for e in &entries {
            match frost::round1::SigningCommitments::deserialize(&e.commitments) {
                Ok(c) => parsed.push((e.id, c)),
                Err(_) => {
                    self.fail_request(now, req, Failure::BadReply);
                    return;
                }
            }
        }
        self.inflight.remove(&req);
        let pool = self.pools.entry((to, asked.clone())).or_default();
        pool.fetching = None;
        pool.entries.extend(parsed);
        // Sessions waiting in the collect phase for this participant can move on.
        let waiting = self.waiting_for_commitment(to, &asked);
        for id in waiting {
            self.collect(now, id);
        }
    }

    /// Sessions of `group` in the collect phase still waiting for a commitment from `node`.
    fn waiting_for_commitment(&self, node: NodeId, group: &GroupName) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                s.group == *group
                    && matches!(&s.phase, Phase::Collect { signers, have } if signers.contains(&node) && !have.contains_key(&node))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn on_share(&mut self, now: Instant, req: u64, commitment_id: u64, share: &[u8]) {
        let Some(InFlight {
            to,
            kind:
                RequestKind::Sign {
                    session: sid,
                    attempt,
                    commitment,
                },
            ..
        }) = self.inflight.remove(&req)
        else {
            self.fail_request(now, req, Failure::BadReply);
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.attempt != attempt {
            return;
        }
        let Some(group) = self.groups.get(&session.group) else {
            return;
        };
        let Phase::Sign {
            shares, waiting, ..
        } = &mut session.phase
        else {
            return;
        };
        let Some(identifier) = group
            .by_node
            .get(&to)
            .and_then(|&i| group.members.get(i))
            .map(|m| m.identifier)
        else {
            return;
        };
        waiting.remove(&to);
        // A share for another commitment than the one asked for is not this session's.
        let parsed = if commitment_id == commitment {
            frost::round2::SignatureShare::deserialize(share).ok()
        } else {
            None
        };
        match parsed.ok_or(()) {
            Ok(s) => {
                shares.insert(identifier, s);
            }
            Err(_) => {
                // Bytes that are not a share at all: as much a culprit as an invalid share.
                self.name_culprits(now, sid, vec![to]);
                self.restart(now, sid);
                return;
            }
        }
        if waiting.is_empty() {
            self.aggregate(now, sid);
        }
    }

    fn aggregate(&mut self, now: Instant, sid: SessionId) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let Some(group) = self.groups.get(&session.group) else {
            return;
        };
        let Phase::Sign {
            package, shares, ..
        } = &session.phase
        else {
            return;
        };
        let result = frost::aggregate_custom(
            package,
            shares,
            &group.public_key_package,
            frost::CheaterDetection::AllCheaters,
        );
        match result {
            Ok(signature) => {
                let verified = signature
                    .serialize()
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                    .filter(|bytes| {
                        let sig = ed25519_dalek::Signature::from_bytes(bytes);
                        group
                            .verifying_key
                            .verify_strict(&session.message, &sig)
                            .is_ok()
                    });
                let Some(signature) = verified else {
                    // Fail closed: never hand out a signature that did not verify.
                    self.finish(sid, Err(SignError::Unverified));
                    return;
                };
                let signers = shares
                    .keys()
                    .filter_map(|id| {
                        group
                            .by_identifier
                            .get(id)
                            .and_then(|&i| group.members.get(i))
                    })
                    .map(|m| m.name.clone())
                    .collect();
                let outcome = SignOutcome {
                    group: session.group.clone(),
                    public_key: group.info.public_key,
                    signature,
                    signers,
                    attempts: session.attempt,
                    culprits: session.culprits.clone(),
                };
                self.finish(sid, Ok(outcome));
            }
            Err(frost::Error::InvalidSignatureShare { culprits }) => {
                let nodes: Vec<NodeId> = culprits
                    .iter()
                    .filter_map(|id| {
                        group
                            .by_identifier
                            .get(id)
                            .and_then(|&i| group.members.get(i))
                    })
                    .map(|m| m.node)
                    .collect();
                if nodes.is_empty() {
                    self.finish(sid, Err(SignError::UnknownSigner));
                    return;
                }
                self.name_culprits(now, sid, nodes);
                self.restart(now, sid);
            }
            Err(_) => self.finish(sid, Err(SignError::Internal("aggregation failed"))),
        }
    }

    fn name_culprits(&mut self, now: Instant, sid: SessionId, nodes: Vec<NodeId>) {
        let penalty = self.config.culprit_penalty;
        for node in nodes {
            self.penalize(now, node, penalty);
            self.stats.culprits += 1;
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            session.excluded.insert(node);
            session.culprits.push(node);
            let group = session.group.clone();
            let name = self
                .groups
                .get(&group)
                .and_then(|g| g.by_node.get(&node).and_then(|&i| g.members.get(i)))
                .map(|m| m.name.clone())
                .unwrap_or_default();
            tracing::warn!(%group, participant = %name, node = %node.short(), "invalid signature share: participant named as culprit and excluded");
            self.events.push_back(Event::CulpritDetected {
                session: sid,
                group,
                node,
                name,
            });
        }
    }

    /// Abandons the current attempt and starts a new one. Commitments not yet sent in a round-2
    /// request go back to their pools; requests of the old attempt are forgotten.
    fn restart(&mut self, now: Instant, sid: SessionId) {
        self.abandon_attempt(sid);
        self.advance(now, sid);
    }

    fn abandon_attempt(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let group = session.group.clone();
        match std::mem::replace(&mut session.phase, Phase::Select) {
            Phase::Select => {}
            Phase::Collect { have, .. } => {
                for (node, c) in have {
                    if let Some(pool) = self.pools.get_mut(&(node, group.clone())) {
                        pool.entries.push_front(c);
                    }
                }
            }
            Phase::Sign { waiting, .. } => {
                for req in waiting.values() {
                    if let Some(r) = self.inflight.remove(req) {
                        self.timers.remove(&(r.deadline, Timer::Request(*req)));
                    }
                }
            }
        }
    }

    fn fail_request(&mut self, now: Instant, req: u64, failure: Failure) {
        let Some(request) = self.inflight.remove(&req) else {
            return;
        };
        self.timers.remove(&(request.deadline, Timer::Request(req)));
        let node = request.to;
        let failure_penalty = self.config.failure_penalty;
        // A participant that lost its nonces (restart, expiry) refuses our pooled commitments.
        // That is not misbehaviour: the first time in a session, retry with fresh commitments
        // from the same node; a second time, exclude it so a node cannot stall a session.
        let stale_pool = matches!(
            failure,
            Failure::Refused(Refusal::UnknownCommitment | Refusal::InvalidSigningPackage)
        );
        match &failure {
            Failure::Refused(Refusal::EpochMismatch { current }) => {
                let group = match &request.kind {
                    RequestKind::Commit { group, .. } => Some(group.clone()),
                    RequestKind::Sign { session, .. } => {
                        self.sessions.get(session).map(|s| s.group.clone())
                    }
                };
                if let Some(group) = group {
                    self.mark_stale(node, group, *current);
                }
            }
            Failure::Refused(Refusal::UnknownCommitment | Refusal::InvalidSigningPackage) => {
                // Our pooled commitments no longer match the participant's nonces (it restarted,
                // or expired them): drop the pool and let it refill.
                self.pools.retain(|(n, _), _| *n != node);
            }
            Failure::Timeout | Failure::Transport | Failure::BadReply | Failure::Refused(_) => {
                self.penalize(now, node, failure_penalty);
            }
        }
        tracing::debug!(node = %node.short(), ?failure, "participant request failed");
        match request.kind {
            RequestKind::Commit { group, .. } => {
                if let Some(pool) = self.pools.get_mut(&(node, group.clone())) {
                    pool.fetching = None;
                }
                let affected = self.waiting_for_commitment(node, &group);
                for sid in affected {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.excluded.insert(node);
                    }
                    self.restart(now, sid);
                }
            }
            RequestKind::Sign {
                session, attempt, ..
            } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                if s.attempt != attempt {
                    return;
                }
                if !(stale_pool && s.forgiven.insert(node)) {
                    s.excluded.insert(node);
                }
                // Co-signers of this attempt that are overdue too are as silent as this one:
                // exclude them now rather than discover it one timeout per attempt.
                let overdue: Vec<(NodeId, u64)> = match &s.phase {
                    Phase::Sign { waiting, .. } => waiting
                        .iter()
                        .filter(|(_, req)| {
                            self.inflight.get(req).is_some_and(|r| r.deadline <= now)
                        })
                        .map(|(n, req)| (*n, *req))
                        .collect(),
                    _ => Vec::new(),
                };
                for (other, req) in overdue {
                    if let Some(r) = self.inflight.remove(&req) {
                        self.timers.remove(&(r.deadline, Timer::Request(req)));
                    }
                    self.stats.timeouts += 1;
                    self.penalize(now, other, failure_penalty);
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.excluded.insert(other);
                    }
                }
                self.restart(now, session);
            }
        }
    }

    fn mark_stale(&mut self, node: NodeId, group: GroupName, node_epoch: u64) {
        let Some(g) = self.groups.get(&group) else {
            return;
        };
        let name = g
            .by_node
            .get(&node)
            .and_then(|&i| g.members.get(i))
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let group_epoch = g.info.epoch;
        self.pools.remove(&(node, group.clone()));
        if let Some(p) = self.peers.get_mut(&node) {
            if p.stale.insert(group.clone(), node_epoch).is_none() {
                tracing::warn!(%group, participant = %name, node_epoch, group_epoch, "participant is on another epoch than the group manifest; it is not used until it reconnects on epoch {group_epoch}");
                self.events.push_back(Event::StaleEpoch {
                    group,
                    node,
                    name,
                    node_epoch,
                    group_epoch,
                });
            }
        }
    }

    fn finish_early(&mut self, id: SessionId, err: SignError) {
        self.stats.failures += 1;
        self.events.push_back(Event::SignDone {
            session: id,
            result: Err(err),
            culprits: vec![],
        });
    }

    fn finish(&mut self, id: SessionId, result: Result<SignOutcome, SignError>) {
        self.abandon_attempt(id);
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.timers.remove(&(session.deadline, Timer::Session(id)));
        match &result {
            Ok(_) => self.stats.signatures += 1,
            Err(_) => self.stats.failures += 1,
        }
        self.events.push_back(Event::SignDone {
            session: id,
            result,
            culprits: session.culprits,
        });
    }
}

#[cfg(test)]
mod tests;
