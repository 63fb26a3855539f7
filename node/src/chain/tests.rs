//! The chain host and the consensus driver over in-memory stores, with a detached network
//! and the messages between them pumped by hand: no process, no socket, no RocksDB.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use consensus::Equivocation;
use ledger::crypto::Keypair;
use ledger::store::memory::MemStore;
use ledger::store::{ChainReader, ConsensusStore};
use ledger::types::{Block, Proposal, SignedVote, Vote, VoteKind};
use tally_p2p::PeerId;
use tokio::sync::oneshot;

use super::*;
use crate::actors::{Actors, NodeStore};
use crate::driver::DriverMsg;
use crate::sync::{verify_chunk, SyncMsg};
use crate::testing::{chain, key, FailingStore, CHAIN};
use crate::wire::ConsensusMessage;

/// Passes every message waiting between the actors until none is left; returns what was
/// sent to sync.
async fn pump<S: NodeStore>(a: &mut Actors<S>) -> Vec<SyncMsg> {
    let mut to_sync = Vec::new();
    loop {
        let mut idle = true;
        while let Ok(msg) = a.host_rx.try_recv() {
            a.host.handle(msg).await;
            idle = false;
        }
        while let Ok(msg) = a.answers_rx.try_recv() {
            a.driver.handle(msg).await;
            idle = false;
        }
        while let Ok(msg) = a.driver_rx.try_recv() {
            a.driver.handle(msg).await;
            idle = false;
        }
        while let Ok(msg) = a.sync_rx.try_recv() {
            to_sync.push(msg);
            idle = false;
        }
        if idle {
            return to_sync;
        }
    }
}

/// Hands the host a batch of synced blocks and returns its answer.
async fn synced<S: NodeStore>(
    a: &mut Actors<S>,
    blocks: Vec<(PeerId, crate::sync::Verified)>,
) -> Applied {
    let (reply, answer) = oneshot::channel();
    a.host.handle(HostMsg::Synced { blocks, reply }).await;
    answer.await.unwrap()
}

/// Our own messages published so far, as "proposal H", "Prevote H", "Precommit H".
fn published<S: NodeStore>(a: &mut Actors<S>) -> Vec<String> {
    let mut sent = Vec::new();
    while let Ok(out) = a.outbox_rx.try_recv() {
        let msg: ConsensusMessage = ledger::codec::decode("msg", &out.data, 1 << 20).unwrap();
        sent.push(match msg {
            ConsensusMessage::Proposal { proposal, .. } => {
                format!("proposal {}", proposal.proposal.height)
            }
            ConsensusMessage::Vote(v) => format!("{:?} {}", v.vote.kind, v.vote.height),
            ConsensusMessage::Evidence(_) => "evidence".into(),
            ConsensusMessage::Rebroadcast { .. } => "rebroadcast".into(),
        });
    }
    sent
}

/// Keys v0..v3, a genesis of them, and a fresh store of it.
fn four_validators() -> (Vec<Keypair>, Arc<ledger::genesis::Genesis>, Arc<MemStore>) {
    let keys: Vec<Keypair> = (0..4).map(|i| key(&format!("v{i}"))).collect();
    let g = Arc::new(crate::testing::genesis(
        CHAIN,
        &keys.iter().collect::<Vec<_>>(),
        &[],
    ));
    let store = Arc::new(MemStore::new(&g).unwrap());
    (keys, g, store)
}

fn consensus(msg: ConsensusMessage) -> DriverMsg {
    DriverMsg::Consensus {
        msg: Box::new(msg),
        from: Some(PeerId::random()),
    }
}

fn proposal_of(v: &Keypair, block: &Block) -> ConsensusMessage {
    let proposal = v.sign_proposal(Proposal {
        chain_id: CHAIN.into(),
        height: block.header.height,
        round: 0,
        pol_round: None,
        block_hash: block.hash(),
    });
    ConsensusMessage::Proposal {
        proposal,
        block: block.clone(),
    }
}

fn precommit_of(v: &Keypair, block: &Block) -> ConsensusMessage {
    ConsensusMessage::Vote(v.sign_vote(Vote {
        chain_id: CHAIN.into(),
        height: block.header.height,
        round: 0,
        kind: VoteKind::Precommit,
        block_hash: Some(block.hash()),
    }))
}

/// Waits (at most 5 s) for the driver's next-height timer, then lets it start the height.
async fn next_height<S: NodeStore>(a: &mut Actors<S>, height: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.driver.height() < height {
        assert!(
            tokio::time::Instant::now() < deadline,
            "height {height} did not start within 5 s (at {})",
            a.driver.height()
        );
        a.driver.fire_timers().await;
        pump(a).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A lone validator: the driver asks the host to build, signs and publishes in order
/// (proposal, prevote, precommit), the host commits the decided block, and the next height
/// starts from the driver's own timer.
#[tokio::test]
async fn a_lone_validator_builds_validates_commits_and_starts_the_next_height() {
    let v = key("solo");
    let g = Arc::new(crate::testing::genesis(CHAIN, &[&v], &[]));
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, metrics) = crate::testing::actors(g, store.clone(), Some(v));
    a.driver.start().await;
    pump(&mut a).await;
    assert_eq!(
        published(&mut a),
        ["proposal 1", "Prevote 1", "Precommit 1"]
    );
    assert_eq!(store.tip().unwrap().height, 1, "the lone validator commits");
    assert_eq!(a.host.tip().height, 1);
    assert_eq!(a.handles.view.status.borrow().height, 1);
    assert_eq!(metrics.blocks_committed.get(), 1);
    next_height(&mut a, 2).await;
    pump(&mut a).await;
    assert_eq!(store.tip().unwrap().height, 2);
    assert_eq!(
        published(&mut a),
        ["proposal 2", "Prevote 2", "Precommit 2"]
    );
}

/// Issue 22's overload stall: a proposer whose recent validations of the others' blocks
/// were slow proposes no more than fits the round (here the floor, 256 of the 300 pending
/// txs), and says so in `tally_proposal_tx_cap`; the rest waits for the next block.
#[tokio::test]
async fn a_proposer_that_validates_slowly_proposes_what_fits_the_round() {
    let v = key("solo");
    let senders = [key("s0"), key("s1")];
    let funded: Vec<(&Keypair, u64)> = senders.iter().map(|k| (k, 1_000_000)).collect();
    let g = Arc::new(crate::testing::genesis(CHAIN, &[&v], &funded));
    let store = Arc::new(MemStore::new(&g).unwrap());
    // The next height waits out timeout_commit although txs wait: one block is looked at.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ChainMetrics::register(&mut registry);
    let wait = crate::testing::CommitWait {
        timeout_commit: Duration::from_secs(3600),
        skip_when_busy: false,
    };
    let pool = crate::testing::mempool(&g);
    let (mut a, _net) = crate::testing::actors_waiting(
        g,
        store.clone(),
        Some(v),
        pool,
        metrics.clone(),
        true,
        wait,
    );
    let admission = crate::mempool::metrics::MempoolMetrics::default();
    for k in &senders {
        for nonce in 0..150 {
            let bytes = ledger::codec::encode(&crate::testing::transfer(k, CHAIN, nonce));
            crate::mempool::admission::admit_bytes(
                store.as_ref(),
                &a.host.mempool,
                &admission,
                &bytes,
                1 << 20,
            )
            .unwrap();
        }
    }
    // 100 ms a tx: nothing above the floor fits 35% of 2 s.
    a.host.budget.observe(1_000, Duration::from_secs(100));
    a.driver.start().await;
    pump(&mut a).await;
    let b1 = store.block(1).unwrap().expect("block 1 committed");
    assert_eq!(b1.txs.len(), budget::MIN_TXS, "the proposal was not capped");
    assert_eq!(metrics.proposal_tx_cap.get(), budget::MIN_TXS as i64);
    assert_eq!(a.host.mempool.lock().unwrap().len(), 300 - budget::MIN_TXS);
}

/// A full node hears the proposal of height 2 before height 1 is decided: the body is
/// kept, and once 1 commits and 2 starts, the core replays the proposal and the host
/// validates the early body. Both blocks commit, the same as the chain's.
#[tokio::test]
async fn a_proposal_arriving_before_its_height_is_kept_and_used_when_the_height_starts() {
    let (g, _, blocks) = chain(2);
    let v = key("v");
    let (b1, b2) = (&blocks[0].0, &blocks[1].0);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, _) = crate::testing::actors(Arc::new(g), store.clone(), None);
    a.driver.start().await;
    pump(&mut a).await;
    propose_and_precommit(&mut a, &v, b2).await;
    assert_eq!(
        store.tip().unwrap().height,
        0,
        "height 2 cannot commit first"
    );
    propose_and_precommit(&mut a, &v, b1).await;
    assert_eq!(store.tip().unwrap().block_hash, b1.hash());
    next_height(&mut a, 2).await;
    pump(&mut a).await;
    assert_eq!(
        store.tip().unwrap().block_hash,
        b2.hash(),
        "the early proposal and precommit of height 2 decided it"
    );
    assert!(published(&mut a).is_empty(), "a full node signs nothing");
}

