//! QUIC with mutual TLS 1.3, peers pinned by their identity public key (no CA, like SSH
//! known_hosts). Certificates are self-signed wrappers around the identity key; what counts is
//! the key inside them and the handshake signature proving its possession.
//!
//! Also the one-frame-per-stream request helpers both drivers use.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use conclave_protocol::codec::{self, CodecError, FRAME_HEADER_LEN};
use conclave_protocol::identity::{IdentityKey, NodeId};
use conclave_protocol::message::Envelope;
use conclave_protocol::ALPN;

/// Name put in certificates and SNI. Not checked: peers are authenticated by key.
const SERVER_NAME: &str = "conclave";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Failures setting up or using a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connection failed")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("stream read failed")]
    Read(#[from] quinn::ReadExactError),
    #[error("bad frame from peer")]
    Codec(#[from] CodecError),
    #[error("could not encode a message of this node")]
    Encode(#[from] conclave_protocol::EncodeError),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("the peer answered with something else than expected")]
    UnexpectedReply,
    #[error("cannot set up: {0}")]
    Setup(String),
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("peer presented no usable identity")]
    NoPeerIdentity,
}

/// The identity key inside a peer certificate, if it is an Ed25519 certificate.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(NodeId(key))
}

/// The authenticated identity of the peer of an established connection.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(certs.first()?)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The self-signed certificate of `identity`, made once per identity and process: every
/// connection (and every reload of a server config) reuses it instead of signing a new one.
/// Only the certificate (public) is cached; the private key is re-encoded from `identity`.
fn certified(
    identity: &IdentityKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    static CERTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<NodeId, CertificateDer<'static>>>,
    > = std::sync::OnceLock::new();
    let der = identity
        .to_pkcs8_der()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()));
    let cache = CERTS.get_or_init(Default::default);
    let node = identity.node_id();
    if let Some(cert) = cache.lock().ok().and_then(|c| c.get(&node).cloned()) {
        return Ok((vec![cert], key));
    }
    let key_pair =
        rcgen::KeyPair::try_from(der.as_slice()).map_err(|e| TransportError::Tls(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let cert = cert.der().clone();
    if let Ok(mut c) = cache.lock() {
        // Bounded by the identities a process holds (one, or a handful in tests).
        if c.len() < 1024 {
            c.insert(node, cert.clone());
        }
    }
    Ok((vec![cert], key))
}

/// Which peers a node accepts.
#[derive(Debug, Clone)]
pub enum Pinned {
    /// Exactly this peer.
    One(NodeId),
    /// Any of these peers.
    AnyOf(Arc<HashSet<NodeId>>),
}

impl Pinned {
    fn allows(&self, id: &NodeId) -> bool {
        match self {
            Pinned::One(one) => one == id,
            Pinned::AnyOf(set) => set.contains(id),
        }
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    pinned: Pinned,
    algs: WebPkiSupportedAlgorithms,
    role: &'static str,
}

impl PinnedVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match node_id_from_cert(cert) {
            Some(id) if self.pinned.allows(&id) => Ok(()),
            Some(id) => {
                tracing::warn!(peer = %id, role = self.role, "refused TLS handshake: peer identity is not pinned in this node's configuration");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            None => {
                tracing::warn!(
                    role = self.role,
                    "refused TLS handshake: peer certificate holds no Ed25519 identity key"
                );
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadEncoding,
                ))
            }
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(t)
}

/// Server side: accepts clients whose identity is in `clients`.
pub fn server_config(
    identity: &IdentityKey,
    clients: Pinned,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        pinned: clients,
        algs: provider.signature_verification_algorithms,
        role: "server",
    });
    let (certs, key) = certified(identity)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// Client side: presents `identity` and accepts only the server whose key is `server`.
pub fn client_config(
    identity: &IdentityKey,
    server: NodeId,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        pinned: Pinned::One(server),
        algs: provider.signature_verification_algorithms,
        role: "client",
    });
    let (certs, key) = certified(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A server endpoint on `addr` (port 0 lets the OS choose), whose stateless-reset key comes
/// from `identity` (see [`endpoint_config`]).
pub fn server_endpoint(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    identity: &IdentityKey,
) -> Result<quinn::Endpoint, TransportError> {
    let bind = |source| TransportError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    let port = socket.local_addr().map_err(bind)?.port();
    quinn::Endpoint::new(
        endpoint_config(identity, port),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)
}

/// Endpoint settings whose stateless-reset key and connection-ID key are derived from the
/// node's identity key and its port, instead of random per process. A node restarted on its
/// address then answers the packets of connections its previous process held with a valid
/// stateless reset (RFC 9000, section 10.3), and the peer drops such a connection at once and
/// reconnects; with random keys the peer keeps sending into the dead connection until its idle
/// timeout (10 s), and counts the restarted node as up meanwhile. The keys are as secret as
/// the identity key: only its holder can reset its connections. The port is part of the
/// derivation so that two endpoints of one identity (a relay beside a coordinator) cannot reset
/// each other's connections (RFC 9000, section 21.11).
fn endpoint_config(identity: &IdentityKey, port: u16) -> quinn::EndpointConfig {
    let (reset, cid_key) = restart_keys(identity, port);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(StableCids {
            key: cid_key.clone(),
        })
    });
    config
}

