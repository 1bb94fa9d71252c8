//! Ceremony outcomes for Prometheus, from the one-shot `dkg`/`rotate` `join` and `relay`
//! processes: `--metrics-textfile FILE` keeps counts in `FILE.state.json` and rewrites FILE in
//! the text exposition format for node_exporter's textfile collector (the standard way to
//! export what batch jobs did).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

const MAX_STATE: u64 = 1024 * 1024;

#[derive(
    Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet, Serialize, Deserialize,
)]
struct Labels {
    kind: String,
    role: String,
    outcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    labels: Labels,
    count: u64,
    last: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    entries: Vec<Entry>,
}

fn state_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".state.json");
    PathBuf::from(name)
}

/// Counts one ceremony outcome (`kind`: dkg, reshare, refresh, repair; `role`: member or relay)
/// and rewrites the textfile. Label values are codes, never plan contents.
pub(crate) fn record(file: &Path, kind: &str, role: &str, outcome: &str) -> anyhow::Result<()> {
    let state_file = state_path(file);
    let mut state: State = if state_file.exists() {
        let text = conclave_protocol::read_bounded_to_string(&state_file, MAX_STATE)
            .with_context(|| format!("cannot read {}", state_file.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a metrics state file", state_file.display()))?
    } else {
        State::default()
    };
    let labels = Labels {
        kind: kind.to_owned(),
        role: role.to_owned(),
        outcome: outcome.to_owned(),
    };
    let now = conclave_transport::unix_now();
    match state.entries.iter_mut().find(|e| e.labels == labels) {
        Some(e) => {
            e.count += 1;
            e.last = now;
        }
        None => state.entries.push(Entry {
            labels,
            count: 1,
            last: now,
        }),
    }
    let mut registry = Registry::with_prefix("conclave");
    let outcomes = Family::<Labels, Counter>::default();
    let last = Family::<Labels, Gauge>::default();
    let mut sorted: BTreeMap<Labels, &Entry> = BTreeMap::new();
    for e in &state.entries {
        sorted.insert(e.labels.clone(), e);
    }
    for (l, e) in sorted {
        outcomes.get_or_create(&l).inc_by(e.count);
        last.get_or_create(&l)
            .set(i64::try_from(e.last).unwrap_or(i64::MAX));
    }
    registry.register(
        "ceremony_outcomes",
        "Key ceremonies this host took part in, by kind, role and outcome",
        outcomes,
    );
    registry.register(
        "ceremony_last_timestamp_seconds",
        "When the last ceremony of this kind, role and outcome ended (Unix seconds)",
        last,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .context("cannot encode the ceremony metrics")?;
    write_public(&state_file, serde_json::to_string(&state)?.as_bytes())?;
    write_public(file, text.as_bytes())
}

/// Temp file and rename in the same directory, mode 0644 (the collector runs as another user;
/// nothing here is secret).
fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{:016x}",
        rand::RngCore::next_u64(&mut rand::rngs::OsRng)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn outcomes_accumulate_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ceremony.prom");
        super::record(&file, "refresh", "member", "completed").unwrap();
        super::record(&file, "refresh", "member", "completed").unwrap();
        super::record(&file, "reshare", "member", "aborted").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(
                "conclave_ceremony_outcomes_total{kind=\"refresh\",role=\"member\",outcome=\"completed\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "conclave_ceremony_outcomes_total{kind=\"reshare\",role=\"member\",outcome=\"aborted\"} 1"
        ));
        assert!(text.contains("conclave_ceremony_last_timestamp_seconds{"));
    }
}
