//! Bounded borsh decoding: every byte string from a peer, an RPC caller or the disk goes
//! through here, so truncated, trailing-garbage and oversized input is an error, never a
//! panic or a huge allocation.

use borsh::{BorshDeserialize, BorshSerialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{what} does not decode: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Decodes exactly one `T` from `bytes`; `what` names the thing in the error.
pub fn decode<T: BorshDeserialize>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            size: bytes.len(),
            max,
        });
    }
    // `from_slice` rejects trailing bytes; borsh caps pre-allocation by the bytes present,
    // so a forged length prefix cannot make us allocate gigabytes.
    borsh::from_slice(bytes).map_err(|e| DecodeError::Invalid {
        what,
        reason: e.to_string(),
    })
}

/// borsh encoding into a fresh Vec (infallible for in-memory writers).
pub fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("borsh encoding into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_length_prefix_is_an_error_not_an_allocation() {
        // A Vec<u64> claiming 2^32-1 items with 8 bytes present.
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 8]);
        let r: Result<Vec<u64>, _> = decode("list", &bytes, 1 << 20);
        assert!(matches!(r, Err(DecodeError::Invalid { .. })));
        let r: Result<String, _> = decode("text", &bytes, 1 << 20);
        assert!(matches!(r, Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn trailing_bytes_and_size_limit_are_errors() {
        let bytes = encode(&7u32);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<u32>("n", &trailing, 64).is_err());
        assert!(matches!(
            decode::<u32>("n", &bytes, 3),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(decode::<u32>("n", &bytes, 4), Ok(7));
    }
}
