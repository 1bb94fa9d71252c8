//! `conclave audit verify | show` on a log written by the audit library: exit 0 when intact,
//! 1 naming the first bad record after tampering, and the JSON scripts read.

mod common;

use common::conclave;

#[test]
fn audit_verify_exits_0_on_an_intact_log_and_1_naming_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = conclave_protocol::IdentityKey::generate(&mut frost_ed25519::rand_core::OsRng);
    let path = dir.path().join("audit.log");
    let mut log = conclave_audit::AuditLog::open(
        &path,
        key.clone(),
        conclave_audit::Options {
            checkpoint_every: 3,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..7u64 {
        log.append(
            1_700_000_000 + i,
            conclave_audit::Decision {
                action: "signed".into(),
                result: "ok".into(),
                client: Some("release-ci".into()),
                client_key: None,
                group: Some("release".into()),
                epoch: Some(1),
                kind: Some("raw".into()),
                message_sha256: Some(hex::encode([i as u8; 32])),
                request_id: None,
                plan: None,
                detail: None,
            },
        )
        .unwrap();
    }
    let file = path.to_str().unwrap();
    let hex_key = key.node_id().to_hex();
    let o = conclave(&["audit", "verify", file, "--key", &hex_key, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["summary"]["decisions"], 7);
    let o = conclave(&["audit", "show", file, "--key", &hex_key, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"][0]["action"], "signed");
    // Another key than the node's: refused.
    let other = conclave_protocol::IdentityKey::generate(&mut frost_ed25519::rand_core::OsRng)
        .node_id()
        .to_hex();
    let o = conclave(&["audit", "verify", file, "--key", &other]);
    assert_eq!(o.status.code(), Some(1));
    // One byte changed in record 1: record 2 is the first that no longer chains.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replace("\"epoch\":1", "\"epoch\":7");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let o = conclave(&["audit", "verify", file, "--key", &hex_key, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["seq"].as_u64()),
        (Some(false), Some(2)),
        "{v}"
    );
}
