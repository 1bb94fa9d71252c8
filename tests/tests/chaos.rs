//! Real processes through the chaos proxy (`conclave sim proxy`): the kernel here has no
//! netem, so delay, jitter, loss and blackholes are injected in user space.

mod common;

use std::time::Duration;

use common::{Cluster, ProxyOpts};

fn verify(c: &Cluster, msg: &[u8], json: &serde_json::Value) {
    let key = c.public_key();
    let mut sig = [0u8; 64];
    hex::decode_to_slice(json["signature"].as_str().expect("signature"), &mut sig).expect("hex");
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("verify_strict");
}

#[test]
fn three_of_five_signs_across_a_lossy_50ms_network() {
    let opts = ProxyOpts {
        delay_ms: 50.0,
        jitter_ms: 10.0,
        loss: 0.05,
    };
    let c = Cluster::start_with(3, 5, vec![], Some(opts));
    c.wait_reachable(5);
    for i in 0..5 {
        let msg = format!("across the WAN {i}");
        let (code, json, stderr) = c.sign(msg.as_bytes(), 20);
        assert_eq!(code, Some(0), "{stderr}");
        verify(&c, msg.as_bytes(), &json);
    }
}

#[test]
fn two_blackholed_participants_mid_run_are_routed_around() {
    let opts = ProxyOpts {
        delay_ms: 2.0,
        jitter_ms: 1.0,
        loss: 0.0,
    };
    let c = Cluster::start_with(3, 5, vec![], Some(opts));
    c.wait_reachable(5);
    let (code, json, stderr) = c.sign(b"before", 10);
    assert_eq!(code, Some(0), "{stderr}");
    verify(&c, b"before", &json);
    c.blackhole(0, true);
    c.blackhole(1, true);
    std::thread::sleep(Duration::from_millis(200)); // the proxies poll the switch every 50 ms
    for i in 0..4 {
        let msg = format!("during the blackhole {i}");
        let (code, json, stderr) = c.sign(msg.as_bytes(), 10);
        assert_eq!(code, Some(0), "{stderr}");
        verify(&c, msg.as_bytes(), &json);
        let signers = common::signers(&json);
        assert!(
            !signers.iter().any(|s| s == "p1" || s == "p2"),
            "{signers:?}"
        );
    }
    assert!(
        c.log("p1-proxy").contains("blackhole"),
        "the proxy logged the switch"
    );
}
