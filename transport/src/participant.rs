//! The QUIC driver of the participant: accepts pinned coordinators, feeds each request stream
//! to the state machine and writes its reply back. All protocol decisions are in the state
//! machine crate; this driver adds what needs IO: decrypting a share again after the share
//! cache TTL dropped it, reloads, the drain on SIGTERM and metrics.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_client::quic::{self, Pinned, TransportError};
use conclave_participant::{Freeze, Participant, ShareChanges};
use conclave_policy::Policy;
use conclave_protocol::{Envelope, GroupName, IdentityKey, Message, NodeId, Refusal};
use frost_ed25519 as frost;

use crate::metrics::{GroupClientRule, GroupLabel, GroupResult, Metrics};

/// Decrypts the share of (group, epoch) again, from the file and passphrase source the node
/// was configured with (used after the share cache TTL dropped it from memory).
pub type ShareLoader =
    Arc<dyn Fn(&GroupName, u64) -> Result<frost::keys::KeyPackage, String> + Send + Sync>;

/// After a share failed to decrypt, how long requests that need it are refused at once
/// instead of running Argon2 again each.
const DECRYPT_BACKOFF: Duration = Duration::from_secs(5);

/// How long a draining participant waits without any request in flight before it stops.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// A bound, not yet running participant server.
pub struct Server {
    endpoint: quinn::Endpoint,
    identity: IdentityKey,
    coordinators: HashSet<NodeId>,
    metrics: Option<Arc<Metrics>>,
    loader: Option<ShareLoader>,
}

/// What a reload gives a running participant.
pub struct ParticipantUpdate {
    pub shares: Vec<(GroupName, u64, frost::keys::KeyPackage)>,
    pub policy: Policy,
    /// The coordinators allowed to connect; connections of coordinators no longer listed are
    /// closed.
    pub coordinators: HashSet<NodeId>,
}

/// Live coordinator connections and the coordinators allowed now (a handshake begun under an
/// older list is checked against the current one before it is served).
#[derive(Default)]
struct Conns {
    live: HashMap<usize, (NodeId, quinn::Connection)>,
    allowed: HashSet<NodeId>,
}

/// Access to a running participant: reload, freeze.
#[derive(Clone)]
pub struct ParticipantHandle {
    state: Arc<Mutex<Participant>>,
    endpoint: quinn::Endpoint,
    identity: Arc<IdentityKey>,
    conns: Arc<Mutex<Conns>>,
    metrics: Option<Arc<Metrics>>,
    loader: Option<ShareLoader>,
    /// One decryption at a time (Argon2 is memory-hard; requests wait for the first).
    decrypting: Arc<tokio::sync::Mutex<()>>,
    /// When decrypting a share last failed: no new attempt within `DECRYPT_BACKOFF`.
    decrypt_failed: Arc<Mutex<HashMap<(GroupName, u64), Instant>>>,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    last_request: Arc<Mutex<Instant>>,
}

impl ParticipantHandle {
    /// Applies a reload. Shares whose group, epoch and key are unchanged keep their nonces,
    /// so sessions in flight finish.
    pub fn reload(&self, update: ParticipantUpdate) -> Result<ShareChanges, String> {
        let cfg = quic::server_config(
            &self.identity,
            Pinned::AnyOf(Arc::new(update.coordinators.clone())),
        )
        .map_err(|e| format!("cannot rebuild the TLS config: {e}"))?;
        let changes = {
            let mut p = self
                .state
                .lock()
                .map_err(|_| "participant state poisoned".to_owned())?;
            let changes = p.set_shares(Instant::now(), update.shares);
            p.set_policy(update.policy);
            changes
        };
        if !self.draining.load(Ordering::Relaxed) {
            self.endpoint.set_server_config(Some(cfg));
        }
        if let Ok(mut conns) = self.conns.lock() {
            conns.allowed = update.coordinators.clone();
            for (node, conn) in conns.live.values() {
                if !update.coordinators.contains(node) {
                    tracing::info!(coordinator = %node.short(), "coordinator no longer allowed: closing its connection");
                    conn.close(2u32.into(), b"no longer allowed");
                }
            }
        }
        self.update_gauges();
        Ok(changes)
    }

    /// Freezes or unfreezes groups at once (the caller persists it first).
    pub fn set_freeze(&self, freeze: Freeze) {
        if let Ok(mut p) = self.state.lock() {
            p.set_freeze(freeze);
        }
        self.update_gauges();
    }

    /// Writes an operator action to the node's audit log.
    pub fn record(&self, decision: conclave_audit::Decision) -> Result<(), String> {
        let mut p = self
            .state
            .lock()
            .map_err(|_| "participant state poisoned".to_owned())?;
        p.record(crate::unix_now(), decision)
            .map_err(|e| e.to_string())
    }

