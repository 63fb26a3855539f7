//! Byzantine peers against a real 4-validator net under a steady honest load: each
//! `tally-attacker` mode gets its attacker banned while the honest network keeps its pace,
//! no honest peer is penalised, nothing forks and every honest tx commits. An equivocating
//! validator is caught on every honest node. A banned peer is refused until its ban
//! expires, then accepted.
//!
//! `TALLY_BYZ_SECS` sets the attack length per mode (default 3 s; `make soak` uses 60).
//! The measured table is printed with `--nocapture`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::hash::to_hex;
use serde_json::Value;
use tally_tests::{account_key, transfer, TestNet};

/// (mode, gossip messages per second).
const MODES: &[(&str, u32)] = &[
    ("garbage", 200),
    ("bad-sig-txs", 100),
    ("invalid-blocks", 100),
    ("unknown-validator-votes", 100),
    ("oversized", 100),
    ("flood", 4000),
    ("sync-flood", 0),
    // Relays of live traffic (their rate is that of what they hear, except replay-votes).
    ("replay-votes", 200),
    ("swap-bodies", 0),
    // Batches of up to 1,024 already committed txs (the honest load's), 100 a second.
    ("committed-txs", 100),
];
/// Honest transfers per second (offered load).
const LOAD_TPS: f64 = 40.0;
/// Accounts used by the honest load; the attacker's `bad-sig-txs` uses the next one.
const LOAD_ACCOUNTS: usize = 16;
/// Peak RSS any node may reach (bounded memory).
const MAX_RSS_KB: u64 = 1536 * 1024;

fn attack_secs() -> f64 {
    std::env::var("TALLY_BYZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// A steady honest load: `LOAD_TPS` transfers per second, account `a` always through node
/// `a % nodes` so its nonces arrive in order.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Vec<AtomicU64>>,
    errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn start_load(rpcs: Vec<String>, http: reqwest::Client) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..LOAD_ACCOUNTS).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let (s, n, e) = (stop.clone(), sent.clone(), errors.clone());
    let task = tokio::spawn(async move {
        let keys: Vec<_> = (0..LOAD_ACCOUNTS).map(account_key).collect();
        let period = Duration::from_secs_f64(1.0 / LOAD_TPS);
        let mut next = tokio::time::Instant::now();
        let mut k = 0usize;
        while !s.load(Ordering::Relaxed) {
            let a = k % LOAD_ACCOUNTS;
            k += 1;
            let nonce = n[a].load(Ordering::Relaxed);
            let tx = transfer(&keys[a], nonce, [9; 20], 1, 1);
            let hex = to_hex(&ledger::codec::encode(&tx));
            let r = http
                .post(format!("{}/v1/txs", rpcs[a % rpcs.len()]))
                .json(&serde_json::json!({ "tx": hex }))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 202 => {
                    n[a].fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if e.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("honest submit refused: {status} {body}");
                    }
                }
                Err(err) => {
                    if e.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("honest submit failed: {err}");
                    }
                }
            }
            next += period;
            tokio::time::sleep_until(next).await;
        }
    });
    Load {
        stop,
        sent,
        errors,
        task,
    }
}

/// Sum of the samples of `name` (with labels containing `label`, if given) on node `i`.
async fn metric(net: &TestNet, i: usize, name: &str, label: Option<&str>) -> f64 {
    net.metric(i, name, label).await.unwrap()
}

