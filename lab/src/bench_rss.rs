//! `conclave bench --rss`: the resident memory of a real participant process, idle and with
//! 10,000 pooled nonces for one coordinator.
//!
//! The participant runs in a child process (this binary, `bench-child participant-rss`), with
//! its share decrypted from a share file and the QUIC server of the daemon; it reports its own
//! `VmRSS` and how many commitments it holds, one JSON line at a time. The coordinator (and
//! the group's second signer) run in this process and fill the child's pool to the target.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conclave_keygen::store::{share_path, write_dealt, KdfCost};
use conclave_keygen::{deal, NewMember, Passphrase, ShareFile};
use conclave_protocol::{GroupName, IdentityKey, NodeId};

/// Resident and peak resident memory of this process, in KiB.
pub fn own_rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn group() -> Result<GroupName> {
    GroupName::new("rss").map_err(|e| anyhow::anyhow!("{e}"))
}

/// The child: serves one share to the coordinator named in `dir`, with room for `nonces`
/// pooled commitments, and reports `{"outstanding", "rss_kib", "hwm_kib"}` every 100 ms until
/// its standard input closes.
pub async fn participant_child(dir: &Path, nonces: usize) -> Result<()> {
    let identity = IdentityKey::read_from(&dir.join("p1"))?;
    let coordinator =
        NodeId::from_hex(std::fs::read_to_string(dir.join("coordinator.hex"))?.trim())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pass = Passphrase::new(std::fs::read_to_string(dir.join("pass"))?);
    let group = group()?;
    let path = share_path(dir, &group, "p1");
    let mut served = conclave_keygen::store::ServedShares::new(identity.node_id());
    served.add(&path, ShareFile::read(&path, &pass)?)?;
    drop(pass);
    let policy =
        conclave_policy::Policy::from_toml(&crate::cluster::lab_policy(&coordinator, &group))?;
    let participant = conclave_participant::Participant::new(
        served.into_inner(),
        conclave_participant::ParticipantConfig {
            max_outstanding: nonces,
            ..Default::default()
        },
        policy,
        Box::new(conclave_audit::MemoryAudit::default()),
        &mut rand::rngs::OsRng,
    );
    let server = conclave_transport::participant::Server::bind(
        &identity,
        "127.0.0.1:0".parse()?,
        [coordinator].into(),
    )?;
    let addr = server.local_addr()?;
    let handle = server.handle_for(participant);
    let (rss, hwm) = own_rss_kib();
    println!(
        "{}",
        serde_json::json!({ "addr": addr.to_string(), "outstanding": 0, "rss_kib": rss, "hwm_kib": hwm })
    );
    let reporter = {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (rss, hwm) = own_rss_kib();
                println!(
                    "{}",
                    serde_json::json!({ "outstanding": handle.outstanding(&group), "rss_kib": rss, "hwm_kib": hwm })
                );
            }
        })
    };
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    });
    server
        .run_with(handle, async {
            let _ = stdin_closed.await;
            Duration::ZERO
        })
        .await;
    reporter.abort();
    Ok(())
}

/// What the parent measured.
pub struct RssReport {
    pub nonces: usize,
    pub idle_kib: u64,
    pub pooled_kib: u64,
    pub fill: Duration,
}

