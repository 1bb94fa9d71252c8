//! The subcommands other than `demo` and `bench`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use conclave_keygen::manifest::public_key_pem;
use conclave_keygen::store::{self, KdfCost};
use conclave_keygen::{deal, GroupManifest, NewMember, ShareFile};
use conclave_protocol::identity::read_node_id;
use conclave_protocol::{GroupName, IdentityKey, ReadError, MAX_SIGN_MESSAGE_LEN};
use conclave_transport::client::Client;
use sha2::Digest;

use crate::config::{self, Mode};
use crate::{
    passphrase, CmdResult, DealerArgs, Exit, KdfChoice, KeyFormat, SigFormat, SignArgs, StatusArgs,
    VerifyArgs,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Largest signature file read: a signature is 64 bytes, 128 in hex, 88 in base64.
const MAX_SIGNATURE_FILE_LEN: u64 = 1024;

pub(crate) fn node_init(out: &Path, json: bool) -> CmdResult {
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    key.write_to_dir(out)
        .with_context(|| format!("cannot create identity in {}", out.display()))?;
    let id = key.node_id().to_hex();
    if json {
        println!("{}", serde_json::json!({ "public_key": id, "dir": out }));
    } else {
        println!("{id}");
        eprintln!(
            "identity written to {} (identity.key is secret, mode 0600; share identity.pub)",
            out.display()
        );
    }
    Ok(())
}

pub(crate) fn node_show(dir: &Path) -> CmdResult {
    let id = read_node_id(&dir.to_string_lossy()).context("cannot read the identity")?;
    println!("{id}");
    Ok(())
}

/// Parses `NAME=KEY@HOST:PORT`.
fn parse_member(spec: &str) -> anyhow::Result<NewMember> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("participant {spec:?}: expected NAME=KEY@HOST:PORT"))?;
    let (key, address) = rest
        .rsplit_once('@')
        .ok_or_else(|| anyhow!("participant {spec:?}: expected NAME=KEY@HOST:PORT (no '@')"))?;
    if address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        bail!("participant {name:?}: address {address:?} must be HOST:PORT");
    }
    let node_id = read_node_id(key).with_context(|| format!("participant {name:?}: {key:?} is neither a hex identity key nor a readable identity.pub"))?;
    Ok(NewMember {
        name: name.to_owned(),
        node_id,
        address: address.to_owned(),
    })
}

