//! Assembles a node from its home directory: store, network, mempool, engine, router,
//! RPC and metrics, each a task under one shutdown token.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ledger::genesis::Genesis;
use ledger::store::rocks::{RocksConfig, RocksStore};
use ledger::store::ChainReader;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tally_p2p::{Multiaddr, NetworkConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::actors::{ActorParts, Actors};
use crate::config::{Home, NodeConfig};
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{Mempool, MempoolConfig};
use crate::metrics::ChainMetrics;
use crate::router::Router;
use crate::rpc::metrics::RpcMetrics;
use crate::rpc::RpcState;

/// Where a running node actually listens (ports chosen by the OS when configured as 0).
/// Written to `<home>/data/addresses.json` once everything is bound, for the testnet
/// launcher, tests and scripts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Addresses {
    pub peer_id: String,
    pub rpc: String,
    pub metrics: Option<String>,
    pub p2p: Vec<String>,
    pub pid: u32,
}

pub fn addresses_file(home: &Path) -> PathBuf {
    home.join("data/addresses.json")
}

/// Loads config and genesis from `home` and runs the node until `shutdown` (or Ctrl-C /
/// SIGTERM when `handle_signals`).
pub async fn run(home: &Path, shutdown: CancellationToken) -> anyhow::Result<()> {
    let home = Home(home.to_path_buf());
    let config = NodeConfig::load(&home.config_file(), std::env::vars())?;
    let genesis = Genesis::load(&home.genesis_file())?;
    run_with(home, config, genesis, shutdown).await
}

/// RocksDB's table files held open (`set_max_open_files` in `ledger::store::rocks`).
const ROCKSDB_OPEN_FILES: u64 = 512;
/// Descriptors besides table files and sockets: the WAL, logs, pipes, epoll, listeners.
const FD_MARGIN: u64 = 256;

/// File descriptors the node may hold at once at its configured limits.
pub fn fds_needed(config: &NodeConfig) -> u64 {
    let p2p = u64::from(config.p2p.max_inbound_connections)
        + u64::from(config.p2p.max_pending_inbound)
        // Outbound dials (bootstrap, discovery) are not capped by the inbound limit.
        + u64::from(config.p2p.max_inbound_connections);
    ROCKSDB_OPEN_FILES
        + config.rpc.max_connections as u64
        + config.metrics.max_connections as u64
        + p2p
        + FD_MARGIN
}

/// Raises the soft open-file limit to `needed` (at most the hard limit): many systems start
/// processes at 1,024, which RocksDB's files and a full load of RPC and p2p connections
/// exceed; a node out of descriptors refuses connections and can fail to open table files.
/// Returns the limit in force afterwards.
pub fn raise_open_files_limit(needed: u64) -> u64 {
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit < needed => {
            tracing::warn!(
                limit,
                needed,
                "the open-file limit is below what this node may use at its connection limits; \
                 raise the hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit) or \
                 lower rpc.max_connections"
            );
            limit
        }
        Ok(limit) => {
            tracing::debug!(limit, needed, "open-file limit");
            limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            0
        }
    }
}

