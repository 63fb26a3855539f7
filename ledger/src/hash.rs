//! SHA-256 and hex helpers.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub const ZERO_HASH: Hash = [0u8; 32];

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// SHA-256 over several parts without concatenating them first.
pub fn sha256_parts(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Lowercase hex, no prefix (DESIGN.md section 2).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    #[error("expected {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("not hex: {0}")]
    NotHex(String),
}

/// Parses exactly `N` bytes of hex (an optional `0x` prefix is tolerated for humans).
pub fn from_hex_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            got: text.len(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|e| HexError::NotHex(e.to_string()))?;
    Ok(out)
}