/// Hands the driver `block`'s proposal and precommit by validator `v`, and lets the actors
/// run.
async fn propose_and_precommit<S: NodeStore>(a: &mut Actors<S>, v: &Keypair, block: &Block) {
    a.driver.handle(consensus(proposal_of(v, block))).await;
    a.driver.handle(consensus(precommit_of(v, block))).await;
    pump(a).await;
}

/// A chain of one block (with txs), an empty store and pool, and fresh chain metrics.
fn one_block() -> (
    Arc<Genesis>,
    Block,
    Arc<MemStore>,
    Arc<std::sync::Mutex<crate::mempool::Mempool>>,
    ChainMetrics,
) {
    let (g, _, mut blocks) = chain(1);
    let g = Arc::new(g);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let pool = crate::testing::mempool(&g);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ChainMetrics::register(&mut registry);
    (g, blocks.remove(0).0, store, pool, metrics)
}

/// A full node's host (`reuse`: the verify-once cache) given `pool` and `metrics` commits
/// `b1`, signed by validator "v", from its proposal and precommit.
async fn full_node_commits(
    g: &Arc<Genesis>,
    store: &Arc<MemStore>,
    pool: Arc<std::sync::Mutex<crate::mempool::Mempool>>,
    metrics: &ChainMetrics,
    reuse: bool,
    b1: &Block,
) {
    let v = key("v");
    let (mut a, _net) = crate::testing::actors_waiting(
        g.clone(),
        store.clone(),
        None,
        pool,
        metrics.clone(),
        reuse,
        Default::default(),
    );
    a.driver.start().await;
    pump(&mut a).await;
    propose_and_precommit(&mut a, &v, b1).await;
    assert_eq!(
        store.tip().unwrap().block_hash,
        b1.hash(),
        "block 1 committed"
    );
}

/// `tally_tx_signature_verifications_total` counts each k256 verification where it
/// happens: admitting N txs verifies N (path admission); a full node then validating and
/// committing the block that carries them verifies none again with the verify-once cache
/// on, and all N (path block) with it off.
#[tokio::test]
async fn every_tx_signature_verification_is_counted_once_where_it_happens() {
    use crate::metrics::VerifyPath::{Admission, Block as InBlock, Sync};
    for reuse in [true, false] {
        let (g, b1, store, pool, metrics) = one_block();
        let b1 = &b1;
        let admission = crate::mempool::metrics::MempoolMetrics {
            tx_signatures: metrics.tx_signatures.clone(),
            ..Default::default()
        };
        for tx in &b1.txs {
            let bytes = ledger::codec::encode(tx);
            crate::mempool::admission::admit_bytes(
                store.as_ref(),
                &pool,
                &admission,
                &bytes,
                1 << 20,
            )
            .unwrap();
        }
        let n = b1.txs.len() as u64;
        assert!(n > 0, "the block carries txs");
        let counted = |m: &ChainMetrics| [Admission, InBlock, Sync].map(|p| m.tx_signatures.get(p));
        assert_eq!(
            counted(&metrics),
            [n, 0, 0],
            "admission verified each tx once"
        );
        full_node_commits(&g, &store, pool, &metrics, reuse, b1).await;
        let again = if reuse { 0 } else { n };
        assert_eq!(
            counted(&metrics),
            [n, again, 0],
            "executing the block with the verify-once cache {}",
            if reuse { "on" } else { "off" }
        );
    }
}

/// A block whose txs our pool did not hold is verified in execution, and the pool is told
/// which ids were: their gossip copies, arriving before the commit, are then admitted
/// without a second verification (the admission side is tested in `mempool::admission`).
#[tokio::test]
async fn the_txs_a_block_verified_are_noted_for_admission() {
    use crate::metrics::VerifyPath::Block as InBlock;
    let (g, b1, store, pool, metrics) = one_block();
    let b1 = &b1;
    full_node_commits(&g, &store, pool.clone(), &metrics, true, b1).await;
    assert_eq!(
        metrics.tx_signatures.get(InBlock),
        b1.txs.len() as u64,
        "the pool held none of the block's txs"
    );
    let m = pool.lock().unwrap();
    for tx in &b1.txs {
        assert!(m.verified_in_block(&tx.id()), "a verified tx was not noted");
    }
}

