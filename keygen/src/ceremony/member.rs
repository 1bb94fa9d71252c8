//! A participant's side of a ceremony: join, the protocol rounds, confirm, store, activate.
//!
//! The store round is what makes a ceremony all-or-nothing against a malicious relay. Each
//! member writes its new share as a *pending* file, then posts an acknowledgement signed with
//! its identity key over the ceremony and the manifest hash. A member activates only when it
//! holds the signed acknowledgements of **every** member ([`Completion`]); the relay cannot
//! forge one. A member that has signed its own acknowledgement never discards its pending
//! file on its own: if the acknowledgements do not arrive (timeout, an abort reported by the
//! relay, a forged ack) it reports [`MemberEvent::Undecided`] and keeps the file, because
//! others may have activated; shown the n acknowledgements later (`rotate resume`) it
//! activates too. Before it has signed, an abort discards: nobody can activate without its
//! acknowledgement. So the members end all activated, or none, eventually.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use conclave_protocol::{Delivered, Envelope, IdentityKey, Message, NodeId, PostBody};
use serde::{Deserialize, Serialize};

use super::{
    describe_abort, AbortReport, CeremonyPlan, Complaint, Ctx, Fault, Outcome, PlanError, Protocol,
    RngCoreCrypto, Rounds, Step,
};
use crate::manifest::GroupManifest;
use crate::store::ShareStore;

/// Extra time a member gives the relay beyond the plan's timeouts before giving up itself.
const GRACE: Duration = Duration::from_secs(10);
const CONFIRM_DOMAIN: &[u8] = b"confirm";
const STORED_DOMAIN: &[u8] = b"stored";
/// The round labels confirmations and acknowledgements are signed under: fixed, so they do not
/// depend on a protocol's round count, and equal to the confirm and store round numbers of
/// the three-round protocols (DKG, refresh, reshare, repair), so acknowledgements and
/// completion files written before the labels were fixed still verify.
const CONFIRM_LABEL: u8 = 4;
const STORED_LABEL: u8 = 5;

/// Progress and results of a ceremony, for the driver.
#[derive(Debug)]
pub enum MemberEvent {
    /// Every member has joined.
    Joined,
    /// `round` was delivered and processed.
    RoundComplete { round: u8 },
    /// Every member confirmed the same result. The driver writes the share (and manifest) as
    /// *pending* files (not active), keeps `ack` (this member's own acknowledgement, posted
    /// once it calls [`Member::stored`] with `true`: the record that binds the pending files to
    /// this run of this plan, for `rotate resume`), then calls [`Member::stored`].
    Store {
        outcome: Box<Outcome>,
        ack: Completion,
    },
    /// Every member signed that it stored its share: the driver activates the pending files
    /// and keeps the completion (public) so that an undecided member can be shown it.
    Activate(Completion),
    /// This member signed its acknowledgement but never saw all n: others may have activated,
    /// so the driver keeps the pending files and the partial completion (this member's own
    /// acknowledgement and any others it saw) for `rotate resume`.
    Undecided {
        report: AbortReport,
        partial: Completion,
    },
    /// The ceremony ended without a result before this member acknowledged: the driver
    /// removes any pending file.
    Aborted(AbortReport),
}

/// How a member's side of a ceremony ended, once its events were applied to a store.
#[derive(Debug)]
pub enum MemberEnd {
    /// Every member acknowledged and this member's results are active.
    Activated {
        manifest: GroupManifest,
        completion: Completion,
    },
    /// This member acknowledged but did not see every acknowledgement: its results stay
    /// pending (`rotate resume`).
    Undecided(AbortReport),
    /// The ceremony ended before this member acknowledged: its pending results are gone.
    Aborted(AbortReport),
}

/// What [`Member::apply`] did with one event.
#[derive(Debug)]
pub enum Applied {
    /// A progress event for the driver to show (joined, a round completed).
    Progress(MemberEvent),
    /// The pending results were written (`Ok`), or not (the ceremony aborts for everyone).
    Stored(Result<(), crate::store::StoreError>),
    /// The member's side is over.
    End(MemberEnd),
}

