//! Test support shared by the node's unit tests: keys, a genesis of given validators and
//! funded accounts, a valid chain, the node's actors over any store, and a store that
//! fails on demand.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::actors::NodeStore;
use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::store::memory::MemStore;
use ledger::store::rocks::RocksStore;
use ledger::types::{Block, Commit};
use ledger::Hash;

use crate::actors::{ActorParts, Actors};
use crate::mempool::{Mempool, MempoolConfig};
use crate::metrics::ChainMetrics;
use tokio_util::sync::CancellationToken;

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
                operator: None,
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

/// A protocol-2 genesis of `chain_id`: `validators` as (key, power), each bonded by the
/// operator `operator` (funded with `balance`); one unit of stake per unit of power, so a
/// bond of n gives power n; no downtime jailing within a test's heights.
pub fn genesis_v2(
    chain_id: &str,
    validators: &[(&Keypair, u64)],
    operator: &Keypair,
    balance: u64,
) -> Genesis {
    use ledger::genesis::StakingParams;
    let file = GenesisFile {
        chain_id: chain_id.into(),
        genesis_time_ms: 0,
        params: Params {
            protocol_version: ledger::types::PROTOCOL_2,
            staking: Some(StakingParams {
                stake_per_power: 1,
                min_validator_stake: 1,
                unbonding_blocks: 10,
                evidence_max_age_blocks: 10,
                downtime_jail_after: 1_000,
                ..StakingParams::default()
            }),
            ..Params::default()
        },
        validators: validators
            .iter()
            .enumerate()
            .map(|(i, (k, power))| GenesisValidator {
                name: format!("v{i}"),
                pubkey: hex::encode(k.public_key()),
                power: *power,
                operator: Some(hex::encode(operator.address())),
            })
            .collect(),
        accounts: vec![GenesisAccount {
            address: hex::encode(operator.address()),
            balance,
        }],
    };
    Genesis::from_bytes("g.json", &serde_json::to_vec(&file).unwrap()).unwrap()
}

/// An empty mempool of `genesis` with the default limits.
/// A 5-unit transfer from `key` on `chain` to `[7; 20]`, fee 1.
pub fn transfer(key: &Keypair, chain: &str, nonce: u64) -> ledger::types::SignedTx {
    key.sign_tx(ledger::types::Tx {
        chain_id: chain.into(),
        from: key.public_key(),
        nonce,
        fee: 1,
        payload: ledger::types::Payload::Transfer {
            to: [7; 20],
            amount: 5,
        },
    })
}

pub fn mempool(genesis: &Genesis) -> Arc<Mutex<Mempool>> {
    Arc::new(Mutex::new(Mempool::new(
        MempoolConfig::default(),
        genesis.chain_id.clone(),
        genesis.params.clone(),
    )))
}

/// The chain id of [`chain`] and [`actors`].
pub const CHAIN: &str = "test-chain";

/// A valid chain of `n` blocks with two transfers each, signed by validator key "v" and
/// sent by key "sender", committed into a MemStore of its genesis.
pub fn chain(n: u64) -> (Genesis, MemStore, Vec<(Block, Commit)>) {
    let (v, sender) = (key("v"), key("sender"));
    chain_of(genesis(CHAIN, &[&v], &[(&sender, 1_000_000)]), n, None)
}

/// [`chain`] with an upgrade window of `window` blocks and a lead of `lead`, whose
/// proposer signals protocol 2 in every block: the end of block `window` records
/// protocol 2 from `window + lead` (issue 21).
pub fn signalling_chain(
    n: u64,
    window: u64,
    lead: u64,
) -> (Genesis, MemStore, Vec<(Block, Commit)>) {
    let (v, sender) = (key("v"), key("sender"));
    let mut g = genesis(CHAIN, &[&v], &[(&sender, 1_000_000)]);
    g.params.upgrade_window = window;
    g.params.upgrade_lead = lead;
    chain_of(g, n, Some(ledger::types::PROTOCOL_2))
}

