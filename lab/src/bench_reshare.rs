//! `conclave bench --reshare`: time a reshare ceremony over QUIC on 127.0.0.1 (one relay and
//! every member in this process, each with its own connection), next to the same ceremony's
//! state machines wired back to back in memory, measured in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use conclave_keygen::ceremony::{
    harness, CeremonyPlan, CheckedPlan, Member, MemberEnd, OldGroup, Relay,
};
use conclave_keygen::kinds;
use conclave_keygen::reshare::Reshare;
use conclave_keygen::store::MemoryShareStore;
use conclave_keygen::GroupManifest;
use conclave_protocol::{IdentityKey, NodeId};
use conclave_transport::relay::{RelayEnd, RelayServer};
use frost_ed25519 as frost;

/// A prepared reshare: the old group, the plan, and who holds what.
struct Setup {
    plan: CeremonyPlan,
    old: GroupManifest,
    identities: BTreeMap<NodeId, IdentityKey>,
    old_shares: BTreeMap<NodeId, frost::keys::KeyPackage>,
    coordinator: IdentityKey,
}

fn setup(t: u16, n: usize, t2: u16, n2: usize) -> anyhow::Result<Setup> {
    let f = kinds::reshare_fixture(
        "bench",
        (t, n),
        (t2, n2),
        |i| format!("127.0.0.1:{}", 20000 + i),
        "127.0.0.1:0",
        &mut rand::rngs::OsRng,
    )?;
    let mut plan = f.plan;
    plan.round_timeout_secs = 600;
    Ok(Setup {
        plan,
        old: f.old,
        identities: f.identities.into_iter().map(|k| (k.node_id(), k)).collect(),
        old_shares: f.old_shares,
        coordinator: f.coordinator,
    })
}

fn protocol(s: &Setup, node: &NodeId) -> anyhow::Result<Reshare> {
    let checked = CheckedPlan::check(&s.plan, OldGroup::Manifest(&s.old))?;
    Ok(Reshare::new(&checked, node, s.old_shares.get(node))?)
}

/// The ceremony's state machines back to back, no network (the in-memory harness): the cost
/// of the cryptography.
fn in_memory(s: &Setup) -> anyhow::Result<(Duration, GroupManifest)> {
    let started = Instant::now();
    let roster: Vec<NodeId> = s.plan.roster()?.into_iter().map(|m| m.node_id).collect();
    let relay = Relay::new(
        &s.plan,
        conclave_keygen::kinds::rounds(s.plan.kind),
        Instant::now(),
    )?;
    let mut members = vec![];
    for node in &roster {
        let id = s.identities.get(node).ok_or_else(|| anyhow!("identity"))?;
        members.push(Member::new(&s.plan, id.clone(), protocol(s, node)?)?);
    }
    let run = harness::run(members, relay);
    let elapsed = started.elapsed();
    if let Some(r) = (0..roster.len()).find_map(|i| run.aborted(i)) {
        bail!("in-memory reshare aborted: {}", r.summary);
    }
    if !(0..roster.len()).all(|i| run.activated(i)) {
        bail!("in-memory reshare did not finish");
    }
    let manifest = run
        .stores
        .first()
        .and_then(|st| st.active())
        .map(|(m, _)| m.clone())
        .ok_or_else(|| anyhow!("no result"))?;
    Ok((elapsed, manifest))
}

/// The same over QUIC on loopback: a relay server and one connection per member.
async fn over_quic(s: &Setup) -> anyhow::Result<(Duration, GroupManifest)> {
    let started = Instant::now();
    let server = RelayServer::bind(&s.plan, &s.coordinator, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let relay = Relay::new(
        &s.plan,
        conclave_keygen::kinds::rounds(s.plan.kind),
        Instant::now(),
    )?;
    let relay_task = tokio::spawn(server.run(relay, |_, _| {}));
    let relay_id = s.coordinator.node_id();
    let mut tasks = vec![];
    for m in s.plan.roster()? {
        let id = s
            .identities
            .get(&m.node_id)
            .ok_or_else(|| anyhow!("identity"))?
            .clone();
        let mut member = Member::new(&s.plan, id.clone(), protocol(s, &m.node_id)?)?;
        tasks.push(tokio::spawn(async move {
            let mut store = MemoryShareStore::default();
            conclave_transport::member::run_member(
                &mut member,
                &id,
                relay_id,
                addr,
                &mut store,
                |_| {},
            )
            .await
            .map(|end| matches!(end, Some(MemberEnd::Activated { .. })))
        }));
    }
    for t in tasks {
        if !t.await?? {
            bail!("a member did not complete the reshare");
        }
    }
    let end = relay_task.await?;
    let elapsed = started.elapsed();
    match end {
        RelayEnd::Completed { manifest, .. } => Ok((elapsed, *manifest)),
        RelayEnd::Aborted(r) => bail!("reshare over QUIC aborted: {}", r.summary),
        RelayEnd::Failed(f) => bail!("reshare over QUIC completed unusably: {f}"),
    }
}

/// Runs the reshare benchmark and prints its report.
pub async fn run(json: bool, quick: bool) -> anyhow::Result<()> {
    let configs: &[(u16, usize, u16, usize)] = if quick {
        &[(3, 5, 5, 7)]
    } else {
        &[(3, 5, 5, 7), (67, 100, 67, 100)]
    };
    let mut results = vec![];
    if !json {
        println!(
            "conclave bench --reshare: reshare over QUIC on 127.0.0.1 (relay and every member in this process) vs the same state machines in memory, {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    for &(t, n, t2, n2) in configs {
        if !json {
            eprintln!("  {t}-of-{n} -> {t2}-of-{n2}: dealing the old group, then resharing ...");
        }
        let s =
            std::sync::Arc::new(tokio::task::spawn_blocking(move || setup(t, n, t2, n2)).await??);
        let s2 = s.clone();
        let (mem, m1) = tokio::task::spawn_blocking(move || in_memory(&s2)).await??;
        let (quic, m2) = over_quic(&s).await?;
        if m1.group_public_key != s.old.group_public_key
            || m2.group_public_key != s.old.group_public_key
            || m2.threshold != t2
            || m2.participants.len() != n2
        {
            return Err(anyhow!(
                "the reshare changed the group key or got the wrong shape"
            ));
        }
        let ratio = quic.as_secs_f64() / mem.as_secs_f64().max(1e-9);
        if !json {
            println!(
                "{t}-of-{n} -> {t2}-of-{n2}: over QUIC {:.3} s, in memory {:.3} s (QUIC/in-memory {ratio:.2}x); group key unchanged; peak RSS so far {:.0} MiB",
                quic.as_secs_f64(),
                mem.as_secs_f64(),
                crate::bench_rss::own_rss_kib().1 as f64 / 1024.0
            );
        }
        // Peak resident memory of this process so far (relay and every member together).
        let (_, peak_kib) = crate::bench_rss::own_rss_kib();
        results.push(serde_json::json!({
            "from": format!("{t}-of-{n}"), "to": format!("{t2}-of-{n2}"),
            "quic_s": quic.as_secs_f64(), "quic_ms": quic.as_secs_f64() * 1e3,
            "in_memory_s": mem.as_secs_f64(), "ratio": ratio,
            "peak_rss_kib": peak_kib,
        }));
    }
    if json {
        println!("{}", serde_json::json!({ "reshare": results }));
    }
    Ok(())
}
