//! Issue 18, scenario 8: a crowd of joiners. A 4 + 1 netns testnet (`tallyd testnet up
//! --hosts netns`, as tests/it/netfaults.rs) builds a chain of `blocks` blocks with a
//! transfer workload running; then one fresh full node joins alone, bootstrapped only from
//! node4, and its time to the tip is measured; it is removed, and `joiners` fresh full nodes,
//! bootstrapped only from node4, are started at the same moment. Every one reaches the tip
//! and follows it; the blocks each node served (`tally_sync_blocks_served_total`) show how
//! the sync load spread, and the crowd's time to tip is compared with the lone joiner's.
//! The checker (tests/src/checker.rs) runs over the testnet's nodes and every joiner.
//!
//! Root only (namespaces); without root each test says why and passes. The tests take the
//! machine-wide lock of the netns tests. Figures are printed (`--nocapture`) and recorded in
//! tests/README.md.

use std::time::{Duration, Instant};

use tally_tests::checker;
use tally_tests::netns::{
    assert_no_violations, scrape_counter, skip_reason, Joiner, NetLock, NetnsTestnet, Workload,
};

/// Block time while the chain is built: short, so 2,000 blocks take a couple of minutes.
const BUILD_COMMIT_MS: u64 = 10;
/// Block time while nodes join (netfaults.rs's): the validators are restarted with it
/// (`TALLY_CONSENSUS_TIMEOUT_COMMIT_MS`, which overrides genesis locally) once the chain
/// is built. At 10 ms the chain would outrun the check and 15 debug-build nodes on two
/// cores would spend their CPU on empty blocks instead of on syncing.
const JOIN_COMMIT_MS: u64 = 300;
const ALL: [usize; 5] = [0, 1, 2, 3, 4];
/// The only peer the joiners are told about.
const BOOTSTRAP: usize = 4;

macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// Short version (`make test`): 300 blocks, a lone joiner, then 4 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_crowd_of_joiners_short() {
    require_root!();
    crowd_of_joiners(300, 4).await;
}

/// The version (`make soak`, ignored by `make test`): 2,000 blocks, a lone joiner,
/// then 10 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by `make soak` or with --ignored"]
async fn scenario_8_crowd_of_joiners() {
    require_root!();
    crowd_of_joiners(2000, 10).await;
}

/// `tally_sync_blocks_served_total` of every testnet node (by index) and every joiner.
async fn served(net: &NetnsTestnet, joiners: &[&Joiner]) -> Vec<u64> {
    let mut out = Vec::new();
    for i in ALL {
        let url = net.metrics_url(i).unwrap();
        out.push(
            scrape_counter(&net.http, &url, "tally_sync_blocks_served_total")
                .await
                .unwrap(),
        );
    }
    for j in joiners {
        // A joiner that stopped answering counts as having served nothing more.
        out.push(
            scrape_counter(&net.http, &j.metrics, "tally_sync_blocks_served_total")
                .await
                .unwrap_or(0),
        );
    }
    out
}

async fn tip(net: &NetnsTestnet) -> u64 {
    net.heights(&ALL)
        .await
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
}

