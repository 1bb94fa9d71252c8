//! Key ceremonies (DKG, refresh, reshare, repair): every participant runs its side on its own
//! host, and the coordinator relays rounds between them without seeing any secret.
//!
//! The generic machinery, all sans-IO, knows no concrete protocol:
//! - [`Relay`] (coordinator): a bulletin board with synchronous rounds. Each member posts one
//!   message per round (a broadcast plus one direct message per recipient); when every member
//!   has posted, each member gets everything addressed to it. At the end it checks the result
//!   itself (every member's confirmation and signed acknowledgement).
//! - [`Member`] (each participant): the round bookkeeping every ceremony shares: join (a fresh
//!   nonce per run), the protocol rounds, then *confirm* (every member signs the hash of the
//!   manifest it computed; all must agree) and *store* (each member writes its results as
//!   pending, signs an acknowledgement, and activates only with all n);
//!   [`Member::apply`] applies its events to a [`crate::store::ShareStore`].
//! - [`check`]: a rotation plan checked against the member's own manifest before anything
//!   secret leaves it ([`CheckedPlan`]).
//! - a [`Protocol`] declares its [`Rounds`]; the concrete ones (`crate::dkg`,
//!   `crate::reshare`, `crate::repair`) and the factory from a plan to its protocol live in
//!   `crate::kinds`.
//! - [`harness`]: relay and members back to back in memory.
//!
//! Direct messages are sealed with HPKE (RFC 9180, X25519-HKDF-SHA256, ChaCha20-Poly1305) to
//! a per-ceremony X25519 key of the recipient and signed by the sender's identity key; the
//! relay can drop or delay messages, never read or forge them.

pub mod check;
pub mod harness;
pub(crate) mod member;
pub mod plan;
mod relay;

pub use check::{key_fingerprint, CheckedDealer, CheckedPlan, OldGroup, PlanCheckError, Role};
pub use member::{
    completed_manifest, Applied, Completion, CompletionError, CompletionFailure, Member, MemberEnd,
    MemberEvent,
};
pub use plan::{CeremonyKind, CeremonyPlan, FromGroup, OldMember, PlanError, PlanMember, PlanNode};
#[cfg(feature = "fault-injection")]
pub use relay::RelayFault;
pub use relay::{Relay, RelayEvent};

use conclave_protocol::{AbortWhy, Delivered, IdentityKey, NodeId};
use ed25519_dalek::Signer;
use frost_ed25519 as frost;
use hpke::{Deserializable, Serializable};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::manifest::GroupManifest;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// The id and plan hash of a ceremony, and the run: bound into every signature and every
/// HPKE context. A plan may be run again after an abort; `session` (from every member's fresh
/// join nonce) makes each run's signatures, complaints and acknowledgements its own, so the
/// relay cannot replay a message of an earlier run of the same plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub id: [u8; 16],
    pub plan_hash: [u8; 32],
    /// SHA-256 of the plan hash and every member's join nonce in roster order (all zero
    /// before the join round is delivered).
    pub session: [u8; 32],
}

impl Ctx {
    /// The context of `plan`, before the join round (no session yet).
    pub fn of(plan: &CeremonyPlan) -> Result<Self, PlanError> {
        Ok(Self {
            id: plan.id()?,
            plan_hash: plan.hash()?,
            session: [0; 32],
        })
    }

    /// The context of one run of `plan`: `nonces` are the members' join nonces in roster order.
    pub fn for_run<'a>(
        plan: &CeremonyPlan,
        nonces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, PlanError> {
        Ok(Self::of(plan)?.with_run(nonces))
    }

