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
//! its deadline. A signer that refuses on policy (`NotAuthorized`) is different: it is not
//! blamed or penalised, and the session is not retried with other signers to get around it;
//! it ends with [`SignError::NotAuthorized`] naming every signer that refused and its rule.
//!
//! Every request is the client's [`SignedRequest`], checked here (client signature, message,
//! epoch, the coordinator's own optional policy) and forwarded unchanged in every round-2
//! message, so that each participant decides from its own policy. Participants are known by the identity their connection authenticated, never
//! by anything written in a message.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use conclave_keygen::commitments;
use conclave_keygen::GroupManifest;
use conclave_policy::Policy;
use conclave_protocol::request::SignedRequest;
use conclave_protocol::{
    Envelope, GroupName, Message, NodeId, PolicyRule, Refusal, Transmit, MAX_BATCH,
    MAX_SIGN_MESSAGE_LEN,
};
use conclave_protocol::{SignPackage, WireCommitments};
use frost_ed25519 as frost;

use conclave_protocol::SignError;

/// Tunables of the coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How long one participant may take to answer one request: the whole wait for a commit
    /// batch, and the ceiling of a signer's round-2 timeout.
    pub participant_timeout: Duration,
    /// The floor of a signer's round-2 timeout. Each signer's round-2 timeout follows its own
    /// answer times (three smoothed round trips plus four deviations, doubled after each
    /// timeout), between this floor and `participant_timeout`: a signer that stopped answering
    /// costs a request about its usual answer time, not the full timeout, while a slow link
    /// gets the time it usually needs.
    pub min_participant_timeout: Duration,
    /// Deadline of a request whose client gave none.
    pub default_timeout: Duration,
    /// Longest deadline a client may ask for.
    pub max_timeout: Duration,
    /// Most commitments kept pooled per participant for one group (preprocessing): what a
    /// busy group's pools hold.
    pub pool_target: u16,
    /// Commitments kept pooled per participant for a group with no recent request (at most
    /// `pool_target`). A group's pools are sized by its recent demand between the two: with
    /// many groups, idle ones cost little memory and little refill traffic, on either side.
    pub pool_idle: u16,
    /// A pooled commitment older than this is dropped unused (the participants expire unused
    /// nonces after 10 minutes; spending an expired one would cost a round trip).
    pub pool_max_age: Duration,
    /// How long a participant named as culprit is chosen only as a last resort.
    pub culprit_penalty: Duration,
    /// How long a participant that timed out or failed is chosen only as a last resort.
    pub failure_penalty: Duration,
    /// Most signing sessions at once; more are refused as `Overloaded`.
    pub max_sessions: usize,
    /// How long a signer that refused a client on its policy is asked last for that client's
    /// next requests (not a penalty: other clients are unaffected, and it is still asked when
    /// it is needed to reach the threshold).
    pub refusal_memory: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            participant_timeout: Duration::from_secs(2),
            min_participant_timeout: Duration::from_millis(250),
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(120),
            pool_target: 32,
            pool_idle: 1,
            // The participants' nonce TTL (600 s) less the longest request deadline (120 s)
            // and a minute's margin: a commitment taken from the pool is still valid when
            // round 2 is sent.
            pool_max_age: Duration::from_secs(420),
            culprit_penalty: Duration::from_secs(300),
            failure_penalty: Duration::from_secs(5),
            max_sessions: 4096,
            refusal_memory: Duration::from_secs(300),
        }
    }
}

/// Test-only misbehaviour of a compromised coordinator (compiled only with the
/// `fault-injection` feature): what the participants must refuse on their own.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug)]
pub enum Misbehaviour {
    /// Ignores the client's request and signs its own, for another message, with this key.
    Forge(conclave_protocol::IdentityKey),
    /// Claims the client's identity on a request it signed itself with this key.
    Impersonate(conclave_protocol::IdentityKey),
    /// Changes the message after the client signed the request (and after its own checks).
    AlterMessage,
    /// Keeps the first request it sees and sends that one again instead of every later one.
    Replay,
}

/// (client, signer) policy refusals remembered at most.
const MAX_REFUSALS_REMEMBERED: usize = 10_000;

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
    /// A participant refused because its operator froze the group.
    Frozen {
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
    /// Participants whose operators froze this group.
    pub frozen: Vec<String>,
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
    #[error("group {0}: the new manifest differs from the one served but keeps its epoch (a rotation always moves to a new epoch): refused")]
    ChangedWithoutNewEpoch(GroupName),
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
    /// Until when it is a named culprit (an invalid share): chosen after every other signer,
    /// the penalised-for-a-failure ones included.
    culprit_until: Option<Instant>,
    /// (group, epoch) this node does not serve: it answered with another epoch (its newest).
    stale: BTreeMap<(GroupName, u64), u64>,
    /// Groups its operator froze (`conclave freeze`): it refuses them until unfrozen.
    frozen: BTreeSet<GroupName>,
    /// When the node is next asked again whether it still refuses (stale or frozen).
    recheck_at: Option<Instant>,
    /// Its round-2 answer times, from which its round-2 timeout is taken.
    rtt: RttEstimate,
}

/// One signer's round-2 answer times (RFC 6298: smoothed round trip and its mean deviation),
/// and the timeouts in a row since its last answer (each doubles its timeout).
#[derive(Clone, Copy, Debug, Default)]
struct RttEstimate {
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
}

impl RttEstimate {
    fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let dev = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + dev) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        self.backoff = 0;
    }

    /// The timeout: no estimate yet, the ceiling; else 3·srtt + 4·rttvar (RFC 6298's
    /// srtt + 4·rttvar, plus two round trips so that an answer whose packet was lost and
    /// resent by QUIC still arrives in time; at least 10 ms of deviation), doubled per timeout
    /// in a row, within [floor, ceiling].
    fn timeout(&self, floor: Duration, ceiling: Duration) -> Duration {
        let Some(srtt) = self.srtt else {
            return ceiling;
        };
        let rto = srtt * 3 + (self.rttvar * 4).max(Duration::from_millis(10));
        rto.saturating_mul(1 << self.backoff.min(8))
            .clamp(floor.min(ceiling), ceiling)
    }
}

#[derive(Default)]
struct Pool {
    entries: VecDeque<Pooled>,
    fetching: Option<u64>,
}

/// One pooled commitment: the participant's id for it, the checked commitments (for the
/// coordinator's package), their wire form (what the signers are sent) and when they came.
#[derive(Clone, Copy)]
struct Pooled {
    id: u64,
    commitments: frost::round1::SigningCommitments,
    wire: WireCommitments,
    fetched: Instant,
}

/// `Commit` requests under way to one participant at most; more wait in a queue.
const MAX_COMMITS_IN_FLIGHT: usize = 16;

/// `Pool::fetching` of a pool whose `Commit` waits in the queue (no request id is this).
const QUEUED: u64 = u64::MAX;

/// How long one window of a group's demand lasts.
const DEMAND_WINDOW: Duration = Duration::from_secs(10);

/// A group's recent sign requests, counted in two windows of [`DEMAND_WINDOW`]: what its
/// pools are sized by.
#[derive(Clone, Copy, Debug, Default)]
struct Demand {
    since: Option<Instant>,
    current: u32,
    previous: u32,
}

