//! The wallet against a real `tallyd dev` (one validator, real RocksDB, consensus and
//! RPC). `make test` / `cargo test --workspace` build `tallyd` next to this test binary;
//! `cargo test -p tally-wallet` alone does not, and then this test says so and skips
//! (or set TALLYD_BIN to a built tallyd).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::assert_fails;
use crate::cli_support::Wallet;

/// Kills the node we started when the test ends, pass or fail.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.91.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tallyd() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("TALLYD_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("tallyd");
    path.exists().then_some(path)
}

#[test]
fn real_node_send_verify_and_bench() {
    let Some(bin) = tallyd() else {
        eprintln!("SKIP real_node: no tallyd next to the test binary; run `cargo test --workspace` or set TALLYD_BIN");
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let chain = home.path().join("chain");
    let rpc = format!("127.0.91.1:{}", free_port());
    let metrics = format!("127.0.91.1:{}", free_port());
    let _node = Node(
        Command::new(&bin)
            .args([
                "dev",
                "--home",
                chain.to_str().unwrap(),
                "--rpc",
                &rpc,
                "--metrics",
                &metrics,
            ])
            .args(["--block-time-ms", "200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let w = Wallet::new(&format!("http://{rpc}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.run(&["status"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "tallyd dev did not answer on {rpc} within 30s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let secret = chain.join("dev.secret");
    w.ok(&[
        "keys",
        "import",
        "dev",
        "--secret-file",
        secret.to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    w.new_key("bob");
    let before = w.json(&["balance", "dev"])["balance"].as_u64().unwrap();

    let sent = w.json(&["send", "--from", "dev", "--to", "bob", "--amount", "1000"]);
    assert_eq!(sent["status"], "committed", "{sent}");
    let fee = sent["fee"].as_u64().unwrap();
    let id = sent["tx_id"].as_str().unwrap().to_string();
    let height = sent["height"].as_u64().unwrap();
    assert_eq!(w.json(&["balance", "bob"])["balance"], 1000);
    assert_eq!(
        w.json(&["balance", "dev"])["balance"].as_u64().unwrap(),
        before - 1000 - fee
    );

    let tx = w.json(&["tx", &id]);
    assert_eq!(tx["status"], "committed");
    assert_eq!(tx["height"], height);
    let block = w.json(&["block", &height.to_string()]);
    assert!(block["tx_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t.as_str() == Some(id.as_str())));

    let genesis = chain.join("config/genesis.json");
    let v = w.json(&[
        "balance",
        "bob",
        "--verify",
        "--genesis",
        genesis.to_str().unwrap(),
    ]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["balance"], 1000);

    let out = w.run(&["send", "--from", "bob", "--to", "dev", "--amount", "5000"]);
    assert_fails(&out, 4, "insufficient_funds");

    let b = w.json(&[
        "bench",
        "--fund-from",
        "dev",
        "--accounts",
        "8",
        "--rate",
        "100",
        "--duration",
        "3s",
        "--drain-timeout",
        "20s",
    ]);
    assert_eq!(b["ok"], true, "{b}");
    assert_eq!(b["committed"], b["accepted"], "{b}");
}
