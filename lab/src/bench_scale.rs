//! `conclave bench --groups-per-node N`: a 3-of-5 loopback cluster of real processes serving
//! 1, 100 and N groups from `shares_dir` / `manifests_dir`, each share sealed to its node's
//! keystore (production Argon2id cost: 64 MiB, 3 passes). It reports participant and
//! coordinator start time (spawn to "listening on") and resident memory, sign p50/p99 on one
//! hot group and on a random group (warm: every group keeps `pool_idle` = 1 commitment per
//! signer; cold: a second coordinator with `pool_idle` = 0, first request on each group; and
//! warm with a third coordinator whose `pool_idle` = `pool_target`, so that a request sends no
//! refill of its own), the ssh-agent's identity list, and the same signing in the simulator
//! with 10,000 groups.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conclave_client::{ClientConfig, SigningService, ThresholdSigner};
use conclave_keygen::{deal, share_header, KdfParams, Keystore, NewMember, Passphrase, ShareFile};
use conclave_protocol::{GroupName, IdentityKey};
use rand::Rng;

/// What `--groups-per-node` runs.
pub struct ScaleOptions {
    pub groups_per_node: usize,
    /// Signatures per phase (hot, random warm, random cold).
    pub requests: usize,
    /// Groups of the simulated run.
    pub sim_groups: usize,
    pub json: bool,
}

const NODES: usize = 5;
const THRESHOLD: u16 = 3;

/// Kills the processes on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn summary(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    serde_json::json!({
        "n": v.len(),
        "p50_ms": ms(quantile(&v, 0.5)),
        "p99_ms": ms(quantile(&v, 0.99)),
    })
}

/// A number field of a JSON object (0 when absent).
fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

fn name(i: usize) -> String {
    format!("g{i:05}")
}

/// A UDP port chosen by the OS, held until just before the process that binds it starts.
fn reserve() -> Result<(std::net::UdpSocket, u16)> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = s.local_addr()?.port();
    Ok((s, port))
}

/// The files of one cluster: identities, keystores, the sealed shares and the manifests.
struct Setup {
    dir: PathBuf,
    groups: usize,
    coordinator: IdentityKey,
    cold_coordinator: IdentityKey,
    full_coordinator: IdentityKey,
    client: IdentityKey,
    ports: Vec<(std::net::UdpSocket, u16)>,
}

