//! Seed corpora, captured from real runs: the simulator's network (every signing message,
//! with a byzantine signer among them), an in-memory DKG's relay (every ceremony message),
//! and the files the real code writes (manifests, share files, plans, completions, audit
//! logs, statements), plus the example configs and policies shipped in the repository.
//! `cargo run -p conclave-fuzzing --bin make-corpus` writes them to `fuzz/corpus/`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use conclave_protocol::request::{MessageRef, SignRequestBody};
use conclave_protocol::{Envelope, IdentityKey, Message, PackageEntry, SignPackage};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::{fixture, fixture_participant, frame_of, FUZZ_UNIX_NOW};

struct Corpus {
    seeds: BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>,
}

impl Corpus {
    fn add(&mut self, target: &'static str, bytes: Vec<u8>) {
        use sha2::Digest;
        let name = hex::encode(&sha2::Sha256::digest(&bytes)[..8]);
        self.seeds.entry(target).or_default().insert(name, bytes);
    }
}

/// Writes every target's seeds under `dir/<target>/` (names: a hash of the content); returns
/// how many seeds each target got.
pub fn write_seeds(dir: &Path, repo: &Path) -> Result<BTreeMap<&'static str, usize>> {
    let mut c = Corpus {
        seeds: BTreeMap::new(),
    };
    signing_traffic(&mut c)?;
    participant_sessions(&mut c)?;
    ceremony_traffic(&mut c)?;
    files(&mut c)?;
    shipped_examples(&mut c, repo)?;
    agent_messages(&mut c);
    message_kinds(&mut c);
    let mut counts = BTreeMap::new();
    for (target, seeds) in &c.seeds {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        for (name, bytes) in seeds {
            std::fs::write(d.join(name), bytes)?;
        }
        counts.insert(*target, seeds.len());
    }
    Ok(counts)
}

/// The simulator's network: a 3-of-5 group, 1 % loss, one signer sending invalid shares.
fn signing_traffic(c: &mut Corpus) -> Result<()> {
    let scenario = conclave_sim::Scenario::new(3, 5)
        .requests(12)
        .concurrency(4)
        .seed(7)
        .byzantine(5, conclave_sim::Behaviour::InvalidShares);
    let mut seen: Vec<Envelope> = vec![];
    let mut capture = |e: &Envelope| seen.push(e.clone());
    let sim = conclave_sim::Simulation::new(scenario)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_capture(&mut capture);
    let report = sim.run();
    anyhow::ensure!(
        report.violations.is_empty(),
        "the seed run broke an invariant"
    );
    let mut kinds = std::collections::HashSet::new();
    for e in seen {
        let kind = std::mem::discriminant(&e.msg);
        if let Message::Sign {
            signing_package,
            request,
            ..
        } = &e.msg
        {
            c.add(
                "sign_package",
                postcard::to_allocvec(signing_package.as_ref())?,
            );
            c.add("signed_request", postcard::to_allocvec(request.as_ref())?);
            c.add("message_kind", signing_package.message.clone());
        }
        // A few of each message type is enough for the frame corpus.
        if kinds.insert((kind, c.seeds.get("frame").map_or(0, |s| s.len()) / 8)) {
            c.add("frame", conclave_protocol::encode_frame(&e)?);
        }
    }
    Ok(())
}

