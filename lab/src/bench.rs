//! `conclave bench`: signing latency and throughput through a real loopback cluster (QUIC,
//! pinned TLS, the coordinator's pools and retries), next to the in-process frost-ed25519
//! pipeline (commit + sign + aggregate, no network) measured in the same run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_keygen::{deal, NewMember};
use conclave_protocol::{GroupName, IdentityKey};
use frost_ed25519 as frost;

use crate::cluster::{Audit, Kdf, LocalCluster};

/// What `conclave bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Print results as JSON.
    pub json: bool,
    /// Signatures per configuration at concurrency 1 for a 3-of-n group (fewer for larger
    /// thresholds; concurrency above 1 does 4x as many).
    pub requests: usize,
    /// Only 3-of-5, fewer requests: a smoke run.
    pub quick: bool,
    /// Only the authorization-cost section.
    pub authorization_only: bool,
    /// The groups, as (threshold, participants).
    pub groups: Vec<(u16, usize)>,
    /// The concurrency levels measured on each group.
    pub concurrency: Vec<usize>,
    /// Where the nodes write their audit records.
    pub audit: Audit,
    /// Fresh clusters per group (each measured at every concurrency level).
    pub runs: usize,
    /// Skip the authorization section.
    pub no_authorization: bool,
}

/// Parses `3x5,7x10` into (threshold, participants) pairs.
pub fn parse_groups(s: &str) -> Result<Vec<(u16, usize)>, String> {
    s.split(',')
        .map(|g| {
            let (t, n) = g
                .trim()
                .split_once('x')
                .ok_or_else(|| format!("{g:?}: expected TxN, like 3x5"))?;
            let t: u16 = t.parse().map_err(|_| format!("{g:?}: bad threshold"))?;
            let n: usize = n
                .parse()
                .map_err(|_| format!("{g:?}: bad participant count"))?;
            if t < 2 || usize::from(t) > n || n > 255 {
                return Err(format!("{g:?}: need 2 <= threshold <= participants <= 255"));
            }
            Ok((t, n))
        })
        .collect()
}

/// In-process FROST on `threads` threads at once: signatures per second over all of them
/// (the baseline for throughput: as many cores as the cluster gets).
pub fn frost_pipeline_parallel(
    t: u16,
    n: usize,
    iterations: usize,
    threads: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || frost_pipeline(t, n, iterations)))
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("in-process thread panicked"))??;
    }
    // frost_pipeline deals a key before its timed loop; that setup is small next to the loop.
    Ok((threads.max(1) * iterations) as f64 / start.elapsed().as_secs_f64())
}

/// A t-of-n key dealt in memory to members with fresh identities (no files, no network).
pub(crate) fn dealt_in_memory(
    name: &str,
    t: u16,
    n: usize,
) -> anyhow::Result<(
    conclave_keygen::GroupManifest,
    Vec<conclave_keygen::DealtShare>,
)> {
    let mut rng = rand::rngs::OsRng;
    let members: Vec<NewMember> = (0..n)
        .map(|i| NewMember {
            name: format!("p{i}"),
            node_id: IdentityKey::generate(&mut rng).node_id(),
            address: "x:1".into(),
        })
        .collect();
    Ok(deal(
        GroupName::new(name).map_err(|e| anyhow::anyhow!("{e}"))?,
        t,
        &members,
        &mut rng,
    )?)
}

/// In-process FROST: mean time of one whole t-of-n signature (all signers' commits, the
/// signing package, all signers' shares, aggregation with its verification).
pub fn frost_pipeline(t: u16, n: usize, iterations: usize) -> anyhow::Result<Duration> {
    let mut rng = rand::rngs::OsRng;
    let (manifest, shares) = dealt_in_memory("bench", t, n)?;
    let pkp = manifest.public_key_package()?;
    let signers = shares.get(..usize::from(t)).context("threshold above n")?;
    let start = Instant::now();
    for i in 0..iterations {
        let message = format!("bench message {i}");
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for s in signers {
            let (n, c) = frost::round1::commit(s.key_package.signing_share(), &mut rng);
            nonces.insert(*s.key_package.identifier(), n);
            commitments.insert(*s.key_package.identifier(), c);
        }
        let package = frost::SigningPackage::new(commitments, message.as_bytes());
        let mut sig_shares = BTreeMap::new();
        for s in signers {
            let id = *s.key_package.identifier();
            let nonce = nonces.get(&id).context("nonce")?;
            sig_shares.insert(id, frost::round2::sign(&package, nonce, &s.key_package)?);
        }
        frost::aggregate(&package, &sig_shares, &pkp)?;
    }
    Ok(start.elapsed() / iterations.max(1) as u32)
}

