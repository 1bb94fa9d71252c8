//! Ceremonies run in memory: a relay and n members wired back to back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

pub(crate) struct Run {
    pub outcomes: Vec<Option<Box<Outcome>>>,
    pub aborts: Vec<Option<AbortReport>>,
    pub relay_events: Vec<RelayEvent>,
    pub activated: Vec<bool>,
}

/// Runs members against a relay until everything is quiet. `silent` members never post after
/// joining (a crashed node); `now` jumps past deadlines when nothing else can happen.
pub(crate) fn run<P: Protocol>(
    mut members: Vec<Member<P>>,
    mut relay: Relay,
    silent: Option<usize>,
) -> Run {
    let mut rng = rand::rngs::OsRng;
    let mut now = Instant::now();
    let roster = relay.roster().to_vec();
    let n = members.len();
    let mut run = Run {
        outcomes: (0..n).map(|_| None).collect(),
        aborts: vec![None; n],
        relay_events: vec![],
        activated: vec![false; n],
    };
    for m in &mut members {
        m.start(now);
    }
    for _ in 0..10_000 {
        let mut progress = false;
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(env) = m.poll_transmit() {
                if silent == Some(i) && m.round() >= 1 {
                    continue;
                }
                relay.handle(now, roster[i], env);
                progress = true;
            }
            while let Some(ev) = m.poll_event() {
                progress = true;
                match ev {
                    MemberEvent::Store(o) => {
                        run.outcomes[i] = Some(o);
                        m.stored(now, true);
                    }
                    MemberEvent::Activate => run.activated[i] = true,
                    MemberEvent::Aborted(r) => run.aborts[i] = Some(r),
                    _ => {}
                }
            }
        }
        while let Some(t) = relay.poll_transmit() {
            let i = roster.iter().position(|r| *r == t.to).unwrap();
            members[i].handle(now, t.envelope, &mut rng);
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
    let relay = Relay::new(&plan, Instant::now()).unwrap();
    let run = run(dkg_members(&plan, ids), relay, None);
    assert!(run.aborts.iter().all(Option::is_none), "{:?}", run.aborts);
    assert!(run.activated.iter().all(|a| *a));
    let outcomes: Vec<&Outcome> = run.outcomes.iter().map(|o| o.as_deref().unwrap()).collect();
    let m0 = &outcomes[0].manifest;
    assert!(outcomes.iter().all(|o| o.manifest == *m0));
    assert_eq!(m0.threshold, 3);
    assert_eq!(m0.epoch, 1);
    // The relay learns the same manifest, vouched for by every member.
    let Some(RelayEvent::Completed { confirm, store }) = run.relay_events.last() else {
        panic!("relay did not complete: {:?}", run.relay_events);
    };
    assert_eq!(completed_manifest(&plan, confirm, store).unwrap(), *m0);
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
    let relay = Relay::new(&plan, Instant::now()).unwrap();
    let run = run(dkg_members(&plan, ids), relay, Some(1));
    assert!(run.outcomes.iter().all(Option::is_none));
    for (i, a) in run.aborts.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let a = a.as_ref().unwrap();
        assert!(a.summary.contains("timed out"), "{}", a.summary);
        assert_eq!(a.culprits, vec!["p1".to_string()]);
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
    let (text, _) = describe_abort(
        &plan,
        &ctx,
        &conclave_protocol::AbortWhy::Complaint {
            from: ids[1].node_id(),
            complaint: bytes,
        },
    );
    assert!(text.contains("not signed"), "{text}");
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
        let mut relay = Relay::new(&plan, Instant::now()).unwrap();
        relay.inject(RelayFault::SubstituteRound1);
        let run = run(dkg_members(&plan, ids), relay, None);
        assert!(run.outcomes.iter().all(Option::is_none));
        for a in &run.aborts {
            let a = a.as_ref().unwrap();
            assert!(a.summary.contains("echo check failed"), "{}", a.summary);
            // p4 was the one shown a different round 1.
            assert_eq!(a.culprits, vec!["p4".to_string()]);
        }
    }

    #[test]
    fn a_bad_share_names_its_sender() {
        let (plan, ids) = plan(3, 5);
        let relay = Relay::new(&plan, Instant::now()).unwrap();
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
        for a in &run.aborts {
            let a = a.as_ref().unwrap();
            assert!(a.summary.contains("does not match"), "{}", a.summary);
            assert_eq!(a.culprits, vec!["p2".to_string()]);
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
    ) -> Result<GroupManifest, AbortReport> {
        let participants = new.iter().map(|i| plan_node(&nodes[*i])).collect();
        let dealer_names: Vec<String> = dealers.iter().map(|i| nodes[*i].name.clone()).collect();
        let plan = CeremonyPlan::new_rotation(
            CeremonyKind::Reshare,
            old,
            t,
            coordinator(),
            participants,
            &dealer_names,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let roster = plan.roster().unwrap();
        let mut members = vec![];
        for m in &roster {
            let n = nodes.iter().find(|n| n.key.node_id() == m.node_id).unwrap();
            #[allow(unused_mut)]
            let mut r = Reshare::new(&plan, &m.node_id, n.share.as_ref()).unwrap();
            #[cfg(feature = "fault-injection")]
            if bad_dealer.is_some_and(|b| nodes[b].key.node_id() == m.node_id) {
                r.inject(crate::reshare::ReshareFault::BadSubShare);
            }
            members.push(Member::new(&plan, n.key.clone(), r).unwrap());
        }
        let _ = bad_dealer;
        let relay = Relay::new(&plan, Instant::now()).unwrap();
        let run = run(members, relay, None);
        if let Some(a) = run.aborts.iter().flatten().next() {
            return Err(a.clone());
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
            &mut rng,
        )
        .unwrap();
        let members: Vec<Member<Dkg>> = [0, 2, 3, 5]
            .iter()
            .map(|i| {
                let n = &nodes[*i];
                let d =
                    Dkg::refresh(&plan, &n.key.node_id(), n.share.clone().unwrap(), &m3).unwrap();
                Member::new(&plan, n.key.clone(), d).unwrap()
            })
            .collect();
        let run = run(members, Relay::new(&plan, Instant::now()).unwrap(), None);
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
            &mut rng,
        )
        .unwrap();
        assert_eq!(plan.epoch, m.epoch);
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
                let r = Repair::new(&plan, &pm.node_id, &m, share).unwrap();
                Member::new(&plan, nodes[i].key.clone(), r).unwrap()
            })
            .collect();
        let run = run(members, Relay::new(&plan, Instant::now()).unwrap(), None);
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
            &mut rng,
        )
        .unwrap();
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
        assert_eq!(err.culprits, vec!["c".to_string()]);
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
