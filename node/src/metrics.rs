//! The node's registry and the metrics of the chain itself (height, blocks, consensus,
//! execution, storage, process). Subsystems register their own families next to their
//! code (`mempool/metrics.rs`, `rpc/metrics.rs`, the p2p crate).
//!
//! Names follow Prometheus conventions: counters are registered without `_total` and the
//! OpenMetrics encoder appends it to the sample; durations are `_seconds`, sizes `_bytes`,
//! both in base units. `configs/README.md` lists every family; `tests/it/metrics.rs`
//! checks the conventions and that every family the Grafana dashboard queries exists.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CfLabel {
    pub cf: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

/// Where a transaction's signature was verified (the `path` label of
/// `tally_tx_signature_verifications_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyPath {
    /// `mempool::admission`: a tx from the RPC or from gossip (single or batched).
    Admission,
    /// Block execution (build or validate): a tx the mempool had not verified.
    Block,
    /// A synced block's txs, checked by the fetch task.
    Sync,
}

impl VerifyPath {
    pub const ALL: [VerifyPath; 3] = [VerifyPath::Admission, VerifyPath::Block, VerifyPath::Sync];

    pub fn as_str(self) -> &'static str {
        match self {
            VerifyPath::Admission => "admission",
            VerifyPath::Block => "block",
            VerifyPath::Sync => "sync",
        }
    }
}

/// Transaction signature verifications (k256, the floor of what a tx costs a node), by
/// where they happen. Clones share the counters.
#[derive(Clone, Default)]
pub struct TxSignatureMetrics {
    verifications: Family<PathLabel, Counter>,
}

