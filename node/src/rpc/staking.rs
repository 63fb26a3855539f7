//! The routes that read the validator set and the staking state: `GET /v1/validators`,
//! `GET /v1/validators/{pubkey}` and `GET /v1/staking/{address}`. Each answer is built by
//! a plain function over the store's traits (tested over the memory store); the handlers
//! in `rpc/mod.rs` parse the request and call them on a blocking thread.
//!
//! Protocol 1 has one set, the genesis set, and no staking state: the set routes answer
//! it for every height, a validator's `stake` and `consecutive_missed` are null, and an
//! operator has no bonds. Protocol 2 reads the sets and entries the ledger stores
//! (`ledger::staking`).

use std::collections::HashMap;

use ledger::crypto::address_of;
use ledger::genesis::Genesis;
use ledger::hash::to_hex;
use ledger::staking::{self, validator_set_at};
use ledger::store::{ChainReader, StoreError};
use ledger::types::{Address, PublicKeyBytes, PROTOCOL_2};
use ledger::validators::ValidatorSet;
use tally_api::{self as api, ErrorCode};

use super::{ApiError, ApiResult};

/// How often a read that must see one tip is retried when a commit lands in the middle.
const TRIES: usize = 5;

/// Whether the chain runs protocol 2 at the next height: chosen in genesis, or activated
/// by an upgrade (issue 21). A failed read of the schedule answers the genesis's.
fn is_protocol_2<S: ChainReader + ?Sized>(genesis: &Genesis, store: &S) -> bool {
    if genesis.params.protocol_version >= PROTOCOL_2 {
        return true;
    }
    let next = store.tip().map_or(1, |t| t.height + 1);
    crate::upgrade::protocol_at(store, &genesis.params, next).is_ok_and(|p| p >= PROTOCOL_2)
}

fn internal(e: StoreError) -> ApiError {
    ApiError::internal(e)
}

/// The genesis names by consensus key (a validator that bonded in later has none).
fn genesis_names(genesis: &Genesis) -> HashMap<PublicKeyBytes, &str> {
    genesis
        .validators
        .validators()
        .iter()
        .zip(&genesis.validator_names)
        .map(|(v, name)| (v.pubkey, name.as_str()))
        .collect()
}

/// The genesis name of `pubkey`, or empty.
fn name_of(genesis: &Genesis, pubkey: &PublicKeyBytes) -> String {
    genesis_names(genesis)
        .get(pubkey)
        .map_or_else(String::new, |n| (*n).to_string())
}

/// The set that runs `height`, for `1 <= height <= tip + 2` (the set of tip + 2 is
/// computed at the end of the tip). Protocol 1 answers the genesis set in the same range,
/// so a client sees one rule whatever the chain runs.
fn set_at<S: ChainReader + ?Sized>(
    genesis: &Genesis,
    store: &S,
    height: u64,
) -> ApiResult<ValidatorSet> {
    if height == 0 {
        return Err(ApiError::new(
            ErrorCode::BadHeight,
            "height 0 is the genesis state and has no validator set; heights start at 1",
        ));
    }
    let tip = store.tip().map_err(internal)?.height;
    if height > tip.saturating_add(2) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "the validator set of height {height} is not known yet: this node's tip is \
                 {tip}, and a set is known up to the tip + 2 ({})",
                tip + 2
            ),
        ));
    }
    // Protocol 1 at that height (before an upgrade's activation, too): the genesis set.
    let protocol = crate::upgrade::protocol_at(store, &genesis.params, height).map_err(internal)?;
    if protocol < PROTOCOL_2 {
        return Ok(genesis.validators.clone());
    }
    validator_set_at(store, height).map_err(internal)
}