pub(crate) fn keygen_dealer(args: DealerArgs) -> CmdResult {
    let group =
        GroupName::new(&args.group).map_err(|e| anyhow!("--group {:?}: {e}", args.group))?;
    let members = args
        .participants
        .iter()
        .map(|s| parse_member(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match (args.mode, args.allow_dealer) {
        (Mode::Prod, false) => fail!(
            "dealer keygen puts the whole key on this host for a moment; prod mode refuses it unless you pass --allow-dealer (production groups should use DKG)"
        ),
        (Mode::Test, false) => eprintln!("conclave: warning: dealer keygen holds the whole key on this host (allowed in test mode)"),
        _ => {}
    }
    let kdf = KdfCost::choose(args.kdf == KdfChoice::Light, args.mode == Mode::Dev)
        .map_err(|e| anyhow!("{e} (this is {})", args.mode))?;
    // Check for conflicts before any work: nothing is overwritten, nothing half-written.
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    for p in std::iter::once(store::manifest_path(&args.out, &group)).chain(
        names
            .iter()
            .map(|n| store::share_path(&args.out, &group, n)),
    ) {
        if p.exists() {
            fail!(
                "{} already exists; refusing to overwrite key material (choose another --out)",
                p.display()
            );
        }
    }
    let mut keystores = std::collections::HashMap::new();
    for spec in &args.keystores {
        let (name, key) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--keystore {spec:?}: expected NAME=KEY"))?;
        let Some(member) = members.iter().find(|m| m.name == name) else {
            fail!("--keystore {spec:?}: {name} is not a participant of this group");
        };
        let spec_key = key;
        let key = conclave_keygen::keystore::keystore_key(spec_key)
            .map_err(|e| anyhow!("--keystore {name}: {e}"))?;
        // A keystore file names its node: it must be this participant's.
        if conclave_keygen::KeystoreKey::from_hex(spec_key).is_none() {
            let owner = conclave_keygen::Keystore::inspect(Path::new(spec_key))?.owner;
            if owner != member.node_id {
                fail!(
                    "--keystore {name}: {spec_key} is the keystore of node {}, not of {name} ({})",
                    owner.short(),
                    member.node_id.short()
                );
            }
        }
        if keystores.values().any(|k| *k == key) {
            fail!("--keystore {name}: the same keystore is given for two participants (one node could open both shares)");
        }
        if keystores.insert(name.to_owned(), key).is_some() {
            fail!("--keystore {name} is given twice");
        }
    }
    let pass = if keystores.len() < names.len() {
        let p = passphrase::obtain(
            args.passphrase_file.as_deref(),
            args.mode,
            "the new share files",
            true,
        )?;
        passphrase::check_new(&p, args.mode)?;
        Some(p)
    } else {
        None
    };
    let mut rng = rand::rngs::OsRng;
    let (manifest, shares) = deal(group.clone(), args.threshold, &members, &mut rng)?;
    let seals: Vec<store::Seal<'_>> = names
        .iter()
        .map(|n| match (keystores.get(n), pass.as_ref()) {
            (Some(k), _) => Ok(store::Seal::Keystore(*k)),
            (None, Some(p)) => Ok(store::Seal::Passphrase(p, kdf)),
            (None, None) => Err(anyhow!("no passphrase for {n}'s share")),
        })
        .collect::<anyhow::Result<_>>()?;
    // All or nothing: pending files first, then all activated; any failure removes them.
    let (manifest_file, share_files) =
        store::write_dealt_sealed(&args.out, &manifest, &shares, &names, &seals)?;
    if args.json {
        let shares: Vec<_> = members
            .iter()
            .zip(&share_files)
            .map(|(m, p)| serde_json::json!({ "name": m.name, "share_file": p }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "group": group.as_str(), "threshold": manifest.threshold, "epoch": manifest.epoch,
                "public_key": manifest.group_public_key, "manifest": manifest_file, "shares": shares,
            })
        );
    } else {
        println!(
            "group {group}: {}-of-{}, public key {}",
            manifest.threshold,
            members.len(),
            manifest.group_public_key
        );
        println!("manifest: {}", manifest_file.display());
        for (m, p) in members.iter().zip(&share_files) {
            println!("share for {}: {}", m.name, p.display());
        }
        eprintln!("Move each share file to its participant's host and delete it here: this host held the whole key.");
    }
    Ok(())
}

/// Completes on ctrl-c or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Reads the message to sign or verify (a regular file, or stdin for none or "-"), refusing
/// more than the protocol's limit.
fn read_message(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let limit = MAX_SIGN_MESSAGE_LEN as u64;
    let read = match file {
        Some(p) if p != Path::new("-") => conclave_protocol::read_bounded(p, limit)
            .map_err(|e| (e, format!("message file {}", p.display()))),
        _ => conclave_protocol::read_limited(std::io::stdin().lock(), limit)
            .map_err(|e| (e, "the message from stdin".to_owned())),
    };
    match read {
        Ok(buf) => Ok(buf),
        Err((ReadError::TooLarge { .. }, what)) => {
            bail!("{what} is larger than {MAX_SIGN_MESSAGE_LEN} bytes; sign a hash of it instead")
        }
        Err((e, what)) => Err(anyhow::Error::new(e).context(format!("cannot read {what}"))),
    }
}

/// Connects as `args` (flags over the client config) says, within its timeout.
pub(crate) async fn connect(args: &crate::ClientArgs) -> anyhow::Result<(Client, GroupName)> {
    let config = crate::clientcmd::resolve(args)?;
    let group = crate::clientcmd::group(&config)?;
    let (deadline, _) = crate::clientcmd::deadline(&config, None);
    let client = crate::clientcmd::connect(&config, &group, deadline).await?;
    Ok((client, group))
}

pub(crate) async fn sign(args: SignArgs) -> CmdResult {
    if args.format == SigFormat::Raw && !args.json && std::io::stdout().is_terminal() {
        return Err(anyhow!("refusing to write a raw signature to a terminal; redirect stdout or use --format base64").into());
    }
    if let Some(t) = args.timeout {
        if !(t > 0.0 && t <= 3600.0) {
            return Err(anyhow!("--timeout must be between 0 and 3600 seconds").into());
        }
    }
    let config = crate::clientcmd::resolve(&args.client)?;
    let group = crate::clientcmd::group(&config)?;
    // The key and epoch from this host's own manifest: --manifest, else the client config's.
    let manifest = match &args.manifest {
        Some(m) => {
            Some(GroupManifest::read(m).with_context(|| format!("manifest {}", m.display()))?)
        }
        None => crate::clientcmd::local_manifest(&config, &group)?.map(|(_, m)| m),
    };
    if manifest.is_none() {
        eprintln!("note: no manifest for group {group} (--manifest, or `manifests` in the client config): the signature is checked only against the key the coordinator reports");
    }
    if let Some(m) = &manifest {
        if m.group != group {
            return Err(anyhow!("--manifest is for group {}, not {group}", m.group).into());
        }
    }
    let expected = match &manifest {
        Some(m) => Some(m.public_key_bytes()?),
        None => None,
    };
    let message = read_message(args.message_file.as_deref())?;
    let (deadline, _) = crate::clientcmd::deadline(&config, args.timeout);
    let client = crate::clientcmd::connect(&config, &group, deadline).await?;
    if let Some(m) = &manifest {
        // The epoch the client signs for comes from its own manifest, not the coordinator.
        client.pin_epoch(&group, m.epoch);
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let result = client
        .sign_kind(&group, &message, args.kind.as_deref(), left, expected)
        .await;
    // Closed cleanly: the coordinator frees the connection now, not at its idle timeout.
    client.close().await;
    let signed = match result {
        Ok(s) => s,
        Err(conclave_transport::client::ClientError::Sign(e)) => {
            let refusals: Vec<_> = match &e {
                conclave_coordinator::SignError::NotAuthorized { refusals } => refusals
                    .iter()
                    .map(|(who, rule)| serde_json::json!({ "signer": who, "rule": rule.code(), "reason": rule.to_string() }))
                    .collect(),
                _ => vec![],
            };
            if args.json {
                let mut out = serde_json::Map::new();
                out.insert("error".into(), e.code().into());
                out.insert("message".into(), e.to_string().into());
                if !refusals.is_empty() {
                    out.insert("refusals".into(), refusals.into());
                }
                println!("{}", serde_json::Value::Object(out));
            }
            let err = anyhow!("{e} [{}]", e.code());
            return Err(match e {
                conclave_coordinator::SignError::NotAuthorized { .. } => Exit::not_authorized(err),
                _ => Exit::refused(err),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "public_key": hex::encode(signed.public_key),
                "signature": hex::encode(signed.signature),
                "message_sha256": hex::encode(sha2::Sha256::digest(&message)),
                "signers": signed.signers,
            })
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        SigFormat::Base64 => writeln!(out, "{}", B64.encode(signed.signature))?,
        SigFormat::Hex => writeln!(out, "{}", hex::encode(signed.signature))?,
        SigFormat::Raw => out.write_all(&signed.signature)?,
    }
    Ok(())
}

/// Decodes a signature given as 64 raw bytes, hex or base64.
fn parse_signature(bytes: &[u8]) -> anyhow::Result<[u8; 64]> {
    // Exactly 64 bytes can only be raw: hex takes 128 characters and base64 88.
    if let Ok(raw) = <[u8; 64]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| anyhow!("signature is neither 64 raw bytes nor text"))?
        .trim();
    let decoded = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| anyhow!("signature is not valid hex"))?
    } else {
        B64.decode(text)
            .map_err(|_| anyhow!("signature is neither hex (128 characters) nor base64"))?
    };
    <[u8; 64]>::try_from(decoded.as_slice()).map_err(|_| {
        anyhow!(
            "an Ed25519 signature is 64 bytes, this one has {}",
            decoded.len()
        )
    })
}