    /// This context for the run whose join nonces are `nonces` (roster order).
    pub fn with_run<'a>(mut self, nonces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let ctx = &mut self;
        let mut h = Sha256::new();
        for p in [b"conclave/session/v1".as_slice(), ctx.plan_hash.as_slice()] {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        for p in nonces {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        ctx.session = h.finalize().into();
        self
    }

    /// The bytes a signature or an HPKE context covers: a domain label, this context, the
    /// round, the sender, the recipient (if any) and a payload, each length-framed.
    fn statement(
        &self,
        domain: &[u8],
        round: u8,
        from: &NodeId,
        to: Option<&NodeId>,
        parts: &[&[u8]],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"conclave/ceremony/v1\0");
        out.extend_from_slice(&(domain.len() as u32).to_be_bytes());
        out.extend_from_slice(domain);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.plan_hash);
        out.extend_from_slice(&self.session);
        out.push(round);
        out.extend_from_slice(&from.0);
        out.extend_from_slice(&to.map(|t| t.0).unwrap_or([0; 32]));
        for p in parts {
            out.extend_from_slice(&(p.len() as u64).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Signs a statement with `identity`.
    pub fn sign(
        &self,
        identity: &IdentityKey,
        domain: &[u8],
        round: u8,
        to: Option<&NodeId>,
        parts: &[&[u8]],
    ) -> Vec<u8> {
        let msg = self.statement(domain, round, &identity.node_id(), to, parts);
        identity.signing_key().sign(&msg).to_bytes().to_vec()
    }

    /// Checks a statement signed by `from`.
    pub fn verify(
        &self,
        from: &NodeId,
        signature: &[u8],
        domain: &[u8],
        round: u8,
        to: Option<&NodeId>,
        parts: &[&[u8]],
    ) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&from.0) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let msg = self.statement(domain, round, from, to, parts);
        key.verify_strict(&msg, &sig).is_ok()
    }
}

/// A member's per-ceremony X25519 secret for HPKE. Zeroized on drop (x25519-dalek), prints
/// `[redacted]`.
pub struct EncryptionKey(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

impl EncryptionKey {
    /// A fresh key and its public half.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> (Self, [u8; 32]) {
        let (sk, pk) = <Kem as hpke::Kem>::gen_keypair(&mut &mut *rng);
        let mut out = [0u8; 32];
        out.copy_from_slice(&pk.to_bytes());
        (Self(sk), out)
    }
}

/// A direct message: HPKE ciphertext to the recipient, signed by the sender.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sealed {
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub signature: Vec<u8>,
}

const SEAL_DOMAIN: &[u8] = b"direct";

impl Ctx {
    /// Encrypts `plaintext` to `to` (whose per-ceremony key is `to_key`) and signs it.
    pub fn seal<R: RngCore + CryptoRng + ?Sized>(
        &self,
        identity: &IdentityKey,
        round: u8,
        to: &NodeId,
        to_key: &[u8; 32],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Sealed, Fault> {
        let me = identity.node_id();
        let info = self.statement(SEAL_DOMAIN, round, &me, Some(to), &[]);
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(to_key).map_err(|_| Fault::Malformed)?;
        let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &hpke::OpModeS::Base,
            &pk,
            &info,
            plaintext,
            &[],
            &mut &mut *rng,
        )
        .map_err(|_| Fault::Malformed)?;
        let enc = enc.to_bytes().to_vec();
        let signature = self.sign(identity, SEAL_DOMAIN, round, Some(to), &[&enc, &ciphertext]);
        Ok(Sealed {
            enc,
            ciphertext,
            signature,
        })
    }

    /// Checks the sender's signature and decrypts a direct message addressed to `me`.
    pub fn open(
        &self,
        key: &EncryptionKey,
        round: u8,
        from: &NodeId,
        me: &NodeId,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, Fault> {
        if !self.verify(
            from,
            &sealed.signature,
            SEAL_DOMAIN,
            round,
            Some(me),
            &[&sealed.enc, &sealed.ciphertext],
        ) {
            return Err(Fault::BadSignature);
        }
        let info = self.statement(SEAL_DOMAIN, round, from, Some(me), &[]);
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
            .map_err(|_| Fault::Undecryptable)?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &key.0,
            &enc,
            &info,
            &sealed.ciphertext,
            &[],
        )
        .map(Zeroizing::new)
        .map_err(|_| Fault::Undecryptable)
    }
}

