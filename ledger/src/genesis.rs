//! `genesis.json`: loading and validation. Every error names the file, the field and the
//! fix, because a bad genesis is a user's mistake that must be easy to correct.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use serde::de::{self, SeqAccess, Visitor};
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
    /// How far ahead of a validator's own clock a proposed block's time may be: a
    /// validator prevotes nil on a proposal timed later than its clock plus this bound
    /// (DESIGN.md, "Block time"). In genesis so every validator applies the same bound.
    #[serde(default = "defaults::max_clock_drift_ms")]
    pub max_clock_drift_ms: u64,
    /// The protocol the chain runs: 1 (transfers, a fixed validator set) or 2 (issue 20's
    /// staking formats). Absent means 1, and 1 is not written, so every genesis file
    /// from before protocol 2 loads, and a protocol-1 genesis is written as before.
    /// The ledger executes both; tallyd runs protocol-1 chains only so far (issue 20).
    #[serde(
        default = "defaults::protocol_version",
        skip_serializing_if = "defaults::is_protocol_1"
    )]
    pub protocol_version: u32,
    /// Protocol 2's staking parameters; absent means [`StakingParams::default`] (see
    /// [`Params::staking`]). Not written when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staking: Option<StakingParams>,
    /// Issue 21: the blocks over which proposers' signals for the next protocol are
    /// counted ([`crate::upgrade`]). Absent means 100, and 100 is not written, so existing
    /// genesis files keep their bytes and hash.
    #[serde(
        default = "defaults::upgrade_window",
        skip_serializing_if = "defaults::is_upgrade_window"
    )]
    pub upgrade_window: u64,
    /// Issue 21: blocks between the block that records an activation and the first block
    /// of the new protocol. Absent means 20, and 20 is not written.
    #[serde(
        default = "defaults::upgrade_lead",
        skip_serializing_if = "defaults::is_upgrade_lead"
    )]
    pub upgrade_lead: u64,
}

/// Protocol 2's staking and slashing parameters (issue 20), `params.staking` in genesis.
/// Every field has a default, so a file may list only the ones it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StakingParams {
    /// Stake per unit of voting power: power = stake / stake_per_power.
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub stake_per_power: u64,
    /// Least stake that puts an unjailed validator in the set.
    #[serde(deserialize_with = "u64_from_number_or_string")]
    pub min_validator_stake: u64,
    /// Largest validator set (the top validators by power, ties by key).
    pub max_validators: u32,
    /// Blocks an unbonding entry waits before it is paid back.
    pub unbonding_blocks: u64,
    /// Blocks a jailed validator stays jailed.
    pub jail_blocks: u64,
    /// Consecutive missed commits that jail a validator (no slash).
    pub downtime_jail_after: u64,
    /// Share of an equivocator's stake burned, in basis points (1/10,000).
    pub slash_fraction_bps: u32,
    /// Oldest evidence (in blocks) a block may carry.
    pub evidence_max_age_blocks: u64,
}

impl Default for StakingParams {
    fn default() -> Self {
        Self {
            stake_per_power: 1_000,
            min_validator_stake: 10_000,
            max_validators: 100,
            unbonding_blocks: 1_000,
            jail_blocks: 100,
            downtime_jail_after: 50,
            slash_fraction_bps: 500,
            evidence_max_age_blocks: 1_000,
        }
    }
}

/// Longest `params.upgrade_window`: a block that signals reads that many headers.
pub const MAX_UPGRADE_WINDOW: u64 = 10_000;
/// Longest `params.upgrade_lead`.
pub const MAX_UPGRADE_LEAD: u64 = 1_000_000;

/// Most validators `params.staking.max_validators` may allow.
pub const MAX_VALIDATORS_LIMIT: u32 = 10_000;

impl Params {
    /// The staking parameters in effect: the genesis's, or the defaults.
    pub fn staking(&self) -> StakingParams {
        self.staking.clone().unwrap_or_default()
    }
}