/// `GET /v1/validators[?height=H]`; `None` asks for the next height (the tip + 1).
pub fn validators<S: ChainReader + ?Sized>(
    genesis: &Genesis,
    store: &S,
    height: Option<u64>,
) -> ApiResult<api::Validators> {
    let height = match height {
        Some(h) => h,
        None => store.tip().map_err(internal)?.height + 1,
    };
    let set = set_at(genesis, store, height)?;
    let names = genesis_names(genesis);
    let proposers = (0..set.len())
        .map(|round| to_hex(&set.proposer(height, round as u32).address))
        .collect();
    Ok(api::Validators {
        height,
        protocol_version: crate::upgrade::protocol_at(store, &genesis.params, height)
            .map_err(internal)?,
        total_power: set.total_power(),
        validators_hash: to_hex(&set.hash()),
        validators: set
            .validators()
            .iter()
            .map(|v| api::Validator {
                name: names
                    .get(&v.pubkey)
                    .map_or_else(String::new, |n| (*n).to_string()),
                address: to_hex(&v.address),
                pubkey: to_hex(&v.pubkey),
                power: v.power,
            })
            .collect(),
        proposers,
    })
}

/// Whether `address` is in the set of the next height: `/v1/status`'s `validator`. On
/// protocol 2 a genesis validator that unbonded or was jailed is no longer one.
pub fn in_next_set<S: ChainReader + ?Sized>(
    genesis: &Genesis,
    store: &S,
    address: &Address,
) -> ApiResult<bool> {
    if !is_protocol_2(genesis, store) {
        return Ok(genesis.validators.get(address).is_some());
    }
    let tip = store.tip().map_err(internal)?.height;
    let set = validator_set_at(store, tip + 1).map_err(internal)?;
    Ok(set.get(address).is_some())
}

/// `GET /v1/validators/{pubkey}`: the key's record at the tip and whether it is in the
/// set of the next height. Protocol 1 knows only its genesis validators.
pub fn validator<S: ChainReader + ?Sized>(
    genesis: &Genesis,
    store: &S,
    pubkey: &PublicKeyBytes,
) -> ApiResult<api::ValidatorInfo> {
    let address = address_of(pubkey);
    let in_set_power = |set: &ValidatorSet| {
        set.get(&address)
            .filter(|v| &v.pubkey == pubkey)
            .map(|v| v.power)
    };
    if !is_protocol_2(genesis, store) {
        let Some(power) = in_set_power(&genesis.validators) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "{} is not a validator of this chain; it runs protocol 1, whose validators \
                     are the genesis set (see GET /v1/validators) and have no stake",
                    to_hex(pubkey)
                ),
            ));
        };
        let height = store.tip().map_err(internal)?.height;
        return Ok(api::ValidatorInfo {
            pubkey: to_hex(pubkey),
            address: to_hex(&address),
            name: name_of(genesis, pubkey),
            height,
            stake: None,
            jailed_until_height: 0,
            consecutive_missed: None,
            in_set: true,
            power,
        });
    }
    // The record and the set are two reads: retry if a commit landed in between, so the
    // answer is the state of one height.
    for _ in 0..TRIES {
        let tip = store.tip().map_err(internal)?.height;
        let record = staking::validator_record(store, pubkey).map_err(internal)?;
        let set = validator_set_at(store, tip + 1).map_err(internal)?;
        if store.tip().map_err(internal)?.height != tip {
            continue;
        }
        let Some(record) = record else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no validator record for {}: nothing was ever bonded to this key",
                    to_hex(pubkey)
                ),
            ));
        };
        let power = in_set_power(&set);
        return Ok(api::ValidatorInfo {
            pubkey: to_hex(pubkey),
            address: to_hex(&address),
            name: name_of(genesis, pubkey),
            height: tip,
            stake: Some(record.stake),
            jailed_until_height: record.jailed_until_height,
            consecutive_missed: Some(record.consecutive_missed),
            in_set: power.is_some(),
            power: power.unwrap_or(0),
        });
    }
    Err(ApiError::new(
        ErrorCode::Busy,
        "the chain moved while reading; retry",
    ))
}

