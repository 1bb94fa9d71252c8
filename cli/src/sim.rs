//! `conclave sim`: run a scenario in the simulator, run the chaos proxy, or benchmark the
//! simulator against in-process FROST.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use conclave_sim::{
    Behaviour, Byzantine, Crash, Link, Partition, Scenario, Simulation, Slow, Transport,
};
use conclave_transport::proxy::{Proxy, ProxyConfig};

use crate::{CmdResult, Exit};

/// Simulate a deployment: the real coordinator and participant logic on a virtual network.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, after_help = SIM_HELP)]
pub(crate) struct SimArgs {
    #[command(subcommand)]
    sub: Option<SimCmd>,
    #[command(flatten)]
    run: RunArgs,
}

const SIM_HELP: &str = "\
Examples:
  conclave sim -t 3 -n 5 --requests 1000 --latency-ms 50 --jitter-ms 10 --loss 0.01
  conclave sim --crash 2@500:2500 --partition 4,5@1000-4000 --byzantine 1:invalid-shares
  conclave sim --scenario docs/scenarios/lossy-wan.toml --json --plot latency.svg
Exit code 1 when an invariant was violated (failed requests alone are not a failure).
Scenario files and every field: docs/SIMULATOR.md.";

#[derive(Subcommand, Debug)]
enum SimCmd {
    /// A chaos UDP proxy between real processes (delay, jitter, loss, duplication, blackhole).
    Proxy(ProxyArgs),
    /// Many simulations over randomly drawn fault mixes, signing and every ceremony kind.
    #[command(after_help = CAMPAIGN_HELP)]
    Campaign(CampaignArgs),
    /// Simulator speed: 10,000 3-of-5 sessions at 1 % loss vs in-process FROST.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long)]
        json: bool,
    },
}

const CAMPAIGN_HELP: &str = "\
Each run draws its own fault mix from its run seed: loss, duplication, reordering, partitions,
crashes with and without restarts, slow nodes, skewed clocks, byzantine signers (up to n - t)
for signing; a DKG, refresh, reshare or repair with a member that may crash for ceremonies.
Every invariant is checked on every run (nonce reuse, unverified signatures, culprits missed,
honest signers accused, missed deadlines, livelock, all-or-nothing ceremonies).
Examples:
  conclave sim campaign --sessions 1000000 --seed 1
  conclave sim campaign --replay 1234567890 --trace run.txt   # one failing run, exactly
Exit code 1 when any run broke an invariant; each is printed with its run seed.";

