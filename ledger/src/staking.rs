//! Protocol 2 state (issue 20): the key domains and value encodings of bonds, validator
//! records, unbonding entries, evidence records and the burned total, the validator-set
//! rule, evidence checks, and [`validator_set_at`], the set of any height. Execution of the
//! payloads and the end-of-block steps that write these entries is in [`crate::exec`].
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
//! | evidence record | `"tally/evidence/"` (15) ‖ consensus key (33) ‖ height u64 BE (8) | 56 |
//! | burned total | `"tally/burned"` (12) | 12 |
//! | minted total (issue 21) | `"tally/mint"` (10) | 10 |
//!
//! Within a domain every preimage has the same length; across domains the lengths differ
//! (20, 64, 49, 52, 56, 12, 10, and 19 for [`crate::upgrade`]'s activation records), so two different entries can only share a tree key through a
//! SHA-256 collision. The tags are ASCII and none is a prefix of another. Big-endian
//! integers make the preimages of unbonding entries sort by release height, then
//! operator, then sequence, so the store (which keeps each entry under its preimage)
//! finds the entries due at a height with a prefix scan; the tree itself is ordered by
//! hash.
//!
//! Values are borsh: a bond is a `u64` amount ([`BondRecord`]); an unbonding entry is its
//! amount and the consensus key it was bonded to ([`UnbondingEntry`]: the key is what lets
//! evidence slash stake that is on its way out); a validator record is
//! [`ValidatorRecord`]; an evidence record is the `u64` height of the block that punished
//! the offence; the burned total is a `u64`.
//!
//! The sequence of an unbonding entry is the nonce of the `Unbond` transaction that made
//! it: unique per operator, so no counter is needed.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{address_of, verify};
use crate::genesis::StakingParams;
use crate::hash::{sha256, Hash};
use crate::state::StateReader;
use crate::store::StoreError;
use crate::types::{Address, Equivocation, PublicKeyBytes, Validator};
use crate::validators::ValidatorSet;

/// Domain tag of bond keys.
pub const BOND_KEY_TAG: &[u8] = b"tally/bond/";
/// Domain tag of validator record keys.
pub const VALIDATOR_KEY_TAG: &[u8] = b"tally/validator/";
/// Domain tag of unbonding entry keys.
pub const UNBONDING_KEY_TAG: &[u8] = b"tally/unbonding/";

/// Domain tag of evidence record keys.
pub const EVIDENCE_KEY_TAG: &[u8] = b"tally/evidence/";
/// The burned total's whole preimage.
pub const BURNED_KEY: &[u8] = b"tally/burned";
/// The minted total's whole preimage (issue 21: the stake created when a protocol-1 chain
/// switches to protocol 2).
pub const MINTED_KEY: &[u8] = b"tally/mint";

/// Preimage lengths, one per domain (an account's is 20).
pub const BOND_KEY_LEN: usize = 11 + 20 + 33;
pub const VALIDATOR_KEY_LEN: usize = 16 + 33;
pub const UNBONDING_KEY_LEN: usize = 16 + 8 + 20 + 8;
pub const EVIDENCE_KEY_LEN: usize = 15 + 33 + 8;

/// The stake `operator` has bonded to the consensus key `validator`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BondRecord {
    pub amount: u64,
}

/// A consensus key's standing. Created by the first bond to the key (or genesis) and never
/// deleted, so a jailed validator cannot shed its jail by unbonding and bonding again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ValidatorRecord {
    /// Sum of the bonds to this key.
    pub stake: u64,
    /// 0: not jailed. Otherwise jailed, out of the set, until an operator's `Unjail` in a
    /// block at this height or later.
    pub jailed_until_height: u64,
    /// Blocks in a row whose `last_commit` lacked this validator's signature.
    pub consecutive_missed: u64,
}

/// Stake on its way back to its operator, paid to the operator's balance at the end of
/// the release height. Until then evidence against `validator` slashes it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct UnbondingEntry {
    pub amount: u64,
    /// The consensus key the amount was bonded to.
    pub validator: PublicKeyBytes,
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

/// Preimage of the key of the record that `validator` was punished for equivocating at
/// `height` (one punishment per validator and height).
pub fn evidence_key_bytes(validator: &PublicKeyBytes, height: u64) -> [u8; EVIDENCE_KEY_LEN] {
    let mut out = [0u8; EVIDENCE_KEY_LEN];
    out[..15].copy_from_slice(EVIDENCE_KEY_TAG);
    out[15..48].copy_from_slice(validator);
    out[48..].copy_from_slice(&height.to_be_bytes());
    out
}

/// The operator and consensus key of a bond preimage.
pub fn split_bond_key(preimage: &[u8]) -> Option<(Address, PublicKeyBytes)> {
    if preimage.len() != BOND_KEY_LEN || !preimage.starts_with(BOND_KEY_TAG) {
        return None;
    }
    Some((
        preimage[11..31].try_into().ok()?,
        preimage[31..].try_into().ok()?,
    ))
}

