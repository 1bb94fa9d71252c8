//! The coordinator state machine against real participant state machines, in memory.

use std::collections::{HashMap, HashSet};

use conclave_audit::MemoryAudit;
use conclave_keygen::{deal, NewMember};
use conclave_participant::{Participant, ParticipantConfig};
use conclave_policy::Policy;
use conclave_protocol::request::{MessageRef, SignRequestBody};
use conclave_protocol::IdentityKey;

use super::*;

const UNIX: u64 = 1_800_000_000;

/// A policy allowing `client` raw messages on group "g".
fn allow(client: &IdentityKey) -> Policy {
    Policy::from_toml(&format!(
        "[[client]]\nname = \"ci\"\nkey = \"{}\"\ngroups = [\"g\"]\nkinds = [\"raw\"]\nmax_message_bytes = 70000\nrate = \"100000/min\"\n",
        client.node_id().to_hex()
    ))
    .unwrap()
}

fn request_by(client: &IdentityKey, group: &GroupName, epoch: u64, msg: &[u8]) -> SignedRequest {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    SignRequestBody {
        group: group.clone(),
        epoch,
        message: MessageRef::Full(msg.to_vec()),
        kind: "raw".into(),
        request_id: id,
        not_after: UNIX + 60,
    }
    .sign(client)
    .unwrap()
}

struct Net {
    coord: Coordinator,
    coord_id: NodeId,
    parts: HashMap<NodeId, Participant>,
    order: Vec<NodeId>,
    silent: HashSet<NodeId>,
    corrupt: HashSet<NodeId>,
    misnumbered: HashSet<NodeId>,
    now: Instant,
    events: Vec<Event>,
    sent: Vec<(NodeId, &'static str)>,
    shares: HashMap<NodeId, frost::keys::KeyPackage>,
    group: GroupName,
    client: IdentityKey,
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Commit { .. } => "commit",
        Message::Sign { .. } => "sign",
        _ => "other",
    }
}

impl Net {
    fn new(t: u16, n: usize) -> Self {
        Self::with_pool(t, n, 4)
    }

    fn with_pool(t: u16, n: usize, pool_target: u16) -> Self {
        Self::with_pools(t, n, pool_target, 1)
    }

    fn with_pools(t: u16, n: usize, pool_target: u16, pool_idle: u16) -> Self {
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..n)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "127.0.0.1:1".into(),
            })
            .collect();
        let group = GroupName::new("g").unwrap();
        let (manifest, dealt) = deal(group.clone(), t, &members, &mut rng).unwrap();
        let now = Instant::now();
        let mut coord = Coordinator::new(
            vec![manifest],
            CoordinatorConfig {
                pool_target,
                pool_idle,
                ..Default::default()
            },
        )
        .unwrap();
        let mut parts = HashMap::new();
        let mut shares = HashMap::new();
        let client = IdentityKey::generate(&mut rng);
        for s in dealt {
            shares.insert(s.node_id, s.key_package.clone());
            parts.insert(
                s.node_id,
                Participant::new(
                    vec![(group.clone(), 1, s.key_package)],
                    ParticipantConfig::default(),
                    allow(&client),
                    Box::new(MemoryAudit::default()),
                    &mut rng,
                ),
            );
        }
        let order: Vec<NodeId> = members.iter().map(|m| m.node_id).collect();
        for node in &order {
            coord.peer_up(now, *node);
        }
        let mut net = Net {
            coord,
            coord_id: IdentityKey::generate(&mut rng).node_id(),
            parts,
            order,
            silent: HashSet::new(),
            corrupt: HashSet::new(),
            misnumbered: HashSet::new(),
            now,
            events: Vec::new(),
            sent: Vec::new(),
            shares,
            group,
            client,
        };
        net.pump();
        net
    }

    /// Delivers every queued request and its reply, with the configured faults.
    fn pump(&mut self) {
        while let Some(t) = self.coord.poll_transmit() {
            self.sent.push((t.to, kind(&t.envelope.msg)));
            if self.silent.contains(&t.to) {
                continue;
            }
            let p = self.parts.get_mut(&t.to).unwrap();
            p.handle(
                self.now,
                UNIX,
                self.coord_id,
                t.envelope,
                &mut rand::rngs::OsRng,
            );
            let mut reply = p.poll_transmit().unwrap().envelope;
            if self.corrupt.contains(&t.to) {
                if let Message::SignatureShare { share, .. } = &mut reply.msg {
                    share[0] ^= 1;
                }
            }
            if self.misnumbered.contains(&t.to) {
                if let Message::SignatureShare { commitment_id, .. } = &mut reply.msg {
                    *commitment_id ^= 1;
                }
            }
            self.coord.handle(self.now, t.to, reply);
        }
        while let Some(e) = self.coord.poll_event() {
            self.events.push(e);
        }
    }

    /// A request by the fixture's client for `msg`, on the group's epoch.
    fn request(&self, msg: &[u8]) -> SignedRequest {
        let epoch = self.coord.group_info(&self.group).map_or(1, |g| g.epoch);
        request_by(&self.client, &self.group, epoch, msg)
    }

    /// Signs like the client library: a new request (new id) when an attempt failed after
    /// round 2 began, up to three times.
    fn sign(&mut self, msg: &[u8]) -> Result<SignOutcome, SignError> {
        let mut result = Err(SignError::Internal("no attempt"));
        for _ in 0..3 {
            let request = self.request(msg);
            result = self.sign_request(request, msg);
            if !matches!(result, Err(SignError::AttemptFailed { .. })) {
                break;
            }
        }
        result
    }

    fn sign_request(
        &mut self,
        request: SignedRequest,
        msg: &[u8],
    ) -> Result<SignOutcome, SignError> {
        let start = self.now;
        let sid = self.coord.submit(
            self.now,
            UNIX,
            request,
            msg.to_vec(),
            Some(Duration::from_secs(10)),
        );
        for _ in 0..1000 {
            self.pump();
            if let Some(i) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::SignDone { session, .. } if *session == sid))
            {
                let Event::SignDone { result, .. } = self.events.remove(i) else {
                    unreachable!()
                };
                assert!(
                    self.now <= start + Duration::from_secs(10),
                    "ended after its deadline"
                );
                if let Ok(o) = &result {
                    let vk = ed25519_dalek::VerifyingKey::from_bytes(&o.public_key).unwrap();
                    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&o.signature))
                        .unwrap();
                }
                return result;
            }
            let next = self
                .coord
                .poll_timeout()
                .expect("a pending session always has a deadline");
            self.now = self.now.max(next);
            self.coord.handle_timeout(self.now);
        }
        panic!("session did not end");
    }

    fn culprits(&self) -> Vec<NodeId> {
        self.events
            .iter()
            .filter_map(|e| {
                if let Event::CulpritDetected { node, .. } = e {
                    Some(*node)
                } else {
                    None
                }
            })
            .collect()
    }
}

