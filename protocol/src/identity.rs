//! Node identities: every node has an Ed25519 identity key, separate from any key share. Its
//! public half ([`NodeId`]) is what peers pin, and what a participant's FROST identifier is
//! derived from.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsread::ReadError;

/// File name of the secret key inside an identity directory.
pub const KEY_FILE: &str = "identity.key";
/// File name of the public key inside an identity directory.
pub const PUB_FILE: &str = "identity.pub";
const KEY_HEADER: &str = "CONCLAVE IDENTITY KEY v1";
/// Identity files are a few dozen bytes; refuse anything much larger before reading it.
const MAX_IDENTITY_FILE: u64 = 4096;

/// The public identity of a node: its Ed25519 identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Parses the 64-character hex form.
    pub fn from_hex(s: &str) -> Result<Self, IdentityError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| IdentityError::BadPublicKey)?;
        // Must be a valid curve point, or nobody could ever authenticate as it.
        ed25519_dalek::VerifyingKey::from_bytes(&out).map_err(|_| IdentityError::BadPublicKey)?;
        Ok(Self(out))
    }

    /// The 64-character hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for logs: the first 8 bytes in hex.
    pub fn short(&self) -> String {
        hex::encode(self.0.get(..8).unwrap_or_default())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node's secret identity key. Zeroized on drop (ed25519-dalek's `zeroize` feature);
/// prints as `[redacted]`.
#[derive(Clone)]
pub struct IdentityKey(ed25519_dalek::SigningKey);

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdentityKey {{ public: {}, secret: [redacted] }}",
            self.node_id().short()
        )
    }
}

/// Failures loading or storing identity keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a conclave identity key file")]
    BadKeyFile(PathBuf),
    #[error("{0}: file is too large to be an identity key")]
    TooLarge(PathBuf),
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("not a valid Ed25519 public key (expected 64 hex characters)")]
    BadPublicKey,
    #[error("{0} already exists; refusing to overwrite an identity")]
    Exists(PathBuf),
    #[error("could not encode the key for TLS")]
    Encoding,
}

impl IdentityKey {
    /// Makes a fresh identity key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self(ed25519_dalek::SigningKey::generate(rng))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The public identity.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// The dalek signing key, for signing statements with the identity.
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.0
    }

    /// The PKCS#8 DER form, for the TLS stack. Zeroized on drop.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        let doc = self.0.to_pkcs8_der().map_err(|_| IdentityError::Encoding)?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Writes `identity.key` (mode 0600) and `identity.pub` into `dir`, creating it (mode 0700).
    /// Refuses to overwrite an existing identity.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), IdentityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        create_private_dir(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() {
            return Err(IdentityError::Exists(key_path));
        }
        let text = Zeroizing::new(format!(
            "{KEY_HEADER}\n{}\n",
            hex::encode(self.0.to_bytes())
        ));
        write_private_file(&key_path, text.as_bytes()).map_err(io(&key_path))?;
        let pub_path = dir.join(PUB_FILE);
        std::fs::write(&pub_path, format!("{}\n", self.node_id().to_hex()))
            .map_err(io(&pub_path))?;
        Ok(())
    }

    /// Reads `identity.key` from an identity directory (or the key file itself).
    pub fn read_from(path: &Path) -> Result<Self, IdentityError> {
        let key_path = if path.is_dir() {
            path.join(KEY_FILE)
        } else {
            path.to_path_buf()
        };
        let text = read_small(&key_path, MAX_IDENTITY_FILE)?;
        let text = Zeroizing::new(text);
        let mut lines = text.lines();
        if lines.next() != Some(KEY_HEADER) {
            return Err(IdentityError::BadKeyFile(key_path));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        let hex_line = lines.next().unwrap_or_default().trim();
        hex::decode_to_slice(hex_line, seed.as_mut())
            .map_err(|_| IdentityError::BadKeyFile(key_path.clone()))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(IdentityError::BadKeyFile(key_path));
        }
        Ok(Self::from_seed(&seed))
    }
}

/// Reads a public key from a hex string or from a file holding one (an `identity.pub`, or an
/// identity directory).
pub fn read_node_id(spec: &str) -> Result<NodeId, IdentityError> {
    if let Ok(id) = NodeId::from_hex(spec) {
        return Ok(id);
    }
    let path = Path::new(spec);
    let path = if path.is_dir() {
        path.join(PUB_FILE)
    } else {
        path.to_path_buf()
    };
    let text = read_small(&path, MAX_IDENTITY_FILE)?;
    NodeId::from_hex(&text)
}

fn read_small(path: &Path, max: u64) -> Result<String, IdentityError> {
    crate::fsread::read_bounded_to_string(path, max).map_err(|e| match e {
        ReadError::Io(source) => IdentityError::Io {
            path: path.to_path_buf(),
            source,
        },
        ReadError::TooLarge { .. } => IdentityError::TooLarge(path.to_path_buf()),
        other => IdentityError::Read {
            path: path.to_path_buf(),
            source: other,
        },
    })
}

/// Creates a directory (and parents) with mode 0700 on Unix.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes a new file with mode 0600 (failing if it exists), syncing it to disk.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_files_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = IdentityKey::generate(&mut rand::rngs::OsRng);
        let d = dir.path().join("node");
        key.write_to_dir(&d).unwrap();
        let back = IdentityKey::read_from(&d).unwrap();
        assert_eq!(back.node_id(), key.node_id());
        assert_eq!(read_node_id(d.to_str().unwrap()).unwrap(), key.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            key.write_to_dir(&d),
            Err(IdentityError::Exists(_))
        ));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = IdentityKey::from_seed(&[7u8; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"));
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn garbage_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "CONCLAVE IDENTITY KEY v1\nzz\n").unwrap();
        assert!(matches!(
            IdentityKey::read_from(&p),
            Err(IdentityError::BadKeyFile(_))
        ));
        std::fs::write(&p, vec![b'a'; 10_000]).unwrap();
        assert!(matches!(
            IdentityKey::read_from(&p),
            Err(IdentityError::TooLarge(_))
        ));
    }
}