impl Demand {
    fn record(&mut self, now: Instant) {
        match self.since {
            Some(s) if now.saturating_duration_since(s) < DEMAND_WINDOW => {}
            Some(s) => {
                self.previous = if now.saturating_duration_since(s) < DEMAND_WINDOW * 2 {
                    self.current
                } else {
                    0
                };
                self.current = 0;
                self.since = Some(now);
            }
            None => self.since = Some(now),
        }
        self.current = self.current.saturating_add(1);
    }

    /// Requests in the last one to two windows.
    fn recent(&self, now: Instant) -> u32 {
        match self.since {
            None => 0,
            Some(s) => {
                let age = now.saturating_duration_since(s);
                if age < DEMAND_WINDOW {
                    self.current.max(self.previous)
                } else if age < DEMAND_WINDOW * 2 {
                    self.current
                } else {
                    0
                }
            }
        }
    }
}

enum RequestKind {
    Commit {
        group: GroupName,
        epoch: u64,
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
    sent: Instant,
    deadline: Instant,
}

type Collected = BTreeMap<NodeId, Pooled>;

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
    /// The epoch the client's request names: the session uses that epoch's members, keys
    /// and commitments to the end, also when a reload moves the group to a newer epoch.
    epoch: u64,
    message: Vec<u8>,
    /// The client's signed request, forwarded unchanged to every signer.
    request: SignedRequest,
    /// Signers of the current attempt that refused on policy, with their rule.
    denied: Vec<(NodeId, PolicyRule)>,
    deadline: Instant,
    excluded: BTreeSet<NodeId>,
    /// Signers that may have decided on this request already (they answered round 2, or did
    /// not answer it at all). Each signer releases at most one share per request id, so they
    /// are never asked again for this request.
    spent: BTreeSet<NodeId>,
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
    /// Ask nodes that refused as stale or frozen whether they still do.
    Recheck,
}

/// How long a node that refused a group (other epoch, frozen) is left alone before it is
/// asked again: a node that reloads onto the right epoch, or is unfrozen, is back within this.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Epochs a reload replaced, kept while sessions begun on them finish.
    retired: BTreeMap<(GroupName, u64), GroupState>,
    peers: BTreeMap<NodeId, PeerState>,
    pools: BTreeMap<(NodeId, GroupName, u64), Pool>,
    /// Recent requests per group (what its pools are sized by).
    demand: BTreeMap<GroupName, Demand>,
    /// `Commit` asks waiting for room ([`MAX_COMMITS_IN_FLIGHT`]), per participant.
    commit_queue: BTreeMap<NodeId, VecDeque<(GroupName, u64, u16)>>,
    inflight: BTreeMap<u64, InFlight>,
    /// Round-2 requests that timed out (to whom, when sent), newest last: a late answer is
    /// still an answer time, so the signer's estimate learns its slow tail too.
    timed_out: BTreeMap<u64, (NodeId, Instant)>,
    sessions: BTreeMap<SessionId, Session>,
    timers: BTreeSet<(Instant, Timer)>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_request: u64,
    next_session: u64,
    membership: u64,
    policy: Option<Policy>,
    /// (client, signer) → until when the signer is asked last for that client.
    refused: BTreeMap<(NodeId, NodeId), Instant>,
    #[cfg(feature = "fault-injection")]
    fault: Option<Misbehaviour>,
    #[cfg(feature = "fault-injection")]
    captured: Option<(SignedRequest, Vec<u8>)>,
    pub stats: CoordinatorStats,
}

