//! Protocol 2's staking rules, block by block over a real store: genesis bonds, Bond,
//! Unbond, Unjail (each with the cases that must be refused), evidence (slash, jail, a
//! second copy refused), downtime jailing, the set of H + 2 and the header hashes that
//! carry it, and the supply (balances + bonds + unbonding + burned) conserved by random
//! mixes of all of it.

use std::collections::BTreeSet;

use ledger::block::{
    assemble_v2, block_sets, check_header_v2, sign_commit, BlockTemplate, HeaderError,
};
use ledger::check::TxError;
use ledger::crypto::Keypair;
use ledger::exec::{
    build_body_at, execute_block, BlockEnv, BlockError, BuiltBody, ExecContext, Executor,
    Signatures,
};
use ledger::genesis::Genesis;
use ledger::hash::{sha256, Hash};
use ledger::staking::{
    bond_key_bytes, validator_key_bytes, validator_set_at, BondRecord, EvidenceError,
    UnbondingEntry, ValidatorRecord, BOND_KEY_TAG, BURNED_KEY, UNBONDING_KEY_TAG,
};
use ledger::state::StateReader;
use ledger::store::memory::MemStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::*;
use proptest::prelude::*;

pub const CHAIN: &str = "tally-staking";
/// Each genesis validator's power; its stake is this x [`PER_POWER`].
const GENESIS_POWER: u64 = 10;
const PER_POWER: u64 = 100;
const FUNDS: u64 = 1_000_000;
const UNBONDING: u64 = 5;
const JAIL: u64 = 3;
const DOWNTIME: u64 = 3;
const SLASH_BPS: u32 = 1_000;
const MAX_AGE: u64 = 5;

fn keypair(what: &str, i: usize) -> Keypair {
    Keypair::from_secret_bytes(&sha256(format!("staking-{what}-{i}").as_bytes())).unwrap()
}

/// A protocol-2 genesis: validators `0..genesis_validators` (consensus keys `val-i`, power
/// [`GENESIS_POWER`], operator `op-i`), and `operators` funded operator accounts `op-i`.
pub fn genesis(genesis_validators: usize, operators: usize, max_validators: u32) -> Genesis {
    let validators: Vec<serde_json::Value> = (0..genesis_validators)
        .map(|i| {
            serde_json::json!({
                "name": format!("v{i}"),
                "pubkey": hex::encode(keypair("val", i).public_key()),
                "power": GENESIS_POWER,
                "operator": hex::encode(keypair("op", i).address()),
            })
        })
        .collect();
    let accounts: Vec<serde_json::Value> = (0..operators)
        .map(|i| serde_json::json!({"address": hex::encode(keypair("op", i).address()), "balance": FUNDS}))
        .collect();
    let file = serde_json::json!({
        "chain_id": CHAIN,
        "genesis_time_ms": 0,
        "params": {
            "block_max_txs": 100, "block_max_bytes": 100000, "max_tx_bytes": 1024, "min_fee": 1,
            "protocol_version": 2,
            "staking": {
                "stake_per_power": PER_POWER, "min_validator_stake": PER_POWER,
                "max_validators": max_validators, "unbonding_blocks": UNBONDING,
                "jail_blocks": JAIL, "downtime_jail_after": DOWNTIME,
                "slash_fraction_bps": SLASH_BPS, "evidence_max_age_blocks": MAX_AGE,
            }
        },
        "validators": validators,
        "accounts": accounts,
    });
    Genesis::from_bytes("genesis.json", &serde_json::to_vec(&file).unwrap()).unwrap()
}

/// A protocol-2 chain driven block by block: the proposer builds with `build_body_at`, a
/// follower checks the header and executes the block, and it is committed with a commit
/// signed by the set of its height minus the validators told to be absent.
pub struct Chain<S> {
    pub g: Genesis,
    pub store: S,
    pub vals: Vec<Keypair>,
    pub ops: Vec<Keypair>,
}

impl Chain<MemStore> {
    pub fn new(genesis_validators: usize, operators: usize) -> Self {
        let g = genesis(genesis_validators, operators, 100);
        let store = MemStore::new(&g).unwrap();
        Chain::over(g, store, operators)
    }
}

impl<S: ChainWriter> Chain<S> {
    pub fn over(g: Genesis, store: S, operators: usize) -> Self {
        Chain {
            g,
            store,
            vals: (0..operators).map(|i| keypair("val", i)).collect(),
            ops: (0..operators).map(|i| keypair("op", i)).collect(),
        }
    }

