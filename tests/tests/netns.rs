//! Multi-host over Linux network namespaces: every node is a "host" of its own (a network
//! namespace with one veth link to a bridge in a "switch" namespace and its own address in
//! 192.0.2.0/24, TEST-NET-1), and every `conclave` process (ceremonies, daemons, the client)
//! runs inside its host's namespace with `ip netns exec`. The story: node init on each host,
//! a 2-of-3 DKG across the namespaces, signing from a client host; one participant's link cut
//! (`ip link set eth0 down` inside its namespace): signing goes on with the other two, the
//! coordinator notices the loss, a second cut leaves fewer than t and signing fails closed;
//! both links restored: the cut nodes sign again; then a reshare to 3-of-4 adding a fourth
//! host, the switch (daemons restarted on the new shares, docs/ROTATION.md step 4) and
//! signatures under the same group public key.
//!
//! Nothing touches the root namespace's network configuration: the bridge lives in the
//! switch namespace, and each veth pair is created there with its other end moved straight
//! into a host namespace. Everything is removed when the test ends, panics included.
//!
//! Needs root and iproute2. Without them the test prints a loud SKIPPED notice and returns,
//! unless `CI` or `CONCLAVE_REQUIRE_NETNS=1` is set: then it fails with the reason.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{bin, openssl_verifies, signers, DEFAULT_POLICY};

/// Namespace names start with this, then the test process's pid: leftovers of a run whose
/// process is gone are recognised (and removed) by the next run.
const PREFIX: &str = "ccnt";
const GROUP: &str = "nt";
/// Ports are fixed: every host has a port space of its own.
const COORDINATOR_PORT: u16 = 7000;
const PARTICIPANT_PORT: u16 = 7001;
const RELAY_PORT: u16 = 7400;
/// Hosts and their addresses (TEST-NET-1, RFC 5737: never routed anywhere).
const HOSTS: &[(&str, &str)] = &[
    ("coord", "192.0.2.1"),
    ("p1", "192.0.2.11"),
    ("p2", "192.0.2.12"),
    ("p3", "192.0.2.13"),
    ("p4", "192.0.2.14"),
    ("client", "192.0.2.100"),
];
const PASSPHRASE: &str = "netns-test-passphrase\n";

static RUN: AtomicUsize = AtomicUsize::new(0);

fn addr(host: &str) -> &'static str {
    HOSTS
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, a)| *a)
        .expect("known host")
}

/// Why this machine cannot run the test, if it cannot.
fn missing_capability() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!(
            "not root (euid {euid}): creating network namespaces, veth pairs and bridges needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
        ));
    }
    ["ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|ip| {
            Command::new(ip)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| {
            "no `ip` binary (iproute2) on PATH or in /usr/sbin, /sbin: apt-get install iproute2"
                .to_owned()
        })
}

fn required() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    ci || std::env::var("CONCLAVE_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

/// The machine cannot run the test: fail when it is required, else say so loudly.
fn unavailable(reason: &str) {
    assert!(
        !required(),
        "the multi-host netns test cannot run here, and CI or CONCLAVE_REQUIRE_NETNS=1 requires it: {reason}\n\
         It needs root and iproute2 (ip netns, veth, bridge); .ci/run installs iproute2."
    );
    let bar = "!".repeat(78);
    // Straight to the stderr handle, not eprintln!: the test harness captures (and hides) what
    // the print macros write in a passing test, and this must be seen.
    let notice = format!(
        "\n{bar}\n\
         SKIPPED: netns test needs root and iproute2: {reason}\n\
         The multi-host test (DKG, signing, a link cut and restored, a reshare, each node in a\n\
         network namespace of its own) did NOT run. Run it as root with iproute2 installed;\n\
         set CONCLAVE_REQUIRE_NETNS=1 (CI sets CI) to make this a failure instead.\n\
         {bar}\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
}

/// A finished one-shot process.
struct Ran {
    label: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "{} exited {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.label, self.code, self.stdout, self.stderr
        )
    }
}

