//! The coordinator's side of a ceremony: a bulletin board with synchronous rounds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use conclave_protocol::{
    AbortWhy, Delivered, Envelope, Message, NodeId, PostBody, Refusal, Transmit,
};

use super::{
    completed_manifest, describe_abort, AbortReport, CeremonyPlan, Completion, CompletionFailure,
    Ctx, PlanError, Rounds,
};
use crate::manifest::GroupManifest;

/// Progress and results of a relayed ceremony.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// `node` posted `round`; `posted` of the `of` members have now.
    Posted {
        round: u8,
        node: NodeId,
        posted: usize,
        of: usize,
    },
    /// Every member posted `round`; it was delivered.
    RoundComplete { round: u8 },
    /// The ceremony ended without a result: the reason and whom it names (culprits,
    /// accused, suspects), checked as the relay can.
    Aborted { why: AbortWhy, report: AbortReport },
    /// Every member stored its share, and the relay checked it: the manifest every member
    /// confirmed and the completion (every member's signed acknowledgement).
    Completed {
        manifest: Box<GroupManifest>,
        completion: Completion,
    },
    /// Every round completed but the result is not usable (a member did not vouch for it).
    Failed(CompletionFailure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    Aborted(AbortWhy),
    Done,
}

struct Post {
    request: u64,
    broadcast: Vec<u8>,
    direct: BTreeMap<NodeId, Vec<u8>>,
}

/// The relay state machine. Input: [`handle`](Self::handle) (a request from an authenticated
/// member), [`peer_down`](Self::peer_down), [`handle_timeout`](Self::handle_timeout). Output:
/// [`poll_transmit`](Self::poll_transmit) (replies, by request id),
/// [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout).
pub struct Relay {
    plan: CeremonyPlan,
    rounds: Rounds,
    ctx: Ctx,
    roster: Vec<NodeId>,
    round: u8,
    posts: BTreeMap<NodeId, Post>,
    deadline: Instant,
    round_timeout: Duration,
    state: State,
    joins: Vec<Vec<u8>>,
    confirm: Vec<Vec<u8>>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<RelayEvent>,
    #[cfg(feature = "fault-injection")]
    fault: Option<RelayFault>,
}

/// Test-only misbehaviour of a relay.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayFault {
    /// Delivers the second member's round-1 broadcast in place of the first member's, to the
    /// last member only (a coordinator substituting one relayed round-1 package).
    SubstituteRound1,
    /// Completes the store round for every member but the last, whom it never answers (a
    /// relay trying to split the outcome: that member is left undecided, never discards).
    WithholdStore,
}

impl Relay {
    /// A relay for `plan`, whose protocol runs `rounds` (see `conclave_keygen::kinds::rounds`),
    /// waiting for members to join until `now + join timeout`.
    pub fn new(plan: &CeremonyPlan, rounds: Rounds, now: Instant) -> Result<Self, PlanError> {
        let roster = plan.roster()?.into_iter().map(|m| m.node_id).collect();
        Ok(Self {
            plan: plan.clone(),
            rounds,
            ctx: Ctx::of(plan)?,
            roster,
            round: 0,
            posts: BTreeMap::new(),
            deadline: now + Duration::from_secs(plan.join_timeout_secs.into()),
            round_timeout: Duration::from_secs(plan.round_timeout_secs.into()),
            state: State::Running,
            joins: Vec::new(),
            confirm: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            #[cfg(feature = "fault-injection")]
            fault: None,
        })
    }