    fn ctx(&self) -> ExecContext<'_> {
        ExecContext {
            chain_id: CHAIN,
            params: &self.g.params,
            validators: &self.g.validators,
        }
    }

    pub fn height(&self) -> u64 {
        self.store.tip().unwrap().height
    }

    pub fn balance(&self, a: &Address) -> u64 {
        self.store.account(a).unwrap().unwrap_or_default().balance
    }

    /// `op`'s next tx with `payload`; nonces are the committed ones plus `pending`.
    pub fn tx_pending(&self, op: usize, payload: Payload, pending: u64) -> SignedTx {
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

    pub fn tx(&self, op: usize, payload: Payload) -> SignedTx {
        self.tx_pending(op, payload, 0)
    }

    /// `stx` applied alone at the next height: its receipt or why it is refused.
    pub fn try_tx(&self, stx: &SignedTx) -> Result<(), TxError> {
        let h = self.height() + 1;
        let mut exec = Executor::at_height(&self.store, self.ctx(), [0xee; 20], h);
        let bytes = ledger::codec::encode(stx);
        exec.apply_tx(stx, sha256(&bytes), bytes.len(), &Signatures::Verify)
            .unwrap()
            .map(|_| ())
    }

    pub fn set(&self, height: u64) -> Vec<PublicKeyBytes> {
        let mut keys: Vec<PublicKeyBytes> = validator_set_at(&self.store, height)
            .unwrap()
            .validators()
            .iter()
            .map(|v| v.pubkey)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The set of `height` as indices into `vals`, sorted.
    pub fn set_indices(&self, height: u64) -> Vec<usize> {
        let set = self.set(height);
        (0..self.vals.len())
            .filter(|i| set.contains(&self.vals[*i].public_key()))
            .collect()
    }

    pub fn record(&self, val: usize) -> ValidatorRecord {
        let bytes = self
            .store
            .entry(&validator_key_bytes(&self.vals[val].public_key()))
            .unwrap()
            .expect("validator record");
        borsh::from_slice(&bytes).unwrap()
    }

    pub fn bond(&self, op: usize, val: usize) -> u64 {
        self.store
            .entry(&bond_key_bytes(
                &self.ops[op].address(),
                &self.vals[val].public_key(),
            ))
            .unwrap()
            .map_or(0, |b| borsh::from_slice::<BondRecord>(&b).unwrap().amount)
    }

    pub fn burned(&self) -> u64 {
        self.store
            .entry(BURNED_KEY)
            .unwrap()
            .map_or(0, |b| borsh::from_slice::<u64>(&b).unwrap())
    }

    /// Balances of every account the chain can touch (operators and validators, which
    /// collect the fees) + bonds + unbonding entries + burned - minted (issue 21: stake
    /// created by a protocol-1 chain's switch to protocol 2; 0 on these chains): the
    /// genesis supply.
    pub fn supply(&self) -> u128 {
        let mut addresses: BTreeSet<Address> = self.ops.iter().map(Keypair::address).collect();
        addresses.extend(self.vals.iter().map(Keypair::address));
        let balances: u128 = addresses.iter().map(|a| u128::from(self.balance(a))).sum();
        let bonds: u128 = self
            .store
            .entries_with_prefix(BOND_KEY_TAG)
            .unwrap()
            .iter()
            .map(|(_, v)| u128::from(borsh::from_slice::<BondRecord>(v).unwrap().amount))
            .sum();
        let unbonding: u128 = self
            .store
            .entries_with_prefix(UNBONDING_KEY_TAG)
            .unwrap()
            .iter()
            .map(|(_, v)| u128::from(borsh::from_slice::<UnbondingEntry>(v).unwrap().amount))
            .sum();
        let minted = u128::from(ledger::staking::minted(&self.store).unwrap());
        balances + bonds + unbonding + u128::from(self.burned()) - minted
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

    /// The proposer's block at the next height, unchecked and uncommitted.
    pub fn propose(&self, txs: Vec<SignedTx>, evidence: &[Equivocation]) -> (Block, BuiltBody) {
        let tip = self.store.tip().unwrap();
        let height = tip.height + 1;
        let sets = block_sets(&self.store, height).unwrap();
        let proposer = sets.current.proposer(height, 0).address;
        let last_commit = if height > 1 {
            self.store.commit(tip.height).unwrap()
        } else {
            None
        };
        let env = BlockEnv {
            height,
            proposer,
            last_commit: last_commit.as_ref(),
            evidence,
            signal: None,
        };
        let body = build_body_at(&self.store, self.ctx(), env, txs, &Signatures::Verify).unwrap();
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
        (assemble_v2(template, sets.next.hash(), &body), body)
    }

    /// Checks `block` like a follower and commits it, signed by its height's set minus
    /// `absent` (indices into `vals`).
    pub fn commit(&self, block: &Block, absent: &[usize]) -> Result<(), BlockError> {
        let tip = self.store.tip().unwrap();
        let height = block.header.height;
        let sets = block_sets(&self.store, height).unwrap();
        check_header_v2(CHAIN, &sets, &tip, block).expect("header");
        let outcome = execute_block(&self.store, self.ctx(), block, &Signatures::Verify)?;
        let absent: Vec<Address> = absent.iter().map(|i| self.vals[*i].address()).collect();
        let signers: Vec<&Keypair> = self
            .vals
            .iter()
            .filter(|k| sets.current.get(&k.address()).is_some() && !absent.contains(&k.address()))
            .collect();
        let commit = sign_commit(CHAIN, height, 0, block.hash(), &signers);
        let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
        self.store
            .commit_block(block, &commit, &outcome.update, &ids)
            .unwrap();
        Ok(())
    }

    /// Proposes, checks and commits the next block; returns what the proposer left out.
    pub fn step(
        &self,
        txs: Vec<SignedTx>,
        evidence: &[Equivocation],
        absent: &[usize],
    ) -> BuiltBody {
        let (block, body) = self.propose(txs, evidence);
        self.commit(&block, absent).unwrap();
        body
    }

    pub fn empty_blocks(&self, n: u64) {
        for _ in 0..n {
            self.step(vec![], &[], &[]);
        }
    }
}

fn bond(c: &Chain<impl ChainWriter>, val: usize, amount: u64) -> Payload {
    Payload::Bond {
        validator: c.vals[val].public_key(),
        amount,
    }
}

fn unbond(c: &Chain<impl ChainWriter>, val: usize, amount: u64) -> Payload {
    Payload::Unbond {
        validator: c.vals[val].public_key(),
        amount,
    }
}

fn unjail(c: &Chain<impl ChainWriter>, val: usize) -> Payload {
    Payload::Unjail {
        validator: c.vals[val].public_key(),
    }
}

#[test]
fn genesis_bonds_its_validators_and_counts_them_in_the_supply() {
    let c = Chain::new(4, 6);
    let stake = GENESIS_POWER * PER_POWER;
    for i in 0..4 {
        assert_eq!(c.bond(i, i), stake);
        assert_eq!(
            c.record(i),
            ValidatorRecord {
                stake,
                jailed_until_height: 0,
                consecutive_missed: 0
            }
        );
    }
    assert_eq!(c.supply(), u128::from(6 * FUNDS + 4 * stake));
    // Heights 1 and 2 run the genesis set, sorted by address.
    let genesis_keys: Vec<usize> = (0..4).collect();
    assert_eq!(c.set_indices(1), genesis_keys);
    assert_eq!(c.set_indices(2), genesis_keys);
    let set = validator_set_at(&c.store, 1).unwrap();
    assert_eq!(set.hash(), c.g.validators.hash());
    assert!(set
        .validators()
        .windows(2)
        .all(|w| w[0].address < w[1].address));
    assert!(validator_set_at(&c.store, 0).is_err());
}

#[test]
fn genesis_operator_is_required_on_protocol_2_and_refused_on_protocol_1() {
    let base = |protocol: u32, operator: Option<&str>| {
        let mut v = serde_json::json!({"name": "v0",
            "pubkey": hex::encode(keypair("val", 0).public_key()), "power": 200});
        if let Some(op) = operator {
            v["operator"] = op.into();
        }
        serde_json::json!({
            "chain_id": "c", "genesis_time_ms": 0,
            "params": {"block_max_txs": 1, "block_max_bytes": 1024, "max_tx_bytes": 1024,
                       "min_fee": 1, "protocol_version": protocol},
            "validators": [v], "accounts": []
        })
    };
    let load = |v: serde_json::Value| {
        Genesis::from_bytes("genesis.json", &serde_json::to_vec(&v).unwrap())
            .map_err(|e| e.to_string())
    };
    let op = "11".repeat(20);
    assert!(load(base(1, None)).is_ok());
    assert!(load(base(2, Some(&op))).is_ok());
    let e = load(base(2, None)).unwrap_err();
    assert!(
        e.contains("validators[0].operator is missing; on protocol 2"),
        "{e}"
    );
    let e = load(base(1, Some(&op))).unwrap_err();
    assert!(
        e.contains("validators[0].operator is a protocol-2 field"),
        "{e}"
    );
    let e = load(base(2, Some("zz"))).unwrap_err();
    assert!(
        e.contains("validators[0].operator is not an address"),
        "{e}"
    );
    // Power 5 x the default stake_per_power (1000) is below min_validator_stake (10000).
    let mut low = base(2, Some(&op));
    low["validators"][0]["power"] = 5.into();
    let e = load(low).unwrap_err();
    assert!(
        e.contains("below params.staking.min_validator_stake"),
        "{e}"
    );
}

#[test]
fn bond_moves_balance_into_a_bond_and_creates_the_validator() {
    let c = Chain::new(4, 6);
    let before = c.balance(&c.ops[4].address());
    c.step(vec![c.tx(4, bond(&c, 4, 700))], &[], &[]);
    assert_eq!(c.balance(&c.ops[4].address()), before - 700 - 1);
    assert_eq!(c.bond(4, 4), 700);
    assert_eq!(c.record(4).stake, 700);
    // A second operator bonding to the same key adds to its stake.
    c.step(vec![c.tx(5, bond(&c, 4, 300))], &[], &[]);
    assert_eq!((c.bond(5, 4), c.record(4).stake), (300, 1_000));

    // Refused: zero, a key that is not a curve point, more than the balance.
    assert_eq!(c.try_tx(&c.tx(4, bond(&c, 4, 0))), Err(TxError::ZeroAmount));
    let bad = Payload::Bond {
        validator: [9; 33],
        amount: 5,
    };
    let e = c.try_tx(&c.tx(4, bad)).unwrap_err();
    assert_eq!(e.code(), "bad_validator_key");
    let e = c.try_tx(&c.tx(4, bond(&c, 4, FUNDS))).unwrap_err();
    assert_eq!(e.code(), "insufficient_funds");
}

#[test]
fn unbond_pays_back_at_the_end_of_the_release_height() {
    let c = Chain::new(4, 5);
    let op = c.ops[0].address();
    let start = c.balance(&op);
    c.step(vec![c.tx(0, unbond(&c, 0, 400))], &[], &[]);
    let h = c.height();
    assert_eq!((c.bond(0, 0), c.record(0).stake), (600, 600));
    assert_eq!(c.balance(&op), start - 1);
    // Not paid before the end of h + unbonding_blocks...
    while c.height() < h + UNBONDING - 1 {
        c.step(vec![], &[], &[]);
        assert_eq!(c.balance(&op), start - 1, "height {}", c.height());
    }
    // ... and paid in that block.
    c.step(vec![], &[], &[]);
    assert_eq!(c.height(), h + UNBONDING);
    assert_eq!(c.balance(&op), start - 1 + 400);
    assert!(c
        .store
        .entries_with_prefix(UNBONDING_KEY_TAG)
        .unwrap()
        .is_empty());

    // "Up to" the bond: asking for more unbonds all of it, and the bond is gone.
    c.step(vec![c.tx(0, unbond(&c, 0, 1_000_000))], &[], &[]);
    assert_eq!((c.bond(0, 0), c.record(0).stake), (0, 0));
    // Refused: no bond to unbond (this operator never bonded to key 1), zero.
    let e = c.try_tx(&c.tx(0, unbond(&c, 1, 5))).unwrap_err();
    assert_eq!(e.code(), "no_bond");
    let e = c.try_tx(&c.tx(0, unbond(&c, 0, 5))).unwrap_err();
    assert_eq!(e.code(), "no_bond", "fully unbonded");
    assert_eq!(
        c.try_tx(&c.tx(1, unbond(&c, 1, 0))),
        Err(TxError::ZeroAmount)
    );
    // On protocol 1 the payloads stay refused (tests/it/protocol2.rs checks more).
    let p1 = ledger::genesis::Params::default();
    let stx = c.tx(1, unbond(&c, 1, 5));
    let e = ledger::check::check_static(&stx, 200, CHAIN, &p1).unwrap_err();
    assert_eq!(e.code(), "unsupported_payload");
}

#[test]
fn downtime_jails_and_unjail_brings_the_validator_back() {
    let c = Chain::new(4, 4);
    // Validator 3 misses the commits of blocks 1, 2, 3: the blocks 2, 3, 4 count them.
    for _ in 0..DOWNTIME {
        c.step(vec![], &[], &[3]);
    }
    assert_eq!(c.record(3).consecutive_missed, DOWNTIME - 1);
    assert_eq!(c.record(3).jailed_until_height, 0);
    c.step(vec![], &[], &[]);
    let jailed_at = c.height();
    assert_eq!(jailed_at, DOWNTIME + 1);
    assert_eq!(c.record(3).jailed_until_height, jailed_at + JAIL);
    assert_eq!(c.record(3).stake, GENESIS_POWER * PER_POWER, "no slash");
    // It leaves the set at H + 2.
    assert_eq!(c.set_indices(jailed_at + 1), [0, 1, 2, 3]);
    assert_eq!(c.set_indices(jailed_at + 2), [0, 1, 2]);

    // Unjail refused: by a non-operator, before the jail time is over.
    assert_eq!(
        c.try_tx(&c.tx(2, unjail(&c, 3))).unwrap_err().code(),
        "not_operator"
    );
    assert_eq!(
        c.try_tx(&c.tx(3, unjail(&c, 3))).unwrap_err().code(),
        "still_jailed"
    );
    assert_eq!(
        c.try_tx(&c.tx(2, unjail(&c, 2))).unwrap_err().code(),
        "not_jailed"
    );
    while c.height() + 1 < jailed_at + JAIL {
        c.step(vec![], &[], &[]);
    }
    // The jail is over at its last height: the Unjail goes in, and the set of H + 2 has
    // the validator again.
    c.step(vec![c.tx(3, unjail(&c, 3))], &[], &[]);
    let back = c.height();
    assert_eq!(c.record(3).jailed_until_height, 0);
    assert_eq!(c.set_indices(back + 1), [0, 1, 2]);
    assert_eq!(c.set_indices(back + 2), [0, 1, 2, 3]);
}

#[test]
fn equivocation_slashes_jails_and_a_second_copy_is_refused() {
    let c = Chain::new(4, 5);
    // Operator 4 also bonds to validator 1; operator 1 starts unbonding part of its bond.
    c.step(
        vec![c.tx(4, bond(&c, 1, 500)), c.tx(1, unbond(&c, 1, 200))],
        &[],
        &[],
    );
    c.empty_blocks(1);
    let supply = c.supply();
    let ev = c.equivocation(1, 2);
    let body = c.step(vec![], std::slice::from_ref(&ev), &[]);
    assert_eq!(body.evidence, std::slice::from_ref(&ev));
    let h = c.height();
    // 10% of every bond and unbonding entry is burned.
    assert_eq!(c.bond(1, 1), 800 - 80);
    assert_eq!(c.bond(4, 1), 500 - 50);
    let unbonding: Vec<UnbondingEntry> = c
        .store
        .entries_with_prefix(UNBONDING_KEY_TAG)
        .unwrap()
        .iter()
        .map(|(_, v)| borsh::from_slice(v).unwrap())
        .collect();
    assert_eq!(unbonding.len(), 1);
    assert_eq!(unbonding[0].amount, 200 - 20);
    assert_eq!(c.burned(), 80 + 50 + 20);
    assert_eq!(c.record(1).stake, 720 + 450);
    assert_eq!(c.record(1).jailed_until_height, h + JAIL);
    assert_eq!(c.supply(), supply, "burned stake stays in the sum");
    assert_eq!(c.set_indices(h + 1), [0, 1, 2, 3]);
    assert_eq!(c.set_indices(h + 2), [0, 2, 3]);

    // A second copy (or the same offence signed again) is left out by the proposer and
    // refused in a block.
    let body = c.step(vec![], std::slice::from_ref(&ev), &[]);
    assert!(body.evidence.is_empty());
    assert!(matches!(
        body.rejected_evidence[..],
        [(_, EvidenceError::AlreadyPunished { height: 2, .. })]
    ));
    let (mut block, _) = c.propose(vec![], &[]);
    block.evidence = vec![ev];
    let e = c.commit(&block, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::InvalidEvidence {
                index: 0,
                error: EvidenceError::AlreadyPunished { .. }
            }
        ),
        "{e}"
    );
}

#[test]
fn invalid_evidence_is_refused_with_its_reason() {
    let c = Chain::new(4, 5);
    c.empty_blocks(3);
    let good = c.equivocation(0, 2);
    let mut same_block = good.clone();
    same_block.b = same_block.a.clone();
    let mut two_validators = good.clone();
    two_validators.b = c.equivocation(1, 2).b;
    let mut other_step = good.clone();
    other_step.b = c.vals[0].sign_vote(Vote {
        round: 1,
        ..good.b.vote.clone()
    });
    let mut forged = good.clone();
    forged.b.signature = good.a.signature;
    let mut other_chain = good.clone();
    other_chain.b = c.vals[0].sign_vote(Vote {
        chain_id: "other".into(),
        ..good.b.vote.clone()
    });
    let cases = [
        (same_block, "the same block"),
        (two_validators, "different validators"),
        (other_step, "differ in height, round or kind"),
        (forged, "signature of vote b"),
        (other_chain, "for chain \"other\""),
        (c.equivocation(4, 2), "not in the set of height 2"),
        (c.equivocation(0, 4), "only heights before the block"),
    ];
    for (ev, why) in cases {
        let (mut block, body) = c.propose(vec![], std::slice::from_ref(&ev));
        assert!(body.evidence.is_empty(), "{why}");
        block.evidence = vec![ev];
        let e = c.commit(&block, &[]).unwrap_err();
        assert!(
            matches!(e, BlockError::InvalidEvidence { .. }) && e.to_string().contains(why),
            "{why}: {e}"
        );
    }
    // Too old: more than evidence_max_age_blocks before the block.
    c.empty_blocks(MAX_AGE);
    let (_, body) = c.propose(vec![], &[good]);
    assert!(matches!(
        body.rejected_evidence[..],
        [(_, EvidenceError::Age { height: 2, .. })]
    ));
    assert_eq!(c.burned(), 0);
}

#[test]
fn headers_carry_the_stored_sets_and_a_wrong_hash_is_refused() {
    let c = Chain::new(4, 5);
    c.step(vec![c.tx(4, bond(&c, 4, 2_000))], &[], &[]);
    // The set of 3 has validator 4; header 2 carries it as next_validators_hash.
    let (block, _) = c.propose(vec![], &[]);
    assert_eq!(block.header.height, 2);
    assert_eq!(
        block.header.next_validators_hash,
        Some(validator_set_at(&c.store, 3).unwrap().hash())
    );
    assert_eq!(c.set_indices(3), [0, 1, 2, 3, 4]);
    let tip = c.store.tip().unwrap();
    let sets = block_sets(&c.store, 2).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &c.g.params,
        validators: &c.g.validators,
    };
    let mut wrong_next = block.clone();
    wrong_next.header.next_validators_hash = Some(sets.current.hash());
    assert_eq!(
        check_header_v2(CHAIN, &sets, &tip, &wrong_next),
        Err(HeaderError::NextValidatorsHash)
    );
    let e = execute_block(&c.store, ctx, &wrong_next, &Signatures::Verify).unwrap_err();
    assert!(matches!(e, BlockError::SetHash { height: 3, .. }), "{e}");
    let mut wrong_current = block.clone();
    wrong_current.header.validators_hash = sets.next.hash();
    assert_eq!(
        check_header_v2(CHAIN, &sets, &tip, &wrong_current),
        Err(HeaderError::ValidatorsHash)
    );
    let e = execute_block(&c.store, ctx, &wrong_current, &Signatures::Verify).unwrap_err();
    assert!(matches!(e, BlockError::SetHash { height: 2, .. }), "{e}");
    let mut v1 = block.clone();
    v1.header.version = PROTOCOL_1;
    v1.header.next_validators_hash = None;
    assert_eq!(
        check_header_v2(CHAIN, &sets, &tip, &v1),
        Err(HeaderError::Version {
            expected: 2,
            got: 1
        })
    );
    c.commit(&block, &[]).unwrap();
}

