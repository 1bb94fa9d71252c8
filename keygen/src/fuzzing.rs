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
    // Seeded: the same input replays the same run (keys, nonces and all).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0xC0C1A7E);
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
    let mut run = harness::run_seeded(
        members,
        relay,
        harness::Faults {
            silent: None,
            broken_store: None,
            tamper: &mut tamper,
        },
        &mut rng,
    );
    // `rotate resume`: a member left undecided activates when shown the completion of one
    // that activated, if it verifies against its own pending results.
    let done = (0..3).find_map(|i| match run.ends.get(i) {
        Some(Some(crate::ceremony::MemberEnd::Activated { completion, .. })) => {
            Some(completion.clone())
        }
        _ => None,
    });
    let mut activated: Vec<usize> = (0..3).filter(|&i| run.activated(i)).collect();
    if let Some(done) = &done {
        for i in 0..3 {
            if matches!(
                run.ends.get(i),
                Some(Some(crate::ceremony::MemberEnd::Undecided(_)))
            ) {
                let store = run.stores.get_mut(i).ok_or("no store")?;
                store
                    .resume(&plan, done)
                    .map_err(|e| format!("an undecided member cannot resume: {e}"))?;
                activated.push(i);
            }
        }
    }
    // All or nothing: no member is ever left out, the input only decides which.
    if !activated.is_empty() && activated.len() != 3 {
        return Err(format!("{} of 3 members activated", activated.len()));
    }
    let mut manifests = vec![];
    let mut shares = vec![];
    for s in &run.stores {
        if let Some((m, kp)) = s.active() {
            manifests.push(m.clone());
            shares.extend(kp.clone());
        }
    }
    if manifests.windows(2).any(|w| w.first() != w.last()) {
        return Err("members activated different manifests".into());
    }
    if let Some(m) = manifests.first() {
        two_sign(m, &shares, &mut rng)?;
    }
    Ok(())
}

/// Every pair of `shares` signs a message that verifies (strictly) under `manifest`'s key.
fn two_sign(
    manifest: &crate::GroupManifest,
    shares: &[frost::keys::KeyPackage],
    rng: &mut rand::rngs::StdRng,
) -> Result<(), String> {
    if shares.len() < 3 {
        return Err("activated without every share".into());
    }
    for (i, a) in shares.iter().enumerate() {
        for b in shares.iter().skip(i + 1) {
            pair_signs(manifest, [a, b], rng)?;
        }
    }
    Ok(())
}

fn pair_signs(
    manifest: &crate::GroupManifest,
    signers: [&frost::keys::KeyPackage; 2],
    rng: &mut rand::rngs::StdRng,
) -> Result<(), String> {
    let msg = b"fuzzed dkg";
    let pkp = manifest.public_key_package().map_err(|e| e.to_string())?;
    let mut nonces = std::collections::BTreeMap::new();
    let mut commitments = std::collections::BTreeMap::new();
    for kp in &signers {
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut *rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let pkg = frost::SigningPackage::new(commitments, msg);
    let mut sig_shares = std::collections::BTreeMap::new();
    for kp in &signers {
        let n = nonces.get(kp.identifier()).ok_or("nonce")?;
        let s = frost::round2::sign(&pkg, n, kp).map_err(|e| e.to_string())?;
        sig_shares.insert(*kp.identifier(), s);
    }
    let sig = frost::aggregate(&pkg, &sig_shares, &pkp).map_err(|e| e.to_string())?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(
        &manifest.public_key_bytes().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let bytes = sig.serialize().map_err(|e| e.to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&bytes).map_err(|e| e.to_string())?;
    vk.verify_strict(msg, &sig)
        .map_err(|e| format!("the new shares do not sign: {e}"))
}
