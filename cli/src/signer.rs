//! `conclave external-signer`: the SIGNER_CMD convention. Message bytes on stdin, the signature
//! on stdout; on any failure nothing on stdout, and one line on stderr that starts with a
//! stable code, with a distinct exit code each.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;
use conclave_client::{ServiceError, SigningService, ThresholdSigner};
use conclave_protocol::MAX_SIGN_MESSAGE_LEN;

use crate::{Exit, ExternalSignerArgs, SigFormat};

/// Exit codes of `external-signer`, one per stable code.
pub(crate) const EXIT_UNAVAILABLE: u8 = 10;
pub(crate) const EXIT_TIMEOUT: u8 = 11;
pub(crate) const EXIT_REFUSED: u8 = 12;
pub(crate) const EXIT_BAD_INPUT: u8 = 13;
pub(crate) const EXIT_BAD_RESPONSE: u8 = 14;

fn exit_code(code: &str) -> u8 {
    match code {
        "SIGNER_UNAVAILABLE" => EXIT_UNAVAILABLE,
        "SIGNER_TIMEOUT" => EXIT_TIMEOUT,
        "SIGNER_REFUSED" => EXIT_REFUSED,
        "SIGNER_BAD_RESPONSE" => EXIT_BAD_RESPONSE,
        _ => EXIT_BAD_INPUT,
    }
}

/// Prints `CODE: message` on stderr and exits with the code's exit status; stdout stays empty.
fn fail(code: &str, message: impl std::fmt::Display) -> Exit {
    eprintln!("{code}: {message}");
    Exit::silent(exit_code(code))
}

fn fail_with(e: &ServiceError) -> Exit {
    fail(e.code(), e)
}

/// The message to sign: stdin as it is, or with `--hash` a 32- or 64-byte digest in hex (signed
/// as those bytes: FROST(Ed25519) has no Ed25519ph).
fn read_input(hash: bool) -> Result<Vec<u8>, Exit> {
    let mut buf = Vec::new();
    let limit = MAX_SIGN_MESSAGE_LEN as u64 + 1;
    std::io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| fail("SIGNER_BAD_INPUT", format!("cannot read stdin: {e}")))?;
    if buf.len() > MAX_SIGN_MESSAGE_LEN {
        return Err(fail(
            "SIGNER_BAD_INPUT",
            format!("the message is larger than {MAX_SIGN_MESSAGE_LEN} bytes; sign a hash of it (--hash)"),
        ));
    }
    if !hash {
        if buf.is_empty() {
            return Err(fail("SIGNER_BAD_INPUT", "empty message on stdin"));
        }
        return Ok(buf);
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| fail("SIGNER_BAD_INPUT", "--hash: stdin is not hex text"))?
        .trim();
    let digest =
        hex::decode(text).map_err(|_| fail("SIGNER_BAD_INPUT", "--hash: stdin is not hex"))?;
    if digest.len() != 32 && digest.len() != 64 {
        return Err(fail(
            "SIGNER_BAD_INPUT",
            format!(
                "--hash: a digest is 32 or 64 bytes (64 or 128 hex digits), this one has {}",
                digest.len()
            ),
        ));
    }
    Ok(digest)
}

fn timeout(args: &ExternalSignerArgs, config_default: Duration) -> Result<Duration, Exit> {
    let from_env = std::env::var("SIGNER_TIMEOUT_MS").ok();
    match args.timeout_ms.map(|t| t.to_string()).or(from_env) {
        None => Ok(config_default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 && ms <= 3_600_000 => Ok(Duration::from_millis(ms)),
            _ => Err(fail(
                "SIGNER_BAD_INPUT",
                format!("SIGNER_TIMEOUT_MS / --timeout-ms {v:?}: milliseconds, 1 to 3600000"),
            )),
        },
    }
}

fn output(args: &ExternalSignerArgs) -> Result<SigFormat, Exit> {
    if let Some(f) = args.output {
        return Ok(f);
    }
    match std::env::var("SIGNER_OUTPUT").ok().as_deref() {
        None | Some("") | Some("base64") => Ok(SigFormat::Base64),
        Some("hex") => Ok(SigFormat::Hex),
        Some("raw") => Ok(SigFormat::Raw),
        Some(other) => Err(fail(
            "SIGNER_BAD_INPUT",
            format!("SIGNER_OUTPUT={other:?}: base64, hex or raw"),
        )),
    }
}

pub(crate) async fn run(args: ExternalSignerArgs) -> Result<(), Exit> {
    let started = Instant::now();
    let format = output(&args)?;
    let mut config = crate::clientcmd::resolve(&args.client)
        .map_err(|e| fail("SIGNER_BAD_INPUT", format!("{e:#}")))?;
    let budget = timeout(&args, config.timeout())?;
    config.timeout_ms = Some(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX));
    if args.public_key {
        let connect = ThresholdSigner::connect(&config, None);
        let signer = match tokio::time::timeout(budget + Duration::from_millis(60), connect).await {
            Err(_) => {
                return Err(fail(
                    "SIGNER_TIMEOUT",
                    format!("no answer within {budget:?}"),
                ))
            }
            Ok(Err(e)) => return Err(fail_with(&e)),
            Ok(Ok(s)) => s,
        };
        let key = signer.public_key();
        signer.close().await;
        println!("{}", hex::encode(key.to_bytes()));
        return Ok(());
    }
    // Reading stdin counts against the deadline too: a caller that never closes it gets
    // SIGNER_TIMEOUT, not a hang. (The reading thread cannot be cancelled, so on that path the
    // process exits at once.)
    let hash = args.hash;
    let read = tokio::task::spawn_blocking(move || read_input(hash));
    let message = match tokio::time::timeout(budget, read).await {
        Err(_) => {
            eprintln!("SIGNER_TIMEOUT: stdin was not closed within {budget:?}");
            std::process::exit(i32::from(EXIT_TIMEOUT));
        }
        Ok(Err(_)) => return Err(fail("SIGNER_BAD_INPUT", "cannot read stdin")),
        Ok(Ok(r)) => r?,
    };
    let work = async {
        let signer = ThresholdSigner::connect(&config, None).await?;
        let left = budget.saturating_sub(started.elapsed());
        let result = signer.sign_within(&message, None, left).await;
        signer.close().await;
        result.map(|s| (s, signer.public_key()))
    };
    // The whole call, connecting included, ends within the budget: the work itself keeps to
    // it (and says why it stopped); this is the backstop, a little later so the reason wins.
    let backstop = budget + Duration::from_millis(60);
    let (signature, key) = match tokio::time::timeout(backstop, work).await {
        Err(_) => {
            return Err(fail(
                "SIGNER_TIMEOUT",
                format!("no signature within {budget:?}"),
            ))
        }
        Ok(Err(e)) => return Err(fail_with(&e)),
        Ok(Ok(v)) => v,
    };
    // Fail closed: ThresholdSigner verified it; check once more before anything is printed.
    if key.verify_strict(&message, &signature).is_err() {
        return Err(fail(
            "SIGNER_BAD_RESPONSE",
            "the signature does not verify; refusing it",
        ));
    }
    let bytes = signature.to_bytes();
    let mut out = std::io::stdout().lock();
    let written = match format {
        SigFormat::Base64 => writeln!(
            out,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        SigFormat::Hex => writeln!(out, "{}", hex::encode(bytes)),
        SigFormat::Raw => out.write_all(&bytes),
    };
    written.and_then(|()| out.flush()).map_err(|e| {
        fail(
            "SIGNER_UNAVAILABLE",
            format!("cannot write the signature: {e}"),
        )
    })?;
    Ok(())
}
