//! `conclave agent`: an ssh-agent (draft-miller-ssh-agent, via `ssh-agent-lib`) whose keys are
//! threshold group keys. It lists each group key as an `ssh-ed25519` identity (comment = the
//! group name) and answers sign requests through threshold signing, so `ssh`, `ssh-add -L`,
//! `ssh-keygen -Y sign` and git's SSH signing work with a key whose secret is nowhere.
//!
//! The socket is created 0600 in a directory only its owner can enter; every connecting
//! process's uid (SO_PEERCRED) must be in the allow list (default: the agent's own uid).
//! Adding or removing identities is refused with the protocol's failure reply. A message over
//! 256 KiB (OpenSSH's cap) ends its connection (`agent_socket`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use conclave_client::{SigningService, ThresholdSigner};
use ssh_agent_lib::agent::{Agent, Session};
use ssh_agent_lib::error::AgentError;
use ssh_agent_lib::proto::{Identity, SignRequest};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, Signature};

use crate::agent_socket::CappedListener;
use crate::{AgentArgs, CmdResult};

/// The groups served, by public key.
struct Keys {
    by_key: HashMap<[u8; 32], Arc<ThresholdSigner>>,
    /// In the order given, for the identity list.
    order: Vec<Arc<ThresholdSigner>>,
}

/// Makes one session per connection, after checking the peer's uid.
struct Factory {
    keys: Arc<Keys>,
    allowed: Vec<u32>,
}

/// A connection from an allowed process.
#[derive(Clone)]
struct Served {
    keys: Arc<Keys>,
    uid: u32,
}

/// A connection from a process that is not allowed: every request fails.
struct Denied;

impl Session for Denied {}

/// Either session kind behind one type (`new_session` returns one concrete type).
enum Conn {
    Served(Served),
    Denied(Denied),
}

impl Agent<CappedListener> for Factory {
    fn new_session(&mut self, socket: &crate::agent_socket::Capped) -> impl Session {
        let uid = socket.peer_cred().ok().map(|c| c.uid());
        match uid {
            Some(uid) if self.allowed.contains(&uid) => Conn::Served(Served {
                keys: self.keys.clone(),
                uid,
            }),
            other => {
                tracing::warn!(uid = ?other, "agent connection refused: uid not allowed (--allow-uid)");
                Conn::Denied(Denied)
            }
        }
    }
}

#[ssh_agent_lib::async_trait]
impl Session for Conn {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        match self {
            Conn::Served(s) => s.request_identities().await,
            Conn::Denied(d) => d.request_identities().await,
        }
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        match self {
            Conn::Served(s) => s.sign(request).await,
            Conn::Denied(d) => d.sign(request).await,
        }
    }
}

#[ssh_agent_lib::async_trait]
impl Session for Served {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        Ok(self
            .keys
            .order
            .iter()
            .map(|s| Identity {
                pubkey: KeyData::Ed25519(Ed25519PublicKey(s.public_key().to_bytes())),
                comment: s.group().to_string(),
            })
            .collect())
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        let KeyData::Ed25519(Ed25519PublicKey(key)) = &request.pubkey else {
            tracing::info!(
                uid = self.uid,
                result = "refused",
                "agent sign: not an Ed25519 key of this agent"
            );
            return Err(AgentError::Failure);
        };
        let Some(signer) = self.keys.by_key.get(key).cloned() else {
            tracing::info!(
                uid = self.uid,
                result = "refused",
                "agent sign: unknown key"
            );
            return Err(AgentError::Failure);
        };
        // Logged: the kind (and SSHSIG namespace or SSH user) recognised from the bytes,
        // never the bytes themselves.
        let kind = conclave_policy::classify(&request.data);
        let detail = match &kind {
            conclave_policy::MessageKind::SshAuth { user, .. } => format!(" user={user}"),
            _ => String::new(),
        };
        match signer.sign(&request.data).await {
            Ok(sig) => {
                tracing::info!(uid = self.uid, group = %signer.group(), kind = %kind.name(), result = "signed", "agent sign{detail}");
                Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())
                    .map_err(AgentError::other)
            }
            Err(e) => {
                tracing::warn!(uid = self.uid, group = %signer.group(), kind = %kind.name(), result = e.code(), error = %e, "agent sign failed{detail}");
                Err(AgentError::Failure)
            }
        }
    }
}

