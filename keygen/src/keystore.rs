//! The node keystore: one passphrase per node, one Argon2id derivation at start, however many
//! shares the node holds.
//!
//! ```text
//! magic      "conclave-keystore\n"                   18 bytes
//! version    u16 big-endian (1)
//! header     u32 big-endian length + postcard KeystoreHeader   (public: owner, public key, KDF)
//! sealed     u32 big-endian length + XChaCha20-Poly1305(X25519 secret), AAD = all bytes above
//! checksum   SHA-256 of all bytes above                32 bytes
//! ```
//!
//! The keystore holds an X25519 key pair, its secret encrypted under Argon2id of the node's
//! passphrase (the parameters of share files, kept in the header). A share file of format 2
//! ([`crate::sharefile`]) is sealed with HPKE (RFC 9180, X25519 / HKDF-SHA256 /
//! ChaCha20-Poly1305) to the keystore's public key: each file has its own key, encapsulated to
//! the keystore, so opening one share costs one X25519 operation instead of one Argon2id. A
//! share can be written for a node from its public key alone (the dealer, a ceremony member),
//! with no passphrase at hand. What a stolen disk, a stolen passphrase or both give an
//! attacker is argued in docs/THREAT-MODEL.md.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use conclave_protocol::{NodeId, ReadError};
use hpke::{Deserializable, Serializable};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::Passphrase;
use crate::sharefile::{container, write_atomic, ContainerError, KdfParams, ShareErrorKind};

pub(crate) type Kem = hpke::kem::X25519HkdfSha256;

// hpke's X25519 private key wraps x25519-dalek's StaticSecret, which is wiped on drop only
// with x25519-dalek's `zeroize` feature (`#[zeroize(drop)]`, turned on in the workspace
// manifest); that feature is also what makes it `Zeroize`, so this fails to build without it.
const _: fn() = || {
    fn has_the_zeroize_feature<T: zeroize::Zeroize>() {}
    has_the_zeroize_feature::<x25519_dalek::StaticSecret>();
};
pub(crate) type Kdf = hpke::kdf::HkdfSha256;
pub(crate) type Aead2 = hpke::aead::ChaCha20Poly1305;

const MAGIC: &[u8; 18] = b"conclave-keystore\n";
const FORMAT_VERSION: u16 = 1;
/// A keystore is under 512 bytes; anything over 16 KiB is refused before it is read.
pub const MAX_KEYSTORE_LEN: u64 = 16 * 1024;
const MAX_HEADER_LEN: usize = 2048;
const MAX_SEALED_LEN: usize = 1024;

/// A keystore's public key (X25519): what share files are sealed to. Printed as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeystoreKey(pub [u8; 32]);

impl KeystoreKey {
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut k).ok()?;
        <Kem as hpke::Kem>::PublicKey::from_bytes(&k).ok()?;
        Some(Self(k))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(self.0.get(..4).unwrap_or_default())
    }

    pub(crate) fn hpke(&self) -> Result<<Kem as hpke::Kem>::PublicKey, ShareErrorKind> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.0).map_err(|_| ShareErrorKind::Encrypt)
    }
}

impl std::fmt::Debug for KeystoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeystoreKey({})", self.to_hex())
    }
}

impl std::fmt::Display for KeystoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The public part of a keystore: readable without the passphrase, authenticated by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeystoreHeader {
    /// Identity key of the node the keystore belongs to.
    pub owner: NodeId,
    /// What share files for this node are sealed to.
    pub public_key: KeystoreKey,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub kdf: KdfParams,
    pub nonce: [u8; 24],
    pub key_check: [u8; 32],
}

