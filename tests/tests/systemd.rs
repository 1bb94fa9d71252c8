//! The systemd deployment in deploy/systemd (units, sysusers.d, tmpfiles.d) and the example
//! configs in deploy/examples: the units carry the hardening the operations guide promises,
//! systemd's own tools accept them (`systemd-analyze verify`, `security --offline`,
//! `systemd-sysusers`, `systemd-tmpfiles`), and the example configs, in the directory layout
//! the units and the tmpfiles.d file produce, pass the prod-mode checks and start the daemons,
//! which then write nothing outside the units' StateDirectory=.
//!
//! systemd's tools are not on every machine: where one is missing, a test fails when `CI` is
//! set (`.ci/run` installs them) and otherwise prints a `SKIPPED:` line on stderr and passes.
//! The unit-file, layout and prod-check tests need no systemd and always run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use common::{bin, conclave, first_line, stdout_line, Reserved};

/// The path the units start the binary from (the walkthrough installs it there).
const INSTALLED_BIN: &str = "/usr/local/bin/conclave";
/// The service user of the system units, created by conclave.sysusers.conf.
const SERVICE_USER: &str = "conclave";
/// The credential the daemons read from `$CREDENTIALS_DIRECTORY` (cli/src/passphrase.rs).
const CREDENTIAL: &str = "conclave-passphrase";
/// Default `drain_grace_secs` of the daemons: the stop timeout must leave room above it.
const DRAIN_GRACE_SECS: u64 = 30;

/// Highest `systemd-analyze security --offline=true` exposure accepted per unit (0 = fully
/// locked down, 10 = no sandbox; systemd rates 1.0 to 4.9 "OK", below 1.0 "SAFE"). What the
/// daemons keep is mostly network access, which network daemons cannot give up; the agent's
/// offline score also counts "runs as root" because a user unit names no User= (it runs as
/// the user whose manager starts it). Measured with systemd 252: 1.1, 1.1 and 1.4.
const MAX_EXPOSURE: [(&str, f64); 3] = [
    ("conclave-participant.service", 1.5),
    ("conclave-coordinator.service", 1.5),
    ("conclave-agent.service", 2.0),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(name: &str) -> PathBuf {
    repo().join("deploy/systemd").join(name)
}

/// One unit file, parsed: (section, key, value) in file order.
struct Unit {
    name: &'static str,
    system: bool,
    text: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &'static str, system: bool) -> Unit {
        let text = std::fs::read_to_string(deploy(name)).expect("unit file");
        let mut entries = Vec::new();
        let mut section = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{name}:{}: keep directives on one line (this parser does not join lines)",
                n + 1
            );
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not KEY=VALUE: {line}", n + 1));
            entries.push((section.clone(), key.trim().into(), value.trim().into()));
        }
        Unit {
            name,
            system,
            text,
            entries,
        }
    }

    fn all() -> Vec<Unit> {
        vec![
            Unit::load("conclave-participant.service", true),
            Unit::load("conclave-coordinator.service", true),
            Unit::load("conclave-agent.service", false),
        ]
    }

    /// Every assignment of `key` in [Service], in order.
    fn values(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one assignment of `key` in [Service].
    fn one(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [v] => v,
            other => panic!(
                "{}: expected exactly one {key}=, found {other:?}",
                self.name
            ),
        }
    }

    /// A list directive (CapabilityBoundingSet=, AmbientCapabilities=) as systemd combines
    /// it: an empty assignment resets, others add. An inverted list (`~`) is refused here.
    fn list(&self, key: &str) -> BTreeSet<String> {
        let values = self.values(key);
        assert!(!values.is_empty(), "{}: {key}= missing", self.name);
        let mut set = BTreeSet::new();
        for v in values {
            assert!(
                !v.starts_with('~'),
                "{}: {key}={v}: name what is kept",
                self.name
            );
            if v.is_empty() {
                set.clear();
            }
            set.extend(v.split_whitespace().map(str::to_owned));
        }
        set
    }

    /// ExecStart= split into words (no quoting is used in our units).
    fn exec_start(&self) -> Vec<&str> {
        let words: Vec<&str> = self.one("ExecStart").split_whitespace().collect();
        assert!(
            !self.one("ExecStart").contains('"'),
            "{}: no quoting",
            self.name
        );
        words
    }

    /// The StateDirectory= entries, relative to /var/lib.
    fn state_directories(&self) -> Vec<&str> {
        self.values("StateDirectory")
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }
}

