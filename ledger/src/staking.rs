//! Protocol 2 state formats (issue 20): the key domains and value encodings of bonds,
//! validator records and unbonding entries. **Formats only**: nothing reads or writes
//! these yet; execution refuses the payloads that would until the staking slice lands.
//!
//! They live in the same authenticated tree as accounts. The tree is keyed by 32-byte
//! hashes: an account's tree key is SHA-256(address), a 20-byte preimage
//! ([`crate::state::account_key`]). Every other kind of entry has the tree key
//! SHA-256(preimage) where the preimage is a domain tag followed by fixed-width fields:
//!
//! | kind | preimage (exact bytes) | length |
//! |---|---|---|
//! | account | `address` (20) | 20 |
//! | bond | `"tally/bond/"` (11) ‖ `operator` address (20) ‖ consensus key (33) | 64 |
//! | validator record | `"tally/validator/"` (16) ‖ consensus key (33) | 49 |
//! | unbonding entry | `"tally/unbonding/"` (16) ‖ release height u64 BE (8) ‖ `operator` (20) ‖ sequence u64 BE (8) | 52 |
//!
//! Within a domain every preimage has the same length; across domains the lengths differ
//! (20, 64, 49, 52), so two different entries can only share a tree key through a SHA-256
//! collision. The tags are ASCII, differ from each other in their seventh byte, and none
//! is a prefix of another. Big-endian integers make the preimages of unbonding entries
//! sort by release height, then operator, then sequence, for a store index that scans
//! the entries due at a height (the tree itself is ordered by hash).
//!
//! Values are borsh: a bond and an unbonding entry are a `u64` amount
//! ([`BondRecord`], [`UnbondingEntry`]); a validator record is [`ValidatorRecord`].

use borsh::{BorshDeserialize, BorshSerialize};

use crate::hash::{sha256, Hash};
use crate::types::{Address, PublicKeyBytes};

/// Domain tag of bond keys.
pub const BOND_KEY_TAG: &[u8] = b"tally/bond/";
/// Domain tag of validator record keys.
pub const VALIDATOR_KEY_TAG: &[u8] = b"tally/validator/";
/// Domain tag of unbonding entry keys.
pub const UNBONDING_KEY_TAG: &[u8] = b"tally/unbonding/";

/// Preimage lengths, one per domain (an account's is 20).
pub const BOND_KEY_LEN: usize = 11 + 20 + 33;
pub const VALIDATOR_KEY_LEN: usize = 16 + 33;
pub const UNBONDING_KEY_LEN: usize = 16 + 8 + 20 + 8;

/// The stake `operator` has bonded to the consensus key `validator`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BondRecord {
    pub amount: u64,
}

/// A consensus key's standing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ValidatorRecord {
    /// Sum of the bonds to this key.
    pub stake: u64,
    /// Jailed while the chain's height is below this (0: never jailed).
    pub jailed_until_height: u64,
    /// Blocks in a row whose `last_commit` lacked this validator's signature.
    pub consecutive_missed: u64,
}

/// Stake on its way back to its operator, paid to the operator's balance at the end of
/// the release height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct UnbondingEntry {
    pub amount: u64,
}

/// Preimage of the bond key of (`operator`, `validator`).
pub fn bond_key_bytes(operator: &Address, validator: &PublicKeyBytes) -> [u8; BOND_KEY_LEN] {
    let mut out = [0u8; BOND_KEY_LEN];
    out[..11].copy_from_slice(BOND_KEY_TAG);
    out[11..31].copy_from_slice(operator);
    out[31..].copy_from_slice(validator);
    out
}

/// Tree key of the bond of (`operator`, `validator`).
pub fn bond_key(operator: &Address, validator: &PublicKeyBytes) -> Hash {
    sha256(&bond_key_bytes(operator, validator))
}

/// Preimage of the validator record key of `validator`.
pub fn validator_key_bytes(validator: &PublicKeyBytes) -> [u8; VALIDATOR_KEY_LEN] {
    let mut out = [0u8; VALIDATOR_KEY_LEN];
    out[..16].copy_from_slice(VALIDATOR_KEY_TAG);
    out[16..].copy_from_slice(validator);
    out
}

