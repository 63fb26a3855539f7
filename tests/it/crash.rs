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
        .start_at_height(2, Duration::from_secs(60))
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
    net.assert_no_fork(&[0, 1, 2, 3], 1..=end).await;
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

fn with_db<T>(home: &std::path::Path, f: impl FnOnce(&rocksdb::DB) -> T) -> T {
    let path = home.join("data/db");
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, &path).unwrap();
    let db = rocksdb::DB::open_cf(&opts, &path, cfs).unwrap();
    f(&db)
}

fn cf<'a>(db: &'a rocksdb::DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).unwrap()
}

/// Stops node `v` cleanly; returns the height it had reached.
async fn stop_node(net: &mut TestNet, v: usize) -> u64 {
    let h = net.height(v).await.unwrap();
    net.stop(v).await.unwrap();
    h
}

/// Restarts node `v`, expects it to repair blocks from peers at start-up, catch up, hold
/// the same blocks and state roots as node 0 at every height, and pass `tallyd fsck`.
async fn expect_repaired(net: &mut TestNet, v: usize, case: &str, logged: &str) {
    let log_start = std::fs::metadata(net.log_path(v)).map_or(0, |m| m.len() as usize);
    net.start_node(v).unwrap();
    net.wait_addresses(v, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("case {case}: node did not come up: {e}"));
    let log = std::fs::read_to_string(net.log_path(v)).unwrap();
    let log = &log[log_start.min(log.len())..];
    assert!(
        log.contains(logged),
        "case {case}: no repair logged:\n{log}"
    );
    let end = net.height(0).await.unwrap() + 2;
    net.wait_nodes_height(&[v], end, Duration::from_secs(60))
        .await
        .unwrap();
    for h in 1..=end {
        assert_eq!(
            net.block_at(v, h).await.unwrap(),
            net.block_at(0, h).await.unwrap(),
            "case {case}: node {v} differs from node 0 at height {h}"
        );
    }
    stop_node(net, v).await;
    let (code, out) = net.tallyd(v, &["fsck"]).unwrap();
    assert_eq!(code, 0, "case {case}: fsck after the repair:\n{out}");
}

/// Damage on a stopped validator's store. Each case is detected (by `tallyd fsck` with
/// exit code 2, and at start-up) and then, per case:
/// (a) a block record overwritten with garbage: repaired from peers;
/// (b) a range of block records deleted: repaired from peers;
/// (c) bytes flipped inside a RocksDB data file of the blocks column family: repaired;
/// (d) the state tree's root record altered: the state is rebuilt by replaying the blocks;
/// (e) a block record overwritten while no peer is up: refused after
///     `TALLY_REPAIR_WAIT_SECS`, with a message naming the problem and what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_are_repaired_from_peers_or_refused() {
    let started = Instant::now();
    let mut net = TestNet::builder()
        .validators(4)
        .timeout_commit_ms(20)
        .env("TALLY_REPAIR_WAIT_SECS", "5")
        .start()
        .await
        .unwrap();
    for a in 0..4 {
        for nonce in 0..5 {
            net.submit_accepted(0, &transfer(&account_key(a), nonce, [3; 20], 2, 1))
                .await
                .unwrap();
        }
    }
    net.wait_for_height(40, Duration::from_secs(90))
        .await
        .unwrap();
    let v = 3;
    let home = net.nodes[v].home.clone();

    // (a) One block record overwritten.
    let h = stop_node(&mut net, v).await - 5;
    with_db(&home, |db| {
        db.put_cf(cf(db, "blocks"), h.to_be_bytes(), b"not a block at all")
            .unwrap()
    });
    let (code, out) = net.tallyd(v, &["fsck"]).unwrap();
    assert_eq!(code, 2, "(a) fsck:\n{out}");
    assert!(out.contains(&format!("block {h}")), "(a) fsck:\n{out}");
    expect_repaired(&mut net, v, "a", "repaired block from peers").await;

    // (b) A range of block records deleted (up to the tip's parent).
    let tip = net.height(0).await.unwrap().min({
        let (_, out) = net.tallyd(v, &["fsck"]).unwrap();
        out.split("tip ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap()
    });
    with_db(&home, |db| {
        for h in tip - 12..tip {
            db.delete_cf(cf(db, "blocks"), h.to_be_bytes()).unwrap();
        }
    });
    let (code, out) = net.tallyd(v, &["fsck"]).unwrap();
    assert_eq!(code, 2, "(b) fsck:\n{out}");
    assert!(out.contains("missing"), "(b) fsck:\n{out}");
    expect_repaired(&mut net, v, "b", "repaired block from peers").await;

    // (c) Bytes flipped inside an SST file of the blocks column family.
    let sst = with_db(&home, |db| {
        db.flush_cf(cf(db, "blocks")).unwrap();
        let files = db.live_files().unwrap();
        let f = files
            .iter()
            .filter(|f| f.column_family_name == "blocks")
            .max_by_key(|f| f.size)
            .expect("a blocks SST");
        home.join("data/db").join(f.name.trim_start_matches('/'))
    });
    let mut bytes = std::fs::read(&sst).unwrap();
    let at = bytes.len() / 4;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xA5;
    }
    std::fs::write(&sst, bytes).unwrap();
    let (code, out) = net.tallyd(v, &["fsck"]).unwrap();
    assert_eq!(code, 2, "(c) fsck:\n{out}");
    expect_repaired(&mut net, v, "c", "repaired block from peers").await;

    // (d) The state tree's root record altered: rebuilt by replay.
    with_db(&home, |db| {
        let mut tree = db.get_cf(cf(db, "meta"), b"tree").unwrap().unwrap();
        let last = tree.len() - 1;
        tree[last] ^= 1;
        db.put_cf(cf(db, "meta"), b"tree", tree).unwrap();
    });
    let (code, out) = net.tallyd(v, &["fsck"]).unwrap();
    assert_eq!(code, 2, "(d) fsck:\n{out}");
    expect_repaired(&mut net, v, "d", "state rebuilt by replay").await;

    // (e) A damaged block and no peer to fetch it from: refused.
    let h = {
        let (_, out) = net.tallyd(v, &["fsck"]).unwrap();
        out.split("tip ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap()
    } - 3;
    for i in 0..3 {
        net.stop(i).await.unwrap();
    }
    with_db(&home, |db| {
        db.put_cf(cf(db, "blocks"), h.to_be_bytes(), b"garbage")
            .unwrap()
    });
    net.start_node(v).unwrap();
    let (code, log) = net.wait_exit(v, Duration::from_secs(60)).await.unwrap();
    assert_ne!(code, 0, "(e) the node started with a damaged block:\n{log}");
    for needle in [
        "refusing to start",
        &format!("block {h}"),
        "no peer served blocks",
        "tallyd fsck",
        "resyncs",
    ] {
        assert!(log.contains(needle), "(e) message lacks {needle:?}:\n{log}");
    }
    eprintln!(
        "corruption cases done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