fn private_dir(p: &Path) -> Result<()> {
    conclave_protocol::identity::create_private_dir(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

fn setup(dir: &Path, groups: usize) -> Result<Setup> {
    let mut rng = rand::rngs::OsRng;
    let coordinator = IdentityKey::generate(&mut rng);
    let cold_coordinator = IdentityKey::generate(&mut rng);
    let full_coordinator = IdentityKey::generate(&mut rng);
    let client = IdentityKey::generate(&mut rng);
    coordinator.write_to_dir(&dir.join("coordinator"))?;
    cold_coordinator.write_to_dir(&dir.join("coordinator-cold"))?;
    full_coordinator.write_to_dir(&dir.join("coordinator-full"))?;
    client.write_to_dir(&dir.join("client"))?;
    let mut secret = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rng, &mut secret);
    let pass_text = hex::encode(secret);
    conclave_protocol::identity::write_private_file(&dir.join("pass"), pass_text.as_bytes())?;
    let pass = Passphrase::new(pass_text);
    let mut members = Vec::new();
    let mut keystores = Vec::new();
    let mut ports = Vec::new();
    for i in 1..=NODES {
        let p = format!("p{i}");
        let id = IdentityKey::generate(&mut rng);
        id.write_to_dir(&dir.join(&p))?;
        let ks = Keystore::create(
            &dir.join(format!("{p}.keystore")),
            id.node_id(),
            &pass,
            KdfParams::standard(&mut rng),
            &mut rng,
        )?;
        keystores.push(ks.public_key());
        private_dir(&dir.join(format!("{p}-shares")))?;
        let port = reserve()?;
        members.push(NewMember {
            name: p,
            node_id: id.node_id(),
            address: format!("127.0.0.1:{}", port.1),
        });
        ports.push(port);
    }
    private_dir(&dir.join("manifests"))?;
    for g in 0..groups {
        let group = GroupName::new(&name(g)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (manifest, shares) = deal(group.clone(), THRESHOLD, &members, &mut rng)?;
        std::fs::write(
            dir.join(format!("manifests/{group}.manifest.toml")),
            manifest.to_toml()?,
        )?;
        for (share, key) in shares.iter().zip(&keystores) {
            let header = share_header(
                &manifest,
                share.node_id,
                &share.key_package,
                KdfParams::light(&mut rng),
            )?;
            ShareFile::write_to(
                &dir.join(format!(
                    "{}-shares/{group}.{}.share",
                    share.name, share.name
                )),
                &share.key_package,
                header,
                key,
                false,
                &mut rng,
            )?;
        }
    }
    let names: Vec<String> = (0..groups).map(|g| format!("\"{}\"", name(g))).collect();
    let policy = format!(
        "[[client]]\nname = \"bench\"\nkey = \"{}\"\ngroups = [{}]\nkinds = [\"raw\", \"ssh-auth\"]\nmax_message_bytes = 65536\nrate = \"1000000/min\"\n",
        client.node_id().to_hex(),
        names.join(", ")
    );
    for i in 1..=NODES {
        let p = format!("p{i}");
        conclave_protocol::identity::write_private_file(
            &dir.join(format!("{p}.policy.toml")),
            policy.as_bytes(),
        )?;
    }
    Ok(Setup {
        dir: dir.to_path_buf(),
        groups,
        coordinator,
        cold_coordinator,
        full_coordinator,
        client,
        ports,
    })
}

/// Spawns `role --config FILE`; returns the child, its start time (spawn to the
/// "listening on" line) and that line.
fn spawn(
    exe: &Path,
    dir: &Path,
    role: &str,
    config: &Path,
    log: &str,
) -> Result<(Child, Duration, String)> {
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args([role, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(log))?)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("cannot start {role}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let took = t0.elapsed();
    if !line.contains("listening on") {
        let _ = child.kill();
        bail!(
            "{role} did not start: {}",
            std::fs::read_to_string(dir.join(log)).unwrap_or_default()
        );
    }
    Ok((child, took, line.trim().to_owned()))
}

/// What one cluster size measured.
struct Started {
    procs: Procs,
    participant_start: Vec<Duration>,
    participant_rss_kib: Vec<u64>,
    coordinator_start: Duration,
    coordinator_rss_kib: u64,
    coordinator_addr: String,
}

fn start(exe: &Path, s: &mut Setup) -> Result<Started> {
    let d = s.dir.clone();
    let mut procs = Procs(Vec::new());
    let mut participant_start = Vec::new();
    let coordinators = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        s.coordinator.node_id().to_hex(),
        s.cold_coordinator.node_id().to_hex(),
        s.full_coordinator.node_id().to_hex()
    );
    for (i, (socket, port)) in std::mem::take(&mut s.ports).into_iter().enumerate() {
        let p = format!("p{}", i + 1);
        let config = d.join(format!("{p}.toml"));
        conclave_protocol::identity::write_private_file(
            &config,
            format!(
                "mode = \"test\"\nidentity = \"{p}\"\nlisten = \"127.0.0.1:{port}\"\ncoordinators = {coordinators}\npolicy = \"{p}.policy.toml\"\naudit_log = \"{p}-audit/audit.log\"\nkeystore = \"{p}.keystore\"\npassphrase_file = \"pass\"\nshares_dir = \"{p}-shares\"\n"
            )
            .as_bytes(),
        )?;
        drop(socket);
        let (child, took, _) = spawn(exe, &d, "participant", &config, &format!("{p}.log"))?;
        participant_start.push(took);
        procs.0.push(child);
    }
    let (child, coordinator_start, coordinator_addr) = spawn_coordinator(exe, s, "coordinator", 1)?;
    procs.0.push(child);

    Ok(Started {
        procs,
        participant_start,
        participant_rss_kib: Vec::new(),
        coordinator_start,
        coordinator_rss_kib: 0,
        coordinator_addr,
    })
}

/// Stops every process but the participants (the first [`NODES`]): a coordinator measured
/// next does not compete with another's refills.
fn stop_all_but_participants(procs: &mut Procs) {
    for c in procs.0.iter_mut().skip(NODES) {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts coordinator `which` (its identity directory's name) with `pool_idle = idle`;
/// returns it, its start time and its address.
fn spawn_coordinator(
    exe: &Path,
    s: &Setup,
    which: &str,
    idle: u16,
) -> Result<(Child, Duration, String)> {
    let config = s.dir.join(format!("{which}.toml"));
    conclave_protocol::identity::write_private_file(
        &config,
        format!(
            "mode = \"test\"\nidentity = \"{which}\"\nlisten = \"127.0.0.1:0\"\nclients = [\"{}\"]\nmanifests_dir = \"manifests\"\npool_idle = {idle}\naudit_log = \"{which}-audit/audit.log\"\n",
            s.client.node_id().to_hex()
        )
        .as_bytes(),
    )?;
    let (child, took, line) = spawn(exe, &s.dir, "coordinator", &config, &format!("{which}.log"))?;
    let addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
    Ok((child, took, addr))
}

fn client_config(s: &Setup, address: &str, key: &IdentityKey, name: &str) -> Result<ClientConfig> {
    let path = s.dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "identity = \"client\"\nmanifests_dir = \"manifests\"\ntimeout_ms = 10000\n[[coordinator]]\naddress = \"{address}\"\nkey = \"{}\"\n",
            key.node_id().to_hex()
        ),
    )?;
    Ok(ClientConfig::read(&path)?)
}

/// Signs once, retrying for a while (the coordinator may still be connecting).
async fn first_signature(signer: &ThresholdSigner) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match signer.sign(b"warm-up").await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "warming up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("the cluster never signed: {e}"),
        }
    }
}

