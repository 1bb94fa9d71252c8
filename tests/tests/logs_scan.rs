//! `conclave logs scan` on a real cluster's files: after a normal run (signatures made) the
//! daemons' logs and audit logs hold no share, identity key or passphrase; secrets planted in
//! copies of those logs (hex, base64, Debug, raw; one in a rotated audit file) are found with
//! exit 4, the right file, offset and encoding, and the output never shows the secret.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use common::{bin, files_ending, Cluster};
use conclave_keygen::{Passphrase, ShareFile};
use conclave_protocol::IdentityKey;

const PASSPHRASE: &str = "integration-test-passphrase";

/// `conclave logs scan` in the cluster directory with every share and identity of the cluster.
fn scan(d: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args: Vec<String> = vec!["logs".into(), "scan".into()];
    for i in 1..=3 {
        args.extend(["--share".into(), format!("it.p{i}.share")]);
    }
    args.extend(["--passphrase-file".into(), "pass".into()]);
    for id in ["p1", "p2", "p3", "coordinator", "client", "client-b"] {
        args.extend(["--identity".into(), id.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out: Output = Command::new(bin())
        .args(&args)
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .expect("run conclave logs scan");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Inserts `what` into a copy of `log` at its middle; returns the offset.
fn plant(from: &Path, to: &Path, what: &[u8]) -> u64 {
    let mut bytes = std::fs::read(from).expect("read log");
    assert!(bytes.len() > 100, "{} is almost empty", from.display());
    let at = bytes.len() / 2;
    bytes.splice(at..at, what.iter().copied());
    std::fs::write(to, bytes).expect("write planted log");
    at as u64
}

#[test]
fn a_normal_run_leaves_nothing_to_find_and_planted_secrets_are_found() {
    let cluster = Cluster::start(2, 3, vec![]);
    let d = cluster.dir.path().to_path_buf();
    cluster.wait_reachable(3);
    for i in 0..3 {
        let (code, _, err) = cluster.sign(format!("message {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "sign: {err}");
    }

    // (1) The daemons' stderr logs (files) and their audit logs (directories): clean.
    let daemon_logs = ["p1.log", "p2.log", "p3.log", "coordinator.log"];
    let audit_dirs = ["p1-audit", "p2-audit", "p3-audit", "coordinator-audit"];
    assert_eq!(files_ending(&d, &["audit.log"]).len(), 4);
    let mut logs: Vec<&str> = daemon_logs.to_vec();
    logs.extend(audit_dirs);
    let mut with_json = vec!["--json"];
    with_json.extend(&logs);
    let (code, out, err) = scan(&d, &with_json);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report = json(&out);
    assert_eq!(report["findings"], serde_json::json!([]), "{out}");
    assert_eq!(report["errors"], serde_json::json!([]), "{out}");
    assert!(report["scanned_files"].as_u64().unwrap() >= 8, "{out}");
    assert!(report["scanned_bytes"].as_u64().unwrap() > 1000, "{out}");
    let (code, out, err) = scan(&d, &logs);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("nothing found"), "{out}");

    // The whole cluster directory: the secret files themselves (passphrase, identity keys,
    // shares) are skipped, and nothing else holds a secret.
    let (code, out, err) = scan(&d, &["--json", "."]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report = json(&out);
    let skipped = report["skipped"].to_string();
    for f in ["pass", "p1/identity.key", "it.p2.share"] {
        assert!(skipped.contains(f), "{f} not skipped: {skipped}");
    }

    // (2) Planted: p1's share hex-encoded and base64-encoded in copies of daemon logs, the
    // passphrase raw, p2's identity key in Debug form in a rotated audit file.
    let share = ShareFile::read(
        &d.join("it.p1.share"),
        &Passphrase::new(PASSPHRASE.to_owned()),
    )
    .expect("open share");
    let share = share.key_package.signing_share().serialize();
    let identity = IdentityKey::read_from(&d.join("p2"))
        .expect("identity")
        .signing_key()
        .to_bytes();
    let share_hex = hex::encode(&share);
    let share_b64 = base64::engine::general_purpose::STANDARD.encode(&share);
    std::fs::create_dir(d.join("planted")).unwrap();
    std::fs::create_dir(d.join("planted-audit")).unwrap();
    let at_hex = plant(
        &d.join("p1.log"),
        &d.join("planted/hex.log"),
        share_hex.as_bytes(),
    );
    let at_b64 = plant(
        &d.join("p2.log"),
        &d.join("planted/b64.log"),
        share_b64.as_bytes(),
    );
    let at_pass = plant(
        &d.join("coordinator.log"),
        &d.join("planted/pass.log"),
        PASSPHRASE.as_bytes(),
    );
    std::fs::copy(
        d.join("p1-audit/audit.log"),
        d.join("planted-audit/audit.log"),
    )
    .unwrap();
    let at_identity = plant(
        &d.join("p1-audit/audit.log"),
        &d.join("planted-audit/audit.log.1"),
        format!("{identity:?}").as_bytes(),
    ) + 1; // after the '['

    let (code, out, err) = scan(
        &d,
        &[
            "--json",
            "planted",
            "planted-audit/audit.log",
            "missing.log",
        ],
    );
    assert_eq!(code, Some(4), "{out}\n{err}");
    let report = json(&out);
    let mut found: Vec<(String, u64, String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_owned(),
                f["offset"].as_u64().unwrap(),
                f["secret"].as_str().unwrap().to_owned(),
                f["encoding"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    let want = |file: &str, at: u64, secret: &str, enc: &str| {
        (file.to_owned(), at, secret.to_owned(), enc.to_owned())
    };
    let mut expected = vec![
        want("planted/hex.log", at_hex, "share it.p1.share", "hex"),
        want("planted/b64.log", at_b64, "share it.p1.share", "base64"),
        want("planted/pass.log", at_pass, "passphrase from pass", "raw"),
        want(
            "planted-audit/audit.log.1",
            at_identity,
            "identity key p2",
            "debug",
        ),
    ];
    expected.sort();
    assert_eq!(found, expected, "{out}");
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{out}");
    assert_eq!(errors[0]["file"], "missing.log");
    assert!(err.contains("missing.log"), "{err}");

    // The human report: one line per finding and a summary; same exit code.
    let (code, human, err) = scan(&d, &["planted", "planted-audit/audit.log"]);
    assert_eq!(code, Some(4), "{human}\n{err}");
    assert!(
        human.contains(&format!(
            "FOUND planted/hex.log at byte {at_hex}: share it.p1.share (hex)"
        )),
        "{human}"
    );
    assert!(human.contains("4 finding(s) in 4 file(s)"), "{human}");

    // Nothing printed shows a secret, in any form.
    let printed = format!("{out}{err}{human}");
    for secret in [&share[..], &identity[..], PASSPHRASE.as_bytes()] {
        for form in [
            hex::encode(secret),
            hex::encode_upper(secret),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret),
            format!("{secret:?}"),
        ] {
            assert!(!printed.contains(&form), "a secret appeared in the output");
        }
    }
    assert!(!printed.contains(PASSPHRASE));

    // An unreadable LOG and nothing found: exit 2, the rest still scanned.
    let (code, out, err) = scan(&d, &["--json", "p1.log", "missing.log"]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert_eq!(json(&out)["scanned_files"], 1);

    // A share that does not open: exit 2 before anything is scanned, and it says why.
    std::fs::write(d.join("wrong-pass"), "not-the-passphrase\n").unwrap();
    let out = Command::new(bin())
        .args([
            "logs",
            "scan",
            "--share",
            "it.p1.share",
            "--passphrase-file",
            "wrong-pass",
            "p1.log",
        ])
        .current_dir(&d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
}
