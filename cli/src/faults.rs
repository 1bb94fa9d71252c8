//! Test-only misbehaviour, described once: `CONCLAVE_TEST_FAULT` is read here and nowhere else,
//! into a typed [`FaultPlan`] that each command applies to the state machine it drives. In the
//! default build (without the `fault-injection` feature) the plan is always empty and none of
//! the fault code exists.

#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A participant returns corrupted signature shares (`corrupt-shares`).
    CorruptShares,
    /// A DKG member sends bad round-2 shares (`dkg-bad-share`).
    DkgBadShare,
    /// A ceremony member exits abruptly after round N (`dkg-exit-after-round=N`).
    ExitAfterRound(u8),
    /// A relay substitutes a round-1 package (`dkg-substitute-round1`).
    SubstituteRound1,
    /// A relay withholds the last member's store round (`relay-withhold-store`).
    WithholdStore,
    /// A reshare dealer sends a bad sub-share (`reshare-bad-sub-share`).
    BadSubShare,
    /// A coordinator that signs requests of its own (`coordinator-forge`).
    CoordinatorForge,
    /// A coordinator that claims a client's identity on a request it signed (`coordinator-impersonate`).
    CoordinatorImpersonate,
    /// A coordinator that alters the message after the client signed (`coordinator-alter`).
    CoordinatorAlter,
    /// A coordinator that replays the first request it saw (`coordinator-replay`).
    CoordinatorReplay,
}

/// The faults this process injects (none outside test builds).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FaultPlan {
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

impl FaultPlan {
    /// Reads `CONCLAVE_TEST_FAULT` (test builds only); an unknown value is reported loudly.
    pub(crate) fn from_env() -> Self {
        #[cfg(feature = "fault-injection")]
        {
            let Ok(v) = std::env::var("CONCLAVE_TEST_FAULT") else {
                return Self::default();
            };
            let fault = match v.as_str() {
                "corrupt-shares" => Some(Fault::CorruptShares),
                "dkg-bad-share" => Some(Fault::DkgBadShare),
                "dkg-substitute-round1" => Some(Fault::SubstituteRound1),
                "relay-withhold-store" => Some(Fault::WithholdStore),
                "reshare-bad-sub-share" => Some(Fault::BadSubShare),
                "coordinator-forge" => Some(Fault::CoordinatorForge),
                "coordinator-impersonate" => Some(Fault::CoordinatorImpersonate),
                "coordinator-alter" => Some(Fault::CoordinatorAlter),
                "coordinator-replay" => Some(Fault::CoordinatorReplay),
                other => match other
                    .strip_prefix("dkg-exit-after-round=")
                    .and_then(|r| r.parse().ok())
                {
                    Some(r) => Some(Fault::ExitAfterRound(r)),
                    None => {
                        tracing::error!("TEST FAULT INJECTION: unknown CONCLAVE_TEST_FAULT={other:?}; no fault injected");
                        None
                    }
                },
            };
            if let Some(f) = fault {
                tracing::warn!("TEST FAULT INJECTION ACTIVE: {f:?}");
            }
            Self { fault }
        }
        #[cfg(not(feature = "fault-injection"))]
        Self::default()
    }

    /// A participant that returns corrupted shares.
    pub(crate) fn apply_participant(&self, _p: &mut conclave_participant::Participant) {
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(Fault::CorruptShares) {
            _p.set_fault(Some(conclave_participant::Misbehaviour::CorruptShares));
        }
    }

    /// A compromised coordinator: forged, impersonated, altered or replayed requests.
    pub(crate) fn apply_coordinator(
        &self,
        _c: &mut conclave_coordinator::Coordinator,
        _identity: &conclave_protocol::IdentityKey,
    ) {
        #[cfg(feature = "fault-injection")]
        {
            use conclave_coordinator::Misbehaviour as M;
            let m = match self.fault {
                Some(Fault::CoordinatorForge) => Some(M::Forge(_identity.clone())),
                Some(Fault::CoordinatorImpersonate) => Some(M::Impersonate(_identity.clone())),
                Some(Fault::CoordinatorAlter) => Some(M::AlterMessage),
                Some(Fault::CoordinatorReplay) => Some(M::Replay),
                _ => None,
            };
            if m.is_some() {
                _c.set_fault(m);
            }
        }
    }

    /// A DKG member that sends bad shares, or a reshare dealer that sends a bad sub-share.
    pub(crate) fn apply_protocol(&self, _p: &mut conclave_keygen::kinds::AnyProtocol) {
        #[cfg(feature = "fault-injection")]
        match (self.fault, _p) {
            (Some(Fault::DkgBadShare), conclave_keygen::kinds::AnyProtocol::Dkg(d)) => {
                d.inject(conclave_keygen::dkg::DkgFault::BadShare)
            }
            (Some(Fault::BadSubShare), conclave_keygen::kinds::AnyProtocol::Reshare(r)) => {
                r.inject(conclave_keygen::reshare::ReshareFault::BadSubShare)
            }
            _ => {}
        }
    }

    /// A relay that substitutes a round-1 package or withholds the store round.
    pub(crate) fn apply_relay(&self, _relay: &mut conclave_keygen::ceremony::Relay) {
        #[cfg(feature = "fault-injection")]
        match self.fault {
            Some(Fault::SubstituteRound1) => {
                _relay.inject(conclave_keygen::ceremony::RelayFault::SubstituteRound1)
            }
            Some(Fault::WithholdStore) => {
                _relay.inject(conclave_keygen::ceremony::RelayFault::WithholdStore)
            }
            _ => {}
        }
    }

    /// Exits abruptly after `round` if so planned (a member dying mid-ceremony).
    pub(crate) fn exit_after_round(&self, _round: u8) {
        #[cfg(feature = "fault-injection")]
        if self.fault == Some(Fault::ExitAfterRound(_round)) {
            eprintln!("TEST FAULT INJECTION: exiting abruptly after round {_round}");
            std::process::exit(9);
        }
    }
}
