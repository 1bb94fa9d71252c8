//! The QUIC driver of the coordinator: keeps a connection to every participant (reconnecting
//! with backoff), serves pinned clients, and loops the state machine: inputs in, requests out,
//! timer armed. All protocol decisions are in the state machine crate.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_audit::{AuditSink, Decision, Durable};
use conclave_client::quic::{self, Pinned, TransportError};
use conclave_protocol::request::SignedRequest;
use conclave_protocol::{
    Envelope, GroupName, IdentityKey, Message, NodeId, PolicyRule, Refusal, Transmit,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use conclave_coordinator::SignError;
use conclave_coordinator::{
    Coordinator, CoordinatorConfig, Event, GroupInfo, ReloadSummary, SessionId, SignOutcome,
};
use conclave_keygen::GroupManifest;
use conclave_policy::Policy;

use crate::metrics::{GroupLabel, GroupSigner, GroupSignerRule, Metrics};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Input {
    Sign {
        request: SignedRequest,
        message: Vec<u8>,
        timeout: Option<Duration>,
        /// The client the connection authenticated (None in process).
        requester: Option<NodeId>,
        reply: oneshot::Sender<Result<SignOutcome, SignError>>,
    },
    Info {
        group: GroupName,
        reply: oneshot::Sender<Option<GroupInfo>>,
    },
    Groups {
        reply: oneshot::Sender<Vec<GroupInfo>>,
    },
    PeerUp {
        node: NodeId,
        conn: quinn::Connection,
    },
    PeerDown {
        node: NodeId,
        stable_id: usize,
    },
    Reply {
        from: NodeId,
        envelope: Envelope,
    },
    Failed {
        id: u64,
    },
    /// A session's audit record reached the disk and its reply went out (wakes a drain).
    Synced,
    Reload {
        update: Box<CoordinatorUpdate>,
        reply: oneshot::Sender<Result<ReloadSummary, String>>,
    },
}

/// What a reload gives a running coordinator: everything it re-reads from its files.
pub struct CoordinatorUpdate {
    pub manifests: Vec<GroupManifest>,
    /// Where each participant listens (`host:port`).
    pub addresses: HashMap<NodeId, String>,
    /// The clients allowed to connect; connections of clients no longer listed are closed.
    pub clients: HashSet<NodeId>,
    pub policy: Option<Policy>,
    pub config: CoordinatorConfig,
}

/// How a coordinator stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Sessions still running when the drain grace ran out (their clients were told
    /// `shutting_down`). Zero after a clean drain.
    pub abandoned: usize,
}

/// In-process access to a running coordinator (what the QUIC client API does over the wire).
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: mpsc::Sender<Input>,
    /// Set once draining: new sign requests are refused as `shutting_down`.
    draining: Arc<AtomicBool>,
    /// The groups served and their epochs, as of the start or the last reload: what a client's
    /// ping is answered with, from its connection task, so that a busy event loop does not
    /// look dead to a client probing for liveness (docs/CLIENTS.md).
    served: Served,
}

type Served = Arc<std::sync::RwLock<Vec<(GroupName, u64)>>>;

impl CoordinatorHandle {
    /// Signs `message` as the client's signed `request` asks. The signature returned has
    /// been verified.
    pub async fn sign(
        &self,
        request: SignedRequest,
        message: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<SignOutcome, SignError> {
        self.sign_for(None, request, message, timeout).await
    }

    async fn sign_for(
        &self,
        requester: Option<NodeId>,
        request: SignedRequest,
        message: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<SignOutcome, SignError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(SignError::Refused(Refusal::ShuttingDown));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Sign {
                request,
                message,
                timeout,
                requester,
                reply,
            })
            .await
            .map_err(|_| SignError::Internal("coordinator stopped"))?;
        rx.await
            .map_err(|_| SignError::Internal("coordinator stopped"))?
    }

