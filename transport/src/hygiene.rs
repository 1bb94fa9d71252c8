//! Process hardening for a node that holds secrets: no core dumps (a crash must not write the
//! share to disk), and memory locked against swapping when the limits allow it.

/// What [`harden_process`] managed to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hardening {
    /// `PR_SET_DUMPABLE` 0 and `RLIMIT_CORE` 0 are both in force.
    pub core_dumps_disabled: bool,
    /// All current and future pages are locked in memory (`mlockall`).
    pub memory_locked: bool,
    /// Why something could not be done, one line each, with the fix.
    pub problems: Vec<String>,
}

/// Lowest `RLIMIT_MEMLOCK` under which we lock all memory: below it, future allocations would
/// start failing (and abort the process) once the locked total reaches the limit.
#[cfg(target_os = "linux")]
const MIN_MEMLOCK_FOR_MLOCKALL: u64 = 1 << 30;

/// Disables core dumps and locks memory when permitted. Call before any secret is loaded.
#[cfg(target_os = "linux")]
pub fn harden_process() -> Hardening {
    use rustix::mm::{mlockall, MlockAllFlags};
    use rustix::process::{
        getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
    };

    let mut h = Hardening::default();
    let no_dump = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    let no_core = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    match (no_dump, no_core) {
        (Ok(()), Ok(())) => h.core_dumps_disabled = true,
        (a, b) => h.problems.push(format!(
            "could not disable core dumps (prctl: {:?}, RLIMIT_CORE: {:?})",
            a.err(),
            b.err()
        )),
    }
    let limit = getrlimit(Resource::Memlock);
    let enough = limit.current.is_none_or(|c| c >= MIN_MEMLOCK_FOR_MLOCKALL);
    if enough {
        match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
            Ok(()) => h.memory_locked = true,
            Err(e) => h.problems.push(format!(
                "could not lock memory ({e}); secrets may reach swap"
            )),
        }
    } else {
        h.problems.push(format!(
            "memory not locked: RLIMIT_MEMLOCK is {} bytes; raise it (systemd: LimitMEMLOCK=infinity) to keep secrets out of swap",
            limit.current.unwrap_or(0)
        ));
    }
    h
}

/// On other systems nothing is done; the report says so.
#[cfg(not(target_os = "linux"))]
pub fn harden_process() -> Hardening {
    Hardening {
        problems: vec![
            "core-dump suppression and memory locking are implemented for Linux only".into(),
        ],
        ..Hardening::default()
    }
}

/// Makes the file-size limit (`ulimit -f`, RLIMIT_FSIZE) an ordinary write error instead of a
/// fatal SIGXFSZ, so that an audit log that cannot grow makes the daemon refuse to sign and
/// say why, rather than die. Keep the returned listener alive for the life of the process.
#[cfg(unix)]
pub fn survive_file_size_limit() -> Option<tokio::signal::unix::Signal> {
    let raw = rustix::process::Signal::XFSZ.as_raw();
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(raw)).ok()
}