/// The stateless-reset key and the connection-ID key of `identity`'s endpoint on `port`.
fn restart_keys(identity: &IdentityKey, port: u16) -> (ring::hmac::Key, ring::hmac::Key) {
    use sha2::Digest;
    let secret = zeroize::Zeroizing::new(identity.signing_key().to_bytes());
    let mut h = sha2::Sha512::new();
    h.update(b"conclave QUIC endpoint keys v1\0");
    h.update(port.to_be_bytes());
    h.update(secret.as_slice());
    let derived = zeroize::Zeroizing::new(<[u8; 64]>::from(h.finalize()));
    let (reset, cid) = derived.split_at(32);
    (
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset),
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, cid),
    )
}

/// Connection IDs of 16 random bytes and a 4-byte tag (HMAC-SHA256 under the endpoint's
/// connection-ID key), 20 bytes in all. The endpoint checks the tag before it answers a packet
/// for an unknown connection (a reset included), and a restarted process recognises its
/// predecessor's IDs. With the keys fixed across restarts, IDs must never repeat (RFC 9000,
/// section 10.3.1: a stateless-reset token is a function of the ID): 128 random bits put a
/// repeat, and with it a token learnt on one connection that resets another, out of reach.
/// (quinn's `HashedConnectionIdGenerator` has 24 random bits.)
struct StableCids {
    key: ring::hmac::Key,
}

const CID_RANDOM: usize = 16;
const CID_TAG: usize = 4;

impl StableCids {
    fn tag(&self, random: &[u8]) -> [u8; CID_TAG] {
        let t = ring::hmac::sign(&self.key, random);
        let mut out = [0u8; CID_TAG];
        for (o, b) in out.iter_mut().zip(t.as_ref()) {
            *o = *b;
        }
        out
    }
}

impl quinn_proto::ConnectionIdGenerator for StableCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        let mut random = [0u8; CID_RANDOM];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let mut bytes = [0u8; CID_RANDOM + CID_TAG];
        for (b, v) in bytes
            .iter_mut()
            .zip(random.iter().chain(&self.tag(&random)))
        {
            *b = *v;
        }
        quinn_proto::ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        let (Some(random), Some(tag)) = (cid.get(..CID_RANDOM), cid.get(CID_RANDOM..)) else {
            return Err(quinn_proto::InvalidCid);
        };
        if bool::from(subtle::ConstantTimeEq::ct_eq(&self.tag(random)[..], tag)) {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_RANDOM + CID_TAG
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A client-only endpoint on an OS-chosen port of the right address family.
pub fn client_endpoint(for_peer: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let addr: SocketAddr = if for_peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| TransportError::Tls("address".into()))?;
    quinn::Endpoint::client(addr).map_err(|source| TransportError::Bind { addr, source })
}

/// Connects to `addr`, which must prove it holds `server`'s identity key.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &IdentityKey,
    server: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    let cfg = client_config(identity, server)?;
    let conn = endpoint.connect_with(cfg, addr, SERVER_NAME)?.await?;
    Ok(conn)
}

/// Writes one frame and finishes the stream.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    envelope: &Envelope,
) -> Result<(), TransportError> {
    let frame = codec::encode_frame(envelope)?;
    send.write_all(&frame).await?;
    send.finish()?;
    Ok(())
}

/// Reads one frame, checking its declared length against the limit before allocating.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Envelope, TransportError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = codec::body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(codec::decode_body(&body)?)
}

/// How long a peer may take to deliver one whole request frame on a stream it opened.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one request frame, giving up after [`REQUEST_READ_TIMEOUT`] so a stalled stream
/// cannot hold a task forever.
pub async fn read_request(recv: &mut quinn::RecvStream) -> Result<Envelope, TransportError> {
    tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(recv))
        .await
        .map_err(|_| TransportError::Timeout(REQUEST_READ_TIMEOUT))?
}