impl Ctx {
    /// Seals `plaintext` for `to` (see [`seal`](Self::seal)) as one entry of a post's direct
    /// messages; a recipient key that is not a valid X25519 key blames the recipient.
    pub(crate) fn seal_direct<R: RngCore + CryptoRng + ?Sized>(
        &self,
        identity: &IdentityKey,
        round: u8,
        to: &NodeId,
        to_key: &[u8; 32],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<(NodeId, Vec<u8>), Complaint> {
        let sealed = self
            .seal(identity, round, to, to_key, plaintext, rng)
            .map_err(|_| Complaint::new(round, Fault::Malformed, vec![*to]))?;
        let bytes = postcard::to_allocvec(&sealed)
            .map_err(|_| Complaint::new(round, Fault::LocalFailure, vec![]))?;
        Ok((*to, bytes))
    }

    /// Finds what `from` sent `me` in a delivered round, checks the signature and decrypts
    /// it. Anything missing, unsigned or undecryptable names `from` as a suspect (the relay
    /// could have caused it: see [`Fault::attribution`]).
    pub(crate) fn open_direct(
        &self,
        key: &EncryptionKey,
        round: u8,
        items: &[Delivered],
        from: &NodeId,
        me: &NodeId,
    ) -> Result<Zeroizing<Vec<u8>>, Complaint> {
        let blame = |fault| Complaint::new(round, fault, vec![*from]);
        let sealed: Sealed = items
            .iter()
            .find(|d| d.from == *from)
            .and_then(|d| d.direct.as_deref())
            .and_then(|b| postcard::from_bytes(b).ok())
            .ok_or_else(|| blame(Fault::Missing))?;
        self.open(key, round, from, me, &sealed).map_err(blame)
    }
}

/// What went wrong, as a member reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Members saw different round-1 transcripts (the relay altered or substituted a message).
    TranscriptMismatch,
    /// A round-1 package's proof of knowledge of its secret does not verify.
    InvalidProofOfKnowledge,
    /// A secret share does not match its sender's public commitment.
    InvalidSecretShare,
    /// A message was not signed by its claimed sender.
    BadSignature,
    /// A direct message could not be decrypted.
    Undecryptable,
    /// A message, authenticated as its sender's (signed, or confirmed by the echo round),
    /// could not be parsed.
    Malformed,
    /// A message was missing, or could not be parsed before it was authenticated: the relay
    /// could have dropped or replaced it, so the sender is only a suspect.
    Missing,
    /// Members computed different results (public key packages or manifests).
    ResultMismatch,
    /// The member itself failed (for example, it could not write its share file).
    LocalFailure,
    /// A reshare dealer's constant-term commitment does not match its old verifying share
    /// (times its Lagrange coefficient), or its commitments are malformed.
    InconsistentCommitment,
}

/// Whom a complaint's culprits can be held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The evidence is signed by the culprits themselves (a sealed message they signed, a
    /// round-1 message their own echo vouched for): they are to blame.
    Sender,
    /// The relay could have caused it (a missing, unauthenticated or undecryptable message,
    /// members seeing different things): the culprits are only suspects, "S or the relay".
    SenderOrRelay,
}

impl Fault {
    /// Whether a complaint with this fault blames its culprits, or only suspects them.
    pub fn attribution(self) -> Attribution {
        match self {
            Fault::InvalidProofOfKnowledge
            | Fault::InvalidSecretShare
            | Fault::Malformed
            | Fault::InconsistentCommitment
            | Fault::LocalFailure => Attribution::Sender,
            Fault::TranscriptMismatch
            | Fault::BadSignature
            | Fault::Undecryptable
            | Fault::Missing
            | Fault::ResultMismatch => Attribution::SenderOrRelay,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::TranscriptMismatch => "members saw different round-1 messages (echo check failed: the relay altered or substituted a message)",
            Fault::InvalidProofOfKnowledge => "invalid proof of knowledge in a round-1 package",
            Fault::InvalidSecretShare => "a secret share does not match its sender's commitment",
            Fault::BadSignature => "a message is not signed by its sender (altered in transit)",
            Fault::Undecryptable => "a direct message could not be decrypted",
            Fault::Malformed => "a message signed by its sender is malformed",
            Fault::Missing => "a message was missing or unreadable before it could be authenticated",
            Fault::ResultMismatch => "members computed different group keys or manifests",
            Fault::LocalFailure => "a member failed locally (see its own output)",
            Fault::InconsistentCommitment => "a dealer's commitment does not match its old verifying share",
        }
    }
}

/// A member's reason to stop a ceremony: the round, the fault, and whom it blames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Complaint {
    pub round: u8,
    pub fault: Fault,
    pub culprits: Vec<NodeId>,
}