/// Sessions the `participant` target's fixture answers in full: commit, then sign with its
/// commitment (and the other signer's) on a request its policy allows; also the same sign
/// twice, and a sign naming an unknown commitment.
fn participant_sessions(c: &mut Corpus) -> Result<()> {
    let f = fixture();
    let mut entries = vec![];
    let mut ids = vec![];
    for which in 0..2 {
        let (mut p, mut rng) = fixture_participant(which);
        p.handle(
            std::time::Instant::now(),
            FUZZ_UNIX_NOW,
            f.coordinator,
            Envelope {
                id: 1,
                msg: Message::Commit {
                    group: f.group.clone(),
                    epoch: 1,
                    count: 2,
                },
            },
            &mut rng,
        );
        let reply = p.poll_transmit().context("a commit reply")?;
        let Message::Commitments { entries: got, .. } = reply.envelope.msg else {
            anyhow::bail!("the fixture refused to commit");
        };
        let first = got.first().context("a commitment")?;
        ids.push(first.id);
        let kp = f.key_packages.get(which).context("a share")?;
        entries.push(PackageEntry {
            identifier: kp
                .identifier()
                .serialize()
                .try_into()
                .map_err(|_| anyhow::anyhow!("id"))?,
            commitments: first.commitments,
        });
    }
    let message = b"fuzz: a message the fixture's policy allows".to_vec();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut request_id = [0u8; 16];
    rng.fill_bytes(&mut request_id);
    let request = SignRequestBody {
        group: f.group.clone(),
        epoch: 1,
        message: MessageRef::Full(message.clone()),
        kind: "raw".into(),
        request_id,
        not_after: FUZZ_UNIX_NOW + 60,
    }
    .sign(&f.client)
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let commit = frame_of(
        1,
        Message::Commit {
            group: f.group.clone(),
            epoch: 1,
            count: 2,
        },
    );
    let sign = |commitment_id: u64| {
        frame_of(
            2,
            Message::Sign {
                group: f.group.clone(),
                epoch: 1,
                commitment_id,
                signing_package: std::sync::Arc::new(SignPackage {
                    message: message.clone(),
                    commitments: entries.clone(),
                }),
                request: Box::new(request.clone()),
            },
        )
    };
    let first = *ids.first().context("an id")?;
    c.add("participant", [commit.clone(), sign(first)].concat());
    c.add(
        "participant",
        [commit.clone(), sign(first), sign(first)].concat(),
    );
    c.add("participant", [commit.clone(), sign(first ^ 1)].concat());
    c.add(
        "participant",
        [
            frame_of(3, Message::Ping),
            commit,
            frame_of(
                4,
                Message::GroupInfoRequest {
                    group: f.group.clone(),
                },
            ),
        ]
        .concat(),
    );
    c.add("signed_request", postcard::to_allocvec(&request)?);
    c.add(
        "sign_package",
        postcard::to_allocvec(&SignPackage {
            message,
            commitments: entries,
        })?,
    );
    Ok(())
}

/// A 2-of-3 DKG through the in-memory relay: every message the relay hands a member, and the
/// files the members end with.
fn ceremony_traffic(c: &mut Corpus) -> Result<()> {
    use conclave_keygen::ceremony::harness;
    let (plan, ids) =
        harness::dkg_members("fuzz", 2, 3, &mut rand::rngs::OsRng).map_err(anyhow::Error::msg)?;
    c.add("ceremony_plan", plan.to_toml()?.into_bytes());
    let (members, relay) = harness::dkg_run_parts(&plan, &ids).map_err(anyhow::Error::msg)?;
    let mut seen: Vec<(usize, Envelope)> = vec![];
    let mut tamper = |to: usize, e: &mut Envelope| {
        seen.push((to, e.clone()));
        true
    };
    let run = harness::run_with(
        members,
        relay,
        harness::Faults {
            silent: None,
            broken_store: None,
            tamper: &mut tamper,
        },
    );
    anyhow::ensure!(
        (0..3).all(|i| run.activated(i)),
        "the seed DKG did not complete"
    );
    for (to, e) in &seen {
        c.add("frame", conclave_protocol::encode_frame(e)?);
        let Message::CeremonyRound { round, items, .. } = &e.msg else {
            continue;
        };
        // The payload target's tag for a broadcast of this DKG round (see
        // conclave_keygen::fuzzing::ceremony_payload): 1 packages, 2 echo, 3 shares, then
        // the store and confirm rounds.
        let tag = match round {
            1 => 0,
            2 | 3 => 3,
            4 => 6,
            _ => 7,
        };
        for (index, d) in items.iter().enumerate() {
            c.add("ceremony_payload", [&[tag][..], &d.broadcast].concat());
            let item = (index as u8) << 1;
            c.add(
                "ceremony_dkg",
                [&[*round, *to as u8, item][..], &d.broadcast].concat(),
            );
            if let Some(direct) = &d.direct {
                c.add("ceremony_payload", [&[8u8][..], direct].concat());
                c.add(
                    "ceremony_dkg",
                    [&[*round, *to as u8, item | 1][..], direct].concat(),
                );
            }
        }
    }
    for s in &run.stores {
        if let Some((m, _)) = s.active() {
            c.add("manifest", m.to_toml()?.into_bytes());
        }
        if let Some(done) = s.completion() {
            c.add("completion", done.to_toml().into_bytes());
        }
    }
    Ok(())
}