/// The signed acknowledgements of a ceremony's store round: every member's signature, with
/// its identity key, over the ceremony id, the plan hash and the manifest hash. All n of them
/// prove that every member holds its new share as a pending file: the condition to activate.
/// Public (no secret); stored next to the share as `*.completion.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// Ceremony id (hex).
    pub ceremony: String,
    /// SHA-256 of the plan (hex).
    pub plan_hash: String,
    /// The run of the plan (hex; see [`Ctx::session`]).
    pub session: String,
    /// SHA-256 of the manifest every member stored (hex).
    pub manifest_hash: String,
    /// Identity key (hex) → Ed25519 signature (hex).
    pub acks: BTreeMap<String, String>,
}

/// Why a completion does not allow activation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletionError {
    #[error("the completion is for another ceremony, plan or run of the plan")]
    OtherCeremony,
    #[error("the completion is for another manifest than the pending one")]
    OtherManifest,
    #[error("the acknowledgement of {0} does not verify")]
    BadAck(String),
    #[error("{0} is not a member of this ceremony")]
    NotAMember(String),
    #[error("acknowledgements are missing from: {0}")]
    Missing(String),
    #[error("the completion is not valid TOML: {0}")]
    Syntax(String),
}

impl Completion {
    fn empty(ctx: &Ctx, manifest_hash: &[u8; 32]) -> Self {
        Self {
            ceremony: hex::encode(ctx.id),
            plan_hash: hex::encode(ctx.plan_hash),
            session: hex::encode(ctx.session),
            manifest_hash: hex::encode(manifest_hash),
            acks: BTreeMap::new(),
        }
    }

