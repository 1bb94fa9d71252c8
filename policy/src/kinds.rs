//! What a message is, recognised by the signer from the bytes themselves (a client's declared
//! kind is a claim): an SSHSIG signed-data blob (`sshsig:<namespace>`, PROTOCOL.sshsig), an SSH
//! user-authentication payload (`ssh-auth`, RFC 4252 §7), a key-transition statement
//! (`transition`), or anything else (`raw`).
//!
//! A message that starts like an SSHSIG blob or a transition statement but is not a
//! well-formed one is [`MessageKind::Invalid`]: it is never signed as `raw`, so a client allowed
//! only raw messages cannot get a signature that an SSH or transition verifier would accept.

use sha2::{Digest, Sha256};

const SSHSIG_MAGIC: &[u8] = b"SSHSIG";
const SSH_MSG_USERAUTH_REQUEST: u8 = 50;
/// Longest SSHSIG namespace accepted.
pub const MAX_NAMESPACE: usize = 64;

/// The kind of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Raw,
    /// An SSHSIG signed-data blob for this namespace (`git`, `file`, ...).
    SshSig {
        namespace: String,
    },
    /// An SSH public-key user-authentication payload.
    SshAuth {
        user: String,
        /// SHA-256 (hex, first 16 digits) of the public key blob.
        key_fingerprint: String,
    },
    /// A `conclave-key-transition/v1` statement.
    Transition,
    /// Starts like one of the above but is not well formed: refused.
    Invalid(&'static str),
}

impl MessageKind {
    /// The name policies use: `raw`, `sshsig:<namespace>`, `ssh-auth`, `transition`.
    pub fn name(&self) -> String {
        match self {
            MessageKind::Raw => "raw".into(),
            MessageKind::SshSig { namespace } => format!("sshsig:{namespace}"),
            MessageKind::SshAuth { .. } => "ssh-auth".into(),
            MessageKind::Transition => "transition".into(),
            MessageKind::Invalid(_) => "invalid".into(),
        }
    }
}

/// An SSH wire reader: `string` = u32 length + bytes, bounds checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn sshsig(message: &[u8]) -> MessageKind {
    let mut r = Reader(message.get(SSHSIG_MAGIC.len()..).unwrap_or_default());
    let parsed = (|| {
        let namespace = r.string()?;
        let _reserved = r.string()?;
        let hash_alg = r.string()?;
        let hash = r.string()?;
        Some((namespace, hash_alg, hash))
    })();
    let Some((namespace, hash_alg, hash)) = parsed else {
        return MessageKind::Invalid("a truncated SSHSIG blob");
    };
    if !r.is_empty() {
        return MessageKind::Invalid("trailing bytes after an SSHSIG blob");
    }
    let expected = match hash_alg {
        b"sha256" => 32,
        b"sha512" => 64,
        _ => return MessageKind::Invalid("an SSHSIG blob with an unknown hash algorithm"),
    };
    if hash.len() != expected {
        return MessageKind::Invalid("an SSHSIG blob whose hash has the wrong length");
    }
    let ok = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE
        && namespace.iter().all(|b| b.is_ascii_graphic() && *b != b':');
    match (ok, std::str::from_utf8(namespace)) {
        (true, Ok(ns)) => MessageKind::SshSig {
            namespace: ns.to_owned(),
        },
        _ => MessageKind::Invalid("an SSHSIG blob with an unprintable namespace"),
    }
}

/// An SSH user-authentication payload (RFC 4252 §7, and OpenSSH's host-bound variant), or
/// `None` when the message does not start like one. Once it starts like one (a non-empty
/// session identifier, then SSH_MSG_USERAUTH_REQUEST) it is either exactly a form this signer
/// recognises or [`MessageKind::Invalid`]: never `raw`, so a client allowed only raw messages
/// cannot get a signature that an SSH server would accept as a login.
fn ssh_auth(message: &[u8]) -> Option<MessageKind> {
    let mut r = Reader(message);
    let session = r.string()?;
    if session.is_empty() || r.byte()? != SSH_MSG_USERAUTH_REQUEST {
        return None;
    }
    Some(userauth(&mut r).unwrap_or(MessageKind::Invalid(
        "an SSH authentication payload of a form this signer does not accept",
    )))
}

fn userauth(r: &mut Reader<'_>) -> Option<MessageKind> {
    let user = r.string()?;
    let _service = r.string()?;
    let hostbound = match r.string()? {
        b"publickey" => false,
        b"publickey-hostbound-v00@openssh.com" => true,
        _ => return None,
    };
    if r.byte()? != 1 {
        return None;
    }
    let _alg = r.string()?;
    let key = r.string()?;
    if hostbound {
        let _server_host_key = r.string()?;
    }
    if !r.is_empty() {
        return None;
    }
    // Printable and unambiguous in an audit record: anything else becomes '?'.
    let user = String::from_utf8_lossy(user)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '?'
            }
        })
        .take(64)
        .collect();
    Some(MessageKind::SshAuth {
        user,
        key_fingerprint: hex::encode(Sha256::digest(key).get(..8).unwrap_or_default()),
    })
}

/// True if `message` starts like the to-be-signed part of an OpenSSH certificate (its first
/// string is a `*-cert-v01@openssh.com` key type): signing one with a group key that is an SSH
/// CA would issue a certificate.
fn ssh_certificate(message: &[u8]) -> bool {
    Reader(message)
        .string()
        .is_some_and(|t| t.ends_with(b"-cert-v01@openssh.com"))
}