/// The scenario in the ledger: 4 genesis validators, 3 bond in, 2 unbond out; the
/// set at every height is what the rule says, two heights after the block that changed
/// the stake.
#[test]
fn validators_join_and_leave_and_the_set_follows_two_heights_later() {
    let c = Chain::new(4, 7);
    let stake = GENESIS_POWER * PER_POWER;
    c.step(
        vec![c.tx(4, bond(&c, 4, stake)), c.tx(5, bond(&c, 5, 2 * stake))],
        &[],
        &[],
    ); // block 1
    c.step(vec![c.tx(6, bond(&c, 6, stake / 2))], &[], &[]); // block 2
    c.step(
        vec![c.tx(0, unbond(&c, 0, stake)), c.tx(1, unbond(&c, 1, stake))],
        &[],
        &[],
    ); // block 3
    c.empty_blocks(2); // blocks 4, 5
    let expected: [(u64, &[usize]); 7] = [
        (1, &[0, 1, 2, 3]),
        (2, &[0, 1, 2, 3]),
        (3, &[0, 1, 2, 3, 4, 5]),
        (4, &[0, 1, 2, 3, 4, 5, 6]),
        (5, &[2, 3, 4, 5, 6]),
        (6, &[2, 3, 4, 5, 6]),
        (7, &[2, 3, 4, 5, 6]),
    ];
    for (h, set) in expected {
        assert_eq!(c.set_indices(h), set, "height {h}");
    }
    // Powers follow stake; the stored set is sorted by address.
    let set = validator_set_at(&c.store, 5).unwrap();
    let power = |i: usize| set.get(&c.vals[i].address()).unwrap().power;
    assert_eq!(
        (power(2), power(5), power(6)),
        (GENESIS_POWER, 2 * GENESIS_POWER, GENESIS_POWER / 2)
    );
    // The two that left are paid back at the end of 3 + unbonding_blocks.
    let before = c.balance(&c.ops[0].address());
    c.empty_blocks(3 + UNBONDING - c.height());
    assert_eq!(c.balance(&c.ops[0].address()), before + stake);
    // The new validators sign from the height they joined: a commit without them
    // would have too little power once they hold most of it.
    assert!(c.set_indices(c.height() + 1).contains(&5));
}

