//! Issue 20's headline through the user's own tools: a protocol-2 `tallyd testnet up`,
//! three validators added with `tallyd testnet add-validator`, two genesis validators taken
//! out with `remove-validator`; the chain keeps committing on the new set with no fork, the
//! supervisor's table shows each node's power, and the checker passes on every node.
//! Loopback 127.0.79.x (its own range, so the fixed ports never meet another test's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ledger::genesis::Genesis;
use serde_json::Value;
use tally_tests::checker::{check_nodes, longest_gap_ms, Endpoint};
use tally_tests::{assert_no_fork, bin, eventually};

const BASE: &str = "127.0.79";

fn rpc(i: usize) -> String {
    format!("http://{BASE}.{}:26657", 2 + i)
}

/// Kills the supervisor and every node with a pid file (the added ones too) if the test
/// fails half-way, and prints the supervisor's output and the logs' tails.
struct Guard {
    dir: PathBuf,
    up: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..16 {
            let pid = std::fs::read_to_string(self.dir.join(format!("node{i}/pid")));
            if let Ok(pid) = pid {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        if std::thread::panicking() {
            let out = std::fs::read_to_string(self.dir.join("up.out")).unwrap_or_default();
            eprintln!("up output:\n{out}");
        }
    }
}

fn tallyd(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("tallyd"))
        .arg("testnet")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {text}");
    text
}

async fn height(http: &reqwest::Client, i: usize) -> Option<u64> {
    let s: Value = http
        .get(format!("{}/v1/status", rpc(i)))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    s["height"].as_u64()
}

/// Waits until every node of `nodes` is at height `h` or more.
async fn wait_height(http: &reqwest::Client, nodes: &[usize], h: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("nodes {nodes:?} at height {h}"),
        || async move {
            let mut hs = Vec::new();
            for &i in nodes {
                hs.push(height(http, i).await);
            }
            if hs.iter().all(|x| x.is_some_and(|x| x >= h)) {
                Ok(())
            } else {
                Err(format!("heights {hs:?}"))
            }
        },
    )
    .await
}

/// The addresses of the set of the next height, as node `i` answers.
async fn set(http: &reqwest::Client, i: usize) -> Vec<String> {
    let v: Value = http
        .get(format!("{}/v1/validators", rpc(i)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["validators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn validators_join_and_leave_through_the_testnet_verbs_and_the_chain_goes_on() {
    let tmp = tempfile::Builder::new()
        .prefix("tally-validators-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("testnet");
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::fs::File::create(dir.join("up.out")).unwrap();
    let up = Command::new(bin("tallyd"))
        .args(["testnet", "up", "--protocol", "2", "--non-interactive"])
        .args(["--validators", "4", "--full-nodes", "1", "--accounts", "4"])
        .args([
            "--timeout-commit-ms",
            "300",
            "--base-ip",
            &format!("{BASE}.2"),
        ])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut guard = Guard {
        dir: dir.clone(),
        up: Some(up),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap();
    wait_height(&http, &[0, 1, 2, 3, 4], 3).await;

    // A full node holds no key to unbond: a clear refusal, nothing changes.
    let refused = tallyd(&dir, &["remove-validator", "4"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("full node"),
        "{refused:?}"
    );

    // Three new validators, each bonded by another funded account.
    for (i, from) in [(5, "account0"), (6, "account1"), (7, "account2")] {
        let text = ok(
            &tallyd(&dir, &["add-validator", "--from", from]),
            "add-validator",
        );
        assert!(
            text.contains(&format!("node{i} is a validator from height")),
            "{text}"
        );
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("testnet.json")).unwrap()).unwrap();
    let address = |i: usize| {
        manifest["nodes"][i]["validator_address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let grown = set(&http, 0).await;
    assert_eq!(grown.len(), 7, "{grown:?}");
    for i in 5..8 {
        assert!(grown.contains(&address(i)), "node{i} is not in {grown:?}");
    }

    // Two genesis validators leave: with 2 of 4 genesis validators gone the old set
    // would halt (issue 20's negative control, tests/it/staking.rs); the new one goes on.
    for i in [0usize, 1] {
        let text = ok(
            &tallyd(&dir, &["remove-validator", &i.to_string()]),
            "remove",
        );
        assert!(
            text.contains(&format!("node{i} left the validator set")),
            "{text}"
        );
    }
    let live = [2usize, 3, 4, 5, 6, 7];
    let shrunk = set(&http, 2).await;
    assert_eq!(shrunk.len(), 5, "{shrunk:?}");
    assert!(!shrunk.contains(&address(0)) && !shrunk.contains(&address(1)));
    let now = height(&http, 2).await.unwrap();
    wait_height(&http, &live, now + 5).await;
    let top = height(&http, 2).await.unwrap();
    let rpcs: Vec<String> = live.iter().map(|&i| rpc(i)).collect();
    assert_no_fork(&http, &rpcs, 1..=top.min(now + 5)).await;

    // The supervisor's table shows the powers: 10 for a validator in the set, 0 for one
    // that unbonded.
    let status = ok(&tallyd(&dir, &["status"]), "status");
    let row = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{status}"))
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(row("node5"), "10", "{status}");
    assert_eq!(row("node2"), "10", "{status}");
    assert_eq!(row("node0"), "0", "{status}");
    assert_eq!(row("node4"), "-", "{status}");

    // The checker over every node, the two that left restarted (out of the set, they
    // follow) so their stores are read too: one chain, and every balance, bond,
    // unbonding entry, validator record and the burned total a replay of it.
    for i in ["0", "1"] {
        ok(&tallyd(&dir, &["restart", i]), "restart");
    }
    let all: Vec<usize> = (0..8).collect();
    let tip = height(&http, 2).await.unwrap();
    wait_height(&http, &all, tip).await;
    let genesis = Genesis::load(&dir.join("genesis.json")).unwrap();
    let nodes: Vec<Endpoint> = all
        .iter()
        .map(|&i| Endpoint {
            name: format!("node{i}"),
            rpc: rpc(i),
            metrics: Some(format!("http://{BASE}.{}:26660/metrics", 2 + i)),
        })
        .collect();
    let (violations, history) = check_nodes(&http, &nodes, &genesis, Vec::new(), &BTreeMap::new())
        .await
        .unwrap();
    tally_tests::workload::assert_no_violations(
        &violations,
        history.nodes[0].blocks.len() as u64,
        history.observed.len(),
    );
    let longest = longest_gap_ms(&history.nodes[0].blocks);
    assert!(longest < 10_000, "the chain stalled for {longest} ms");

    // SIGTERM the supervisor: it stops the added nodes too.
    let mut up = guard.up.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    eventually(Duration::from_secs(30), "the supervisor to exit", || {
        let exited = up.try_wait().unwrap();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await;
    for i in 5..8 {
        assert!(
            !dir.join(format!("node{i}/pid")).exists(),
            "node{i} was left running"
        );
    }
}