/// Execution with precomputed ids (the host hashes each tx once) verifies what it does not
/// know, and refuses an id list that is not the block's (a caller's bug must not skip a
/// tx).
#[test]
fn execution_with_precomputed_ids_counts_verifications_and_refuses_a_wrong_list() {
    let (g, _, blocks) = chain(1);
    let b1 = &blocks[0].0;
    let store = MemStore::new(&g).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    let ids = ledger::exec::tx_ids_and_sizes(&b1.txs);
    let verify = execute_block_with_ids(&store, ctx, b1, &ids, &Signatures::Verify).unwrap();
    assert_eq!(verify.signatures_verified as usize, b1.txs.len());
    let all = |_: &Hash| true;
    let cached = execute_block_with_ids(&store, ctx, b1, &ids, &Signatures::Cached(&all)).unwrap();
    assert_eq!(cached.signatures_verified, 0);
    assert_eq!(cached.update.root, verify.update.root);
    let e = execute_block_with_ids(&store, ctx, b1, &ids[1..], &Signatures::Verify).unwrap_err();
    assert!(e.to_string().contains("1 ids for 2 txs"), "{e}");
}

/// `consensus.skip_timeout_commit_when_busy`: once a height is committed with every
/// precommit in (here the one validator's) and a tx still waiting in the pool, the next
/// height starts at once, not at the end of `timeout_commit` (an hour here), with the
/// rest of that wait added to its round-0 propose timeout; with an empty pool, or the
/// switch off, the driver waits.
#[tokio::test]
async fn a_busy_chain_starts_the_next_height_once_every_precommit_is_in() {
    use crate::testing::{actors_waiting, CommitWait};
    // (a tx waits in the pool, the committed block carries txs, the switch, starts at once)
    for (busy, full, skip, starts_at_once) in [
        (true, true, true, true),
        (false, true, true, false),
        (true, true, false, false),
        // A tx that waits while blocks come empty (a nonce gap, say) is not load: the
        // chain would spin out empty blocks as fast as consensus goes.
        (true, false, true, false),
    ] {
        let (g, mut b1, store, pool, metrics) = one_block();
        if !full {
            let tip = store.tip().unwrap();
            let parent = (tip.block_hash, tip.state_root);
            b1 = crate::testing::empty_block(&g, &key("v"), 1, 0, 1, parent);
        }
        if busy {
            // The sender's next tx after block 1's two (nonces 0 and 1).
            let next = crate::testing::transfer(&key("sender"), CHAIN, 2);
            let funded = ledger::types::Account {
                balance: 1_000_000,
                nonce: 2,
            };
            let size = ledger::codec::encode(&next).len();
            pool.lock()
                .unwrap()
                .insert_verified(
                    next.clone(),
                    next.id(),
                    size,
                    &funded,
                    std::time::Instant::now(),
                )
                .unwrap();
        }
        let wait = CommitWait {
            timeout_commit: Duration::from_secs(3600),
            skip_when_busy: skip,
        };
        let (mut a, _net) = actors_waiting(
            g.clone(),
            store.clone(),
            None,
            pool.clone(),
            metrics.clone(),
            true,
            wait,
        );
        a.driver.start().await;
        pump(&mut a).await;
        propose_and_precommit(&mut a, &key("v"), &b1).await;
        assert_eq!(store.tip().unwrap().height, 1, "block 1 committed");
        assert_eq!(
            pool.lock().unwrap().len(),
            usize::from(busy),
            "the waiting tx stays"
        );
        let expected = if starts_at_once { 2 } else { 1 };
        assert_eq!(
            a.driver.height(),
            expected,
            "busy {busy}, full {full}, skip {skip}: height {expected} expected"
        );
        assert_eq!(
            metrics.timeout_commit_skipped.get(),
            u64::from(starts_at_once)
        );
        if starts_at_once {
            // Round 0's propose timeout gets the unspent wait on top: a proposer that
            // lacked a precommit starts at the end of `timeout_commit`, and its proposal
            // must not find the validators that started early already prevoting nil.
            let (h, round, wait) = a.driver.last_propose_timeout().unwrap();
            let propose = Duration::from_millis(g.params.timeout_propose_ms);
            assert_eq!((h, round), (2, 0));
            assert!(
                wait > propose + Duration::from_secs(3590),
                "round 0 of an early height waits {wait:?}, not the rest of timeout_commit \
                 on top of {propose:?}"
            );
        }
    }
}

/// Blocks from sync commit in order through the host; the driver rejoins at the next
/// height at once (no timeout_commit wait), and the status moves with the tip.
#[tokio::test]
async fn synced_blocks_commit_through_the_host_and_the_driver_rejoins_above_them() {
    let (g, _, blocks) = chain(3);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, metrics) = crate::testing::actors(Arc::new(g.clone()), store.clone(), None);
    a.driver.start().await;
    pump(&mut a).await;
    let peer = PeerId::random();
    let verified = verify_chunk(&g, 1, blocks.clone()).unwrap();
    let applied = synced(&mut a, verified.into_iter().map(|v| (peer, v)).collect()).await;
    assert_eq!((applied.blocks, applied.txs), (3, 6));
    assert!(applied.fault.is_none() && !applied.storage_failed);
    assert_eq!(store.tip().unwrap().block_hash, blocks[2].0.hash());
    pump(&mut a).await;
    assert_eq!(
        a.driver.height(),
        4,
        "the driver rejoins above the synced tip"
    );
    assert_eq!(a.handles.view.status.borrow().height, 3);
    assert_eq!(metrics.height.get(), 3);
}

/// A synced block whose body does not execute (its header is authentic, so > 2/3 signed
/// it; the serving peer changed the body) is the peer's fault; the rest of the batch is
/// handed back, and nothing of it is committed.
#[tokio::test]
async fn a_synced_block_that_does_not_execute_is_the_serving_peers_fault() {
    let (g, _, blocks) = chain(3);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, _) = crate::testing::actors(Arc::new(g.clone()), store.clone(), None);
    let peer = PeerId::random();
    let mut verified = verify_chunk(&g, 1, blocks).unwrap();
    // Block 2's txs swapped for block 1's: still signed, no longer what the header says.
    verified[1].block.txs = verified[0].block.txs.clone();
    let applied = synced(&mut a, verified.into_iter().map(|v| (peer, v)).collect()).await;
    assert_eq!(applied.blocks, 1);
    let fault = applied.fault.expect("the peer is blamed");
    assert_eq!((fault.peer, fault.height), (peer, 2));
    assert_eq!(fault.reason, PenaltyReason::InvalidBlock);
    assert_eq!(applied.unapplied.len(), 1, "block 3 is handed back");
    assert_eq!(store.tip().unwrap().height, 1);
}

