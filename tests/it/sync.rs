//! Block sync on the real stack: a full node started after the chain has 1,000 blocks
//! fetches them from several peers, verifies and re-executes them, reports its progress in
//! `/v1/status`, and then follows the tip with the same blocks and state roots.

use std::time::{Duration, Instant};

use tally_tests::{account_key, eventually, transfer, TestNet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_syncs_1000_blocks_from_several_peers_and_follows() {
    // One validator and one full node: short blocks, and two peers to sync from.
    let mut net = TestNet::builder()
        .validators(1)
        .full_nodes(1)
        .timeout_commit_ms(15)
        .start()
        .await
        .unwrap();
    // Transactions in the chain, so re-execution has work and the rate shows tx/s.
    let mut ids = Vec::new();
    for a in 0..10 {
        for nonce in 0..10 {
            let tx = transfer(&account_key(a), nonce, [7; 20], 1 + nonce, 1);
            ids.push(net.submit_accepted(0, &tx).await.unwrap());
        }
    }
    let started = Instant::now();
    net.wait_nodes_height(&[0], 1000, Duration::from_secs(150))
        .await
        .unwrap();
    eprintln!("1000 blocks in {:.1}s", started.elapsed().as_secs_f64());
    // The first full node keeps up too (a second peer to sync from).
    let h = net.height(0).await.unwrap();
    net.wait_nodes_height(&[1], h, Duration::from_secs(60))
        .await
        .unwrap();
    for id in &ids {
        net.wait_committed(1, id, Duration::from_secs(10))
            .await
            .unwrap();
    }

    // What nodes 0 and 1 have served so far (node 1 may have synced a little from node 0).
    let served_before = served(&net, &[0, 1]).await;
    let joined = Instant::now();
    let j = net.add_full_node().await.unwrap();
    let target = net.height(0).await.unwrap();
    // While behind, /v1/status says so and shows the target.
    let mut saw_catching_up = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = net.get(j, "/v1/status").await.unwrap();
        let h = s["height"].as_u64().unwrap_or(0);
        if s["catching_up"] == true {
            saw_catching_up = true;
            assert!(s["sync_target"].as_u64().unwrap_or(0) >= h, "{s}");
        }
        if h >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "joiner stuck at {h} of {target}: {s}\n{}",
            net.tail_log(j)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = joined.elapsed().as_secs_f64();
    eprintln!(
        "joiner synced {target} blocks in {secs:.1}s ({:.0} blocks/s incl. start-up)",
        target as f64 / secs
    );
    assert!(saw_catching_up, "status never showed catching_up");
    // Every block the joiner applied through sync was served by node 0 or node 1, and
    // counted there (`tally_sync_blocks_served_total`): at least as many as it applied (a
    // block served twice, or served and then dropped, counts twice).
    // The host commits a synced batch block by block (the height above moves with it) and
    // answers the sync actor, which counts the batch, once the whole batch is in: the
    // count may trail the height by one batch for a moment.
    let net_ref = &net;
    let want = target.saturating_sub(64);
    let synced = tally_tests::eventually(
        Duration::from_secs(10),
        "the synced-block count to catch up with the height",
        || async move {
            let n = counter(net_ref, j, "tally_sync_blocks_total").await;
            if n >= want {
                Ok(n)
            } else {
                Err(format!("{n} counted"))
            }
        },
    )
    .await;
    let served_by = served(&net, &[0, 1]).await - served_before;
    eprintln!("joiner applied {synced} synced blocks; nodes 0 and 1 served {served_by}");
    assert!(
        synced >= target.saturating_sub(64),
        "the joiner applied only {synced} of {target} blocks through sync"
    );
    assert!(
        served_by >= synced,
        "nodes 0 and 1 count {served_by} blocks served, the joiner applied {synced} from them"
    );

    // It follows the tip afterwards (new blocks arrive through consensus gossip).
    let later = net.height(0).await.unwrap() + 5;
    net.wait_nodes_height(&[j], later, Duration::from_secs(30))
        .await
        .unwrap();
    net.assert_no_fork(&[0, j], [1, 2, 500, 999, 1000, target, later])
        .await;
    for id in &ids {
        net.wait_committed(j, id, Duration::from_secs(5))
            .await
            .unwrap();
    }
    // The summary is logged at the first sync check (every second) that finds the joiner
    // level with its peers; on a loaded machine that can come after the checks above.
    let done = eventually(
        Duration::from_secs(30),
        "a catch-up summary logged after reaching the tip",
        || {
            let log = std::fs::read_to_string(net.log_path(j)).unwrap();
            let line = log
                .lines()
                .find(|l| l.contains("caught up with peers"))
                .map(str::to_string);
            async move { line.ok_or_else(|| "none yet".to_string()) }
        },
    )
    .await;
    assert!(
        done.contains("blocks/s") && done.contains("tx/s"),
        "no sync rate in the summary: {done}"
    );
    eprintln!("joiner: {done}");
}

/// A counter's value on node `i` (`/metrics`).
async fn counter(net: &TestNet, i: usize, name: &str) -> u64 {
    tally_tests::netns::scrape_counter(&net.http, &net.metrics_url(i), name)
        .await
        .unwrap()
}

/// `tally_sync_blocks_served_total` summed over `nodes`.
async fn served(net: &TestNet, nodes: &[usize]) -> u64 {
    let mut sum = 0;
    for &i in nodes {
        sum += counter(net, i, "tally_sync_blocks_served_total").await;
    }
    sum
}
