//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay (`conclave-fuzzing`):
//! the daemons' config files, the freeze file and the control socket's requests, parsed by
//! the code the daemons run. Not an API; built only with the `fuzzing` feature.
//!
//! Every function returns `Err` only for a broken invariant (a bug), never for bad input.

use std::path::Path;

/// A participant's and a coordinator's config file (the same text is tried as both).
pub fn configs(text: &str) -> Result<(), String> {
    let path = Path::new("/fuzz/conclave.toml");
    if let Ok(c) = crate::config::ParticipantConfig::parse(path, text) {
        if c.shares.is_empty() || c.coordinators.is_empty() {
            return Err("a participant config without shares or coordinators was accepted".into());
        }
        let _ = (c.control_socket(), c.freeze_file(), c.drain_grace());
    }
    if let Ok(c) = crate::config::CoordinatorConfig::parse(path, text) {
        if c.manifests.is_empty() {
            return Err("a coordinator config without manifests was accepted".into());
        }
        let _ = (c.control_socket(), c.drain_grace());
    }
    Ok(())
}

/// The freeze file (`conclave freeze` writes it; the participant reads it at start).
pub fn freeze_file(text: &str) -> Result<(), String> {
    if let Ok(f) = toml::from_str::<conclave_participant::Freeze>(text) {
        let again =
            toml::to_string(&f).map_err(|e| format!("freeze: decoded, not encodable: {e}"))?;
        let f2: conclave_participant::Freeze =
            toml::from_str(&again).map_err(|e| format!("freeze: own encoding refused: {e}"))?;
        if toml::to_string(&f2).ok().as_deref() != Some(again.as_str()) {
            return Err("freeze: encoding not stable".into());
        }
    }
    Ok(())
}

/// One line on the control socket (`conclave reload`, `freeze`, `unfreeze`, `status`).
pub fn control_request(line: &str) -> Result<(), String> {
    if let Ok(r) = serde_json::from_str::<crate::daemon::ControlRequest>(line.trim()) {
        let again =
            serde_json::to_string(&r).map_err(|e| format!("control: not encodable: {e}"))?;
        let r2: crate::daemon::ControlRequest = serde_json::from_str(&again)
            .map_err(|e| format!("control: own encoding refused: {e}"))?;
        if r2 != r {
            return Err("control: round trip differs".into());
        }
    }
    Ok(())
}
