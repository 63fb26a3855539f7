//! Issue 20, test 5: a late joiner after many blocks and 10 validator-set changes reaches
//! the same state root, and `tally balance --verify` against genesis follows the set
//! changes to the tip, and fails when the node lies about a set.
//!
//! The chain runs `TALLY_LIGHT_BLOCKS` blocks (default 300, so the test stays near a
//! minute in a debug build on two cores; the 1,000 was run by hand with
//! `TALLY_LIGHT_BLOCKS=1000`, see wallet-cli/README.md for the figures). The 10 changes
//! are spread evenly over the run: two joiner keys bond in and grow, three genesis
//! validators unbond, one grows. At the tip only one genesis validator (10 of genesis'
//! 40) still signs, so the wallet cannot skip from genesis to the tip in one step and
//! must bisect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::hash::to_hex;
use ledger::types::{Payload, PublicKeyBytes, Tx};
use serde_json::Value;
use tally_tests::{account_key, bin, block_id, eventually, TestNet, CHAIN_ID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(120);
/// Stake per power is 1,000 and the minimum stake 10,000: a bond of 10,000 is power 10.
const UNIT: u64 = 10_000;

fn blocks() -> u64 {
    std::env::var("TALLY_LIGHT_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn tally(keys: &Path, args: &[&str]) -> Output {
    Command::new(bin("tally"))
        .env("TALLY_KEYS_DIR", keys)
        .args(args)
        .output()
        .unwrap()
}

/// A node that lies about sets: forwards every GET to `upstream`, except that it answers
/// `/v1/validators?height=H` with the genesis set relabelled as the set of H (a node
/// claiming the set never changed).
async fn lying_proxy(http: reqwest::Client, upstream: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (http, upstream) = (http.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let asked = path
                    .strip_prefix("/v1/validators?height=")
                    .and_then(|h| h.parse::<u64>().ok());
                let target = if asked.is_some() {
                    "/v1/validators?height=1".to_string()
                } else {
                    path
                };
                let (status, mut body) = match http.get(format!("{upstream}{target}")).send().await
                {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.bytes().await.unwrap_or_default().to_vec(),
                    ),
                    Err(_) => (502, Vec::new()),
                };
                if let Some(h) = asked {
                    if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
                        v["height"] = h.into();
                        body = serde_json::to_vec(&v).unwrap();
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    addr
}

/// The `validators_hash` of height `h` on node `i`.
async fn set_hash(net: &TestNet, i: usize, h: u64) -> String {
    let v = net
        .get(i, &format!("/v1/validators?height={h}"))
        .await
        .unwrap();
    v["validators_hash"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_and_the_wallet_follow_ten_set_changes_from_genesis() {
    let n = blocks();
    let started = std::time::Instant::now();
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .joiners(2)
        .timeout_commit_ms(20)
        .start()
        .await
        .unwrap();
    let genesis_path = net.dir().join("genesis.json");
    let genesis = Genesis::load(&genesis_path).unwrap();
    let genesis_key = |i: usize| -> PublicKeyBytes {
        genesis
            .validators
            .validators()
            .iter()
            .find(|v| net.nodes[i].validator == Some(v.address))
            .unwrap()
            .pubkey
    };
    let j0 = net.validator_key(4).unwrap().public_key();
    let j1 = net.validator_key(5).unwrap().public_key();
    // (operator account, payload): accounts 0..3 operate genesis validators 0..3.
    let changes: Vec<(usize, Payload)> = vec![
        (
            7,
            Payload::Bond {
                validator: j0,
                amount: UNIT,
            },
        ),
        (
            8,
            Payload::Bond {
                validator: j1,
                amount: UNIT,
            },
        ),
        (
            0,
            Payload::Unbond {
                validator: genesis_key(0),
                amount: UNIT,
            },
        ),
        (
            7,
            Payload::Bond {
                validator: j0,
                amount: UNIT,
            },
        ),
        (
            1,
            Payload::Bond {
                validator: genesis_key(1),
                amount: UNIT,
            },
        ),
        (
            8,
            Payload::Bond {
                validator: j1,
                amount: 2 * UNIT,
            },
        ),
        (
            1,
            Payload::Unbond {
                validator: genesis_key(1),
                amount: 2 * UNIT,
            },
        ),
        (
            2,
            Payload::Unbond {
                validator: genesis_key(2),
                amount: UNIT,
            },
        ),
        (
            3,
            Payload::Bond {
                validator: genesis_key(3),
                amount: UNIT,
            },
        ),
        (
            7,
            Payload::Bond {
                validator: j0,
                amount: UNIT,
            },
        ),
    ];
    let mut nonces: HashMap<usize, u64> = HashMap::new();
    let mut committed = Vec::new();
    for (k, (account, payload)) in changes.into_iter().enumerate() {
        // Spread over the run so the set history spans the chain.
        net.wait_nodes_height(&[3], (k as u64 + 1) * n / 12, WAIT)
            .await
            .unwrap();
        let key: Keypair = account_key(account);
        let nonce = nonces.entry(account).or_default();
        let tx = key.sign_tx(Tx {
            chain_id: CHAIN_ID.into(),
            from: key.public_key(),
            nonce: *nonce,
            fee: 1,
            payload,
        });
        *nonce += 1;
        let id = net.submit_accepted(3, &tx).await.unwrap();
        let v = net.wait_committed(3, &id, WAIT).await.unwrap();
        committed.push(v["height"].as_u64().unwrap());
    }
    net.wait_nodes_height(&[3], n, WAIT).await.unwrap();
    // Each change is a new set two heights after its block.
    for &c in &committed {
        assert_ne!(
            set_hash(&net, 3, c + 1).await,
            set_hash(&net, 3, c + 2).await,
            "the change committed at {c} did not change the set at {}",
            c + 2
        );
    }
    let genesis_addresses: Vec<String> = (0..4)
        .map(|i| to_hex(&net.nodes[i].validator.unwrap()))
        .collect();
    let tip_set = net
        .get(3, &format!("/v1/validators?height={n}"))
        .await
        .unwrap();
    let still: Vec<&Value> = tip_set["validators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| genesis_addresses.contains(&v["address"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        still.len(),
        1,
        "one genesis validator left at {n}: {tip_set}"
    );
    let chain_time = started.elapsed();

    // A full node that joins now syncs across every change and computes the same state.
    let late = net.add_full_node().await.unwrap();
    let tip = net.height(3).await.unwrap();
    net.wait_nodes_height(&[late], tip, WAIT).await.unwrap();
    let sync_time = started.elapsed() - chain_time;
    let (h, root) = eventually(WAIT, "the late joiner's status", || async {
        let s = net
            .get(late, "/v1/status")
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            s["height"].as_u64().ok_or("no height")?,
            s["state_root"].as_str().ok_or("no state_root")?.to_string(),
        ))
    })
    .await;
    let (_, reference) = block_id(&net.http, &net.rpc(3), h).await.unwrap();
    assert_eq!(root, reference, "the late joiner's state root at {h}");
    net.assert_no_fork(&[3, late], [1, n / 2, tip]).await;

    // The wallet verifies account 7 (which bonded three times) against genesis, from the
    // late joiner.
    let keys = tempfile::tempdir().unwrap();
    let address = to_hex(&account_key(7).address());
    let g = genesis_path.to_str().unwrap();
    let late_rpc = net.rpc(late);
    let out = tally(
        keys.path(),
        &[
            "--node",
            &late_rpc,
            "--output",
            "json",
            "balance",
            &address,
            "--verify",
            "--genesis",
            g,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "balance --verify: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert!(v["height"].as_u64().unwrap() >= tip, "{v}");
    let account = net
        .get(late, &format!("/v1/accounts/{address}"))
        .await
        .unwrap();
    assert_eq!(v["balance"], account["balance"], "{v}");
    assert_eq!(v["balance"], 1_000_000_000 - 3 * UNIT - 3, "{v}");
    // One genesis validator of four signs the tip: no skip straight from genesis.
    assert!(v["bisections"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["skipped"], true, "{v}");
    let headers = v["headers_verified"].as_u64().unwrap();
    assert!((2..40).contains(&headers), "{v}");
    let verify_time = started.elapsed() - chain_time - sync_time;
    eprintln!(
        "lightclient: {n} blocks, tip {tip}, changes committed at {committed:?}; chain {chain_time:?}, late-joiner sync {sync_time:?}, verify {verify_time:?}; wallet: {headers} headers, {} bisections, {} sets",
        v["bisections"], v["sets_fetched"]
    );

    // A node that says the set never changed is caught at the first set it is asked for.
    let proxy = lying_proxy(net.http.clone(), late_rpc).await;
    let out = tally(
        keys.path(),
        &[
            "--node",
            &format!("http://{proxy}"),
            "balance",
            &address,
            "--verify",
            "--genesis",
            g,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("verification FAILED") && stderr.contains("the node's set answer is wrong"),
        "{stderr}"
    );
}
