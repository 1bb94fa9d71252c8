//! Ceremonies run in memory: a relay and n members wired back to back.

use std::collections::BTreeMap;
use std::time::Instant;

use conclave_protocol::{GroupName, IdentityKey};
use frost_ed25519 as frost;

use super::*;
use crate::dkg::Dkg;

pub(crate) fn plan(t: u16, n: usize) -> (CeremonyPlan, Vec<IdentityKey>) {
    let mut rng = rand::rngs::OsRng;
    let ids: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let coord = IdentityKey::generate(&mut rng);
    let participants = ids
        .iter()
        .enumerate()
        .map(|(i, k)| PlanNode {
            name: format!("p{i}"),
            identity_key: k.node_id().to_hex(),
            address: format!("127.0.0.1:{}", 7000 + i),
        })
        .collect();
    let coordinator = PlanNode {
        name: "coord".into(),
        identity_key: coord.node_id().to_hex(),
        address: "127.0.0.1:7400".into(),
    };
    let plan = CeremonyPlan::new_dkg(
        GroupName::new("g").unwrap(),
        t,
        coordinator,
        participants,
        &mut rng,
    )
    .unwrap();
    (plan, ids)
}

/// The harness's run, seen per member as the tests read it.
pub(crate) struct Run {
    pub outcomes: Vec<Option<Box<Outcome>>>,
    pub aborts: Vec<Option<AbortReport>>,
    pub relay_events: Vec<RelayEvent>,
    pub activated: Vec<bool>,
    pub undecided: Vec<Option<Completion>>,
}

impl From<harness::Run> for Run {
    fn from(r: harness::Run) -> Self {
        let n = r.stores.len();
        Run {
            outcomes: r
                .stores
                .iter()
                .map(|s| {
                    s.active().or(s.pending()).map(|(m, kp)| {
                        Box::new(Outcome {
                            manifest: m.clone(),
                            key_package: kp.clone(),
                        })
                    })
                })
                .collect(),
            aborts: (0..n).map(|i| r.aborted(i).cloned()).collect(),
            activated: (0..n).map(|i| r.activated(i)).collect(),
            undecided: (0..n).map(|i| r.undecided(i).cloned()).collect(),
            relay_events: r.relay_events,
        }
    }
}

/// Runs members against a relay (the one in-memory harness). `silent` members never post
/// after joining (a crashed node).
pub(crate) fn run<P: Protocol>(
    members: Vec<Member<P>>,
    relay: Relay,
    silent: Option<usize>,
) -> Run {
    run_tampered(members, relay, silent, &mut |_, _| true)
}

/// [`run`] with a man in the middle on the relay's replies: `tamper(recipient, reply)` may
/// change a reply and returns whether to deliver it at all (a malicious relay).
pub(crate) fn run_tampered<P: Protocol>(
    members: Vec<Member<P>>,
    relay: Relay,
    silent: Option<usize>,
    tamper: &mut dyn FnMut(usize, &mut conclave_protocol::Envelope) -> bool,
) -> Run {
    harness::run_with(
        members,
        relay,
        harness::Faults {
            silent: silent.map(|i| (i, 1)),
            broken_store: None,
            tamper,
        },
    )
    .into()
}

/// The manifest and completion the relay reported at the end of a run, if it completed.
fn relay_result(events: &[RelayEvent]) -> Option<(crate::manifest::GroupManifest, Completion)> {
    match events.last() {
        Some(RelayEvent::Completed {
            manifest,
            completion,
        }) => Some((manifest.as_ref().clone(), completion.clone())),
        _ => None,
    }
}

fn dkg_members(plan: &CeremonyPlan, ids: Vec<IdentityKey>) -> Vec<Member<Dkg>> {
    ids.into_iter()
        .map(|k| {
            let dkg = Dkg::new(plan, &k.node_id()).unwrap();
            Member::new(plan, k, dkg).unwrap()
        })
        .collect()
}

fn sign_with(outcomes: &[&Outcome], msg: &[u8]) -> ed25519_dalek::Signature {
    let mut rng = rand::rngs::OsRng;
    let pkp = outcomes[0].manifest.public_key_package().unwrap();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for o in outcomes {
        let kp = o.key_package.as_ref().unwrap();
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let pkg = frost::SigningPackage::new(commitments, msg);
    let shares: BTreeMap<_, _> = outcomes
        .iter()
        .map(|o| {
            let kp = o.key_package.as_ref().unwrap();
            let id = *kp.identifier();
            (id, frost::round2::sign(&pkg, &nonces[&id], kp).unwrap())
        })
        .collect();
    let sig = frost::aggregate(&pkg, &shares, &pkp).unwrap();
    ed25519_dalek::Signature::from_slice(&sig.serialize().unwrap()).unwrap()
}

#[test]
fn dkg_3_of_5_produces_one_key_that_signs() {
    let (plan, ids) = plan(3, 5);
    let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
    let run = run(dkg_members(&plan, ids), relay, None);
    assert!(run.aborts.iter().all(Option::is_none), "{:?}", run.aborts);
    assert!(run.activated.iter().all(|a| *a));
    let outcomes: Vec<&Outcome> = run.outcomes.iter().map(|o| o.as_deref().unwrap()).collect();
    let m0 = &outcomes[0].manifest;
    assert!(outcomes.iter().all(|o| o.manifest == *m0));
    assert_eq!(m0.threshold, 3);
    assert_eq!(m0.epoch, 1);
    // The relay learns the same manifest, vouched for by every member.
    let (relayed, completion) = relay_result(&run.relay_events)
        .unwrap_or_else(|| panic!("relay did not complete: {:?}", run.relay_events));
    assert_eq!(relayed, *m0);
    // ... and the signed acknowledgements of all five, which let an undecided member activate.
    completion.verify(&plan, &m0.hash().unwrap()).unwrap();
    assert_eq!(completion.acks.len(), 5);
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&m0.public_key_bytes().unwrap()).unwrap();
    for subset in [[0, 1, 2], [2, 3, 4], [0, 2, 4]] {
        let chosen: Vec<&Outcome> = subset.iter().map(|i| outcomes[*i]).collect();
        let sig = sign_with(&chosen, b"dkg");
        vk.verify_strict(b"dkg", &sig).unwrap();
    }
    // The relay never had anything secret: it saw only posts; no member's share equals
    // another's.
    let shares: std::collections::BTreeSet<Vec<u8>> = outcomes
        .iter()
        .map(|o| o.key_package.as_ref().unwrap().signing_share().serialize())
        .collect();
    assert_eq!(shares.len(), 5);
}

