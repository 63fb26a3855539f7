//! RFC 6962 Merkle tree hash over 32-byte leaves (the block's `tx_root`).

use crate::hash::{sha256, sha256_parts, Hash};

/// MTH([]) = SHA-256(""), MTH([d]) = SHA-256(0x00 || d),
/// MTH(D[0..n]) = SHA-256(0x01 || MTH(D[0..k]) || MTH(D[k..n])), k = largest power of two < n.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => sha256_parts(&[&[0x00], &leaves[0]]),
        n => {
            let k = largest_power_of_two_below(n);
            let left = merkle_root(&leaves[..k]);
            let right = merkle_root(&leaves[k..]);
            sha256_parts(&[&[0x01], &left, &right])
        }
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n >= 2);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_strictly_below() {
        assert_eq!(largest_power_of_two_below(2), 1);
        assert_eq!(largest_power_of_two_below(3), 2);
        assert_eq!(largest_power_of_two_below(4), 2);
        assert_eq!(largest_power_of_two_below(5), 4);
        assert_eq!(largest_power_of_two_below(8), 4);
        assert_eq!(largest_power_of_two_below(9), 8);
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        // A two-leaf tree must not equal the leaf hash of the concatenation.
        let mut concat = Vec::from(a);
        concat.extend_from_slice(&b);
        assert_ne!(merkle_root(&[a, b]), sha256_parts(&[&[0x00], &concat]));
    }
}
