//! The Rust client library (`conclave-client`) against a real cluster: a `SigningService`, the
//! `signature` crate's `AsyncSigner` used generically, and failover to the second coordinator
//! when the first is killed.

mod common;

use async_signature::AsyncSigner;
use common::Cluster;
use conclave_client::{ClientConfig, SigningService, ThresholdSigner};

/// Generic code that only knows it has an async Ed25519 signer with a public key.
async fn sign_generically<S>(signer: &S, message: &[u8]) -> ed25519_dalek::Signature
where
    S: AsyncSigner<ed25519_dalek::Signature>
        + signature::Keypair<VerifyingKey = ed25519_dalek::VerifyingKey>,
{
    let sig = signer.sign_async(message).await.expect("signature");
    signer
        .verifying_key()
        .verify_strict(message, &sig)
        .expect("verifies under the signer's key");
    sig
}

#[test]
fn the_library_signs_generically_and_fails_over_to_the_next_coordinator() {
    let mut c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    let second = c.start_second_coordinator();
    let first = c.coordinator_addr.clone();
    let path = c.client_config("library.toml", &[&first, &second], 4000);
    let config = ClientConfig::read(&path).expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let signer = ThresholdSigner::connect(&config, None)
            .await
            .expect("connect");
        // The public key is the manifest's, known locally.
        assert_eq!(signer.public_key().to_bytes(), c.public_key());
        let sig = signer.sign(b"over a kept connection").await.expect("sign");
        signer
            .public_key()
            .verify_strict(b"over a kept connection", &sig)
            .unwrap();
        sign_generically(&signer, b"generic caller").await;
        // The first coordinator dies without closing anything: the next request goes to the
        // second one, within the request's timeout.
        c.kill_coordinator();
        let sig = signer.sign(b"after the failover").await.expect("failover");
        signer
            .public_key()
            .verify_strict(b"after the failover", &sig)
            .unwrap();
        signer.close().await;
    });
    // The second coordinator's audit log holds the signature made after the failover.
    let records = c.audit_records("coordinator2");
    assert!(
        records.iter().any(|r| r["result"] == "signed"),
        "the second coordinator signed: {records:?}"
    );
}

#[test]
fn the_crate_example_signs_against_a_real_cluster() {
    let c = Cluster::start(2, 2, vec![]);
    c.wait_reachable(2);
    let path = c.client_config("example.toml", &[&c.coordinator_addr], 5000);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_client-example"))
        .env("CONCLAVE_CLIENT_CONFIG", &path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the example");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from the example").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&c.public_key()).unwrap();
    vk.verify_strict(
        b"from the example",
        &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
    )
    .unwrap();
}