/// Item 5 of issue 17: our own store fails account reads while a synced block is
/// applied. The peer that served the block is not blamed, the block is handed back for a
/// retry, the error is reported, and the block applies once the store works again.
#[tokio::test]
async fn a_storage_error_while_applying_a_synced_block_blames_no_peer() {
    let (g, _, blocks) = chain(2);
    let store = Arc::new(FailingStore::new(MemStore::new(&g).unwrap()));
    let (mut a, _net, metrics) = crate::testing::actors(Arc::new(g.clone()), store.clone(), None);
    let peer = PeerId::random();
    let verified: Vec<_> = verify_chunk(&g, 1, blocks)
        .unwrap()
        .into_iter()
        .map(|v| (peer, v))
        .collect();
    store.fail_account_reads(true);
    let applied = synced(&mut a, verified).await;
    assert!(
        applied.fault.is_none(),
        "a local storage error was blamed on the peer"
    );
    assert!(applied.storage_failed);
    assert_eq!(applied.blocks, 0);
    assert_eq!(
        applied.unapplied.len(),
        2,
        "both blocks are kept for a retry"
    );
    assert_eq!(metrics.storage.count(), 1);
    let last = metrics.storage.last().unwrap_or_default();
    assert!(last.contains("injected"), "{last}");
    // The disk recovers: the same blocks apply.
    store.fail_account_reads(false);
    assert_eq!(synced(&mut a, applied.unapplied).await.blocks, 2);
}

/// Item 12 of issue 17 and scenario 7 of issue 18: a block the store refuses to write (a
/// full disk) halts the host with the reason in `/v1/status`, the metrics and the log; the
/// driver is told and signs nothing more, and its timers are dropped. A running driver is
/// the control: it starts the next height.
#[tokio::test]
async fn a_block_the_store_cannot_write_halts_consensus_and_says_why() {
    let v = key("solo");
    let g = Arc::new(crate::testing::genesis(CHAIN, &[&v], &[]));
    let store = Arc::new(FailingStore::new(MemStore::new(&g).unwrap()));
    let (mut a, _net, metrics) = crate::testing::actors(g.clone(), store.clone(), Some(v));
    store.fail_commits(true);
    a.driver.start().await;
    pump(&mut a).await;
    let halted = a
        .handles
        .view
        .status
        .borrow()
        .halted
        .clone()
        .unwrap_or_default();
    assert!(
        halted.contains("cannot commit block 1") && halted.contains("not a peer's fault"),
        "{halted}"
    );
    assert_eq!(metrics.halted.get(), 1);
    assert_eq!(metrics.storage.count(), 1);
    assert!(metrics
        .storage
        .last()
        .unwrap_or_default()
        .contains("committing block 1"));
    assert_eq!(
        published(&mut a),
        ["proposal 1", "Prevote 1", "Precommit 1"]
    );
    // Halted: nothing more is signed, no timer is left, later messages are dropped.
    assert!(a.driver.timers_empty(), "a halted driver keeps timers");
    store.fail_commits(false);
    a.driver
        .handle(DriverMsg::Committed {
            height: 1,
            synced: true,
            busy: false,
        })
        .await;
    pump(&mut a).await;
    assert!(published(&mut a).is_empty(), "a halted node signed");
    assert_eq!(store.tip().unwrap().height, 0);
}

/// Item 10 of issue 17: one validator signing proposals for every round it proposes in,
/// several different ones per round, for this height and the next, used to have every
/// body kept until the height committed. One body per (height, round) is kept, for the
/// rounds the core takes proposals for, by the driver and the host alike.
#[tokio::test]
async fn one_proposer_signing_every_round_is_held_to_the_round_window() {
    let (keys, g, store) = four_validators();
    let (mut a, _net, _) = crate::testing::actors(g.clone(), store, None);
    a.driver.start().await;
    let bad = &keys[3];
    let mut sent = 0;
    for height in [1, 2] {
        for round in 0..2_000u32 {
            if g.validators.proposer(height, round).address != bad.address() {
                continue;
            }
            for salt in 0..5 {
                let msg = crate::testing::empty_proposal(&g, bad, height, round, salt);
                a.driver.handle(consensus(msg)).await;
                sent += 1;
            }
        }
    }
    pump(&mut a).await;
    let window = 2 * (consensus::machine::FUTURE_ROUNDS as usize + 1);
    assert!(sent > 2_000, "{sent}");
    let (driver, host) = (a.driver.candidates(), a.host.candidates());
    assert!(
        driver <= window && host <= window,
        "{driver} bodies in the driver and {host} in the host of {sent} proposals; the window holds {window}"
    );
    assert!(host > 0, "in-window proposals must still be kept");
}

fn equivocation(key: &Keypair, height: u64, round: u32) -> Equivocation {
    let vote = |hash: u8| -> SignedVote {
        key.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height,
            round,
            kind: VoteKind::Prevote,
            block_hash: Some([hash; 32]),
        })
    };
    Equivocation {
        first: vote(1),
        second: vote(2),
    }
}

/// Item 10 of issue 17: one validator's double signs, as many as it likes, are one record
/// per height it may be punished for, and never push out another's; the stored copy is the
/// same bounded list.
#[tokio::test]
async fn one_validators_evidence_never_evicts_anothers() {
    let (keys, g, store) = four_validators();
    let (mut a, _net, metrics) = crate::testing::actors(g, store.clone(), None);
    let record = |e| HostMsg::Evidence {
        evidence: Box::new(e),
        ours: false,
    };
    a.host.handle(record(equivocation(&keys[2], 1, 0))).await;
    for round in 0..200 {
        for height in [1, 2, 3, 5_000] {
            a.host
                .handle(record(equivocation(&keys[3], height, round)))
                .await;
        }
    }
    let list = a.handles.view.evidence.read().unwrap().clone();
    let of = |k: &Keypair| {
        list.iter()
            .filter(|e| e.first.validator == k.address())
            .count()
    };
    assert_eq!(of(&keys[2]), 1, "validator 2's record was evicted");
    // Heights 1 and 2 only (the next height at most); one record each.
    assert_eq!(of(&keys[3]), 2, "{} records of validator 3", of(&keys[3]));
    assert_eq!(metrics.evidence.get(), 3);
    let stored: Vec<Equivocation> = ledger::codec::decode(
        "evidence",
        &store
            .consensus_get(evidence::EVIDENCE_KEY)
            .unwrap()
            .unwrap(),
        1 << 20,
    )
    .unwrap();
    assert_eq!(stored.len(), 3);
}

