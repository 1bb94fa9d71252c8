//! Every file the CLI reads is read through `conclave_protocol::read_bounded`: pointed at
//! `/dev/zero`, a FIFO with no writer, a directory or a 2 GiB sparse file, a command fails at
//! once with one clear error line instead of growing to gigabytes or blocking forever.
//!
//! Each command runs as a child process with a watchdog: it must exit with an error within 2 s
//! (it takes milliseconds; 2 s tolerates a loaded machine), and is killed after 5 s so a
//! regression fails the test instead of hanging it. Memory is measured as the child's peak
//! resident set size (`ru_maxrss`, in KiB on Linux) that the kernel reports when the child is
//! reaped with `wait4(2)`: per child and exact, unlike polling `/proc/<pid>/status`, which
//! misses a peak just before exit. It must stay under 64 MiB (the debug binary needs about
//! 15 MiB; reading `/dev/zero` unbounded reached gigabytes).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

/// A child that takes longer than this fails the test.
const MAX_ELAPSED: Duration = Duration::from_secs(2);
/// A child still running after this is killed (the test then fails).
const KILL_AFTER: Duration = Duration::from_secs(5);
/// Peak resident memory a refused read may reach.
const MAX_RSS_KIB: i64 = 64 * 1024;

/// How a child ended.
struct Finished {
    exit_code: Option<i32>,
    stderr: String,
    elapsed: Duration,
    max_rss_kib: i64,
}

/// Runs the binary with `args` under the watchdog and collects its peak RSS.
fn run_watched(args: &[&str], scratch: &Path) -> Finished {
    let stderr_path = scratch.join("stderr");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let start = Instant::now();
    // Reaped by `wait4` below (which also reports the peak RSS), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr_file))
        .spawn()
        .expect("spawn conclave");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let mut killed = false;
    let (status, usage) = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is a plain C struct of integers, for which all zeroes is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let options = if killed { 0 } else { libc::WNOHANG };
        // SAFETY: `pid` is our own child, not yet reaped (std's `Child` never waits on its own
        // and is not asked to after this); both pointers are to live, writable locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, options, &mut usage) };
        if reaped == pid {
            break (status, usage);
        }
        assert_eq!(reaped, 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > KILL_AFTER {
            // Not reaped yet, so the pid is still ours to signal.
            child.kill().expect("kill the hung child");
            killed = true;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let elapsed = start.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        !killed,
        "conclave {args:?} was still running after {KILL_AFTER:?} and was killed; stderr: {stderr}"
    );
    Finished {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr,
        elapsed,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// A hostile path and the words the error must use to say what it is ("large" for a file
/// over the limit: "larger than N bytes" or "too large to be ...").
struct Target {
    what: &'static str,
    path: PathBuf,
    says: &'static str,
}

fn targets(dir: &Path) -> Vec<Target> {
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo failed");
    let sparse = dir.join("sparse");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(2 << 30))
        .expect("a 2 GiB sparse file");
    let directory = dir.join("a-directory");
    std::fs::create_dir(&directory).expect("directory");
    vec![
        Target {
            what: "/dev/zero",
            path: PathBuf::from("/dev/zero"),
            says: "character device",
        },
        Target {
            what: "a FIFO without a writer",
            path: fifo,
            says: "FIFO",
        },
        Target {
            what: "a directory",
            path: directory,
            says: "directory",
        },
        Target {
            what: "a 2 GiB sparse file",
            path: sparse,
            says: "large",
        },
    ]
}

/// A signature argument that parses (the read under test comes before it is checked).
const ANY_SIGNATURE: &str = concat!(
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000"
);
const ANY_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The commands under test, each with the hostile path in the place of one file it reads.
fn commands(path: &str) -> Vec<Vec<String>> {
    let cmds: Vec<Vec<&str>> = vec![
        vec!["share", "inspect", path],
        vec!["verify", "--signature", ANY_SIGNATURE, "--manifest", path],
        vec!["config", "check", "--config", path],
        vec!["pubkey", "--manifest", path],
        vec![
            "verify",
            "--signature",
            ANY_SIGNATURE,
            "--public-key",
            ANY_KEY,
            "--message-file",
            path,
        ],
        vec!["verify", "--signature-file", path, "--public-key", ANY_KEY],
        vec!["migrate", "verify", path],
        vec!["sim", "--scenario", path],
    ];
    cmds.into_iter()
        .map(|c| c.into_iter().map(str::to_owned).collect())
        .collect()
}

fn assert_refused_promptly(args: &[&str], target: &Target, scratch: &Path) {
    let f = run_watched(args, scratch);
    let shown = format!(
        "conclave {args:?} on {} (exit {:?}, {:?}, peak RSS {} KiB); stderr:\n{}",
        target.what, f.exit_code, f.elapsed, f.max_rss_kib, f.stderr
    );
    assert!(
        matches!(f.exit_code, Some(c) if c != 0),
        "must fail: {shown}"
    );
    assert!(f.elapsed < MAX_ELAPSED, "too slow: {shown}");
    assert!(f.max_rss_kib < MAX_RSS_KIB, "too much memory: {shown}");
    let errors: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.starts_with("conclave: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {shown}");
    let error = errors.concat();
    assert!(
        error.contains(target.says) && error.contains(&*target.path.to_string_lossy()),
        "the error names the file and says what is wrong with it: {shown}"
    );
}

#[test]
fn hostile_paths_are_refused_promptly_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    for target in targets(dir.path()) {
        let path = target.path.to_string_lossy().into_owned();
        for args in commands(&path) {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_refused_promptly(&refs, &target, &scratch);
        }
    }
}

#[test]
fn a_hostile_identity_file_is_refused_promptly() {
    // `node show` takes an identity directory or the identity.pub file itself, so a directory
    // is not hostile here (it reads the directory's identity.pub): only the other targets.
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    for target in targets(dir.path()) {
        if target.says == "directory" {
            continue;
        }
        let path = target.path.to_string_lossy().into_owned();
        assert_refused_promptly(&["node", "show", &path], &target, &scratch);
    }
}
