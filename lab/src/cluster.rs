//! A real t-of-n cluster on 127.0.0.1 inside this process, for `demo` and `bench`: real
//! identity and share files on disk, real QUIC with pinned mutual TLS, OS-chosen ports. Only
//! the processes are shared (tasks instead of separate programs).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conclave_keygen::{deal, GroupManifest, NewMember, Passphrase, ShareFile};
use conclave_protocol::{GroupName, IdentityKey, NodeId};
use conclave_transport::client::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use conclave_keygen::store::{share_path, write_dealt, KdfCost, ServedShares};

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn new(stop: oneshot::Sender<()>, task: JoinHandle<()>) -> Self {
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task and waits for it; idempotent.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    pub group: GroupName,
    pub manifest: GroupManifest,
    /// Where the manifest file is.
    pub manifest_file: std::path::PathBuf,
    /// The coordinator's identity public key.
    pub coordinator_key: NodeId,
    /// The client's identity directory.
    pub client_identity: std::path::PathBuf,
    pub names: Vec<String>,
    pub client: Client,
    pub coordinator_addr: SocketAddr,
    participants: Vec<Running>,
    coordinator: Running,
}

/// How strong the share files' KDF is.
#[derive(Clone, Copy)]
pub enum Kdf {
    Light,
}

/// Where the nodes write their audit records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audit {
    /// In memory (no disk I/O): the baseline of the authorization benchmark.
    Memory,
    /// Real hash-chained log files under `<dir>/audit/<node>/audit.log`, fsynced per record
    /// or not.
    Files { fsync: bool },
}

/// The policy every participant of a lab cluster holds: the lab client may have the group
/// sign any kind of message, up to the protocol's size limit, at a rate no benchmark reaches.
pub fn lab_policy(client: &NodeId, group: &GroupName) -> String {
    format!(
        "# Written by the conclave lab cluster: the lab client may sign anything.\n[[client]]\nname = \"lab-client\"\nkey = \"{}\"\ngroups = [\"{group}\"]\nkinds = [\"raw\", \"ssh-auth\", \"transition\", \"sshsig:git\", \"sshsig:file\"]\nmax_message_bytes = {}\nrate = \"1000000/s\"\n",
        client.to_hex(),
        conclave_protocol::MAX_SIGN_MESSAGE_LEN
    )
}

fn audit_sink(
    dir: &Path,
    node: &str,
    identity: &IdentityKey,
    audit: Audit,
) -> Result<Box<dyn conclave_audit::AuditSink>> {
    match audit {
        Audit::Memory => Ok(Box::new(conclave_audit::MemoryAudit::default())),
        Audit::Files { fsync } => {
            let d = dir.join("audit").join(node);
            conclave_protocol::identity::create_private_dir(&d)?;
            let log = conclave_audit::AuditLog::open(
                &d.join("audit.log"),
                identity.clone(),
                conclave_audit::Options {
                    fsync,
                    ..Default::default()
                },
            )?;
            Ok(Box::new(log))
        }
    }
}

impl LocalCluster {
    /// Makes keys and shares in `dir`, starts `n` participants and a coordinator, and waits
    /// until the coordinator reaches all of them. `step` narrates.
    pub async fn start(
        dir: &Path,
        t: u16,
        n: usize,
        kdf: Kdf,
        audit: Audit,
        mut step: impl FnMut(String),
    ) -> Result<Self> {
        let mut rng = rand::rngs::OsRng;
        let group = GroupName::new("demo").map_err(|e| anyhow::anyhow!("{e}"))?;
        let keys = dir.join("keys");
        let coordinator_id = IdentityKey::generate(&mut rng);
        let client_id = IdentityKey::generate(&mut rng);
        coordinator_id.write_to_dir(&keys.join("coordinator"))?;
        client_id.write_to_dir(&keys.join("client"))?;
        let mut identities = Vec::with_capacity(n);
        let names: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
        for name in &names {
            let id = IdentityKey::generate(&mut rng);
            id.write_to_dir(&keys.join(name))?;
            identities.push(id);
        }
        step(format!(
            "created {} identity keys (Ed25519, one per node) in {}",
            n + 2,
            keys.display()
        ));

        // Bind the participants first so the manifest can carry their real addresses.
        let allowed: HashSet<NodeId> = [coordinator_id.node_id()].into();
        let mut servers = Vec::with_capacity(n);
        for id in &identities {
            let server = conclave_transport::participant::Server::bind(
                id,
                "127.0.0.1:0".parse()?,
                allowed.clone(),
            )?;
            servers.push(server);
        }
        let members: Vec<NewMember> = names
            .iter()
            .zip(&identities)
            .zip(&servers)
            .map(|((name, id), s)| {
                Ok(NewMember {
                    name: name.clone(),
                    node_id: id.node_id(),
                    address: s.local_addr()?.to_string(),
                })
            })
            .collect::<Result<_>>()?;

        let started = Instant::now();
        let (manifest, shares) = deal(group.clone(), t, &members, &mut rng)?;
        let mut secret = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rng, &mut secret);
        let pass = Passphrase::new(hex::encode(secret));
        let names_dealt: Vec<String> = shares.iter().map(|s| s.name.clone()).collect();
        let cost = match kdf {
            Kdf::Light => KdfCost::Light,
        };
        // The dealer's all-or-nothing write, as `keygen dealer` does it.
        let (manifest_file, _) = write_dealt(dir, &manifest, &shares, &names_dealt, &pass, cost)?;
        drop(shares);
        step(format!(
            "dealt a {t}-of-{n} key: manifest {}, {n} share files encrypted with Argon2id + XChaCha20-Poly1305 ({} ms)",
            manifest_file.display(),
            started.elapsed().as_millis()
        ));