async fn timed(signer: &ThresholdSigner, i: usize) -> Result<Duration> {
    let msg = format!("bench {i} {}", signer.group());
    let t0 = Instant::now();
    signer
        .sign(msg.as_bytes())
        .await
        .with_context(|| format!("sign on {}", signer.group()))?;
    Ok(t0.elapsed())
}

/// Lists the agent's identities over its socket (SSH_AGENTC_REQUEST_IDENTITIES) and returns
/// how many keys and how long it took.
fn agent_list(socket: &Path) -> Result<(usize, Duration)> {
    let t0 = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(&[0, 0, 0, 1, 11])?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 16 * 1024 * 1024 {
        bail!("agent answer too large");
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let took = t0.elapsed();
    // SSH_AGENT_IDENTITIES_ANSWER (12), then a u32 count.
    match (body.first(), body.get(1..5)) {
        (Some(12), Some(n)) => {
            let n: [u8; 4] = n.try_into()?;
            Ok((u32::from_be_bytes(n) as usize, took))
        }
        _ => bail!("not an identities answer"),
    }
}

fn agent(exe: &Path, s: &Setup, config: &Path) -> Result<(Child, PathBuf)> {
    let dir = s.dir.join("agent");
    private_dir(&dir)?;
    let socket = dir.join("agent.sock");
    let mut child = Command::new(exe)
        .args(["agent", "--socket"])
        .arg(&socket)
        .env("CONCLAVE_CLIENT_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(s.dir.join("agent.log"))?)
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if !line.contains("agent listening on") {
        let _ = child.kill();
        bail!(
            "the agent did not start: {}",
            std::fs::read_to_string(s.dir.join("agent.log")).unwrap_or_default()
        );
    }
    Ok((child, socket))
}

/// The simulated 3-of-5 cluster with `groups` groups: random vs hot, warm and cold.
fn simulate(groups: usize, requests: usize) -> Result<serde_json::Value> {
    use conclave_sim::{GroupChoice, Scenario};
    let mut out = serde_json::Map::new();
    for (label, choice, idle) in [
        ("hot", GroupChoice::Hot, 1u16),
        ("random_idle", GroupChoice::Random, 1),
        ("random_empty", GroupChoice::Random, 0),
    ] {
        let mut s = Scenario::new(THRESHOLD, NODES)
            .requests(requests)
            .concurrency(1)
            .groups(groups, choice);
        s.pool_idle = idle;
        let t0 = Instant::now();
        let r = conclave_sim::run(s).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.insert(
            label.into(),
            serde_json::json!({
                "ok": r.ok, "failed": r.failed_total(), "violations": r.violations.len(),
                "p50_ms": r.latency_ms.p50, "p99_ms": r.latency_ms.p99,
                "wall_s": t0.elapsed().as_secs_f64(),
            }),
        );
    }
    let p50 = |k: &str| out.get(k).map_or(0.0, |v| num(v, "p50_ms"));
    let (hot, idle, empty) = (p50("hot"), p50("random_idle"), p50("random_empty"));
    out.insert("ratio_cold".into(), (idle / hot.max(1e-9)).into());
    out.insert("ratio_empty".into(), (empty / hot.max(1e-9)).into());
    out.insert("groups".into(), groups.into());
    Ok(serde_json::Value::Object(out))
}

pub async fn run(exe: &Path, opts: ScaleOptions) -> Result<()> {
    let top = opts.groups_per_node.max(1);
    let mut sizes = vec![1usize, 100, top];
    sizes.retain(|&g| g <= top);
    sizes.dedup();
    let say = |s: String| {
        if !opts.json {
            eprintln!("{s}");
        }
    };
    let mut starts = Vec::new();
    let mut sign = serde_json::Value::Null;
    for &groups in &sizes {
        let tmp = tempfile::Builder::new()
            .prefix("conclave-bench-scale-")
            .tempdir()?;
        say(format!(
            "{groups} groups: dealing 3-of-5, sealing to 5 keystores..."
        ));
        let t0 = Instant::now();
        let mut s = setup(tmp.path(), groups)?;
        say(format!(
            "  dealt in {:.1} s; starting 5 participants and the coordinator",
            t0.elapsed().as_secs_f64()
        ));
        let last = groups == top;
        let mut started = start(exe, &mut s)?;
        let config = client_config(&s, &started.coordinator_addr, &s.coordinator, "client")?;
        let signers = ThresholdSigner::connect_all(&config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let first = signers.first().context("no group")?;
        first_signature(first).await?;
        // Idle: every group's pools hold their pool_idle commitment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        started.participant_rss_kib = started
            .procs
            .0
            .iter()
            .take(NODES)
            .map(|c| rss_kib(c.id()))
            .collect();
        started.coordinator_rss_kib = started.procs.0.get(NODES).map_or(0, |c| rss_kib(c.id()));
        let pstart: Vec<f64> = started.participant_start.iter().map(|d| ms(*d)).collect();
        let max_start = pstart.iter().copied().fold(0.0, f64::max);
        let max_rss = started
            .participant_rss_kib
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        say(format!(
            "  participant start {max_start:.0} ms (slowest of 5), RSS {:.1} MiB; coordinator start {:.0} ms, RSS {:.1} MiB",
            mib(max_rss),
            ms(started.coordinator_start),
            mib(started.coordinator_rss_kib)
        ));
        starts.push(serde_json::json!({
            "groups": groups,
            "participant_start_ms": pstart,
            "participant_start_max_ms": max_start,
            "participant_rss_mib": started.participant_rss_kib.iter().map(|k| mib(*k)).collect::<Vec<_>>(),
            "participant_rss_max_mib": mib(max_rss),
            "coordinator_start_ms": ms(started.coordinator_start),
            "coordinator_rss_mib": mib(started.coordinator_rss_kib),
        }));
        if !last {
            continue;
        }
        // Signing on the largest cluster: one hot group, then random groups (warm).
        let n = opts.requests.max(10);
        say(format!("  signing: {n} on one hot group, {n} on random groups (warm), {n} first requests on a cold coordinator"));
        let mut hot = Vec::with_capacity(n);
        for i in 0..n {
            hot.push(timed(first, i).await?);
        }
        let mut rng = rand::thread_rng();
        let mut warm = Vec::with_capacity(n);
        for i in 0..n {
            let g = rng.gen_range(0..signers.len());
            if let Some(signer) = signers.get(g) {
                warm.push(timed(signer, i).await?);
            }
        }
        let after_rss = started.procs.0.get(NODES).map_or(0, |c| rss_kib(c.id()));
        // The agent lists every group of the client config.
        let (agent_child, socket) = agent(exe, &s, &s.dir.join("client.toml"))?;
        started.procs.0.push(agent_child);
        let mut listed = (0usize, Duration::ZERO);
        let mut list_times = Vec::new();
        for _ in 0..5 {
            listed = agent_list(&socket)?;
            list_times.push(listed.1);
        }
        list_times.sort();
        // Empty: a coordinator with pool_idle = 0; each request the first on its group (one
        // more round trip: the Commit). The first coordinator stops, so that its refills do
        // not compete.
        stop_all_but_participants(&mut started.procs);
        let (cold_child, _, cold_addr) = spawn_coordinator(exe, &s, "coordinator-cold", 0)?;
        started.procs.0.push(cold_child);
        let cold_config = client_config(&s, &cold_addr, &s.cold_coordinator, "client-cold")?;
        let cold_signers = ThresholdSigner::connect_all(&cold_config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cold_first = cold_signers.last().context("no group")?;
        first_signature(cold_first).await?;
        let mut order: Vec<usize> = (0..cold_signers.len().saturating_sub(1)).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let mut cold = Vec::with_capacity(n);
        for (i, g) in order.into_iter().take(n).enumerate() {
            if let Some(signer) = cold_signers.get(g) {
                cold.push(timed(signer, i).await?);
            }
        }
        // Warm with full idle pools: a coordinator with pool_idle = pool_target (32), so a
        // random group's request sends no refill of its own.
        stop_all_but_participants(&mut started.procs);
        let (full_child, _, full_addr) = spawn_coordinator(exe, &s, "coordinator-full", 32)?;
        let full_pid = full_child.id();
        started.procs.0.push(full_child);
        let full_config = client_config(&s, &full_addr, &s.full_coordinator, "client-full")?;
        let full_signers = ThresholdSigner::connect_all(&full_config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let full_first = full_signers.first().context("no group")?;
        first_signature(full_first).await?;
        // Its pools fill: 32 commitments per group and signer.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let mut full = Vec::with_capacity(n);
        for i in 0..n {
            let g = rng.gen_range(0..full_signers.len());
            if let Some(signer) = full_signers.get(g) {
                full.push(timed(signer, i).await?);
            }
        }
        let full_rss = rss_kib(full_pid);
        let participants_full_rss = started
            .procs
            .0
            .iter()
            .take(NODES)
            .map(|c| rss_kib(c.id()))
            .max()
            .unwrap_or(0);
        let full_s = summary(full);
        let (hot_s, idle_s, empty_s) = (summary(hot), summary(warm), summary(cold));
        let ratio_warm = num(&full_s, "p50_ms") / num(&hot_s, "p50_ms").max(1e-9);
        let p = |v: &serde_json::Value| num(v, "p50_ms");
        let ratio_cold = p(&idle_s) / p(&hot_s).max(1e-9);
        let ratio_empty = p(&empty_s) / p(&hot_s).max(1e-9);
        say(format!(
            "  p50: hot {:.2} ms; random idle group (pool_idle 1) {:.2} ms = {ratio_cold:.2}x; random warm group (pool_idle 32) {:.2} ms = {ratio_warm:.2}x; random empty pool (pool_idle 0) {:.2} ms = {ratio_empty:.2}x; the agent lists {} keys in {:.1} ms",
            p(&hot_s),
            p(&idle_s),
            p(&full_s),
            p(&empty_s),
            listed.0,
            ms(quantile(&list_times, 0.5))
        ));
        sign = serde_json::json!({
            "groups": groups,
            "hot": hot_s,
            "random_idle": idle_s, "ratio_cold": ratio_cold,
            "random_warm": full_s, "ratio_warm": ratio_warm,
            "random_empty": empty_s, "ratio_empty": ratio_empty,
            "coordinator_rss_after_signing_mib": mib(after_rss),
            "coordinator_rss_pool_idle_32_mib": mib(full_rss),
            "participant_rss_max_with_pool_idle_32_mib": mib(participants_full_rss),
            "agent_identities": listed.0,
            "agent_list_ms": ms(quantile(&list_times, 0.5)),
        });
        drop(started);
        let _ = s.groups;
    }
    say(format!("simulator: {} groups, 3-of-5...", opts.sim_groups));
    let sim = simulate(opts.sim_groups, opts.requests.max(10))?;
    let per_group = |key: &str| -> Option<f64> {
        let first = num(starts.first()?, key);
        let last_entry = starts.last()?;
        let g = num(last_entry, "groups");
        (g > 1.0).then(|| (num(last_entry, key) - first) * 1024.0 * 1024.0 / (g - 1.0))
    };
    let report = serde_json::json!({
        "groups_per_node": top,
        "threshold": THRESHOLD, "participants": NODES,
        "kdf": "argon2id 64 MiB, 3 passes (one per node keystore)",
        "start": starts,
        "idle_bytes_per_group": {
            "participant": per_group("participant_rss_max_mib"),
            "coordinator": per_group("coordinator_rss_mib"),
        },
        "sign": sign,
        "sim": sim,
        "targets": {
            "participant_start_max_ms": 3000, "participant_rss_max_mib": 64,
            "coordinator_rss_mib": 128, "ratio_cold": 1.5, "ratio_warm": 1.0, "agent_list_ms": 100,
        },
    });
    if opts.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
