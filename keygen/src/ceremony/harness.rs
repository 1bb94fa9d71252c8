//! The in-memory ceremony harness, like quinn-proto's test `Pair`: a relay and its members
//! wired back to back, no network, with a virtual clock that jumps past deadlines when
//! nothing else can happen. Each member's events are applied to its own
//! [`MemoryShareStore`] through [`Member::apply`], the same code the QUIC driver runs. Used by
//! the unit tests, the reshare benchmark and anyone who wants to run a ceremony in a process.

use std::time::{Duration, Instant};

use conclave_protocol::{Envelope, NodeId};

use super::{
    AbortReport, Applied, Completion, Member, MemberEnd, Outcome, Protocol, Relay, RelayEvent,
};
use crate::store::{MemoryShareStore, ShareStore, StoreError};

/// What happened in a run, per member in roster order.
#[derive(Debug)]
pub struct Run {
    /// Each member's store: pending, active and the acknowledgements it knows.
    pub stores: Vec<MemoryShareStore>,
    /// How each member ended (`None`: it never finished, e.g. a silent member).
    pub ends: Vec<Option<MemberEnd>>,
    /// Everything the relay reported.
    pub relay_events: Vec<RelayEvent>,
}

impl Run {
    /// True if member `i` activated.
    pub fn activated(&self, i: usize) -> bool {
        matches!(self.ends.get(i), Some(Some(MemberEnd::Activated { .. })))
    }

    /// Why member `i` aborted (before acknowledging), if it did.
    pub fn aborted(&self, i: usize) -> Option<&AbortReport> {
        match self.ends.get(i) {
            Some(Some(MemberEnd::Aborted(r))) => Some(r),
            _ => None,
        }
    }

    /// The acknowledgements member `i` kept when it was left undecided.
    pub fn undecided(&self, i: usize) -> Option<&Completion> {
        match self.ends.get(i) {
            Some(Some(MemberEnd::Undecided(_))) => self.stores.get(i)?.completion(),
            _ => None,
        }
    }
}

/// A member that stops posting after this round (a crashed node), and a man in the middle on
/// the relay's replies: `tamper(recipient, reply)` may change a reply and returns whether to
/// deliver it (a malicious relay).
pub struct Faults<'a> {
    pub silent: Option<(usize, u8)>,
    /// A member whose store cannot write (a full disk).
    pub broken_store: Option<usize>,
    pub tamper: &'a mut dyn FnMut(usize, &mut Envelope) -> bool,
}

/// A store whose disk is full.
struct BrokenStore;

impl ShareStore for BrokenStore {
    fn write_pending(&mut self, _: &Outcome, _: &Completion) -> Result<(), StoreError> {
        Err(StoreError::Io {
            path: "memory".into(),
            source: std::io::Error::other("no space left (test fault)"),
        })
    }
    fn activate(&mut self, _: &Completion) -> Result<(), StoreError> {
        Err(StoreError::NothingPending)
    }
    fn keep_undecided(&mut self, _: &Completion) -> Result<(), StoreError> {
        Ok(())
    }
    fn discard(&mut self) {}
}

/// Runs `members` against `relay` until everything is quiet.
pub fn run<P: Protocol>(members: Vec<Member<P>>, relay: Relay) -> Run {
    run_with(
        members,
        relay,
        Faults {
            silent: None,
            broken_store: None,
            tamper: &mut |_, _| true,
        },
    )
}

/// [`run`] with faults.
pub fn run_with<P: Protocol>(members: Vec<Member<P>>, relay: Relay, faults: Faults<'_>) -> Run {
    run_seeded(members, relay, faults, &mut rand::rngs::OsRng)
}

