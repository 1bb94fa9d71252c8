//! `conclave bench --clients`: one signature through each client front end of a real 3-of-5
//! loopback cluster, next to the in-process frost-ed25519 pipeline in the same run: the Rust
//! library over a kept connection, `conclave external-signer` (a process per signature, start
//! included) and the ssh-agent (`ssh-keygen -Y sign` wall time, when OpenSSH is installed).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conclave_client::{ClientConfig, SigningService, ThresholdSigner};

use crate::bench::frost_pipeline;
use crate::cluster::{Audit, Kdf, LocalCluster};

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The client config of the lab cluster's client.
fn write_config(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!(
            "identity = \"{}\"\ngroup = \"{}\"\ntimeout_ms = 10000\nmanifests = [\"{}\"]\n[[coordinator]]\naddress = \"{}\"\nkey = \"{}\"\n",
            cluster.client_identity.display(),
            cluster.group,
            cluster.manifest_file.display(),
            cluster.coordinator_addr,
            cluster.coordinator_key.to_hex()
        ),
    )?;
    Ok(path)
}

fn external_signer(exe: &Path, config: &Path, message: &[u8]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .arg("external-signer")
        .env("CONCLAVE_CLIENT_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(message)?;
    }
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() || out.stdout.is_empty() {
        anyhow::bail!(
            "external-signer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// Starts the agent, signs `runs` files with `ssh-keygen -Y sign`; None when OpenSSH is not
/// installed.
fn agent_runs(
    exe: &Path,
    config: &Path,
    dir: &Path,
    openssh_key: &str,
    runs: usize,
) -> anyhow::Result<Option<Vec<Duration>>> {
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        return Ok(None);
    }
    let socket = dir.join("agent").join("agent.sock");
    let mut agent = Command::new(exe)
        .args(["agent", "--socket"])
        .arg(&socket)
        .env("CONCLAVE_CLIENT_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = agent.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    let result = (|| {
        if !line.contains("listening") {
            anyhow::bail!("the agent did not start: {line}");
        }
        let pubfile = dir.join("group.pub");
        std::fs::write(&pubfile, openssh_key)?;
        let mut times = Vec::with_capacity(runs);
        for i in 0..runs {
            let data = dir.join(format!("data{i}.txt"));
            std::fs::write(&data, format!("bench {i}\n"))?;
            let start = Instant::now();
            let out = Command::new("ssh-keygen")
                .args(["-Y", "sign", "-n", "file", "-f"])
                .arg(&pubfile)
                .arg(&data)
                .env("SSH_AUTH_SOCK", &socket)
                .output()?;
            times.push(start.elapsed());
            if !out.status.success() {
                anyhow::bail!(
                    "ssh-keygen -Y sign failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(times)
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    result.map(Some)
}

fn openssh_line(key: &[u8; 32], comment: &str) -> String {
    use base64::Engine as _;
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &key[..]] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!(
        "ssh-ed25519 {} {comment}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// Runs the client benchmark and prints its report.
pub async fn run(json: bool, quick: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let (lib_n, ext_n, agent_n) = if quick { (50, 10, 5) } else { (300, 50, 30) };
    if !json {
        println!(
            "conclave bench --clients: a 3-of-5 cluster on 127.0.0.1 (signed requests, policy, audit fsync), same run, {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    let inproc = tokio::task::spawn_blocking(|| frost_pipeline(3, 5, 200)).await??;
    let dir = tempfile::Builder::new()
        .prefix("conclave-bench-clients-")
        .tempdir()?;
    let cluster = LocalCluster::start(
        dir.path(),
        3,
        5,
        Kdf::Light,
        Audit::Files { fsync: true },
        |_| {},
    )
    .await?;
    let config_path = write_config(dir.path(), &cluster)?;
    let config = ClientConfig::read(&config_path)?;
    let signer = ThresholdSigner::connect(&config, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..20 {
        signer
            .sign(format!("warm {i}").as_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !json {
        eprintln!("  library: {lib_n} signatures over a kept connection ...");
    }
    let mut lib = Vec::with_capacity(lib_n);
    for i in 0..lib_n {
        let start = Instant::now();
        signer
            .sign(format!("library {i}").as_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lib.push(start.elapsed());
    }
    signer.close().await;
    if !json {
        eprintln!("  external-signer: {ext_n} processes ...");
    }
    let exe2 = exe.clone();
    let cfg2 = config_path.clone();
    let ext = tokio::task::spawn_blocking(move || {
        (0..ext_n)
            .map(|i| external_signer(&exe2, &cfg2, format!("external {i}").as_bytes()))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    if !json {
        eprintln!("  agent: {agent_n} ssh-keygen -Y sign runs ...");
    }
    let key = cluster.public_key()?;
    let openssh = openssh_line(&key, &format!("conclave:{}", cluster.group));
    let exe3 = exe.clone();
    let cfg3 = config_path.clone();
    let d3 = dir.path().to_path_buf();
    let agent =
        tokio::task::spawn_blocking(move || agent_runs(&exe3, &cfg3, &d3, &openssh, agent_n))
            .await??;
    cluster.shutdown().await;
    let lib_p50 = p50(lib);
    let ext_p50 = p50(ext);
    let agent_p50 = agent.map(p50);
    let ratio = |d: Duration| d.as_secs_f64() / inproc.as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "clients", "group": "3-of-5",
                "inprocess_frost_us": us(inproc),
                "library_p50_us": us(lib_p50), "library_over_inprocess": ratio(lib_p50),
                "external_signer_p50_us": us(ext_p50), "external_signer_over_inprocess": ratio(ext_p50),
                "agent_ssh_keygen_p50_us": agent_p50.map(us),
                "agent_over_inprocess": agent_p50.map(ratio),
            })
        );
        return Ok(());
    }
    println!();
    println!(
        "{:<46} {:>10} {:>12}",
        "path (3-of-5, one signature)", "p50", "/in-process"
    );
    println!(
        "{:<46} {:>8.0}µs {:>11.2}x",
        "in-process frost-ed25519 pipeline",
        us(inproc),
        1.0
    );
    println!(
        "{:<46} {:>8.0}µs {:>11.2}x",
        "library (SigningService, kept connection)",
        us(lib_p50),
        ratio(lib_p50)
    );
    println!(
        "{:<46} {:>8.0}µs {:>11.2}x",
        "external-signer (process start included)",
        us(ext_p50),
        ratio(ext_p50)
    );
    match agent_p50 {
        Some(a) => println!(
            "{:<46} {:>8.0}µs {:>11.2}x",
            "agent (ssh-keygen -Y sign, wall time)",
            us(a),
            ratio(a)
        ),
        None => println!("agent: not measured (ssh-keygen is not installed here)"),
    }
    Ok(())
}
