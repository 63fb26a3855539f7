//! `make bench`: ledger throughput as ratios to this machine's raw k256 verify rate,
//! measured in the same run (absolute numbers on a shared machine are noise; ratios are
//! what the targets are stated in).
//!
//! Prints: raw verifications/s on one core (measured again before each size, since the
//! machine's load drifts); check + apply (signatures verified) and apply with signatures
//! pre-verified, each with 10k and 1M accounts in RocksDB, blocks of 1,000 transfers
//! committed with one synced write batch each, for each state tree configuration
//! (`ROWS`): the rows of one store alternate block by block, and every store (`stores`,
//! each with its own RocksDB options) executes every block; and the share of the
//! pre-verified time spent executing (the rest is the commit). `TALLY_BENCH_ACCOUNTS=N`
//! runs one size.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ledger::block::{assemble, BlockTemplate};
use ledger::codec::encode;
use ledger::crypto::Keypair;
use ledger::exec::{
    build_body, execute_block, set_signature_checks, ExecContext, SignatureChecks, Signatures,
};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::sha256;
use ledger::state::{set_tree_writer, TreeWriter};
use ledger::store::rocks::{RocksConfig, RocksStore, RocksTuning};
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::*;
use ledger::Hash;

const CHAIN: &str = "tally-bench";
const BLOCK_TXS: usize = 1_000;
const SENDERS: usize = 2_000;