impl StakingParams {
    /// Range checks; the error is (field under `params.staking.`, problem).
    fn check(&self) -> Result<(), (&'static str, String)> {
        let at_least_1 = |name, v: u64| {
            if v == 0 {
                Err((name, "must be at least 1".to_string()))
            } else {
                Ok(())
            }
        };
        at_least_1("stake_per_power", self.stake_per_power)?;
        at_least_1("unbonding_blocks", self.unbonding_blocks)?;
        at_least_1("jail_blocks", self.jail_blocks)?;
        at_least_1("downtime_jail_after", self.downtime_jail_after)?;
        at_least_1("evidence_max_age_blocks", self.evidence_max_age_blocks)?;
        if self.min_validator_stake < self.stake_per_power {
            return Err((
                "min_validator_stake",
                format!(
                    "({}) must be at least stake_per_power ({}) so every validator in the set has power",
                    self.min_validator_stake, self.stake_per_power
                ),
            ));
        }
        if self.max_validators == 0 || self.max_validators > MAX_VALIDATORS_LIMIT {
            return Err((
                "max_validators",
                format!("must be between 1 and {MAX_VALIDATORS_LIMIT}"),
            ));
        }
        if self.slash_fraction_bps > 10_000 {
            return Err((
                "slash_fraction_bps",
                "must be at most 10000 (basis points: 10000 burns the whole stake)".into(),
            ));
        }
        if self.evidence_max_age_blocks > self.unbonding_blocks {
            return Err((
                "evidence_max_age_blocks",
                format!(
                    "({}) must be at most unbonding_blocks ({}): stake must not finish unbonding while evidence against it can still be committed",
                    self.evidence_max_age_blocks, self.unbonding_blocks
                ),
            ));
        }
        Ok(())
    }
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
    pub fn max_clock_drift_ms() -> u64 {
        2000
    }
    pub fn protocol_version() -> u32 {
        crate::types::PROTOCOL_1
    }
    pub fn is_protocol_1(v: &u32) -> bool {
        *v == crate::types::PROTOCOL_1
    }
    pub fn upgrade_window() -> u64 {
        100
    }
    pub fn is_upgrade_window(v: &u64) -> bool {
        *v == upgrade_window()
    }
    pub fn upgrade_lead() -> u64 {
        20
    }
    pub fn is_upgrade_lead(v: &u64) -> bool {
        *v == upgrade_lead()
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
            max_clock_drift_ms: defaults::max_clock_drift_ms(),
            // New chains stay on protocol 1 until protocol 2 executes (issue 20).
            protocol_version: defaults::protocol_version(),
            staking: None,
            upgrade_window: defaults::upgrade_window(),
            upgrade_lead: defaults::upgrade_lead(),
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
    /// Protocol 2 (required there, refused on protocol 1): hex of the 20-byte address that
    /// owns the validator's initial bond of `power` x `stake_per_power`. Not written when
    /// absent, so a protocol-1 genesis keeps its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
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
    /// Protocol 2: the operator of each validator, in set order (empty on protocol 1).
    pub operators: Vec<Address>,
    /// Funded accounts in file order. Only needed to build the state at height 0: a node
    /// releases them ([`Genesis::release_accounts`]) once its store is open, so a genesis
    /// with millions of accounts does not stay in memory for the node's life.
    pub accounts: Vec<(Address, u64)>,
    /// SHA-256 of the genesis file's bytes; stored in the database.
    pub hash: Hash,
    /// Set by [`Genesis::release_accounts`].
    accounts_released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field} {problem}")]
pub struct GenesisError {
    pub file: String,
    pub field: String,
    pub problem: String,
}

/// u64 values above 2^53 may be written as strings so JSON readers do not round them.
/// (A visitor rather than an untagged enum: no buffering, which matters for a genesis
/// with millions of balances.)
fn u64_from_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct U64Visitor;
    impl Visitor<'_> for U64Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned 64-bit integer, as a number or a string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| {
                E::custom(format!(
                    "{v} is negative; expected 0 ..= 18446744073709551615"
                ))
            })
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            s.parse().map_err(|_| {
                E::custom(format!(
                    "\"{s}\" is not an unsigned 64-bit integer (0 ..= 18446744073709551615)"
                ))
            })
        }
    }
    d.deserialize_any(U64Visitor)
}