/// `GET /v1/staking/{address}`: `operator`'s bonds and unbonding entries at the tip.
pub fn staking<S: ChainReader + ?Sized>(
    genesis: &Genesis,
    store: &S,
    operator: &Address,
) -> ApiResult<api::Staking> {
    let answer = |height, bonds: Vec<api::Bond>, unbonding: Vec<api::Unbonding>| api::Staking {
        address: to_hex(operator),
        height,
        total_bonded: bonds.iter().map(|b| b.amount).sum(),
        total_unbonding: unbonding.iter().map(|u| u.amount).sum(),
        bonds,
        unbonding,
    };
    if !is_protocol_2(genesis, store) {
        let height = store.tip().map_err(internal)?.height;
        return Ok(answer(height, Vec::new(), Vec::new()));
    }
    for _ in 0..TRIES {
        let tip = store.tip().map_err(internal)?.height;
        let bonds = staking::bonds_of(store, operator).map_err(internal)?;
        let unbonding = staking::unbonding_of(store, operator).map_err(internal)?;
        if store.tip().map_err(internal)?.height != tip {
            continue;
        }
        let bonds = bonds
            .into_iter()
            .map(|(key, amount)| api::Bond {
                validator: to_hex(&key),
                amount,
            })
            .collect();
        let unbonding = unbonding
            .into_iter()
            .map(|(release_height, e)| api::Unbonding {
                release_height,
                amount: e.amount,
                validator: to_hex(&e.validator),
            })
            .collect();
        return Ok(answer(tip, bonds, unbonding));
    }
    Err(ApiError::new(
        ErrorCode::Busy,
        "the chain moved while reading; retry",
    ))
}

/// A protocol-2 chain built block by block through the ledger (as a proposer and a
/// follower would), for the staking routes' and metrics' tests.
#[cfg(test)]
pub(crate) mod test_chain {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use ledger::block::{assemble_v2, block_sets, sign_commit, BlockTemplate};
    use ledger::crypto::Keypair;
    use ledger::exec::{build_body_at, execute_block, BlockEnv, ExecContext, Signatures};
    use ledger::genesis::Genesis;
    use ledger::hash::Hash;
    use ledger::store::ChainWriter;
    use ledger::types::{Equivocation, Payload, SignedTx, Tx, Vote, VoteKind};

    pub const CHAIN: &str = "tally-stake-rpc";
    /// Each genesis validator's power; its stake is this x [`PER_POWER`].
    pub const GENESIS_POWER: u64 = 10;
    pub const PER_POWER: u64 = 100;
    pub const UNBONDING: u64 = 5;
    pub const JAIL: u64 = 3;
    pub const SLASH_BPS: u32 = 1_000;

    pub fn key(what: &str, i: usize) -> Keypair {
        crate::testing::key(&format!("stake-rpc-{what}-{i}"))
    }

    /// A genesis of `validators` validators (keys `val-i`, operators `op-i`) and
    /// `operators` funded operators; protocol 2 unless `protocol` says 1 (then without
    /// operators, as protocol 1 requires).
    pub fn genesis(protocol: u32, validators: usize, operators: usize) -> Genesis {
        let vals: Vec<serde_json::Value> = (0..validators)
            .map(|i| {
                let mut v = serde_json::json!({
                    "name": format!("v{i}"),
                    "pubkey": hex::encode(key("val", i).public_key()),
                    "power": GENESIS_POWER,
                });
                if protocol >= 2 {
                    v["operator"] = hex::encode(key("op", i).address()).into();
                }
                v
            })
            .collect();
        let accounts: Vec<serde_json::Value> = (0..operators)
            .map(|i| serde_json::json!({"address": hex::encode(key("op", i).address()), "balance": 1_000_000}))
            .collect();
        let mut params = serde_json::json!({
            "block_max_txs": 100, "block_max_bytes": 100000, "max_tx_bytes": 1024, "min_fee": 1,
        });
        if protocol >= 2 {
            params["protocol_version"] = protocol.into();
            params["staking"] = serde_json::json!({
                "stake_per_power": PER_POWER, "min_validator_stake": PER_POWER,
                "max_validators": 100, "unbonding_blocks": UNBONDING, "jail_blocks": JAIL,
                "downtime_jail_after": 3, "slash_fraction_bps": SLASH_BPS,
                "evidence_max_age_blocks": UNBONDING,
            });
        }
        let file = serde_json::json!({
            "chain_id": CHAIN, "genesis_time_ms": 0, "params": params,
            "validators": vals, "accounts": accounts,
        });
        Genesis::from_bytes("genesis.json", &serde_json::to_vec(&file).unwrap()).unwrap()
    }