/// Files as the real code writes them: a dealt manifest and share file, an audit log with
/// decisions, a rotation and checkpoints, a signed key-transition statement.
fn files(c: &mut Corpus) -> Result<()> {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let members: Vec<conclave_keygen::NewMember> = (0..3)
        .map(|i| conclave_keygen::NewMember {
            name: format!("p{i}"),
            node_id: IdentityKey::generate(&mut rng).node_id(),
            address: format!("127.0.0.1:{}", 7000 + i),
        })
        .collect();
    let group = conclave_protocol::GroupName::new("files").map_err(|e| anyhow::anyhow!("{e}"))?;
    let (manifest, shares) = conclave_keygen::deal(group.clone(), 2, &members, &mut rng)?;
    c.add("manifest", manifest.to_toml()?.into_bytes());
    let share = shares.first().context("a share")?;
    let header = conclave_keygen::share_header(
        &manifest,
        share.node_id,
        &share.key_package,
        conclave_keygen::KdfParams::light(&mut rng),
    )?;
    let pass = conclave_keygen::Passphrase::new("correct horse battery staple".into());
    c.add(
        "share_file",
        conclave_keygen::ShareFile::seal(&share.key_package, header.clone(), &pass, &mut rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    // Format 2 (sealed to a node keystore) and the keystore itself: the same frame.
    let ks_dir = tempfile::tempdir()?;
    let ks_path = ks_dir.path().join("keystore");
    let ks = conclave_keygen::Keystore::create(
        &ks_path,
        share.node_id,
        &pass,
        conclave_keygen::KdfParams::light(&mut rng),
        &mut rng,
    )?;
    c.add(
        "share_file",
        conclave_keygen::ShareFile::seal_to(&share.key_package, header, &ks.public_key(), &mut rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    c.add("share_file", std::fs::read(&ks_path)?);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.log");
    let identity = IdentityKey::generate(&mut rng);
    let mut log = conclave_audit::AuditLog::open(
        &path,
        identity.clone(),
        conclave_audit::Options {
            fsync: false,
            max_bytes: 1 << 20,
            checkpoint_every: 3,
        },
    )?;
    for i in 0..7u64 {
        let mut d =
            conclave_audit::Decision::new("sign", if i % 3 == 2 { "refused" } else { "signed" });
        d.client = Some("fuzz".into());
        d.group = Some("files".into());
        d.epoch = Some(1);
        d.kind = Some("raw".into());
        log.append(FUZZ_UNIX_NOW + i, d)?;
    }
    log.checkpoint(FUZZ_UNIX_NOW + 9)?;
    drop(log);
    let bytes = std::fs::read(&path)?;
    c.add("audit_log", bytes.clone());
    if let Ok(side) = std::fs::read_to_string(dir.path().join("audit.log.checkpoint")) {
        c.add(
            "audit_log",
            [format!("sidecar:{}\n", side.trim()).as_bytes(), &bytes].concat(),
        );
    }

    let new_key = IdentityKey::generate(&mut rng);
    let statement = conclave_keygen::migrate::Statement {
        format: conclave_keygen::migrate::FORMAT.into(),
        old_group: group.clone(),
        old_public_key: hex::encode(manifest.public_key_bytes()?),
        new_group: conclave_protocol::GroupName::new("files-2")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        new_public_key: new_key.node_id().to_hex(),
        new_epoch: 1,
        not_before: FUZZ_UNIX_NOW,
        reason: "yearly rotation".into(),
        old_signature: None,
        new_signature: Some(hex::encode([7u8; 64])),
    };
    c.add("migration_statement", statement.to_toml()?.into_bytes());
    c.add("control", br#"{"cmd":"reload"}"#.to_vec());
    c.add("control", br#"{"cmd":"status"}"#.to_vec());
    c.add(
        "control",
        br#"{"cmd":"freeze","group":"files","reason":"incident 42"}"#.to_vec(),
    );
    c.add(
        "control",
        br#"{"cmd":"unfreeze","group":null,"reason":null}"#.to_vec(),
    );
    let freeze = conclave_participant::Freeze::default();
    c.add("control", toml_of(&freeze).into_bytes());
    c.add(
        "control",
        b"all = true\nreason = \"incident 42\"\ngroups = [\"files\"]\n".to_vec(),
    );
    Ok(())
}

fn toml_of<T: serde::Serialize>(v: &T) -> String {
    toml::to_string(v).unwrap_or_default()
}

/// The configs, policies and scenarios the repository ships (deploy/examples, docs/scenarios).
fn shipped_examples(c: &mut Corpus, repo: &Path) -> Result<()> {
    for (dir, target) in [
        ("deploy/examples", "configs"),
        ("docs/scenarios", "configs"),
    ] {
        let Ok(entries) = std::fs::read_dir(repo.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path())?;
            let name = e.file_name().to_string_lossy().into_owned();
            c.add(
                if name.starts_with("policy") {
                    "policy"
                } else {
                    target
                },
                bytes,
            );
        }
    }
    c.add("policy", crate::fixture_policy().into_bytes());
    Ok(())
}

/// ssh-agent requests as OpenSSH sends them: list identities, sign (with each flag), and
/// requests the agent refuses (add identity, lock).
fn agent_messages(c: &mut Corpus) {
    use ssh_agent_lib::proto::{Request, SignRequest};
    use ssh_agent_lib::ssh_encoding::Encode;
    use ssh_agent_lib::ssh_key::public::{Ed25519PublicKey, KeyData};
    let key = KeyData::Ed25519(Ed25519PublicKey([9u8; 32]));
    let mut requests = vec![Request::RequestIdentities, Request::RemoveAllIdentities];
    for flags in [0u32, 2, 4] {
        requests.push(Request::SignRequest(SignRequest {
            pubkey: key.clone(),
            data: ssh_auth_blob(),
            flags,
        }));
    }
    requests.push(Request::Lock("secret".to_string()));
    for r in requests {
        let mut bytes = vec![];
        if r.encode(&mut bytes).is_ok() {
            c.add("ssh_agent", bytes);
        }
    }
}

fn ssh_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// An SSH user-authentication request to be signed (RFC 4252 §7), as ssh sends the agent.
fn ssh_auth_blob() -> Vec<u8> {
    let mut b = vec![];
    ssh_string(&mut b, &[5u8; 32]);
    b.push(50);
    ssh_string(&mut b, b"git");
    ssh_string(&mut b, b"ssh-connection");
    ssh_string(&mut b, b"publickey");
    b.push(1);
    ssh_string(&mut b, b"ssh-ed25519");
    let mut key = vec![];
    ssh_string(&mut key, b"ssh-ed25519");
    ssh_string(&mut key, &[9u8; 32]);
    ssh_string(&mut b, &key);
    b
}

/// Messages of every kind the classifier knows: SSHSIG (git), SSH user-auth, a transition
/// statement, an SSH certificate body, raw bytes.
fn message_kinds(c: &mut Corpus) {
    let mut sshsig = b"SSHSIG".to_vec();
    ssh_string(&mut sshsig, b"git");
    ssh_string(&mut sshsig, b"");
    ssh_string(&mut sshsig, b"sha512");
    ssh_string(&mut sshsig, &[1u8; 64]);
    c.add("message_kind", sshsig);
    c.add("message_kind", ssh_auth_blob());
    let mut cert = vec![];
    ssh_string(&mut cert, b"ssh-ed25519-cert-v01@openssh.com");
    ssh_string(&mut cert, &[0u8; 32]);
    c.add("message_kind", cert);
    c.add(
        "message_kind",
        [conclave_protocol::TRANSITION_PREFIX, b"format = \"x\"\n"].concat(),
    );
    c.add("message_kind", b"just bytes".to_vec());
}