    /// What is frozen now.
    pub fn freeze(&self) -> Freeze {
        self.state
            .lock()
            .map(|p| p.freeze().clone())
            .unwrap_or_default()
    }

    /// The groups and epochs served.
    pub fn groups(&self) -> Vec<(GroupName, u64)> {
        self.state.lock().map(|p| p.groups()).unwrap_or_default()
    }

    /// Unused commitments held for `group` (every epoch).
    pub fn outstanding(&self, group: &GroupName) -> usize {
        self.state.lock().map_or(0, |p| p.outstanding(group))
    }

    fn update_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        let Ok(p) = self.state.lock() else { return };
        m.shares_in_memory
            .set(i64::try_from(p.shares_in_memory()).unwrap_or(i64::MAX));
        m.group_epoch.clear();
        for (g, e) in p.groups() {
            let label = GroupLabel {
                group: g.to_string(),
            };
            let gauge = m.group_epoch.get_or_create(&label);
            gauge.set(gauge.get().max(i64::try_from(e).unwrap_or(i64::MAX)));
        }
        m.frozen.clear();
        let freeze = p.freeze();
        if freeze.all {
            m.frozen
                .get_or_create(&GroupLabel { group: "*".into() })
                .set(1);
        }
        for g in &freeze.groups {
            m.frozen
                .get_or_create(&GroupLabel {
                    group: g.to_string(),
                })
                .set(1);
        }
        m.in_flight
            .set(i64::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }
}

impl Server {
    /// Binds `listen` (port 0 picks a free port), accepting only `coordinators`.
    pub fn bind(
        identity: &IdentityKey,
        listen: SocketAddr,
        coordinators: HashSet<NodeId>,
    ) -> Result<Self, TransportError> {
        let cfg = quic::server_config(identity, Pinned::AnyOf(Arc::new(coordinators.clone())))?;
        Ok(Self {
            endpoint: quic::server_endpoint(listen, cfg, identity)?,
            identity: identity.clone(),
            coordinators,
            metrics: None,
            loader: None,
        })
    }

