//! Sync speed, in process: a peer store holding a chain of blocks with transfers answers
//! `/tally/sync/1` requests with the node's own `serve()`; the syncing side runs the node's
//! own sync path on those bytes — `verify_response` (commits, linkage, tx signatures, on
//! every core) on a fetch thread with up to `MAX_IN_FLIGHT` chunks queued, then in order
//! `check_header`, execution with the signatures already checked and one synced RocksDB
//! batch per block. No network: this measures verification and apply, the node's limit.
//!
//! Baseline in the same run: the single-core apply rate, i.e. a follower applying the same
//! blocks one by one on one thread (header, commit and every tx signature verified,
//! executed, committed). Target: sync >= 0.7x the baseline.
//!
//! `TALLY_SYNC_BENCH_BLOCKS` (default 10000), `TALLY_SYNC_BENCH_TXS` per block (default 20).

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ledger::block::{assemble, check_header, BlockTemplate};
use ledger::codec::encode;
use ledger::crypto::Keypair;
use ledger::exec::{build_body, execute_block, ExecContext, Signatures};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::store::rocks::RocksStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::{Block, Commit, Payload, SignedTx, Tx};
use ledger::{sha256, Hash};
use rayon::prelude::*;
use tally_node::sync::{verify_response, MAX_IN_FLIGHT};
use tally_node::wire::{SyncRequest, MAX_SYNC_BLOCKS};

const CHAIN: &str = "bench-sync";
const SENDERS: usize = 200;
/// The p2p layer's default response cap.
const RESPONSE_CAP: usize = 8 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn genesis(validator: &Keypair, senders: &[Keypair], txs: usize) -> Genesis {
    let file = GenesisFile {
        chain_id: CHAIN.into(),
        genesis_time_ms: 0,
        params: Params {
            block_max_txs: txs.max(1) as u32,
            ..Params::default()
        },
        validators: vec![GenesisValidator {
            name: "v".into(),
            pubkey: hex::encode(validator.public_key()),
            power: 1,
            operator: None,
        }],
        accounts: senders
            .iter()
            .map(|k| GenesisAccount {
                address: hex::encode(k.address()),
                balance: 1_000_000_000_000,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&file).expect("json");
    Genesis::from_bytes("bench-genesis.json", &bytes).expect("genesis")
}

fn sign_commit(validator: &Keypair, height: u64, hash: Hash) -> Commit {
    ledger::block::sign_commit(CHAIN, height, 0, hash, &[validator])
}

/// The serving peer's chain: `blocks` blocks of `txs` transfers each.
fn build_chain(
    store: &RocksStore,
    g: &Genesis,
    v: &Keypair,
    senders: &[Keypair],
    blocks: usize,
    txs: usize,
) {
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    let all: Vec<Vec<SignedTx>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            (0..txs)
                .map(|j| {
                    let slot = b * txs + j;
                    let k = slot % senders.len();
                    let sender = &senders[k];
                    let mut to = [0u8; 20];
                    to.copy_from_slice(&sha256(&(slot as u64).to_le_bytes())[..20]);
                    sender.sign_tx(Tx {
                        chain_id: CHAIN.into(),
                        from: sender.public_key(),
                        nonce: (slot / senders.len()) as u64,
                        fee: 1,
                        payload: Payload::Transfer { to, amount: 1 },
                    })
                })
                .collect()
        })
        .collect();
    let set = g.validator_set();
    let mut last_commit: Option<Commit> = None;
    let yes = |_: &Hash| true;
    for txs in all {
        let tip = store.tip().expect("tip");
        let height = tip.height + 1;
        let body =
            build_body(store, ctx, v.address(), txs, &Signatures::Cached(&yes)).expect("body");
        assert!(body.rejected.is_empty(), "bench txs must be valid");
        let block = assemble(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                time_ms: height,
                prev_hash: tip.block_hash,
                validators_hash: set.hash(),
                proposer: v.address(),
                last_commit: last_commit.take(),
            },
            &body,
        );
        let commit = sign_commit(v, height, block.hash());
        let ids: Vec<Hash> = body.outcome.receipts.iter().map(|r| r.id).collect();
        store
            .commit_block(&block, &commit, &body.outcome.update, &ids)
            .expect("commit");
        last_commit = Some(commit);
    }
}

