//! Random scenarios (small, so CI stays fast): every invariant holds whatever the parameters.

use conclave_sim::{run, Behaviour, Byzantine, Crash, Link, Partition, Scenario, Transport};
use proptest::prelude::*;

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        2u16..=4,
        0usize..=3,
        any::<u64>(),
        1usize..=4,
        0.0f64..40.0,
        0.0f64..0.1,
        0.0f64..0.2,
        any::<bool>(),
        0usize..=2,
        0usize..=2,
    )
        .prop_map(
            |(t, extra, seed, concurrency, latency, loss, dup, datagram, crashes, byz)| {
                let n = usize::from(t) + extra;
                let mut s = Scenario::new(t, n)
                    .requests(12)
                    .concurrency(concurrency)
                    .seed(seed);
                s.link = Link {
                    latency_ms: latency,
                    jitter_ms: latency / 4.0,
                    loss,
                    duplicate: dup,
                    reorder: dup,
                    ..Link::default()
                };
                s.transport = if datagram {
                    Transport::Datagram
                } else {
                    Transport::Quic
                };
                s.request_timeout_ms = 4_000;
                s.participant_timeout_ms = 500;
                for i in 0..crashes.min(n) {
                    s.crashes.push(Crash {
                        participant: i + 1,
                        at_ms: 50 * (i as u64 + 1),
                        restart_at_ms: Some(400 + 100 * i as u64),
                    });
                }
                let behaviours = [
                    Behaviour::InvalidShares,
                    Behaviour::Replay,
                    Behaviour::RefuseCommitments,
                    Behaviour::Selective,
                ];
                for i in 0..byz.min(n) {
                    s.byzantine.push(Byzantine {
                        participant: n - i,
                        behaviour: behaviours[(seed as usize + i) % 4],
                        rate: 0.5,
                    });
                }
                if seed % 3 == 0 {
                    s.partitions.push(Partition {
                        participants: vec![1],
                        from_ms: 100,
                        until_ms: 900,
                    });
                }
                s
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold_for_random_scenarios(s in scenario()) {
        let r = run(s).unwrap();
        prop_assert!(r.violations.is_empty(), "{:#?}", r.violations);
        prop_assert_eq!(r.ok + r.failed_total(), r.requests_submitted);
    }
}