fn chain_of(g: Genesis, n: u64, signal: Option<u32>) -> (Genesis, MemStore, Vec<(Block, Commit)>) {
    use ledger::block::{assemble, BlockTemplate};
    use ledger::exec::{build_body_at, BlockEnv, ExecContext, Signatures};
    use ledger::store::{ChainReader, ChainWriter};
    use ledger::types::{Payload, Tx};

    let (v, sender) = (key("v"), key("sender"));
    let store = MemStore::new(&g).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    let mut out: Vec<(Block, Commit)> = Vec::new();
    for height in 1..=n {
        let tip = store.tip().unwrap();
        let txs: Vec<_> = (0..2)
            .map(|i| {
                sender.sign_tx(Tx {
                    chain_id: CHAIN.into(),
                    from: sender.public_key(),
                    nonce: (height - 1) * 2 + i,
                    fee: 1,
                    payload: Payload::Transfer {
                        to: [9; 20],
                        amount: 1,
                    },
                })
            })
            .collect();
        let last_commit = out.last().map(|(_, c)| c.clone());
        let env = BlockEnv {
            height,
            proposer: v.address(),
            last_commit: last_commit.as_ref(),
            evidence: &[],
            signal,
        };
        let body = build_body_at(&store, ctx, env, txs, &Signatures::Verify).unwrap();
        assert!(body.rejected.is_empty());
        let block = assemble(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                time_ms: height,
                prev_hash: tip.block_hash,
                validators_hash: g.validators.hash(),
                proposer: v.address(),
                last_commit,
            },
            &body,
        );
        let commit = ledger::block::sign_commit(CHAIN, height, 0, block.hash(), &[&v]);
        let ids: Vec<Hash> = body.outcome.receipts.iter().map(|r| r.id).collect();
        store
            .commit_block(&block, &commit, &body.outcome.update, &ids)
            .unwrap();
        out.push((block, commit));
    }
    (g, store, out)
}

/// The three actors over `store`, connected, not running: the test drives them by hand.
/// The network is detached (its commands come out of the returned receiver), the
/// mempool empty, `timeout_commit` 10 ms.
pub fn actors<S: NodeStore>(
    genesis: Arc<Genesis>,
    store: Arc<S>,
    key: Option<Keypair>,
) -> (
    Actors<S>,
    tokio::sync::mpsc::Receiver<tally_p2p::Command>,
    ChainMetrics,
) {
    let pool = mempool(&genesis);
    actors_with(genesis, store, key, pool)
}

/// [`actors`] over the given mempool.
pub fn actors_with<S: NodeStore>(
    genesis: Arc<Genesis>,
    store: Arc<S>,
    key: Option<Keypair>,
    mempool: Arc<Mutex<Mempool>>,
) -> (
    Actors<S>,
    tokio::sync::mpsc::Receiver<tally_p2p::Command>,
    ChainMetrics,
) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ChainMetrics::register(&mut registry);
    let (actors, commands) = actors_waiting(
        genesis,
        store,
        key,
        mempool,
        metrics.clone(),
        true,
        CommitWait::default(),
    );
    (actors, commands, metrics)
}

/// `timeout_commit` and `consensus.skip_timeout_commit_when_busy` for [`actors_waiting`];
/// the default: 10 ms, skipped while busy (as nodes run).
pub struct CommitWait {
    pub timeout_commit: Duration,
    pub skip_when_busy: bool,
}

impl Default for CommitWait {
    fn default() -> Self {
        CommitWait {
            timeout_commit: Duration::from_millis(10),
            skip_when_busy: true,
        }
    }
}

/// [`actors_with`] reporting to `metrics`, with block execution reusing the mempool's
/// verified signatures or not (`[mempool] reuse_verified_signatures`), and the given wait
/// after a commit.
pub fn actors_waiting<S: NodeStore>(
    genesis: Arc<Genesis>,
    store: Arc<S>,
    key: Option<Keypair>,
    mempool: Arc<Mutex<Mempool>>,
    metrics: ChainMetrics,
    reuse_mempool_signatures: bool,
    wait: CommitWait,
) -> (Actors<S>, tokio::sync::mpsc::Receiver<tally_p2p::Command>) {
    let (net, commands) = tally_p2p::NetworkHandle::detached(1024);
    let actors = Actors::build(ActorParts {
        genesis: genesis.clone(),
        store,
        mempool,
        mempool_metrics: Default::default(),
        metrics,
        net,
        key,
        timeout_commit: wait.timeout_commit,
        skip_timeout_commit_when_busy: wait.skip_when_busy,
        events: tokio::sync::broadcast::channel(1024).0,
        reuse_mempool_signatures,
        compact_proposals: true,
    })
    .unwrap();
    (actors, commands)
}