    /// Counts what happens in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How to decrypt a share again after the share cache TTL dropped it.
    pub fn with_share_loader(mut self, loader: ShareLoader) -> Self {
        self.loader = Some(loader);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The handle of the running participant `participant` (give it to [`run_with`]).
    ///
    /// [`run_with`]: Self::run_with
    pub fn handle_for(&self, participant: Participant) -> ParticipantHandle {
        ParticipantHandle {
            state: Arc::new(Mutex::new(participant)),
            endpoint: self.endpoint.clone(),
            identity: Arc::new(self.identity.clone()),
            conns: Arc::new(Mutex::new(Conns {
                live: HashMap::new(),
                allowed: self.coordinators.clone(),
            })),
            metrics: self.metrics.clone(),
            loader: self.loader.clone(),
            decrypting: Arc::default(),
            decrypt_failed: Arc::default(),
            draining: Arc::default(),
            in_flight: Arc::default(),
            last_request: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Serves until `shutdown` completes, then closes every connection at once.
    pub async fn run(self, participant: Participant, shutdown: impl Future<Output = ()>) {
        let handle = self.handle_for(participant);
        self.run_with(handle, async {
            shutdown.await;
            Duration::ZERO
        })
        .await;
    }

    /// Serves until `shutdown` completes with a drain grace, then drains: no new connections,
    /// new commitments refused (`shutting_down`, so coordinators stop choosing this node),
    /// signature shares for commitments already handed out still served, until no request has
    /// been in flight for a second or the grace runs out. Returns whether it drained cleanly.
    pub async fn run_with(
        self,
        handle: ParticipantHandle,
        shutdown: impl Future<Output = Duration>,
    ) -> bool {
        handle.update_gauges();
        let sweeper = tokio::spawn(sweep(handle.clone()));
        let endpoint = self.endpoint.clone();
        let accept = {
            let handle = handle.clone();
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    tokio::spawn(serve_connection(incoming, handle.clone()));
                }
            }
        };
        let grace = tokio::select! {
            _ = accept => Duration::ZERO,
            grace = shutdown => grace,
        };
        let mut clean = true;
        if !grace.is_zero() {
            handle.draining.store(true, Ordering::Relaxed);
            if let Some(m) = &handle.metrics {
                m.draining.set(1);
            }
            self.endpoint.set_server_config(None);
            tracing::info!(
                grace_secs = grace.as_secs_f64(),
                "draining: no new commitments; finishing requests in flight"
            );
            let until = Instant::now() + grace;
            loop {
                let quiet = handle.in_flight.load(Ordering::Relaxed) == 0
                    && handle
                        .last_request
                        .lock()
                        .map_or(true, |t| t.elapsed() >= DRAIN_QUIET);
                if quiet {
                    tracing::info!("drained");
                    break;
                }
                if Instant::now() >= until {
                    clean = handle.in_flight.load(Ordering::Relaxed) == 0;
                    tracing::warn!(clean, "drain grace over");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        sweeper.abort();
        self.endpoint.close(0u32.into(), b"shutdown");
        // CONNECTION_CLOSE goes out at once; do not sit through the whole draining period.
        let _ = tokio::time::timeout(Duration::from_millis(250), self.endpoint.wait_idle()).await;
        clean
    }
}

/// Calls `handle_timeout` when the state machine asks for it.
async fn sweep(handle: ParticipantHandle) {
    loop {
        let next = handle.state.lock().ok().and_then(|p| p.poll_timeout());
        let wait = next.map_or(Duration::from_secs(60), |t| {
            t.saturating_duration_since(Instant::now())
        });
        // Never sleep past a reload that changed the timers: wake at least every 5 s.
        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
        if let Ok(mut p) = handle.state.lock() {
            p.handle_timeout(Instant::now());
        }
        handle.update_gauges();
    }
}

async fn serve_connection(incoming: quinn::Incoming, handle: ParticipantHandle) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let Some(peer) = quic::peer_node_id(&conn) else {
        conn.close(1u32.into(), b"no identity");
        return;
    };
    tracing::info!(%remote, coordinator = %peer.short(), "coordinator connected");
    let stable_id = conn.stable_id();
    {
        let Ok(mut conns) = handle.conns.lock() else {
            return;
        };
        if !conns.allowed.contains(&peer) {
            tracing::info!(coordinator = %peer.short(), "coordinator no longer allowed (reloaded during its handshake)");
            conn.close(2u32.into(), b"no longer allowed");
            return;
        }
        conns.live.insert(stable_id, (peer, conn.clone()));
    }
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(coordinator = %peer.short(), reason = %e, "coordinator disconnected");
                break;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            // In flight from the request until the coordinator has the reply: a drain waits.
            handle.in_flight.fetch_add(1, Ordering::Relaxed);
            let reply = match quic::read_request(&mut recv).await {
                Ok(request) => {
                    let reply = answer(&handle, peer, request).await;
                    // A commitment refused while draining is no work in flight.
                    if !matches!(reply.msg, Message::Refused(Refusal::ShuttingDown)) {
                        if let Ok(mut t) = handle.last_request.lock() {
                            *t = Instant::now();
                        }
                    }
                    reply
                }
                Err(e) => {
                    tracing::debug!(coordinator = %peer.short(), error = %e, "bad request stream");
                    Envelope {
                        id: 0,
                        msg: Message::Refused(Refusal::Malformed),
                    }
                }
            };
            match quic::write_frame(&mut send, &reply).await {
                Ok(()) => {
                    let _ = tokio::time::timeout(Duration::from_secs(3), send.stopped()).await;
                }
                Err(e) => {
                    tracing::debug!(coordinator = %peer.short(), error = %e, "could not send reply");
                }
            }
            handle.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    if let Ok(mut conns) = handle.conns.lock() {
        conns.live.remove(&stable_id);
    }
}

/// Decrypts again, off the runtime, a share the TTL dropped, when `request` needs it.
async fn restore_if_needed(handle: &ParticipantHandle, request: &Envelope) {
    let needs = |h: &ParticipantHandle| h.state.lock().ok().and_then(|p| p.needs_share(request));
    if needs(handle).is_none() {
        return;
    }
    let Some(loader) = handle.loader.clone() else {
        return;
    };
    let _one = handle.decrypting.lock().await;
    // Another request may have restored it while this one waited.
    let Some((group, epoch)) = needs(handle) else {
        return;
    };
    let key = (group.clone(), epoch);
    let recently_failed = handle
        .decrypt_failed
        .lock()
        .ok()
        .and_then(|m| m.get(&key).copied())
        .is_some_and(|at| at.elapsed() < DECRYPT_BACKOFF);
    if recently_failed {
        return;
    }
    let started = Instant::now();
    let g = group.clone();
    match tokio::task::spawn_blocking(move || loader(&g, epoch)).await {
        Ok(Ok(key_package)) => {
            let restored = handle
                .state
                .lock()
                .is_ok_and(|mut p| p.restore_share(Instant::now(), &group, epoch, key_package));
            if restored {
                tracing::info!(%group, epoch, ms = started.elapsed().as_millis() as u64, "share decrypted again after the share cache TTL");
            } else {
                tracing::error!(%group, epoch, "the share file now holds another share: not restored (reload the node)");
            }
        }
        Ok(Err(e)) => tracing::error!(%group, epoch, error = %e, "cannot decrypt the share again"),
        Err(_) => tracing::error!(%group, epoch, "share decryption task failed"),
    }
    let restored = needs(handle).is_none();
    if let Ok(mut m) = handle.decrypt_failed.lock() {
        if restored {
            m.remove(&key);
        } else {
            m.insert(key, Instant::now());
        }
    }
    handle.update_gauges();
}

async fn answer(handle: &ParticipantHandle, peer: NodeId, request: Envelope) -> Envelope {
    let id = request.id;
    if handle.draining.load(Ordering::Relaxed) && matches!(request.msg, Message::Commit { .. }) {
        return Envelope {
            id,
            msg: Message::Refused(Refusal::ShuttingDown),
        };
    }
    restore_if_needed(handle, &request).await;
    let label = match &request.msg {
        Message::Sign { group, request, .. } => Some((group.clone(), request.client)),
        _ => None,
    };
    let (mut reply, durable, labels) = {
        let Ok(mut p) = handle.state.lock() else {
            return Envelope {
                id,
                msg: Message::Refused(Refusal::Internal),
            };
        };
        p.handle(
            Instant::now(),
            crate::unix_now(),
            peer,
            request,
            &mut rand::rngs::OsRng,
        );
        // The state machine answers each request with exactly one reply; holding the lock
        // across handle and poll keeps replies with their requests.
        let (reply, durable) = p
            .poll_transmit_deferred()
            .map(|(t, d)| (t.envelope, d))
            .unwrap_or((
                Envelope {
                    id,
                    msg: Message::Refused(Refusal::Internal),
                },
                conclave_audit::Durable::done(),
            ));
        // Only served groups become label values (the name comes from the coordinator).
        let labels = label.map(|(group, client)| {
            let group = if p.serves(&group) {
                group.to_string()
            } else {
                "unknown".to_owned()
            };
            (
                group,
                p.client_name(&client).unwrap_or("unknown").to_owned(),
            )
        });
        (reply, durable, labels)
    };
    // Group commit, outside the state lock: the share leaves only once its audit record is
    // on disk, and requests waiting at the same time share one fsync.
    if !durable.is_done() {
        let synced = tokio::task::spawn_blocking(move || durable.wait()).await;
        if !matches!(synced, Ok(Ok(()))) {
            tracing::error!(
                "the audit record could not be made durable: the signature share is withheld"
            );
            reply.msg = Message::Refused(Refusal::AuditFailed);
        }
    }
    if let (Some(m), Some((group, client))) = (&handle.metrics, labels) {
        let result = match &reply.msg {
            Message::SignatureShare { .. } => "ok",
            Message::Refused(r) => refusal_code(r),
            _ => "internal",
        };
        m.shares
            .get_or_create(&GroupResult {
                group: group.clone(),
                result: result.to_owned(),
            })
            .inc();
        match &reply.msg {
            Message::Refused(Refusal::NotAuthorized { rule }) => {
                m.policy_refusals_by_client
                    .get_or_create(&GroupClientRule {
                        group,
                        client,
                        rule: rule.code().to_owned(),
                    })
                    .inc();
            }
            Message::Refused(Refusal::AuditFailed) => {
                m.audit_write_failures.inc();
            }
            _ => {}
        }
    }
    reply
}

/// A stable code for a refusal, for metrics labels.
pub fn refusal_code(r: &Refusal) -> &'static str {
    match r {
        Refusal::Malformed => "malformed",
        Refusal::UnknownGroup => "unknown_group",
        Refusal::EpochMismatch { .. } => "epoch_mismatch",
        Refusal::UnknownCommitment => "unknown_commitment",
        Refusal::InvalidSigningPackage => "invalid_signing_package",
        Refusal::NotAuthorized { .. } => "not_authorized",
        Refusal::AuditFailed => "audit_failed",
        Refusal::AttemptFailed => "attempt_failed",
        Refusal::Overloaded => "overloaded",
        Refusal::MessageTooLarge => "message_too_large",
        Refusal::SignerUnavailable { .. } => "signer_unavailable",
        Refusal::DeadlineExceeded => "deadline_exceeded",
        Refusal::Internal => "internal",
        Refusal::UnexpectedRequest => "unexpected_request",
        Refusal::UnknownCeremony => "unknown_ceremony",
        Refusal::NotAMember => "not_a_member",
        Refusal::WrongRound => "wrong_round",
        Refusal::EpochSuperseded { .. } => "epoch_superseded",
        Refusal::NodeFrozen => "frozen",
        Refusal::Frozen { .. } => "frozen",
        Refusal::ShuttingDown => "shutting_down",
        _ => "other",
    }
}