pub async fn run_with(
    home: Home,
    config: NodeConfig,
    genesis: Genesis,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    raise_open_files_limit(fds_needed(&config));
    // Protocol 2, or a protocol-1 chain this binary can follow into it (issue 21).
    let changing_sets =
        crate::upgrade::max_protocol(genesis.params.protocol_version) >= ledger::types::PROTOCOL_2;
    let mut genesis = Arc::new(genesis);
    let key = if config.consensus.validator_key.is_empty() {
        None
    } else {
        let path = home.resolve(&config.consensus.validator_key);
        let key = crate::keys::read_validator_key(&path)?;
        let in_genesis = genesis.validators.get(&key.address()).is_some();
        if in_genesis {
            Some(key)
        } else if changing_sets {
            // Protocol 2: the key may be bonded in later; the core signs only at heights
            // whose set holds it.
            tracing::info!(
                address = %ledger::to_hex(&key.address()),
                "the validator key is not in the genesis validator set; the node signs at \
                 the heights whose set holds it (once bonded)"
            );
            Some(key)
        } else {
            tracing::warn!(
                address = %ledger::to_hex(&key.address()),
                "the validator key is not in the genesis validator set; running as a full node"
            );
            None
        }
    };
    let node_secret = crate::keys::read_node_key(&home.node_key_file())?;

    std::fs::create_dir_all(home.db_dir())
        .with_context(|| format!("cannot create {}", home.db_dir().display()))?;
    let store = Arc::new(
        RocksStore::open_with(
            &home.db_dir(),
            &genesis,
            &RocksConfig {
                block_cache_bytes: config.storage.block_cache_mb << 20,
                write_buffer_bytes: config.storage.write_buffer_mb << 20,
                write_buffer_total_bytes: config.storage.write_buffer_total_mb << 20,
                tree_cache_levels: config.storage.tree_cache_levels,
                ..RocksConfig::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", home.db_dir().display()))?,
    );
    // Start-up integrity check (repair.rs): damaged blocks are repaired from peers once
    // the network is up; damage peers cannot repair makes us refuse to start.
    let damage = crate::repair::check_tip(
        &store,
        &genesis,
        &home.db_dir(),
        crate::repair::check_depth(),
    )
    .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    if !damage.is_empty() {
        tracing::warn!(
            heights = ?damage.heights,
            findings = ?damage.findings,
            state = ?damage.state,
            "start-up check found damage; repairing (blocks from peers, state by replay)"
        );
    }
    let tip = store.tip()?;
    // Issue 21: a chain that moved to a protocol this binary does not run is refused at
    // once, before anything is written (crate::upgrade).
    let max_protocol = crate::upgrade::max_protocol(genesis.params.protocol_version);
    let params = genesis.params.clone();
    let upgrade_check = |tip: u64| -> anyhow::Result<()> {
        crate::upgrade::check_next_height(store.as_ref(), &params, tip, max_protocol)?.map_err(
            |required| {
                tracing::error!("{required}");
                anyhow::Error::new(required)
            },
        )
    };
    upgrade_check(tip.height)?;
    tracing::info!(
        chain_id = %genesis.chain_id,
        height = tip.height,
        validator = key.is_some(),
        "opened the ledger"
    );

    let mut registry = Registry::default();
    let chain_metrics = ChainMetrics::register(&mut registry);
    let mut mempool_metrics = MempoolMetrics::register(&mut registry);
    // One record of storage errors for the engine, admission and `/v1/status`.
    mempool_metrics.storage = chain_metrics.storage.clone();
    mempool_metrics.tx_signatures = chain_metrics.tx_signatures.clone();
    let storage_health = chain_metrics.storage.clone();
    let sync_blocks_served = chain_metrics.sync_blocks_served.clone();
    let proposal_metrics = crate::compact::ProposalMetrics::register(&mut registry);
    let rpc_metrics = RpcMetrics::register(&mut registry);

    // The largest gossip message is a proposal carrying the largest block.
    let max_block_bytes = genesis.params.block_max_bytes as usize + 64 * 1024;
    let mut net_config = NetworkConfig::new(genesis.chain_id.clone(), node_secret);
    // Announced to peers (identify's agent): what `/v1/peers`, the testnet table and
    // `tally_p2p_peer_versions` show of each peer during a rolling upgrade.
    net_config.protocols = ledger::types::PROTOCOL_1..=ledger::types::MAX_PROTOCOL;
    let parse = |list: &[String]| -> anyhow::Result<Vec<Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse::<Multiaddr>()
                    .map_err(|e| anyhow::anyhow!("bad multiaddr {a}: {e}"))
            })
            .collect()
    };
    net_config.listen = parse(&config.p2p.listen)?;
    net_config.bootstrap = parse(&config.p2p.bootstrap)?;
    net_config.discovery = config.p2p.discovery;
    net_config.max_message_bytes = max_block_bytes;
    net_config.max_tx_message_bytes = (genesis.params.max_tx_bytes as usize).max(1024);
    net_config.max_inbound_connections = config.p2p.max_inbound_connections;
    net_config.max_connections_per_ip = config.p2p.max_connections_per_ip;
    net_config.max_tx_msgs_per_sec_per_peer = config.p2p.max_tx_msgs_per_sec_per_peer;
    net_config.max_consensus_msgs_per_sec_per_peer = config.p2p.max_consensus_msgs_per_sec_per_peer;
    net_config.max_sync_requests_per_sec_per_peer = config.p2p.max_sync_requests_per_sec_per_peer;
    net_config.ban_threshold = config.p2p.ban_threshold;
    net_config.ban_duration = Duration::from_secs(config.p2p.ban_duration_secs);
    net_config.score_half_life = Duration::from_secs(config.p2p.score_half_life_secs.max(1));
    net_config.gossip_author_signatures = config.p2p.gossip_author_signatures;
    net_config.tx_mesh_n = config.p2p.tx_mesh_n;
    // Connection, per-IP and event-queue limits ([p2p] section).
    config.p2p.apply_limits(&mut net_config);
    // A batch holds up to 1,024 txs; with the largest txs it is capped by the message size.
    let tx_batch_bytes = (256 * 1024).clamp(net_config.max_tx_message_bytes, max_block_bytes);
    net_config.max_tx_batch_bytes = tx_batch_bytes;
    net_config.max_proposal_message_bytes =
        crate::compact::max_compact_bytes(genesis.params.block_max_txs as usize, max_block_bytes);
    // A request for a compact proposal's missing txs must fit.
    net_config.sync_max_request_bytes = net_config
        .sync_max_request_bytes
        .max(crate::wire::MAX_SYNC_REQUEST_BYTES);
    let sync_max_response_bytes = net_config.sync_max_response_bytes;
    let (net, net_events) = tally_p2p::spawn(net_config, &mut registry, shutdown.clone())
        .map_err(|e| anyhow::anyhow!("cannot start networking: {e}"))?;
    if !damage.is_empty() {
        crate::repair::repair_from_peers(
            &store,
            &genesis,
            &net,
            &damage,
            &home.db_dir(),
            crate::repair::repair_wait(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    }
    // The store holds the genesis state (and start-up repair, the last user of the account
    // list, is done): free the list, most of a large genesis, for the node's lifetime.
    Arc::make_mut(&mut genesis).release_accounts();
    let genesis = genesis;

    let mempool = Arc::new(Mutex::new(Mempool::new(
        MempoolConfig {
            max_txs: config.mempool.max_txs,
            max_bytes: config.mempool.max_bytes,
            max_nonce_gap: config.mempool.max_nonce_gap,
            max_per_sender: config.mempool.max_per_sender,
            ttl: Duration::from_secs(config.mempool.ttl_secs),
        },
        genesis.chain_id.clone(),
        genesis.params.clone(),
    )));
    let (events, _) = broadcast::channel(16 * 1024);
    let timeout_commit = Duration::from_millis(if config.consensus.timeout_commit_ms > 0 {
        config.consensus.timeout_commit_ms
    } else {
        genesis.params.timeout_commit_ms
    });
    let validator_address = key.as_ref().map(|k| k.address());
    let actors = Actors::build(ActorParts {
        genesis: genesis.clone(),
        store: store.clone(),
        mempool: mempool.clone(),
        mempool_metrics: mempool_metrics.clone(),
        metrics: chain_metrics.clone(),
        net: net.clone(),
        key,
        timeout_commit,
        skip_timeout_commit_when_busy: config.consensus.skip_timeout_commit_when_busy,
        reuse_mempool_signatures: config.mempool.reuse_verified_signatures,
        compact_proposals: config.consensus.compact_proposals,
        events: events.clone(),
    })?;
    let mut tasks = Supervisor::default();
    let handles = actors.spawn(net.clone(), &mut tasks, &shutdown);
    tasks.spawn(
        "metrics sampler",
        sample_metrics(chain_metrics, store.clone(), shutdown.clone()),
    );

    let (listening, mut listening_rx) = tokio::sync::watch::channel(Vec::new());
    let router = Router {
        listening,
        genesis: genesis.clone(),
        store: store.clone(),
        mempool: mempool.clone(),
        mempool_metrics: mempool_metrics.clone(),
        net: net.clone(),
        driver: handles.driver.clone(),
        sync: handles.sync.clone(),
        max_block_bytes,
        sync_max_response_bytes,
        sync_blocks_served,
        status: handles.view.status.clone(),
        sets: handles.sets.clone(),
        proposal_metrics,
        fetch_timeout: Duration::from_millis(genesis.params.timeout_propose_ms),
    };

    // RPC and metrics listeners are bound before anything is announced.
    let rpc_addr: SocketAddr = config.rpc.listen.parse()?;
    let rpc_listener = tokio::net::TcpListener::bind(rpc_addr)
        .await
        .with_context(|| {
            format!("cannot listen for RPC on {rpc_addr} (rpc.listen); is another node using it?")
        })?;
    let rpc_bound = rpc_listener.local_addr()?;
    let metrics_listener = if config.metrics.enabled {
        let addr: SocketAddr = config.metrics.listen.parse()?;
        Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr} (metrics.listen)"))?,
        )
    } else {
        None
    };
    let metrics_bound = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let registry = Arc::new(registry);
    let tx_gossip = crate::txgossip::TxGossip::start(
        net.clone(),
        Duration::from_millis(config.p2p.tx_batch_ms),
        tx_batch_bytes,
        shutdown.clone(),
    );
    crate::txgossip::spawn_reannouncer(
        tx_gossip.clone(),
        mempool.clone(),
        mempool_metrics.clone(),
        shutdown.clone(),
    );
    let rpc_state = RpcState {
        genesis: genesis.clone(),
        store: store.clone(),
        mempool,
        mempool_metrics,
        net: net.clone(),
        tx_gossip: tx_gossip.clone(),
        view: handles.view.clone(),
        events,
        metrics: rpc_metrics.clone(),
        moniker: config.moniker.clone(),
        validator: validator_address,
        streams: Arc::new(tokio::sync::Semaphore::new(config.rpc.max_event_streams)),
        shutdown: shutdown.clone(),
        storage: storage_health,
    };
    let app = crate::rpc::router(
        rpc_state,
        config.rpc.max_body_bytes,
        Duration::from_millis(config.rpc.timeout_ms),
    );

    // The router ends when the network task's event channel closes: a dead network task
    // stops the node through it.
    tasks.spawn("router", router.run(net_events, shutdown.clone()));
    {
        let shutdown = shutdown.clone();
        let (limits, metrics) = (
            crate::rpc::ConnLimits::rpc(&config.rpc),
            rpc_metrics.clone(),
        );
        tasks.spawn("RPC server", async move {
            let served = crate::rpc::serve(rpc_listener, app, limits, metrics, shutdown.clone());
            if let Err(e) = served.await {
                tracing::error!(error = %e, "RPC server failed");
                shutdown.cancel();
            }
        });
    }
    if let Some(listener) = metrics_listener {
        // Same accept loop as the RPC server (connection caps, head timeout), own caps.
        let app = crate::rpc::metrics_router(registry.clone());
        let limits = crate::rpc::ConnLimits::metrics(&config.rpc, &config.metrics);
        let (metrics, shutdown) = (rpc_metrics.clone(), shutdown.clone());
        tasks.spawn("metrics server", async move {
            if let Err(e) = crate::rpc::serve(listener, app, limits, metrics, shutdown).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    // Wait for the p2p listeners to be up, then publish where we are.
    let wanted = config.p2p.listen.len();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        listening_rx.wait_for(|l| l.len() >= wanted),
    )
    .await;
    let p2p: Vec<Multiaddr> = listening_rx.borrow().clone();
    let peer_id = net.local_peer_id();
    let addresses = Addresses {
        peer_id: peer_id.to_string(),
        rpc: rpc_bound.to_string(),
        metrics: metrics_bound.map(|a| a.to_string()),
        p2p: p2p.iter().map(|a| format!("{a}/p2p/{peer_id}")).collect(),
        pid: std::process::id(),
    };
    crate::keys::write_private(
        &addresses_file(&home.0),
        serde_json::to_string_pretty(&addresses)?.as_bytes(),
    )?;
    tracing::info!(
        rpc = %rpc_bound,
        metrics = ?metrics_bound,
        p2p = ?addresses.p2p,
        "node is up"
    );

    let result = tasks.run(&shutdown, Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(addresses_file(&home.0));
    // The chain host ends its task when the next height runs a protocol this binary does
    // not: say so, with its own exit code, instead of "a task stopped".
    if result.is_err() {
        upgrade_check(store.tip()?.height)?;
    }
    result
}

/// Samples what the node's process and its database take (memory, CPU, descriptors, column
/// family sizes) into the metrics, once a second.
async fn sample_metrics(
    metrics: crate::metrics::ChainMetrics,
    store: Arc<RocksStore>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                metrics.sample_process();
                for (cf, size) in store.sizes() {
                    metrics
                        .db_size
                        .get_or_create(&crate::metrics::CfLabel { cf: cf.into() })
                        .set(size as i64);
                }
            }
        }
    }
}