/// The consensus key of a validator record preimage.
pub fn split_validator_key(preimage: &[u8]) -> Option<PublicKeyBytes> {
    if preimage.len() != VALIDATOR_KEY_LEN || !preimage.starts_with(VALIDATOR_KEY_TAG) {
        return None;
    }
    preimage[16..].try_into().ok()
}

/// The operator of an unbonding entry preimage.
pub fn split_unbonding_key(preimage: &[u8]) -> Option<Address> {
    if preimage.len() != UNBONDING_KEY_LEN || !preimage.starts_with(UNBONDING_KEY_TAG) {
        return None;
    }
    preimage[24..44].try_into().ok()
}

/// The prefix of every unbonding entry released at the end of `height`.
pub fn unbonding_prefix(height: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(UNBONDING_KEY_TAG);
    out[16..].copy_from_slice(&height.to_be_bytes());
    out
}

/// The set rule of issue 20: unjailed validators with stake >= `min_validator_stake`,
/// power = stake / `stake_per_power`, the top `max_validators` by power (ties: the lower
/// key first), sorted by address. `records` is every validator record as (key, record).
pub fn compute_set(
    params: &StakingParams,
    records: impl IntoIterator<Item = (PublicKeyBytes, ValidatorRecord)>,
) -> Vec<Validator> {
    let mut candidates: Vec<(u64, PublicKeyBytes)> = records
        .into_iter()
        .filter(|(_, r)| r.jailed_until_height == 0 && r.stake >= params.min_validator_stake)
        .map(|(key, r)| (r.stake / params.stake_per_power, key))
        .filter(|(power, _)| *power > 0)
        .collect();
    candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.truncate(params.max_validators as usize);
    let mut set: Vec<Validator> = candidates
        .into_iter()
        .map(|(power, pubkey)| Validator {
            address: address_of(&pubkey),
            pubkey,
            power,
        })
        .collect();
    set.sort_unstable_by_key(|v| v.address);
    set
}

/// The validator set of `height` on a protocol-2 chain: the set stored by the commit that
/// computed it (genesis stores the set of heights 1 and 2; the end of block H stores the
/// set of H+2 when it differs from the set of H+1). Known up to the tip's height + 2.
pub fn validator_set_at<R: StateReader + ?Sized>(
    store: &R,
    height: u64,
) -> Result<ValidatorSet, StoreError> {
    let Some(validators) = store.validator_set_record(height)? else {
        return Err(StoreError::Db(format!(
            "no validator set is stored for height {height}"
        )));
    };
    ValidatorSet::new(validators).map_err(|e| StoreError::Corrupt {
        what: format!("validator set of height {height}"),
        detail: e,
    })
}

/// Reads for the node's RPC and metrics: the committed entries, decoded. Execution reads
/// through its overlay instead ([`crate::exec`]).
fn decode_entry<T: BorshDeserialize>(preimage: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    borsh::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("staking entry {}", hex::encode(preimage)),
        detail: e.to_string(),
    })
}

/// The validator record of `validator`, if anything was ever bonded to it.
pub fn validator_record<R: StateReader + ?Sized>(
    store: &R,
    validator: &PublicKeyBytes,
) -> Result<Option<ValidatorRecord>, StoreError> {
    let preimage = validator_key_bytes(validator);
    store
        .entry(&preimage)?
        .map(|bytes| decode_entry(&preimage, &bytes))
        .transpose()
}

/// Every validator record as (consensus key, record), in key order: one prefix scan.
pub fn validator_records<R: StateReader + ?Sized>(
    store: &R,
) -> Result<Vec<(PublicKeyBytes, ValidatorRecord)>, StoreError> {
    let mut out = Vec::new();
    for (preimage, bytes) in store.entries_with_prefix(VALIDATOR_KEY_TAG)? {
        if let Some(key) = split_validator_key(&preimage) {
            out.push((key, decode_entry(&preimage, &bytes)?));
        }
    }
    Ok(out)
}

/// `operator`'s bonds as (consensus key, amount), in key order: one prefix scan (the
/// operator follows the tag in a bond's preimage).
pub fn bonds_of<R: StateReader + ?Sized>(
    store: &R,
    operator: &Address,
) -> Result<Vec<(PublicKeyBytes, u64)>, StoreError> {
    let mut prefix = Vec::with_capacity(11 + 20);
    prefix.extend_from_slice(BOND_KEY_TAG);
    prefix.extend_from_slice(operator);
    let mut out = Vec::new();
    for (preimage, bytes) in store.entries_with_prefix(&prefix)? {
        if let Some((_, key)) = split_bond_key(&preimage) {
            let bond: BondRecord = decode_entry(&preimage, &bytes)?;
            out.push((key, bond.amount));
        }
    }
    Ok(out)
}