#[test]
fn a_silent_member_times_out_and_nobody_stores() {
    let (plan, ids) = plan(2, 3);
    let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
    let run = run(dkg_members(&plan, ids), relay, Some(1));
    assert!(run.outcomes.iter().all(Option::is_none));
    for (i, a) in run.aborts.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let a = a.as_ref().unwrap();
        assert!(a.summary.contains("timed out"), "{}", a.summary);
        // The relay reports the silence: p1 or the relay, never p1 alone.
        assert!(a.culprits.is_empty(), "{a:?}");
        assert_eq!(a.suspects, vec!["p1".to_string()]);
        assert!(a.summary.contains("p1 or the relay"), "{}", a.summary);
    }
}

#[test]
fn complaints_must_be_signed_by_their_member() {
    let (plan, ids) = plan(2, 3);
    let ctx = Ctx::of(&plan).unwrap();
    let c = Complaint::new(3, Fault::InvalidSecretShare, vec![ids[2].node_id()]);
    let bytes = ctx.seal_complaint(&ids[0], &c);
    assert_eq!(ctx.open_complaint(&ids[0].node_id(), &bytes), Some(c));
    // Relayed as if from another member: refused.
    assert_eq!(ctx.open_complaint(&ids[1].node_id(), &bytes), None);
    let text = describe_abort(
        &plan,
        &crate::kinds::rounds(plan.kind),
        &ctx,
        &conclave_protocol::AbortWhy::Complaint {
            from: ids[1].node_id(),
            complaint: bytes,
        },
    );
    assert!(text.summary.contains("not signed"), "{text:?}");
    assert!(text.culprits.is_empty() && text.suspects.is_empty());
}

#[test]
fn sealed_messages_open_only_for_their_recipient_and_sender() {
    let (plan, ids) = plan(2, 3);
    let ctx = Ctx::of(&plan).unwrap();
    let mut rng = rand::rngs::OsRng;
    let (key, public) = EncryptionKey::generate(&mut rng);
    let (other, _) = EncryptionKey::generate(&mut rng);
    let (a, b) = (ids[0].node_id(), ids[1].node_id());
    let sealed = ctx
        .seal(&ids[0], 3, &b, &public, b"share", &mut rng)
        .unwrap();
    assert_eq!(&ctx.open(&key, 3, &a, &b, &sealed).unwrap()[..], b"share");
    assert_eq!(
        ctx.open(&other, 3, &a, &b, &sealed).unwrap_err(),
        Fault::Undecryptable
    );
    // Claimed as from someone else, for another round, or altered: the signature fails.
    assert_eq!(
        ctx.open(&key, 3, &b, &b, &sealed).unwrap_err(),
        Fault::BadSignature
    );
    assert_eq!(
        ctx.open(&key, 2, &a, &b, &sealed).unwrap_err(),
        Fault::BadSignature
    );
    let mut altered = sealed.clone();
    altered.ciphertext[0] ^= 1;
    assert_eq!(
        ctx.open(&key, 3, &a, &b, &altered).unwrap_err(),
        Fault::BadSignature
    );
}

#[test]
fn plans_are_validated() {
    let (plan, _) = plan(2, 3);
    let text = plan.to_toml().unwrap();
    assert_eq!(CeremonyPlan::from_toml(&text).unwrap(), plan);
    let mut p = plan.clone();
    p.threshold = 4;
    assert!(matches!(p.members(), Err(PlanError::BadThreshold { .. })));
    let mut p = plan.clone();
    p.participants[1].identity_key = p.participants[0].identity_key.clone();
    assert!(matches!(p.members(), Err(PlanError::Duplicate)));
    let mut p = plan.clone();
    p.coordinator.identity_key = p.participants[0].identity_key.clone();
    assert!(matches!(p.members(), Err(PlanError::Duplicate)));
    let mut p = plan.clone();
    p.round_timeout_secs = 0;
    assert!(matches!(p.members(), Err(PlanError::BadTimeout)));
    assert!(CeremonyPlan::from_toml("ceremony = 1").is_err());
}

#[cfg(feature = "fault-injection")]
mod faults {
    use super::*;
    use crate::dkg::DkgFault;

    #[test]
    fn a_relay_substituting_a_round1_package_fails_the_echo_check() {
        let (plan, ids) = plan(3, 5);
        let mut relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
        relay.inject(RelayFault::SubstituteRound1);
        let run = run(dkg_members(&plan, ids), relay, None);
        assert!(run.outcomes.iter().all(Option::is_none));
        for a in &run.aborts {
            let a = a.as_ref().unwrap();
            assert!(a.summary.contains("echo check failed"), "{}", a.summary);
            // p4 was the one shown a different round 1: it, or the relay, is to blame;
            // nobody is named alone.
            assert!(a.culprits.is_empty(), "{a:?}");
            assert_eq!(a.suspects, vec!["p4".to_string()]);
            assert!(a.summary.contains("p4 or the relay"), "{}", a.summary);
        }
    }

    #[test]
    fn a_bad_share_names_its_sender() {
        let (plan, ids) = plan(3, 5);
        let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
        let mut members = vec![];
        for (i, k) in ids.into_iter().enumerate() {
            let mut dkg = Dkg::new(&plan, &k.node_id()).unwrap();
            if i == 2 {
                dkg.inject(DkgFault::BadShare);
            }
            members.push(Member::new(&plan, k, dkg).unwrap());
        }
        let run = run(members, relay, None);
        assert!(run.outcomes.iter().all(Option::is_none));
        for (i, a) in run.aborts.iter().enumerate() {
            let a = a.as_ref().unwrap();
            assert!(a.summary.contains("does not match"), "{}", a.summary);
            if i == 2 {
                // p2 itself saw only good shares: it hears an accusation it cannot check.
                assert!(a.culprits.is_empty(), "{a:?}");
                assert_eq!(a.accused, vec!["p2".to_string()]);
            } else {
                // Every member that received p2's bad share checked it itself.
                assert_eq!(a.culprits, vec!["p2".to_string()], "{a:?}");
            }
        }
    }
}

mod rotation {
    use super::*;
    use crate::dealer::{deal, NewMember};
    use crate::manifest::GroupManifest;
    use crate::reshare::Reshare;

