//! The QUIC driver of a ceremony member ([`conclave_keygen::ceremony::Member`]): connects to
//! the relay named in the plan (pinned), posts each round and waits for its delivery.
//! Connection failures before the member's deadline are retried (the relay may not be up
//! yet when the operator starts this side).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_client::quic::{self, TransportError};
use conclave_keygen::ceremony::{Applied, Member, MemberEnd, MemberEvent, Protocol};
use conclave_keygen::store::{ShareStore, StoreError};
use conclave_protocol::{IdentityKey, NodeId};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a driver shows while a member runs.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A progress event of the member (joined, a round completed).
    Event(&'a MemberEvent),
    /// The pending results could not be stored (the ceremony aborts for everyone).
    StoreFailed(&'a StoreError),
}

/// Runs `member` to its end, applying its events to `store` ([`Member::apply`]: pending,
/// activate, keep undecided, discard) and showing progress through `on_progress`. Returns how
/// the member ended; `None` if the driver stopped without an end (the relay never answered).
pub async fn run_member<P: Protocol, S: ShareStore + ?Sized>(
    member: &mut Member<P>,
    identity: &IdentityKey,
    relay: NodeId,
    relay_addr: SocketAddr,
    store: &mut S,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<Option<MemberEnd>, TransportError> {
    let endpoint = quic::client_endpoint(relay_addr)?;
    let mut conn: Option<quinn::Connection> = None;
    let mut rng = rand::rngs::OsRng;
    member.start(Instant::now(), &mut rng);
    let mut end = None;
    loop {
        while let Some(ev) = member.poll_event() {
            match member.apply(Instant::now(), ev, store) {
                Applied::Progress(ev) => on_progress(Progress::Event(&ev)),
                Applied::Stored(Err(e)) => on_progress(Progress::StoreFailed(&e)),
                Applied::Stored(Ok(())) => {}
                Applied::End(e) => end = Some(e),
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
    // CONNECTION_CLOSE goes out at once; QUIC's draining period after it (three probe
    // timeouts, tens of milliseconds even on loopback) is not worth waiting out.
    let _ = tokio::time::timeout(Duration::from_millis(1), endpoint.wait_idle()).await;
    Ok(end)
}
