//! Operator-error checks by mode: the same list backs `conclave config check` (a report) and
//! daemon start-up (prod refuses on any failure, test warns, dev only notes).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, Mode};
use crate::passphrase;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

/// One check: what was looked at, the outcome, and how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub level: Level,
    pub what: String,
    pub detail: String,
    pub fix: Option<String>,
}

/// A list of checks for one config in its mode.
#[derive(Debug, Default, Serialize)]
pub struct Checks {
    pub mode: String,
    pub checks: Vec<Check>,
}

impl Checks {
    fn new(mode: Mode) -> Self {
        Self {
            mode: mode.to_string(),
            checks: Vec::new(),
        }
    }

    /// The checks every daemon config gets: the config file and the identity key are private.
    fn common(mode: Mode, config: &Path, identity_dir: &Path) -> Self {
        let mut c = Self::new(mode);
        c.private_file(mode, "config", config);
        c.private_file(
            mode,
            "identity key",
            &identity_dir.join(conclave_protocol::identity::KEY_FILE),
        );
        c
    }

    fn pass(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            level: Level::Pass,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        });
    }

    /// A problem: a failure in prod, a warning in test, a pass (noted) in dev.
    fn problem(
        &mut self,
        mode: Mode,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let level = match mode {
            Mode::Prod => Level::Fail,
            Mode::Test => Level::Warn,
            Mode::Dev => Level::Pass,
        };
        let mut detail = detail.into();
        if mode == Mode::Dev {
            detail.push_str(" (allowed in dev mode)");
        }
        self.checks.push(Check {
            level,
            what: what.into(),
            detail,
            fix: Some(fix.into()),
        });
    }

    /// A problem in every mode.
    fn fail(&mut self, what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check {
            level: Level::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.level == Level::Fail)
            .count()
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.level == Level::Warn)
    }

    /// Checks a secret or config file: not readable by group or others, and its directory not
    /// writable by others (who could swap the file).
    fn private_file(&mut self, mode: Mode, what: &str, path: &Path) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.fail(
                    what,
                    format!("{}: {e}", path.display()),
                    "check the path in the config",
                );
                return;
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perm = meta.permissions().mode() & 0o777;
            if perm & 0o077 != 0 {
                self.problem(
                    mode,
                    what,
                    format!(
                        "{} is readable or writable by group/others (mode {perm:03o})",
                        path.display()
                    ),
                    format!("chmod 600 {}", path.display()),
                );
            } else {
                self.pass(what, format!("{} mode {perm:03o}", path.display()));
            }
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if let Ok(dmeta) = std::fs::metadata(&dir) {
                let dperm = dmeta.permissions().mode();
                let sticky = dperm & 0o1000 != 0;
                if dperm & 0o002 != 0 {
                    let extra = if sticky {
                        " (sticky, but others can still add files)"
                    } else {
                        ""
                    };
                    self.problem(
                        mode,
                        format!("{what} directory"),
                        format!("{} is writable by others{extra}", dir.display()),
                        format!(
                            "keep it in a directory only its owner can write (chmod o-w {})",
                            dir.display()
                        ),
                    );
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (mode, meta);
            self.pass(
                what,
                format!("{} (permissions not checked on this OS)", path.display()),
            );
        }
    }

    /// Where a passphrase would come from, and whether the mode allows it.
    fn passphrase_source(&mut self, mode: Mode, what: &str, file: Option<&Path>) {
        if let Some(f) = file {
            self.private_file(mode, &format!("{what} passphrase file"), f);
            return;
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            if Path::new(&dir).join(passphrase::CREDENTIAL_NAME).exists() {
                self.pass(format!("{what} passphrase"), "from the systemd credential");
                return;
            }
        }
        if std::env::var_os(passphrase::ENV_VAR).is_some() {
            self.problem(
                mode,
                format!("{what} passphrase"),
                format!("would come from the environment variable {}", passphrase::ENV_VAR),
                "use passphrase_file or a systemd credential (LoadCredential=conclave-passphrase:...)",
            );
            return;
        }
        self.pass(
            format!("{what} passphrase"),
            "will be asked on the terminal",
        );
    }
}

