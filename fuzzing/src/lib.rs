//! The fuzz targets of conclave, as plain functions: `fuzz/` runs each under libFuzzer
//! (`cargo +nightly fuzz run <name>`), and `tests/replay.rs` runs every file of
//! `fuzz/corpus/<name>/` through the same function on stable, as a normal test.
//!
//! Each target feeds untrusted bytes to the decoder conclave uses for them, and panics only
//! on a broken invariant: a decoder that panics, a value that decodes but does not encode,
//! an encoding that does not decode back to the same value, or a check that accepts what it
//! must refuse. Allocation is bounded by the decoders' own limits; the replay test measures
//! it (see `tests/replay.rs`) and libFuzzer's `-malloc_limit_mb` enforces it while fuzzing.
//! How to run them and what they found: docs/RELIABILITY.md.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use conclave_participant::{Participant, ParticipantConfig};
use conclave_protocol::{
    codec, request::SignedRequest, Envelope, GroupName, IdentityKey, Message, NodeId, SignPackage,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod seeds;
pub use seeds::write_seeds;

/// A fuzz target: its name (the directory of its corpus) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order docs/RELIABILITY.md lists them.
pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("participant", participant),
    ("signed_request", signed_request),
    ("sign_package", sign_package),
    ("message_kind", message_kind),
    ("ssh_agent", ssh_agent),
    ("share_file", share_file),
    ("manifest", manifest),
    ("ceremony_plan", ceremony_plan),
    ("ceremony_payload", ceremony_payload),
    ("ceremony_dkg", ceremony_dkg),
    ("completion", completion),
    ("configs", configs),
    ("policy", policy),
    ("audit_log", audit_log),
    ("migration_statement", migration_statement),
    ("control", control),
];

fn check(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("invariant broken: {e}");
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// One frame off the network (length prefix, version, postcard envelope: every message type).
/// What decodes must encode to the same bytes' meaning: decode → encode → decode is equal.
pub fn frame(data: &[u8]) {
    if let Some(header) = data.first_chunk::<{ codec::FRAME_HEADER_LEN }>() {
        let _ = codec::body_len(*header);
    }
    let Ok(envelope) = codec::decode_frame(data) else {
        return;
    };
    let bytes = codec::encode_frame(&envelope).expect("a decoded envelope encodes");
    let again = codec::decode_frame(&bytes).expect("its own encoding decodes");
    assert_eq!(again, envelope, "frame round trip");
}

/// What the fixed participant of the `participant` target holds.
struct Fixture {
    group: GroupName,
    key_packages: Vec<frost_ed25519::keys::KeyPackage>,
    client: IdentityKey,
    coordinator: NodeId,
}

/// A 2-of-3 group dealt once from a fixed seed, and the client its policy allows: fixed, so
/// that seeds (and what the fuzzer learns) name real commitments and valid signatures.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0x66757a7a);
        let members: Vec<conclave_keygen::NewMember> = (0..3)
            .map(|i| conclave_keygen::NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: "fuzz:1".into(),
            })
            .collect();
        let group = GroupName::new("fuzz").expect("a valid name");
        let (_, shares) =
            conclave_keygen::deal(group.clone(), 2, &members, &mut rng).expect("dealing works");
        Fixture {
            group,
            key_packages: shares.into_iter().map(|s| s.key_package).collect(),
            client: IdentityKey::generate(&mut rng),
            coordinator: IdentityKey::generate(&mut rng).node_id(),
        }
    })
}

/// The Unix time the `participant` target runs at.
pub const FUZZ_UNIX_NOW: u64 = 1_800_000_000;

/// The policy of the fixture's participants: the fixture's client may sign in its group.
fn fixture_policy() -> String {
    format!(
        "[[client]]\nname = \"fuzz\"\nkey = \"{}\"\ngroups = [\"fuzz\"]\nkinds = [\"raw\", \"ssh-auth\", \"sshsig:git\", \"transition\"]\nmax_message_bytes = 65536\nrate = \"1000000/s\"\n",
        fixture().client.node_id().to_hex()
    )
}

/// Participant `which` (0 or 1) of the fixture, fresh, with a seeded RNG.
fn fixture_participant(which: usize) -> (Participant, ChaCha20Rng) {
    let f = fixture();
    let policy =
        conclave_policy::Policy::from_toml(&fixture_policy()).expect("the fixture's policy parses");
    let mut rng = ChaCha20Rng::seed_from_u64(which as u64);
    let kp = f.key_packages.get(which).expect("three shares").clone();
    let p = Participant::new(
        vec![(f.group.clone(), 1, kp)],
        ParticipantConfig {
            max_outstanding: 64,
            ..ParticipantConfig::default()
        },
        policy,
        Box::new(conclave_audit::MemoryAudit::default()),
        &mut rng,
    );
    (p, rng)
}