/// Applies one block the way the sync path does (signatures already checked).
fn apply(store: &RocksStore, g: &Genesis, block: &Block, commit: &Commit, sigs: &Signatures<'_>) {
    let tip = store.tip().expect("tip");
    check_header(&g.chain_id, &g.validators, &tip, block).expect("header");
    let outcome = execute_block(
        store,
        ExecContext {
            chain_id: CHAIN,
            params: &g.params,
            validators: &g.validators,
        },
        block,
        sigs,
    )
    .expect("valid block");
    let ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
    store
        .commit_block(block, commit, &outcome.update, &ids)
        .expect("commit");
}

fn main() {
    let blocks = env("TALLY_SYNC_BENCH_BLOCKS", 10_000);
    let txs = env("TALLY_SYNC_BENCH_TXS", 20);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Tally sync benchmark (in process: serve() bytes -> verify -> apply; {blocks} blocks x {txs} transfers, {cores} cores, synced RocksDB commit per block)");
    let v = Keypair::from_secret_bytes(&sha256(b"bench-validator")).expect("key");
    let senders: Vec<Keypair> = (0..SENDERS)
        .map(|i| {
            Keypair::from_secret_bytes(&sha256(format!("sender-{i}").as_bytes())).expect("key")
        })
        .collect();
    let g = genesis(&v, &senders, txs);
    let peer_dir = tempfile::tempdir().expect("tempdir");
    let peer = RocksStore::open(peer_dir.path(), &g).expect("open");
    let t = Instant::now();
    build_chain(&peer, &g, &v, &senders, blocks, txs);
    eprintln!(
        "  built the peer's chain in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let total_txs = (blocks * txs) as f64;

    // Baseline: single-core apply (every check, one thread).
    let base_dir = tempfile::tempdir().expect("tempdir");
    let base = RocksStore::open(base_dir.path(), &g).expect("open");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let t = Instant::now();
    one.install(|| {
        for h in 1..=blocks as u64 {
            let block = peer.block(h).expect("read").expect("block");
            let commit = peer.commit(h).expect("read").expect("commit");
            g.validators
                .verify_commit(CHAIN, h, &block.hash(), &commit)
                .expect("commit");
            apply(&base, &g, &block, &commit, &Signatures::Verify);
        }
    });
    let base_secs = t.elapsed().as_secs_f64();
    let base_rate = blocks as f64 / base_secs;

    // Sync: serve() -> bytes -> verify_response on a fetch thread (rayon, every core),
    // at most MAX_IN_FLIGHT chunks ahead; apply in order on this thread.
    let sync_dir = tempfile::tempdir().expect("tempdir");
    let sync = RocksStore::open(sync_dir.path(), &g).expect("open");
    let t = Instant::now();
    let (tx, rx) = sync_channel(MAX_IN_FLIGHT);
    std::thread::scope(|s| {
        let (peer, g) = (&peer, &g);
        s.spawn(move || {
            let mut from = 1u64;
            while from <= blocks as u64 {
                let count = MAX_SYNC_BLOCKS.min((blocks as u64 + 1 - from) as u32);
                let request = encode(&SyncRequest::Blocks { from, count });
                let bytes = tally_node::sync::serve(peer, &request, RESPONSE_CAP)
                    .expect("served")
                    .bytes;
                let chunk = verify_response(g, None, from, count, &bytes)
                    .unwrap_or_else(|e| panic!("bad chunk: {e:?}"));
                from += chunk.len() as u64;
                if tx.send(chunk).is_err() {
                    return;
                }
            }
        });
        let yes = |_: &Hash| true;
        for chunk in rx {
            for v in chunk {
                apply(&sync, g, &v.block, &v.commit, &Signatures::Cached(&yes));
            }
        }
    });
    let sync_secs = t.elapsed().as_secs_f64();
    let sync_rate = blocks as f64 / sync_secs;
    assert_eq!(
        sync.tip().expect("tip"),
        peer.tip().expect("tip"),
        "synced tip differs"
    );

    let ratio = sync_rate / base_rate;
    println!(
        "single-core apply (verify + execute + commit): {base_rate:>8.0} blocks/s {:>8.0} tx/s ({base_secs:.1}s)",
        total_txs / base_secs
    );
    println!(
        "sync of a fresh store from the peer:           {sync_rate:>8.0} blocks/s {:>8.0} tx/s ({sync_secs:.1}s)",
        total_txs / sync_secs
    );
    println!(
        "sync / single-core apply: {ratio:.2}x (target >= 0.70x: {})",
        if ratio >= 0.7 { "met" } else { "MISSED" }
    );
}
