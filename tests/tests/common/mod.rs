#![allow(dead_code)] // each test file uses a different part
//! Shared by the integration tests: a t-of-n cluster of real `conclave` processes on
//! 127.0.0.1, made with the CLI exactly as an operator would (node init, keygen dealer, config
//! files), and torn down (processes killed, files removed) when dropped.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conclave-testbin"))
}

/// Runs the binary to completion.
pub fn conclave(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run conclave")
}

/// Runs the binary with `input` on stdin.
pub fn conclave_with_input(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn conclave");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait conclave")
}

/// A UDP port on 127.0.0.1 chosen by the OS, held by the returned socket until the caller
/// drops it right before starting the process that binds the port (so no other process can
/// take it in between).
pub struct Reserved {
    socket: Option<UdpSocket>,
    pub port: u16,
}

impl Reserved {
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind port 0");
        let port = socket.local_addr().expect("addr").port();
        Self {
            socket: Some(socket),
            port,
        }
    }

    /// Frees the port for the process about to bind it.
    pub fn release(&mut self) -> u16 {
        self.socket = None;
        self.port
    }
}

pub fn stdout_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The `signers` names of a `conclave sign --json` output.
pub fn signers(json: &serde_json::Value) -> Vec<String> {
    json["signers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// How one participant process should (mis)behave.
#[derive(Clone, Debug, Default)]
pub struct ParticipantSetup {
    /// Start it with another identity than the one in the manifest.
    pub impostor: bool,
    /// List a coordinator key other than the real one in its config.
    pub wrong_coordinator: bool,
    /// Environment for the fault-injection hook (e.g. "corrupt-shares").
    pub fault: Option<&'static str>,
    /// Its policy file's text instead of the default (which allows client A everything);
    /// `{A}` and `{B}` stand for the two clients' identity keys.
    pub policy: Option<String>,
    /// Start it under `ulimit -f BLOCKS` (512-byte blocks): its files, the audit log among
    /// them, cannot grow beyond that.
    pub file_size_limit_blocks: Option<u32>,
    /// More config lines (top-level keys, e.g. `metrics_listen = "127.0.0.1:0"`).
    pub extra_config: Option<String>,
}

/// The policy every participant holds unless a test gives another: client A ("it-client")
/// may have group "it" sign anything; client B is not named (default deny).
pub const DEFAULT_POLICY: &str = "[[client]]\nname = \"it-client\"\nkey = \"{A}\"\ngroups = [\"it\"]\nkinds = [\"raw\", \"ssh-auth\", \"transition\", \"sshsig:git\", \"sshsig:file\"]\nmax_message_bytes = 65536\nrate = \"100000/min\"\n";

/// A chaos proxy (`conclave sim proxy`) in front of every participant.
#[derive(Clone, Copy, Debug)]
pub struct ProxyOpts {
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
}

/// A running cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub group: String,
    pub manifest: PathBuf,
    pub coordinator_addr: String,
    pub coordinator_key: String,
    pub client_dir: PathBuf,
    /// A second client, pinned at the coordinator but named in no default policy.
    pub client_b_dir: PathBuf,
    pub client_key: String,
    pub client_b_key: String,
    pub participants: Vec<Option<Child>>,
    coordinator: Option<Child>,
    proxies: Vec<Child>,
    pub n: usize,
    verbose: bool,
    /// Metrics endpoints (`host:port`) by node name, for nodes started with `metrics_listen`.
    pub metrics: std::collections::BTreeMap<String, String>,
}

impl Cluster {
    /// Makes keys with the CLI, starts `n` participants and a coordinator.
    pub fn start(t: usize, n: usize, setups: Vec<ParticipantSetup>) -> Cluster {
        Self::start_with(t, n, setups, None)
    }

    /// Like `start`, with more lines in the coordinator's config (`coordinator_extra`) and in
    /// each participant's (`ParticipantSetup::extra_config`).
    pub fn start_ops(
        t: usize,
        n: usize,
        setups: Vec<ParticipantSetup>,
        coordinator_extra: &str,
    ) -> Cluster {
        Self::start_full2(t, n, setups, None, false, false, None, coordinator_extra)
    }

    /// `start_ops` with a chaos proxy in front of every participant.
    pub fn start_ops_with_proxy(
        t: usize,
        n: usize,
        proxy: ProxyOpts,
        coordinator_extra: &str,
    ) -> Cluster {
        Self::start_full2(
            t,
            n,
            vec![],
            Some(proxy),
            false,
            false,
            None,
            coordinator_extra,
        )
    }

    /// Like `start`, with a chaos proxy process in front of each participant: the manifest
    /// names the proxies' addresses, so all coordinator ↔ participant traffic crosses them.
    pub fn start_with(
        t: usize,
        n: usize,
        setups: Vec<ParticipantSetup>,
        proxy: Option<ProxyOpts>,
    ) -> Cluster {
        Self::start_full(t, n, setups, proxy, false, false, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_full(
        t: usize,
        n: usize,
        setups: Vec<ParticipantSetup>,
        proxy: Option<ProxyOpts>,
        dkg: bool,
        verbose: bool,
        coordinator_fault: Option<&'static str>,
    ) -> Cluster {
        Self::start_full2(t, n, setups, proxy, dkg, verbose, coordinator_fault, "")
    }

    /// Like `start`, with a coordinator that misbehaves (`CONCLAVE_TEST_FAULT` for it only).
    pub fn start_with_coordinator_fault(
        t: usize,
        n: usize,
        setups: Vec<ParticipantSetup>,
        fault: Option<&'static str>,
    ) -> Cluster {
        Self::start_full(t, n, setups, None, false, false, fault)
    }

    /// Like `start`, with the key made by a DKG ceremony (`keygen dkg plan/relay/join`, one
    /// process per participant and one relay) instead of a dealer.
    pub fn start_dkg(t: usize, n: usize) -> Cluster {
        Self::start_full(t, n, vec![], None, true, false, None)
    }

    /// DKG-made cluster whose every process (ceremony and daemons) logs at TRACE level.
    pub fn start_dkg_verbose(t: usize, n: usize, setups: Vec<ParticipantSetup>) -> Cluster {
        Self::start_full(t, n, setups, None, true, true, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_full2(
        t: usize,
        n: usize,
        setups: Vec<ParticipantSetup>,
        proxy: Option<ProxyOpts>,
        dkg: bool,
        verbose: bool,
        coordinator_fault: Option<&'static str>,
        coordinator_extra: &str,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("conclave-it-")
            .tempdir()
            .expect("tempdir");
        let d_owned = dir.path().to_path_buf();
        let d = d_owned.as_path();
        let init = |name: &str| -> String {
            let out = conclave(&[
                "node",
                "init",
                "--out",
                d.join(name).to_str().expect("utf8"),
            ]);
            assert!(
                out.status.success(),
                "node init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout_line(&out)
        };
        let coordinator_key = init("coordinator");
        let client_key = init("client");
        let client_b_key = init("client-b");
        let names: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
        let mut reserved: Vec<Reserved> = (0..n).map(|_| Reserved::new()).collect();
        let ports: Vec<u16> = reserved.iter().map(|r| r.port).collect();
        let mut public_reserved: Vec<Reserved> = if proxy.is_some() {
            (0..n).map(|_| Reserved::new()).collect()
        } else {
            Vec::new()
        };
        let public_ports: Vec<u16> = if proxy.is_some() {
            public_reserved.iter().map(|r| r.port).collect()
        } else {
            ports.clone()
        };
        let mut args: Vec<String> = vec![
            "keygen".into(),
            "dealer".into(),
            "--group".into(),
            "it".into(),
        ];
        args.extend([
            "--threshold".into(),
            t.to_string(),
            "--mode".into(),
            "dev".into(),
            "--kdf".into(),
            "light".into(),
        ]);
        std::fs::write(d.join("pass"), "integration-test-passphrase\n").expect("pass");
        args.extend([
            "--passphrase-file".into(),
            d.join("pass").display().to_string(),
            "--out".into(),
            d.display().to_string(),
        ]);
        let mut specs = vec![];
        for (name, port) in names.iter().zip(&public_ports) {
            let key = init(name);
            specs.push(format!("{name}={key}@127.0.0.1:{port}"));
        }
        let share_of = |name: &str| {
            if dkg {
                format!("{name}-dkg/it.{name}.share")
            } else {
                format!("it.{name}.share")
            }
        };
        if dkg {
            let faults = DkgFaults {
                verbose,
                ..Default::default()
            };
            let run = run_dkg(d, "it", t, &specs, &faults);
            std::fs::write(d.join("dkg-output.log"), run.describe()).expect("dkg log");
            assert!(run.all_succeeded(), "dkg failed: {}", run.describe());
        } else {
            for spec in &specs {
                args.push("--participant".into());
                args.push(spec.clone());
            }
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = conclave(&arg_refs);
            assert!(
                out.status.success(),
                "keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut cluster = Cluster {
            group: "it".into(),
            manifest: d.join("it.manifest.toml"),
            coordinator_addr: String::new(),
            coordinator_key: coordinator_key.clone(),
            client_dir: d.join("client"),
            client_b_dir: d.join("client-b"),
            client_key: client_key.clone(),
            client_b_key: client_b_key.clone(),
            participants: Vec::new(),
            coordinator: None,
            proxies: Vec::new(),
            n,
            dir,
            verbose,
            metrics: Default::default(),
        };
        let d = cluster.dir.path().to_path_buf();
        if let Some(opts) = proxy {
            for (i, (name, (port, public))) in names
                .iter()
                .zip(ports.iter().zip(&public_ports))
                .enumerate()
            {
                public_reserved[i].release();
                let mut child = Command::new(bin())
                    .args([
                        "sim",
                        "proxy",
                        "--listen",
                        &format!("127.0.0.1:{public}"),
                        "--upstream",
                        &format!("127.0.0.1:{port}"),
                    ])
                    .args([
                        "--delay-ms",
                        &opts.delay_ms.to_string(),
                        "--jitter-ms",
                        &opts.jitter_ms.to_string(),
                    ])
                    .args([
                        "--loss",
                        &opts.loss.to_string(),
                        "--seed",
                        &(i + 1).to_string(),
                    ])
                    .arg("--blackhole-file")
                    .arg(d.join(format!("{name}.blackhole")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(
                        std::fs::File::create(d.join(format!("{name}-proxy.log"))).expect("log"),
                    )
                    .spawn()
                    .expect("spawn proxy");
                let line = first_line(&mut child);
                assert!(
                    line.contains("proxy listening on"),
                    "proxy did not start: {line:?}"
                );
                cluster.proxies.push(child);
            }
        }
        for (i, (name, port)) in names.iter().zip(&ports).enumerate() {
            let setup = setups.get(i).cloned().unwrap_or_default();
            // An impostor listens at the participant's address with an identity the manifest
            // does not list, serving a share it legitimately owns (of another group).
            let (identity, share) = if setup.impostor {
                let imp = format!("{name}-impostor");
                let imp_key = init(&imp);
                let other_key = init(&format!("{name}-impostor-peer"));
                let out = conclave(&[
                    "keygen",
                    "dealer",
                    "--group",
                    "other",
                    "--threshold",
                    "2",
                    "--mode",
                    "dev",
                    "--kdf",
                    "light",
                    "--passphrase-file",
                    d.join("pass").to_str().expect("utf8"),
                    "--out",
                    d.to_str().expect("utf8"),
                    "--participant",
                    &format!("{imp}={imp_key}@127.0.0.1:{port}"),
                    "--participant",
                    &format!("peer={other_key}@127.0.0.1:1"),
                ]);
                assert!(
                    out.status.success(),
                    "impostor keygen: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (imp.clone(), format!("other.{imp}.share"))
            } else {
                (name.clone(), share_of(name))
            };
            let coord = if setup.wrong_coordinator {
                init(&format!("{name}-other-coordinator"))
            } else {
                coordinator_key.clone()
            };
            let policy = setup
                .policy
                .as_deref()
                .unwrap_or(DEFAULT_POLICY)
                .replace("{A}", &client_key)
                .replace("{B}", &client_b_key);
            std::fs::write(d.join(format!("{name}.policy.toml")), policy).expect("policy");
            let extra = setup.extra_config.clone().unwrap_or_default();
            let config = format!(
                "mode = \"dev\"\nidentity = \"{identity}\"\nlisten = \"127.0.0.1:{port}\"\ncoordinators = [\"{coord}\"]\npolicy = \"{name}.policy.toml\"\naudit_log = \"{name}-audit/audit.log\"\n{extra}\n\n[[shares]]\nfile = \"{share}\"\npassphrase_file = \"pass\"\n"
            );
            let path = d.join(format!("{name}.toml"));
            std::fs::write(&path, config).expect("config");
            reserved[i].release();
            let mut child = cluster.spawn_raw(
                "participant",
                &path,
                &d.join(format!("{name}.log")),
                setup.fault,
                setup.file_size_limit_blocks,
            );
            let lines = first_lines(
                &mut child,
                if extra.contains("metrics_listen") {
                    2
                } else {
                    1
                },
            );
            assert!(
                lines[0].contains("listening on"),
                "participant did not start: {lines:?}; log: {}",
                std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default()
            );
            if let Some(m) = lines.get(1) {
                cluster.metrics.insert(name.clone(), metrics_addr(m));
            }
            cluster.participants.push(Some(child));
        }
        let config = format!(
            "mode = \"dev\"\nidentity = \"coordinator\"\nlisten = \"127.0.0.1:0\"\nclients = [\"{client_key}\", \"{client_b_key}\"]\nmanifests = [\"it.manifest.toml\"]\nparticipant_timeout_ms = 1500\naudit_log = \"coordinator-audit/audit.log\"\n{coordinator_extra}\n"
        );
        let path = d.join("coordinator.toml");
        std::fs::write(&path, config).expect("config");
        if coordinator_extra.contains("metrics_listen") {
            let mut child = cluster.spawn_raw(
                "coordinator",
                &path,
                &d.join("coordinator.log"),
                coordinator_fault,
                None,
            );
            let lines = first_lines(&mut child, 2);
            cluster.coordinator_addr = lines[0].rsplit(' ').next().expect("address").to_owned();
            cluster
                .metrics
                .insert("coordinator".into(), metrics_addr(&lines[1]));
            cluster.coordinator = Some(child);
            return cluster;
        }
        let (child, addr) =
            cluster.spawn_coordinator(&path, &d.join("coordinator.log"), coordinator_fault);
        cluster.coordinator_addr = addr;
        cluster.coordinator = Some(child);
        cluster
    }

    fn spawn_raw(
        &self,
        role: &str,
        config: &Path,
        log: &Path,
        fault: Option<&str>,
        file_size_limit_blocks: Option<u32>,
    ) -> Child {
        let mut cmd = match file_size_limit_blocks {
            None => Command::new(bin()),
            Some(blocks) => {
                // POSIX sh: `ulimit -f` counts 512-byte blocks.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -f {blocks} && exec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
        };
        cmd.args([role, "--config", config.to_str().expect("utf8")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .env("RUST_LOG", if self.verbose { "trace" } else { "info" });
        if let Some(f) = fault {
            cmd.env("CONCLAVE_TEST_FAULT", f);
        }
        cmd.spawn().expect("spawn daemon")
    }

    fn spawn_limited(
        &self,
        role: &str,
        config: &Path,
        log: &Path,
        fault: Option<&str>,
        file_size_limit_blocks: Option<u32>,
    ) -> Child {
        let mut child = self.spawn_raw(role, config, log, fault, file_size_limit_blocks);
        let line = first_line(&mut child);
        assert!(
            line.contains("listening on"),
            "{role} did not start: {line:?}; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        child
    }

    fn client_args<'a>(&'a self, cmd: &'a str) -> Vec<&'a str> {
        vec![
            cmd,
            "--coordinator",
            &self.coordinator_addr,
            "--coordinator-key",
            &self.coordinator_key,
            "--identity",
            self.client_dir.to_str().expect("utf8"),
            "--group",
            &self.group,
        ]
    }

    /// `conclave status --json`.
    pub fn status(&self) -> serde_json::Value {
        let mut args = self.client_args("status");
        args.push("--json");
        let out = conclave(&args);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// The audit log file of node `name` ("p1", ..., or "coordinator").
    pub fn audit_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-audit/audit.log"))
    }

    /// `conclave audit show --json` of node `name`'s log: its decision records.
    pub fn audit_records(&self, name: &str) -> Vec<serde_json::Value> {
        let log = self.audit_log(name);
        let out = conclave(&["audit", "show", "--json", log.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "audit show {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit json");
        v["records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["type"] == "decision")
            .collect()
    }

    /// Waits until the coordinator reaches exactly `want` participants.
    pub fn wait_reachable(&self, want: u64) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.status()["reachable"].as_u64().expect("reachable");
            if got == want {
                return;
            }
            assert!(
                Instant::now() < until,
                "coordinator reaches {got} participants, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `conclave sign --json` of `message`; the parsed output and the exit code.
    pub fn sign(&self, message: &[u8], timeout_s: u32) -> (Option<i32>, serde_json::Value, String) {
        self.sign_as(&self.client_dir, message, None, timeout_s)
    }

    /// `conclave sign --json` as the client whose identity is in `client_dir`, declaring
    /// `kind` when given.
    pub fn sign_as(
        &self,
        client_dir: &Path,
        message: &[u8],
        kind: Option<&str>,
        timeout_s: u32,
    ) -> (Option<i32>, serde_json::Value, String) {
        let mut args = self.client_args("sign");
        args[6] = client_dir.to_str().expect("utf8");
        let timeout = timeout_s.to_string();
        args.extend(["--json", "--timeout", &timeout]);
        if let Some(k) = kind {
            args.extend(["--kind", k]);
        }
        let out = conclave_with_input(&args, message);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Kills participant `i` (0-based) with SIGKILL: no goodbye on the wire.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.participants.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The config file of node `name` ("p1", ..., "coordinator").
    pub fn config(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.toml"))
    }

    /// Sends SIGTERM to the coordinator and waits (at most `within`) for it to exit; its
    /// exit code.
    pub fn terminate_coordinator(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.coordinator.take().expect("coordinator running");
        terminate(&mut c, within)
    }

    /// Sends SIGTERM to participant `i` and waits (at most `within`); its exit code.
    pub fn terminate(&mut self, i: usize, within: Duration) -> Option<i32> {
        let mut c = self.participants[i].take().expect("participant running");
        terminate(&mut c, within)
    }

    /// Starts participant `i` (0-based) again on its config.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let name = format!("p{}", i + 1);
        let log = self.dir.path().join(format!("{name}-restarted.log"));
        let child = self.spawn_limited("participant", &self.config(&name), &log, None, None);
        self.participants[i] = Some(child);
    }

    /// Stops the coordinator (SIGKILL: it closes nothing).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts another coordinator process with the same identity and config (so the
    /// participants already pin it) on a port of its own; returns its address. It is stopped
    /// with the cluster.
    pub fn start_second_coordinator(&mut self) -> String {
        let d = self.dir.path().to_path_buf();
        let config = std::fs::read_to_string(d.join("coordinator.toml"))
            .expect("coordinator config")
            .replace("coordinator-audit/", "coordinator2-audit/");
        let path = d.join("coordinator2.toml");
        std::fs::write(&path, config).expect("config");
        let (child, addr) = self.spawn_coordinator(&path, &d.join("coordinator2.log"), None);
        self.proxies.push(child);
        addr
    }

    /// Starts a second coordinator with an identity of its own, and has every running
    /// participant pin it too (their config's `coordinators` gains its key; `conclave reload`
    /// applies that without a restart). Returns its address and key.
    pub fn add_coordinator(&mut self) -> (String, String) {
        let d = self.dir.path().to_path_buf();
        let out = conclave(&[
            "node",
            "init",
            "--out",
            d.join("coordinator2").to_str().expect("utf8"),
        ]);
        assert!(out.status.success());
        let key = stdout_line(&out);
        let config = std::fs::read_to_string(d.join("coordinator.toml"))
            .expect("coordinator config")
            .replace("identity = \"coordinator\"", "identity = \"coordinator2\"")
            .replace("coordinator-audit/", "coordinator2-audit/");
        let path = d.join("coordinator2.toml");
        std::fs::write(&path, config).expect("config");
        for i in 0..self.n {
            if self.participants.get(i).is_none_or(Option::is_none) {
                continue;
            }
            let p = self.config(&format!("p{}", i + 1));
            let text = std::fs::read_to_string(&p).expect("participant config");
            let text = text.replace(
                &format!("coordinators = [\"{}\"]", self.coordinator_key),
                &format!("coordinators = [\"{}\", \"{key}\"]", self.coordinator_key),
            );
            std::fs::write(&p, text).expect("participant config");
            let out = conclave(&["reload", "--config", p.to_str().expect("utf8")]);
            assert!(
                out.status.success(),
                "reload p{}: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (child, addr) = self.spawn_coordinator(&path, &d.join("coordinator2.log"), None);
        self.proxies.push(child);
        (addr, key)
    }

    /// A client config for client A naming these (address, key) coordinators in order.
    pub fn client_config_keys(
        &self,
        name: &str,
        coordinators: &[(&str, &str)],
        timeout_ms: u64,
    ) -> PathBuf {
        let mut text = format!(
            "identity = \"client\"\ngroup = \"{}\"\ntimeout_ms = {timeout_ms}\nmanifests = [\"it.manifest.toml\"]\n",
            self.group
        );
        for (addr, key) in coordinators {
            text += &format!("[[coordinator]]\naddress = \"{addr}\"\nkey = \"{key}\"\n");
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("client config");
        path
    }

    /// Starts a coordinator process and returns it with the address it prints.
    fn spawn_coordinator(&self, config: &Path, log: &Path, fault: Option<&str>) -> (Child, String) {
        let mut child = self.spawn_raw("coordinator", config, log, fault, None);
        let line = first_line(&mut child);
        let addr = line.rsplit(' ').next().expect("address").to_owned();
        (child, addr)
    }

    /// Writes a client config for client A (`client`), with these coordinator addresses in
    /// order and the group's manifest; returns its path.
    pub fn client_config(&self, name: &str, coordinators: &[&str], timeout_ms: u64) -> PathBuf {
        let mut text = format!(
            "identity = \"client\"\ngroup = \"{}\"\ntimeout_ms = {timeout_ms}\nmanifests = [\"it.manifest.toml\"]\n",
            self.group
        );
        for addr in coordinators {
            text += &format!(
                "[[coordinator]]\naddress = \"{addr}\"\nkey = \"{}\"\n",
                self.coordinator_key
            );
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("client config");
        path
    }

    /// Starts (or stops) dropping all traffic of participant `i` (0-based) at its proxy.
    pub fn blackhole(&self, i: usize, on: bool) {
        let path = self.dir.path().join(format!("p{}.blackhole", i + 1));
        if on {
            std::fs::write(&path, b"").expect("blackhole file");
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// A log file's text.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The group public key (32 bytes) from the manifest, via the CLI.
    pub fn public_key(&self) -> [u8; 32] {
        let out = conclave(&[
            "pubkey",
            "--manifest",
            self.manifest.to_str().expect("utf8"),
        ]);
        let mut key = [0u8; 32];
        hex::decode_to_slice(stdout_line(&out), &mut key).expect("hex key");
        key
    }
}

/// Faults to inject into a DKG run.
#[derive(Clone, Debug, Default)]
pub struct DkgFaults {
    /// (participant index, CONCLAVE_TEST_FAULT value).
    pub members: Vec<(usize, &'static str)>,
    /// CONCLAVE_TEST_FAULT for the relay.
    pub relay: Option<&'static str>,
    /// Round timeout in seconds (default 60).
    pub timeout: Option<u32>,
    /// Every process logs at TRACE level.
    pub verbose: bool,
    /// Run again with the plan of the previous run for this group (re-running a ceremony).
    pub reuse_plan: bool,
}

/// The processes of one DKG ceremony, finished.
pub struct DkgRun {
    pub relay: Output,
    pub members: Vec<Output>,
    pub elapsed: Duration,
}

impl DkgRun {
    pub fn all_succeeded(&self) -> bool {
        self.relay.status.success() && self.members.iter().all(|m| m.status.success())
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "relay {:?}: {}{}\n",
            self.relay.status.code(),
            String::from_utf8_lossy(&self.relay.stderr),
            String::from_utf8_lossy(&self.relay.stdout)
        );
        for (i, m) in self.members.iter().enumerate() {
            s += &format!(
                "member {i} {:?}: {}{}\n",
                m.status.code(),
                String::from_utf8_lossy(&m.stderr),
                String::from_utf8_lossy(&m.stdout)
            );
        }
        s
    }
}

/// Runs a DKG with the CLI: writes a plan (`keygen dkg plan`) for the participants `specs`
/// (NAME=KEY@HOST:PORT, identities in `d/NAME`), starts the relay (identity `d/coordinator`,
/// an OS-chosen port) and one `join` process per participant (output in `d/NAME-dkg/`), and
/// waits for all of them (killing everything after 120 s).
pub fn run_dkg(d: &Path, group: &str, t: usize, specs: &[String], faults: &DkgFaults) -> DkgRun {
    let coordinator_key = stdout_line(&conclave(&[
        "node",
        "show",
        d.join("coordinator").to_str().expect("utf8"),
    ]));
    let mut relay_port = Reserved::new();
    let plan = d.join(format!("{group}-plan.toml"));
    if !faults.reuse_plan {
        let _ = std::fs::remove_file(&plan);
    }
    let mut args: Vec<String> = vec![
        "keygen".into(),
        "dkg".into(),
        "plan".into(),
        "--group".into(),
        group.into(),
        "--threshold".into(),
        t.to_string(),
        "--coordinator".into(),
        format!(
            "coordinator={coordinator_key}@127.0.0.1:{}",
            relay_port.port
        ),
        "--timeout".into(),
        faults.timeout.unwrap_or(60).to_string(),
        "--out".into(),
        plan.display().to_string(),
    ];
    for s in specs {
        args.push("--participant".into());
        args.push(s.clone());
    }
    if !faults.reuse_plan {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = conclave(&refs);
        assert!(
            out.status.success(),
            "dkg plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verbose: &[&str] = if faults.verbose { &["-vv"] } else { &[] };
    let spawn = |args: &[&str], fault: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(verbose)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if faults.verbose {
            cmd.env("RUST_LOG", "trace");
        }
        if let Some(f) = fault {
            cmd.env("CONCLAVE_TEST_FAULT", f);
        }
        cmd.spawn().expect("spawn dkg process")
    };
    let started = Instant::now();
    relay_port.release();
    let relay = spawn(
        &[
            "keygen",
            "dkg",
            "relay",
            "--plan",
            plan.to_str().expect("utf8"),
            "--identity",
            d.join("coordinator").to_str().expect("utf8"),
            "--out",
            d.to_str().expect("utf8"),
            "--json",
        ],
        faults.relay,
    );
    let members: Vec<Child> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.split('=').next().expect("name");
            let fault = faults
                .members
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, f)| *f);
            spawn(
                &[
                    "keygen",
                    "dkg",
                    "join",
                    "--plan",
                    plan.to_str().expect("utf8"),
                    "--identity",
                    d.join(name).to_str().expect("utf8"),
                    "--out",
                    d.join(format!("{name}-dkg")).to_str().expect("utf8"),
                    "--audit-log",
                    d.join(format!("{name}-ceremony-audit/audit.log"))
                        .to_str()
                        .expect("utf8"),
                    "--mode",
                    "dev",
                    "--kdf",
                    "light",
                    "--passphrase-file",
                    d.join("pass").to_str().expect("utf8"),
                    "--json",
                    "--yes",
                ],
                fault,
            )
        })
        .collect();
    // wait_with_output drains both pipes (verbose runs write a lot); a watchdog kills
    // every process still running after 120 s so a hung ceremony fails instead of hanging.
    let pids: Vec<u32> = std::iter::once(relay.id())
        .chain(members.iter().map(Child::id))
        .collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() > deadline {
                    for pid in &pids {
                        // The shell's builtin kill: no procps needed on a fresh machine.
                        let _ = Command::new("sh")
                            .args(["-c", &format!("kill -9 {pid}")])
                            .status();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let readers: Vec<_> = members
        .into_iter()
        .map(|c| std::thread::spawn(move || c.wait_with_output().expect("wait dkg member")))
        .collect();
    let relay = relay.wait_with_output().expect("wait dkg relay");
    let members = readers
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    DkgRun {
        relay,
        members,
        elapsed: started.elapsed(),
    }
}

/// Every file under `dir` (recursively) whose name ends with one of `suffixes`.
pub fn files_ending(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_ending(&p, suffixes));
            } else if suffixes.iter().any(|s| p.to_string_lossy().ends_with(s)) {
                out.push(p);
            }
        }
    }
    out
}

/// SIGTERM, then waits up to `within` for the exit code (SIGKILL after that: None).
pub fn terminate(child: &mut Child, within: Duration) -> Option<i32> {
    // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let until = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `curl -s http://ADDR/PATH`: the body (curl is installed by .ci/run).
pub fn curl(addr: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{addr}{path}")])
        .output()
        .expect("curl (CI installs it)");
    assert!(out.status.success(), "curl {addr}{path} failed");
    String::from_utf8(out.stdout).expect("utf8 body")
}

pub fn first_line(child: &mut Child) -> String {
    first_lines(child, 1).remove(0)
}

/// `host:port` out of a daemon's `metrics on http://HOST:PORT/metrics` line.
pub fn metrics_addr(line: &str) -> String {
    line.trim()
        .strip_prefix("metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics line: {line:?}"))
        .to_owned()
}

/// The first `n` lines a child prints (trimmed); the rest of its output is drained.
pub fn first_lines(child: &mut Child, n: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        lines.push(line.trim().to_owned());
    }
    // Keep draining so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    lines
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let daemons = self
            .participants
            .iter_mut()
            .filter_map(Option::as_mut)
            .chain(self.coordinator.as_mut());
        for c in daemons.chain(self.proxies.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Checks `signature` over `message` with OpenSSL's own Ed25519 code. Panics (loudly) when
/// openssl is not installed: CI installs it, and a skipped interop test would prove nothing.
pub fn openssl_verifies(
    dir: &Path,
    public_key_pem: &str,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let pem = dir.join("openssl.pub.pem");
    let msg = dir.join("openssl.msg");
    let sig = dir.join("openssl.sig");
    std::fs::write(&pem, public_key_pem).expect("pem");
    std::fs::write(&msg, message).expect("msg");
    std::fs::write(&sig, signature).expect("sig");
    let out = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(&pem)
        .arg("-rawin")
        .arg("-in")
        .arg(&msg)
        .arg("-sigfile")
        .arg(&sig)
        .output()
        .expect(
            "openssl is required for the interop test (CI installs it: apt-get install -y openssl)",
        );
    out.status.success()
}
