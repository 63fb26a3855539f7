use std::collections::HashMap;
use std::time::Duration;

use ledger::hash::to_hex;
use tally_tests::{account_key, transfer, TestNet};

/// 4 validators + 1 full node: 200 transfers submitted through the RPC of different nodes
/// are all committed; all five nodes agree on tip hash, state root and balances, and
/// every committed tx is found on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_and_a_full_node_commit_200_transfers() {
    let net = TestNet::builder()
        .validators(4)
        .full_nodes(1)
        .accounts(10)
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();

    let mut ids = Vec::new();
    let mut nonces: HashMap<usize, u64> = HashMap::new();
    let mut expected: HashMap<String, i128> = HashMap::new();
    for n in 0..200usize {
        let from = n % 10;
        let to = account_key((n + 3) % 10).address();
        let nonce = nonces.entry(from).or_insert(0);
        let tx = transfer(&account_key(from), *nonce, to, 100 + n as u64, 2);
        *nonce += 1;
        let node = n % 5;
        let id = net.submit_accepted(node, &tx).await;
        ids.push(id.unwrap_or_else(|e| panic!("tx {n}: {e}")));
        *expected
            .entry(to_hex(&account_key(from).address()))
            .or_default() -= (100 + n as i128) + 2;
        *expected.entry(to_hex(&to)).or_default() += 100 + n as i128;
    }
    for id in &ids {
        net.wait_committed(0, id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // Every node reaches the height of the last tx and holds every tx.
    let last = net.get(0, &format!("/v1/txs/{}", ids[199])).await.unwrap()["height"]
        .as_u64()
        .unwrap();
    let tip = net.height(0).await.unwrap().max(last);
    net.wait_for_height(tip, Duration::from_secs(30))
        .await
        .unwrap();
    net.assert_no_fork(&[0, 1, 2, 3, 4], [tip]).await;
    // Every connected peer shows the software it announced.
    let version = format!(
        "tally/{} protocols 1-{}",
        env!("CARGO_PKG_VERSION"),
        ledger::types::MAX_PROTOCOL
    );
    for i in 0..5 {
        let peers = net.get(i, "/v1/peers").await.unwrap();
        for p in peers["peers"].as_array().unwrap() {
            if p["connected"] == true {
                assert_eq!(p["agent"], version.as_str(), "node {i}: {p}");
            }
        }
    }
    for i in 0..5 {
        for id in &ids {
            let v = net.get(i, &format!("/v1/txs/{id}")).await.unwrap();
            assert_eq!(v["status"], "committed", "node {i} tx {id}: {v}");
        }
    }
    // Balances: same everywhere, and exactly what the transfers imply (fees go to
    // proposers, which are validator addresses, not test accounts).
    for k in 0..10 {
        let addr = to_hex(&account_key(k).address());
        let mut seen = Vec::new();
        for i in 0..5 {
            let a = net.get(i, &format!("/v1/accounts/{addr}")).await.unwrap();
            assert!(a["height"].as_u64().unwrap() >= tip);
            seen.push(a["balance"].as_u64().unwrap());
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "account {k} balances differ: {seen:?}"
        );
        let want = 1_000_000_000i128 + expected.get(&addr).copied().unwrap_or(0);
        assert_eq!(i128::from(seen[0]), want, "account {k}");
    }
    // No validator equivocated.
    for i in 0..5 {
        assert_eq!(net.evidence_count(i).await.unwrap(), 0);
    }
}
