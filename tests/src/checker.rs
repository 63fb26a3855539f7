//! The end-of-run checker of the fault scenarios (issue 18) and of issue 20's headline,
//! after Jepsen's: what every node stored must be one chain that explains every balance,
//! and on protocol 2 every bond, unbonding entry, validator record and burned unit too.
//!
//! [`fetch`] reads each node's blocks and state over RPC into a [`History`]; [`check`] is a
//! pure function of that history, so each rule has a negative control (a doctored history
//! it must reject, in this file's tests). The rules:
//! - no fork: one block hash per height on every node, each block linked to the one below
//!   and timed strictly after it;
//! - no lost write: every tx a client saw committed is in the chain at that height;
//! - no tx twice in a node's chain;
//! - every account's balance and nonce as reported equal a replay of the committed txs
//!   from genesis (sender pays amount + fee, nonce + 1; recipient gets amount; the block's
//!   proposer gets the fee), and each replayed tx was valid (its nonce next, funds enough);
//! - total supply as reported equals genesis.
//!
//! On a protocol-2 chain ([`History::staking`]) the replay also runs issue 20's rules,
//! written here again from the issue and `ledger/src/staking.rs`'s documentation (not by
//! calling the ledger's execution, so a bug there shows as a difference):
//! - Bond moves its amount from the sender's balance into the bond (sender, key) and the
//!   key's stake; Unbond takes up to the bond out of both into an unbonding entry released
//!   at the end of height + `unbonding_blocks`, when it is paid to the operator's balance;
//!   Unjail (by an operator with a bond to the key, jail time over) clears the jail; each
//!   pays its fee to the proposer and raises the nonce, and an Unbond without a bond or
//!   an Unjail that may not unjail is an invalid tx;
//! - evidence in a block (two votes of one validator of that height's replayed set, same
//!   chain, height, round and kind, different blocks, at most `evidence_max_age_blocks` old, not
//!   punished before) burns `slash_fraction_bps` (rounded down) of each bond to the key and
//!   each unbonding entry from it, cuts the stake by the bonds' part, and jails the key
//!   until the block's height + `jail_blocks`; both signatures must verify with the key
//!   the replayed set holds;
//! - downtime: a validator of the set of `last_commit`'s height, not jailed, absent from
//!   it, has missed one more; at `downtime_jail_after` in a row it is jailed for
//!   `jail_blocks`; present, its count is 0;
//! - the set of height H+2, computed at the end of H: unjailed keys with stake >=
//!   `min_validator_stake`, power stake / `stake_per_power`, the top `max_validators` by
//!   power (ties by key), sorted by address (an empty result keeps the set of H+1); every
//!   header's `validators_hash` and `next_validators_hash` must be the replayed sets';
//! - every reported bond and unbonding entry (`/v1/staking/{address}`), validator record
//!   (`/v1/validators/{key}`: stake, jailed until, missed) and the burned total (the
//!   `tally_staking_burned` gauge) equal the replay at the height it was read;
//! - supply: the newest reported balances + bonds + unbonding entries + burned equal the
//!   genesis balances + genesis bonds.
//!
//! State can be read at any heights during a run as well ([`read_state`], e.g. around an
//! unbonding entry's release height): every read is compared with the replay at its
//! height, and the supply sum takes the newest read of each entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use ledger::crypto::{address_of, verify};
use ledger::genesis::{Genesis, StakingParams};
use ledger::hash::to_hex;
use ledger::types::{
    validators_hash, Address, Block, Equivocation, Payload, PublicKeyBytes, Validator,
};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRecord {
    pub id: String,
    pub from: Address,
    pub nonce: u64,
    pub fee: u64,
    pub payload: Payload,
}

/// Who signed the commit a block carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub height: u64,
    pub signers: Vec<Address>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub height: u64,
    /// The round it was committed in.
    pub round: u32,
    /// Its header's time (the proposer's clock, checked by the validators).
    pub time_ms: u64,
    pub hash: String,
    pub prev_hash: String,
    pub proposer: Address,
    pub txs: Vec<TxRecord>,
    /// Protocol 2: the hashes of the sets of this height and the next (hex).
    pub validators_hash: String,
    pub next_validators_hash: Option<String>,
    pub last_commit: Option<CommitRecord>,
    pub evidence: Vec<Equivocation>,
}

impl BlockRecord {
    pub fn from_block(b: &Block) -> Self {
        Self {
            height: b.header.height,
            round: b.header.round,
            time_ms: b.header.time_ms,
            hash: to_hex(&b.hash()),
            prev_hash: to_hex(&b.header.prev_hash),
            proposer: b.header.proposer,
            txs: b
                .txs
                .iter()
                .map(|t| TxRecord {
                    id: to_hex(&t.id()),
                    from: t.sender(),
                    nonce: t.tx.nonce,
                    fee: t.tx.fee,
                    payload: t.tx.payload.clone(),
                })
                .collect(),
            validators_hash: to_hex(&b.header.validators_hash),
            next_validators_hash: b.header.next_validators_hash.as_ref().map(|h| to_hex(h)),
            last_commit: b.last_commit.as_ref().map(|c| CommitRecord {
                height: c.height,
                signers: c.signatures.iter().map(|s| s.validator).collect(),
            }),
            evidence: b.evidence.clone(),
        }
    }
}

/// An account as a node reported it, at the height it reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    pub address: Address,
    pub balance: u64,
    pub nonce: u64,
    pub height: u64,
}

/// An unbonding entry as reported (the API does not show its sequence).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnbondingRecord {
    pub release_height: u64,
    pub amount: u64,
    pub validator: PublicKeyBytes,
}

/// An operator's bonds (by key) and unbonding entries as a node reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StakingRecord {
    pub operator: Address,
    pub height: u64,
    pub bonds: Vec<(PublicKeyBytes, u64)>,
    pub unbonding: Vec<UnbondingRecord>,
}

/// A consensus key's validator record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValidatorState {
    pub stake: u64,
    pub jailed_until_height: u64,
    pub consecutive_missed: u64,
}

/// A validator record as a node reported it (None: the node has no record of the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorReport {
    pub pubkey: PublicKeyBytes,
    pub height: u64,
    pub record: Option<ValidatorState>,
}

/// The burned total as a node reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BurnedRecord {
    pub height: u64,
    pub burned: u64,
}

/// Reads of a node's state; each is compared with the replay at its own height.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateReads {
    pub accounts: Vec<AccountRecord>,
    /// Protocol 2 only.
    pub staking: Vec<StakingRecord>,
    pub validators: Vec<ValidatorReport>,
    pub burned: Vec<BurnedRecord>,
}

impl StateReads {
    pub fn extend(&mut self, other: StateReads) {
        self.accounts.extend(other.accounts);
        self.staking.extend(other.staking);
        self.validators.extend(other.validators);
        self.burned.extend(other.burned);
    }

    fn heights(&self) -> impl Iterator<Item = u64> + '_ {
        let a = self.accounts.iter().map(|a| a.height);
        let s = self.staking.iter().map(|s| s.height);
        let v = self.validators.iter().map(|v| v.height);
        a.chain(s)
            .chain(v)
            .chain(self.burned.iter().map(|b| b.height))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeHistory {
    pub name: String,
    /// Blocks from height 1 up.
    pub blocks: Vec<BlockRecord>,
    /// Every account the chain touched (genesis accounts, senders, recipients, proposers)
    /// and, on protocol 2, every operator's staking, every key's record and the burned
    /// total; earlier reads of any of them may be added.
    pub state: StateReads,
}

/// A client saw `tx_id` committed at `height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub tx_id: String,
    pub height: u64,
}

/// A protocol-2 chain's staking genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StakingGenesis {
    pub params: StakingParams,
    /// Each genesis validator with its operator, whose bond is power x `stake_per_power`.
    pub validators: Vec<(Address, Validator)>,
}

impl StakingGenesis {
    /// The staking genesis of `g`; None on protocol 1.
    pub fn of(g: &Genesis) -> Option<Self> {
        if g.operators.is_empty() {
            return None;
        }
        Some(Self {
            params: g.params.staking(),
            validators: g
                .operators
                .iter()
                .copied()
                .zip(g.validators.validators().iter().cloned())
                .collect(),
        })
    }

    fn bond(&self, v: &Validator) -> u64 {
        v.power.saturating_mul(self.params.stake_per_power)
    }

