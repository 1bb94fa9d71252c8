//! The client library: connects to a coordinator (pinned by its identity key) and asks for
//! signatures. Every request is signed by the client's identity key (group, epoch, message or
//! its SHA-512, kind, a random request id, a not-after time), so that every signer checks for
//! itself who asked for what. Every signature it returns has been verified here too, against
//! the public key the caller expects when one is given.

use std::net::SocketAddr;
use std::time::Duration;

use crate::quic::{self, TransportError};
use conclave_protocol::request::{MessageRef, SignRequestBody, SignedRequest};
use conclave_protocol::{Envelope, GroupName, IdentityKey, Message, NodeId, PolicyRule};
use sha2::{Digest, Sha512};

/// Messages up to this size travel inside the signed request; longer ones are named there by
/// their SHA-512 (the signers check it against the message they are asked to sign).
pub const INLINE_MESSAGE_MAX: usize = 1024;
/// How long after its deadline a request stays valid at the signers (clock skew).
const VALIDITY_MARGIN_SECS: u64 = 60;
/// New requests sent when an attempt failed after round 2 began.
const MAX_REQUESTS: usize = 3;

use conclave_protocol::SignError;

/// A signature from the coordinator, verified by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
    pub signers: Vec<String>,
}

/// What a group looks like from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteGroup {
    pub group: GroupName,
    pub public_key: [u8; 32],
    pub threshold: u16,
    pub epoch: u64,
    pub participants: Vec<String>,
    /// Participants the coordinator reaches right now.
    pub reachable: u16,
    /// Participants on another epoch (name, epoch), refused by the coordinator.
    pub stale: Vec<(String, u64)>,
    /// Participants frozen by their operators: they sign nothing for the group.
    pub frozen: Vec<String>,
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach the coordinator")]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("the coordinator answered with an unexpected message")]
    UnexpectedReply,
    #[error("the coordinator returned a signature that does not verify; refusing it")]
    InvalidSignature,
    #[error("the coordinator signed with key {got}, not the expected {expected}")]
    WrongKey { expected: String, got: String },
    #[error("the message kind is longer than 64 bytes")]
    BadKind,
}

/// A connection to one coordinator.
pub struct Client {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    next_id: std::sync::atomic::AtomicU64,
    identity: IdentityKey,
    epochs: std::sync::Mutex<std::collections::HashMap<GroupName, u64>>,
    /// Epochs the caller knows from its own manifest: never taken from the coordinator.
    pinned: std::sync::Mutex<std::collections::HashMap<GroupName, u64>>,
}

impl Client {
    /// Connects to the coordinator at `addr`, which must prove it holds `coordinator`'s key
    /// (within 10 s).
    pub async fn connect(
        identity: &IdentityKey,
        addr: SocketAddr,
        coordinator: NodeId,
    ) -> Result<Self, ClientError> {
        Self::connect_within(identity, addr, coordinator, Duration::from_secs(10)).await
    }