/// The kind of `message`.
pub fn classify(message: &[u8]) -> MessageKind {
    if message.starts_with(SSHSIG_MAGIC) {
        return sshsig(message);
    }
    if message.starts_with(conclave_protocol::TRANSITION_PREFIX) {
        return match std::str::from_utf8(message) {
            Ok(_) => MessageKind::Transition,
            Err(_) => MessageKind::Invalid("a transition statement that is not text"),
        };
    }
    if ssh_certificate(message) {
        return MessageKind::Invalid("an SSH certificate to be signed");
    }
    ssh_auth(message).unwrap_or(MessageKind::Raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn sshsig_blob(ns: &[u8], alg: &[u8], hash_len: usize) -> Vec<u8> {
        let mut b = SSHSIG_MAGIC.to_vec();
        string(&mut b, ns);
        string(&mut b, b"");
        string(&mut b, alg);
        string(&mut b, &vec![7u8; hash_len]);
        b
    }

    #[test]
    fn sshsig_blobs_are_recognised_by_namespace_and_malformed_ones_refused() {
        assert_eq!(
            classify(&sshsig_blob(b"git", b"sha512", 64)).name(),
            "sshsig:git"
        );
        assert_eq!(
            classify(&sshsig_blob(b"file", b"sha256", 32)).name(),
            "sshsig:file"
        );
        for bad in [
            sshsig_blob(b"git", b"sha512", 32),
            sshsig_blob(b"git", b"md5", 16),
            sshsig_blob(b"", b"sha512", 64),
            sshsig_blob(b"g it", b"sha512", 64),
            [sshsig_blob(b"git", b"sha512", 64), vec![0]].concat(),
            b"SSHSIG".to_vec(),
            b"SSHSIG\xff\xff\xff\xff".to_vec(),
        ] {
            assert!(
                matches!(classify(&bad), MessageKind::Invalid(_)),
                "{:?}",
                classify(&bad)
            );
        }
    }

    #[test]
    fn an_ssh_userauth_payload_names_user_and_key() {
        let mut p = vec![];
        string(&mut p, &[9u8; 32]);
        p.push(SSH_MSG_USERAUTH_REQUEST);
        string(&mut p, b"deploy");
        string(&mut p, b"ssh-connection");
        string(&mut p, b"publickey");
        p.push(1);
        string(&mut p, b"ssh-ed25519");
        string(&mut p, b"key blob");
        match classify(&p) {
            MessageKind::SshAuth {
                user,
                key_fingerprint,
            } => {
                assert_eq!(user, "deploy");
                assert_eq!(key_fingerprint.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        // Shaped like one but not exactly a form the signer knows: invalid, never raw.
        let mut trailing = p.clone();
        trailing.push(0);
        assert!(matches!(classify(&trailing), MessageKind::Invalid(_)));
        // OpenSSH's host-bound variant (a server host key after the key blob) is ssh-auth.
        let mut hb = vec![];
        string(&mut hb, &[9u8; 32]);
        hb.push(SSH_MSG_USERAUTH_REQUEST);
        string(&mut hb, b"root");
        string(&mut hb, b"ssh-connection");
        string(&mut hb, b"publickey-hostbound-v00@openssh.com");
        hb.push(1);
        string(&mut hb, b"ssh-ed25519");
        string(&mut hb, b"group key blob");
        string(&mut hb, b"server host key blob");
        assert_eq!(classify(&hb).name(), "ssh-auth");
        // Other methods (hostbased, ...) are invalid.
        let mut hostbased = vec![];
        string(&mut hostbased, &[9u8; 32]);
        hostbased.push(SSH_MSG_USERAUTH_REQUEST);
        string(&mut hostbased, b"root");
        string(&mut hostbased, b"ssh-connection");
        string(&mut hostbased, b"hostbased");
        string(&mut hostbased, b"ssh-ed25519");
        assert!(matches!(classify(&hostbased), MessageKind::Invalid(_)));
        // A user name that would spoof the audit record's text is made harmless.
        let mut spoof = vec![];
        string(&mut spoof, &[9u8; 32]);
        spoof.push(SSH_MSG_USERAUTH_REQUEST);
        string(&mut spoof, "a key=0000\u{202e}".as_bytes());
        string(&mut spoof, b"ssh-connection");
        string(&mut spoof, b"publickey");
        spoof.push(1);
        string(&mut spoof, b"ssh-ed25519");
        string(&mut spoof, b"k");
        match classify(&spoof) {
            MessageKind::SshAuth { user, .. } => assert_eq!(user, "a?key?0000?"),
            other => panic!("{other:?}"),
        }
        // An OpenSSH certificate body is never signed as raw.
        let mut cert = vec![];
        string(&mut cert, b"ssh-ed25519-cert-v01@openssh.com");
        string(&mut cert, &[1u8; 32]);
        assert!(matches!(classify(&cert), MessageKind::Invalid(_)));
    }

    #[test]
    fn transition_statements_and_everything_else() {
        let mut t = conclave_protocol::TRANSITION_PREFIX.to_vec();
        t.extend_from_slice(b"old_group=a\n");
        assert_eq!(classify(&t), MessageKind::Transition);
        assert_eq!(classify(b"release 1.2.3 sha256 abcd"), MessageKind::Raw);
        assert_eq!(classify(b""), MessageKind::Raw);
        // Random bytes never panic.
        for i in 0..2000u32 {
            let bytes: Vec<u8> = (0..(i % 97)).map(|j| (i * 31 + j * 7) as u8).collect();
            let _ = classify(&bytes);
            let _ = classify(&[SSHSIG_MAGIC, &bytes].concat());
        }
    }
}