impl RssReport {
    pub fn per_nonce_bytes(&self) -> f64 {
        (self.pooled_kib.saturating_sub(self.idle_kib) as f64 * 1024.0) / self.nonces.max(1) as f64
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn line(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Result<serde_json::Value> {
    let l = lines
        .next()
        .context("the participant process ended early")??;
    Ok(serde_json::from_str(&l)?)
}

/// Starts the child participant from `exe`, fills its pool to `nonces` from a coordinator in
/// this process, and returns its RSS before and after.
pub async fn measure(exe: &Path, nonces: usize) -> Result<RssReport> {
    let tmp = tempfile::Builder::new()
        .prefix("conclave-bench-rss-")
        .tempdir()?;
    let dir: PathBuf = tmp.path().to_path_buf();
    let mut rng = rand::rngs::OsRng;
    let group = group()?;
    let coordinator = IdentityKey::generate(&mut rng);
    let p1 = IdentityKey::generate(&mut rng);
    let p2 = IdentityKey::generate(&mut rng);
    p1.write_to_dir(&dir.join("p1"))?;
    std::fs::write(dir.join("coordinator.hex"), coordinator.node_id().to_hex())?;
    let members: Vec<NewMember> = [("p1", &p1), ("p2", &p2)]
        .iter()
        .map(|(name, id)| NewMember {
            name: (*name).to_owned(),
            node_id: id.node_id(),
            address: "127.0.0.1:1".into(),
        })
        .collect();
    let (manifest, shares) = deal(group.clone(), 2, &members, &mut rng)?;
    let mut secret = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rng, &mut secret);
    let pass = Passphrase::new(hex::encode(secret));
    let names: Vec<String> = vec!["p1".into(), "p2".into()];
    write_dealt(&dir, &manifest, &shares, &names, &pass, KdfCost::Light)?;
    conclave_protocol::identity::write_private_file(
        &dir.join("pass"),
        hex::encode(secret).as_bytes(),
    )?;
    let p2_share = shares
        .iter()
        .find(|s| s.name == "p2")
        .map(|s| s.key_package.clone())
        .context("p2's share")?;
    drop(shares);

    let mut child = Child(
        std::process::Command::new(exe)
            .args(["bench-child", "participant-rss", "--nonces"])
            .arg(nonces.to_string())
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?,
    );
    let stdout = child.0.stdout.take().context("child stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<serde_json::Value>>(64);
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let v = line(&mut lines);
            let end = v.is_err();
            if tx.blocking_send(v).is_err() || end {
                break;
            }
        }
    });
    let first = rx
        .recv()
        .await
        .context("no report from the participant")??;
    let addr = first
        .get("addr")
        .and_then(|a| a.as_str())
        .context("no address from the participant")?
        .to_owned();
    // Idle: the share decrypted, the QUIC server up, no coordinator yet. Wait a report.
    let idle = rx.recv().await.context("no report")??;
    let idle_kib = idle.get("rss_kib").and_then(|v| v.as_u64()).unwrap_or(0);

    // The second signer, in this process, and the coordinator with a pool of `nonces`.
    let p2_server = conclave_transport::participant::Server::bind(
        &p2,
        "127.0.0.1:0".parse()?,
        [coordinator.node_id()].into(),
    )?;
    let p2_addr = p2_server.local_addr()?;
    let p2_state = conclave_participant::Participant::new(
        vec![(group.clone(), 1, p2_share)],
        conclave_participant::ParticipantConfig {
            max_outstanding: nonces,
            ..Default::default()
        },
        conclave_policy::Policy::from_toml(&crate::cluster::lab_policy(
            &coordinator.node_id(),
            &group,
        ))?,
        Box::new(conclave_audit::MemoryAudit::default()),
        &mut rng,
    );
    let (stop_p2, p2_stopped) = tokio::sync::oneshot::channel::<()>();
    let p2_task = tokio::spawn(p2_server.run(p2_state, async {
        let _ = p2_stopped.await;
    }));
    let sm = conclave_coordinator::Coordinator::new(
        vec![manifest],
        conclave_coordinator::CoordinatorConfig {
            pool_target: u16::try_from(nonces).unwrap_or(u16::MAX),
            // The whole pool, idle or not: what is measured is the memory of `nonces`.
            pool_idle: u16::try_from(nonces).unwrap_or(u16::MAX),
            ..Default::default()
        },
    )?;
    let server = conclave_transport::coordinator::Server::bind(
        coordinator.clone(),
        "127.0.0.1:0".parse()?,
        HashSet::new(),
    )?;
    let addresses: HashMap<NodeId, String> = [
        (p1.node_id(), addr.clone()),
        (p2.node_id(), p2_addr.to_string()),
    ]
    .into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let coordinator_task = tokio::spawn(server.run(sm, addresses, async {
        let _ = stopped.await;
        Duration::ZERO
    }));
    let pooled_kib;
    let until = Instant::now() + Duration::from_secs(120);
    let mut fill = Duration::ZERO;
    loop {
        let report = tokio::time::timeout_at(tokio::time::Instant::from_std(until), rx.recv())
            .await
            .context("the pool did not fill within 120 s")?
            .context("the participant process ended")??;
        let held = report
            .get("outstanding")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if held as usize >= nonces {
            if fill.is_zero() {
                fill = started.elapsed();
                continue; // one more report, so the figure is taken after the fill settled
            }
            pooled_kib = report.get("rss_kib").and_then(|v| v.as_u64()).unwrap_or(0);
            break;
        }
    }
    let _ = stop.send(());
    let _ = coordinator_task.await;
    let _ = stop_p2.send(());
    let _ = p2_task.await;
    drop(child);
    if pooled_kib == 0 {
        bail!("no memory figure from the participant");
    }
    Ok(RssReport {
        nonces,
        idle_kib,
        pooled_kib,
        fill,
    })
}
