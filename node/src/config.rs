//! `<home>/config/node.toml`: typed, with defaults for every key, `TALLY_<SECTION>_<KEY>`
//! environment overrides, and errors that name the file, the key and the fix. Every key is
//! documented in `configs/node.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Expands a leading `~/`.
pub fn expand(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Human-readable node name, shown in status and logs.
    pub moniker: String,
    pub p2p: P2pSection,
    pub rpc: RpcSection,
    pub metrics: MetricsSection,
    pub mempool: MempoolSection,
    pub consensus: ConsensusSection,
    pub storage: StorageSection,
    pub runtime: RuntimeSection,
    pub log: LogSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub discovery: bool,
    pub max_inbound_connections: u32,
    pub max_connections_per_ip: u32,
    /// Inbound connections still in their handshake, all IPs together.
    pub max_pending_inbound: u32,
    /// Inbound connections still in their handshake from one IP (one IPv6 /64).
    pub max_pending_inbound_per_ip: u32,
    /// A connection that has not finished its handshake after this long is closed.
    pub handshake_timeout_ms: u64,
    /// Below this many peers connected through connections we dialled, the bootstrap
    /// peers are redialled.
    pub min_outbound_peers: usize,
    pub max_tx_msgs_per_sec_per_peer: u32,
    /// Transactions per second one peer may forward, both tx topics together (a batch
    /// counts its txs).
    pub max_txs_per_sec_per_peer: u32,
    /// Bytes per second one peer may forward on the tx topics together.
    pub max_tx_bytes_per_sec_per_peer: u32,
    pub max_consensus_msgs_per_sec_per_peer: u32,
    pub max_sync_requests_per_sec_per_peer: u32,
    pub ban_threshold: f64,
    pub ban_duration_secs: u64,
    pub score_half_life_secs: u64,
    /// Sum of the penalties of the peers of one IP (one IPv6 /64) below which the IP is
    /// banned (negative).
    pub ip_ban_threshold: f64,
    /// How long an IP ban lasts, in seconds.
    pub ip_ban_duration_secs: u64,
    /// Sign gossip with the libp2p identity (off: Tally messages carry their own
    /// signatures). Every node of a network must use the same value.
    pub gossip_author_signatures: bool,
    /// Gossipsub mesh degree of the transaction topics.
    pub tx_mesh_n: usize,
    /// Transactions received over RPC are gossiped in batches collected over this many
    /// milliseconds (0: each transaction in its own message).
    pub tx_batch_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    pub listen: String,
    pub max_body_bytes: usize,
    pub timeout_ms: u64,
    /// Most concurrent server-sent event streams.
    pub max_event_streams: usize,
    /// Time for a connection to send a complete request head; also how long an idle
    /// kept-alive connection stays open. Used by the metrics server too.
    pub header_read_timeout_ms: u64,
    /// Keep connections open between requests (HTTP/1.1 keep-alive). Used by the metrics
    /// server too.
    pub keep_alive: bool,
    /// Open connections, all client addresses together.
    pub max_connections: usize,
    /// Open connections from one IPv4 address (one IPv6 /64).
    pub max_connections_per_ip: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    pub listen: String,
    /// Open connections to the metrics server, all client addresses together.
    pub max_connections: usize,
    /// Open connections to the metrics server from one IPv4 address (one IPv6 /64).
    pub max_connections_per_ip: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolSection {
    pub max_txs: usize,
    pub max_bytes: usize,
    pub max_nonce_gap: u64,
    pub max_per_sender: usize,
    pub ttl_secs: u64,
    /// Block execution skips the signatures the mempool already verified.
    pub reuse_verified_signatures: bool,
}

/// Keys (section, key) the previous release does not know: [`NodeConfig::to_toml`] writes
/// them only when they differ from their default.
pub const NEWER_KEYS: [(&str, &str); 5] = [
    ("consensus", "compact_proposals"),
    ("consensus", "skip_timeout_commit_when_busy"),
    ("storage", "tree_cache_levels"),
    ("runtime", "worker_threads"),
    ("runtime", "verify_threads"),
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusSection {
    /// Path (relative to the home directory) of the validator key; empty = full node.
    pub validator_key: String,
    /// Overrides genesis `timeout_commit_ms` locally (0 = use genesis).
    pub timeout_commit_ms: u64,
    /// Our proposals travel compact (tx ids; receivers rebuild the block from their
    /// mempool) on the proposal topic; false: full blocks on the consensus topic only, as
    /// before. Received compact proposals are handled either way.
    pub compact_proposals: bool,
    /// Start the next height as soon as every validator's precommit is in, instead of
    /// waiting out `timeout_commit`, while txs wait in the pool (as CometBFT's
    /// `skip_timeout_commit`, but only then: an idle chain keeps its block time).
    pub skip_timeout_commit_when_busy: bool,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        Self {
            validator_key: String::new(),
            timeout_commit_ms: 0,
            compact_proposals: true,
            skip_timeout_commit_when_busy: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// RocksDB block cache shared by all column families.
    pub block_cache_mb: usize,
    /// Memtable size of one column family: it is flushed when it reaches this. The
    /// `state` family's is 32 MiB (ledger's `RocksTuning`), within `write_buffer_total_mb`.
    pub write_buffer_mb: usize,
    /// All memtables together: past this the largest is flushed.
    pub write_buffer_total_mb: usize,
    /// Levels of the state tree kept decoded in memory (0 to 5; 5: ~66 MiB with a
    /// million accounts, 4: ~4 MiB).
    pub tree_cache_levels: usize,
}

/// The node's threads. Several nodes on one small machine (a local testnet, a benchmark)
/// each spawn these pools; fewer threads there mean fewer context switches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Tokio worker threads (network, router, RPC, actors); 0: one per core.
    pub worker_threads: usize,
    /// Threads of the pool that verifies signatures in parallel (gossiped tx batches, block
    /// execution, synced blocks); 0: one per core.
    pub verify_threads: usize,
}

impl RuntimeSection {
    /// At most this many threads per pool: more than any machine here has cores.
    pub const MAX_THREADS: usize = 1024;

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Tokio worker threads: `worker_threads`, or one per core.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => Self::cores(),
            n => n,
        }
    }

    /// Signature verification threads: `verify_threads`, or one per core.
    pub fn verifiers(&self) -> usize {
        match self.verify_threads {
            0 => Self::cores(),
            n => n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter, e.g. "info" or "info,tally_node::engine=debug".
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            moniker: "tally-node".into(),
            p2p: P2pSection::default(),
            rpc: RpcSection::default(),
            metrics: MetricsSection::default(),
            mempool: MempoolSection::default(),
            consensus: ConsensusSection::default(),
            storage: StorageSection::default(),
            runtime: RuntimeSection::default(),
            log: LogSection::default(),
        }
    }
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/26656".into(),
                "/ip4/0.0.0.0/udp/26656/quic-v1".into(),
            ],
            bootstrap: vec![],
            discovery: true,
            max_inbound_connections: 64,
            max_connections_per_ip: 8,
            max_pending_inbound: 32,
            max_pending_inbound_per_ip: 4,
            handshake_timeout_ms: 5_000,
            min_outbound_peers: 2,
            max_tx_msgs_per_sec_per_peer: 5000,
            max_txs_per_sec_per_peer: 20_000,
            max_tx_bytes_per_sec_per_peer: 16 * 1024 * 1024,
            max_consensus_msgs_per_sec_per_peer: 500,
            max_sync_requests_per_sec_per_peer: 20,
            ban_threshold: -100.0,
            ban_duration_secs: 600,
            score_half_life_secs: 600,
            ip_ban_threshold: -300.0,
            ip_ban_duration_secs: 600,
            gossip_author_signatures: false,
            tx_mesh_n: 6,
            tx_batch_ms: 10,
        }
    }
}

