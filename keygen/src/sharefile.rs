//! The encrypted share file.
//!
//! ```text
//! magic      "conclave-share\n"                      15 bytes
//! version    u16 big-endian (1: passphrase, 2: keystore)
//! header     u32 big-endian length + postcard header   (public: group, epoch, KDF or keystore, ...)
//! sealed     u32 big-endian length + AEAD(KeyPackage), AAD = all bytes above
//! checksum   SHA-256 of all bytes above                32 bytes
//! ```
//!
//! Format 1: the key comes from Argon2id over the share's own passphrase with the header's
//! salt and parameters (XChaCha20-Poly1305); the header holds a key-check value so a wrong
//! passphrase is told apart from tampering. Format 2: the file is sealed with HPKE to the
//! node keystore's X25519 key ([`crate::keystore`]); the header holds the keystore's public
//! key and the encapsulated key, so opening it costs one X25519 operation, not an Argon2id.
//! In both, the unkeyed checksum tells accidental corruption and truncation apart, and the
//! AEAD tag is what actually protects the share: the other checks only make errors precise.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use conclave_protocol::{GroupName, NodeId, ReadError};
use frost_ed25519 as frost;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keystore::{Aead2, Kdf, Kem, Keystore, KeystoreKey};
use crate::secret::Passphrase;

const MAGIC: &[u8; 15] = b"conclave-share\n";
/// Format 1: sealed under the share's passphrase (Argon2id).
const FORMAT_PASSPHRASE: u16 = 1;
/// Format 2: sealed with HPKE to the node keystore.
const FORMAT_KEYSTORE: u16 = 2;
/// HPKE `info` of share files sealed to a keystore.
const HPKE_INFO: &[u8] = b"conclave-share v2";
/// Share files are well under 1 KiB; refuse anything over 64 KiB before reading it.
pub const MAX_SHARE_FILE_LEN: u64 = 64 * 1024;
const MAX_HEADER_LEN: usize = 4096;
const MAX_SEALED_LEN: usize = 16 * 1024;
const CHECKSUM_LEN: usize = 32;
const KEY_CHECK_CONTEXT: &[u8] = b"conclave-share key check v1";

/// Argon2id parameters, stored in the header so files stay readable when defaults change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    /// Production strength: 64 MiB, 3 passes, 1 lane (about 0.3 s on a 2-core machine).
    pub fn standard<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::with_cost(rng, 64 * 1024, 3)
    }

    /// Light parameters for dev-mode demos and tests (8 MiB, 1 pass). Never for real keys.
    pub fn light<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::with_cost(rng, 8 * 1024, 1)
    }

    fn with_cost<R: RngCore + CryptoRng>(rng: &mut R, memory_kib: u32, iterations: u32) -> Self {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        Self {
            memory_kib,
            iterations,
            parallelism: 1,
            salt,
        }
    }

    /// Bounds that keep a hostile file from making us allocate or spin without limit
    /// (at most 1 GiB of memory, 64 passes, 16 lanes).
    fn in_range(&self) -> bool {
        (8..=1024 * 1024).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=16).contains(&self.parallelism)
    }

    pub(crate) fn derive(
        &self,
        passphrase: &Passphrase,
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; 32]), ShareErrorKind> {
        if !self.in_range() {
            return Err(ShareErrorKind::KdfOutOfRange);
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(64))
            .map_err(|_| ShareErrorKind::KdfOutOfRange)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 64]);
        argon
            .hash_password_into(passphrase.expose(), &self.salt, out.as_mut())
            .map_err(|_| ShareErrorKind::KdfOutOfRange)?;
        let mut key = Zeroizing::new([0u8; 32]);
        let mut check_input = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(out.get(..32).ok_or(ShareErrorKind::KdfOutOfRange)?);
        check_input.copy_from_slice(out.get(32..).ok_or(ShareErrorKind::KdfOutOfRange)?);
        let mut h = Sha256::new();
        h.update(KEY_CHECK_CONTEXT);
        h.update(check_input.as_ref());
        Ok((key, h.finalize().into()))
    }
}