impl TxSignatureMetrics {
    pub fn count(&self, path: VerifyPath, n: u64) {
        if n > 0 {
            self.verifications
                .get_or_create(&PathLabel {
                    path: path.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Verifications counted on `path` since start.
    pub fn get(&self, path: VerifyPath) -> u64 {
        self.verifications
            .get_or_create(&PathLabel {
                path: path.as_str(),
            })
            .get()
    }

    fn register(&self, r: &mut Registry) {
        for path in VerifyPath::ALL {
            let _ = self.get(path);
        }
        r.register(
            "tally_tx_signature_verifications",
            "Transaction signatures verified (k256), by path: admission (RPC and gossip), block (execution of txs the mempool had not verified), sync (fetched blocks)",
            self.verifications.clone(),
        );
    }
}

#[derive(Clone)]
pub struct ChainMetrics {
    pub height: Gauge,
    pub block_interval: Histogram,
    pub block_txs: Histogram,
    pub txs_committed: Counter,
    pub blocks_committed: Counter,
    pub round: Gauge,
    pub absent_validators: Gauge,
    pub halted: Gauge,
    /// Issue 21: the protocol of the next height, and the readiness for the next one.
    pub protocol: Gauge,
    pub upgrade_readiness: Gauge<f64, AtomicU64>,
    pub rounds_per_height: Histogram,
    /// The most txs this node's last proposal could carry (`chain::budget`).
    pub proposal_tx_cap: Gauge,
    /// Heights started before `timeout_commit` ended: every precommit was in and txs were
    /// waiting (`consensus.skip_timeout_commit_when_busy`).
    pub timeout_commit_skipped: Counter,
    pub execution: Histogram,
    pub commit_write: Histogram,
    pub evidence: Counter,
    pub catching_up: Gauge,
    pub sync_blocks: Counter,
    /// Blocks this node sent to peers in answer to their sync requests (counted by the
    /// router, which answers them).
    pub sync_blocks_served: Counter,
    pub sync_target: Gauge,
    pub db_size: Family<CfLabel, Gauge>,
    pub resident_memory: Gauge,
    /// A counter (`tally_process_cpu_seconds_total`): CPU time only grows, so `rate()`
    /// gives cores in use. It follows /proc by adding the difference at each sample.
    pub cpu_seconds: Counter<f64, AtomicU64>,
    pub open_fds: Gauge,
    pub start_time: Gauge<f64, AtomicU64>,
    pub build_info: Family<VersionLabel, Gauge>,
    /// Failures of this node's own store (shared with the mempool and the RPC).
    pub storage: StorageHealth,
    /// Transaction signature verifications (shared with the mempool's admission).
    pub tx_signatures: TxSignatureMetrics,
    /// The validator set and the staking state, refreshed by [`observe_staking`].
    pub staking: StakingMetrics,
}

/// Failures of the node's own store (disk, database): never a peer's fault. Each is
/// counted (`tally_storage_errors_total`), logged at error level (at most one line a
/// second, so a failing disk under load does not flood the log), and the last one is kept
/// for `GET /v1/status` (`storage_error`). Clones share the same record.
#[derive(Clone, Default)]
pub struct StorageHealth {
    errors: Counter,
    last: Arc<Mutex<StorageRecord>>,
}

#[derive(Default)]
struct StorageRecord {
    error: Option<String>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl StorageHealth {
    /// Reports a storage error that happened while `during`.
    pub fn report(&self, during: &str, error: &dyn std::fmt::Display) {
        self.errors.inc();
        let Ok(mut record) = self.last.lock() else {
            return;
        };
        let message = format!("{during}: {error}");
        if record
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::error!(
                error = %message,
                similar_since_last_line = record.unlogged,
                "storage error: this node's own disk or database failed (not a peer's fault); \
                 check the disk (full? failing?) and the data directory"
            );
            record.logged = Some(Instant::now());
            record.unlogged = 0;
        } else {
            record.unlogged += 1;
        }
        record.error = Some(message);
    }

    /// Storage errors reported since start.
    pub fn count(&self) -> u64 {
        self.errors.get()
    }

    /// The last storage error reported, with what the node was doing.
    pub fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|r| r.error.clone())
    }
}

impl ChainMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            height: Gauge::default(),
            block_interval: Histogram::new(exponential_buckets(0.05, 1.6, 14)),
            block_txs: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            txs_committed: Counter::default(),
            blocks_committed: Counter::default(),
            round: Gauge::default(),
            absent_validators: Gauge::default(),
            halted: Gauge::default(),
            protocol: Gauge::default(),
            upgrade_readiness: Gauge::default(),
            rounds_per_height: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 10.0]),
            proposal_tx_cap: Gauge::default(),
            timeout_commit_skipped: Counter::default(),
            execution: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            commit_write: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            evidence: Counter::default(),
            catching_up: Gauge::default(),
            sync_blocks: Counter::default(),
            sync_blocks_served: Counter::default(),
            sync_target: Gauge::default(),
            db_size: Family::default(),
            resident_memory: Gauge::default(),
            cpu_seconds: Counter::default(),
            open_fds: Gauge::default(),
            start_time: Gauge::default(),
            build_info: Family::default(),
            storage: StorageHealth::default(),
            tx_signatures: TxSignatureMetrics::default(),
            staking: StakingMetrics::default(),
        };
        if let Some(t) = process_start_time() {
            m.start_time.set(t);
        }
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register(
            "tally_block_height",
            "Height of the last committed block",
            m.height.clone(),
        );
        r.register(
            "tally_block_interval_seconds",
            "Time between consecutive committed blocks (header times)",
            m.block_interval.clone(),
        );
        r.register(
            "tally_block_txs",
            "Transactions per committed block",
            m.block_txs.clone(),
        );
        r.register(
            "tally_proposal_tx_cap",
            "Most txs this node's last proposal could carry: what the others can validate in 35% of the round's propose timeout at the cost per tx this node saw validating their recent proposals (block_max_txs until measured)",
            m.proposal_tx_cap.clone(),
        );
        r.register(
            "tally_timeout_commit_skipped",
            "Heights this node started before timeout_commit ended, because every validator's precommit for the height before was in and txs were waiting in its pool (consensus.skip_timeout_commit_when_busy)",
            m.timeout_commit_skipped.clone(),
        );
        r.register(
            "tally_txs_committed",
            "Transactions committed",
            m.txs_committed.clone(),
        );
        r.register(
            "tally_blocks_committed",
            "Blocks committed by this node",
            m.blocks_committed.clone(),
        );
        r.register(
            "tally_consensus_round",
            "Current consensus round",
            m.round.clone(),
        );
        r.register(
            "tally_engine_halted",
            "1 once consensus stopped because this node's store refused a block (disk full?); see storage_error / halted in /v1/status",
            m.halted.clone(),
        );
        r.register(
            "tally_protocol",
            "The protocol of the committed tip (1 or 2; issue 21)",
            m.protocol.clone(),
        );
        r.register(
            "tally_upgrade_readiness",
            "Share of the voting power (0 to 1) whose last block in the upgrade window signals the next protocol; 1 once its activation is recorded, 0 when there is none",
            m.upgrade_readiness.clone(),
        );
        r.register(
            "tally_consensus_absent_validators",
            "Validators not heard from for 2+ heights (their proposer turns get a short propose timeout)",
            m.absent_validators.clone(),
        );
        r.register(
            "tally_consensus_rounds_per_height",
            "Rounds needed to decide a height (1 = first round)",
            m.rounds_per_height.clone(),
        );
        r.register(
            "tally_block_execution_seconds",
            "Time to execute a block (validate or build)",
            m.execution.clone(),
        );
        r.register(
            "tally_block_commit_write_seconds",
            "Time to write a committed block (one synced RocksDB batch)",
            m.commit_write.clone(),
        );
        r.register(
            "tally_evidence",
            "Equivocation evidence seen",
            m.evidence.clone(),
        );
        r.register(
            "tally_sync_catching_up",
            "1 while the node is syncing blocks from peers",
            m.catching_up.clone(),
        );
        r.register(
            "tally_sync_blocks",
            "Blocks applied through sync",
            m.sync_blocks.clone(),
        );
        r.register(
            "tally_sync_blocks_served",
            "Blocks (with their commits) sent to peers in answer to their sync requests",
            m.sync_blocks_served.clone(),
        );
        r.register(
            "tally_sync_target_height",
            "Highest height proven by a valid commit while syncing (peers' claims alone do not count)",
            m.sync_target.clone(),
        );
        r.register(
            "tally_db_size_bytes",
            "RocksDB SST bytes per column family",
            m.db_size.clone(),
        );
        r.register(
            "tally_process_resident_memory_bytes",
            "Resident memory of tallyd",
            m.resident_memory.clone(),
        );
        r.register(
            "tally_process_cpu_seconds",
            "CPU time used by tallyd (user + system)",
            m.cpu_seconds.clone(),
        );
        r.register(
            "tally_process_open_fds",
            "Open file descriptors of tallyd",
            m.open_fds.clone(),
        );
        r.register(
            "tally_process_start_time_seconds",
            "Start time of tallyd since the Unix epoch (a change means a restart)",
            m.start_time.clone(),
        );
        r.register(
            "tally_storage_errors",
            "Failures of this node's own store (reads or writes), never blamed on peers",
            m.storage.errors.clone(),
        );
        m.tx_signatures.register(r);
        m.staking.register(r);
        r.register(
            "tally_build_info",
            "Always 1; the label carries the tallyd version",
            m.build_info.clone(),
        );
        m
    }

    /// Refreshes process figures from /proc (Linux); elsewhere they stay 0.
    pub fn sample_process(&self) {
        // VmRSS is in kB whatever the page size (statm counts pages, which are 16 KiB or
        // 64 KiB on some arm64 kernels).
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
            {
                self.resident_memory.set(kb * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the ")" of the command name; utime and stime are 14 and 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                    if let (Ok(u), Ok(s)) = (u.parse::<f64>(), s.parse::<f64>()) {
                        // Clock ticks; USER_HZ is 100 on every Linux ABI.
                        let total = (u + s) / 100.0;
                        let seen = self.cpu_seconds.get();
                        if total > seen {
                            self.cpu_seconds.inc_by(total - seen);
                        }
                    }
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
    }
}

/// The validator set of the next height and the staking state at the tip: what
/// [`observe_staking`] reads after each commit. Gauges, not counters: each is a value
/// of the state, read again (not added up) after a restart or a sync.
#[derive(Clone, Default)]
pub struct StakingMetrics {
    pub set_size: Gauge,
    pub set_power: Gauge,
    pub jailed: Gauge,
    pub slashes: Gauge,
    pub burned: Gauge,
}

impl StakingMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "tally_validator_set_size",
            "Validators in the set of the next height (protocol 1: the genesis set)",
            self.set_size.clone(),
        );
        r.register(
            "tally_validator_set_power",
            "Total voting power of the set of the next height",
            self.set_power.clone(),
        );
        r.register(
            "tally_validators_jailed",
            "Validators jailed (for equivocation or downtime) and not yet unjailed; 0 on protocol 1",
            self.jailed.clone(),
        );
        r.register(
            "tally_validator_slashes",
            "Punishments for equivocation recorded in the state (one per validator and height); 0 on protocol 1",
            self.slashes.clone(),
        );
        r.register(
            "tally_staking_burned",
            "Stake burned by slashing, in base units; 0 on protocol 1",
            self.burned.clone(),
        );
    }
}