/// The in-process cost of authorization on the critical path of one signature: the client
/// signs its request, the coordinator verifies it, and a signer verifies it and runs its
/// policy (signers do so in parallel, so one signer's decision counts once). Mean over
/// `iterations`.
pub fn authorization_micro(iterations: usize) -> anyhow::Result<Duration> {
    use conclave_protocol::request::{MessageRef, SignRequestBody};
    let mut rng = rand::rngs::OsRng;
    let client = IdentityKey::generate(&mut rng);
    let group = GroupName::new("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut policy =
        conclave_policy::Policy::from_toml(&crate::cluster::lab_policy(&client.node_id(), &group))?;
    let start = Instant::now();
    for i in 0..iterations {
        let message = format!("bench message {i}");
        let mut request_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rng, &mut request_id);
        let request = SignRequestBody {
            group: group.clone(),
            epoch: 1,
            message: MessageRef::Full(message.clone().into_bytes()),
            kind: "raw".into(),
            request_id,
            not_after: 1_800_000_060,
        }
        .sign(&client)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The coordinator's early check, then the signer's decision.
        request.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
        policy
            .decide(1_800_000_000, &request, &group, 1, message.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(start.elapsed() / iterations.max(1) as u32)
}

/// The cost of authorization through a real 3-of-5 cluster: p50 at concurrency 1 with the
/// audit log in memory, in files without fsync, and in files with fsync per record.
struct AuthCost {
    micro: Duration,
    memory: Run,
    no_fsync: Run,
    fsync: Run,
}

async fn authorization_cost(requests: usize, json: bool) -> anyhow::Result<AuthCost> {
    let micro = tokio::task::spawn_blocking(|| authorization_micro(2000)).await??;
    let mut runs = Vec::new();
    for audit in [
        Audit::Memory,
        Audit::Files { fsync: false },
        Audit::Files { fsync: true },
    ] {
        let dir = tempfile::Builder::new()
            .prefix("conclave-bench-auth-")
            .tempdir()?;
        let cluster =
            Arc::new(LocalCluster::start(dir.path(), 3, 5, Kdf::Light, audit, |_| {}).await?);
        if !json {
            eprintln!("  3-of-5, audit {audit:?}: {requests} signatures at concurrency 1 ...");
        }
        runs.push(measure(&cluster, 1, requests).await?);
        if let Ok(c) = Arc::try_unwrap(cluster) {
            c.shutdown().await;
        }
    }
    let mut runs = runs.into_iter();
    let (Some(memory), Some(no_fsync), Some(fsync)) = (runs.next(), runs.next(), runs.next())
    else {
        anyhow::bail!("authorization runs missing");
    };
    Ok(AuthCost {
        micro,
        memory,
        no_fsync,
        fsync,
    })
}

struct Run {
    concurrency: usize,
    requests: usize,
    p50: Duration,
    p99: Duration,
    throughput: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i.min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

async fn measure(
    cluster: &Arc<LocalCluster>,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let key = cluster.public_key()?;
    // Warm-up: fills the commitment pools.
    for i in 0..requests.clamp(5, 20) {
        cluster
            .client
            .sign(
                &cluster.group,
                format!("warm {i}").as_bytes(),
                Duration::from_secs(10),
                Some(key),
            )
            .await?;
    }
    let per_task = requests.div_ceil(concurrency);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let msg = format!("bench {w}/{i}");
                let t = Instant::now();
                cluster
                    .client
                    .sign(
                        &cluster.group,
                        msg.as_bytes(),
                        Duration::from_secs(30),
                        Some(key),
                    )
                    .await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(per_task * concurrency);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok(Run {
        concurrency,
        requests: all.len(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        throughput: all.len() as f64 / elapsed.as_secs_f64(),
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Requests at concurrency 1 for a t-of-n group: fewer for large thresholds (each signature
/// costs about t times more).
fn requests_for(requests: usize, t: u16) -> usize {
    (requests * 3 / usize::from(t)).max(10)
}

struct GroupResult {
    t: u16,
    n: usize,
    inproc: Duration,
    parallel_per_s: f64,
    runs: Vec<Run>,
}

/// Runs the signing benchmark and prints its report.
pub async fn run(args: BenchOptions) -> anyhow::Result<()> {
    let configs: Vec<(u16, usize)> = if args.authorization_only {
        Vec::new()
    } else if args.quick {
        vec![(3, 5)]
    } else {
        args.groups.clone()
    };
    let requests = if args.quick {
        args.requests.min(100)
    } else {
        args.requests
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = Vec::new();
    if !args.json {
        println!("conclave bench: real QUIC cluster on 127.0.0.1 vs in-process frost-ed25519, same run, {threads} cores");
        println!(
            "(every request signed by the client, checked by every signer's policy, audit log {})",
            match args.audit {
                Audit::Memory => "in memory",
                Audit::Files { fsync: false } => "in files, not fsynced",
                Audit::Files { fsync: true } => "in files, fsynced per record",
            }
        );
    }
    for &(t, n) in &configs {
        let iterations = (600 / usize::from(t)).max(3);
        let inproc =
            tokio::task::spawn_blocking(move || frost_pipeline(t, n, iterations)).await??;
        let parallel_per_s =
            tokio::task::spawn_blocking(move || frost_pipeline_parallel(t, n, iterations, threads))
                .await??;
        let mut runs = Vec::new();
        for run in 0..args.runs.max(1) {
            let dir = tempfile::Builder::new()
                .prefix("conclave-bench-")
                .tempdir()?;
            if !args.json {
                eprintln!("  {t}-of-{n}: starting the cluster (run {}) ...", run + 1);
            }
            let cluster = Arc::new(
                LocalCluster::start(dir.path(), t, n, Kdf::Light, args.audit, |_| {}).await?,
            );
            for &concurrency in &args.concurrency {
                let base = requests_for(requests, t);
                let count = if concurrency > 1 { base * 4 } else { base };
                if !args.json {
                    eprintln!("  {t}-of-{n}: {count} signatures at concurrency {concurrency} ...");
                }
                runs.push(measure(&cluster, concurrency, count).await?);
            }
            if let Ok(c) = Arc::try_unwrap(cluster) {
                c.shutdown().await;
            }
        }
        results.push(GroupResult {
            t,
            n,
            inproc,
            parallel_per_s,
            runs,
        });
    }
    if args.no_authorization {
        print_sign(&args, &results, None, requests);
        return Ok(());
    }
    let auth = authorization_cost(requests, args.json).await?;
    print_sign(&args, &results, Some(&auth), requests);
    Ok(())
}

/// Throughput over the in-process rate: the single-core rate at concurrency 1, the rate of
/// the pipeline on every core at once above it (as many cores as the cluster gets).
fn throughput_ratio(g: &GroupResult, r: &Run) -> f64 {
    if r.concurrency > 1 {
        r.throughput / g.parallel_per_s
    } else {
        r.throughput * g.inproc.as_secs_f64()
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn print_sign(
    args: &BenchOptions,
    results: &[GroupResult],
    auth: Option<&AuthCost>,
    requests: usize,
) {
    // Without authorization there would be no client signature, no policy and no audit: its
    // p50 is estimated as the memory-audit p50 minus the in-process cost of the checks on the
    // critical path (the memory run does no disk I/O, so the remaining difference is exactly
    // those checks).
    let base = auth.map(|a| {
        a.memory
            .p50
            .saturating_sub(a.micro)
            .max(Duration::from_micros(1))
    });
    let audit = match args.audit {
        Audit::Memory => "memory",
        Audit::Files { fsync: false } => "file",
        Audit::Files { fsync: true } => "fsync",
    };
    if args.json {
        let out: Vec<_> = results
            .iter()
            .map(|g| {
                serde_json::json!({
                    "threshold": g.t, "participants": g.n,
                    "inprocess_frost_us": us(g.inproc),
                    "inprocess_frost_per_s": 1.0 / g.inproc.as_secs_f64(),
                    "inprocess_parallel_per_s": g.parallel_per_s,
                    "runs": g.runs.iter().map(|r| serde_json::json!({
                        "concurrency": r.concurrency, "requests": r.requests,
                        "p50_us": us(r.p50), "p99_us": us(r.p99), "throughput_per_s": r.throughput,
                        "p50_over_inprocess": ratio(r.p50, g.inproc),
                        "p99_over_inprocess": ratio(r.p99, g.inproc),
                        "throughput_over_inprocess": throughput_ratio(g, r),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let auth_json = match (auth, base) {
            (Some(a), Some(base)) => serde_json::json!({
                "group": "3-of-5", "concurrency": 1, "requests": requests,
                "checks_inprocess_us": us(a.micro),
                "p50_without_estimated_us": us(base),
                "p50_audit_memory_us": us(a.memory.p50),
                "p50_audit_file_no_fsync_us": us(a.no_fsync.p50),
                "p50_audit_file_fsync_us": us(a.fsync.p50),
                "ratio_no_fsync": ratio(a.no_fsync.p50, base),
                "ratio_fsync": ratio(a.fsync.p50, base),
                "fsync_cost_us": us(a.fsync.p50.saturating_sub(a.no_fsync.p50)),
            }),
            _ => serde_json::Value::Null,
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "sign", "audit": audit,
                "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "results": out, "authorization": auth_json,
            })
        );
        return;
    }
    println!();
    println!(
        "{:<9} {:>11} {:>6} {:>9} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}",
        "group",
        "in-process",
        "conc",
        "requests",
        "p50",
        "p99",
        "sig/s",
        "p50/in",
        "p99/in",
        "rate/in"
    );
    for g in results {
        for r in &g.runs {
            println!(
                "{:<9} {:>9.0}µs {:>6} {:>9} {:>8.0}µs {:>8.0}µs {:>10.0} {:>7.2}x {:>7.2}x {:>8.2}x",
                format!("{}-of-{}", g.t, g.n),
                us(g.inproc),
                r.concurrency,
                r.requests,
                us(r.p50),
                us(r.p99),
                r.throughput,
                ratio(r.p50, g.inproc),
                ratio(r.p99, g.inproc),
                throughput_ratio(g, r),
            );
        }
    }
    println!();
    println!("in-process: one whole FROST signature (t commits, t shares, aggregate) with no network, on one core.");
    println!("p50/in, p99/in: latency over that cost. rate/in: throughput over the in-process rate on one core");
    println!(
        "(concurrency 1) or on every core at once (higher concurrency; in-process on {} threads:",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for g in results {
        print!(" {}-of-{} {:.0}/s", g.t, g.n, g.parallel_per_s);
    }
    println!(").");
    let (Some(auth), Some(base)) = (auth, base) else {
        return;
    };
    println!();
    println!("cost of authorization, 3-of-5, concurrency 1, {requests} signatures per line:");
    println!(
        "  client signature + one signer's verify and policy, in process: {:>8.0}µs",
        us(auth.micro)
    );
    println!(
        "  p50 without authorization (estimated: memory-audit p50 minus that): {:>6.0}µs",
        us(base)
    );
    for (label, r) in [
        ("signed requests + policy + audit in memory", &auth.memory),
        (
            "signed requests + policy + audit file, no fsync",
            &auth.no_fsync,
        ),
        (
            "signed requests + policy + audit file, fsync per record",
            &auth.fsync,
        ),
    ] {
        println!(
            "  {label:<56} p50 {:>6.0}µs  {:>5.2}x",
            us(r.p50),
            ratio(r.p50, base)
        );
    }
    println!(
        "  fsync per record costs {:.0}µs per signature (p50) on this disk",
        us(auth.fsync.p50.saturating_sub(auth.no_fsync.p50))
    );
}