    /// Like [`connect`](Self::connect), giving up after `timeout`.
    pub async fn connect_within(
        identity: &IdentityKey,
        addr: SocketAddr,
        coordinator: NodeId,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let endpoint = quic::client_endpoint(addr)?;
        let conn = tokio::time::timeout(
            timeout,
            quic::connect(&endpoint, identity, coordinator, addr),
        )
        .await
        .map_err(|_| TransportError::Timeout(timeout))??;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            next_id: 1.into(),
            identity: identity.clone(),
            epochs: Default::default(),
            pinned: Default::default(),
        })
    }

    /// Closes the connection cleanly (the coordinator frees it at once instead of at its idle
    /// timeout) and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"client done");
        // CONNECTION_CLOSE goes out at once; the draining period after it is not worth waiting
        // for (a short-lived process would spend ~100 ms in it).
        let _ = tokio::time::timeout(Duration::from_millis(1), self._endpoint.wait_idle()).await;
    }

    /// True while the connection is up.
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Signs requests for `group` at `epoch` (from the caller's own copy of the manifest) or
    /// later, never earlier: the coordinator cannot take the client back to an older epoch
    /// (older shares), but when the signers refuse the pinned epoch because the group moved
    /// on (a rotation switch), the client follows it forward to the epoch the coordinator
    /// serves. The key is still checked against the caller's own copy.
    pub fn pin_epoch(&self, group: &GroupName, epoch: u64) {
        if let Ok(mut m) = self.pinned.lock() {
            m.insert(group.clone(), epoch);
        }
    }

    /// The group's epoch: pinned, or from the coordinator the first time (and again when the
    /// signers refuse it, never going back to a lower one).
    async fn epoch(&self, group: &GroupName, refresh: bool) -> Result<u64, ClientError> {
        let pinned = self.pinned.lock().ok().and_then(|m| m.get(group).copied());
        let cached = self.epochs.lock().ok().and_then(|m| m.get(group).copied());
        let cached = match (pinned, cached) {
            (Some(p), c) => Some(c.map_or(p, |c| c.max(p))),
            (None, c) => c,
        };
        if let (Some(e), false) = (cached, refresh) {
            return Ok(e);
        }
        let info = self.group_info(group).await?;
        let epoch = cached.map_or(info.epoch, |c| c.max(info.epoch));
        if let Ok(mut m) = self.epochs.lock() {
            m.insert(group.clone(), epoch);
        }
        Ok(epoch)
    }

    /// A request for `message`, signed by this client's identity.
    pub fn request(
        &self,
        group: &GroupName,
        epoch: u64,
        message: &[u8],
        kind: Option<&str>,
        valid_for: Duration,
    ) -> Result<SignedRequest, ClientError> {
        let mut request_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut request_id);
        let message_ref = if message.len() <= INLINE_MESSAGE_MAX {
            MessageRef::Full(message.to_vec())
        } else {
            MessageRef::Sha512(Sha512::digest(message).into())
        };
        let kind = kind.map_or_else(|| conclave_policy::classify(message).name(), str::to_owned);
        SignRequestBody {
            group: group.clone(),
            epoch,
            message: message_ref,
            kind,
            request_id,
            // Signers accept at most an hour ahead.
            not_after: crate::unix_now()
                + (valid_for.as_secs() + VALIDITY_MARGIN_SECS)
                    .min(conclave_policy::MAX_VALIDITY_SECS),
        }
        .sign(&self.identity)
        .map_err(|_| ClientError::BadKind)
    }

    async fn call(&self, msg: Message, timeout: Duration) -> Result<Message, ClientError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = quic::request(&self.conn, &Envelope { id, msg }, timeout).await?;
        if reply.id != id {
            return Err(ClientError::UnexpectedReply);
        }
        Ok(reply.msg)
    }

    /// Asks for a signature of `message` by `group`, within `timeout`. When `expected_key` is
    /// given, a signature under any other key is refused.
    pub async fn sign(
        &self,
        group: &GroupName,
        message: &[u8],
        timeout: Duration,
        expected_key: Option<[u8; 32]>,
    ) -> Result<Signed, ClientError> {
        self.sign_kind(group, message, None, timeout, expected_key)
            .await
    }

    /// Like [`sign`](Self::sign), declaring the message kind instead of recognising it from
    /// the bytes (the signers recognise it themselves and refuse a mismatch). A failed
    /// attempt, or a stale epoch, is retried with a new request (a new request id: each signer
    /// signs a request at most once).
    pub async fn sign_kind(
        &self,
        group: &GroupName,
        message: &[u8],
        kind: Option<&str>,
        timeout: Duration,
        expected_key: Option<[u8; 32]>,
    ) -> Result<Signed, ClientError> {
        let mut refresh = false;
        let mut last = None;
        for _ in 0..MAX_REQUESTS {
            let epoch = self.epoch(group, refresh).await?;
            let request = self.request(group, epoch, message, kind, timeout)?;
            match self
                .sign_request(request, message, timeout, expected_key)
                .await
            {
                Err(ClientError::Sign(SignError::AttemptFailed { culprits })) => {
                    tracing::debug!(?culprits, "signing attempt failed; sending a new request");
                    last = Some(SignError::AttemptFailed { culprits });
                }
                Err(ClientError::Sign(SignError::NotAuthorized { refusals }))
                    if !refresh && refusals.iter().all(|(_, r)| *r == PolicyRule::Epoch) =>
                {
                    refresh = true;
                    last = Some(SignError::NotAuthorized { refusals });
                }
                other => return other,
            }
        }
        Err(last
            .unwrap_or(SignError::Internal("no request sent"))
            .into())
    }

    /// Sends one signed request as it is.
    pub async fn sign_request(
        &self,
        request: SignedRequest,
        message: &[u8],
        timeout: Duration,
        expected_key: Option<[u8; 32]>,
    ) -> Result<Signed, ClientError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let msg = Message::SignRequest {
            request: Box::new(request),
            message: message.to_vec(),
            timeout_ms,
        };
        match self.call(msg, timeout + Duration::from_secs(5)).await? {
            Message::Signature {
                public_key,
                signature,
                signers,
            } => {
                if let Some(expected) = expected_key {
                    if expected != public_key {
                        return Err(ClientError::WrongKey {
                            expected: hex::encode(expected),
                            got: hex::encode(public_key),
                        });
                    }
                }
                let signature: [u8; 64] = signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| ClientError::InvalidSignature)?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&public_key)
                    .map_err(|_| ClientError::InvalidSignature)?;
                vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
                    .map_err(|_| ClientError::InvalidSignature)?;
                Ok(Signed {
                    public_key,
                    signature,
                    signers,
                })
            }
            Message::NotAuthorized { refusals } => {
                Err(SignError::NotAuthorized { refusals }.into())
            }
            Message::Refused(r) => Err(SignError::from_refusal(r).into()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Asks the coordinator whether it is alive: `Ok` once it answers within `timeout`. A
    /// coordinator that died without closing the connection (SIGKILL, a host gone) answers
    /// nothing, where QUIC would notice only after its idle timeout.
    pub async fn ping(&self, timeout: Duration) -> Result<(), ClientError> {
        match self.call(Message::Ping, timeout).await? {
            Message::Pong { .. } => Ok(()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// The group's public key, threshold, epoch and members.
    pub async fn group_info(&self, group: &GroupName) -> Result<RemoteGroup, ClientError> {
        match self
            .call(
                Message::GroupInfoRequest {
                    group: group.clone(),
                },
                Duration::from_secs(10),
            )
            .await?
        {
            Message::GroupInfo {
                group,
                public_key,
                threshold,
                epoch,
                participants,
                reachable,
                stale,
                frozen,
            } => Ok(RemoteGroup {
                group,
                public_key,
                threshold,
                epoch,
                participants,
                reachable,
                stale,
                frozen,
            }),
            Message::Refused(r) => Err(SignError::from_refusal(r).into()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }
}
