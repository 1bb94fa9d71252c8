//! The Node.js adapter (clients/node) against a real cluster: `node --test` signs through
//! `conclave external-signer` and verifies with `crypto.verify`.

mod common;

use std::process::Command;

use common::{bin, Cluster};

#[test]
fn the_node_external_signer_signs_and_verifies_with_node_crypto() {
    let c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    let config = c.client_config("node-client.toml", &[&c.coordinator_addr], 5000);
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().to_string()
    };
    let down = c.client_config("node-down.toml", &[&dead], 5000);
    let adapter = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node");
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&adapter)
        .env("CONCLAVE_BIN", bin())
        .env("CONCLAVE_CLIENT_CONFIG", &config)
        .env("CONCLAVE_DOWN_CONFIG", &down)
        .output()
        .expect("node (CI installs nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every test ran: none skipped, none failed.
    for want in ["# pass 3", "# fail 0", "# skipped 0"] {
        assert!(stdout.contains(want), "expected {want:?} in:\n{stdout}");
    }
}
