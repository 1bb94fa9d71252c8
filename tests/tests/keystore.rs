//! The node keystore from the command line: `keystore init / show / passwd`, `share migrate`
//! of format-1 files (in place, the original kept, a failure left as it was), and the dealer's
//! refusal of a keystore that belongs to another participant.

mod common;

use std::path::Path;

use common::{conclave, stdout_line};

fn ok(args: &[&str]) -> String {
    let out = conclave(args);
    assert!(
        out.status.success(),
        "conclave {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn shares_migrate_to_the_keystore_in_place_and_the_keystore_changes_passphrase_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let init = |name: &str| stdout_line(&conclave(&["node", "init", "--out", s(&d.join(name))]));
    let (k1, k2) = (init("p1"), init("p2"));
    std::fs::write(d.join("old.pass"), "old share passphrase\n").expect("pass");
    std::fs::write(d.join("node.pass"), "node passphrase one\n").expect("pass");
    std::fs::write(d.join("node2.pass"), "node passphrase two\n").expect("pass");
    let ks = d.join("p1.keystore");
    let made = json(&ok(&[
        "keystore",
        "init",
        "--identity",
        s(&d.join("p1")),
        "--out",
        s(&ks),
        "--passphrase-file",
        s(&d.join("node.pass")),
        "--mode",
        "dev",
        "--kdf",
        "light",
        "--json",
    ]));
    let public = made["public_key"].as_str().expect("key").to_owned();
    // A second init never replaces it.
    let again = conclave(&[
        "keystore",
        "init",
        "--identity",
        s(&d.join("p1")),
        "--out",
        s(&ks),
        "--passphrase-file",
        s(&d.join("node.pass")),
        "--mode",
        "dev",
        "--kdf",
        "light",
    ]);
    assert!(!again.status.success());
    assert_eq!(
        json(&ok(&["keystore", "show", s(&ks), "--json"]))["public_key"],
        public.as_str()
    );
    // Two groups dealt the old way (each share under the old passphrase).
    for g in ["a", "b"] {
        ok(&[
            "keygen",
            "dealer",
            "--group",
            g,
            "--threshold",
            "2",
            "--mode",
            "dev",
            "--kdf",
            "light",
            "--passphrase-file",
            s(&d.join("old.pass")),
            "--out",
            s(d),
            "--participant",
            &format!("p1={k1}@127.0.0.1:1"),
            "--participant",
            &format!("p2={k2}@127.0.0.1:2"),
        ]);
    }
    // p2's keystore may not stand in for p1's at the dealer.
    let p2ks = d.join("p2.keystore");
    ok(&[
        "keystore",
        "init",
        "--identity",
        s(&d.join("p2")),
        "--out",
        s(&p2ks),
        "--passphrase-file",
        s(&d.join("node.pass")),
        "--mode",
        "dev",
        "--kdf",
        "light",
    ]);
    let wrong = conclave(&[
        "keygen",
        "dealer",
        "--group",
        "c",
        "--threshold",
        "2",
        "--mode",
        "dev",
        "--out",
        s(&d.join("c")),
        "--participant",
        &format!("p1={k1}@127.0.0.1:1"),
        "--participant",
        &format!("p2={k2}@127.0.0.1:2"),
        "--keystore",
        &format!("p1={}", s(&p2ks)),
        "--keystore",
        &format!("p2={}", s(&p2ks)),
    ]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not of p1"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!d.join("c").exists(), "nothing written");

    // Migrate p1's two shares and a file that is not a share: the two move, the third is
    // reported and left as it was, exit 1.
    let (a, b) = (d.join("a.p1.share"), d.join("b.p1.share"));
    let junk = d.join("junk.share");
    std::fs::write(&junk, b"not a share").expect("junk");
    let before = std::fs::read(&a).expect("share");
    let out = conclave(&[
        "share",
        "migrate",
        "--keystore",
        s(&ks),
        "--passphrase-file",
        s(&d.join("node.pass")),
        "--share-passphrase-file",
        s(&d.join("old.pass")),
        "--mode",
        "dev",
        "--json",
        s(&a),
        s(&b),
        s(&junk),
    ]);
    assert_eq!(out.status.code(), Some(1), "one file failed");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["failed"], 1, "{report}");
    let results: Vec<&str> = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["result"].as_str().expect("result"))
        .collect();
    assert_eq!(results, ["migrated", "migrated", "failed"], "{report}");
    assert_eq!(std::fs::read(&junk).expect("junk"), b"not a share");
    for f in [&a, &b] {
        let h = json(&ok(&["share", "inspect", s(f), "--json"]));
        assert_eq!(h["format"], "keystore", "{h}");
        assert_eq!(h["keystore"], public.as_str());
    }
    // The original is kept beside it, byte for byte.
    assert_eq!(
        std::fs::read(d.join("a.p1.share.format1")).expect("backup"),
        before
    );
    // Again: already sealed, nothing changes.
    let again = json(&ok(&[
        "share",
        "migrate",
        "--keystore",
        s(&ks),
        "--passphrase-file",
        s(&d.join("node.pass")),
        "--share-passphrase-file",
        s(&d.join("old.pass")),
        "--mode",
        "dev",
        "--json",
        s(&a),
    ]));
    assert_eq!(again["files"][0]["result"], "already");
    // A share sealed to the keystore has no passphrase of its own to change.
    let passwd = conclave(&["share", "passwd", s(&a), "--mode", "dev"]);
    assert!(!passwd.status.success());
    assert!(String::from_utf8_lossy(&passwd.stderr).contains("keystore passwd"));

    // The keystore's passphrase changes alone: the old one stops working, the new one opens
    // the shares (a logs scan with the new passphrase finds nothing in a clean log).
    ok(&[
        "keystore",
        "passwd",
        s(&ks),
        "--old-passphrase-file",
        s(&d.join("node.pass")),
        "--new-passphrase-file",
        s(&d.join("node2.pass")),
        "--mode",
        "dev",
    ]);
    std::fs::write(d.join("clean.log"), "nothing secret here\n").expect("log");
    let scan = |pass: &str| {
        conclave(&[
            "logs",
            "scan",
            "--keystore",
            s(&ks),
            "--keystore-passphrase-file",
            s(&d.join(pass)),
            "--share",
            s(&a),
            "--mode",
            "dev",
            s(&d.join("clean.log")),
        ])
    };
    let old = scan("node.pass");
    assert!(!old.status.success());
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    let new = scan("node2.pass");
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
}
