//! RocksDB and in-memory stores: commit, reopen, refuse foreign databases.

use ledger::block::{assemble, check_header, BlockTemplate};
use ledger::crypto::Keypair;
use ledger::exec::{build_body, execute_block, ExecContext, Signatures};
use ledger::store::rocks::RocksStore;
use ledger::store::{ChainReader, ChainWriter, StoreError};
use ledger::types::*;

use crate::props::{ctx, genesis_with, test_keys, CHAIN};

/// Builds and commits `n` blocks of transfers among the test keys, each with a commit
/// signed by the single validator (key 0); checks each block like a follower would.
fn grow_chain<S: ChainWriter>(store: &S, genesis: &ledger::genesis::Genesis, n: u64) {
    let keys = test_keys();
    let ctx = ctx(genesis);
    let validator = &keys[0];
    let set = genesis.validator_set();
    for _ in 0..n {
        let tip = store.tip().unwrap();
        let height = tip.height + 1;
        let last_commit = if tip.height == 0 {
            None
        } else {
            store.commit(tip.height).unwrap()
        };
        let txs: Vec<SignedTx> = (0..3)
            .map(|i| {
                let from: &Keypair = &keys[i];
                let nonce = store
                    .account(&from.address())
                    .unwrap()
                    .unwrap_or_default()
                    .nonce;
                from.sign_tx(Tx {
                    chain_id: CHAIN.into(),
                    from: from.public_key(),
                    nonce,
                    fee: 2,
                    payload: Payload::Transfer {
                        to: keys[(i + 1) % 5].address(),
                        amount: 10 + height,
                    },
                })
            })
            .collect();
        let body = build_body(store, ctx, validator.address(), txs, &Signatures::Verify).unwrap();
        assert!(body.rejected.is_empty(), "{:?}", body.rejected);
        let block = assemble(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                time_ms: tip.time_ms + 1,
                prev_hash: tip.block_hash,
                validators_hash: set.hash(),
                proposer: set.proposer(height, 0).address,
                last_commit,
            },
            &body,
        );
        check_header(CHAIN, set, &tip, &block).unwrap();
        let outcome = execute_block(store, ctx, &block, &Signatures::Verify).unwrap();
        let hash = block.hash();
        let commit = ledger::block::sign_commit(CHAIN, height, 0, hash, &[validator]);
        set.verify_commit(CHAIN, height, &hash, &commit).unwrap();
        let ids: Vec<_> = outcome.receipts.iter().map(|r| r.id).collect();
        store
            .commit_block(&block, &commit, &outcome.update, &ids)
            .unwrap();
    }
}

fn balances<S: ChainReader>(store: &S) -> Vec<Option<Account>> {
    test_keys()
        .iter()
        .map(|k| store.account(&k.address()).unwrap())
        .collect()
}

#[test]
fn rocksdb_commit_100_blocks_close_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis_with(&[1_000_000, 1_000_000, 1_000_000]);
    let (tip, bals, root) = {
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        grow_chain(&store, &genesis, 100);
        let tip = store.tip().unwrap();
        assert_eq!(tip.height, 100);
        (
            tip,
            balances(&store),
            ledger::state::StateReader::tree_version(&store).unwrap(),
        )
    };
    let store = RocksStore::open(dir.path(), &genesis).unwrap();
    assert_eq!(store.tip().unwrap(), tip);
    assert_eq!(balances(&store), bals);
    assert_eq!(
        ledger::state::StateReader::tree_version(&store).unwrap(),
        root
    );
    assert_eq!(root.unwrap().1, tip.state_root);
    // Blocks, commits and indexes are all there.
    let b50 = store.block(50).unwrap().unwrap();
    assert_eq!(store.height_of(&b50.hash()).unwrap(), Some(50));
    assert_eq!(store.commit(50).unwrap().unwrap().block_hash, b50.hash());
    let loc = store.tx_location(&b50.txs[2].id()).unwrap().unwrap();
    assert_eq!((loc.height, loc.index), (50, 2));
    // The chain keeps growing after a reopen.
    grow_chain(&store, &genesis, 1);
    assert_eq!(store.tip().unwrap().height, 101);
}

