//! Secret leakage: run a successful DKG and signing flow and several failing flows (wrong
//! passphrase, tampered share file, a participant returning bad signature shares, a DKG
//! member sending a bad share) with every process logging at TRACE level, then search every
//! log line, error message and output for the shares, identity keys and passphrase, in every
//! form `conclave logs scan` searches for (`conclave_cli::scan::forms`: raw, hex, base64 and
//! base64url at any alignment, Rust Debug forms). (Nonces never leave a participant's memory,
//! so they cannot be recovered from outside a process; the participant crate's
//! `no_nonce_or_share_reaches_logs_replies_or_debug_output` test checks them in-process.)

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{bin, files_ending, run_dkg, Cluster, DkgFaults, ParticipantSetup};
use conclave_cli::scan::{forms, Matcher};
use conclave_keygen::{Passphrase, ShareFile};
use conclave_protocol::IdentityKey;

const PASSPHRASE: &str = "integration-test-passphrase";

/// Runs the binary at TRACE level and returns everything it printed.
fn traced(dir: &Path, args: &[&str]) -> (Output, Vec<u8>) {
    let out = Command::new(bin())
        .arg("-vv")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .expect("run conclave");
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    (out, all)
}

#[test]
fn no_share_identity_key_or_passphrase_in_any_log_error_or_output() {
    let setups = vec![
        ParticipantSetup::default(),
        ParticipantSetup {
            fault: Some("corrupt-shares"),
            ..Default::default()
        },
    ];
    let cluster = Cluster::start_dkg_verbose(3, 5, setups);
    let d = cluster.dir.path().to_path_buf();
    let mut printed: Vec<u8> = vec![];

    // Success (and a culprit named along the way): sign at TRACE level.
    cluster.wait_reachable(5);
    for i in 0..4 {
        let msg = d.join(format!("msg{i}"));
        std::fs::write(&msg, format!("message {i}")).unwrap();
        let (out, all) = traced(
            &d,
            &[
                "sign",
                "--coordinator",
                &cluster.coordinator_addr,
                "--coordinator-key",
                &cluster.coordinator_key,
                "--identity",
                "client",
                "--group",
                "it",
                "--message-file",
                msg.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&all));
        printed.extend(all);
    }

    // Wrong passphrase.
    std::fs::write(d.join("wrong-pass"), "not-the-passphrase\n").unwrap();
    std::fs::write(d.join("new-pass"), "another-long-passphrase\n").unwrap();
    let share = d.join("p1-dkg/it.p1.share");
    let (out, all) = traced(
        &d,
        &[
            "share",
            "passwd",
            share.to_str().unwrap(),
            "--old-passphrase-file",
            "wrong-pass",
            "--new-passphrase-file",
            "new-pass",
            "--mode",
            "dev",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&all).contains("wrong passphrase"));
    printed.extend(all);

    // A tampered share file, opened by share passwd and by a participant daemon.
    let mut bytes = std::fs::read(&share).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(d.join("tampered.share"), &bytes).unwrap();
    let (out, all) = traced(
        &d,
        &[
            "share",
            "passwd",
            "tampered.share",
            "--old-passphrase-file",
            "pass",
            "--new-passphrase-file",
            "new-pass",
            "--mode",
            "dev",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    printed.extend(all);
    for (name, share, pass) in [
        ("tampered", "tampered.share", "pass"),
        ("wrongpass", "p1-dkg/it.p1.share", "wrong-pass"),
    ] {
        let config = format!(
            "mode = \"dev\"\nidentity = \"p1\"\nlisten = \"127.0.0.1:0\"\ncoordinators = [\"{}\"]\npolicy = \"p1.policy.toml\"\naudit_log = \"p1-audit/audit.log\"\n\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"{pass}\"\n",
            cluster.coordinator_key
        );
        std::fs::write(d.join(format!("{name}.toml")), config).unwrap();
        let (out, all) = traced(&d, &["participant", "--config", &format!("{name}.toml")]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&all)
        );
        printed.extend(all);
    }

    // A DKG member sending bad shares (same identities, another group).
    let specs: Vec<String> = (1..=5)
        .map(|i| {
            let key = std::fs::read_to_string(d.join(format!("p{i}/identity.pub"))).unwrap();
            format!("p{i}={}@127.0.0.1:{}", key.trim(), 7000 + i)
        })
        .collect();
    let faults = DkgFaults {
        members: vec![(3, "dkg-bad-share")],
        verbose: true,
        ..Default::default()
    };
    let run = run_dkg(&d, "bad", 3, &specs, &faults);
    assert!(!run.all_succeeded());
    printed.extend(run.describe().into_bytes());

    // Everything any process wrote.
    let mut haystack = printed;
    // The daemons' audit logs (`<node>-audit/audit.log`) are searched too.
    assert!(
        !files_ending(&d, &["audit.log"]).is_empty(),
        "the cluster's audit logs must be part of the search"
    );
    for log in files_ending(&d, &[".log"]) {
        haystack.extend(std::fs::read(&log).unwrap());
    }
    assert!(
        haystack.len() > 100_000,
        "TRACE logging must have produced plenty to search ({} bytes)",
        haystack.len()
    );

    // The secrets: every share, every identity key, the passphrase.
    let mut secrets: Vec<Vec<u8>> = vec![PASSPHRASE.as_bytes().to_vec()];
    let pass = Passphrase::new(PASSPHRASE.to_owned());
    let shares: Vec<_> = files_ending(&d, &[".share"])
        .into_iter()
        .filter(|p| !p.ends_with("tampered.share"))
        .collect();
    assert_eq!(shares.len(), 5, "{shares:?}");
    for p in shares {
        let share = ShareFile::read(&p, &pass).expect("open share");
        secrets.push(share.key_package.signing_share().serialize());
    }
    for key in files_ending(&d, &["identity.key"]) {
        let k = IdentityKey::read_from(&key).expect("identity");
        secrets.push(k.signing_key().to_bytes().to_vec());
    }
    assert!(secrets.len() >= 1 + 5 + 7);
    let matcher = Matcher::new(
        secrets
            .iter()
            .enumerate()
            .flat_map(|(i, s)| forms(s).into_iter().map(move |n| (i, n))),
    );
    // Per secret at least: raw, hex (2 cases), base64 at 3 alignments (base64url adds 3 more
    // unless the same), Debug (decimal, pretty at 3 depths, hex).
    assert!(matcher.len() >= secrets.len() * 11, "{matcher:?}");
    let found = matcher.find_all(&haystack);
    let shown: Vec<String> = found
        .iter()
        .take(10)
        .map(|m| {
            format!(
                "secret #{} as {} at byte {}",
                m.secret, m.encoding, m.offset
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "secrets appeared in a log, error or output: {shown:?}"
    );
}