/// Refreshes the staking gauges from the state committed at `height` (the tip): the set of
/// `height` + 1, the jailed validators, the punishments and the burned total. For the
/// chain host to call after each commit (and once at start, for the tip it opened). Cost
/// on protocol 2: one scan of the validator records and one of the evidence records,
/// as the end of every block already makes; protocol 1 reads nothing.
pub fn observe_staking<R: ledger::state::StateReader + ?Sized>(
    m: &StakingMetrics,
    genesis: &ledger::genesis::Genesis,
    store: &R,
    height: u64,
) -> Result<(), ledger::store::StoreError> {
    use ledger::staking;
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if crate::upgrade::protocol_at(store, &genesis.params, height + 1)? < ledger::types::PROTOCOL_2
    {
        m.set_size.set(gauge(genesis.validators.len() as u64));
        m.set_power.set(gauge(genesis.validators.total_power()));
        m.jailed.set(0);
        m.slashes.set(0);
        m.burned.set(0);
        return Ok(());
    }
    let set = staking::validator_set_at(store, height + 1)?;
    let jailed = staking::validator_records(store)?
        .iter()
        .filter(|(_, r)| r.jailed_until_height != 0)
        .count();
    m.set_size.set(gauge(set.len() as u64));
    m.set_power.set(gauge(set.total_power()));
    m.jailed.set(gauge(jailed as u64));
    m.slashes.set(gauge(staking::punishments(store)?));
    m.burned.set(gauge(staking::burned(store)?));
    Ok(())
}

