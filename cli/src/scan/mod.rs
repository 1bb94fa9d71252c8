//! `conclave logs scan`: does any log or telemetry file hold share, identity-key or
//! passphrase material, in any form a log line could carry it?
//!
//! The secrets are read the way the daemons read them (share files decrypted with their
//! passphrase, identity keys from their directories), turned into needles ([`needles`]) and
//! searched for in every file named, streamed in chunks ([`matcher`]) so that a log of any
//! size is scanned in constant memory. A finding names the file, the byte offset, the secret
//! (by the file it came from) and the encoding; never the secret or the bytes that matched.

pub mod matcher;
pub mod needles;

use std::collections::HashSet;
use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use conclave_keygen::{Passphrase, ShareErrorKind, ShareFile};
use conclave_protocol::IdentityKey;
use serde::Serialize;
use zeroize::Zeroizing;

pub use matcher::{Match, Matcher};
pub use needles::{forms, Encoding, Needle, MIN_NEEDLE_LEN};

use crate::config::Mode;
use crate::{passphrase, CmdResult, Exit};

/// Exit code when secret material was found.
pub const EXIT_FOUND: u8 = 4;

/// Findings listed per file; more are counted, not listed (a log that leaks on every line).
const LISTED_PER_FILE: usize = 100;

/// Progress on a terminal every this many bytes.
const PROGRESS_EVERY: u64 = 256 << 20;