impl P2pSection {
    fn validate_limits(&self) -> Result<(), String> {
        let p = self;
        for (key, value, example) in [
            (
                "p2p.max_pending_inbound",
                u64::from(p.max_pending_inbound),
                "32",
            ),
            (
                "p2p.max_pending_inbound_per_ip",
                u64::from(p.max_pending_inbound_per_ip),
                "4",
            ),
            (
                "p2p.max_txs_per_sec_per_peer",
                u64::from(p.max_txs_per_sec_per_peer),
                "20000",
            ),
            (
                "p2p.max_tx_bytes_per_sec_per_peer",
                u64::from(p.max_tx_bytes_per_sec_per_peer),
                "16777216",
            ),
        ] {
            if value == 0 {
                return Err(format!("{key} must be at least 1, e.g. {example}"));
            }
        }
        if p.handshake_timeout_ms < 100 {
            return Err(format!(
                "p2p.handshake_timeout_ms = {} must be at least 100 (a handshake takes a few round trips); 5000 is the default",
                p.handshake_timeout_ms
            ));
        }
        if !(p.ip_ban_threshold < 0.0 && p.ip_ban_threshold.is_finite()) {
            return Err(format!(
                "p2p.ip_ban_threshold = {} must be negative, e.g. -300 (three peer bans' worth)",
                p.ip_ban_threshold
            ));
        }
        Ok(())
    }

