//! The QUIC driver of the participant: accepts pinned coordinators, feeds each request stream
//! to the state machine and writes its reply back. All protocol decisions are in
//! the state machine crate.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use conclave_client::quic::{self, Pinned, TransportError};
use conclave_protocol::{Envelope, IdentityKey, Message, NodeId, Refusal};

use conclave_participant::Participant;

/// A bound, not yet running participant server.
pub struct Server {
    endpoint: quinn::Endpoint,
}

impl Server {
    /// Binds `listen` (port 0 picks a free port), accepting only `coordinators`.
    pub fn bind(
        identity: &IdentityKey,
        listen: SocketAddr,
        coordinators: HashSet<NodeId>,
    ) -> Result<Self, TransportError> {
        let cfg = quic::server_config(identity, Pinned::AnyOf(Arc::new(coordinators)))?;
        Ok(Self {
            endpoint: quic::server_endpoint(listen, cfg)?,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn run(self, participant: Participant, shutdown: impl Future<Output = ()>) {
        let state = Arc::new(Mutex::new(participant));
        let sweeper = tokio::spawn(sweep(state.clone()));
        let endpoint = self.endpoint.clone();
        let accept = async {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(serve_connection(incoming, state.clone()));
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
        sweeper.abort();
        self.endpoint.close(0u32.into(), b"shutdown");
        // CONNECTION_CLOSE goes out at once; do not sit through the whole draining period.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            self.endpoint.wait_idle(),
        )
        .await;
    }
}

/// Calls `handle_timeout` when the state machine asks for it.
async fn sweep(state: Arc<Mutex<Participant>>) {
    loop {
        let next = state.lock().ok().and_then(|p| p.poll_timeout());
        let wait = next.map_or(std::time::Duration::from_secs(60), |t| {
            t.saturating_duration_since(Instant::now())
        });
        tokio::time::sleep(wait).await;
        if let Ok(mut p) = state.lock() {
            p.handle_timeout(Instant::now());
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, state: Arc<Mutex<Participant>>) {
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
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(coordinator = %peer.short(), reason = %e, "coordinator disconnected");
                return;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let reply = match quic::read_request(&mut recv).await {
                Ok(request) => answer(&state, peer, request),
                Err(e) => {
                    tracing::debug!(coordinator = %peer.short(), error = %e, "bad request stream");
                    Envelope {
                        id: 0,
                        msg: Message::Refused(Refusal::Malformed),
                    }
                }
            };
            if let Err(e) = quic::write_frame(&mut send, &reply).await {
                tracing::debug!(coordinator = %peer.short(), error = %e, "could not send reply");
            }
        });
    }
}

fn answer(state: &Mutex<Participant>, peer: NodeId, request: Envelope) -> Envelope {
    let id = request.id;
    let Ok(mut p) = state.lock() else {
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
    p.poll_transmit().map(|t| t.envelope).unwrap_or(Envelope {
        id,
        msg: Message::Refused(Refusal::Internal),
    })
}