pub(crate) const SCAN_HELP: &str = "\
What is searched: for each --share, its secret signing share (the file is decrypted) and its
passphrase; for each --identity, the node's identity secret key. Each in every form a log line
could carry it: raw bytes; hex, lower and upper case; base64 and base64url, padded or not, also
inside a longer encoded value (at any byte offset); Rust Debug forms: [1, 2, 3] (also inside a
longer list, pretty-printed {:#?}, or in hex {:x?}) and an escaped string {:?}. Forms shorter
than 8 bytes are not searched (they would match by chance).

What is read: each LOG file, with its rotated files beside it (LOG.1, LOG.2, ...,
LOG.checkpoint); each LOG directory, every regular file under it (symbolic links inside are
not followed). Files are streamed, so any size works. Compressed files are searched as stored:
decompress rotated .gz/.xz/.zst logs first. The share, passphrase and identity key files given
are skipped (they hold the secrets by design).

Output: one line per finding (file, byte offset, which secret by its file, encoding), then a
summary; never the secret or the matched bytes. --json prints {\"scanned_files\",
\"scanned_bytes\", \"findings\": [{\"file\", \"offset\", \"secret\", \"encoding\"}], \"errors\":
[{\"file\", \"error\"}], \"omitted_findings\", \"skipped\"}.

Exit codes: 0 nothing found; 4 secret material found (also when some file could not be read:
treat the secret as exposed, see docs/THREAT-MODEL.md, \"When compromise is suspected\"); 2 an
error: a share could not be decrypted or an identity read (nothing is scanned), or a LOG could
not be read (the others are scanned and the error reported).

Example:
  conclave logs scan --share /etc/conclave/release.p1.share \\
    --passphrase-file /etc/conclave/passphrase --identity /etc/conclave/identity \\
    /var/log/conclave/ /var/lib/conclave/audit/audit.log";

/// `conclave logs scan`.
#[derive(clap::Args, Debug)]
pub(crate) struct ScanArgs {
    /// A share file: its decrypted signing share and its passphrase are searched for. Repeat.
    #[arg(long = "share", value_name = "FILE")]
    shares: Vec<PathBuf>,
    /// File whose first line is the passphrase: one for every --share, or one per --share in
    /// the same order. Without it: $CREDENTIALS_DIRECTORY/conclave-passphrase, then (dev and
    /// test mode) CONCLAVE_PASSPHRASE, then a prompt (a passphrase already given is tried
    /// first on the next share).
    #[arg(long = "passphrase-file", value_name = "FILE")]
    passphrase_files: Vec<PathBuf>,
    /// An identity directory (or its identity.key): its secret key is searched for. Repeat.
    #[arg(long = "identity", value_name = "DIR")]
    identities: Vec<PathBuf>,
    /// A node keystore: its secret and its passphrase are searched for, and the --share files
    /// sealed to it are opened with it.
    #[arg(long, value_name = "FILE")]
    keystore: Option<PathBuf>,
    /// File whose first line is the keystore's passphrase (default: the usual sources).
    #[arg(long, value_name = "FILE", requires = "keystore")]
    keystore_passphrase_file: Option<PathBuf>,
    /// Where a passphrase may come from without --passphrase-file (dev and test accept
    /// CONCLAVE_PASSPHRASE).
    #[arg(long, value_enum, default_value_t = Mode::Prod)]
    mode: Mode,
    /// Print a JSON report on stdout instead of lines.
    #[arg(long)]
    json: bool,
    /// Log or telemetry files and directories to search.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
}

/// A secret to search for: which one it is, in words, and its bytes (zeroized on drop).
struct Secret {
    label: String,
    bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {{ {}: [redacted] }}", self.label)
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Finding {
    file: String,
    offset: u64,
    secret: String,
    encoding: &'static str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct FileError {
    file: String,
    error: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    scanned_files: u64,
    scanned_bytes: u64,
    findings: Vec<Finding>,
    errors: Vec<FileError>,
    /// Findings beyond the first LISTED_PER_FILE of a file: counted only.
    omitted_findings: u64,
    /// Files not scanned: the secret sources given, symbolic links inside directories, special
    /// files inside directories.
    skipped: Vec<String>,
    #[serde(skip)]
    notes: Vec<String>,
}

impl Report {
    fn error(&mut self, file: &Path, error: impl std::fmt::Display) {
        let e = FileError {
            file: file.display().to_string(),
            error: error.to_string(),
        };
        eprintln!("conclave: error: {}: {}", e.file, e.error);
        self.errors.push(e);
    }

    fn files_with_findings(&self) -> usize {
        let files: HashSet<&str> = self.findings.iter().map(|f| f.file.as_str()).collect();
        files.len()
    }
}

/// The secrets named by the arguments, deduplicated (one passphrase for several shares is
/// searched once), and the paths of the files they came from.
fn load_secrets(args: &ScanArgs) -> Result<(Vec<Secret>, Vec<PathBuf>), Exit> {
    let mut secrets: Vec<Secret> = Vec::new();
    let mut sources: Vec<PathBuf> = Vec::new();
    let passphrase_files = &args.passphrase_files;
    if !passphrase_files.is_empty()
        && passphrase_files.len() != 1
        && passphrase_files.len() != args.shares.len()
    {
        fail!(
            "{} --passphrase-file for {} --share: give one for all shares, or one per share in order",
            passphrase_files.len(),
            args.shares.len()
        );
    }
    if args.shares.is_empty() && !passphrase_files.is_empty() {
        fail!("--passphrase-file without --share: the passphrase is found through the shares it opens");
    }
    let keystore = match &args.keystore {
        None => None,
        Some(k) => {
            let pass = passphrase::obtain(
                args.keystore_passphrase_file.as_deref(),
                args.mode,
                &format!("the keystore {}", k.display()),
                false,
            )?;
            let ks = conclave_keygen::Keystore::open(k, &pass)?;
            push_unique(
                &mut secrets,
                Secret {
                    label: format!("keystore {}", k.display()),
                    bytes: ks.secret_bytes(),
                },
            );
            push_unique(
                &mut secrets,
                Secret {
                    label: format!("passphrase of the keystore {}", k.display()),
                    bytes: Zeroizing::new(pass.expose().to_vec()),
                },
            );
            sources.push(k.clone());
            Some(ks)
        }
    };
    // Passphrases obtained without a file, tried first on the next share (one prompt for
    // shares under the same passphrase).
    let mut obtained: Vec<Passphrase> = Vec::new();
    for (i, share_path) in args.shares.iter().enumerate() {
        let what = share_path.display().to_string();
        if ShareFile::inspect(share_path)?.keystore().is_some() {
            let Some(ks) = keystore.as_ref() else {
                fail!("{what} is sealed to a node keystore: pass --keystore FILE");
            };
            let share = ShareFile::read_with(
                share_path,
                conclave_keygen::Keys {
                    passphrase: None,
                    keystore: Some(ks),
                },
            )?;
            let bytes = Zeroizing::new(share.key_package.signing_share().serialize());
            drop(share);
            push_unique(
                &mut secrets,
                Secret {
                    label: format!("share {what}"),
                    bytes,
                },
            );
            sources.push(share_path.clone());
            continue;
        }
        let (share, pass, label) = match passphrase_files.get(i).or(passphrase_files.first()) {
            Some(file) => {
                let pass = passphrase::obtain(Some(file), args.mode, &what, false)?;
                let share = ShareFile::read(share_path, &pass)?;
                sources.push(file.clone());
                let pass = Zeroizing::new(pass.expose().to_vec());
                (share, pass, format!("passphrase from {}", file.display()))
            }
            None => {
                let (share, pass) = open_with_obtained(share_path, &mut obtained, args.mode)?;
                (share, pass, format!("passphrase of {what}"))
            }
        };
        let bytes = Zeroizing::new(share.key_package.signing_share().serialize());
        drop(share);
        push_unique(
            &mut secrets,
            Secret {
                label: format!("share {what}"),
                bytes,
            },
        );
        push_unique(&mut secrets, Secret { label, bytes: pass });
        sources.push(share_path.clone());
    }
    for dir in &args.identities {
        let key = IdentityKey::read_from(dir)
            .map_err(|e| anyhow::anyhow!("identity {}: {e}", dir.display()))?;
        let seed = Zeroizing::new(key.signing_key().to_bytes());
        push_unique(
            &mut secrets,
            Secret {
                label: format!("identity key {}", dir.display()),
                bytes: Zeroizing::new(seed.to_vec()),
            },
        );
        sources.push(if dir.is_dir() {
            dir.join(conclave_protocol::identity::KEY_FILE)
        } else {
            dir.clone()
        });
    }
    if secrets.is_empty() {
        fail!(
            "nothing to search for: give --share FILE (with its passphrase) and/or --identity DIR"
        );
    }
    Ok((secrets, sources))
}

/// Opens a share with a passphrase obtained earlier, else with a new one from the usual
/// sources (kept for the next share). Returns the share and the passphrase's bytes.
fn open_with_obtained(
    share_path: &Path,
    obtained: &mut Vec<Passphrase>,
    mode: Mode,
) -> Result<(ShareFile, Zeroizing<Vec<u8>>), Exit> {
    for p in obtained.iter() {
        match ShareFile::read(share_path, p) {
            Ok(share) => return Ok((share, Zeroizing::new(p.expose().to_vec()))),
            Err(e) if matches!(e.kind, ShareErrorKind::WrongPassphrase) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let p = passphrase::obtain(None, mode, &share_path.display().to_string(), false)?;
    let share = ShareFile::read(share_path, &p)?;
    let bytes = Zeroizing::new(p.expose().to_vec());
    obtained.push(p);
    Ok((share, bytes))
}

fn push_unique(secrets: &mut Vec<Secret>, s: Secret) {
    if !secrets.iter().any(|t| *t.bytes == *s.bytes) {
        secrets.push(s);
    }
}

/// The needles of every secret, tagged with the secret's index; a note for each secret whose
/// raw form is too short to be searched.
fn build_matcher(secrets: &[Secret], notes: &mut Vec<String>) -> Matcher {
    for s in secrets {
        if s.bytes.len() < MIN_NEEDLE_LEN {
            notes.push(format!(
                "{} is {} bytes long: as such it would match by chance, only its longer encodings are searched",
                s.label,
                s.bytes.len()
            ));
        }
    }
    Matcher::new(
        secrets
            .iter()
            .enumerate()
            .flat_map(|(i, s)| forms(&s.bytes).into_iter().map(move |n| (i, n))),
    )
}

/// Best-effort identity of a path for deduplication: its canonical form.
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The files to scan, in order: the LOG arguments expanded (directories walked, rotated
/// files added), each once, without the secret sources.
fn collect_files(logs: &[PathBuf], sources: &[PathBuf], report: &mut Report) -> Vec<PathBuf> {
    let skip: HashSet<PathBuf> = sources.iter().map(|p| canonical(p)).collect();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::new();
    let mut add = |p: PathBuf, report: &mut Report| {
        let c = canonical(&p);
        if skip.contains(&c) {
            report.skipped.push(p.display().to_string());
        } else if seen.insert(c) {
            out.push(p);
        }
    };
    for arg in logs {
        // A path given on the command line is followed if it is a symbolic link.
        match std::fs::metadata(arg) {
            Err(e) => report.error(arg, format!("cannot read: {e}")),
            Ok(m) if m.is_dir() => {
                let mut found = Vec::new();
                walk(arg, &mut found, report);
                for p in found {
                    add(p, report);
                }
            }
            Ok(m) if m.is_file() => {
                add(arg.clone(), report);
                for p in rotated_siblings(arg) {
                    add(p, report);
                }
            }
            Ok(_) => report.error(
                arg,
                "not a regular file or directory (save piped output to a file first)",
            ),
        }
    }
    out
}

/// Every regular file under `dir`, in name order, not following symbolic links.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, report: &mut Report) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return report.error(dir, format!("cannot list the directory: {e}")),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => paths.push(e.path()),
            Err(e) => report.error(dir, format!("cannot list the directory: {e}")),
        }
    }
    paths.sort();
    for p in paths {
        match std::fs::symlink_metadata(&p) {
            Err(e) => report.error(&p, format!("cannot read: {e}")),
            Ok(m) if m.file_type().is_symlink() => {
                report.skipped.push(p.display().to_string());
                report.notes.push(format!(
                    "{}: symbolic link not followed (name its target to scan it)",
                    p.display()
                ));
            }
            Ok(m) if m.is_dir() => walk(&p, out, report),
            Ok(m) if m.is_file() => out.push(p),
            Ok(_) => {
                report.skipped.push(p.display().to_string());
                report
                    .notes
                    .push(format!("{}: not a regular file, not read", p.display()));
            }
        }
    }
}

/// `FILE.1`, `FILE.2`, ... (numeric order), then `FILE.checkpoint`, beside `file`: its rotated
/// files and the audit log's checkpoint sidecar, those that are regular files.
fn rotated_siblings(file: &Path) -> Vec<PathBuf> {
    let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return vec![];
    };
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut numbered: Vec<(u64, PathBuf)> = Vec::new();
    let mut checkpoint = None;
    for entry in entries.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let Some(suffix) = other
            .strip_prefix(name.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let regular = std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_file());
        if !regular {
            continue;
        }
        let path = file.with_file_name(&other);
        if suffix == "checkpoint" {
            checkpoint = Some(path);
        } else if let Ok(n) = suffix.parse::<u64>() {
            numbered.push((n, path));
        }
    }
    numbered.sort();
    let mut out: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    out.extend(checkpoint);
    out
}

/// Opens a file to stream it: without blocking on a FIFO or taking a terminal, and only if
/// the opened handle is a regular file (the path may have changed since it was listed).
fn open_regular(path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    let file: File = {
        use rustix::fs::{Mode as FileMode, OFlags};
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            FileMode::empty(),
        )?
        .into()
    };
    #[cfg(not(unix))]
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Counts the bytes read through it (`done`, over all files) and shows progress on a
/// terminal every [`PROGRESS_EVERY`] bytes.
struct Progress<'a, R> {
    inner: R,
    done: &'a mut u64,
    next: &'a mut u64,
    total: u64,
    show: bool,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        if self.show && *self.done >= *self.next {
            eprintln!(
                "conclave: scanned {} of {}",
                human(*self.done),
                human(self.total.max(*self.done))
            );
            *self.next = *self.done + PROGRESS_EVERY;
        }
        Ok(n)
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(&"bytes") | None => format!("{bytes} bytes"),
        Some(u) => format!("{value:.1} {u}"),
    }
}

/// Scans `files` for the matcher's needles, recording findings and errors in `report`.
fn scan_files(
    files: &[PathBuf],
    matcher: &Matcher,
    secrets: &[Secret],
    chunk: usize,
    show_progress: bool,
    report: &mut Report,
) {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let show = show_progress && total > PROGRESS_EVERY;
    let (mut done, mut next) = (0u64, PROGRESS_EVERY);
    for path in files {
        let name = path.display().to_string();
        let lower = name.to_ascii_lowercase();
        if [".gz", ".xz", ".zst", ".bz2", ".lz4", ".zip"]
            .iter()
            .any(|ext| lower.ends_with(ext))
        {
            report.notes.push(format!(
                "{name}: compressed? its bytes were searched as stored: decompress it and scan the result"
            ));
        }
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(e) => {
                report.error(path, format!("cannot read: {e}"));
                continue;
            }
        };
        let mut listed = 0usize;
        let before = done;
        let reader = Progress {
            inner: file,
            done: &mut done,
            next: &mut next,
            total,
            show,
        };
        let result = matcher.scan(reader, chunk, |m| {
            if listed < LISTED_PER_FILE {
                listed += 1;
                report.findings.push(Finding {
                    file: name.clone(),
                    offset: m.offset,
                    secret: secrets
                        .get(m.secret)
                        .map(|s| s.label.clone())
                        .unwrap_or_default(),
                    encoding: m.encoding.name(),
                });
            } else {
                report.omitted_findings += 1;
            }
        });
        report.scanned_bytes += done - before;
        match result {
            Ok(_) => report.scanned_files += 1,
            Err(e) => report.error(path, format!("read failed part way: {e}")),
        }
    }
}

pub(crate) fn run(args: ScanArgs) -> CmdResult {
    let (secrets, sources) = load_secrets(&args)?;
    let mut report = Report::default();
    let matcher = build_matcher(&secrets, &mut report.notes);
    let files = collect_files(&args.logs, &sources, &mut report);
    scan_files(
        &files,
        &matcher,
        &secrets,
        matcher::DEFAULT_CHUNK,
        std::io::stderr().is_terminal(),
        &mut report,
    );
    for n in &report.notes {
        eprintln!("conclave: note: {n}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_human(&report, secrets.len());
    }
    if !report.findings.is_empty() {
        Err(Exit::silent(EXIT_FOUND))
    } else if !report.errors.is_empty() {
        Err(Exit::silent(2))
    } else {
        Ok(())
    }
}

fn print_human(report: &Report, secrets: usize) {
    for f in &report.findings {
        println!(
            "FOUND {} at byte {}: {} ({})",
            f.file, f.offset, f.secret, f.encoding
        );
    }
    if report.omitted_findings > 0 {
        println!(
            "... and {} more findings not listed ({LISTED_PER_FILE} listed per file)",
            report.omitted_findings
        );
    }
    if !report.skipped.is_empty() {
        eprintln!(
            "conclave: skipped {} file(s) (the secret files given, links and special files): {}",
            report.skipped.len(),
            report.skipped.join(", ")
        );
    }
    let mut summary = format!(
        "scanned {} file(s), {}, for {secrets} secret(s): ",
        report.scanned_files,
        human(report.scanned_bytes)
    );
    let found = report.findings.len() as u64 + report.omitted_findings;
    if found == 0 {
        summary.push_str("nothing found");
    } else {
        summary.push_str(&format!(
            "{found} finding(s) in {} file(s): treat each secret named as exposed (docs/THREAT-MODEL.md, \"When compromise is suspected\")",
            report.files_with_findings()
        ));
    }
    if !report.errors.is_empty() {
        summary.push_str(&format!(
            "; {} error(s): those files were not (fully) scanned",
            report.errors.len()
        ));
    }
    println!("{summary}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn secret(label: &str, seed: u8) -> Secret {
        Secret {
            label: label.into(),
            bytes: Zeroizing::new(
                (0u8..32)
                    .map(|i| i.wrapping_mul(41).wrapping_add(seed))
                    .collect(),
            ),
        }
    }

    fn names(paths: &[PathBuf], root: &Path) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_file_brings_its_rotated_files_and_a_directory_its_tree_without_links_or_sources() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("audit")).unwrap();
        std::fs::create_dir_all(d.join("logs/nested")).unwrap();
        for f in [
            "audit/audit.log",
            "audit/audit.log.2",
            "audit/audit.log.10",
            "audit/audit.log.1",
            "audit/audit.log.checkpoint",
            "audit/audit.log.bak",
            "logs/a.log",
            "logs/nested/b.log",
            "logs/passphrase",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink(d.join("audit/audit.log"), d.join("logs/link.log")).unwrap();
        let mut report = Report::default();
        let files = collect_files(&[d.join("audit/audit.log")], &[], &mut report);
        assert_eq!(
            names(&files, d),
            [
                "audit/audit.log",
                "audit/audit.log.1",
                "audit/audit.log.2",
                "audit/audit.log.10",
                "audit/audit.log.checkpoint"
            ]
        );
        // Overlapping arguments name each file once; the secret sources are skipped; links
        // inside a directory are not followed; a missing path is an error, the rest goes on.
        let mut report = Report::default();
        let files = collect_files(
            &[d.join("logs"), d.join("logs/a.log"), d.join("missing.log")],
            &[d.join("logs/passphrase")],
            &mut report,
        );
        assert_eq!(names(&files, d), ["logs/a.log", "logs/nested/b.log"]);
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].file.ends_with("missing.log"));
        assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
        assert!(report.notes.iter().any(|n| n.contains("symbolic link")));
    }

    #[test]
    fn findings_name_file_offset_secret_and_encoding_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let share = secret("share it.p1.share", 3);
        let pass = Secret {
            label: "passphrase from pass".into(),
            bytes: Zeroizing::new(b"integration-test-passphrase".to_vec()),
        };
        let secrets = vec![share, pass];
        let mut report = Report::default();
        let matcher = build_matcher(&secrets, &mut report.notes);
        assert!(report.notes.is_empty());

        let mut hexed = vec![b'-'; 1000];
        hexed.splice(500..500, hex::encode(&*secrets[0].bytes).bytes());
        std::fs::write(d.join("hex.log"), &hexed).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&*secrets[0].bytes);
        std::fs::write(d.join("b64.log"), format!("{}{b64}\n", "y".repeat(77))).unwrap();
        std::fs::write(d.join("pass.log"), b"key=integration-test-passphrase\n").unwrap();
        std::fs::write(d.join("clean.log"), "nothing here\n".repeat(1000)).unwrap();
        let files: Vec<PathBuf> = ["hex.log", "b64.log", "pass.log", "clean.log", "gone.log"]
            .iter()
            .map(|f| d.join(f))
            .collect();
        // A 16-byte chunk: every needle straddles chunk boundaries.
        scan_files(&files, &matcher, &secrets, 16, false, &mut report);
        let got: Vec<(String, u64, &str, &str)> = report
            .findings
            .iter()
            .map(|f| {
                (
                    Path::new(&f.file)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    f.offset,
                    f.secret.as_str(),
                    f.encoding,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("hex.log".to_string(), 500, "share it.p1.share", "hex"),
                ("b64.log".to_string(), 77, "share it.p1.share", "base64"),
                ("pass.log".to_string(), 4, "passphrase from pass", "raw"),
            ]
        );
        assert_eq!(report.scanned_files, 4);
        assert_eq!(
            report.scanned_bytes,
            (hexed.len() + 77 + b64.len() + 1 + 32 + 13_000) as u64
        );
        assert_eq!(report.errors.len(), 1);
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains(&hex::encode(&*secrets[0].bytes)));
        assert!(!json.contains(&b64));
        assert!(!json.contains("integration-test-passphrase"));
        assert!(!format!("{:?}", secrets[0]).contains(&hex::encode(&*secrets[0].bytes)));
    }

    #[test]
    fn a_file_leaking_on_every_line_lists_the_first_findings_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = vec![secret("identity key p1", 9)];
        let mut report = Report::default();
        let matcher = build_matcher(&secrets, &mut report.notes);
        let line = format!("k={}\n", hex::encode(&*secrets[0].bytes));
        let path = dir.path().join("x.log");
        std::fs::write(&path, line.repeat(LISTED_PER_FILE + 50)).unwrap();
        scan_files(&[path], &matcher, &secrets, 4096, false, &mut report);
        assert_eq!(report.findings.len(), LISTED_PER_FILE);
        assert_eq!(report.omitted_findings, 50);
        assert_eq!(report.files_with_findings(), 1);
    }

    #[test]
    fn a_short_secret_is_noted_and_only_its_longer_forms_searched() {
        let secrets = vec![Secret {
            label: "passphrase of s".into(),
            bytes: Zeroizing::new(b"abc".to_vec()),
        }];
        let mut notes = vec![];
        let m = build_matcher(&secrets, &mut notes);
        assert_eq!(notes.len(), 1);
        assert!(!notes[0].contains("abc"));
        assert!(m.find_all(b"xx abc yy").is_empty());
        assert_eq!(m.find_all(b"6162636465 616263 ").len(), 0);
        assert_eq!(m.find_all(b"[97, 98, 99]").len(), 1);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(12), "12 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
