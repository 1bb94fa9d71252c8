//! Rotation over real processes, one continuous story under the same group public key:
//! 2-of-3 (dealer) → reshare to 3-of-5 (two added) → reshare to 2-of-4 (one removed, one
//! replaced; a first attempt with a dealer sending a bad sub-share aborts with the old
//! shares intact) → refresh → repair. After every step a signature through the coordinator verifies
//! with ed25519-dalek `verify_strict` and OpenSSL under the unchanged key; a node left on its
//! old share is refused as stale; `rotate retire` destroys an old share only once the new
//! epoch is in service; finally a member's lost share is repaired by two helpers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{
    bin, conclave, files_ending, first_line, openssl_verifies, stdout_line, Reserved,
    DEFAULT_POLICY,
};

struct World {
    dir: tempfile::TempDir,
    keys: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    reserved: BTreeMap<String, Reserved>,
    coordinator_key: String,
    relay_port: u16,
}

/// Running daemons of one epoch.
struct Running {
    children: Vec<Child>,
    coordinator_addr: String,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl World {
    fn new(names: &[&str]) -> World {
        let dir = tempfile::Builder::new()
            .prefix("conclave-rotation-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("pass"), "integration-test-passphrase\n").unwrap();
        let init = |name: &str| {
            let out = conclave(&["node", "init", "--out", d.join(name).to_str().unwrap()]);
            assert!(out.status.success());
            stdout_line(&out)
        };
        let coordinator_key = init("coordinator");
        init("client");
        let mut keys = BTreeMap::new();
        let mut ports = BTreeMap::new();
        let mut reserved = BTreeMap::new();
        for n in names {
            keys.insert(n.to_string(), init(n));
            let r = Reserved::new();
            ports.insert(n.to_string(), r.port);
            reserved.insert(n.to_string(), r);
        }
        let relay = Reserved::new();
        let relay_port = relay.port;
        drop(relay);
        World {
            dir,
            keys,
            ports,
            reserved,
            coordinator_key,
            relay_port,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self, name: &str) -> String {
        format!("{name}={}@127.0.0.1:{}", self.keys[name], self.ports[name])
    }

    /// Starts participants (name, share file relative to the dir) and a coordinator serving
    /// `manifest`.
    fn start(&mut self, manifest: &str, shares: &[(&str, String)]) -> Running {
        let shares: Vec<(&str, Vec<String>)> =
            shares.iter().map(|(n, s)| (*n, vec![s.clone()])).collect();
        self.start_multi(&[manifest], &shares)
    }

    /// Like `start`, with several groups: each participant serves several shares and the
    /// coordinator several manifests (a migration's transition window).
    fn start_multi(&mut self, manifests: &[&str], shares: &[(&str, Vec<String>)]) -> Running {
        let manifest = manifests.join("\", \"");
        let d = self.d().to_path_buf();
        let mut children = vec![];
        let client_key = stdout_line(&conclave(&[
            "node",
            "show",
            d.join("client").to_str().unwrap(),
        ]));
        for (name, files) in shares {
            // Each signer's policy: the client may have any group sign anything (transition
            // statements included, for migrations).
            let groups: Vec<String> = manifests
                .iter()
                .map(|m| {
                    let file = Path::new(m).file_name().unwrap().to_str().unwrap();
                    // `<group>.manifest.toml` or `<group>.epoch<E>.manifest.toml`.
                    format!("\"{}\"", file.split('.').next().unwrap())
                })
                .collect();
            let policy = DEFAULT_POLICY.replace("{A}", &client_key).replace(
                "groups = [\"it\"]",
                &format!("groups = [{}]", groups.join(", ")),
            );
            std::fs::write(d.join(format!("{name}.policy.toml")), policy).unwrap();
            let mut config = format!(
                "mode = \"dev\"\nidentity = \"{name}\"\nlisten = \"127.0.0.1:{}\"\ncoordinators = [\"{}\"]\npolicy = \"{name}.policy.toml\"\naudit_log = \"{name}-audit/audit.log\"\n",
                self.ports[*name], self.coordinator_key
            );
            for share in files {
                config +=
                    &format!("\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"pass\"\n");
            }
            let path = d.join(format!("{name}.toml"));
            std::fs::write(&path, config).unwrap();
            if let Some(mut r) = self.reserved.remove(*name) {
                r.release();
            }
            let mut child = Command::new(bin())
                .args(["participant", "--config", path.to_str().unwrap()])
                .current_dir(&d)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(d.join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap();
            let line = first_line(&mut child);
            assert!(line.contains("listening on"), "{name}: {line}");
            children.push(child);
        }
        let config = format!(
            "mode = \"dev\"\nidentity = \"coordinator\"\nlisten = \"127.0.0.1:0\"\nclients = [\"{client_key}\"]\nmanifests = [\"{manifest}\"]\nparticipant_timeout_ms = 1500\naudit_log = \"coordinator-audit/audit.log\"\n"
        );
        let path = d.join("coordinator.toml");
        std::fs::write(&path, config).unwrap();
        let log = d.join(format!("coordinator-{}.log", manifests.join("+")));
        let mut child = Command::new(bin())
            .args(["coordinator", "--config", path.to_str().unwrap()])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let line = first_line(&mut child);
        let coordinator_addr = line.rsplit(' ').next().unwrap().to_owned();
        children.push(child);
        Running {
            children,
            coordinator_addr,
            log,
        }
    }

    fn client_args(&self, run: &Running) -> Vec<String> {
        vec![
            "--coordinator".into(),
            run.coordinator_addr.clone(),
            "--coordinator-key".into(),
            self.coordinator_key.clone(),
            "--identity".into(),
            self.d().join("client").display().to_string(),
        ]
    }

    /// Signs through the coordinator (waiting until enough members are connected) and checks
    /// the signature with dalek and OpenSSL under `key`. Returns the signers.
    fn sign_and_verify(&self, run: &Running, manifest: &str, key: &str) -> Vec<String> {
        self.sign_group(run, "story", manifest, key)
    }

    fn sign_group(&self, run: &Running, group: &str, manifest: &str, key: &str) -> Vec<String> {
        let msg = format!("rotation story, manifest {manifest}");
        let msg_file = self.d().join("msg");
        std::fs::write(&msg_file, &msg).unwrap();
        let mut args: Vec<String> = vec!["sign".into(), "--group".into(), group.into()];
        args.extend(self.client_args(run));
        args.extend([
            "--message-file".into(),
            msg_file.display().to_string(),
            "--format".into(),
            "hex".into(),
            "--json".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut last = None;
        for _ in 0..50 {
            let out = conclave(&refs);
            if out.status.success() {
                last = Some(out);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            last = Some(out);
        }
        let out = last.unwrap();
        assert!(
            out.status.success(),
            "sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sig = hex::decode(json["signature"].as_str().unwrap()).unwrap();
        let mut pk = [0u8; 32];
        hex::decode_to_slice(key, &mut pk).unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
        vk.verify_strict(
            msg.as_bytes(),
            &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
        )
        .expect("verify_strict");
        let pem = conclave(&[
            "pubkey",
            "--format",
            "pem",
            "--manifest",
            self.d().join(manifest).to_str().unwrap(),
        ]);
        assert!(openssl_verifies(
            self.d(),
            &String::from_utf8_lossy(&pem.stdout),
            msg.as_bytes(),
            &sig
        ));
        common::signers(&json)
    }

    /// Runs a rotation ceremony with the CLI: relay + one join per roster member.
    fn ceremony(
        &self,
        plan: &str,
        members: &[(&str, Option<String>)],
        old_manifest: &str,
        fault: Option<(&str, &str)>,
    ) -> (Output, Vec<Output>) {
        let d = self.d();
        let spawn = |args: &[&str], fault: Option<&str>| {
            let mut cmd = Command::new(bin());
            cmd.args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(f) = fault {
                cmd.env("CONCLAVE_TEST_FAULT", f);
            }
            cmd.spawn().unwrap()
        };
        let relay = spawn(
            &[
                "rotate",
                "relay",
                "--plan",
                plan,
                "--identity",
                "coordinator",
                "--out",
                ".",
                "--json",
                "--yes",
            ],
            fault.filter(|(who, _)| *who == "relay").map(|(_, f)| f),
        );
        let children: Vec<Child> = members
            .iter()
            .map(|(name, old_share)| {
                let mut args = vec![
                    "rotate",
                    "join",
                    "--plan",
                    plan,
                    "--identity",
                    name,
                    "--old-manifest",
                    old_manifest,
                    "--old-passphrase-file",
                    "pass",
                    "--passphrase-file",
                    "pass",
                    "--out",
                    name,
                    "--mode",
                    "dev",
                    "--kdf",
                    "light",
                    "--yes",
                    "--json",
                ];
                if let Some(s) = old_share {
                    args.extend(["--old-share", s.as_str()]);
                }
                let f = fault.filter(|(who, _)| who == name).map(|(_, f)| f);
                spawn(&args, f)
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        (relay.wait_with_output().unwrap(), outs)
    }

    fn plan(&self, out: &str, args: &[&str]) {
        let o = self.try_plan(out, "30", args);
        assert!(
            o.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let summary = String::from_utf8_lossy(&o.stderr);
        assert!(summary.contains("unchanged"), "{summary}");
    }

    /// `rotate plan` with the relay's join timeout (seconds); the output, success or not.
    fn try_plan(&self, out: &str, join_timeout: &str, args: &[&str]) -> Output {
        let coordinator = format!(
            "coordinator={}@127.0.0.1:{}",
            self.coordinator_key, self.relay_port
        );
        let mut all = vec![
            "rotate",
            "plan",
            "--coordinator",
            &coordinator,
            "--out",
            out,
            "--join-timeout",
            join_timeout,
            "--yes",
        ];
        all.extend_from_slice(args);
        Command::new(bin())
            .args(&all)
            .current_dir(self.d())
            .output()
            .unwrap()
    }

    /// A 2-of-3 group `story` of a, b, c made by the dealer; returns its public key.
    fn dealer_group(&self) -> String {
        let out = Command::new(bin())
            .args([
                "keygen", "dealer", "--group", "story", "-t", "2", "--mode", "dev",
            ])
            .args(["--kdf", "light", "--passphrase-file", "pass", "--out", "."])
            .args([
                "-p",
                &self.spec("a"),
                "-p",
                &self.spec("b"),
                "-p",
                &self.spec("c"),
            ])
            .current_dir(self.d())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_line(&conclave(&[
            "pubkey",
            "--manifest",
            self.d().join("story.manifest.toml").to_str().unwrap(),
        ]))
    }
}

fn describe(relay: &Output, members: &[Output]) -> String {
    let mut s = format!("relay: {}\n", String::from_utf8_lossy(&relay.stderr));
    for m in members {
        s += &format!("member: {}\n", String::from_utf8_lossy(&m.stderr));
    }
    s
}

fn share(name: &str, epoch: u64) -> String {
    if epoch == 1 {
        format!("story.{name}.share")
    } else {
        format!("{name}/story.{name}.epoch{epoch}.share")
    }
}

#[test]
fn reshare_twice_then_refresh_under_one_key_over_real_processes() {
    let mut w = World::new(&["a", "b", "c", "d", "e", "f"]);
    let d = w.d().to_path_buf();

    // Epoch 1: 2-of-3 {a, b, c} by a dealer.
    let out = Command::new(bin())
        .args([
            "keygen", "dealer", "--group", "story", "-t", "2", "--mode", "dev",
        ])
        .args(["--kdf", "light", "--passphrase-file", "pass", "--out", "."])
        .args(["-p", &w.spec("a"), "-p", &w.spec("b"), "-p", &w.spec("c")])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m1: serde_json::Value = {
        let o = conclave(&[
            "pubkey",
            "--manifest",
            d.join("story.manifest.toml").to_str().unwrap(),
        ]);
        serde_json::Value::String(stdout_line(&o))
    };
    let key = m1.as_str().unwrap().to_owned();
    let run1 = w.start(
        "story.manifest.toml",
        &[
            ("a", share("a", 1)),
            ("b", share("b", 1)),
            ("c", share("c", 1)),
        ],
    );
    w.sign_and_verify(&run1, "story.manifest.toml", &key);

    // Epoch 2: reshare to 3-of-5, adding d and e (dealt by a and b), while epoch 1 serves.
    w.plan(
        "plan2.toml",
        &[
            "--kind",
            "reshare",
            "--old-manifest",
            "story.manifest.toml",
            "-t",
            "3",
            "-p",
            "a",
            "-p",
            "b",
            "-p",
            "c",
            "-p",
            &w.spec("d"),
            "-p",
            &w.spec("e"),
        ],
    );
    let old = |n: &str| Some(share(n, 1));
    let (relay, members) = w.ceremony(
        "plan2.toml",
        &[
            ("a", old("a")),
            ("b", old("b")),
            ("c", old("c")),
            ("d", None),
            ("e", None),
        ],
        "story.manifest.toml",
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let m2 = "story.epoch2.manifest.toml";
    for n in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            std::fs::read_to_string(d.join(n).join(m2)).unwrap(),
            std::fs::read_to_string(d.join(m2)).unwrap()
        );
    }
    // Retiring an epoch-1 share is refused while the coordinator still serves epoch 1.
    let mut retire: Vec<String> = vec![
        "rotate".into(),
        "retire".into(),
        "--share".into(),
        share("a", 1),
    ];
    retire.extend(["--manifest".into(), m2.into(), "--yes".into()]);
    let mut args = retire.clone();
    args.extend(w.client_args(&run1));
    let o = Command::new(bin())
        .args(&args)
        .current_dir(&d)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not in service yet"));
    assert!(d.join(share("a", 1)).exists());
    drop(run1);

    // Epoch 2 in service; c stays on its old epoch-1 share and is refused as stale.
    let run2 = w.start(
        m2,
        &[
            ("a", share("a", 2)),
            ("b", share("b", 2)),
            ("c", share("c", 1)),
            ("d", share("d", 2)),
            ("e", share("e", 2)),
        ],
    );
    let signers = w.sign_and_verify(&run2, m2, &key);
    assert!(!signers.contains(&"c".to_string()), "{signers:?}");
    let log = std::fs::read_to_string(&run2.log).unwrap();
    assert!(
        log.contains("participant is on another epoch") && log.contains("participant=c"),
        "{log}"
    );
    // Now the old share of a can be retired: overwritten, synced, unlinked.
    let mut args = retire.clone();
    args.extend(w.client_args(&run2));
    let o = Command::new(bin())
        .args(&args)
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.join(share("a", 1)).exists());
    let status = Command::new(bin())
        .args([
            "rotate",
            "status",
            "--manifest",
            "story.manifest.toml",
            "--manifest",
            m2,
            "--share-dir",
            ".",
            "--json",
        ])
        .args(w.client_args(&run2))
        .current_dir(&d)
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["coordinator"]["epoch"], 2);
    assert_eq!(
        s["coordinator"]["on_other_epochs"],
        serde_json::json!([{"name": "c", "epoch": 1}]),
        "{s}"
    );
    assert_eq!(s["manifests"][1]["threshold"], 3);
    // The epoch-1 shares not yet retired on this host are listed (a's was just destroyed).
    let files: Vec<String> = s["superseded_shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files, vec!["./story.b.share", "./story.c.share"], "{s}");
    assert_eq!(s["superseded_shares"][0]["newest_epoch"], 2);
    drop(run2);

    // Epoch 3: 2-of-4 {a, c, d, f}: b removed, e replaced by f; dealt by a, c, d (c from its
    // epoch-2 share). First attempt: dealer c sends a bad sub-share → named, nothing changes.
    w.plan(
        "plan3.toml",
        &[
            "--kind",
            "reshare",
            "--old-manifest",
            m2,
            "-t",
            "2",
            "-p",
            "a",
            "-p",
            "c",
            "-p",
            "d",
            "-p",
            &w.spec("f"),
        ],
    );
    let e2 = |n: &str| Some(share(n, 2));
    let members3 = [("a", e2("a")), ("c", e2("c")), ("d", e2("d")), ("f", None)];
    let (relay, members) = w.ceremony(
        "plan3.toml",
        &members3,
        m2,
        Some(("c", "reshare-bad-sub-share")),
    );
    assert_eq!(
        relay.status.code(),
        Some(1),
        "{}",
        describe(&relay, &members)
    );
    let err = String::from_utf8_lossy(&relay.stderr);
    assert!(err.contains("names c (on evidence only"), "{err}");
    // The member that received the bad sub-share checked it itself: c is its culprit.
    assert!(
        members
            .iter()
            .any(|m| String::from_utf8_lossy(&m.stderr).contains("culprit(s): c")),
        "{}",
        describe(&relay, &members)
    );
    assert!(files_ending(&d, &[".epoch3.share", ".pending", "epoch3.manifest.toml"]).is_empty());
    assert!(d.join(share("c", 2)).exists());
    // Same plan, healthy dealers: completes.
    let (relay, members) = w.ceremony("plan3.toml", &members3, m2, None);
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let m3 = "story.epoch3.manifest.toml";
    let run3 = w.start(
        m3,
        &[
            ("a", share("a", 3)),
            ("c", share("c", 3)),
            ("d", share("d", 3)),
            ("f", share("f", 3)),
        ],
    );
    w.sign_and_verify(&run3, m3, &key);
    drop(run3);

    // Epoch 4: refresh (same members and threshold, new shares).
    w.plan("plan4.toml", &["--kind", "refresh", "--old-manifest", m3]);
    let e3 = |n: &str| Some(share(n, 3));
    let (relay, members) = w.ceremony(
        "plan4.toml",
        &[
            ("a", e3("a")),
            ("c", e3("c")),
            ("d", e3("d")),
            ("f", e3("f")),
        ],
        m3,
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let m4 = "story.epoch4.manifest.toml";
    assert_ne!(
        std::fs::read(d.join(share("f", 3))).unwrap(),
        std::fs::read(d.join(share("f", 4))).unwrap()
    );
    let run4 = w.start(
        m4,
        &[
            ("a", share("a", 4)),
            ("c", share("c", 4)),
            ("d", share("d", 4)),
            ("f", share("f", 4)),
        ],
    );
    w.sign_and_verify(&run4, m4, &key);
    drop(run4);

    // Repair: f loses its share; a and c (t = 2) rebuild it. The rebuilt share is checked
    // against the manifest, and signs with a alone beside it.
    let lost = d.join(share("f", 4));
    let original = conclave_keygen::ShareFile::read(
        &lost,
        &conclave_keygen::Passphrase::new("integration-test-passphrase".into()),
    )
    .unwrap();
    std::fs::remove_file(&lost).unwrap();
    w.plan(
        "plan5.toml",
        &[
            "--kind",
            "repair",
            "--old-manifest",
            m4,
            "-p",
            "f",
            "--dealer",
            "a",
            "--dealer",
            "c",
        ],
    );
    let e4 = |n: &str| Some(share(n, 4));
    let (relay, members) = w.ceremony(
        "plan5.toml",
        &[("a", e4("a")), ("c", e4("c")), ("f", None)],
        m4,
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let rebuilt = conclave_keygen::ShareFile::read(
        &lost,
        &conclave_keygen::Passphrase::new("integration-test-passphrase".into()),
    )
    .unwrap();
    assert_eq!(
        rebuilt.key_package.signing_share(),
        original.key_package.signing_share()
    );
    let run5 = w.start(m4, &[("a", share("a", 4)), ("f", share("f", 4))]);
    let signers = w.sign_and_verify(&run5, m4, &key);
    assert!(signers.contains(&"f".to_string()), "{signers:?}");
    let pk4 = conclave(&["pubkey", "--manifest", d.join(m4).to_str().unwrap()]);
    assert_eq!(stdout_line(&pk4), key, "the group key never changed");
}

fn run_in(d: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(d)
        .output()
        .unwrap()
}

#[test]
fn migrate_to_a_new_key_with_a_statement_signed_by_both_keys() {
    let mut w = World::new(&["a", "b", "c"]);
    let d = w.d().to_path_buf();
    // Old key "story" and new key "story-2" (the new one would come from `keygen dkg` in
    // production; a dealer keeps this test short, DKG is tested in dkg.rs).
    for group in ["story", "story-2"] {
        let out = Command::new(bin())
            .args([
                "keygen", "dealer", "--group", group, "-t", "2", "--mode", "dev",
            ])
            .args(["--kdf", "light", "--passphrase-file", "pass", "--out", "."])
            .args(["-p", &w.spec("a"), "-p", &w.spec("b"), "-p", &w.spec("c")])
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key_of = |m: &str| {
        stdout_line(&conclave(&[
            "pubkey",
            "--manifest",
            d.join(m).to_str().unwrap(),
        ]))
    };
    let (old_key, new_key) = (
        key_of("story.manifest.toml"),
        key_of("story-2.manifest.toml"),
    );
    // Transition window: one coordinator and the same participants serve both groups.
    let both = |n: &str| vec![format!("story.{n}.share"), format!("story-2.{n}.share")];
    let run = w.start_multi(
        &["story.manifest.toml", "story-2.manifest.toml"],
        &[("a", both("a")), ("b", both("b")), ("c", both("c"))],
    );
    w.sign_group(&run, "story", "story.manifest.toml", &old_key);
    w.sign_group(&run, "story-2", "story-2.manifest.toml", &new_key);

    let o = run_in(
        &d,
        &[
            "migrate",
            "statement",
            "--old-manifest",
            "story.manifest.toml",
            "--new-manifest",
            "story-2.manifest.toml",
            "--reason",
            "suspected compromise of b",
            "--not-before",
            "1800000000",
            "--out",
            "transition.toml",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Unsigned: does not verify.
    assert_eq!(
        run_in(&d, &["migrate", "verify", "transition.toml"])
            .status
            .code(),
        Some(1)
    );
    for which in ["old", "new"] {
        let mut args = vec![
            "migrate".to_string(),
            "sign".into(),
            "--statement".into(),
            "transition.toml".into(),
            "--key".into(),
            which.into(),
        ];
        args.extend(w.client_args(&run));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_in(&d, &refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = run_in(&d, &["migrate", "verify", "transition.toml", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["new_public_key"], new_key.as_str());
    // Both signatures are plain Ed25519 over the printed message: OpenSSL agrees.
    let message = run_in(
        &d,
        &["migrate", "verify", "transition.toml", "--print-message"],
    )
    .stdout;
    let text = std::fs::read_to_string(d.join("transition.toml")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap()
    };
    for (sig_field, manifest) in [
        ("old_signature", "story.manifest.toml"),
        ("new_signature", "story-2.manifest.toml"),
    ] {
        let pem = conclave(&[
            "pubkey",
            "--format",
            "pem",
            "--manifest",
            d.join(manifest).to_str().unwrap(),
        ]);
        let sig = hex::decode(field(sig_field)).unwrap();
        assert!(openssl_verifies(
            &d,
            &String::from_utf8_lossy(&pem.stdout),
            &message,
            &sig
        ));
    }
    // Tampering with either signature, or with a field, is detected.
    for (from, to) in [
        (field("old_signature"), flip(&field("old_signature"))),
        (field("new_signature"), flip(&field("new_signature"))),
        ("1800000000".to_string(), "1800000001".to_string()),
    ] {
        std::fs::write(d.join("tampered.toml"), text.replace(&from, &to)).unwrap();
        let o = run_in(&d, &["migrate", "verify", "tampered.toml"]);
        assert_eq!(o.status.code(), Some(1), "tampering {from} went unnoticed");
    }
    // Retire an old-key share: the statement verifies and the new group signs.
    let mut args = vec![
        "migrate".to_string(),
        "retire".into(),
        "--share".into(),
        "story.a.share".into(),
        "--statement".into(),
        "transition.toml".into(),
        "--yes".into(),
    ];
    args.extend(w.client_args(&run));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_in(&d, &refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.join("story.a.share").exists());
    assert!(d.join("story-2.a.share").exists());
}

/// The hex string with its first digit changed.
fn flip(hex_str: &str) -> String {
    let mut c: Vec<char> = hex_str.chars().collect();
    c[0] = if c[0] == '0' { '1' } else { '0' };
    c.into_iter().collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every member refused the plan before sending anything, and the relay saw none of them join.
fn refused_by_all(relay: &Output, members: &[Output], names: &[&str], what: &str) {
    for (m, name) in members.iter().zip(names) {
        assert_eq!(m.status.code(), Some(1), "{what}: {name}: {}", stderr(m));
        assert!(
            stderr(m).contains("plan refused, nothing was sent"),
            "{what}: {name}: {}",
            stderr(m)
        );
    }
    let r = stderr(relay);
    // The relay gives up when nobody joins (or refuses a plan that breaks the rules).
    assert!(!relay.status.success(), "{what}: relay: {r}");
    for name in names {
        assert!(
            !r.contains(&format!("(join): {name} ")),
            "{what}: {name} joined the relay: {r}"
        );
    }
    // No contribution of any round reached the relay.
    assert!(!r.contains("round 1 ("), "{what}: {r}");
}

fn key_of(w: &World, name: &str) -> String {
    w.keys[name].clone()
}

fn short(hex_key: &str) -> String {
    hex_key[..16].to_owned()
}

/// Issue 10: repair to an outsider, repair for a non-member, a hidden key change in a reshare,
/// a forged reshare plan that moves the group to the attacker's key: each one is refused by
/// every honest member before anything secret leaves it, whether the plan came from
/// `rotate plan` or was written by hand; a declared replacement works and is shown.
#[test]
fn plans_the_group_did_not_agree_to_are_refused_by_every_member() {
    let w = World::new(&["a", "b", "c", "d", "x", "y"]);
    let d = w.d().to_path_buf();
    let key = w.dealer_group();
    let m1 = "story.manifest.toml";
    let old = |n: &str| Some(share(n, 1));

    // 1. Repair to an outsider: `rotate plan` refuses a key for the lost member...
    let x_as_c = format!("c={}@127.0.0.1:{}", key_of(&w, "x"), w.ports["x"]);
    let o = w.try_plan(
        "bad.toml",
        "3",
        &["--kind", "repair", "--old-manifest", m1, "-p", &x_as_c],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("existing member under its own identity key"),
        "{}",
        stderr(&o)
    );
    let mallory = format!("mallory={}@127.0.0.1:{}", key_of(&w, "x"), w.ports["x"]);
    let o = w.try_plan(
        "bad.toml",
        "3",
        &["--kind", "repair", "--old-manifest", m1, "-p", &mallory],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!d.join("bad.toml").exists());
    // ... and a plan written by hand (the honest repair of c, c's key swapped for x's) is
    // refused by each helper, naming the expected and the offered fingerprints.
    let o = w.try_plan(
        "repair.toml",
        "3",
        &[
            "--kind",
            "repair",
            "--old-manifest",
            m1,
            "-p",
            "c",
            "--dealer",
            "a",
            "--dealer",
            "b",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let honest_repair = std::fs::read_to_string(d.join("repair.toml")).unwrap();
    let forged = honest_repair.replace(&key_of(&w, "c"), &key_of(&w, "x"));
    assert_ne!(forged, honest_repair);
    std::fs::write(d.join("repair-x.toml"), &forged).unwrap();
    let (relay, members) = w.ceremony(
        "repair-x.toml",
        &[("a", old("a")), ("b", old("b"))],
        m1,
        None,
    );
    refused_by_all(&relay, &members, &["a", "b"], "repair to x under c's name");
    for m in &members {
        let e = stderr(m);
        assert!(
            e.contains(&short(&key_of(&w, "c"))) && e.contains(&short(&key_of(&w, "x"))),
            "{e}"
        );
    }
    // Under a name that is no member at all.
    let forged = honest_repair
        .replace(&key_of(&w, "c"), &key_of(&w, "x"))
        .replace("name = \"c\"", "name = \"mallory\"");
    std::fs::write(d.join("repair-mallory.toml"), &forged).unwrap();
    let (relay, members) = w.ceremony(
        "repair-mallory.toml",
        &[("a", old("a")), ("b", old("b"))],
        m1,
        None,
    );
    refused_by_all(&relay, &members, &["a", "b"], "repair for mallory");
    assert!(
        stderr(&members[0]).contains("not a member"),
        "{}",
        stderr(&members[0])
    );
    assert!(files_ending(&d.join("x"), &[".share", ".pending"]).is_empty());

    // 2. A reshare that swaps c's key for y's without saying so: `rotate plan` refuses...
    let y_as_c = format!("c={}@127.0.0.1:{}", key_of(&w, "y"), w.ports["y"]);
    let reshare_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--kind",
            "reshare",
            "--old-manifest",
            m1,
            "-t",
            "2",
            "-p",
            "a",
            "-p",
            "b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = reshare_args(&["-p", &y_as_c]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = w.try_plan("bad.toml", "3", &refs);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--replace c="), "{}", stderr(&o));
    // ... and so does every member, given the same plan written by hand.
    let d_spec = w.spec("d");
    let args = reshare_args(&["-p", "c", "-p", &d_spec]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = w.try_plan("reshare.toml", "3", &refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let honest_reshare = std::fs::read_to_string(d.join("reshare.toml")).unwrap();
    std::fs::write(
        d.join("reshare-swap.toml"),
        honest_reshare.replace(&key_of(&w, "c"), &key_of(&w, "y")),
    )
    .unwrap();
    let (relay, members) = w.ceremony(
        "reshare-swap.toml",
        &[
            ("a", old("a")),
            ("b", old("b")),
            ("c", old("c")),
            ("d", None),
        ],
        m1,
        None,
    );
    refused_by_all(&relay, &members, &["a", "b", "c", "d"], "hidden key swap");
    assert!(
        stderr(&members[0]).contains("changes its identity key"),
        "{}",
        stderr(&members[0])
    );

    // 3. The forged reshare of the issue: the attacker's own key (made with `keygen dealer`)
    // and dealers that are outsider identities under the names a and b, the real manifest
    // hash kept. Every honest member refuses; nobody stores anything.
    let evil = d.join("evil");
    std::fs::create_dir(&evil).unwrap();
    let o = Command::new(bin())
        .args([
            "keygen", "dealer", "--group", "story", "-t", "2", "--mode", "dev",
        ])
        .args([
            "--kdf",
            "light",
            "--passphrase-file",
            "../pass",
            "--out",
            ".",
        ])
        .args([
            "-p",
            &format!("a={}@127.0.0.1:1", key_of(&w, "x")),
            "-p",
            &format!("b={}@127.0.0.1:2", key_of(&w, "y")),
        ])
        .current_dir(&evil)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let evil_m = conclave_keygen::GroupManifest::read(&evil.join("story.manifest.toml")).unwrap();
    let real_m = conclave_keygen::GroupManifest::read(&d.join(m1)).unwrap();
    let mut forged = honest_reshare.replace(&real_m.group_public_key, &evil_m.group_public_key);
    for (real, fake) in real_m.participants[..2].iter().zip(&evil_m.participants) {
        forged = forged
            .replace(
                &format!("identity_key = \"{}\"\nverifying_share", real.identity_key),
                &format!("identity_key = \"{}\"\nverifying_share", fake.identity_key),
            )
            .replace(&real.verifying_share, &fake.verifying_share);
    }
    assert!(forged.contains(&evil_m.group_public_key) && forged.contains(&key_of(&w, "x")));
    std::fs::write(d.join("reshare-evil.toml"), &forged).unwrap();
    let (relay, members) = w.ceremony(
        "reshare-evil.toml",
        &[
            ("a", old("a")),
            ("b", old("b")),
            ("c", old("c")),
            ("d", None),
        ],
        m1,
        None,
    );
    refused_by_all(&relay, &members, &["a", "b", "c", "d"], "forged reshare");
    // A joiner without the manifest, told the real key out of band, refuses a plan that
    // claims another key.
    std::fs::write(
        d.join("reshare-key.toml"),
        honest_reshare.replace(&real_m.group_public_key, &evil_m.group_public_key),
    )
    .unwrap();
    let o = run_in(
        &d,
        &[
            "rotate",
            "join",
            "--plan",
            "reshare-key.toml",
            "--identity",
            "d",
            "--expect-group-key",
            &key,
            "--passphrase-file",
            "pass",
            "--out",
            "d",
            "--mode",
            "dev",
            "--kdf",
            "light",
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not the key this host was told to expect"),
        "{}",
        stderr(&o)
    );
    // In prod mode a joiner must be told the key: a manifest copied with the plan proves nothing.
    let o = run_in(
        &d,
        &[
            "rotate",
            "join",
            "--plan",
            "reshare.toml",
            "--identity",
            "d",
            "--old-manifest",
            m1,
            "--passphrase-file",
            "pass",
            "--out",
            "d",
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--expect-group-key"), "{}", stderr(&o));
    // And prod mode refuses a blind --yes without the plan fingerprint.
    let o = run_in(
        &d,
        &[
            "rotate",
            "join",
            "--plan",
            "reshare.toml",
            "--identity",
            "d",
            "--expect-group-key",
            &key,
            "--passphrase-file",
            "pass",
            "--out",
            "d",
            "--yes",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--expect-plan"), "{}", stderr(&o));
    assert!(
        files_ending(&d, &[".epoch2.share", ".pending", "epoch2.manifest.toml"]).is_empty(),
        "nobody stored anything"
    );

    // 4. The same key change, declared with --replace: every dealer shows the change, the
    // reshare completes, y signs as c, and the old c share no longer combines.
    let args = reshare_args(&["--replace", &y_as_c]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = w.try_plan("replace.toml", "30", &refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let change = format!(
        "c: identity key CHANGES {} -> {}",
        short(&key_of(&w, "c")),
        short(&key_of(&w, "y"))
    );
    assert!(stderr(&o).contains(&change), "{}", stderr(&o));
    let (relay, members) = w.ceremony(
        "replace.toml",
        &[("a", old("a")), ("b", old("b")), ("y", None)],
        m1,
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    for dealer in &members[..2] {
        assert!(stderr(dealer).contains(&change), "{}", stderr(dealer));
        assert!(
            stderr(dealer).contains("plan fingerprint:"),
            "{}",
            stderr(dealer)
        );
    }
    let m2 = "story.epoch2.manifest.toml";
    let new_m = conclave_keygen::GroupManifest::read(&d.join(m2)).unwrap();
    assert_eq!(new_m.group_public_key, key);
    let c_entry = new_m.participants.iter().find(|p| p.name == "c").unwrap();
    assert_eq!(c_entry.identity_key, key_of(&w, "y"));
    let pass = conclave_keygen::Passphrase::new("integration-test-passphrase".into());
    let read = |p: PathBuf| {
        conclave_keygen::ShareFile::read(&p, &pass)
            .unwrap()
            .key_package
    };
    let new_a = read(d.join(share("a", 2)));
    let new_c = read(d.join("y").join("story.c.epoch2.share"));
    let old_c = read(d.join(share("c", 1)));
    let pkp = new_m.public_key_package().unwrap();
    assert!(frost_signs(&pkp, &[&new_a, &new_c]), "the new shares sign");
    assert!(
        !frost_signs(&pkp, &[&new_a, &old_c]),
        "the old c share does not combine"
    );
}

/// Signs "x" with `kps` in process and aggregates (frost verifies the aggregate).
fn frost_signs(
    pkp: &frost_ed25519::keys::PublicKeyPackage,
    kps: &[&frost_ed25519::keys::KeyPackage],
) -> bool {
    use frost_ed25519 as frost;
    let mut rng = rand_core_rng();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for kp in kps {
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let pkg = frost::SigningPackage::new(commitments, b"x");
    let mut shares = BTreeMap::new();
    for kp in kps {
        match frost::round2::sign(&pkg, &nonces[kp.identifier()], kp) {
            Ok(s) => {
                shares.insert(*kp.identifier(), s);
            }
            Err(_) => return false,
        }
    }
    frost::aggregate(&pkg, &shares, pkp).is_ok()
}

fn rand_core_rng() -> frost_ed25519::rand_core::OsRng {
    frost_ed25519::rand_core::OsRng
}

/// A relay that completes the store round for everyone but the last member (it tries to split
/// the outcome): that member never discards its acknowledged share; it is left undecided,
/// `rotate resume` shows what is missing, and the relay's completion file (every member's
/// signed acknowledgement) finishes it: all activate, eventually. Its share then signs.
#[test]
fn a_member_cut_off_after_acknowledging_keeps_its_share_and_resume_finishes_it() {
    let mut w = World::new(&["a", "b", "c"]);
    let d = w.d().to_path_buf();
    let key = w.dealer_group();
    let m1 = "story.manifest.toml";
    let o = w.try_plan(
        "refresh.toml",
        "30",
        &["--kind", "refresh", "--old-manifest", m1, "--timeout", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let old = |n: &str| Some(share(n, 1));
    let (relay, members) = w.ceremony(
        "refresh.toml",
        &[("a", old("a")), ("b", old("b")), ("c", old("c"))],
        m1,
        Some(("relay", "relay-withhold-store")),
    );
    assert!(relay.status.success(), "{}", describe(&relay, &members));
    assert!(
        members[0].status.success() && members[1].status.success(),
        "{}",
        describe(&relay, &members)
    );
    assert_eq!(
        members[2].status.code(),
        Some(1),
        "{}",
        describe(&relay, &members)
    );
    assert!(
        stderr(&members[2]).contains("undecided"),
        "{}",
        stderr(&members[2])
    );
    let pending = d.join("c/story.c.epoch2.share.pending");
    assert!(pending.exists(), "an acknowledged share is never discarded");
    assert!(!d.join(share("c", 2)).exists());
    // A new ceremony will not silently remove it.
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "rotate",
            "resume",
            "--plan",
            "refresh.toml",
            "--identity",
            "c",
            "--out",
            "c",
            "--json",
        ];
        args.extend_from_slice(extra);
        run_in(&d, &args)
    };
    let o = resume(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["state"], "undecided", "{shown}");
    assert_eq!(shown["missing"], serde_json::json!(["a", "b"]), "{shown}");
    // The relay's completion holds every signed acknowledgement.
    let completion = files_ending(&d, &[".completion.toml"])
        .into_iter()
        .find(|p| p.parent() == Some(d.as_path()))
        .expect("the relay wrote the completion");
    let o = resume(&["--completion", completion.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(done["state"], "activated", "{done}");
    assert!(!pending.exists() && d.join(share("c", 2)).exists());
    assert!(d.join("c/story.epoch2.manifest.toml").exists());
    // c's resumed share signs with a's.
    let m2 = "story.epoch2.manifest.toml";
    let run = w.start(m2, &[("a", share("a", 2)), ("c", share("c", 2))]);
    let signers = w.sign_and_verify(&run, m2, &key);
    assert!(signers.contains(&"c".to_string()), "{signers:?}");
}

/// Writes participant `name`'s config (as `World::start` does) serving these share files.
fn write_participant_config(w: &World, name: &str, shares: &[String]) {
    let mut config = format!(
        "mode = \"dev\"\nidentity = \"{name}\"\nlisten = \"127.0.0.1:{}\"\ncoordinators = [\"{}\"]\npolicy = \"{name}.policy.toml\"\naudit_log = \"{name}-audit/audit.log\"\n",
        w.ports[name], w.coordinator_key
    );
    for share in shares {
        config += &format!("\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"pass\"\n");
    }
    std::fs::write(w.d().join(format!("{name}.toml")), config).unwrap();
}

/// `conclave reload` of a node's config; panics with the daemon's answer unless it reloaded.
fn reload(w: &World, config: &str) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["reload", "--config", config, "--json"])
        .current_dir(w.d())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reload {config}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Points the coordinator's config at `manifest` and reloads it.
fn switch_coordinator(w: &World, manifest: &str) {
    let path = w.d().join("coordinator.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("manifests = [").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    let text = format!(
        "{}manifests = [\"{manifest}\"]{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&path, text).unwrap();
    let reply = reload(w, "coordinator.toml");
    assert!(
        reply["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g[1].as_u64() == manifest_epoch(manifest)),
        "{reply}"
    );
}

fn manifest_epoch(manifest: &str) -> Option<u64> {
    manifest
        .split(".epoch")
        .nth(1)
        .and_then(|s| s.split('.').next())
        .and_then(|e| e.parse().ok())
        .or(Some(1))
}

#[test]
fn a_refresh_and_a_reshare_switch_by_reload_while_signing_twenty_times_a_second_with_no_failure() {
    let mut w = World::new(&["a", "b", "c", "d"]);
    let d = w.d().to_path_buf();
    let key = w.dealer_group();
    let run = w.start(
        "story.manifest.toml",
        &[
            ("a", share("a", 1)),
            ("b", share("b", 1)),
            ("c", share("c", 1)),
        ],
    );
    w.sign_and_verify(&run, "story.manifest.toml", &key);
    // A client signing continuously, through the library, with its own manifest of epoch 1.
    let client_config = d.join("signer.toml");
    std::fs::write(
        &client_config,
        format!(
            "identity = \"client\"\ngroup = \"story\"\ntimeout_ms = 10000\nmanifests = [\"story.manifest.toml\"]\n[[coordinator]]\naddress = \"{}\"\nkey = \"{}\"\n",
            run.coordinator_addr, w.coordinator_key
        ),
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signer = {
        let stop = stop.clone();
        let config = conclave_client::ClientConfig::read(&client_config).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let signer = conclave_client::ThresholdSigner::connect(&config, None)
                    .await
                    .expect("connect");
                let mut ok = 0usize;
                let mut failed = Vec::new();
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    i += 1;
                    let msg = format!("continuous {i}");
                    match conclave_client::SigningService::sign(&signer, msg.as_bytes()).await {
                        Ok(sig) => {
                            conclave_client::SigningService::public_key(&signer)
                                .verify_strict(msg.as_bytes(), &sig)
                                .expect("verifies under the unchanged key");
                            ok += 1;
                        }
                        Err(e) => failed.push(format!("request {i}: {e}")),
                    }
                }
                signer.close().await;
                (ok, failed)
            })
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Refresh to epoch 2 while epoch 1 serves.
    w.plan(
        "refresh.toml",
        &["--kind", "refresh", "--old-manifest", "story.manifest.toml"],
    );
    let old = |n: &str| Some(share(n, 1));
    let (relay, members) = w.ceremony(
        "refresh.toml",
        &[("a", old("a")), ("b", old("b")), ("c", old("c"))],
        "story.manifest.toml",
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let m2 = "story.epoch2.manifest.toml";
    // The switch, with no outage: (1) every participant serves both epochs, (2) the
    // coordinator moves to the new manifest, (3) the old shares are dropped.
    for n in ["a", "b", "c"] {
        write_participant_config(&w, n, &[share(n, 1), share(n, 2)]);
        let reply = reload(&w, &format!("{n}.toml"));
        assert!(
            reply["changes"].to_string().contains("added: story@2"),
            "{reply}"
        );
    }
    switch_coordinator(&w, m2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for n in ["a", "b", "c"] {
        write_participant_config(&w, n, &[share(n, 2)]);
        let reply = reload(&w, &format!("{n}.toml"));
        assert!(
            reply["changes"].to_string().contains("removed: story@1"),
            "{reply}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Reshare to 3-of-4, adding d, while epoch 2 serves.
    w.plan(
        "reshare.toml",
        &[
            "--kind",
            "reshare",
            "--old-manifest",
            m2,
            "-t",
            "3",
            "-p",
            "a",
            "-p",
            "b",
            "-p",
            "c",
            "-p",
            &w.spec("d"),
        ],
    );
    let e2 = |n: &str| Some(share(n, 2));
    let (relay, members) = w.ceremony(
        "reshare.toml",
        &[("a", e2("a")), ("b", e2("b")), ("c", e2("c")), ("d", None)],
        m2,
        None,
    );
    assert!(
        relay.status.success() && members.iter().all(|m| m.status.success()),
        "{}",
        describe(&relay, &members)
    );
    let m3 = "story.epoch3.manifest.toml";
    // d is new: started on its epoch-3 share alone.
    let policy = std::fs::read_to_string(d.join("a.policy.toml")).unwrap();
    std::fs::write(d.join("d.policy.toml"), policy).unwrap();
    write_participant_config(&w, "d", &[share("d", 3)]);
    if let Some(mut r) = w.reserved.remove("d") {
        r.release();
    }
    let mut child = Command::new(bin())
        .args(["participant", "--config", "d.toml"])
        .current_dir(&d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("d.log")).unwrap())
        .spawn()
        .unwrap();
    assert!(first_line(&mut child).contains("listening on"));
    let _d = Running {
        children: vec![child],
        coordinator_addr: String::new(),
        log: d.join("d.log"),
    };
    for n in ["a", "b", "c"] {
        write_participant_config(&w, n, &[share(n, 2), share(n, 3)]);
        reload(&w, &format!("{n}.toml"));
    }
    switch_coordinator(&w, m3);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for n in ["a", "b", "c"] {
        write_participant_config(&w, n, &[share(n, 3)]);
        reload(&w, &format!("{n}.toml"));
    }
    // Keep signing a little on epoch 3, then stop.
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = signer.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 40, "only {ok} signatures");
    eprintln!("reload story: {ok} signatures through a refresh and a reshare, 0 failed");
    // Epoch 3 is 3-of-4 and d signs.
    let mut seen_d = false;
    for _ in 0..10 {
        let signers = w.sign_and_verify(&run, m3, &key);
        assert_eq!(signers.len(), 3);
        seen_d |= signers.contains(&"d".to_string());
        if seen_d {
            break;
        }
    }
    assert!(seen_d, "d never signed");
    // The old shares are in service no more: retire works.
    let mut args: Vec<String> = vec![
        "rotate".into(),
        "retire".into(),
        "--share".into(),
        share("a", 1),
        "--manifest".into(),
        m3.into(),
        "--yes".into(),
    ];
    args.extend(w.client_args(&run));
    let o = Command::new(bin())
        .args(&args)
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