    /// Copies the knobs of issue 17 (pending-handshake caps, outbound peers, per-IP
    /// accounting, tx rates counted in txs and bytes) into the network configuration.
    pub fn apply_limits(&self, net: &mut tally_p2p::NetworkConfig) {
        net.max_pending_inbound = self.max_pending_inbound;
        net.max_pending_inbound_per_ip = self.max_pending_inbound_per_ip;
        net.handshake_timeout = std::time::Duration::from_millis(self.handshake_timeout_ms);
        net.min_outbound_peers = self.min_outbound_peers;
        net.max_txs_per_sec_per_peer = self.max_txs_per_sec_per_peer;
        net.max_tx_bytes_per_sec_per_peer = self.max_tx_bytes_per_sec_per_peer;
        net.ip_ban_threshold = self.ip_ban_threshold;
        net.ip_ban_duration = std::time::Duration::from_secs(self.ip_ban_duration_secs);
    }
}

impl Default for RpcSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:26657".into(),
            max_body_bytes: 64 * 1024,
            timeout_ms: 10_000,
            max_event_streams: 256,
            header_read_timeout_ms: 5_000,
            keep_alive: true,
            max_connections: 512,
            max_connections_per_ip: 128,
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:26660".into(),
            max_connections: 64,
            max_connections_per_ip: 16,
        }
    }
}

impl Default for MempoolSection {
    fn default() -> Self {
        let d = crate::mempool::MempoolConfig::default();
        Self {
            max_txs: d.max_txs,
            max_bytes: d.max_bytes,
            max_nonce_gap: d.max_nonce_gap,
            max_per_sender: d.max_per_sender,
            ttl_secs: d.ttl.as_secs(),
            reuse_verified_signatures: true,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            block_cache_mb: 64,
            write_buffer_mb: 16,
            write_buffer_total_mb: 64,
            tree_cache_levels: ledger::store::rocks::DEFAULT_TREE_CACHE_LEVELS,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// The layout of a node's home directory.
#[derive(Clone, Debug)]
pub struct Home(pub PathBuf);

impl Home {
    pub fn config_file(&self) -> PathBuf {
        self.0.join("config/node.toml")
    }
    pub fn genesis_file(&self) -> PathBuf {
        self.0.join("config/genesis.json")
    }
    pub fn node_key_file(&self) -> PathBuf {
        self.0.join("config/node_key.json")
    }
    pub fn db_dir(&self) -> PathBuf {
        self.0.join("data/db")
    }
    pub fn resolve(&self, relative: &str) -> PathBuf {
        let p = Path::new(relative);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }
}

impl NodeConfig {
    /// Reads the file, applies `TALLY_*` overrides from `env`, validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot be read: {e}; run `tallyd init --home <dir>` to create it"),
        })?;
        Self::parse(&file, &text, env)
    }

