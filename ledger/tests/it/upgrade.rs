//! Issue 21: signals in headers, activation recorded in the state, the schedule.

use ledger::block::{assemble, check_header, sign_commit, BlockTemplate, HeaderError};
use ledger::exec::{build_body_at, execute_block, BlockEnv, BlockError, ExecContext, Signatures};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::state::StateReader;
use ledger::store::memory::MemStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::*;
use ledger::upgrade::{protocol_key_bytes, readiness_at, ProtocolSchedule};

use crate::props::{test_keys, CHAIN};

const WINDOW: u64 = 10;
const LEAD: u64 = 5;

/// A protocol-1 genesis with keys 0..4 as validators of power 1 and a window of 10 blocks.
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

fn ctx(g: &Genesis) -> ExecContext<'_> {
    ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    }
}

/// Builds the next (empty) block as its proposer would, signalling protocol 2 if the
/// proposer is one of `signallers` (indexes of the test keys).
fn build_next(store: &MemStore, g: &Genesis, signallers: &[usize]) -> Result<Block, String> {
    let tip = store.tip().unwrap();
    let height = tip.height + 1;
    let proposer = g.validators.proposer(height, 0).address;
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
    let body = build_body_at(store, ctx(g), env, Vec::new(), &Signatures::Verify)
        .map_err(|e| e.to_string())?;
    Ok(assemble(
        BlockTemplate {
            chain_id: CHAIN.into(),
            height,
            round: 0,
            time_ms: tip.time_ms + 1,
            prev_hash: tip.block_hash,
            validators_hash: g.validators.hash(),
            proposer,
            last_commit,
        },
        &body,
    ))
}

/// Checks and executes `block` as a follower would and commits it.
fn apply(store: &MemStore, g: &Genesis, block: &Block) -> Result<(), BlockError> {
    let tip = store.tip().unwrap();
    check_header(CHAIN, &g.validators, &tip, block).unwrap();
    let outcome = execute_block(store, ctx(g), block, &Signatures::Verify)?;
    let keys: Vec<_> = test_keys()[..4].iter().collect();
    let commit = sign_commit(CHAIN, block.header.height, 0, block.hash(), &keys);
    store
        .commit_block(block, &commit, &outcome.update, &[])
        .unwrap();
    Ok(())
}

/// Grows a chain to `height` with `signallers` signalling, or until this binary stops
/// (at an activation it cannot run); returns the state root of each height (index 0:
/// genesis).
fn grow(store: &MemStore, g: &Genesis, signallers: &[usize], height: u64) -> Vec<ledger::Hash> {
    let mut roots = vec![store.tip().unwrap().state_root];
    while store.tip().unwrap().height < height {
        let Ok(block) = build_next(store, g, signallers) else {
            break;
        };
        apply(store, g, &block).unwrap();
        roots.push(block.header.state_root);
    }
    roots
}

fn schedule(store: &MemStore, g: &Genesis) -> ProtocolSchedule {
    ProtocolSchedule::read(store, &g.params).unwrap()
}

#[test]
fn three_of_four_signalling_activate_once_and_the_root_is_unchanged_until_then() {
    let g = genesis();
    let (signalling, silent) = (MemStore::new(&g).unwrap(), MemStore::new(&g).unwrap());
    let roots = grow(&signalling, &g, &[0, 1, 2], 30);
    let silent_roots = grow(&silent, &g, &[], roots.len() as u64 - 1);

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
    // record changes the root at its block, and nothing changes it again after.
    let r = recorded_at as usize;
    assert_eq!(roots[..r], silent_roots[..r]);
    assert_ne!(roots[r], silent_roots[r]);
    assert!(roots[r..].iter().all(|x| *x == roots[r]), "recorded once");
    assert_eq!(
        signalling.entry(&protocol_key_bytes(PROTOCOL_2)).unwrap(),
        Some(borsh::to_vec(&activation).unwrap())
    );
    assert_eq!(schedule(&signalling, &g).at(activation - 1), PROTOCOL_1);
    assert_eq!(schedule(&signalling, &g).at(activation), PROTOCOL_2);
    assert_eq!(
        signalling.tip().unwrap().height,
        activation - 1,
        "stopped before A"
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
fn this_release_stops_at_the_activation_height_with_the_upgrade_message() {
    let g = genesis();
    let store = MemStore::new(&g).unwrap();
    let activation = WINDOW + LEAD;
    grow(&store, &g, &[0, 1, 2, 3], activation - 1);
    let message = format!(
        "this network runs protocol 2 from height {activation}; this tallyd supports up to 1: \
         upgrade it"
    );
    // Building the block at A is refused...
    let err = build_next(&store, &g, &[]).unwrap_err();
    assert_eq!(err, format!("database error: {message}"));
    // ...and so is executing one (not the peer's fault: this binary is too old).
    let tip = store.tip().unwrap();
    let mut block = store.block(tip.height).unwrap().unwrap();
    block.header.height = activation;
    let err = execute_block(&store, ctx(&g), &block, &Signatures::Verify).unwrap_err();
    assert!(matches!(err, BlockError::Unsupported { .. }), "{err}");
    assert!(!err.is_peer_fault());
    assert_eq!(err.to_string(), message);
}

#[test]
fn a_signal_other_than_the_next_protocol_is_refused() {
    let g = genesis();
    let store = MemStore::new(&g).unwrap();
    let mut block = build_next(&store, &g, &[]).unwrap();
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
