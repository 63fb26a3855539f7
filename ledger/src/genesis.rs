//! `genesis.json`: loading and validation. Every error names the file, the field and the
//! fix, because a bad genesis is a user's mistake that must be easy to correct.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::crypto::{address_of, parse_public_key};
use crate::hash::{from_hex_array, sha256, to_hex, Hash};
use crate::types::{Address, Validator};
use crate::validators::ValidatorSet;

/// Longest chain id accepted; it is in every signed message.
pub const MAX_CHAIN_ID_LEN: usize = 64;

/// Consensus and block parameters, fixed at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub block_max_txs: u32,
    pub block_max_bytes: u64,
    pub max_tx_bytes: u32,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub min_fee: u64,
    #[serde(default = "defaults::timeout_propose_ms")]
    pub timeout_propose_ms: u64,
    #[serde(default = "defaults::timeout_delta_ms")]
    pub timeout_propose_delta_ms: u64,
    #[serde(default = "defaults::timeout_vote_ms")]
    pub timeout_prevote_ms: u64,
    #[serde(default = "defaults::timeout_delta_ms")]
    pub timeout_prevote_delta_ms: u64,
    #[serde(default = "defaults::timeout_vote_ms")]
    pub timeout_precommit_ms: u64,
    #[serde(default = "defaults::timeout_delta_ms")]
    pub timeout_precommit_delta_ms: u64,
    #[serde(default = "defaults::timeout_commit_ms")]
    pub timeout_commit_ms: u64,
}

mod defaults {
    pub fn timeout_propose_ms() -> u64 {
        3000
    }
    pub fn timeout_vote_ms() -> u64 {
        1000
    }
    pub fn timeout_delta_ms() -> u64 {
        500
    }
    pub fn timeout_commit_ms() -> u64 {
        1000
    }
}

impl Default for Params {
    fn default() -> Self {
        Self {
            block_max_txs: 10_000,
            block_max_bytes: 4 * 1024 * 1024,
            max_tx_bytes: 1024,
            min_fee: 1,
            timeout_propose_ms: defaults::timeout_propose_ms(),
            timeout_propose_delta_ms: defaults::timeout_delta_ms(),
            timeout_prevote_ms: defaults::timeout_vote_ms(),
            timeout_prevote_delta_ms: defaults::timeout_delta_ms(),
            timeout_precommit_ms: defaults::timeout_vote_ms(),
            timeout_precommit_delta_ms: defaults::timeout_delta_ms(),
            timeout_commit_ms: defaults::timeout_commit_ms(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    pub name: String,
    /// Hex of the 33-byte compressed public key.
    pub pubkey: String,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub power: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// Hex of the 20-byte address.
    pub address: String,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub balance: u64,
}

/// The file as written by people and tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    pub chain_id: String,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub genesis_time_ms: u64,
    pub params: Params,
    pub validators: Vec<GenesisValidator>,
    pub accounts: Vec<GenesisAccount>,
}

/// A validated genesis, ready to use.
#[derive(Clone, Debug)]
pub struct Genesis {
    pub chain_id: String,
    pub genesis_time_ms: u64,
    pub params: Params,
    pub validators: ValidatorSet,
    /// Validator names in set order, for logs and status tables.
    pub validator_names: Vec<String>,
    pub accounts: Vec<(Address, u64)>,
    /// SHA-256 of the genesis file's bytes; stored in the database.
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field} {problem}")]
pub struct GenesisError {
    pub file: String,
    pub field: String,
    pub problem: String,
}

/// u64 values above 2^53 may be written as strings so JSON readers do not round them.
fn u64_from_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not an unsigned 64-bit integer (0 ..= 18446744073709551615)"
            ))
        }),
    }
}