        // Each participant's own policy file, read back with the daemon's rules.
        let policy_dir = dir.join("policy");
        std::fs::create_dir_all(&policy_dir)?;
        let policy_file = policy_dir.join("participant.toml");
        std::fs::write(&policy_file, lab_policy(&client_id.node_id(), &group))?;
        let mut participants = Vec::with_capacity(n);
        for ((name, server), id) in names.iter().zip(servers).zip(&identities) {
            // Each participant reads and decrypts its own share file from disk, with the
            // daemon's loading rules.
            let path = share_path(dir, &group, name);
            let mut served = ServedShares::new(id.node_id());
            served.add(&path, ShareFile::read(&path, &pass)?)?;
            let p = conclave_participant::Participant::new(
                served.into_inner(),
                Default::default(),
                conclave_policy::Policy::read(&policy_file)?,
                audit_sink(dir, name, id, audit)?,
                &mut rng,
            );
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(server.run(p, async {
                let _ = stopped.await;
            }));
            participants.push(Running::new(stop, task));
        }
        drop(pass);

        let read_back = GroupManifest::read(&manifest_file)?;
        let addresses: HashMap<NodeId, String> = read_back
            .members()?
            .into_iter()
            .map(|m| (m.node_id, m.address))
            .collect();
        let sm = conclave_coordinator::Coordinator::new(vec![read_back], Default::default())?;
        let server = conclave_transport::coordinator::Server::bind(
            coordinator_id.clone(),
            "127.0.0.1:0".parse()?,
            [client_id.node_id()].into(),
        )?
        .with_audit(audit_sink(dir, "coordinator", &coordinator_id, audit)?);
        let coordinator_addr = server.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(sm, addresses, async {
                    let _ = stopped.await;
                    std::time::Duration::ZERO
                })
                .await;
        });
        let coordinator = Running::new(stop, task);
        let client =
            Client::connect(&client_id, coordinator_addr, coordinator_id.node_id()).await?;
        let cluster = Self {
            group,
            manifest,
            manifest_file: manifest_file.clone(),
            coordinator_key: coordinator_id.node_id(),
            client_identity: keys.join("client"),
            names,
            client,
            coordinator_addr,
            participants,
            coordinator,
        };
        cluster.wait_reachable(n, Duration::from_secs(15)).await?;
        step(format!(
            "started {n} participants and a coordinator on 127.0.0.1 (QUIC, mutual TLS pinned by identity key); coordinator at {coordinator_addr}, all {n} participants connected"
        ));
        Ok(cluster)
    }

    /// Waits until the coordinator reaches `want` participants.
    pub async fn wait_reachable(&self, want: usize, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let info = self
                .client
                .group_info(&self.group)
                .await
                .context("group info")?;
            if usize::from(info.reachable) == want {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "the coordinator reaches {} participants, expected {want}",
                    info.reachable
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops participant `i` (0-based); its connection closes and the coordinator notices.
    pub async fn stop_participant(&mut self, i: usize) {
        if let Some(p) = self.participants.get_mut(i) {
            p.stop().await;
        }
    }

    /// Name of participant `i` (0-based).
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("?", String::as_str)
    }

    /// Public key of the group.
    pub fn public_key(&self) -> Result<[u8; 32]> {
        Ok(self.manifest.public_key_bytes()?)
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        self.coordinator.stop().await;
        for p in &mut self.participants {
            p.stop().await;
        }
    }
}
