//! Bounded reads of the files conclave is given on the command line or in a config: share
//! files, manifests, plans, configs, identity keys, passphrase files, statements, messages.
//!
//! A path an operator (or an attacker who can write a config) names may be anything:
//! `/dev/zero` would be read until memory runs out, a FIFO would block `open` forever, a
//! sparse file can claim terabytes. [`read_bounded`] therefore
//!
//! 1. opens with `O_NONBLOCK | O_NOCTTY`, so opening a FIFO or a terminal neither blocks nor
//!    takes it as the controlling terminal (after a `stat` that refuses what is plainly not a
//!    regular file without opening it at all, as opening some devices has side effects);
//! 2. checks the type of the *opened* handle (`fstat`), refusing anything but a regular file;
//! 3. refuses a file whose size exceeds the limit before reading a byte;
//! 4. reads at most `limit + 1` bytes and refuses the file if it had more (it grew, or it is a
//!    file such as those in `/proc` whose size says 0).
//!
//! The buffer is allocated once at the size `fstat` reported, so a secret read this way
//! (a passphrase, an identity key) is not left behind in a freed, smaller buffer.

use std::fs::{File, FileType, Metadata};
use std::io::Read;
use std::path::Path;

use zeroize::Zeroize;

/// Why a bounded read refused a file or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The path names something other than a regular file.
    #[error("this is a {kind}, not a regular file: {}", not_regular_hint(.kind))]
    NotRegular { kind: &'static str },
    /// The file holds more than `limit` bytes.
    #[error("file is larger than {limit} bytes, the most accepted here: check the path")]
    TooLarge { limit: u64 },
    /// The operating system refused (missing file, permissions, ...).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file was expected to be text and is not UTF-8.
    #[error("file is not UTF-8 text: check the path, or save the file as UTF-8")]
    NotUtf8,
}

/// Reads the regular file at `path`, refusing anything that is not a regular file and any
/// file of more than `limit` bytes (see the module documentation for how).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    // Refuse what is plainly not a regular file before opening it; the check that counts is
    // the one on the opened handle below (the path may be replaced in between).
    check_regular(&std::fs::metadata(path)?)?;
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    check_regular(&meta)?;
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    read_limited_with_capacity(file, limit, meta.len())
}

/// [`read_bounded`], then a check that the bytes are UTF-8. The bytes of a file that is not
/// UTF-8 are zeroized before they are dropped.
pub fn read_bounded_to_string(path: &Path, limit: u64) -> Result<String, ReadError> {
    into_string(read_bounded(path, limit)?)
}

/// Reads at most `limit` bytes from a stream that has no size to check first (standard
/// input), refusing it if it has more.
pub fn read_limited<R: Read>(reader: R, limit: u64) -> Result<Vec<u8>, ReadError> {
    read_limited_with_capacity(reader, limit, 0)
}

/// [`read_limited`], then a check that the bytes are UTF-8.
pub fn read_limited_to_string<R: Read>(reader: R, limit: u64) -> Result<String, ReadError> {
    into_string(read_limited(reader, limit)?)
}

fn into_string(bytes: Vec<u8>) -> Result<String, ReadError> {
    String::from_utf8(bytes).map_err(|e| {
        e.into_bytes().zeroize();
        ReadError::NotUtf8
    })
}

fn read_limited_with_capacity<R: Read>(
    reader: R,
    limit: u64,
    expected: u64,
) -> Result<Vec<u8>, ReadError> {
    // One byte more than `expected` so that reading up to end of file never reallocates.
    let capacity = usize::try_from(expected.min(limit).saturating_add(1)).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(capacity);
    let read = reader.take(limit.saturating_add(1)).read_to_end(&mut buf);
    if let Err(e) = read {
        buf.zeroize();
        return Err(e.into());
    }
    if buf.len() as u64 > limit {
        buf.zeroize();
        return Err(ReadError::TooLarge { limit });
    }
    Ok(buf)
}

const DIRECTORY: &str = "directory";
const FIFO: &str = "FIFO (named pipe)";
const SOCKET: &str = "socket";

/// What to do instead, for a [`ReadError::NotRegular`] of this kind.
fn not_regular_hint(kind: &str) -> &'static str {
    match kind {
        DIRECTORY => "give the path of the file inside it",
        FIFO | SOCKET => "give the path of a regular file (save piped input to a file first)",
        _ => "give the path of a regular file",
    }
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn check_regular(meta: &Metadata) -> Result<(), ReadError> {
    let file_type = meta.file_type();
    if file_type.is_file() {
        Ok(())
    } else {
        Err(ReadError::NotRegular {
            kind: kind_of(file_type),
        })
    }
}

/// What a file that is not a regular file is, in words.
fn kind_of(file_type: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return FIFO;
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_socket() {
            return SOCKET;
        }
    }
    if file_type.is_dir() {
        DIRECTORY
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_regular_file_within_the_limit_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        assert_eq!(read_bounded(&p, 6).unwrap(), b"hello\n");
        assert_eq!(read_bounded_to_string(&p, 1024).unwrap(), "hello\n");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(read_bounded(&p, 0).unwrap(), b"");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        assert!(matches!(
            read_bounded(&p, 5),
            Err(ReadError::TooLarge { limit: 5 })
        ));
    }

    #[test]
    fn a_directory_is_refused_as_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(dir.path(), 1024).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "directory" }),
            "{e:?}"
        );
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn dev_zero_is_refused_without_reading() {
        let e = read_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::NotRegular {
                    kind: "character device"
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_fifo_is_refused_promptly_without_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success());
        let start = Instant::now();
        let e = read_bounded(&p, 1024).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(
                e,
                ReadError::NotRegular {
                    kind: "FIFO (named pipe)"
                }
            ),
            "{e:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_is_refused_as_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = read_bounded(&p, 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular { kind: SOCKET }), "{e:?}");
        assert!(e.to_string().contains("save piped input"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn an_opened_fifo_is_refused_by_its_handle() {
        // The path check comes first; this is the check that holds if the path is swapped
        // for a FIFO between the two: opening does not block, the handle's type is refused.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success());
        let start = Instant::now();
        let file = open_nonblocking(&p).unwrap();
        assert!(matches!(
            check_regular(&file.metadata().unwrap()),
            Err(ReadError::NotRegular {
                kind: "FIFO (named pipe)"
            })
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_sparse_2_gib_file_is_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        File::create(&p).unwrap().set_len(2 << 30).unwrap();
        let start = Instant::now();
        assert!(matches!(
            read_bounded(&p, 1024 * 1024),
            Err(ReadError::TooLarge { limit: 1048576 })
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_with_more_bytes_than_its_size_says_is_refused() {
        // /proc files report size 0 and yet have content: the same path as a file that grew.
        let p = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(p).unwrap().len(), 0);
        assert!(matches!(
            read_bounded(p, 10),
            Err(ReadError::TooLarge { limit: 10 })
        ));
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(&dir.path().join("absent"), 10).unwrap_err();
        assert!(
            matches!(&e, ReadError::Io(io) if io.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_bounded_to_string(&p, 10),
            Err(ReadError::NotUtf8)
        ));
    }

    #[test]
    fn a_stream_is_cut_at_the_limit() {
        assert_eq!(read_limited(&b"12345"[..], 5).unwrap(), b"12345");
        assert!(matches!(
            read_limited(&b"123456"[..], 5),
            Err(ReadError::TooLarge { limit: 5 })
        ));
        assert!(matches!(
            read_limited(std::io::repeat(0), 1000),
            Err(ReadError::TooLarge { limit: 1000 })
        ));
    }
}