/// Locates one of systemd's tools. Missing: a failure when `CI` is set, otherwise a loud skip.
fn systemd_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing and CI is set: install systemd (apt-get install -y systemd; .ci/run does)"
        );
        skipped(&format!(
            "{name} not found; install systemd (apt-get install systemd) to run this check (CI fails instead of skipping)"
        ));
    }
    found
}

/// Says on the real stderr (libtest captures `eprintln!` of passing tests) that a check did
/// not run.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// True when this process may chown (systemd-tmpfiles gives files to the service user).
/// Not root: a failure when `CI` is set, otherwise a loud skip.
fn can_chown(what: &str) -> bool {
    let root = effective_uid() == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} needs root (to chown to the service user) and CI is set"
        );
        skipped(&format!(
            "{what} needs root (it chowns to the service user); run the tests as root to include it"
        ));
    }
    root
}

/// The effective uid, from /proc (no libc call needed).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .expect("effective uid")
}

/// Copies the units into `dir` with ExecStart's binary replaced by the binary under test.
/// `systemd-analyze verify` insists that ExecStart names an existing executable, and
/// /usr/local/bin/conclave is only there once installed; the test binary is the same
/// `conclave_cli::main`. Nothing else in the units changes.
fn stage_units(dir: &Path) -> Vec<(Unit, PathBuf)> {
    let mut staged = Vec::new();
    for unit in Unit::all() {
        assert_eq!(
            unit.exec_start().first().copied(),
            Some(INSTALLED_BIN),
            "{}: ExecStart runs {INSTALLED_BIN}",
            unit.name
        );
        let text = unit
            .text
            .replace(INSTALLED_BIN, bin().to_str().expect("utf8"));
        let path = dir.join(unit.name);
        std::fs::write(&path, text).expect("staged unit");
        staged.push((unit, path));
    }
    staged
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `systemd-analyze [--user] ARGS...`, with a private XDG_RUNTIME_DIR for user units (the user
/// manager's paths are looked up even offline).
fn analyze(tool: &Path, system: bool, runtime: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(tool);
    if !system {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze")
}

#[test]
fn units_carry_the_promised_hardening() {
    // Directive, value: the same in every unit (docs/OPERATIONS.md explains each).
    const EVERY_UNIT: &[(&str, &str)] = &[
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("UMask", "0077"),
        ("LimitCORE", "0"),
        ("NoNewPrivileges", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("DevicePolicy", "closed"),
        ("PrivateIPC", "yes"),
        ("PrivateMounts", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RemoveIPC", "yes"),
        ("KeyringMode", "private"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallErrorNumber", "EPERM"),
    ];
    for unit in Unit::all() {
        let name = unit.name;
        for (key, want) in EVERY_UNIT {
            assert_eq!(unit.one(key), *want, "{name}: {key}=");
        }
        // An allow list first, then only removals from it.
        let filters = unit.values("SystemCallFilter");
        assert_eq!(filters.first().copied(), Some("@system-service"), "{name}");
        for f in filters.iter().skip(1) {
            assert!(
                f.starts_with('~'),
                "{name}: SystemCallFilter={f} widens the list"
            );
        }
        // No capability beyond CAP_IPC_LOCK, and none granted that is not bounded.
        let bounding = unit.list("CapabilityBoundingSet");
        assert!(
            bounding.iter().all(|c| c == "CAP_IPC_LOCK"),
            "{name}: CapabilityBoundingSet={bounding:?}"
        );
        let ambient = unit.list("AmbientCapabilities");
        assert!(
            ambient.is_subset(&bounding),
            "{name}: AmbientCapabilities={ambient:?}"
        );
        if unit.system {
            assert_eq!(unit.one("User"), SERVICE_USER, "{name}");
            let stop: u64 = unit
                .one("TimeoutStopSec")
                .trim_end_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("{name}: TimeoutStopSec in seconds"));
            assert!(
                stop > DRAIN_GRACE_SECS,
                "{name}: TimeoutStopSec={stop} must leave the drain grace ({DRAIN_GRACE_SECS} s) time to end"
            );
            assert_eq!(unit.one("Group"), SERVICE_USER, "{name}");
            assert_eq!(unit.one("ProtectHome"), "yes", "{name}");
            assert_eq!(unit.one("ExecReload"), "/bin/kill -HUP $MAINPID", "{name}");
            assert_eq!(unit.one("StateDirectoryMode"), "0700", "{name}");
            // Only audit directories are writable: every StateDirectory= ends in /audit.
            let dirs = unit.state_directories();
            assert!(!dirs.is_empty(), "{name}: StateDirectory=");
            assert!(
                dirs.iter().all(|d| d.ends_with("/audit")),
                "{name}: {dirs:?}"
            );
            // ExecStart names the config where the example config says it lives.
            let words = unit.exec_start();
            let role = name
                .strip_prefix("conclave-")
                .and_then(|n| n.strip_suffix(".service"))
                .expect("role");
            let config = format!("/etc/conclave/{role}.toml");
            assert_eq!(
                words.get(1..),
                Some(&[role, "--config", config.as_str()][..]),
                "{name}: ExecStart"
            );
            assert!(repo()
                .join(format!("deploy/examples/{role}.toml"))
                .is_file());
        } else {
            assert!(unit.values("User").is_empty(), "{name}: a user unit");
            assert_eq!(unit.one("ProtectHome"), "tmpfs", "{name}");
            assert_eq!(
                unit.one("BindReadOnlyPaths"),
                "%h/.config/conclave",
                "{name}"
            );
            // The socket sits in the unit's RuntimeDirectory, 0700 (the agent refuses less).
            let runtime = unit.one("RuntimeDirectory");
            assert_eq!(unit.one("RuntimeDirectoryMode"), "0700", "{name}");
            let words = unit.exec_start();
            let socket = format!("%t/{runtime}/agent.sock");
            assert_eq!(
                words.get(1..),
                Some(&["agent", "--socket", socket.as_str()][..]),
                "{name}: ExecStart"
            );
        }
    }
    let participant = Unit::load("conclave-participant.service", true);
    // mlockall() as the unprivileged service user: a limit high enough, no capability.
    assert_eq!(participant.one("LimitMEMLOCK"), "infinity");
    assert_eq!(
        participant.one("LoadCredential"),
        format!("{CREDENTIAL}:/etc/conclave/credentials/{CREDENTIAL}")
    );
    // The coordinator holds no share: no passphrase credential.
    let coordinator = Unit::load("conclave-coordinator.service", true);
    assert!(coordinator.values("LoadCredential").is_empty());
}

#[test]
fn agent_unit_arguments_are_accepted_by_the_cli() {
    // The agent needs a coordinator to start; its flags are checked by the argument parser
    // (an unknown flag before --help is an error, exit 2).
    let unit = Unit::load("conclave-agent.service", false);
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = unit.exec_start()[1..]
        .iter()
        .map(|a| a.replace("%t", dir.path().to_str().expect("utf8")))
        .chain(["--help".to_owned()])
        .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = conclave(&refs);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(tool) = systemd_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("units-")
        .tempdir()
        .expect("tempdir");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for (unit, path) in stage_units(dir.path()) {
        let out = analyze(
            &tool,
            unit.system,
            &runtime,
            &["verify", path.to_str().expect("utf8")],
        );
        let text = output_text(&out);
        eprintln!(
            "systemd-analyze verify {}: {:?} {}",
            unit.name,
            out.status.code(),
            text.trim()
        );
        // Lines about other units on this host (their own warnings) are not ours to fix.
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("conclave") || l.contains(dir.path().to_str().expect("utf8")))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {} complains: {text}",
            unit.name
        );
    }
}

#[test]
fn units_exposure_scores_stay_low() {
    let Some(tool) = systemd_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("units-")
        .tempdir()
        .expect("tempdir");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let version = Command::new(&tool)
        .arg("--version")
        .output()
        .expect("version");
    let version = stdout_line(&version);
    for (unit, path) in stage_units(dir.path()) {
        let out = analyze(
            &tool,
            unit.system,
            &runtime,
            &["security", "--offline=true", path.to_str().expect("utf8")],
        );
        let text = output_text(&out);
        assert!(out.status.success(), "security {}: {text}", unit.name);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level for"))
            .unwrap_or_else(|| panic!("no exposure level in: {text}"));
        let score: f64 = line
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
        let max = MAX_EXPOSURE
            .iter()
            .find(|(n, _)| *n == unit.name)
            .map(|(_, m)| *m)
            .expect("threshold");
        eprintln!(
            "exposure {}: {score} (max {max}; {})",
            unit.name,
            version.lines().next().unwrap_or_default()
        );
        assert!(
            score <= max,
            "{}: exposure {score} above {max}:\n{text}",
            unit.name
        );
    }
}

/// The `d` lines of conclave.tmpfiles.conf: (path, mode, user, group).
fn tmpfiles_dirs() -> Vec<(String, u32, String, String)> {
    let text = std::fs::read_to_string(deploy("conclave.tmpfiles.conf")).expect("tmpfiles");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(
                f.len() == 6 && f[0] == "d",
                "only `d PATH MODE USER GROUP -` lines are expected: {l}"
            );
            let mode = u32::from_str_radix(f[2], 8).expect("octal mode");
            (f[1].to_owned(), mode, f[3].to_owned(), f[4].to_owned())
        })
        .collect()
}

#[test]
fn tmpfiles_and_sysusers_give_the_service_user_its_directories() {
    // The layout itself: configs and credentials root's, identities and shares the service
    // user's, no directory open to others where a secret lies.
    let dirs = tmpfiles_dirs();
    for (path, mode, user, group) in &dirs {
        assert_eq!(mode & 0o002, 0, "{path}: writable by others");
        if path.starts_with("/var/lib/conclave") {
            assert_eq!(
                (user.as_str(), group.as_str()),
                (SERVICE_USER, SERVICE_USER)
            );
            assert_eq!(*mode, 0o700, "{path}");
        } else {
            assert_eq!((user.as_str(), group.as_str()), ("root", "root"), "{path}");
        }
    }
    let credentials = dirs
        .iter()
        .find(|(p, ..)| p == "/etc/conclave/credentials")
        .expect("credentials directory");
    assert_eq!(
        credentials.1, 0o700,
        "only root reads LoadCredential= sources"
    );
    for unit in Unit::all().into_iter().filter(|u| u.system) {
        // The parent of each StateDirectory= exists beforehand, owned by the service user
        // (else systemd would create it root-owned and `node init` could not write there).
        for state in unit.state_directories() {
            let parent = Path::new("/var/lib").join(state);
            let parent = parent.parent().expect("parent").to_str().expect("utf8");
            assert!(
                dirs.iter().any(|(p, ..)| p == parent),
                "{}: {parent} is not in conclave.tmpfiles.conf",
                unit.name
            );
        }
    }

    // systemd's own tools, on an empty root: the user exists and owns its directories.
    let (Some(sysusers), Some(tmpfiles)) = (
        systemd_tool("systemd-sysusers"),
        systemd_tool("systemd-tmpfiles"),
    ) else {
        return;
    };
    if !can_chown("systemd-tmpfiles --root") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    let root_arg = format!("--root={}", root.path().display());
    let out = Command::new(sysusers)
        .arg(&root_arg)
        .arg(deploy("conclave.sysusers.conf"))
        .output()
        .expect("systemd-sysusers");
    assert!(out.status.success(), "{}", output_text(&out));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{SERVICE_USER}:")))
        .unwrap_or_else(|| panic!("no {SERVICE_USER} in {passwd}"))
        .split(':')
        .collect();
    let uid: u32 = entry[2].parse().expect("uid");
    assert!(uid > 0 && uid < 1000, "a system user: uid {uid}");
    assert_eq!(entry[5], "/var/lib/conclave", "home");
    assert!(
        entry[6].ends_with("nologin"),
        "no login shell: {}",
        entry[6]
    );
    let out = Command::new(tmpfiles)
        .arg(&root_arg)
        .arg("--create")
        .arg(deploy("conclave.tmpfiles.conf"))
        .output()
        .expect("systemd-tmpfiles");
    assert!(out.status.success(), "{}", output_text(&out));
    for (path, mode, user, _) in &dirs {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(root.path().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.mode() & 0o7777, *mode, "{path}");
        let want = if user == SERVICE_USER { uid } else { 0 };
        assert_eq!(meta.uid(), want, "{path} owner");
    }
}

/// A host root in a temporary directory, laid out as conclave.tmpfiles.conf and the system
/// units' StateDirectory=/StateDirectoryMode= make it (what PID 1 creates before ExecStart),
/// with the cluster files placed as the walkthrough in docs/OPERATIONS.md places them.
struct Host {
    root: tempfile::TempDir,
    /// Outside the host: the dealer's output, the other participant, the client.
    elsewhere: tempfile::TempDir,
    coordinator_key: String,
    client_key: String,
    /// Stands in for $CREDENTIALS_DIRECTORY (systemd copies each LoadCredential= source
    /// there, mode 0400, readable by the service user only).
    credentials: PathBuf,
}

impl Host {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.path().join(absolute.trim_start_matches('/'))
    }

    fn new() -> Host {
        let root = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let mut host = Host {
            root,
            elsewhere,
            coordinator_key: String::new(),
            client_key: String::new(),
            credentials: PathBuf::new(),
        };
        for (path, mode, ..) in tmpfiles_dirs() {
            let p = host.path(&path);
            std::fs::create_dir_all(&p).expect("mkdir");
            chmod(&p, mode);
        }
        for unit in Unit::all().into_iter().filter(|u| u.system) {
            let mode = u32::from_str_radix(unit.one("StateDirectoryMode"), 8).expect("mode");
            for state in unit.state_directories() {
                let p = host.path(&format!("/var/lib/{state}"));
                std::fs::create_dir_all(&p).expect("mkdir");
                chmod(&p, mode);
            }
        }

        // Identities, as `runuser -u conclave -- conclave node init --out ...`.
        let init = |dir: &Path| -> String {
            let out = conclave(&["node", "init", "--out", dir.to_str().expect("utf8")]);
            assert!(out.status.success(), "node init: {}", output_text(&out));
            stdout_line(&out)
        };
        let p1 = init(&host.path("/var/lib/conclave/participant/identity"));
        host.coordinator_key = init(&host.path("/var/lib/conclave/coordinator/identity"));
        let away = host.elsewhere.path().to_path_buf();
        let p2 = init(&away.join("p2"));
        host.client_key = init(&away.join("client"));

        // Shares (light KDF to keep the test fast: the prod checks do not look at KDF cost).
        let pass = away.join("pass");
        std::fs::write(&pass, "systemd-unit-test passphrase\n").expect("pass");
        let out = conclave(&[
            "keygen",
            "dealer",
            "--group",
            "release",
            "--threshold",
            "2",
            "--mode",
            "dev",
            "--kdf",
            "light",
            "--passphrase-file",
            pass.to_str().expect("utf8"),
            "--out",
            away.to_str().expect("utf8"),
            "-p",
            &format!("p1={p1}@127.0.0.1:7001"),
            "-p",
            &format!("p2={p2}@127.0.0.1:7002"),
        ]);
        assert!(out.status.success(), "keygen: {}", output_text(&out));
        // `mv` keeps the mode the CLI gave the share (0600).
        std::fs::rename(
            away.join("release.p1.share"),
            host.path("/var/lib/conclave/participant/release.p1.share"),
        )
        .expect("place share");
        // `install -m 0644 release.manifest.toml /etc/conclave/`
        let manifest = host.path("/etc/conclave/release.manifest.toml");
        std::fs::copy(away.join("release.manifest.toml"), &manifest).expect("manifest");
        chmod(&manifest, 0o644);
        // The credential where the unit's LoadCredential=NAME:SOURCE takes it from
        // (`install -m 0600 ... /etc/conclave/credentials/conclave-passphrase`), and the copy
        // systemd hands the daemon as $CREDENTIALS_DIRECTORY/NAME.
        let participant = Unit::load("conclave-participant.service", true);
        let (name, source) = participant
            .one("LoadCredential")
            .split_once(':')
            .expect("LoadCredential=NAME:SOURCE");
        let source = host.path(source);
        std::fs::copy(&pass, &source).expect("credential");
        chmod(&source, 0o600);
        host.credentials = away.join("run-credentials");
        std::fs::create_dir(&host.credentials).expect("credentials dir");
        let copy = host.credentials.join(name);
        std::fs::copy(&source, &copy).expect("credential copy");
        chmod(&copy, 0o400);
        chmod(&host.credentials, 0o500);

        // The policy: root:conclave 0640.
        let policy = std::fs::read_to_string(repo().join("deploy/examples/policy.toml"))
            .expect("example policy");
        let policy = substitute(
            &policy,
            &[("<hex identity key of the client>", &host.client_key)],
        );
        let path = host.path("/etc/conclave/policy.toml");
        std::fs::write(&path, policy).expect("policy");
        chmod(&path, 0o640);
        host
    }

    /// Writes the example config of `role` into the host (owner conclave, 0600), its paths
    /// moved under the root, its placeholders filled and its listen address on loopback.
    fn config(&self, role: &str, port: u16) -> PathBuf {
        let text = std::fs::read_to_string(repo().join(format!("deploy/examples/{role}.toml")))
            .expect("example config");
        // Every absolute path of the example lies in the layout, so the rewrite moves all.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for quoted in line.split('"').skip(1).step_by(2) {
                if quoted.starts_with('/') {
                    assert!(
                        quoted.starts_with("/etc/conclave/")
                            || quoted.starts_with("/var/lib/conclave/"),
                        "{role}.toml: {quoted} is outside the units' layout"
                    );
                }
            }
        }
        let root = self.root.path().to_str().expect("utf8");
        let (etc, var) = (
            format!("\"{root}/etc/conclave/"),
            format!("\"{root}/var/lib/conclave/"),
        );
        let loopback = format!("127.0.0.1:{port}");
        let mut pairs = vec![
            ("\"/etc/conclave/", etc.as_str()),
            ("\"/var/lib/conclave/", var.as_str()),
        ];
        match role {
            "participant" => pairs.extend([
                ("0.0.0.0:7001", loopback.as_str()),
                // The metrics port too is chosen by the OS here.
                ("127.0.0.1:9464", "127.0.0.1:0"),
                (
                    "<hex identity key of the coordinator>",
                    self.coordinator_key.as_str(),
                ),
            ]),
            _ => pairs.extend([
                ("0.0.0.0:7000", loopback.as_str()),
                ("127.0.0.1:9465", "127.0.0.1:0"),
                ("<hex identity key of a client>", self.client_key.as_str()),
            ]),
        }
        let text = substitute(&text, &pairs);
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(!line.contains('<'), "{role}.toml: placeholder left: {line}");
        }
        let path = self.path(&format!("/etc/conclave/{role}.toml"));
        std::fs::write(&path, text).expect("config");
        chmod(&path, 0o600);
        path
    }

    /// `conclave config check --json` with the credential in place; the checks.
    fn check(&self, config: &Path) -> serde_json::Value {
        let out = Command::new(bin())
            .args(["config", "check", "--json", "--config"])
            .arg(config)
            .env("CREDENTIALS_DIRECTORY", &self.credentials)
            .env_remove("CONCLAVE_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .expect("config check");
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        assert!(
            out.status.success(),
            "config check {}: {}",
            config.display(),
            output_text(&out)
        );
        assert_eq!(json["mode"], "prod", "{json}");
        let checks = json["checks"].as_array().expect("checks");
        for c in checks {
            assert_eq!(c["level"], "pass", "not a pass: {c}");
        }
        json
    }

    /// Starts the daemon with the unit's ExecStart arguments (paths moved under the root),
    /// waits until it listens, stops it; returns every path it created or changed.
    fn run_daemon(
        &self,
        unit: &Unit,
        port: &mut Reserved,
        credential: bool,
    ) -> Result<Vec<PathBuf>, String> {
        let root = self.root.path().to_str().expect("utf8");
        let args: Vec<String> = unit.exec_start()[1..]
            .iter()
            .map(|a| {
                if a.starts_with("/etc/conclave/") || a.starts_with("/var/lib/conclave/") {
                    format!("{root}{a}")
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let before = snapshot(self.root.path());
        let log = self.elsewhere.path().join(format!("{}.log", unit.name));
        let mut cmd = Command::new(bin());
        cmd.args(&args)
            .env_remove("CONCLAVE_PASSPHRASE")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"));
        if credential {
            cmd.env("CREDENTIALS_DIRECTORY", &self.credentials);
        }
        port.release();
        let mut child = cmd.spawn().expect("spawn daemon");
        let line = first_line(&mut child);
        let _ = child.kill();
        let _ = child.wait();
        if !line.contains("listening on") {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        let after = snapshot(self.root.path());
        Ok(after
            .iter()
            .filter(|(p, meta)| before.get(*p) != Some(meta))
            .map(|(p, _)| p.clone())
            .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
            .collect())
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Replaces each `from`, which must occur (an example that changed shape fails loudly).
fn substitute(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in pairs {
        assert!(text.contains(from), "expected {from:?} in the example");
        text = text.replace(from, to);
    }
    text
}

/// Every path under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            let meta = std::fs::symlink_metadata(&p).expect("metadata");
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (meta.len(), meta.modified().ok()));
        }
    }
    out
}

/// Paths written by a daemon that lie outside every StateDirectory= of its unit: under
/// ProtectSystem=strict those writes would fail.
fn writes_outside_state(host: &Host, unit: &Unit, written: &[PathBuf]) -> Vec<PathBuf> {
    let writable: Vec<PathBuf> = unit
        .state_directories()
        .iter()
        .map(|s| host.path(&format!("/var/lib/{s}")))
        .collect();
    written
        .iter()
        .filter(|p| !writable.iter().any(|w| p.starts_with(w)))
        .cloned()
        .collect()
}

#[test]
fn example_configs_pass_prod_checks_and_start_in_the_unit_layout() {
    let host = Host::new();

    let participant = Unit::load("conclave-participant.service", true);
    let mut port = Reserved::new();
    let config = host.config("participant", port.port);
    let checks = host.check(&config);
    assert!(
        checks["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["detail"] == "from the systemd credential"),
        "the share passphrase comes from LoadCredential: {checks}"
    );
    // Without the credential the daemon has no passphrase (stdin is no terminal): the
    // credential, named as the unit names it, is what unlocks the share.
    let refused = host
        .run_daemon(&participant, &mut Reserved::new(), false)
        .expect_err("a participant without its credential must not start");
    assert!(refused.contains("no passphrase"), "{refused}");
    let written = host
        .run_daemon(&participant, &mut port, true)
        .unwrap_or_else(|log| panic!("participant did not start: {log}"));
    eprintln!("participant wrote: {written:?}");
    assert!(
        written.iter().any(|p| p.ends_with("audit.log")),
        "the participant opens its audit log: {written:?}"
    );
    let outside = writes_outside_state(&host, &participant, &written);
    assert!(
        outside.is_empty(),
        "participant wrote outside its StateDirectory: {outside:?}"
    );

    let coordinator = Unit::load("conclave-coordinator.service", true);
    let mut port = Reserved::new();
    let config = host.config("coordinator", port.port);
    host.check(&config);
    let written = host
        .run_daemon(&coordinator, &mut port, false)
        .unwrap_or_else(|log| panic!("coordinator did not start: {log}"));
    eprintln!("coordinator wrote: {written:?}");
    assert!(
        written.iter().any(|p| p.ends_with("audit.log")),
        "the coordinator opens its audit log: {written:?}"
    );
    let outside = writes_outside_state(&host, &coordinator, &written);
    assert!(
        outside.is_empty(),
        "coordinator wrote outside its StateDirectory: {outside:?}"
    );
}