    /// A node with its identity and (if it is in the current group) its share.
    struct Node {
        name: String,
        key: IdentityKey,
        share: Option<frost::keys::KeyPackage>,
    }

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            key: IdentityKey::generate(&mut rand::rngs::OsRng),
            share: None,
        }
    }

    fn coordinator() -> PlanNode {
        PlanNode {
            name: "coord".into(),
            identity_key: IdentityKey::generate(&mut rand::rngs::OsRng)
                .node_id()
                .to_hex(),
            address: "127.0.0.1:7400".into(),
        }
    }

    fn plan_node(n: &Node) -> PlanNode {
        PlanNode {
            name: n.name.clone(),
            identity_key: n.key.node_id().to_hex(),
            address: "127.0.0.1:7000".into(),
        }
    }

    fn signs(manifest: &GroupManifest, nodes: &[&Node]) -> bool {
        let outcomes: Vec<Outcome> = nodes
            .iter()
            .map(|n| Outcome {
                manifest: manifest.clone(),
                key_package: n.share.clone(),
            })
            .collect();
        let refs: Vec<&Outcome> = outcomes.iter().collect();
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&manifest.public_key_bytes().unwrap()).unwrap();
        std::panic::catch_unwind(|| sign_with(&refs, b"rotation"))
            .map(|sig| vk.verify_strict(b"rotation", &sig).is_ok())
            .unwrap_or(false)
    }

    /// Runs a reshare of `old` among `nodes`: the new group is `new` (indices), dealing by
    /// `dealers` (indices), threshold `t`. Returns the new manifest and updates the shares.
    fn reshare(
        old: &GroupManifest,
        nodes: &mut [Node],
        new: &[usize],
        dealers: &[usize],
        t: u16,
        bad_dealer: Option<usize>,
    ) -> Result<GroupManifest, Box<AbortReport>> {
        let participants = new.iter().map(|i| plan_node(&nodes[*i])).collect();
        let dealer_names: Vec<String> = dealers.iter().map(|i| nodes[*i].name.clone()).collect();
        let plan = CeremonyPlan::new_rotation(
            CeremonyKind::Reshare,
            old,
            t,
            coordinator(),
            participants,
            &dealer_names,
            &[],
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let checked = CheckedPlan::check(&plan, OldGroup::Manifest(old)).unwrap();
        let roster = plan.roster().unwrap();
        let mut members = vec![];
        for m in &roster {
            let n = nodes.iter().find(|n| n.key.node_id() == m.node_id).unwrap();
            #[allow(unused_mut)]
            let mut r = Reshare::new(&checked, &m.node_id, n.share.as_ref()).unwrap();
            #[cfg(feature = "fault-injection")]
            if bad_dealer.is_some_and(|b| nodes[b].key.node_id() == m.node_id) {
                r.inject(crate::reshare::ReshareFault::BadSubShare);
            }
            members.push(Member::new(&plan, n.key.clone(), r).unwrap());
        }
        let _ = bad_dealer;
        let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
        let run = run(members, relay, None);
        if let Some(a) = run.aborts.iter().flatten().next() {
            return Err(Box::new(a.clone()));
        }
        assert!(run.activated.iter().all(|a| *a));
        let manifest = run.outcomes[0].as_ref().unwrap().manifest.clone();
        // Activate: members of the new group take their new share, leavers lose theirs.
        for (m, o) in roster.iter().zip(&run.outcomes) {
            let o = o.as_ref().unwrap();
            assert_eq!(o.manifest, manifest);
            let n = nodes
                .iter_mut()
                .find(|n| n.key.node_id() == m.node_id)
                .unwrap();
            n.share = o.key_package.clone();
        }
        Ok(manifest)
    }

    #[test]
    fn reshare_and_refresh_keep_the_key_through_membership_and_threshold_changes() {
        let mut rng = rand::rngs::OsRng;
        let mut nodes: Vec<Node> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|n| node(n))
            .collect();
        let first: Vec<NewMember> = nodes[..3]
            .iter()
            .map(|n| NewMember {
                name: n.name.clone(),
                node_id: n.key.node_id(),
                address: "127.0.0.1:7000".into(),
            })
            .collect();
        let (m1, shares) = deal(GroupName::new("g").unwrap(), 2, &first, &mut rng).unwrap();
        for (n, s) in nodes.iter_mut().zip(shares) {
            n.share = Some(s.key_package);
        }
        let key = m1.group_public_key.clone();
        let old_b = nodes[1].share.clone();

        // 2-of-3 {a,b,c} → 3-of-5 {a,b,c,d,e}, dealt by a and c.
        let m2 = reshare(&m1, &mut nodes, &[0, 1, 2, 3, 4], &[0, 2], 3, None).unwrap();
        assert_eq!((m2.threshold, m2.epoch, m2.participants.len()), (3, 2, 5));
        assert_eq!(m2.group_public_key, key);
        assert!(signs(&m2, &[&nodes[1], &nodes[3], &nodes[4]]));
        assert!(
            !signs(&m2, &[&nodes[1], &nodes[3]]),
            "below the new threshold"
        );
        // An old share no longer combines with new ones.
        let stale = Node {
            name: "b-old".into(),
            key: nodes[1].key.clone(),
            share: old_b,
        };
        assert!(!signs(&m2, &[&stale, &nodes[3], &nodes[4]]));

        // 3-of-5 → 2-of-4 {a, c, d, f}: b and e removed, f added, dealt by b, d, e.
        let m3 = reshare(&m2, &mut nodes, &[0, 2, 3, 5], &[1, 3, 4], 2, None).unwrap();
        assert_eq!((m3.threshold, m3.epoch, m3.participants.len()), (2, 3, 4));
        assert_eq!(m3.group_public_key, key);
        assert!(nodes[1].share.is_none() && nodes[4].share.is_none());
        assert!(signs(&m3, &[&nodes[5], &nodes[2]]));

        // Refresh 2-of-4: same members, threshold and key, new shares.
        let before = nodes[5].share.clone().unwrap();
        let participants = [0, 2, 3, 5].iter().map(|i| plan_node(&nodes[*i])).collect();
        let names: Vec<String> = [0, 2, 3, 5]
            .iter()
            .map(|i| nodes[*i].name.clone())
            .collect();
        let plan = CeremonyPlan::new_rotation(
            CeremonyKind::Refresh,
            &m3,
            2,
            coordinator(),
            participants,
            &names,
            &[],
            &mut rng,
        )
        .unwrap();
        let checked = CheckedPlan::check(&plan, OldGroup::Manifest(&m3)).unwrap();
        let members: Vec<Member<Dkg>> = [0, 2, 3, 5]
            .iter()
            .map(|i| {
                let n = &nodes[*i];
                let d = Dkg::refresh(&checked, &n.key.node_id(), n.share.clone().unwrap()).unwrap();
                Member::new(&plan, n.key.clone(), d).unwrap()
            })
            .collect();
        let run = run(
            members,
            Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap(),
            None,
        );
        assert!(run.aborts.iter().all(Option::is_none), "{:?}", run.aborts);
        let m4 = run.outcomes[0].as_ref().unwrap().manifest.clone();
        for (i, o) in [0, 2, 3, 5].iter().zip(&run.outcomes) {
            nodes[*i].share = o.as_ref().unwrap().key_package.clone();
        }
        assert_eq!((m4.threshold, m4.epoch), (2, 4));
        assert_eq!(m4.group_public_key, key);
        assert_ne!(
            before.signing_share().serialize(),
            nodes[5].share.as_ref().unwrap().signing_share().serialize()
        );
        assert!(signs(&m4, &[&nodes[0], &nodes[5]]));
        let stale = Node {
            name: "f-old".into(),
            key: nodes[5].key.clone(),
            share: Some(before),
        };
        assert!(!signs(&m4, &[&nodes[0], &stale]));
    }

    #[test]
    fn repair_rebuilds_a_lost_share_that_matches_the_manifest() {
        use crate::repair::Repair;
        let mut rng = rand::rngs::OsRng;
        let nodes: Vec<Node> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
        let first: Vec<NewMember> = nodes
            .iter()
            .map(|n| NewMember {
                name: n.name.clone(),
                node_id: n.key.node_id(),
                address: "127.0.0.1:7000".into(),
            })
            .collect();
        let (m, shares) = deal(GroupName::new("g").unwrap(), 3, &first, &mut rng).unwrap();
        let lost = shares[3].key_package.clone();
        // d lost its share; a, b, c help.
        let plan = CeremonyPlan::new_rotation(
            CeremonyKind::Repair,
            &m,
            3,
            coordinator(),
            vec![plan_node(&nodes[3])],
            &["a".into(), "b".into(), "c".into()],
            &[],
            &mut rng,
        )
        .unwrap();
        assert_eq!(plan.epoch, m.epoch);
        let checked = CheckedPlan::check(&plan, OldGroup::Manifest(&m)).unwrap();
        let members: Vec<Member<Repair>> = plan
            .roster()
            .unwrap()
            .iter()
            .map(|pm| {
                let i = nodes
                    .iter()
                    .position(|n| n.key.node_id() == pm.node_id)
                    .unwrap();
                let share = (i < 3).then(|| shares[i].key_package.clone());
                let r = Repair::new(&checked, &pm.node_id, share).unwrap();
                Member::new(&plan, nodes[i].key.clone(), r).unwrap()
            })
            .collect();
        let run = run(
            members,
            Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap(),
            None,
        );
        assert!(run.aborts.iter().all(Option::is_none), "{:?}", run.aborts);
        let roster = plan.roster().unwrap();
        let d = roster
            .iter()
            .position(|r| r.node_id == nodes[3].key.node_id())
            .unwrap();
        let rebuilt = run.outcomes[d]
            .as_ref()
            .unwrap()
            .key_package
            .clone()
            .unwrap();
        assert_eq!(rebuilt.signing_share(), lost.signing_share());
        assert_eq!(run.outcomes[d].as_ref().unwrap().manifest, m);
        // Helpers get nothing new.
        assert!(run
            .outcomes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != d)
            .all(|(_, o)| o.as_ref().unwrap().key_package.is_none()));
        // A helper cannot be the member being repaired, and repair needs t helpers.
        assert!(CeremonyPlan::new_rotation(
            CeremonyKind::Repair,
            &m,
            3,
            coordinator(),
            vec![plan_node(&nodes[3])],
            &["a".into(), "b".into()],
            &[],
            &mut rng,
        )
        .is_err());
    }

    #[test]
    fn a_dealer_with_the_wrong_share_is_refused_before_the_ceremony() {
        let mut rng = rand::rngs::OsRng;
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let first: Vec<NewMember> = nodes
            .iter()
            .map(|n| NewMember {
                name: n.name.clone(),
                node_id: n.key.node_id(),
                address: "127.0.0.1:7000".into(),
            })
            .collect();
        let (m1, shares) = deal(GroupName::new("g").unwrap(), 2, &first, &mut rng).unwrap();
        let plan = CeremonyPlan::new_rotation(
            CeremonyKind::Reshare,
            &m1,
            2,
            coordinator(),
            nodes.iter().map(plan_node).collect(),
            &["a".into(), "b".into()],
            &[],
            &mut rng,
        )
        .unwrap();
        let plan = CheckedPlan::check(&plan, OldGroup::Manifest(&m1)).unwrap();
        // b's share given as a's.
        assert!(
            Reshare::new(&plan, &nodes[0].key.node_id(), Some(&shares[1].key_package)).is_err()
        );
        assert!(Reshare::new(&plan, &nodes[0].key.node_id(), None).is_err());
        assert!(Reshare::new(&plan, &nodes[2].key.node_id(), None).is_ok());
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn an_inconsistent_sub_share_names_its_dealer_and_changes_nothing() {
        let mut rng = rand::rngs::OsRng;
        let mut nodes: Vec<Node> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
        let first: Vec<NewMember> = nodes[..3]
            .iter()
            .map(|n| NewMember {
                name: n.name.clone(),
                node_id: n.key.node_id(),
                address: "127.0.0.1:7000".into(),
            })
            .collect();
        let (m1, shares) = deal(GroupName::new("g").unwrap(), 2, &first, &mut rng).unwrap();
        for (n, s) in nodes.iter_mut().zip(shares) {
            n.share = Some(s.key_package);
        }
        let before: Vec<_> = nodes.iter().map(|n| n.share.clone()).collect();
        let err = reshare(&m1, &mut nodes, &[0, 1, 2, 3], &[0, 2], 3, Some(2)).unwrap_err();
        assert!(err.summary.contains("does not match"), "{}", err.summary);
        // Named by the member that received the bad sub-share (a culprit in its own verdict,
        // an accusation to everyone else), never anyone but c.
        assert!(
            err.culprits == vec!["c".to_string()] || err.accused == vec!["c".to_string()],
            "{err:?}"
        );
        // Old shares intact and still signing.
        for (n, b) in nodes.iter().zip(&before) {
            assert_eq!(
                n.share.as_ref().map(|k| k.signing_share().serialize()),
                b.as_ref().map(|k| k.signing_share().serialize())
            );
        }
        assert!(signs(&m1, &[&nodes[0], &nodes[1]]));
    }
}

