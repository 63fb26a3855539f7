//! Test support shared by the node's unit tests: keys, a genesis of given validators and
//! funded accounts, and an engine over a real store in a temporary directory.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::store::rocks::RocksStore;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineParts};
use crate::mempool::{Mempool, MempoolConfig};

/// A key derived from `name`: the same in every run.
pub fn key(name: &str) -> Keypair {
    Keypair::from_secret_bytes(&ledger::sha256(name.as_bytes())).unwrap()
}

/// A genesis of `chain_id` with `validators` (power 1 each, named v0, v1, ...) and
/// `accounts` funded with the given balances.
pub fn genesis(chain_id: &str, validators: &[&Keypair], accounts: &[(&Keypair, u64)]) -> Genesis {
    let file = GenesisFile {
        chain_id: chain_id.into(),
        genesis_time_ms: 0,
        params: Params::default(),
        validators: validators
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                name: format!("v{i}"),
                pubkey: hex::encode(k.public_key()),
                power: 1,
            })
            .collect(),
        accounts: accounts
            .iter()
            .map(|(k, balance)| GenesisAccount {
                address: hex::encode(k.address()),
                balance: *balance,
            })
            .collect(),
    };
    Genesis::from_bytes("g.json", &serde_json::to_vec(&file).unwrap()).unwrap()
}

/// A full node's engine (no validator key) over a fresh RocksDB store of `genesis` in
/// `dir`, with a network task of its own that nobody dials.
pub fn engine(genesis: Arc<Genesis>, dir: &std::path::Path) -> Engine {
    validator_engine(genesis, dir, None)
}

/// [`engine`], signing with `key` when given.
pub fn validator_engine(
    genesis: Arc<Genesis>,
    dir: &std::path::Path,
    key: Option<Keypair>,
) -> Engine {
    let store = Arc::new(RocksStore::open(dir, &genesis).unwrap());
    let mut registry = prometheus_client::registry::Registry::default();
    let (net, _events) = tally_p2p::spawn(
        tally_p2p::NetworkConfig::new(genesis.chain_id.clone(), [7; 32]),
        &mut registry,
        CancellationToken::new(),
    )
    .unwrap();
    let (engine, _, _) = Engine::new(EngineParts {
        genesis: genesis.clone(),
        store,
        mempool: Arc::new(Mutex::new(Mempool::new(
            MempoolConfig::default(),
            genesis.chain_id.clone(),
            genesis.params.clone(),
        ))),
        mempool_metrics: Default::default(),
        metrics: crate::metrics::ChainMetrics::register(&mut registry),
        net,
        key,
        timeout_commit: Duration::from_millis(10),
        events: tokio::sync::broadcast::channel(16).0,
        reuse_mempool_signatures: true,
    })
    .unwrap();
    engine
}

/// A proposal signed by `key` for (height, round), with an empty body that matches its
/// header (so it passes the relay checks); `time_ms` makes each one a different block.
pub fn empty_proposal(
    g: &Genesis,
    key: &Keypair,
    height: u64,
    round: u32,
    time_ms: u64,
) -> crate::wire::ConsensusMessage {
    use ledger::block::{assemble_empty, BlockTemplate};
    use ledger::types::Proposal;
    let template = BlockTemplate {
        chain_id: g.chain_id.clone(),
        height,
        round,
        time_ms,
        prev_hash: [0; 32],
        validators_hash: g.validators.hash(),
        proposer: key.address(),
        last_commit: None,
    };
    let block = assemble_empty(template, [0; 32]);
    let proposal = key.sign_proposal(Proposal {
        chain_id: g.chain_id.clone(),
        height,
        round,
        pol_round: None,
        block_hash: block.hash(),
    });
    crate::wire::ConsensusMessage::Proposal { proposal, block }
}

/// The RPC's state over a fresh RocksDB store of `genesis` in `dir`, with a network task
/// of its own that nobody dials and an engine view that never moves: for calling the
/// handlers directly. Needs a tokio runtime.
pub fn rpc_state(genesis: Arc<Genesis>, dir: &std::path::Path) -> crate::rpc::RpcState {
    let store = Arc::new(RocksStore::open(dir, &genesis).unwrap());
    let mut registry = prometheus_client::registry::Registry::default();
    let shutdown = CancellationToken::new();
    let (net, _events) = tally_p2p::spawn(
        tally_p2p::NetworkConfig::new(genesis.chain_id.clone(), [7; 32]),
        &mut registry,
        shutdown.clone(),
    )
    .unwrap();
    let (_, status) = tokio::sync::watch::channel(crate::engine::EngineStatus::default());
    crate::rpc::RpcState {
        genesis: genesis.clone(),
        store,
        mempool: Arc::new(Mutex::new(Mempool::new(
            MempoolConfig::default(),
            genesis.chain_id.clone(),
            genesis.params.clone(),
        ))),
        mempool_metrics: Default::default(),
        tx_gossip: crate::txgossip::TxGossip::start(
            net.clone(),
            Duration::ZERO,
            1 << 20,
            shutdown.clone(),
        ),
        net,
        view: crate::engine::EngineView {
            status,
            evidence: Default::default(),
        },
        events: tokio::sync::broadcast::channel(16).0,
        metrics: crate::rpc::metrics::RpcMetrics::register(&mut registry),
        moniker: "test".into(),
        validator: None,
        streams: Arc::new(tokio::sync::Semaphore::new(1)),
        shutdown,
        storage: Default::default(),
    }
}
