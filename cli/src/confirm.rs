//! What an operator is asked before anything changes: confirmations (a TTY prompt or `--yes`),
//! the plan-fingerprint rule for ceremonies, and the destruction of retired key material.
//! Shared by the DKG, rotation and migration commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{anyhow, bail};
use conclave_keygen::ceremony::CeremonyPlan;

use crate::config::Mode;
use crate::Exit;

/// Asks the operator to confirm, unless `yes`. Refuses without a terminal to ask on.
pub(crate) fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question}: no terminal to confirm on; re-run with --yes once you have checked the plan");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// Confirms a checked plan: `--expect-plan` (must match) confirms it; otherwise the operator
/// is asked, or `--yes`, which prod mode accepts only together with `--expect-plan`.
pub(crate) fn confirm_plan(
    plan: &CeremonyPlan,
    expect: Option<&str>,
    yes: bool,
    mode: Mode,
) -> Result<(), Exit> {
    if let Some(fp) = expect {
        if !plan.matches_fingerprint(fp) {
            return Err(Exit::refused(anyhow!(
                "plan refused, nothing was sent: this plan's fingerprint is {}, not the expected {fp}: the plan file is not the one its author made",
                plan.fingerprint()?
            )));
        }
        return Ok(());
    }
    if yes && mode == Mode::Prod {
        return Err(Exit::from(anyhow!(
            "in prod mode --yes needs --expect-plan FINGERPRINT: compare the fingerprint above with the one the plan's author printed, out of band, then pass it"
        )));
    }
    Ok(confirm("take part in this ceremony", yes)?)
}

/// Overwrites a file with random bytes, syncs it, unlinks it and syncs its directory.
pub(crate) fn destroy(path: &Path) -> anyhow::Result<()> {
    let len = std::fs::metadata(path)?.len();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let mut junk = vec![0u8; usize::try_from(len).unwrap_or(0)];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut junk);
        f.write_all(&junk)?;
        f.sync_all()?;
    }
    std::fs::remove_file(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