    pub fn parse(
        file: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.into(),
            message,
        };
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| err(describe_toml_error(&e)))?;
        apply_env(&mut value, env).map_err(err)?;
        let config: NodeConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| err(describe_toml_error(&e)))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.rpc.listen.parse::<SocketAddr>().map_err(|_| {
            format!(
                "rpc.listen = \"{}\" is not a socket address; use host:port, e.g. \"127.0.0.1:26657\"",
                self.rpc.listen
            )
        })?;
        if self.metrics.enabled {
            self.metrics.listen.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "metrics.listen = \"{}\" is not a socket address; use host:port, e.g. \"127.0.0.1:26660\"",
                    self.metrics.listen
                )
            })?;
        }
        for (key, list) in [
            ("p2p.listen", &self.p2p.listen),
            ("p2p.bootstrap", &self.p2p.bootstrap),
        ] {
            for (i, a) in list.iter().enumerate() {
                a.parse::<tally_p2p::Multiaddr>().map_err(|e| {
                    format!(
                        "{key}[{i}] = \"{a}\" is not a multiaddr ({e}); use e.g. \"/ip4/127.0.0.1/tcp/26656\""
                    )
                })?;
            }
        }
        if self.p2p.listen.is_empty() {
            return Err(
                "p2p.listen is empty; give at least one address, e.g. [\"/ip4/0.0.0.0/tcp/26656\"]"
                    .into(),
            );
        }
        if !(1..=12).contains(&self.p2p.tx_mesh_n) {
            return Err("p2p.tx_mesh_n must be in 1..=12, e.g. 6".into());
        }
        if self.p2p.tx_batch_ms > 1000 {
            return Err(
                "p2p.tx_batch_ms must be at most 1000 (a batch delays its txs); 10 is the default"
                    .into(),
            );
        }
        if self.p2p.ban_threshold >= 0.0 {
            return Err("p2p.ban_threshold must be negative, e.g. -100".into());
        }
        self.p2p.validate_limits()?;
        if self.rpc.max_body_bytes < 1024 {
            return Err("rpc.max_body_bytes must be at least 1024".into());
        }
        validate_connection_limits(&self.rpc, &self.metrics)?;
        if self.storage.write_buffer_mb == 0
            || self.storage.write_buffer_total_mb < self.storage.write_buffer_mb
        {
            return Err(format!(
                "storage.write_buffer_mb ({}) must be at least 1 and at most storage.write_buffer_total_mb ({})",
                self.storage.write_buffer_mb, self.storage.write_buffer_total_mb
            ));
        }
        if self.storage.tree_cache_levels > ledger::store::rocks::MAX_TREE_CACHE_LEVELS {
            return Err(format!(
                "storage.tree_cache_levels ({}) must be at most {} (a sixth level would hold a million tree nodes)",
                self.storage.tree_cache_levels,
                ledger::store::rocks::MAX_TREE_CACHE_LEVELS
            ));
        }
        for (key, n) in [
            ("runtime.worker_threads", self.runtime.worker_threads),
            ("runtime.verify_threads", self.runtime.verify_threads),
        ] {
            if n > RuntimeSection::MAX_THREADS {
                return Err(format!(
                    "{key} = {n} is more than {}; use 0 (one per core) or the number of threads",
                    RuntimeSection::MAX_THREADS
                ));
            }
        }
        if self.mempool.max_txs == 0 || self.mempool.max_bytes == 0 {
            return Err("mempool.max_txs and mempool.max_bytes must be positive".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(format!(
                "log.format = \"{}\" must be \"text\" or \"json\"",
                self.log.format
            ));
        }
        Ok(())
    }

    /// The file's text. Keys in [`NEWER_KEYS`] are left out while they hold their
    /// default, so a node.toml this release writes with the defaults (`tallyd init`,
    /// `testnet init`, the rolling-upgrade harness, which runs the previous release on
    /// it) still reads on the previous release, which refuses unknown keys.
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).expect("config serializes");
        let defaults = toml::Table::try_from(NodeConfig::default()).expect("defaults serialize");
        for (section, key) in NEWER_KEYS {
            let default = defaults.get(section).and_then(|t| t.get(key));
            let mut emptied = false;
            if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                if t.get(key) == default {
                    t.remove(key);
                }
                emptied = t.is_empty();
            }
            // A section that is new as a whole ([runtime]) goes too when all of it is
            // default: the previous release refuses an unknown table.
            if emptied {
                table.remove(section);
            }
        }
        toml::to_string_pretty(&table).expect("config serializes")
    }
}