/// The scenario on one chain: 4 genesis validators, 3 bond in, 2 unbond out; a
/// newcomer misses `downtime_jail_after` commits, is jailed and returns after Unjail; a
/// validator equivocates, is slashed and jailed, and a second copy is refused. The set of
/// every height, the supply after every block.
#[test]
fn one_chain_with_joins_leaves_downtime_and_an_equivocation() {
    let c = Chain::new(4, 7);
    let supply = c.supply();
    let stake = GENESIS_POWER * PER_POWER;
    let check = |c: &Chain<MemStore>| assert_eq!(c.supply(), supply, "height {}", c.height());
    c.step(
        vec![c.tx(4, bond(&c, 4, stake)), c.tx(5, bond(&c, 5, 2 * stake))],
        &[],
        &[],
    ); // 1
    check(&c);
    c.step(vec![c.tx(6, bond(&c, 6, stake / 2))], &[], &[]); // 2
    c.step(
        vec![c.tx(0, unbond(&c, 0, stake)), c.tx(1, unbond(&c, 1, stake))],
        &[],
        &[],
    ); // 3
    check(&c);
    // Newcomer 6 signs none of the commits of blocks 4, 5, 6: block 7 jails it.
    for _ in 4..=6 {
        c.step(vec![], &[], &[6]);
        check(&c);
    }
    c.step(vec![], &[], &[]); // 7
    assert_eq!(c.record(6).jailed_until_height, 7 + JAIL);
    // Validator 4 equivocates at height 7; block 8 punishes it.
    let ev = c.equivocation(4, 7);
    let body = c.step(vec![], std::slice::from_ref(&ev), &[]); // 8
    assert_eq!(body.evidence.len(), 1);
    assert_eq!(c.bond(4, 4), stake - stake / 10);
    assert_eq!(c.burned(), stake / 10);
    assert_eq!(c.record(4).jailed_until_height, 8 + JAIL);
    check(&c);
    let body = c.step(vec![], std::slice::from_ref(&ev), &[]); // 9
    assert!(body.evidence.is_empty() && body.rejected_evidence.len() == 1);
    let (mut forced, _) = c.propose(vec![], &[]);
    forced.evidence = vec![ev];
    assert!(matches!(
        c.commit(&forced, &[]),
        Err(BlockError::InvalidEvidence { .. })
    ));
    c.step(vec![c.tx(6, unjail(&c, 6))], &[], &[]); // 10
    check(&c);
    c.empty_blocks(2); // 11, 12
    let expected: [&[usize]; 14] = [
        &[0, 1, 2, 3],       // 1: genesis
        &[0, 1, 2, 3],       // 2: genesis
        &[0, 1, 2, 3, 4, 5], // 3: the bonds of block 1
        &[0, 1, 2, 3, 4, 5, 6],
        &[2, 3, 4, 5, 6], // 5: the unbonds of block 3
        &[2, 3, 4, 5, 6],
        &[2, 3, 4, 5, 6],
        &[2, 3, 4, 5, 6],
        &[2, 3, 4, 5], // 9: 6 jailed at the end of 7
        &[2, 3, 5],    // 10: 4 jailed at the end of 8
        &[2, 3, 5],
        &[2, 3, 5, 6], // 12: 6 unjailed in block 10
        &[2, 3, 5, 6],
        &[2, 3, 5, 6],
    ];
    for (i, set) in expected.iter().enumerate() {
        let h = i as u64 + 1;
        assert_eq!(c.set_indices(h), *set, "height {h}");
    }
    // The two that left are paid at the end of 3 + unbonding_blocks.
    assert_eq!(
        c.balance(&c.ops[0].address()),
        FUNDS - 1 + stake,
        "unbonded stake back"
    );
}