/// An open keystore: its header and its X25519 secret (zeroized on drop, never printed).
pub struct Keystore {
    path: PathBuf,
    header: KeystoreHeader,
    secret: <Kem as hpke::Kem>::PrivateKey,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("path", &self.path)
            .field("public_key", &self.header.public_key)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// A keystore failure, naming the keystore file.
#[derive(Debug, thiserror::Error)]
#[error("keystore {}: {kind}", path.display())]
pub struct KeystoreError {
    pub path: PathBuf,
    pub kind: KeystoreErrorKind,
}

/// What went wrong with a keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreErrorKind {
    #[error("cannot access the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a conclave keystore")]
    NotAKeystore,
    #[error("keystore format version {0} is not supported by this build")]
    UnsupportedVersion(u16),
    #[error("file is truncated ({actual} bytes, expected {expected})")]
    Truncated { expected: usize, actual: usize },
    #[error("file is larger than a keystore can be ({MAX_KEYSTORE_LEN} bytes): check the path")]
    TooLarge,
    #[error(transparent)]
    Read(ReadError),
    #[error("file is corrupted (checksum mismatch): restore it from backup")]
    Corrupted,
    #[error("header is malformed")]
    MalformedHeader,
    #[error("key-derivation parameters are out of the accepted range")]
    KdfOutOfRange,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("authentication failed: the file was tampered with")]
    Tampered,
    #[error("the secret does not match the public key in the header")]
    Inconsistent,
    #[error("could not encrypt the keystore")]
    Encrypt,
    #[error(
        "already exists; refusing to overwrite a keystore (every share sealed to it would be lost)"
    )]
    Exists,
}

impl From<ContainerError> for KeystoreErrorKind {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::WrongMagic => Self::NotAKeystore,
            ContainerError::Truncated { expected, actual } => Self::Truncated { expected, actual },
            ContainerError::TooLarge => Self::TooLarge,
            ContainerError::Corrupted => Self::Corrupted,
            ContainerError::Malformed => Self::MalformedHeader,
        }
    }
}

fn kdf_error(e: ShareErrorKind) -> KeystoreErrorKind {
    match e {
        ShareErrorKind::KdfOutOfRange => KeystoreErrorKind::KdfOutOfRange,
        _ => KeystoreErrorKind::Encrypt,
    }
}

