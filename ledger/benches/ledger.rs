//! `make bench`: ledger throughput as ratios to this machine's raw k256 verify rate,
//! measured in the same run (absolute numbers on a shared machine are noise; ratios are
//! what the targets are stated in).
//!
//! Prints: raw verifications/s on one core (measured again before each size, since the
//! machine's load drifts); check + apply (signatures verified) and apply with signatures
//! pre-verified, each with 10k and 1M accounts in RocksDB, blocks of 1,000 transfers
//! committed with one synced write batch each, for each state tree configuration
//! (`CONFIGS`), alternating block by block; and the share of the pre-verified time spent
//! executing (the rest is the commit). `TALLY_BENCH_ACCOUNTS=N` runs one size.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ledger::block::{assemble, BlockTemplate};
use ledger::codec::encode;
use ledger::crypto::Keypair;
use ledger::exec::{build_body, execute_block, ExecContext, Signatures};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::sha256;
use ledger::state::{set_tree_writer, TreeWriter};
use ledger::store::rocks::RocksStore;
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
    _dir: tempfile::TempDir,
    store: RocksStore,
    genesis: Genesis,
    senders: Vec<Keypair>,
    addresses: Vec<Address>,
    validator: Keypair,
}

fn setup(accounts: usize) -> Setup {
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), &genesis).expect("open");
    eprintln!(
        "  set up {accounts} accounts in RocksDB in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Setup {
        _dir: dir,
        store,
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

/// Executes and commits blocks like a follower, block `i` under `CONFIGS[i % configs]`
/// (alternating, so every configuration sees the same machine load and store growth):
/// returns each configuration's rate.
fn run(s: &Setup, blocks: &[Vec<SignedTx>], preverified: bool, configs: usize) -> Vec<Rate> {
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &s.genesis.params,
        validators: &s.genesis.validators,
    };
    let set = s.genesis.validator_set();
    // Blocks are assembled (by a "proposer") outside the timed section.
    let mut total = vec![Duration::ZERO; configs];
    let mut execute = vec![Duration::ZERO; configs];
    let mut count = vec![0usize; configs];
    for (i, txs) in blocks.iter().cloned().enumerate() {
        let c = i % configs;
        let (_, writer, cache) = CONFIGS[c];
        set_tree_writer(writer);
        s.store.set_tree_cache_reads(cache);
        let ids: HashSet<Hash> = txs.iter().map(|t| sha256(&encode(t))).collect();
        let tip = s.store.tip().expect("tip");
        let height = tip.height + 1;
        let known = |id: &Hash| ids.contains(id);
        let body = build_body(
            &s.store,
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

        let start = Instant::now();
        let sigs = if preverified {
            Signatures::Cached(&known)
        } else {
            Signatures::Verify
        };
        let outcome = execute_block(&s.store, ctx, &block, &sigs).expect("valid block");
        let executed = start.elapsed();
        let tx_ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
        s.store
            .commit_block(&block, &commit, &outcome.update, &tx_ids)
            .expect("commit");
        total[c] += start.elapsed();
        execute[c] += executed;
        count[c] += block.txs.len();
    }
    (0..configs)
        .map(|c| Rate {
            tx_per_s: count[c] as f64 / total[c].as_secs_f64(),
            execute_share: execute[c].as_secs_f64() / total[c].as_secs_f64(),
        })
        .collect()
}

/// A measured rate and the share of its time spent executing (the rest is the commit).
struct Rate {
    tx_per_s: f64,
    execute_share: f64,
}

/// The state tree's levers (issue 22, lever 4): jmt's own writer without the node cache
/// is the code before the change; the last row is what nodes run.
const CONFIGS: [(&str, TreeWriter, bool); 3] = [
    ("jmt writer, no node cache", TreeWriter::Jmt, false),
    ("batch writer, no node cache", TreeWriter::Batch, false),
    ("batch writer + node cache", TreeWriter::Batch, true),
];

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    println!("Tally ledger benchmark (single thread; blocks of {BLOCK_TXS} transfers, synced RocksDB commits)");
    let raw = raw_verify_rate();
    println!("raw k256 verify, one core:                 {raw:>10.0} /s   (1.00x)");
    let mut results = Vec::new();
    // TALLY_BENCH_ACCOUNTS=1000000 measures one size only (for a profile).
    let sizes: Vec<usize> = match std::env::var("TALLY_BENCH_ACCOUNTS") {
        Ok(n) => vec![n
            .parse()
            .expect("TALLY_BENCH_ACCOUNTS is a number of accounts")],
        Err(_) => vec![10_000, 1_000_000],
    };
    for &accounts in &sizes {
        let s = setup(accounts);
        let raw = if accounts == sizes[0] {
            raw
        } else {
            let again = raw_verify_rate();
            println!("raw k256 verify, one core, again:          {again:>10.0} /s   (1.00x for what follows)");
            again
        };
        let blocks = 12 * CONFIGS.len();
        let warm_up = 2;
        let txs = make_txs(&s, warm_up + 2 * blocks, 0);
        eprintln!("  signed {} blocks of transfers", txs.len());
        let (warm, txs) = txs.split_at(warm_up);
        // Warm the OS page cache, RocksDB's block cache and the node cache first.
        run(&s, warm, true, 1);
        let (a, b) = txs.split_at(blocks);
        let checked = run(&s, a, false, CONFIGS.len());
        let pre = run(&s, b, true, CONFIGS.len());
        for ((name, _, _), (checked, pre)) in CONFIGS.iter().zip(checked.iter().zip(&pre)) {
            println!(
                "{accounts:>9} accounts, {name:<28} check + apply {:>6.0} tx/s ({:.2}x)   pre-verified {:>6.0} tx/s ({:.2}x, {:.0}% executing)",
                checked.tx_per_s,
                checked.tx_per_s / raw,
                pre.tx_per_s,
                pre.tx_per_s / raw,
                100.0 * pre.execute_share,
            );
            results.push((accounts, *name, checked.tx_per_s / raw, pre.tx_per_s / raw));
        }
    }
    // Targets: the default configuration (the last row of each size).
    let default = CONFIGS[CONFIGS.len() - 1].0;
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
