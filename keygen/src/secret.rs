//! Small secret-holding types: zeroized on drop, `[redacted]` when printed.

use std::fmt;
use zeroize::Zeroizing;

/// A passphrase protecting a share file.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Takes ownership of the text; it is wiped when the passphrase is dropped.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// Reads a passphrase from the first line of a file's bytes (trailing newline removed).
    pub fn from_file_bytes(bytes: Zeroizing<Vec<u8>>) -> Option<Self> {
        let text = std::str::from_utf8(&bytes).ok()?;
        let line = text.lines().next().unwrap_or_default();
        Some(Self::new(line.to_owned()))
    }

    /// The passphrase bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The passphrase text (for strength checks).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.0.chars().count()
    }

    /// True for the empty passphrase.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}