/// Waits until `joiner` is at `target` or above; the time since `from`.
async fn time_to(
    http: reqwest::Client,
    rpc: String,
    target: u64,
    from: Instant,
    timeout: Duration,
) -> Result<f64, String> {
    let deadline = from + timeout;
    let mut last = None;
    loop {
        let h = async {
            let r = http.get(format!("{rpc}/v1/status")).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()?["height"].as_u64()
        }
        .await;
        if h.is_some_and(|h| h >= target) {
            return Ok(from.elapsed().as_secs_f64());
        }
        last = h.or(last);
        if Instant::now() > deadline {
            return Err(format!(
                "{rpc} at {last:?}, not {target}, {timeout:?} after the start"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `peers=N` of a joiner's `caught up with peers` log line: how many peers its sync
/// used.
async fn sync_peers(j: &Joiner) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(j.home.join("node.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("caught up with peers")) {
            return line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("peers="))
                .and_then(|n| n.parse().ok());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the workload stopped: waits until no node (testnet or joiner) has held a pending
/// tx for longer than the RPC server's request timeout (10 s). The workload gives up on a
/// request after 2 s, but a node loaded by the crowd may admit that tx later; committed
/// after the checker fetched the blocks and before it read the accounts, it would show as
/// a balance and nonce mismatch (the checker reads accounts at a later height than the
/// blocks it fetched).
async fn quiesce(net: &NetnsTestnet, joiners: &[Joiner]) {
    let mut rpcs = net.rpcs.clone();
    rpcs.extend(joiners.iter().map(|j| j.rpc.clone()));
    let window = Duration::from_secs(11);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < window {
        let mut pending = Vec::new();
        for rpc in &rpcs {
            let txs = async {
                let r = net.http.get(format!("{rpc}/v1/status")).send().await.ok()?;
                r.json::<serde_json::Value>().await.ok()?["mempool"]["txs"].as_u64()
            }
            .await;
            if txs != Some(0) {
                pending.push((rpc.clone(), txs));
            }
        }
        if !pending.is_empty() {
            quiet_since = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "txs still pending 120 s after the workload stopped: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(names: &[String], before: &[u64], after: &[u64]) -> (Vec<u64>, String) {
    let d: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let text = names
        .iter()
        .zip(&d)
        .map(|(n, x)| format!("{n} {x}"))
        .collect::<Vec<_>>()
        .join(", ");
    (d, text)
}

async fn crowd_of_joiners(blocks: u64, crowd: usize) {
    let waited = Instant::now();
    let _lock = NetLock::take().await;
    let began = Instant::now();
    eprintln!(
        "netns lock taken after {:.1} s",
        waited.elapsed().as_secs_f64()
    );
    let net = NetnsTestnet::start(4, 1, BUILD_COMMIT_MS).await.unwrap();
    let work = Workload::start(&net);

    // The chain.
    let built = Instant::now();
    net.wait_height(&ALL, blocks, Duration::from_secs(blocks / 4 + 60))
        .await
        .unwrap();
    let build_secs = built.elapsed().as_secs_f64();
    // The normal pace from here on: one validator restarted at a time, each back at the
    // tip before the next (the other three keep committing meanwhile).
    let commit_ms = JOIN_COMMIT_MS.to_string();
    for i in 0..4 {
        net.restart_with_env(i, &[("TALLY_CONSENSUS_TIMEOUT_COMMIT_MS", &commit_ms)]);
        let h = tip(&net).await;
        net.wait_height(&[i], h, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| {
                panic!("node{i} restarted with timeout_commit {commit_ms} ms: {e}")
            });
    }
    // The first heights after the restarts may take a round change: the pace after them.
    net.wait_height(&ALL, tip(&net).await + 3, Duration::from_secs(60))
        .await
        .unwrap();
    let pace = net.rate(0, Duration::from_secs(3)).await.unwrap();
    eprintln!(
        "chain of {} blocks built in {build_secs:.0} s; now {pace:.1} blocks/s",
        tip(&net).await
    );

    // One joiner alone.
    let mut lone = net.add_joiner(5, &[BOOTSTRAP]).unwrap();
    let before = served(&net, &[]).await;
    let lone_target = tip(&net).await;
    let start = Instant::now();
    lone.start().unwrap();
    let lone_secs = time_to(
        net.http.clone(),
        lone.rpc.clone(),
        lone_target,
        start,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("the lone joiner: {e}\n{}", lone.log_tail(30)));
    let lone_peers = sync_peers(&lone).await;
    let after = served(&net, &[&lone]).await;
    let mut names: Vec<String> = ALL.iter().map(|i| format!("node{i}")).collect();
    names.push(lone.name.clone());
    let (lone_served, lone_text) = spread(&names, &before, &after);
    eprintln!(
        "lone joiner: {lone_target} blocks in {lone_secs:.1} s ({:.0} blocks/s incl. start-up), sync used {lone_peers:?} peers; served: {lone_text}",
        lone_target as f64 / lone_secs
    );
    assert!(
        lone_served.iter().sum::<u64>() >= lone_target.saturating_sub(64),
        "the testnet counts {lone_served:?} blocks served to a joiner that synced {lone_target}"
    );
    drop(lone);

    // The crowd: made first, then started at one moment.
    let mut joiners: Vec<Joiner> = (0..crowd)
        .map(|k| net.add_joiner(6 + k, &[BOOTSTRAP]).unwrap())
        .collect();
    let refs: Vec<&Joiner> = joiners.iter().collect();
    let before = served(&net, &refs).await;
    let target = tip(&net).await;
    let start = Instant::now();
    for j in &mut joiners {
        j.start().unwrap();
    }
    let timeout = Duration::from_secs(60 + blocks * crowd as u64 / 50);
    let waits: Vec<_> = joiners
        .iter()
        .map(|j| {
            tokio::spawn(time_to(
                net.http.clone(),
                j.rpc.clone(),
                target,
                start,
                timeout,
            ))
        })
        .collect();
    let mut secs = Vec::new();
    let mut failed = Vec::new();
    for (j, w) in joiners.iter().zip(waits) {
        match w.await.unwrap() {
            Ok(s) => secs.push(s),
            Err(e) => failed.push(format!("{}: {e}\n{}", j.name, j.log_tail(20))),
        }
    }
    assert!(
        failed.is_empty(),
        "joiners did not reach the tip:\n{}",
        failed.join("\n")
    );
    let refs: Vec<&Joiner> = joiners.iter().collect();
    let after = served(&net, &refs).await;
    let mut names: Vec<String> = ALL.iter().map(|i| format!("node{i}")).collect();
    names.extend(joiners.iter().map(|j| j.name.clone()));
    let (crowd_served, crowd_text) = spread(&names, &before, &after);
    let mut peers = Vec::new();
    for j in &joiners {
        peers.push(sync_peers(j).await);
    }
    let (med, max) = (median(&secs), secs.iter().copied().fold(0.0f64, f64::max));
    let total: u64 = crowd_served.iter().sum();
    let by_bootstrap = crowd_served[BOOTSTRAP];
    let by_others_in_net = ALL
        .iter()
        .filter(|i| **i != BOOTSTRAP)
        .filter(|i| crowd_served[**i] > 0)
        .count();
    let by_joiners: u64 = crowd_served[ALL.len()..].iter().sum();
    let times: Vec<String> = secs.iter().map(|s| format!("{s:.1}")).collect();
    eprintln!(
        "crowd of {crowd}: {target} blocks; time to tip (s) {}; median {med:.1} s, max {max:.1} s; sync used peers {peers:?}; served: {crowd_text}",
        times.join(" ")
    );

    // Every joiner follows the live tip (consensus gossip after sync).
    let live = tip(&net).await + 3;
    for j in &joiners {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if j.height(&net.http).await.is_some_and(|h| h >= live) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not follow the tip ({live}):\n{}",
                j.name,
                j.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The checker over the testnet's nodes, then the same history with every joiner's
    // blocks and accounts added: one hash per height everywhere, every observed tx where
    // it was seen, balances and nonces equal to the replay, supply unchanged.
    let observed = work.stop().await;
    quiesce(&net, &joiners).await;
    let checking = Instant::now();
    let (v, mut history) = net.check_history(observed.clone()).await.unwrap();
    assert_no_violations(&v, history.nodes[0].blocks.len() as u64, observed.len());
    let h = history.nodes[0].blocks.len() as u64;
    for j in &joiners {
        let deadline = Instant::now() + Duration::from_secs(30);
        while j.height(&net.http).await.is_none_or(|x| x < h) {
            assert!(Instant::now() < deadline, "{} is behind {h}", j.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // One fetch per joiner at a time: they answer in parallel.
    let fetches: Vec<_> = joiners
        .iter()
        .map(|j| {
            let (http, node, genesis, staking, observed) = (
                net.http.clone(),
                j.endpoint(),
                net.genesis.clone(),
                net.staking.clone(),
                observed.clone(),
            );
            tokio::spawn(async move {
                checker::fetch_history(&http, &[node], &genesis, staking.as_ref(), h, observed)
                    .await
            })
        })
        .collect();
    for f in fetches {
        history.nodes.extend(f.await.unwrap().unwrap().nodes);
    }
    let v = checker::check(&history);
    eprintln!(
        "checked {} nodes in {:.1} s; {:.0} s since the lock was taken",
        history.nodes.len(),
        checking.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64()
    );

    eprintln!(
        "FIGURES scenario 8: chain of {blocks} blocks built in {build_secs:.0} s; lone joiner {lone_target} blocks in {lone_secs:.1} s; crowd of {crowd} ({target} blocks): median {med:.1} s (ratio {:.2}), max {max:.1} s (ratio {:.2}); blocks synced per second, all joiners together: alone {:.0}, crowd {:.0}; blocks served to the crowd {total}: node4 {by_bootstrap} ({:.0}%), other testnet nodes {}, joiners {by_joiners}; {} txs seen committed, checked heights 1..={h} on {} nodes",
        med / lone_secs,
        max / lone_secs,
        lone_target as f64 / lone_secs,
        (crowd as u64 * target) as f64 / max,
        100.0 * by_bootstrap as f64 / total.max(1) as f64,
        total - by_bootstrap - by_joiners,
        observed.len(),
        history.nodes.len()
    );
    assert_no_violations(&v, h, observed.len());
    // Each joiner's sync was answered in full: every block it applied was counted by a
    // server (a block served twice counts twice).
    assert!(
        total >= (crowd as u64) * target.saturating_sub(64),
        "{total} blocks served for {crowd} joiners of {target} blocks"
    );
    // The load spread: node4, the only address the joiners were given, did not serve it
    // all; the joiners found other servers through it (identify + Kademlia).
    assert!(
        by_bootstrap < total,
        "node4 served every block: {crowd_text}"
    );
    assert!(
        by_others_in_net >= 2,
        "fewer than two testnet nodes besides node4 served the crowd: {crowd_text}"
    );
}