/// The actors running as tasks, stopped by the token in the middle of a height that
/// cannot finish (we are one validator of four, height 1's first proposer; the others
/// are silent): every task ends promptly and none panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_height_stops_every_actor() {
    let (keys, g, store) = four_validators();
    let first = g.validators.proposer(1, 0).address;
    let us = keys.iter().find(|k| k.address() == first).unwrap().clone();
    let (a, _net, _) = crate::testing::actors(g, store, Some(us));
    let mut view = a.handles.view.status.clone();
    let shutdown = tally_p2p::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let Actors {
        driver,
        host,
        sync,
        driver_rx,
        answers_rx,
        host_rx,
        sync_rx,
        mut outbox_rx,
        ..
    } = a;
    tasks.spawn(driver.run(driver_rx, answers_rx, shutdown.clone()));
    tasks.spawn(host.run(host_rx, shutdown.clone()));
    tasks.spawn(sync.run(sync_rx, shutdown.clone()));
    // In the height: our proposal goes out.
    tokio::time::timeout(Duration::from_secs(10), outbox_rx.recv())
        .await
        .expect("no message signed within 10 s")
        .expect("outbox closed");
    assert_eq!(view.borrow_and_update().height, 0);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("an actor panicked");
        }
    })
    .await;
    assert!(
        stopped.is_ok(),
        "an actor did not stop within 2 s of shutdown"
    );
}

/// The host's answer that a block committed is lost (its channel was full): the driver's
/// tick sees the host's tip ahead of its own height and starts the next height anyway.
#[tokio::test]
async fn a_lost_commit_answer_is_made_up_by_the_drivers_tick() {
    let (g, _, blocks) = chain(2);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, _) = crate::testing::actors(Arc::new(g.clone()), store, None);
    a.driver.start().await;
    pump(&mut a).await;
    let verified = verify_chunk(&g, 1, blocks).unwrap();
    let blocks = verified
        .into_iter()
        .map(|v| (PeerId::random(), v))
        .collect();
    assert_eq!(synced(&mut a, blocks).await.blocks, 2);
    // The answer is lost.
    while a.answers_rx.try_recv().is_ok() {}
    assert_eq!(a.driver.height(), 1);
    a.driver.on_tick().await;
    assert_eq!(
        a.driver.height(),
        3,
        "the tick did not catch up with the host's tip"
    );
}

/// The host's view of the sets after its last commit: (first height, its set, the next).
fn announced<S: NodeStore>(a: &Actors<S>) -> (u64, Hash, Hash) {
    match &**a.handles.sets.borrow() {
        crate::sets::KnownSets::Changing {
            from,
            current,
            next,
        } => (*from, current.hash(), next.hash()),
        crate::sets::KnownSets::Fixed(_) => panic!("a protocol-2 host announced a fixed set"),
    }
}