/// A malicious relay on the store round: per member it delivers the acknowledgements, or
/// withholds them, forges one, reorders them, or reports a made-up abort. Whatever it does,
/// members never end split (some discarding while others activate), every member left
/// undecided activates when shown an activated member's completion, and no honest member is
/// named as a culprit.
#[test]
fn a_malicious_relay_cannot_split_the_store_round_or_frame_a_member() {
    use conclave_protocol::{AbortWhy, Message};
    #[derive(Clone, Copy, Debug)]
    enum Act {
        Deliver,
        Withhold,
        Forge,
        Reorder,
        FakeTimeout,
        FakeDisconnect,
    }
    let acts = [
        Act::Deliver,
        Act::Withhold,
        Act::Forge,
        Act::Reorder,
        Act::FakeTimeout,
        Act::FakeDisconnect,
    ];
    let (plan, ids) = plan(2, 3);
    let final_round = crate::kinds::rounds(plan.kind).final_round();
    let outsider = IdentityKey::generate(&mut rand::rngs::OsRng);
    // Every combination of what the relay does to each of the three members.
    for a in acts {
        for b in acts {
            for c in acts {
                let choice = [a, b, c];
                let mut tamper = |to: usize, env: &mut conclave_protocol::Envelope| -> bool {
                    let Message::CeremonyRound {
                        round,
                        items,
                        ceremony,
                    } = &mut env.msg
                    else {
                        return true;
                    };
                    if *round != final_round {
                        return true;
                    }
                    match choice[to] {
                        Act::Deliver => true,
                        Act::Withhold => false,
                        Act::Forge => {
                            // Another member's ack replaced by one signed by an outsider.
                            let victim = (to + 1) % items.len();
                            let ctx = Ctx::of(&plan).unwrap();
                            let sig = ctx.sign(&outsider, b"stored", *round, None, &[&[7u8; 32]]);
                            items[victim].broadcast =
                                postcard::to_allocvec(&([7u8; 32], sig, Option::<String>::None))
                                    .unwrap();
                            true
                        }
                        Act::Reorder => {
                            items.reverse();
                            true
                        }
                        Act::FakeTimeout | Act::FakeDisconnect => {
                            let node = ids[(to + 1) % ids.len()].node_id();
                            let why = match choice[to] {
                                Act::FakeTimeout => AbortWhy::Timeout {
                                    round: *round,
                                    missing: vec![node],
                                },
                                _ => AbortWhy::Disconnected { node },
                            };
                            env.msg = Message::CeremonyAborted {
                                ceremony: *ceremony,
                                why,
                            };
                            true
                        }
                    }
                };
                let relay =
                    Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
                let run = run_tampered(dkg_members(&plan, ids.clone()), relay, None, &mut tamper);
                let activated: Vec<usize> = (0..3).filter(|i| run.activated[*i]).collect();
                let discarded: Vec<usize> = (0..3).filter(|i| run.aborts[*i].is_some()).collect();
                assert!(
                    activated.is_empty() || discarded.is_empty(),
                    "{choice:?}: split: {activated:?} activated, {discarded:?} discarded"
                );
                // Nobody discards at all here: every member acknowledged before the relay
                // misbehaved, so each one either activated or is undecided.
                assert!(discarded.is_empty(), "{choice:?}: {:?}", run.aborts);
                for i in 0..3 {
                    assert!(
                        run.activated[i] || run.undecided[i].is_some(),
                        "{choice:?}: member {i} neither activated nor kept its share"
                    );
                }
                // `rotate resume`: shown the completion of a member that activated (or the
                // relay's), an undecided member activates; a forged ack never verifies.
                let manifest_hash = run.outcomes[0].as_ref().unwrap().manifest.hash().unwrap();
                let (_, relay_completion) = relay_result(&run.relay_events).unwrap_or_else(|| {
                    panic!("{choice:?}: the (honest) relay state machine completed")
                });
                for i in 0..3 {
                    if let Some(partial) = &run.undecided[i] {
                        assert!(partial.verify(&plan, &manifest_hash).is_err());
                        let mut merged = partial.clone();
                        merged.merge(&relay_completion).unwrap();
                        merged.verify(&plan, &manifest_hash).unwrap();
                    }
                }
                // Made-up aborts blame nobody: at most "X or the relay".
                for r in run.aborts.iter().flatten() {
                    assert!(r.culprits.is_empty(), "{choice:?}: {r:?}");
                }
            }
        }
    }
}

