//! The client config file, shared by the library and every client command of the CLI
//! (`sign`, `status`, `agent`, `external-signer`):
//!
//! ```toml
//! identity = "/etc/conclave/client"   # the directory `conclave node init` wrote
//! group = "release"                   # default group
//! timeout_ms = 2000                   # per request, connecting included
//! manifests = ["/etc/conclave/release.manifest.toml"]   # optional: this host's own copies
//! [[coordinator]]                     # tried in order (failover)
//! address = "10.0.0.5:7000"
//! key = "<hex identity key>"
//! ```
//!
//! Found at `--client-config PATH`, else `$CONCLAVE_CLIENT_CONFIG`, else
//! `~/.config/conclave/client.toml` (`$XDG_CONFIG_HOME` respected). Relative paths are relative
//! to the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use conclave_protocol::NodeId;
use serde::Deserialize;

/// Largest client config read.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// Deadline of a request when the config gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable naming the client config.
pub const ENV_VAR: &str = "CONCLAVE_CLIENT_CONFIG";

/// One coordinator to try.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEntry {
    /// `host:port`.
    pub address: String,
    /// Its identity public key (hex).
    pub key: String,
}

impl CoordinatorEntry {
    /// The pinned key.
    pub fn node_id(&self) -> Result<NodeId, ConfigError> {
        NodeId::from_hex(&self.key).map_err(|_| {
            ConfigError::Invalid(format!(
                "coordinator {}: key is not a hex identity key (64 hex characters)",
                self.address
            ))
        })
    }
}

/// A client config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's identity directory (`conclave node init`).
    pub identity: PathBuf,
    /// Default group.
    #[serde(default)]
    pub group: Option<String>,
    /// Per-request deadline in milliseconds, connecting included (default 10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// This host's own copies of group manifests: the public key (and epoch) of a group is
    /// taken from them rather than from the coordinator.
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// A directory of this host's manifests (`*.toml`): every group in it may be signed for
    /// (the ssh-agent lists them all). A file that cannot be read is skipped with a warning.
    #[serde(default)]
    pub manifests_dir: Option<PathBuf>,
    /// Coordinators, tried in order.
    #[serde(default, rename = "coordinator")]
    pub coordinators: Vec<CoordinatorEntry>,
    /// Accept the group key the coordinator reports when no manifest names the group. Off by
    /// default: a coordinator alone could then name a key of its own and sign with it.
    #[serde(default)]
    pub trust_coordinator_key: bool,
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read client config {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("client config {path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientConfig {
    /// Reads and checks a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            conclave_protocol::read_bounded_to_string(path, MAX_CONFIG_LEN).map_err(|e| {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        Self::parse(path, &text)
    }

    /// Parses and checks the text of the config file at `path` (relative paths in it are
    /// resolved against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut c: Self = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: e.message().to_owned(),
        })?;
        let base = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        c.identity = abs(&c.identity);
        c.manifests = c.manifests.iter().map(|m| abs(m)).collect();
        c.manifests_dir = c.manifests_dir.as_deref().map(abs);
        for entry in &c.coordinators {
            entry.node_id()?;
        }
        if let Some(ms) = c.timeout_ms {
            if !(1..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid(format!(
                    "client config {}: timeout_ms is 1 to 3600000",
                    path.display()
                )));
            }
        }
        Ok(c)
    }

    /// The config file to use when none is named: `$CONCLAVE_CLIENT_CONFIG`, else
    /// `$XDG_CONFIG_HOME/conclave/client.toml`, else `~/.config/conclave/client.toml`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(ENV_VAR) {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("conclave").join("client.toml"))
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_reads_with_paths_relative_to_it_and_bad_keys_are_named() {
        let dir =
            std::env::temp_dir().join(format!("conclave-client-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = "11".repeat(32);
        let path = dir.join("client.toml");
        std::fs::write(
            &path,
            format!("identity = \"client\"\ngroup = \"release\"\ntimeout_ms = 2000\nmanifests = [\"release.manifest.toml\"]\n[[coordinator]]\naddress = \"10.0.0.5:7000\"\nkey = \"{key}\"\n[[coordinator]]\naddress = \"10.0.0.6:7000\"\nkey = \"{key}\"\n"),
        )
        .unwrap();
        let c = ClientConfig::read(&path).unwrap();
        assert_eq!(c.identity, dir.join("client"));
        assert_eq!(c.manifests, [dir.join("release.manifest.toml")]);
        assert_eq!(c.coordinators.len(), 2);
        assert_eq!(c.timeout(), Duration::from_millis(2000));
        std::fs::write(
            &path,
            "identity = \"c\"\n[[coordinator]]\naddress = \"x:1\"\nkey = \"zz\"\n",
        )
        .unwrap();
        assert!(ClientConfig::read(&path)
            .unwrap_err()
            .to_string()
            .contains("coordinator x:1"));
        std::fs::write(&path, "identity = \"c\"\nunknown = 1\n").unwrap();
        assert!(ClientConfig::read(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