/// Issue 20 on a node: a protocol-2 chain of one validator ("solo", power 10). Its
/// operator bonds 5 to a new key in block 1, so the end of block 1 fixes the set of height
/// 3 as {solo 10, new 5}: after committing 1 the host announces it as the set of 3; block
/// 2 (still solo's set) names it in `next_validators_hash`; at height 3 solo's own votes
/// (10 of 15) no longer decide, the newcomer's do with them, and block 3 is headed by
/// the new set. A body of height 3 with a wrong `next_validators_hash` is refused.
#[tokio::test]
async fn a_bond_makes_the_host_announce_the_grown_set_and_the_next_heights_follow_it() {
    use ledger::block::{assemble_v2, BlockTemplate};
    use ledger::exec::{build_body_at, BlockEnv};
    use ledger::types::{Payload, Tx};
    use ledger::validators::ValidatorSet;

    let (solo, op, newcomer) = (key("solo"), key("op"), key("newcomer"));
    let g = Arc::new(crate::testing::genesis_v2(
        CHAIN,
        &[(&solo, 10)],
        &op,
        1_000_000,
    ));
    let store = Arc::new(MemStore::new(&g).unwrap());
    let pool = crate::testing::mempool(&g);
    let (mut a, _net, metrics) =
        crate::testing::actors_with(g.clone(), store.clone(), Some(solo.clone()), pool.clone());
    let solo_set = g.validators.hash();
    assert_eq!(announced(&a), (1, solo_set, solo_set));
    let gauges = |m: &ChainMetrics| (m.staking.set_size.get(), m.staking.set_power.get());
    assert_eq!(
        gauges(&metrics),
        (1, 10),
        "the gauges show the genesis set at start"
    );
    let bond = op.sign_tx(Tx {
        chain_id: CHAIN.into(),
        from: op.public_key(),
        nonce: 0,
        fee: g.params.min_fee.max(1),
        payload: Payload::Bond {
            validator: newcomer.public_key(),
            amount: 5,
        },
    });
    crate::mempool::admission::admit_bytes(
        store.as_ref(),
        &pool,
        &Default::default(),
        &ledger::codec::encode(&bond),
        1 << 20,
    )
    .unwrap();
    a.driver.start().await;
    pump(&mut a).await;
    let b1 = store.block(1).unwrap().unwrap();
    assert_eq!(
        (b1.header.version, b1.txs.len()),
        (2, 1),
        "block 1 carries the bond"
    );
    let grown = ValidatorSet::new({
        let mut v = vec![
            ledger::types::Validator {
                address: solo.address(),
                pubkey: solo.public_key(),
                power: 10,
            },
            ledger::types::Validator {
                address: newcomer.address(),
                pubkey: newcomer.public_key(),
                power: 5,
            },
        ];
        v.sort_by_key(|v| v.address);
        v
    })
    .unwrap();
    assert_eq!(
        announced(&a),
        (2, solo_set, grown.hash()),
        "after block 1 the host announces the grown set for height 3"
    );
    next_height(&mut a, 2).await;
    pump(&mut a).await;
    let b2 = store.block(2).unwrap().unwrap();
    assert_eq!(b2.header.validators_hash, solo_set);
    assert_eq!(b2.header.next_validators_hash, Some(grown.hash()));
    assert_eq!(announced(&a), (3, grown.hash(), grown.hash()));
    assert_eq!(
        gauges(&metrics),
        (2, 15),
        "after block 2 the gauges show the set of height 3"
    );
    published(&mut a);

    // Height 3 follows the grown set: its proposer, and solo's 10 of 15 is no quorum.
    next_height(&mut a, 3).await;
    pump(&mut a).await;
    assert_eq!(
        grown.proposer(3, 0).address,
        solo.address(),
        "the test expects solo to propose height 3 round 0"
    );
    let mut sent = Vec::new();
    let mut b3 = None;
    while let Ok(out) = a.outbox_rx.try_recv() {
        match ledger::codec::decode("msg", &out.data, 1 << 20).unwrap() {
            ConsensusMessage::Proposal { block, .. } => {
                sent.push("proposal".to_string());
                b3 = Some(block);
            }
            ConsensusMessage::Vote(v) => sent.push(format!("{:?}", v.vote.kind)),
            _ => sent.push("other".into()),
        }
    }
    assert_eq!(
        sent,
        ["proposal", "Prevote"],
        "solo proposes and prevotes only"
    );
    assert_eq!(
        store.tip().unwrap().height,
        2,
        "solo alone decided height 3: the core kept the genesis set"
    );
    let b3 = b3.expect("solo's proposal of height 3");
    assert_eq!(b3.header.validators_hash, grown.hash());
    assert_eq!(b3.header.proposer, solo.address());

    // A body of height 3 whose next_validators_hash is not the set of height 4: refused.
    let tip = store.tip().unwrap();
    let commit2 = store.commit(2).unwrap().unwrap();
    let body = build_body_at(
        store.as_ref(),
        ExecContext {
            chain_id: CHAIN,
            params: &g.params,
            validators: &g.validators,
        },
        BlockEnv {
            height: 3,
            proposer: solo.address(),
            last_commit: Some(&commit2),
            evidence: &[],
            signal: None,
        },
        Vec::new(),
        &Signatures::Verify,
    )
    .unwrap();
    let bad = Arc::new(assemble_v2(
        BlockTemplate {
            chain_id: CHAIN.into(),
            height: 3,
            round: 0,
            time_ms: tip.time_ms + 1,
            prev_hash: tip.block_hash,
            validators_hash: grown.hash(),
            proposer: solo.address(),
            last_commit: Some(commit2),
        },
        solo_set,
        &body,
    ));
    a.host.handle(HostMsg::Body(bad.clone())).await;
    a.host
        .handle(HostMsg::Validate {
            height: 3,
            hash: bad.hash(),
        })
        .await;
    match a.answers_rx.try_recv() {
        Ok(DriverMsg::Validated { hash, valid, .. }) if hash == bad.hash() => {
            assert!(!valid, "a wrong next_validators_hash was accepted")
        }
        other => panic!("expected the host's verdict, got {other:?}"),
    }

    // The newcomer's votes make the quorum with solo's.
    for kind in [VoteKind::Prevote, VoteKind::Precommit] {
        let vote = newcomer.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height: 3,
            round: 0,
            kind,
            block_hash: Some(b3.hash()),
        });
        a.driver
            .handle(consensus(ConsensusMessage::Vote(vote)))
            .await;
        pump(&mut a).await;
    }
    assert_eq!(store.tip().unwrap().block_hash, b3.hash());
    assert_eq!(announced(&a).0, 4);

    // A late joiner syncs the three blocks: each commit is verified with its height's set.
    // Block 3's commit signed by solo alone (a quorum of the genesis set, not of height
    // 3's) is the serving peer's fault; blocks 1 and 2 apply.
    let served: Vec<_> = (1..=3)
        .map(|h| {
            (
                store.block(h).unwrap().unwrap(),
                store.commit(h).unwrap().unwrap(),
            )
        })
        .collect();
    let mut forged = served.clone();
    forged[2].1 = ledger::block::sign_commit(CHAIN, 3, 0, b3.hash(), &[&solo]);
    let joiner = Arc::new(MemStore::new(&g).unwrap());
    let (mut late, _net2, _) = crate::testing::actors(g.clone(), joiner.clone(), None);
    let peer = PeerId::random();
    let chunk = verify_chunk(&g, 1, forged).unwrap();
    let applied = synced(&mut late, chunk.into_iter().map(|v| (peer, v)).collect()).await;
    assert_eq!(applied.blocks, 2);
    let fault = applied.fault.expect("the forged commit is blamed");
    assert_eq!((fault.peer, fault.height), (peer, 3), "{}", fault.error);
    assert_eq!(joiner.tip().unwrap().height, 2);
    let chunk = verify_chunk(&g, 3, served[2..].to_vec()).unwrap();
    let applied = synced(&mut late, chunk.into_iter().map(|v| (peer, v)).collect()).await;
    // Before applying, sync believes a fetched height exists when more than 1/3 of the
    // latest set it knows (here solo's) signed its commit; the newcomer alone does not.
    let trusted = g.validators.clone();
    let chunk = crate::sync::verify_chunk_trusting(&g, Some(&trusted), 1, served.clone());
    assert!(chunk.unwrap().iter().all(|v| v.proven));
    let mut stranger = served.clone();
    stranger[2].1 = ledger::block::sign_commit(CHAIN, 3, 0, b3.hash(), &[&newcomer]);
    let chunk = crate::sync::verify_chunk_trusting(&g, Some(&trusted), 1, stranger).unwrap();
    assert!(!chunk[2].proven, "a commit of strangers proved its height");
    assert_eq!(
        (applied.blocks, joiner.tip().unwrap().block_hash),
        (1, b3.hash())
    );
}

/// A protocol-2 chain of `solo` (proposing, deciding alone) and `other`, whose
/// equivocation at height 1 the host holds before height 2: block 2 carries it.
struct EvidenceInBlock2 {
    solo: Keypair,
    other: Keypair,
    g: Arc<ledger::genesis::Genesis>,
    store: Arc<MemStore>,
    a: Actors<MemStore>,
    /// The network task's end, kept open.
    _net: tokio::sync::mpsc::Receiver<tally_p2p::Command>,
}

async fn evidence_in_block_2(solo_power: u64, other_power: u64) -> EvidenceInBlock2 {
    let (solo, other, op) = (key("solo"), key("other"), key("op"));
    let g = Arc::new(crate::testing::genesis_v2(
        CHAIN,
        &[(&solo, solo_power), (&other, other_power)],
        &op,
        1_000,
    ));
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, net, _) = crate::testing::actors(g.clone(), store.clone(), Some(solo.clone()));
    a.driver.start().await;
    pump(&mut a).await;
    assert_eq!(store.tip().unwrap().height, 1);
    a.host
        .handle(HostMsg::Evidence {
            evidence: Box::new(equivocation(&other, 1, 0)),
            ours: false,
        })
        .await;
    next_height(&mut a, 2).await;
    pump(&mut a).await;
    let b2 = store.block(2).unwrap().unwrap();
    assert_eq!(b2.evidence.len(), 1, "the held evidence is in block 2");
    EvidenceInBlock2 {
        solo,
        other,
        g,
        store,
        a,
        _net: net,
    }
}

/// Issue 20: a protocol-2 proposer puts the evidence its host holds into its block; the
/// block's execution jails the equivocator, whose absence the host announces for two
/// heights later, and the evidence is not offered again.
#[tokio::test]
async fn a_protocol_2_proposer_includes_the_evidence_it_holds() {
    let EvidenceInBlock2 {
        solo,
        other,
        g,
        store,
        mut a,
        _net,
    } = evidence_in_block_2(10, 1).await;
    let b2 = store.block(2).unwrap().unwrap();
    assert_eq!(b2.evidence[0].a.validator, other.address());
    let (from, current, next) = announced(&a);
    assert_eq!((from, current), (3, g.validators.hash()));
    let alone = ledger::validators::ValidatorSet::new(vec![ledger::types::Validator {
        address: solo.address(),
        pubkey: solo.public_key(),
        power: 10,
    }])
    .unwrap();
    assert_eq!(
        next,
        alone.hash(),
        "the jailed validator leaves the set of height 4"
    );
    next_height(&mut a, 3).await;
    pump(&mut a).await;
    let b3 = store.block(3).unwrap().unwrap();
    assert!(b3.evidence.is_empty(), "punished evidence offered again");
}

