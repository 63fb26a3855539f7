//! Issue 21: signals in headers, activation recorded in the state, the schedule, and the
//! switch of a protocol-1 chain to protocol 2.

use std::sync::LazyLock;

use ledger::block::{
    assemble, assemble_v2, block_sets, check_header, check_header_v2, sign_commit, BlockTemplate,
    HeaderError,
};
use ledger::crypto::Keypair;
use ledger::exec::{build_body_at, execute_block, BlockEnv, BlockError, Signatures};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::staking;
use ledger::state::{AccountReader, StateReader};
use ledger::store::memory::MemStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::*;
use ledger::upgrade::{protocol_key_bytes, readiness_at, ProtocolSchedule};

use crate::props::{ctx, test_keys, CHAIN};

const WINDOW: u64 = 10;
const LEAD: u64 = 5;

/// A key that bonds after the switch.
static NEW_VALIDATOR: LazyLock<Keypair> = LazyLock::new(|| {
    Keypair::from_secret_bytes(&ledger::sha256(b"upgrade-new-validator")).unwrap()
});

/// A protocol-1 genesis with keys 0..4 as validators of power 1, key 4 funded, a window of
/// 10 blocks and a lead of 5.
fn genesis() -> Genesis {
    let keys = test_keys();
    let file = GenesisFile {
        chain_id: CHAIN.into(),
        genesis_time_ms: 1,
        params: Params {
            upgrade_window: WINDOW,
            upgrade_lead: LEAD,
            ..Params::default()
        },
        validators: (0..4)
            .map(|i| GenesisValidator {
                name: format!("v{i}"),
                pubkey: hex::encode(keys[i].public_key()),
                power: 1,
                operator: None,
            })
            .collect(),
        accounts: vec![GenesisAccount {
            address: hex::encode(keys[4].address()),
            balance: 1_000_000,
        }],
    };
    let bytes = serde_json::to_vec(&file).unwrap();
    Genesis::from_bytes("upgrade-genesis.json", &bytes).unwrap()
}

fn schedule(store: &MemStore, g: &Genesis) -> ProtocolSchedule {
    ProtocolSchedule::read(store, &g.params).unwrap()
}

/// Builds the next block as its proposer would, at the protocol of its height, with
/// `txs`, signalling protocol 2 if the proposer is one of `signallers` (indexes of the
/// test keys).
fn build_next(
    store: &MemStore,
    g: &Genesis,
    signallers: &[usize],
    txs: Vec<SignedTx>,
) -> Result<Block, String> {
    let tip = store.tip().unwrap();
    let height = tip.height + 1;
    let v2 = schedule(store, g).at(height) >= PROTOCOL_2;
    let sets = v2.then(|| block_sets(store, height).unwrap());
    let set = sets.as_ref().map_or(&g.validators, |s| &s.current);
    let proposer = set.proposer(height, 0).address;
    let signals = signallers
        .iter()
        .any(|i| test_keys()[*i].address() == proposer);
    let last_commit = store.commit(tip.height).unwrap();
    let env = BlockEnv {
        height,
        proposer,
        last_commit: last_commit.as_ref(),
        evidence: &[],
        signal: signals.then_some(PROTOCOL_2),
    };
    let body =
        build_body_at(store, ctx(g), env, txs, &Signatures::Verify).map_err(|e| e.to_string())?;
    assert!(body.rejected.is_empty(), "{:?}", body.rejected);
    let template = BlockTemplate {
        chain_id: CHAIN.into(),
        height,
        round: 0,
        time_ms: tip.time_ms + 1,
        prev_hash: tip.block_hash,
        validators_hash: set.hash(),
        proposer,
        last_commit,
    };
    Ok(match &sets {
        Some(sets) => assemble_v2(template, sets.next.hash(), &body),
        None => assemble(template, &body),
    })
}

/// Checks and executes `block` as a follower would and commits it, signed by the
/// validators of its height.
fn apply(store: &MemStore, g: &Genesis, block: &Block) -> Result<(), BlockError> {
    let tip = store.tip().unwrap();
    let height = block.header.height;
    let set = if block.header.protocol() >= PROTOCOL_2 {
        let sets = block_sets(store, height).unwrap();
        check_header_v2(CHAIN, &sets, &tip, block).unwrap();
        sets.current
    } else {
        check_header(CHAIN, &g.validators, &tip, block).unwrap();
        g.validators.clone()
    };
    let outcome = execute_block(store, ctx(g), block, &Signatures::Verify)?;
    let keys: Vec<&Keypair> = test_keys()
        .iter()
        .chain(std::iter::once(&*NEW_VALIDATOR))
        .filter(|k| set.get(&k.address()).is_some())
        .collect();
    let commit = sign_commit(CHAIN, height, 0, block.hash(), &keys);
    set.verify_commit(CHAIN, height, &block.hash(), &commit)
        .unwrap();
    let ids: Vec<_> = outcome.receipts.iter().map(|r| r.id).collect();
    store
        .commit_block(block, &commit, &outcome.update, &ids)
        .unwrap();
    Ok(())
}