#[derive(Args, Debug)]
struct CampaignArgs {
    /// Stop once this many sessions (signing sessions plus ceremonies) have run.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    /// Seed of the campaign (the run seeds are drawn from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only the run with this run seed (as printed for a failure) and describe it.
    #[arg(long, value_name = "RUN_SEED")]
    replay: Option<u64>,
    /// With --replay of a signing run: write its event trace to FILE.
    #[arg(long, requires = "replay")]
    trace: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransportArg {
    Quic,
    Datagram,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenario file (TOML); flags given here override its fields.
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[arg(long, short = 't')]
    threshold: Option<u16>,
    #[arg(long, short = 'n')]
    participants: Option<usize>,
    #[arg(long)]
    requests: Option<usize>,
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// One-way link latency.
    #[arg(long)]
    latency_ms: Option<f64>,
    #[arg(long)]
    jitter_ms: Option<f64>,
    /// Probability that one transmission is lost.
    #[arg(long)]
    loss: Option<f64>,
    #[arg(long)]
    duplicate: Option<f64>,
    #[arg(long)]
    reorder: Option<f64>,
    /// quic: loss becomes retransmission delay; datagram: loss drops the message.
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    #[arg(long)]
    participant_timeout_ms: Option<u64>,
    /// Crash participant P at MS, optionally restarting at RESTART: P@MS[:RESTART]. Repeatable.
    #[arg(long, value_name = "P@MS[:RESTART]")]
    crash: Vec<String>,
    /// Cut participants off from FROM to UNTIL ms: P1,P2@FROM-UNTIL. Repeatable.
    #[arg(long, value_name = "P,..@FROM-UNTIL")]
    partition: Vec<String>,
    /// Participant P answers MS later: P@MS. Repeatable.
    #[arg(long, value_name = "P@MS")]
    slow: Vec<String>,
    /// Participant P misbehaves: P:invalid-shares|replay|refuse-commitments|selective. Repeatable.
    #[arg(long, value_name = "P:BEHAVIOUR")]
    byzantine: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write the event trace (one line per event) to FILE.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Draw the latency histogram as SVG into FILE.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Address to listen on (clients send here; put it in the manifest).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Address to forward to (the real participant).
    #[arg(long)]
    upstream: std::net::SocketAddr,
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Drop everything, both ways, while this file exists (checked every 50 ms).
    #[arg(long)]
    blackhole_file: Option<PathBuf>,
}

/// Largest scenario file read (1 MiB; a scenario is a few dozen lines of TOML).
const MAX_SCENARIO_LEN: u64 = 1024 * 1024;

fn number<T: std::str::FromStr>(s: &str, what: &str) -> anyhow::Result<T> {
    s.trim()
        .parse()
        .map_err(|_| anyhow!("{what}: {s:?} is not a number"))
}

fn scenario(a: &RunArgs) -> anyhow::Result<Scenario> {
    let mut s = match &a.scenario {
        Some(p) => {
            let text = conclave_protocol::read_bounded_to_string(p, MAX_SCENARIO_LEN)
                .with_context(|| format!("cannot read scenario {}", p.display()))?;
            Scenario::from_toml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => Scenario::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field { s.$field = v; } )* };
    }
    set!(
        threshold,
        participants,
        requests,
        concurrency,
        seed,
        request_timeout_ms,
        participant_timeout_ms
    );
    let link = &mut s.link;
    if let Some(v) = a.latency_ms {
        link.latency_ms = v;
    }
    if let Some(v) = a.jitter_ms {
        link.jitter_ms = v;
    }
    if let Some(v) = a.loss {
        link.loss = v;
    }
    if let Some(v) = a.duplicate {
        link.duplicate = v;
    }
    if let Some(v) = a.reorder {
        link.reorder = v;
    }
    if let Some(t) = a.transport {
        s.transport = match t {
            TransportArg::Quic => Transport::Quic,
            TransportArg::Datagram => Transport::Datagram,
        };
    }
    for c in &a.crash {
        let (p, rest) = c
            .split_once('@')
            .ok_or_else(|| anyhow!("--crash {c:?}: expected P@MS[:RESTART]"))?;
        let (at, restart) = match rest.split_once(':') {
            Some((at, r)) => (at, Some(number(r, "--crash restart")?)),
            None => (rest, None),
        };
        s.crashes.push(Crash {
            participant: number(p, "--crash")?,
            at_ms: number(at, "--crash")?,
            restart_at_ms: restart,
        });
    }
    for x in &a.partition {
        let (ps, range) = x
            .split_once('@')
            .ok_or_else(|| anyhow!("--partition {x:?}: expected P,..@FROM-UNTIL"))?;
        let (from, until) = range
            .split_once('-')
            .ok_or_else(|| anyhow!("--partition {x:?}: expected FROM-UNTIL"))?;
        let participants = ps
            .split(',')
            .map(|p| number(p, "--partition"))
            .collect::<anyhow::Result<_>>()?;
        s.partitions.push(Partition {
            participants,
            from_ms: number(from, "--partition")?,
            until_ms: number(until, "--partition")?,
        });
    }
    for x in &a.slow {
        let (p, d) = x
            .split_once('@')
            .ok_or_else(|| anyhow!("--slow {x:?}: expected P@MS"))?;
        s.slow.push(Slow {
            participant: number(p, "--slow")?,
            delay_ms: number(d, "--slow")?,
        });
    }
    for x in &a.byzantine {
        let (p, b) = x
            .split_once(':')
            .ok_or_else(|| anyhow!("--byzantine {x:?}: expected P:BEHAVIOUR"))?;
        let behaviour = match b {
            "invalid-shares" => Behaviour::InvalidShares,
            "replay" => Behaviour::Replay,
            "refuse-commitments" => Behaviour::RefuseCommitments,
            "selective" => Behaviour::Selective,
            other => return Err(anyhow!("--byzantine: unknown behaviour {other:?} (invalid-shares, replay, refuse-commitments, selective)")),
        };
        s.byzantine.push(Byzantine {
            participant: number(p, "--byzantine")?,
            behaviour,
            rate: 0.5,
        });
    }
    s.validate()?;
    Ok(s)
}