/// A one-shot process still running; killed if dropped unfinished (a panic meanwhile).
struct Pending {
    label: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A long-running daemon.
struct Daemon {
    label: String,
    child: Child,
}

/// The namespaces, the hosts' directories (one per host, as if on separate disks) and the
/// processes; all removed on drop.
struct Lab {
    ip: PathBuf,
    dir: tempfile::TempDir,
    tag: String,
    namespaces: Vec<String>,
    daemons: Vec<Daemon>,
    runs: AtomicUsize,
    coordinator_key: String,
    /// The client host's manifest copy (relative to its directory).
    client_manifest: String,
}

impl Lab {
    /// Creates the namespaces and links, or says why it cannot.
    fn new() -> Result<Lab, String> {
        let ip = missing_capability()?;
        remove_leftovers(&ip);
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("conclave-netns-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut lab = Lab {
            ip,
            dir,
            tag,
            namespaces: vec![],
            daemons: vec![],
            runs: AtomicUsize::new(0),
            coordinator_key: String::new(),
            client_manifest: format!("{GROUP}.manifest.toml"),
        };
        fs::create_dir(lab.logs()).map_err(|e| format!("logs dir: {e}"))?;
        // The switch: a namespace holding only the bridge.
        let sw = lab.ns("sw");
        lab.ip_ok(&["netns", "add", &sw])?;
        lab.namespaces.push(sw.clone());
        lab.ip_ok(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        lab.ip_ok(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (host, address) in HOSTS {
            let ns = lab.ns(host);
            lab.ip_ok(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            // One veth pair per host, made in the switch namespace: "v<host>" stays there on
            // the bridge, "eth0" goes straight into the host's namespace.
            let port = format!("v{host}");
            lab.ip_ok(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            lab.ip_ok(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            lab.ip_ok(&["-n", &sw, "link", "set", &port, "up"])?;
            lab.ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            lab.ip_ok(&["-n", &ns, "link", "set", "eth0", "up"])?;
            lab.ip_ok(&["-n", &ns, "link", "set", "lo", "up"])?;
            let d = lab.host_dir(host);
            fs::create_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(lab)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn ip_ok(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.ip)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.ip.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Panics with `msg` and the tail of every daemon's log.
    fn fail(&self, msg: &str) -> ! {
        let mut logs: Vec<PathBuf> = fs::read_dir(self.logs())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        let mut tails = String::new();
        for log in logs {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            tails += &format!("\n===== {} (last 25 lines)\n{tail}\n", log.display());
        }
        panic!("{msg}\n\ndaemon logs:{tails}");
    }

    /// Like `assert!`, with the daemons' logs in the message.
    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// Sets a host's link up or down, from inside its namespace.
    fn link(&self, host: &str, up: bool) {
        let ns = self.ns(host);
        let state = if up { "up" } else { "down" };
        if let Err(e) = self.ip_ok(&["-n", &ns, "link", "set", "eth0", state]) {
            self.fail(&e);
        }
    }

    /// Starts `conclave ARGS` in `host`'s namespace, in its directory; output to files.
    fn spawn(&self, host: &str, label: &str, args: &[&str]) -> Pending {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let out = self.logs().join(format!("{n:03}-{label}.out"));
        let err = self.logs().join(format!("{n:03}-{label}.err"));
        let child = Command::new(&self.ip)
            .args(["netns", "exec", &self.ns(host)])
            .arg(bin())
            .args(args)
            .current_dir(self.host_dir(host))
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("cannot start {label}: {e}")));
        Pending {
            label: label.to_owned(),
            child: Some(child),
            out,
            err,
        }
    }

    /// Waits for every process, killing them all (and failing) after `limit`.
    fn wait_all(&self, mut pending: Vec<Pending>, limit: Duration) -> Vec<Ran> {
        let deadline = Instant::now() + limit;
        loop {
            let done = pending.iter_mut().all(|p| {
                p.child
                    .as_mut()
                    .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
            });
            if done || Instant::now() > deadline {
                let ran: Vec<Ran> = pending
                    .iter_mut()
                    .map(|p| {
                        let mut c = p.child.take().expect("child");
                        let running = matches!(c.try_wait(), Ok(None));
                        if running {
                            let _ = c.kill();
                        }
                        let status = c.wait().expect("wait");
                        Ran {
                            label: if running {
                                format!("{} (KILLED: still running after {limit:?})", p.label)
                            } else {
                                p.label.clone()
                            },
                            code: status.code(),
                            stdout: fs::read_to_string(&p.out).unwrap_or_default(),
                            stderr: fs::read_to_string(&p.err).unwrap_or_default(),
                        }
                    })
                    .collect();
                if !done {
                    let all: Vec<String> = ran.iter().map(Ran::describe).collect();
                    self.fail(&format!(
                        "processes still running after {limit:?}:\n{}",
                        all.join("\n")
                    ));
                }
                return ran;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn run(&self, host: &str, label: &str, args: &[&str], limit: Duration) -> Ran {
        let p = self.spawn(host, label, args);
        self.wait_all(vec![p], limit).pop().expect("one")
    }

    /// Runs and requires exit 0.
    fn run_ok(&self, host: &str, label: &str, args: &[&str]) -> Ran {
        let ran = self.run(host, label, args, Duration::from_secs(30));
        if ran.code != Some(0) {
            self.fail(&format!("{label} failed:\n{}", ran.describe()));
        }
        ran
    }

    /// `conclave node init` on a host; its public key.
    fn node_init(&self, host: &str) -> String {
        let ran = self.run_ok(host, "node-init", &["node", "init", "--out", "identity"]);
        ran.stdout.trim().to_owned()
    }

    /// Starts a daemon (`participant` or `coordinator`) in `host`'s namespace and waits for
    /// its "listening on" line.
    fn start_daemon(&mut self, host: &str, label: &str, role: &str, config: &str) {
        let out = self.logs().join(format!("{label}.out"));
        let log = self.logs().join(format!("{label}.log"));
        let child = Command::new(&self.ip)
            .args(["netns", "exec", &self.ns(host)])
            .arg(bin())
            .args([role, "--config", config])
            .current_dir(self.host_dir(host))
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&log).expect("log file"))
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("cannot start {label}: {e}")));
        self.daemons.push(Daemon {
            label: label.to_owned(),
            child,
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let printed = fs::read_to_string(&out).unwrap_or_default();
            if printed.contains("listening on") {
                return;
            }
            let daemon = self.daemons.last_mut().expect("daemon");
            if let Ok(Some(status)) = daemon.child.try_wait() {
                self.fail(&format!("{label} exited ({status}) before listening"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("{label} printed no \"listening on\" line in 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_daemons(&mut self) {
        for mut d in self.daemons.drain(..) {
            let _ = d.child.kill();
            let _ = d.child.wait();
            eprintln!("netns: stopped {}", d.label);
        }
    }

    fn client_args(&self, cmd: &str) -> Vec<String> {
        vec![
            cmd.into(),
            "--coordinator".into(),
            format!("{}:{COORDINATOR_PORT}", addr("coord")),
            "--coordinator-key".into(),
            self.coordinator_key.clone(),
            "--identity".into(),
            "identity".into(),
            "--group".into(),
            GROUP.into(),
        ]
    }

    /// `conclave status --json` from the client host: how many participants the coordinator
    /// reaches.
    fn reachable(&self) -> u64 {
        let mut args = self.client_args("status");
        args.push("--json".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = self.run("client", "status", &refs, Duration::from_secs(20));
        if ran.code != Some(0) {
            self.fail(&format!("status failed:\n{}", ran.describe()));
        }
        let v: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| self.fail(&format!("status json: {e}\n{}", ran.describe())));
        v["reachable"]
            .as_u64()
            .unwrap_or_else(|| self.fail(&format!("no reachable in {v}")))
    }

    fn wait_reachable(&self, want: u64, limit: Duration, why: &str) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.reachable();
            if got == want {
                return started.elapsed();
            }
            if started.elapsed() > limit {
                self.fail(&format!(
                    "{why}: the coordinator reaches {got} participants after {limit:?}, expected {want}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `conclave sign --json` from the client host, with the client's manifest copy.
    fn sign(&self, message: &str, timeout_s: u32) -> (Ran, PathBuf) {
        let n = self.runs.load(Ordering::SeqCst);
        let file = format!("msg-{n:03}.txt");
        let path = self.host_dir("client").join(&file);
        fs::write(&path, message).expect("message file");
        let mut args = self.client_args("sign");
        let timeout = timeout_s.to_string();
        args.extend(
            [
                "--manifest",
                &self.client_manifest,
                "--message-file",
                &file,
                "--json",
                "--timeout",
                &timeout,
            ]
            .map(String::from),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let limit = Duration::from_secs(u64::from(timeout_s) + 15);
        (self.run("client", "sign", &refs, limit), path)
    }

    /// Signs, then checks the signature under `key` with ed25519-dalek `verify_strict` and
    /// with `conclave verify` on the client host; returns the signers.
    fn sign_ok(&self, message: &str, key: &[u8; 32]) -> Vec<String> {
        let (ran, path) = self.sign(message, 10);
        if ran.code != Some(0) {
            self.fail(&format!("sign {message:?} failed:\n{}", ran.describe()));
        }
        let json: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| self.fail(&format!("sign json: {e}\n{}", ran.describe())));
        let sig_hex = json["signature"].as_str().unwrap_or_default().to_owned();
        let sig = hex::decode(&sig_hex).unwrap_or_default();
        assert_eq!(json["public_key"], hex::encode(key), "{}", ran.describe());
        let vk = ed25519_dalek::VerifyingKey::from_bytes(key).expect("group key");
        let signature = ed25519_dalek::Signature::from_slice(&sig)
            .unwrap_or_else(|e| self.fail(&format!("signature {sig_hex:?}: {e}")));
        if let Err(e) = vk.verify_strict(message.as_bytes(), &signature) {
            self.fail(&format!("verify_strict of {message:?}: {e}"));
        }
        let file = path.file_name().and_then(|f| f.to_str()).expect("file");
        let verify = [
            "verify",
            "--manifest",
            &self.client_manifest,
            "--signature",
            &sig_hex,
            "--message-file",
            file,
        ];
        let v = self.run("client", "verify", &verify, Duration::from_secs(20));
        if v.code != Some(0) {
            self.fail(&format!("conclave verify:\n{}", v.describe()));
        }
        signers(&json)
    }

    /// Signs until every name in `want` has been among the signers, or fails after `limit`.
    fn sign_until_seen(&self, what: &str, want: &[&str], key: &[u8; 32], limit: Duration) {
        let started = Instant::now();
        let mut seen = BTreeSet::new();
        let mut i = 0;
        while !want.iter().all(|w| seen.contains(*w)) {
            if started.elapsed() > limit {
                self.fail(&format!(
                    "{what}: after {i} signatures in {limit:?} the signers were {seen:?}, never all of {want:?}"
                ));
            }
            let s = self.sign_ok(&format!("{what} #{i}"), key);
            eprintln!("netns: {what} #{i}: signers {s:?}");
            seen.extend(s);
            i += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn write(&self, host: &str, file: &str, text: &str) {
        fs::write(self.host_dir(host).join(file), text).expect("write host file");
    }

    fn read(&self, host: &str, file: &str) -> String {
        fs::read_to_string(self.host_dir(host).join(file))
            .unwrap_or_else(|e| self.fail(&format!("{host}/{file}: {e}")))
    }

    /// Copies a file from one host's directory to another's (what an operator does with scp).
    fn copy(&self, from: &str, to: &str, file: &str) {
        let text = self.read(from, file);
        self.write(to, file, &text);
    }

    /// Writes the participant config of `host` for `share`.
    fn participant_config(&self, host: &str, share: &str) {
        self.write(
            host,
            "participant.toml",
            &format!(
                "mode = \"dev\"\nidentity = \"identity\"\nlisten = \"{}:{PARTICIPANT_PORT}\"\ncoordinators = [\"{}\"]\npolicy = \"policy.toml\"\naudit_log = \"audit/audit.log\"\n\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"pass\"\n",
                addr(host),
                self.coordinator_key
            ),
        );
    }

    fn coordinator_config(&self, client_key: &str, manifest: &str) {
        self.write(
            "coord",
            "coordinator.toml",
            &format!(
                "mode = \"dev\"\nidentity = \"identity\"\nlisten = \"{}:{COORDINATOR_PORT}\"\nclients = [\"{client_key}\"]\nmanifests = [\"{manifest}\"]\nparticipant_timeout_ms = 1500\naudit_log = \"audit/audit.log\"\n",
                addr("coord")
            ),
        );
    }

    /// The group key (32 bytes) of a manifest on `host`.
    fn group_key(&self, host: &str, manifest: &str) -> [u8; 32] {
        let ran = self.run_ok(host, "pubkey", &["pubkey", "--manifest", manifest]);
        let mut key = [0u8; 32];
        hex::decode_to_slice(ran.stdout.trim(), &mut key)
            .unwrap_or_else(|e| self.fail(&format!("pubkey {:?}: {e}", ran.stdout)));
        key
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_daemons();
        for ns in self.namespaces.iter().rev() {
            kill_pids_in(&self.ip, ns);
            let _ = Command::new(&self.ip)
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Kills whatever still runs in one of this test's namespaces (only this test starts
/// processes there).
fn kill_pids_in(ip: &Path, ns: &str) {
    let Ok(out) = Command::new(ip).args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) with a pid read from this namespace and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Removes namespaces left by a run of this test whose process is gone (killed before its
/// drop could run).
fn remove_leftovers(ip: &Path) {
    let Ok(out) = Command::new(ip).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing leftover namespace {name}");
            kill_pids_in(ip, name);
            let _ = Command::new(ip).args(["netns", "del", name]).status();
        }
    }
}

/// The plan fingerprint in a `keygen dkg plan` / `rotate plan` output ("--expect-plan FP").
fn plan_fingerprint(lab: &Lab, ran: &Ran) -> String {
    let text = &ran.stderr;
    text.rfind("--expect-plan ")
        .and_then(|at| {
            text[at + "--expect-plan ".len()..]
                .split_whitespace()
                .next()
        })
        .map(str::to_owned)
        .unwrap_or_else(|| lab.fail(&format!("no plan fingerprint:\n{}", ran.describe())))
}

/// Signs from the client host and requires a typed failure (exit 1) with no signature;
/// returns the error code.
fn sign_fails_closed(lab: &Lab, message: &str) -> String {
    let (ran, _) = lab.sign(message, 6);
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
    let code = json["error"].as_str().unwrap_or_default().to_owned();
    if ran.code != Some(1)
        || json.get("signature").is_some()
        || !["signer_unavailable", "deadline_exceeded"].contains(&code.as_str())
    {
        lab.fail(&format!(
            "{message}: expected a typed failure (exit 1, signer_unavailable or deadline_exceeded, no signature):\n{}",
            ran.describe()
        ));
    }
    code
}

fn all_succeeded(lab: &Lab, what: &str, ran: &[Ran]) {
    if ran.iter().any(|r| r.code != Some(0)) {
        let all: Vec<String> = ran.iter().map(Ran::describe).collect();
        lab.fail(&format!("{what} failed:\n{}", all.join("\n")));
    }
}

#[test]
fn dkg_signing_link_cut_and_reshare_across_network_namespaces() {
    let started = Instant::now();
    let mut lab = match Lab::new() {
        Ok(lab) => lab,
        Err(reason) => return unavailable(&reason),
    };
    let phase =
        |what: &str| eprintln!("netns: [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    phase(&format!(
        "namespaces {}-{{sw,coord,p1..p4,client}} up, files in {}",
        lab.tag,
        lab.dir.path().display()
    ));

    // 1. Identities: node init on each host.
    let mut keys = BTreeMap::new();
    for (host, _) in HOSTS {
        keys.insert(*host, lab.node_init(host));
    }
    lab.coordinator_key = keys["coord"].clone();
    for p in ["p1", "p2", "p3", "p4"] {
        lab.write(p, "pass", PASSPHRASE);
        let policy = DEFAULT_POLICY
            .replace("{A}", &keys["client"])
            .replace("groups = [\"it\"]", &format!("groups = [\"{GROUP}\"]"));
        assert!(policy.contains(&format!("\"{GROUP}\"")), "{policy}");
        lab.write(p, "policy.toml", &policy);
    }
    let relay_spec = format!(
        "coordinator={}@{}:{RELAY_PORT}",
        keys["coord"],
        addr("coord")
    );
    let spec = |p: &str| format!("{p}={}@{}:{PARTICIPANT_PORT}", keys[p], addr(p));

    // 2. DKG, 2-of-3: the plan written on the coordinator host and copied to p1..p3; the
    //    relay in the coordinator's namespace, each join in its participant's namespace.
    let (s1, s2, s3) = (spec("p1"), spec("p2"), spec("p3"));
    let plan = lab.run_ok(
        "coord",
        "dkg-plan",
        &[
            "keygen",
            "dkg",
            "plan",
            "--group",
            GROUP,
            "--threshold",
            "2",
            "--coordinator",
            &relay_spec,
            "-p",
            &s1,
            "-p",
            &s2,
            "-p",
            &s3,
            "--timeout",
            "20",
            "--join-timeout",
            "30",
            "--out",
            "dkg-plan.toml",
        ],
    );
    let fp = plan_fingerprint(&lab, &plan);
    let mut pending = vec![lab.spawn(
        "coord",
        "dkg-relay",
        &[
            "keygen",
            "dkg",
            "relay",
            "--plan",
            "dkg-plan.toml",
            "--identity",
            "identity",
            "--out",
            ".",
            "--json",
        ],
    )];
    for p in ["p1", "p2", "p3"] {
        lab.copy("coord", p, "dkg-plan.toml");
        pending.push(lab.spawn(
            p,
            &format!("dkg-join-{p}"),
            &[
                "keygen",
                "dkg",
                "join",
                "--plan",
                "dkg-plan.toml",
                "--identity",
                "identity",
                "--out",
                ".",
                "--audit-log",
                "ceremony-audit/audit.log",
                "--mode",
                "dev",
                "--kdf",
                "light",
                "--passphrase-file",
                "pass",
                "--expect-plan",
                &fp,
                "--json",
            ],
        ));
    }
    let ran = lab.wait_all(pending, Duration::from_secs(45));
    all_succeeded(&lab, "DKG across namespaces", &ran);
    let manifest1 = format!("{GROUP}.manifest.toml");
    let relay_manifest = lab.read("coord", &manifest1);
    for p in ["p1", "p2", "p3"] {
        assert_eq!(
            lab.read(p, &manifest1),
            relay_manifest,
            "{p}'s manifest differs from the relay's"
        );
        assert!(lab.host_dir(p).join(format!("{GROUP}.{p}.share")).exists());
    }
    let key = lab.group_key("coord", &manifest1);
    lab.copy("coord", "client", &manifest1);
    phase(&format!("DKG done, group key {}", hex::encode(key)));

    // 3. Epoch 1 in service: p1..p3 and the coordinator, each on its own host.
    for p in ["p1", "p2", "p3"] {
        lab.participant_config(p, &format!("{GROUP}.{p}.share"));
        lab.start_daemon(p, &format!("{p}-epoch1"), "participant", "participant.toml");
    }
    lab.coordinator_config(&keys["client"], &manifest1);
    lab.start_daemon("coord", "coord-epoch1", "coordinator", "coordinator.toml");
    lab.wait_reachable(3, Duration::from_secs(20), "epoch 1 start");
    let members: BTreeSet<&str> = ["p1", "p2", "p3"].into();
    for i in 0..3 {
        let s = lab.sign_ok(&format!("across hosts #{i}"), &key);
        lab.check(
            s.len() == 2 && s.iter().all(|n| members.contains(n.as_str())),
            || format!("2-of-3 signs with 2 of p1..p3: {s:?}"),
        );
    }
    phase("3 signatures from the client host verified");

    // 4. p2's link cut. Right away (before the coordinator can know) signing still works,
    //    without p2; then the coordinator notices the lost connection.
    lab.link("p2", false);
    let s = lab.sign_ok("p2 cut off", &key);
    lab.check(s.len() == 2 && !s.contains(&"p2".to_owned()), || {
        format!("p2 is cut off, the other two sign: {s:?}")
    });
    phase(&format!("p2 cut: signed by {s:?}"));
    let noticed = lab.wait_reachable(2, Duration::from_secs(30), "p2 cut");
    phase(&format!("coordinator lost p2 after {noticed:?} more"));
    let mut s = lab.sign_ok("p2 still cut off", &key);
    s.sort();
    lab.check(s == ["p1", "p3"], || {
        format!("the two reachable members sign: {s:?}")
    });

    // 5. p3 cut too: one member left of 2 needed. Signing fails closed (no signature), first
    //    while the coordinator still counts p3 (its request times out), then once it has seen
    //    the connection go (refused at once: 1 reachable of 2 needed).
    lab.link("p3", false);
    let code = sign_fails_closed(&lab, "below the threshold, p3 just cut");
    phase(&format!("p2 and p3 cut: signing failed closed ({code})"));
    let noticed = lab.wait_reachable(1, Duration::from_secs(30), "p3 cut");
    let code = sign_fails_closed(&lab, "below the threshold, p3 gone");
    lab.check(code == "signer_unavailable", || {
        format!("1 reachable of 2 needed: {code}")
    });
    phase(&format!(
        "coordinator lost p3 after {noticed:?} more; signing still fails closed ({code})"
    ));

    // 6. Both links restored: the coordinator reconnects to both and they sign again.
    //    (Both cuts last until the coordinator has dropped the connection. A node whose
    //    connection survives a short cut is a different story: the request that timed out
    //    drops its pooled commitments, the coordinator refills a pool only when it picks the
    //    node or reconnects, and it picks nodes with pooled commitments first, so while t
    //    others are healthy it is not asked again. Found with this test; not covered here.)
    lab.link("p2", true);
    lab.link("p3", true);
    let back = lab.wait_reachable(3, Duration::from_secs(30), "links restored");
    phase(&format!("links restored: 3 reachable after {back:?}"));
    lab.sign_until_seen("restored", &["p2", "p3"], &key, Duration::from_secs(25));
    phase("p2 and p3 signed again");

    // 7. Reshare to 3-of-4, adding p4 (a new host), while epoch 1 serves: planned on the
    //    coordinator host, relayed there, joined on each member's host; p4 has no manifest
    //    and checks the group key it was told out of band.
    let s4 = spec("p4");
    let plan = lab.run_ok(
        "coord",
        "reshare-plan",
        &[
            "rotate",
            "plan",
            "--kind",
            "reshare",
            "--old-manifest",
            &manifest1,
            "-t",
            "3",
            "-p",
            "p1",
            "-p",
            "p2",
            "-p",
            "p3",
            "-p",
            &s4,
            "--coordinator",
            &relay_spec,
            "--timeout",
            "20",
            "--join-timeout",
            "30",
            "--out",
            "reshare-plan.toml",
            "--yes",
        ],
    );
    let fp = plan_fingerprint(&lab, &plan);
    let mut pending = vec![lab.spawn(
        "coord",
        "reshare-relay",
        &[
            "rotate",
            "relay",
            "--plan",
            "reshare-plan.toml",
            "--identity",
            "identity",
            "--out",
            ".",
            "--json",
            "--yes",
        ],
    )];
    let key_hex = hex::encode(key);
    for p in ["p1", "p2", "p3", "p4"] {
        lab.copy("coord", p, "reshare-plan.toml");
        let old_share = format!("{GROUP}.{p}.share");
        let mut args = vec![
            "rotate",
            "join",
            "--plan",
            "reshare-plan.toml",
            "--identity",
            "identity",
            "--passphrase-file",
            "pass",
            "--out",
            ".",
            "--audit-log",
            "ceremony-audit/audit.log",
            "--mode",
            "dev",
            "--kdf",
            "light",
            "--expect-plan",
            &fp,
            "--json",
        ];
        if p == "p4" {
            args.extend(["--expect-group-key", &key_hex]);
        } else {
            args.extend([
                "--old-manifest",
                &manifest1,
                "--old-share",
                &old_share,
                "--old-passphrase-file",
                "pass",
            ]);
        }
        pending.push(lab.spawn(p, &format!("reshare-join-{p}"), &args));
    }
    let ran = lab.wait_all(pending, Duration::from_secs(45));
    all_succeeded(&lab, "reshare across namespaces", &ran);
    let manifest2 = format!("{GROUP}.epoch2.manifest.toml");
    let relay_manifest = lab.read("coord", &manifest2);
    for p in ["p1", "p2", "p3", "p4"] {
        assert_eq!(
            lab.read(p, &manifest2),
            relay_manifest,
            "{p}'s epoch-2 manifest differs from the relay's"
        );
    }
    assert_eq!(
        lab.group_key("coord", &manifest2),
        key,
        "the reshare kept the group key"
    );
    let inspect = lab.run_ok(
        "p4",
        "share-inspect",
        &[
            "share",
            "inspect",
            "--json",
            &format!("{GROUP}.p4.epoch2.share"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("inspect json");
    assert_eq!(
        (v["epoch"].as_u64(), v["threshold"].as_u64()),
        (Some(2), Some(3)),
        "{v}"
    );
    phase("reshare to 3-of-4 done");

    // 8. Switch: every daemon restarted on its epoch-2 share / the epoch-2 manifest; the
    //    client uses its copy of the new manifest. Signatures need 3 and verify under the
    //    same key; the new member p4 signs.
    lab.stop_daemons();
    for p in ["p1", "p2", "p3", "p4"] {
        lab.participant_config(p, &format!("{GROUP}.{p}.epoch2.share"));
        lab.start_daemon(p, &format!("{p}-epoch2"), "participant", "participant.toml");
    }
    lab.coordinator_config(&keys["client"], &manifest2);
    lab.start_daemon("coord", "coord-epoch2", "coordinator", "coordinator.toml");
    lab.copy("coord", "client", &manifest2);
    lab.client_manifest = manifest2.clone();
    lab.wait_reachable(4, Duration::from_secs(20), "epoch 2 start");
    let s = lab.sign_ok("epoch 2, same key", &key);
    lab.check(s.len() == 3, || format!("3-of-4 signs with 3: {s:?}"));
    lab.sign_until_seen("epoch 2", &["p4"], &key, Duration::from_secs(20));
    // And OpenSSL agrees that it is one plain Ed25519 key throughout.
    let (ran, _) = lab.sign("checked by openssl", 10);
    lab.check(ran.code == Some(0), || ran.describe());
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
    let sig = hex::decode(json["signature"].as_str().expect("signature")).expect("hex");
    let pem = lab.run_ok(
        "client",
        "pubkey-pem",
        &["pubkey", "--format", "pem", "--manifest", &manifest1],
    );
    lab.check(
        openssl_verifies(lab.dir.path(), &pem.stdout, b"checked by openssl", &sig),
        || "OpenSSL rejects the epoch-2 signature under the epoch-1 key".into(),
    );
    phase("epoch 2 signs under the same key (dalek, conclave verify, OpenSSL)");
}