#[test]
fn three_of_five_signs_and_verifies() {
    let mut net = Net::new(3, 5);
    let o = net.sign(b"hello").unwrap();
    assert_eq!(o.signers.len(), 3);
    assert_eq!(o.attempts, 1);
    assert!(o.culprits.is_empty());
}

#[test]
fn with_warm_pools_a_signature_needs_one_round_trip_per_signer() {
    let mut net = Net::new(3, 5);
    net.sign(b"warm-up").unwrap();
    net.pump();
    net.sent.clear();
    net.sign(b"second").unwrap();
    let kinds: Vec<&str> = net.sent.iter().map(|(_, k)| *k).collect();
    assert_eq!(&kinds[..3], &["sign", "sign", "sign"], "{kinds:?}");
    assert!(
        kinds[3..].iter().all(|k| *k == "commit"),
        "only pool refills follow: {kinds:?}"
    );
}

#[test]
fn two_disconnected_participants_do_not_stop_signing() {
    let mut net = Net::new(3, 5);
    let nodes: Vec<NodeId> = net.order[..2].to_vec();
    for node in nodes {
        net.coord.peer_down(net.now, node);
    }
    let o = net.sign(b"m").unwrap();
    assert!(!o.signers.contains(&"p0".to_string()) && !o.signers.contains(&"p1".to_string()));
}

#[test]
fn two_silent_participants_are_timed_out_and_replaced() {
    let mut net = Net::new(3, 5);
    net.silent.extend(net.order[..2].iter().copied());
    for i in 0..3 {
        let o = net.sign(format!("m{i}").as_bytes()).unwrap();
        assert!(!o.signers.contains(&"p0".to_string()) && !o.signers.contains(&"p1".to_string()));
    }
}

#[test]
fn three_disconnected_is_a_typed_failure_at_once() {
    let mut net = Net::new(3, 5);
    let nodes: Vec<NodeId> = net.order[..3].to_vec();
    for node in nodes {
        net.coord.peer_down(net.now, node);
    }
    let start = net.now;
    assert_eq!(
        net.sign(b"m").unwrap_err(),
        SignError::SignerUnavailable {
            reachable: 2,
            needed: 3
        }
    );
    assert_eq!(net.now, start);
}

#[test]
fn three_silent_fails_closed_before_the_deadline() {
    let mut net = Net::new(3, 5);
    net.sign(b"warm").unwrap();
    net.silent.extend(net.order[..3].iter().copied());
    let start = net.now;
    let err = net.sign(b"m").unwrap_err();
    // Either no three signers are left, or an attempt failed after round 2 and the signers
    // that answered will not sign this request again: typed, and before the deadline.
    assert!(
        matches!(
            err,
            SignError::SignerUnavailable { needed: 3, .. } | SignError::AttemptFailed { .. }
        ),
        "{err:?}"
    );
    assert!(net.now < start + Duration::from_secs(10));
}