/// The public part of a share file: readable without the passphrase, authenticated by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareHeader {
    pub group: GroupName,
    pub epoch: u64,
    pub threshold: u16,
    /// Identity key of the node the share belongs to.
    pub owner: NodeId,
    /// FROST identifier (serialized).
    pub identifier: [u8; 32],
    pub group_public_key: [u8; 32],
    /// Hash of the group manifest the share was made with.
    pub manifest_hash: [u8; 32],
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// How the share is encrypted.
    pub protection: Protection,
}

/// How a share file is encrypted (its format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protection {
    /// Format 1: under the share's own passphrase.
    Passphrase {
        kdf: KdfParams,
        nonce: [u8; 24],
        key_check: [u8; 32],
    },
    /// Format 2: to the node keystore `keystore`; `enc` is the HPKE encapsulated key.
    Keystore {
        keystore: KeystoreKey,
        enc: [u8; 32],
    },
}

impl Protection {
    /// Format 1 with these Argon2id parameters (nonce and key check are set when sealing).
    pub fn passphrase(kdf: KdfParams) -> Self {
        Self::Passphrase {
            kdf,
            nonce: [0; 24],
            key_check: [0; 32],
        }
    }
}

impl ShareHeader {
    /// The Argon2id parameters of a format-1 file.
    pub fn kdf(&self) -> Option<&KdfParams> {
        match &self.protection {
            Protection::Passphrase { kdf, .. } => Some(kdf),
            Protection::Keystore { .. } => None,
        }
    }

    /// The Argon2id parameters of a format-1 file, to change (a fresh salt).
    pub fn kdf_mut(&mut self) -> Option<&mut KdfParams> {
        match &mut self.protection {
            Protection::Passphrase { kdf, .. } => Some(kdf),
            Protection::Keystore { .. } => None,
        }
    }

    /// The keystore a format-2 file is sealed to.
    pub fn keystore(&self) -> Option<KeystoreKey> {
        match &self.protection {
            Protection::Keystore { keystore, .. } => Some(*keystore),
            Protection::Passphrase { .. } => None,
        }
    }

    fn common(&self) -> Common {
        Common {
            group: self.group.clone(),
            epoch: self.epoch,
            threshold: self.threshold,
            owner: self.owner,
            identifier: self.identifier,
            group_public_key: self.group_public_key,
            manifest_hash: self.manifest_hash,
            created_at: self.created_at,
        }
    }

    fn from_common(c: Common, protection: Protection) -> Self {
        Self {
            group: c.group,
            epoch: c.epoch,
            threshold: c.threshold,
            owner: c.owner,
            identifier: c.identifier,
            group_public_key: c.group_public_key,
            manifest_hash: c.manifest_hash,
            created_at: c.created_at,
            protection,
        }
    }
}

/// The fields both formats share, in their on-disk order.
#[derive(Serialize, Deserialize)]
struct Common {
    group: GroupName,
    epoch: u64,
    threshold: u16,
    owner: NodeId,
    identifier: [u8; 32],
    group_public_key: [u8; 32],
    manifest_hash: [u8; 32],
    created_at: u64,
}

/// The on-disk header of format 1.
#[derive(Serialize, Deserialize)]
struct HeaderV1 {
    common: Common,
    kdf: KdfParams,
    nonce: [u8; 24],
    key_check: [u8; 32],
}

/// The on-disk header of format 2.
#[derive(Serialize, Deserialize)]
struct HeaderV2 {
    common: Common,
    keystore: KeystoreKey,
    enc: [u8; 32],
}

/// The keys a node opens its share files with: the keystore (format 2) and, for files not
/// yet migrated, a passphrase (format 1).
#[derive(Clone, Copy, Default)]
pub struct Keys<'a> {
    pub passphrase: Option<&'a Passphrase>,
    pub keystore: Option<&'a Keystore>,
}

/// A decrypted share: header plus the FROST key package (zeroized on drop by frost).
pub struct ShareFile {
    pub header: ShareHeader,
    pub key_package: frost::keys::KeyPackage,
}

impl std::fmt::Debug for ShareFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFile")
            .field("header", &self.header)
            .field("key_package", &"[redacted]")
            .finish()
    }
}

/// A share-file failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct ShareFileError {
    pub path: PathBuf,
    pub kind: ShareErrorKind,
}

