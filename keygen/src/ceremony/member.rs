//! A participant's side of a ceremony: join, the protocol rounds, confirm, store, activate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use conclave_protocol::{Delivered, Envelope, IdentityKey, Message, NodeId, PostBody};
use serde::{Deserialize, Serialize};

use super::{
    describe_abort, CeremonyKind, CeremonyPlan, Complaint, Ctx, Fault, Outcome, PlanError,
    Protocol, RngCoreCrypto, Step,
};
use crate::manifest::GroupManifest;

/// Extra time a member gives the relay beyond the plan's timeouts before giving up itself.
const GRACE: Duration = Duration::from_secs(10);
const CONFIRM_DOMAIN: &[u8] = b"confirm";

/// Progress and results of a ceremony, for the driver.
#[derive(Debug)]
pub enum MemberEvent {
    /// Every member has joined.
    Joined,
    /// `round` was delivered and processed.
    RoundComplete { round: u8 },
    /// Every member confirmed the same result. The driver writes the share as a *pending*
    /// file (not active), then calls [`Member::stored`].
    Store(Box<Outcome>),
    /// Every member stored its share: the driver activates the pending file.
    Activate,
    /// The ceremony ended without a result: the driver removes any pending file.
    Aborted(AbortReport),
}

/// Why a ceremony aborted, for an operator: words, and the names of the members blamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortReport {
    pub summary: String,
    pub culprits: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Confirm {
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
}

/// The member state machine. Input: [`start`](Self::start), [`handle`](Self::handle) (the
/// relay's reply to the last post), [`stored`](Self::stored),
/// [`handle_timeout`](Self::handle_timeout). Output: [`poll_transmit`](Self::poll_transmit)
/// (posts to the relay), [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout).
pub struct Member<P> {
    ctx: Ctx,
    plan: CeremonyPlan,
    kind: CeremonyKind,
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
            kind: plan.kind,
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

    /// True once the ceremony completed or aborted.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Aborted)
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

    /// Joins the ceremony (round 0).
    pub fn start(&mut self, now: Instant) {
        if self.round == 0 && self.pending.is_none() && self.phase == Phase::Joining {
            self.post(
                now,
                PostBody::Round {
                    broadcast: vec![],
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

    fn complain(&mut self, now: Instant, complaint: Complaint) {
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
        match env.msg {
            Message::CeremonyAborted { ceremony, why } if ceremony == self.ctx.id => {
                let (summary, culprits) = describe_abort(&self.plan, &self.ctx, &why);
                self.finish_aborted(AbortReport { summary, culprits });
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
                    return self.complain(now, Complaint::new(round, Fault::Malformed, vec![]));
                }
                self.delivered(now, round, &items, rng);
            }
            Message::Refused(r) => self.finish_aborted(AbortReport {
                summary: format!("the relay refused this member: {r}"),
                culprits: vec![],
            }),
            _ => self.complain(now, Complaint::new(self.round, Fault::Malformed, vec![])),
        }
    }

    fn delivered(
        &mut self,
        now: Instant,
        round: u8,
        items: &[Delivered],
        rng: &mut dyn RngCoreCrypto,
    ) {
        let protocol_rounds = self.kind.protocol_rounds();
        let step = if round == 0 {
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
            self.events.push_back(MemberEvent::RoundComplete { round });
            self.phase = Phase::Done;
            self.events.push_back(MemberEvent::Activate);
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
        let signature = self
            .ctx
            .sign(&self.identity, CONFIRM_DOMAIN, self.round, None, &[&hash]);
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
                        round,
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
                self.events.push_back(MemberEvent::Store(outcome));
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
        // The first member in the roster also hands the relay the manifest text, so the
        // coordinator can write it; everyone else's confirmations vouch for its hash.
        let broadcast = if self.roster.first() == Some(&self.identity.node_id()) {
            self.manifest
                .as_ref()
                .and_then(|m| m.to_toml().ok())
                .map(String::into_bytes)
                .unwrap_or_default()
        } else {
            vec![]
        };
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
            self.finish_aborted(AbortReport {
                summary: format!(
                    "no answer from the relay in round {round} ({}) within the timeout",
                    self.kind.round_name(round)
                ),
                culprits: vec![],
            });
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

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

/// The manifest of a completed ceremony, as the relay learns it: the first member's text,
/// whose hash every member must have signed in the confirm round.
pub fn completed_manifest(
    plan: &CeremonyPlan,
    confirm: &[Vec<u8>],
    store: &[Vec<u8>],
) -> Result<GroupManifest, String> {
    let ctx = Ctx::of(plan).map_err(|e| e.to_string())?;
    let roster: Vec<NodeId> = plan
        .roster()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    let text = store.first().ok_or("no manifest was stored")?;
    let text = std::str::from_utf8(text).map_err(|_| "the manifest is not text")?;
    let manifest = GroupManifest::from_toml(text).map_err(|e| e.to_string())?;
    let hash = manifest.hash().map_err(|e| e.to_string())?;
    let round = plan.kind.protocol_rounds() + 1;
    if confirm.len() != roster.len() {
        return Err("confirmations are missing".into());
    }
    for (bytes, node) in confirm.iter().zip(&roster) {
        let ok = postcard::from_bytes::<Confirm>(bytes).is_ok_and(|c| {
            c.manifest_hash == hash
                && ctx.verify(node, &c.signature, CONFIRM_DOMAIN, round, None, &[&hash])
        });
        if !ok {
            return Err(format!(
                "{} did not confirm this manifest",
                plan.name_of(node)
            ));
        }
    }
    Ok(manifest)
}