#[test]
fn memory_and_rocksdb_agree() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis_with(&[500_000, 500_000, 500_000]);
    let rocks = RocksStore::open(dir.path(), &genesis).unwrap();
    let mem = ledger::store::memory::MemStore::new(&genesis).unwrap();
    grow_chain(&rocks, &genesis, 10);
    grow_chain(&mem, &genesis, 10);
    assert_eq!(rocks.tip().unwrap(), mem.tip().unwrap());
    assert_eq!(balances(&rocks), balances(&mem));
}

#[test]
fn rocksdb_refuses_other_genesis_and_unknown_schema() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis_with(&[1, 2]);
    drop(RocksStore::open(dir.path(), &genesis).unwrap());
    let other = genesis_with(&[1, 3]);
    let err = RocksStore::open(dir.path(), &other)
        .err()
        .expect("must refuse");
    assert!(matches!(err, StoreError::GenesisMismatch { .. }));
    assert!(err.to_string().contains("different genesis"), "{err}");

    // Write a schema version from the future straight into the meta column family.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"schema_version",
            99u32.to_le_bytes(),
        )
        .unwrap();
    }
    let err = RocksStore::open(dir.path(), &genesis)
        .err()
        .expect("must refuse");
    assert_eq!(
        err,
        StoreError::UnknownSchema {
            found: 99,
            supported: ledger::store::SCHEMA_VERSION
        }
    );
    assert!(
        err.to_string()
            .contains("newer than this tallyd understands"),
        "{err}"
    );
}

#[test]
fn commit_must_extend_tip() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis_with(&[1_000_000, 1_000_000, 1_000_000]);
    let store = RocksStore::open(dir.path(), &genesis).unwrap();
    grow_chain(&store, &genesis, 2);
    let b2 = store.block(2).unwrap().unwrap();
    let c2 = store.commit(2).unwrap().unwrap();
    let err = store
        .commit_block(&b2, &c2, &Default::default(), &[])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotNext { height: 2, tip: 2 }));
}

/// A block with one forged signature is invalid, reported at that tx's index, whether its
/// signatures are verified in the parallel pass or were "known good" beforehand for the
/// other txs.
#[test]
fn execute_block_rejects_a_forged_signature_at_its_index() {
    use ledger::exec::{build_body, execute_block, BlockError};
    let genesis = genesis_with(&[1_000_000, 1_000_000, 1_000_000]);
    let store = ledger::store::memory::MemStore::new(&genesis).unwrap();
    let keys = test_keys();
    let ctx = ctx(&genesis);
    let txs: Vec<SignedTx> = (0..3)
        .map(|i| {
            keys[i].sign_tx(Tx {
                chain_id: CHAIN.into(),
                from: keys[i].public_key(),
                nonce: 0,
                fee: 1,
                payload: Payload::Transfer {
                    to: [5; 20],
                    amount: 7,
                },
            })
        })
        .collect();
    let body = build_body(&store, ctx, keys[0].address(), txs, &Signatures::Verify).unwrap();
    let tip = store.tip().unwrap();
    let set = genesis.validator_set();
    let mut block = assemble(
        BlockTemplate {
            chain_id: CHAIN.into(),
            height: 1,
            round: 0,
            time_ms: 2,
            prev_hash: tip.block_hash,
            validators_hash: set.hash(),
            proposer: keys[0].address(),
            last_commit: None,
        },
        &body,
    );
    assert!(execute_block(&store, ctx, &block, &Signatures::Verify).is_ok());
    block.txs[1].signature[3] ^= 0x40;
    let other_ids: Vec<_> = [0, 2].iter().map(|i| block.txs[*i].id()).collect();
    let known = move |id: &ledger::Hash| other_ids.contains(id);
    for sigs in [Signatures::Verify, Signatures::Cached(&known)] {
        match execute_block(&store, ctx, &block, &sigs) {
            Err(BlockError::InvalidTx {
                index: 1, error, ..
            }) => {
                assert!(matches!(
                    error,
                    ledger::check::TxError::BadSignature | ledger::check::TxError::HighS
                ))
            }
            other => panic!("expected tx 1 to fail its signature, got {other:?}"),
        }
    }
}