pub(crate) fn verify(args: VerifyArgs) -> CmdResult {
    let signature = match (&args.signature, &args.signature_file) {
        (Some(s), _) => parse_signature(s.as_bytes())?,
        (None, Some(f)) => {
            let bytes = conclave_protocol::read_bounded(f, MAX_SIGNATURE_FILE_LEN)
                .with_context(|| format!("cannot read signature file {}", f.display()))?;
            parse_signature(&bytes)?
        }
        (None, None) => return Err(anyhow!("give --signature or --signature-file").into()),
    };
    let key: [u8; 32] = match (&args.manifest, &args.public_key) {
        (Some(m), _) => GroupManifest::read(m)
            .with_context(|| format!("manifest {}", m.display()))?
            .public_key_bytes()?,
        (None, Some(k)) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(k.trim(), &mut out)
                .map_err(|_| anyhow!("--public-key must be 64 hex characters"))?;
            out
        }
        (None, None) => return Err(anyhow!("give --manifest or --public-key").into()),
    };
    let message = read_message(args.message_file.as_deref())?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| anyhow!("the public key is not a valid Ed25519 point"))?;
    let valid = vk
        .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
        .is_ok();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "valid": valid, "public_key": hex::encode(key) })
        );
    } else if valid {
        println!("signature is valid");
    }
    if valid {
        Ok(())
    } else {
        Err(Exit::refused(anyhow!(
            "signature is NOT valid for this message and key"
        )))
    }
}

