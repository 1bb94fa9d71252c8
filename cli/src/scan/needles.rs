//! The forms a secret can take in a log line: what `conclave logs scan` searches for, and what
//! the leakage integration test (tests/tests/leakage.rs) asserts appears nowhere.
//!
//! Every form is the part of an encoding that depends on the secret alone, so that it is
//! found wherever the secret sits inside a longer encoded value: the hex of a key package
//! holds the hex of its share; a base64 blob holds the *inner* characters of the share's
//! base64 at one of three alignments (the byte offset of the share modulo 3); a Debug list
//! `[.., 7, 42, ..]` holds the share's numbers without the brackets.
//!
//! The needles are secret material themselves: each is held in a [`Zeroizing`] buffer
//! allocated once at its final size (no reallocation leaves a copy behind), and a [`Needle`]
//! prints only its encoding and length.

use std::fmt::{self, Write as _};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use zeroize::Zeroizing;

/// Shortest needle searched: a shorter one would match by chance in a large log (a
/// passphrase of a few characters, say). [`forms`] leaves such forms out.
pub const MIN_NEEDLE_LEN: usize = 8;

/// Indentation depths (4 spaces each) of the pretty Debug form (`{:#?}`) searched: a byte
/// list at top level, or nested in one or two structures.
const PRETTY_DEPTHS: [usize; 3] = [1, 2, 3];

/// How a secret was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Encoding {
    /// The bytes themselves.
    Raw,
    /// Lower-case hex.
    Hex,
    /// Upper-case hex.
    HexUpper,
    /// Standard base64 (`+/`), padded or not, at any byte offset inside a longer value.
    Base64,
    /// URL-safe base64 (`-_`), padded or not, at any byte offset.
    Base64Url,
    /// Rust `{:?}` of a byte slice, array or `Vec<u8>`: `1, 2, 3` (with or without the
    /// brackets, alone or inside a longer list).
    Debug,
    /// Rust `{:#?}` of bytes: one number per line.
    DebugPretty,
    /// Rust `{:x?}`, `{:02x?}`, `{:X?}`, `{:02X?}` of bytes: `a, 1f` / `0a, 1f`.
    DebugHex,
    /// Rust `{:?}` of a string (quotes, backslashes and control characters escaped), when it
    /// differs from the raw text.
    DebugStr,
}

impl Encoding {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Hex => "hex",
            Encoding::HexUpper => "HEX",
            Encoding::Base64 => "base64",
            Encoding::Base64Url => "base64url",
            Encoding::Debug => "debug",
            Encoding::DebugPretty => "debug-pretty",
            Encoding::DebugHex => "debug-hex",
            Encoding::DebugStr => "debug-str",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One form of a secret, to search for. Zeroized on drop; prints as its encoding and length.
pub struct Needle {
    encoding: Encoding,
    bytes: Zeroizing<Vec<u8>>,
}

impl Needle {
    /// How the secret is written in this form.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The bytes searched for (secret material: never print them).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false for a needle from [`forms`].
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Needle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Needle {{ encoding: {}, len: {}, bytes: [redacted] }}",
            self.encoding,
            self.bytes.len()
        )
    }
}

/// Every form of `secret` searched for, none shorter than [`MIN_NEEDLE_LEN`] and no two
/// alike: raw, hex (both cases), base64 and base64url (the inner part at each of the three
/// alignments, which a padded, unpadded or longer encoding all contain), and the Debug forms
/// (decimal, pretty, hex; and escaped text when `secret` is UTF-8 that escaping changes).
pub fn forms(secret: &[u8]) -> Vec<Needle> {
    let mut all: Vec<Needle> = Vec::new();
    let mut add = |encoding: Encoding, bytes: Zeroizing<Vec<u8>>| {
        if bytes.len() >= MIN_NEEDLE_LEN && !all.iter().any(|n| n.bytes() == bytes.as_slice()) {
            all.push(Needle { encoding, bytes });
        }
    };
    add(Encoding::Raw, Zeroizing::new(secret.to_vec()));
    add(Encoding::Hex, hex_form(secret, false));
    add(Encoding::HexUpper, hex_form(secret, true));
    for lead in 0..3 {
        add(
            Encoding::Base64,
            base64_inner(&STANDARD_NO_PAD, secret, lead),
        );
        add(
            Encoding::Base64Url,
            base64_inner(&URL_SAFE_NO_PAD, secret, lead),
        );
    }
    add(
        Encoding::Debug,
        list(secret, 5, ", ", "", |s, b| write!(s, "{b}")),
    );
    for depth in PRETTY_DEPTHS {
        let sep = format!(",\n{}", " ".repeat(4 * depth));
        add(
            Encoding::DebugPretty,
            list(secret, 5 + sep.len(), &sep, ",", |s, b| write!(s, "{b}")),
        );
    }
    add(
        Encoding::DebugHex,
        list(secret, 4, ", ", "", |s, b| write!(s, "{b:x}")),
    );
    add(
        Encoding::DebugHex,
        list(secret, 4, ", ", "", |s, b| write!(s, "{b:02x}")),
    );
    add(
        Encoding::DebugHex,
        list(secret, 4, ", ", "", |s, b| write!(s, "{b:X}")),
    );
    add(
        Encoding::DebugHex,
        list(secret, 4, ", ", "", |s, b| write!(s, "{b:02X}")),
    );
    if let Ok(s) = std::str::from_utf8(secret) {
        if let Some(escaped) = debug_str_inner(s) {
            add(Encoding::DebugStr, escaped);
        }
    }
    all
}

