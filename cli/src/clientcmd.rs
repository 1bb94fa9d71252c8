//! What every client command (sign, status, agent, external-signer) connects to: flags
//! first, then the client config (`--client-config`, `$CONCLAVE_CLIENT_CONFIG`,
//! `~/.config/conclave/client.toml`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use conclave_client::{Client, ClientConfig, CoordinatorEntry};
use conclave_protocol::identity::read_node_id;
use conclave_protocol::{GroupName, IdentityKey, NodeId};

/// The client config to use: the one named, else `$CONCLAVE_CLIENT_CONFIG` (which must then
/// exist), else `~/.config/conclave/client.toml` if there is one.
pub(crate) fn load_config(explicit: Option<&Path>) -> anyhow::Result<Option<ClientConfig>> {
    if let Some(p) = explicit {
        return Ok(Some(ClientConfig::read(p)?));
    }
    if let Some(p) = std::env::var_os(conclave_client::config::ENV_VAR) {
        return Ok(Some(ClientConfig::read(Path::new(&p))?));
    }
    match ClientConfig::default_path() {
        Some(p) if p.exists() => Ok(Some(ClientConfig::read(&p)?)),
        _ => Ok(None),
    }
}

/// A client config made of the config file and the flags (flags win).
pub(crate) fn resolve(args: &crate::ClientArgs) -> anyhow::Result<ClientConfig> {
    let file = load_config(args.conn.client_config.as_deref())?;
    let no_config = "(give it as a flag, or write a client config: docs/CLIENTS.md)";
    let identity = args
        .conn
        .identity
        .clone()
        .or_else(|| file.as_ref().map(|c| c.identity.clone()))
        .ok_or_else(|| anyhow!("no client identity {no_config}: --identity DIR"))?;
    let coordinators = match (&args.conn.coordinator, &args.conn.coordinator_key) {
        (Some(address), Some(key)) => {
            let key = read_node_id(key)
                .context("--coordinator-key is neither a hex key nor a readable identity.pub")?;
            vec![CoordinatorEntry {
                address: address.clone(),
                key: key.to_hex(),
            }]
        }
        (Some(_), None) => return Err(anyhow!("--coordinator needs --coordinator-key")),
        (None, Some(_)) => return Err(anyhow!("--coordinator-key needs --coordinator")),
        (None, None) => file
            .as_ref()
            .map(|c| c.coordinators.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                anyhow!("no coordinator {no_config}: --coordinator HOST:PORT --coordinator-key KEY")
            })?,
    };
    Ok(ClientConfig {
        identity,
        group: args
            .group
            .clone()
            .or_else(|| file.as_ref().and_then(|c| c.group.clone())),
        timeout_ms: file.as_ref().and_then(|c| c.timeout_ms),
        trust_coordinator_key: file.as_ref().is_some_and(|c| c.trust_coordinator_key),
        manifests_dir: file.as_ref().and_then(|c| c.manifests_dir.clone()),
        manifests: file.map(|c| c.manifests).unwrap_or_default(),
        coordinators,
    })
}

/// The group to use: the flag, else the config's default.
pub(crate) fn group(config: &ClientConfig) -> anyhow::Result<GroupName> {
    let name = config
        .group
        .as_deref()
        .ok_or_else(|| anyhow!("no group: --group NAME, or `group = ...` in the client config"))?;
    GroupName::new(name).map_err(|e| anyhow!("group {name:?}: {e}"))
}

/// Connects to the first coordinator that answers before `deadline` and proves this client
/// is served (a group-info round trip), with hints that tell the two usual mistakes apart.
pub(crate) async fn connect(
    config: &ClientConfig,
    group: &GroupName,
    deadline: Instant,
) -> anyhow::Result<Client> {
    let identity = IdentityKey::read_from(&config.identity).with_context(|| {
        format!(
            "cannot load the client identity {}",
            config.identity.display()
        )
    })?;
    let mut errors = Vec::new();
    let n = config.coordinators.len();
    for (k, entry) in config.coordinators.iter().enumerate() {
        let key: NodeId = entry.node_id()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // An even part of the time left for each coordinator still to try: a silent one
        // cannot use up the whole deadline.
        let share = left / u32::try_from(n - k).unwrap_or(1);
        let attempt_deadline = Instant::now() + share;
        let addr = match tokio::net::lookup_host(&entry.address)
            .await
            .ok()
            .and_then(|mut a| a.next())
        {
            Some(a) => a,
            None => {
                errors.push(format!("{}: cannot resolve the address", entry.address));
                continue;
            }
        };
        let client = match Client::connect_within(&identity, addr, key, share).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!(
                    "{}: {e:#} (no answer, or it did not prove the key {}: check the coordinator's address and identity key)",
                    entry.address,
                    key.short()
                ));
                continue;
            }
        };
        // With TLS 1.3 the client's side of the handshake ends before the coordinator has
        // checked this client's certificate: the first request tells.
        let left = attempt_deadline
            .max(Instant::now() + Duration::from_millis(1))
            .saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.group_info(group)).await {
            Ok(Ok(_)) => return Ok(client),
            Ok(Err(conclave_client::ClientError::Sign(e))) => {
                // Served, but the group is unknown (or similar): a typed answer, not a
                // connection problem.
                client.close().await;
                return Err(anyhow!("{e} [{}]", e.code()));
            }
            Ok(Err(e)) => errors.push(format!(
                "{}: {e:#} (the coordinator closed the connection: is this client's key {} in its `clients`?)",
                entry.address,
                identity.node_id().to_hex()
            )),
            Err(_) => errors.push(format!("{}: no answer in time", entry.address)),
        }
    }
    Err(anyhow!(
        "cannot reach a coordinator: {}",
        if errors.is_empty() {
            "the deadline passed before any attempt".to_owned()
        } else {
            errors.join("; ")
        }
    ))
}

/// The deadline of a command: `--timeout` seconds if given, else the config's `timeout_ms`.
pub(crate) fn deadline(config: &ClientConfig, flag_secs: Option<f64>) -> (Instant, Duration) {
    let timeout = flag_secs
        .filter(|s| *s > 0.0)
        .map_or_else(|| config.timeout(), Duration::from_secs_f64);
    (Instant::now() + timeout, timeout)
}

/// A manifest of `group` among the config's own copies, if any. Every listed manifest must
/// read: a typo in a path is an error, never a quiet fall back to the coordinator's word.
pub(crate) fn local_manifest(
    config: &ClientConfig,
    group: &GroupName,
) -> anyhow::Result<Option<(PathBuf, conclave_keygen::GroupManifest)>> {
    for p in &config.manifests {
        let m = conclave_keygen::GroupManifest::read(p)
            .with_context(|| format!("manifest {} (listed in the client config)", p.display()))?;
        if &m.group == group {
            return Ok(Some((p.clone(), m)));
        }
    }
    Ok(None)
}