    /// What a protocol-1 chain (`g`) switches to if it activates protocol 2 (issue 21):
    /// each genesis validator bonded by its own address (stake = power x
    /// `stake_per_power`, raised to `min_validator_stake`, minted at the switch); None on a
    /// protocol-2 genesis.
    pub fn switch_of(g: &Genesis) -> Option<Self> {
        if !g.operators.is_empty() {
            return None;
        }
        Some(Self {
            params: g.params.staking(),
            validators: g
                .validators
                .validators()
                .iter()
                .map(|v| (v.address, v.clone()))
                .collect(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Genesis balances.
    pub genesis: BTreeMap<Address, u64>,
    /// Protocol 2: the staking genesis (None: protocol 1, transfers only).
    pub staking: Option<StakingGenesis>,
    /// A protocol-1 chain: the staking it switches to at the first version-2 header, if
    /// protocol 2 activates ([`StakingGenesis::switch_of`]).
    pub upgrade: Option<StakingGenesis>,
    pub nodes: Vec<NodeHistory>,
    pub observed: Vec<Observation>,
}

impl History {
    /// Genesis balances plus genesis bonds.
    pub fn genesis_supply(&self) -> u128 {
        let balances: u128 = self.genesis.values().map(|b| u128::from(*b)).sum();
        let bonds: u128 = self.staking.as_ref().map_or(0, |s| {
            s.validators
                .iter()
                .map(|(_, v)| u128::from(s.bond(v)))
                .sum()
        });
        balances + bonds
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    Fork {
        height: u64,
        hashes: BTreeMap<String, Vec<String>>,
    },
    BrokenChain {
        node: String,
        height: u64,
        why: String,
    },
    LostTx {
        tx: String,
        height: u64,
        node: String,
        found_at: Option<u64>,
    },
    TxTwice {
        node: String,
        tx: String,
        heights: Vec<u64>,
    },
    InvalidTx {
        node: String,
        height: u64,
        tx: String,
        why: String,
    },
    Balance {
        node: String,
        address: String,
        height: u64,
        reported: u64,
        replayed: u64,
    },
    Nonce {
        node: String,
        address: String,
        height: u64,
        reported: u64,
        replayed: u64,
    },
    Supply {
        node: String,
        reported: u128,
        genesis: u128,
    },
    /// The accounts were read at heights between which txs committed (or, on protocol 2,
    /// evidence burned stake or an unbonding entry was paid): the supply sum of such a
    /// snapshot means nothing (the fetcher waits for a quiet chain to avoid this).
    UnsettledSnapshot { node: String, from: u64, to: u64 },
    /// Evidence a block carried that the replay refuses.
    InvalidEvidence {
        node: String,
        height: u64,
        why: String,
    },
    /// A header's set hash is not the hash of the replayed set.
    SetHash {
        node: String,
        height: u64,
        which: &'static str,
        reported: String,
        replayed: String,
    },
    /// An operator's bonds or unbonding entries differ from the replay's.
    Staking {
        node: String,
        operator: String,
        height: u64,
        reported: String,
        replayed: String,
    },
    ValidatorRecord {
        node: String,
        validator: String,
        height: u64,
        reported: Option<ValidatorState>,
        replayed: Option<ValidatorState>,
    },
    Burned {
        node: String,
        height: u64,
        reported: u64,
        replayed: u64,
    },
}

impl Violation {
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Fork { .. } => "fork",
            Violation::BrokenChain { .. } => "broken chain",
            Violation::LostTx { .. } => "lost tx",
            Violation::TxTwice { .. } => "tx twice",
            Violation::InvalidTx { .. } => "invalid tx",
            Violation::Balance { .. } => "balance",
            Violation::Nonce { .. } => "nonce",
            Violation::Supply { .. } => "supply",
            Violation::UnsettledSnapshot { .. } => "unsettled snapshot",
            Violation::InvalidEvidence { .. } => "invalid evidence",
            Violation::SetHash { .. } => "set hash",
            Violation::Staking { .. } => "staking",
            Violation::ValidatorRecord { .. } => "validator record",
            Violation::Burned { .. } => "burned",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Fork { height, hashes } => {
                write!(f, "fork at height {height}: {hashes:?}")
            }
            Violation::BrokenChain { node, height, why } => {
                write!(f, "{node}: chain broken at height {height}: {why}")
            }
            Violation::LostTx {
                tx,
                height,
                node,
                found_at,
            } => write!(
                f,
                "{node}: tx {tx} seen committed at height {height} is {}",
                found_at.map_or("gone".to_string(), |h| format!("at height {h} instead"))
            ),
            Violation::TxTwice { node, tx, heights } => {
                write!(f, "{node}: tx {tx} committed twice, at heights {heights:?}")
            }
            Violation::InvalidTx {
                node,
                height,
                tx,
                why,
            } => write!(f, "{node}: tx {tx} at height {height} is invalid: {why}"),
            Violation::Balance {
                node,
                address,
                height,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: balance of {address} at height {height} is {reported}, the replay says {replayed}"
            ),
            Violation::Nonce {
                node,
                address,
                height,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: nonce of {address} at height {height} is {reported}, the replay says {replayed}"
            ),
            Violation::Supply {
                node,
                reported,
                genesis,
            } => write!(f, "{node}: total supply {reported}, genesis had {genesis}"),
            Violation::UnsettledSnapshot { node, from, to } => write!(
                f,
                "{node}: state read between heights {from} and {to} while value moved (txs, slashes, unbonding payouts)"
            ),
            Violation::InvalidEvidence { node, height, why } => {
                write!(f, "{node}: evidence in block {height} is invalid: {why}")
            }
            Violation::SetHash {
                node,
                height,
                which,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: block {height}'s {which} is {reported}, the replayed set's hash is {replayed}"
            ),
            Violation::Staking {
                node,
                operator,
                height,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: staking of {operator} at height {height} is {reported}, the replay says {replayed}"
            ),
            Violation::ValidatorRecord {
                node,
                validator,
                height,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: validator record of {validator} at height {height} is {reported:?}, the replay says {replayed:?}"
            ),
            Violation::Burned {
                node,
                height,
                reported,
                replayed,
            } => write!(
                f,
                "{node}: burned total at height {height} is {reported}, the replay says {replayed}"
            ),
        }
    }
}

/// The longest time between two consecutive blocks' header times, in ms: how long the
/// chain stood still at worst.
pub fn longest_gap_ms(blocks: &[BlockRecord]) -> u64 {
    blocks
        .windows(2)
        .map(|w| w[1].time_ms.saturating_sub(w[0].time_ms))
        .max()
        .unwrap_or(0)
}

/// The first 20 violations, one a line, and how many there are: for a test's failure.
pub fn summary(violations: &[Violation]) -> String {
    let mut lines: Vec<String> = violations
        .iter()
        .take(20)
        .map(ToString::to_string)
        .collect();
    if violations.len() > 20 {
        lines.push(format!("... {} in all", violations.len()));
    }
    lines.join("\n")
}

#[derive(Clone, Copy, Default)]
struct Acct {
    balance: u64,
    nonce: u64,
}

/// Every rule of the module doc over `h`; empty when the run was correct.
pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    // No fork: one hash per height across nodes.
    let mut by_height: BTreeMap<u64, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for n in &h.nodes {
        for b in &n.blocks {
            by_height
                .entry(b.height)
                .or_default()
                .entry(b.hash.clone())
                .or_default()
                .push(n.name.clone());
        }
    }
    for (height, hashes) in by_height {
        if hashes.len() > 1 {
            out.push(Violation::Fork { height, hashes });
        }
    }
    for n in &h.nodes {
        check_node(h, n, &mut out);
    }
    out
}

fn check_node(h: &History, n: &NodeHistory, out: &mut Vec<Violation>) {
    let node = n.name.clone();
    // Heights 1, 2, ... each linked to the one below.
    for (k, b) in n.blocks.iter().enumerate() {
        if b.height != k as u64 + 1 {
            out.push(Violation::BrokenChain {
                node: node.clone(),
                height: b.height,
                why: format!("expected height {} at position {k}", k + 1),
            });
            return;
        }
        if k > 0 && b.time_ms <= n.blocks[k - 1].time_ms {
            out.push(Violation::BrokenChain {
                node: node.clone(),
                height: b.height,
                why: format!(
                    "time {} ms is not after block {}'s {} ms",
                    b.time_ms,
                    k,
                    n.blocks[k - 1].time_ms
                ),
            });
        }
        if k > 0 && b.prev_hash != n.blocks[k - 1].hash {
            out.push(Violation::BrokenChain {
                node: node.clone(),
                height: b.height,
                why: format!(
                    "prev_hash {} is not block {}'s hash {}",
                    b.prev_hash,
                    k,
                    n.blocks[k - 1].hash
                ),
            });
        }
    }
    // Where each tx is.
    let mut at: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for b in &n.blocks {
        for t in &b.txs {
            at.entry(t.id.as_str()).or_default().push(b.height);
        }
    }
    for (tx, heights) in &at {
        if heights.len() > 1 {
            out.push(Violation::TxTwice {
                node: node.clone(),
                tx: tx.to_string(),
                heights: heights.clone(),
            });
        }
    }
    let tip = n.blocks.last().map_or(0, |b| b.height);
    for o in &h.observed {
        // A node only answers for the heights it has.
        if o.height > tip {
            continue;
        }
        let found = at.get(o.tx_id.as_str());
        if !found.is_some_and(|hs| hs.contains(&o.height)) {
            out.push(Violation::LostTx {
                tx: o.tx_id.clone(),
                height: o.height,
                node: node.clone(),
                found_at: found.and_then(|hs| hs.first().copied()),
            });
        }
    }
    // Replay, checking each read of the state at its height.
    let mut replay = Replay::new(h);
    let mut reads: Vec<Read<'_>> = Read::all(&n.state);
    reads.sort_by_key(Read::height);
    let mut next = 0;
    let mut compare = |replay: &Replay<'_>, upto: u64, out: &mut Vec<Violation>| {
        while next < reads.len() && reads[next].height() <= upto {
            replay.compare(&node, &reads[next], out);
            next += 1;
        }
    };
    compare(&replay, 0, out);
    for b in &n.blocks {
        replay.block(&node, b, out);
        compare(&replay, b.height, out);
    }
    compare(&replay, u64::MAX, out);
    check_supply(h, n, &replay, out);
}

/// The newest read of every account (and operator, and the burned total) adds up to the
/// genesis supply, if no value moved between the heights they were read at.
fn check_supply(h: &History, n: &NodeHistory, replay: &Replay<'_>, out: &mut Vec<Violation>) {
    fn newest<T, K: Ord>(
        items: &[T],
        key: impl Fn(&T) -> K,
        height: impl Fn(&T) -> u64,
    ) -> Vec<&T> {
        let mut by: BTreeMap<K, &T> = BTreeMap::new();
        for i in items {
            let e = by.entry(key(i)).or_insert(i);
            if height(i) > height(*e) {
                *e = i;
            }
        }
        by.into_values().collect()
    }
    let s = &n.state;
    let accounts = newest(&s.accounts, |a| a.address, |a| a.height);
    let staking = newest(&s.staking, |s| s.operator, |s| s.height);
    let burned = newest(&s.burned, |_| (), |b| b.height);
    let heights = accounts
        .iter()
        .map(|a| a.height)
        .chain(staking.iter().map(|s| s.height))
        .chain(burned.iter().map(|b| b.height));
    let (Some(lo), Some(hi)) = (heights.clone().min(), heights.max()) else {
        return;
    };
    if replay
        .moved
        .range(lo + 1..)
        .next()
        .is_some_and(|h| *h <= hi)
    {
        out.push(Violation::UnsettledSnapshot {
            node: n.name.clone(),
            from: lo,
            to: hi,
        });
        return;
    }
    let reported: u128 = accounts.iter().map(|a| u128::from(a.balance)).sum::<u128>()
        + staking
            .iter()
            .flat_map(|s| {
                let bonds = s.bonds.iter().map(|(_, a)| *a);
                bonds.chain(s.unbonding.iter().map(|u| u.amount))
            })
            .map(u128::from)
            .sum::<u128>()
        + burned.iter().map(|b| u128::from(b.burned)).sum::<u128>();
    let genesis = h.genesis_supply() + replay.minted;
    if reported != genesis {
        out.push(Violation::Supply {
            node: n.name.clone(),
            reported,
            genesis,
        });
    }
}

/// One read of a node's state.
enum Read<'a> {
    Account(&'a AccountRecord),
    Staking(&'a StakingRecord),
    Validator(&'a ValidatorReport),
    Burned(&'a BurnedRecord),
}

impl<'a> Read<'a> {
    fn all(s: &'a StateReads) -> Vec<Self> {
        let a = s.accounts.iter().map(Read::Account);
        let st = s.staking.iter().map(Read::Staking);
        let v = s.validators.iter().map(Read::Validator);
        a.chain(st)
            .chain(v)
            .chain(s.burned.iter().map(Read::Burned))
            .collect()
    }

    fn height(&self) -> u64 {
        match self {
            Read::Account(a) => a.height,
            Read::Staking(s) => s.height,
            Read::Validator(v) => v.height,
            Read::Burned(b) => b.height,
        }
    }
}

/// The replayed state of one node's chain.
struct Replay<'a> {
    staking: Option<std::rc::Rc<StakingGenesis>>,
    /// A protocol-1 chain's switch to protocol 2 ([`History::upgrade`]).
    upgrade: Option<&'a StakingGenesis>,
    /// Stake created by that switch.
    minted: u128,
    accounts: BTreeMap<Address, Acct>,
    /// (operator, key) -> amount; no zero amounts.
    bonds: BTreeMap<(Address, PublicKeyBytes), u64>,
    records: BTreeMap<PublicKeyBytes, ValidatorState>,
    /// (release height, operator, sequence = the Unbond's nonce) -> (amount, key).
    unbonding: BTreeMap<(u64, Address, u64), (u64, PublicKeyBytes)>,
    burned: u64,
    /// (key, height) punished for equivocating.
    punished: BTreeSet<(PublicKeyBytes, u64)>,
    /// The set of each height, from genesis's (heights 1 and 2) on.
    sets: BTreeMap<u64, Vec<Validator>>,
    /// Heights at which value moved between accounts, bonds, entries and the burned total.
    moved: BTreeSet<u64>,
}

impl<'a> Replay<'a> {
    fn new(h: &'a History) -> Self {
        let accounts = h
            .genesis
            .iter()
            .map(|(a, b)| {
                (
                    *a,
                    Acct {
                        balance: *b,
                        nonce: 0,
                    },
                )
            })
            .collect();
        let mut r = Self {
            staking: h.staking.clone().map(std::rc::Rc::new),
            upgrade: h.upgrade.as_ref(),
            minted: 0,
            accounts,
            bonds: BTreeMap::new(),
            records: BTreeMap::new(),
            unbonding: BTreeMap::new(),
            burned: 0,
            punished: BTreeSet::new(),
            sets: BTreeMap::new(),
            moved: BTreeSet::new(),
        };
        if let Some(s) = &h.staking {
            for (operator, v) in &s.validators {
                let amount = s.bond(v);
                *r.bonds.entry((*operator, v.pubkey)).or_default() += amount;
                r.records.entry(v.pubkey).or_default().stake += amount;
            }
            let mut set: Vec<Validator> = s.validators.iter().map(|(_, v)| v.clone()).collect();
            set.sort_by_key(|v| v.address);
            r.sets.insert(1, set.clone());
            r.sets.insert(2, set);
        }
        r
    }

    fn account(&mut self, address: Address) -> &mut Acct {
        self.accounts.entry(address).or_default()
    }

    /// Block `b`: its txs, then (protocol 2) its evidence, downtime, the entries due and
    /// the set of its height + 2; the header's set hashes are checked first.
    fn block(&mut self, node: &str, b: &BlockRecord, out: &mut Vec<Violation>) {
        if self.staking.is_none() && b.next_validators_hash.is_some() {
            self.switch(b.height);
        }
        if let Some(s) = self.staking.clone() {
            let s = &*s;
            self.check_set_hashes(node, b, out);
            for t in &b.txs {
                let why = self.tx(s, b, t);
                invalid_tx(node, b, t, why, out);
            }
            for e in &b.evidence {
                if let Err(why) = self.evidence(s, b.height, e) {
                    out.push(Violation::InvalidEvidence {
                        node: node.to_string(),
                        height: b.height,
                        why,
                    });
                }
            }
            if let Some(c) = &b.last_commit {
                self.downtime(s, b.height, c);
            }
            self.release(b.height);
            self.next_set(s, b.height);
        } else {
            for t in &b.txs {
                let mut why = self.pay(b, t).err();
                match t.payload {
                    Payload::Transfer { to, amount } => self.credit(to, amount),
                    _ => {
                        why.get_or_insert("a staking payload on a protocol-1 chain".into());
                    }
                }
                invalid_tx(node, b, t, why, out);
            }
            if !b.evidence.is_empty() {
                out.push(Violation::InvalidEvidence {
                    node: node.to_string(),
                    height: b.height,
                    why: "a protocol-1 block carries no evidence".into(),
                });
            }
        }
        if !b.txs.is_empty() {
            self.moved.insert(b.height);
        }
    }

    /// The first version-2 block of a protocol-1 chain, before its txs: each genesis
    /// validator is bonded by its own address with power x `stake_per_power` raised to
    /// `min_validator_stake` (minted), and the genesis set, in its order, runs this height
    /// and the next.
    /// A version-2 block on a chain that cannot switch is left to the set-hash check.
    fn switch(&mut self, height: u64) {
        let Some(u) = self.upgrade else {
            return;
        };
        for (operator, v) in &u.validators {
            let amount = u.bond(v).max(u.params.min_validator_stake);
            *self.bonds.entry((*operator, v.pubkey)).or_default() += amount;
            self.records.entry(v.pubkey).or_default().stake += amount;
            self.minted += u128::from(amount);
        }
        // The protocol-1 set in its genesis order, as the node stores it for A and A + 1.
        let set: Vec<Validator> = u.validators.iter().map(|(_, v)| v.clone()).collect();
        self.sets.insert(height, set.clone());
        self.sets.insert(height + 1, set);
        self.moved.insert(height);
        self.staking = Some(std::rc::Rc::new(u.clone()));
    }

    fn credit(&mut self, to: Address, amount: u64) {
        let r = self.account(to);
        r.balance = r.balance.saturating_add(amount);
    }

    /// What every tx does: the nonce is next and the balance holds `spent` + fee; the
    /// sender pays them (even when the check fails: the node did, and its balances are
    /// compared with that) and the proposer gets the fee. `spent` is the transfer's or
    /// the bond's amount.
    fn pay(&mut self, b: &BlockRecord, t: &TxRecord) -> Result<(), String> {
        let spent = match t.payload {
            Payload::Transfer { amount, .. } | Payload::Bond { amount, .. } => amount,
            Payload::Unbond { .. } | Payload::Unjail { .. } => 0,
        };
        let sender = self.accounts.get(&t.from).copied().unwrap_or_default();
        let debit = u128::from(spent) + u128::from(t.fee);
        let why = if t.nonce != sender.nonce {
            Err(format!(
                "nonce {} but the account's is {}",
                t.nonce, sender.nonce
            ))
        } else if debit > u128::from(sender.balance) {
            Err(format!("spends {debit} of a balance of {}", sender.balance))
        } else {
            Ok(())
        };
        let s = self.account(t.from);
        s.balance = s.balance.saturating_sub(spent.saturating_add(t.fee));
        s.nonce += 1;
        self.credit(b.proposer, t.fee);
        why
    }

    /// A protocol-2 tx; why it is invalid, if it is.
    fn tx(&mut self, s: &StakingGenesis, b: &BlockRecord, t: &TxRecord) -> Option<String> {
        let paid = self.pay(b, t).err();
        let done = self.payload(s, b, t);
        paid.or(done)
    }

    /// What a protocol-2 tx's payload does besides [`Replay::pay`]; why it may not, if
    /// it may not.
    fn payload(&mut self, s: &StakingGenesis, b: &BlockRecord, t: &TxRecord) -> Option<String> {
        let bond_of = |r: &Self, key: &PublicKeyBytes| {
            r.bonds.get(&(t.from, *key)).copied().unwrap_or_default()
        };
        match t.payload {
            Payload::Transfer { to, amount } => self.credit(to, amount),
            Payload::Bond { validator, amount } => {
                *self.bonds.entry((t.from, validator)).or_default() += amount;
                let r = self.records.entry(validator).or_default();
                r.stake = r.stake.saturating_add(amount);
            }
            Payload::Unbond { validator, amount } => {
                let bond = bond_of(self, &validator);
                if bond == 0 {
                    return Some(format!("unbonds from {} with no bond", to_hex(&validator)));
                }
                let amount = amount.min(bond);
                self.set_bond(t.from, validator, bond - amount);
                let r = self.records.entry(validator).or_default();
                r.stake = r.stake.saturating_sub(amount);
                let release = b.height.saturating_add(s.params.unbonding_blocks);
                self.unbonding
                    .insert((release, t.from, t.nonce), (amount, validator));
            }
            Payload::Unjail { validator } => {
                if bond_of(self, &validator) == 0 {
                    return Some(format!("unjails {} with no bond to it", to_hex(&validator)));
                }
                let r = self.records.entry(validator).or_default();
                if r.jailed_until_height == 0 || b.height < r.jailed_until_height {
                    return Some(format!(
                        "unjails {} at height {}, jailed until {} (0: not jailed)",
                        to_hex(&validator),
                        b.height,
                        r.jailed_until_height
                    ));
                }
                r.jailed_until_height = 0;
                r.consecutive_missed = 0;
            }
        }
        None
    }

    fn set_bond(&mut self, operator: Address, key: PublicKeyBytes, amount: u64) {
        if amount == 0 {
            self.bonds.remove(&(operator, key));
        } else {
            self.bonds.insert((operator, key), amount);
        }
    }

    /// Checks and punishes one piece of evidence in block `height`.
    fn evidence(
        &mut self,
        s: &StakingGenesis,
        height: u64,
        e: &Equivocation,
    ) -> Result<(), String> {
        let (a, b) = (&e.a.vote, &e.b.vote);
        let who = e.a.validator;
        if who != e.b.validator {
            return Err("the two votes are by different validators".into());
        }
        if a.chain_id != b.chain_id {
            return Err("the two votes are for different chains".into());
        }
        if (a.height, a.round, a.kind) != (b.height, b.round, b.kind) {
            return Err("the two votes are for different steps".into());
        }
        if a.block_hash == b.block_hash {
            return Err("the two votes are for the same block".into());
        }
        let max_age = s.params.evidence_max_age_blocks;
        if a.height == 0 || a.height >= height || height - a.height > max_age {
            return Err(format!(
                "votes of height {} in block {height} (at most {max_age} old)",
                a.height
            ));
        }
        let key = self
            .sets
            .get(&a.height)
            .and_then(|set| set.iter().find(|v| v.address == who))
            .map(|v| v.pubkey)
            .ok_or_else(|| format!("{} is not in the set of height {}", to_hex(&who), a.height))?;
        for (which, v) in [("a", &e.a), ("b", &e.b)] {
            verify(&key, &v.vote.signing_bytes(), &v.signature)
                .map_err(|_| format!("the signature of vote {which} does not verify"))?;
        }
        if !self.punished.insert((key, a.height)) {
            return Err(format!(
                "{} was punished for height {} before",
                to_hex(&who),
                a.height
            ));
        }
        let bps = u128::from(s.params.slash_fraction_bps);
        let cut = |amount: &mut u64| {
            let c = (u128::from(*amount) * bps / 10_000) as u64;
            *amount -= c;
            c
        };
        let mut from_bonds = 0;
        for ((_, k), amount) in self.bonds.iter_mut() {
            if *k == key {
                from_bonds += cut(amount);
            }
        }
        let mut from_unbonding = 0;
        for (amount, k) in self.unbonding.values_mut() {
            if *k == key {
                from_unbonding += cut(amount);
            }
        }
        self.bonds.retain(|_, a| *a > 0);
        self.unbonding.retain(|_, (a, _)| *a > 0);
        let r = self.records.entry(key).or_default();
        r.stake = r.stake.saturating_sub(from_bonds);
        r.jailed_until_height = r
            .jailed_until_height
            .max(height.saturating_add(s.params.jail_blocks));
        self.burned += from_bonds + from_unbonding;
        self.moved.insert(height);
        Ok(())
    }

    /// Block `height`'s `last_commit` against the set of its height.
    fn downtime(&mut self, s: &StakingGenesis, height: u64, c: &CommitRecord) {
        let Some(set) = self.sets.get(&c.height) else {
            return;
        };
        for v in set {
            let Some(r) = self.records.get_mut(&v.pubkey) else {
                continue;
            };
            if r.jailed_until_height != 0 {
                continue;
            }
            if c.signers.contains(&v.address) {
                r.consecutive_missed = 0;
                continue;
            }
            r.consecutive_missed += 1;
            if r.consecutive_missed >= s.params.downtime_jail_after {
                r.consecutive_missed = 0;
                r.jailed_until_height = height.saturating_add(s.params.jail_blocks);
            }
        }
    }

    /// Pays the entries released at the end of `height`.
    fn release(&mut self, height: u64) {
        let due: Vec<(u64, Address, u64)> = self
            .unbonding
            .range((height, [0; 20], 0)..=(height, [0xff; 20], u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some((amount, _)) = self.unbonding.remove(&k) {
                self.credit(k.1, amount);
                self.moved.insert(height);
            }
        }
    }

    /// The set of `height` + 2 by the rule.
    fn next_set(&mut self, s: &StakingGenesis, height: u64) {
        let p = &s.params;
        let mut top: Vec<(u64, PublicKeyBytes)> = self
            .records
            .iter()
            .filter(|(_, r)| r.jailed_until_height == 0 && r.stake >= p.min_validator_stake)
            .map(|(k, r)| (r.stake / p.stake_per_power.max(1), *k))
            .filter(|(power, _)| *power > 0)
            .collect();
        top.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        top.truncate(p.max_validators as usize);
        let mut set: Vec<Validator> = top
            .into_iter()
            .map(|(power, pubkey)| Validator {
                address: address_of(&pubkey),
                pubkey,
                power,
            })
            .collect();
        set.sort_by_key(|v| v.address);
        if set.is_empty() {
            set = self.sets.get(&(height + 1)).cloned().unwrap_or_default();
        }
        self.sets.insert(height + 2, set);
    }

    fn check_set_hashes(&self, node: &str, b: &BlockRecord, out: &mut Vec<Violation>) {
        let hash_of = |h: u64| self.sets.get(&h).map(|s| to_hex(&validators_hash(s)));
        let fields = [
            ("validators_hash", b.height, Some(&b.validators_hash)),
            (
                "next_validators_hash",
                b.height + 1,
                b.next_validators_hash.as_ref(),
            ),
        ];
        for (which, height, reported) in fields {
            let replayed = hash_of(height);
            if reported != replayed.as_ref() {
                out.push(Violation::SetHash {
                    node: node.to_string(),
                    height: b.height,
                    which,
                    reported: reported.cloned().unwrap_or_else(|| "absent".into()),
                    replayed: replayed.unwrap_or_else(|| "unknown".into()),
                });
            }
        }
    }

    /// One read against the replay at this point.
    fn compare(&self, node: &str, read: &Read<'_>, out: &mut Vec<Violation>) {
        let node = node.to_string();
        match read {
            Read::Account(s) => {
                let r = self.accounts.get(&s.address).copied().unwrap_or_default();
                if s.balance != r.balance {
                    out.push(Violation::Balance {
                        node: node.clone(),
                        address: to_hex(&s.address),
                        height: s.height,
                        reported: s.balance,
                        replayed: r.balance,
                    });
                }
                if s.nonce != r.nonce {
                    out.push(Violation::Nonce {
                        node,
                        address: to_hex(&s.address),
                        height: s.height,
                        reported: s.nonce,
                        replayed: r.nonce,
                    });
                }
            }
            Read::Staking(s) => {
                let bonds: Vec<(PublicKeyBytes, u64)> = self
                    .bonds
                    .range((s.operator, [0; 33])..=(s.operator, [0xff; 33]))
                    .map(|((_, k), a)| (*k, *a))
                    .collect();
                let mut unbonding: Vec<UnbondingRecord> = self
                    .unbonding
                    .iter()
                    .filter(|((_, op, _), _)| *op == s.operator)
                    .map(|((release, _, _), (amount, key))| UnbondingRecord {
                        release_height: *release,
                        amount: *amount,
                        validator: *key,
                    })
                    .collect();
                unbonding.sort();
                let mut reported = (s.bonds.clone(), s.unbonding.clone());
                reported.0.retain(|(_, a)| *a > 0);
                reported.0.sort();
                reported.1.sort();
                if reported != (bonds.clone(), unbonding.clone()) {
                    out.push(Violation::Staking {
                        node,
                        operator: to_hex(&s.operator),
                        height: s.height,
                        reported: describe_staking(&reported.0, &reported.1),
                        replayed: describe_staking(&bonds, &unbonding),
                    });
                }
            }
            Read::Validator(v) => {
                let replayed = self.records.get(&v.pubkey).copied();
                if v.record != replayed {
                    out.push(Violation::ValidatorRecord {
                        node,
                        validator: to_hex(&v.pubkey),
                        height: v.height,
                        reported: v.record,
                        replayed,
                    });
                }
            }
            Read::Burned(b) => {
                if b.burned != self.burned {
                    out.push(Violation::Burned {
                        node,
                        height: b.height,
                        reported: b.burned,
                        replayed: self.burned,
                    });
                }
            }
        }
    }
}

fn invalid_tx(
    node: &str,
    b: &BlockRecord,
    t: &TxRecord,
    why: Option<String>,
    out: &mut Vec<Violation>,
) {
    if let Some(why) = why {
        out.push(Violation::InvalidTx {
            node: node.to_string(),
            height: b.height,
            tx: t.id.clone(),
            why,
        });
    }
}

fn describe_staking(bonds: &[(PublicKeyBytes, u64)], unbonding: &[UnbondingRecord]) -> String {
    let bonds: Vec<String> = bonds
        .iter()
        .map(|(k, a)| format!("{a} to {}", to_hex(k)))
        .collect();
    let entries: Vec<String> = unbonding
        .iter()
        .map(|u| {
            format!(
                "{} from {} released at {}",
                u.amount,
                to_hex(&u.validator),
                u.release_height
            )
        })
        .collect();
    format!(
        "bonds [{}], unbonding [{}]",
        bonds.join(", "),
        entries.join(", ")
    )
}

/// Every address a replay of `blocks` from `genesis` touches: the genesis accounts and
/// operators, senders, recipients and the proposers of blocks with txs.
pub fn touched(
    genesis: &BTreeMap<Address, u64>,
    staking: Option<&StakingGenesis>,
    blocks: &[BlockRecord],
) -> BTreeSet<Address> {
    let mut set: BTreeSet<Address> = genesis.keys().copied().collect();
    set.extend(
        staking
            .iter()
            .flat_map(|s| s.validators.iter().map(|(op, _)| *op)),
    );
    for b in blocks {
        for t in &b.txs {
            set.insert(t.from);
            if let Payload::Transfer { to, .. } = t.payload {
                set.insert(to);
            }
            set.insert(b.proposer);
        }
    }
    set
}

/// Every consensus key with a validator record after `blocks`: genesis's and every key a
/// staking tx names.
pub fn touched_keys(staking: &StakingGenesis, blocks: &[BlockRecord]) -> BTreeSet<PublicKeyBytes> {
    let mut set: BTreeSet<PublicKeyBytes> =
        staking.validators.iter().map(|(_, v)| v.pubkey).collect();
    for t in blocks.iter().flat_map(|b| &b.txs) {
        match t.payload {
            Payload::Transfer { .. } => {}
            Payload::Bond { validator, .. }
            | Payload::Unbond { validator, .. }
            | Payload::Unjail { validator } => {
                set.insert(validator);
            }
        }
    }
    set
}

/// A node to read: its name, RPC base URL and metrics URL (`http://host:port/metrics`;
/// protocol 2 reads the burned total there).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub rpc: String,
    pub metrics: Option<String>,
}

impl From<(String, String)> for Endpoint {
    fn from((name, rpc): (String, String)) -> Self {
        Self {
            name,
            rpc,
            metrics: None,
        }
    }
}

/// Reads blocks 1..=`upto` and every touched account from each node (`(name, RPC base
/// URL)`), over `http`: [`fetch_history`] of a protocol-1 chain.
pub async fn fetch(
    http: &reqwest::Client,
    nodes: &[(String, String)],
    genesis: &BTreeMap<Address, u64>,
    upto: u64,
    observed: Vec<Observation>,
) -> anyhow::Result<History> {
    let nodes: Vec<Endpoint> = nodes.iter().cloned().map(Endpoint::from).collect();
    fetch_history(http, &nodes, genesis, None, upto, observed).await
}

/// Reads blocks 1..=`upto` and the state of everything they touched from each node:
/// accounts, and on protocol 2 (`staking`) every touched address's staking, every touched
/// key's validator record and the burned total.
pub async fn fetch_history(
    http: &reqwest::Client,
    nodes: &[Endpoint],
    genesis: &BTreeMap<Address, u64>,
    staking: Option<&StakingGenesis>,
    upto: u64,
    observed: Vec<Observation>,
) -> anyhow::Result<History> {
    let mut out = Vec::new();
    for node in nodes {
        let mut blocks = Vec::new();
        for height in 1..=upto {
            blocks.push(fetch_block(http, node, height).await?);
        }
        let state = loop {
            let addresses = touched(genesis, staking, &blocks);
            let keys = staking.map(|s| touched_keys(s, &blocks));
            let state = read_state(http, node, &addresses, keys.as_ref()).await?;
            // The chain may have gone on while the state was read (a tx a client gave up
            // on can still commit): the replay must reach the newest height a read was
            // made at, or its values would be compared with an older state.
            let newest = state.heights().max().unwrap_or(upto);
            let known = blocks.last().map_or(0, |b| b.height);
            for height in known + 1..=newest {
                blocks.push(fetch_block(http, node, height).await?);
            }
            // And those blocks may pay an account not read yet (a fee to a proposer with
            // no block before): read again with it, or the supply misses that fee.
            let keys_now = staking.map(|s| touched_keys(s, &blocks));
            if touched(genesis, staking, &blocks) == addresses && keys_now == keys {
                break state;
            }
        };
        out.push(NodeHistory {
            name: node.name.clone(),
            blocks,
            state,
        });
    }
    Ok(History {
        genesis: genesis.clone(),
        staking: staking.cloned(),
        upgrade: None,
        nodes: out,
        observed,
    })
}

/// Fetches the history of `nodes` up to the lowest of their heights (from `genesis`:
/// its balances and, on protocol 2, its staking), adds each node's `earlier` reads (by
/// name), and checks it. A read that spans a height at which value moved is made again,
/// for up to 60 s. The violations (empty when the run was correct) and the history.
pub async fn check_nodes(
    http: &reqwest::Client,
    nodes: &[Endpoint],
    genesis: &Genesis,
    observed: Vec<Observation>,
    earlier: &BTreeMap<String, StateReads>,
) -> anyhow::Result<(Vec<Violation>, History)> {
    let balances: BTreeMap<Address, u64> = genesis.accounts.iter().copied().collect();
    let staking = StakingGenesis::of(genesis);
    // A protocol-1 chain may switch to protocol 2: its operators' staking, the validators'
    // records and the burned total are read too (empty before a switch).
    let upgrade = StakingGenesis::switch_of(genesis);
    let read = staking.as_ref().or(upgrade.as_ref());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut upto = u64::MAX;
        for node in nodes {
            upto = upto.min(tip(http, node).await?);
        }
        let mut history =
            fetch_history(http, nodes, &balances, read, upto, observed.clone()).await?;
        history.staking = staking.clone();
        history.upgrade = upgrade.clone();
        for n in &mut history.nodes {
            if let Some(e) = earlier.get(&n.name) {
                n.state.extend(e.clone());
            }
        }
        let v = check(&history);
        let unsettled = v
            .iter()
            .any(|x| matches!(x, Violation::UnsettledSnapshot { .. }));
        if !unsettled || std::time::Instant::now() > deadline {
            return Ok((v, history));
        }
    }
}

/// Reads `addresses`' accounts from `node`, and with `keys` (protocol 2) their staking,
/// the keys' validator records and the burned total; each read carries its height.
pub async fn read_state(
    http: &reqwest::Client,
    node: &Endpoint,
    addresses: &BTreeSet<Address>,
    keys: Option<&BTreeSet<PublicKeyBytes>>,
) -> anyhow::Result<StateReads> {
    let name = &node.name;
    let rpc = &node.rpc;
    let mut reads = StateReads::default();
    for address in addresses {
        let hex = to_hex(address);
        let v: Value = get_json(http, &format!("{rpc}/v1/accounts/{hex}"))
            .await
            .with_context(|| format!("{name}: account {hex}"))?;
        let field = |k: &str| {
            v[k].as_u64()
                .with_context(|| format!("{name}: account has no {k}: {v}"))
        };
        reads.accounts.push(AccountRecord {
            address: *address,
            balance: field("balance")?,
            nonce: field("nonce")?,
            height: field("height")?,
        });
    }
    let Some(keys) = keys else {
        return Ok(reads);
    };
    for address in addresses {
        let hex = to_hex(address);
        let v = get_json(http, &format!("{rpc}/v1/staking/{hex}"))
            .await
            .with_context(|| format!("{name}: staking of {hex}"))?;
        let s: tally_api::Staking =
            serde_json::from_value(v).with_context(|| format!("{name}: staking of {hex}"))?;
        let mut bonds = Vec::new();
        for b in &s.bonds {
            bonds.push((parse_key(name, &b.validator)?, b.amount));
        }
        let mut unbonding = Vec::new();
        for u in &s.unbonding {
            unbonding.push(UnbondingRecord {
                release_height: u.release_height,
                amount: u.amount,
                validator: parse_key(name, &u.validator)?,
            });
        }
        reads.staking.push(StakingRecord {
            operator: *address,
            height: s.height,
            bonds,
            unbonding,
        });
    }
    for key in keys {
        reads
            .validators
            .push(read_validator(http, node, key).await?);
    }
    reads.burned.push(read_burned(http, node).await?);
    Ok(reads)
}

fn parse_key(name: &str, hex: &str) -> anyhow::Result<PublicKeyBytes> {
    let bytes = hex::decode(hex).with_context(|| format!("{name}: key {hex} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{name}: key {hex} is not 33 bytes"))
}

/// `/v1/validators/{key}`; a 404 (no record of the key) is read as None at the tip's
/// height, read before and after it.
async fn read_validator(
    http: &reqwest::Client,
    node: &Endpoint,
    key: &PublicKeyBytes,
) -> anyhow::Result<ValidatorReport> {
    let (name, hex) = (&node.name, to_hex(key));
    let url = format!("{}/v1/validators/{hex}", node.rpc);
    for _ in 0..5 {
        let before = tip(http, node).await?;
        let r = http.get(&url).send().await;
        match r {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                let settled = tip(http, node).await? == before;
                if settled {
                    return Ok(ValidatorReport {
                        pubkey: *key,
                        height: before,
                        record: None,
                    });
                }
            }
            Ok(r) if r.status().is_success() => {
                let v: tally_api::ValidatorInfo = r
                    .json()
                    .await
                    .with_context(|| format!("{name}: validator {hex}"))?;
                return Ok(ValidatorReport {
                    pubkey: *key,
                    height: v.height,
                    record: Some(ValidatorState {
                        stake: v.stake.with_context(|| {
                            format!("{name}: validator {hex} has no stake (protocol 1?)")
                        })?,
                        jailed_until_height: v.jailed_until_height,
                        consecutive_missed: v.consecutive_missed.unwrap_or_default(),
                    }),
                });
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{name}: validator {hex}: no stable answer")
}

/// The `tally_staking_burned` gauge, at the tip's height (read before and after it).
async fn read_burned(http: &reqwest::Client, node: &Endpoint) -> anyhow::Result<BurnedRecord> {
    let name = &node.name;
    let url = node
        .metrics
        .as_ref()
        .with_context(|| format!("{name}: no metrics URL to read the burned total from"))?;
    for _ in 0..5 {
        let before = tip(http, node).await?;
        let text = http.get(url).send().await?.text().await?;
        if tip(http, node).await? != before {
            continue;
        }
        let burned = crate::metric_samples(&text, "tally_staking_burned", None)
            .next()
            .with_context(|| format!("{name}: no tally_staking_burned at {url}"))?;
        return Ok(BurnedRecord {
            height: before,
            burned: burned as u64,
        });
    }
    bail!("{name}: the chain kept moving while the burned total was read")
}

async fn tip(http: &reqwest::Client, node: &Endpoint) -> anyhow::Result<u64> {
    let v = get_json(http, &format!("{}/v1/status", node.rpc))
        .await
        .with_context(|| format!("{}: status", node.name))?;
    v["height"]
        .as_u64()
        .with_context(|| format!("{}: status has no height: {v}", node.name))
}

async fn fetch_block(
    http: &reqwest::Client,
    node: &Endpoint,
    height: u64,
) -> anyhow::Result<BlockRecord> {
    let name = &node.name;
    let v: Value = get_json(http, &format!("{}/v1/blocks/{height}", node.rpc))
        .await
        .with_context(|| format!("{name}: block {height}"))?;
    let hex = v["block"]
        .as_str()
        .with_context(|| format!("{name}: block {height} has no \"block\" field"))?;
    let bytes = hex::decode(hex).with_context(|| format!("{name}: block {height} hex"))?;
    let block: Block = ledger::codec::decode("block", &bytes, 64 << 20)
        .map_err(|e| anyhow::anyhow!("{name}: block {height} does not decode: {e}"))?;
    Ok(BlockRecord::from_block(&block))
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    // A node just healed or resumed may stall one request: retry a few times.
    let mut last = None;
    for _ in 0..5 {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) => last = Some(anyhow::anyhow!("HTTP {}", r.status())),
            Err(e) => last = Some(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match last {
        Some(e) => Err(e),
        None => bail!("no answer"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ledger::crypto::Keypair;
    use ledger::types::{Vote, VoteKind};

    const A: Address = [1; 20];
    const B: Address = [2; 20];
    const P: Address = [9; 20];

    fn tx(id: &str, from: Address, nonce: u64, to: Address, amount: u64) -> TxRecord {
        TxRecord {
            id: id.into(),
            from,
            nonce,
            fee: 1,
            payload: Payload::Transfer { to, amount },
        }
    }

    fn block(height: u64, txs: Vec<TxRecord>) -> BlockRecord {
        BlockRecord {
            height,
            round: 0,
            time_ms: 1000 * height,
            hash: format!("h{height}"),
            prev_hash: format!("h{}", height - 1),
            proposer: P,
            txs,
            validators_hash: String::new(),
            next_validators_hash: None,
            last_commit: None,
            evidence: Vec::new(),
        }
    }

    fn acct(address: Address, balance: u64, nonce: u64, height: u64) -> AccountRecord {
        AccountRecord {
            address,
            balance,
            nonce,
            height,
        }
    }

    /// A correct history: A sends B 10 then 20 (fee 1 each, to P); two nodes agree.
    fn good() -> History {
        let blocks = vec![
            block(1, vec![tx("t1", A, 0, B, 10)]),
            block(2, vec![]),
            block(3, vec![tx("t2", A, 1, B, 20)]),
            block(4, vec![]),
        ];
        let accounts = vec![
            acct(A, 100 - 11 - 21, 2, 4),
            acct(B, 30, 0, 4),
            acct(P, 2, 0, 4),
        ];
        let node = |name: &str| NodeHistory {
            name: name.into(),
            blocks: blocks.clone(),
            state: StateReads {
                accounts: accounts.clone(),
                ..StateReads::default()
            },
        };
        History {
            genesis: BTreeMap::from([(A, 100), (B, 0)]),
            staking: None,
            upgrade: None,
            nodes: vec![node("node0"), node("node1")],
            observed: vec![
                Observation {
                    tx_id: "t1".into(),
                    height: 1,
                },
                Observation {
                    tx_id: "t2".into(),
                    height: 3,
                },
            ],
        }
    }

    fn kinds(h: &History) -> BTreeSet<&'static str> {
        check(h).iter().map(Violation::kind).collect()
    }

    #[test]
    fn a_correct_history_passes() {
        assert_eq!(check(&good()), vec![]);
        // Accounts read at different heights with no tx in between are fine.
        let mut h = good();
        h.nodes[1].state.accounts[0].height = 3;
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn negative_control_fork() {
        let mut h = good();
        h.nodes[1].blocks[3].hash = "other".into();
        let v = check(&h);
        assert!(
            v.iter()
                .any(|x| matches!(x, Violation::Fork { height: 4, .. })),
            "{v:?}"
        );
    }

    #[test]
    fn negative_control_broken_link() {
        let mut h = good();
        h.nodes[0].blocks[2].prev_hash = "elsewhere".into();
        assert!(kinds(&h).contains("broken chain"));
    }

    #[test]
    fn negative_control_block_time_going_back() {
        let mut h = good();
        h.nodes[1].blocks[2].time_ms = h.nodes[1].blocks[1].time_ms;
        let v = check(&h);
        assert!(
            v.iter().any(|x| matches!(
                x,
                Violation::BrokenChain { height: 3, why, .. } if why.contains("not after")
            )),
            "{v:?}"
        );
    }

    #[test]
    fn negative_control_lost_tx() {
        // The tx a client saw at height 3 is gone from node1 (block 3 emptied; balances
        // doctored to match so only the loss is wrong).
        let mut h = good();
        h.nodes[1].blocks[2].txs.clear();
        h.nodes[1].state.accounts = vec![acct(A, 89, 1, 4), acct(B, 10, 0, 4), acct(P, 1, 0, 4)];
        assert_eq!(kinds(&h), BTreeSet::from(["lost tx"]));
        // Moved to another height counts as lost too.
        let mut h = good();
        let t = h.nodes[0].blocks[2].txs.remove(0);
        h.nodes[0].blocks[1].txs.push(t);
        let v = check(&h);
        assert!(
            v.iter().any(|x| matches!(
                x,
                Violation::LostTx {
                    found_at: Some(2),
                    ..
                }
            )),
            "{v:?}"
        );
    }

    #[test]
    fn negative_control_tx_twice() {
        let mut h = good();
        let t = h.nodes[0].blocks[0].txs[0].clone();
        h.nodes[0].blocks[3].txs.push(t);
        let k = kinds(&h);
        assert!(k.contains("tx twice"), "{k:?}");
        // The replay sees the second copy's stale nonce too.
        assert!(k.contains("invalid tx"), "{k:?}");
    }

    #[test]
    fn negative_control_wrong_balance() {
        let mut h = good();
        // B reports 1 more and A 1 less: the supply still adds up, the balances do not.
        h.nodes[0].state.accounts[1].balance += 1;
        h.nodes[0].state.accounts[0].balance -= 1;
        assert_eq!(kinds(&h), BTreeSet::from(["balance"]));
    }

    #[test]
    fn negative_control_wrong_nonce() {
        let mut h = good();
        h.nodes[1].state.accounts[0].nonce = 3;
        assert_eq!(kinds(&h), BTreeSet::from(["nonce"]));
    }

    #[test]
    fn negative_control_supply_changed() {
        // A proposer that paid itself 1000 out of thin air: its balance is wrong and the
        // supply no longer adds up.
        let mut h = good();
        h.nodes[0].state.accounts[2].balance += 1000;
        let k = kinds(&h);
        assert!(k.contains("supply"), "{k:?}");
        assert!(k.contains("balance"), "{k:?}");
    }

    #[test]
    fn negative_control_invalid_tx() {
        // A tx spending more than the sender holds, replayed as a node would have applied it.
        let mut h = good();
        h.nodes[0].blocks[3].txs.push(tx("t3", B, 0, A, 1000));
        let k = kinds(&h);
        assert!(k.contains("invalid tx"), "{k:?}");
    }

    #[test]
    fn a_snapshot_across_a_commit_is_flagged_not_summed() {
        let mut h = good();
        h.nodes[0].state.accounts[0] = acct(A, 89, 1, 2);
        assert_eq!(kinds(&h), BTreeSet::from(["unsettled snapshot"]));
    }

    // ----- protocol 2 -----

    const C: Address = [3; 20];

    fn keypair(i: u8) -> Keypair {
        Keypair::from_secret_bytes(&ledger::hash::sha256(&[i])).unwrap()
    }

    /// Consensus key `i`.
    fn k(i: u8) -> PublicKeyBytes {
        keypair(i).public_key()
    }

    fn params() -> StakingParams {
        StakingParams {
            stake_per_power: 10,
            min_validator_stake: 10,
            max_validators: 10,
            unbonding_blocks: 2,
            jail_blocks: 3,
            downtime_jail_after: 100,
            slash_fraction_bps: 1_000,
            evidence_max_age_blocks: 10,
        }
    }

    /// A set of (key, power), sorted by address as a set is.
    fn set(members: &[(PublicKeyBytes, u64)]) -> Vec<Validator> {
        let mut v: Vec<Validator> = members
            .iter()
            .map(|(k, power)| Validator {
                address: address_of(k),
                pubkey: *k,
                power: *power,
            })
            .collect();
        v.sort_by_key(|v| v.address);
        v
    }

    fn hash_of(s: &[Validator]) -> String {
        to_hex(&validators_hash(s))
    }

    fn staking_tx(id: &str, from: Address, nonce: u64, payload: Payload) -> TxRecord {
        TxRecord {
            id: id.into(),
            from,
            nonce,
            fee: 1,
            payload,
        }
    }

    /// Blocks 1..=sets.len() - 1 with the given txs and evidence, each header naming
    /// `sets[h]` and `sets[h + 1]` (sets[0] unused) and carrying a commit of the height
    /// below signed by `signers(height below)`.
    fn p2_blocks(
        sets: &[Vec<Validator>],
        mut txs: BTreeMap<u64, Vec<TxRecord>>,
        mut evidence: BTreeMap<u64, Vec<Equivocation>>,
        signers: impl Fn(u64) -> Vec<Address>,
    ) -> Vec<BlockRecord> {
        (1..sets.len() as u64 - 1)
            .map(|h| BlockRecord {
                validators_hash: hash_of(&sets[h as usize]),
                next_validators_hash: Some(hash_of(&sets[h as usize + 1])),
                last_commit: (h > 1).then(|| CommitRecord {
                    height: h - 1,
                    signers: signers(h - 1),
                }),
                evidence: evidence.remove(&h).unwrap_or_default(),
                ..block(h, txs.remove(&h).unwrap_or_default())
            })
            .collect()
    }

    fn validator(pubkey: PublicKeyBytes, stake: u64, jailed: u64, height: u64) -> ValidatorReport {
        ValidatorReport {
            pubkey,
            height,
            record: Some(ValidatorState {
                stake,
                jailed_until_height: jailed,
                consecutive_missed: 0,
            }),
        }
    }

    fn staking(
        operator: Address,
        bonds: Vec<(PublicKeyBytes, u64)>,
        unbonding: Vec<(u64, u64, PublicKeyBytes)>,
        height: u64,
    ) -> StakingRecord {
        StakingRecord {
            operator,
            height,
            bonds,
            unbonding: unbonding
                .into_iter()
                .map(|(release_height, amount, validator)| UnbondingRecord {
                    release_height,
                    amount,
                    validator,
                })
                .collect(),
        }
    }

    /// Two precommits of key `i` at `height` for different blocks.
    fn equivocation(i: u8, height: u64) -> Equivocation {
        let vote = |b: u8| {
            keypair(i).sign_vote(Vote {
                chain_id: "c".into(),
                height,
                round: 0,
                kind: VoteKind::Precommit,
                block_hash: Some([b; 32]),
            })
        };
        Equivocation {
            a: vote(1),
            b: vote(2),
        }
    }

    /// A correct protocol-2 history. Genesis: K1 bonded 100 by A, K2 100 by B (power 10
    /// each); A, B, C hold 1,000. Block 1: C bonds 100 to K3. Block 2: A unbonds 40 from
    /// K1 (released at the end of 4). Block 3: evidence that K2 equivocated at height 2:
    /// 10 % of B's bond burned, K2 jailed until 6 and out of the set of 5. Block 4: A
    /// is paid 40. Block 6: B unjails K2, back in the set of 8 with power 9. Every commit
    /// is signed by its whole set. Node 0 also read A at height 3 (its entry pending) and
    /// K2 at height 5 (jailed).
    fn good_p2() -> History {
        let g = set(&[(k(1), 10), (k(2), 10)]);
        let s5 = set(&[(k(1), 6), (k(3), 10)]);
        let s8 = set(&[(k(1), 6), (k(2), 9), (k(3), 10)]);
        let sets = vec![
            vec![],
            g.clone(),
            g.clone(),
            set(&[(k(1), 10), (k(2), 10), (k(3), 10)]),
            set(&[(k(1), 6), (k(2), 10), (k(3), 10)]),
            s5.clone(),
            s5.clone(),
            s5,
            s8.clone(),
            s8,
        ];
        let txs = BTreeMap::from([
            (
                1,
                vec![staking_tx(
                    "c1",
                    C,
                    0,
                    Payload::Bond {
                        validator: k(3),
                        amount: 100,
                    },
                )],
            ),
            (
                2,
                vec![staking_tx(
                    "a1",
                    A,
                    0,
                    Payload::Unbond {
                        validator: k(1),
                        amount: 40,
                    },
                )],
            ),
            (
                6,
                vec![staking_tx("b1", B, 0, Payload::Unjail { validator: k(2) })],
            ),
        ]);
        let evidence = BTreeMap::from([(3, vec![equivocation(2, 2)])]);
        let signers = |h: u64| sets[h as usize].iter().map(|v| v.address).collect();
        let blocks = p2_blocks(&sets, txs, evidence, signers);
        let state = StateReads {
            accounts: vec![
                acct(A, 1_039, 1, 7),
                acct(B, 999, 1, 7),
                acct(C, 899, 1, 7),
                acct(P, 3, 0, 7),
            ],
            staking: vec![
                staking(A, vec![(k(1), 60)], vec![], 7),
                staking(B, vec![(k(2), 90)], vec![], 7),
                staking(C, vec![(k(3), 100)], vec![], 7),
                staking(P, vec![], vec![], 7),
            ],
            validators: vec![
                validator(k(1), 60, 0, 7),
                validator(k(2), 90, 0, 7),
                validator(k(3), 100, 0, 7),
            ],
            burned: vec![BurnedRecord {
                height: 7,
                burned: 10,
            }],
        };
        let mut node0 = NodeHistory {
            name: "node0".into(),
            blocks: blocks.clone(),
            state: state.clone(),
        };
        node0.state.extend(StateReads {
            accounts: vec![acct(A, 999, 1, 3)],
            staking: vec![staking(A, vec![(k(1), 60)], vec![(4, 40, k(1))], 3)],
            validators: vec![validator(k(2), 90, 6, 5)],
            burned: vec![],
        });
        History {
            genesis: BTreeMap::from([(A, 1_000), (B, 1_000), (C, 1_000)]),
            upgrade: None,
            staking: Some(StakingGenesis {
                params: params(),
                validators: vec![
                    (A, set(&[(k(1), 10)])[0].clone()),
                    (B, set(&[(k(2), 10)])[0].clone()),
                ],
            }),
            nodes: vec![
                node0,
                NodeHistory {
                    name: "node1".into(),
                    blocks,
                    state,
                },
            ],
            observed: vec![Observation {
                tx_id: "a1".into(),
                height: 2,
            }],
        }
    }

    /// Node 0's newest read of `address`'s account.
    fn account_at(h: &mut History, address: Address, height: u64) -> &mut AccountRecord {
        h.nodes[0]
            .state
            .accounts
            .iter_mut()
            .find(|a| a.address == address && a.height == height)
            .unwrap()
    }

    fn staking_at(h: &mut History, operator: Address, height: u64) -> &mut StakingRecord {
        h.nodes[0]
            .state
            .staking
            .iter_mut()
            .find(|s| s.operator == operator && s.height == height)
            .unwrap()
    }

    fn validator_at(h: &mut History, key: PublicKeyBytes, height: u64) -> &mut ValidatorState {
        h.nodes[0]
            .state
            .validators
            .iter_mut()
            .find(|v| v.pubkey == key && v.height == height)
            .and_then(|v| v.record.as_mut())
            .unwrap()
    }

    #[test]
    fn a_correct_protocol_2_history_passes() {
        assert_eq!(check(&good_p2()), vec![]);
    }

    #[test]
    fn negative_control_bond_not_deducted() {
        let mut h = good_p2();
        account_at(&mut h, C, 7).balance = 999;
        assert_eq!(kinds(&h), BTreeSet::from(["balance", "supply"]));
    }

    #[test]
    fn negative_control_unbonding_never_paid() {
        // The entry is still there and A's balance lacks it: the supply adds up.
        let mut h = good_p2();
        account_at(&mut h, A, 7).balance = 999;
        staking_at(&mut h, A, 7).unbonding = staking(A, vec![], vec![(4, 40, k(1))], 7).unbonding;
        assert_eq!(kinds(&h), BTreeSet::from(["balance", "staking"]));
    }

    #[test]
    fn negative_control_unbonding_paid_a_block_late() {
        // Read at its release height, the entry must be paid already.
        let mut h = good_p2();
        h.nodes[0].state.extend(StateReads {
            accounts: vec![acct(A, 999, 1, 4)],
            staking: vec![staking(A, vec![(k(1), 60)], vec![(4, 40, k(1))], 4)],
            ..StateReads::default()
        });
        let v = check(&h);
        assert!(
            v.iter().any(|x| matches!(
                x,
                Violation::Balance {
                    height: 4,
                    reported: 999,
                    replayed: 1_039,
                    ..
                }
            )),
            "{v:?}"
        );
        assert_eq!(kinds(&h), BTreeSet::from(["balance", "staking"]));
    }

    #[test]
    fn negative_control_slash_not_burned() {
        // Evidence left the stake whole: bonds, stake and burned total all differ from the
        // replay, while the supply alone would not notice.
        let mut h = good_p2();
        staking_at(&mut h, B, 7).bonds = vec![(k(2), 100)];
        validator_at(&mut h, k(2), 7).stake = 100;
        h.nodes[0].state.burned[0].burned = 0;
        assert_eq!(
            kinds(&h),
            BTreeSet::from(["staking", "validator record", "burned"])
        );
    }

    #[test]
    fn negative_control_burned_but_not_cut() {
        let mut h = good_p2();
        staking_at(&mut h, B, 7).bonds = vec![(k(2), 100)];
        let k = kinds(&h);
        assert!(k.contains("staking") && k.contains("supply"), "{k:?}");
    }

    #[test]
    fn negative_control_jail_not_applied() {
        // Block 5 names a set still holding the jailed K2; node 0 reports it unjailed.
        let mut h = good_p2();
        h.nodes[1].blocks[4].validators_hash = hash_of(&set(&[(k(1), 6), (k(2), 9), (k(3), 10)]));
        validator_at(&mut h, k(2), 5).jailed_until_height = 0;
        let v = check(&h);
        assert!(
            v.iter().any(|x| matches!(
                x,
                Violation::SetHash { node, height: 5, which: "validators_hash", .. } if node == "node1"
            )),
            "{v:?}"
        );
        assert_eq!(kinds(&h), BTreeSet::from(["set hash", "validator record"]));
    }

    #[test]
    fn negative_control_evidence_twice_or_malformed() {
        let mut h = good_p2();
        h.nodes[0].blocks[3].evidence.push(equivocation(2, 2));
        assert_eq!(kinds(&h), BTreeSet::from(["invalid evidence"]));
        let mut h = good_p2();
        h.nodes[0].blocks[2].evidence[0].b.vote.block_hash = Some([1; 32]);
        // Not applied: the node's slash has no cause.
        let k = kinds(&h);
        assert!(
            k.contains("invalid evidence") && k.contains("burned"),
            "{k:?}"
        );
        // A forged vote: its signature is another vote's.
        let mut h = good_p2();
        let e = &mut h.nodes[0].blocks[2].evidence[0];
        e.b.signature = e.a.signature;
        let v = check(&h);
        assert!(
            v.iter().any(|x| matches!(
                x,
                Violation::InvalidEvidence { why, .. } if why.contains("signature of vote b")
            )),
            "{v:?}"
        );
    }

    #[test]
    fn negative_control_invalid_staking_txs() {
        // An Unjail before the jail time is over, an Unbond with no bond.
        let mut h = good_p2();
        let unjail = h.nodes[0].blocks[5].txs.remove(0);
        h.nodes[0].blocks[4].txs.push(unjail);
        h.nodes[0].blocks[6].txs.push(staking_tx(
            "c2",
            C,
            1,
            Payload::Unbond {
                validator: k(1),
                amount: 1,
            },
        ));
        let v = check(&h);
        let why: Vec<&str> = v
            .iter()
            .filter_map(|x| match x {
                Violation::InvalidTx { why, .. } => Some(why.as_str()),
                _ => None,
            })
            .collect();
        assert!(why.iter().any(|w| w.contains("jailed until 6")), "{v:?}");
        assert!(why.iter().any(|w| w.contains("no bond")), "{v:?}");
    }

    #[test]
    fn downtime_jails_and_a_node_that_does_not_is_caught() {
        // K3 is missing from the commits of heights 1 and 2 (blocks 2 and 3's
        // last_commit): with downtime_jail_after 2 block 3 jails it until 6, out of the
        // set of 5. No slash.
        let g = set(&[(k(1), 10), (k(2), 10), (k(3), 10)]);
        let s5 = set(&[(k(1), 10), (k(2), 10)]);
        let sets = vec![vec![], g.clone(), g.clone(), g.clone(), g, s5.clone(), s5];
        let signers = |h: u64| {
            let all = sets[h as usize].iter().map(|v| v.address);
            all.filter(|a| h > 2 || *a != address_of(&k(3))).collect()
        };
        let blocks = p2_blocks(&sets, BTreeMap::new(), BTreeMap::new(), signers);
        let ops = [(A, k(1)), (B, k(2)), (C, k(3))];
        let state = StateReads {
            accounts: ops.iter().map(|(op, _)| acct(*op, 0, 0, 5)).collect(),
            staking: ops
                .iter()
                .map(|(op, k)| staking(*op, vec![(*k, 100)], vec![], 5))
                .collect(),
            validators: vec![
                validator(k(1), 100, 0, 5),
                validator(k(2), 100, 0, 5),
                validator(k(3), 100, 6, 5),
            ],
            burned: vec![BurnedRecord {
                height: 5,
                burned: 0,
            }],
        };
        let mut h = History {
            genesis: BTreeMap::new(),
            upgrade: None,
            staking: Some(StakingGenesis {
                params: StakingParams {
                    downtime_jail_after: 2,
                    ..params()
                },
                validators: ops
                    .iter()
                    .map(|(op, k)| (*op, set(&[(*k, 10)])[0].clone()))
                    .collect(),
            }),
            nodes: vec![NodeHistory {
                name: "node0".into(),
                blocks,
                state,
            }],
            observed: vec![],
        };
        assert_eq!(check(&h), vec![]);
        // A node that did not jail it: its record and the set of 5 give it away.
        validator_at(&mut h, k(3), 5).jailed_until_height = 0;
        assert_eq!(kinds(&h), BTreeSet::from(["validator record"]));
        let g = set(&[(k(1), 10), (k(2), 10), (k(3), 10)]);
        h.nodes[0].blocks[3].next_validators_hash = Some(hash_of(&g));
        assert!(kinds(&h).contains("set hash"));
    }
}