/// Waits for node 0's next block; returns when it was seen and the txs committed so far,
/// so throughput windows start and end on block boundaries.
async fn next_block(net: &TestNet) -> (Instant, f64) {
    let h0 = metric(net, 0, "tally_block_height", None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = metric(net, 0, "tally_block_height", None).await;
        if h > h0 || Instant::now() > deadline {
            return (
                Instant::now(),
                metric(net, 0, "tally_txs_committed_total", None).await,
            );
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Node 0's `tally_consensus_rounds_per_height` histogram: heights decided, and how many
/// of them in the first round.
struct Rounds {
    heights: f64,
    first_round: f64,
}

impl Rounds {
    async fn read(net: &TestNet) -> Self {
        Rounds {
            heights: metric(net, 0, "tally_consensus_rounds_per_height_count", None).await,
            first_round: metric(
                net,
                0,
                "tally_consensus_rounds_per_height_bucket",
                Some("le=\"1.0\""),
            )
            .await,
        }
    }

    fn since(&self, before: &Rounds) -> Rounds {
        Rounds {
            heights: self.heights - before.heights,
            first_round: self.first_round - before.first_round,
        }
    }
}

/// Gossip messages and requests the p2p task dropped because the node's event channel was
/// full, summed over nodes `0..n`.
async fn channel_drops(net: &TestNet, n: usize) -> f64 {
    let mut total = 0.0;
    for i in 0..n {
        total += metric(net, i, "tally_p2p_dropped_total", Some("channel_full")).await;
    }
    total
}

fn proc_field_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (clock ticks at the usual 100 Hz).
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A throughput window over the honest nodes, opened and closed on block boundaries.
struct Window {
    t0: Instant,
    c0: f64,
    cpu0: f64,
}

/// What a window measured: committed tx/s, CPU cores of all the nodes together, and the
/// highest peak RSS (VmHWM, kB) among them.
struct Measured {
    tps: f64,
    cpu: f64,
    rss_kb: u64,
}

impl Window {
    async fn open(net: &TestNet, pids: &[u32]) -> Self {
        let (t0, c0) = next_block(net).await;
        let cpu0 = pids.iter().map(|p| cpu_secs(*p)).sum();
        Window { t0, c0, cpu0 }
    }

    /// Waits until `len` has passed since the window opened, then closes it on a block.
    async fn close(self, net: &TestNet, pids: &[u32], len: Duration) -> Measured {
        tokio::time::sleep(len.saturating_sub(self.t0.elapsed())).await;
        let (t1, c1) = next_block(net).await;
        let dt = t1.duration_since(self.t0).as_secs_f64();
        let cpu1: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
        Measured {
            tps: (c1 - self.c0) / dt,
            cpu: (cpu1 - self.cpu0) / dt,
            rss_kb: pids
                .iter()
                .map(|p| proc_field_kb(*p, "VmHWM"))
                .max()
                .unwrap_or(0),
        }
    }
}

fn pids(net: &TestNet, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().pid)
        .collect()
}

async fn peers(net: &TestNet, i: usize) -> Vec<Value> {
    net.get(i, "/v1/peers").await.unwrap()["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every node's view of every honest peer: never banned, never below zero.
async fn check_honest(net: &TestNet, n: usize, honest: &[String], worst: &mut f64) {
    for i in 0..n {
        for p in peers(net, i).await {
            let id = p["peer_id"].as_str().unwrap_or_default();
            if honest.iter().any(|h| h == id) {
                let score = p["score"].as_f64().unwrap_or(0.0);
                *worst = worst.min(score);
                assert!(
                    p["banned"] == false && score >= 0.0,
                    "node {i} penalised honest peer {id}: {p}"
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_attacker(
    mode: &str,
    rate: u32,
    ip: &str,
    secret: &[u8; 32],
    targets: &[String],
    secs: f64,
    extra: &[&str],
    out: &std::path::Path,
) -> std::process::Child {
    let mut cmd = tally_tests::attacker_command(None, mode, ip, secs, targets);
    cmd.args(["--key", &hex::encode(secret)])
        .args(["--rate", &rate.to_string()])
        .args(["--account", &LOAD_ACCOUNTS.to_string()])
        .args(extra);
    // A file, not a pipe: nobody reads while it runs.
    cmd.stdout(std::fs::File::create(out).expect("attacker output file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tally-attacker")
}

/// `tally-attacker` in a validator mode, holding node `v`'s validator key; `rate` and
/// `more` for the modes that take them.
#[allow(clippy::too_many_arguments)]
fn spawn_validator_attacker(
    net: &TestNet,
    v: usize,
    mode: &str,
    ip: &str,
    targets: &[String],
    secs: f64,
    (rate, more): (u32, &[&str]),
    out: &std::path::Path,
) -> std::process::Child {
    let home = &net.nodes[v].home;
    let key_file = home.join("config/validator_key.json");
    let genesis = home.join("config/genesis.json");
    let mut extra = vec![
        "--validator-key-file",
        key_file.to_str().unwrap(),
        "--genesis",
        genesis.to_str().unwrap(),
    ];
    extra.extend_from_slice(more);
    spawn_attacker(mode, rate, ip, &random_secret(), targets, secs, &extra, out)
}

async fn attacker_output(
    mut child: std::process::Child,
    out: &std::path::Path,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tally-attacker did not stop within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serde_json::from_slice(&std::fs::read(out).unwrap_or_default()).unwrap_or(Value::Null)
}

fn random_secret() -> [u8; 32] {
    tally_node::keys::random_secret()
}

/// Every attacker mode in one net, one after the other, against 4 validators under a steady
/// honest load; then a banned peer's reconnection is refused until its (5 s) ban ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_are_banned_and_honest_pace_holds() {
    let secs = attack_secs();
    let n = 4;
    let net = TestNet::builder()
        .validators(n)
        .accounts(LOAD_ACCOUNTS + 1)
        .env("TALLY_P2P_BAN_DURATION_SECS", "5")
        // Heights start at each node's own `timeout_commit` timer, as when the round-0
        // criterion below was set. With the early start under load (the default) the
        // heights come back to back (~0.1 s, debug builds, 4 nodes, the load and the
        // attacker on 2 cores), the slowest validator commits a height late, and when its
        // turn to propose times out once the missed-turn rule cuts its later turns to a
        // tenth of `timeout_propose`: 2 of 24 to 2 of 43 heights per mode went to round 1
        // (0 of 18 with the timer). bench/network-notes.md and the issue note say more.
        .env("TALLY_CONSENSUS_SKIP_TIMEOUT_COMMIT_WHEN_BUSY", "false")
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let honest: Vec<String> = (0..n)
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().peer_id.clone())
        .collect();
    let targets: Vec<String> = (0..n)
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().p2p[0].clone())
        .collect();
    assert!(targets.iter().all(|t| t.contains("/p2p/")), "{targets:?}");
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let pids = pids(&net, n);
    let rpcs: Vec<String> = (0..n).map(|i| net.rpc(i)).collect();
    let load = start_load(rpcs, net.http.clone());
    let mut worst_honest = 0.0f64;
    let mut round0 = Vec::new();
    let window = Duration::from_secs_f64(secs.max(4.0));

    // Baseline: the honest load alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = Window::open(&net, &pids)
        .await
        .close(&net, &pids, window)
        .await;
    let (baseline, base_cpu, base_rss) = (base.tps, base.cpu, base.rss_kb);
    check_honest(&net, n, &honest, &mut worst_honest).await;
    assert!(
        baseline > LOAD_TPS * 0.5,
        "baseline {baseline:.1} tx/s is far below the offered {LOAD_TPS}"
    );
    let mut rows = vec![format!(
        "| none (baseline) | - | 1.00 ({baseline:.1} tx/s) | {} MiB | {base_cpu:.2} | - |",
        base_rss / 1024
    )];

    for (k, (mode, rate)) in MODES.iter().enumerate() {
        let secret = random_secret();
        let attacker = tally_p2p::peer_id_from_secret(secret).unwrap().to_string();
        let ip = format!("{prefix}.{}", 200 + k);
        let measuring = Window::open(&net, &pids).await;
        let rounds_before = Rounds::read(&net).await;
        let drops_before = channel_drops(&net, n).await;
        let spawned = Instant::now();
        let out = net.dir().join(format!("attacker-{mode}.json"));
        let child = spawn_attacker(mode, *rate, &ip, &secret, &targets, secs, &[], &out);
        // Poll every node until each shows the attacker banned.
        let mut banned_at: HashMap<usize, Duration> = HashMap::new();
        let ban_deadline = spawned + Duration::from_secs_f64(secs + 20.0);
        while banned_at.len() < n && Instant::now() < ban_deadline {
            for i in 0..n {
                if banned_at.contains_key(&i) {
                    continue;
                }
                let ps = peers(&net, i).await;
                if ps
                    .iter()
                    .any(|p| p["peer_id"] == attacker.as_str() && p["banned"] == true)
                {
                    banned_at.insert(i, spawned.elapsed());
                }
            }
            check_honest(&net, n, &honest, &mut worst_honest).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = attacker_output(child, &out, Duration::from_secs_f64(secs + 30.0)).await;
        assert_eq!(
            banned_at.len(),
            n,
            "{mode}: attacker {attacker} banned only on {banned_at:?}; stats {stats}"
        );
        let ban_time = banned_at.values().max().unwrap().as_secs_f64();
        let reasons = peers(&net, 0)
            .await
            .into_iter()
            .find(|p| p["peer_id"] == attacker.as_str())
            .map(|p| p["reasons"].to_string())
            .unwrap_or_default();
        // Throughput over at least the attack window.
        let Measured {
            tps,
            cpu,
            rss_kb: rss,
        } = measuring.close(&net, &pids, window).await;
        check_honest(&net, n, &honest, &mut worst_honest).await;
        let rounds = Rounds::read(&net).await.since(&rounds_before);
        let drops = channel_drops(&net, n).await - drops_before;
        let ratio = tps / baseline;
        eprintln!(
            "byzantine {mode}: banned on all {n} nodes after {ban_time:.2}s ({reasons}), honest \
             {tps:.1} tx/s ({ratio:.2} of baseline), peak RSS {} MiB, CPU {cpu:.2} cores; \
             attacker {stats}",
            rss / 1024
        );
        rows.push(format!(
            "| {mode} | {ban_time:.2} s | {ratio:.2} ({tps:.1} tx/s) | {} MiB | {cpu:.2} | {reasons} |",
            rss / 1024
        ));
        assert!(
            ratio >= 0.8,
            "{mode}: honest throughput {tps:.1} tx/s is below 80% of the baseline {baseline:.1}"
        );
        assert!(rss < MAX_RSS_KB, "{mode}: a node's peak RSS is {rss} kB");
        eprintln!(
            "byzantine {mode}: {} of {} heights decided in round 0, {drops} gossip events \
             dropped for a full channel",
            rounds.first_round, rounds.heights
        );
        round0.push(format!(
            "| {mode} | {}/{} | {drops} |",
            rounds.first_round, rounds.heights
        ));
        // Relays of live traffic must not cost the honest validators rounds (a swapped body
        // used to make them prevote nil on honest proposals) nor fill the event channel (a
        // replayed vote used to cost a signature check each).
        assert_eq!(drops, 0.0, "{mode}: {drops} gossip events dropped");
        assert!(
            rounds.heights - rounds.first_round <= (rounds.heights / 20.0).max(1.0),
            "{mode}: only {} of {} heights decided in round 0",
            rounds.first_round,
            rounds.heights
        );
    }

    // A banned peer is refused until its ban expires, then accepted (ban = 5 s here).
    let secret = random_secret();
    let attacker = tally_p2p::peer_id_from_secret(secret).unwrap().to_string();
    let ip = format!("{prefix}.{}", 200 + MODES.len());
    let denied0 = metric(
        &net,
        0,
        "tally_p2p_connections_denied_total",
        Some("banned"),
    )
    .await;
    let out = net.dir().join("attacker-reconnect.json");
    let child = spawn_attacker(
        "garbage",
        200,
        &ip,
        &secret,
        &targets[..1],
        14.0,
        &["--max-messages", "30", "--redial"],
        &out,
    );
    let find = |ps: Vec<Value>| ps.into_iter().find(|p| p["peer_id"] == attacker.as_str());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut banned_seen = None;
    let mut readmitted = None;
    while Instant::now() < deadline && readmitted.is_none() {
        if let Some(p) = find(peers(&net, 0).await) {
            if p["banned"] == true {
                assert_eq!(p["connected"], false, "a banned peer is connected: {p}");
                banned_seen.get_or_insert(Instant::now());
            } else if banned_seen.is_some() && p["connected"] == true {
                readmitted = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let denied1 = metric(
        &net,
        0,
        "tally_p2p_connections_denied_total",
        Some("banned"),
    )
    .await;
    let stats = attacker_output(child, &out, Duration::from_secs(30)).await;
    let banned_seen = banned_seen.expect("the reconnecting attacker was never banned");
    let readmitted = readmitted.unwrap_or_else(|| panic!("not readmitted after its ban: {stats}"));
    let banned_for = readmitted.duration_since(banned_seen).as_secs_f64();
    assert!(
        denied1 > denied0,
        "no reconnection was refused while banned ({denied0} -> {denied1}); {stats}"
    );
    assert!(
        (3.5..9.0).contains(&banned_for),
        "readmitted {banned_for:.1}s after the ban (ban is 5 s)"
    );
    eprintln!(
        "byzantine reconnect: refused {} times while banned, readmitted after {banned_for:.1}s",
        denied1 - denied0
    );

    // The honest load stops; every honest tx commits on every node, nothing forked.
    load.stop.store(true, Ordering::Relaxed);
    load.task.await.unwrap();
    let errors = load.errors.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in 0..LOAD_ACCOUNTS {
        let want = load.sent[a].load(Ordering::Relaxed);
        let addr = to_hex(&account_key(a).address());
        for i in 0..n {
            loop {
                let v = net.get(i, &format!("/v1/accounts/{addr}")).await.unwrap();
                if v["nonce"].as_u64() == Some(want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "account {a} on node {i}: {v}, want nonce {want}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let sent: u64 = load.sent.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert!(
        errors * 50 <= sent,
        "{errors} honest submissions refused out of {sent}"
    );
    let top = {
        let mut hs = Vec::new();
        for i in 0..n {
            hs.push(net.height(i).await.unwrap());
        }
        hs.into_iter().min().unwrap()
    };
    let all: Vec<usize> = (0..n).collect();
    net.assert_no_fork(&all, 1..=top).await;
    check_honest(&net, n, &honest, &mut worst_honest).await;
    for i in 0..n {
        let bans = metric(&net, i, "tally_peer_bans_total", None).await;
        assert!(bans >= MODES.len() as f64, "node {i} counted {bans} bans");
    }
    eprintln!(
        "byzantine summary: {sent} honest txs committed ({errors} refused submissions), \
         {top} blocks without a fork, worst honest score {worst_honest}, attack {secs}s per mode\n\
         | mode | time to ban (all 4) | honest TPS ratio | peak RSS (max node) | CPU (4 nodes, cores) | reasons (node 0) |\n\
         |---|---|---|---|---|---|\n{}\n\n\
         | mode | heights decided in round 0 (node 0) | gossip events dropped (channel full, 4 nodes) |\n\
         |---|---|---|\n{}",
        rows.join("\n"),
        round0.join("\n")
    );
}

/// One equivocating validator of four: validator 3 runs honestly while `tally-attacker
/// --mode equivocate` holds the same key and signs a conflicting prevote in every round it
/// hears. The chain keeps committing, every honest node holds the evidence within a few
/// blocks and counts it in `tally_evidence_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocating_validator_is_caught() {
    let net = TestNet::builder()
        .validators(4)
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let targets: Vec<String> = (0..4)
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().p2p[0].clone())
        .collect();
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let out = net.dir().join("attacker-equivocate.json");
    let mut child = spawn_validator_attacker(
        &net,
        3,
        "equivocate",
        &format!("{prefix}.211"),
        &targets,
        30.0,
        (0, &[]),
        &out,
    );
    // Evidence must spread: from the height at which the first honest node holds it, every
    // honest node holds it within 5 blocks.
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut holding = 0;
        for i in 0..3 {
            if net.evidence_count(i).await.unwrap() > 0 {
                holding += 1;
            }
        }
        if holding > 0 && start.is_none() {
            start = Some(net.height(0).await.unwrap());
        }
        if holding == 3 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no evidence on every honest node");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught = net.height(0).await.unwrap();
    let start = start.unwrap_or(caught);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        caught <= start + 5,
        "evidence took {} blocks to reach every honest node",
        caught - start
    );
    let culprit = to_hex(&net.nodes[3].validator.unwrap());
    for i in 0..3 {
        let ev = net.get(i, "/v1/evidence").await.unwrap();
        assert!(
            ev.to_string().contains(&culprit),
            "node {i}'s evidence does not name validator 3: {ev}"
        );
        let counted = metric(&net, i, "tally_evidence_total", None).await;
        assert!(counted >= 1.0, "node {i}: tally_evidence_total = {counted}");
    }
    // The chain keeps committing with the equivocator's key still voting.
    net.wait_for_height(caught + 3, Duration::from_secs(60))
        .await
        .unwrap();
    net.assert_no_fork(&[0, 1, 2, 3], 1..=caught + 3).await;
}

/// Wall-clock milliseconds, as the nodes read it.
fn wall_ms() -> u64 {
    #[allow(clippy::disallowed_methods)] // the test compares block times with the clock
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A byzantine validator (one of four, its node replaced by `tally-attacker --mode
/// future-time` holding its key) proposes, at each of its turns, an empty block timed
/// `u64::MAX` or an hour ahead, and votes for it. Its blocks must never be committed and the
/// chain must keep committing: before the proposer-based time bound, the first such block
/// committed and every later honest proposal was "older than its parent", for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_proposing_far_future_times_cannot_halt_the_chain() {
    let secs = attack_secs().max(15.0);
    let net = TestNet::builder()
        .validators(4)
        .start_only(&[0, 1, 2])
        .await
        .unwrap();
    net.wait_nodes_height(&[0, 1, 2], 2, Duration::from_secs(60))
        .await
        .unwrap();
    let honest = [0usize, 1, 2];
    let targets: Vec<String> = honest
        .iter()
        .map(|&i| net.nodes[i].addresses.as_ref().unwrap().p2p[0].clone())
        .collect();
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let attacker_address = to_hex(&net.nodes[3].validator.unwrap());
    let start = net.height(0).await.unwrap();
    let out = net.dir().join("attacker-future-time.json");
    let child = spawn_validator_attacker(
        &net,
        3,
        "future-time",
        &format!("{prefix}.210"),
        &targets,
        secs,
        (0, &[]),
        &out,
    );
    let stats = attacker_output(child, &out, Duration::from_secs_f64(secs + 30.0)).await;
    let attacks = stats["attacks"].as_u64().unwrap_or(0);
    let end = net.height(0).await.unwrap();
    // Four validators take turns: the attacker had a turn in every four heights, and each
    // cost the honest three one round at most.
    assert!(
        end >= start + 8,
        "the chain stalled under the attack: height {start} -> {end} after {attacks} forged \
         proposals; stats {stats}\n{}",
        net.tail_log(0)
    );
    assert!(
        attacks >= 2,
        "the attacker proposed only {attacks} times; stats {stats}"
    );
    net.wait_nodes_height(&honest, end + 3, Duration::from_secs(30))
        .await
        .unwrap();

    // No committed block is the attacker's, times strictly increase and none is later than
    // the clocks allow; the honest nodes agree on every block.
    let drift = ledger::genesis::Params::default().max_clock_drift_ms;
    let now = wall_ms();
    let mut prev_time = 0;
    for h in 1..=end + 3 {
        let b = net.get(0, &format!("/v1/blocks/{h}")).await.unwrap();
        let header = &b["header"];
        let time = header["time_ms"].as_u64().unwrap();
        assert_ne!(
            header["proposer"].as_str().unwrap(),
            attacker_address,
            "the attacker's block {h} was committed: {b}"
        );
        assert!(time > prev_time, "block {h}: time {time} <= {prev_time}");
        assert!(
            time <= now + drift,
            "block {h}: time {time} is ahead of the clock {now}"
        );
        prev_time = time;
        net.assert_no_fork(&honest, [h]).await;
    }
    // The forged proposals reached the honest validators and were refused for their time.
    let refused = honest
        .iter()
        .filter(|&&i| {
            std::fs::read_to_string(net.log_path(i))
                .unwrap_or_default()
                .contains("proposed block has a bad time")
        })
        .count();
    assert!(
        refused >= 2,
        "only {refused} honest validators logged a refused block time"
    );
    eprintln!(
        "byzantine future-time: {attacks} forged proposals, height {start} -> {end} in {secs}s, \
         none committed"
    );
}

/// Of the heights in `from..=to` whose round-0 proposer is not `attacker`: how many, and
/// how many of them were decided in round 0 (node 0's blocks).
async fn honest_turns_in_round0(net: &TestNet, from: u64, to: u64, attacker: usize) -> (u64, u64) {
    let genesis =
        ledger::genesis::Genesis::load(&net.nodes[0].home.join("config/genesis.json")).unwrap();
    let bad = net.nodes[attacker].validator.unwrap();
    let (mut turns, mut first) = (0, 0);
    for h in from..=to {
        if genesis.validators.proposer(h, 0).address == bad {
            continue;
        }
        turns += 1;
        let b = net.get(0, &format!("/v1/blocks/{h}")).await.unwrap();
        if b["header"]["round"].as_u64() == Some(0) {
            first += 1;
        }
    }
    (turns, first)
}

/// Gossip messages nodes `of` received, summed.
async fn relayed(net: &TestNet, of: &[usize]) -> f64 {
    let mut sum = 0.0;
    for &i in of {
        sum += metric(net, i, "libp2p_gossipsub_messages_total", None).await;
    }
    sum
}

/// A byzantine validator (validator 3's key in `tally-attacker --mode flood-rounds`,
/// publishing through four network identities connected to node 0 only, each under the
/// per-peer limit) signs 600 messages a second that no honest validator sends:
/// votes for rounds far past the live one, extra prevotes for made-up blocks in the live
/// rounds, and proposals with 8 KiB bodies at each of its rounds to propose, in and past
/// the live window. Each is validly signed, so each is new to a relay that forwards what it
/// verified: node 0 passed the whole flood on, on top of its own traffic, and nodes 1 and 2
/// scored it down for flooding and banned it, which stopped the chain (it needs all three).
/// Messages for rounds outside the window the core accepts, and more than the first
/// proposal of a round and two votes of a (validator, round, kind), are not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_flooding_signed_rounds_cannot_turn_honest_relays_into_flooders() {
    let secs = attack_secs().max(10.0);
    let honest = [0usize, 1, 2];
    let net = TestNet::builder()
        .validators(4)
        .start_only(&honest)
        .await
        .unwrap();
    net.wait_nodes_height(&honest, 2, Duration::from_secs(60))
        .await
        .unwrap();
    let ids: Vec<String> = honest
        .iter()
        .map(|&i| net.nodes[i].addresses.as_ref().unwrap().peer_id.clone())
        .collect();
    let pids = pids(&net, honest.len());
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let mut worst = 0.0f64;

    // The same length of time without the attack, for the ratios.
    let window = Duration::from_secs_f64(secs);
    let rounds_before = Rounds::read(&net).await;
    let h0 = net.height(0).await.unwrap();
    let m0 = relayed(&net, &[1, 2]).await;
    tokio::time::sleep(window).await;
    let base_blocks = net.height(0).await.unwrap() - h0;
    let base_relayed = relayed(&net, &[1, 2]).await - m0;
    let base_rounds = Rounds::read(&net).await.since(&rounds_before);
    let base_rss: u64 = pids
        .iter()
        .map(|p| proc_field_kb(*p, "VmRSS"))
        .max()
        .unwrap_or(0);

    // Several network identities (one IP each) publish what the one key signs: each stays
    // under node 0's per-peer limit, together they are far above it.
    const IDENTITIES: usize = 4;
    let target = vec![net.nodes[0].addresses.as_ref().unwrap().p2p[0].clone()];
    let rounds_before = Rounds::read(&net).await;
    let h1 = net.height(0).await.unwrap();
    let m1 = relayed(&net, &[1, 2]).await;
    let drops_before = channel_drops(&net, honest.len()).await;
    let children: Vec<_> = (0..IDENTITIES)
        .map(|k| {
            let out = net.dir().join(format!("attacker-flood-rounds-{k}.json"));
            let child = spawn_validator_attacker(
                &net,
                3,
                "flood-rounds",
                &format!("{prefix}.{}", 212 + k),
                &target,
                secs,
                (150, &["--oversized-bytes", "8192"]),
                &out,
            );
            (child, out)
        })
        .collect();
    let deadline = Instant::now() + window;
    let mut peak_rss = 0;
    while Instant::now() < deadline {
        check_honest(&net, honest.len(), &ids, &mut worst).await;
        peak_rss = pids
            .iter()
            .map(|p| proc_field_kb(*p, "VmRSS"))
            .max()
            .unwrap_or(0)
            .max(peak_rss);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attack_relayed = relayed(&net, &[1, 2]).await - m1;
    let mut attacks = 0;
    for (child, out) in children {
        let stats = attacker_output(child, &out, Duration::from_secs(30)).await;
        attacks += stats["attacks"].as_u64().unwrap_or(0);
    }
    let attack_blocks = net.height(0).await.unwrap() - h1;
    let attack_rounds = Rounds::read(&net).await.since(&rounds_before);
    let drops = channel_drops(&net, honest.len()).await - drops_before;
    check_honest(&net, honest.len(), &ids, &mut worst).await;
    let ratio = attack_blocks as f64 / base_blocks.max(1) as f64;
    let first = attack_rounds.first_round / attack_rounds.heights.max(1.0);
    let honest_turns = honest_turns_in_round0(&net, h1 + 1, h1 + attack_blocks, 3).await;
    eprintln!(
        "byzantine flood-rounds: {attacks} signed messages in {secs}s; blocks {attack_blocks} vs \
         {base_blocks} without ({ratio:.2}); round 0 {first:.2} (without: {:.2}); peak RSS \
         {} MiB (before: {} MiB); channel drops {drops}; worst honest score {worst}; gossip \
         messages reaching nodes 1 and 2 {attack_relayed} vs {base_relayed} without; honest \
         turns decided in round 0: {}/{}",
        base_rounds.first_round / base_rounds.heights.max(1.0),
        peak_rss / 1024,
        base_rss / 1024,
        honest_turns.1,
        honest_turns.0,
    );
    // The attack must have happened at flood scale: the attackers aim at 150 signed
    // messages a second each; on a starved machine (a cold build beside the tests) they
    // reached 49, and in a full CI run on protocol 2 (its honest nodes do more per
    // height) 12.7. An honest validator sends a few a second: 10 a second per identity,
    // 40 for the four, is still a flood next to it.
    assert!(
        attacks as f64 >= secs * 10.0 * IDENTITIES as f64,
        "the attackers sent only {attacks} messages"
    );
    // Validator 3's node is replaced by the attackers, so without the attack the core
    // counts it absent and its turns time out after a tenth of timeout_propose (consensus
    // README). Under the attack its key is heard and, whenever one of its proposals gets
    // accepted, its next turn costs the full timeout again: what any byzantine proposer can
    // do by proposing late, and what every one of its turns cost before the absent-proposer
    // shortcut (when this ratio measured 1.00). Measured 0.79-0.81 with the shortcut; the
    // honest turns, the relays and memory are checked on their own below.
    assert!(
        ratio >= 0.6,
        "{attack_blocks} blocks under the attack, {base_blocks} without"
    );
    // The attacker's own turns fail (its proposals are garbage); every honest turn must
    // still be decided in its first round.
    let (turns, in_round0) = honest_turns;
    assert!(
        in_round0 as f64 >= 0.9 * turns as f64,
        "only {in_round0} of {turns} honest proposers' heights were decided in round 0"
    );
    assert_eq!(drops, 0.0, "consensus messages dropped on a full channel");
    // What the attackers sent node 0 stayed there.
    assert!(
        attack_relayed < base_relayed * 2.0 + 0.1 * attacks as f64,
        "nodes 1 and 2 received {attack_relayed} gossip messages under the attack, \
         {base_relayed} without; the attackers sent {attacks}"
    );
    assert!(
        peak_rss < base_rss + 128 * 1024,
        "RSS grew from {} MiB to {} MiB",
        base_rss / 1024,
        peak_rss / 1024
    );
}

/// Three keyless peers, connected to node 0 only, each send 8 batches a second of 1,024
/// txs: one new, valid transfer and 1,023 the chain already committed, each peer just under
/// node 0's budget for useless txs. A batch with something new in it was forwarded whole,
/// so node 0 passed ~24,000 stale txs a second on, and its honest peers charged *it* for
/// them. A batch is forwarded only when most of it was new; the new tx still reaches every
/// validator through node 0's mempool. Consensus keeps its pace: no consensus message lost
/// to a full channel, block interval within 20% of a no-attack run in the same test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_padded_with_committed_txs_are_not_passed_on() {
    const PEERS: usize = 3;
    let secs = attack_secs().max(10.0);
    let n = 4;
    // The block interval is compared with and without the attack under the same load.
    // With the next height started as soon as every precommit is in (the default while
    // txs wait), the interval is the consensus rounds alone, ~0.1 s here, and any CPU the
    // attack costs node 0 on this shared 2-core machine (it must decode and refuse what
    // the attackers send) shows in it as a large ratio; with `timeout_commit` waited out,
    // as when this test was calibrated, the ratio measures the pace consensus keeps.
    let net = TestNet::builder()
        .validators(n)
        .accounts(LOAD_ACCOUNTS + PEERS)
        .env("TALLY_CONSENSUS_SKIP_TIMEOUT_COMMIT_WHEN_BUSY", "false")
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let ids: Vec<String> = (0..n)
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().peer_id.clone())
        .collect();
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let pids = pids(&net, n);
    let rpcs: Vec<String> = (0..n).map(|i| net.rpc(i)).collect();
    let load = start_load(rpcs, net.http.clone());
    let mut worst = 0.0f64;
    let window = Duration::from_secs_f64(secs);

    // Let committed txs pile up for the attackers to replay, then a no-attack window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h0 = net.height(0).await.unwrap();
    let base = Window::open(&net, &pids)
        .await
        .close(&net, &pids, window)
        .await;
    let base_blocks = net.height(0).await.unwrap() - h0;

    let target = vec![net.nodes[0].addresses.as_ref().unwrap().p2p[0].clone()];
    let drops_before = channel_drops(&net, n).await;
    let h1 = net.height(0).await.unwrap();
    let measuring = Window::open(&net, &pids).await;
    let children: Vec<_> = (0..PEERS)
        .map(|k| {
            let out = net.dir().join(format!("attacker-padded-{k}.json"));
            let account = (LOAD_ACCOUNTS + k).to_string();
            let child = spawn_attacker(
                "padded-batches",
                8,
                &format!("{prefix}.{}", 220 + k),
                &random_secret(),
                &target,
                secs,
                &["--account", &account],
                &out,
            );
            (child, out)
        })
        .collect();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        check_honest(&net, n, &ids, &mut worst).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attacked = measuring.close(&net, &pids, Duration::ZERO).await;
    let attack_blocks = net.height(0).await.unwrap() - h1;
    let mut batches = 0;
    for (child, out) in children {
        let stats = attacker_output(child, &out, Duration::from_secs(30)).await;
        batches += stats["attacks"].as_u64().unwrap_or(0);
    }
    check_honest(&net, n, &ids, &mut worst).await;
    let drops = channel_drops(&net, n).await - drops_before;
    load.stop.store(true, Ordering::Relaxed);
    let _ = load.task.await;
    // Block interval under the attack against without it (the attack window is measured
    // from its first block to the moment the attackers stopped, plus one block).
    let interval = |blocks: u64, len: f64| len / blocks.max(1) as f64;
    let (base_interval, attack_interval) =
        (interval(base_blocks, secs), interval(attack_blocks, secs));
    eprintln!(
        "byzantine padded-batches: {PEERS} peers sent {batches} batches of 1,024 in {secs}s; \
         block interval {attack_interval:.2}s vs {base_interval:.2}s ({:.2}); committed {:.1} tx/s \
         (the attackers' new txs included) vs {:.1} ({:.2}); consensus drops {drops}; peak RSS {} MiB; worst honest score {worst}",
        attack_interval / base_interval,
        attacked.tps,
        base.tps,
        attacked.tps / base.tps.max(0.1),
        attacked.rss_kb / 1024,
    );
    assert!(
        batches as f64 >= secs * 4.0 * PEERS as f64,
        "the attackers sent only {batches} batches"
    );
    assert_eq!(drops, 0.0, "gossip events dropped for a full channel");
    assert!(
        attack_interval <= base_interval * 1.2,
        "block interval {attack_interval:.2}s under the attack, {base_interval:.2}s without"
    );
}
