//! Compact proposals (issue 22, lever 1) on real nodes: proposals travel as tx ids on
//! `tally/<chain>/proposal/1`, validators rebuild the blocks from their mempools, and a
//! validator whose mempool holds nothing fetches every tx of every block by id.

use std::time::Duration;

use tally_tests::workload::{assert_no_violations, Workload};
use tally_tests::{account_key, eventually, TestNet};

const WAIT: Duration = Duration::from_secs(90);
const ACCOUNTS: usize = 24;

/// Runs the workload over `nodes` until `txs` of its transfers are committed; returns what
/// it saw committed, checked by the checker against every node in `nodes`.
async fn commit_under_load(net: &TestNet, nodes: &[usize], txs: usize) -> usize {
    let rpcs = nodes.iter().map(|&i| net.rpc(i)).collect();
    let keys: Vec<_> = (0..ACCOUNTS).map(account_key).collect();
    let work = Workload::over(rpcs, &keys, net.http.clone());
    eventually(WAIT, "the workload's txs committed", || async {
        let n = work.committed_so_far();
        (n >= txs).then_some(()).ok_or(format!("{n} of {txs}"))
    })
    .await;
    let observed = work.stop().await;
    let tip = net.height(nodes[0]).await.unwrap();
    net.wait_nodes_height(nodes, tip, WAIT).await.unwrap();
    let (violations, _) = net
        .check(nodes, observed.clone(), &Default::default())
        .await
        .unwrap();
    assert_no_violations(&violations, tip, observed.len());
    observed.len()
}

/// Rounds per height on node `i` (its `tally_consensus_rounds_per_height` histogram).
async fn rounds_per_height(net: &TestNet, i: usize) -> (f64, f64) {
    let name = "tally_consensus_rounds_per_height";
    let heights = net.metric(i, &format!("{name}_count"), None).await.unwrap();
    let rounds = net.metric(i, &format!("{name}_sum"), None).await.unwrap();
    (heights, rounds)
}

/// A healthy network of four validators on this release sends proposals compact only:
/// every tx the workload saw accepted is committed, each height is decided in its first
/// round, the validators rebuild the blocks from their pools and fetch few txs, and no
/// full proposal travels once the peers know each other's subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_proposals_commit_every_tx_in_one_round_per_height() {
    let net = TestNet::builder()
        .validators(4)
        .accounts(ACCOUNTS)
        .start()
        .await
        .unwrap();
    net.wait_for_height(2, WAIT).await.unwrap();
    let all = [0, 1, 2, 3];
    // Heights decided while the nodes were still starting do not count.
    let mut before = Vec::new();
    for i in all {
        before.push(rounds_per_height(&net, i).await);
    }
    let committed = commit_under_load(&net, &all, 300).await;
    let mut fetched = 0.0;
    for i in all {
        let (heights, rounds) = rounds_per_height(&net, i).await;
        let (heights, rounds) = (heights - before[i].0, rounds - before[i].1);
        assert!(heights >= 3.0, "node {i} decided {heights} heights");
        assert_eq!(
            rounds, heights,
            "node {i}: a height took more than one round"
        );
        let pool = net
            .metric(i, "tally_proposal_rebuilds_total", Some("outcome=\"pool\""))
            .await
            .unwrap();
        assert!(pool >= 1.0, "node {i} rebuilt no block from its pool");
        let failed = net
            .metric(
                i,
                "tally_proposal_rebuilds_total",
                Some("outcome=\"failed\""),
            )
            .await
            .unwrap();
        assert_eq!(failed, 0.0, "node {i} failed to rebuild a block");
        fetched += net
            .metric(i, "tally_proposal_txs_fetched_total", None)
            .await
            .unwrap();
        let compact = net
            .metric(i, "tally_proposal_bytes_total", Some("kind=\"compact\""))
            .await
            .unwrap();
        assert!(compact > 0.0, "node {i} received no compact proposal");
    }
    eprintln!("{committed} txs committed; {fetched} fetched by all validators together");
    // Each block reaches the 3 validators that did not propose it: at most a tenth of
    // the txs they received were fetched (a tx the proposer took right after it arrived
    // can beat its gossip to a peer, more so on a loaded machine).
    assert!(
        fetched * 10.0 <= 3.0 * committed as f64,
        "{fetched} txs fetched for {committed} committed: the pools should hold nearly all"
    );
}

/// A validator whose mempool takes nothing (`mempool.max_txs` = 1: every gossiped tx
/// is refused, the pool is full) rebuilds every block from fetches. With another validator
/// stopped, no block commits without its votes: blocks still commit, through fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_with_a_starved_mempool_rebuilds_blocks_through_fetches() {
    let mut net = TestNet::builder()
        .validators(4)
        .accounts(ACCOUNTS)
        .node_env(3, "TALLY_MEMPOOL_MAX_TXS", "1")
        .start()
        .await
        .unwrap();
    net.wait_for_height(2, WAIT).await.unwrap();
    net.stop(0).await.unwrap();
    let live = [1, 2, 3];
    let committed = commit_under_load(&net, &live, 100).await;
    let fetched = net
        .metric(3, "tally_proposal_txs_fetched_total", None)
        .await
        .unwrap();
    let rebuilt = net
        .metric(
            3,
            "tally_proposal_rebuilds_total",
            Some("outcome=\"fetched\""),
        )
        .await
        .unwrap();
    eprintln!("{committed} txs committed; node 3 fetched {fetched} in {rebuilt} blocks");
    assert!(rebuilt >= 1.0, "node 3 rebuilt no block through a fetch");
    assert!(
        fetched + 1.0 >= committed as f64 * 0.5,
        "node 3 fetched {fetched} txs of {committed} committed"
    );
}
