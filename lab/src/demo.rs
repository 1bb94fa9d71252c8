//! `conclave demo`: a 3-of-5 cluster on 127.0.0.1 that signs, loses two nodes and still
//! signs, loses a third and fails closed with a typed error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_coordinator::SignError;
use conclave_transport::client::ClientError;
use sha2::Digest;

use crate::cluster::{Audit, Kdf, LocalCluster};
use conclave_keygen::manifest::public_key_pem;

const THRESHOLD: u16 = 3;
const PARTICIPANTS: usize = 5;

struct Narrator {
    quiet: bool,
    n: usize,
    start: Instant,
}

impl Narrator {
    fn step(&mut self, text: impl AsRef<str>) {
        self.n += 1;
        if !self.quiet {
            println!(
                "[{:>5.2}s] {}. {}",
                self.start.elapsed().as_secs_f64(),
                self.n,
                text.as_ref()
            );
        }
    }
    fn note(&self, text: impl AsRef<str>) {
        if !self.quiet {
            println!("          {}", text.as_ref());
        }
    }
}

fn verify(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> anyhow::Result<()> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key)?;
    vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(sig))
        .context("signature does not verify")
}

/// Runs the demo and prints what happens.
pub async fn run(json: bool, keep: Option<PathBuf>) -> anyhow::Result<()> {
    let start = Instant::now();
    let tmp;
    let dir = match &keep {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                return Err(anyhow::anyhow!(
                    "--keep {}: directory is not empty",
                    d.display()
                ));
            }
            conclave_protocol::identity::create_private_dir(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("conclave-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut say = Narrator {
        quiet: json,
        n: 0,
        start,
    };
    if !json {
        println!("conclave demo: a {THRESHOLD}-of-{PARTICIPANTS} Ed25519 key whose secret never exists in one place");
        println!(
            "(dev mode: shares use light Argon2id parameters so the demo is quick; files in {})",
            dir.display()
        );
        println!();
    }
    let mut steps = Vec::new();
    let mut cluster = LocalCluster::start(
        &dir,
        THRESHOLD,
        PARTICIPANTS,
        Kdf::Light,
        Audit::Files { fsync: true },
        |s| {
            steps.push(s.clone());
            say.step(s);
        },
    )
    .await?;
    let key = cluster.public_key()?;
    say.note(format!("group public key: {}", hex::encode(key)));

    let timeout = Duration::from_secs(10);
    let m1 = b"conclave demo: release v1.0.0 approved".to_vec();
    let t = Instant::now();
    let first = cluster
        .client
        .sign(&cluster.group, &m1, timeout, Some(key))
        .await?;
    verify(&key, &m1, &first.signature)?;
    say.step(format!(
        "signed {:?} with {} in {:.1} ms; verified with ed25519-dalek verify_strict",
        String::from_utf8_lossy(&m1),
        first.signers.join(", "),
        t.elapsed().as_secs_f64() * 1e3
    ));
    say.note(format!("signature: {}", hex::encode(first.signature)));

    cluster.stop_participant(0).await;
    cluster.stop_participant(1).await;
    cluster
        .wait_reachable(PARTICIPANTS - 2, Duration::from_secs(10))
        .await?;
    say.step(format!(
        "stopped {} and {}: 3 of 5 participants remain",
        cluster.name(0),
        cluster.name(1)
    ));
    let m2 = b"conclave demo: signed with two nodes down".to_vec();
    let t = Instant::now();
    let second = cluster
        .client
        .sign(&cluster.group, &m2, timeout, Some(key))
        .await?;
    verify(&key, &m2, &second.signature)?;
    say.step(format!(
        "signed again with {} in {:.1} ms; verified; same public key",
        second.signers.join(", "),
        t.elapsed().as_secs_f64() * 1e3
    ));

    cluster.stop_participant(2).await;
    cluster
        .wait_reachable(PARTICIPANTS - 3, Duration::from_secs(10))
        .await?;
    say.step(format!(
        "stopped {}: only 2 participants remain, below the threshold of {THRESHOLD}",
        cluster.name(2)
    ));
    let m3 = b"conclave demo: this must not be signed".to_vec();
    let t = Instant::now();
    let refusal = match cluster
        .client
        .sign(&cluster.group, &m3, timeout, Some(key))
        .await
    {
        Ok(_) => anyhow::bail!(
            "signed with fewer participants than the threshold: this must never happen"
        ),
        Err(ClientError::Sign(e @ SignError::SignerUnavailable { .. })) => e,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "expected a typed SignerUnavailable error, got: {e}"
            ))
        }
    };
    say.step(format!(
        "request refused after {:.1} ms, fail-closed and typed: {refusal} [{}]",
        t.elapsed().as_secs_f64() * 1e3,
        refusal.code()
    ));

    if keep.is_some() {
        std::fs::write(dir.join("message.txt"), &m1)?;
        std::fs::write(dir.join("signature.bin"), first.signature)?;
        std::fs::write(dir.join("group.pub.pem"), public_key_pem(&key))?;
        say.note(format!(
            "verify with OpenSSL: openssl pkeyutl -verify -pubin -inkey {0}/group.pub.pem -rawin -in {0}/message.txt -sigfile {0}/signature.bin",
            dir.display()
        ));
    }
    let coordinator = cluster.coordinator_addr;
    let names: Vec<String> = (0..PARTICIPANTS)
        .map(|i| cluster.name(i).to_owned())
        .collect();
    cluster.shutdown().await;
    // Every participant decided on each request from its own policy and recorded it: check
    // every node's hash-chained log and count the shares released.
    let mut released = 0;
    for node in names.iter().map(String::as_str).chain(["coordinator"]) {
        let log = dir.join("audit").join(node).join("audit.log");
        conclave_audit::verify(std::slice::from_ref(&log), None)
            .map_err(|e| anyhow::anyhow!("audit log of {node}: {e}"))?;
        if node != "coordinator" {
            released += conclave_audit::records(std::slice::from_ref(&log))
                .map_err(|e| anyhow::anyhow!("audit log of {node}: {e}"))?
                .iter()
                .filter(|r| {
                    matches!(&r.entry, conclave_audit::Entry::Decision(d) if d.result == "signed")
                })
                .count();
        }
    }
    say.step(format!(
        "each signer checked the client's signed request against its own policy before its share left, and recorded it: {released} shares released, all {} audit logs verify (conclave audit verify {}/audit/NODE/audit.log)",
        PARTICIPANTS + 1,
        dir.display()
    ));
    if json {
        let summary = serde_json::json!({
            "group": "demo",
            "threshold": THRESHOLD,
            "participants": PARTICIPANTS,
            "public_key": hex::encode(key),
            "coordinator": coordinator.to_string(),
            "signatures": [
                { "message": String::from_utf8_lossy(&m1), "message_sha256": hex::encode(sha2::Sha256::digest(&m1)),
                  "signature": hex::encode(first.signature), "signers": first.signers, "verified": true },
                { "message": String::from_utf8_lossy(&m2), "message_sha256": hex::encode(sha2::Sha256::digest(&m2)),
                  "signature": hex::encode(second.signature), "signers": second.signers, "verified": true },
            ],
            "below_threshold": { "error": refusal.code(), "message": refusal.to_string() },
            "shares_released_and_recorded": released,
            "steps": steps,
            "elapsed_ms": start.elapsed().as_millis() as u64,
        });
        println!("{summary}");
    } else {
        println!();
        println!("done in {:.1} s: two verified signatures under one key, and a typed refusal below the threshold.", start.elapsed().as_secs_f64());
    }
    Ok(())
}