/// The node's long-lived tasks under one shutdown token. A task that panics, or ends
/// before shutdown was asked for, stops the whole node: [`Supervisor::run`] cancels the
/// token and returns an error naming the task, instead of leaving a process that looks
/// alive but no longer commits, gossips or answers.
#[derive(Default)]
pub struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Runs until `shutdown` is cancelled or a task fails; then cancels `shutdown` and
    /// waits up to `drain` for the other tasks. Err names the task that failed.
    pub async fn run(
        mut self,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> anyhow::Result<()> {
        // The first event ends the supervision: shutdown, or a task's end.
        let joined = tokio::select! {
            _ = shutdown.cancelled() => None,
            joined = self.tasks.join_next_with_id() => joined,
        };
        let failure = match joined {
            None => {
                // No task at all: nothing can fail; wait for shutdown.
                shutdown.cancelled().await;
                None
            }
            Some(Ok(_)) if shutdown.is_cancelled() => None,
            Some(Ok((id, ()))) => Some(format!(
                "task \"{}\" stopped on its own before shutdown",
                self.name(id)
            )),
            Some(Err(e)) => Some(self.describe(e)),
        };
        match &failure {
            Some(f) => tracing::error!("{f}; stopping the node"),
            None => tracing::info!("shutting down"),
        }
        shutdown.cancel();
        let finish = async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!("{} while shutting down", self.describe(e));
                    }
                }
            }
        };
        if tokio::time::timeout(drain, finish).await.is_err() {
            tracing::warn!("some tasks did not stop within {drain:?}");
        }
        match failure {
            Some(f) => Err(anyhow::anyhow!("{f}; the node stopped")),
            None => Ok(()),
        }
    }

    fn name(&self, id: tokio::task::Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }

    fn describe(&self, e: tokio::task::JoinError) -> String {
        let name = self.name(e.id());
        if !e.is_panic() {
            return format!("task \"{name}\" was cancelled");
        }
        let panic = e.into_panic();
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        format!("task \"{name}\" panicked: {message}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Item 6 of issue 17: a panic in one task stops the node with the task's name, not
    /// just that task.
    #[tokio::test]
    async fn a_panicking_task_stops_the_node_and_is_named() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let token = shutdown.clone();
        tasks.spawn("steady", async move { token.cancelled().await });
        tasks.spawn("consensus engine", async {
            tokio::task::yield_now().await;
            panic!("boom at height 7");
        });
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            tasks.run(&shutdown, Duration::from_secs(5)),
        )
        .await
        .expect("the node kept running after a task panicked");
        let error = result.expect_err("a panic must be an error").to_string();
        assert!(
            error.contains("\"consensus engine\" panicked: boom at height 7"),
            "{error}"
        );
        assert!(shutdown.is_cancelled(), "the other tasks are told to stop");
    }

    /// A node started under a soft open-file limit of 256 raises it to what its connection
    /// limits need (or to the hard limit, if that is lower). nextest runs each test in its
    /// own process, so lowering this process's limit touches no other test.
    #[test]
    fn the_open_file_limit_is_raised_to_what_the_limits_need() {
        use rlimit::Resource;
        if std::env::var_os("NEXTEST").is_none() {
            // Under `cargo test` the other tests share this process's limit.
            eprintln!("skipped: needs a process of its own (run it with cargo nextest)");
            return;
        }
        let (_, hard) = Resource::NOFILE.get().unwrap();
        if hard < 512 {
            eprintln!("skipped: hard open-file limit {hard} leaves nothing to raise");
            return;
        }
        Resource::NOFILE.set(256, hard).unwrap();
        let needed = fds_needed(&NodeConfig::default());
        assert!(needed > 1024, "the defaults need {needed} descriptors");
        let limit = raise_open_files_limit(needed);
        let (soft, _) = Resource::NOFILE.get().unwrap();
        assert_eq!(soft, limit);
        assert_eq!(soft, needed.min(hard), "soft limit {soft}, hard {hard}");
    }

    #[tokio::test]
    async fn a_task_that_ends_before_shutdown_stops_the_node() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let token = shutdown.clone();
        tasks.spawn("steady", async move { token.cancelled().await });
        tasks.spawn("metrics server", async {});
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            tasks.run(&shutdown, Duration::from_secs(5)),
        )
        .await
        .expect("the node kept running after a task ended");
        let error = result
            .expect_err("an early end must be an error")
            .to_string();
        assert!(
            error.contains("\"metrics server\" stopped on its own"),
            "{error}"
        );
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_and_is_not_an_error() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        for name in ["a", "b"] {
            let token = shutdown.clone();
            tasks.spawn(name, async move { token.cancelled().await });
        }
        shutdown.cancel();
        tokio::time::timeout(
            Duration::from_secs(10),
            tasks.run(&shutdown, Duration::from_secs(5)),
        )
        .await
        .unwrap()
        .unwrap();
    }
}