#[test]
fn invalid_share_names_the_culprit_and_another_subset_signs() {
    let mut net = Net::new(3, 5);
    let bad = net.order[0];
    net.corrupt.insert(bad);
    for i in 0..4 {
        let o = net.sign(format!("m{i}").as_bytes()).unwrap();
        assert!(!o.signers.contains(&"p0".to_string()));
    }
    let culprits = net.culprits();
    assert!(
        !culprits.is_empty(),
        "p0 must have been chosen and caught at least once"
    );
    assert!(
        culprits.iter().all(|c| *c == bad),
        "no honest participant is ever named"
    );
}

#[test]
fn restarted_participant_with_lost_nonces_does_not_break_signing() {
    let mut net = Net::new(2, 3);
    net.sign(b"warm").unwrap();
    // Every participant restarts: all pooled commitments are now unknown to them.
    for (node, kp) in net.shares.clone() {
        net.parts.insert(
            node,
            Participant::new(
                vec![(net.group.clone(), 1, kp)],
                ParticipantConfig::default(),
                allow(&net.client),
                Box::new(MemoryAudit::default()),
                &mut rand::rngs::OsRng,
            ),
        );
    }
    let o = net.sign(b"after restart").unwrap();
    assert_eq!(o.signers.len(), 2);
    assert!(net.culprits().is_empty(), "a restart is not misbehaviour");
}

#[test]
fn participant_on_another_epoch_is_refused_and_reported() {
    let mut net = Net::new(2, 3);
    let stale = net.order[0];
    let kp = net.shares[&stale].clone();
    net.parts.insert(
        stale,
        Participant::new(
            vec![(net.group.clone(), 7, kp)],
            ParticipantConfig::default(),
            allow(&net.client),
            Box::new(MemoryAudit::default()),
            &mut rand::rngs::OsRng,
        ),
    );
    net.coord.peer_down(net.now, stale);
    net.coord.peer_up(net.now, stale);
    for i in 0..3 {
        let o = net.sign(format!("m{i}").as_bytes()).unwrap();
        assert!(!o.signers.contains(&"p0".to_string()));
    }
    assert!(net.events.iter().any(|e| matches!(e, Event::StaleEpoch { node, node_epoch: 7, group_epoch: 1, .. } if *node == stale)));
}

#[test]
fn unknown_group_and_oversized_messages_are_refused() {
    let mut net = Net::new(2, 3);
    let nope = GroupName::new("nope").unwrap();
    let sid = net.coord.submit(
        net.now,
        UNIX,
        request_by(&net.client, &nope, 1, b"m"),
        b"m".to_vec(),
        None,
    );
    assert_eq!(
        net.coord.poll_event(),
        Some(Event::SignDone {
            session: sid,
            result: Err(SignError::UnknownGroup),
            culprits: vec![],
        })
    );
    assert!(matches!(
        net.sign(&vec![0; MAX_SIGN_MESSAGE_LEN + 1]),
        Err(SignError::MessageTooLarge { .. })
    ));
}

#[test]
fn reply_from_the_wrong_peer_is_ignored() {
    let mut net = Net::new(2, 3);
    let r = net.request(b"m");
    let sid = net.coord.submit(net.now, UNIX, r, b"m".to_vec(), None);
    let _ = sid;
    let t = net.coord.poll_transmit().unwrap();
    let imposter = net.order.iter().copied().find(|n| *n != t.to).unwrap();
    net.coord.handle(
        net.now,
        imposter,
        Envelope {
            id: t.envelope.id,
            msg: Message::Refused(Refusal::Overloaded),
        },
    );
    assert!(
        net.coord.inflight.contains_key(&t.envelope.id),
        "the real request is still pending"
    );
}

#[test]
fn a_superseded_epoch_is_refused_once_a_threshold_of_members_serve_a_newer_one() {
    let mut net = Net::new(3, 5);
    let to_epoch_2 = |net: &mut Net, i: usize| {
        let node = net.order[i];
        let kp = net.shares[&node].clone();
        net.parts.insert(
            node,
            Participant::new(
                vec![(net.group.clone(), 2, kp)],
                ParticipantConfig::default(),
                allow(&net.client),
                Box::new(MemoryAudit::default()),
                &mut rand::rngs::OsRng,
            ),
        );
        // It restarted on its epoch-2 share: a new connection, empty pools.
        net.coord.peer_down(net.now, node);
        net.coord.peer_up(net.now, node);
        net.pump();
    };
    // Two members (fewer than t = 3) on epoch 2: epoch 1 still signs with the other three, and
    // one member alone can never stop a group.
    to_epoch_2(&mut net, 0);
    to_epoch_2(&mut net, 1);
    net.sign(b"still epoch 1").unwrap();
    // A threshold on epoch 2: epoch 1 is superseded, typed refusal, no attempt made.
    to_epoch_2(&mut net, 2);
    let _ = net.sign(b"learn the epochs");
    match net.sign(b"after the switch") {
        Err(SignError::Refused(Refusal::EpochSuperseded { serving, newer })) => {
            assert_eq!((serving, newer), (1, 2));
        }
        other => panic!("expected epoch_superseded, got {other:?}"),
    }
    assert_eq!(
        SignError::Refused(Refusal::EpochSuperseded {
            serving: 1,
            newer: 2
        })
        .code(),
        "epoch_superseded"
    );
}