#[test]
fn the_set_is_capped_at_max_validators_and_never_emptied() {
    let g = genesis(3, 5, 4);
    let c = Chain::over(g.clone(), MemStore::new(&g).unwrap(), 5);
    c.step(
        vec![c.tx(3, bond(&c, 3, 5_000)), c.tx(4, bond(&c, 4, 500))],
        &[],
        &[],
    );
    // Five candidates, four places: the smallest (validator 4) waits outside.
    assert_eq!(c.set_indices(3), [0, 1, 2, 3]);
    // Everyone unbonds: an empty set would halt the chain for good, so the set stays.
    let txs = (0..5).map(|i| c.tx(i, unbond(&c, i, u64::MAX))).collect();
    c.step(txs, &[], &[]);
    assert_eq!(c.record(4).stake, 0);
    assert_eq!(c.set_indices(4), [0, 1, 2, 3]);
    // The first stake bonded again makes the set.
    c.step(vec![c.tx(4, bond(&c, 4, 100))], &[], &[]);
    assert_eq!(c.set_indices(5), [4]);
}

#[derive(Clone, Debug)]
enum Op {
    Transfer { from: usize, to: usize, amount: u64 },
    Bond { op: usize, val: usize, amount: u64 },
    Unbond { op: usize, val: usize, amount: u64 },
    Unjail { op: usize, val: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..6, 0usize..6, 0u64..5_000).prop_map(|(from, to, amount)| Op::Transfer {
            from,
            to,
            amount
        }),
        (0usize..6, 0usize..6, 0u64..3_000).prop_map(|(op, val, amount)| Op::Bond {
            op,
            val,
            amount
        }),
        (0usize..6, 0usize..6, 0u64..3_000).prop_map(|(op, val, amount)| Op::Unbond {
            op,
            val,
            amount
        }),
        (0usize..6, 0usize..6).prop_map(|(op, val)| Op::Unjail { op, val }),
    ]
}

