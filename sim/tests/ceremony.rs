//! Reshare ceremonies in the simulator: the real relay and member state machines under
//! message loss and a crashing dealer end either completed or cleanly aborted.

use conclave_sim::{run_reshare, CeremonyOutcome, Link, ReshareScenario, Transport};
use proptest::prelude::*;

fn lossy(loss: f64) -> Link {
    Link {
        latency_ms: 20.0,
        jitter_ms: 5.0,
        loss,
        ..Link::default()
    }
}

#[test]
fn a_reshare_completes_under_five_percent_loss() {
    let r = run_reshare(&ReshareScenario {
        link: lossy(0.05),
        seed: 11,
        ..ReshareScenario::default()
    })
    .unwrap();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.outcome, CeremonyOutcome::Completed);
    assert!(
        r.lost_transmissions > 0,
        "the run must actually have lost messages"
    );
}

#[test]
fn a_dealer_crashing_mid_ceremony_aborts_it_cleanly_and_in_time() {
    let r = run_reshare(&ReshareScenario {
        link: lossy(0.01),
        crash_dealer_at_ms: Some(70.0),
        round_timeout_secs: 5,
        seed: 3,
        ..ReshareScenario::default()
    })
    .unwrap();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    match &r.outcome {
        CeremonyOutcome::Aborted(why) => assert!(why.contains("m0"), "{why}"),
        other => panic!("expected an abort, got {other:?}"),
    }
    // Noticed by the round timeout (5 s) or the lost connection (10 s), plus the members'
    // grace: well under a minute of virtual time.
    assert!(r.virtual_ms < 30_000.0, "{}", r.virtual_ms);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let s = ReshareScenario {
        link: lossy(0.05),
        seed: 5,
        ..ReshareScenario::default()
    };
    let (a, b) = (run_reshare(&s).unwrap(), run_reshare(&s).unwrap());
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(
        (a.messages, a.lost_transmissions),
        (b.messages, b.lost_transmissions)
    );
    assert_eq!(a.virtual_ms, b.virtual_ms);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Any loss rate, transport, crash time and threshold change: completed or cleanly
    /// aborted, never a broken invariant.
    #[test]
    fn reshare_is_all_or_nothing(
        seed in 0u64..1_000_000,
        loss in 0.0f64..0.2,
        datagram in any::<bool>(),
        crash in proptest::option::of(0.0f64..400.0),
        t2 in 2u16..5,
    ) {
        let r = run_reshare(&ReshareScenario {
            from: (2, 3),
            to: (t2, 4),
            link: lossy(loss),
            transport: if datagram { Transport::Datagram } else { Transport::Quic },
            crash_dealer_at_ms: crash,
            round_timeout_secs: 3,
            seed,
            ..ReshareScenario::default()
        }).unwrap();
        prop_assert!(r.violations.is_empty(), "{:?}", r.violations);
    }
}

#[test]
fn every_ceremony_kind_completes_under_loss_and_aborts_cleanly_on_a_crash() {
    use conclave_keygen::ceremony::CeremonyKind;
    for kind in [
        CeremonyKind::Dkg,
        CeremonyKind::Refresh,
        CeremonyKind::Reshare,
        CeremonyKind::Repair,
    ] {
        let r = conclave_sim::run_ceremony(&ReshareScenario {
            kind,
            link: lossy(0.05),
            seed: 21,
            ..ReshareScenario::default()
        })
        .unwrap();
        assert!(r.violations.is_empty(), "{kind:?}: {:?}", r.violations);
        assert_eq!(r.outcome, CeremonyOutcome::Completed, "{kind:?}");
        let r = conclave_sim::run_ceremony(&ReshareScenario {
            kind,
            link: lossy(0.01),
            crash_dealer_at_ms: Some(70.0),
            round_timeout_secs: 5,
            seed: 4,
            ..ReshareScenario::default()
        })
        .unwrap();
        assert!(
            r.violations.is_empty(),
            "{kind:?} crash: {:?}",
            r.violations
        );
        assert!(
            matches!(r.outcome, CeremonyOutcome::Aborted(_)),
            "{kind:?}: a crashed member cannot complete: {:?}",
            r.outcome
        );
    }
}