/// Splits `data` into frames (each with its length prefix); a short tail is one last frame.
fn frames(data: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![];
    let mut rest = data;
    while !rest.is_empty() {
        let len = rest
            .first_chunk::<4>()
            .map(|h| u32::from_be_bytes(*h) as usize)
            .unwrap_or(usize::MAX)
            .saturating_add(4)
            .min(rest.len());
        let (one, tail) = rest.split_at(len);
        out.push(one);
        rest = tail;
    }
    out
}

/// A participant (the fixture's first signer) fed a sequence of frames from the coordinator:
/// every request type through the real state machine, policy and nonce handling. It answers
/// each decodable request with exactly one reply that encodes, and never gives two different
/// shares from one commitment.
pub fn participant(data: &[u8]) {
    participant_shares(data);
}

/// [`participant`], returning how many signature shares the participant gave.
pub fn participant_shares(data: &[u8]) -> usize {
    let (mut p, mut rng) = fixture_participant(0);
    let f = fixture();
    let now = Instant::now();
    let mut used = std::collections::HashMap::new();
    for (i, bytes) in frames(data).into_iter().take(16).enumerate() {
        let Ok(envelope) = codec::decode_frame(bytes) else {
            continue;
        };
        let sign_id = match &envelope.msg {
            Message::Sign { commitment_id, .. } => Some(*commitment_id),
            _ => None,
        };
        p.handle(
            now + Duration::from_millis(i as u64),
            FUZZ_UNIX_NOW,
            f.coordinator,
            envelope,
            &mut rng,
        );
        let mut replies = 0;
        while let Some(t) = p.poll_transmit() {
            replies += 1;
            codec::encode_frame(&t.envelope).expect("a reply encodes");
            // A repeated request is answered from the participant's cache (the same share);
            // two different shares from one commitment would be a nonce used twice.
            if let (Message::SignatureShare { share, .. }, Some(id)) = (&t.envelope.msg, sign_id) {
                let first = used.entry(id).or_insert_with(|| share.clone());
                assert_eq!(first, share, "two different shares from commitment {id}");
            }
        }
        assert_eq!(replies, 1, "one reply per request");
    }
    used.len()
}

/// A client's signed request: decodes, its canonical form is computed, its signature checked.
pub fn signed_request(data: &[u8]) {
    let Ok(r) = postcard::from_bytes::<SignedRequest>(data) else {
        return;
    };
    let _ = r.body.canonical();
    let verified = r.verify().is_ok();
    let bytes = postcard::to_allocvec(&r).expect("a decoded request encodes");
    let again: SignedRequest = postcard::from_bytes(&bytes).expect("its encoding decodes");
    assert_eq!(again, r, "request round trip");
    assert_eq!(
        again.verify().is_ok(),
        verified,
        "the signature check gives the same answer after a round trip"
    );
}

/// A signing package as a participant receives it: decoded, then every commitment checked
/// (on the curve, times eight, not the identity, identifiers distinct and non-zero).
pub fn sign_package(data: &[u8]) {
    let Ok(pkg) = postcard::from_bytes::<SignPackage>(data) else {
        return;
    };
    if let Ok(frost_pkg) = conclave_keygen::commitments::package_from_wire(&pkg) {
        assert_eq!(
            frost_pkg.signing_commitments().len(),
            pkg.commitments.len(),
            "every commitment is in the package"
        );
        use curve25519_dalek::traits::IsIdentity;
        for c in frost_pkg.signing_commitments().values() {
            assert!(
                !c.hiding().value().is_identity() && !c.binding().value().is_identity(),
                "an identity commitment was accepted"
            );
        }
    }
}

/// The message classifier that policy rules use (SSHSIG, SSH user-auth, transition
/// statements, SSH certificates, raw).
pub fn message_kind(data: &[u8]) {
    let kind = conclave_policy::kinds::classify(data);
    let _ = kind.name();
}

/// An ssh-agent protocol message as the agent's socket receives it (ssh-agent-lib's decoder).
/// What decodes must encode, and decode again to the same request.
pub fn ssh_agent(data: &[u8]) {
    use ssh_agent_lib::proto::Request;
    use ssh_agent_lib::ssh_encoding::{Decode, Encode};
    let mut reader = data;
    let Ok(request) = Request::decode(&mut reader) else {
        return;
    };
    let mut bytes = vec![];
    request
        .encode(&mut bytes)
        .expect("a decoded request encodes");
    let mut again_reader = bytes.as_slice();
    let again = Request::decode(&mut again_reader).expect("its encoding decodes");
    assert_eq!(
        format!("{again:?}"),
        format!("{request:?}"),
        "agent request round trip"
    );
}