/// A block of (height, round) proposed by `proposer`, with no txs and a header that
/// matches its empty body, on `parent` = (previous block hash, state root).
pub fn empty_block(
    g: &Genesis,
    proposer: &Keypair,
    height: u64,
    round: u32,
    time_ms: u64,
    parent: (ledger::Hash, ledger::Hash),
) -> ledger::types::Block {
    let template = ledger::block::BlockTemplate {
        chain_id: g.chain_id.clone(),
        height,
        round,
        time_ms,
        prev_hash: parent.0,
        validators_hash: g.validators.hash(),
        proposer: proposer.address(),
        last_commit: None,
    };
    ledger::block::assemble_empty(template, parent.1)
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
    use ledger::types::Proposal;
    let block = empty_block(g, key, height, round, time_ms, ([0; 32], [0; 32]));
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
/// of its own that nobody dials and a status that never moves: for calling the
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
    let (_, status) = tokio::sync::watch::channel(crate::status::NodeStatus::default());
    crate::rpc::RpcState {
        genesis: genesis.clone(),
        store,
        mempool: mempool(&genesis),
        mempool_metrics: Default::default(),
        tx_gossip: crate::txgossip::TxGossip::start(
            net.clone(),
            Duration::ZERO,
            1 << 20,
            shutdown.clone(),
        ),
        net,
        view: crate::status::NodeView {
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

pub use failing::FailingStore;

/// A store whose account reads can be made to fail, as a failing disk would.
mod failing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ledger::state::{AccountReader, StateReader, StateUpdate};
    use ledger::store::memory::MemStore;
    use ledger::store::{ChainReader, ChainWriter, ConsensusStore, StoreError, Tip, TxLocation};
    use ledger::types::{Account, Block, Commit};
    use ledger::Hash;

    pub struct FailingStore {
        inner: MemStore,
        fail_accounts: AtomicBool,
        fail_commits: AtomicBool,
    }

    impl FailingStore {
        pub fn new(inner: MemStore) -> Self {
            Self {
                inner,
                fail_accounts: AtomicBool::new(false),
                fail_commits: AtomicBool::new(false),
            }
        }

        /// Block commits fail as on a full disk.
        pub fn fail_commits(&self, on: bool) {
            self.fail_commits.store(on, Ordering::SeqCst);
        }

        pub fn fail_account_reads(&self, on: bool) {
            self.fail_accounts.store(on, Ordering::SeqCst);
        }
    }

    impl AccountReader for FailingStore {
        fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
            if self.fail_accounts.load(Ordering::SeqCst) {
                return Err(StoreError::Db(
                    "injected: IO error: reading an account failed".into(),
                ));
            }
            self.inner.account_by_key(key)
        }
    }

    impl StateReader for FailingStore {
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
        fn entries_with_prefix(&self, prefix: &[u8]) -> Result<ledger::state::Entries, StoreError> {
            self.inner.entries_with_prefix(prefix)
        }
        fn validator_set_record(
            &self,
            height: u64,
        ) -> Result<Option<Vec<ledger::types::Validator>>, StoreError> {
            self.inner.validator_set_record(height)
        }
        fn committed_header(
            &self,
            height: u64,
        ) -> Result<Option<ledger::types::Header>, StoreError> {
            self.inner.committed_header(height)
        }
    }

    impl ChainReader for FailingStore {
        fn tip(&self) -> Result<Tip, StoreError> {
            self.inner.tip()
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

    impl ConsensusStore for FailingStore {
        fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.consensus_get(key)
        }
        fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.inner.consensus_put(key, value)
        }
    }

    impl ChainWriter for FailingStore {
        fn commit_block(
            &self,
            block: &Block,
            commit: &Commit,
            update: &StateUpdate,
            tx_ids: &[Hash],
        ) -> Result<(), StoreError> {
            if self.fail_commits.load(Ordering::SeqCst) {
                return Err(StoreError::Db(
                    "injected: IO error: No space left on device".into(),
                ));
            }
            self.inner.commit_block(block, commit, update, tx_ids)
        }
    }
}