/// [`run_with`], the members' randomness drawn from `rng` (a seeded one makes the run
/// repeatable, for a fuzzer).
pub fn run_seeded<P: Protocol>(
    mut members: Vec<Member<P>>,
    mut relay: Relay,
    faults: Faults<'_>,
    rng: &mut dyn super::RngCoreCrypto,
) -> Run {
    let mut now = Instant::now();
    let roster: Vec<NodeId> = relay.roster().to_vec();
    let n = members.len();
    let mut run = Run {
        stores: (0..n).map(|_| MemoryShareStore::default()).collect(),
        ends: (0..n).map(|_| None).collect(),
        relay_events: vec![],
    };
    for m in &mut members {
        m.start(now, &mut *rng);
    }
    for _ in 0..10_000 {
        let mut progress = false;
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(env) = m.poll_transmit() {
                if faults.silent.is_some_and(|(s, r)| s == i && m.round() >= r) {
                    continue;
                }
                if let Some(node) = roster.get(i) {
                    relay.handle(now, *node, env);
                }
                progress = true;
            }
            while let Some(ev) = m.poll_event() {
                progress = true;
                let Some(store) = run.stores.get_mut(i) else {
                    continue;
                };
                let applied = if faults.broken_store == Some(i) {
                    m.apply(now, ev, &mut BrokenStore)
                } else {
                    m.apply(now, ev, store)
                };
                if let Applied::End(end) = applied {
                    if let Some(slot) = run.ends.get_mut(i) {
                        *slot = Some(end);
                    }
                }
            }
        }
        while let Some(mut t) = relay.poll_transmit() {
            if let Some(i) = roster.iter().position(|r| *r == t.to) {
                if (faults.tamper)(i, &mut t.envelope) {
                    if let Some(m) = members.get_mut(i) {
                        m.handle(now, t.envelope, &mut *rng);
                    }
                }
            }
            progress = true;
        }
        while let Some(ev) = relay.poll_event() {
            run.relay_events.push(ev);
            progress = true;
        }
        if !progress {
            if members.iter().all(|m| m.is_finished()) {
                break;
            }
            now += Duration::from_secs(30);
            relay.handle_timeout(now);
            for m in &mut members {
                m.handle_timeout(now);
            }
        }
    }
    run
}

/// A DKG plan for `n` fresh identities (`p0`, `p1`, … on 127.0.0.1:7000+i, relay on :7400) and
/// their members, ready for [`run`]: the setup the fuzz targets, the seed generator and the
/// crash test share.
pub fn dkg_members<R: rand::RngCore + rand::CryptoRng>(
    group: &str,
    t: u16,
    n: usize,
    rng: &mut R,
) -> Result<(super::CeremonyPlan, Vec<conclave_protocol::IdentityKey>), String> {
    use conclave_protocol::{GroupName, IdentityKey};
    let ids: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut *rng)).collect();
    let node = |name: String, k: &IdentityKey, port: usize| super::PlanNode {
        name,
        identity_key: k.node_id().to_hex(),
        address: format!("127.0.0.1:{port}"),
    };
    let participants = ids
        .iter()
        .enumerate()
        .map(|(i, k)| node(format!("p{i}"), k, 7000 + i))
        .collect();
    let coordinator = node("coord".into(), &IdentityKey::generate(&mut *rng), 7400);
    let group = GroupName::new(group).map_err(|e| e.to_string())?;
    let plan = super::CeremonyPlan::new_dkg(group, t, coordinator, participants, rng)
        .map_err(|e| format!("plan: {e}"))?;
    Ok((plan, ids))
}

/// A relay and the DKG members of `ids` for `plan`.
pub fn dkg_run_parts(
    plan: &super::CeremonyPlan,
    ids: &[conclave_protocol::IdentityKey],
) -> Result<(Vec<Member<crate::dkg::Dkg>>, Relay), String> {
    let relay = Relay::new(plan, crate::kinds::rounds(plan.kind), Instant::now())
        .map_err(|e| format!("relay: {e}"))?;
    let mut members = vec![];
    for k in ids {
        let dkg = crate::dkg::Dkg::new(plan, &k.node_id()).map_err(|e| format!("dkg: {e}"))?;
        members.push(Member::new(plan, k.clone(), dkg).map_err(|e| format!("member: {e}"))?);
    }
    Ok((members, relay))
}