/// What went wrong with a share file. Each kind is distinct so operators know what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareErrorKind {
    #[error("cannot access the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a conclave share file")]
    NotAShareFile,
    #[error("share file format version {0} is not supported by this build")]
    UnsupportedVersion(u16),
    #[error("file is truncated ({actual} bytes, expected {expected})")]
    Truncated { expected: usize, actual: usize },
    #[error(
        "file is larger than a share file can be ({MAX_SHARE_FILE_LEN} bytes): check the path"
    )]
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
    #[error("decrypted share is malformed")]
    MalformedPayload,
    #[error("share does not belong to this header (identifier, group key or threshold differ), or its secret is not its verifying share's")]
    Inconsistent,
    #[error("could not encrypt the share")]
    Encrypt,
    #[error("{0} already exists; refusing to overwrite a share file")]
    Exists(PathBuf),
    #[error("sealed to a node keystore ({0}), and no keystore is configured")]
    NeedsKeystore(KeystoreKey),
    #[error("sealed to keystore {file}, not to this node's keystore {mine}")]
    OtherKeystore {
        file: KeystoreKey,
        mine: KeystoreKey,
    },
    #[error(
        "encrypted under its own passphrase (format 1), and no passphrase is configured for it"
    )]
    NeedsPassphrase,
}

/// Why the frame of a share file or keystore is not right (before any key is used).
#[derive(Debug)]
pub(crate) enum ContainerError {
    WrongMagic,
    Truncated { expected: usize, actual: usize },
    TooLarge,
    Corrupted,
    Malformed,
}

impl From<ContainerError> for ShareErrorKind {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::WrongMagic => Self::NotAShareFile,
            ContainerError::Truncated { expected, actual } => Self::Truncated { expected, actual },
            ContainerError::TooLarge => Self::TooLarge,
            ContainerError::Corrupted => Self::Corrupted,
            ContainerError::Malformed => Self::MalformedHeader,
        }
    }
}

/// The parts of a checked frame.
pub(crate) struct Container<'a> {
    pub version: u16,
    pub header: &'a [u8],
    /// Everything before the sealed part (the AEAD's associated data).
    pub aad: &'a [u8],
    pub sealed: &'a [u8],
}

/// Checks the frame shared by share files and keystores: magic, version, length-prefixed
/// header and sealed part, SHA-256 checksum; every length is bounded before it is used.
pub(crate) fn container<'a>(
    bytes: &'a [u8],
    magic: &[u8],
    max_len: u64,
    max_header: usize,
    max_sealed: usize,
) -> Result<Container<'a>, ContainerError> {
    if bytes.len() as u64 > max_len {
        return Err(ContainerError::TooLarge);
    }
    let magic_len = magic.len();
    match bytes.get(..magic_len) {
        Some(m) if m == magic => {}
        Some(_) => return Err(ContainerError::WrongMagic),
        None if magic.starts_with(bytes) && !bytes.is_empty() => {
            return Err(ContainerError::Truncated {
                expected: magic_len,
                actual: bytes.len(),
            })
        }
        None => return Err(ContainerError::WrongMagic),
    }
    let truncated = |expected| ContainerError::Truncated {
        expected,
        actual: bytes.len(),
    };
    let version_at = magic_len;
    let version = bytes
        .get(version_at..version_at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or(truncated(version_at + 2))?;
    let header_len_at = version_at + 2;
    let header_len = be_u32(bytes, header_len_at).ok_or(truncated(header_len_at + 4))?;
    if header_len > max_header {
        return Err(ContainerError::Malformed);
    }
    let header_at = header_len_at + 4;
    let sealed_len_at = header_at + header_len;
    let sealed_len = be_u32(bytes, sealed_len_at).ok_or(truncated(sealed_len_at + 4))?;
    if sealed_len > max_sealed {
        return Err(ContainerError::Malformed);
    }
    let sealed_at = sealed_len_at + 4;
    let sum_at = sealed_at + sealed_len;
    let total = sum_at + CHECKSUM_LEN;
    if bytes.len() < total {
        return Err(truncated(total));
    }
    if bytes.len() > total {
        return Err(ContainerError::Corrupted);
    }
    let (body, sum) = bytes.split_at(sum_at);
    if Sha256::digest(body).as_slice() != sum {
        return Err(ContainerError::Corrupted);
    }
    Ok(Container {
        version,
        header: body
            .get(header_at..sealed_len_at)
            .ok_or(ContainerError::Malformed)?,
        aad: body.get(..sealed_len_at).ok_or(ContainerError::Malformed)?,
        sealed: body.get(sealed_at..).ok_or(ContainerError::Malformed)?,
    })
}

