//! The QUIC driver of the coordinator: keeps a connection to every participant (reconnecting
//! with backoff), serves pinned clients, and loops the state machine: inputs in, requests out,
//! timer armed. All protocol decisions are in the state machine crate.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_audit::{AuditSink, Decision};
use conclave_client::quic::{self, Pinned, TransportError};
use conclave_protocol::request::SignedRequest;
use conclave_protocol::{
    Envelope, GroupName, IdentityKey, Message, NodeId, PolicyRule, Refusal, Transmit,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use conclave_coordinator::SignError;
use conclave_coordinator::{Coordinator, Event, GroupInfo, SessionId, SignOutcome};

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
}

/// In-process access to a running coordinator (what the QUIC client API does over the wire).
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: mpsc::Sender<Input>,
}

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
}

/// A bound, not yet running coordinator.
pub struct Server {
    endpoint: quinn::Endpoint,
    identity: IdentityKey,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    audit: Option<Box<dyn AuditSink>>,
}

/// What the coordinator's audit record of a session says about its request.
struct Pending {
    reply: oneshot::Sender<Result<SignOutcome, SignError>>,
    record: Decision,
}

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
    mut record: Decision,
    result: &Result<SignOutcome, SignError>,
) -> Result<(), conclave_audit::AuditError> {
    let Some(audit) = audit.as_mut() else {
        return Ok(());
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
    audit.record(crate::unix_now(), record)
}

impl Server {
    /// Binds `listen` for clients (port 0 picks a free port), accepting only `clients`. The
    /// same endpoint dials the participants.
    pub fn bind(
        identity: IdentityKey,
        listen: SocketAddr,
        clients: HashSet<NodeId>,
    ) -> Result<Self, TransportError> {
        let cfg = quic::server_config(&identity, Pinned::AnyOf(Arc::new(clients)))?;
        let endpoint = quic::server_endpoint(listen, cfg)?;
        let (tx, rx) = mpsc::channel(4096);
        Ok(Self {
            endpoint,
            identity,
            tx,
            rx,
            audit: None,
        })
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
        }
    }

    /// Runs until `shutdown` completes. `addresses` says where each participant listens
    /// (`host:port`, resolved at each connection attempt).
    pub async fn run(
        self,
        mut coordinator: Coordinator,
        addresses: HashMap<NodeId, String>,
        shutdown: impl Future<Output = ()>,
    ) {
        let Server {
            endpoint,
            identity,
            tx,
            mut rx,
            mut audit,
        } = self;
        let identity = Arc::new(identity);
        let mut tasks = tokio::task::JoinSet::new();
        for node in coordinator.participants() {
            let Some(addr) = addresses.get(&node).cloned() else {
                tracing::warn!(node = %node.short(), "no address for participant; it will never be used");
                continue;
            };
            tasks.spawn(maintain(
                endpoint.clone(),
                identity.clone(),
                node,
                addr,
                tx.clone(),
            ));
        }
        tasks.spawn(accept_clients(
            endpoint.clone(),
            CoordinatorHandle { tx: tx.clone() },
        ));
        let request_timeout = Duration::from_secs(30);
        let mut conns: HashMap<NodeId, quinn::Connection> = HashMap::new();
        let mut waiters: HashMap<SessionId, Pending> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            flush(
                &mut coordinator,
                &conns,
                &tx,
                &mut waiters,
                &mut audit,
                request_timeout,
            );
            let deadline = coordinator.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
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
                            // A client presents only requests it signed itself.
                            if requester.is_some_and(|r| r != request.client) {
                                let result = Err(SignError::NotAuthorized {
                                    refusals: vec![("coordinator".into(), PolicyRule::NotRequester)],
                                });
                                let result = match record_outcome(&mut audit, record, &result) {
                                    Ok(()) => result,
                                    Err(_) => Err(SignError::AuditFailed),
                                };
                                let _ = reply.send(result);
                                continue;
                            }
                            // The session cap is the state machine's (CoordinatorConfig::max_sessions).
                            let id = coordinator.submit(now, crate::unix_now(), request, message, timeout);
                            waiters.insert(id, Pending { reply, record });
                        }
                        Input::Info { group, reply } => {
                            let _ = reply.send(coordinator.group_info(&group));
                        }
                        Input::Groups { reply } => {
                            let _ = reply.send(coordinator.groups());
                        }
                        Input::PeerUp { node, conn } => {
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
                    }
                }
            }
        }
        tasks.abort_all();
        for (_, p) in waiters.drain() {
            let _ = p
                .reply
                .send(Err(SignError::Internal("coordinator stopped")));
        }
        endpoint.close(0u32.into(), b"shutdown");
        // CONNECTION_CLOSE goes out at once; do not sit through the whole draining period.
        let _ = tokio::time::timeout(Duration::from_millis(250), endpoint.wait_idle()).await;
    }
}

/// Sends what the state machine queued and delivers what it decided.
fn flush(
    coordinator: &mut Coordinator,
    conns: &HashMap<NodeId, quinn::Connection>,
    tx: &mpsc::Sender<Input>,
    waiters: &mut HashMap<SessionId, Pending>,
    audit: &mut Option<Box<dyn AuditSink>>,
    request_timeout: Duration,
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
                        let result = match record_outcome(audit, w.record, &result) {
                            Ok(()) => result,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot write the audit record: returning no signature");
                                Err(SignError::AuditFailed)
                            }
                        };
                        let _ = w.reply.send(result);
                    }
                }
                Event::CulpritDetected { group, name, .. } => {
                    tracing::warn!(%group, participant = %name, "culprit: invalid signature share");
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

async fn accept_clients(endpoint: quinn::Endpoint, handle: CoordinatorHandle) {
    while let Some(incoming) = endpoint.accept().await {
        let handle = handle.clone();
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
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let reply = match quic::read_request(&mut recv).await {
                        Ok(request) => serve_client_request(client, request, &handle).await,
                        Err(_) => Envelope {
                            id: 0,
                            msg: Message::Refused(Refusal::Malformed),
                        },
                    };
                    let _ = quic::write_frame(&mut send, &reply).await;
                });
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
            },
            None => Message::Refused(Refusal::UnknownGroup),
        },
        Message::Ping => Message::Pong {
            groups: handle
                .groups()
                .await
                .into_iter()
                .map(|g| (g.group, g.epoch))
                .collect(),
        },
        _ => Message::Refused(Refusal::UnexpectedRequest),
    };
    Envelope { id, msg }
}