    /// The groups served and their epochs, as of the start or the last reload (no round trip
    /// through the event loop).
    pub fn served_groups(&self) -> Vec<(GroupName, u64)> {
        self.served.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Every group served, with its epoch and reachable participants.
    pub async fn groups(&self) -> Vec<GroupInfo> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Groups { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Public facts about a group.
    pub async fn group_info(&self, group: GroupName) -> Option<GroupInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Info { group, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Applies a reload: on an error (a manifest that does not check) nothing changes and the
    /// coordinator goes on serving what it served.
    pub async fn reload(&self, update: CoordinatorUpdate) -> Result<ReloadSummary, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Reload {
                update: Box::new(update),
                reply,
            })
            .await
            .map_err(|_| "coordinator stopped".to_owned())?;
        rx.await.map_err(|_| "coordinator stopped".to_owned())?
    }
}

/// A bound, not yet running coordinator.
pub struct Server {
    endpoint: quinn::Endpoint,
    identity: IdentityKey,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    audit: Option<Box<dyn AuditSink>>,
    metrics: Option<Arc<Metrics>>,
    draining: Arc<AtomicBool>,
    clients: HashSet<NodeId>,
    served: Served,
}

/// What the coordinator's audit record of a session says about its request.
struct Pending {
    reply: oneshot::Sender<Result<SignOutcome, SignError>>,
    record: Decision,
    /// The group label for metrics: a served group's name, or "unknown".
    group: String,
    started: Instant,
}

/// Live client connections and the clients allowed now: a reload closes connections of
/// clients no longer allowed, and a handshake begun under an older list is checked against
/// the current one before it is served.
#[derive(Default)]
struct Clients {
    live: HashMap<usize, (NodeId, quinn::Connection)>,
    allowed: HashSet<NodeId>,
}
type ClientConns = Arc<Mutex<Clients>>;

/// Client requests being answered (until the client has the reply): a drain waits for them
/// before it closes the endpoint, which would discard replies not yet delivered.
type Replying = Arc<std::sync::atomic::AtomicUsize>;

/// How long a stopping coordinator waits for its last replies to reach their clients.
const FLUSH: Duration = Duration::from_secs(3);

fn request_record(request: &SignedRequest, message: &[u8], name: Option<String>) -> Decision {
    let mut d = Decision::new("sign", "signed");
    d.client = name;
    d.client_key = Some(request.client.to_hex());
    d.group = Some(request.body.group.to_string());
    d.epoch = Some(request.body.epoch);
    d.kind = Some(
        request
            .body
            .kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect(),
    );
    d.message_sha256 = Some(hex::encode(Sha256::digest(message)));
    d.request_id = Some(hex::encode(request.body.request_id));
    d
}

/// Fills in the outcome of a session and writes the record. An error means the record is
/// not stored: the caller must not return the signature.
fn record_outcome(
    audit: &mut Option<Box<dyn AuditSink>>,
    record: Decision,
    result: &Result<SignOutcome, SignError>,
) -> Result<(), conclave_audit::AuditError> {
    record_outcome_deferred(audit, record, result)?.wait()
}

/// Like [`record_outcome`], but the fsync is left to the returned token (group commit): the
/// caller returns the result only once [`Durable::wait`] succeeded.
fn record_outcome_deferred(
    audit: &mut Option<Box<dyn AuditSink>>,
    mut record: Decision,
    result: &Result<SignOutcome, SignError>,
) -> Result<Durable, conclave_audit::AuditError> {
    let Some(audit) = audit.as_mut() else {
        return Ok(Durable::done());
    };
    match result {
        Ok(o) => record.detail = Some(format!("signers={}", o.signers.join(","))),
        Err(e) => {
            record.result = format!("refused:{}", e.code());
            if let SignError::NotAuthorized { refusals } = e {
                record.detail = Some(
                    refusals
                        .iter()
                        .map(|(who, rule)| format!("{who}:{}", rule.code()))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
    }
    audit.record_deferred(crate::unix_now(), record)
}

impl Server {
    /// Binds `listen` for clients (port 0 picks a free port), accepting only `clients`. The
    /// same endpoint dials the participants.
    pub fn bind(
        identity: IdentityKey,
        listen: SocketAddr,
        clients: HashSet<NodeId>,
    ) -> Result<Self, TransportError> {
        let cfg = quic::server_config(&identity, Pinned::AnyOf(Arc::new(clients.clone())))?;
        let endpoint = quic::server_endpoint(listen, cfg, &identity)?;
        let (tx, rx) = mpsc::channel(4096);
        Ok(Self {
            endpoint,
            identity,
            tx,
            rx,
            audit: None,
            metrics: None,
            draining: Arc::new(AtomicBool::new(false)),
            clients,
            served: Served::default(),
        })
    }

    /// Counts what happens in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records every session's outcome in `audit`; a signature whose record cannot be written
    /// is not returned (fail closed).
    pub fn with_audit(mut self, audit: Box<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// In-process access, usable once `run` is going.
    pub fn handle(&self) -> CoordinatorHandle {
        CoordinatorHandle {
            tx: self.tx.clone(),
            draining: self.draining.clone(),
            served: self.served.clone(),
        }
    }

    /// Runs until `shutdown` completes with a drain grace, then drains: new connections and
    /// new sign requests are refused (`shutting_down`, so clients fail over at once), sessions
    /// in flight finish within the grace, and it returns. `addresses` says where each
    /// participant listens (`host:port`, resolved at each connection attempt).
    pub async fn run(
        self,
        mut coordinator: Coordinator,
        mut addresses: HashMap<NodeId, String>,
        shutdown: impl Future<Output = Duration>,
    ) -> Stopped {
        let Server {
            endpoint,
            identity,
            tx,
            mut rx,
            mut audit,
            metrics,
            draining,
            clients,
            served,
        } = self;
        let publish = |coordinator: &Coordinator| {
            if let Ok(mut s) = served.write() {
                *s = coordinator
                    .groups()
                    .into_iter()
                    .map(|g| (g.group, g.epoch))
                    .collect();
            }
        };
        publish(&coordinator);
        let identity = Arc::new(identity);
        let mut tasks = tokio::task::JoinSet::new();
        let mut maintained: HashMap<NodeId, (String, tokio::task::AbortHandle)> = HashMap::new();
        let client_conns: ClientConns = Arc::new(Mutex::new(Clients {
            live: HashMap::new(),
            allowed: clients,
        }));
        let handle = CoordinatorHandle {
            tx: tx.clone(),
            draining: draining.clone(),
            served: served.clone(),
        };
        let replying: Replying = Arc::default();
        tasks.spawn(accept_clients(
            endpoint.clone(),
            handle.clone(),
            client_conns.clone(),
            replying.clone(),
        ));
        let request_timeout = Duration::from_secs(30);
        let mut conns: HashMap<NodeId, quinn::Connection> = HashMap::new();
        let mut waiters: HashMap<SessionId, Pending> = HashMap::new();
        let mut membership = None;
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_until: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        // Sessions whose result waits for its audit record's fsync.
        let syncing: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        loop {
            flush(
                &mut coordinator,
                &conns,
                &tx,
                &mut waiters,
                &mut audit,
                metrics.as_ref(),
                request_timeout,
                &syncing,
            );
            if membership != Some(coordinator.membership()) {
                membership = Some(coordinator.membership());
                sync_participants(
                    &mut coordinator,
                    &addresses,
                    &mut maintained,
                    &mut tasks,
                    &mut conns,
                    &endpoint,
                    &identity,
                    &tx,
                );
            }
            if let Some(m) = &metrics {
                m.in_flight
                    .set(i64::try_from(waiters.len()).unwrap_or(i64::MAX));
            }
            if drain_until.is_some() && waiters.is_empty() && syncing.load(Ordering::Acquire) == 0 {
                tracing::info!("drained: every session in flight finished");
                break;
            }
            let deadline = coordinator.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            let drain_deadline = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                grace = &mut shutdown, if drain_until.is_none() => {
                    draining.store(true, Ordering::Relaxed);
                    if let Some(m) = &metrics {
                        m.draining.set(1);
                    }
                    // No new connections; connected clients get `shutting_down` for new requests.
                    endpoint.set_server_config(None);
                    tracing::info!(in_flight = waiters.len(), grace_secs = grace.as_secs_f64(), "draining: refusing new requests, finishing those in flight");
                    drain_until = Some(tokio::time::Instant::now() + grace);
                }
                _ = drain_deadline => {
                    tracing::warn!(abandoned = waiters.len(), "drain grace over: abandoning the sessions still in flight");
                    break;
                }
                _ = gauges.tick() => {
                    if let Some(m) = &metrics {
                        update_gauges(&coordinator, m);
                    }
                }
                _ = sleep => coordinator.handle_timeout(Instant::now()),
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    let now = Instant::now();
                    match input {
                        Input::Sign { request, message, timeout, requester, reply } => {
                            let record = request_record(
                                &request,
                                &message,
                                coordinator.client_name(&request.client),
                            );
                            let group = if coordinator.group_info(&request.body.group).is_some() {
                                request.body.group.to_string()
                            } else {
                                "unknown".to_owned()
                            };
                            // A client presents only requests it signed itself.
                            if requester.is_some_and(|r| r != request.client) {
                                let result = Err(SignError::NotAuthorized {
                                    refusals: vec![("coordinator".into(), PolicyRule::NotRequester)],
                                });
                                let result = match record_outcome(&mut audit, record, &result) {
                                    Ok(()) => result,
                                    Err(_) => {
                                        if let Some(m) = &metrics {
                                            m.audit_write_failures.inc();
                                        }
                                        Err(SignError::AuditFailed)
                                    }
                                };
                                if let Some(m) = &metrics {
                                    count_result(m, &group, &result, Duration::ZERO);
                                }
                                let _ = reply.send(result);
                                continue;
                            }
                            // The session cap is the state machine's (CoordinatorConfig::max_sessions).
                            let id = coordinator.submit(now, crate::unix_now(), request, message, timeout);
                            waiters.insert(id, Pending { reply, record, group, started: now });
                        }
                        Input::Info { group, reply } => {
                            let _ = reply.send(coordinator.group_info(&group));
                        }
                        Input::Groups { reply } => {
                            let _ = reply.send(coordinator.groups());
                        }
                        Input::PeerUp { node, conn } => {
                            // From a connection task a reload stopped since: not ours any more.
                            if !maintained.contains_key(&node) {
                                conn.close(0u32.into(), b"no longer a participant here");
                                continue;
                            }
                            conns.insert(node, conn);
                            coordinator.peer_up(now, node);
                        }
                        Input::PeerDown { node, stable_id } => {
                            if conns.get(&node).is_some_and(|c| c.stable_id() == stable_id) {
                                conns.remove(&node);
                                coordinator.peer_down(now, node);
                            }
                        }
                        Input::Reply { from, envelope } => coordinator.handle(now, from, envelope),
                        Input::Failed { id } => coordinator.handle_failure(now, id),
                        Input::Synced => {}
                        Input::Reload { update, reply } => {
                            let CoordinatorUpdate { manifests, addresses: new_addresses, clients, policy, config } = *update;
                            let result = coordinator.reload(now, manifests).map_err(|e| format!("{e}"));
                            // Who may sign what through this node changed: on the record.
                            if let Some(log) = audit.as_mut() {
                                let mut d = Decision::new(
                                    "reload",
                                    if result.is_ok() { "ok" } else { "refused:bad_config" },
                                );
                                d.detail = Some(match &result {
                                    Ok(s) => format!(
                                        "changed={:?} added={:?} removed={:?} clients={}",
                                        s.changed.iter().map(|(g, a, b)| format!("{g}@{a}->{b}")).collect::<Vec<_>>(),
                                        s.added.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                                        s.removed.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                                        clients.len()
                                    ),
                                    Err(e) => e.clone(),
                                });
                                if let Err(e) = log.record(crate::unix_now(), d) {
                                    tracing::error!(error = %e, "cannot write the audit record of the reload");
                                }
                            }
                            if let Ok(summary) = &result {
                                coordinator.set_config(config);
                                coordinator.set_policy(policy);
                                addresses = new_addresses;
                                // Addresses may have changed for nodes already connected.
                                membership = None;
                                match quic::server_config(&identity, Pinned::AnyOf(Arc::new(clients.clone()))) {
                                    Ok(cfg) if !draining.load(Ordering::Relaxed) => endpoint.set_server_config(Some(cfg)),
                                    Ok(_) => {}
                                    Err(e) => tracing::error!(error = %e, "cannot rebuild the client TLS config; keeping the old client list"),
                                }
                                if let Ok(mut conns) = client_conns.lock() {
                                    conns.allowed = clients.clone();
                                    for (node, conn) in conns.live.values() {
                                        if !clients.contains(node) {
                                            tracing::info!(client = %node.short(), "client no longer allowed: closing its connection");
                                            conn.close(2u32.into(), b"no longer allowed");
                                        }
                                    }
                                }
                                publish(&coordinator);
                                tracing::info!(?summary, "reloaded");
                            }
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
        let abandoned = waiters.len();
        for (_, p) in waiters.drain() {
            let result = Err(SignError::Refused(Refusal::ShuttingDown));
            if let Err(e) = record_outcome(&mut audit, p.record, &result) {
                tracing::error!(error = %e, "cannot write the audit record of an abandoned session");
            }
            let _ = p.reply.send(result);
        }
        // The answers just given are on their way: let them reach their clients.
        let flush_until = Instant::now() + FLUSH;
        while replying.load(Ordering::Relaxed) > 0 && Instant::now() < flush_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tasks.abort_all();
        endpoint.close(0u32.into(), b"shutdown");
        // CONNECTION_CLOSE goes out at once; do not sit through the whole draining period.
        let _ = tokio::time::timeout(Duration::from_millis(250), endpoint.wait_idle()).await;
        Stopped { abandoned }
    }
}

/// Keeps one connection task per participant the state machine names, at the address now
/// configured: new nodes are dialled, nodes no longer named (or moved) are dropped.
#[allow(clippy::too_many_arguments)]
fn sync_participants(
    coordinator: &mut Coordinator,
    addresses: &HashMap<NodeId, String>,
    maintained: &mut HashMap<NodeId, (String, tokio::task::AbortHandle)>,
    tasks: &mut tokio::task::JoinSet<()>,
    conns: &mut HashMap<NodeId, quinn::Connection>,
    endpoint: &quinn::Endpoint,
    identity: &Arc<IdentityKey>,
    tx: &mpsc::Sender<Input>,
) {
    let wanted: HashMap<NodeId, String> = coordinator
        .participants()
        .into_iter()
        .filter_map(|n| match addresses.get(&n) {
            Some(a) => Some((n, a.clone())),
            None => {
                tracing::warn!(node = %n.short(), "no address for participant; it will never be used");
                None
            }
        })
        .collect();
    let mut dropped = Vec::new();
    maintained.retain(|node, (addr, task)| {
        let keep = wanted.get(node) == Some(addr);
        if !keep {
            task.abort();
            if let Some(conn) = conns.remove(node) {
                conn.close(0u32.into(), b"no longer a participant here");
            }
            dropped.push(*node);
        }
        keep
    });
    // Its sessions fail over now, not at a timeout (a moved node reconnects at its new address).
    for node in dropped {
        coordinator.peer_down(Instant::now(), node);
    }
    for (node, addr) in wanted {
        if maintained.contains_key(&node) {
            continue;
        }
        let task = tasks.spawn(maintain(
            endpoint.clone(),
            identity.clone(),
            node,
            addr.clone(),
            tx.clone(),
        ));
        maintained.insert(node, (addr, task));
    }
}

fn update_gauges(coordinator: &Coordinator, m: &Metrics) {
    m.participants_connected
        .set(i64::try_from(coordinator.connected()).unwrap_or(i64::MAX));
    m.in_flight
        .set(i64::try_from(coordinator.active_sessions()).unwrap_or(i64::MAX));
    m.pool_depth.clear();
    for (group, signer, n) in coordinator.pool_depths() {
        m.pool_depth
            .get_or_create(&GroupSigner {
                group: group.to_string(),
                signer,
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    m.group_epoch.clear();
    m.frozen_signers.clear();
    for g in coordinator.groups() {
        let label = GroupLabel {
            group: g.group.to_string(),
        };
        m.group_epoch
            .get_or_create(&label)
            .set(i64::try_from(g.epoch).unwrap_or(i64::MAX));
        m.frozen_signers
            .get_or_create(&label)
            .set(i64::try_from(g.frozen.len()).unwrap_or(i64::MAX));
    }
}

fn count_result(
    m: &Metrics,
    group: &str,
    result: &Result<SignOutcome, SignError>,
    elapsed: Duration,
) {
    let code = match result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    m.sign_done(group, code, elapsed);
    if let Err(SignError::NotAuthorized { refusals }) = result {
        for (signer, rule) in refusals {
            m.policy_refusals_by_signer
                .get_or_create(&GroupSignerRule {
                    group: group.to_owned(),
                    signer: signer.clone(),
                    rule: rule.code().to_owned(),
                })
                .inc();
        }
    }
}

/// Sends what the state machine queued and delivers what it decided.
#[allow(clippy::too_many_arguments)]
fn flush(
    coordinator: &mut Coordinator,
    conns: &HashMap<NodeId, quinn::Connection>,
    tx: &mpsc::Sender<Input>,
    waiters: &mut HashMap<SessionId, Pending>,
    audit: &mut Option<Box<dyn AuditSink>>,
    metrics: Option<&Arc<Metrics>>,
    request_timeout: Duration,
    syncing: &Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let mut progressed = false;
        while let Some(Transmit { to, envelope }) = coordinator.poll_transmit() {
            progressed = true;
            match conns.get(&to) {
                Some(conn) => {
                    let (conn, tx) = (conn.clone(), tx.clone());
                    tokio::spawn(async move {
                        let id = envelope.id;
                        let input = match quic::request(&conn, &envelope, request_timeout).await {
                            Ok(reply) => Input::Reply {
                                from: to,
                                envelope: reply,
                            },
                            Err(e) => {
                                tracing::debug!(node = %to.short(), error = %e, "request failed");
                                Input::Failed { id }
                            }
                        };
                        let _ = tx.send(input).await;
                    });
                }
                None => coordinator.handle_failure(Instant::now(), envelope.id),
            }
        }
        while let Some(event) = coordinator.poll_event() {
            progressed = true;
            match event {
                Event::SignDone {
                    session, result, ..
                } => {
                    if let Some(w) = waiters.remove(&session) {
                        let Pending {
                            reply,
                            record,
                            group,
                            started,
                        } = w;
                        let for_finish = metrics.cloned();
                        let finish = move |result: Result<SignOutcome, SignError>| {
                            if let Some(m) = &for_finish {
                                count_result(m, &group, &result, started.elapsed());
                            }
                            let _ = reply.send(result);
                        };
                        let failed = |m: Option<&Arc<Metrics>>| {
                            if let Some(m) = m {
                                m.audit_write_failures.inc();
                            }
                            Err(SignError::AuditFailed)
                        };
                        match record_outcome_deferred(audit, record, &result) {
                            Ok(durable) if durable.is_done() => finish(result),
                            Ok(durable) => {
                                // Group commit, off the event loop: the result (and any
                                // signature in it) goes out once its record is on disk.
                                syncing.fetch_add(1, Ordering::AcqRel);
                                let (syncing, tx, m) =
                                    (syncing.clone(), tx.clone(), metrics.cloned());
                                tokio::spawn(async move {
                                    let synced =
                                        tokio::task::spawn_blocking(move || durable.wait()).await;
                                    if matches!(synced, Ok(Ok(()))) {
                                        finish(result);
                                    } else {
                                        tracing::error!("the audit record could not be made durable: returning no signature");
                                        finish(failed(m.as_ref()));
                                    }
                                    syncing.fetch_sub(1, Ordering::AcqRel);
                                    let _ = tx.send(Input::Synced).await;
                                });
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot write the audit record: returning no signature");
                                finish(failed(metrics));
                            }
                        }
                    }
                }
                Event::CulpritDetected { group, name, .. } => {
                    tracing::warn!(%group, participant = %name, "culprit: invalid signature share");
                    if let Some(m) = metrics {
                        m.culprits
                            .get_or_create(&GroupSigner {
                                group: group.to_string(),
                                signer: name,
                            })
                            .inc();
                    }
                }
                Event::Frozen { group, name, .. } => {
                    tracing::warn!(%group, participant = %name, "participant frozen by its operator");
                }
                Event::StaleEpoch {
                    group,
                    name,
                    node_epoch,
                    group_epoch,
                    ..
                } => {
                    tracing::warn!(%group, participant = %name, node_epoch, group_epoch, "participant refused: stale epoch");
                }
            }
        }
        if !progressed {
            return;
        }
    }
}

/// Keeps one connection to a participant, reconnecting with exponential backoff.
async fn maintain(
    endpoint: quinn::Endpoint,
    identity: Arc<IdentityKey>,
    node: NodeId,
    addr: String,
    tx: mpsc::Sender<Input>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        match connect_and_ping(&endpoint, &identity, node, &addr).await {
            Ok(conn) => {
                tracing::info!(participant = %node.short(), %addr, "connected to participant");
                backoff = MIN_BACKOFF;
                warned = false;
                let stable_id = conn.stable_id();
                if tx
                    .send(Input::PeerUp {
                        node,
                        conn: conn.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let reason = conn.closed().await;
                tracing::info!(participant = %node.short(), %reason, "participant connection lost");
                if tx.send(Input::PeerDown { node, stable_id }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(participant = %node.short(), %addr, error = %e, "cannot reach participant; retrying with backoff");
                    warned = true;
                } else {
                    tracing::debug!(participant = %node.short(), %addr, error = %e, "still cannot reach participant");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects and waits for the participant's answer to a ping. With TLS 1.3 the client side
/// of a handshake completes before the server has checked the client's certificate, so a
/// participant that does not pin this coordinator would otherwise look connected (and count
/// as reachable) until its refusal arrives; a peer is up only once it has answered.
async fn connect_and_ping(
    endpoint: &quinn::Endpoint,
    identity: &IdentityKey,
    node: NodeId,
    addr: &str,
) -> Result<quinn::Connection, TransportError> {
    let conn = connect(endpoint, identity, node, addr).await?;
    let ping = Envelope {
        id: 0,
        msg: Message::Ping,
    };
    match quic::request(&conn, &ping, Duration::from_secs(5)).await {
        Ok(Envelope {
            msg: Message::Pong { .. },
            ..
        }) => Ok(conn),
        Ok(_) => {
            conn.close(0u32.into(), b"unexpected reply");
            Err(TransportError::UnexpectedReply)
        }
        Err(e) => {
            conn.close(0u32.into(), b"no answer");
            Err(e)
        }
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &IdentityKey,
    node: NodeId,
    addr: &str,
) -> Result<quinn::Connection, TransportError> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| TransportError::Resolve(addr.to_owned()))?;
    let connecting = quic::connect(endpoint, identity, node, resolved);
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| TransportError::Timeout(Duration::from_secs(5)))?
}

async fn accept_clients(
    endpoint: quinn::Endpoint,
    handle: CoordinatorHandle,
    live: ClientConns,
    replying: Replying,
) {
    while let Some(incoming) = endpoint.accept().await {
        let handle = handle.clone();
        let live = live.clone();
        let replying = replying.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%remote, error = %e, "client handshake failed");
                    return;
                }
            };
            let Some(client) = quic::peer_node_id(&conn) else {
                return;
            };
            tracing::debug!(%remote, client = %client.short(), "client connected");
            let stable_id = conn.stable_id();
            {
                let Ok(mut l) = live.lock() else { return };
                if !l.allowed.contains(&client) {
                    tracing::info!(client = %client.short(), "client no longer allowed (reloaded during its handshake)");
                    conn.close(2u32.into(), b"no longer allowed");
                    return;
                }
                l.live.insert(stable_id, (client, conn.clone()));
            }
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let handle = handle.clone();
                let replying = replying.clone();
                replying.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let reply = match quic::read_request(&mut recv).await {
                        Ok(request) => serve_client_request(client, request, &handle).await,
                        Err(_) => Envelope {
                            id: 0,
                            msg: Message::Refused(Refusal::Malformed),
                        },
                    };
                    if quic::write_frame(&mut send, &reply).await.is_ok() {
                        // Until the client has it (or gives up): a stopping coordinator waits.
                        let _ = tokio::time::timeout(FLUSH, send.stopped()).await;
                    }
                    replying.fetch_sub(1, Ordering::Relaxed);
                });
            }
            if let Ok(mut l) = live.lock() {
                l.live.remove(&stable_id);
            }
        });
    }
}

/// Answers one client request through the same in-process handle the library exposes.
async fn serve_client_request(
    client: NodeId,
    request: Envelope,
    handle: &CoordinatorHandle,
) -> Envelope {
    let id = request.id;
    let msg = match request.msg {
        Message::SignRequest {
            request,
            message,
            timeout_ms,
        } => {
            let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
            match handle
                .sign_for(Some(client), *request, message, timeout)
                .await
            {
                Ok(o) => Message::Signature {
                    public_key: o.public_key,
                    signature: o.signature.to_vec(),
                    signers: o.signers,
                },
                Err(SignError::NotAuthorized { refusals }) => Message::NotAuthorized { refusals },
                Err(e) => Message::Refused(e.to_refusal()),
            }
        }
        Message::GroupInfoRequest { group } => match handle.group_info(group).await {
            Some(info) => Message::GroupInfo {
                group: info.group,
                public_key: info.public_key,
                threshold: info.threshold,
                epoch: info.epoch,
                participants: info.participants,
                reachable: u16::try_from(info.reachable).unwrap_or(u16::MAX),
                stale: info.stale,
                frozen: info.frozen,
            },
            None => Message::Refused(Refusal::UnknownGroup),
        },
        // Answered here, not by the event loop: a ping asks whether this process is alive.
        Message::Ping => Message::Pong {
            groups: handle.served_groups(),
        },
        _ => Message::Refused(Refusal::UnexpectedRequest),
    };
    Envelope { id, msg }
}