impl SimArgs {
    /// The proxy is a long-running daemon (logs at info by default).
    pub(crate) fn is_proxy(&self) -> bool {
        matches!(self.sub, Some(SimCmd::Proxy(_)))
    }
}

pub(crate) async fn run(args: SimArgs) -> CmdResult {
    match args.sub {
        Some(SimCmd::Proxy(p)) => proxy(p).await,
        Some(SimCmd::Bench { sessions, json }) => bench(sessions, json).await,
        Some(SimCmd::Campaign(c)) => tokio::task::spawn_blocking(move || campaign(c)).await?,
        None => simulate(args.run).await,
    }
}

async fn simulate(a: RunArgs) -> CmdResult {
    let s = scenario(&a)?;
    if !a.json && s.requests >= 2_000 {
        eprintln!(
            "simulating {} requests ({}-of-{}) ...",
            s.requests, s.threshold, s.participants
        );
    }
    let trace_path = a.trace.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<conclave_sim::Report> {
        let sim = Simulation::new(s)?;
        Ok(match trace_path {
            Some(path) => {
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let mut out = std::io::BufWriter::new(file);
                let r = sim.with_trace(&mut out).run();
                std::io::Write::flush(&mut out)?;
                r
            }
            None => sim.run(),
        })
    })
    .await??;
    if let Some(path) = &a.plot {
        conclave_sim::plot::latency_histogram(&report, path)
            .map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
        if let Some(p) = &a.trace {
            println!("trace: {}", p.display());
        }
        if let Some(p) = &a.plot {
            println!("latency histogram: {}", p.display());
        }
    }
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(Exit::refused(anyhow!(
            "{} invariant violations",
            report.violations.len()
        )))
    }
}

fn campaign(a: CampaignArgs) -> CmdResult {
    use conclave_sim::campaign::{draw, run_campaign, run_one, CampaignReport, Drawn};
    if let Some(run_seed) = a.replay {
        let drawn = draw(run_seed);
        match &drawn {
            Drawn::Signing(s) => {
                eprintln!(
                    "run {run_seed}: this signing scenario (as a --scenario file):\n{}",
                    toml::to_string(s.as_ref()).context("cannot print the scenario as TOML")?
                );
                if let Some(path) = &a.trace {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    Simulation::new(s.as_ref().clone())?
                        .with_trace(&mut out)
                        .run();
                    std::io::Write::flush(&mut out)?;
                    eprintln!("trace: {}", path.display());
                }
            }
            Drawn::Ceremony(c) => eprintln!("run {run_seed}: {c:?}"),
        }
        let mut report = CampaignReport {
            seed: run_seed,
            ..CampaignReport::default()
        };
        run_one(run_seed, &mut report);
        return campaign_result(&report, a.json);
    }
    if a.sessions == 0 {
        return Err(anyhow!("--sessions must be at least 1").into());
    }
    let mut last = std::time::Instant::now();
    let show = !a.json || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = run_campaign(a.sessions, a.seed, &mut |r| {
        if show && last.elapsed() >= Duration::from_secs(2) {
            last = std::time::Instant::now();
            eprintln!(
                "{:>9} / {} sessions, {} runs, {} violations, {:.0} sessions/s",
                r.sessions,
                a.sessions,
                r.runs,
                r.violations.values().sum::<u64>(),
                r.sessions_per_s
            );
        }
    });
    campaign_result(&report, a.json)
}