    /// Makes this relay misbehave (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn inject(&mut self, fault: RelayFault) {
        self.fault = Some(fault);
    }

    /// The ceremony's context as this relay saw the run (the session from the join nonces it
    /// received, once the join round completed): what it checks members' complaints with.
    pub fn ctx(&self) -> Ctx {
        self.ctx
    }

    /// The members, in roster order.
    pub fn roster(&self) -> &[NodeId] {
        &self.roster
    }

    /// The round being collected.
    pub fn round(&self) -> u8 {
        self.round
    }

    /// True once the ceremony completed or aborted.
    pub fn is_finished(&self) -> bool {
        self.state != State::Running
    }

    /// Members that have posted the current round.
    pub fn posted(&self) -> impl Iterator<Item = &NodeId> {
        self.posts.keys()
    }

    fn reply(&mut self, to: NodeId, id: u64, msg: Message) {
        self.outbox.push_back(Transmit {
            to,
            envelope: Envelope { id, msg },
        });
    }

    /// A request from the authenticated member `from`.
    pub fn handle(&mut self, now: Instant, from: NodeId, env: Envelope) {
        let Message::CeremonyPost {
            ceremony,
            plan_hash,
            round,
            body,
        } = env.msg
        else {
            return self.reply(from, env.id, Message::Refused(Refusal::UnexpectedRequest));
        };
        if ceremony != self.ctx.id || plan_hash != self.ctx.plan_hash {
            return self.reply(from, env.id, Message::Refused(Refusal::UnknownCeremony));
        }
        if !self.roster.contains(&from) {
            return self.reply(from, env.id, Message::Refused(Refusal::NotAMember));
        }
        match &self.state {
            State::Aborted(why) => {
                let why = why.clone();
                return self.reply(
                    from,
                    env.id,
                    Message::CeremonyAborted {
                        ceremony: self.ctx.id,
                        why,
                    },
                );
            }
            State::Done => return self.reply(from, env.id, Message::Refused(Refusal::WrongRound)),
            State::Running => {}
        }
        if round != self.round {
            return self.reply(from, env.id, Message::Refused(Refusal::WrongRound));
        }
        let (broadcast, direct) = match body {
            PostBody::Abort { complaint } => {
                // The complainer is answered like everyone else.
                self.posts.insert(
                    from,
                    Post {
                        request: env.id,
                        broadcast: vec![],
                        direct: BTreeMap::new(),
                    },
                );
                return self.abort(AbortWhy::Complaint { from, complaint });
            }
            PostBody::Round { broadcast, direct } => (broadcast, direct),
        };
        if let Some(existing) = self.posts.get_mut(&from) {
            // A re-post after a reconnect: answer on the newest stream.
            existing.request = env.id;
            return;
        }
        let mut map = BTreeMap::new();
        for (to, bytes) in direct {
            if to == from || !self.roster.contains(&to) || map.insert(to, bytes).is_some() {
                return self.abort(AbortWhy::Malformed { node: from });
            }
        }
        self.posts.insert(
            from,
            Post {
                request: env.id,
                broadcast,
                direct: map,
            },
        );
        self.events.push_back(RelayEvent::Posted {
            round,
            node: from,
            posted: self.posts.len(),
            of: self.roster.len(),
        });
        if self.posts.len() == self.roster.len() {
            self.complete_round(now);
        }
    }

    fn complete_round(&mut self, now: Instant) {
        let posts = std::mem::take(&mut self.posts);
        let round = self.round;
        for to in &self.roster {
            let Some(mine) = posts.get(to) else { continue };
            #[cfg(feature = "fault-injection")]
            if self.fault == Some(RelayFault::WithholdStore)
                && round == self.rounds.final_round()
                && Some(to) == self.roster.last()
            {
                continue;
            }
            let mut items: Vec<Delivered> = self
                .roster
                .iter()
                .filter_map(|from| {
                    posts.get(from).map(|p| Delivered {
                        from: *from,
                        broadcast: p.broadcast.clone(),
                        direct: p.direct.get(to).cloned(),
                    })
                })
                .collect();
            #[cfg(feature = "fault-injection")]
            if self.fault == Some(RelayFault::SubstituteRound1)
                && round == 1
                && Some(to) == self.roster.last()
            {
                if let Some(second) = items.get(1).map(|d| d.broadcast.clone()) {
                    if let Some(first) = items.get_mut(0) {
                        first.broadcast = second;
                    }
                }
            }
            #[cfg(not(feature = "fault-injection"))]
            let _ = &mut items;
            self.outbox.push_back(Transmit {
                to: *to,
                envelope: Envelope {
                    id: mine.request,
                    msg: Message::CeremonyRound {
                        ceremony: self.ctx.id,
                        round,
                        items,
                    },
                },
            });
        }
        self.events.push_back(RelayEvent::RoundComplete { round });
        let final_round = self.rounds.final_round();
        if round == 0 {
            self.joins = self
                .roster
                .iter()
                .filter_map(|n| posts.get(n).map(|p| p.broadcast.clone()))
                .collect();
            self.ctx = self.ctx.with_run(self.joins.iter().map(Vec::as_slice));
        }
        if round + 1 == final_round {
            self.confirm = self
                .roster
                .iter()
                .filter_map(|n| posts.get(n).map(|p| p.broadcast.clone()))
                .collect();
        }
        if round == final_round {
            let store: Vec<Vec<u8>> = self
                .roster
                .iter()
                .filter_map(|n| posts.get(n).map(|p| p.broadcast.clone()))
                .collect();
            self.state = State::Done;
            let joins = std::mem::take(&mut self.joins);
            let confirm = std::mem::take(&mut self.confirm);
            self.events.push_back(
                match completed_manifest(&self.plan, &joins, &confirm, &store) {
                    Ok((manifest, completion)) => RelayEvent::Completed {
                        manifest: Box::new(manifest),
                        completion,
                    },
                    Err(e) => RelayEvent::Failed(e),
                },
            );
        } else {
            self.round += 1;
            self.deadline = now + self.round_timeout;
        }
    }

    fn abort(&mut self, why: AbortWhy) {
        if self.state != State::Running {
            return;
        }
        self.state = State::Aborted(why.clone());
        let posts = std::mem::take(&mut self.posts);
        for (to, p) in posts {
            self.reply(
                to,
                p.request,
                Message::CeremonyAborted {
                    ceremony: self.ctx.id,
                    why: why.clone(),
                },
            );
        }
        let report = describe_abort(&self.plan, &self.rounds, &self.ctx, &why);
        self.events.push_back(RelayEvent::Aborted { why, report });
    }

    /// Why the ceremony would end if it were given up now (its current round timed out).
    pub fn give_up(&self) -> AbortReport {
        let why = AbortWhy::Timeout {
            round: self.round,
            missing: self.missing().into_iter().collect(),
        };
        describe_abort(&self.plan, &self.rounds, &self.ctx, &why)
    }

    /// The connection to `node` closed. Before the first protocol round a member may come
    /// back; after it, its in-memory ceremony state is gone, so the ceremony aborts.
    pub fn peer_down(&mut self, _now: Instant, node: NodeId) {
        if self.state != State::Running || !self.roster.contains(&node) {
            return;
        }
        if self.round == 0 {
            self.posts.remove(&node);
        } else {
            self.abort(AbortWhy::Disconnected { node });
        }
    }

    /// Aborts the ceremony if the current round is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Running && now >= self.deadline {
            let missing = self
                .roster
                .iter()
                .filter(|n| !self.posts.contains_key(n))
                .copied()
                .collect();
            self.abort(AbortWhy::Timeout {
                round: self.round,
                missing,
            });
        }
    }

    /// The next reply to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next progress event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state == State::Running).then_some(self.deadline)
    }

    /// Members who have not posted the current round.
    pub fn missing(&self) -> BTreeSet<NodeId> {
        self.roster
            .iter()
            .filter(|n| !self.posts.contains_key(n))
            .copied()
            .collect()
    }
}