/// A freshly made string's bytes, moved (not copied) into a zeroizing buffer.
fn text(s: String) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(s.into_bytes())
}

/// Hex of `secret`, written into a buffer of its final size.
fn hex_form(secret: &[u8], upper: bool) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; 2 * secret.len()]);
    // The buffer has exactly the length hex needs.
    let _ = hex::encode_to_slice(secret, &mut out);
    if upper {
        out.make_ascii_uppercase();
    }
    out
}

/// The characters of the base64 of `secret` that depend on `secret` alone when it starts
/// `lead` bytes (0, 1 or 2) after a 3-byte boundary of a longer encoded value: the first
/// character that holds no bit of the bytes before it up to the last one that holds no bit
/// after it (padding bits included). Whatever surrounds the secret, its encoding holds the
/// inner part of one of the three alignments.
fn base64_inner(engine: &impl Engine, secret: &[u8], lead: usize) -> Zeroizing<Vec<u8>> {
    let mut input = Zeroizing::new(Vec::with_capacity(lead + secret.len()));
    input.resize(lead, 0);
    input.extend_from_slice(secret);
    let encoded = Zeroizing::new(engine.encode(input.as_slice()));
    let first = (8 * lead).div_ceil(6);
    let end = 8 * (lead + secret.len()) / 6;
    Zeroizing::new(
        encoded
            .as_bytes()
            .get(first..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
    )
}

/// `secret`'s bytes, each written by `item`, joined by `sep` and followed by `end`; built in
/// a buffer reserved at its largest size (`per_byte` per byte) so it never reallocates.
fn list(
    secret: &[u8],
    per_byte: usize,
    sep: &str,
    end: &str,
    item: impl Fn(&mut String, u8) -> fmt::Result,
) -> Zeroizing<Vec<u8>> {
    let mut s = Zeroizing::new(String::with_capacity(
        secret.len() * (per_byte + sep.len()) + end.len(),
    ));
    for (i, b) in secret.iter().enumerate() {
        if i > 0 {
            s.push_str(sep);
        }
        // Writing to a String cannot fail.
        let _ = item(&mut s, *b);
    }
    if !secret.is_empty() {
        s.push_str(end);
    }
    text(std::mem::take(&mut *s))
}

/// `{:?}` of `s` without its quotes, when escaping changes it.
fn debug_str_inner(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    // No character escapes to more than 10 (`\u{10ffff}`), and none is shorter than 1 byte.
    let mut out = Zeroizing::new(String::with_capacity(10 * s.len() + 2));
    let _ = write!(out, "{s:?}");
    let inner = out.get(1..out.len().saturating_sub(1))?;
    if inner == s {
        return None;
    }
    Some(Zeroizing::new(inner.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    fn secret() -> Vec<u8> {
        // Every byte value class: small, large, with base64 '+' '/' characters in its encoding.
        (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(251))
            .collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn found_as(hay: &[u8], secret: &[u8]) -> Vec<Encoding> {
        forms(secret)
            .iter()
            .filter(|n| contains(hay, n.bytes()))
            .map(Needle::encoding)
            .collect()
    }

    #[test]
    fn every_form_the_leakage_test_searched_before_contains_a_needle() {
        // tests/tests/leakage.rs searched these whole encodings; the needles are inside them.
        let s = secret();
        let old: Vec<(Vec<u8>, Encoding)> = vec![
            (s.clone(), Encoding::Raw),
            (hex::encode(&s).into_bytes(), Encoding::Hex),
            (hex::encode_upper(&s).into_bytes(), Encoding::HexUpper),
            (format!("{s:?}").into_bytes(), Encoding::Debug),
            (STANDARD.encode(&s).into_bytes(), Encoding::Base64),
            (STANDARD_NO_PAD.encode(&s).into_bytes(), Encoding::Base64),
            (URL_SAFE.encode(&s).into_bytes(), Encoding::Base64Url),
            (URL_SAFE_NO_PAD.encode(&s).into_bytes(), Encoding::Base64Url),
        ];
        for (form, encoding) in old {
            assert!(
                found_as(&form, &s).contains(&encoding),
                "{encoding} form not found"
            );
        }
    }

    #[test]
    fn base64_is_found_at_every_offset_inside_a_longer_value() {
        let s = secret();
        for lead in 0..7 {
            for trail in 0..4 {
                let mut value = vec![0x5au8; lead];
                value.extend_from_slice(&s);
                value.extend(std::iter::repeat_n(0xa5u8, trail));
                for (engine, encoding) in [
                    (&STANDARD, Encoding::Base64),
                    (&STANDARD_NO_PAD, Encoding::Base64),
                    (&URL_SAFE, Encoding::Base64Url),
                    (&URL_SAFE_NO_PAD, Encoding::Base64Url),
                ] {
                    let line = format!("event data={} end", engine.encode(&value));
                    assert!(
                        found_as(line.as_bytes(), &s).contains(&encoding),
                        "{encoding}, {lead} bytes before, {trail} after"
                    );
                }
            }
        }
    }

    #[test]
    fn base64_of_other_bytes_is_not_taken_for_the_secret() {
        let s = secret();
        let mut other = s.clone();
        other[16] ^= 1;
        for lead in 0..3 {
            let mut value = vec![0u8; lead];
            value.extend_from_slice(&other);
            assert!(found_as(STANDARD.encode(&value).as_bytes(), &s).is_empty());
        }
    }

    #[test]
    fn debug_forms_are_found_alone_and_inside_longer_values() {
        let s = secret();
        let arr: [u8; 32] = s.clone().try_into().unwrap();
        let mut longer = vec![9u8, 200];
        longer.extend_from_slice(&s);
        longer.push(3);
        struct Wrap {
            #[allow(dead_code)]
            inner: Vec<u8>,
        }
        impl fmt::Debug for Wrap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Wrap").field("inner", &self.inner).finish()
            }
        }
        let cases: Vec<(String, Encoding)> = vec![
            (format!("{s:?}"), Encoding::Debug),
            (format!("{arr:?}"), Encoding::Debug),
            (format!("share={longer:?}"), Encoding::Debug),
            (format!("{:?}", Wrap { inner: s.clone() }), Encoding::Debug),
            (format!("{s:#?}"), Encoding::DebugPretty),
            (format!("{longer:#?}"), Encoding::DebugPretty),
            (
                format!("{:#?}", Wrap { inner: s.clone() }),
                Encoding::DebugPretty,
            ),
            (
                format!("{:#?}", vec![Wrap { inner: s.clone() }]),
                Encoding::DebugPretty,
            ),
            (format!("{s:x?}"), Encoding::DebugHex),
            (format!("{s:02x?}"), Encoding::DebugHex),
            (format!("{s:X?}"), Encoding::DebugHex),
            (format!("{longer:02X?}"), Encoding::DebugHex),
        ];
        for (line, encoding) in cases {
            assert!(
                found_as(line.as_bytes(), &s).contains(&encoding),
                "{encoding} not found in {line}"
            );
        }
    }

    #[test]
    fn a_text_secret_is_found_escaped_too() {
        let pass = "pass\"word\\with\ttab";
        let line = format!("config {{ passphrase: {pass:?} }}");
        assert!(!contains(line.as_bytes(), pass.as_bytes()));
        assert_eq!(
            found_as(line.as_bytes(), pass.as_bytes()),
            vec![Encoding::DebugStr]
        );
        // Nothing to escape: no extra form.
        assert!(!forms(b"plain-passphrase")
            .iter()
            .any(|n| n.encoding() == Encoding::DebugStr));
    }

    #[test]
    fn forms_are_distinct_long_enough_and_never_printed() {
        let s = secret();
        let all = forms(&s);
        for (i, a) in all.iter().enumerate() {
            assert!(a.len() >= MIN_NEEDLE_LEN);
            for b in all.get(i + 1..).unwrap() {
                assert_ne!(a.bytes(), b.bytes());
            }
            let shown = format!("{a:?}");
            assert!(shown.contains("[redacted]"));
            assert!(!shown.contains(&hex::encode(&s)));
        }
        // A short secret keeps only its long enough forms.
        let short = forms(b"abc");
        assert!(short.iter().all(|n| n.len() >= MIN_NEEDLE_LEN));
        assert!(!short.iter().any(|n| n.encoding() == Encoding::Raw));
        assert!(short.iter().any(|n| n.encoding() == Encoding::Debug));
    }

    #[test]
    fn digits_only_hex_is_one_needle() {
        // Lower- and upper-case hex of these bytes are the same text: searched once.
        let s = [0x12u8, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56];
        let all = forms(&s);
        assert_eq!(
            all.iter()
                .filter(|n| n.bytes() == b"1234567890123456")
                .count(),
            1
        );
    }
}