/// A member whose store fails complains (signed, in the store round) and discards: it never
/// acknowledged, so nobody can activate. The others had already acknowledged: a signed
/// complaint does not prove its author did not also acknowledge (a member can sign both), so
/// they keep their pending shares, undecided, and their partial completions never verify;
/// the operator abandons them (`rotate resume --abandon`).
#[test]
fn a_member_that_cannot_store_leaves_the_others_undecided_never_split() {
    let (plan, ids) = plan(2, 3);
    let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
    // Member 1's disk is full.
    let run = harness::run_with(
        dkg_members(&plan, ids),
        relay,
        harness::Faults {
            silent: None,
            broken_store: Some(1),
            tamper: &mut |_, _| true,
        },
    );
    assert!((0..3).all(|i| !run.activated(i)));
    assert!(
        run.aborted(1).is_some(),
        "p1 never acknowledged: it discards"
    );
    for i in [0, 2] {
        assert!(run.aborted(i).is_none());
        let partial = run.undecided(i).expect("undecided, share kept");
        let hash = run.stores[i].pending().unwrap().0.hash().unwrap();
        assert!(partial.verify(&plan, &hash).is_err(), "p1's ack is missing");
        let Some(Some(MemberEnd::Undecided(report))) = run.ends.get(i) else {
            panic!("undecided");
        };
        // p1's own signed report of its failure blames it.
        assert_eq!(report.culprits, vec!["p1".to_string()], "{report:?}");
    }
}

