//! Signing power is never in one place (issue 12), between real processes on 127.0.0.1:
//! every participant checks the client's signed request against its own policy before a
//! share leaves it, records every decision in its own hash-chained audit log, and refuses to
//! sign when it cannot record. A compromised coordinator (fault-injection build) that forges,
//! impersonates, alters or replays requests gets nothing signed.

mod common;

use std::path::Path;

use common::{conclave, Cluster, ParticipantSetup};

/// An SSHSIG signed-data blob (PROTOCOL.sshsig) for `namespace`.
fn sshsig_blob(namespace: &str) -> Vec<u8> {
    let mut b = b"SSHSIG".to_vec();
    for field in [namespace.as_bytes(), b"", b"sha512", &[0x5a; 64]] {
        b.extend_from_slice(&(field.len() as u32).to_be_bytes());
        b.extend_from_slice(field);
    }
    b
}

fn policy(kinds: &str, rate: &str) -> String {
    format!(
        "[[client]]\nname = \"release-ci\"\nkey = \"{{A}}\"\ngroups = [\"it\"]\nkinds = {kinds}\nmax_message_bytes = 4096\nrate = \"{rate}\"\n"
    )
}

fn with_policy(n: usize, text: &str) -> Vec<ParticipantSetup> {
    (0..n)
        .map(|_| ParticipantSetup {
            policy: Some(text.to_owned()),
            ..Default::default()
        })
        .collect()
}

