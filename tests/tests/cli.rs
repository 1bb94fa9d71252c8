//! The CLI on its own: share-file errors, demo, help.

mod common;

use common::conclave;

fn keygen(dir: &std::path::Path) {
    std::fs::write(dir.join("pass"), "correct horse battery staple\n").unwrap();
    let mut args = vec![
        "keygen".to_string(),
        "dealer".into(),
        "--group".into(),
        "g".into(),
        "-t".into(),
        "2".into(),
    ];
    args.extend(["--mode", "dev", "--kdf", "light", "--out"].map(String::from));
    args.push(dir.display().to_string());
    args.push("--passphrase-file".into());
    args.push(dir.join("pass").display().to_string());
    for name in ["a", "b", "c"] {
        let out = conclave(&["node", "init", "--out", dir.join(name).to_str().unwrap()]);
        let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        args.push("-p".into());
        args.push(format!("{name}={key}@127.0.0.1:1"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = conclave(&refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn participant_error(dir: &std::path::Path, share: &str, pass: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("pass2"), pass).unwrap();
    let coordinator =
        String::from_utf8(conclave(&["node", "show", dir.join("b").to_str().unwrap()]).stdout)
            .unwrap();
    let config = format!(
        "mode = \"dev\"\nidentity = \"a\"\nlisten = \"127.0.0.1:0\"\ncoordinators = [\"{}\"]\npolicy = \"policy.toml\"\naudit_log = \"audit/audit.log\"\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"pass2\"\n",
        coordinator.trim()
    );
    std::fs::write(dir.join("a.toml"), config).unwrap();
    std::fs::write(dir.join("policy.toml"), "").unwrap();
    let out = conclave(&[
        "participant",
        "--config",
        dir.join("a.toml").to_str().unwrap(),
    ]);
    // The daemon logs its start-up (hardening) first; the failure is the `conclave: error:` line.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("conclave: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    (out.status.code(), errors.concat())
}

#[test]
fn share_file_failures_are_one_clear_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d);
    let share = d.join("g.a.share");
    let good = std::fs::read(&share).unwrap();

    let mut messages = Vec::new();
    let (code, err) = participant_error(d, "g.a.share", "wrong passphrase\n");
    messages.push(err.clone());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("g.a.share") && err.contains("wrong passphrase"),
        "{err}"
    );

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    std::fs::write(d.join("flipped.share"), &flipped).unwrap();
    let (code, err) = participant_error(d, "flipped.share", "correct horse battery staple\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("flipped.share") && err.contains("corrupted"),
        "{err}"
    );
    messages.push(err.clone());

    std::fs::write(d.join("short.share"), &good[..good.len() - 10]).unwrap();
    let (code, err) = participant_error(d, "short.share", "correct horse battery staple\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("short.share") && err.contains("truncated"),
        "{err}"
    );

    messages.push(err.clone());
    for e in &messages {
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(!e.contains("correct horse"), "no passphrase in errors: {e}");
    }
    // The three failures are told apart.
    assert_eq!(messages.len(), 3);
    assert!(messages[0] != messages[1] && messages[1] != messages[2]);

    // The right passphrase on an intact share of another node: refused by owner.
    let (code, err) = participant_error(d, "g.b.share", "correct horse battery staple\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("belongs to"),
        "a share of another node is refused: {err}"
    );
}

#[test]
fn keygen_refuses_to_overwrite_and_light_kdf_outside_dev() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let out = conclave(&[
        "keygen", "dealer", "--group", "g", "-t", "2", "--mode", "prod", "--kdf", "light", "-p",
        "x=00@h:1", "-p", "y=00@h:1",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_runs_and_reports_json() {
    let out = conclave(&["demo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(v["below_threshold"]["error"], "signer_unavailable");
    let key = hex::decode(v["public_key"].as_str().unwrap()).unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.try_into().unwrap()).unwrap();
    for s in v["signatures"].as_array().unwrap() {
        let sig: [u8; 64] = hex::decode(s["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        vk.verify_strict(
            s["message"].as_str().unwrap().as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .unwrap();
    }
}

#[test]
fn help_teaches_every_command() {
    let out = conclave(&["--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "node",
        "keygen",
        "participant",
        "coordinator",
        "sign",
        "verify",
        "demo",
        "bench",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
}

/// The bench sections run and report what scripts read (no timing is asserted).
#[test]
fn bench_reports_its_json_fields() {
    let out = conclave(&[
        "bench",
        "--json",
        "--quick",
        "--requests",
        "12",
        "--concurrency",
        "1,4",
        "--audit",
        "memory",
        "--no-authorization",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["audit"], "memory");
    let runs = v["results"][0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        for field in [
            "p50_over_inprocess",
            "p99_over_inprocess",
            "throughput_over_inprocess",
        ] {
            assert!(r[field].as_f64().unwrap() > 0.0, "{field}");
        }
    }
    assert!(
        v["results"][0]["inprocess_parallel_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let out = conclave(&["bench", "--parts", "--quick", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["parts"].as_array().unwrap().len(), 5);

    // A real participant process with 300 pooled nonces.
    let out = conclave(&["bench", "--rss", "--nonces", "300", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nonces"], 300);
    assert!(v["idle_rss_kib"].as_u64().unwrap() > 0);
    assert!(v["pooled_rss_kib"].as_u64().unwrap() > 0);
    // Bad input is refused with a message, not a panic.
    let out = conclave(&["bench", "--groups", "5x3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold"));
}

#[test]
fn sim_cli_reports_json_and_writes_trace_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("run.trace");
    let plot = dir.path().join("latency.svg");
    let args = [
        "sim",
        "-t",
        "2",
        "-n",
        "3",
        "--requests",
        "30",
        "--latency-ms",
        "20",
        "--loss",
        "0.05",
        "--crash",
        "1@100:400",
        "--byzantine",
        "3:invalid-shares",
        "--json",
        "--trace",
        trace.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    let out = conclave(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["violations"].as_array().unwrap().len(), 0);
    assert_eq!(
        r["ok"].as_u64().unwrap()
            + r["failed"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>(),
        30
    );
    assert!(std::fs::read_to_string(&trace).unwrap().lines().count() > 30);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<rect"),
        "an SVG histogram"
    );
    // The same run again gives the same trace hash.
    let again: serde_json::Value = serde_json::from_slice(&conclave(&args).stdout).unwrap();
    assert_eq!(again["trace_hash"], r["trace_hash"]);
}

#[test]
fn share_inspect_needs_no_passphrase_and_passwd_swaps_it_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d);
    let share = d.join("g.a.share");
    let out = conclave(&["share", "inspect", share.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            h["group"].as_str(),
            h["epoch"].as_u64(),
            h["threshold"].as_u64()
        ),
        (Some("g"), Some(1), Some(2))
    );
    assert_eq!(h["kdf"]["algorithm"], "argon2id");
    assert!(h["created_at"].as_str().unwrap().ends_with('Z'));

    let strong = "violet gravel anchor meadow thirteen lantern";
    std::fs::write(d.join("new"), format!("{strong}\n")).unwrap();
    std::fs::write(d.join("weak"), "hunter2\n").unwrap();
    let (old, new, weak) = (d.join("pass"), d.join("new"), d.join("weak"));
    let passwd = |newfile: &std::path::Path, mode: &str| {
        conclave(&[
            "share",
            "passwd",
            share.to_str().unwrap(),
            "--old-passphrase-file",
            old.to_str().unwrap(),
            "--new-passphrase-file",
            newfile.to_str().unwrap(),
            "--mode",
            mode,
        ])
    };
    let before = std::fs::read(&share).unwrap();
    let refused = passwd(&weak, "prod");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("weak passphrase"));
    assert_eq!(
        std::fs::read(&share).unwrap(),
        before,
        "a refused passwd leaves the file untouched"
    );
    let ok = passwd(&new, "prod");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The old passphrase no longer opens it; the new one does (checked by starting a participant).
    let (code, err) = participant_error(d, "g.a.share", "correct horse battery staple\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("wrong passphrase"), "{err}");
    let after = conclave(&["share", "inspect", share.to_str().unwrap(), "--json"]);
    let h2: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(
        h2["identifier"], h["identifier"],
        "same share, new encryption"
    );
    assert_eq!(
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-"))
            .count(),
        0
    );
}
