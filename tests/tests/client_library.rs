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