#[test]
fn a_share_for_another_commitment_names_its_sender_even_when_the_session_fails() {
    // 4-of-4: p0 must sign, and its reply names another commitment than the one it was
    // asked to spend. The session fails closed, and the failure still names p0.
    let mut net = Net::new(4, 4);
    let bad = net.order[0];
    net.misnumbered.insert(bad);
    let r = net.request(b"echo the commitment id");
    let sid = net.coord.submit(
        net.now,
        UNIX,
        r,
        b"echo the commitment id".to_vec(),
        Some(Duration::from_secs(10)),
    );
    let mut done = None;
    for _ in 0..1000 {
        net.pump();
        if let Some(i) = net
            .events
            .iter()
            .position(|e| matches!(e, Event::SignDone { session, .. } if *session == sid))
        {
            done = Some(net.events.remove(i));
            break;
        }
        let next = net.coord.poll_timeout().expect("deadline");
        net.now = net.now.max(next);
        net.coord.handle_timeout(net.now);
    }
    let Some(Event::SignDone {
        result, culprits, ..
    }) = done
    else {
        panic!("session did not end");
    };
    assert!(result.is_err(), "{result:?}");
    assert_eq!(culprits, vec![bad], "the failed session keeps its culprit");
}

#[test]
fn sessions_beyond_the_cap_are_refused_as_overloaded_by_the_state_machine() {
    let mut net = Net::new(2, 3);
    net.coord.config.max_sessions = 1;
    let (a, b) = (net.request(b"a"), net.request(b"b"));
    let _first = net.coord.submit(net.now, UNIX, a, b"a".to_vec(), None);
    let second = net.coord.submit(net.now, UNIX, b, b"b".to_vec(), None);
    let refused = std::iter::from_fn(|| net.coord.poll_event()).any(|e| {
        matches!(e, Event::SignDone { session, result: Err(SignError::Refused(Refusal::Overloaded)), .. } if session == second)
    });
    assert!(refused);
}

#[test]
fn a_policy_refusal_ends_the_session_without_blame_or_retry() {
    let mut net = Net::new(3, 5);
    net.sign(b"warm").unwrap();
    // A client that no signer's policy knows: signed by its own key, accepted by the
    // coordinator (it has no policy of its own), refused by each signer asked.
    let stranger = IdentityKey::generate(&mut rand::rngs::OsRng);
    let r = request_by(&stranger, &net.group.clone(), 1, b"m");
    let sent_before = net.sent.iter().filter(|(_, k)| *k == "sign").count();
    match net.sign_request(r, b"m") {
        Err(SignError::NotAuthorized { refusals }) => {
            assert_eq!(refusals.len(), 3, "{refusals:?}");
            assert!(refusals
                .iter()
                .all(|(_, rule)| *rule == PolicyRule::UnknownClient));
        }
        other => panic!("expected not_authorized, got {other:?}"),
    }
    // One attempt only: three round-2 requests, no other subset tried, nobody blamed.
    let sent = net.sent.iter().filter(|(_, k)| *k == "sign").count() - sent_before;
    assert_eq!(sent, 3);
    assert!(net.culprits().is_empty());
    assert!(net.coord.peers.values().all(|p| p.penalty_until.is_none()));
    // The coordinator's own early checks: a tampered message, another epoch.
    let mut r = net.request(b"m");
    r.body.message = MessageRef::Full(b"other".to_vec());
    assert!(matches!(
        net.sign_request(r, b"other"),
        Err(SignError::NotAuthorized { refusals }) if refusals == [("coordinator".to_string(), PolicyRule::BadSignature)]
    ));
    let r = request_by(&net.client, &net.group.clone(), 9, b"m");
    assert!(matches!(
        net.sign_request(r, b"m"),
        Err(SignError::NotAuthorized { refusals }) if refusals == [("coordinator".to_string(), PolicyRule::Epoch)]
    ));
    // The allowed client still signs.
    net.sign(b"after").unwrap();
}