    /// Parses a completion file's text.
    pub fn from_toml(text: &str) -> Result<Self, CompletionError> {
        toml::from_str(text).map_err(|e| CompletionError::Syntax(e.message().to_owned()))
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Adds the acknowledgements of `other` (same ceremony and manifest) to these.
    pub fn merge(&mut self, other: &Completion) -> Result<(), CompletionError> {
        if other.ceremony != self.ceremony
            || other.plan_hash != self.plan_hash
            || other.session != self.session
        {
            return Err(CompletionError::OtherCeremony);
        }
        if other.manifest_hash != self.manifest_hash {
            return Err(CompletionError::OtherManifest);
        }
        for (k, v) in &other.acks {
            self.acks.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok(())
    }

    /// Checks that every member of `plan` acknowledged `manifest_hash` (and nothing else
    /// signed in). On success the pending files of this ceremony may be activated.
    pub fn verify(
        &self,
        plan: &CeremonyPlan,
        manifest_hash: &[u8; 32],
    ) -> Result<(), CompletionError> {
        let mut ctx = Ctx::of(plan).map_err(|_| CompletionError::OtherCeremony)?;
        if self.ceremony != hex::encode(ctx.id) || self.plan_hash != hex::encode(ctx.plan_hash) {
            return Err(CompletionError::OtherCeremony);
        }
        hex::decode_to_slice(&self.session, &mut ctx.session)
            .map_err(|_| CompletionError::OtherCeremony)?;
        if self.manifest_hash != hex::encode(manifest_hash) {
            return Err(CompletionError::OtherManifest);
        }
        let roster: Vec<NodeId> = plan
            .roster()
            .map_err(|_| CompletionError::OtherCeremony)?
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        for (key, sig) in &self.acks {
            let node =
                NodeId::from_hex(key).map_err(|_| CompletionError::NotAMember(key.clone()))?;
            if !roster.contains(&node) {
                return Err(CompletionError::NotAMember(plan.name_of(&node)));
            }
            let sig = hex::decode(sig).unwrap_or_default();
            if !ctx.verify(
                &node,
                &sig,
                STORED_DOMAIN,
                STORED_LABEL,
                None,
                &[manifest_hash],
            ) {
                return Err(CompletionError::BadAck(plan.name_of(&node)));
            }
        }
        let missing: Vec<String> = roster
            .iter()
            .filter(|n| !self.acks.contains_key(&n.to_hex()))
            .map(|n| plan.name_of(n))
            .collect();
        if !missing.is_empty() {
            return Err(CompletionError::Missing(missing.join(", ")));
        }
        Ok(())
    }
}

/// What every member posts in the store round.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoreAck {
    manifest_hash: [u8; 32],
    signature: Vec<u8>,
    /// The first member in the roster also hands the relay the manifest text, so the
    /// coordinator can write it; every acknowledgement vouches for its hash.
    manifest: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Confirm {
    manifest_hash: [u8; 32],
    signature: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    Protocol,
    Confirming,
    Storing,
    Stored,
    Aborting,
    Done,
    Aborted,
    Undecided,
}

/// The member state machine. Input: [`start`](Self::start), [`handle`](Self::handle) (the
/// relay's reply to the last post), [`stored`](Self::stored),
/// [`handle_timeout`](Self::handle_timeout). Output: [`poll_transmit`](Self::poll_transmit)
/// (posts to the relay), [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout).
pub struct Member<P> {
    ctx: Ctx,
    plan: CeremonyPlan,
    rounds: Rounds,
    roster: Vec<NodeId>,
    identity: IdentityKey,
    protocol: P,
    round: u8,
    phase: Phase,
    pending: Option<u64>,
    next_id: u64,
    manifest: Option<GroupManifest>,
    manifest_hash: [u8; 32],
    confirmed_outcome: Option<Box<Outcome>>,
    outbox: VecDeque<Envelope>,
    events: VecDeque<MemberEvent>,
    deadline: Option<Instant>,
    /// This member's join nonce for this run.
    nonce: [u8; 32],
    /// The complaint this member made itself (its own verdict), if any.
    own_complaint: Option<Complaint>,
}

impl<P: Protocol> Member<P> {
    /// A member of `plan` with `identity`, running `protocol`.
    pub fn new(plan: &CeremonyPlan, identity: IdentityKey, protocol: P) -> Result<Self, PlanError> {
        let roster: Vec<NodeId> = plan.roster()?.into_iter().map(|m| m.node_id).collect();
        if !roster.contains(&identity.node_id()) {
            return Err(PlanError::BadNode {
                name: identity.node_id().short(),
                what: "this identity is not a participant of the plan",
            });
        }
        Ok(Self {
            ctx: Ctx::of(plan)?,
            plan: plan.clone(),
            rounds: protocol.rounds(),
            roster,
            identity,
            protocol,
            round: 0,
            phase: Phase::Joining,
            pending: None,
            next_id: 1,
            manifest: None,
            manifest_hash: [0; 32],
            confirmed_outcome: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
            nonce: [0; 32],
            own_complaint: None,
        })
    }

    /// The round this member is in.
    pub fn round(&self) -> u8 {
        self.round
    }

    /// The ceremony's context (id and plan hash).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// True once this member has signed its store acknowledgement (from then on it never
    /// discards its pending share on its own).
    pub fn is_acknowledged(&self) -> bool {
        matches!(self.phase, Phase::Stored | Phase::Undecided | Phase::Done)
    }

    /// True once the ceremony completed, aborted, or left this member undecided.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Aborted | Phase::Undecided)
    }

    fn timeout_for(&self, round: u8) -> Duration {
        let secs = if round == 0 {
            self.plan.join_timeout_secs
        } else {
            self.plan.round_timeout_secs
        };
        Duration::from_secs(secs.into()) + GRACE
    }

    fn post(&mut self, now: Instant, body: PostBody) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending = Some(id);
        self.deadline = Some(now + self.timeout_for(self.round));
        self.outbox.push_back(Envelope {
            id,
            msg: Message::CeremonyPost {
                ceremony: self.ctx.id,
                plan_hash: self.ctx.plan_hash,
                round: self.round,
                body,
            },
        });
    }

    /// Joins the ceremony (round 0) with a fresh nonce: every member's nonce makes the run's
    /// session (see [`Ctx::session`]).
    pub fn start(&mut self, now: Instant, rng: &mut dyn RngCoreCrypto) {
        if self.round == 0 && self.pending.is_none() && self.phase == Phase::Joining {
            rng.fill_bytes(&mut self.nonce);
            self.post(
                now,
                PostBody::Round {
                    broadcast: self.nonce.to_vec(),
                    direct: vec![],
                },
            );
        }
    }

    fn finish_aborted(&mut self, report: AbortReport) {
        self.phase = Phase::Aborted;
        self.pending = None;
        self.deadline = None;
        self.events.push_back(MemberEvent::Aborted(report));
    }