/// What [`Genesis::from_bytes`] parses: [`GenesisFile`] with the accounts decoded straight
/// into (address, balance) pairs, so a genesis with a million accounts costs no string
/// allocation per account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenesis {
    chain_id: String,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    genesis_time_ms: u64,
    params: Params,
    validators: Vec<GenesisValidator>,
    accounts: RawAccounts,
}

/// Accounts in file order. An address that is not 40 hex characters is kept as zeros and
/// the first such problem is remembered, so validation reports it by index like any other.
#[derive(Default)]
struct RawAccounts {
    list: Vec<(Address, u64)>,
    bad_address: Option<(usize, String)>,
}

/// An address as it was written: parsed, or why it is not an address.
struct RawAddress(Result<Address, String>);

impl<'de> Deserialize<'de> for RawAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AddressVisitor;
        impl Visitor<'_> for AddressVisitor {
            type Value = RawAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex address string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawAddress, E> {
                Ok(RawAddress(from_hex_array(s).map_err(|e| e.to_string())))
            }
        }
        d.deserialize_str(AddressVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    address: RawAddress,
    #[serde(deserialize_with = "u64_from_number_or_string")]
    balance: u64,
}

impl<'de> Deserialize<'de> for RawAccounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AccountsVisitor;
        impl<'de> Visitor<'de> for AccountsVisitor {
            type Value = RawAccounts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of accounts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAccounts, A::Error> {
                let mut out = RawAccounts {
                    list: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20)),
                    bad_address: None,
                };
                while let Some(a) = seq.next_element::<RawAccount>()? {
                    let address = a.address.0.unwrap_or_else(|e| {
                        if out.bad_address.is_none() {
                            out.bad_address = Some((out.list.len(), e));
                        }
                        [0u8; 20]
                    });
                    out.list.push((address, a.balance));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(AccountsVisitor)
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
        let parsed: RawGenesis = serde_json::from_slice(bytes).map_err(|e| GenesisError {
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

    /// Protocol 2: the initial bonds as (operator, validator, amount), in set order: each
    /// genesis validator's power x `stake_per_power`, owned by its operator (empty on
    /// protocol 1). Validation proved the products and their sum with the balances fit
    /// a u64.
    pub fn bonds(&self) -> Vec<(Address, Validator, u64)> {
        let per_power = self.params.staking().stake_per_power;
        self.operators
            .iter()
            .zip(self.validators.validators())
            .map(|(op, v)| (*op, v.clone(), v.power.saturating_mul(per_power)))
            .collect()
    }

    /// Frees the account list (everything else stays, the hash included). For a node whose
    /// store already holds the genesis state; building that state again (a new database,
    /// `RocksStore::reset_state`, `MemStore::new`) needs a freshly loaded genesis.
    pub fn release_accounts(&mut self) {
        self.accounts = Vec::new();
        self.accounts_released = true;
    }

    /// Whether [`Genesis::release_accounts`] was called: `accounts` is then empty whatever
    /// the file lists, and the genesis state cannot be built from this value.
    pub fn accounts_released(&self) -> bool {
        self.accounts_released
    }
}

/// Balance of every bulk account (see [`bulk_account_address`]).
pub const BULK_ACCOUNT_BALANCE: u64 = 1_000_000;

/// Address of bulk genesis account `i`: the first 20 bytes of
/// SHA-256("tally-genesis-account" || i as u64 little-endian). Bulk accounts are ballast
/// for state-size tests and benchmarks: funded in genesis, but nobody holds their keys.
pub fn bulk_account_address(i: u64) -> Address {
    let digest = crate::hash::sha256_parts(&[b"tally-genesis-account", &i.to_le_bytes()]);
    let mut address = [0u8; 20];
    address.copy_from_slice(&digest[..20]);
    address
}

/// Writes `file` as genesis JSON with `bulk` more accounts after its own:
/// [`bulk_account_address`]`(0 .. bulk)`, [`BULK_ACCOUNT_BALANCE`] each. Accounts are one
/// per line (about 60 bytes each), so a million of them take about 60 MB and a second or
/// so; `progress` is called with the number of bulk accounts written every 100,000.
pub fn write_json<W: Write>(
    mut out: W,
    file: &GenesisFile,
    bulk: u64,
    mut progress: impl FnMut(u64),
) -> io::Result<()> {
    let indent = |text: String| text.replace('\n', "\n  ");
    writeln!(out, "{{")?;
    writeln!(
        out,
        "  \"chain_id\": {},",
        serde_json::to_string(&file.chain_id)?
    )?;
    writeln!(out, "  \"genesis_time_ms\": {},", file.genesis_time_ms)?;
    writeln!(
        out,
        "  \"params\": {},",
        indent(serde_json::to_string_pretty(&file.params)?)
    )?;
    writeln!(
        out,
        "  \"validators\": {},",
        indent(serde_json::to_string_pretty(&file.validators)?)
    )?;
    write!(out, "  \"accounts\": [")?;
    let mut sep = "\n";
    for a in &file.accounts {
        write!(out, "{sep}    {}", serde_json::to_string(a)?)?;
        sep = ",\n";
    }
    let mut hex = [0u8; 40];
    for i in 0..bulk {
        hex::encode_to_slice(bulk_account_address(i), &mut hex)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // Hex digits are ASCII.
        let hex = std::str::from_utf8(&hex).map_err(|e| io::Error::other(e.to_string()))?;
        write!(
            out,
            "{sep}    {{\"address\":\"{hex}\",\"balance\":{BULK_ACCOUNT_BALANCE}}}"
        )?;
        sep = ",\n";
        if (i + 1) % 100_000 == 0 {
            progress(i + 1);
        }
    }
    if sep == "\n" {
        writeln!(out, "]")?;
    } else {
        writeln!(out, "\n  ]")?;
    }
    writeln!(out, "}}")?;
    out.flush()
}

impl GenesisFile {
    /// Semantic checks; the hash is left zero for the caller to fill in.
    pub fn validate(self, file: &str) -> Result<Genesis, GenesisError> {
        let mut accounts = RawAccounts {
            list: Vec::with_capacity(self.accounts.len()),
            bad_address: None,
        };
        for a in &self.accounts {
            let address = from_hex_array(&a.address).unwrap_or_else(|e| {
                if accounts.bad_address.is_none() {
                    accounts.bad_address = Some((accounts.list.len(), e.to_string()));
                }
                [0u8; 20]
            });
            accounts.list.push((address, a.balance));
        }
        RawGenesis {
            chain_id: self.chain_id,
            genesis_time_ms: self.genesis_time_ms,
            params: self.params,
            validators: self.validators,
            accounts,
        }
        .validate(file)
    }
}

impl RawGenesis {
    fn validate(self, file: &str) -> Result<Genesis, GenesisError> {
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
        if p.max_clock_drift_ms == 0 || p.max_clock_drift_ms > 3_600_000 {
            return Err(err(
                "params.max_clock_drift_ms".into(),
                "must be between 1 and 3600000 milliseconds (default 2000)".into(),
            ));
        }
        if p.protocol_version != crate::types::PROTOCOL_1
            && p.protocol_version != crate::types::PROTOCOL_2
        {
            return Err(err(
                "params.protocol_version".into(),
                format!("is {}; must be 1 or 2 (absent means 1)", p.protocol_version),
            ));
        }
        if p.upgrade_window == 0 || p.upgrade_window > MAX_UPGRADE_WINDOW {
            return Err(err(
                "params.upgrade_window".into(),
                format!("must be between 1 and {MAX_UPGRADE_WINDOW} blocks (default 100)"),
            ));
        }
        if p.upgrade_lead == 0 || p.upgrade_lead > MAX_UPGRADE_LEAD {
            return Err(err(
                "params.upgrade_lead".into(),
                format!("must be between 1 and {MAX_UPGRADE_LEAD} blocks (default 20)"),
            ));
        }
        if let Some(staking) = &p.staking {
            staking
                .check()
                .map_err(|(field, problem)| err(format!("params.staking.{field}"), problem))?;
        }
        if self.validators.is_empty() {
            return Err(err(
                "validators".into(),
                "is empty; list at least one validator (name, pubkey, power)".into(),
            ));
        }
        let protocol_2 = p.protocol_version >= crate::types::PROTOCOL_2;
        let staking = p.staking();
        let mut validators = Vec::with_capacity(self.validators.len());
        let mut names = Vec::with_capacity(self.validators.len());
        let mut operators = Vec::with_capacity(self.validators.len());
        let mut bonded: u64 = 0;
        let mut total: u64 = 0;
        if protocol_2 && self.validators.len() > staking.max_validators as usize {
            return Err(err(
                "validators".into(),
                format!(
                    "lists {} validators, more than params.staking.max_validators ({}); \
                     raise the limit or list fewer",
                    self.validators.len(),
                    staking.max_validators
                ),
            ));
        }
        for (i, v) in self.validators.iter().enumerate() {
            match (&v.operator, protocol_2) {
                (Some(_), false) => {
                    return Err(err(
                        format!("validators[{i}].operator"),
                        "is a protocol-2 field; remove it or set params.protocol_version to 2"
                            .into(),
                    ))
                }
                (None, true) => {
                    return Err(err(
                        format!("validators[{i}].operator"),
                        "is missing; on protocol 2 each validator names the address (40 hex \
                         chars) that owns its initial bond"
                            .into(),
                    ))
                }
                (Some(op), true) => {
                    let op: Address = from_hex_array(op).map_err(|e| {
                        err(
                            format!("validators[{i}].operator"),
                            format!("is not an address (expected 40 hex chars): {e}"),
                        )
                    })?;
                    let stake = v
                        .power
                        .checked_mul(staking.stake_per_power)
                        .and_then(|s| bonded.checked_add(s).map(|b| (s, b)));
                    let Some((stake, sum)) = stake else {
                        return Err(err(
                            format!("validators[{i}].power"),
                            "x params.staking.stake_per_power makes the bonded supply \
                             overflow u64; use smaller powers"
                                .into(),
                        ));
                    };
                    if stake < staking.min_validator_stake {
                        return Err(err(
                            format!("validators[{i}].power"),
                            format!(
                                "gives a stake of {stake} (power x stake_per_power), below \
                                 params.staking.min_validator_stake ({}); the validator would \
                                 leave the set at height 3",
                                staking.min_validator_stake
                            ),
                        ));
                    }
                    bonded = sum;
                    operators.push(op);
                }
                (None, false) => {}
            }
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
        let accounts = self.accounts.list;
        // The first problem in file order, as a one-pass check would find it: at one index,
        // a bad address before a duplicate before an overflowing balance. Linear apart from
        // one sort, and with 8 bytes per account instead of a hash set of addresses.
        let mut first: Option<(usize, u8, String, String)> =
            self.accounts.bad_address.map(|(i, e)| {
                (
                    i,
                    0,
                    format!("accounts[{i}].address"),
                    format!("is not an address (expected 40 hex chars): {e}"),
                )
            });
        let mut keep_first = |i: usize, rank: u8, field: String, problem: String| {
            if first.as_ref().is_none_or(|f| (i, rank) < (f.0, f.1)) {
                first = Some((i, rank, field, problem));
            }
        };
        let mut order: Vec<usize> = (0..accounts.len()).collect();
        order.sort_unstable_by(|&a, &b| accounts[a].0.cmp(&accounts[b].0).then(a.cmp(&b)));
        // In each run of equal addresses the second index is where a scan in file order
        // would first see a repeat.
        if let Some(i) = order
            .windows(2)
            .filter(|w| accounts[w[0]].0 == accounts[w[1]].0)
            .map(|w| w[1])
            .min()
        {
            keep_first(
                i,
                1,
                format!("accounts[{i}].address"),
                format!(
                    "{} appears twice; merge the balances",
                    to_hex(&accounts[i].0)
                ),
            );
        }
        drop(order);
        // Protocol 2: the supply counts the genesis bonds, so balances + bonds must fit.
        let mut supply: u64 = bonded;
        for (i, (_, balance)) in accounts.iter().enumerate() {
            match supply.checked_add(*balance) {
                Some(s) => supply = s,
                None => {
                    keep_first(
                        i,
                        2,
                        format!("accounts[{i}].balance"),
                        "makes the total supply overflow u64; lower the balances".into(),
                    );
                    break;
                }
            }
        }
        if let Some((_, _, field, problem)) = first {
            return Err(err(field, problem));
        }
        if protocol_2 {
            // Every voting power the chain can ever have is at most supply / stake_per_power:
            // keep it under the set's limit, so a computed set never overflows it.
            if supply / staking.stake_per_power > crate::validators::MAX_TOTAL_POWER {
                return Err(err(
                    "params.staking.stake_per_power".into(),
                    format!(
                        "({}) is too small for a supply of {supply}: supply / stake_per_power \
                         must be at most {}",
                        staking.stake_per_power,
                        crate::validators::MAX_TOTAL_POWER
                    ),
                ));
            }
            // Protocol 2 sets are sorted by address (the rule for every computed set), the
            // genesis set too; names and operators follow their validators.
            let mut order: Vec<usize> = (0..validators.len()).collect();
            order.sort_by_key(|&i| validators[i].address);
            validators = order.iter().map(|&i| validators[i].clone()).collect();
            names = order.iter().map(|&i| names[i].clone()).collect();
            operators = order.iter().map(|&i| operators[i]).collect();
        }
        Ok(Genesis {
            chain_id: self.chain_id,
            genesis_time_ms: self.genesis_time_ms,
            params: self.params,
            validators: ValidatorSet::new(validators).map_err(|e| err("validators".into(), e))?,
            validator_names: names,
            operators,
            accounts,
            hash: [0u8; 32],
            accounts_released: false,
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
                Box::new(|v| {
                    v["accounts"][0]["balance"] = 1.into();
                    let a = v["accounts"][0].clone();
                    let accounts = v["accounts"].as_array_mut().unwrap();
                    accounts.push(serde_json::json!({"address": "00".repeat(20), "balance": 1}));
                    accounts.push(a);
                    accounts.push(serde_json::json!({"address": "bad", "balance": 1}));
                }),
                "accounts[2].address 2378b50dae7d4a9a336cb1b72832db240816988d appears twice",
            ),
            (
                Box::new(|v| {
                    v["accounts"][0]["balance"] = 1.into();
                    v["accounts"].as_array_mut().unwrap().extend([
                        serde_json::json!({"address": "11".repeat(20), "balance": 1}),
                        serde_json::json!({"address": "11".repeat(19), "balance": 1}),
                        serde_json::json!({"address": "11".repeat(20), "balance": 1}),
                    ])
                }),
                "accounts[2].address is not an address (expected 40 hex chars)",
            ),
            (
                Box::new(|v| v["accounts"][0]["balance"] = (-1).into()),
                "-1 is negative",
            ),
            (
                Box::new(|v| {
                    v["accounts"]
                        .as_array_mut()
                        .unwrap()
                        .push(serde_json::json!({"address": "22".repeat(20), "balance": 1}))
                }),
                "accounts[1].balance makes the total supply overflow u64",
            ),
            (
                Box::new(|v| v["params"]["max_tx_bytes"] = 10.into()),
                "params.max_tx_bytes must be at least 128",
            ),
            (
                Box::new(|v| v["params"]["bogus"] = 1.into()),
                "unknown field `bogus`",
            ),
            (
                Box::new(|v| v["params"]["protocol_version"] = 3.into()),
                "params.protocol_version is 3; must be 1 or 2",
            ),
            (
                Box::new(|v| v["params"]["staking"] = serde_json::json!({"stake_per_power": 0})),
                "params.staking.stake_per_power must be at least 1",
            ),
            (
                Box::new(|v| {
                    v["params"]["staking"] =
                        serde_json::json!({"stake_per_power": 100, "min_validator_stake": 99})
                }),
                "params.staking.min_validator_stake (99) must be at least stake_per_power (100)",
            ),
            (
                Box::new(|v| v["params"]["staking"] = serde_json::json!({"max_validators": 0})),
                "params.staking.max_validators must be between 1 and 10000",
            ),
            (
                Box::new(|v| {
                    v["params"]["staking"] = serde_json::json!({"slash_fraction_bps": 10_001})
                }),
                "params.staking.slash_fraction_bps must be at most 10000",
            ),
            (
                Box::new(|v| {
                    v["params"]["staking"] = serde_json::json!(
                        {"unbonding_blocks": 10, "evidence_max_age_blocks": 11})
                }),
                "params.staking.evidence_max_age_blocks (11) must be at most unbonding_blocks (10)",
            ),
            (
                Box::new(|v| v["params"]["staking"] = serde_json::json!({"jail_blocks": 0})),
                "params.staking.jail_blocks must be at least 1",
            ),
            (
                Box::new(|v| {
                    v["params"]["staking"] = serde_json::json!({"downtime_jail_after": 0})
                }),
                "params.staking.downtime_jail_after must be at least 1",
            ),
            (
                Box::new(|v| v["params"]["staking"] = serde_json::json!({"stake_per_pow": 1})),
                "unknown field `stake_per_pow`",
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

    #[test]
    fn a_genesis_without_protocol_fields_is_protocol_1_and_is_written_as_before() {
        let g = load(&sample()).unwrap();
        assert_eq!(g.params.protocol_version, 1);
        assert_eq!(g.params.staking, None);
        assert_eq!(g.params.staking(), StakingParams::default());
        // A protocol-1 genesis is written with exactly the fields it had before protocol
        // 2, so its bytes (and so its hash, the chain's identity) do not change.
        let written = serde_json::to_value(sample_file().params).unwrap();
        let mut keys: Vec<&str> = written
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "block_max_bytes",
                "block_max_txs",
                "max_clock_drift_ms",
                "max_tx_bytes",
                "min_fee",
                "timeout_commit_ms",
                "timeout_precommit_delta_ms",
                "timeout_precommit_ms",
                "timeout_prevote_delta_ms",
                "timeout_prevote_ms",
                "timeout_propose_delta_ms",
                "timeout_propose_ms",
            ]
        );
        // Its hash is the SHA-256 of the file's bytes, whatever the fields.
        let bytes = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(
            Genesis::from_bytes("g", &bytes).unwrap().hash,
            sha256(&bytes)
        );
    }

    #[test]
    fn a_protocol_2_genesis_loads_with_partial_staking_params_and_round_trips() {
        let mut v = sample();
        v["params"]["protocol_version"] = 2.into();
        v["params"]["staking"] =
            serde_json::json!({"max_validators": 7, "min_validator_stake": "5000"});
        // Protocol 2: validators name their operator, and the supply counts their bonds.
        let e = load(&v).unwrap_err().to_string();
        assert!(e.contains("validators[0].operator is missing"), "{e}");
        v["validators"][0]["operator"] = "22".repeat(20).into();
        let e = load(&v).unwrap_err().to_string();
        assert!(
            e.contains("accounts[0].balance makes the total supply overflow u64"),
            "{e}"
        );
        v["accounts"][0]["balance"] = 1_000.into();
        let g = load(&v).unwrap();
        assert_eq!(g.operators, [[0x22; 20]]);
        let bonds = g.bonds();
        assert_eq!(bonds.len(), 1);
        assert_eq!((bonds[0].0, bonds[0].2), ([0x22; 20], 10 * 1000));
        assert_eq!(g.params.protocol_version, 2);
        let s = g.params.staking();
        assert_eq!((s.max_validators, s.min_validator_stake), (7, 5000));
        assert_eq!(s.stake_per_power, StakingParams::default().stake_per_power);
        // Written and read again: the same parameters.
        let file: GenesisFile = serde_json::from_value(v).unwrap();
        let mut out = Vec::new();
        write_json(&mut out, &file, 0, |_| {}).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"protocol_version\": 2"), "{text}");
        assert_eq!(
            Genesis::from_bytes("g", text.as_bytes()).unwrap().params,
            g.params
        );
        // The defaults pass their own checks.
        assert_eq!(StakingParams::default().check(), Ok(()));
    }

    fn sample_file() -> GenesisFile {
        serde_json::from_value(sample()).unwrap()
    }

    #[test]
    fn bulk_account_addresses_are_pinned() {
        // The bench tooling derives these addresses itself: the formula is an interface.
        assert_eq!(
            to_hex(&bulk_account_address(0)),
            "bb0d9973d6d95bf89fc89c6dab7f91907db40130"
        );
        assert_eq!(
            to_hex(&bulk_account_address(999_999)),
            "26bc63dc618c1dcaaa665e09da9093774b523b53"
        );
    }

    #[test]
    fn bulk_genesis_is_deterministic_valid_and_lists_distinct_accounts() {
        let mut file = sample_file();
        file.accounts[0].balance = 5;
        let write = |file: &GenesisFile, bulk| {
            let mut out = Vec::new();
            write_json(&mut out, file, bulk, |_| {}).unwrap();
            out
        };
        let bytes = write(&file, 1000);
        assert_eq!(bytes, write(&file, 1000), "same input, same bytes");
        let g = Genesis::from_bytes("genesis.json", &bytes).unwrap();
        assert_eq!(g.accounts.len(), 1001);
        assert_eq!(
            g.accounts[0],
            (from_hex_array(&file.accounts[0].address).unwrap(), 5)
        );
        for (i, a) in g.accounts[1..].iter().enumerate() {
            assert_eq!(*a, (bulk_account_address(i as u64), BULK_ACCOUNT_BALANCE));
        }
        let distinct: std::collections::HashSet<_> = g.accounts.iter().map(|a| a.0).collect();
        assert_eq!(distinct.len(), 1001);
        // The hand-written JSON is the same genesis as serde's rendering of the same file.
        let mut listed = file.clone();
        listed.accounts.extend((0..1000).map(|i| GenesisAccount {
            address: to_hex(&bulk_account_address(i)),
            balance: BULK_ACCOUNT_BALANCE,
        }));
        let explicit =
            Genesis::from_bytes("genesis.json", &serde_json::to_vec_pretty(&listed).unwrap())
                .unwrap();
        assert_eq!(explicit.accounts, g.accounts);
        assert_eq!(explicit.chain_id, g.chain_id);
        assert_eq!(explicit.params, g.params);
        assert_eq!(explicit.validator_names, g.validator_names);
        // Without bulk accounts it is still valid, and so is a genesis without accounts.
        assert_eq!(
            Genesis::from_bytes("genesis.json", &write(&file, 0))
                .unwrap()
                .accounts,
            g.accounts[..1]
        );
        file.accounts.clear();
        let empty = Genesis::from_bytes("genesis.json", &write(&file, 0)).unwrap();
        assert!(empty.accounts.is_empty());
        let only_bulk = Genesis::from_bytes("genesis.json", &write(&file, 3)).unwrap();
        assert_eq!(only_bulk.accounts[..], g.accounts[1..4]);
    }

    #[test]
    fn released_accounts_are_gone_and_say_so() {
        let mut g = load(&sample()).unwrap();
        let hash = g.hash;
        assert!(!g.accounts_released());
        g.release_accounts();
        assert!(g.accounts.is_empty() && g.accounts_released());
        assert_eq!(g.hash, hash);
        assert!(crate::store::memory::MemStore::new(&g).is_err());
    }
}
