//! Where share passphrases come from, in order: a file named on the command line or in the
//! config; the systemd credentials directory (`$CREDENTIALS_DIRECTORY/conclave-passphrase`);
//! the `CONCLAVE_PASSPHRASE` environment variable, in dev mode only; a prompt on the terminal.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use conclave_keygen::Passphrase;
use zeroize::Zeroizing;

use crate::config::Mode;

/// Environment variable honoured in dev mode only.
pub const ENV_VAR: &str = "CONCLAVE_PASSPHRASE";
/// File name looked up in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "conclave-passphrase";
const MAX_PASSPHRASE_FILE: u64 = 4096;

fn from_file(path: &Path) -> Result<Passphrase> {
    let bytes = Zeroizing::new(
        conclave_protocol::read_bounded(path, MAX_PASSPHRASE_FILE)
            .with_context(|| format!("cannot read passphrase file {}", path.display()))?,
    );
    let p = Passphrase::from_file_bytes(bytes)
        .with_context(|| format!("passphrase file {} is not UTF-8", path.display()))?;
    if p.is_empty() {
        bail!("passphrase file {} is empty", path.display());
    }
    Ok(p)
}

/// Obtains a passphrase for `what` (a file name, for prompts). `new` asks twice on a terminal.
pub fn obtain(file: Option<&Path>, mode: Mode, what: &str, new: bool) -> Result<Passphrase> {
    obtain_from(file, mode, what, new, true)
}

/// Like [`obtain`], never prompting: what a running daemon uses on a reload or to decrypt a
/// share again after the share cache TTL (there is nobody at a terminal then).
pub fn obtain_unattended(file: Option<&Path>, mode: Mode, what: &str) -> Result<Passphrase> {
    obtain_from(file, mode, what, false, false)
}

/// True when a passphrase for this entry can be had without a terminal.
pub fn unattended_source(file: Option<&Path>, mode: Mode) -> bool {
    file.is_some()
        || std::env::var_os("CREDENTIALS_DIRECTORY")
            .is_some_and(|d| Path::new(&d).join(CREDENTIAL_NAME).exists())
        || (mode != Mode::Prod && std::env::var_os(ENV_VAR).is_some())
}

fn obtain_from(
    file: Option<&Path>,
    mode: Mode,
    what: &str,
    new: bool,
    prompt: bool,
) -> Result<Passphrase> {
    if let Some(file) = file {
        return from_file(file);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join(CREDENTIAL_NAME);
        if p.exists() {
            return from_file(&p);
        }
    }
    if let Some(value) = std::env::var_os(ENV_VAR) {
        if mode != Mode::Prod {
            if mode == Mode::Test {
                eprintln!("conclave: warning: passphrase taken from {ENV_VAR} (test mode allows it; prod refuses it)");
            }
            let text = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{ENV_VAR} is not UTF-8"))?;
            if text.is_empty() {
                bail!("{ENV_VAR} is empty");
            }
            return Ok(Passphrase::new(text));
        }
        bail!("{ENV_VAR} is set, but prod mode does not accept passphrases from the environment (dev and test modes do); use a passphrase file or a systemd credential");
    }
    if !prompt {
        bail!("no passphrase for {what} without a terminal: give passphrase_file in the config, or a systemd credential {CREDENTIAL_NAME} (a passphrase typed at start cannot be asked again on a reload or after the share cache TTL)");
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase for {what}: give --passphrase-file (or passphrase_file in the config), a systemd credential {CREDENTIAL_NAME}, or run on a terminal");
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("Passphrase for {what}: "))
            .context("cannot read the passphrase")?,
    );
    if first.is_empty() {
        bail!("empty passphrase");
    }
    if new {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat the passphrase: ")
                .context("cannot read the passphrase")?,
        );
        if *again != *first {
            bail!("the two passphrases differ");
        }
    }
    Ok(Passphrase::new(first.to_string()))
}

/// Shortest new passphrase accepted in prod mode.
pub const MIN_LEN: usize = 16;

/// Checks a *new* passphrase: at least 16 characters and a zxcvbn score of 4. Prod refuses a
/// weak one (with zxcvbn's feedback), test warns, dev allows.
pub fn check_new(p: &Passphrase, mode: Mode) -> Result<()> {
    if mode == Mode::Dev {
        return Ok(());
    }
    let mut problems = Vec::new();
    if p.len() < MIN_LEN {
        problems.push(format!(
            "it has {} characters, at least {MIN_LEN} are required",
            p.len()
        ));
    }
    let entropy = zxcvbn::zxcvbn(p.as_str(), &["conclave"]);
    let score = u8::from(entropy.score());
    if score < 4 {
        let mut why = format!("zxcvbn rates it {score}/4");
        if let Some(f) = entropy.feedback() {
            if let Some(w) = f.warning() {
                why.push_str(&format!(": {w}"));
            }
            for s in f.suggestions() {
                why.push_str(&format!(" {s}"));
            }
        }
        problems.push(why);
    }
    if problems.is_empty() {
        return Ok(());
    }
    let text = format!("weak passphrase: {}", problems.join("; "));
    if mode == Mode::Prod {
        bail!("{text} (prod mode refuses it; use a long random passphrase, e.g. 6+ random words)");
    }
    tracing::warn!("{text} (test mode allows it)");
    eprintln!("conclave: warning: {text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_rules_follow_the_mode() {
        let weak = Passphrase::new("password123".into());
        let long_but_weak = Passphrase::new("aaaaaaaaaaaaaaaaaaaa".into());
        let strong = Passphrase::new("correct horse battery staple orbit lantern".into());
        assert!(check_new(&weak, Mode::Prod)
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        assert!(check_new(&long_but_weak, Mode::Prod)
            .unwrap_err()
            .to_string()
            .contains("zxcvbn"));
        assert!(check_new(&strong, Mode::Prod).is_ok());
        assert!(check_new(&weak, Mode::Test).is_ok(), "test mode warns only");
        assert!(check_new(&weak, Mode::Dev).is_ok());
    }
}
