//! A large genesis end to end: `tallyd testnet init --genesis-accounts` writes the bulk
//! accounts, a real `tallyd` builds its state from them (several chunks), serves them over
//! RPC with proofs, makes blocks, and starts again on the same database (the genesis hash
//! check still passes after the node freed the account list). Own loopback address
//! (127.0.78.2) because testnet nodes use fixed ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ledger::genesis::{bulk_account_address, Genesis, BULK_ACCOUNT_BALANCE};
use ledger::hash::{from_hex_array, to_hex};
use ledger::state::AccountProof;
use ledger::types::Account;
use serde_json::Value;
use tally_tests::{bin, eventually};

const IP: &str = "127.0.78.2";
/// More than three chunks of the genesis state builder, small enough for a debug build.
const BULK: u64 = 50_000;

/// Kills the node if the test fails half-way and shows its log.
struct Node {
    home: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(home: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("node.log"))
            .unwrap();
        let child = Command::new(bin("tallyd"))
            .arg("start")
            .arg("--home")
            .arg(home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            home: home.to_path_buf(),
            child: Some(child),
        }
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "node exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home.join("node.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "node log tail:\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

async fn get(http: &reqwest::Client, path: &str) -> Option<Value> {
    let r = http
        .get(format!("http://{IP}:26657{path}"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Polls `path` until `ok` holds for the answer or the deadline passes.
async fn wait_for(
    http: &reqwest::Client,
    path: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let ok = &ok;
    eventually(
        timeout,
        &format!("GET {path} meeting the condition"),
        || async move {
            match get(http, path).await {
                Some(v) if ok(&v) => Ok(v),
                last => Err(format!("answer {last:?}")),
            }
        },
    )
    .await
}

/// The account's balance, checked against its proof and the state root served with it.
async fn proven_balance(http: &reqwest::Client, address: &[u8; 20]) -> (u64, u64) {
    let v = get(
        http,
        &format!("/v1/accounts/{}?proof=true", to_hex(address)),
    )
    .await
    .expect("the account query answers");
    let root: [u8; 32] = from_hex_array(v["state_root"].as_str().unwrap()).unwrap();
    let proof =
        AccountProof::from_bytes(&hex::decode(v["proof"].as_str().unwrap()).unwrap()).unwrap();
    let balance = v["balance"].as_u64().unwrap();
    let account = v["exists"].as_bool().unwrap().then_some(Account {
        balance,
        nonce: v["nonce"].as_u64().unwrap(),
    });
    proof.verify(&root, address, account.as_ref()).unwrap();
    (balance, v["height"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_genesis_accounts_are_served_with_proofs_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("testnet");
    let out = Command::new(bin("tallyd"))
        .args(["testnet", "init", "--validators", "1", "--full-nodes", "0"])
        .args(["--accounts", "2", "--timeout-commit-ms", "200"])
        .args(["--genesis-accounts", &BULK.to_string(), "--base-ip", IP])
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "testnet init: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The manifest counts the bulk accounts but does not list them.
    let manifest_text = std::fs::read_to_string(dir.join("testnet.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(manifest["genesis_accounts"], BULK);
    assert_eq!(manifest["accounts"].as_array().unwrap().len(), 2);
    assert!(!manifest_text.contains(&to_hex(&bulk_account_address(0))));
    // genesis.json: the wallet accounts, then the bulk ones; every node has the same bytes.
    let genesis = Genesis::load(&dir.join("genesis.json")).unwrap();
    assert_eq!(genesis.accounts.len() as u64, 2 + BULK);
    assert_eq!(
        genesis.accounts[2 + 1234],
        (bulk_account_address(1234), BULK_ACCOUNT_BALANCE)
    );
    assert_eq!(
        std::fs::read(dir.join("genesis.json")).unwrap(),
        std::fs::read(dir.join("node0/config/genesis.json")).unwrap()
    );
    let wallet: [u8; 20] =
        from_hex_array(manifest["accounts"][0]["address"].as_str().unwrap()).unwrap();
    let wallet_balance = manifest["accounts"][0]["balance"].as_u64().unwrap();
    drop(genesis);

    let http = tally_tests::http_client(Duration::from_secs(5)).unwrap();
    let home = dir.join("node0");
    let mut node = Node::start(&home);
    // Blocks on top of the big genesis state.
    wait_for(&http, "/v1/status", Duration::from_secs(60), |s| {
        s["height"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    for i in [0, 1, BULK / 2, BULK - 1] {
        let (balance, _) = proven_balance(&http, &bulk_account_address(i)).await;
        assert_eq!(balance, BULK_ACCOUNT_BALANCE, "bulk account {i}");
    }
    assert_eq!(proven_balance(&http, &wallet).await.0, wallet_balance);
    // One past the last bulk account was never funded.
    assert_eq!(
        proven_balance(&http, &bulk_account_address(BULK)).await.0,
        0
    );

    // Again on the same database: the stored genesis hash matches, the chain goes on.
    let (_, height) = proven_balance(&http, &bulk_account_address(7)).await;
    node.stop();
    let mut node = Node::start(&home);
    wait_for(&http, "/v1/status", Duration::from_secs(60), |s| {
        s["height"].as_u64().unwrap_or(0) > height
    })
    .await;
    let (balance, _) = proven_balance(&http, &bulk_account_address(BULK - 2)).await;
    assert_eq!(balance, BULK_ACCOUNT_BALANCE);
    node.stop();
}