/// Grows a chain of empty blocks to `height` with `signallers` signalling; returns the
/// state root of each height (index 0: genesis).
fn grow(store: &MemStore, g: &Genesis, signallers: &[usize], height: u64) -> Vec<ledger::Hash> {
    let mut roots = vec![store.tip().unwrap().state_root];
    while store.tip().unwrap().height < height {
        let block = build_next(store, g, signallers, Vec::new()).unwrap();
        apply(store, g, &block).unwrap();
        roots.push(block.header.state_root);
    }
    roots
}

#[test]
fn three_of_four_signalling_activate_once_and_the_root_is_unchanged_until_then() {
    let g = genesis();
    let (signalling, silent) = (MemStore::new(&g).unwrap(), MemStore::new(&g).unwrap());
    let roots = grow(&signalling, &g, &[0, 1, 2], 30);
    let silent_roots = grow(&silent, &g, &[], 30);

    // The activation is recorded once, by the first block whose end sees 3 of 4 ready.
    let activation = schedule(&signalling, &g).activation_of(PROTOCOL_2).unwrap();
    let recorded_at = activation - LEAD;
    assert!(
        recorded_at >= WINDOW,
        "a window shorter than W never activates"
    );
    let block = signalling.block(recorded_at).unwrap().unwrap();
    assert_eq!(block.header.signal(), Some(PROTOCOL_2));
    let before = readiness_at(&signalling, &g.params, &g.validators, 1, recorded_at - 1).unwrap();
    assert!(!before.activates(), "the block before saw less: {before:?}");
    let at = readiness_at(&signalling, &g.params, &g.validators, 1, recorded_at).unwrap();
    assert!(at.activates() && at.ready_power == 3, "{at:?}");

    // Same roots as a chain that never signals up to the block before the record; the
    // record changes the root at its block, and nothing changes it again through A - 1
    // (so a binary without the switch agrees on every block before A and stops at A); the
    // switch at the start of A creates the staking state.
    let (r, a) = (recorded_at as usize, activation as usize);
    assert_eq!(roots[..r], silent_roots[..r]);
    assert_ne!(roots[r], silent_roots[r]);
    assert!(roots[r..a].iter().all(|x| *x == roots[r]), "recorded once");
    assert_ne!(roots[a], roots[a - 1], "the switch");
    assert_eq!(
        signalling.entry(&protocol_key_bytes(PROTOCOL_2)).unwrap(),
        Some(borsh::to_vec(&activation).unwrap())
    );
    let s = schedule(&signalling, &g);
    assert_eq!(
        (s.at(activation - 1), s.at(activation)),
        (PROTOCOL_1, PROTOCOL_2)
    );

    // The chain ran on through the switch: protocol 1 up to A - 1, protocol 2 from A (a
    // protocol-2 block signals nothing: this binary runs no protocol 3).
    assert_eq!(signalling.tip().unwrap().height, 30);
    let header = |h: u64| signalling.block(h).unwrap().unwrap().header;
    assert_eq!(header(activation - 1).protocol(), PROTOCOL_1);
    assert_eq!(header(activation).version, PROTOCOL_2);
    assert_eq!(header(30).version, PROTOCOL_2);
}