    /// After this member signed its store acknowledgement, anything but all n acks leaves it
    /// undecided: its pending files stay, with what it knows of the acknowledgements.
    fn undecided(&mut self, report: AbortReport, partial: Completion) {
        self.phase = Phase::Undecided;
        self.pending = None;
        self.deadline = None;
        self.events
            .push_back(MemberEvent::Undecided { report, partial });
    }

    /// This member's signed acknowledgement that it stored the manifest it confirmed.
    fn sign_ack(&self) -> Vec<u8> {
        self.ctx.sign(
            &self.identity,
            STORED_DOMAIN,
            STORED_LABEL,
            None,
            &[&self.manifest_hash],
        )
    }

    fn own_completion(&self) -> Completion {
        let mut c = Completion::empty(&self.ctx, &self.manifest_hash);
        c.acks.insert(
            self.identity.node_id().to_hex(),
            hex::encode(self.sign_ack()),
        );
        c
    }

    /// The relay's answer to the store round (this member has signed its acknowledgement).
    fn handle_stored(&mut self, msg: Message) {
        let final_round = self.rounds.final_round();
        let mut partial = self.own_completion();
        let why = match msg {
            Message::CeremonyRound {
                ceremony,
                round,
                items,
            } if ceremony == self.ctx.id && round == final_round => {
                self.events.push_back(MemberEvent::RoundComplete { round });
                let mut bad = vec![];
                for r in &self.roster {
                    let ack = items
                        .iter()
                        .find(|d| d.from == *r)
                        .and_then(|d| postcard::from_bytes::<StoreAck>(&d.broadcast).ok())
                        .filter(|a| {
                            a.manifest_hash == self.manifest_hash
                                && self.ctx.verify(
                                    r,
                                    &a.signature,
                                    STORED_DOMAIN,
                                    STORED_LABEL,
                                    None,
                                    &[&self.manifest_hash],
                                )
                        });
                    match ack {
                        Some(a) => {
                            partial.acks.insert(r.to_hex(), hex::encode(&a.signature));
                        }
                        None => bad.push(*r),
                    }
                }
                if bad.is_empty() {
                    self.phase = Phase::Done;
                    self.events.push_back(MemberEvent::Activate(partial));
                    return;
                }
                let names: Vec<String> = bad.iter().map(|n| self.plan.name_of(n)).collect();
                let report = AbortReport::nobody(format!(
                    "the store round came back without a valid signed acknowledgement from {} or the relay; this member keeps its pending share (others may have activated): finish with `conclave rotate resume`",
                    names.join(", ")
                ));
                return self.undecided(report, partial);
            }
            Message::CeremonyAborted { ceremony, why } if ceremony == self.ctx.id => why,
            other => {
                let report = AbortReport::nobody(format!(
                    "the relay answered the store round with {}; this member keeps its pending share: finish with `conclave rotate resume`",
                    match other {
                        Message::Refused(r) => format!("a refusal ({r})"),
                        _ => "an unexpected message".into(),
                    }
                ));
                return self.undecided(report, partial);
            }
        };
        // Nothing the relay delivers here proves that nobody activated: not a timeout, not a
        // disconnection, not even a member's signed complaint (a member can sign both an
        // acknowledgement and a complaint). Only the operator abandons (`rotate resume
        // --abandon`), once no member activated.
        let mut report = describe_abort(&self.plan, &self.rounds, &self.ctx, &why);
        report.summary += "; this member had already acknowledged its pending share and keeps it (others may have activated): finish with `conclave rotate resume`";
        self.undecided(report, partial);
    }

    fn complain(&mut self, now: Instant, complaint: Complaint) {
        self.own_complaint = Some(complaint.clone());
        let bytes = self.ctx.seal_complaint(&self.identity, &complaint);
        self.phase = Phase::Aborting;
        self.post(now, PostBody::Abort { complaint: bytes });
    }

