//! `conclave bench --parts`: each piece of signing work that issue 15 changed, the old way and
//! the new way, in the same run, on one core (mean over many iterations).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_keygen::commitments;
use frost_ed25519 as frost;

/// One part, before and after.
pub struct Part {
    pub name: String,
    pub before: Duration,
    pub after: Duration,
}

fn time<T>(
    iterations: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f()?);
    }
    Ok(start.elapsed() / iterations.max(1) as u32)
}

/// Measures the parts for a t-of-t signing set.
pub fn measure(t: u16) -> anyhow::Result<Vec<Part>> {
    let mut rng = rand::rngs::OsRng;
    let n = usize::from(t);
    let (manifest, shares) = crate::bench::dealt_in_memory("parts", t, n)?;
    let pkp = manifest.public_key_package()?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&manifest.public_key_bytes()?)?;
    let message = b"bench --parts message".as_slice();
    let mut nonces = BTreeMap::new();
    let mut commitments_map = BTreeMap::new();
    let mut wire_entries = Vec::new();
    for s in &shares {
        // The same nonces as frost's and as ours (for the wire form).
        let share = s.key_package.signing_share();
        let (h, b) = (
            frost_core::round1::Nonce::new(share, &mut rng),
            frost_core::round1::Nonce::new(share, &mut rng),
        );
        let ours = conclave_keygen::signing::SigningNonces::from_nonces(h, b);
        wire_entries.push(commitments::package_entry(
            s.key_package.identifier(),
            ours.wire(),
        ));
        commitments_map.insert(*s.key_package.identifier(), *ours.commitments());
        nonces.insert(
            *s.key_package.identifier(),
            frost::round1::SigningNonces::from_nonces(h, b),
        );
    }
    let package = frost::SigningPackage::new(commitments_map, message);
    let package_bytes = package.serialize()?;
    let wire = conclave_protocol::SignPackage {
        message: message.to_vec(),
        commitments: wire_entries,
    };
    let mut sig_shares = BTreeMap::new();
    for s in &shares {
        let id = *s.key_package.identifier();
        let nonce = nonces.get(&id).context("nonce")?;
        sig_shares.insert(id, frost::round2::sign(&package, nonce, &s.key_package)?);
    }
    let one = shares.first().context("a share")?;
    let first_commitments = package
        .signing_commitments()
        .values()
        .next()
        .copied()
        .context("a commitment")?;
    let one_bytes = first_commitments.serialize()?;
    let one_wire = wire.commitments.first().context("an entry")?.commitments;
    // Enough iterations for a stable mean, fewer for large packages.
    let iters = (20_000 / n).clamp(20, 2000);
    let mut parts = Vec::new();
    parts.push(Part {
        name: format!("signer: decode and check a {t}-signer package"),
        before: time(iters, || {
            Ok(frost::SigningPackage::deserialize(&package_bytes)?)
        })?,
        after: time(iters, || Ok(commitments::package_from_wire(&wire)?))?,
    });
    parts.push(Part {
        name: "coordinator: decode and check one pooled commitment pair".into(),
        before: time(2000, || {
            Ok(frost::round1::SigningCommitments::deserialize(&one_bytes)?)
        })?,
        after: time(2000, || Ok(commitments::from_wire(&one_wire)?))?,
    });
    parts.push(Part {
        name: "signer: make one commitment pair (frost's commit; ours, with its wire form)".into(),
        before: time(2000, || {
            Ok(frost::round1::commit(
                one.key_package.signing_share(),
                &mut rand::rngs::OsRng,
            ))
        })?,
        after: time(2000, || {
            Ok(conclave_keygen::signing::SigningNonces::new(
                one.key_package.signing_share(),
                &mut rand::rngs::OsRng,
            ))
        })?,
    });
    // The same nonces both ways.
    let share = one.key_package.signing_share();
    let (h, b) = (
        frost_core::round1::Nonce::new(share, &mut rand::rngs::OsRng),
        frost_core::round1::Nonce::new(share, &mut rand::rngs::OsRng),
    );
    let ours = conclave_keygen::signing::SigningNonces::from_nonces(h, b);
    let theirs = frost::round1::SigningNonces::from_nonces(h, b);
    let mut with_ours = package.signing_commitments().clone();
    with_ours.insert(*one.key_package.identifier(), *ours.commitments());
    let own_package = frost::SigningPackage::new(with_ours, message);
    parts.push(Part {
        name: format!("signer: signature share over {t} signers (frost's sign; ours)"),
        before: time((iters / 4).max(10), || {
            Ok(frost::round2::sign(
                &own_package,
                &theirs,
                &one.key_package,
            )?)
        })?,
        after: time((iters / 4).max(10), || {
            Ok(conclave_keygen::signing::sign(
                &own_package,
                &ours,
                &one.key_package,
            )?)
        })?,
    });
    parts.push(Part {
        name: format!("coordinator: aggregate {t} shares, verified"),
        before: time((iters / 4).max(10), || {
            let sig = frost::aggregate_custom(
                &package,
                &sig_shares,
                &pkp,
                frost::CheaterDetection::AllCheaters,
            )?;
            let bytes: [u8; 64] = sig
                .serialize()?
                .try_into()
                .map_err(|_| anyhow::anyhow!("signature length"))?;
            vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))?;
            Ok(bytes)
        })?,
        after: time((iters / 4).max(10), || {
            conclave_coordinator::sum_and_verify(&package, &sig_shares, &pkp, &vk, message)
                .context("did not verify")
        })?,
    });
    Ok(parts)
}

/// Runs `bench --parts` for 3 and 67 signers (3 only with `quick`) and prints the table (or
/// JSON).
pub fn run(json: bool, quick: bool) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let sizes: &[u16] = if quick { &[3] } else { &[3, 67] };
    for &t in sizes {
        for p in measure(t)? {
            all.push((t, p));
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if json {
        let out: Vec<_> = all
            .iter()
            .map(|(t, p)| {
                serde_json::json!({
                    "signers": t, "part": p.name, "before_us": us(p.before), "after_us": us(p.after),
                    "after_over_before": p.after.as_secs_f64() / p.before.as_secs_f64().max(1e-12),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "bench": "parts", "parts": out }));
        return Ok(());
    }
    println!("conclave bench --parts: the old and the new way of each part, same run, one core");
    println!(
        "{:<76} {:>11} {:>11} {:>8}",
        "part", "before", "after", "ratio"
    );
    for (_, p) in &all {
        println!(
            "{:<76} {:>9.1}µs {:>9.1}µs {:>7.2}x",
            p.name,
            us(p.before),
            us(p.after),
            p.after.as_secs_f64() / p.before.as_secs_f64().max(1e-12)
        );
    }
    Ok(())
}