/// The connection caps and the head timeout of the RPC and metrics servers.
fn validate_connection_limits(rpc: &RpcSection, metrics: &MetricsSection) -> Result<(), String> {
    if !(100..=60_000).contains(&rpc.header_read_timeout_ms) {
        return Err(format!(
            "rpc.header_read_timeout_ms = {} must be between 100 and 60000 (a slow client holds a connection this long); 5000 is the default",
            rpc.header_read_timeout_ms
        ));
    }
    for (section, total, per_ip, defaults) in [
        (
            "rpc",
            rpc.max_connections,
            rpc.max_connections_per_ip,
            (512, 128),
        ),
        (
            "metrics",
            metrics.max_connections,
            metrics.max_connections_per_ip,
            (64, 16),
        ),
    ] {
        if total == 0 || per_ip == 0 || per_ip > total {
            return Err(format!(
                "{section}.max_connections_per_ip ({per_ip}) must be at least 1 and at most {section}.max_connections ({total}); by default they are {} and {}",
                defaults.1, defaults.0
            ));
        }
    }
    Ok(())
}

fn describe_toml_error(e: &toml::de::Error) -> String {
    // toml's message already names the key ("unknown field `x`", "invalid type ... for key
    // `rpc.listen`"); keep it on one line.
    e.message().replace('\n', " ").trim().to_string()
        + &e.span()
            .map(|s| format!(" (at byte {})", s.start))
            .unwrap_or_default()
}

/// Applies `TALLY_<SECTION>_<KEY>=value` (or `TALLY_<KEY>` for top-level keys) for keys
/// that exist in the schema; other `TALLY_*` variables (the wallet's, the tests') are
/// ignored. Values parse as TOML when they can (numbers, booleans, arrays), else as
/// strings; for list keys a comma-separated string becomes a list.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), String> {
    let schema = toml::Table::try_from(NodeConfig::default()).expect("defaults serialize");
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("TALLY_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let (section, key) = match rest.split_once('_') {
            Some((s, k)) if schema.get(s).is_some_and(toml::Value::is_table) => {
                (Some(s.to_string()), k.to_string())
            }
            _ => (None, rest.clone()),
        };
        let template = match &section {
            Some(s) => schema[s.as_str()].as_table().and_then(|t| t.get(&key)),
            None => schema.get(&key).filter(|v| !v.is_table()),
        };
        let Some(template) = template else { continue };
        let value = parse_env_value(template, &raw).ok_or_else(|| {
            format!(
                "environment variable {name}={raw:?} is not a valid {}",
                type_name(template)
            )
        })?;
        let target = match section {
            Some(s) => table
                .entry(s)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("{name}: the config's section is not a table"))?,
            None => &mut *table,
        };
        target.insert(key, value);
    }
    Ok(())
}

