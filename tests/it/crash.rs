//! Crash torture: under a steady load a validator is SIGKILLed at random moments and
//! restarted (`TALLY_CRASH_ROUNDS`, default 3; `make soak` runs 20). Every restart catches
//! up, no node forks, nobody double-signs, and every tx reported committed before a kill
//! is still committed afterwards on every node.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_tests::{account_key, transfer, TestNet};

/// A small deterministic PRNG (xorshift), seeded from the clock and printed so a failing
/// run can be repeated with `TALLY_CRASH_SEED`.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // the seed comes from the clock
async fn validator_killed_at_random_moments_rejoins_without_fork_or_loss() {
    let rounds: usize = std::env::var("TALLY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("TALLY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash torture: {rounds} rounds, TALLY_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut net = TestNet::builder()
        .validators(4)
        .timeout_commit_ms(50)
        .start()
        .await
        .unwrap();
    net.wait_for_height(2, Duration::from_secs(60))
        .await
        .unwrap();

    // Steady load on nodes 0 and 1 (the victim is validator 3).
    let stop = Arc::new(AtomicBool::new(false));
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (stop, submitted) = (stop.clone(), submitted.clone());
        let urls = [net.rpc(0), net.rpc(1)];
        let http = net.http.clone();
        tokio::spawn(async move {
            let mut nonces = [0u64; 4];
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let a = k % 4;
                let tx = transfer(&account_key(a), nonces[a], [5; 20], 1, 1);
                let hex = ledger::to_hex(&ledger::codec::encode(&tx));
                let r = http
                    .post(format!("{}/v1/txs", urls[k % 2]))
                    .json(&serde_json::json!({ "tx": hex }))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().as_u16() == 202 {
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            if let Some(id) = v["tx_id"].as_str() {
                                submitted.lock().unwrap().push(id.to_string());
                                nonces[a] += 1;
                            }
                        }
                    }
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut committed: HashSet<String> = HashSet::new();
    let started = Instant::now();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(200 + rng.next(1500))).await;
        // Everything node 0 reports committed now must survive the kill.
        let ids: Vec<String> = submitted
            .lock()
            .unwrap()
            .iter()
            .filter(|id| !committed.contains(*id))
            .cloned()
            .collect();
        for id in &ids {
            let v = net.get(0, &format!("/v1/txs/{id}")).await.unwrap();
            if v["status"] == "committed" {
                committed.insert(id.clone());
            }
        }
        net.kill(3);
        let at = net.height(0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.next(500))).await;
        net.start_node(3).unwrap();
        net.wait_addresses(3, Duration::from_secs(30))
            .await
            .unwrap();
        net.wait_nodes_height(&[3], at + 1, Duration::from_secs(60))
            .await
            .unwrap();
        eprintln!(
            "round {round}: killed at height {at}, back at {}",
            net.height(3).await.unwrap()
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let end = net.height(0).await.unwrap() + 2;
    net.wait_for_height(end, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "{rounds} kills in {:.1}s; chain at {end}; {} txs checked",
        started.elapsed().as_secs_f64(),
        committed.len()
    );
    assert!(!committed.is_empty(), "the load committed nothing");

    // No fork: the same block at every height on every node.
    for h in 1..=end {
        let reference = net.block_at(0, h).await.unwrap();
        for i in 1..4 {
            assert_eq!(
                net.block_at(i, h).await.unwrap(),
                reference,
                "fork at height {h} on node {i}"
            );
        }
    }
    for i in 0..4 {
        assert_eq!(
            net.evidence_count(i).await.unwrap(),
            0,
            "node {i} saw a double signature"
        );
        for id in &committed {
            let v = net.get(i, &format!("/v1/txs/{id}")).await.unwrap();
            assert_eq!(v["status"], "committed", "tx {id} lost on node {i}: {v}");
        }
    }
}
