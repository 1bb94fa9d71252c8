//! The QUIC driver of a key-ceremony relay ([`conclave_keygen::ceremony::Relay`]): members
//! connect to the coordinator (pinned by the plan), post each round on a stream and wait on
//! it for the round's delivery (a long poll: no polling interval, no latency added).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_client::quic::{self, Pinned, TransportError};
use conclave_keygen::ceremony::{
    AbortReport, CeremonyPlan, Completion, CompletionFailure, Relay, RelayEvent,
};
use conclave_keygen::GroupManifest;
use conclave_protocol::{Envelope, IdentityKey, NodeId};
use tokio::sync::{mpsc, oneshot};

/// How long a finished relay keeps answering (late posts get the abort reason; members
/// close their connections once they have the last delivery).
const LINGER: Duration = Duration::from_secs(5);

enum Input {
    Request {
        from: NodeId,
        envelope: Envelope,
        reply: oneshot::Sender<Envelope>,
    },
    Down {
        node: NodeId,
    },
}

/// How a relayed ceremony ended, as the relay state machine decided it.
#[derive(Debug)]
pub enum RelayEnd {
    /// Every member stored its share: the manifest they all confirmed, checked by the relay,
    /// and every member's signed acknowledgement.
    Completed {
        manifest: Box<GroupManifest>,
        completion: Completion,
    },
    /// The ceremony ended without a result (culprits, accused and suspects by node id).
    Aborted(AbortReport),
    /// Every round completed but a member did not vouch for the result.
    Failed(CompletionFailure),
}

/// A bound, not yet running relay.
pub struct RelayServer {
    endpoint: quinn::Endpoint,
}

impl RelayServer {
    /// Binds `listen`, accepting only the plan's participants.
    pub fn bind(
        plan: &CeremonyPlan,
        identity: &IdentityKey,
        listen: SocketAddr,
    ) -> Result<Self, TransportError> {
        let members: HashSet<NodeId> = plan
            .roster()
            .map_err(|e| TransportError::Setup(e.to_string()))?
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        let cfg = quic::server_config(identity, Pinned::AnyOf(Arc::new(members)))?;
        Ok(Self {
            endpoint: quic::server_endpoint(listen, cfg, identity)?,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Relays until the ceremony completes or aborts; `on_event` sees every event (progress).
    pub async fn run(
        self,
        mut relay: Relay,
        mut on_event: impl FnMut(&Relay, &RelayEvent),
    ) -> RelayEnd {
        let (tx, mut rx) = mpsc::channel::<Input>(1024);
        let live = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept(self.endpoint.clone(), tx, live.clone()));
        let mut waiting: HashMap<(NodeId, u64), oneshot::Sender<Envelope>> = HashMap::new();
        let mut end: Option<(RelayEnd, Instant)> = None;
        loop {
            let now = Instant::now();
            if let Some((_, at)) = &end {
                if live.load(Ordering::SeqCst) == 0 || now >= *at + LINGER {
                    break;
                }
            }
            let wake = relay
                .poll_timeout()
                .unwrap_or(now + Duration::from_millis(200))
                .min(now + Duration::from_millis(200));
            tokio::select! {
                input = rx.recv() => match input {
                    Some(Input::Request { from, envelope, reply }) => {
                        waiting.insert((from, envelope.id), reply);
                        relay.handle(Instant::now(), from, envelope);
                    }
                    Some(Input::Down { node }) => {
                        waiting.retain(|(n, _), _| *n != node);
                        relay.peer_down(Instant::now(), node);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => relay.handle_timeout(Instant::now()),
            }
            while let Some(t) = relay.poll_transmit() {
                if let Some(reply) = waiting.remove(&(t.to, t.envelope.id)) {
                    let _ = reply.send(t.envelope);
                }
            }
            while let Some(ev) = relay.poll_event() {
                on_event(&relay, &ev);
                let ended = match ev {
                    RelayEvent::Completed {
                        manifest,
                        completion,
                    } => Some(RelayEnd::Completed {
                        manifest,
                        completion,
                    }),
                    RelayEvent::Aborted { report, .. } => Some(RelayEnd::Aborted(report)),
                    RelayEvent::Failed(f) => Some(RelayEnd::Failed(f)),
                    _ => None,
                };
                if let Some(e) = ended {
                    end = Some((e, Instant::now()));
                }
            }
        }
        accept.abort();
        self.endpoint.close(0u32.into(), b"ceremony over");
        // Every member has had its last reply; CONNECTION_CLOSE goes out at once and the
        // draining period after it is not waited out.
        let _ = tokio::time::timeout(Duration::from_millis(10), self.endpoint.wait_idle()).await;
        match end {
            Some((e, _)) => e,
            None => RelayEnd::Aborted(relay.give_up()),
        }
    }
}

async fn accept(endpoint: quinn::Endpoint, tx: mpsc::Sender<Input>, live: Arc<AtomicUsize>) {
    while let Some(incoming) = endpoint.accept().await {
        let tx = tx.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("refused ceremony connection: {e}");
                    return;
                }
            };
            let Some(node) = quic::peer_node_id(&conn) else {
                return;
            };
            live.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(peer = %node.short(), "ceremony member connected");
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(envelope) = quic::read_request(&mut recv).await else {
                        return;
                    };
                    let (reply, rx) = oneshot::channel();
                    if tx
                        .send(Input::Request {
                            from: node,
                            envelope,
                            reply,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if let Ok(answer) = rx.await {
                        let _ = quic::write_frame(&mut send, &answer).await;
                        // Let the frame reach the member before the stream is dropped.
                        let _ = send.stopped().await;
                    }
                });
            }
            live.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!(peer = %node.short(), "ceremony member disconnected");
            let _ = tx.send(Input::Down { node }).await;
        });
    }
}