/// A store that has forgotten every punishment: its evidence records read as absent. A
/// block built on it with already-punished evidence carries the state root that punishing
/// the same evidence again would give.
struct ForgetPunishments<'a>(&'a MemStore);

impl ledger::state::AccountReader for ForgetPunishments<'_> {
    fn account_by_key(
        &self,
        key: &Hash,
    ) -> Result<Option<ledger::types::Account>, ledger::store::StoreError> {
        self.0.account_by_key(key)
    }
}

impl ledger::state::StateReader for ForgetPunishments<'_> {
    fn tree_node(
        &self,
        key: &jmt::storage::NodeKey,
    ) -> Result<Option<jmt::storage::Node>, ledger::store::StoreError> {
        self.0.tree_node(key)
    }

    fn tree_version(&self) -> Result<Option<(u64, Hash)>, ledger::store::StoreError> {
        self.0.tree_version()
    }

    fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, ledger::store::StoreError> {
        if preimage.starts_with(ledger::staking::EVIDENCE_KEY_TAG) {
            return Ok(None);
        }
        self.0.entry(preimage)
    }

    fn entries_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<ledger::state::Entries, ledger::store::StoreError> {
        let mut entries = self.0.entries_with_prefix(prefix)?;
        entries.retain(|(k, _)| !k.starts_with(ledger::staking::EVIDENCE_KEY_TAG));
        Ok(entries)
    }

    fn validator_set_record(
        &self,
        height: u64,
    ) -> Result<Option<Vec<ledger::types::Validator>>, ledger::store::StoreError> {
        self.0.validator_set_record(height)
    }

    fn committed_header(
        &self,
        height: u64,
    ) -> Result<Option<ledger::types::Header>, ledger::store::StoreError> {
        self.0.committed_header(height)
    }
}

/// Issue 20, test 2's last part: evidence is punished once. After block 2 punished an
/// equivocation, a proposal of height 3 carrying the same evidence again, with the state
/// root of a second punishment (a second slash, a longer jail), gets the host's nil
/// verdict; the same block without the evidence is valid (so the header and the rest of
/// the body are right, and only the repeated evidence is refused).
#[tokio::test]
async fn a_block_carrying_punished_evidence_again_is_invalid() {
    use ledger::block::{assemble_v2, BlockTemplate};
    use ledger::exec::{build_body_at, BlockEnv};

    // Other's stake of 20 loses 1 (5 %) per punishment; solo (1,000 of 1,020) decides
    // alone and proposes the first heights.
    let EvidenceInBlock2 {
        solo,
        other,
        g,
        store,
        mut a,
        _net,
    } = evidence_in_block_2(1_000, 20).await;
    let b2 = store.block(2).unwrap().unwrap();
    let punished = ledger::staking::validator_record(store.as_ref(), &other.public_key())
        .unwrap()
        .unwrap();
    assert_eq!(punished.stake, 19);

    let (_, current, next) = announced(&a);
    let tip = store.tip().unwrap();
    let commit2 = store.commit(2).unwrap().unwrap();
    let proposal = |evidence: &[ledger::types::Equivocation]| {
        let body = build_body_at(
            &ForgetPunishments(store.as_ref()),
            ExecContext {
                chain_id: CHAIN,
                params: &g.params,
                validators: &g.validators,
            },
            BlockEnv {
                height: 3,
                proposer: solo.address(),
                last_commit: Some(&commit2),
                evidence,
                signal: None,
            },
            Vec::new(),
            &Signatures::Verify,
        )
        .unwrap();
        assert_eq!(
            body.evidence.len(),
            evidence.len(),
            "{:?}",
            body.rejected_evidence
        );
        Arc::new(assemble_v2(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height: 3,
                round: 0,
                time_ms: tip.time_ms + 1,
                prev_hash: tip.block_hash,
                validators_hash: current,
                proposer: solo.address(),
                last_commit: Some(commit2.clone()),
            },
            next,
            &body,
        ))
    };
    let mut verdict = async |block: Arc<Block>| {
        a.host.handle(HostMsg::Body(block.clone())).await;
        a.host
            .handle(HostMsg::Validate {
                height: 3,
                hash: block.hash(),
            })
            .await;
        match a.answers_rx.try_recv() {
            Ok(DriverMsg::Validated { hash, valid, .. }) if hash == block.hash() => valid,
            other => panic!("expected the host's verdict, got {other:?}"),
        }
    };
    let again = proposal(&b2.evidence);
    assert!(
        !verdict(again).await,
        "a block punishing block 2's evidence a second time was accepted"
    );
    assert!(
        verdict(proposal(&[])).await,
        "the same block without the evidence is refused: the test's block is wrong"
    );
}

/// Protocol 2: a precommit of the tip that arrives after the decision (here: `other`'s, of
/// 20 power beside solo's 1,000, which decides alone) is added to the commit the next block
/// carries, so the downtime rule does not count `other` absent; one for another block or
/// round is not.
#[tokio::test]
async fn a_late_precommit_joins_the_commit_the_next_block_carries() {
    let (solo, other, op) = (key("solo"), key("other"), key("op"));
    let g = Arc::new(crate::testing::genesis_v2(
        CHAIN,
        &[(&solo, 1_000), (&other, 20)],
        &op,
        1_000,
    ));
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, _) = crate::testing::actors(g.clone(), store.clone(), Some(solo.clone()));
    a.driver.start().await;
    pump(&mut a).await;
    let b1 = store.block(1).unwrap().unwrap();
    assert_eq!(
        store.commit(1).unwrap().unwrap().signatures.len(),
        1,
        "solo decides block 1 alone"
    );
    let late = |block_hash: Hash, round: u32| {
        ConsensusMessage::Vote(other.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height: 1,
            round,
            kind: VoteKind::Precommit,
            block_hash: Some(block_hash),
        }))
    };
    // Not for the committed block, or not of its round: left out.
    a.driver.handle(consensus(late([9; 32], 0))).await;
    a.driver.handle(consensus(late(b1.hash(), 1))).await;
    pump(&mut a).await;
    assert_eq!(a.host.tip_commit.as_ref().unwrap().signatures.len(), 1);
    // Other's precommit of block 1, round 0, after the decision: it joins.
    a.driver.handle(consensus(late(b1.hash(), 0))).await;
    next_height(&mut a, 2).await;
    pump(&mut a).await;
    let b2 = store.block(2).unwrap().unwrap();
    let signers: Vec<[u8; 20]> = b2
        .last_commit
        .as_ref()
        .unwrap()
        .signatures
        .iter()
        .map(|s| s.validator)
        .collect();
    let mut both = vec![solo.address(), other.address()];
    both.sort();
    assert_eq!(signers, both, "block 2 carries both precommits of block 1");
    let record = ledger::staking::validator_record(store.as_ref(), &other.public_key())
        .unwrap()
        .unwrap();
    assert_eq!(
        record.consecutive_missed, 0,
        "other precommitted block 1 and is not counted absent"
    );
}