/// Signature checks run on rayon's pool ahead of the applying thread (`exec::ahead`):
/// the outcome is the sequential one. The first failing tx in block order is reported with
/// its own reason (a forged signature before a bad nonce, or a bad nonce before a forged
/// signature), each signature not known good is counted once, and a caller that is the
/// only thread of its pool (nothing runs ahead) gets the same answers instead of waiting
/// for a check nobody takes.
#[test]
fn signatures_checked_ahead_of_execution_give_the_sequential_outcome() {
    use ledger::check::TxError;
    use ledger::exec::{execute_txs, BlockError};
    let genesis = genesis_with(&[1_000_000, 1_000_000]);
    let store = ledger::store::memory::MemStore::new(&genesis).unwrap();
    let keys = test_keys();
    let ctx = ctx(&genesis);
    let sign = |nonce: u64| {
        keys[1].sign_tx(Tx {
            chain_id: CHAIN.into(),
            from: keys[1].public_key(),
            nonce,
            fee: 1,
            payload: Payload::Transfer {
                to: [5; 20],
                amount: 7,
            },
        })
    };
    let valid: Vec<SignedTx> = (0..48).map(sign).collect();
    let forged = |txs: &mut Vec<SignedTx>, i: usize| txs[i].signature[3] ^= 0x40;
    let first_failure = |txs: &[SignedTx], sigs: &Signatures| match execute_txs(
        &store,
        ctx,
        keys[0].address(),
        txs,
        sigs,
    ) {
        Ok(outcome) => Ok(outcome.signatures_verified),
        Err(BlockError::InvalidTx { index, error, .. }) => Err((index, error)),
        Err(other) => panic!("unexpected {other:?}"),
    };
    let half: Vec<_> = valid.iter().step_by(2).map(SignedTx::id).collect();
    let known_half = move |id: &ledger::Hash| half.contains(id);
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for in_pool_of_one in [false, true] {
        let run = |txs: &[SignedTx], sigs: &Signatures| {
            if in_pool_of_one {
                one_thread.install(|| first_failure(txs, sigs))
            } else {
                first_failure(txs, sigs)
            }
        };
        assert_eq!(run(&valid, &Signatures::Verify), Ok(48));
        assert_eq!(run(&valid, &Signatures::Cached(&known_half)), Ok(24));

        let mut bad_sig = valid.clone();
        forged(&mut bad_sig, 30);
        let (index, error) = run(&bad_sig, &Signatures::Verify).unwrap_err();
        assert_eq!(index, 30, "in a pool of one: {in_pool_of_one}");
        assert!(
            matches!(error, TxError::BadSignature | TxError::HighS),
            "{error}"
        );

        // A bad nonce at 20 comes first: 20 is reported, as its nonce.
        let mut nonce_first = bad_sig.clone();
        nonce_first[20] = sign(99);
        let (index, error) = run(&nonce_first, &Signatures::Verify).unwrap_err();
        assert_eq!(index, 20);
        assert!(matches!(error, TxError::NonceTooHigh { .. }), "{error}");

        // A forged signature at 10 comes before the bad nonce.
        let mut sig_first = nonce_first.clone();
        forged(&mut sig_first, 10);
        let (index, error) = run(&sig_first, &Signatures::Verify).unwrap_err();
        assert_eq!(index, 10);
        assert!(
            matches!(error, TxError::BadSignature | TxError::HighS),
            "{error}"
        );
    }
}