mod plan_writer {
    //! A malicious plan writer (the coordinator's operator, or anyone who can swap the plan
    //! file) tries to have members hand secrets to keys the group never agreed to. Every
    //! honest member checks the plan against its own manifest and refuses before sending
    //! anything; legitimate changes (a declared replacement, a new member) pass and are shown.
    use super::*;
    use crate::dealer::{deal, NewMember};
    use crate::manifest::GroupManifest;

    struct Group {
        manifest: GroupManifest,
        keys: Vec<IdentityKey>,
    }

    fn group(names: &[&str], t: u16) -> Group {
        let mut rng = rand::rngs::OsRng;
        let keys: Vec<IdentityKey> = names
            .iter()
            .map(|_| IdentityKey::generate(&mut rng))
            .collect();
        let members: Vec<NewMember> = names
            .iter()
            .zip(&keys)
            .map(|(n, k)| NewMember {
                name: n.to_string(),
                node_id: k.node_id(),
                address: "127.0.0.1:7000".into(),
            })
            .collect();
        let (manifest, _) = deal(GroupName::new("g").unwrap(), t, &members, &mut rng).unwrap();
        Group { manifest, keys }
    }

    fn node(name: &str, key: &IdentityKey) -> PlanNode {
        PlanNode {
            name: name.into(),
            identity_key: key.node_id().to_hex(),
            address: "127.0.0.1:7000".into(),
        }
    }

    fn coordinator() -> PlanNode {
        node("coord", &IdentityKey::generate(&mut rand::rngs::OsRng))
    }

    /// Every member of the old group refuses `plan` (with its own manifest).
    fn everyone_refuses(g: &Group, plan: &CeremonyPlan, what: &str) -> Vec<PlanCheckError> {
        let errs: Vec<PlanCheckError> = g
            .keys
            .iter()
            .map(|_| {
                CheckedPlan::check(plan, OldGroup::Manifest(&g.manifest))
                    .err()
                    .unwrap_or_else(|| panic!("{what}: a member accepted the plan"))
            })
            .collect();
        errs
    }

    fn repair_plan(g: &Group) -> CeremonyPlan {
        let lost = &g.manifest.participants[3];
        CeremonyPlan::new_rotation(
            CeremonyKind::Repair,
            &g.manifest,
            3,
            coordinator(),
            vec![PlanNode {
                name: lost.name.clone(),
                identity_key: lost.identity_key.clone(),
                address: lost.address.clone(),
            }],
            &["a".into(), "b".into(), "c".into()],
            &[],
            &mut rand::rngs::OsRng,
        )
        .unwrap()
    }

    #[test]
    fn a_repair_never_rebuilds_a_share_for_an_outsider() {
        let g = group(&["a", "b", "c", "d"], 3);
        let outsider = IdentityKey::generate(&mut rand::rngs::OsRng);
        let honest = repair_plan(&g);
        let checked = CheckedPlan::check(&honest, OldGroup::Manifest(&g.manifest)).unwrap();
        assert!(checked.summary().contains("repaired"));
        // Under the lost member's name with another key.
        let mut p = honest.clone();
        p.participants[0].identity_key = outsider.node_id().to_hex();
        for e in everyone_refuses(&g, &p, "outsider key under d") {
            match e {
                PlanCheckError::UnapprovedReplacement {
                    name,
                    expected,
                    plan,
                } => {
                    assert_eq!(name, "d");
                    assert_eq!(expected, g.keys[3].node_id().short());
                    assert_eq!(plan, outsider.node_id().short());
                }
                other => panic!("{other}"),
            }
        }
        // Under a name that is not a member.
        let mut p = honest.clone();
        p.participants[0] = node("mallory", &outsider);
        for e in everyone_refuses(&g, &p, "non-member") {
            assert!(matches!(e, PlanCheckError::NotAMember { .. }), "{e}");
        }
        // Declared as a replacement: a repair cannot replace.
        let mut p = honest.clone();
        p.participants[0].identity_key = outsider.node_id().to_hex();
        p.from.as_mut().unwrap().replace = vec!["d".into()];
        for e in everyone_refuses(&g, &p, "repair with replace") {
            assert!(matches!(e, PlanCheckError::BadReplacement { .. }), "{e}");
        }
        // A helper swapped for an outsider under its name.
        let mut p = honest.clone();
        p.from.as_mut().unwrap().dealers[1].identity_key = outsider.node_id().to_hex();
        for e in everyone_refuses(&g, &p, "outsider helper") {
            assert!(matches!(e, PlanCheckError::IdentityMismatch { .. }), "{e}");
        }
    }

