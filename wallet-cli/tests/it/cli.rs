//! The real `tally` binary against the in-memory fake node.

use std::process::{Output, Stdio};

use serde_json::Value;

use crate::cli_support::{Wallet, PASSWORD};
use crate::fake_node::{FakeNode, MIN_FEE};

/// Asserts a clean failure: the exit code, one `error:` line on stderr naming `needle`,
/// and no panic.
pub fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    assert!(
        errors[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

/// A fake node and a wallet with keys `alice` (funded with `balance`) and `bob`; returns
/// their addresses too.
fn alice_and_bob(balance: u64) -> (FakeNode, Wallet, [u8; 20], [u8; 20]) {
    let node = FakeNode::start();
    let w = Wallet::new(&node.url);
    let alice = w.new_key("alice");
    let bob = w.new_key("bob");
    node.fund(&alice, balance);
    (node, w, alice, bob)
}

#[test]
fn send_waits_for_commit_and_moves_exactly_amount_plus_fee() {
    let (node, w, alice, bob) = alice_and_bob(1_000_000);

    let text = w.ok(&[
        "send",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "1000",
        "--fee",
        "5",
        "--wait",
        "committed",
    ]);
    for stage in ["signed", "accepted by node", "included in block", "final"] {
        assert!(text.contains(stage), "missing stage {stage}: {text}");
    }
    assert_eq!(node.account(&alice).balance, 1_000_000 - 1005);
    assert_eq!(node.account(&bob).balance, 1000);

    let b = w.json(&["balance", "alice"]);
    assert_eq!(b["balance"], 1_000_000 - 1005);
    assert_eq!(b["nonce"], 1);
    assert_eq!(b["name"], "alice");

    // Default fee is the node's min_fee; recipient given as an address; json output.
    let sent = w.json(&[
        "send",
        "--from",
        "alice",
        "--to",
        &hex::encode(bob),
        "--amount",
        "7",
    ]);
    assert_eq!(sent["status"], "committed");
    assert_eq!(sent["fee"], MIN_FEE);
    assert_eq!(sent["nonce"], 1);
    let stages: Vec<&str> = sent["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.len(), 4, "{stages:?}");
    let height = sent["height"].as_u64().unwrap();
    let id = sent["tx_id"].as_str().unwrap().to_string();
    assert_eq!(node.account(&bob).balance, 1007);

    let tx = w.json(&["tx", &id]);
    assert_eq!(tx["status"], "committed");
    assert_eq!(tx["height"], height);
    let text = w.ok(&["tx", &id]);
    assert!(
        text.contains("committed") && text.contains(&format!("block       {height}")),
        "{text}"
    );

    let block = w.json(&["block", &height.to_string()]);
    assert_eq!(block["height"], height);
    assert!(block["tx_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == &Value::from(id.clone())));
    assert!(w.ok(&["block"]).contains(&id));

    let status = w.json(&["status"]);
    assert_eq!(status["chain_id"], crate::fake_node::CHAIN_ID);
    assert!(w.ok(&["status"]).contains("min fee"));
}

#[test]
fn quick_and_concurrent_sends_from_one_key_do_not_collide() {
    let (_node, w, _, _) = alice_and_bob(1_000_000);
    let args = [
        "send", "--from", "alice", "--to", "bob", "--amount", "10", "--wait", "accepted",
    ];
    // Back to back: each sees the previous one in the node's pending nonce.
    let mut nonces = Vec::new();
    for _ in 0..3 {
        nonces.push(w.json(&args)["nonce"].as_u64().unwrap());
    }
    assert_eq!(nonces, vec![0, 1, 2]);
    // Three at once: they race for the same nonce; nonce_too_low makes the loser retry.
    let children: Vec<_> = (0..3)
        .map(|_| {
            w.cmd(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ok = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if out.status.success() {
            ok += 1;
        } else {
            // Three-way races can lose twice; that must be a clean rejection.
            assert_fails(&out, 4, "node rejected the transaction");
        }
    }
    assert!(
        ok >= 2,
        "at most one of three concurrent sends may lose the race twice"
    );
    let w2 = w.json(&["send", "--from", "alice", "--to", "bob", "--amount", "10"]);
    assert_eq!(w2["status"], "committed");
}

#[test]
fn errors_are_one_line_with_the_right_exit_code() {
    let (node, w, alice, _) = alice_and_bob(100);

    let out = w
        .cmd(&["send", "--from", "alice", "--to", "bob", "--amount", "5"])
        .env("TALLY_PASSWORD", "not the password")
        .output()
        .unwrap();
    assert_fails(&out, 1, "wrong password");

    let out = w.run(&["send", "--from", "carol", "--to", "bob", "--amount", "5"]);
    assert_fails(&out, 1, "no key named \"carol\"");

    let out = w.run(&["send", "--from", "alice", "--to", "dave", "--amount", "5"]);
    assert_fails(&out, 2, "neither a key");
    let out = w.run(&["balance", "12345"]);
    assert_fails(&out, 2, "not an address");

    let out = w.run(&["send", "--from", "alice", "--to", "bob", "--amount", "1000"]);
    assert_fails(&out, 4, "insufficient_funds");
    assert_eq!(node.account(&alice).balance, 100);

    for bad in ["1.5", "ten", "-1", "0", "99999999999999999999"] {
        let out = w.run(&["send", "--from", "alice", "--to", "bob", "--amount", bad]);
        assert_fails(&out, 2, "--amount");
    }

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");
    let out = w.run(&[
        "--node", &url, "send", "--from", "alice", "--to", "bob", "--amount", "5",
    ]);
    assert_fails(&out, 3, "cannot reach node");
    let out = w.run(&["--node", &url, "status"]);
    assert_fails(&out, 3, "is tallyd running?");

    let out = w.run(&["tx", "abcd"]);
    assert_fails(&out, 2, "64 hex");
    let out = w.run(&["no-such-command"]);
    assert_fails(&out, 2, "no-such-command");

    // json mode: the error is also one object on stdout.
    let out = w.run(&[
        "--output", "json", "send", "--from", "alice", "--to", "bob", "--amount", "1000",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_funds");
    assert_eq!(v["error"]["exit_code"], 4);
}

#[test]
fn keys_commands_through_the_binary() {
    let w = Wallet::new("http://127.0.0.1:9");
    let secret_file = w.dir.path().join("secret.txt");
    std::fs::write(
        &secret_file,
        "df269c3539e5d7c30974255102bef174a9c0ed660e7421fdb7db98e14ab3a122\n",
    )
    .unwrap();
    let v = w.json(&[
        "keys",
        "import",
        "one",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(v["address"], "d0f46f924f293fb8636eb8a8cf88a32be4ac7ed2");

    // From stdin.
    let mut child = w
        .cmd(&["--output", "json", "keys", "import", "two"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ae72dd84b01d20be3255d6273afc5075d7db6d5c8bce030925e4fc98cbbf6325\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["address"], "2378b50dae7d4a9a336cb1b72832db240816988d");

    // Export needs the confirmation flag.
    let out = w.run(&["keys", "export", "one"]);
    assert_fails(&out, 2, "--yes-print-secret");
    let text = w.ok(&["keys", "export", "one", "--yes-print-secret"]);
    assert_eq!(
        text.trim(),
        "df269c3539e5d7c30974255102bef174a9c0ed660e7421fdb7db98e14ab3a122"
    );

    // Password from a file.
    let pw_file = w.dir.path().join("pw");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let out = w
        .cmd(&[
            "keys",
            "export",
            "one",
            "--yes-print-secret",
            "--password-file",
            pw_file.to_str().unwrap(),
        ])
        .env_remove("TALLY_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No password anywhere and no terminal: a clear error, not a hang.
    let out = w
        .cmd(&["keys", "export", "one", "--yes-print-secret"])
        .env_remove("TALLY_PASSWORD")
        .output()
        .unwrap();
    assert_fails(&out, 2, "TALLY_PASSWORD");

    // Plaintext keys: marked and warned about on every use.
    let out = w.run(&["keys", "new", "dev", "--insecure-plaintext"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNENCRYPTED"));
    let out = w.run(&["keys", "show", "dev"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNENCRYPTED"));

    let list = w.json(&["keys", "list"]);
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["dev", "one", "two"]);
    assert_eq!(list["keys"][0]["insecure"], true);
    assert!(w.ok(&["keys", "list"]).contains("INSECURE"));

    let out = w.run(&["keys", "new", "one"]);
    assert_fails(&out, 1, "already exists");
    let out = w.run(&["keys", "show", "ghost"]);
    assert_fails(&out, 1, "no key named");
}

#[test]
fn bench_funds_accounts_and_sees_every_tx_commit() {
    let node = FakeNode::start();
    let w = Wallet::new(&node.url);
    let whale = w.new_key("whale");
    node.fund(&whale, 10_000_000);
    // Two URLs for the same node: exercises spreading across --node values.
    let nodes = format!("{},{}", node.url, node.url);
    let v = w.json(&[
        "--node",
        &nodes,
        "bench",
        "--fund-from",
        "whale",
        "--accounts",
        "4",
        "--rate",
        "40",
        "--duration",
        "1500ms",
        "--drain-timeout",
        "10s",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["accounts"], 4);
    assert!(v["submitted"].as_u64().unwrap() >= 30, "{v}");
    assert_eq!(v["accepted"], v["submitted"], "{v}");
    assert_eq!(v["committed"], v["accepted"], "{v}");
    assert_eq!(v["rejected"], 0);
    assert_eq!(v["not_committed"], 0);
    assert!(v["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() >= v["latency_ms"]["p50"].as_f64().unwrap());
    assert!(v["committed_tps"].as_f64().unwrap() > 0.0);
}

#[test]
fn wait_committed_falls_back_to_polling_and_times_out_cleanly() {
    let (node, w, _, _) = alice_and_bob(1_000);
    node.with(|n| n.events_disabled = true);
    let v = w.json(&["send", "--from", "alice", "--to", "bob", "--amount", "10"]);
    assert_eq!(v["status"], "committed", "{v}");

    // A stalled chain: accepted, never committed -> exit 1 after --timeout, with the tx id.
    node.with(|n| {
        n.events_disabled = false;
        n.paused = true;
    });
    let started = std::time::Instant::now();
    let out = w.run(&[
        "send",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "10",
        "--timeout",
        "1s",
    ]);
    assert_fails(&out, 1, "not seen committed within 1s");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // --wait accepted does not wait for the chain.
    let v = w.json(&[
        "send", "--from", "alice", "--to", "bob", "--amount", "10", "--wait", "accepted",
    ]);
    assert_eq!(v["status"], "accepted");
    assert_eq!(v["nonce"], 2);
}

#[test]
fn bench_reports_uncommitted_txs_and_fails() {
    let node = FakeNode::start();
    let w = Wallet::new(&node.url);
    for name in ["k1", "k2"] {
        let a = w.new_key(name);
        node.fund(&a, 1_000_000);
    }
    node.with(|n| n.paused = true);
    let out = w.run(&[
        "--output",
        "json",
        "bench",
        "--keys",
        "k1,k2",
        "--rate",
        "20",
        "--duration",
        "500ms",
        "--drain-timeout",
        "1s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object even on failure: {text}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["accounts"], 2);
    assert!(v["accepted"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["committed"], 0);
    assert_eq!(v["not_committed"], v["accepted"]);
    assert_eq!(v["not_committed_txs"][0]["status"], "pending");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("were not committed within the drain timeout"),
        "{stderr}"
    );
}
