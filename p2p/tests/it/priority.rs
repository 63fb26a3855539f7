//! Tx floods must not starve consensus (issue 17, item 7, the p2p part).

use tally_p2p::{Event, Topic, Verdict};
use tokio::time::Instant;

use crate::support::{config, start, wait_until, TestNode};

const BATCHES: usize = 96;
const TXS_PER_BATCH: u32 = 1024;
const CONSENSUS: usize = 12;

/// A tx batch as the node encodes it, borsh(Vec<SignedTx>): a u32 little-endian count,
/// then the txs (opaque to this crate; 16 bytes each here).
fn batch(i: usize) -> Vec<u8> {
    let mut data = TXS_PER_BATCH.to_le_bytes().to_vec();
    for t in 0..TXS_PER_BATCH {
        data.extend_from_slice(&(i as u64).to_le_bytes());
        data.extend_from_slice(&u64::from(t).to_le_bytes());
    }
    data
}

fn dropped(node: &TestNode, kind_contains: &str) -> f64 {
    node.metrics()
        .lines()
        .filter(|l| l.starts_with("tally_p2p_dropped_total{") && l.contains(kind_contains))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// B floods tx batches of 1,024 txs as fast as it can publish while C sends consensus
/// messages, and A does not read its events meanwhile (a router busy verifying). A's tx
/// queue overflows; that costs tx batches only, never a consensus message. And the tx rate
/// limit counts the txs in each batch: B gets about `max_txs_per_sec_per_peer` txs a second
/// through, not that many batches.
#[tokio::test]
async fn tx_flood_does_not_crowd_out_consensus() {
    let mut ca = config([127, 0, 12, 1], 70);
    ca.discovery = false;
    ca.event_buffer = 8;
    let mut a = start(ca).await;
    let limit_txs = 20_000.0; // the default per-peer tx rate (txs per second)
    let mut nodes = Vec::new();
    for (ip, seed) in [([127, 0, 12, 2], 71), ([127, 0, 12, 3], 72)] {
        let mut c = config(ip, seed);
        c.discovery = false;
        c.bootstrap = vec![a.tcp.clone().unwrap()];
        nodes.push(start(c).await);
    }
    let (b, c) = (&nodes[0], &nodes[1]);
    for (node, topic) in [(b, Topic::TxBatch), (c, Topic::Consensus)] {
        wait_until("the sender sees A subscribed", || async {
            node.peer(a.id)
                .await
                .is_some_and(|p| p.topics.contains(&topic))
        })
        .await;
    }

    let t0 = Instant::now();
    for i in 0..BATCHES {
        b.handle.publish(Topic::TxBatch, batch(i)).await.unwrap();
        if i % (BATCHES / CONSENSUS) == BATCHES / CONSENSUS - 1 {
            let vote = format!("vote {i}").into_bytes();
            c.handle.publish(Topic::Consensus, vote).await.unwrap();
        }
    }
    // Wait until A has taken in every message (queued, dropped or rate-limited), without
    // reading its events.
    wait_until("A took in the whole flood", || async {
        a.metric("tally_gossip_messages_total{topic=\"consensus\",direction=\"in\"}")
            >= CONSENSUS as f64
            && a.metric("tally_gossip_messages_total{topic=\"txs\",direction=\"in\"}")
                + dropped(&a, "rate_limited")
                >= BATCHES as f64
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();

    // Now A reads what it was handed.
    let handle = a.handle.clone();
    let (mut consensus, mut batches) = (0usize, 0usize);
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), a.events.recv()).await
    {
        if let Event::Message {
            topic,
            msg_id,
            source,
            ..
        } = ev
        {
            match topic {
                Topic::Consensus => consensus += 1,
                _ => batches += 1,
            }
            handle
                .validated(msg_id, source, Verdict::Ignore)
                .await
                .unwrap();
        }
    }
    let metrics = a.metrics();
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tally_p2p_dropped_total{"))
        .collect();
    eprintln!(
        "tx flood: {BATCHES} batches in {elapsed:.2} s, {batches} handed to the node, \
         {consensus}/{CONSENSUS} consensus messages; drops: {drops:?}"
    );
    assert_eq!(
        consensus, CONSENSUS,
        "consensus messages were lost to the tx flood: {drops:?}"
    );
    assert_eq!(dropped(&a, "consensus"), 0.0, "{drops:?}");
    // The rate limit counts txs: what got past it is bounded by the tx rate (one second's
    // burst plus the refill), whatever the number of messages.
    let passed = a.metric("tally_gossip_messages_total{topic=\"txs\",direction=\"in\"}");
    let bound = limit_txs * (1.0 + elapsed) + f64::from(TXS_PER_BATCH);
    assert!(
        passed * f64::from(TXS_PER_BATCH) <= bound,
        "{passed} batches of {TXS_PER_BATCH} txs passed the rate limit in {elapsed:.2} s \
         (at most {bound} txs allowed)"
    );
}