/// The OpenSSH `ssh-ed25519` public-key line of an Ed25519 key (for authorized_keys and allowed_signers).
fn public_key_openssh(key: &[u8; 32], comment: &str) -> String {
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &key[..]] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!("ssh-ed25519 {} {comment}\n", B64.encode(blob))
}

pub(crate) async fn pubkey(
    manifest: Option<&Path>,
    client: &crate::ClientArgs,
    trust_coordinator: bool,
    format: KeyFormat,
    key_id: Option<&str>,
) -> CmdResult {
    let (group, key) = match manifest {
        Some(path) => {
            let m = GroupManifest::read(path)
                .with_context(|| format!("manifest {}", path.display()))?;
            (m.group.clone(), m.public_key_bytes()?)
        }
        None => {
            let config = crate::clientcmd::resolve(client).context(
                "no --manifest: the key comes from the client config's manifest or its coordinator",
            )?;
            let group = crate::clientcmd::group(&config)?;
            match crate::clientcmd::local_manifest(&config, &group)? {
                Some((_, m)) => (group, m.public_key_bytes()?),
                None if !(trust_coordinator || config.trust_coordinator_key) => {
                    return Err(anyhow!(
                        "no manifest for group {group}: give --manifest, list this host's copy in the client config's `manifests`, or --trust-coordinator-key (the key would then come from the coordinator alone: never use it to set up trust)"
                    )
                    .into())
                }
                None => {
                    eprintln!("warning: this is the key the coordinator reports for {group}, not checked against any manifest");
                    let (deadline, _) = crate::clientcmd::deadline(&config, None);
                    let c = crate::clientcmd::connect(&config, &group, deadline).await?;
                    let info = c.group_info(&group).await;
                    c.close().await;
                    (group, info?.public_key)
                }
            }
        }
    };
    match format {
        KeyFormat::Hex => println!("{}", hex::encode(key)),
        KeyFormat::Pem => print!("{}", public_key_pem(&key)),
        KeyFormat::Openssh => print!(
            "{}",
            public_key_openssh(&key, &format!("conclave:{}", group))
        ),
        KeyFormat::RegistryJson => println!(
            "{}",
            serde_json::json!({
                "key_id": key_id.map_or_else(|| format!("conclave:{}", group), str::to_owned),
                "public_key": hex::encode(key),
                "alg": "ed25519",
            })
        ),
    }
    Ok(())
}