impl Keystore {
    /// A new keystore for `owner`, its secret sealed under `passphrase` with `kdf`, as bytes.
    fn seal<R: RngCore + CryptoRng>(
        header: &mut KeystoreHeader,
        secret: &<Kem as hpke::Kem>::PrivateKey,
        passphrase: &Passphrase,
        rng: &mut R,
    ) -> Result<Vec<u8>, KeystoreErrorKind> {
        rng.fill_bytes(&mut header.nonce);
        let (key, check) = header.kdf.derive(passphrase).map_err(kdf_error)?;
        header.key_check = check;
        let header_bytes =
            postcard::to_allocvec(&header).map_err(|_| KeystoreErrorKind::Encrypt)?;
        let mut raw = secret.to_bytes();
        let plain = Zeroizing::new(raw.to_vec());
        zeroize::Zeroize::zeroize(raw.as_mut_slice());
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&header_bytes);
        let sealed = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&header.nonce),
                Payload {
                    msg: &plain,
                    aad: &out,
                },
            )
            .map_err(|_| KeystoreErrorKind::Encrypt)?;
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&sealed);
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Creates a keystore at `path` (mode 0600, atomically); refuses to replace one.
    pub fn create<R: RngCore + CryptoRng>(
        path: &Path,
        owner: NodeId,
        passphrase: &Passphrase,
        kdf: KdfParams,
        rng: &mut R,
    ) -> Result<Self, KeystoreError> {
        let err = |kind| KeystoreError {
            path: path.to_path_buf(),
            kind,
        };
        if path.exists() {
            return Err(err(KeystoreErrorKind::Exists));
        }
        let (secret, public) = <Kem as hpke::Kem>::gen_keypair(rng);
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&public.to_bytes());
        let mut header = KeystoreHeader {
            owner,
            public_key: KeystoreKey(pk),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            kdf,
            nonce: [0; 24],
            key_check: [0; 32],
        };
        let bytes = Self::seal(&mut header, &secret, passphrase, rng).map_err(err)?;
        crate::sharefile::write_new_atomic(path, &bytes, rng).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeystoreErrorKind::Exists
            } else {
                KeystoreErrorKind::Io(e)
            })
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            header,
            secret,
        })
    }

    /// Parses the public header and checks integrity, without the passphrase. Returns the
    /// header, the authenticated bytes and the sealed secret.
    fn parse(bytes: &[u8]) -> Result<(KeystoreHeader, &[u8], &[u8]), KeystoreErrorKind> {
        let c = container(
            bytes,
            MAGIC,
            MAX_KEYSTORE_LEN,
            MAX_HEADER_LEN,
            MAX_SEALED_LEN,
        )?;
        if c.version != FORMAT_VERSION {
            return Err(KeystoreErrorKind::UnsupportedVersion(c.version));
        }
        let header: KeystoreHeader =
            postcard::from_bytes(c.header).map_err(|_| KeystoreErrorKind::MalformedHeader)?;
        Ok((header, c.aad, c.sealed))
    }

    /// The public header of keystore bytes, integrity-checked (what a fuzzer drives).
    pub fn parse_header(bytes: &[u8]) -> Result<KeystoreHeader, KeystoreErrorKind> {
        Self::parse(bytes).map(|(h, _, _)| h)
    }

    /// Decrypts keystore bytes read from `path`.
    pub fn open_bytes(
        path: &Path,
        bytes: &[u8],
        passphrase: &Passphrase,
    ) -> Result<Self, KeystoreError> {
        let err = |kind| KeystoreError {
            path: path.to_path_buf(),
            kind,
        };
        let (header, aad, sealed) = Self::parse(bytes).map_err(err)?;
        let (key, check) = header
            .kdf
            .derive(passphrase)
            .map_err(|e| err(kdf_error(e)))?;
        if check != header.key_check {
            return Err(err(KeystoreErrorKind::WrongPassphrase));
        }
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(key.as_ref().into())
                .decrypt(
                    XNonce::from_slice(&header.nonce),
                    Payload { msg: sealed, aad },
                )
                .map_err(|_| err(KeystoreErrorKind::Tampered))?,
        );
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(&plain)
            .map_err(|_| err(KeystoreErrorKind::Inconsistent))?;
        let public = <Kem as hpke::Kem>::sk_to_pk(&secret);
        if public.to_bytes().as_slice() != header.public_key.0 {
            return Err(err(KeystoreErrorKind::Inconsistent));
        }
        Ok(Self {
            path: path.to_path_buf(),
            header,
            secret,
        })
    }

    /// Reads and decrypts the keystore at `path` (one Argon2id derivation).
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, KeystoreError> {
        let bytes = read_bounded(path)?;
        Self::open_bytes(path, &bytes, passphrase)
    }

    /// Reads only the public header (integrity-checked, not authenticated).
    pub fn inspect(path: &Path) -> Result<KeystoreHeader, KeystoreError> {
        let bytes = read_bounded(path)?;
        Self::parse(&bytes)
            .map(|(h, _, _)| h)
            .map_err(|kind| KeystoreError {
                path: path.to_path_buf(),
                kind,
            })
    }

    /// Re-encrypts the keystore under `new` (fresh salt, same cost), atomically. The share
    /// files sealed to it are unchanged: they keep working.
    pub fn change_passphrase<R: RngCore + CryptoRng>(
        &self,
        new: &Passphrase,
        rng: &mut R,
    ) -> Result<(), KeystoreError> {
        let err = |kind| KeystoreError {
            path: self.path.clone(),
            kind,
        };
        let mut header = self.header.clone();
        rng.fill_bytes(&mut header.kdf.salt);
        let bytes = Self::seal(&mut header, &self.secret, new, rng).map_err(err)?;
        write_atomic(&self.path, &bytes, rng).map_err(|e| err(KeystoreErrorKind::Io(e)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &KeystoreHeader {
        &self.header
    }

    /// What shares for this node are sealed to.
    pub fn public_key(&self) -> KeystoreKey {
        self.header.public_key
    }

    pub(crate) fn secret(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.secret
    }

    /// The secret's bytes, for `conclave logs scan` to search for (zeroized on drop).
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut raw = self.secret.to_bytes();
        let out = Zeroizing::new(raw.to_vec());
        zeroize::Zeroize::zeroize(raw.as_mut_slice());
        out
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, KeystoreError> {
    conclave_protocol::read_bounded(path, MAX_KEYSTORE_LEN).map_err(|e| KeystoreError {
        path: path.to_path_buf(),
        kind: match e {
            ReadError::Io(e) => KeystoreErrorKind::Io(e),
            ReadError::TooLarge { .. } => KeystoreErrorKind::TooLarge,
            other => KeystoreErrorKind::Read(other),
        },
    })
}

/// The public key of a keystore named on a command line: 64 hex characters, or the path of a
/// keystore file (its header is read; no passphrase needed).
pub fn keystore_key(spec: &str) -> Result<KeystoreKey, String> {
    if let Some(k) = KeystoreKey::from_hex(spec) {
        return Ok(k);
    }
    Keystore::inspect(Path::new(spec))
        .map(|h| h.public_key)
        .map_err(|e| format!("{spec:?} is neither a keystore public key (64 hex characters) nor a readable keystore: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::IdentityKey;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned())
    }

    #[test]
    fn create_open_change_passphrase_and_refuse_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("keystore");
        let mut rng = rand::rngs::OsRng;
        let owner = IdentityKey::generate(&mut rng).node_id();
        let ks = Keystore::create(
            &path,
            owner,
            &pass("one"),
            KdfParams::light(&mut rng),
            &mut rng,
        )
        .unwrap();
        assert!(format!("{ks:?}").contains("[redacted]"));
        let again = Keystore::open(&path, &pass("one")).unwrap();
        assert_eq!(again.public_key(), ks.public_key());
        assert_eq!(Keystore::inspect(&path).unwrap().owner, owner);
        let wrong = Keystore::open(&path, &pass("two")).unwrap_err();
        assert!(matches!(wrong.kind, KeystoreErrorKind::WrongPassphrase));
        assert!(
            wrong.to_string().contains("keystore")
                && wrong.to_string().contains("wrong passphrase"),
            "{wrong}"
        );
        ks.change_passphrase(&pass("two"), &mut rng).unwrap();
        assert_eq!(
            Keystore::open(&path, &pass("two")).unwrap().public_key(),
            ks.public_key()
        );
        assert!(Keystore::open(&path, &pass("one")).is_err());
        assert!(matches!(
            Keystore::create(
                &path,
                owner,
                &pass("x"),
                KdfParams::light(&mut rng),
                &mut rng
            )
            .unwrap_err()
            .kind,
            KeystoreErrorKind::Exists
        ));
        assert_eq!(
            keystore_key(path.to_str().unwrap()).unwrap(),
            ks.public_key()
        );
        assert_eq!(
            keystore_key(&ks.public_key().to_hex()).unwrap(),
            ks.public_key()
        );
        assert!(keystore_key("nope").is_err());
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_detected() {
        let mut rng = rand::rngs::OsRng;
        let owner = IdentityKey::generate(&mut rng).node_id();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ks");
        Keystore::create(
            &path,
            owner,
            &pass("pw"),
            KdfParams::light(&mut rng),
            &mut rng,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                Keystore::open_bytes(&path, &b, &pass("pw")).is_err(),
                "byte {i}"
            );
        }
        for cut in (0..bytes.len()).step_by(11) {
            assert!(Keystore::open_bytes(&path, &bytes[..cut], &pass("pw")).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Keystore::parse(&bytes);
        }
    }
}
