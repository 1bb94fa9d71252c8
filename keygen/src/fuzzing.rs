//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay (`conclave-fuzzing`):
//! each decodes untrusted bytes the way a ceremony member does, with the types the members
//! use. Not an API; built only with the `fuzzing` feature.
//!
//! Every function returns `Err` only for a broken invariant (a bug), never for bad input.

use frost_ed25519 as frost;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ceremony::member::{Confirm, StoreAck};
use crate::ceremony::{Complaint, Echo, Sealed, SignedComplaint};

/// Decodes `bytes` as a `T`; if that works, its encoding must decode again to the same
/// encoding (decode → encode → decode is stable).
fn roundtrip<T: Serialize + DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<Option<T>, String> {
    let Ok(v) = postcard::from_bytes::<T>(bytes) else {
        return Ok(None);
    };
    let once =
        postcard::to_allocvec(&v).map_err(|e| format!("{what}: decoded, not encodable: {e}"))?;
    let again: T =
        postcard::from_bytes(&once).map_err(|e| format!("{what}: own encoding refused: {e}"))?;
    let twice = postcard::to_allocvec(&again).map_err(|e| format!("{what}: {e}"))?;
    if once != twice {
        return Err(format!("{what}: encoding not stable"));
    }
    Ok(Some(v))
}

/// One ceremony payload: the first byte picks the message type (every broadcast and direct
/// message of DKG, refresh, reshare and repair, and the store and confirm rounds), the rest is
/// its bytes. What a member parses after decoding (frost packages, points, scalars) is parsed
/// too.
pub fn ceremony_payload(data: &[u8]) -> Result<(), String> {
    let Some((&tag, bytes)) = data.split_first() else {
        return Ok(());
    };
    match tag % 10 {
        0 => {
            if let Some(r) = roundtrip::<crate::dkg::Round1>("dkg round 1", bytes)? {
                if let Ok(p) = frost::keys::dkg::round1::Package::deserialize(&r.package) {
                    let again = p.serialize().map_err(|e| format!("dkg package: {e}"))?;
                    let p2 = frost::keys::dkg::round1::Package::deserialize(&again)
                        .map_err(|e| format!("dkg package: own encoding refused: {e}"))?;
                    if p2 != p {
                        return Err("dkg package: round trip differs".into());
                    }
                }
            }
        }
        1 => {
            if let Some(r) = roundtrip::<crate::reshare::Round1>("reshare round 1", bytes)? {
                for c in &r.commitments {
                    if let Some(p) = crate::reshare::point(c) {
                        if p.compress().to_bytes() != *c {
                            return Err("reshare commitment: not canonical yet accepted".into());
                        }
                    }
                }
            }
        }
        2 => {
            roundtrip::<crate::repair::Round1>("repair round 1", bytes)?;
        }
        3 => {
            roundtrip::<Echo>("echo", bytes)?;
        }
        4 => {
            if let Some(sc) = roundtrip::<SignedComplaint>("signed complaint", bytes)? {
                let _ = sc.complaint.fault.attribution();
            }
        }
        5 => {
            roundtrip::<Complaint>("complaint", bytes)?;
        }
        6 => {
            roundtrip::<StoreAck>("store ack", bytes)?;
        }
        7 => {
            roundtrip::<Confirm>("confirm", bytes)?;
        }
        8 => {
            roundtrip::<Sealed>("sealed", bytes)?;
        }
        _ => {
            // The plaintexts of direct messages: a DKG round-2 package, a reshare sub-share.
            if let Ok(p) = frost::keys::dkg::round2::Package::deserialize(bytes) {
                let again = p.serialize().map_err(|e| format!("round 2 package: {e}"))?;
                if frost::keys::dkg::round2::Package::deserialize(&again)
                    .ok()
                    .as_ref()
                    != Some(&p)
                {
                    return Err("round 2 package: round trip differs".into());
                }
            }
            if let Ok(b) = <[u8; 32]>::try_from(bytes) {
                let _ = curve25519_dalek::Scalar::from_canonical_bytes(b);
            }
        }
    }
    Ok(())
}

/// A 2-of-3 DKG run in memory through the real relay and members (the code the QUIC driver
/// runs), with one of the relay's replies changed by `data`: byte 0 picks the round, byte 1
/// the recipient, byte 2 the delivered item and whether its broadcast or its direct part is
/// replaced; the rest is the replacement. Invariants: nothing panics, the run ends, and the
/// members that activate agree on the group's manifest.
pub fn ceremony_dkg(data: &[u8]) -> Result<(), String> {
    use crate::ceremony::harness;
    use conclave_protocol::Message;

    let Some((&[round, recipient, item], payload)) = data.split_first_chunk::<3>() else {
        return Ok(());
    };
    let mut rng = rand::rngs::OsRng;
    let (plan, ids) = harness::dkg_members("fuzz", 2, 3, &mut rng)?;
    let (members, relay) = harness::dkg_run_parts(&plan, &ids)?;
    let want_round = round % 8;
    let want_recipient = usize::from(recipient % 3);
    let mut done = false;
    let mut tamper = |to: usize, env: &mut conclave_protocol::Envelope| {
        if let Message::CeremonyRound { round, items, .. } = &mut env.msg {
            if !done && *round == want_round && to == want_recipient && !items.is_empty() {
                let n = items.len();
                if let Some(d) = items.get_mut(usize::from(item >> 1) % n) {
                    if item & 1 == 0 {
                        d.broadcast = payload.to_vec();
                    } else {
                        d.direct = Some(payload.to_vec());
                    }
                }
                done = true;
            }
        }
        true
    };
    let run = harness::run_with(
        members,
        relay,
        harness::Faults {
            silent: None,
            broken_store: None,
            tamper: &mut tamper,
        },
    );
    let mut manifests = vec![];
    for (i, s) in run.stores.iter().enumerate() {
        if run.activated(i) {
            let (m, _) = s.active().ok_or("activated without an active share")?;
            manifests.push(m.to_toml().map_err(|e| e.to_string())?);
        }
    }
    if manifests.windows(2).any(|w| w.first() != w.last()) {
        return Err("members activated different manifests".into());
    }
    Ok(())
}