fn parse_env_value(template: &toml::Value, raw: &str) -> Option<toml::Value> {
    use toml::Value as V;
    match template {
        V::String(_) => Some(V::String(raw.to_string())),
        V::Integer(_) => raw.trim().parse().ok().map(V::Integer),
        V::Float(_) => raw.trim().parse().ok().map(V::Float),
        V::Boolean(_) => raw.trim().parse().ok().map(V::Boolean),
        V::Array(_) => Some(V::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| V::String(s.to_string()))
                .collect(),
        )),
        _ => None,
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "string",
        toml::Value::Integer(_) => "integer",
        toml::Value::Float(_) => "number",
        toml::Value::Boolean(_) => "boolean (true/false)",
        toml::Value::Array(_) => "comma-separated list",
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(
            "node.toml",
            text,
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        )
    }

    /// `[runtime]`: 0 is one thread per core, a number is that many, the env names map,
    /// and an absurd count is refused naming the key.
    #[test]
    fn runtime_threads_default_to_the_cores_and_follow_the_env() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let d = parse("", &[]).unwrap().runtime;
        assert_eq!((d.workers(), d.verifiers()), (cores, cores));
        let c = parse(
            "",
            &[
                ("TALLY_RUNTIME_WORKER_THREADS", "1"),
                ("TALLY_RUNTIME_VERIFY_THREADS", "3"),
            ],
        )
        .unwrap()
        .runtime;
        assert_eq!((c.workers(), c.verifiers()), (1, 3));
        let e = parse("[runtime]\nverify_threads = 100000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.verify_threads"), "{e}");
    }

    #[test]
    fn defaults_round_trip_and_env_overrides() {
        let text = NodeConfig::default().to_toml();
        assert_eq!(parse(&text, &[]).unwrap(), NodeConfig::default());
        let c = parse(
            "",
            &[
                ("TALLY_RPC_LISTEN", "127.0.0.5:1"),
                (
                    "TALLY_P2P_BOOTSTRAP",
                    "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.2/tcp/2",
                ),
                ("TALLY_MEMPOOL_MAX_TXS", "7"),
                ("TALLY_MONIKER", "x"),
                ("TALLY_PASSWORD", "ignored: not a node key"),
                ("TALLY_NODE", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.rpc.listen, "127.0.0.5:1");
        assert_eq!(c.p2p.bootstrap.len(), 2);
        assert_eq!(c.mempool.max_txs, 7);
        assert_eq!(c.moniker, "x");
    }

    /// A config of defaults is written without the keys the previous release does not
    /// know (it refuses unknown keys: the rolling-upgrade harness runs it on this file);
    /// set otherwise, they are written, and the environment sets them either way.
    #[test]
    fn newer_keys_are_written_only_when_not_default() {
        let text = NodeConfig::default().to_toml();
        assert!(!text.contains("compact_proposals"), "{text}");
        let off = parse("", &[("TALLY_CONSENSUS_COMPACT_PROPOSALS", "false")]).unwrap();
        assert!(!off.consensus.compact_proposals);
        let text = off.to_toml();
        assert!(text.contains("compact_proposals = false"), "{text}");
        assert_eq!(parse(&text, &[]).unwrap(), off);
    }

    /// The keys of the node.toml that `tallyd init` of the release in upgrade/BASE
    /// writes. A default node.toml of this tree must hold no others: the rolling-upgrade
    /// harness runs that release on it, and it refuses unknown keys. A new key goes into
    /// [`NEWER_KEYS`]; when upgrade/BASE moves on, this list follows its node.toml.
    const PREVIOUS_RELEASE_KEYS: [&str; 48] = [
        "consensus.timeout_commit_ms",
        "consensus.validator_key",
        "log.format",
        "log.level",
        "mempool.max_bytes",
        "mempool.max_nonce_gap",
        "mempool.max_per_sender",
        "mempool.max_txs",
        "mempool.reuse_verified_signatures",
        "mempool.ttl_secs",
        "metrics.enabled",
        "metrics.listen",
        "metrics.max_connections",
        "metrics.max_connections_per_ip",
        "moniker",
        "p2p.ban_duration_secs",
        "p2p.ban_threshold",
        "p2p.bootstrap",
        "p2p.discovery",
        "p2p.gossip_author_signatures",
        "p2p.handshake_timeout_ms",
        "p2p.ip_ban_duration_secs",
        "p2p.ip_ban_threshold",
        "p2p.listen",
        "p2p.max_connections_per_ip",
        "p2p.max_consensus_msgs_per_sec_per_peer",
        "p2p.max_inbound_connections",
        "p2p.max_pending_inbound",
        "p2p.max_pending_inbound_per_ip",
        "p2p.max_sync_requests_per_sec_per_peer",
        "p2p.max_tx_bytes_per_sec_per_peer",
        "p2p.max_tx_msgs_per_sec_per_peer",
        "p2p.max_txs_per_sec_per_peer",
        "p2p.min_outbound_peers",
        "p2p.score_half_life_secs",
        "p2p.tx_batch_ms",
        "p2p.tx_mesh_n",
        "rpc.header_read_timeout_ms",
        "rpc.keep_alive",
        "rpc.listen",
        "rpc.max_body_bytes",
        "rpc.max_connections",
        "rpc.max_connections_per_ip",
        "rpc.max_event_streams",
        "rpc.timeout_ms",
        "storage.block_cache_mb",
        "storage.write_buffer_mb",
        "storage.write_buffer_total_mb",
    ];

    #[test]
    fn a_default_node_toml_reads_on_the_previous_release() {
        let table: toml::Table = NodeConfig::default().to_toml().parse().unwrap();
        let mut keys = Vec::new();
        for (name, value) in &table {
            match value {
                toml::Value::Table(t) => keys.extend(t.keys().map(|k| format!("{name}.{k}"))),
                _ => keys.push(name.clone()),
            }
        }
        let unknown: Vec<_> = keys
            .iter()
            .filter(|k| !PREVIOUS_RELEASE_KEYS.contains(&k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "the previous release refuses {unknown:?}: add them to NEWER_KEYS"
        );
        // Written when not default, and read back.
        let threads = parse("", &[("TALLY_RUNTIME_WORKER_THREADS", "1")]).unwrap();
        let text = threads.to_toml();
        assert!(
            text.contains("[runtime]") && text.contains("worker_threads = 1"),
            "{text}"
        );
        assert_eq!(parse(&text, &[]).unwrap(), threads);
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = parse("[rpc]\nlisten = \"nope\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("node.toml: rpc.listen = \"nope\" is not a socket address"),
            "{e}"
        );
        let e = parse("[rpc]\nlistn = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `listn`"), "{e}");
        let e = parse("", &[("TALLY_MEMPOOL_MAX_TXS", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TALLY_MEMPOOL_MAX_TXS") && e.contains("integer"),
            "{e}"
        );
        let e = parse("[rpc]\nmax_connections_per_ip = 600\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rpc.max_connections_per_ip (600)")
                && e.contains("rpc.max_connections (512)"),
            "{e}"
        );
        let e = parse("", &[("TALLY_RPC_HEADER_READ_TIMEOUT_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rpc.header_read_timeout_ms = 0"), "{e}");
        let e = parse("[metrics]\nmax_connections = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.max_connections_per_ip"), "{e}");
        let e = parse("[p2p]\nbootstrap = [\"127.0.0.1:5\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p2p.bootstrap[0]") && e.contains("multiaddr"),
            "{e}"
        );
        let e = parse("", &[("TALLY_STORAGE_TREE_CACHE_LEVELS", "6")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.tree_cache_levels (6) must be at most 5"),
            "{e}"
        );
        let c = parse("", &[("TALLY_STORAGE_TREE_CACHE_LEVELS", "4")]).unwrap();
        assert_eq!(c.storage.tree_cache_levels, 4);
    }
    #[test]
    fn p2p_limits_name_the_key_and_reach_the_network_config() {
        for (text, key) in [
            (
                "[p2p]\nmax_pending_inbound_per_ip = 0\n",
                "p2p.max_pending_inbound_per_ip",
            ),
            (
                "[p2p]\nmax_pending_inbound = 0\n",
                "p2p.max_pending_inbound",
            ),
            (
                "[p2p]\nmax_txs_per_sec_per_peer = 0\n",
                "p2p.max_txs_per_sec_per_peer",
            ),
            (
                "[p2p]\nhandshake_timeout_ms = 0\n",
                "p2p.handshake_timeout_ms",
            ),
            ("[p2p]\nip_ban_threshold = 5.0\n", "p2p.ip_ban_threshold"),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = parse("", &[("TALLY_P2P_IP_BAN_DURATION_SECS", "7")]).unwrap();
        let mut net = tally_p2p::NetworkConfig::default();
        c.p2p.apply_limits(&mut net);
        assert_eq!(net.ip_ban_duration, std::time::Duration::from_secs(7));
        assert_eq!(net.max_txs_per_sec_per_peer, 20_000);
        assert_eq!(net.max_pending_inbound_per_ip, 4);
        assert_eq!(net.handshake_timeout, std::time::Duration::from_secs(5));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// configs/node.example.toml parses to the defaults and documents every key.
    #[test]
    fn example_config_is_complete_and_parses() {
        let text = include_str!("../../configs/node.example.toml");
        let parsed = NodeConfig::parse("node.example.toml", text, std::iter::empty()).unwrap();
        assert_eq!(
            parsed,
            NodeConfig::default(),
            "example values must be the defaults"
        );
        let example: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(NodeConfig::default()).unwrap();
        for (section, value) in &defaults {
            match value.as_table() {
                Some(keys) => {
                    for key in keys.keys() {
                        assert!(
                            example.get(section).and_then(|s| s.get(key)).is_some(),
                            "configs/node.example.toml lacks {section}.{key}"
                        );
                    }
                }
                None => assert!(example.contains_key(section), "example lacks {section}"),
            }
        }
    }

    #[test]
    fn example_genesis_is_valid() {
        let text = include_str!("../../configs/genesis.example.json");
        ledger::genesis::Genesis::from_bytes("genesis.example.json", text.as_bytes()).unwrap();
    }
}