/// `operator`'s unbonding entries as (release height, entry), by release height. An
/// entry's preimage leads with its release height (so the end of a block finds the entries
/// due with a prefix scan), not its operator: this scans every entry in flight, at most
/// `unbonding_blocks` blocks' worth of Unbond transactions, each of which paid a fee.
pub fn unbonding_of<R: StateReader + ?Sized>(
    store: &R,
    operator: &Address,
) -> Result<Vec<(u64, UnbondingEntry)>, StoreError> {
    let mut out = Vec::new();
    for (preimage, bytes) in store.entries_with_prefix(UNBONDING_KEY_TAG)? {
        if split_unbonding_key(&preimage).as_ref() != Some(operator) {
            continue;
        }
        let mut height = [0u8; 8];
        height.copy_from_slice(&preimage[16..24]);
        out.push((u64::from_be_bytes(height), decode_entry(&preimage, &bytes)?));
    }
    Ok(out)
}

/// The burned total (slashed stake).
pub fn burned<R: StateReader + ?Sized>(store: &R) -> Result<u64, StoreError> {
    total(store, BURNED_KEY)
}

/// The minted total: the stake created when a protocol-1 chain switched to protocol 2
/// (issue 21), so balances + bonds + unbonding + burned = genesis supply + minted.
pub fn minted<R: StateReader + ?Sized>(store: &R) -> Result<u64, StoreError> {
    total(store, MINTED_KEY)
}

fn total<R: StateReader + ?Sized>(store: &R, key: &[u8]) -> Result<u64, StoreError> {
    store
        .entry(key)?
        .map(|bytes| decode_entry(key, &bytes))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// How many punishments for equivocation the state records (one per validator and
/// height; the records are never deleted).
pub fn punishments<R: StateReader + ?Sized>(store: &R) -> Result<u64, StoreError> {
    Ok(store.entries_with_prefix(EVIDENCE_KEY_TAG)?.len() as u64)
}

/// Why a block's evidence is refused (the whole block is invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("the two votes differ in height, round or kind")]
    NotSameStep,
    #[error("the two votes are signed by different validators")]
    TwoValidators,
    #[error("the two votes are for the same block")]
    SameBlock,
    #[error("a vote is for chain \"{got}\", this is \"{expected}\"")]
    WrongChain { expected: String, got: String },
    #[error(
        "evidence of height {height} in block {block}: only heights before the block and at \
         most params.staking.evidence_max_age_blocks ({max}) old are punished"
    )]
    Age { height: u64, block: u64, max: u64 },
    #[error("validator {validator} is not in the set of height {height}")]
    NotInSet { validator: String, height: u64 },
    #[error("the signature of vote {0} does not verify")]
    BadSignature(char),
    #[error("validator {validator} was already punished for height {height}")]
    AlreadyPunished { validator: String, height: u64 },
}

/// The stateless part of an equivocation's checks plus the signatures: two votes of one
/// validator of `set` (the set of the votes' height) for the same (height, round, kind) of
/// this chain and different blocks, both signatures valid, the height before `block` and
/// at most `max_age` blocks older. Returns the validator's consensus key and the height.
/// Whether it was punished before is the caller's (it needs the state).
pub fn check_equivocation(
    chain_id: &str,
    block: u64,
    max_age: u64,
    set: &ValidatorSet,
    e: &Equivocation,
) -> Result<(PublicKeyBytes, u64), EvidenceError> {
    let (a, b) = (&e.a.vote, &e.b.vote);
    for v in [a, b] {
        if v.chain_id != chain_id {
            return Err(EvidenceError::WrongChain {
                expected: chain_id.into(),
                got: v.chain_id.clone(),
            });
        }
    }
    if (a.height, a.round, a.kind) != (b.height, b.round, b.kind) {
        return Err(EvidenceError::NotSameStep);
    }
    if e.a.validator != e.b.validator {
        return Err(EvidenceError::TwoValidators);
    }
    if a.block_hash == b.block_hash {
        return Err(EvidenceError::SameBlock);
    }
    let height = a.height;
    if height == 0 || height >= block || block - height > max_age {
        return Err(EvidenceError::Age {
            height,
            block,
            max: max_age,
        });
    }
    let Some(validator) = set.get(&e.a.validator) else {
        return Err(EvidenceError::NotInSet {
            validator: hex::encode(e.a.validator),
            height,
        });
    };
    for (which, sv) in [('a', &e.a), ('b', &e.b)] {
        verify(&validator.pubkey, &sv.vote.signing_bytes(), &sv.signature)
            .map_err(|_| EvidenceError::BadSignature(which))?;
    }
    Ok((validator.pubkey, height))
}