pub(crate) async fn status(args: StatusArgs) -> CmdResult {
    let (client, group) = connect(&args.client).await?;
    let info = client.group_info(&group).await;
    client.close().await;
    let info = info?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "group": info.group.as_str(), "public_key": hex::encode(info.public_key),
                "threshold": info.threshold, "epoch": info.epoch,
                "participants": info.participants, "reachable": info.reachable,
                "on_other_epochs": info.stale.iter().map(|(n, e)| serde_json::json!({"name": n, "epoch": e})).collect::<Vec<_>>(),
                "frozen": info.frozen,
            })
        );
    } else {
        println!(
            "group {}: {}-of-{}, epoch {}",
            info.group,
            info.threshold,
            info.participants.len(),
            info.epoch
        );
        println!("public key: {}", hex::encode(info.public_key));
        println!("participants: {}", info.participants.join(", "));
        println!(
            "reachable now: {} (signing needs {})",
            info.reachable, info.threshold
        );
        for (name, epoch) in &info.stale {
            println!(
                "{name} is on epoch {epoch}, not {}: refused until it serves its current share (reload it)",
                info.epoch
            );
        }
        for name in &info.frozen {
            println!("{name} is frozen by its operator: it signs nothing for this group until `conclave unfreeze` on its host");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_parse_in_every_format() {
        let sig = [7u8; 64];
        assert_eq!(parse_signature(&sig).unwrap(), sig);
        assert_eq!(parse_signature(hex::encode(sig).as_bytes()).unwrap(), sig);
        assert_eq!(
            parse_signature(format!("{}\n", B64.encode(sig)).as_bytes()).unwrap(),
            sig
        );
        assert!(parse_signature(b"abc").is_err());
    }

    #[test]
    fn member_specs_are_checked() {
        let key = IdentityKey::generate(&mut rand::rngs::OsRng)
            .node_id()
            .to_hex();
        let m = parse_member(&format!("alice={key}@10.0.0.1:7001")).unwrap();
        assert_eq!(
            (m.name.as_str(), m.address.as_str()),
            ("alice", "10.0.0.1:7001")
        );
        assert!(parse_member(&format!("alice={key}")).is_err());
        assert!(parse_member(&format!("alice={key}@host")).is_err());
        assert!(parse_member("alice=zz@host:1").is_err());
    }

    #[test]
    fn pem_is_the_rfc8410_form() {
        let pem = public_key_pem(&[0u8; 32]);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn share_inspect(file: &Path, json: bool) -> CmdResult {
    let h = ShareFile::inspect(file)?;
    if json {
        let mut v = serde_json::json!({
            "file": file, "group": h.group.as_str(), "epoch": h.epoch, "threshold": h.threshold,
            "owner_identity": h.owner.to_hex(), "identifier": hex::encode(h.identifier),
            "group_public_key": hex::encode(h.group_public_key), "manifest_sha256": hex::encode(h.manifest_hash),
            "created_at": utc(h.created_at), "created_at_unix": h.created_at,
        });
        let extra = match (h.kdf(), h.keystore()) {
            (Some(k), _) => serde_json::json!({
                "format": "passphrase",
                "kdf": { "algorithm": "argon2id", "memory_kib": k.memory_kib, "iterations": k.iterations, "parallelism": k.parallelism },
            }),
            (None, Some(ks)) => {
                serde_json::json!({ "format": "keystore", "keystore": ks.to_hex() })
            }
            (None, None) => serde_json::json!({}),
        };
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        println!("{v}");
    } else {
        println!("share file {}", file.display());
        println!(
            "  group:            {} (epoch {}, threshold {})",
            h.group, h.epoch, h.threshold
        );
        println!("  owner identity:   {}", h.owner);
        println!("  identifier:       {}", hex::encode(h.identifier));
        println!("  group public key: {}", hex::encode(h.group_public_key));
        println!("  manifest sha256:  {}", hex::encode(h.manifest_hash));
        println!("  created:          {}", utc(h.created_at));
        if let Some(k) = h.kdf() {
            println!(
                "  encrypted under:  its own passphrase (argon2id, {} KiB, {} passes, {} lanes)",
                k.memory_kib, k.iterations, k.parallelism
            );
            println!("(header integrity checked; the passphrase is needed to check authenticity; `conclave share migrate` moves it to the node keystore)");
        }
        if let Some(ks) = h.keystore() {
            println!("  encrypted to:     node keystore {ks}");
            println!("(header integrity checked; the keystore is needed to check authenticity)");
        }
    }
    Ok(())
}

pub(crate) fn share_passwd(
    file: &Path,
    old: Option<&Path>,
    new: Option<&Path>,
    mode: Mode,
) -> CmdResult {
    let what = file.display().to_string();
    if ShareFile::inspect(file)?.keystore().is_some() {
        return Err(anyhow::anyhow!(
            "{what} is sealed to the node keystore and has no passphrase of its own: change the keystore's with `conclave keystore passwd`"
        )
        .into());
    }
    let old_pass = passphrase::obtain(old, mode, &format!("{what} (current)"), false)?;
    let share = ShareFile::read(file, &old_pass)?;
    drop(old_pass);
    let new_pass = passphrase::obtain(new, mode, &format!("{what} (new)"), true)?;
    passphrase::check_new(&new_pass, mode)?;
    let mut rng = rand::rngs::OsRng;
    let mut header = share.header.clone();
    // Same cost, fresh salt (and a fresh AEAD nonce, drawn when sealing).
    if let Some(kdf) = header.kdf_mut() {
        rand::RngCore::fill_bytes(&mut rng, &mut kdf.salt);
    }
    // Temp file, fsync, rename: the old file stays valid until the new one is complete.
    ShareFile::write(file, &share.key_package, header, &new_pass, true, &mut rng)?;
    println!("{what}: re-encrypted under the new passphrase");
    Ok(())
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}

pub(crate) fn config_check(path: &Path, json: bool) -> CmdResult {
    // Which kind of config it is from the keys only one kind has, so that an error (a typo)
    // lists the fields of the right kind.
    let text = conclave_protocol::read_bounded_to_string(path, 1024 * 1024)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let keys: Vec<String> = toml::from_str::<toml::Table>(&text)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let participant_like = keys
        .iter()
        .any(|k| matches!(k.as_str(), "coordinators" | "shares"));
    let coordinator_like = keys
        .iter()
        .any(|k| matches!(k.as_str(), "clients" | "manifests"));
    let checks = if participant_like || !coordinator_like {
        match config::ParticipantConfig::read(path) {
            Ok(cfg) => crate::checks::participant(path, &cfg),
            Err(e) if !participant_like => {
                let cfg = config::CoordinatorConfig::read(path).map_err(|_| {
                    e.context(format!(
                        "{} is neither a valid participant nor a valid coordinator config",
                        path.display()
                    ))
                })?;
                crate::checks::coordinator(path, &cfg)
            }
            Err(e) => return Err(e.context("as a participant config").into()),
        }
    } else {
        let cfg = config::CoordinatorConfig::read(path).context("as a coordinator config")?;
        crate::checks::coordinator(path, &cfg)
    };
    if json {
        println!("{}", serde_json::to_string(&checks)?);
    } else {
        println!("{} (mode {})", path.display(), checks.mode);
        crate::checks::print(&checks);
    }
    match checks.failures() {
        0 => Ok(()),
        n => Err(Exit::refused(anyhow!("{n} check(s) failed"))),
    }
}

/// Runs the mode checks at daemon start: prod refuses on any failure, test warns.
pub(crate) fn enforce(checks: &crate::checks::Checks) -> anyhow::Result<()> {
    for w in checks.warnings() {
        tracing::warn!(
            "{}: {} (fix: {})",
            w.what,
            w.detail,
            w.fix.as_deref().unwrap_or("-")
        );
    }
    let failed: Vec<String> = checks
        .checks
        .iter()
        .filter(|c| c.level == crate::checks::Level::Fail)
        .map(|c| {
            format!(
                "{}: {} (fix: {})",
                c.what,
                c.detail,
                c.fix.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "refusing to start in {} mode: {}",
            checks.mode,
            failed.join("; ")
        )
    }
}