/// Start of this process in seconds since the Unix epoch, from /proc (boot time plus the
/// process's start in clock ticks after boot) as Prometheus's own process collector does:
/// no wall-clock read, and the value is the same however late the registry is built.
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Field 22 of stat, the 20th after the command name.
    let ticks = rest.split_whitespace().nth(19)?.parse::<f64>().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(btime + ticks / 100.0)
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# encoding failed\n# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use ledger::store::memory::MemStore;

    use super::*;
    use crate::rpc::staking::test_chain::{self, Chain, GENESIS_POWER, PER_POWER};

    fn values(m: &StakingMetrics) -> [i64; 5] {
        [
            m.set_size.get(),
            m.set_power.get(),
            m.jailed.get(),
            m.slashes.get(),
            m.burned.get(),
        ]
    }

    #[test]
    fn staking_gauges_follow_a_bond_and_a_jail() {
        let g = Arc::new(test_chain::genesis(2, 4, 6));
        let c = Chain::over(g.clone(), Arc::new(MemStore::new(&g).unwrap()), 6);
        let mut registry = Registry::default();
        let m = ChainMetrics::register(&mut registry).staking;
        let observe = || {
            observe_staking(&m, &g, c.store.as_ref(), c.height()).unwrap();
            values(&m)
        };
        let p = GENESIS_POWER as i64;
        assert_eq!(observe(), [4, 4 * p, 0, 0, 0]);
        // A bond in block 1 joins the set of height 3: seen once block 2 is committed.
        c.step(vec![c.bond(4, 4, 700)], &[]);
        assert_eq!(observe(), [4, 4 * p, 0, 0, 0]);
        c.empty_blocks(1);
        assert_eq!(observe(), [5, 4 * p + 7, 0, 0, 0]);
        // Validator 0 equivocated at height 1, punished in block 3: jailed and slashed at
        // once, out of the set of height 5.
        c.step(vec![], &[c.equivocation(0, 1)]);
        let burned = (GENESIS_POWER * PER_POWER) as i64 * i64::from(test_chain::SLASH_BPS) / 10_000;
        assert_eq!(observe(), [5, 4 * p + 7, 1, 1, burned]);
        c.empty_blocks(1);
        assert_eq!(observe(), [4, 3 * p + 7, 1, 1, burned]);
        let text = encode(&registry);
        for line in [
            "tally_validator_set_size 4",
            "tally_validators_jailed 1",
            "tally_validator_slashes 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn protocol_1_shows_the_genesis_set_and_nothing_jailed() {
        let g = test_chain::genesis(1, 3, 2);
        let store = MemStore::new(&g).unwrap();
        let m = StakingMetrics::default();
        m.jailed.set(7);
        observe_staking(&m, &g, &store, 0).unwrap();
        assert_eq!(values(&m), [3, 3 * GENESIS_POWER as i64, 0, 0, 0]);
    }
}