/// `amount` x `bps` / 10,000, rounded down: the part of one bond or unbonding entry that
/// a slash burns.
pub fn slash_amount(amount: u64, bps: u32) -> u64 {
    // bps <= 10,000, so the result is at most `amount`.
    (u128::from(amount) * u128::from(bps) / 10_000) as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::account_key;

    #[test]
    fn tags_and_lengths_keep_the_domains_apart() {
        let tags = [
            BOND_KEY_TAG,
            VALIDATOR_KEY_TAG,
            UNBONDING_KEY_TAG,
            EVIDENCE_KEY_TAG,
            BURNED_KEY,
        ];
        for (i, a) in tags.iter().enumerate() {
            for (j, b) in tags.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
        let lens = [
            20,
            BOND_KEY_LEN,
            VALIDATOR_KEY_LEN,
            UNBONDING_KEY_LEN,
            EVIDENCE_KEY_LEN,
            BURNED_KEY.len(),
        ];
        let distinct: std::collections::HashSet<_> = lens.iter().collect();
        assert_eq!(distinct.len(), lens.len(), "{lens:?}");
        assert_eq!(BOND_KEY_TAG.len(), 11);
        assert_eq!(VALIDATOR_KEY_TAG.len(), 16);
        assert_eq!(UNBONDING_KEY_TAG.len(), 16);
        assert_eq!(EVIDENCE_KEY_TAG.len(), 15);
    }

    #[test]
    fn split_reads_back_what_the_key_functions_wrote() {
        let (op, key) = ([0x11; 20], [0x02; 33]);
        assert_eq!(split_bond_key(&bond_key_bytes(&op, &key)), Some((op, key)));
        assert_eq!(split_validator_key(&validator_key_bytes(&key)), Some(key));
        let u = unbonding_key_bytes(5, &op, 9);
        assert_eq!(split_unbonding_key(&u), Some(op));
        assert!(u.starts_with(&unbonding_prefix(5)));
        assert!(!u.starts_with(&unbonding_prefix(6)));
        let e = evidence_key_bytes(&key, 0x0102);
        assert_eq!(&e[..15], b"tally/evidence/");
        assert_eq!(&e[15..48], &key);
        assert_eq!(&e[48..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        // Another domain's preimage is not read as this one's.
        assert_eq!(split_bond_key(&validator_key_bytes(&key)), None);
        assert_eq!(split_validator_key(&u), None);
    }

    #[test]
    fn the_set_is_the_top_unjailed_validators_by_power_sorted_by_address() {
        let params = StakingParams {
            stake_per_power: 10,
            min_validator_stake: 30,
            max_validators: 3,
            ..StakingParams::default()
        };
        let keys: Vec<PublicKeyBytes> = (1..=6u8)
            .map(|i| {
                crate::crypto::Keypair::from_secret_bytes(&sha256(&[i]))
                    .unwrap()
                    .public_key()
            })
            .collect();
        let rec = |stake, jailed| ValidatorRecord {
            stake,
            jailed_until_height: jailed,
            consecutive_missed: 0,
        };
        let records = vec![
            (keys[0], rec(100, 0)),
            (keys[1], rec(500, 9)), // jailed: out, whatever its stake
            (keys[2], rec(29, 0)),  // below min_validator_stake: out
            (keys[3], rec(55, 0)),  // power 5
            (keys[4], rec(59, 0)),  // power 5, ties with keys[3]: the lower key wins
            (keys[5], rec(300, 0)),
        ];
        let set = compute_set(&params, records.clone());
        let tie_winner = keys[3].min(keys[4]);
        let mut expected: Vec<(PublicKeyBytes, u64)> =
            vec![(keys[0], 10), (keys[5], 30), (tie_winner, 5)];
        expected.sort_by_key(|(k, _)| address_of(k));
        let got: Vec<(PublicKeyBytes, u64)> = set.iter().map(|v| (v.pubkey, v.power)).collect();
        assert_eq!(got, expected);
        assert!(set.windows(2).all(|w| w[0].address < w[1].address));
        // Input order does not matter.
        let mut reversed = records;
        reversed.reverse();
        assert_eq!(compute_set(&params, reversed), set);
    }

    #[test]
    fn slashing_rounds_down_and_never_exceeds_the_amount() {
        assert_eq!(slash_amount(1_000, 500), 50);
        assert_eq!(slash_amount(19, 500), 0);
        assert_eq!(slash_amount(u64::MAX, 10_000), u64::MAX);
        assert_eq!(slash_amount(u64::MAX, 0), 0);
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
            borsh::to_vec(&UnbondingEntry {
                amount: 7,
                validator: [2; 33]
            })
            .unwrap(),
            [&7u64.to_le_bytes()[..], &[2; 33]].concat()
        );
    }
}