/// One block of the random run: txs, maybe evidence against a validator at a recent
/// height, and validators absent from its commit.
#[derive(Clone, Debug)]
struct Step {
    ops: Vec<Op>,
    evidence: Option<(usize, u64)>,
    absent: Vec<usize>,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(arb_op(), 0..5),
        prop::option::of((0usize..6, 1u64..4)),
        prop::collection::vec(0usize..6, 0..2),
    )
        .prop_map(|(ops, evidence, absent)| Step {
            ops,
            evidence,
            absent,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// balances + bonds + unbonding entries + burned = the genesis supply, after every
    /// block of a random mix of transfers, bonds, unbonds, unjails, evidence and missed
    /// commits; and every stored set follows the rule (sorted, unjailed, capped).
    #[test]
    fn supply_is_conserved_by_every_mix(steps in prop::collection::vec(arb_step(), 1..14)) {
        let c = Chain::new(4, 6);
        let supply = c.supply();
        for step in steps {
            let mut pending = [0u64; 6];
            let txs: Vec<SignedTx> = step.ops.iter().map(|op| {
                let (who, payload) = match *op {
                    Op::Transfer { from, to, amount } => (from, Payload::Transfer {
                        to: c.ops[to].address(), amount }),
                    Op::Bond { op, val, amount } => (op, bond(&c, val, amount)),
                    Op::Unbond { op, val, amount } => (op, unbond(&c, val, amount)),
                    Op::Unjail { op, val } => (op, unjail(&c, val)),
                };
                pending[who] += 1;
                c.tx_pending(who, payload, pending[who] - 1)
            }).collect();
            let h = c.height() + 1;
            let evidence: Vec<Equivocation> = step.evidence
                .filter(|(_, back)| *back < h)
                .map(|(val, back)| c.equivocation(val, h - back))
                .into_iter()
                .collect();
            // Absent validators only while the rest keep more than 2/3 of the power.
            let set = validator_set_at(&c.store, h).unwrap();
            let absent_power: u64 = step.absent.iter()
                .collect::<BTreeSet<_>>()
                .iter()
                .map(|i| set.power_of(&c.vals[**i].address()))
                .sum();
            let absent = if set.is_quorum(set.total_power() - absent_power) {
                step.absent.clone()
            } else {
                Vec::new()
            };
            c.step(txs, &evidence, &absent);
            prop_assert_eq!(c.supply(), supply);
            let stored = validator_set_at(&c.store, h + 2).unwrap();
            prop_assert!(stored.len() <= 100);
            prop_assert!(stored.validators().windows(2).all(|w| w[0].address < w[1].address));
        }
    }
}
