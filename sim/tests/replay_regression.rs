//! A case proptest found: a byzantine replayer answering a duplicate of an earlier request
//! (delivered after later ones) must answer it as it did the first time. Before, the
//! simulated replayer made a new choice and the checker counted a share the coordinator never
//! used (it had the valid one already) as a culprit missed.

use conclave_sim::{run, Behaviour, Byzantine, Link, Scenario, Transport};

#[test]
fn a_late_duplicate_from_a_replayer_is_answered_as_the_first_time() {
    let mut s = Scenario::new(2, 2)
        .requests(12)
        .concurrency(3)
        .seed(4235602792522087613);
    s.message_bytes = 32;
    s.request_timeout_ms = 4000;
    s.participant_timeout_ms = 500;
    s.pool_target = 32;
    s.connection_timeout_ms = 10000;
    s.reconnect_ms = 200;
    s.transport = Transport::Quic;
    s.link = Link {
        latency_ms: 28.95717724264289,
        jitter_ms: 7.239294310660722,
        loss: 0.0,
        duplicate: 0.09429400729299912,
        reorder: 0.09429400729299912,
        ..s.link
    };
    s.byzantine = vec![Byzantine {
        participant: 2,
        behaviour: Behaviour::Replay,
        rate: 0.5,
    }];
    let r = run(s).unwrap();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.ok + r.failed_total(), r.requests_submitted);
}