/// Checks a participant config (and the files it names) in its mode.
pub fn participant(path: &Path, cfg: &config::ParticipantConfig) -> Checks {
    let mode = cfg.mode;
    let mut c = Checks::common(mode, path, &cfg.identity);
    let identity = conclave_protocol::identity::read_node_id(&cfg.identity.to_string_lossy()).ok();
    match config::node_ids(&cfg.coordinators, "coordinators") {
        Ok(ids) => c.pass("coordinators", format!("{} pinned", ids.len())),
        Err(e) => c.fail(
            "coordinators",
            format!("{e:#}"),
            "list coordinator identity keys as 64 hex characters",
        ),
    }
    for s in &cfg.shares {
        let what = format!("share {}", s.file.display());
        c.private_file(mode, &what, &s.file);
        match conclave_keygen::ShareFile::inspect(&s.file) {
            Ok(h) => {
                if identity.is_some_and(|id| id != h.owner) {
                    c.fail(
                        &what,
                        "belongs to another node's identity",
                        "use the share made for this node's identity key",
                    );
                } else {
                    c.pass(
                        &what,
                        format!("group {} epoch {} (header intact)", h.group, h.epoch),
                    );
                }
            }
            Err(e) => c.fail(
                &what,
                e.kind.to_string(),
                "restore the share file from backup",
            ),
        }
        c.passphrase_source(mode, &what, s.passphrase_file.as_deref());
        if cfg.share_cache_ttl.is_some()
            && !passphrase::unattended_source(s.passphrase_file.as_deref(), mode)
        {
            c.fail(
                format!("{what} share_cache_ttl"),
                "the share is decrypted again after the TTL, with nobody at a terminal, but its passphrase would be typed",
                "give passphrase_file, or a systemd credential, or remove share_cache_ttl",
            );
        }
    }
    if let Some(k) = &cfg.keystore {
        c.private_file(mode, "keystore", k);
        match conclave_keygen::Keystore::inspect(k) {
            Ok(h) if identity.is_some_and(|id| id != h.owner) => c.fail(
                "keystore",
                "belongs to another node's identity",
                "use the keystore made for this node (`conclave keystore init --identity DIR`)",
            ),
            Ok(h) => c.pass(
                "keystore",
                format!("public key {} (header intact)", h.public_key),
            ),
            Err(e) => c.fail(
                "keystore",
                e.kind.to_string(),
                "restore the keystore from backup",
            ),
        }
    }
    if cfg.keystore.is_some() || cfg.shares_dir.is_some() {
        c.passphrase_source(mode, "node", cfg.passphrase_file.as_deref());
    }
    if let Some(d) = &cfg.shares_dir {
        c.private_dir(mode, "shares_dir", d);
    }
    c.policy(mode, &cfg.policy, true);
    c.audit_dir(mode, &cfg.audit_log);
    c.metrics(cfg.metrics_listen);
    c
}

/// Checks a coordinator config (and the files it names) in its mode.
pub fn coordinator(path: &Path, cfg: &config::CoordinatorConfig) -> Checks {
    let mode = cfg.mode;
    let mut c = Checks::common(mode, path, &cfg.identity);
    match config::node_ids(&cfg.clients, "clients") {
        Ok(ids) if ids.is_empty() => c.problem(
            mode,
            "clients",
            "no client may request signatures",
            "list client identity keys",
        ),
        Ok(ids) => c.pass("clients", format!("{} pinned", ids.len())),
        Err(e) => c.fail(
            "clients",
            format!("{e:#}"),
            "list client identity keys as 64 hex characters",
        ),
    }
    for m in &cfg.manifests {
        let what = format!("manifest {}", m.display());
        match conclave_keygen::GroupManifest::read(m) {
            Ok(g) => c.pass(
                &what,
                format!(
                    "group {} {}-of-{} epoch {}",
                    g.group,
                    g.threshold,
                    g.participants.len(),
                    g.epoch
                ),
            ),
            Err(e) => c.fail(&what, e.to_string(), "use the manifest written by keygen"),
        }
    }
    if let Some(d) = &cfg.manifests_dir {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => c.pass(
                "manifests_dir",
                format!(
                    "{} (each manifest is checked when read; a bad one is reported and skipped)",
                    d.display()
                ),
            ),
            Ok(_) => c.fail(
                "manifests_dir",
                format!("{} is not a directory", d.display()),
                "give a directory of manifests",
            ),
            Err(e) => c.fail(
                "manifests_dir",
                format!("{}: {e}", d.display()),
                "check the path in the config",
            ),
        }
    }
    if let Some(p) = &cfg.policy {
        c.policy(mode, p, false);
    }
    c.audit_dir(mode, &cfg.audit_log);
    c.metrics(cfg.metrics_listen);
    c
}