fn frame(version: u16, header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out
}

fn finish(mut out: Vec<u8>, sealed: &[u8]) -> Vec<u8> {
    out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
    out.extend_from_slice(sealed);
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) as usize)
}

impl ShareFile {
    /// Encrypts to bytes under `passphrase` (format 1, with the header's Argon2id parameters).
    pub fn seal<R: RngCore + CryptoRng>(
        key_package: &frost::keys::KeyPackage,
        mut header: ShareHeader,
        passphrase: &Passphrase,
        rng: &mut R,
    ) -> Result<Vec<u8>, ShareErrorKind> {
        let Protection::Passphrase { kdf, .. } = header.protection.clone() else {
            return Err(ShareErrorKind::Encrypt);
        };
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let (key, key_check) = kdf.derive(passphrase)?;
        header.protection = Protection::Passphrase {
            kdf,
            nonce,
            key_check,
        };
        let header_bytes = postcard::to_allocvec(&HeaderV1 {
            common: header.common(),
            kdf,
            nonce,
            key_check,
        })
        .map_err(|_| ShareErrorKind::Encrypt)?;
        let plain = Zeroizing::new(
            key_package
                .serialize()
                .map_err(|_| ShareErrorKind::Encrypt)?,
        );
        let out = frame(FORMAT_PASSPHRASE, &header_bytes);
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &out,
                },
            )
            .map_err(|_| ShareErrorKind::Encrypt)?;
        Ok(finish(out, &sealed))
    }

    /// Encrypts to bytes sealed to the node keystore `to` (format 2): no passphrase needed,
    /// only the keystore's public key.
    pub fn seal_to<R: RngCore + CryptoRng>(
        key_package: &frost::keys::KeyPackage,
        mut header: ShareHeader,
        to: &KeystoreKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, ShareErrorKind> {
        let pk = to.hpke()?;
        let (encapped, mut ctx) =
            hpke::setup_sender::<Aead2, Kdf, Kem, _>(&hpke::OpModeS::Base, &pk, HPKE_INFO, rng)
                .map_err(|_| ShareErrorKind::Encrypt)?;
        let mut enc = [0u8; 32];
        enc.copy_from_slice(&hpke::Serializable::to_bytes(&encapped));
        header.protection = Protection::Keystore { keystore: *to, enc };
        let header_bytes = postcard::to_allocvec(&HeaderV2 {
            common: header.common(),
            keystore: *to,
            enc,
        })
        .map_err(|_| ShareErrorKind::Encrypt)?;
        let plain = Zeroizing::new(
            key_package
                .serialize()
                .map_err(|_| ShareErrorKind::Encrypt)?,
        );
        let out = frame(FORMAT_KEYSTORE, &header_bytes);
        let sealed = ctx
            .seal(&plain, &out)
            .map_err(|_| ShareErrorKind::Encrypt)?;
        Ok(finish(out, &sealed))
    }

    /// Parses the public header and checks the file's integrity, without any key.
    /// Returns the header, the authenticated bytes (everything before the sealed part) and
    /// the sealed bytes.
    pub fn parse(bytes: &[u8]) -> Result<(ShareHeader, &[u8], &[u8]), ShareErrorKind> {
        let c = container(
            bytes,
            MAGIC,
            MAX_SHARE_FILE_LEN,
            MAX_HEADER_LEN,
            MAX_SEALED_LEN,
        )?;
        let header = match c.version {
            FORMAT_PASSPHRASE => {
                let h: HeaderV1 =
                    postcard::from_bytes(c.header).map_err(|_| ShareErrorKind::MalformedHeader)?;
                ShareHeader::from_common(
                    h.common,
                    Protection::Passphrase {
                        kdf: h.kdf,
                        nonce: h.nonce,
                        key_check: h.key_check,
                    },
                )
            }
            FORMAT_KEYSTORE => {
                let h: HeaderV2 =
                    postcard::from_bytes(c.header).map_err(|_| ShareErrorKind::MalformedHeader)?;
                ShareHeader::from_common(
                    h.common,
                    Protection::Keystore {
                        keystore: h.keystore,
                        enc: h.enc,
                    },
                )
            }
            other => return Err(ShareErrorKind::UnsupportedVersion(other)),
        };
        Ok((header, c.aad, c.sealed))
    }

    /// Decrypts bytes of a format-1 file with its passphrase.
    pub fn open(bytes: &[u8], passphrase: &Passphrase) -> Result<Self, ShareErrorKind> {
        Self::open_with(
            bytes,
            Keys {
                passphrase: Some(passphrase),
                keystore: None,
            },
        )
    }

    /// Decrypts bytes of either format: format 2 with the keystore, format 1 with the
    /// passphrase.
    pub fn open_with(bytes: &[u8], keys: Keys<'_>) -> Result<Self, ShareErrorKind> {
        let (header, aad, sealed) = Self::parse(bytes)?;
        let plain = match &header.protection {
            Protection::Passphrase {
                kdf,
                nonce,
                key_check,
            } => {
                let passphrase = keys.passphrase.ok_or(ShareErrorKind::NeedsPassphrase)?;
                let (key, check) = kdf.derive(passphrase)?;
                if check != *key_check {
                    return Err(ShareErrorKind::WrongPassphrase);
                }
                let cipher = XChaCha20Poly1305::new(key.as_ref().into());
                Zeroizing::new(
                    cipher
                        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
                        .map_err(|_| ShareErrorKind::Tampered)?,
                )
            }
            Protection::Keystore { keystore, enc } => {
                let ks = keys
                    .keystore
                    .ok_or(ShareErrorKind::NeedsKeystore(*keystore))?;
                if ks.public_key() != *keystore {
                    return Err(ShareErrorKind::OtherKeystore {
                        file: *keystore,
                        mine: ks.public_key(),
                    });
                }
                let encapped =
                    <<Kem as hpke::Kem>::EncappedKey as hpke::Deserializable>::from_bytes(enc)
                        .map_err(|_| ShareErrorKind::MalformedHeader)?;
                let mut ctx = hpke::setup_receiver::<Aead2, Kdf, Kem>(
                    &hpke::OpModeR::Base,
                    ks.secret(),
                    &encapped,
                    HPKE_INFO,
                )
                .map_err(|_| ShareErrorKind::Tampered)?;
                Zeroizing::new(
                    ctx.open(sealed, aad)
                        .map_err(|_| ShareErrorKind::Tampered)?,
                )
            }
        };
        let key_package = frost::keys::KeyPackage::deserialize(&plain)
            .map_err(|_| ShareErrorKind::MalformedPayload)?;
        // The signing share must be the secret of its own verifying share: a format-2 file can
        // be written by anyone who knows the keystore's public key, and a forged one copying
        // the public parts of the real share would otherwise pass for it.
        let matches_own_key = frost::keys::VerifyingShare::from(*key_package.signing_share())
            == *key_package.verifying_share();
        let consistent = key_package.identifier().serialize().as_slice() == header.identifier
            && key_package.verifying_key().serialize().ok().as_deref()
                == Some(&header.group_public_key[..])
            && *key_package.min_signers() == header.threshold
            && matches_own_key;
        if !consistent {
            return Err(ShareErrorKind::Inconsistent);
        }
        Ok(Self {
            header,
            key_package,
        })
    }

    /// Reads and decrypts a share file of either format.
    pub fn read_with(path: &Path, keys: Keys<'_>) -> Result<Self, ShareFileError> {
        let bytes = read_bounded(path)?;
        Self::open_with(&bytes, keys).map_err(|kind| ShareFileError {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// Encrypts and writes a new share file sealed to the keystore `to` (format 2),
    /// atomically with mode 0600. Refuses to replace an existing file unless `replace` is set.
    pub fn write_to<R: RngCore + CryptoRng>(
        path: &Path,
        key_package: &frost::keys::KeyPackage,
        header: ShareHeader,
        to: &KeystoreKey,
        replace: bool,
        rng: &mut R,
    ) -> Result<(), ShareFileError> {
        Self::write_sealed(path, replace, rng, |rng| {
            Self::seal_to(key_package, header, to, rng)
        })
    }

    /// Refuses an existing file unless `replace`, seals with `seal`, writes atomically.
    fn write_sealed<R: RngCore + CryptoRng>(
        path: &Path,
        replace: bool,
        rng: &mut R,
        seal: impl FnOnce(&mut R) -> Result<Vec<u8>, ShareErrorKind>,
    ) -> Result<(), ShareFileError> {
        let err = |kind| ShareFileError {
            path: path.to_path_buf(),
            kind,
        };
        if !replace && path.exists() {
            return Err(err(ShareErrorKind::Exists(path.to_path_buf())));
        }
        let bytes = seal(rng).map_err(err)?;
        write_atomic(path, &bytes, rng).map_err(|e| err(ShareErrorKind::Io(e)))
    }

    /// Reads and decrypts a share file of format 1 with its passphrase.
    pub fn read(path: &Path, passphrase: &Passphrase) -> Result<Self, ShareFileError> {
        Self::read_with(
            path,
            Keys {
                passphrase: Some(passphrase),
                keystore: None,
            },
        )
    }

    /// Reads only the public header (integrity-checked, not authenticated).
    pub fn inspect(path: &Path) -> Result<ShareHeader, ShareFileError> {
        let bytes = read_bounded(path)?;
        Self::parse(&bytes)
            .map(|(h, _, _)| h)
            .map_err(|kind| ShareFileError {
                path: path.to_path_buf(),
                kind,
            })
    }

    /// Encrypts and writes a new share file atomically (temp file, fsync, rename, fsync dir)
    /// with mode 0600. Refuses to replace an existing file unless `replace` is set.
    pub fn write<R: RngCore + CryptoRng>(
        path: &Path,
        key_package: &frost::keys::KeyPackage,
        header: ShareHeader,
        passphrase: &Passphrase,
        replace: bool,
        rng: &mut R,
    ) -> Result<(), ShareFileError> {
        Self::write_sealed(path, replace, rng, |rng| {
            Self::seal(key_package, header, passphrase, rng)
        })
    }
}

/// Reads a share file through [`conclave_protocol::read_bounded`]: a FIFO, a device or a file
/// over [`MAX_SHARE_FILE_LEN`] is refused before any byte is read.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ShareFileError> {
    conclave_protocol::read_bounded(path, MAX_SHARE_FILE_LEN).map_err(|e| ShareFileError {
        path: path.to_path_buf(),
        kind: match e {
            ReadError::Io(e) => ShareErrorKind::Io(e),
            ReadError::TooLarge { .. } => ShareErrorKind::TooLarge,
            other => ShareErrorKind::Read(other),
        },
    })
}

/// Writes `bytes` to `path` atomically with mode 0600: a temp file in the same directory,
/// fsync, rename over the target, fsync of the directory. A crash leaves either the old file
/// or the new one, never a partial file under the target name.
pub fn write_atomic<R: RngCore>(path: &Path, bytes: &[u8], rng: &mut R) -> std::io::Result<()> {
    let (dir, name, tmp) = write_temp(path, bytes, rng)?;
    let result = std::fs::rename(&tmp, path).and_then(|()| std::fs::File::open(&dir)?.sync_all());
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if result.is_ok() {
        remove_stale_temps(&dir, &name);
    }
    result
}

/// Like [`write_atomic`], but never replaces an existing file (two writers at once: one
/// wins, the other gets `AlreadyExists`): the complete temp file is hard-linked to `path`.
pub fn write_new_atomic<R: RngCore>(path: &Path, bytes: &[u8], rng: &mut R) -> std::io::Result<()> {
    let (dir, _, tmp) = write_temp(path, bytes, rng)?;
    let result =
        std::fs::hard_link(&tmp, path).and_then(|()| std::fs::File::open(&dir)?.sync_all());
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Writes `bytes` to a new temp file (mode 0600, fsynced) beside `path`; returns the
/// directory, the file name and the temp file's path. Nothing is left on failure.
fn write_temp<R: RngCore>(
    path: &Path,
    bytes: &[u8],
    rng: &mut R,
) -> std::io::Result<(PathBuf, String, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rng.next_u64()));
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((dir, name, tmp))
}

/// How old a leftover temp file of [`write_atomic`] must be before a later write of the same
/// file removes it: far older than any write in progress takes.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `.NAME.tmp-*` files in `dir` older than [`STALE_TEMP_AGE`]: what a process killed
/// between creating its temp file and renaming it left behind (encrypted, mode 0600, but
/// clutter that grows with every crash). Best effort: a failure changes nothing.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in entries.flatten().take(10_000) {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.len() != 16 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dealer::{deal, NewMember};

    #[test]
    fn a_later_write_removes_temp_files_a_killed_writer_left_but_not_fresh_ones() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("p1.share");
        let stale = d.path().join(".p1.share.tmp-00000000000000aa");
        let fresh = d.path().join(".p1.share.tmp-00000000000000bb");
        let other = d.path().join(".p2.share.tmp-00000000000000cc");
        for p in [&stale, &fresh, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&stale, &other] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        write_atomic(&target, b"new", &mut rand::rngs::OsRng).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!stale.exists(), "an hour-old temp of this file is removed");
        assert!(
            fresh.exists(),
            "a temp that may be another write in progress stays"
        );
        assert!(
            other.exists(),
            "another file's temp is not this write's business"
        );
    }
    use conclave_protocol::IdentityKey;

    fn sample() -> (frost::keys::KeyPackage, ShareHeader) {
        let mut rng = rand::rngs::OsRng;
        let members: Vec<NewMember> = (0..3)
            .map(|i| NewMember {
                name: format!("p{i}"),
                node_id: IdentityKey::generate(&mut rng).node_id(),
                address: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        let (manifest, shares) = deal(GroupName::new("g").unwrap(), 2, &members, &mut rng).unwrap();
        let share = shares.into_iter().next().unwrap();
        let header = share.header(&manifest, KdfParams::light(&mut rng)).unwrap();
        (share.key_package, header)
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned())
    }

    #[test]
    fn round_trip() {
        let (kp, header) = sample();
        let bytes = ShareFile::seal(
            &kp,
            header.clone(),
            &pass("correct horse"),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let opened = ShareFile::open(&bytes, &pass("correct horse")).unwrap();
        assert_eq!(opened.key_package, kp);
        assert_eq!(opened.header.group, header.group);
        assert!(format!("{opened:?}").contains("[redacted]"));
    }

    #[test]
    fn a_share_sealed_to_a_keystore_opens_with_it_only() {
        let (kp, header) = sample();
        let mut rng = rand::rngs::OsRng;
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            Keystore::create(
                &d.path().join(name),
                header.owner,
                &pass("node pass"),
                KdfParams::light(&mut rand::rngs::OsRng),
                &mut rand::rngs::OsRng,
            )
            .unwrap()
        };
        let (mine, other) = (mk("a"), mk("b"));
        let header_v2 = header.clone();
        let bytes = ShareFile::seal_to(&kp, header.clone(), &mine.public_key(), &mut rng).unwrap();
        let keys = Keys {
            passphrase: None,
            keystore: Some(&mine),
        };
        let opened = ShareFile::open_with(&bytes, keys).unwrap();
        assert_eq!(opened.key_package, kp);
        assert_eq!(opened.header.keystore(), Some(mine.public_key()));
        assert_eq!(opened.header.group, header.group);
        assert!(matches!(
            ShareFile::open(&bytes, &pass("node pass")),
            Err(ShareErrorKind::NeedsKeystore(_))
        ));
        assert!(matches!(
            ShareFile::open_with(
                &bytes,
                Keys {
                    passphrase: None,
                    keystore: Some(&other)
                }
            ),
            Err(ShareErrorKind::OtherKeystore { .. })
        ));
        // A format-1 file next to it needs its passphrase, not the keystore.
        let v1 = ShareFile::seal(&kp, header, &pass("pw"), &mut rng).unwrap();
        assert!(matches!(
            ShareFile::open_with(&v1, keys),
            Err(ShareErrorKind::NeedsPassphrase)
        ));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(ShareFile::open_with(&b, keys).is_err(), "byte {i}");
        }
        // A forged share (anyone may seal to the public key) copying the real share's public
        // parts with a secret of its own is refused.
        let other = frost::keys::SigningShare::new(curve25519_dalek::Scalar::random(&mut rng));
        let forged = frost::keys::KeyPackage::new(
            *kp.identifier(),
            other,
            *kp.verifying_share(),
            *kp.verifying_key(),
            *kp.min_signers(),
        );
        let fake =
            ShareFile::seal_to(&forged, header_v2.clone(), &mine.public_key(), &mut rng).unwrap();
        assert!(matches!(
            ShareFile::open_with(&fake, keys),
            Err(ShareErrorKind::Inconsistent)
        ));
        // Re-sealed with a recomputed checksum: the AEAD still refuses it.
        let mut b = bytes.clone();
        let sum_at = b.len() - CHECKSUM_LEN;
        b[sum_at - 3] ^= 0x40;
        let sum: [u8; 32] = Sha256::digest(&b[..sum_at]).into();
        b[sum_at..].copy_from_slice(&sum);
        assert!(matches!(
            ShareFile::open_with(&b, keys),
            Err(ShareErrorKind::Tampered)
        ));
    }

    #[test]
    fn wrong_passphrase_is_named() {
        let (kp, header) = sample();
        let bytes = ShareFile::seal(&kp, header, &pass("right"), &mut rand::rngs::OsRng).unwrap();
        assert!(matches!(
            ShareFile::open(&bytes, &pass("wrong")),
            Err(ShareErrorKind::WrongPassphrase)
        ));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (kp, header) = sample();
        let bytes = ShareFile::seal(&kp, header, &pass("pw"), &mut rand::rngs::OsRng).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let err = ShareFile::open(&b, &pass("pw")).unwrap_err();
            // The magic is checked first, then lengths; anywhere else the checksum catches it.
            assert!(
                matches!(
                    err,
                    ShareErrorKind::Corrupted
                        | ShareErrorKind::NotAShareFile
                        | ShareErrorKind::Truncated { .. }
                        | ShareErrorKind::MalformedHeader
                ),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn tampering_with_checksum_recomputed_fails_authentication() {
        let (kp, header) = sample();
        let mut bytes = ShareFile::seal(&kp, header, &pass("pw"), &mut rand::rngs::OsRng).unwrap();
        let sum_at = bytes.len() - CHECKSUM_LEN;
        bytes[sum_at - 5] ^= 0x80; // inside the ciphertext
        let sum: [u8; 32] = Sha256::digest(&bytes[..sum_at]).into();
        bytes[sum_at..].copy_from_slice(&sum);
        assert!(matches!(
            ShareFile::open(&bytes, &pass("pw")),
            Err(ShareErrorKind::Tampered)
        ));
    }

    #[test]
    fn truncation_is_named() {
        let (kp, header) = sample();
        let bytes = ShareFile::seal(&kp, header, &pass("pw"), &mut rand::rngs::OsRng).unwrap();
        for cut in 1..bytes.len() {
            let err = ShareFile::open(&bytes[..cut], &pass("pw")).unwrap_err();
            assert!(
                matches!(err, ShareErrorKind::Truncated { .. }),
                "cut {cut}: {err:?}"
            );
        }
        assert!(matches!(
            ShareFile::open(&[], &pass("pw")),
            Err(ShareErrorKind::NotAShareFile)
        ));
    }

    #[test]
    fn files_are_written_atomically_with_private_mode_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0.share");
        let (kp, header) = sample();
        ShareFile::write(
            &path,
            &kp,
            header.clone(),
            &pass("pw"),
            false,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert!(matches!(
            ShareFile::write(
                &path,
                &kp,
                header,
                &pass("pw"),
                false,
                &mut rand::rngs::OsRng
            )
            .unwrap_err()
            .kind,
            ShareErrorKind::Exists(_)
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let err = ShareFile::read(&path, &pass("nope")).unwrap_err();
        assert!(
            err.to_string().contains("p0.share") && err.to_string().contains("wrong passphrase")
        );
        assert_eq!(ShareFile::inspect(&path).unwrap().group.as_str(), "g");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let (kp, mut header) = sample();
        if let Protection::Passphrase { kdf, .. } = &mut header.protection {
            kdf.memory_kib = u32::MAX;
        }
        assert!(matches!(
            ShareFile::seal(&kp, header, &pass("pw"), &mut rand::rngs::OsRng),
            Err(ShareErrorKind::KdfOutOfRange)
        ));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = ShareFile::parse(&bytes);
        }
    }
}