/// Issue 21, item 4: a chain that records protocol 2 from height A = 4 (window 2, lead 2,
/// every block signalling). A host that runs protocol 1 only applies the synced blocks up
/// to A - 1, halts with the upgrade message before the driver hears of the commit (so it
/// never starts height A), and blames no peer; a restart with the same binary is refused
/// at once with the same message, and nothing past A - 1 is ever written; a binary that
/// runs protocol 2 starts on that store.
#[tokio::test]
async fn a_host_that_does_not_run_the_activated_protocol_stops_before_its_height() {
    let (g, source, blocks) = crate::testing::signalling_chain(3, 2, 2);
    let activation = ledger::upgrade::ProtocolSchedule::read(&source, &g.params)
        .unwrap()
        .activation_of(ledger::types::PROTOCOL_2);
    assert_eq!(activation, Some(4));
    let message = "this network runs protocol 2 from height 4; this tallyd supports up to 1: \
                   upgrade it";
    let g = Arc::new(g);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, metrics) = crate::testing::actors(g.clone(), store.clone(), None);
    a.host.set_max_protocol(1);
    a.driver.start().await;
    pump(&mut a).await;
    let peer = PeerId::random();
    let mut verified: Vec<_> = verify_chunk(&g, 1, blocks)
        .unwrap()
        .into_iter()
        .map(|v| (peer, v))
        .collect();
    // Status while the signals are counted: block 1 signals, the window (2) is not full.
    let upgrade = |a: &Actors<MemStore>| {
        let st = a.handles.view.status.borrow();
        (st.protocol, st.upgrade.clone())
    };
    let counting = tally_api::Upgrade {
        next: 2,
        activation_height: None,
        readiness: Some(0.0),
        window: Some(2),
    };
    assert_eq!(upgrade(&a), (1, Some(counting.clone())));
    let rest = verified.split_off(1);
    assert_eq!(synced(&mut a, verified).await.blocks, 1);
    let ready = tally_api::Upgrade {
        readiness: Some(1.0),
        ..counting
    };
    assert_eq!(upgrade(&a), (1, Some(ready)));
    assert_eq!(metrics.upgrade_readiness.get(), 1.0);
    let applied = synced(&mut a, rest).await;
    assert_eq!(applied.blocks, 2);
    assert!(applied.fault.is_none());
    let recorded = tally_api::Upgrade {
        next: 2,
        activation_height: Some(4),
        readiness: None,
        window: None,
    };
    assert_eq!(upgrade(&a), (1, Some(recorded)));
    assert_eq!(metrics.protocol.get(), 1);
    assert_eq!(store.tip().unwrap().height, 3);
    let required = a
        .host
        .upgrade_required()
        .cloned()
        .expect("the host stopped");
    assert_eq!(required.to_string(), message);
    assert_eq!(required.height, 4);
    assert_eq!(
        a.handles.view.status.borrow().halted.as_deref(),
        Some(message)
    );
    assert_eq!(metrics.halted.get(), 1);
    pump(&mut a).await;
    a.driver.fire_timers().await;
    pump(&mut a).await;
    assert!(a.driver.height() < 4, "the driver never starts height A");
    assert!(published(&mut a).is_empty(), "nothing signed");

    // Restart with the same binary: refused at once, with the same message (the check
    // ChainHost::new and node::run_with make before anything else)...
    let refused = crate::upgrade::check_next_height(store.as_ref(), &g.params, 3, 1).unwrap();
    assert_eq!(refused.unwrap_err().to_string(), message);
    // ...and a binary that runs protocol 2 starts on the same store, to continue at A.
    let (b, _net, _) = crate::testing::actors(g.clone(), store.clone(), None);
    assert!(b.host.upgrade_required().is_none());
    assert_eq!(store.tip().unwrap().height, 3, "nothing written past A - 1");
}

/// The exit code of a run that stopped for an upgrade is its own.
#[test]
fn an_upgrade_stop_has_its_own_exit_code() {
    let required = crate::upgrade::UpgradeRequired {
        protocol: 2,
        height: 40,
        max: 1,
    };
    let e = anyhow::Error::new(required).context("the node stopped");
    assert_eq!(crate::upgrade::exit_code(&e), 3);
    assert_eq!(crate::upgrade::exit_code(&anyhow::anyhow!("disk full")), 1);
}

/// Issue 21, item 3: a lone validator on the new binary follows a protocol-1 chain through
/// its switch: after the synced blocks up to A - 1 = 3 it builds, signs and commits block
/// A = 4 as a protocol-2 block (version 2, `next_validators_hash` of the protocol-1 set)
/// and goes on; `/v1/status` and the gauge say protocol 2 and no upgrade under way.
#[tokio::test]
async fn a_validator_on_the_new_binary_builds_protocol_2_from_the_activation_height() {
    let (g, _, blocks) = crate::testing::signalling_chain(3, 2, 2);
    let g = Arc::new(g);
    let store = Arc::new(MemStore::new(&g).unwrap());
    let (mut a, _net, metrics) = crate::testing::actors(g.clone(), store.clone(), Some(key("v")));
    let peer = PeerId::random();
    let verified = verify_chunk(&g, 1, blocks).unwrap();
    let applied = synced(&mut a, verified.into_iter().map(|v| (peer, v)).collect()).await;
    assert_eq!(applied.blocks, 3);
    a.driver.start().await;
    pump(&mut a).await;
    next_height(&mut a, 6).await;
    let header = |h: u64| store.block(h).unwrap().unwrap().header;
    assert_eq!(header(3).protocol(), 1);
    assert_eq!(header(4).version, ledger::types::PROTOCOL_2);
    assert_eq!(header(4).next_validators_hash, Some(g.validators.hash()));
    assert_eq!(header(5).version, ledger::types::PROTOCOL_2);
    let st = a.handles.view.status.borrow().clone();
    assert_eq!((st.protocol, st.upgrade), (2, None));
    assert_eq!(metrics.protocol.get(), 2);
    assert!(a.host.upgrade_required().is_none());
}