/// Sends one request on a new stream and waits (at most `timeout`) for the reply.
pub async fn request(
    conn: &quinn::Connection,
    envelope: &Envelope,
    timeout: Duration,
) -> Result<Envelope, TransportError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, envelope).await?;
        read_frame(&mut recv).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::message::Message;

    async fn echo_server(endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let env = read_frame(&mut recv).await.unwrap();
                    write_frame(
                        &mut send,
                        &Envelope {
                            id: env.id,
                            msg: Message::Pong { groups: vec![] },
                        },
                    )
                    .await
                    .unwrap();
                }
            });
        }
    }

    fn setup(allow_client: bool) -> (IdentityKey, IdentityKey, quinn::Endpoint) {
        let server = IdentityKey::generate(&mut rand::rngs::OsRng);
        let client = IdentityKey::generate(&mut rand::rngs::OsRng);
        let allowed: HashSet<NodeId> = if allow_client {
            [client.node_id()].into()
        } else {
            HashSet::new()
        };
        let cfg = server_config(&server, Pinned::AnyOf(Arc::new(allowed))).unwrap();
        let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), cfg, &server).unwrap();
        (server, client, ep)
    }

    #[tokio::test]
    async fn pinned_peers_connect_and_see_each_others_identity() {
        let (server, client, ep) = setup(true);
        let addr = ep.local_addr().unwrap();
        let ep2 = ep.clone();
        tokio::spawn(echo_server(ep2));
        let cep = client_endpoint(addr).unwrap();
        let conn = connect(&cep, &client, server.node_id(), addr)
            .await
            .unwrap();
        assert_eq!(peer_node_id(&conn), Some(server.node_id()));
        let reply = request(
            &conn,
            &Envelope {
                id: 42,
                msg: Message::Ping,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(reply.id, 42);
    }

    #[tokio::test]
    async fn unpinned_client_is_refused_at_handshake() {
        let (server, client, ep) = setup(false);
        let addr = ep.local_addr().unwrap();
        tokio::spawn(echo_server(ep.clone()));
        let cep = client_endpoint(addr).unwrap();
        // TLS 1.3: the client may finish its side before the server refuses its certificate,
        // so the refusal shows on the first use of the connection at the latest.
        let result = match connect(&cep, &client, server.node_id(), addr).await {
            Err(e) => Err(e),
            Ok(conn) => {
                request(
                    &conn,
                    &Envelope {
                        id: 1,
                        msg: Message::Ping,
                    },
                    Duration::from_secs(5),
                )
                .await
            }
        };
        assert!(result.is_err());
    }

    #[test]
    fn the_stateless_reset_key_is_the_same_across_restarts_and_differs_per_node() {
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let b = IdentityKey::generate(&mut rand::rngs::OsRng);
        let tag = |k: &IdentityKey, port: u16| {
            let (reset, cid) = restart_keys(k, port);
            let sign = |key: &ring::hmac::Key| ring::hmac::sign(key, b"an id").as_ref().to_vec();
            (sign(&reset), sign(&cid))
        };
        assert_eq!(tag(&a, 7000), tag(&a.clone(), 7000), "same node, same port");
        assert_ne!(tag(&a, 7000).0, tag(&b, 7000).0, "another node");
        assert_ne!(tag(&a, 7000).1, tag(&b, 7000).1);
        assert_ne!(
            tag(&a, 7000).0,
            tag(&a, 7001).0,
            "another endpoint of the node"
        );
        assert_ne!(tag(&a, 7000).0, tag(&a, 7000).1, "two keys, not one");
    }

    #[test]
    fn connection_ids_are_long_random_and_recognised_only_by_their_endpoint() {
        use quinn_proto::ConnectionIdGenerator;
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let b = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut gen = StableCids {
            key: restart_keys(&a, 7000).1,
        };
        let restarted = StableCids {
            key: restart_keys(&a, 7000).1,
        };
        let other = StableCids {
            key: restart_keys(&b, 7000).1,
        };
        let ids: HashSet<Vec<u8>> = (0..1000).map(|_| gen.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 1000, "no repeat");
        let id = gen.generate_cid();
        assert_eq!(id.len(), 20);
        assert!(
            restarted.validate(&id).is_ok(),
            "a restart recognises its IDs"
        );
        assert!(other.validate(&id).is_err(), "another node does not");
        let mut forged = id.to_vec();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        assert!(restarted
            .validate(&quinn_proto::ConnectionId::new(&forged))
            .is_err());
    }

    #[tokio::test]
    async fn wrong_server_key_is_refused() {
        let (_server, client, ep) = setup(true);
        let addr = ep.local_addr().unwrap();
        tokio::spawn(echo_server(ep.clone()));
        let impostor = IdentityKey::generate(&mut rand::rngs::OsRng).node_id();
        let cep = client_endpoint(addr).unwrap();
        assert!(connect(&cep, &client, impostor, addr).await.is_err());
    }
}