/// Protocol 2 over RocksDB: entries, prefix scans and stored sets give the same chain as
/// the memory store, and survive a reopen.
#[test]
fn protocol_2_state_and_sets_persist_in_rocksdb_like_in_memory() {
    use crate::staking::{genesis, Chain};
    use ledger::staking::{validator_set_at, BOND_KEY_TAG};
    use ledger::state::StateReader;

    let g = genesis(4, 6, 100);
    let dir = tempfile::tempdir().unwrap();
    let mem = Chain::over(
        g.clone(),
        ledger::store::memory::MemStore::new(&g).unwrap(),
        6,
    );
    {
        let rocks = Chain::over(g.clone(), RocksStore::open(dir.path(), &g).unwrap(), 6);
        for chain in [&mem as &dyn Steps, &rocks as &dyn Steps] {
            chain.script();
        }
        assert_eq!(rocks.store.tip().unwrap(), mem.store.tip().unwrap());
    }
    let rocks = Chain::over(g.clone(), RocksStore::open(dir.path(), &g).unwrap(), 6);
    assert_eq!(rocks.store.tip().unwrap(), mem.store.tip().unwrap());
    for h in 1..=rocks.height() + 2 {
        assert_eq!(
            validator_set_at(&rocks.store, h).unwrap().hash(),
            validator_set_at(&mem.store, h).unwrap().hash(),
            "height {h}"
        );
    }
    assert_eq!(
        rocks.store.entries_with_prefix(BOND_KEY_TAG).unwrap(),
        mem.store.entries_with_prefix(BOND_KEY_TAG).unwrap()
    );
    assert_eq!(rocks.burned(), mem.burned());
    assert!(rocks.burned() > 0);
    assert_eq!(rocks.set_indices(rocks.height() + 2), [0, 2, 3, 4]);
    let (read, problems) = rocks.store.check_records(10).unwrap();
    assert!(problems.is_empty() && read > 0, "{problems:?}");
    // Nothing below the first stored set.
    assert!(validator_set_at(&rocks.store, 0).is_err());
}

/// The same blocks on any store.
trait Steps {
    fn script(&self);
}

impl<S: ChainWriter> Steps for crate::staking::Chain<S> {
    fn script(&self) {
        let bond = |val: usize, amount| Payload::Bond {
            validator: self.vals[val].public_key(),
            amount,
        };
        self.step(vec![self.tx(4, bond(4, 1_500))], &[], &[]);
        self.step(
            vec![self.tx(
                1,
                Payload::Unbond {
                    validator: self.vals[1].public_key(),
                    amount: 300,
                },
            )],
            &[],
            &[],
        );
        self.step(vec![], &[self.equivocation(1, 2)], &[]);
        self.empty_blocks(2);
    }
}

/// A state rebuilt by replaying the stored blocks (the node's repair: `reset_state`, then
/// `replay_state` per block) has the same root, entries and validator sets on protocol 2.
#[test]
fn protocol_2_state_rebuilt_by_replay_matches() {
    use crate::staking::{genesis, Chain};
    use ledger::staking::{validator_set_at, VALIDATOR_KEY_TAG};
    use ledger::state::StateReader;

    let g = genesis(4, 6, 100);
    let dir = tempfile::tempdir().unwrap();
    let c = Chain::over(g.clone(), RocksStore::open(dir.path(), &g).unwrap(), 6);
    c.script();
    let tip = c.store.tip().unwrap();
    let records = c.store.entries_with_prefix(VALIDATOR_KEY_TAG).unwrap();
    let sets: Vec<ledger::Hash> = (1..=tip.height + 2)
        .map(|h| validator_set_at(&c.store, h).unwrap().hash())
        .collect();

    c.store.reset_state(&g).unwrap();
    assert_ne!(c.store.tree_version().unwrap().unwrap().1, tip.state_root);
    let ctx = ExecContext {
        chain_id: crate::staking::CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    for h in 1..=tip.height {
        let block = c.store.block(h).unwrap().unwrap();
        let outcome = execute_block(&c.store, ctx, &block, &Signatures::Verify).unwrap();
        c.store
            .replay_state(&outcome.update, h == tip.height)
            .unwrap();
    }
    assert_eq!(c.store.tree_version().unwrap().unwrap().1, tip.state_root);
    assert_eq!(
        c.store.entries_with_prefix(VALIDATOR_KEY_TAG).unwrap(),
        records
    );
    let replayed: Vec<ledger::Hash> = (1..=tip.height + 2)
        .map(|h| validator_set_at(&c.store, h).unwrap().hash())
        .collect();
    assert_eq!(replayed, sets);
}