    /// The relay's reply to this member's last post.
    pub fn handle(&mut self, now: Instant, env: Envelope, rng: &mut dyn RngCoreCrypto) {
        if self.pending != Some(env.id) || self.is_finished() {
            return;
        }
        self.pending = None;
        self.deadline = None;
        if self.phase == Phase::Stored {
            return self.handle_stored(env.msg);
        }
        match env.msg {
            Message::CeremonyAborted { ceremony, why } if ceremony == self.ctx.id => {
                let mut report = describe_abort(&self.plan, &self.rounds, &self.ctx, &why);
                // Another member's accusation becomes this host's verdict only where its own
                // check found the same fault in the same member.
                if let Some(own) = &self.own_complaint {
                    if own.fault.attribution() == super::Attribution::Sender {
                        let ids = own.culprits.clone();
                        report.confirm_culprits(&self.plan, &ids);
                    }
                }
                self.finish_aborted(report);
            }
            Message::CeremonyRound {
                ceremony,
                round,
                items,
            } if ceremony == self.ctx.id && round == self.round => {
                if self.phase == Phase::Aborting {
                    return;
                }
                if items.len() != self.roster.len()
                    || items.iter().zip(&self.roster).any(|(d, r)| d.from != *r)
                {
                    return self.complain(now, Complaint::new(round, Fault::Missing, vec![]));
                }
                self.delivered(now, round, &items, rng);
            }
            Message::Refused(r) => self.finish_aborted(AbortReport::nobody(format!(
                "the relay refused this member: {r}"
            ))),
            _ => self.complain(now, Complaint::new(self.round, Fault::Missing, vec![])),
        }
    }

    fn delivered(
        &mut self,
        now: Instant,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) {
        let protocol_rounds = self.rounds.protocol;
        let step = if round == 0 {
            // The run's session: every member's nonce (this one's as it sent it).
            let me = self.identity.node_id();
            let nonces: Vec<&[u8]> = items
                .iter()
                .map(|d| {
                    if d.from == me {
                        self.nonce.as_slice()
                    } else {
                        d.broadcast.as_slice()
                    }
                })
                .collect();
            let short: Vec<NodeId> = items
                .iter()
                .filter(|d| d.from != me && d.broadcast.len() != 32)
                .map(|d| d.from)
                .collect();
            if !short.is_empty() {
                return self.complain(now, Complaint::new(round, Fault::Missing, short));
            }
            match Ctx::for_run(&self.plan, nonces) {
                Ok(ctx) => self.ctx = ctx,
                Err(_) => {
                    return self.complain(now, Complaint::new(round, Fault::LocalFailure, vec![]))
                }
            }
            self.events.push_back(MemberEvent::Joined);
            self.phase = Phase::Protocol;
            self.protocol.start(&self.ctx, &self.identity, rng)
        } else if round <= protocol_rounds {
            self.events.push_back(MemberEvent::RoundComplete { round });
            self.protocol
                .deliver(&self.ctx, &self.identity, round, items, rng)
        } else if round == protocol_rounds + 1 {
            self.events.push_back(MemberEvent::RoundComplete { round });
            return self.check_confirmations(now, round, items);
        } else {
            // The store round is answered in `handle_stored`; nothing else reaches here.
            return;
        };
        self.round = round + 1;
        match step {
            Err(complaint) => self.complain(now, complaint),
            Ok(Step::Post { broadcast, direct }) => {
                self.post(now, PostBody::Round { broadcast, direct })
            }
            Ok(Step::Finished(outcome)) => self.confirm(now, outcome),
        }
    }

    fn confirm(&mut self, now: Instant, outcome: Box<Outcome>) {
        let hash = match outcome.manifest.hash() {
            Ok(h) => h,
            Err(_) => {
                let c = Complaint::new(self.round, Fault::LocalFailure, vec![]);
                return self.complain(now, c);
            }
        };
        let signature = self.ctx.sign(
            &self.identity,
            CONFIRM_DOMAIN,
            CONFIRM_LABEL,
            None,
            &[&hash],
        );
        let broadcast = postcard::to_allocvec(&Confirm {
            manifest_hash: hash,
            signature,
        })
        .unwrap_or_default();
        self.manifest_hash = hash;
        self.manifest = Some(outcome.manifest.clone());
        self.phase = Phase::Confirming;
        // The outcome waits in the Store event's box until everyone has confirmed.
        self.confirmed_outcome = Some(outcome);
        self.post(
            now,
            PostBody::Round {
                broadcast,
                direct: vec![],
            },
        );
    }