impl Checks {
    /// A directory of secrets: exists, and nobody but its owner can list or change it.
    fn private_dir(&mut self, mode: Mode, what: &str, dir: &Path) {
        match std::fs::metadata(dir) {
            Err(e) => self.fail(
                what,
                format!("{}: {e}", dir.display()),
                "check the path in the config",
            ),
            Ok(m) if !m.is_dir() => self.fail(
                what,
                format!("{} is not a directory", dir.display()),
                "give the directory of the share files",
            ),
            Ok(m) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let perm = m.permissions().mode() & 0o777;
                    if perm & 0o077 != 0 {
                        self.problem(
                            mode,
                            what,
                            format!(
                                "{} is open to group/others (mode {perm:03o})",
                                dir.display()
                            ),
                            format!("chmod 700 {}", dir.display()),
                        );
                        return;
                    }
                }
                let _ = (mode, &m);
                self.pass(
                    what,
                    format!(
                        "{} (each share is checked when read; a bad one is reported and skipped)",
                        dir.display()
                    ),
                );
            }
        }
    }

    /// Metrics carry no secret but tell who signs how often: a non-loopback address is worth a
    /// warning (fine behind a firewall or a scraper-only network).
    fn metrics(&mut self, listen: Option<std::net::SocketAddr>) {
        match listen {
            None => self.pass("metrics", "off (metrics_listen not set)"),
            Some(a) if a.ip().is_loopback() => {
                self.pass("metrics", format!("http://{a}/metrics (loopback)"))
            }
            Some(a) => self.checks.push(Check {
                level: Level::Warn,
                what: "metrics".into(),
                detail: format!("http://{a}/metrics is reachable beyond this host: it shows who signs how often"),
                fix: Some("listen on 127.0.0.1 and scrape through your agent, or allow only the scraper".into()),
            }),
        }
    }

    /// The policy file parses, and nobody but its owner can change it; a participant's names
    /// at least one client.
    fn policy(&mut self, mode: Mode, path: &Path, signer: bool) {
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let perm = m.permissions().mode() & 0o777;
            if perm & 0o022 != 0 {
                self.problem(
                    mode,
                    "policy file",
                    format!(
                        "{} is writable by group/others (mode {perm:03o}): they could grant themselves signatures",
                        path.display()
                    ),
                    format!("chmod go-w {}", path.display()),
                );
            }
        }
        #[cfg(not(unix))]
        let _ = mode;
        match conclave_policy::Policy::read(path) {
            Ok(p) if p.clients().is_empty() && signer => self.checks.push(Check {
                level: Level::Warn,
                what: "policy".into(),
                detail: format!(
                    "{} names no client: every request will be refused",
                    path.display()
                ),
                fix: Some("add a [[client]] table (see docs/POLICY.md)".into()),
            }),
            Ok(p) => self.pass(
                "policy",
                format!(
                    "{}: {} client(s): {}",
                    path.display(),
                    p.clients().len(),
                    p.clients().into_keys().collect::<Vec<_>>().join(", ")
                ),
            ),
            Err(e) => self.fail(
                "policy",
                e.to_string(),
                "fix the policy file (see docs/POLICY.md)",
            ),
        }
    }

    /// The audit log's directory is the node's own: mode 0700 (created so if missing).
    fn audit_dir(&mut self, mode: Mode, log: &Path) {
        let dir = match log.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(&dir) {
                Err(_) => self.pass(
                    "audit log",
                    format!("{} will be created (mode 0700)", dir.display()),
                ),
                Ok(m) if m.permissions().mode() & 0o077 != 0 => self.problem(
                    mode,
                    "audit log directory",
                    format!(
                        "{} is open to group/others (mode {:03o})",
                        dir.display(),
                        m.permissions().mode() & 0o777
                    ),
                    format!(
                        "give the audit log a directory of its own: chmod 700 {}",
                        dir.display()
                    ),
                ),
                Ok(_) => self.pass(
                    "audit log",
                    format!("{} (directory mode 0700)", log.display()),
                ),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = mode;
            self.pass("audit log", log.display().to_string());
        }
    }
}

/// Prints checks as a table, one line each.
pub fn print(checks: &Checks) {
    for c in &checks.checks {
        let tag = match c.level {
            Level::Pass => "pass",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        match &c.fix {
            Some(fix) if c.level != Level::Pass => {
                println!("{tag}  {}: {}  -> {fix}", c.what, c.detail)
            }
            _ => println!("{tag}  {}: {}", c.what, c.detail),
        }
    }
}
