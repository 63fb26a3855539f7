//! A transfer workload through random nodes (shared by the loopback upgrade test and the
//! netns fault tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::crypto::Keypair;
use ledger::hash::to_hex;
use ledger::types::Address;
use rand::Rng;
use serde_json::Value;

use crate::checker::{Observation, Violation};
use crate::transfer;

/// Transfers between the testnet's accounts through random nodes, one outstanding tx per
/// account: each loop reads its account's nonce from a random node, sends a transfer to
/// another random node, and records it as observed once some node says committed.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    observed: Arc<Mutex<Vec<Observation>>>,
}

impl Workload {
    /// Starts one loop per account of `keys` over the nodes whose RPC base URLs are
    /// `rpcs` (they must stay the same across restarts: fixed ports).
    pub fn over(rpcs: Vec<String>, keys: &[Keypair], http: reqwest::Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let observed = Arc::new(Mutex::new(Vec::new()));
        let addresses: Vec<Address> = keys.iter().map(Keypair::address).collect();
        let tasks = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let key = Keypair::from_secret_bytes(&key.secret_bytes()).expect("key");
                let to = addresses[(k + 1) % addresses.len()];
                let rpcs = rpcs.clone();
                let http = http.clone();
                let stop = stop.clone();
                let observed = observed.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(o) = one_transfer(&http, &rpcs, &key, to, &stop).await {
                            observed.lock().expect("observed").push(o);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            observed,
        }
    }

    pub fn committed_so_far(&self) -> usize {
        self.observed.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Stops the loops; the txs seen committed.
    pub async fn stop(self) -> Vec<Observation> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let o = self.observed.lock().expect("observed").clone();
        o
    }
}

async fn one_transfer(
    http: &reqwest::Client,
    rpcs: &[String],
    key: &Keypair,
    to: Address,
    stop: &AtomicBool,
) -> Option<Observation> {
    let pick = || rand::thread_rng().gen_range(0..rpcs.len());
    let account: Value = http
        .get(format!(
            "{}/v1/accounts/{}",
            rpcs[pick()],
            to_hex(&key.address())
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let nonce = account["nonce"].as_u64()?;
    let amount = rand::thread_rng().gen_range(1..100);
    let tx = transfer(key, nonce, to, amount, 1);
    let body = serde_json::json!({ "tx": to_hex(&ledger::codec::encode(&tx)) });
    let r = http
        .post(format!("{}/v1/txs", rpcs[pick()]))
        .json(&body)
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 202 {
        return None;
    }
    let id = to_hex(&tx.id());
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let Ok(r) = http
            .get(format!("{}/v1/txs/{id}", rpcs[pick()]))
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        if v["status"] == "committed" {
            return Some(Observation {
                tx_id: id,
                height: v["height"].as_u64()?,
            });
        }
    }
    None
}

/// Panics with every violation, one a line.
pub fn assert_no_violations(v: &[Violation], height: u64, observed: usize) {
    assert!(
        v.is_empty(),
        "the checker found {} violation(s) over heights 1..={height} ({observed} txs seen committed):\n{}",
        v.len(),
        v.iter().map(|x| format!("  {x}")).collect::<Vec<_>>().join("\n")
    );
}