    fn check_confirmations(&mut self, now: Instant, round: u8, items: &[Delivered]) {
        let mut bad_sig = vec![];
        let mut differ = vec![];
        for d in items {
            match postcard::from_bytes::<Confirm>(&d.broadcast) {
                Ok(c)
                    if self.ctx.verify(
                        &d.from,
                        &c.signature,
                        CONFIRM_DOMAIN,
                        CONFIRM_LABEL,
                        None,
                        &[&c.manifest_hash],
                    ) =>
                {
                    if c.manifest_hash != self.manifest_hash {
                        differ.push(d.from);
                    }
                }
                _ => bad_sig.push(d.from),
            }
        }
        self.round = round + 1;
        if !bad_sig.is_empty() {
            return self.complain(now, Complaint::new(round, Fault::BadSignature, bad_sig));
        }
        if !differ.is_empty() {
            return self.complain(now, Complaint::new(round, Fault::ResultMismatch, differ));
        }
        match self.confirmed_outcome.take() {
            Some(outcome) => {
                self.phase = Phase::Storing;
                let ack = self.own_completion();
                self.events.push_back(MemberEvent::Store { outcome, ack });
            }
            None => self.complain(now, Complaint::new(round, Fault::LocalFailure, vec![])),
        }
    }

    /// The driver wrote the pending share file (`ok`), or failed to (`!ok`: the ceremony is
    /// aborted for everyone).
    pub fn stored(&mut self, now: Instant, ok: bool) {
        if self.phase != Phase::Storing {
            return;
        }
        if !ok {
            let c = Complaint::new(
                self.round,
                Fault::LocalFailure,
                vec![self.identity.node_id()],
            );
            return self.complain(now, c);
        }
        self.phase = Phase::Stored;
        let manifest = if self.roster.first() == Some(&self.identity.node_id()) {
            self.manifest.as_ref().and_then(|m| m.to_toml().ok())
        } else {
            None
        };
        let broadcast = postcard::to_allocvec(&StoreAck {
            manifest_hash: self.manifest_hash,
            signature: self.sign_ack(),
            manifest,
        })
        .unwrap_or_default();
        self.post(
            now,
            PostBody::Round {
                broadcast,
                direct: vec![],
            },
        );
    }

