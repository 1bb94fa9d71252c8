//! The client library: connects to a coordinator (pinned by its identity key) and asks for
//! signatures. Every signature it returns has been verified here too, against the public key
//! the caller expects when one is given.

use std::net::SocketAddr;
use std::time::Duration;

use crate::quic::{self, TransportError};
use conclave_protocol::{Envelope, GroupName, IdentityKey, Message, NodeId};

use conclave_coordinator::SignError;

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
}

/// A connection to one coordinator.
pub struct Client {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    next_id: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Connects to the coordinator at `addr`, which must prove it holds `coordinator`'s key.
    pub async fn connect(
        identity: &IdentityKey,
        addr: SocketAddr,
        coordinator: NodeId,
    ) -> Result<Self, ClientError> {
        let endpoint = quic::client_endpoint(addr)?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            quic::connect(&endpoint, identity, coordinator, addr),
        )
        .await
        .map_err(|_| TransportError::Timeout(Duration::from_secs(10)))??;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            next_id: 1.into(),
        })
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
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let msg = Message::SignRequest {
            group: group.clone(),
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
            Message::Refused(r) => Err(SignError::from_refusal(r).into()),
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
            } => Ok(RemoteGroup {
                group,
                public_key,
                threshold,
                epoch,
                participants,
                reachable,
                stale,
            }),
            Message::Refused(r) => Err(SignError::from_refusal(r).into()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }
}
