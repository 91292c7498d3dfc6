//! `sha256:<hex>` content digests.

use std::fmt;
use std::str::FromStr;

use crate::ImageError;

/// A SHA-256 content digest (the only algorithm coffer accepts).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Digest of bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(openssl::sha::sha256(bytes))
    }

    /// From raw hash bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Digest(b)
    }

    /// Raw bytes.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ImageError::BadReference(format!("digest '{s}': {why}"));
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad("expected 64 lowercase hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad("invalid hex"))?;
        Ok(Digest(out))
    }
}