/// Checks and indexes manifests, one per group.
fn group_states(groups: Vec<GroupManifest>) -> Result<BTreeMap<GroupName, GroupState>, SetupError> {
    let mut states = BTreeMap::new();
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
        let state = GroupState {
            info: GroupInfo {
                group: group.clone(),
                public_key,
                threshold: manifest.threshold,
                epoch: manifest.epoch,
                participants: members.iter().map(|m| m.name.clone()).collect(),
                reachable: 0,
                stale: vec![],
                frozen: vec![],
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
    Ok(states)
}

/// What [`Coordinator::reload`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Groups served for the first time.
    pub added: Vec<GroupName>,
    /// Groups no longer served (their sessions still finish).
    pub removed: Vec<GroupName>,
    /// Groups now served at another epoch or with other members: (group, old, new epoch).
    pub changed: Vec<(GroupName, u64, u64)>,
    /// Groups unchanged.
    pub unchanged: Vec<GroupName>,
}

impl GroupState {
    /// Same epoch, key and members (nothing a session depends on differs).
    fn same_as(&self, other: &GroupState) -> bool {
        self.info.epoch == other.info.epoch
            && self.info.public_key == other.info.public_key
            && self.info.threshold == other.info.threshold
            && self.public_key_package == other.public_key_package
            && self.by_node == other.by_node
            && self.by_identifier == other.by_identifier
            && self.info.participants == other.info.participants
    }
}

impl Coordinator {
    /// A coordinator serving `groups`. No participant is connected yet: the driver reports
    /// connections with [`peer_up`](Self::peer_up).
    pub fn new(groups: Vec<GroupManifest>, config: CoordinatorConfig) -> Result<Self, SetupError> {
        let states = group_states(groups)?;
        let mut peers = BTreeMap::new();
        for g in states.values() {
            for m in &g.members {
                peers.entry(m.node).or_insert_with(PeerState::default);
            }
        }
        Ok(Self {
            config,
            groups: states,
            retired: BTreeMap::new(),
            peers,
            pools: BTreeMap::new(),
            demand: BTreeMap::new(),
            commit_queue: BTreeMap::new(),
            inflight: BTreeMap::new(),
            timed_out: BTreeMap::new(),
            sessions: BTreeMap::new(),
            timers: BTreeSet::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_request: 1,
            next_session: 1,
            membership: 0,
            policy: None,
            refused: BTreeMap::new(),
            #[cfg(feature = "fault-injection")]
            fault: None,
            #[cfg(feature = "fault-injection")]
            captured: None,
            stats: CoordinatorStats::default(),
        })
    }

    /// Gives the coordinator a policy of its own, for early refusal (the participants still
    /// decide for themselves).
    pub fn set_policy(&mut self, mut policy: Option<Policy>) {
        if let (Some(new), Some(old)) = (policy.as_mut(), self.policy.as_mut()) {
            new.take_state(old);
        }
        self.policy = policy;
    }

    /// Replaces the tunables (a reload). Sessions already running keep their deadlines.
    pub fn set_config(&mut self, config: CoordinatorConfig) {
        self.config = config;
    }

    /// Serves `manifests` from now on (a reload). Checked as a whole first: on an error
    /// nothing changes. A group whose manifest is unchanged keeps its state (pools,
    /// connections); a group at a new epoch or with new members is served from the new
    /// manifest for every new request, while sessions already begun finish on the epoch
    /// they started with (its commitments and keys are kept until they end). Nodes that are
    /// in no group any more are left for the driver to disconnect ([`participants`]).
    ///
    /// [`participants`]: Self::participants
    pub fn reload(
        &mut self,
        now: Instant,
        manifests: Vec<GroupManifest>,
    ) -> Result<ReloadSummary, SetupError> {
        let mut new = group_states(manifests)?;
        for (name, fresh) in &new {
            if let Some(old) = self.groups.get(name) {
                if fresh.info.epoch == old.info.epoch && !fresh.same_as(old) {
                    return Err(SetupError::ChangedWithoutNewEpoch(name.clone()));
                }
            }
        }
        let mut summary = ReloadSummary::default();
        let old = std::mem::take(&mut self.groups);
        for (name, state) in old {
            match new.remove(&name) {
                Some(fresh) if fresh.same_as(&state) => {
                    summary.unchanged.push(name.clone());
                    self.groups.insert(name, state);
                }
                Some(fresh) => {
                    summary
                        .changed
                        .push((name.clone(), state.info.epoch, fresh.info.epoch));
                    // Refusals about the group's old epoch say nothing about the new one.
                    for p in self.peers.values_mut() {
                        p.stale.retain(|(g, _), _| *g != name);
                    }
                    self.retired.insert((name.clone(), state.info.epoch), state);
                    self.groups.insert(name, fresh);
                }
                None => {
                    summary.removed.push(name.clone());
                    self.retired.insert((name.clone(), state.info.epoch), state);
                }
            }
        }
        for (name, fresh) in new {
            summary.added.push(name.clone());
            self.groups.insert(name, fresh);
        }
        for g in self.groups.values() {
            for m in &g.members {
                if let std::collections::btree_map::Entry::Vacant(e) = self.peers.entry(m.node) {
                    e.insert(PeerState::default());
                    self.membership += 1;
                }
            }
        }
        self.collect_retired();
        // New and changed groups need commitments from nodes already connected.
        let fill: Vec<(NodeId, GroupName)> = summary
            .added
            .iter()
            .chain(summary.changed.iter().map(|(g, _, _)| g))
            .filter_map(|g| self.groups.get(g).map(|s| (g, s)))
            .flat_map(|(g, s)| s.members.iter().map(move |m| (m.node, g.clone())))
            .collect();
        for (node, group) in fill {
            if let Some(epoch) = self.groups.get(&group).map(|g| g.info.epoch) {
                self.refill(now, node, &group, epoch);
            }
        }
        Ok(summary)
    }

    /// Drops retired epochs and pools no session can use any more.
    fn collect_retired(&mut self) {
        let in_use: BTreeSet<(GroupName, u64)> = self
            .sessions
            .values()
            .map(|s| (s.group.clone(), s.epoch))
            .collect();
        self.retired.retain(|k, _| in_use.contains(k));
        let groups = &self.groups;
        let retired = &self.retired;
        self.pools.retain(|(_, g, e), _| {
            groups.get(g).is_some_and(|s| s.info.epoch == *e)
                || retired.contains_key(&(g.clone(), *e))
        });
        self.demand.retain(|g, _| groups.contains_key(g));
        let peers_in_use: BTreeSet<NodeId> = groups
            .values()
            .chain(retired.values())
            .flat_map(|g| g.members.iter().map(|m| m.node))
            .collect();
        let before = self.peers.len();
        self.peers.retain(|n, _| peers_in_use.contains(n));
        if self.peers.len() != before {
            self.membership += 1;
        }
    }

    /// Changes whenever the set of [`participants`](Self::participants) changes: the driver
    /// compares it to connect to new nodes and drop old ones.
    pub fn membership(&self) -> u64 {
        self.membership
    }

    /// The group state a session at `epoch` uses: the current one, or a retired epoch.
    fn state(&self, group: &GroupName, epoch: u64) -> Option<&GroupState> {
        match self.groups.get(group) {
            Some(g) if g.info.epoch == epoch => Some(g),
            _ => self.retired.get(&(group.clone(), epoch)),
        }
    }

    /// The name the coordinator's own policy gives a client, if it has a policy naming it.
    pub fn client_name(&self, key: &NodeId) -> Option<String> {
        self.policy
            .as_ref()
            .and_then(|p| p.client_name(key))
            .map(str::to_owned)
    }

    /// Turns on a test-only misbehaviour.
    #[cfg(feature = "fault-injection")]
    pub fn set_fault(&mut self, fault: Option<Misbehaviour>) {
        self.fault = fault;
    }

    /// Every participant of every group: the nodes the driver should keep connections to.
    pub fn participants(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Public facts about a group.
    pub fn group_info(&self, group: &GroupName) -> Option<GroupInfo> {
        let g = self.groups.get(group)?;
        let epoch = g.info.epoch;
        let reachable = g
            .members
            .iter()
            .filter(|m| self.usable(&m.node, group, epoch))
            .count();
        let key = (group.clone(), epoch);
        let stale = g
            .members
            .iter()
            .filter_map(|m| {
                let e = self.peers.get(&m.node)?.stale.get(&key)?;
                Some((m.name.clone(), *e))
            })
            .collect();
        let frozen = g
            .members
            .iter()
            .filter(|m| {
                self.peers
                    .get(&m.node)
                    .is_some_and(|p| p.frozen.contains(group))
            })
            .map(|m| m.name.clone())
            .collect();
        Some(GroupInfo {
            reachable,
            stale,
            frozen,
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
            .iter()
            .filter(|((n, g, _), _)| *n == node && g == group)
            .map(|(_, p)| p.entries.len())
            .sum()
    }

    /// Pooled commitments of every participant of every group served: (group, name, count).
    pub fn pool_depths(&self) -> Vec<(GroupName, String, usize)> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            for m in &g.members {
                let n = self
                    .pools
                    .get(&(m.node, name.clone(), g.info.epoch))
                    .map_or(0, |p| p.entries.len());
                out.push((name.clone(), m.name.clone(), n));
            }
        }
        out
    }

    /// Participants connected right now.
    pub fn connected(&self) -> usize {
        self.peers.values().filter(|p| p.connected).count()
    }

    /// The name of `node` in `group`, if it is a member.
    pub fn member_name(&self, group: &GroupName, node: &NodeId) -> Option<String> {
        let g = self.groups.get(group)?;
        g.by_node
            .get(node)
            .and_then(|&i| g.members.get(i))
            .map(|m| m.name.clone())
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Starts a signing session for the client's signed `request` over `message` (the full
    /// message, also when the request names only its SHA-512). `unix_now` is the wall-clock
    /// time the coordinator's own policy uses. The end is reported as [`Event::SignDone`].
    pub fn submit(
        &mut self,
        now: Instant,
        unix_now: u64,
        request: SignedRequest,
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
        let group = request.body.group.clone();
        let Some(g) = self.groups.get(&group) else {
            self.finish_early(id, SignError::UnknownGroup);
            return id;
        };
        self.demand.entry(group.clone()).or_default().record(now);
        if message.len() > MAX_SIGN_MESSAGE_LEN {
            self.finish_early(
                id,
                SignError::MessageTooLarge {
                    max: MAX_SIGN_MESSAGE_LEN,
                },
            );
            return id;
        }
        // Early checks: the signers make them again, for themselves.
        let early = if request.verify().is_err() {
            Some(PolicyRule::BadSignature)
        } else if !request.body.message.matches(&message) {
            Some(PolicyRule::MessageMismatch)
        } else if request.body.epoch != g.info.epoch {
            Some(PolicyRule::Epoch)
        } else {
            let epoch = g.info.epoch;
            self.policy
                .as_mut()
                .and_then(|p| p.decide(unix_now, &request, &group, epoch, &message).err())
        };
        if let Some(rule) = early {
            tracing::info!(%group, client = %request.client.short(), rule = rule.code(), "sign request refused by the coordinator");
            self.finish_early(
                id,
                SignError::NotAuthorized {
                    refusals: vec![("coordinator".into(), rule)],
                },
            );
            return id;
        }
        // Once a threshold of the group's members report a newer epoch, the shares of the epoch
        // this coordinator serves are superseded: t old holders could still sign with them,
        // but this coordinator will not ask them to (one member alone cannot trigger this).
        let key = (group.clone(), g.info.epoch);
        let newer: Vec<u64> = g
            .members
            .iter()
            .filter_map(|m| self.peers.get(&m.node)?.stale.get(&key).copied())
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
        let epoch = g.info.epoch;
        #[cfg(feature = "fault-injection")]
        let (request, message) = self.misbehave(request, message);
        let timeout = timeout
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);
        let deadline = now + timeout;
        self.sessions.insert(
            id,
            Session {
                group,
                epoch,
                message,
                request,
                denied: Vec::new(),
                deadline,
                excluded: BTreeSet::new(),
                spent: BTreeSet::new(),
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

    /// What a compromised coordinator does to a request that passed its checks.
    #[cfg(feature = "fault-injection")]
    fn misbehave(&mut self, request: SignedRequest, message: Vec<u8>) -> (SignedRequest, Vec<u8>) {
        use conclave_protocol::request::MessageRef;
        let original = (request.clone(), message.clone());
        match self.fault.clone() {
            None => original,
            Some(Misbehaviour::Forge(key)) => {
                let forged = b"forged by the coordinator".to_vec();
                let mut body = request.body;
                body.message = MessageRef::Full(forged.clone());
                body.kind = "raw".into();
                match body.sign(&key) {
                    Ok(r) => (r, forged),
                    Err(_) => original,
                }
            }
            Some(Misbehaviour::Impersonate(key)) => {
                let client = request.client;
                match request.body.sign(&key) {
                    Ok(mut r) => {
                        r.client = client;
                        (r, message)
                    }
                    Err(_) => original,
                }
            }
            Some(Misbehaviour::AlterMessage) => {
                let mut altered = message;
                altered.extend_from_slice(b" (altered by the coordinator)");
                (request, altered)
            }
            Some(Misbehaviour::Replay) => match &self.captured {
                Some(first) => first.clone(),
                None => {
                    self.captured = Some((request.clone(), message.clone()));
                    (request, message)
                }
            },
        }
    }

    /// A connection to `node` is established.
    pub fn peer_up(&mut self, now: Instant, node: NodeId) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.connected = true;
        peer.stale.clear();
        peer.frozen.clear();
        self.refill_all(now, node);
    }

    /// Tops up `node`'s pools for every group it is a member of, at the epoch served.
    fn refill_all(&mut self, now: Instant, node: NodeId) {
        let groups: Vec<(GroupName, u64)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.by_node.contains_key(&node))
            .map(|(n, g)| (n.clone(), g.info.epoch))
            .collect();
        for (group, epoch) in groups {
            self.refill(now, node, &group, epoch);
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
        self.pools.retain(|(n, _, _), _| *n != node);
        self.commit_queue.remove(&node);
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
        self.handle_reply(now, from, reply);
        self.pump_commits(now);
    }

    fn handle_reply(&mut self, now: Instant, from: NodeId, reply: Envelope) {
        if let Some((to, sent)) = self.timed_out.remove(&reply.id) {
            // The answer to a round-2 request that timed out: too late for its session, but
            // it tells how slow this signer can be.
            if to == from {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.rtt.sample(now.saturating_duration_since(sent));
                }
            }
            return;
        }
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
        self.run_timers(now);
        self.pump_commits(now);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Request(id) => {
                    if let Some((to, sent, sign)) = self
                        .inflight
                        .get(&id)
                        .map(|r| (r.to, r.sent, matches!(r.kind, RequestKind::Sign { .. })))
                    {
                        if sign {
                            self.back_off(to);
                            self.remember_timeout(id, to, sent);
                        }
                        self.stats.timeouts += 1;
                        self.fail_request(now, id, Failure::Timeout);
                    }
                }
                Timer::Session(id) => {
                    if let Some(s) = self.sessions.get(&id) {
                        if !s.denied.is_empty() {
                            self.finish_denied(id);
                            continue;
                        }
                        let reachable = self.reachable(now, &s.group, s.epoch, &s.excluded);
                        let needed = self.threshold(&s.group, s.epoch);
                        let err = if reachable < needed {
                            self.unavailable(&s.group, s.epoch, reachable, needed)
                        } else {
                            SignError::DeadlineExceeded
                        };
                        self.finish(id, Err(err));
                    }
                }
                Timer::Recheck => self.recheck(now),
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

    fn threshold(&self, group: &GroupName, epoch: u64) -> usize {
        self.state(group, epoch)
            .map_or(usize::MAX, |g| usize::from(g.info.threshold))
    }

    fn usable(&self, node: &NodeId, group: &GroupName, epoch: u64) -> bool {
        self.peers.get(node).is_some_and(|p| {
            p.connected
                && !p.frozen.contains(group)
                && !p.stale.contains_key(&(group.clone(), epoch))
        })
    }

    fn reachable(
        &self,
        _now: Instant,
        group: &GroupName,
        epoch: u64,
        excluded: &BTreeSet<NodeId>,
    ) -> usize {
        self.state(group, epoch).map_or(0, |g| {
            g.members
                .iter()
                .filter(|m| !excluded.contains(&m.node) && self.usable(&m.node, group, epoch))
                .count()
        })
    }

    /// Why fewer than `needed` signers are available: frozen by their operators (an incident
    /// control, reported as such), or simply unreachable.
    fn unavailable(
        &self,
        group: &GroupName,
        epoch: u64,
        reachable: usize,
        needed: usize,
    ) -> SignError {
        let names: Vec<String> = self.state(group, epoch).map_or_else(Vec::new, |g| {
            g.members
                .iter()
                .filter(|m| {
                    self.peers
                        .get(&m.node)
                        .is_some_and(|p| p.frozen.contains(group))
                })
                .map(|m| m.name.clone())
                .collect()
        });
        if names.is_empty() {
            SignError::SignerUnavailable { reachable, needed }
        } else {
            SignError::Frozen {
                frozen: names.len(),
                names,
                reachable,
                needed,
            }
        }
    }

    /// Schedules a recheck of a node that refused a group.
    fn schedule_recheck(&mut self, now: Instant, node: NodeId) {
        let at = now + RECHECK_INTERVAL;
        if let Some(p) = self.peers.get_mut(&node) {
            if p.recheck_at.is_none() {
                p.recheck_at = Some(at);
            }
        }
        if !self.timers.iter().any(|(_, t)| *t == Timer::Recheck) {
            self.timers.insert((at, Timer::Recheck));
        }
    }

    /// Asks every connected node that refused a group (stale epoch, frozen) for commitments
    /// again: an answer at the group's epoch puts it back in service (a node that reloaded onto
    /// the new epoch, or was unfrozen, needs no reconnection).
    fn recheck(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut refill = Vec::new();
        let mut next: Option<Instant> = None;
        for (node, p) in self.peers.iter_mut() {
            let Some(at) = p.recheck_at else { continue };
            if !p.connected {
                p.recheck_at = None;
                continue;
            }
            if at > now {
                next = Some(next.map_or(at, |t| t.min(at)));
                continue;
            }
            p.recheck_at = None;
            refill.push(*node);
            for (g, e) in p.stale.keys() {
                due.push((*node, g.clone(), *e));
            }
            for g in &p.frozen {
                if let Some(state) = self.groups.get(g) {
                    due.push((*node, g.clone(), state.info.epoch));
                }
            }
        }
        for (node, group, epoch) in due {
            let key = (node, group.clone(), epoch);
            if self.pools.get(&key).is_some_and(|p| p.fetching.is_some()) {
                continue;
            }
            let count = u16::try_from(self.pool_size(now, &group).clamp(1, usize::from(MAX_BATCH)))
                .unwrap_or(1);
            self.send_commit(now, node, &group, epoch, count);
        }
        // A node whose pool was dropped after a failure is only chosen once it has pooled
        // commitments again: fetch them now rather than never.
        for node in refill {
            self.refill_all(now, node);
        }
        if let Some(at) = next {
            self.timers.insert((at, Timer::Recheck));
        }
    }

    fn send(&mut self, now: Instant, to: NodeId, kind: RequestKind, msg: Message) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        let ceiling = self.config.participant_timeout;
        // The adaptive round-2 timeout only when the request could do without this signer
        // (t others usable): with no one to replace it, waiting is the better bet.
        let spare = |session: &SessionId| {
            self.sessions.get(session).is_some_and(|s| {
                let others = self.reachable(now, &s.group, s.epoch, &s.excluded);
                others > self.threshold(&s.group, s.epoch)
            })
        };
        let timeout = match &kind {
            RequestKind::Sign { session, .. } if spare(session) => {
                self.peers.get(&to).map_or(ceiling, |p| {
                    p.rtt.timeout(self.config.min_participant_timeout, ceiling)
                })
            }
            RequestKind::Sign { .. } | RequestKind::Commit { .. } => ceiling,
        };
        let deadline = now + timeout;
        self.inflight.insert(
            id,
            InFlight {
                to,
                kind,
                sent: now,
                deadline,
            },
        );
        self.timers.insert((deadline, Timer::Request(id)));
        self.outbox.push_back(Transmit {
            to,
            envelope: Envelope { id, msg },
        });
        id
    }

    /// How many commitments to keep pooled per participant for `group` now: `pool_idle` for a
    /// group without recent requests, plus twice its requests of the last 10 to 20 seconds,
    /// at most `pool_target`.
    fn pool_size(&self, now: Instant, group: &GroupName) -> usize {
        let target = usize::from(self.config.pool_target.max(1));
        let idle = usize::from(self.config.pool_idle).min(target);
        let recent = self.demand.get(group).map_or(0, |d| d.recent(now));
        idle.saturating_add(2 * recent as usize).min(target)
    }

    /// Asks `node` for more commitments of `group` at `epoch` if its pool runs low and no
    /// fetch is under way.
    fn refill(&mut self, now: Instant, node: NodeId, group: &GroupName, epoch: u64) {
        if !self.usable(&node, group, epoch) || self.state(group, epoch).is_none() {
            return;
        }
        let waiting = !self.waiting_for_commitment(node, group, epoch).is_empty();
        let target = self.pool_size(now, group).max(usize::from(waiting));
        if target == 0 {
            return;
        }
        let pool = self.pools.entry((node, group.clone(), epoch)).or_default();
        let have = pool.entries.len();
        // Refill below the low-water mark: half the target, or one batch under it for pools
        // larger than two batches (a pool of 10,000 is fetched 256 at a time and kept full).
        let batch = usize::from(MAX_BATCH);
        let low_water = target - (target / 2).min(batch);
        if pool.fetching.is_some() || have >= low_water {
            return;
        }
        let count = u16::try_from((target - have).min(batch)).unwrap_or(MAX_BATCH);
        self.send_commit(now, node, group, epoch, count);
    }

    /// Asks `node` for `count` commitments of `group`, or queues the ask while
    /// [`MAX_COMMITS_IN_FLIGHT`] are under way to it: with many groups, connecting (or a burst
    /// on many cold groups) would otherwise send a `Commit` per group at once, and the last
    /// ones would time out behind the others. An ask a session waits for goes first.
    fn send_commit(
        &mut self,
        now: Instant,
        node: NodeId,
        group: &GroupName,
        epoch: u64,
        count: u16,
    ) {
        if self.commits_in_flight(node) >= MAX_COMMITS_IN_FLIGHT {
            let urgent = !self.waiting_for_commitment(node, group, epoch).is_empty();
            let queue = self.commit_queue.entry(node).or_default();
            if !queue.iter().any(|(g, e, _)| g == group && *e == epoch) {
                if urgent {
                    queue.push_front((group.clone(), epoch, count));
                } else {
                    queue.push_back((group.clone(), epoch, count));
                }
            }
            self.pools
                .entry((node, group.clone(), epoch))
                .or_default()
                .fetching = Some(QUEUED);
            return;
        }
        self.send_commit_now(now, node, group, epoch, count);
    }

    /// `Commit` requests under way to `node`.
    fn commits_in_flight(&self, node: NodeId) -> usize {
        self.inflight
            .values()
            .filter(|r| r.to == node && matches!(r.kind, RequestKind::Commit { .. }))
            .count()
    }

    /// Sends queued asks while there is room (after any answer, failure or timeout).
    fn pump_commits(&mut self, now: Instant) {
        let nodes: Vec<NodeId> = self
            .commit_queue
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(n, _)| *n)
            .collect();
        for node in nodes {
            while self.commits_in_flight(node) < MAX_COMMITS_IN_FLIGHT {
                let Some((group, epoch, count)) = self
                    .commit_queue
                    .get_mut(&node)
                    .and_then(VecDeque::pop_front)
                else {
                    break;
                };
                // Still wanted: the pool is still marked queued (not dropped since), the group
                // still served at that epoch, the node still usable.
                let queued = self
                    .pools
                    .get(&(node, group.clone(), epoch))
                    .is_some_and(|p| p.fetching == Some(QUEUED));
                if queued
                    && self.state(&group, epoch).is_some()
                    && self.usable(&node, &group, epoch)
                {
                    self.send_commit_now(now, node, &group, epoch, count);
                } else if let Some(p) = self.pools.get_mut(&(node, group.clone(), epoch)) {
                    if p.fetching == Some(QUEUED) {
                        p.fetching = None;
                    }
                }
            }
            if self.commit_queue.get(&node).is_some_and(VecDeque::is_empty) {
                self.commit_queue.remove(&node);
            }
        }
    }

    fn send_commit_now(
        &mut self,
        now: Instant,
        node: NodeId,
        group: &GroupName,
        epoch: u64,
        count: u16,
    ) {
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
                epoch,
                count,
            },
            msg,
        );
        self.pools
            .entry((node, group.clone(), epoch))
            .or_default()
            .fetching = Some(id);
    }

    /// Keeps a timed-out round-2 request's sender and send time for its late answer (at most
    /// 4096, the oldest dropped first).
    fn remember_timeout(&mut self, req: u64, to: NodeId, sent: Instant) {
        self.timed_out.insert(req, (to, sent));
        while self.timed_out.len() > 4096 {
            self.timed_out.pop_first();
        }
    }

    /// A round-2 request to `node` timed out: its next one gets twice the time.
    fn back_off(&mut self, node: NodeId) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.rtt.backoff = p.rtt.backoff.saturating_add(1);
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
        let epoch = session.epoch;
        let group = self
            .state(&session.group, epoch)
            .ok_or(SignError::UnknownGroup)?;
        let t = usize::from(group.info.threshold);
        let n = group.members.len().max(1);
        let client = session.request.client;
        let mut candidates: Vec<(bool, bool, bool, bool, usize, NodeId)> = group
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                !session.excluded.contains(&m.node)
                    && !session.spent.contains(&m.node)
                    && self.usable(&m.node, &session.group, epoch)
            })
            .map(|(i, m)| {
                let peer = self.peers.get(&m.node);
                let culprit = peer.and_then(|p| p.culprit_until).is_some_and(|u| u > now);
                let penalized = peer.and_then(|p| p.penalty_until).is_some_and(|u| u > now);
                let empty = self
                    .pools
                    .get(&(m.node, session.group.clone(), epoch))
                    .is_none_or(|p| p.entries.is_empty());
                let refused = self
                    .refused
                    .get(&(client, m.node))
                    .is_some_and(|u| *u > now);
                let rotation = (i + n - (id.0 as usize % n)) % n;
                (culprit, penalized, refused, empty, rotation, m.node)
            })
            .collect();
        // Usable signers for any request (those spent on this one included): fewer than t and
        // the group cannot sign now, whatever the client does.
        let available = group
            .members
            .iter()
            .filter(|m| {
                !session.excluded.contains(&m.node) && self.usable(&m.node, &session.group, epoch)
            })
            .count();
        if available < t {
            return Err(self.unavailable(&session.group, epoch, available, t));
        }
        if candidates.len() < t {
            // Enough signers, but some already answered this request and will not sign it
            // again (replay protection): the client retries with a new request.
            return Err(SignError::AttemptFailed {
                culprits: session
                    .culprits
                    .iter()
                    .filter_map(|n| {
                        group
                            .by_node
                            .get(n)
                            .and_then(|&i| group.members.get(i))
                            .map(|m| m.name.clone())
                    })
                    .collect(),
            });
        }
        candidates.sort();
        let signers = candidates.into_iter().take(t).map(|c| c.5).collect();
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
        let epoch = session.epoch;
        let Phase::Collect { signers, have } = &mut session.phase else {
            return;
        };
        let mut missing = Vec::new();
        for node in signers.iter() {
            if have.contains_key(node) {
                continue;
            }
            let max_age = self.config.pool_max_age;
            let fresh = self
                .pools
                .get_mut(&(*node, group_name.clone(), epoch))
                .and_then(|p| {
                    // Oldest first: drop what the participant may have expired by now.
                    while p
                        .entries
                        .front()
                        .is_some_and(|c| now.saturating_duration_since(c.fetched) > max_age)
                    {
                        p.entries.pop_front();
                    }
                    p.entries.pop_front()
                });
            match fresh {
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
            self.refill(now, *node, &group_name, epoch);
        }
    }

    fn start_round2(&mut self, now: Instant, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let group = match self.groups.get(&session.group) {
            Some(g) if g.info.epoch == session.epoch => g,
            _ => match self.retired.get(&(session.group.clone(), session.epoch)) {
                Some(g) => g,
                None => return,
            },
        };
        let Phase::Collect { have, .. } = std::mem::replace(&mut session.phase, Phase::Select)
        else {
            return;
        };
        let mut commitments = BTreeMap::new();
        let mut wire = Vec::with_capacity(have.len());
        for (node, pooled) in &have {
            let Some(&i) = group.by_node.get(node) else {
                continue;
            };
            let Some(member) = group.members.get(i) else {
                continue;
            };
            commitments.insert(member.identifier, pooled.commitments);
            wire.push(commitments::package_entry(&member.identifier, pooled.wire));
        }
        let package = frost::SigningPackage::new(commitments, &session.message);
        // One package for every signer of this attempt, shared rather than copied.
        let shared = std::sync::Arc::new(SignPackage {
            message: session.message.clone(),
            commitments: wire,
        });
        let (group_name, epoch, attempt) =
            (session.group.clone(), group.info.epoch, session.attempt);
        let request = session.request.clone();
        session.denied.clear();
        let mut waiting = BTreeMap::new();
        for (node, pooled) in have {
            let commitment_id = pooled.id;
            let msg = Message::Sign {
                group: group_name.clone(),
                epoch,
                commitment_id,
                signing_package: shared.clone(),
                request: Box::new(request.clone()),
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
                    epoch: asked_epoch,
                    count,
                },
            ..
        }) = self.inflight.get(&req)
        else {
            self.fail_request(now, req, Failure::BadReply);
            return;
        };
        let (to, asked, asked_epoch, count) = (*to, asked.clone(), *asked_epoch, *count);
        if self.state(&asked, asked_epoch).is_none() {
            // A reload retired that epoch since: the answer is moot, the node did nothing wrong.
            self.inflight.remove(&req);
            self.pools.remove(&(to, asked, asked_epoch));
            return;
        }
        if group != asked
            || epoch != asked_epoch
            || entries.is_empty()
            || entries.len() > usize::from(count)
        {
            self.fail_request(now, req, Failure::BadReply);
            return;
        }
        let mut parsed = Vec::with_capacity(entries.len());
        for e in &entries {
            // A decompression and three doublings per point (see conclave_keygen::commitments):
            // cheap enough to stay on the event loop.
            match commitments::from_wire(&e.commitments) {
                Ok(c) => parsed.push(Pooled {
                    id: e.id,
                    commitments: c,
                    wire: e.commitments,
                    fetched: now,
                }),
                Err(_) => {
                    self.fail_request(now, req, Failure::BadReply);
                    return;
                }
            }
        }
        self.inflight.remove(&req);
        if let Some(p) = self.peers.get_mut(&to) {
            // It answers at this epoch (again): back in service if a recheck was pending.
            if p.stale.remove(&(asked.clone(), asked_epoch)).is_some() | p.frozen.remove(&asked) {
                tracing::info!(group = %asked, epoch = asked_epoch, node = %to.short(), "participant serves the group again");
            }
        }
        let pool = self
            .pools
            .entry((to, asked.clone(), asked_epoch))
            .or_default();
        pool.fetching = None;
        pool.entries.extend(parsed);
        // Sessions waiting in the collect phase for this participant can move on.
        let waiting = self.waiting_for_commitment(to, &asked, asked_epoch);
        for id in waiting {
            self.collect(now, id);
        }
        // A pool larger than one batch fills up in several, while the participant gives as
        // many as asked (fewer means it holds as many nonces for us as it allows).
        if entries.len() == usize::from(count) {
            self.fill(now, to, &asked, asked_epoch);
        }
    }

    /// Asks for the next batch towards the pool target (no low-water mark).
    fn fill(&mut self, now: Instant, node: NodeId, group: &GroupName, epoch: u64) {
        if !self.usable(&node, group, epoch) {
            return;
        }
        let target = self.pool_size(now, group);
        let Some(pool) = self.pools.get(&(node, group.clone(), epoch)) else {
            return;
        };
        let have = pool.entries.len();
        if pool.fetching.is_some() || have >= target {
            return;
        }
        let count = u16::try_from((target - have).min(usize::from(MAX_BATCH))).unwrap_or(MAX_BATCH);
        self.send_commit(now, node, group, epoch, count);
    }

    /// Sessions of `group` in the collect phase still waiting for a commitment from `node`.
    fn waiting_for_commitment(
        &self,
        node: NodeId,
        group: &GroupName,
        epoch: u64,
    ) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                s.group == *group
                    && s.epoch == epoch
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
            sent,
            ..
        }) = self.inflight.remove(&req)
        else {
            self.fail_request(now, req, Failure::BadReply);
            return;
        };
        let answered_in = now.saturating_duration_since(sent);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.attempt != attempt {
            return;
        }
        let group = match self.groups.get(&session.group) {
            Some(g) if g.info.epoch == session.epoch => g,
            _ => match self.retired.get(&(session.group.clone(), session.epoch)) {
                Some(g) => g,
                None => return,
            },
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
        session.spent.insert(to);
        if !session.denied.is_empty() {
            // A co-signer refused on policy: this attempt ends without a signature.
            if waiting.is_empty() {
                self.finish_denied(sid);
            }
            return;
        }
        // A share for another commitment than the one asked for is not this session's.
        let parsed = if commitment_id == commitment {
            frost::round2::SignatureShare::deserialize(share).ok()
        } else {
            None
        };
        match parsed.ok_or(()) {
            Ok(s) => {
                shares.insert(identifier, s);
                if let Some(p) = self.peers.get_mut(&to) {
                    p.rtt.sample(answered_in);
                }
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
        let Some(group) = self.state(&session.group, session.epoch) else {
            return;
        };
        let Phase::Sign {
            package, shares, ..
        } = &session.phase
        else {
            return;
        };
        // The fast path: sum the shares and verify the signature once, strictly (what
        // OpenSSL, OpenSSH and libsodium accept). frost's `aggregate` would verify it first
        // with its own (cofactored) equation; only when the strict check fails are the shares
        // checked one by one to name the culprits.
        let result = match sum_and_verify(
            package,
            shares,
            &group.public_key_package,
            &group.verifying_key,
            &session.message,
        ) {
            Some(signature) => Ok(signature),
            None => frost::aggregate_custom(
                package,
                shares,
                &group.public_key_package,
                frost::CheaterDetection::AllCheaters,
            )
            // Every share checked out, yet the sum did not verify strictly: fail closed.
            .and(Err(frost::Error::InvalidSignature)),
        };
        match result {
            Ok(signature) => {
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
            // Fail closed: never hand out a signature that did not verify.
            Err(frost::Error::InvalidSignature) => self.finish(sid, Err(SignError::Unverified)),
            Err(_) => self.finish(sid, Err(SignError::Internal("aggregation failed"))),
        }
    }

    fn name_culprits(&mut self, now: Instant, sid: SessionId, nodes: Vec<NodeId>) {
        let penalty = self.config.culprit_penalty;
        for node in nodes {
            self.penalize(now, node, penalty);
            if let Some(p) = self.peers.get_mut(&node) {
                let until = now + penalty;
                p.culprit_until = Some(p.culprit_until.map_or(until, |t| t.max(until)));
            }
            self.stats.culprits += 1;
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            session.excluded.insert(node);
            session.culprits.push(node);
            let group = session.group.clone();
            let epoch = session.epoch;
            let name = self
                .state(&group, epoch)
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
        let epoch = session.epoch;
        match std::mem::replace(&mut session.phase, Phase::Select) {
            Phase::Select => {}
            Phase::Collect { have, .. } => {
                for (node, c) in have {
                    if let Some(pool) = self.pools.get_mut(&(node, group.clone(), epoch)) {
                        pool.entries.push_front(c);
                    }
                }
            }
            Phase::Sign { waiting, .. } => {
                for (node, req) in &waiting {
                    if let Some(r) = self.inflight.remove(req) {
                        self.timers.remove(&(r.deadline, Timer::Request(*req)));
                        // Its answer is still on the way: it may have signed this request.
                        session.spent.insert(*node);
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
        if let RequestKind::Sign {
            session, attempt, ..
        } = &request.kind
        {
            if self.on_sign_failure_while_denied(now, node, *session, *attempt, failure) {
                return;
            }
        }
        // A participant that lost its nonces (restart, expiry) refuses our pooled commitments.
        // That is not misbehaviour: the first time in a session, retry with fresh commitments
        // from the same node; a second time, exclude it so a node cannot stall a session.
        let stale_pool = matches!(
            failure,
            Failure::Refused(Refusal::UnknownCommitment | Refusal::InvalidSigningPackage)
        );
        let asked: Option<(GroupName, u64)> = match &request.kind {
            RequestKind::Commit { group, epoch, .. } => Some((group.clone(), *epoch)),
            RequestKind::Sign { session, .. } => self
                .sessions
                .get(session)
                .map(|s| (s.group.clone(), s.epoch)),
        };
        match &failure {
            Failure::Refused(Refusal::EpochMismatch { current }) => {
                if let Some((group, epoch)) = asked {
                    self.mark_stale(now, node, group, epoch, *current);
                }
            }
            Failure::Refused(Refusal::NodeFrozen) => {
                if let Some((group, _)) = asked {
                    self.mark_frozen(now, node, group);
                }
            }
            Failure::Refused(Refusal::UnknownCommitment | Refusal::InvalidSigningPackage) => {
                // Our pooled commitments of this group no longer match the participant's
                // nonces (it expired them, or restarted): drop that pool and let it refill.
                // Only that group's: with many groups, dropping all would refill them all at
                // once; a restart is seen as a lost connection, which drops them all anyway.
                match &asked {
                    Some((g, e)) => {
                        self.pools.remove(&(node, g.clone(), *e));
                    }
                    None => self.pools.retain(|(n, _, _), _| *n != node),
                }
            }
            Failure::Timeout | Failure::Transport | Failure::Refused(Refusal::ShuttingDown) => {
                self.penalize(now, node, failure_penalty);
                // Its pooled commitments may be gone with it: the next attempt that picks it
                // fetches a fresh one first, which proves it alive before round 2 spends any
                // co-signer on the request. A recheck refills its pool if nothing picks it.
                self.pools.retain(|(n, _, _), _| *n != node);
                self.schedule_recheck(now, node);
            }
            Failure::Refused(Refusal::Overloaded)
                if matches!(request.kind, RequestKind::Commit { .. }) =>
            {
                // It holds as many of our nonces as it allows: not a fault, the pool is full
                // for it (pool_target is above its max_outstanding_nonces).
                tracing::warn!(node = %node.short(), "participant holds as many nonces as it allows: pool_target is above its max_outstanding_nonces, or the groups' pools (pool_idle each) reach its max_total_nonces");
            }
            Failure::BadReply | Failure::Refused(_) => {
                self.penalize(now, node, failure_penalty);
            }
        }
        if failure == Failure::Refused(Refusal::AuditFailed) {
            tracing::warn!(node = %node.short(), "signer refused: its audit log cannot be written (it signs nothing until that is fixed)");
        }
        tracing::debug!(node = %node.short(), ?failure, "participant request failed");
        match request.kind {
            RequestKind::Commit { group, epoch, .. } => {
                if let Some(pool) = self.pools.get_mut(&(node, group.clone(), epoch)) {
                    pool.fetching = None;
                }
                let affected = self.waiting_for_commitment(node, &group, epoch);
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
                // A refusal made before the signer's policy ran (stale commitment, bad package,
                // other epoch, frozen) did not use up the request at that signer; anything else
                // may have.
                if !matches!(
                    failure,
                    Failure::Refused(
                        Refusal::UnknownCommitment
                            | Refusal::InvalidSigningPackage
                            | Refusal::EpochMismatch { .. }
                            | Refusal::NodeFrozen
                            | Refusal::ShuttingDown
                    )
                ) {
                    s.spent.insert(node);
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
                        self.remember_timeout(req, r.to, r.sent);
                    }
                    self.stats.timeouts += 1;
                    self.back_off(other);
                    self.penalize(now, other, failure_penalty);
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.excluded.insert(other);
                        s.spent.insert(other);
                    }
                }
                self.restart(now, session);
            }
        }
    }

    /// Handles a failed round-2 request when it is a policy refusal, or when a co-signer of the
    /// same attempt already refused on policy. Returns false when the ordinary failure handling
    /// applies. A policy refusal is not a fault: no penalty, no blame, no retry with others.
    fn on_sign_failure_while_denied(
        &mut self,
        now: Instant,
        node: NodeId,
        sid: SessionId,
        attempt: u32,
        failure: Failure,
    ) -> bool {
        let penalty = self.config.failure_penalty;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        if s.attempt != attempt {
            return false;
        }
        let rule = match failure {
            Failure::Refused(Refusal::NotAuthorized { rule }) => Some(rule),
            _ if !s.denied.is_empty() => None,
            _ => return false,
        };
        let Phase::Sign { waiting, .. } = &mut s.phase else {
            return false;
        };
        waiting.remove(&node);
        let done = waiting.is_empty();
        match rule {
            Some(rule) => {
                tracing::info!(group = %s.group, node = %node.short(), rule = rule.code(), "signer refused the request on its policy");
                s.denied.push((node, rule));
                let client = s.request.client;
                if self.refused.len() >= MAX_REFUSALS_REMEMBERED {
                    self.refused.retain(|_, until| *until > now);
                }
                if self.refused.len() < MAX_REFUSALS_REMEMBERED {
                    self.refused
                        .insert((client, node), now + self.config.refusal_memory);
                }
            }
            None => self.penalize(now, node, penalty),
        }
        if done {
            self.finish_denied(sid);
        }
        true
    }

    fn finish_denied(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let refusals = s
            .denied
            .iter()
            .map(|(node, rule)| {
                let name = self
                    .state(&s.group, s.epoch)
                    .and_then(|g| g.by_node.get(node).and_then(|&i| g.members.get(i)))
                    .map_or_else(|| node.short(), |m| m.name.clone());
                (name, *rule)
            })
            .collect();
        self.finish(sid, Err(SignError::NotAuthorized { refusals }));
    }

    fn mark_stale(
        &mut self,
        now: Instant,
        node: NodeId,
        group: GroupName,
        epoch: u64,
        node_epoch: u64,
    ) {
        let Some(g) = self.state(&group, epoch) else {
            return;
        };
        let name = g
            .by_node
            .get(&node)
            .and_then(|&i| g.members.get(i))
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let group_epoch = g.info.epoch;
        self.pools.remove(&(node, group.clone(), epoch));
        if let Some(p) = self.peers.get_mut(&node) {
            if p.stale.insert((group.clone(), epoch), node_epoch).is_none() {
                tracing::warn!(%group, participant = %name, node_epoch, group_epoch, "participant is on another epoch than the group manifest; it is not used until it serves epoch {group_epoch} (rechecked every second)");
                self.events.push_back(Event::StaleEpoch {
                    group,
                    node,
                    name,
                    node_epoch,
                    group_epoch,
                });
            }
        }
        self.schedule_recheck(now, node);
    }

    fn mark_frozen(&mut self, now: Instant, node: NodeId, group: GroupName) {
        let name = self
            .member_name(&group, &node)
            .unwrap_or_else(|| node.short());
        self.pools
            .retain(|(n, g, _), _| !(*n == node && *g == group));
        if let Some(p) = self.peers.get_mut(&node) {
            if p.frozen.insert(group.clone()) {
                tracing::warn!(%group, participant = %name, "participant is frozen by its operator: it signs nothing for this group until unfrozen");
                self.events.push_back(Event::Frozen { group, node, name });
            }
        }
        self.schedule_recheck(now, node);
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
        if !self.retired.is_empty() {
            self.collect_retired();
        }
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

/// The aggregate of `shares` over `package` if it verifies under `key` with `verify_strict`;
/// `None` otherwise (a share is wrong, or one is missing). The one verification of a
/// signature on the coordinator: nothing leaves without it.
pub fn sum_and_verify(
    package: &frost::SigningPackage,
    shares: &BTreeMap<frost::Identifier, frost::round2::SignatureShare>,
    pubkeys: &frost::keys::PublicKeyPackage,
    key: &ed25519_dalek::VerifyingKey,
    message: &[u8],
) -> Option<[u8; 64]> {
    use curve25519_dalek::Scalar;
    if shares.len() != package.signing_commitments().len()
        || !package
            .signing_commitments()
            .keys()
            .all(|id| shares.contains_key(id))
    {
        return None;
    }
    let binding =
        frost_core::compute_binding_factor_list(package, pubkeys.verifying_key(), &[]).ok()?;
    let r = frost_core::compute_group_commitment(package, &binding)
        .ok()?
        .to_element();
    let mut z = Scalar::ZERO;
    for share in shares.values() {
        let bytes: [u8; 32] = share.serialize().try_into().ok()?;
        z += Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))?;
    }
    let mut signature = [0u8; 64];
    let (r_bytes, z_bytes) = signature.split_at_mut(32);
    r_bytes.copy_from_slice(r.compress().as_bytes());
    z_bytes.copy_from_slice(z.as_bytes());
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .ok()?;
    Some(signature)
}