/// The refusals of a `not_authorized` answer: (signer, rule).
fn refusals(json: &serde_json::Value) -> Vec<(String, String)> {
    json["refusals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["signer"].as_str().unwrap_or_default().to_owned(),
                        r["rule"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts a `not_authorized` refusal (exit code 3) by `signers` signers, all for `rule`;
/// returns the names of the signers that refused.
fn assert_not_authorized(
    out: &(Option<i32>, serde_json::Value, String),
    signers: usize,
    rule: &str,
) -> Vec<String> {
    let (code, json, stderr) = out;
    assert_eq!(
        *code,
        Some(3),
        "exit code of not_authorized: {json} {stderr}"
    );
    assert_eq!(json["error"], "not_authorized", "{json}");
    let r = refusals(json);
    assert_eq!(r.len(), signers, "{json}");
    assert!(r.iter().all(|(_, got)| got == rule), "{json}");
    assert!(json.get("signature").is_none());
    r.into_iter().map(|(who, _)| who).collect()
}

/// The decision records of node `name` whose result is `result`.
fn results(c: &Cluster, name: &str) -> Vec<String> {
    c.audit_records(name)
        .iter()
        .map(|r| r["result"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn audit_verifies(c: &Cluster, name: &str) {
    let log = c.audit_log(name);
    let out = conclave(&["audit", "verify", log.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{name}'s audit log must verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_signer_enforces_its_own_policy_and_records_every_decision() {
    // 3-of-5; every participant allows client A only sshsig:git; client B is pinned at the
    // coordinator (it may connect) but named in no participant's policy.
    let c = Cluster::start(3, 5, with_policy(5, &policy("[\"sshsig:git\"]", "100/min")));
    c.wait_reachable(5);
    let git = sshsig_blob("git");
    let (code, json, stderr) = c.sign_as(&c.client_dir, &git, None, 10);
    assert_eq!(code, Some(0), "A may sign a git commit: {json} {stderr}");
    assert_eq!(common::signers(&json).len(), 3);

    // Client B: refused by every signer asked, as unknown, and nobody blamed for it.
    let out = c.sign_as(&c.client_b_dir, b"let me in", None, 10);
    let asked_b = assert_not_authorized(&out, 3, "unknown_client");
    // A raw message and an sshsig:file blob from A: not what A may have signed.
    let out = c.sign_as(&c.client_dir, b"release 6.6.6", None, 10);
    assert_not_authorized(&out, 3, "kind");
    let out = c.sign_as(&c.client_dir, &sshsig_blob("file"), None, 10);
    assert_not_authorized(&out, 3, "kind");
    // A git blob declared as raw: the signers recognise the bytes and refuse the mismatch.
    let out = c.sign_as(&c.client_dir, &git, Some("raw"), 10);
    assert_not_authorized(&out, 3, "kind_mismatch");
    // Policy refusals are not faults: A still signs right after, with any three signers.
    let (code, json, stderr) = c.sign_as(&c.client_dir, &sshsig_blob("git"), None, 10);
    assert_eq!(code, Some(0), "{json} {stderr}");

    // Every signer asked recorded its own decision, and every log verifies.
    for name in &asked_b {
        assert!(
            results(&c, name).contains(&"refused:unknown_client".to_owned()),
            "{name}: {:?}",
            results(&c, name)
        );
    }
    let mut signed = 0;
    for i in 1..=5 {
        let name = format!("p{i}");
        audit_verifies(&c, &name);
        let records = c.audit_records(&name);
        for r in &records {
            // Digests and names only: never the message body.
            let line = r.to_string();
            assert!(!line.contains("release 6.6.6") && !line.contains("let me in"));
            assert_eq!(r["group"], "it");
            assert_eq!(r["message_sha256"].as_str().map(str::len), Some(64));
            assert_eq!(r["request_id"].as_str().map(str::len), Some(32));
        }
        signed += records.iter().filter(|r| r["result"] == "signed").count();
    }
    assert_eq!(signed, 6, "two signatures, three shares each");
    // The coordinator records the outcome of every session too.
    let coord = results(&c, "coordinator");
    assert_eq!(
        coord.iter().filter(|r| *r == "signed").count(),
        2,
        "{coord:?}"
    );
    assert_eq!(
        coord
            .iter()
            .filter(|r| *r == "refused:not_authorized")
            .count(),
        4,
        "{coord:?}"
    );
    audit_verifies(&c, "coordinator");
}

#[test]
fn the_rate_limit_is_enforced_by_the_signers() {
    let c = Cluster::start(2, 2, with_policy(2, &policy("[\"raw\"]", "3/min")));
    c.wait_reachable(2);
    for i in 0..3 {
        let (code, json, stderr) = c.sign(format!("within the rate {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{json} {stderr}");
    }
    let out = c.sign(b"one too many", 10);
    assert_not_authorized(&out, 2, "rate");
    for name in ["p1", "p2"] {
        assert_eq!(
            results(&c, name),
            ["signed", "signed", "signed", "refused:rate"]
        );
    }
}

/// A 2-of-`n` cluster whose coordinator misbehaves as `fault`; returns it after one request.
fn compromised(
    n: usize,
    fault: &'static str,
) -> (Cluster, (Option<i32>, serde_json::Value, String)) {
    let c = Cluster::start_with_coordinator_fault(2, n, vec![], Some(fault));
    c.wait_reachable(n as u64);
    let out = c.sign(b"release 1.2.3", 10);
    (c, out)
}

fn refused_by_every_asked_signer(c: &Cluster, asked: &[String], result: &str) {
    assert_eq!(asked.len(), 2);
    for name in asked {
        assert_eq!(
            results(c, name),
            [result],
            "{name} must have recorded its refusal"
        );
        audit_verifies(c, name);
    }
}

#[test]
fn a_coordinator_forging_its_own_requests_gets_nothing_signed() {
    let (c, out) = compromised(3, "coordinator-forge");
    let asked = assert_not_authorized(&out, 2, "unknown_client");
    refused_by_every_asked_signer(&c, &asked, "refused:unknown_client");
}

#[test]
fn a_coordinator_claiming_a_clients_identity_gets_nothing_signed() {
    let (c, out) = compromised(3, "coordinator-impersonate");
    let asked = assert_not_authorized(&out, 2, "bad_signature");
    refused_by_every_asked_signer(&c, &asked, "refused:bad_signature");
}

#[test]
fn a_coordinator_altering_the_message_gets_nothing_signed() {
    let (c, out) = compromised(3, "coordinator-alter");
    let asked = assert_not_authorized(&out, 2, "message_mismatch");
    refused_by_every_asked_signer(&c, &asked, "refused:message_mismatch");
}

#[test]
fn a_coordinator_replaying_a_captured_request_gets_nothing_signed() {
    // The first request goes through as the client asked; the coordinator keeps it and sends
    // it again in place of the next one. 2-of-2, so the same signers are asked again (with
    // n >= 2t a replay could reach signers that never saw the request: docs/THREAT-MODEL.md).
    let (c, out) = compromised(2, "coordinator-replay");
    assert_eq!(out.0, Some(0), "{} {}", out.1, out.2);
    let first = common::signers(&out.1);
    let out = c.sign(b"release 1.2.4", 10);
    let asked = assert_not_authorized(&out, 2, "replay");
    assert_eq!(first.len(), 2);
    for name in &asked {
        assert_eq!(results(&c, name), ["signed", "refused:replay"]);
    }
}

/// Counts complete records with `"result":"signed"` in a log whose end may be torn.
fn signed_lines(log: &Path) -> usize {
    let bytes = std::fs::read(log).unwrap_or_default();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| {
            serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v["result"] == "signed")
        })
        .count()
}

#[test]
fn a_signer_that_cannot_write_its_audit_record_refuses_to_sign() {
    // p1 runs under `ulimit -f 8` (4 KiB for any file it writes): its audit log fills after
    // a few records. 2-of-2, so p1 takes part in every signature.
    let setups = vec![
        ParticipantSetup {
            file_size_limit_blocks: Some(8),
            ..Default::default()
        },
        ParticipantSetup::default(),
    ];
    let c = Cluster::start(2, 2, setups);
    c.wait_reachable(2);
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..20 {
        let (code, json, stderr) = c.sign(format!("until the log is full {i}").as_bytes(), 10);
        if code == Some(0) {
            assert_eq!(refused, 0, "nothing is signed once the log is full: {json}");
            ok += 1;
        } else {
            assert_eq!(code, Some(1), "{json} {stderr}");
            refused += 1;
        }
    }
    assert!(ok >= 2, "the log holds a few records first ({ok})");
    assert!(refused >= 5, "then every request is refused ({refused})");
    // p1's own stderr is under the same file-size limit, so the coordinator reports why.
    let log = c.log("coordinator");
    assert!(
        log.contains("its audit log cannot be written"),
        "the coordinator says why: {log}"
    );
    // Every share p1 released has its record on disk: as many as signatures made.
    assert_eq!(signed_lines(&c.audit_log("p1")), ok);

    // An audit log that is a device (here /dev/full) is refused at start-up, with the reason.
    assert!(
        Path::new("/dev/full").exists(),
        "this test needs /dev/full (every Linux machine has it)"
    );
    let d = c.dir.path();
    std::fs::create_dir_all(d.join("full-audit")).unwrap();
    std::os::unix::fs::symlink("/dev/full", d.join("full-audit/audit.log")).unwrap();
    let config = std::fs::read_to_string(d.join("p2.toml"))
        .unwrap()
        .replace("p2-audit/audit.log", "full-audit/audit.log")
        .replace("listen = \"127.0.0.1:", "listen = \"127.0.0.1:0\"\n#");
    std::fs::write(d.join("full.toml"), config).unwrap();
    let out = conclave(&[
        "participant",
        "--config",
        d.join("full.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a regular file"), "{stderr}");
}
