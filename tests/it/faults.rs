use std::time::Duration;

use tally_tests::{account_key, transfer, TestNet};

/// One of four validators stopped: the other three keep committing. Two of four stopped:
/// the chain halts without forking, and resumes when one returns. A validator restarted on
/// its data dir rejoins without double-signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_survives_one_halts_at_two_and_resumes() {
    let mut net = TestNet::builder()
        .validators(4)
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();

    net.stop(3).await.unwrap();
    let h = net.height(0).await.unwrap();
    net.wait_nodes_height(&[0, 1, 2], h + 3, Duration::from_secs(60))
        .await
        .unwrap();
    // A transfer still commits with 3 of 4.
    let id = net
        .submit_accepted(1, &transfer(&account_key(0), 0, [9; 20], 5, 1))
        .await
        .unwrap();
    net.wait_committed(0, &id, Duration::from_secs(30))
        .await
        .unwrap();

    // Two down: 20 of 40 power is not more than 2/3; nothing may commit.
    net.kill(2);
    // Let in-flight heights settle, then the height must stay put.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let halted = net.height(0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            net.height(0).await.unwrap(),
            halted,
            "committed without a quorum"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let halted = net.height(0).await.unwrap();

    // Node 2 returns (killed with SIGKILL, same data dir): the chain resumes, node 2
    // catches up, and nobody signed twice.
    net.start_node(2).unwrap();
    net.wait_addresses(2, Duration::from_secs(30))
        .await
        .unwrap();
    net.wait_nodes_height(&[0, 1, 2], halted + 3, Duration::from_secs(90))
        .await
        .unwrap();
    net.start_node(3).unwrap();
    net.wait_addresses(3, Duration::from_secs(30))
        .await
        .unwrap();
    let target = net.height(0).await.unwrap() + 2;
    net.wait_for_height(target, Duration::from_secs(90))
        .await
        .unwrap();
    // Same block at every height on every node (no fork).
    net.assert_no_fork(&[0, 1, 2, 3], 1..=target).await;
    for i in 0..4 {
        assert_eq!(
            net.evidence_count(i).await.unwrap(),
            0,
            "node {i} saw a double signature"
        );
    }
}
