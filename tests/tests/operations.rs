//! Operating the daemons, over real processes: Prometheus metrics scraped with curl and parsed
//! with Python's prometheus_client, incident controls (freeze, unfreeze), the drain on
//! SIGTERM, a reload that refuses a bad file, the share cache TTL, and a thousand requests
//! through a coordinator failover.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{conclave, curl, Cluster, ParticipantSetup, ProxyOpts};

const METRICS: &str = "metrics_listen = \"127.0.0.1:0\"";

/// Parses an exposition with Python's prometheus_client (its OpenMetrics parser, and the
/// classic text parser too): every sample as (name, labels, value).
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
list(classic(text))
out = []
for family in om(text):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it with prometheus_client)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    v
}

fn sample(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .reduce(|a, b| a + b)
}

fn metrics_setups(n: usize) -> Vec<ParticipantSetup> {
    (0..n)
        .map(|_| ParticipantSetup {
            extra_config: Some(METRICS.into()),
            ..Default::default()
        })
        .collect()
}

#[test]
fn metrics_count_signatures_and_refusals_and_parse_as_prometheus_text() {
    let c = Cluster::start_ops(2, 3, metrics_setups(3), METRICS);
    c.wait_reachable(3);
    for i in 0..5 {
        let (code, _, err) = c.sign(format!("metrics {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{err}");
    }
    // Client B is in no signer's policy: refused by the signers, counted by rule.
    let (code, _, _) = c.sign_as(&c.client_b_dir, b"not allowed", None, 10);
    assert_eq!(code, Some(3));

    let coord = parse_metrics(&curl(&c.metrics["coordinator"], "/metrics"));
    let ok = [("group", "it"), ("result", "ok")];
    assert_eq!(
        sample(&coord, "conclave_sign_requests_total", &ok),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &coord,
            "conclave_sign_requests_total",
            &[("group", "it"), ("result", "not_authorized")]
        ),
        Some(1.0)
    );
    let refusals = sample(
        &coord,
        "conclave_policy_refusals_total",
        &[("group", "it"), ("rule", "unknown_client")],
    )
    .expect("refusals by signer");
    assert!(refusals >= 1.0, "{refusals}");
    assert!(coord
        .iter()
        .any(|(n, l, _)| n == "conclave_policy_refusals_total"
            && l.get("signer").is_some_and(|s| s.starts_with('p'))));
    // Six requests observed by the latency histogram.
    assert_eq!(
        sample(
            &coord,
            "conclave_sign_duration_seconds_count",
            &[("group", "it")]
        ),
        Some(6.0)
    );
    // Gauges come from a 1 s refresh.
    std::thread::sleep(Duration::from_millis(1200));
    let coord = parse_metrics(&curl(&c.metrics["coordinator"], "/metrics"));
    assert_eq!(
        sample(&coord, "conclave_participants_connected", &[]),
        Some(3.0)
    );
    assert_eq!(
        sample(&coord, "conclave_group_epoch", &[("group", "it")]),
        Some(1.0)
    );
    for p in ["p1", "p2", "p3"] {
        assert!(
            sample(
                &coord,
                "conclave_commitment_pool_depth",
                &[("group", "it"), ("signer", p)]
            )
            .is_some(),
            "pool depth of {p}"
        );
    }
    assert_eq!(
        sample(&coord, "conclave_build_info", &[("role", "coordinator")]),
        Some(1.0)
    );
    assert!(sample(&coord, "conclave_process_start_time_seconds", &[]).unwrap() > 1.6e9);
    assert_eq!(
        sample(&coord, "conclave_audit_write_failures_total", &[]),
        Some(0.0)
    );
    // No label carries a request id, a message or a key: every label value is short and
    // from a known set.
    for (name, labels, _) in &coord {
        for (k, v) in labels {
            assert!(
                v.len() <= 32 && !v.chars().all(|c| c.is_ascii_hexdigit()) || v.len() < 8,
                "{name}{{{k}={v}}} looks unbounded"
            );
        }
    }

    // Each signature took exactly two shares (2-of-3): ten in all across the signers.
    let mut shares = 0.0;
    for p in ["p1", "p2", "p3"] {
        let m = parse_metrics(&curl(&c.metrics[p], "/metrics"));
        shares += sample(
            &m,
            "conclave_signature_shares_total",
            &[("group", "it"), ("result", "ok")],
        )
        .unwrap_or(0.0);
        assert_eq!(
            sample(&m, "conclave_build_info", &[("role", "participant")]),
            Some(1.0)
        );
        assert_eq!(sample(&m, "conclave_shares_in_memory", &[]), Some(1.0));
    }
    assert_eq!(shares, 10.0);
    // Anything but /metrics is 404.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/other", c.metrics["coordinator"]),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

fn freeze(c: &Cluster, name: &str, verb: &str) -> serde_json::Value {
    let config = c.config(name);
    let out = conclave(&[
        verb,
        "--config",
        config.to_str().unwrap(),
        "--reason",
        "incident drill",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{verb} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn a_frozen_signer_refuses_at_once_stays_frozen_across_a_restart_and_below_threshold_signing_fails_closed_as_frozen(
) {
    let mut c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    for i in 0..3 {
        let (code, _, err) = c.sign(format!("warm {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{err}");
    }
    let reply = freeze(&c, "p1", "freeze");
    assert_eq!(reply["frozen"]["all"], true);
    // From the next request on, p1 signs nothing (its pooled commitments are refused).
    for i in 0..6 {
        let (code, json, err) = c.sign(format!("after freeze {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            !common::signers(&json).contains(&"p1".to_string()),
            "p1 signed while frozen: {json}"
        );
    }
    // p1's own audit log says so.
    let records = c.audit_records("p1");
    assert!(
        records.iter().any(|r| r["action"] == "freeze"),
        "{records:?}"
    );
    // The coordinator reports it as frozen (not as a fault).
    assert_eq!(c.status()["frozen"], serde_json::json!(["p1"]));
    // Two of three frozen: below the threshold, a typed `frozen` failure, no signature.
    freeze(&c, "p2", "freeze");
    let (code, json, _) = c.sign(b"nobody may sign", 10);
    assert_eq!(code, Some(1));
    assert_eq!(json["error"], "frozen", "{json}");
    assert!(json.get("signature").is_none());
    // A restart does not lift it.
    c.restart(0);
    c.restart(1);
    std::thread::sleep(Duration::from_millis(500));
    let (code, json, _) = c.sign(b"still frozen", 10);
    assert_eq!(
        (code, json["error"].as_str()),
        (Some(1), Some("frozen")),
        "{json}"
    );
    // Unfreezing one is enough for 2-of-3 again, without any reconnection.
    let reply = freeze(&c, "p1", "unfreeze");
    assert_eq!(reply["frozen"]["all"], false);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, json, err) = c.sign(b"thawed", 10);
        if code == Some(0) {
            let signers = common::signers(&json);
            assert!(!signers.contains(&"p2".to_string()), "{signers:?}");
            break;
        }
        assert!(Instant::now() < until, "no signature after unfreeze: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let records = c.audit_records("p1");
    assert!(records.iter().any(|r| r["action"] == "unfreeze"));
    // A stopped node is frozen offline (the file it starts with), recorded by the command.
    c.kill(2);
    let reply = freeze(&c, "p3", "freeze");
    assert_eq!(reply["frozen"]["all"], true);
    assert!(c.dir.path().join("p3-audit/frozen.toml").exists());
    assert!(c
        .audit_records("p3")
        .iter()
        .any(|r| r["action"] == "freeze"));
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_zero() {
    // Every message to and from a participant is delayed, so a signature takes long enough to
    // be in flight when the coordinator is told to stop.
    let mut c = Cluster::start_ops_with_proxy(
        2,
        3,
        ProxyOpts {
            delay_ms: 450.0,
            jitter_ms: 0.0,
            loss: 0.0,
        },
        METRICS,
    );
    c.wait_reachable(3);
    // Warm the pools (through 0.9 s round trips a first attempt may time out on a busy host).
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, _, err) = c.sign(b"warm-up", 20);
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < until, "no warm-up signature: {err}");
    }
    let bin = common::bin();
    let args: Vec<String> = [
        "sign",
        "--coordinator",
        &c.coordinator_addr,
        "--coordinator-key",
        &c.coordinator_key,
        "--identity",
        c.client_dir.to_str().unwrap(),
        "--group",
        "it",
        "--json",
        "--timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut signers = vec![];
    for i in 0..3 {
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            format!("in flight {i}").as_bytes(),
        )
        .unwrap();
        signers.push(child);
    }
    // Wait until the three are submitted and not yet answered (each takes ≥ 0.9 s through
    // the proxies): the coordinator's in-flight gauge says so.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let text = curl(&c.metrics["coordinator"], "/metrics");
        if text.lines().any(|l| l == "conclave_in_flight 3") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the requests never were in flight together"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let code = c.terminate_coordinator(Duration::from_secs(40));
    assert_eq!(code, Some(0), "coordinator log: {}", c.log("coordinator"));
    for s in signers {
        let out = s.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a request in flight was dropped: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(c.log("coordinator").contains("drained"));
    eprintln!("coordinator drained in {:?}", started.elapsed());
    // A participant drains too: exit 0.
    let code = c.terminate(0, Duration::from_secs(40));
    assert_eq!(code, Some(0), "participant log: {}", c.log("p1"));
    assert!(c.log("p1").contains("drained"));
}

#[test]
fn a_reload_with_a_bad_file_keeps_serving_the_old_state_and_says_why() {
    let c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    let (code, _, err) = c.sign(b"before", 10);
    assert_eq!(code, Some(0), "{err}");
    // A corrupt manifest: refused, the coordinator serves the old one.
    let manifest = c.dir.path().join("it.manifest.toml");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"group = \"it\"\nthreshold = \"not a number\"\n").unwrap();
    let out = conclave(&[
        "reload",
        "--config",
        c.config("coordinator").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reload refused"));
    let (code, _, err) = c.sign(b"after a refused reload", 10);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(&manifest, &good).unwrap();
    // A participant's policy that does not parse: refused, its old policy still decides.
    let policy = c.dir.path().join("p1.policy.toml");
    let good_policy = std::fs::read(&policy).unwrap();
    std::fs::write(&policy, b"[[client]]\nname = 3\n").unwrap();
    let out = conclave(&[
        "reload",
        "--config",
        c.config("p1").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("policy"),
        "{reply}"
    );
    std::fs::write(&policy, &good_policy).unwrap();
    let out = conclave(&[
        "reload",
        "--config",
        c.config("p1").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true);
    assert!(
        reply["changes"][0].as_str().unwrap().contains("kept: it@1"),
        "{reply}"
    );
    // Both reloads are in p1's audit log.
    let results: Vec<String> = c
        .audit_records("p1")
        .iter()
        .filter(|r| r["action"] == "reload")
        .map(|r| r["result"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(results, vec!["refused:bad_config", "ok"]);
    // SIGHUP does the same as `conclave reload`.
    let pid = c.participants[1].as_ref().unwrap().id();
    // SAFETY: kill(2) on a child of this process.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !c.log("p2").contains("reloaded") {
        assert!(
            Instant::now() < until,
            "no reload on SIGHUP: {}",
            c.log("p2")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = c.sign(b"after SIGHUP", 10);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn the_share_cache_ttl_drops_an_idle_share_and_decrypts_it_again_on_the_next_request() {
    let setups = (0..2)
        .map(|_| ParticipantSetup {
            extra_config: Some(format!("{METRICS}\nshare_cache_ttl = 1")),
            ..Default::default()
        })
        .collect();
    let c = Cluster::start_ops(2, 2, setups, "");
    c.wait_reachable(2);
    let (code, _, err) = c.sign(b"first", 10);
    assert_eq!(code, Some(0), "{err}");
    let in_memory = |p: &str| {
        let m = parse_metrics(&curl(&c.metrics[p], "/metrics"));
        sample(&m, "conclave_shares_in_memory", &[]).unwrap_or(-1.0)
    };
    let until = Instant::now() + Duration::from_secs(15);
    while in_memory("p1") != 0.0 {
        assert!(Instant::now() < until, "the idle share stayed in memory");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.log("p1").contains("share dropped from memory"));
    // The next request decrypts it again (from the passphrase file) and signs.
    let (code, _, err) = c.sign(b"after the ttl", 10);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        c.log("p1").contains("share decrypted again"),
        "{}",
        c.log("p1")
    );
    // A passphrase source that no longer works: the request fails closed, and the requests
    // that follow within the backoff are refused without running Argon2 again each.
    let pass = c.dir.path().join("pass");
    let good = std::fs::read(&pass).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while in_memory("p1") != 0.0 {
        assert!(Instant::now() < until, "the idle share stayed in memory");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&pass, b"not the passphrase\n").unwrap();
    for i in 0..3 {
        let (code, _, _) = c.sign(format!("broken {i}").as_bytes(), 2);
        assert_ne!(code, Some(0), "signed without its share");
    }
    let failures = c
        .log("p1")
        .matches("cannot decrypt the share again")
        .count();
    assert!(
        (1..=2).contains(&failures),
        "{failures} decryptions tried for three requests within the backoff"
    );
    std::fs::write(&pass, good).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, err) = c.sign(b"passphrase restored", 10);
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < until, "never signed again: {err}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_thousand_requests_survive_killing_the_first_coordinator_midway() {
    let mut c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    // A second coordinator with its own identity, pinned by every participant through a
    // reload: each commitment belongs to the coordinator that asked for it.
    let (second, second_key) = c.add_coordinator();
    let first = c.coordinator_addr.clone();
    let first_key = c.coordinator_key.clone();
    let path = c.client_config_keys(
        "failover.toml",
        &[(&first, &first_key), (&second, &second_key)],
        4000,
    );
    let config = conclave_client::ClientConfig::read(&path).expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let total = 1000usize;
    let kill_at = 300usize;
    let (latencies, failures) = rt.block_on(async {
        let signer = std::sync::Arc::new(
            conclave_client::ThresholdSigner::connect(&config, None)
                .await
                .expect("connect"),
        );
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = vec![];
        for w in 0..4 {
            let signer = signer.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = vec![];
                let mut failed = vec![];
                for i in (w..total).step_by(4) {
                    let msg = format!("request {i}");
                    let t = Instant::now();
                    match conclave_client::SigningService::sign(&*signer, msg.as_bytes()).await {
                        Ok(sig) => {
                            conclave_client::SigningService::public_key(&*signer)
                                .verify_strict(msg.as_bytes(), &sig)
                                .expect("verifies");
                            lat.push(t.elapsed());
                        }
                        Err(e) => failed.push(format!("{i}: {e}")),
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (lat, failed)
            }));
        }
        while done.load(std::sync::atomic::Ordering::Relaxed) < kill_at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.kill_coordinator();
        let mut lat = vec![];
        let mut failed = vec![];
        for t in tasks {
            let (l, f) = t.await.unwrap();
            lat.extend(l);
            failed.extend(f);
        }
        signer.close().await;
        (lat, failed)
    });
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(latencies.len(), total);
    let mut sorted = latencies.clone();
    sorted.sort();
    let p = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    eprintln!(
        "failover run: {total} requests, 100% signed; p50 {:?}, p99 {:?}, max {:?} (the first coordinator was SIGKILLed after {kill_at})",
        p(0.5),
        p(0.99),
        sorted[sorted.len() - 1]
    );
    // The second coordinator took over: its audit log holds signatures.
    assert!(c
        .audit_records("coordinator2")
        .iter()
        .any(|r| r["result"] == "signed"));
}

#[test]
fn a_participant_drains_and_exits_while_its_coordinator_keeps_asking() {
    let mut c = Cluster::start(2, 3, vec![]);
    c.wait_reachable(3);
    for i in 0..3 {
        let (code, _, err) = c.sign(format!("before {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{err}");
    }
    // The coordinator keeps asking it for commitments (refused while it drains): that is no
    // work in flight, so the drain ends after a quiet second, not at the grace.
    let started = Instant::now();
    let code = c.terminate(0, Duration::from_secs(25));
    assert_eq!(code, Some(0), "participant log: {}", c.log("p1"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain ran {:?}",
        started.elapsed()
    );
    for i in 0..3 {
        let (code, json, err) = c.sign(format!("after {i}").as_bytes(), 10);
        assert_eq!(code, Some(0), "{err}");
        assert!(!common::signers(&json).contains(&"p1".to_string()));
    }
}