    pub struct Chain<S> {
        pub g: Arc<Genesis>,
        pub store: Arc<S>,
        pub vals: Vec<Keypair>,
        pub ops: Vec<Keypair>,
    }

    impl<S: ChainWriter> Chain<S> {
        pub fn over(g: Arc<Genesis>, store: Arc<S>, keys: usize) -> Self {
            Chain {
                g,
                store,
                vals: (0..keys).map(|i| key("val", i)).collect(),
                ops: (0..keys).map(|i| key("op", i)).collect(),
            }
        }

        pub fn height(&self) -> u64 {
            self.store.tip().unwrap().height
        }

        /// Operator `op`'s next tx (`pending` of its txs come before it in the block).
        pub fn tx(&self, op: usize, payload: Payload, pending: u64) -> SignedTx {
            let k = &self.ops[op];
            let nonce = self
                .store
                .account(&k.address())
                .unwrap()
                .unwrap_or_default()
                .nonce;
            k.sign_tx(Tx {
                chain_id: CHAIN.into(),
                from: k.public_key(),
                nonce: nonce + pending,
                fee: 1,
                payload,
            })
        }

        pub fn bond(&self, op: usize, val: usize, amount: u64) -> SignedTx {
            let validator = self.vals[val].public_key();
            self.tx(op, Payload::Bond { validator, amount }, 0)
        }