/// Creates the socket's directory (0700) if missing and refuses one that others can enter;
/// removes a stale socket; binds; makes the socket 0600.
pub(crate) fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.exists() {
        conclave_protocol::identity::create_private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let meta = std::fs::metadata(&dir)?;
    {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "{} belongs to uid {}, not to this process's uid {me}: the socket needs a directory of its own",
                dir.display(),
                meta.uid()
            );
        }
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is open to group/others (mode {mode:03o}): the socket needs a directory of its own (chmod 700 {})",
            dir.display(),
            dir.display()
        );
    }
    if let Ok(m) = std::fs::symlink_metadata(socket) {
        if !m.file_type().is_socket() {
            bail!("{} exists and is not a socket", socket.display());
        }
        // A socket something still answers on belongs to a running agent: never take it over.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "a process is already listening on {}: stop it first, or choose another socket path",
                socket.display()
            );
        }
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub(crate) async fn run(args: AgentArgs) -> CmdResult {
    let client_args = crate::ClientArgs {
        conn: args.conn.clone(),
        group: None,
    };
    let config = crate::clientcmd::resolve(&client_args)?;
    // Without --group: every group this host's manifests name (the config's `manifests` and
    // `manifests_dir`), else the config's default group.
    let index =
        conclave_client::ManifestIndex::read(&config).map_err(|e| anyhow!("{} {e}", e.code()))?;
    let groups: Vec<String> = if !args.group.is_empty() {
        args.group.clone()
    } else if !index.is_empty() {
        index.groups().map(|g| g.to_string()).collect()
    } else {
        vec![config
            .group
            .clone()
            .ok_or_else(|| anyhow!("no group: --group NAME (repeat for several), `manifests`/`manifests_dir` or `group = ...` in the client config"))?]
    };
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let signers = ThresholdSigner::connect_groups(&config, &names)
        .await
        .map_err(|e| anyhow!("{} {e}", e.code()))?;
    let mut by_key = HashMap::new();
    let mut order = Vec::new();
    for s in signers {
        let s = Arc::new(s);
        if by_key
            .insert(s.public_key().to_bytes(), s.clone())
            .is_some()
        {
            return Err(anyhow!("two groups share one public key").into());
        }
        order.push(s);
    }
    let allowed = if args.allow_uid.is_empty() {
        vec![rustix::process::getuid().as_raw()]
    } else {
        args.allow_uid.clone()
    };
    let listener = bind(&args.socket)?;
    // Removed on exit only if it is still ours (another agent may have taken the path since).
    let ours = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&args.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let shown = if groups.len() <= 10 {
        groups.join(", ")
    } else {
        format!(
            "{}, ... ({} groups)",
            groups
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            groups.len()
        )
    };
    println!(
        "conclave agent listening on {} for {} ({} identit{}); SSH_AUTH_SOCK={}",
        args.socket.display(),
        shown,
        order.len(),
        if order.len() == 1 { "y" } else { "ies" },
        args.socket.display()
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    crate::daemon::notify_ready();
    // Keeps the connection up in the background, reconnecting with backoff (1 s to 30 s),
    // so a sign request rarely waits for a handshake.
    let keeper = order.first().cloned().map(|s| {
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_secs(1);
            loop {
                match s.ensure_connected().await {
                    Ok(()) => backoff = std::time::Duration::from_secs(1),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "agent: no coordinator reachable");
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                    }
                }
                tokio::time::sleep(backoff).await;
            }
        })
    });
    let factory = Factory {
        keys: Arc::new(Keys { by_key, order }),
        allowed,
    };
    tokio::select! {
        r = ssh_agent_lib::agent::listen(CappedListener(listener), factory) => {
            r.map_err(|e| anyhow!("agent socket: {e}"))?;
        }
        _ = crate::commands::shutdown_signal() => {}
    }
    if let Some(k) = keeper {
        k.abort();
    }
    let still_ours = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&args.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    if ours.is_some() && still_ours == ours {
        let _ = std::fs::remove_file(&args.socket);
    }
    Ok(())
}