fn campaign_result(r: &conclave_sim::campaign::CampaignReport, json: bool) -> CmdResult {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "campaign seed {}: {} sessions in {} runs, {:.1} s ({:.0} sessions/s)",
            r.seed, r.sessions, r.runs, r.wall_s, r.sessions_per_s
        );
        println!(
            "  signing: {} sessions, {} signed, {} ended unsigned (allowed under faults)",
            r.signing_sessions, r.signed, r.unsigned
        );
        for (kind, (done, aborted)) in &r.ceremonies {
            println!("  {kind}: {done} completed, {aborted} aborted");
        }
        let faults: Vec<String> = r.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  faults drawn: {}", faults.join(", "));
        println!(
            "  invariant violations: {} (nonce reuse: {})",
            r.violations.values().sum::<u64>(),
            r.nonce_reuse
        );
        for f in &r.failures {
            println!(
                "  FAILED run {} ({}): {}\n    replay: conclave sim campaign --replay {}",
                f.run_seed,
                f.what,
                f.violations.join("; "),
                f.run_seed
            );
        }
    }
    if r.failures.is_empty() {
        Ok(())
    } else {
        Err(Exit::refused(anyhow!(
            "{} runs broke an invariant",
            r.failures.len()
        )))
    }
}

async fn proxy(a: ProxyArgs) -> CmdResult {
    let cfg = ProxyConfig {
        delay: Duration::from_secs_f64(a.delay_ms.max(0.0) / 1e3),
        jitter: Duration::from_secs_f64(a.jitter_ms.max(0.0) / 1e3),
        loss: a.loss,
        duplicate: a.duplicate,
        seed: a.seed,
    };
    if !(0.0..=1.0).contains(&a.loss) || !(0.0..=1.0).contains(&a.duplicate) {
        return Err(anyhow!("--loss and --duplicate are probabilities (0 to 1)").into());
    }
    let proxy = Proxy::start(a.listen, a.upstream, cfg).await?;
    println!(
        "proxy listening on {} -> {}",
        proxy.local_addr(),
        a.upstream
    );
    std::io::Write::flush(&mut std::io::stdout())?;
    let watch = async {
        let Some(file) = &a.blackhole_file else {
            return std::future::pending().await;
        };
        let mut was = false;
        loop {
            let now = file.exists();
            if now != was {
                proxy.set_blackhole(now);
                tracing::warn!(blackhole = now, "blackhole switched");
                was = now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = crate::commands::shutdown_signal() => {}
        _ = watch => {}
    }
    Ok(())
}

async fn bench(sessions: usize, json: bool) -> CmdResult {
    let inproc =
        tokio::task::spawn_blocking(|| conclave_lab::bench::frost_pipeline(3, 5, 500)).await??;
    let mut s = Scenario::new(3, 5).requests(sessions).concurrency(16);
    s.link = Link {
        latency_ms: 20.0,
        jitter_ms: 5.0,
        loss: 0.01,
        ..Link::default()
    };
    if !json {
        eprintln!("simulating {sessions} 3-of-5 sessions at 1 % loss ...");
    }
    let report = tokio::task::spawn_blocking(move || conclave_sim::run(s)).await??;
    let sessions = (report.ok + report.failed_total()).max(1) as f64;
    let total_us = report.wall_ms * 1e3 / sessions;
    let machines_us = report.state_machine_ms * 1e3 / sessions;
    let simulator_us = total_us - machines_us;
    let inproc_us = inproc.as_secs_f64() * 1e6;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "sessions": sessions, "ok": report.ok, "violations": report.violations.len(),
                "sessions_per_wall_second": report.sessions_per_wall_second,
                "wall_us_per_session": total_us,
                "state_machines_us_per_session": machines_us,
                "simulator_us_per_session": simulator_us,
                "inprocess_frost_us": inproc_us,
                "ratio_to_inprocess": total_us / inproc_us,
                "inprocess_over_session": inproc_us / total_us,
                "simulator_overhead_over_inprocess": simulator_us / inproc_us,
            })
        );
    } else {
        println!("{report}");
        println!();
        println!("per session (wall): {total_us:.0} µs = {machines_us:.0} µs in the real state machines + {simulator_us:.0} µs in the simulator");
        println!("in-process frost-ed25519 pipeline (commit+sign+aggregate, no serialization): {inproc_us:.0} µs");
        println!(
            "ratio to in-process: {:.2}x overall; the simulator's own share is {:.1} % of the in-process cost",
            total_us / inproc_us,
            100.0 * simulator_us / inproc_us
        );
    }
    Ok(())
}
