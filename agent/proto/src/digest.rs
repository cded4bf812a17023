//! `ChunkDigest`: the SHA-256 of a chunk's *uncompressed* data, the name of a
//! chunk everywhere (store path, index entry, upload). Its text form is exactly
//! 64 lowercase hex digits, so one chunk has exactly one file name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk digest {0:?}")]
pub struct InvalidDigest(pub String);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// The digest of `data` (uncompressed chunk bytes).
    pub fn of(data: &[u8]) -> Self {
        ChunkDigest(Sha256::digest(data).into())
    }

    /// The digest of `len` zero bytes; the full-chunk one is computed once
    /// (hashing 4 MiB of zeros per hole would cost as much as real data).
    pub fn of_zeros(len: usize) -> Self {
        static FULL: std::sync::OnceLock<ChunkDigest> = std::sync::OnceLock::new();
        let full = crate::CHUNK_SIZE as usize;
        if len == full {
            *FULL.get_or_init(|| ChunkDigest::of(&vec![0u8; full]))
        } else {
            ChunkDigest::of(&vec![0u8; len])
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({self})")
    }
}

impl FromStr for ChunkDigest {
    type Err = InvalidDigest;

    /// Accepts only 64 lowercase hex digits: uppercase would name a second
    /// file for the same chunk on case-sensitive filesystems.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDigest(s.chars().take(80).collect());
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid())?;
        Ok(ChunkDigest(bytes))
    }
}

impl TryFrom<String> for ChunkDigest {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ChunkDigest> for String {
    fn from(d: ChunkDigest) -> String {
        d.to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_hex_round_trip() {
        let d = ChunkDigest::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(d.to_string(), hex);
        assert_eq!(hex.parse::<ChunkDigest>().unwrap(), d);
    }

    #[test]
    fn rejects_malformed_text() {
        let good = ChunkDigest::of(b"x").to_string();
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("../{}", &good[3..]),
            good.replacen(&good[..1], "g", 1),
        ] {
            assert!(bad.parse::<ChunkDigest>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn serde_is_a_hex_string() {
        let d = ChunkDigest::of(b"chunk");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<ChunkDigest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<ChunkDigest>("\"abc\"").is_err());
    }
}
