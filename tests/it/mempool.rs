use std::time::Duration;

use tally_tests::{account_key, transfer, TestNet};

/// A transaction accepted while its node had no peer to gossip it to is not lost: once a
/// peer appears, the node gossips its long-pending transactions again, and the validator
/// commits it. (Without re-announcement it would sit in the full node's pool, which never
/// proposes, until its TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_whose_gossip_was_lost_is_gossiped_again_and_committed() {
    let mut net = TestNet::builder()
        .validators(1)
        .full_nodes(1)
        .create()
        .unwrap();
    // The full node runs alone first: no peers, so its gossip of the tx goes nowhere.
    net.start_node(1).unwrap();
    let full = net
        .wait_addresses(1, Duration::from_secs(30))
        .await
        .unwrap();
    let id = net
        .submit_accepted(1, &transfer(&account_key(0), 0, [9; 20], 5, 1))
        .await
        .unwrap();
    // Then the validator starts and dials the full node.
    net.set_node_env(0, "TALLY_P2P_BOOTSTRAP", &full.p2p.join(","));
    net.start_node(0).unwrap();
    net.wait_addresses(0, Duration::from_secs(30))
        .await
        .unwrap();
    let committed = net
        .wait_committed(0, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(committed["status"], "committed");
    net.wait_committed(1, &id, Duration::from_secs(30))
        .await
        .unwrap();
    let m = reqwest::get(net.metrics_url(1))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reannounced = m
        .lines()
        .find_map(|l| l.strip_prefix("tally_mempool_reannounced_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    assert!(
        reannounced >= 1.0,
        "the full node re-announced nothing: {reannounced}"
    );
}
