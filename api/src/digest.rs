//! Digests.
//!
//! Pieces are verified with BLAKE3, which is cryptographic (peers are
//! untrusted) and fast enough to hash at memory speed. Users name whole
//! files with `sha256:HEX`, the form registries and release pages print.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::Read;
use std::str::FromStr;

/// The BLAKE3 digest of one piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceDigest(pub [u8; 32]);

impl PieceDigest {
    pub fn of(bytes: &[u8]) -> Self {
        PieceDigest(*blake3::hash(bytes).as_bytes())
    }

    /// A digest from the wire, refused unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(PieceDigest(bytes.try_into().ok()?))
    }
}

/// A piece's digest computed as its bytes arrive, so each part is hashed
/// while it is still in the CPU's cache. Equal to `PieceDigest::of` of the
/// whole.
#[derive(Default)]
pub struct PieceHasher(blake3::Hasher);

impl PieceHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> PieceDigest {
        PieceDigest(*self.0.finalize().as_bytes())
    }
}

impl fmt::Debug for PieceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", hex::encode(self.0))
    }
}

/// A whole-file digest given by a user, e.g. `--digest sha256:ab12...`.
#[derive(Clone, PartialEq, Eq)]
pub struct FileDigest {
    sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest '{0}': expected sha256: followed by 64 hex characters")]
pub struct BadFileDigest(pub String);

impl FromStr for FileDigest {
    type Err = BadFileDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFileDigest(s.to_string());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut sha256).map_err(|_| bad())?;
        Ok(FileDigest { sha256 })
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.sha256))
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FileDigest {
    /// The SHA-256 of everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<Self> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(FileDigest {
            sha256: hasher.finalize().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_hashed_in_parts_has_the_digest_of_the_whole() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut hasher = PieceHasher::default();
        for part in bytes.chunks(128 * 1024) {
            hasher.update(part);
        }
        assert_eq!(hasher.finish(), PieceDigest::of(&bytes));
        assert_ne!(hasher.finish(), PieceDigest::of(&bytes[1..]));
    }

    #[test]
    fn file_digest_parses_and_prints() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let d: FileDigest = text.parse().unwrap();
        assert_eq!(d.to_string(), text);
        let upper: FileDigest = format!("sha256:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(upper, d);
    }

    #[test]
    fn bad_file_digests_are_named() {
        for text in ["md5:abc", "sha256:xyz", "sha256:abcd", ""] {
            let err = text.parse::<FileDigest>().unwrap_err();
            assert!(err.to_string().contains(&format!("'{text}'")));
        }
    }

    #[test]
    fn sha256_of_known_input() {
        let d = FileDigest::of_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn piece_digest_rejects_wrong_lengths() {
        assert!(PieceDigest::from_slice(&[0; 31]).is_none());
        assert_eq!(
            PieceDigest::from_slice(&[7; 32]),
            Some(PieceDigest([7; 32]))
        );
    }
}
