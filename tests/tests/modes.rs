//! The dev/test/prod matrix: each prod refusal and each test-mode warning, one test apiece.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::conclave;

const STRONG: &str = "violet gravel anchor meadow thirteen lantern";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn node(dir: &Path, name: &str) -> String {
    let out = conclave(&["node", "init", "--out", dir.join(name).to_str().unwrap()]);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `keygen dealer` with a passphrase file, in `mode`, with extra flags.
fn dealer(dir: &Path, mode: &str, pass: &str, extra: &[&str]) -> std::process::Output {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = node(dir, &format!("a-{mode}-{k}"));
    let b = node(dir, &format!("b-{mode}-{k}"));
    let pass_file = dir.join(format!("pass-{mode}-{k}"));
    std::fs::write(&pass_file, format!("{pass}\n")).unwrap();
    let out_dir = dir.join(format!("out-{mode}-{k}"));
    let mut args = vec![
        "keygen", "dealer", "--group", "g", "-t", "2", "--mode", mode, "--kdf", "standard",
    ];
    let (pa, pb) = (format!("a={a}@h:1"), format!("b={b}@h:1"));
    let (pf, od) = (
        pass_file.to_str().unwrap().to_owned(),
        out_dir.to_str().unwrap().to_owned(),
    );
    args.extend(["-p", &pa, "-p", &pb, "--passphrase-file", &pf, "--out", &od]);
    args.extend(extra);
    conclave(&args)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn prod_refuses_dealer_keygen_without_allow_dealer_and_test_warns() {
    let d = tempfile::tempdir().unwrap();
    let prod = dealer(d.path(), "prod", STRONG, &[]);
    assert_eq!(prod.status.code(), Some(2));
    assert!(
        stderr(&prod).contains("--allow-dealer"),
        "{}",
        stderr(&prod)
    );
    assert!(dealer(d.path(), "prod", STRONG, &["--allow-dealer"])
        .status
        .success());
    let test = dealer(d.path(), "test", STRONG, &[]);
    assert!(test.status.success(), "{}", stderr(&test));
    assert!(stderr(&test).contains("warning: dealer keygen"));
}

#[test]
fn prod_refuses_weak_new_passphrase_and_test_warns() {
    let d = tempfile::tempdir().unwrap();
    let prod = dealer(d.path(), "prod", "Summer2024!", &["--allow-dealer"]);
    assert_eq!(prod.status.code(), Some(2));
    let e = stderr(&prod);
    assert!(
        e.contains("weak passphrase") && e.contains("at least 16") && e.contains("zxcvbn"),
        "{e}"
    );
    let test = dealer(d.path(), "test", "Summer2024!", &["--allow-dealer"]);
    assert!(test.status.success(), "{}", stderr(&test));
    assert!(stderr(&test).contains("warning: weak passphrase"));
}

#[test]
fn prod_refuses_passphrase_from_environment_and_test_warns() {
    let d = tempfile::tempdir().unwrap();
    let run = |mode: &str| {
        let (a, b) = (
            node(d.path(), &format!("ea-{mode}")),
            node(d.path(), &format!("eb-{mode}")),
        );
        std::process::Command::new(common::bin())
            .args([
                "keygen",
                "dealer",
                "--allow-dealer",
                "--group",
                "g",
                "-t",
                "2",
                "--mode",
                mode,
                "--out",
            ])
            .arg(d.path().join(format!("env-{mode}")))
            .args(["-p", &format!("a={a}@h:1"), "-p", &format!("b={b}@h:1")])
            .env("CONCLAVE_PASSPHRASE", STRONG)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let prod = run("prod");
    assert_eq!(prod.status.code(), Some(2));
    assert!(stderr(&prod).contains("does not accept passphrases from the environment"));
    let test = run("test");
    assert!(test.status.success(), "{}", stderr(&test));
    assert!(stderr(&test).contains("warning: passphrase taken from CONCLAVE_PASSPHRASE"));
    let dev = run("dev");
    assert!(dev.status.success(), "{}", stderr(&dev));
    assert!(!stderr(&dev).contains("warning"), "dev allows it silently");
}

/// A participant set up correctly for `mode`: private files, passphrase file, config.
struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn participant(mode: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    std::fs::create_dir(&root).unwrap();
    chmod(&root, 0o700);
    let a = node(&root, "a");
    let b = node(&root, "b");
    let pass = root.join("pass");
    std::fs::write(&pass, format!("{STRONG}\n")).unwrap();
    chmod(&pass, 0o600);
    let out = conclave(&[
        "keygen",
        "dealer",
        "--allow-dealer",
        "--group",
        "g",
        "-t",
        "2",
        "--mode",
        "dev",
        "--kdf",
        "light",
        "-p",
        &format!("a={a}@127.0.0.1:1"),
        "-p",
        &format!("b={b}@127.0.0.1:1"),
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--out",
        root.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = root.join("a.toml");
    std::fs::write(
        &config,
        format!("mode = \"{mode}\"\nidentity = \"a\"\nlisten = \"127.0.0.1:0\"\ncoordinators = [\"{b}\"]\npolicy = \"policy.toml\"\naudit_log = \"audit/audit.log\"\n[[shares]]\nfile = \"g.a.share\"\npassphrase_file = \"pass\"\n"),
    )
    .unwrap();
    chmod(&config, 0o600);
    std::fs::write(
        root.join("policy.toml"),
        format!("[[client]]\nname = \"ci\"\nkey = \"{b}\"\ngroups = [\"g\"]\nkinds = [\"raw\"]\nmax_message_bytes = 64\nrate = \"1/min\"\n"),
    )
    .unwrap();
    Node {
        _dir: dir,
        root,
        config,
    }
}

fn check(n: &Node) -> (Option<i32>, serde_json::Value) {
    let out = conclave(&[
        "config",
        "check",
        "--config",
        n.config.to_str().unwrap(),
        "--json",
    ]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

fn levels_for(report: &serde_json::Value, what: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["what"].as_str().unwrap().starts_with(what))
        .map(|c| c["level"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_correct_prod_setup_passes_every_check() {
    let n = participant("prod");
    let (code, r) = check(&n);
    assert_eq!(code, Some(0), "{r:#}");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["level"] == "pass"),
        "{r:#}"
    );
}

fn loose_file_matrix(file: impl Fn(&Node) -> PathBuf, what: &str) {
    for (mode, expect_code, expect_level) in [("prod", Some(1), "fail"), ("test", Some(0), "warn")]
    {
        let n = participant(mode);
        chmod(&file(&n), 0o644);
        let (code, r) = check(&n);
        assert_eq!(code, expect_code, "{mode}: {r:#}");
        assert!(
            levels_for(&r, what).contains(&expect_level.to_owned()),
            "{mode} {what}: {r:#}"
        );
        let fix = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["level"] == expect_level)
            .unwrap()["fix"]
            .clone();
        assert!(
            fix.as_str().unwrap().contains("chmod 600"),
            "a one-line fix: {fix}"
        );
    }
}

#[test]
fn share_file_readable_by_others_fails_in_prod_warns_in_test() {
    loose_file_matrix(|n| n.root.join("g.a.share"), "share");
}

#[test]
fn identity_key_readable_by_others_fails_in_prod_warns_in_test() {
    loose_file_matrix(|n| n.root.join("a").join("identity.key"), "identity key");
}

#[test]
fn config_readable_by_others_fails_in_prod_warns_in_test() {
    loose_file_matrix(|n| n.config.clone(), "config");
}

#[test]
fn files_in_a_world_writable_directory_fail_in_prod_warn_in_test() {
    for (mode, expect_code) in [("prod", Some(1)), ("test", Some(0))] {
        let n = participant(mode);
        chmod(&n.root, 0o777);
        let (code, r) = check(&n);
        assert_eq!(code, expect_code, "{mode}: {r:#}");
        let dir_checks: Vec<_> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["what"].as_str().unwrap().ends_with("directory"))
            .collect();
        assert!(!dir_checks.is_empty(), "{r:#}");
        chmod(&n.root, 0o700);
    }
}

#[test]
fn prod_participant_refuses_to_start_with_a_loose_share_file() {
    let n = participant("prod");
    chmod(&n.root.join("g.a.share"), 0o640);
    let out = conclave(&["participant", "--config", n.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("refusing to start in prod mode") && e.contains("chmod 600"),
        "{e}"
    );
}

#[test]
fn dev_mode_allows_what_prod_refuses() {
    let n = participant("dev");
    chmod(&n.root.join("g.a.share"), 0o644);
    chmod(&n.config, 0o644);
    let (code, r) = check(&n);
    assert_eq!(code, Some(0), "{r:#}");
    assert!(r["checks"].as_array().unwrap().iter().any(|c| c["detail"]
        .as_str()
        .unwrap()
        .contains("allowed in dev mode")));
}