impl Genesis {
    pub fn load(path: &Path) -> Result<Self, GenesisError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| GenesisError {
            file: file.clone(),
            field: "(file)".into(),
            problem: format!("cannot be read: {e}; pass the path of an existing genesis.json"),
        })?;
        Self::from_bytes(&file, &bytes)
    }

    /// Parses and validates `bytes`; `file` is only used in error messages.
    pub fn from_bytes(file: &str, bytes: &[u8]) -> Result<Self, GenesisError> {
        let parsed: GenesisFile = serde_json::from_slice(bytes).map_err(|e| GenesisError {
            file: file.into(),
            field: format!("line {} column {}:", e.line(), e.column()),
            problem: e.to_string(),
        })?;
        let mut genesis = parsed.validate(file)?;
        genesis.hash = sha256(bytes);
        Ok(genesis)
    }

    pub fn validator_set(&self) -> &ValidatorSet {
        &self.validators
    }
}

impl GenesisFile {
    /// Semantic checks; the hash is left zero for the caller to fill in.
    pub fn validate(self, file: &str) -> Result<Genesis, GenesisError> {
        let err = |field: String, problem: String| GenesisError {
            file: file.into(),
            field,
            problem,
        };
        if self.chain_id.is_empty()
            || self.chain_id.len() > MAX_CHAIN_ID_LEN
            || !self.chain_id.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(err(
                "chain_id".into(),
                format!(
                    "must be 1 to {MAX_CHAIN_ID_LEN} printable ASCII characters without spaces, e.g. \"tally-local\""
                ),
            ));
        }
        let p = &self.params;
        if p.max_tx_bytes < 128 {
            return Err(err(
                "params.max_tx_bytes".into(),
                "must be at least 128 (a transfer is about 150 bytes)".into(),
            ));
        }
        if p.block_max_txs == 0 {
            return Err(err(
                "params.block_max_txs".into(),
                "must be at least 1".into(),
            ));
        }
        if p.block_max_bytes < u64::from(p.max_tx_bytes) {
            return Err(err(
                "params.block_max_bytes".into(),
                format!(
                    "({}) must be at least params.max_tx_bytes ({}) so any valid tx fits a block",
                    p.block_max_bytes, p.max_tx_bytes
                ),
            ));
        }
        for (name, v) in [
            ("timeout_propose_ms", p.timeout_propose_ms),
            ("timeout_prevote_ms", p.timeout_prevote_ms),
            ("timeout_precommit_ms", p.timeout_precommit_ms),
        ] {
            if v == 0 || v > 600_000 {
                return Err(err(
                    format!("params.{name}"),
                    "must be between 1 and 600000 milliseconds".into(),
                ));
            }
        }
        if self.validators.is_empty() {
            return Err(err(
                "validators".into(),
                "is empty; list at least one validator (name, pubkey, power)".into(),
            ));
        }
        let mut validators = Vec::with_capacity(self.validators.len());
        let mut names = Vec::with_capacity(self.validators.len());
        let mut total: u64 = 0;
        for (i, v) in self.validators.iter().enumerate() {
            let pubkey: [u8; 33] = from_hex_array(&v.pubkey).map_err(|e| {
                err(
                    format!("validators[{i}].pubkey"),
                    format!("is not a compressed secp256k1 key (expected 66 hex chars): {e}"),
                )
            })?;
            parse_public_key(&pubkey).map_err(|_| {
                err(
                    format!("validators[{i}].pubkey"),
                    "is not a point on secp256k1 (expected a 33-byte compressed key starting 02 or 03)".into(),
                )
            })?;
            if v.power == 0 {
                return Err(err(
                    format!("validators[{i}].power"),
                    "must be at least 1".into(),
                ));
            }
            total = total
                .checked_add(v.power)
                .filter(|t| *t <= crate::validators::MAX_TOTAL_POWER)
                .ok_or_else(|| {
                    err(
                        format!("validators[{i}].power"),
                        format!(
                            "makes the total voting power exceed {}; use smaller powers",
                            crate::validators::MAX_TOTAL_POWER
                        ),
                    )
                })?;
            let address = address_of(&pubkey);
            if validators.iter().any(|x: &Validator| x.address == address) {
                return Err(err(
                    format!("validators[{i}].pubkey"),
                    "appears twice; each validator key may be listed once".into(),
                ));
            }
            validators.push(Validator {
                address,
                pubkey,
                power: v.power,
            });
            names.push(v.name.clone());
        }
        let mut accounts: Vec<(Address, u64)> = Vec::with_capacity(self.accounts.len());
        let mut seen = std::collections::HashSet::with_capacity(self.accounts.len());
        let mut supply: u64 = 0;
        for (i, a) in self.accounts.iter().enumerate() {
            let address: Address = from_hex_array(&a.address).map_err(|e| {
                err(
                    format!("accounts[{i}].address"),
                    format!("is not an address (expected 40 hex chars): {e}"),
                )
            })?;
            if !seen.insert(address) {
                return Err(err(
                    format!("accounts[{i}].address"),
                    format!("{} appears twice; merge the balances", to_hex(&address)),
                ));
            }
            supply = supply.checked_add(a.balance).ok_or_else(|| {
                err(
                    format!("accounts[{i}].balance"),
                    "makes the total supply overflow u64; lower the balances".into(),
                )
            })?;
            accounts.push((address, a.balance));
        }
        Ok(Genesis {
            chain_id: self.chain_id,
            genesis_time_ms: self.genesis_time_ms,
            params: self.params,
            validators: ValidatorSet::new(validators).map_err(|e| err("validators".into(), e))?,
            validator_names: names,
            accounts,
            hash: [0u8; 32],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "chain_id": "tally-test",
            "genesis_time_ms": 0,
            "params": {"block_max_txs": 100, "block_max_bytes": 100000, "max_tx_bytes": 1024, "min_fee": 1},
            "validators": [{"name": "v0", "pubkey": "020c999b74a4fc101fbd0cbc943ce6da0219717b6e35599b72fe6fa57369e516c0", "power": 10}],
            "accounts": [{"address": "2378b50dae7d4a9a336cb1b72832db240816988d", "balance": "18446744073709551615"}]
        })
    }

    fn load(v: &serde_json::Value) -> Result<Genesis, GenesisError> {
        Genesis::from_bytes("genesis.json", &serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn valid_genesis_loads_and_big_balances_can_be_strings() {
        let g = load(&sample()).unwrap();
        assert_eq!(g.accounts[0].1, u64::MAX);
        assert_eq!(g.validators.total_power(), 10);
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| v["validators"][0]["pubkey"] = "02ab".into()),
                "validators[0].pubkey is not a compressed secp256k1 key (expected 66 hex chars)",
            ),
            (
                Box::new(|v| v["validators"][0]["power"] = 0.into()),
                "validators[0].power must be at least 1",
            ),
            (
                Box::new(|v| v["validators"] = serde_json::json!([])),
                "validators is empty",
            ),
            (
                Box::new(|v| v["accounts"][0]["address"] = "zz".into()),
                "accounts[0].address is not an address",
            ),
            (Box::new(|v| v["chain_id"] = "".into()), "chain_id must be"),
            (
                Box::new(|v| {
                    let a = v["accounts"][0].clone();
                    v["accounts"].as_array_mut().unwrap().push(a);
                }),
                "appears twice",
            ),
            (
                Box::new(|v| v["params"]["max_tx_bytes"] = 10.into()),
                "params.max_tx_bytes must be at least 128",
            ),
            (
                Box::new(|v| v["params"]["bogus"] = 1.into()),
                "unknown field `bogus`",
            ),
        ];
        for (mutate, expected) in cases {
            let mut v = sample();
            mutate(&mut v);
            let e = load(&v).unwrap_err().to_string();
            assert!(e.starts_with("genesis.json: "), "{e}");
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }
}