fn raw_verify_rate() -> f64 {
    let key = Keypair::from_secret_bytes(&sha256(b"bench-raw")).expect("valid key");
    let msgs: Vec<(Vec<u8>, SignatureBytes)> = (0..256u32)
        .map(|i| {
            let m = i.to_le_bytes().to_vec();
            let s = key.sign(&m);
            (m, s)
        })
        .collect();
    let pk = key.public_key();
    // Warm up, then count for a fixed wall time.
    for (m, s) in &msgs {
        ledger::crypto::verify(&pk, m, s).expect("valid");
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        for (m, s) in &msgs {
            ledger::crypto::verify(&pk, m, s).expect("valid");
        }
        n += msgs.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Setup {
    _dirs: Vec<tempfile::TempDir>,
    stores: Vec<RocksStore>,
    genesis: Genesis,
    senders: Vec<Keypair>,
    addresses: Vec<Address>,
    validator: Keypair,
}

fn setup(accounts: usize, configs: Vec<RocksConfig>) -> Setup {
    let t = Instant::now();
    let validator = Keypair::from_secret_bytes(&sha256(b"bench-validator")).expect("key");
    let senders: Vec<Keypair> = (0..SENDERS)
        .map(|i| {
            Keypair::from_secret_bytes(&sha256(format!("bench-sender-{i}").as_bytes()))
                .expect("key")
        })
        .collect();
    let mut addresses: Vec<Address> = senders.iter().map(Keypair::address).collect();
    let mut i = 0u64;
    while addresses.len() < accounts {
        let mut a = [0u8; 20];
        a.copy_from_slice(&sha256(&i.to_le_bytes())[..20]);
        addresses.push(a);
        i += 1;
    }
    let file = GenesisFile {
        chain_id: CHAIN.into(),
        genesis_time_ms: 0,
        params: Params {
            block_max_txs: BLOCK_TXS as u32,
            ..Params::default()
        },
        validators: vec![GenesisValidator {
            name: "v".into(),
            pubkey: hex::encode(validator.public_key()),
            power: 1,
            operator: None,
        }],
        accounts: addresses
            .iter()
            .map(|a| GenesisAccount {
                address: hex::encode(a),
                balance: 1_000_000_000,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&file).expect("json");
    let genesis = Genesis::from_bytes("bench-genesis.json", &bytes).expect("genesis");
    let dirs: Vec<tempfile::TempDir> = configs
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let stores = dirs
        .iter()
        .zip(&configs)
        .map(|(dir, config)| RocksStore::open_with(dir.path(), &genesis, config).expect("open"))
        .collect();
    eprintln!(
        "  set up {accounts} accounts in {} RocksDB store(s) in {:.1}s",
        configs.len(),
        t.elapsed().as_secs_f64()
    );
    Setup {
        _dirs: dirs,
        stores,
        genesis,
        senders,
        addresses,
        validator,
    }
}

/// Signs `blocks` blocks worth of transfers from the senders to random existing accounts.
fn make_txs(s: &Setup, blocks: usize, first_nonce: u64) -> Vec<Vec<SignedTx>> {
    let mut out = Vec::with_capacity(blocks);
    let mut seed = 0x9e3779b97f4a7c15u64 ^ first_nonce;
    let mut next = || {
        // xorshift: cheap deterministic recipient choice.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let per_sender_per_block = BLOCK_TXS / SENDERS.min(BLOCK_TXS);
    let mut nonce_of = vec![first_nonce; s.senders.len()];
    for b in 0..blocks {
        let mut txs = Vec::with_capacity(BLOCK_TXS);
        for j in 0..BLOCK_TXS {
            // Rotate senders across blocks so each block has distinct senders.
            let k = (b * BLOCK_TXS + j / per_sender_per_block.max(1)) % s.senders.len();
            let to = s.addresses[(next() % s.addresses.len() as u64) as usize];
            let sender = &s.senders[k];
            txs.push(sender.sign_tx(Tx {
                chain_id: CHAIN.into(),
                from: sender.public_key(),
                nonce: nonce_of[k],
                fee: 1,
                payload: Payload::Transfer {
                    to,
                    amount: 1 + j as u64,
                },
            }));
            nonce_of[k] += 1;
        }
        out.push(txs);
    }
    out
}

/// Executes and commits blocks like a follower, each block on every store; on store `s`
/// block `i` runs under the `i % n`-th of the `n` rows of `s` (alternating, so every row
/// sees the same machine load and store growth): returns each row's rate.
fn run(s: &Setup, blocks: &[Vec<SignedTx>], preverified: bool, rows: &[Row]) -> Vec<Rate> {
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &s.genesis.params,
        validators: &s.genesis.validators,
    };
    let set = s.genesis.validator_set();
    // Blocks are assembled (by a "proposer") outside the timed section.
    let mut total = vec![Duration::ZERO; rows.len()];
    let mut cpu = vec![Duration::ZERO; rows.len()];
    let mut execute = vec![Duration::ZERO; rows.len()];
    let mut count = vec![0usize; rows.len()];
    for (i, txs) in blocks.iter().cloned().enumerate() {
        let ids: HashSet<Hash> = txs.iter().map(|t| sha256(&encode(t))).collect();
        let tip = s.stores[0].tip().expect("tip");
        let height = tip.height + 1;
        let known = |id: &Hash| ids.contains(id);
        let body = build_body(
            &s.stores[0],
            ctx,
            s.validator.address(),
            txs,
            &Signatures::Cached(&known),
        )
        .expect("build");
        assert!(
            body.rejected.is_empty(),
            "bench txs must be valid: {:?}",
            &body.rejected[..1]
        );
        let block = assemble(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                time_ms: height,
                prev_hash: tip.block_hash,
                validators_hash: set.hash(),
                proposer: s.validator.address(),
                last_commit: None,
            },
            &body,
        );
        let commit = Commit {
            height,
            round: 0,
            block_hash: block.hash(),
            signatures: vec![],
        };
        // The stores take turns going first.
        let mut order: Vec<usize> = (0..s.stores.len()).collect();
        order.rotate_left(i % s.stores.len());
        for store in order {
            let mine: Vec<usize> = (0..rows.len())
                .filter(|&r| rows[r].store == store)
                .collect();
            let r = mine[i % mine.len()];
            set_tree_writer(rows[r].writer);
            set_signature_checks(rows[r].checks);
            let db = &s.stores[store];
            db.set_tree_cache_read_levels(rows[r].cache_levels);
            let start = Instant::now();
            let cpu_start = thread_cpu();
            let sigs = if preverified {
                Signatures::Cached(&known)
            } else {
                Signatures::Verify
            };
            let outcome = execute_block(db, ctx, &block, &sigs).expect("valid block");
            let executed = start.elapsed();
            let tx_ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
            db.commit_block(&block, &commit, &outcome.update, &tx_ids)
                .expect("commit");
            total[r] += start.elapsed();
            cpu[r] += thread_cpu().saturating_sub(cpu_start);
            execute[r] += executed;
            count[r] += block.txs.len();
        }
    }
    (0..rows.len())
        .map(|r| Rate {
            tx_per_s: count[r] as f64 / total[r].as_secs_f64(),
            execute_share: execute[r].as_secs_f64() / total[r].as_secs_f64(),
            cpu_per_block: cpu[r] / (count[r] / BLOCK_TXS).max(1) as u32,
        })
        .collect()
}

/// This process's resident set size, from /proc (Linux).
fn rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.trim_start_matches("VmRSS:").trim().to_string())
}

/// A measured rate, the share of its time spent executing (the rest is the commit), and
/// the CPU time of this thread per block (which, unlike the rate, does not count waiting
/// for a core or for the disk).
struct Rate {
    tx_per_s: f64,
    execute_share: f64,
    cpu_per_block: Duration,
}

/// The CPU time this thread has run (Linux: /proc/thread-self/schedstat, in ns).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The `state` family's compaction so far: (CPU seconds of compaction and flush merges,
/// GB written), from the "Sum" row of RocksDB's compaction statistics.
fn compaction(store: &RocksStore) -> Option<(f64, f64)> {
    let stats = store.compaction_stats("state")?;
    let mut lines = stats.lines().skip_while(|l| !l.starts_with("Level"));
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let sum: Vec<&str> = lines
        .find(|l| l.trim_start().starts_with("Sum"))?
        .split_whitespace()
        .collect();
    let column = |name: &str| -> Option<f64> {
        let i = header.iter().position(|h| *h == name)?;
        sum.get(i)?.parse().ok()
    };
    Some((column("CompMergeCPU(sec)")?, column("Write(GB)")?))
}

/// One configuration measured: a store (`stores`), a tree writer and how many resident
/// tree levels answer reads.
struct Row {
    name: &'static str,
    store: usize,
    writer: TreeWriter,
    cache_levels: usize,
    checks: SignatureChecks,
}

/// The stores, each with its own RocksDB options, all fed the same blocks: the options
/// before issue 22's RocksDB tuning ([`RocksTuning::previous`]) twice, and the defaults.
/// The second store is a control for the third: its one row is measured on every block,
/// as the defaults' row is, where the first store's rows take turns (each sees a third of
/// the blocks, never one whose first store ran jmt's writer); in three runs at 1M accounts
/// the control used 4-8% more CPU per block than the first store's 5-level row with the
/// same options, so the tuned row is compared with the control.
fn stores() -> Vec<RocksConfig> {
    let previous = RocksConfig {
        tuning: RocksTuning::previous(),
        ..RocksConfig::default()
    };
    vec![previous.clone(), previous, RocksConfig::default()]
}

/// The state tree's levers (issue 22, lever 4): jmt's own writer without the node cache
/// is the code before the change, four resident levels the default before the fifth, and
/// the first three run RocksDB's options from before their tuning; the row named by
/// `DEFAULT_ROW` is what nodes run.
const ROWS: [Row; 5] = [
    Row {
        name: "jmt writer, no node cache",
        store: 0,
        writer: TreeWriter::Jmt,
        cache_levels: 0,
        checks: SignatureChecks::First,
    },
    Row {
        name: "batch writer + 4 levels",
        store: 0,
        writer: TreeWriter::Batch,
        cache_levels: 4,
        checks: SignatureChecks::First,
    },
    Row {
        name: "batch writer + 5 levels",
        store: 0,
        writer: TreeWriter::Batch,
        cache_levels: 5,
        checks: SignatureChecks::First,
    },
    Row {
        name: "5 levels, every block (control)",
        store: 1,
        writer: TreeWriter::Batch,
        cache_levels: 5,
        checks: SignatureChecks::First,
    },
    Row {
        name: "5 levels + tuned RocksDB options",
        store: 2,
        writer: TreeWriter::Batch,
        cache_levels: 5,
        checks: SignatureChecks::First,
    },
];

/// One store with the default options, as a node runs it, where nothing else compacts
/// beside it (in the comparison above three stores do): when a block's signatures are
/// checked (issue 22), alternating block by block. The targets are read here.
const NODE_ROWS: [Row; 2] = [
    Row {
        name: "one store, checks first (before)",
        store: 0,
        writer: TreeWriter::Batch,
        cache_levels: 5,
        checks: SignatureChecks::First,
    },
    Row {
        name: "one store, checks ahead of apply (nodes)",
        store: 0,
        writer: TreeWriter::Batch,
        cache_levels: 5,
        checks: SignatureChecks::Ahead,
    },
];

/// The configuration nodes run (the targets): in `NODE_ROWS`.
const DEFAULT_ROW: usize = 1;

/// Measures `rows` on fresh stores made with `configs`: prints each row's rates, the
/// compaction and the resident nodes, and returns (row name, check + apply ratio,
/// pre-verified ratio).
fn measure(
    accounts: usize,
    configs: Vec<RocksConfig>,
    rows: &[Row],
    raw: f64,
) -> Vec<(&'static str, f64, f64)> {
    let s = setup(accounts, configs);
    let mut results = Vec::new();
    let blocks = 12 * rows.iter().filter(|r| r.store == 0).count();
    let warm_up = 2;
    let txs = make_txs(&s, warm_up + 2 * blocks, 0);
    eprintln!("  signed {} blocks of transfers", txs.len());
    let (warm, txs) = txs.split_at(warm_up);
    // Warm the OS page cache, RocksDB's block cache and the node cache first.
    run(&s, warm, true, rows);
    // Compaction so far is mostly the genesis import's; what follows is the blocks'.
    let compacted: Vec<Option<(f64, f64)>> = s.stores.iter().map(compaction).collect();
    let (a, b) = txs.split_at(blocks);
    let checked = run(&s, a, false, rows);
    let pre = run(&s, b, true, rows);
    for (Row { name, .. }, (checked, pre)) in rows.iter().zip(checked.iter().zip(&pre)) {
        println!(
            "{accounts:>9} accounts, {name:<40} check + apply {:>6.0} tx/s ({:.2}x)   pre-verified {:>6.0} tx/s ({:.2}x, {:.0}% executing, {:.1} ms CPU/block)",
            checked.tx_per_s,
            checked.tx_per_s / raw,
            pre.tx_per_s,
            pre.tx_per_s / raw,
            100.0 * pre.execute_share,
            pre.cpu_per_block.as_secs_f64() * 1e3,
        );
        results.push((*name, checked.tx_per_s / raw, pre.tx_per_s / raw));
    }
    for (i, (store, before)) in s.stores.iter().zip(&compacted).enumerate() {
        if let (Some((cpu, written)), Some((cpu_before, written_before))) =
            (compaction(store), before)
        {
            eprintln!(
                "  store {i}: state family compaction over the measured blocks {:.1} s CPU, {:.2} GB written ({cpu:.1} s, {written:.2} GB since the store was made)",
                cpu - cpu_before,
                written - written_before,
            );
        }
    }
    eprintln!(
        "  resident tree nodes: {} (5 levels); process RSS {} (all stores)",
        s.stores[0].tree_cache_len(),
        rss().unwrap_or_else(|| "unknown".into())
    );
    results
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    println!("Tally ledger benchmark (single thread; blocks of {BLOCK_TXS} transfers, synced RocksDB commits)");
    let raw = raw_verify_rate();
    println!("raw k256 verify, one core:                 {raw:>10.0} /s   (1.00x)");
    let mut results = Vec::new();
    // TALLY_BENCH_ACCOUNTS=1000000 measures one size only (for a profile);
    // TALLY_BENCH_COMPARE=0 skips the three-store comparison (the node's store only).
    let sizes: Vec<usize> = match std::env::var("TALLY_BENCH_ACCOUNTS") {
        Ok(n) => vec![n
            .parse()
            .expect("TALLY_BENCH_ACCOUNTS is a number of accounts")],
        Err(_) => vec![10_000, 1_000_000],
    };
    for &accounts in &sizes {
        let raw = if accounts == sizes[0] {
            raw
        } else {
            let again = raw_verify_rate();
            println!("raw k256 verify, one core, again:          {again:>10.0} /s   (1.00x for what follows)");
            again
        };
        if std::env::var("TALLY_BENCH_COMPARE").as_deref() != Ok("0") {
            measure(accounts, stores(), &ROWS, raw);
        }
        let node = measure(accounts, vec![RocksConfig::default()], &NODE_ROWS, raw);
        results.extend(node.into_iter().map(|(name, c, p)| (accounts, name, c, p)));
    }
    // Targets: the configuration nodes run.
    let default = NODE_ROWS[DEFAULT_ROW].name;
    let at = |n: usize| {
        results
            .iter()
            .find(|r| r.0 == n && r.1 == default)
            .map(|r| (r.2, r.3))
            .expect("measured")
    };
    if results.iter().all(|r| r.0 != 10_000) || results.iter().all(|r| r.0 != 1_000_000) {
        return;
    }
    let ((checked_10k, _), (checked_1m, pre_1m)) = (at(10_000), at(1_000_000));
    println!(
        "targets ({default}): check+apply >= 0.8x: {} ({checked_10k:.2}x at 10k, {checked_1m:.2}x at 1M); pre-verified apply >= 3x at 1M: {} ({pre_1m:.2}x)",
        if checked_10k.min(checked_1m) >= 0.8 { "met" } else { "MISSED" },
        if pre_1m >= 3.0 { "met" } else { "MISSED" },
    );
}