    /// Gives up if the relay has not answered in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) && !self.is_finished() {
            let round = self.round;
            let report = AbortReport::nobody(format!(
                "no answer from the relay in round {round} ({}) within the timeout",
                self.rounds.name_of(round)
            ));
            if self.phase == Phase::Stored {
                let partial = self.own_completion();
                let mut report = report;
                report.summary += "; this member keeps its acknowledged pending share: finish with `conclave rotate resume`";
                self.undecided(report, partial);
            } else {
                self.finish_aborted(report);
            }
        }
    }

    /// The next post for the relay.
    pub fn poll_transmit(&mut self) -> Option<Envelope> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Applies `event` (from [`poll_event`](Self::poll_event)) to `store`, the one place that
    /// decides what a ceremony does to key material: a store event writes the pending results
    /// and answers the member; activation makes them active (a failure then keeps them:
    /// everyone acknowledged, others may have activated); undecided keeps them with the
    /// acknowledgements seen; an abort before acknowledging discards them. Every driver (QUIC,
    /// simulator, tests, benches) calls this.
    pub fn apply<S: ShareStore + ?Sized>(
        &mut self,
        now: Instant,
        event: MemberEvent,
        store: &mut S,
    ) -> Applied {
        match event {
            MemberEvent::Store { outcome, ack } => {
                let written = store.write_pending(&outcome, &ack);
                self.stored(now, written.is_ok());
                Applied::Stored(written)
            }
            MemberEvent::Activate(completion) => match store.activate(&completion) {
                Ok(()) => match self.manifest.clone() {
                    Some(manifest) => Applied::End(MemberEnd::Activated {
                        manifest,
                        completion,
                    }),
                    None => Applied::End(MemberEnd::Undecided(AbortReport::nobody(
                        "activated without a manifest (internal error)".into(),
                    ))),
                },
                Err(e) => Applied::End(MemberEnd::Undecided(AbortReport::nobody(format!(
                    "every member acknowledged, but activating here failed: {e}; the pending files are kept: fix the cause and run `conclave rotate resume`"
                )))),
            },
            MemberEvent::Undecided {
                mut report,
                partial,
            } => {
                if let Err(e) = store.keep_undecided(&partial) {
                    report.summary += &format!(" (the acknowledgements seen could not be saved: {e})");
                }
                Applied::End(MemberEnd::Undecided(report))
            }
            MemberEvent::Aborted(report) => {
                store.discard();
                Applied::End(MemberEnd::Aborted(report))
            }
            other => Applied::Progress(other),
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Why the relay could not accept a ceremony whose rounds all completed: the members named by
/// node id did not vouch for the result.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletionFailure {
    #[error("confirmations or acknowledgements are missing")]
    Incomplete,
    #[error("the first member did not hand over the manifest")]
    NoManifest { node: NodeId },
    #[error("the manifest handed over is not usable: {reason}")]
    BadManifest { node: NodeId, reason: String },
    #[error("a member did not confirm this manifest")]
    NotConfirmed { node: NodeId },
    #[error("a member sent no valid acknowledgement")]
    NoAck { node: NodeId },
    #[error("the plan cannot be used: {0}")]
    Plan(String),
}

impl CompletionFailure {
    /// The member at fault, by node id.
    pub fn culprit(&self) -> Option<NodeId> {
        match self {
            CompletionFailure::NoManifest { node }
            | CompletionFailure::BadManifest { node, .. }
            | CompletionFailure::NotConfirmed { node }
            | CompletionFailure::NoAck { node } => Some(*node),
            _ => None,
        }
    }
}

/// The result of a completed ceremony, as the relay learns it: the first member's manifest
/// text, whose hash every member signed in the confirm round, and every member's signed
/// store acknowledgement of it (the completion that undecided members can be shown).
pub fn completed_manifest(
    plan: &CeremonyPlan,
    joins: &[Vec<u8>],
    confirm: &[Vec<u8>],
    store: &[Vec<u8>],
) -> Result<(GroupManifest, Completion), CompletionFailure> {
    let plan_err = |e: PlanError| CompletionFailure::Plan(e.to_string());
    let ctx = Ctx::for_run(plan, joins.iter().map(Vec::as_slice)).map_err(plan_err)?;
    let roster: Vec<NodeId> = plan
        .roster()
        .map_err(plan_err)?
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    if confirm.len() != roster.len() || store.len() != roster.len() {
        return Err(CompletionFailure::Incomplete);
    }
    let first = *roster.first().ok_or(CompletionFailure::Incomplete)?;
    let text = store
        .first()
        .and_then(|b| postcard::from_bytes::<StoreAck>(b).ok())
        .and_then(|a| a.manifest)
        .ok_or(CompletionFailure::NoManifest { node: first })?;
    let bad = |e: crate::ManifestError| CompletionFailure::BadManifest {
        node: first,
        reason: e.to_string(),
    };
    let manifest = GroupManifest::from_toml(&text).map_err(bad)?;
    let hash = manifest.hash().map_err(bad)?;
    for (bytes, node) in confirm.iter().zip(&roster) {
        let ok = postcard::from_bytes::<Confirm>(bytes).is_ok_and(|c| {
            c.manifest_hash == hash
                && ctx.verify(
                    node,
                    &c.signature,
                    CONFIRM_DOMAIN,
                    CONFIRM_LABEL,
                    None,
                    &[&hash],
                )
        });
        if !ok {
            return Err(CompletionFailure::NotConfirmed { node: *node });
        }
    }
    let mut completion = Completion::empty(&ctx, &hash);
    for (bytes, node) in store.iter().zip(&roster) {
        let ack = postcard::from_bytes::<StoreAck>(bytes)
            .ok()
            .filter(|a| {
                a.manifest_hash == hash
                    && ctx.verify(
                        node,
                        &a.signature,
                        STORED_DOMAIN,
                        STORED_LABEL,
                        None,
                        &[&hash],
                    )
            })
            .ok_or(CompletionFailure::NoAck { node: *node })?;
        completion
            .acks
            .insert(node.to_hex(), hex::encode(&ack.signature));
    }
    Ok((manifest, completion))
}