/// Issue 21, item 3: the end of A - 1 stores the protocol-1 set as the set of A - 1, A
/// and A + 1 (so the headers of A and A + 1 carry its hash) and changes no state; the
/// start of A bonds every protocol-1 validator from its own address (power x
/// stake_per_power, raised to min_validator_stake) and mints the stake; from A the chain
/// runs protocol 2: a Bond adds a validator two heights later, and balances + bonds +
/// unbonding + burned = genesis supply + minted.
#[test]
fn the_switch_bonds_the_protocol_1_set_keeps_it_two_heights_and_runs_protocol_2() {
    let g = genesis();
    let store = MemStore::new(&g).unwrap();
    let activation = WINDOW + LEAD;
    grow(&store, &g, &[0, 1, 2, 3], activation - 2);
    assert!(staking::validator_records(&store).unwrap().is_empty());
    assert_eq!(staking::minted(&store).unwrap(), 0);
    grow(&store, &g, &[0, 1, 2, 3], activation - 1);
    assert!(staking::validator_records(&store).unwrap().is_empty());
    assert_eq!(staking::minted(&store).unwrap(), 0);
    for h in [activation - 1, activation, activation + 1] {
        assert_eq!(
            staking::validator_set_at(&store, h).unwrap(),
            g.validators,
            "set of {h}"
        );
    }

    // Block A is protocol 2, announces the same set for A + 1, and takes a Bond.
    let funded = &test_keys()[4];
    let bond = funded.sign_tx(Tx {
        chain_id: CHAIN.into(),
        from: funded.public_key(),
        nonce: 0,
        fee: 1,
        payload: Payload::Bond {
            validator: NEW_VALIDATOR.public_key(),
            amount: 20_000,
        },
    });
    let block = build_next(&store, &g, &[], vec![bond]).unwrap();
    assert_eq!(block.header.version, PROTOCOL_2);
    assert_eq!(block.header.next_validators_hash, Some(g.validators.hash()));
    apply(&store, &g, &block).unwrap();
    let per_validator = Params::default().staking().min_validator_stake; // 1 x 1000, raised
    for v in g.validators.validators() {
        let record = staking::validator_record(&store, &v.pubkey)
            .unwrap()
            .unwrap();
        assert_eq!(record.stake, per_validator);
        let bonds = staking::bonds_of(&store, &v.address).unwrap();
        assert_eq!(
            bonds,
            vec![(v.pubkey, per_validator)],
            "operator = own address"
        );
    }
    assert_eq!(staking::minted(&store).unwrap(), 4 * per_validator);
    grow(&store, &g, &[], activation + 4);
    let set = staking::validator_set_at(&store, activation + 2).unwrap();
    assert_eq!(set.len(), 5, "the bonded key joined at A + 2");
    assert_eq!(set.power_of(&NEW_VALIDATOR.address()), 20);
    assert_eq!(set.power_of(&g.validators.validators()[0].address), 10);

    // Supply: balances + bonds + unbonding + burned = genesis supply + minted.
    let balances: u64 = test_keys()
        .iter()
        .map(|k| {
            store
                .account(&k.address())
                .unwrap()
                .unwrap_or_default()
                .balance
        })
        .sum();
    let bonds: u64 = staking::validator_records(&store)
        .unwrap()
        .iter()
        .map(|(_, r)| r.stake)
        .sum();
    let supply: u64 = g.accounts.iter().map(|(_, b)| b).sum();
    assert_eq!(
        balances + bonds + staking::burned(&store).unwrap(),
        supply + staking::minted(&store).unwrap()
    );
}

#[test]
fn two_of_four_never_activate_and_nothing_changes() {
    let g = genesis();
    let (signalling, silent) = (MemStore::new(&g).unwrap(), MemStore::new(&g).unwrap());
    let roots = grow(&signalling, &g, &[0, 1], 40);
    assert_eq!(roots, grow(&silent, &g, &[], 40));
    assert_eq!(schedule(&signalling, &g).activation_of(PROTOCOL_2), None);
    let r = readiness_at(&signalling, &g.params, &g.validators, 1, 40).unwrap();
    assert_eq!((r.ready_power, r.total_power, r.blocks), (2, 4, WINDOW));
}

#[test]
fn a_syncing_node_replays_the_activation_identically() {
    let g = genesis();
    let source = MemStore::new(&g).unwrap();
    grow(&source, &g, &[0, 1, 2, 3], 20);
    let tip = source.tip().unwrap().height;
    let replica = MemStore::new(&g).unwrap();
    for h in 1..=tip {
        let block = source.block(h).unwrap().unwrap();
        apply(&replica, &g, &block).unwrap();
    }
    assert_eq!(replica.tip().unwrap(), source.tip().unwrap());
    assert_eq!(schedule(&replica, &g), schedule(&source, &g));
    // All four ready: recorded as soon as the window is full (height W).
    assert_eq!(
        schedule(&source, &g).activation_of(PROTOCOL_2),
        Some(WINDOW + LEAD)
    );
}

#[test]
fn a_signal_other_than_the_next_protocol_is_refused() {
    let g = genesis();
    let store = MemStore::new(&g).unwrap();
    let mut block = build_next(&store, &g, &[], Vec::new()).unwrap();
    block.header.version = header_version(PROTOCOL_1, Some(3));
    let tip = store.tip().unwrap();
    assert_eq!(
        check_header(CHAIN, &g.validators, &tip, &block),
        Err(HeaderError::Signal {
            protocol: 1,
            got: 3
        })
    );
    let err = execute_block(&store, ctx(&g), &block, &Signatures::Verify).unwrap_err();
    assert!(
        matches!(
            err,
            BlockError::Signal {
                protocol: 1,
                got: 3
            }
        ),
        "{err}"
    );
    // A signalling protocol-1 header is still a protocol-1 header: no next_validators_hash.
    block.header.version = header_version(PROTOCOL_1, Some(2));
    assert_eq!(block.header.protocol(), 1);
    assert!(block.is_well_formed());
    let bytes = borsh::to_vec(&block).unwrap();
    assert_eq!(borsh::from_slice::<Block>(&bytes).unwrap(), block);
    assert_eq!(block.header.version, 0x0002_0001);
}

#[test]
fn the_upgrade_params_are_not_written_when_default() {
    let json = serde_json::to_value(Params::default()).unwrap();
    assert!(json.get("upgrade_window").is_none() && json.get("upgrade_lead").is_none());
    let json = serde_json::to_value(genesis().params).unwrap();
    assert_eq!(
        (
            json["upgrade_window"].as_u64(),
            json["upgrade_lead"].as_u64()
        ),
        (Some(10), Some(5))
    );
}
