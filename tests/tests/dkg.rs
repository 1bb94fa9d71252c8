//! DKG between real processes: `keygen dkg plan`, one `relay` and one `join` per participant,
//! on 127.0.0.1; then signing with the result, and the ways a ceremony must abort cleanly.

mod common;

use std::time::Duration;

use common::{files_ending, run_dkg, Cluster, DkgFaults, DkgRun};

#[test]
fn dkg_3_of_5_then_sign_and_verify_with_dalek_and_openssl() {
    let cluster = Cluster::start_dkg(3, 5);
    let d = cluster.dir.path();
    // Every participant computed the manifest the relay wrote (same group key, same shares).
    let relay_manifest = std::fs::read_to_string(&cluster.manifest).expect("relay manifest");
    for i in 1..=5 {
        let mine = std::fs::read_to_string(d.join(format!("p{i}-dkg/it.manifest.toml")))
            .expect("member manifest");
        assert_eq!(mine, relay_manifest, "p{i}'s manifest differs");
        let inspect = common::conclave(&[
            "share",
            "inspect",
            "--json",
            d.join(format!("p{i}-dkg/it.p{i}.share")).to_str().unwrap(),
        ]);
        assert!(inspect.status.success());
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["threshold"], 3);
    }
    assert!(files_ending(d, &[".pending"]).is_empty());
    // Every member recorded joining the ceremony, with the plan fingerprint, and its outcome.
    let mut plans = std::collections::BTreeSet::new();
    for i in 1..=5 {
        let log = d.join(format!("p{i}-ceremony-audit/audit.log"));
        let out = common::conclave(&["audit", "show", "--json", log.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let records = v["records"].as_array().unwrap();
        let results: Vec<&str> = records
            .iter()
            .map(|r| r["result"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(results, ["joined", "completed"], "p{i}");
        for r in records {
            assert_eq!(r["action"], "ceremony");
            assert_eq!(r["group"], "it");
            plans.insert(r["plan"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(plans.len(), 1, "one plan fingerprint for all: {plans:?}");
    cluster.wait_reachable(5);
    let msg = b"signed by a key nobody ever held";
    let (code, json, stderr) = cluster.sign(msg, 10);
    assert_eq!(code, Some(0), "sign failed: {stderr}");
    let sig_hex = json["signature"].as_str().expect("signature");
    let sig_bytes = hex::decode(sig_hex).expect("hex");
    let key = cluster.public_key();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key).expect("key");
    let sig = ed25519_dalek::Signature::from_slice(&sig_bytes).expect("sig");
    vk.verify_strict(msg, &sig).expect("verify_strict");
    let pem = common::conclave(&[
        "pubkey",
        "--format",
        "pem",
        "--manifest",
        cluster.manifest.to_str().unwrap(),
    ]);
    assert!(common::openssl_verifies(
        d,
        &String::from_utf8_lossy(&pem.stdout),
        msg,
        &sig_bytes
    ));
}

/// Sets up identities for a ceremony that is expected to fail; returns the temp dir and the
/// participant specs.
fn identities(n: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::Builder::new()
        .prefix("conclave-dkg-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    std::fs::write(d.join("pass"), "integration-test-passphrase\n").unwrap();
    let init = |name: &str| {
        let out = common::conclave(&["node", "init", "--out", d.join(name).to_str().unwrap()]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    init("coordinator");
    let specs = (1..=n)
        .map(|i| format!("p{i}={}@127.0.0.1:{}", init(&format!("p{i}")), 7000 + i))
        .collect();
    (dir, specs)
}

fn assert_aborted_cleanly(run: &DkgRun, d: &std::path::Path, needle: &str) {
    assert_eq!(run.relay.status.code(), Some(1), "{}", run.describe());
    let relay_err = String::from_utf8_lossy(&run.relay.stderr);
    assert!(relay_err.contains("DKG aborted"), "{relay_err}");
    assert!(relay_err.contains(needle), "relay: {relay_err}");
    for (i, m) in run.members.iter().enumerate() {
        let err = String::from_utf8_lossy(&m.stderr);
        if m.status.code() == Some(9) {
            continue; // the member that was made to die
        }
        assert_eq!(m.status.code(), Some(1), "member {i}: {err}");
        assert!(err.contains(needle), "member {i}: {err}");
    }
    // No share file, pending file or manifest anywhere.
    let left = files_ending(d, &[".share", ".pending", ".manifest.toml"]);
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn a_bad_round2_share_names_the_culprit_and_leaves_no_share() {
    let (dir, specs) = identities(5);
    let faults = DkgFaults {
        members: vec![(2, "dkg-bad-share")],
        ..Default::default()
    };
    let run = run_dkg(dir.path(), "bad", 3, &specs, &faults);
    assert_aborted_cleanly(&run, dir.path(), "does not match its sender's commitment");
    // The relay only relays an accusation; every member that received p3's bad share checked
    // it itself and names p3 as the culprit; p3 hears only the accusation.
    let relay_err = String::from_utf8_lossy(&run.relay.stderr);
    assert!(
        relay_err.contains("names p3 (on evidence only"),
        "{relay_err}"
    );
    assert!(!relay_err.contains("culprit(s)"), "{relay_err}");
    for (i, m) in run.members.iter().enumerate() {
        let err = String::from_utf8_lossy(&m.stderr);
        if i == 2 {
            assert!(!err.contains("culprit(s)"), "p3: {err}");
        } else {
            assert!(err.contains("culprit(s): p3"), "member {i}: {err}");
        }
    }
}

#[test]
fn a_relay_altering_a_round1_package_fails_the_echo_check() {
    let (dir, specs) = identities(5);
    let faults = DkgFaults {
        relay: Some("dkg-substitute-round1"),
        ..Default::default()
    };
    let run = run_dkg(dir.path(), "echo", 3, &specs, &faults);
    assert_aborted_cleanly(&run, dir.path(), "echo check failed");
    // The relay showed p5 a different round 1: p5 disagrees, but the relay could have caused
    // that (it did), so p5 is named only as "p5 or the relay", never as the culprit.
    let relay_err = String::from_utf8_lossy(&run.relay.stderr);
    assert!(relay_err.contains("p5 or the relay"), "{relay_err}");
    assert!(!relay_err.contains("culprit(s)"), "{relay_err}");
}

#[test]
fn a_participant_dying_mid_ceremony_aborts_it_within_the_timeout() {
    let (dir, specs) = identities(5);
    let faults = DkgFaults {
        members: vec![(1, "dkg-exit-after-round=2")],
        timeout: Some(4),
        ..Default::default()
    };
    let run = run_dkg(dir.path(), "dies", 3, &specs, &faults);
    assert_eq!(run.members[1].status.code(), Some(9), "{}", run.describe());
    assert_aborted_cleanly(&run, dir.path(), "p2");
    // Detected by the relay's round timeout (4 s) or the lost connection (10 s idle
    // timeout), whichever comes first; generous bound for a loaded 2-core machine.
    assert!(
        run.elapsed < Duration::from_secs(40),
        "abort took {:?}",
        run.elapsed
    );
    // The same plan runs again, to completion, once everyone is healthy.
    let again = DkgFaults {
        reuse_plan: true,
        ..Default::default()
    };
    let run = run_dkg(dir.path(), "dies", 3, &specs, &again);
    assert!(run.all_succeeded(), "{}", run.describe());
    assert_eq!(files_ending(dir.path(), &[".share"]).len(), 5);
}

/// A DKG plan has no old group to check: every host prints the plan fingerprint and each
/// member's key fingerprint, and `--expect-plan` refuses any other plan before joining.
#[test]
fn dkg_join_shows_the_plan_fingerprint_and_refuses_another_plan() {
    let (dir, specs) = identities(3);
    let d = dir.path();
    let coordinator_key = common::stdout_line(&common::conclave(&[
        "node",
        "show",
        d.join("coordinator").to_str().unwrap(),
    ]));
    let plan = d.join("plan.toml");
    let mut args = vec![
        "keygen".to_string(),
        "dkg".into(),
        "plan".into(),
        "--group".into(),
        "fp".into(),
        "-t".into(),
        "2".into(),
        "--coordinator".into(),
        format!("coordinator={coordinator_key}@127.0.0.1:9"),
        "--out".into(),
        plan.display().to_string(),
    ];
    for s in &specs {
        args.extend(["-p".into(), s.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::conclave(&refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stderr).into_owned();
    let fp = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("plan fingerprint: "))
        .expect("the author sees the fingerprint")
        .trim()
        .to_owned();
    let p1_key = specs[0].split(['=', '@']).nth(1).unwrap();
    assert!(printed.contains(&p1_key[..16]), "{printed}");
    let o = common::conclave(&[
        "keygen",
        "dkg",
        "join",
        "--plan",
        plan.to_str().unwrap(),
        "--identity",
        d.join("p1").to_str().unwrap(),
        "--out",
        d.join("p1-out").to_str().unwrap(),
        "--passphrase-file",
        d.join("pass").to_str().unwrap(),
        "--mode",
        "dev",
        "--kdf",
        "light",
        "--expect-plan",
        "0000-0000-0000-0000-0000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("this plan's fingerprint is {fp}")),
        "{err}"
    );
    assert!(!d.join("p1-out").exists(), "nothing was written");
}