    #[test]
    fn a_forged_reshare_plan_never_moves_the_group_to_another_key() {
        let g = group(&["a", "b", "c"], 2);
        let attacker = group(&["a", "b"], 2);
        let new_member = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut participants: Vec<PlanNode> = g
            .manifest
            .participants
            .iter()
            .map(|p| PlanNode {
                name: p.name.clone(),
                identity_key: p.identity_key.clone(),
                address: p.address.clone(),
            })
            .collect();
        participants.push(node("d", &new_member));
        let honest = CeremonyPlan::new_rotation(
            CeremonyKind::Reshare,
            &g.manifest,
            2,
            coordinator(),
            participants,
            &["a".into(), "b".into()],
            &[],
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let checked = CheckedPlan::check(&honest, OldGroup::Manifest(&g.manifest)).unwrap();
        let summary = checked.summary();
        assert!(
            summary.contains("(unchanged)") && summary.contains("joining"),
            "{summary}"
        );
        // Hole 3: the attacker's key and dealers under the real names, manifest hash kept.
        let mut p = honest.clone();
        {
            let from = p.from.as_mut().unwrap();
            from.group_public_key = attacker.manifest.group_public_key.clone();
            for (d, a) in from.dealers.iter_mut().zip(&attacker.manifest.participants) {
                d.identity_key = a.identity_key.clone();
                d.verifying_share = a.verifying_share.clone();
            }
        }
        everyone_refuses(&g, &p, "forged key and dealers");
        // The same with the forged dealers leaving (so no name appears under two keys): the
        // group key is checked against each member's own manifest.
        p.participants.retain(|n| n.name == "c" || n.name == "d");
        for e in everyone_refuses(&g, &p, "forged key, dealers leaving") {
            assert!(
                matches!(
                    e,
                    PlanCheckError::Field {
                        field: "group public key",
                        ..
                    }
                ),
                "{e}"
            );
        }
        // Only the dealers forged (key kept): named by identity. (With the dealers staying,
        // a forged dealer key under a staying name is refused as a name under two keys.)
        let mut p = honest.clone();
        p.from.as_mut().unwrap().dealers[0].identity_key =
            attacker.manifest.participants[0].identity_key.clone();
        everyone_refuses(&g, &p, "forged staying dealer");
        let mut p = honest.clone();
        p.participants.retain(|n| n.name == "c" || n.name == "d");
        p.from.as_mut().unwrap().dealers[0].identity_key =
            attacker.manifest.participants[0].identity_key.clone();
        for e in everyone_refuses(&g, &p, "forged dealer") {
            assert!(matches!(e, PlanCheckError::IdentityMismatch { .. }), "{e}");
        }
        // A dealer's verifying share forged.
        let mut p = honest.clone();
        p.from.as_mut().unwrap().dealers[1].verifying_share =
            attacker.manifest.participants[1].verifying_share.clone();
        for e in everyone_refuses(&g, &p, "forged verifying share") {
            assert!(
                matches!(e, PlanCheckError::VerifyingShareMismatch { .. }),
                "{e}"
            );
        }
        // Epoch or threshold claimed differently.
        let mut p = honest.clone();
        p.from.as_mut().unwrap().epoch += 1;
        p.epoch += 1;
        everyone_refuses(&g, &p, "epoch");
        let mut p = honest.clone();
        p.from.as_mut().unwrap().threshold = 3;
        p.from
            .as_mut()
            .unwrap()
            .dealers
            .push(crate::ceremony::OldMember {
                name: "c".into(),
                identity_key: g.manifest.participants[2].identity_key.clone(),
                verifying_share: g.manifest.participants[2].verifying_share.clone(),
            });
        everyone_refuses(&g, &p, "threshold");
        // A joiner without the manifest refuses a key it was not told.
        let real: [u8; 32] = g.manifest.public_key_bytes().unwrap();
        let mut forged = honest.clone();
        forged.from.as_mut().unwrap().group_public_key = attacker.manifest.group_public_key.clone();
        assert!(matches!(
            CheckedPlan::check(
                &forged,
                OldGroup::Joining {
                    expected_group_key: real
                }
            ),
            Err(PlanCheckError::UnexpectedGroupKey { .. })
        ));
        let joining = CheckedPlan::check(
            &honest,
            OldGroup::Joining {
                expected_group_key: real,
            },
        )
        .unwrap();
        assert!(joining.is_joining(&new_member.node_id()));
        assert!(joining.summary().contains("no old manifest"));
    }

    #[test]
    fn a_key_change_behind_a_name_must_be_declared_and_is_shown() {
        let g = group(&["a", "b", "c"], 2);
        let fresh = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut participants: Vec<PlanNode> = g.manifest.participants[..2]
            .iter()
            .map(|p| PlanNode {
                name: p.name.clone(),
                identity_key: p.identity_key.clone(),
                address: p.address.clone(),
            })
            .collect();
        participants.push(node("c", &fresh));
        let make = |replace: &[String]| {
            CeremonyPlan::new_rotation(
                CeremonyKind::Reshare,
                &g.manifest,
                2,
                coordinator(),
                participants.clone(),
                &["a".into(), "b".into()],
                replace,
                &mut rand::rngs::OsRng,
            )
            .unwrap()
        };
        // Hole 2: not declared → refused by everyone, naming both fingerprints.
        let hidden = make(&[]);
        for e in everyone_refuses(&g, &hidden, "hidden key change") {
            assert!(
                matches!(e, PlanCheckError::UnapprovedReplacement { .. }),
                "{e}"
            );
            assert!(e.to_string().contains(&fresh.node_id().short()), "{e}");
        }
        // Declared: accepted, and the change is on every member's screen.
        let declared = make(&["c".into()]);
        let checked = CheckedPlan::check(&declared, OldGroup::Manifest(&g.manifest)).unwrap();
        let summary = checked.summary();
        let line = format!(
            "c: identity key CHANGES {} -> {}",
            g.keys[2].node_id().short(),
            fresh.node_id().short()
        );
        assert!(summary.contains(&line), "{summary}");
        assert!(summary.contains(checked.fingerprint()), "{summary}");
        // One identity key under two names.
        let mut p = make(&[]);
        p.participants[2] = PlanNode {
            name: "c2".into(),
            identity_key: g.manifest.participants[0].identity_key.clone(),
            address: "127.0.0.1:7000".into(),
        };
        assert!(CheckedPlan::check(&p, OldGroup::Manifest(&g.manifest)).is_err());
        // An old member renamed (its key under a new name).
        let mut p = make(&[]);
        p.participants[2] = PlanNode {
            name: "c-renamed".into(),
            identity_key: g.manifest.participants[2].identity_key.clone(),
            address: "127.0.0.1:7000".into(),
        };
        for e in everyone_refuses(&g, &p, "renamed member") {
            assert!(matches!(e, PlanCheckError::KeyUnderTwoNames { .. }), "{e}");
        }
        // A refresh that adds or drops a member.
        let mut refresh = CeremonyPlan::new_rotation(
            CeremonyKind::Refresh,
            &g.manifest,
            2,
            coordinator(),
            g.manifest
                .participants
                .iter()
                .map(|p| PlanNode {
                    name: p.name.clone(),
                    identity_key: p.identity_key.clone(),
                    address: p.address.clone(),
                })
                .collect(),
            &["a".into(), "b".into(), "c".into()],
            &[],
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert!(CheckedPlan::check(&refresh, OldGroup::Manifest(&g.manifest)).is_ok());
        let mut moved = refresh.clone();
        moved.participants[1].address = "10.9.9.9:7001".into();
        everyone_refuses(&g, &moved, "refresh that moves a member");
        refresh.participants[2] = node("c", &fresh);
        everyone_refuses(&g, &refresh, "refresh with a new key");
        // A reshare may move a member, and every host is shown the move.
        let mut p = make(&["c".into()]);
        p.participants[1].address = "10.9.9.9:7001".into();
        let summary = CheckedPlan::check(&p, OldGroup::Manifest(&g.manifest))
            .unwrap()
            .summary();
        assert!(
            summary.contains("b: address CHANGES 127.0.0.1:7000 -> 10.9.9.9:7001"),
            "{summary}"
        );
        // A key spelled another way (upper case) is refused: one spelling per key.
        let mut p = make(&["c".into()]);
        p.participants[0].identity_key = p.participants[0].identity_key.to_uppercase();
        assert!(CheckedPlan::check(&p, OldGroup::Manifest(&g.manifest)).is_err());
        assert!(p.roster().is_err());
    }

    /// The property behind all of the above, on random mutations of a repair plan: whenever
    /// an honest member accepts a plan, every node that would receive a secret from it is the
    /// manifest's own key for that name (helpers and the repaired member).
    #[test]
    fn random_plan_mutations_never_address_a_secret_to_a_foreign_key() {
        use rand::{Rng, SeedableRng};
        let g = group(&["a", "b", "c", "d"], 3);
        let outsiders: Vec<IdentityKey> = (0..3)
            .map(|_| IdentityKey::generate(&mut rand::rngs::OsRng))
            .collect();
        let honest = repair_plan(&g);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let keys: Vec<String> = g
            .keys
            .iter()
            .chain(&outsiders)
            .map(|k| k.node_id().to_hex())
            .collect();
        let names = ["a", "b", "c", "d", "mallory"];
        let mut accepted = 0;
        for _ in 0..500 {
            let mut p = honest.clone();
            for _ in 0..rng.gen_range(1..4) {
                let from = p.from.as_mut().unwrap();
                match rng.gen_range(0..5) {
                    0 => {
                        p.participants[0].identity_key = keys[rng.gen_range(0..keys.len())].clone()
                    }
                    1 => p.participants[0].name = names[rng.gen_range(0..names.len())].into(),
                    2 => {
                        let i = rng.gen_range(0..from.dealers.len());
                        from.dealers[i].identity_key = keys[rng.gen_range(0..keys.len())].clone();
                    }
                    3 => {
                        let i = rng.gen_range(0..from.dealers.len());
                        from.dealers[i].name = names[rng.gen_range(0..names.len())].into();
                    }
                    _ => from.replace = vec![names[rng.gen_range(0..names.len())].into()],
                }
            }
            let Ok(checked) = CheckedPlan::check(&p, OldGroup::Manifest(&g.manifest)) else {
                continue;
            };
            accepted += 1;
            let own = |name: &str| {
                g.manifest
                    .participants
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| m.identity_key.clone())
            };
            for d in checked.dealers() {
                assert_eq!(own(&d.name), Some(d.node_id.to_hex()), "{p:?}");
            }
            let target = &p.participants[0];
            assert_eq!(
                own(&target.name),
                Some(target.identity_key.clone()),
                "{p:?}"
            );
        }
        assert!(
            accepted > 0,
            "some mutations are harmless (e.g. the same key set again)"
        );
    }
}

/// Review findings 1 and 2: (a) a complaint from an earlier run of the same plan, replayed by
/// the relay in the store round of a re-run, and (b) a member that signs both its store
/// acknowledgement and a "could not store" complaint, shown by the relay to one member while
/// the others get every acknowledgement. Neither splits the members: the one shown the
/// complaint stays undecided (never discards) and activates with the others' completion; the
/// replayed complaint does not even verify in the new run.
#[test]
fn a_replayed_or_equivocating_complaint_never_splits_the_store_round() {
    use conclave_protocol::{AbortWhy, Message};
    let (plan, ids) = plan(2, 3);
    let final_round = crate::kinds::rounds(plan.kind).final_round();
    // Run 1: p1 cannot store and complains; capture its signed complaint.
    let mut captured: Option<Vec<u8>> = None;
    harness::run_with(
        dkg_members(&plan, ids.clone()),
        Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap(),
        harness::Faults {
            silent: None,
            broken_store: Some(1),
            tamper: &mut |_, env| {
                if let Message::CeremonyAborted {
                    why: AbortWhy::Complaint { complaint, .. },
                    ..
                } = &env.msg
                {
                    captured = Some(complaint.clone());
                }
                true
            },
        },
    );
    let replayed = captured.expect("run 1 aborted with p1's complaint");
    // Run 2 of the same plan, twice: the relay shows p0 (a) the replayed run-1 complaint, or
    // (b) a fresh complaint p1 signs in this run although it also acknowledged.
    for equivocate in [false, true] {
        let mut nonces: Vec<Vec<u8>> = vec![];
        let mut tamper = |to: usize, env: &mut conclave_protocol::Envelope| -> bool {
            let Message::CeremonyRound {
                round,
                items,
                ceremony,
            } = &mut env.msg
            else {
                return true;
            };
            if *round == 0 && nonces.is_empty() {
                nonces = items.iter().map(|d| d.broadcast.clone()).collect();
            }
            if *round != final_round || to != 0 {
                return true;
            }
            let complaint = if equivocate {
                let ctx = Ctx::for_run(&plan, nonces.iter().map(Vec::as_slice)).unwrap();
                let c = Complaint::new(*round, Fault::LocalFailure, vec![ids[1].node_id()]);
                ctx.seal_complaint(&ids[1], &c)
            } else {
                replayed.clone()
            };
            env.msg = Message::CeremonyAborted {
                ceremony: *ceremony,
                why: AbortWhy::Complaint {
                    from: ids[1].node_id(),
                    complaint,
                },
            };
            true
        };
        let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
        let run = run_tampered(dkg_members(&plan, ids.clone()), relay, None, &mut tamper);
        assert_eq!(
            run.activated,
            vec![false, true, true],
            "equivocate={equivocate}"
        );
        assert!(run.aborts.iter().all(Option::is_none), "nobody discards");
        let partial = run.undecided[0]
            .clone()
            .expect("p0 keeps its share, undecided");
        let (m, relay_completion) =
            relay_result(&run.relay_events).unwrap_or_else(|| panic!("relay completed"));
        let mut merged = partial;
        merged.merge(&relay_completion).unwrap();
        merged.verify(&plan, &m.hash().unwrap()).unwrap();
    }
    // A completion of one run never counts for another run's pending files.
    let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
    let a = run(dkg_members(&plan, ids.clone()), relay, None);
    let relay = Relay::new(&plan, crate::kinds::rounds(plan.kind), Instant::now()).unwrap();
    let b = run(dkg_members(&plan, ids.clone()), relay, None);
    let completion_of = |r: &Run| relay_result(&r.relay_events).expect("relay completed").1;
    let (ca, cb) = (completion_of(&a), completion_of(&b));
    assert_ne!(ca.session, cb.session);
    let mut merged = ca.clone();
    assert_eq!(merged.merge(&cb), Err(CompletionError::OtherCeremony));
}