/// A share file's header and layout (the part read before any key is used), of either
/// format, and the same frame as a node keystore's.
pub fn share_file(data: &[u8]) {
    if let Ok((header, salt_or_nonce, ciphertext)) = conclave_keygen::ShareFile::parse(data) {
        let _ = (header, salt_or_nonce.len(), ciphertext.len());
    }
    let _ = conclave_keygen::Keystore::parse_header(data);
}

/// A group manifest: parsed, its keys decoded, and written back to the same meaning.
pub fn manifest(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(m) = conclave_keygen::GroupManifest::from_toml(text) else {
        return;
    };
    let _ = m.public_key_package();
    let written = m.to_toml().expect("a parsed manifest writes");
    let again = conclave_keygen::GroupManifest::from_toml(&written).expect("its text parses");
    assert_eq!(again.to_toml().ok(), Some(written), "manifest round trip");
}

/// A ceremony plan (DKG, refresh, reshare, repair, migrate).
pub fn ceremony_plan(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(plan) = conclave_keygen::ceremony::CeremonyPlan::from_toml(text) else {
        return;
    };
    let _ = (
        plan.hash(),
        plan.roster(),
        plan.members(),
        plan.summary(),
        plan.coordinator_id(),
    );
    let written = plan.to_toml().expect("a parsed plan writes");
    let again =
        conclave_keygen::ceremony::CeremonyPlan::from_toml(&written).expect("its text parses");
    assert_eq!(again, plan, "plan round trip");
}

/// Every ceremony round message, by type (see `conclave_keygen::fuzzing::ceremony_payload`).
pub fn ceremony_payload(data: &[u8]) {
    check(conclave_keygen::fuzzing::ceremony_payload(data));
}

/// A whole DKG in memory with one relayed message replaced (see
/// `conclave_keygen::fuzzing::ceremony_dkg`).
pub fn ceremony_dkg(data: &[u8]) {
    check(conclave_keygen::fuzzing::ceremony_dkg(data));
}

/// A ceremony completion (the acknowledgements a member keeps while undecided).
pub fn completion(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(c) = conclave_keygen::ceremony::Completion::from_toml(text) else {
        return;
    };
    let written = c.to_toml();
    let again =
        conclave_keygen::ceremony::Completion::from_toml(&written).expect("its text parses");
    assert_eq!(again, c, "completion round trip");
}

/// Every config file: participant, coordinator, client, simulator scenario.
pub fn configs(data: &[u8]) {
    let Some(text) = text(data) else { return };
    check(conclave_cli::fuzzing::configs(text));
    let _ = conclave_client::ClientConfig::parse(Path::new("/fuzz/client.toml"), text);
    if let Ok(s) = conclave_sim::Scenario::from_toml(text) {
        let _ = s.validate();
    }
}

/// A participant's policy file.
pub fn policy(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = conclave_policy::Policy::from_toml(text);
}

/// An audit log, verified as `conclave audit verify` does (one file, its sidecar checkpoint in
/// the first line when the input starts with `sidecar:`).
pub fn audit_log(data: &[u8]) {
    let (sidecar, log) = match data.strip_prefix(b"sidecar:") {
        Some(rest) => match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (
                Some(String::from_utf8_lossy(rest.get(..i).unwrap_or_default()).into_owned()),
                rest.get(i + 1..).unwrap_or_default(),
            ),
            None => (None, rest),
        },
        None => (None, data),
    };
    let files = [PathBuf::from("/fuzz/audit.log")];
    let summary =
        conclave_audit::verify_with(&files, None, None, &mut |_| Ok(log.to_vec()), &mut |_| {
            sidecar.clone()
        });
    if let Ok(s) = summary {
        assert!(
            s.records >= s.decisions + s.checkpoints,
            "summary counts add up"
        );
    }
}

/// A key-transition (migration) statement.
pub fn migration_statement(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(s) = conclave_keygen::migrate::Statement::from_toml(text) else {
        return;
    };
    let written = s.to_toml().expect("a parsed statement writes");
    let again = conclave_keygen::migrate::Statement::from_toml(&written).expect("its text parses");
    assert_eq!(again.to_toml().ok(), Some(written), "statement round trip");
}

/// The control socket's requests and the freeze file.
pub fn control(data: &[u8]) {
    let Some(text) = text(data) else { return };
    check(conclave_cli::fuzzing::control_request(text));
    check(conclave_cli::fuzzing::freeze_file(text));
}

/// The envelope with id `id` around `msg`, as a frame.
pub fn frame_of(id: u64, msg: Message) -> Vec<u8> {
    codec::encode_frame(&Envelope { id, msg }).unwrap_or_default()
}