        /// Two precommits of validator `val` at `height` for different blocks.
        pub fn equivocation(&self, val: usize, height: u64) -> Equivocation {
            let vote = |b: u8| {
                self.vals[val].sign_vote(Vote {
                    chain_id: CHAIN.into(),
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

        /// Builds, executes and commits the next block, signed by its whole set. Every tx
        /// must be included.
        pub fn step(&self, txs: Vec<SignedTx>, evidence: &[Equivocation]) {
            let ctx = ExecContext {
                chain_id: CHAIN,
                params: &self.g.params,
                validators: &self.g.validators,
            };
            let tip = self.store.tip().unwrap();
            let height = tip.height + 1;
            let sets = block_sets(self.store.as_ref(), height).unwrap();
            let proposer = sets.current.proposer(height, 0).address;
            let last_commit = self.store.commit(tip.height).unwrap();
            let env = BlockEnv {
                height,
                proposer,
                last_commit: last_commit.as_ref(),
                evidence,
                signal: None,
            };
            let n = txs.len();
            let body =
                build_body_at(self.store.as_ref(), ctx, env, txs, &Signatures::Verify).unwrap();
            assert_eq!(body.outcome.receipts.len(), n, "{:?}", body.rejected);
            let template = BlockTemplate {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                time_ms: height * 1000,
                prev_hash: tip.block_hash,
                validators_hash: sets.current.hash(),
                proposer,
                last_commit,
            };
            let block = assemble_v2(template, sets.next.hash(), &body);
            let outcome =
                execute_block(self.store.as_ref(), ctx, &block, &Signatures::Verify).unwrap();
            let signers: Vec<&Keypair> = self
                .vals
                .iter()
                .filter(|k| sets.current.get(&k.address()).is_some())
                .collect();
            let commit = sign_commit(CHAIN, height, 0, block.hash(), &signers);
            let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
            self.store
                .commit_block(&block, &commit, &outcome.update, &ids)
                .unwrap();
        }

        pub fn empty_blocks(&self, n: u64) {
            for _ in 0..n {
                self.step(vec![], &[]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use axum::extract::{Path, Query, State};
    use axum::Json;
    use ledger::store::memory::MemStore;
    use ledger::types::Payload;

    use super::test_chain::{self, Chain, GENESIS_POWER, PER_POWER, UNBONDING};
    use super::*;
    use crate::rpc::{get_staking, get_validator, validators as validators_route};

    fn p2(operators: usize) -> Chain<MemStore> {
        let g = Arc::new(test_chain::genesis(2, 4, operators));
        let store = Arc::new(MemStore::new(&g).unwrap());
        Chain::over(g, store, operators)
    }

    fn hexes(keys: &[usize], c: &Chain<MemStore>) -> Vec<String> {
        let mut out: Vec<(Address, String)> = keys
            .iter()
            .map(|i| (c.vals[*i].address(), to_hex(&c.vals[*i].public_key())))
            .collect();
        out.sort();
        out.into_iter().map(|(_, k)| k).collect()
    }

    fn keys_of(v: &api::Validators) -> Vec<String> {
        v.validators.iter().map(|v| v.pubkey.clone()).collect()
    }

    #[track_caller]
    fn code<T: std::fmt::Debug>(r: ApiResult<T>, code: ErrorCode, needle: &str) {
        let e = r.expect_err("an error");
        assert_eq!(e.code, code, "{}", e.message);
        assert!(e.message.contains(needle), "{needle:?} in: {}", e.message);
    }

    #[test]
    fn the_set_of_each_height_follows_a_bond_with_names_powers_and_proposers() {
        let c = p2(6);
        // Operator 4 bonds 700 to a new key at height 1: it runs from height 3.
        c.step(vec![c.bond(4, 4, 700)], &[]);
        let (g, s) = (c.g.as_ref(), c.store.as_ref());
        for h in [1, 2] {
            let v = validators(g, s, Some(h)).unwrap();
            assert_eq!(keys_of(&v), hexes(&[0, 1, 2, 3], &c), "height {h}");
            assert_eq!(v.total_power, 4 * GENESIS_POWER);
            assert_eq!(v.validators_hash, to_hex(&g.validators.hash()));
        }
        let v = validators(g, s, Some(3)).unwrap();
        assert_eq!((v.height, v.protocol_version), (3, 2));
        assert_eq!(keys_of(&v), hexes(&[0, 1, 2, 3, 4], &c));
        assert_eq!(v.total_power, 4 * GENESIS_POWER + 700 / PER_POWER);
        let set = validator_set_at(s, 3).unwrap();
        assert_eq!(v.validators_hash, to_hex(&set.hash()));
        let new = to_hex(&c.vals[4].public_key());
        for val in &v.validators {
            let (name, power) = if val.pubkey == new {
                (String::new(), 7)
            } else {
                let i = (0..4)
                    .find(|i| to_hex(&c.vals[*i].public_key()) == val.pubkey)
                    .unwrap();
                (format!("v{i}"), GENESIS_POWER)
            };
            assert_eq!((&val.name, val.power), (&name, power));
        }
        let proposers: Vec<String> = (0..5u32)
            .map(|r| to_hex(&set.proposer(3, r).address))
            .collect();
        assert_eq!(v.proposers, proposers);
        // The default is the next height: tip 1 -> the set of 2.
        let next = validators(g, s, None).unwrap();
        assert_eq!((next.height, keys_of(&next)), (2, hexes(&[0, 1, 2, 3], &c)));

        // Known up to the tip + 2 = 3; 0 is no height.
        code(
            validators(g, s, Some(4)),
            ErrorCode::NotFound,
            "height 4 is not known yet: this node's tip is 1",
        );
        code(
            validators(g, s, Some(u64::MAX)),
            ErrorCode::NotFound,
            "not known yet",
        );
        code(validators(g, s, Some(0)), ErrorCode::BadHeight, "height 0");
    }

    #[test]
    fn protocol_1_answers_the_genesis_set_and_no_stake() {
        let g = Arc::new(test_chain::genesis(1, 4, 6));
        let store = MemStore::new(&g).unwrap();
        let v = validators(&g, &store, None).unwrap();
        assert_eq!((v.height, v.protocol_version), (1, 1));
        assert_eq!(v.validators_hash, to_hex(&g.validators.hash()));
        assert_eq!(v.validators.len(), 4);
        assert_eq!(v.validators[0].name, "v0");
        assert_eq!(v.proposers.len(), 4);
        assert_eq!(
            validators(&g, &store, Some(2)).unwrap().validators,
            v.validators
        );
        code(
            validators(&g, &store, Some(3)),
            ErrorCode::NotFound,
            "height 3",
        );

        let genesis_key = test_chain::key("val", 2).public_key();
        let info = validator(&g, &store, &genesis_key).unwrap();
        assert_eq!((info.stake, info.consecutive_missed), (None, None));
        assert_eq!(
            (info.in_set, info.power, info.jailed_until_height),
            (true, GENESIS_POWER, 0)
        );
        assert_eq!(info.name, "v2");
        assert!(in_next_set(&g, &store, &test_chain::key("val", 2).address()).unwrap());
        assert!(!in_next_set(&g, &store, &test_chain::key("val", 5).address()).unwrap());
        let other = test_chain::key("val", 5).public_key();
        code(
            validator(&g, &store, &other),
            ErrorCode::NotFound,
            "runs protocol 1",
        );

        let op = test_chain::key("op", 0).address();
        let st = staking(&g, &store, &op).unwrap();
        assert!(st.bonds.is_empty() && st.unbonding.is_empty());
        assert_eq!((st.total_bonded, st.total_unbonding), (0, 0));
    }

    #[test]
    fn a_validator_shows_its_stake_jail_and_place_in_the_set() {
        let c = p2(6);
        let (g, s) = (c.g.as_ref(), c.store.as_ref());
        let v0 = c.vals[0].public_key();
        let info = validator(g, s, &v0).unwrap();
        assert_eq!(info.stake, Some(GENESIS_POWER * PER_POWER));
        assert_eq!(
            (info.in_set, info.power, info.jailed_until_height),
            (true, GENESIS_POWER, 0)
        );
        assert_eq!(
            (info.consecutive_missed, info.name.as_str()),
            (Some(0), "v0")
        );

        // Never bonded: no record.
        let fresh = c.vals[5].public_key();
        code(
            validator(g, s, &fresh),
            ErrorCode::NotFound,
            "nothing was ever bonded",
        );

        // Equivocation at height 1, punished in block 2: slashed, jailed, out of the set
        // of height 4 (computed at the end of block 2).
        c.empty_blocks(1);
        c.step(vec![], &[c.equivocation(0, 1)]);
        let info = validator(g, s, &v0).unwrap();
        let stake = GENESIS_POWER * PER_POWER;
        assert_eq!(
            info.stake,
            Some(stake - stake * u64::from(test_chain::SLASH_BPS) / 10_000)
        );
        assert_eq!(info.jailed_until_height, 2 + test_chain::JAIL);
        assert_eq!(info.height, 2);
        // The set of height 3 still holds it (computed at the end of block 1).
        assert!(info.in_set);
        c.empty_blocks(1);
        let info = validator(g, s, &v0).unwrap();
        assert_eq!((info.height, info.in_set, info.power), (3, false, 0));

        // `/v1/status`'s `validator`: the jailed validator is one no more.
        let a0 = c.vals[0].address();
        assert!(!in_next_set(g, s, &a0).unwrap());
        assert!(in_next_set(g, s, &c.vals[1].address()).unwrap());

        // A bond to a new key makes a record out of the set until H + 2.
        c.step(vec![c.bond(5, 5, 300)], &[]);
        let info = validator(g, s, &fresh).unwrap();
        assert_eq!(
            (info.stake, info.in_set, info.name.as_str()),
            (Some(300), false, "")
        );
        c.empty_blocks(1);
        let info = validator(g, s, &fresh).unwrap();
        assert_eq!((info.in_set, info.power), (true, 3));
    }

    #[test]
    fn an_operator_sees_its_bonds_and_unbonding_entries() {
        let c = p2(6);
        let (g, s) = (c.g.as_ref(), c.store.as_ref());
        let op0 = c.ops[0].address();
        let st = staking(g, s, &op0).unwrap();
        let own = to_hex(&c.vals[0].public_key());
        let genesis_stake = GENESIS_POWER * PER_POWER;
        assert_eq!(
            st.bonds,
            vec![api::Bond {
                validator: own.clone(),
                amount: genesis_stake
            }]
        );
        assert!(st.unbonding.is_empty());

        // Operator 0 also bonds to key 4, then unbonds 400 of its genesis bond in the
        // next block and 100 more in the one after.
        c.step(vec![c.bond(0, 4, 500)], &[]);
        let v0 = c.vals[0].public_key();
        c.step(
            vec![c.tx(
                0,
                Payload::Unbond {
                    validator: v0,
                    amount: 400,
                },
                0,
            )],
            &[],
        );
        c.step(
            vec![c.tx(
                0,
                Payload::Unbond {
                    validator: v0,
                    amount: 100,
                },
                0,
            )],
            &[],
        );
        let st = staking(g, s, &op0).unwrap();
        assert_eq!(st.height, 3);
        let mut bonds = vec![
            api::Bond {
                validator: own.clone(),
                amount: genesis_stake - 500,
            },
            api::Bond {
                validator: to_hex(&c.vals[4].public_key()),
                amount: 500,
            },
        ];
        bonds.sort_by(|a, b| a.validator.cmp(&b.validator));
        assert_eq!(st.bonds, bonds);
        assert_eq!(
            st.unbonding,
            vec![
                api::Unbonding {
                    release_height: 2 + UNBONDING,
                    amount: 400,
                    validator: own.clone()
                },
                api::Unbonding {
                    release_height: 3 + UNBONDING,
                    amount: 100,
                    validator: own.clone()
                },
            ]
        );
        assert_eq!((st.total_bonded, st.total_unbonding), (genesis_stake, 500));
        // Another operator's entries are not listed: operator 1 unbonds too.
        let v1 = c.vals[1].public_key();
        c.step(
            vec![c.tx(
                1,
                Payload::Unbond {
                    validator: v1,
                    amount: 50,
                },
                0,
            )],
            &[],
        );
        assert_eq!(staking(g, s, &op0).unwrap().unbonding.len(), 2);
        let st1 = staking(g, s, &c.ops[1].address()).unwrap();
        assert_eq!(st1.unbonding.len(), 1);
        assert_eq!(st1.unbonding[0].amount, 50);

        // Paid back at the end of the release height: gone from the list.
        c.empty_blocks(2 + UNBONDING - 4);
        let st = staking(g, s, &op0).unwrap();
        assert_eq!(st.unbonding.len(), 1, "{st:?}");
        assert_eq!(st.unbonding[0].release_height, 3 + UNBONDING);
        // Someone with nothing bonded.
        let nobody = staking(g, s, &[0x42; 20]).unwrap();
        assert!(nobody.bonds.is_empty() && nobody.unbonding.is_empty());
    }

    /// A store whose tip moves on every read, as under a node committing fast.
    struct MovingTip {
        inner: MemStore,
        reads: std::sync::atomic::AtomicU64,
    }

    mod moving_tip {
        use std::sync::atomic::Ordering;

        use ledger::hash::Hash;
        use ledger::state::{AccountReader, Entries, StateReader};
        use ledger::store::{ChainReader, StoreError, Tip, TxLocation};
        use ledger::types::{Account, Block, Commit, Validator};

        use super::MovingTip;

        impl AccountReader for MovingTip {
            fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
                self.inner.account_by_key(key)
            }
        }

        impl StateReader for MovingTip {
            fn tree_node(
                &self,
                key: &jmt::storage::NodeKey,
            ) -> Result<Option<jmt::storage::Node>, StoreError> {
                self.inner.tree_node(key)
            }
            fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
                self.inner.tree_version()
            }
            fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                self.inner.entry(preimage)
            }
            fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
                self.inner.entries_with_prefix(prefix)
            }
            fn validator_set_record(
                &self,
                height: u64,
            ) -> Result<Option<Vec<Validator>>, StoreError> {
                self.inner.validator_set_record(height)
            }
            fn committed_header(
                &self,
                height: u64,
            ) -> Result<Option<ledger::types::Header>, StoreError> {
                self.inner.committed_header(height)
            }
        }

        impl ChainReader for MovingTip {
            fn tip(&self) -> Result<Tip, StoreError> {
                let mut tip = self.inner.tip()?;
                tip.height += self.reads.fetch_add(1, Ordering::SeqCst);
                Ok(tip)
            }
            fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
                self.inner.block(height)
            }
            fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError> {
                self.inner.commit(height)
            }
            fn height_of(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
                self.inner.height_of(hash)
            }
            fn tx_location(&self, id: &Hash) -> Result<Option<TxLocation>, StoreError> {
                self.inner.tx_location(id)
            }
            fn genesis_hash(&self) -> Result<Hash, StoreError> {
                self.inner.genesis_hash()
            }
        }
    }

    /// A record and a set, or bonds and unbonding entries, read across a commit would mix
    /// two heights: such a read is retried, and answered `busy` if the chain never stands
    /// still long enough.
    #[test]
    fn reads_that_straddle_a_commit_are_retried_then_busy() {
        let g = test_chain::genesis(2, 4, 4);
        let store = MovingTip {
            inner: MemStore::new(&g).unwrap(),
            reads: Default::default(),
        };
        let key = test_chain::key("val", 0);
        code(
            validator(&g, &store, &key.public_key()),
            ErrorCode::Busy,
            "retry",
        );
        code(
            staking(&g, &store, &test_chain::key("op", 0).address()),
            ErrorCode::Busy,
            "retry",
        );
        // 2 tip reads per try, 5 tries each.
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 20);
        assert_eq!(ErrorCode::Busy.status(), 503);
    }

    /// The handlers over the node's RocksDB store: parameters parsed with their error
    /// codes, answers as the functions above give them.
    #[tokio::test]
    async fn the_handlers_parse_their_parameters_and_answer_from_the_store() {
        let g = Arc::new(test_chain::genesis(2, 4, 6));
        let dir = tempfile::tempdir().unwrap();
        let s = crate::testing::rpc_state(g.clone(), dir.path());
        let c = Chain::over(g, s.store.clone(), 6);
        c.step(vec![c.bond(4, 4, 700)], &[]);

        let q = |h: Option<u64>| Ok(Query(api::ValidatorsQuery { height: h }));
        let Json(v) = validators_route(State(s.clone()), q(Some(3)))
            .await
            .unwrap();
        assert_eq!(v.validators.len(), 5);
        let Json(v) = validators_route(State(s.clone()), q(None)).await.unwrap();
        assert_eq!((v.height, v.validators.len()), (2, 4));
        let e = validators_route(State(s.clone()), q(Some(9)))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.status().as_u16()), (ErrorCode::NotFound, 404));

        let key = to_hex(&c.vals[4].public_key());
        let Json(info) = get_validator(State(s.clone()), Path(key.clone()))
            .await
            .unwrap();
        assert_eq!((info.stake, info.in_set), (Some(700), false));
        for bad in [&key[..64], "zz", &format!("{key}00")] {
            let e = get_validator(State(s.clone()), Path(bad.to_string()))
                .await
                .unwrap_err();
            assert_eq!(
                (e.code, e.status().as_u16()),
                (ErrorCode::BadKey, 400),
                "{bad}"
            );
            assert!(e.message.contains("66 hex characters"), "{}", e.message);
        }

        let op = to_hex(&c.ops[4].address());
        let Json(st) = get_staking(State(s.clone()), Path(op)).await.unwrap();
        assert_eq!((st.total_bonded, st.bonds.len()), (700, 1));
        let e = get_staking(State(s.clone()), Path("12".into()))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.status().as_u16()), (ErrorCode::BadAddress, 400));
    }
}