/// Tree key of the validator record of `validator`.
pub fn validator_key(validator: &PublicKeyBytes) -> Hash {
    sha256(&validator_key_bytes(validator))
}

/// Preimage of the key of `operator`'s unbonding entry number `sequence` released at the
/// end of `release_height`.
pub fn unbonding_key_bytes(
    release_height: u64,
    operator: &Address,
    sequence: u64,
) -> [u8; UNBONDING_KEY_LEN] {
    let mut out = [0u8; UNBONDING_KEY_LEN];
    out[..16].copy_from_slice(UNBONDING_KEY_TAG);
    out[16..24].copy_from_slice(&release_height.to_be_bytes());
    out[24..44].copy_from_slice(operator);
    out[44..].copy_from_slice(&sequence.to_be_bytes());
    out
}

/// Tree key of an unbonding entry.
pub fn unbonding_key(release_height: u64, operator: &Address, sequence: u64) -> Hash {
    sha256(&unbonding_key_bytes(release_height, operator, sequence))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::account_key;

    #[test]
    fn tags_and_lengths_keep_the_domains_apart() {
        let tags = [BOND_KEY_TAG, VALIDATOR_KEY_TAG, UNBONDING_KEY_TAG];
        for (i, a) in tags.iter().enumerate() {
            for (j, b) in tags.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
        let lens = [20, BOND_KEY_LEN, VALIDATOR_KEY_LEN, UNBONDING_KEY_LEN];
        let distinct: std::collections::HashSet<_> = lens.iter().collect();
        assert_eq!(distinct.len(), lens.len(), "{lens:?}");
        assert_eq!(BOND_KEY_TAG.len(), 11);
        assert_eq!(VALIDATOR_KEY_TAG.len(), 16);
        assert_eq!(UNBONDING_KEY_TAG.len(), 16);
    }

    #[test]
    fn keys_place_every_field_and_differ_from_account_keys() {
        let (op, key) = ([0x11; 20], [0x02; 33]);
        let b = bond_key_bytes(&op, &key);
        assert_eq!(&b[..11], b"tally/bond/");
        assert_eq!(&b[11..31], &op);
        assert_eq!(&b[31..], &key);
        let v = validator_key_bytes(&key);
        assert_eq!(&v[..16], b"tally/validator/");
        assert_eq!(&v[16..], &key);
        let u = unbonding_key_bytes(0x0102_0304_0506_0708, &op, 9);
        assert_eq!(&u[..16], b"tally/unbonding/");
        assert_eq!(&u[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&u[24..44], &op);
        assert_eq!(&u[44..], &[0, 0, 0, 0, 0, 0, 0, 9]);
        // Big-endian: earlier release heights sort first.
        assert!(
            unbonding_key_bytes(1, &[0xff; 20], u64::MAX) < unbonding_key_bytes(2, &[0; 20], 0)
        );
        let keys = [
            account_key(&op),
            bond_key(&op, &key),
            validator_key(&key),
            unbonding_key(0, &op, 0),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        // Every field changes the key.
        assert_ne!(bond_key(&op, &key), bond_key(&[0x12; 20], &key));
        assert_ne!(bond_key(&op, &key), bond_key(&op, &[0x03; 33]));
        assert_ne!(unbonding_key(1, &op, 0), unbonding_key(1, &op, 1));
    }

    #[test]
    fn values_encode_as_fixed_little_endian_fields() {
        let r = ValidatorRecord {
            stake: 1,
            jailed_until_height: 2,
            consecutive_missed: 3,
        };
        let bytes = borsh::to_vec(&r).unwrap();
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[16..], &3u64.to_le_bytes());
        assert_eq!(
            borsh::to_vec(&BondRecord { amount: 5 }).unwrap(),
            5u64.to_le_bytes()
        );
        assert_eq!(
            borsh::to_vec(&UnbondingEntry { amount: 7 }).unwrap(),
            7u64.to_le_bytes()
        );
    }
}
