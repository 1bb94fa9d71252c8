//! `conclave migrate statement | sign | verify | retire`: move to a new group key (made by
//! DKG) with a key-transition statement signed by the old and the new key.

use std::path::Path;

use anyhow::{anyhow, Context};
use conclave_keygen::migrate::{Statement, FORMAT, MAX_STATEMENT_LEN};
use conclave_keygen::{GroupManifest, ShareFile};

use crate::confirm::{confirm, destroy};
use crate::{CmdResult, Exit, MigrateCmd, WhichKey};

fn read_statement(path: &Path) -> anyhow::Result<Statement> {
    let text = conclave_protocol::read_bounded_to_string(path, MAX_STATEMENT_LEN)
        .with_context(|| format!("cannot read statement {}", path.display()))?;
    Statement::from_toml(&text).with_context(|| format!("statement {}", path.display()))
}

fn write_statement(path: &Path, s: &Statement) -> anyhow::Result<()> {
    conclave_keygen::sharefile::write_atomic(path, s.to_toml()?.as_bytes(), &mut rand::rngs::OsRng)
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn connect(
    client: &crate::ClientArgsNoGroup,
    group: &str,
) -> anyhow::Result<(
    conclave_transport::client::Client,
    conclave_protocol::GroupName,
)> {
    crate::commands::connect(&crate::ClientArgs {
        conn: crate::ConnArgs {
            coordinator: Some(client.coordinator.clone()),
            coordinator_key: Some(client.coordinator_key.clone()),
            identity: Some(client.identity.clone()),
            ..Default::default()
        },
        group: Some(group.to_owned()),
    })
    .await
}

pub(crate) async fn run(cmd: MigrateCmd) -> CmdResult {
    match cmd {
        MigrateCmd::Statement {
            old_manifest,
            new_manifest,
            reason,
            not_before,
            out,
        } => {
            let old = GroupManifest::read(&old_manifest)
                .with_context(|| format!("manifest {}", old_manifest.display()))?;
            let new = GroupManifest::read(&new_manifest)
                .with_context(|| format!("manifest {}", new_manifest.display()))?;
            let not_before = match not_before {
                Some(t) => t,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs(),
            };
            let s = Statement {
                format: FORMAT.into(),
                old_group: old.group.clone(),
                old_public_key: old.group_public_key.clone(),
                new_group: new.group.clone(),
                new_public_key: new.group_public_key.clone(),
                new_epoch: new.epoch,
                not_before,
                reason,
                old_signature: None,
                new_signature: None,
            };
            s.check_fields()?;
            if out.exists() {
                fail!(
                    "{} already exists; refusing to overwrite a statement",
                    out.display()
                );
            }
            write_statement(&out, &s)?;
            println!("{}", out.display());
            eprintln!(
                "key transition {} ({}) -> {} ({}), not before {}, reason: {}\n\
                 Next: `conclave migrate sign --statement {} --key old ...` and `--key new ...`",
                s.old_group,
                s.old_public_key,
                s.new_group,
                s.new_public_key,
                s.not_before,
                s.reason,
                out.display()
            );
            Ok(())
        }
        MigrateCmd::Sign {
            statement,
            key,
            client,
        } => {
            let mut s = read_statement(&statement)?;
            let (group, public_key) = match key {
                WhichKey::Old => (s.old_group.clone(), s.old_public_key.clone()),
                WhichKey::New => (s.new_group.clone(), s.new_public_key.clone()),
            };
            let mut expected = [0u8; 32];
            hex::decode_to_slice(&public_key, &mut expected)?;
            let (c, group) = connect(&client, group.as_str()).await?;
            let message = s.message();
            let signed = c
                .sign(
                    &group,
                    &message,
                    std::time::Duration::from_secs(30),
                    Some(expected),
                )
                .await
                .map_err(|e| Exit::refused(anyhow!("{group} did not sign the statement: {e}")))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&expected)?;
            vk.verify_strict(
                &message,
                &ed25519_dalek::Signature::from_bytes(&signed.signature),
            )
            .map_err(|_| Exit::refused(anyhow!("the signature from {group} does not verify")))?;
            let sig = Some(hex::encode(signed.signature));
            match key {
                WhichKey::Old => s.old_signature = sig,
                WhichKey::New => s.new_signature = sig,
            }
            write_statement(&statement, &s)?;
            eprintln!(
                "{group} signed the statement (signers: {}); written to {}",
                signed.signers.join(", "),
                statement.display()
            );
            Ok(())
        }
        MigrateCmd::Verify {
            statement,
            print_message,
            json,
        } => {
            let s = read_statement(&statement)?;
            if print_message {
                use std::io::Write;
                std::io::stdout().write_all(&s.message())?;
                return Ok(());
            }
            let result = s.verify();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "valid": result.is_ok(),
                        "error": result.as_ref().err().map(|e| e.to_string()),
                        "old_group": s.old_group.as_str(), "old_public_key": s.old_public_key,
                        "new_group": s.new_group.as_str(), "new_public_key": s.new_public_key,
                        "new_epoch": s.new_epoch, "not_before": s.not_before, "reason": s.reason,
                    })
                );
            }
            match result {
                Ok(()) => {
                    if !json {
                        println!(
                            "valid: {} ({}) is succeeded by {} ({}), epoch {}, not before {}; reason: {}",
                            s.old_group, s.old_public_key, s.new_group, s.new_public_key,
                            s.new_epoch, s.not_before, s.reason
                        );
                    }
                    Ok(())
                }
                Err(e) => Err(Exit::refused(anyhow!("{}: {e}", statement.display()))),
            }
        }
        MigrateCmd::Retire {
            share,
            statement,
            client,
            yes,
        } => {
            let s = read_statement(&statement)?;
            s.verify().map_err(|e| {
                Exit::refused(anyhow!(
                    "the statement does not verify ({e}); nothing destroyed"
                ))
            })?;
            let header = ShareFile::inspect(&share)?;
            if hex::encode(header.group_public_key) != s.old_public_key.to_ascii_lowercase() {
                fail!(
                    "{} is not a share of the old key {}",
                    share.display(),
                    s.old_public_key
                );
            }
            let (c, group) = connect(&client, s.new_group.as_str()).await?;
            let mut challenge = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut challenge);
            let message = format!(
                "conclave migrate retire check: {} {}",
                s.new_group,
                hex::encode(challenge)
            );
            let mut expected = [0u8; 32];
            hex::decode_to_slice(&s.new_public_key, &mut expected)?;
            let signed = c
                .sign(
                    &group,
                    message.as_bytes(),
                    std::time::Duration::from_secs(10),
                    Some(expected),
                )
                .await
                .map_err(|e| {
                    Exit::refused(anyhow!(
                        "the new group did not sign: {e}; nothing destroyed"
                    ))
                })?;
            ed25519_dalek::VerifyingKey::from_bytes(&expected)?
                .verify_strict(
                    message.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signed.signature),
                )
                .map_err(|_| {
                    Exit::refused(anyhow!(
                        "the new group's signature does not verify; nothing destroyed"
                    ))
                })?;
            eprintln!(
                "the statement verifies and {} just signed (verified); about to destroy the old-key share {}",
                s.new_group,
                share.display()
            );
            confirm("destroy the old share", yes)?;
            destroy(&share)?;
            println!("destroyed {}", share.display());
            Ok(())
        }
    }
}
