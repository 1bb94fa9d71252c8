//! The QUIC driver of a ceremony member ([`conclave_keygen::ceremony::Member`]): connects to
//! the relay named in the plan (pinned), posts each round and waits for its delivery.
//! Connection failures before the member's deadline are retried (the relay may not be up
//! yet when the operator starts this side).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::quic::{self, TransportError};
use conclave_keygen::ceremony::{Member, MemberEvent, Protocol};
use conclave_protocol::{IdentityKey, NodeId};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs `member` to its end. `on_event` sees every event; for [`MemberEvent::Store`] it must
/// write the pending share file and return whether that worked (the answer is ignored for
/// other events).
pub async fn run_member<P: Protocol>(
    member: &mut Member<P>,
    identity: &IdentityKey,
    relay: NodeId,
    relay_addr: SocketAddr,
    mut on_event: impl FnMut(MemberEvent) -> bool,
) -> Result<(), TransportError> {
    let endpoint = quic::client_endpoint(relay_addr)?;
    let mut conn: Option<quinn::Connection> = None;
    let mut rng = rand::rngs::OsRng;
    member.start(Instant::now(), &mut rng);
    loop {
        while let Some(ev) = member.poll_event() {
            let store = matches!(ev, MemberEvent::Store { .. });
            let ok = on_event(ev);
            if store {
                member.stored(Instant::now(), ok);
            }
        }
        let Some(envelope) = member.poll_transmit() else {
            if member.is_finished() {
                break;
            }
            // Waiting on nothing but a deadline (cannot happen while a post is out).
            match member.poll_timeout() {
                Some(d) => {
                    tokio::time::sleep_until(d.into()).await;
                    member.handle_timeout(Instant::now());
                    continue;
                }
                None => break,
            }
        };
        let mut backoff = RETRY_MIN;
        loop {
            let deadline = member
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            let now = Instant::now();
            if now >= deadline {
                member.handle_timeout(now);
                break;
            }
            let c = match &conn {
                Some(c) if c.close_reason().is_none() => c.clone(),
                _ => match tokio::time::timeout(
                    deadline - now,
                    quic::connect(&endpoint, identity, relay, relay_addr),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        conn = Some(c.clone());
                        c
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("relay not reachable yet: {e}");
                        tokio::time::sleep(backoff.min(deadline - Instant::now().min(deadline)))
                            .await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            match quic::request(&c, &envelope, deadline - Instant::now().min(deadline)).await {
                Ok(reply) => {
                    member.handle(Instant::now(), reply, &mut rng);
                    break;
                }
                Err(TransportError::Timeout(_)) => {
                    member.handle_timeout(Instant::now().max(deadline));
                    break;
                }
                Err(e) => {
                    tracing::debug!("post failed, retrying on a new connection: {e}");
                    conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
    if let Some(c) = conn {
        c.close(0u32.into(), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}
