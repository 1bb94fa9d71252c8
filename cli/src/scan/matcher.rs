//! Finds many needles at once in a byte stream of any length, reading it in fixed-size
//! chunks: memory use is one chunk plus the longest needle, whatever the size of the log.
//!
//! Consecutive windows overlap by the longest needle's length less one byte, so a needle
//! that straddles a chunk boundary lies whole in the next window; a match is reported by the
//! first window that holds all of it, so none is reported twice.
//!
//! Needles are bucketed by their first two bytes: at each position of the text a bit test
//! (an 8 KiB table) rejects almost every position, and only the needles that start with that
//! pair of bytes are compared. The tables are derived from the needles, so they are zeroized
//! on drop like the needles; so is the read buffer, which may hold what was found.

use std::io::{ErrorKind, Read};

use zeroize::Zeroizing;

use super::needles::{Encoding, Needle};

/// Bytes read at a time by [`Matcher::scan`] in the command.
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// Where a needle was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Byte offset of the first byte of the match in the stream.
    pub offset: u64,
    /// The index the needle was given with (which secret it is a form of).
    pub secret: usize,
    /// Which form of the secret matched.
    pub encoding: Encoding,
}

/// A set of needles to search for, each tagged with the index of its secret.
pub struct Matcher {
    /// Sorted by their first two bytes.
    needles: Vec<(usize, Needle)>,
    /// `bucket[k]..bucket[k + 1]`: the needles whose first two bytes, big-endian, are `k`.
    bucket: Zeroizing<Vec<u32>>,
    /// Bit `k`: some needle starts with the two bytes `k`.
    present: Zeroizing<Vec<u64>>,
    longest: usize,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matcher {{ needles: {}, longest: {} }}",
            self.needles.len(),
            self.longest
        )
    }
}

fn pair(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [a, b, ..] => Some(usize::from(*a) << 8 | usize::from(*b)),
        _ => None,
    }
}

impl Matcher {
    /// Needles shorter than two bytes are left out ([`super::needles::forms`] makes none).
    pub fn new(needles: impl IntoIterator<Item = (usize, Needle)>) -> Self {
        let mut needles: Vec<(usize, Needle)> =
            needles.into_iter().filter(|(_, n)| n.len() >= 2).collect();
        needles.sort_by_key(|(_, n)| pair(n.bytes()));
        let mut counts = Zeroizing::new(vec![0u32; 1 << 16]);
        let mut present = Zeroizing::new(vec![0u64; (1 << 16) / 64]);
        for (_, n) in &needles {
            if let Some(k) = pair(n.bytes()) {
                if let Some(c) = counts.get_mut(k) {
                    *c = c.saturating_add(1);
                }
                if let Some(word) = present.get_mut(k / 64) {
                    *word |= 1 << (k % 64);
                }
            }
        }
        let mut bucket = Zeroizing::new(Vec::with_capacity((1 << 16) + 1));
        let mut total = 0u32;
        bucket.push(0);
        for c in counts.iter() {
            total = total.saturating_add(*c);
            bucket.push(total);
        }
        let longest = needles.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        Self {
            needles,
            bucket,
            present,
            longest,
        }
    }

    /// Length of the longest needle: consecutive windows overlap by one byte less.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Number of needles.
    pub fn len(&self) -> usize {
        self.needles.len()
    }

    /// True when there is nothing to search for.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Every match in `hay` (offsets from its start).
    pub fn find_all(&self, hay: &[u8]) -> Vec<Match> {
        let mut out = Vec::new();
        self.search(hay, 0, 0, &mut |m| out.push(m));
        out
    }

    /// Reports the matches in `window` (which starts at stream offset `base`) that end after
    /// stream offset `seen` (those ending at or before it were in the previous window).
    fn search(&self, window: &[u8], base: u64, seen: u64, report: &mut impl FnMut(Match)) {
        for (i, two) in window.windows(2).enumerate() {
            let &[a, b] = two else { continue };
            let k = usize::from(a) << 8 | usize::from(b);
            let hit = self
                .present
                .get(k >> 6)
                .is_some_and(|w| w & (1 << (k & 63)) != 0);
            if !hit {
                continue;
            }
            let (Some(lo), Some(hi)) = (self.bucket.get(k), self.bucket.get(k + 1)) else {
                continue;
            };
            let rest = window.get(i..).unwrap_or(&[]);
            let candidates = self.needles.get(*lo as usize..*hi as usize).unwrap_or(&[]);
            for (secret, needle) in candidates {
                let end = base + (i + needle.len()) as u64;
                if end > seen && rest.starts_with(needle.bytes()) {
                    report(Match {
                        offset: base + i as u64,
                        secret: *secret,
                        encoding: needle.encoding(),
                    });
                }
            }
        }
    }