#[test]
fn a_request_is_signed_at_most_once_per_signer_even_across_attempts() {
    // 3-of-5 with a culprit: the first attempt fails after round 2; the signers that answered
    // are not asked again for the same request, so the session ends with attempt_failed and
    // a new request (what the client library sends) signs without the culprit.
    let mut net = Net::new(3, 5);
    net.sign(b"warm").unwrap();
    let bad = net.order[0];
    net.corrupt.insert(bad);
    let mut outcome = None;
    for i in 0..3 {
        let r = net.request(b"m");
        match net.sign_request(r, b"m") {
            Ok(o) => {
                outcome = Some(o);
                break;
            }
            Err(SignError::AttemptFailed { culprits }) => {
                assert_eq!(culprits, ["p0"], "attempt {i}");
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let o = outcome.expect("a new request signs without the culprit");
    assert!(!o.signers.contains(&"p0".to_string()));
}

#[test]
fn a_signer_that_refuses_a_client_is_asked_last_for_it_so_one_signer_cannot_veto_everything() {
    // 3-of-5 where p0's policy allows nobody: the sessions it is picked for end as
    // not_authorized (no retry around it within a session), but the client's later requests
    // go to the four signers that allow it first, and p0 is not penalised for others.
    let mut net = Net::new(3, 5);
    let p0 = net.order[0];
    net.parts
        .get_mut(&p0)
        .unwrap()
        .set_policy(Policy::deny_all());
    let mut denied = 0;
    for i in 0..10 {
        match net.sign(format!("m{i}").as_bytes()) {
            Ok(o) => assert!(!o.signers.contains(&"p0".to_string())),
            Err(SignError::NotAuthorized { refusals }) => {
                assert_eq!(refusals, [("p0".to_string(), PolicyRule::UnknownClient)]);
                denied += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(denied <= 1, "p0 vetoed {denied} of 10 requests");
    assert!(net.coord.peers[&p0].penalty_until.is_none());
}

/// A second key for the same group and members at `epoch` (a reload's new manifest), with
/// each member's key package.
fn new_epoch(net: &Net, epoch: u64) -> (GroupManifest, HashMap<NodeId, frost::keys::KeyPackage>) {
    let members: Vec<NewMember> = net
        .order
        .iter()
        .enumerate()
        .map(|(i, n)| NewMember {
            name: format!("p{i}"),
            node_id: *n,
            address: "127.0.0.1:1".into(),
        })
        .collect();
    let t = net.coord.group_info(&net.group).unwrap().threshold;
    let (mut manifest, dealt) =
        deal(net.group.clone(), t, &members, &mut rand::rngs::OsRng).unwrap();
    manifest.epoch = epoch;
    let shares = dealt
        .into_iter()
        .map(|s| (s.node_id, s.key_package))
        .collect();
    (manifest, shares)
}

#[test]
fn a_reload_onto_a_new_epoch_lets_sessions_in_flight_finish_on_the_old_one() {
    let mut net = Net::new(2, 3);
    let old_key = net.sign(b"warm-up").unwrap().public_key;
    let (manifest, new_shares) = new_epoch(&net, 2);
    // Every participant serves both epochs (the switch's first step).
    for (node, p) in net.parts.iter_mut() {
        let changes = p.set_shares(
            net.now,
            vec![
                (net.group.clone(), 1, net.shares[node].clone()),
                (net.group.clone(), 2, new_shares[node].clone()),
            ],
        );
        assert_eq!(changes.kept.len(), 1);
    }
    // A session begun on epoch 1, its round 2 queued but not yet delivered.
    let request = net.request(b"in flight");
    let sid = net.coord.submit(
        net.now,
        UNIX,
        request,
        b"in flight".to_vec(),
        Some(Duration::from_secs(10)),
    );
    let summary = net.coord.reload(net.now, vec![manifest]).unwrap();
    assert_eq!(summary.changed, vec![(net.group.clone(), 1, 2)]);
    assert_eq!(net.coord.group_info(&net.group).unwrap().epoch, 2);
    net.pump();
    let done = net
        .events
        .iter()
        .find_map(|e| match e {
            Event::SignDone {
                session, result, ..
            } if *session == sid => Some(result.clone()),
            _ => None,
        })
        .expect("the epoch-1 session finished");
    let o = done.expect("signed on the epoch it began on");
    assert_eq!(o.public_key, old_key);
    // New requests: epoch 1 is refused by name, epoch 2 signs under the new key.
    let stale = request_by(&net.client, &net.group, 1, b"late");
    assert!(matches!(
        net.sign_request(stale, b"late"),
        Err(SignError::NotAuthorized { refusals }) if refusals == vec![("coordinator".to_string(), PolicyRule::Epoch)]
    ));
    let o = net.sign(b"after").unwrap();
    assert_ne!(o.public_key, old_key);
    // The retired epoch is gone once no session uses it.
    assert!(net.coord.retired.is_empty());
    assert!(net.coord.pools.keys().all(|(_, _, e)| *e == 2));
}

#[test]
fn a_reload_with_a_bad_manifest_changes_nothing() {
    let mut net = Net::new(2, 3);
    let (mut a, _) = new_epoch(&net, 2);
    let b = a.clone();
    // The same group twice.
    let err = net.coord.reload(net.now, vec![a.clone(), b]).unwrap_err();
    assert!(matches!(err, SetupError::DuplicateGroup(_)));
    a.group_public_key = "not a key".into();
    assert!(net.coord.reload(net.now, vec![a]).is_err());
    // Another key at the same epoch: refused (a rotation moves to a new epoch).
    let (mut same_epoch, _) = new_epoch(&net, 1);
    same_epoch.epoch = 1;
    assert!(matches!(
        net.coord.reload(net.now, vec![same_epoch]),
        Err(SetupError::ChangedWithoutNewEpoch(_))
    ));
    assert_eq!(net.coord.group_info(&net.group).unwrap().epoch, 1);
    net.sign(b"still serving").unwrap();
}

#[test]
fn a_node_on_another_epoch_is_back_once_it_serves_the_epoch_without_reconnecting() {
    let mut net = Net::new(2, 3);
    let node = net.order[0];
    let kp = net.shares[&node].clone();
    // p0 moved to epoch 2 ahead of the others: refused, marked stale.
    net.parts
        .get_mut(&node)
        .unwrap()
        .set_shares(net.now, vec![(net.group.clone(), 2, kp.clone())]);
    for i in 0..4 {
        net.sign(format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(
        net.coord.group_info(&net.group).unwrap().stale,
        vec![("p0".to_string(), 2)]
    );
    // It serves epoch 1 again (a reload on that node, no reconnection): within a recheck
    // interval it is used again.
    net.parts
        .get_mut(&node)
        .unwrap()
        .set_shares(net.now, vec![(net.group.clone(), 1, kp)]);
    net.now += RECHECK_INTERVAL + Duration::from_millis(1);
    net.coord.handle_timeout(net.now);
    net.pump();
    let info = net.coord.group_info(&net.group).unwrap();
    assert!(info.stale.is_empty(), "{:?}", info.stale);
    assert_eq!(info.reachable, 3);
}

#[test]
fn frozen_signers_fail_closed_with_a_typed_reason_and_come_back_when_unfrozen() {
    let mut net = Net::new(2, 3);
    net.sign(b"warm-up").unwrap();
    let frozen = conclave_participant::Freeze {
        all: true,
        groups: Default::default(),
    };
    for node in &net.order[..2] {
        net.parts.get_mut(node).unwrap().set_freeze(frozen.clone());
    }
    let mut last = None;
    for i in 0..4 {
        last = Some(net.sign(format!("f{i}").as_bytes()));
    }
    match last.unwrap() {
        Err(SignError::Frozen {
            frozen,
            names,
            needed,
            ..
        }) => {
            assert_eq!((frozen, needed), (2, 2));
            assert_eq!(names, vec!["p0".to_string(), "p1".to_string()]);
        }
        other => panic!("expected a frozen refusal, got {other:?}"),
    }
    assert!(net.events.iter().any(|e| matches!(e, Event::Frozen { .. })));
    assert_eq!(net.coord.group_info(&net.group).unwrap().frozen.len(), 2);
    assert_eq!(
        SignError::Frozen {
            frozen: 2,
            names: vec![],
            reachable: 1,
            needed: 2
        }
        .code(),
        "frozen"
    );
    for node in &net.order[..2] {
        net.parts
            .get_mut(node)
            .unwrap()
            .set_freeze(Default::default());
    }
    net.now += RECHECK_INTERVAL + Duration::from_millis(1);
    net.coord.handle_timeout(net.now);
    net.pump();
    assert!(net.coord.group_info(&net.group).unwrap().frozen.is_empty());
    net.sign(b"thawed").unwrap();
}

#[test]
fn a_node_whose_pool_was_dropped_after_a_timeout_is_refilled_and_used_again() {
    let mut net = Net::new(2, 3);
    net.sign(b"warm-up").unwrap();
    let node = net.order[0];
    net.silent.insert(node);
    for i in 0..3 {
        net.sign(format!("s{i}").as_bytes()).unwrap();
    }
    // It answers again, over the same connection (a short link cut).
    net.silent.remove(&node);
    net.now += Duration::from_secs(6);
    net.coord.handle_timeout(net.now);
    net.pump();
    assert!(net.coord.pooled(node, &net.group) > 0, "pool refilled");
    let mut used = false;
    for i in 0..6 {
        let o = net.sign(format!("u{i}").as_bytes()).unwrap();
        used |= o.signers.contains(&"p0".to_string());
    }
    assert!(used, "p0 is chosen again");
}

#[test]
fn a_pool_larger_than_one_batch_is_fetched_in_batches_and_kept_full() {
    // Both signers sign every request, so each spends one commitment per signature. Idle
    // pools as large as busy ones: the whole target is fetched at connect.
    let mut net = Net::with_pools(2, 2, 600, 600);
    let commits = |net: &Net| net.sent.iter().filter(|(_, k)| *k == "commit").count();
    // 256 + 256 + 88 per participant.
    assert_eq!(commits(&net), 6);
    for node in net.order.clone() {
        assert_eq!(net.parts[&node].outstanding(&net.group), 600);
    }
    // Spending less than a batch asks for nothing; the pool is refilled once a batch is used.
    for i in 0..10 {
        net.sign(format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(commits(&net), 6);
    for i in 0..300 {
        net.sign(format!("n{i}").as_bytes()).unwrap();
    }
    assert!(commits(&net) > 6);
    for node in net.order.clone() {
        let held = net.parts[&node].outstanding(&net.group);
        assert!(held > 600 - 256 && held <= 600, "{held}");
    }
}

#[test]
fn pools_follow_each_groups_demand_between_pool_idle_and_pool_target() {
    let mut net = Net::with_pools(2, 2, 32, 1);
    let node = net.order[0];
    // Connected, never asked: one commitment per participant.
    assert_eq!(net.coord.pooled(node, &net.group), 1);
    assert_eq!(net.parts[&node].outstanding(&net.group), 1);
    // A burst: the pools grow with it (twice the recent requests), up to pool_target.
    for i in 0..40 {
        net.sign(format!("b{i}").as_bytes()).unwrap();
    }
    let busy = net.coord.pooled(node, &net.group);
    assert!(busy > 16 && busy <= 32, "{busy}");
    // Twenty seconds without a request: the next refill sizes the pool as idle again.
    net.now += Duration::from_secs(25);
    net.sign(b"after a pause").unwrap();
    let after = net.parts[&node].outstanding(&net.group);
    assert!(after < busy, "idle again: {after} held, {busy} before");
    assert!(after <= 32);
}

#[test]
fn a_cold_group_with_no_idle_pool_fetches_one_round_trip_and_signs() {
    let mut net = Net::with_pools(2, 2, 32, 0);
    let node = net.order[0];
    assert_eq!(
        net.coord.pooled(node, &net.group),
        0,
        "no commitment at connect"
    );
    let before = net.sent.len();
    net.sign(b"cold").unwrap();
    let sent = &net.sent[before..];
    let kinds: Vec<&str> = sent.iter().map(|(_, k)| *k).collect();
    // A commit to each signer first (one round trip: round 2 waits for it), then round 2.
    assert_eq!(&kinds[..2], &["commit", "commit"], "{kinds:?}");
    assert_ne!(sent[0].0, sent[1].0, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "sign").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        net.coord.pooled(node, &net.group) >= 1,
        "warm for the next request"
    );
}

#[test]
fn a_node_whose_big_pool_was_dropped_after_a_timeout_is_used_again() {
    // pool_target equal to the participants' default max_outstanding_nonces (1024): after a
    // timeout the coordinator forgets its pool while the participant still holds the nonces;
    // the participant drops the oldest ones when asked again instead of refusing.
    let mut net = Net::with_pool(2, 3, 1024);
    net.sign(b"warm-up").unwrap();
    let node = net.order[0];
    net.silent.insert(node);
    for i in 0..3 {
        net.sign(format!("s{i}").as_bytes()).unwrap();
    }
    net.silent.remove(&node);
    net.now += Duration::from_secs(6);
    net.coord.handle_timeout(net.now);
    net.pump();
    assert!(net.coord.pooled(node, &net.group) > 0);
    assert!(net.parts[&node].outstanding(&net.group) <= 1024);
    let mut used = false;
    for i in 0..6 {
        let o = net.sign(format!("u{i}").as_bytes()).unwrap();
        used |= o.signers.contains(&"p0".to_string());
    }
    assert!(used, "the node was never chosen again");
}

#[test]
fn a_signer_that_stops_answering_costs_its_usual_answer_time_not_the_full_timeout() {
    let mut net = Net::new(3, 5);
    // Every signer answers a few round 2s (instantly here): each has an answer-time estimate.
    for i in 0..10 {
        net.sign(format!("warm {i}").as_bytes()).unwrap();
    }
    net.silent.extend(net.order[..2].iter().copied());
    let start = net.now;
    let o = net.sign(b"two stopped answering").unwrap();
    let took = net.now - start;
    assert!(
        !o.signers.contains(&"p0".to_string()) && !o.signers.contains(&"p1".to_string()),
        "{:?}",
        o.signers
    );
    // The floor (250 ms) per timeout, not participant_timeout (2 s).
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn round_two_timeouts_follow_each_signers_answer_times_within_floor_and_ceiling() {
    let (floor, ceiling) = (Duration::from_millis(250), Duration::from_secs(2));
    let mut e = RttEstimate::default();
    assert_eq!(
        e.timeout(floor, ceiling),
        ceiling,
        "no estimate: the ceiling"
    );
    e.sample(Duration::from_millis(5));
    assert_eq!(e.timeout(floor, ceiling), floor, "fast answers: the floor");
    // A slow but steady link gets the time it needs, and more than its usual answer.
    // Room for one lost and resent packet: three round trips.
    let ceiling5 = Duration::from_secs(5);
    let mut slow = RttEstimate::default();
    for _ in 0..50 {
        slow.sample(Duration::from_millis(600));
    }
    let t = slow.timeout(floor, ceiling5);
    assert!(
        t > Duration::from_millis(1800) && t < Duration::from_millis(1900),
        "{t:?}"
    );
    let one = Duration::from_secs(1);
    assert_eq!(slow.timeout(floor, one), one, "never over the ceiling");
    // Each timeout in a row doubles it, up to the ceiling; an answer resets that.
    slow.backoff = 1;
    assert!(slow.timeout(floor, ceiling5) > Duration::from_millis(3600));
    slow.backoff = 5;
    assert_eq!(slow.timeout(floor, ceiling5), ceiling5);
    slow.sample(Duration::from_millis(600));
    assert_eq!(slow.backoff, 0);
    // Jittery answers widen it.
    let mut jitter = RttEstimate::default();
    for i in 0..50 {
        jitter.sample(Duration::from_millis(if i % 2 == 0 { 100 } else { 500 }));
    }
    assert!(jitter.timeout(floor, ceiling5) > Duration::from_millis(1500));
    // A floor above the ceiling is the ceiling.
    assert_eq!(e.timeout(Duration::from_secs(5), ceiling), ceiling);
}

#[test]
fn with_no_signer_to_spare_a_signer_gets_the_full_timeout() {
    // 2-of-2: the request cannot do without either signer, so a slow one is waited for
    // (participant_timeout), not timed out at its usual answer time.
    let mut net = Net::new(2, 2);
    for i in 0..5 {
        net.sign(format!("warm {i}").as_bytes()).unwrap();
    }
    net.silent.insert(net.order[0]);
    let start = net.now;
    assert!(net.sign(b"one stopped answering").is_err());
    let first_timeout = net.coord.config.participant_timeout;
    assert!(net.now - start >= first_timeout, "{:?}", net.now - start);
}

#[test]
fn with_many_groups_a_participant_gets_a_bounded_number_of_commit_requests_at_once() {
    let mut rng = rand::rngs::OsRng;
    let members: Vec<NewMember> = (0..2)
        .map(|i| NewMember {
            name: format!("p{i}"),
            node_id: IdentityKey::generate(&mut rng).node_id(),
            address: "127.0.0.1:1".into(),
        })
        .collect();
    let mut manifests = Vec::new();
    let mut shares = Vec::new();
    for g in 0..40 {
        let group = GroupName::new(&format!("g{g}")).unwrap();
        let (manifest, dealt) = deal(group.clone(), 2, &members, &mut rng).unwrap();
        manifests.push(manifest);
        shares.push((group, dealt.into_iter().next().unwrap().key_package));
    }
    let now = Instant::now();
    let mut coord = Coordinator::new(manifests, CoordinatorConfig::default()).unwrap();
    let node = members[0].node_id;
    let client = IdentityKey::generate(&mut rng);
    let mut p = Participant::new(
        shares.into_iter().map(|(g, kp)| (g, 1, kp)).collect(),
        ParticipantConfig::default(),
        allow(&client),
        Box::new(MemoryAudit::default()),
        &mut rng,
    );
    coord.peer_up(now, node);
    let mut first: Vec<Transmit> = std::iter::from_fn(|| coord.poll_transmit()).collect();
    assert_eq!(
        first.len(),
        MAX_COMMITS_IN_FLIGHT,
        "the rest wait in the queue"
    );
    assert!(first
        .iter()
        .all(|t| t.to == node && matches!(t.envelope.msg, Message::Commit { .. })));
    // Each answer lets one more go, until every group's pool is filled.
    let coord_id = IdentityKey::generate(&mut rng).node_id();
    let mut answered = 0;
    while let Some(t) = first.pop() {
        p.handle(now, UNIX, coord_id, t.envelope, &mut rng);
        let reply = p.poll_transmit().unwrap().envelope;
        coord.handle(now, node, reply);
        answered += 1;
        first.extend(std::iter::from_fn(|| coord.poll_transmit()));
        assert!(first.len() <= MAX_COMMITS_IN_FLIGHT);
    }
    assert_eq!(answered, 40);
    for g in 0..40 {
        let group = GroupName::new(&format!("g{g}")).unwrap();
        assert_eq!(coord.pooled(node, &group), 1, "{group}");
    }
}