impl Complaint {
    /// A complaint blaming `culprits`.
    pub fn new(round: u8, fault: Fault, culprits: Vec<NodeId>) -> Self {
        Self {
            round,
            fault,
            culprits,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SignedComplaint {
    pub(crate) complaint: Complaint,
    signature: Vec<u8>,
}

const COMPLAINT_DOMAIN: &[u8] = b"complaint";

impl Ctx {
    fn seal_complaint(&self, identity: &IdentityKey, complaint: &Complaint) -> Vec<u8> {
        let body = postcard::to_allocvec(complaint).unwrap_or_default();
        let signature = self.sign(identity, COMPLAINT_DOMAIN, complaint.round, None, &[&body]);
        postcard::to_allocvec(&SignedComplaint {
            complaint: complaint.clone(),
            signature,
        })
        .unwrap_or_default()
    }

    /// Parses a complaint relayed as from `from`; `None` unless `from` signed it.
    pub fn open_complaint(&self, from: &NodeId, bytes: &[u8]) -> Option<Complaint> {
        let sc: SignedComplaint = postcard::from_bytes(bytes).ok()?;
        let body = postcard::to_allocvec(&sc.complaint).ok()?;
        self.verify(
            from,
            &sc.signature,
            COMPLAINT_DOMAIN,
            sc.complaint.round,
            None,
            &[&body],
        )
        .then_some(sc.complaint)
    }
}

/// Why a ceremony ended, for an operator and for scripts: words, the members this host blames
/// (on evidence they signed that this host checked itself), the members another member
/// accuses (on evidence only the accuser could check), and the suspects ("S or the relay": a
/// relay could have caused what was seen). Never any secret: complaints hold only codes and
/// node ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortReport {
    pub summary: String,
    /// Display names of the members blamed on evidence they signed, checked by this host.
    pub culprits: Vec<String>,
    /// Their node ids, in the same order.
    pub culprit_ids: Vec<NodeId>,
    /// Display names of the members another member's signed complaint names, on evidence
    /// this host did not check (a malicious member could accuse falsely; the relay cannot).
    pub accused: Vec<String>,
    /// Their node ids, in the same order.
    pub accused_ids: Vec<NodeId>,
    /// Who accuses them.
    pub accuser: Option<String>,
    /// Display names of the members who, or the relay, caused the failure.
    pub suspects: Vec<String>,
    /// Their node ids, in the same order.
    pub suspect_ids: Vec<NodeId>,
}

impl AbortReport {
    fn new(plan: &CeremonyPlan, summary: String, suspects: &[NodeId]) -> Self {
        let mut r = Self::nobody(summary);
        r.suspects = suspects.iter().map(|n| plan.name_of(n)).collect();
        r.suspect_ids = suspects.to_vec();
        r
    }

    /// A failure that blames nobody.
    pub fn nobody(summary: String) -> Self {
        Self {
            summary,
            culprits: vec![],
            culprit_ids: vec![],
            accused: vec![],
            accused_ids: vec![],
            accuser: None,
            suspects: vec![],
            suspect_ids: vec![],
        }
    }

    /// This host's own check found evidence signed by `ids` (its own complaint): they are
    /// culprits in its verdict, whatever complaint the relay delivered first.
    pub(crate) fn confirm_culprits(&mut self, plan: &CeremonyPlan, ids: &[NodeId]) {
        if ids.is_empty() {
            return;
        }
        self.summary += &format!(
            "; this host's own check: culprit(s): {}",
            ids.iter()
                .map(|n| plan.name_of(n))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.culprits = ids.iter().map(|n| plan.name_of(n)).collect();
        self.culprit_ids = ids.to_vec();
        self.accused_ids.retain(|n| !ids.contains(n));
        self.accused = self.accused_ids.iter().map(|n| plan.name_of(n)).collect();
    }
}

/// Explains why a ceremony ended (names from the plan).
pub fn describe_abort(
    plan: &CeremonyPlan,
    rounds: &Rounds,
    ctx: &Ctx,
    why: &AbortWhy,
) -> AbortReport {
    let names = |ids: &[NodeId]| ids.iter().map(|n| plan.name_of(n)).collect::<Vec<_>>();
    let or_relay = |ids: &[NodeId]| format!("{} or the relay", names(ids).join(", "));
    match why {
        AbortWhy::Complaint { from, complaint } => match ctx.open_complaint(from, complaint) {
            Some(c) => {
                let accuser = plan.name_of(from);
                // A member's own local failure is its own signed word about itself: blamed.
                let self_report = c.fault == Fault::LocalFailure && c.culprits == [*from];
                let head = format!(
                    "{accuser} reported in round {} ({}): {}",
                    c.round,
                    rounds.name_of(c.round),
                    c.fault.describe()
                );
                if self_report {
                    let mut r = AbortReport::nobody(format!("{head}; culprit(s): {accuser}"));
                    r.culprits = vec![accuser];
                    r.culprit_ids = vec![*from];
                    return r;
                }
                match c.fault.attribution() {
                    Attribution::Sender if !c.culprits.is_empty() => {
                        // Evidence the accused signed, but only the accuser could check it.
                        let mut r = AbortReport::nobody(format!(
                            "{head}; {accuser} names {} (on evidence only {accuser} can check)",
                            names(&c.culprits).join(", ")
                        ));
                        r.accused = names(&c.culprits);
                        r.accused_ids = c.culprits.clone();
                        r.accuser = Some(accuser);
                        r
                    }
                    Attribution::Sender => AbortReport::nobody(head),
                    Attribution::SenderOrRelay if c.culprits.is_empty() => {
                        AbortReport::nobody(head)
                    }
                    Attribution::SenderOrRelay => AbortReport::new(
                        plan,
                        format!("{head}; caused by {}", or_relay(&c.culprits)),
                        &c.culprits,
                    ),
                }
            }
            None => AbortReport::nobody(format!(
                "the relay reported a complaint from {} that is not signed by it (the relay is misbehaving)",
                plan.name_of(from)
            )),
        },
        AbortWhy::Timeout { round, missing } => AbortReport::new(
            plan,
            format!(
                "timed out in round {round} ({}): nothing relayed from {}",
                rounds.name_of(*round),
                or_relay(missing)
            ),
            missing,
        ),
        AbortWhy::Disconnected { node } => AbortReport::new(
            plan,
            format!(
                "the relay reports that {} disconnected mid-ceremony: {}",
                plan.name_of(node),
                or_relay(std::slice::from_ref(node))
            ),
            std::slice::from_ref(node),
        ),
        AbortWhy::Malformed { node } => AbortReport::new(
            plan,
            format!(
                "the relay reports a post that breaks the ceremony protocol from {}",
                or_relay(std::slice::from_ref(node))
            ),
            std::slice::from_ref(node),
        ),
    }
}

/// The end result of a ceremony for one member: the manifest everyone confirmed, and this
/// member's new share (`None` for a member that only gives, such as a leaving dealer).
pub struct Outcome {
    pub manifest: GroupManifest,
    pub key_package: Option<frost::keys::KeyPackage>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("group", &self.manifest.group)
            .field("key_package", &"[redacted]")
            .finish()
    }
}

/// What a protocol wants to post next, or its result.
pub enum Step {
    Post {
        broadcast: Vec<u8>,
        direct: Vec<(NodeId, Vec<u8>)>,
    },
    Finished(Box<Outcome>),
}

/// The shape of a protocol's rounds, declared by each protocol: how many rounds it runs between
/// the join round (0) and the confirm and store rounds that every ceremony ends with, and
/// their names for progress output.
#[derive(Clone, Copy)]
pub struct Rounds {
    /// Number of protocol rounds (1..=protocol).
    pub protocol: u8,
    /// The name of protocol round `r`.
    pub names: fn(u8) -> &'static str,
}

impl std::fmt::Debug for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rounds")
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Rounds {
    /// The confirm round (every member signs the manifest it computed).
    pub fn confirm_round(&self) -> u8 {
        self.protocol + 1
    }

    /// The last round: store (every member acknowledges its pending share).
    pub fn final_round(&self) -> u8 {
        self.protocol + 2
    }

    /// A short name for any round, for progress output.
    pub fn name_of(&self, round: u8) -> &'static str {
        match round {
            0 => "join",
            r if r == self.confirm_round() => "confirm",
            r if r == self.final_round() => "store",
            r => (self.names)(r),
        }
    }
}

/// The cryptography of one kind of ceremony, driven by [`Member`]. Round numbers start at 1;
/// `items` holds one entry per roster member, in roster order, the member's own included.
pub trait Protocol {
    /// The protocol's rounds.
    fn rounds(&self) -> Rounds;
    /// Round 1's post.
    fn start(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint>;
    /// Handles the delivery of `round` and returns the next post (or the result).
    fn deliver(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint>;
}

impl<P: Protocol + ?Sized> Protocol for Box<P> {
    fn rounds(&self) -> Rounds {
        (**self).rounds()
    }
    fn start(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        (**self).start(ctx, identity, rng)
    }
    fn deliver(
        &mut self,
        ctx: &Ctx,
        identity: &IdentityKey,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) -> Result<Step, Complaint> {
        (**self).deliver(ctx, identity, round, items, rng)
    }
}

/// An object-safe cryptographic RNG.
pub trait RngCoreCrypto: RngCore + CryptoRng {}
impl<T: RngCore + CryptoRng> RngCoreCrypto for T {}

const ECHO_DOMAIN: &[u8] = b"echo";

/// Round-1 transcript of an echo broadcast: every member's broadcast in roster order, with
/// `mine` (what this member actually sent) in place of its own delivered copy.
pub(crate) fn transcript(items: &[Delivered], me: &NodeId, mine: &[u8]) -> Vec<(NodeId, Vec<u8>)> {
    items
        .iter()
        .map(|d| {
            let bytes = if d.from == *me {
                mine.to_vec()
            } else {
                d.broadcast.clone()
            };
            (d.from, bytes)
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Echo {
    transcript: [u8; 32],
    signature: Vec<u8>,
}

/// The echo post for round `round`: the transcript hash signed by this member.
pub(crate) fn echo_post(
    ctx: &Ctx,
    identity: &IdentityKey,
    round: u8,
    transcript: &[(NodeId, Vec<u8>)],
) -> Result<([u8; 32], Step), Complaint> {
    let hash = hash_parts(transcript.iter().map(|(_, b)| b.as_slice()));
    let signature = ctx.sign(identity, ECHO_DOMAIN, round, None, &[&hash]);
    let broadcast = postcard::to_allocvec(&Echo {
        transcript: hash,
        signature,
    })
    .map_err(|_| Complaint::new(round, Fault::LocalFailure, vec![]))?;
    Ok((
        hash,
        Step::Post {
            broadcast,
            direct: vec![],
        },
    ))
}

/// Checks the echo round: every echo signed by its member and equal to `mine`. On a
/// mismatch, names everyone outside the largest group of agreeing members (all, on a tie).
pub(crate) fn check_echoes(
    ctx: &Ctx,
    round: u8,
    items: &[Delivered],
    mine: &[u8; 32],
) -> Result<(), Complaint> {
    let mut hashes: std::collections::BTreeMap<[u8; 32], Vec<NodeId>> = Default::default();
    let mut bad = vec![];
    for d in items {
        match postcard::from_bytes::<Echo>(&d.broadcast) {
            Ok(e)
                if ctx.verify(
                    &d.from,
                    &e.signature,
                    ECHO_DOMAIN,
                    round,
                    None,
                    &[&e.transcript],
                ) =>
            {
                hashes.entry(e.transcript).or_default().push(d.from)
            }
            _ => bad.push(d.from),
        }
    }
    if !bad.is_empty() {
        return Err(Complaint::new(round, Fault::BadSignature, bad));
    }
    if hashes.len() > 1 {
        let largest = hashes.values().map(Vec::len).max().unwrap_or(0);
        let ties = hashes.values().filter(|v| v.len() == largest).count();
        let mut disagreeing: Vec<NodeId> = hashes
            .values()
            .filter(|v| ties > 1 || v.len() != largest)
            .flatten()
            .copied()
            .collect();
        disagreeing.sort_by_key(|n| items.iter().position(|d| d.from == *n));
        return Err(Complaint::new(
            round,
            Fault::TranscriptMismatch,
            disagreeing,
        ));
    }
    if hashes.keys().next() != Some(mine) {
        return Err(Complaint::new(round, Fault::TranscriptMismatch, vec![]));
    }
    Ok(())
}

/// SHA-256 of a sequence of byte strings, each length-framed.
pub(crate) fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests;
