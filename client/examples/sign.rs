//! Sign stdin with a conclave group and print the signature (hex), verified under the group key.
//!
//! ```sh
//! CONCLAVE_CLIENT_CONFIG=/etc/conclave/client.toml cargo run -p conclave-client --example sign < message
//! ```
//!
//! The tests run this example against a real cluster (tests/tests/client_library.rs).

use std::io::Read;

use conclave_client::{ClientConfig, SigningService, ThresholdSigner};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = ClientConfig::default_path().ok_or("set CONCLAVE_CLIENT_CONFIG")?;
    let config = ClientConfig::read(&path)?;
    let mut message = Vec::new();
    std::io::stdin().read_to_end(&mut message)?;

    let signer = ThresholdSigner::connect(&config, None).await?;
    let signature = signer.sign(&message).await?;
    // ThresholdSigner verified it already; a caller may check again with the public key.
    signer.public_key().verify_strict(&message, &signature)?;
    println!("{}", hex::encode(signature.to_bytes()));
    signer.close().await;
    Ok(())
}