    /// Reads `reader` to its end in chunks of `chunk` bytes (at least 1) and reports every
    /// match, in order of where it ends. Returns the number of bytes read; on a read error,
    /// the matches before it have been reported.
    pub fn scan<R: Read>(
        &self,
        mut reader: R,
        chunk: usize,
        mut report: impl FnMut(Match),
    ) -> std::io::Result<u64> {
        let chunk = chunk.max(1);
        let keep = self.longest.saturating_sub(1);
        let mut buf = Zeroizing::new(vec![0u8; keep + chunk]);
        let mut filled = 0usize;
        let mut base = 0u64;
        let mut seen = 0u64;
        loop {
            // Fill the window (short reads are normal) or reach the end of the stream.
            let mut eof = false;
            while filled < buf.len() {
                let Some(space) = buf.get_mut(filled..) else {
                    break;
                };
                match reader.read(space) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let window = buf.get(..filled).unwrap_or(&[]);
            self.search(window, base, seen, &mut report);
            seen = base + filled as u64;
            if eof {
                return Ok(seen);
            }
            // Carry the last `keep` bytes over: a needle starting there may end in the next chunk.
            let carry = keep.min(filled);
            buf.copy_within(filled - carry..filled, 0);
            base += (filled - carry) as u64;
            filled = carry;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::needles::forms;

    fn secret(seed: u8) -> Vec<u8> {
        (0u8..32)
            .map(|i| i.wrapping_mul(73).wrapping_add(seed))
            .collect()
    }

    fn matcher(secrets: &[Vec<u8>]) -> Matcher {
        Matcher::new(
            secrets
                .iter()
                .enumerate()
                .flat_map(|(i, s)| forms(s).into_iter().map(move |n| (i, n))),
        )
    }

    fn scan_all(m: &Matcher, data: &[u8], chunk: usize) -> Vec<Match> {
        let mut out = vec![];
        let read = m.scan(data, chunk, |x| out.push(x)).unwrap();
        assert_eq!(read, data.len() as u64);
        out
    }

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_needle_straddling_a_chunk_boundary_is_found_once() {
        let s = secret(1);
        let m = matcher(std::slice::from_ref(&s));
        let hex = hex::encode(&s);
        for at in [0usize, 1, 63, 64, 65, 100, 127, 128, 129, 200] {
            let mut data = vec![b'.'; 300];
            data.splice(at..at, hex.bytes());
            for chunk in [1usize, 2, 7, 64, 65, 128, 1000] {
                let found = scan_all(&m, &data, chunk);
                assert_eq!(
                    found,
                    vec![Match {
                        offset: at as u64,
                        secret: 0,
                        encoding: Encoding::Hex
                    }],
                    "at {at}, chunk {chunk}"
                );
                let mut trickled = vec![];
                m.scan(Trickle(&data, 3), chunk, |x| trickled.push(x))
                    .unwrap();
                assert_eq!(trickled, found);
            }
        }
    }

    #[test]
    fn every_encoding_is_found_and_attributed() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        let (a, b) = (secret(1), secret(99));
        let m = matcher(&[a.clone(), b.clone()]);
        let mut log = b"2024-01-01 INFO start\n".to_vec();
        let mut planted = vec![];
        let mut plant = |log: &mut Vec<u8>, what: &[u8], secret: usize, enc: Encoding| {
            log.extend_from_slice(b"line ");
            planted.push((log.len() as u64, secret, enc));
            log.extend_from_slice(what);
            log.extend_from_slice(b" tail\n");
        };
        plant(&mut log, &a, 0, Encoding::Raw);
        plant(&mut log, hex::encode(&b).as_bytes(), 1, Encoding::Hex);
        plant(
            &mut log,
            hex::encode_upper(&a).as_bytes(),
            0,
            Encoding::HexUpper,
        );
        plant(
            &mut log,
            STANDARD.encode(&b).as_bytes(),
            1,
            Encoding::Base64,
        );
        plant(
            &mut log,
            URL_SAFE_NO_PAD.encode(&a).as_bytes(),
            0,
            Encoding::Base64Url,
        );
        plant(&mut log, format!("{b:?}").as_bytes(), 1, Encoding::Debug);
        plant(
            &mut log,
            format!("{a:#?}").as_bytes(),
            0,
            Encoding::DebugPretty,
        );
        plant(
            &mut log,
            format!("{b:x?}").as_bytes(),
            1,
            Encoding::DebugHex,
        );
        log.extend_from_slice(b"end\n");
        for chunk in [5usize, 33, 4096] {
            let found = scan_all(&m, &log, chunk);
            let got: Vec<(u64, usize, Encoding)> = found
                .iter()
                .map(|x| (x.offset, x.secret, x.encoding))
                .collect();
            let mut want = planted.clone();
            // Debug forms start one byte after the bracket, base64 at the first stable char.
            for w in &mut want {
                match w.2 {
                    Encoding::Debug | Encoding::DebugHex => w.0 += 1,
                    Encoding::DebugPretty => w.0 += 6,
                    _ => {}
                }
            }
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn clean_data_has_no_match_and_every_occurrence_is_reported() {
        let s = secret(5);
        let m = matcher(std::slice::from_ref(&s));
        let noise: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(scan_all(&m, &noise, 4096).is_empty());
        let line = format!("share {}\n", hex::encode(&s));
        let data = line.repeat(50);
        let found = scan_all(&m, data.as_bytes(), 100);
        assert_eq!(found.len(), 50);
        assert_eq!(found[1].offset, line.len() as u64 + 6);
        assert_eq!(m.find_all(data.as_bytes()), found);
    }

    #[test]
    fn read_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let m = matcher(&[secret(1)]);
        assert!(m.scan(Broken, 64, |_| {}).is_err());
        assert!(format!("{m:?}").starts_with("Matcher { needles: "));
    }
}
