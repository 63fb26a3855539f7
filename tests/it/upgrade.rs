//! Issue 21's rolling upgrade on real nodes (`make upgrade-test`): a network started on
//! the previous release's `tallyd` (the commit in `upgrade/BASE`, built by
//! scripts/upgrade-test.sh into the directory `TALLY_BASE_BIN` names) is moved onto this
//! tree's binary one node at a time, under a transfer workload, and must never stall,
//! fork or lose a write.
//!
//! The parts about activating protocol 2 read `/v1/status`'s `upgrade`
//! (`{"next":2,"readiness":0.75,"window":W}`, then `{"next":2,"activation_height":A}`)
//! and `protocol`; on a tree whose nodes do not report `upgrade` they are skipped with a
//! note, and the rolling restart alone is checked.
//!
//! Without `TALLY_BASE_BIN` every test here is skipped with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
use tally_tests::workload::{assert_no_violations, Workload};
use tally_tests::{account_key, eventually, metric_samples, TestNet};

const BASE_ENV: &str = "TALLY_BASE_BIN";
const VALIDATORS: usize = 4;
/// Node 4: the full node, left on the old binary until after activation.
const FULL_NODE: usize = 4;
/// Node 5 (a joiner): holds a validator key outside genesis, bonded after activation.
const JOINER: usize = 5;
/// Accounts 0..8 run the workload; account 9 is kept for the bond.
const WORKLOAD_ACCOUNTS: usize = 9;
const BONDER: usize = 9;
/// About 1 s blocks: the interval is mostly `timeout_commit`, so a round lost to a
/// proposer that is restarting (`timeout_propose` 1.5 s + a new round) stays within
/// 3 intervals, the bound the issue sets.
const TIMEOUT_COMMIT_MS: u64 = 1000;
/// Genesis `upgrade_window` and `upgrade_lead` when both binaries know them (issue 21,
/// item 2); a release that does not know them refuses the genesis, and the defaults hold.
const UPGRADE_WINDOW: u64 = 20;
const UPGRADE_LEAD: u64 = 10;
const WAIT: Duration = Duration::from_secs(90);

/// The previous release's `tallyd`, or `None` (and why, on stderr) when not given.
fn base_tallyd() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(BASE_ENV) else {
        eprintln!(
            "skipped: {BASE_ENV} is not set; `make upgrade-test` builds the release named in \
             upgrade/BASE and sets it ({BASE_ENV}=<dir holding that release's tallyd>)"
        );
        return None;
    };
    let tallyd = Path::new(&dir).join("tallyd");
    assert!(
        tallyd.is_file(),
        "{BASE_ENV}={}: no tallyd there (make upgrade-test builds it)",
        tallyd.display()
    );
    Some(tallyd)
}

/// The commit the BASE binaries were built from: `$TALLY_BASE_BIN/COMMIT` (written by
/// scripts/upgrade-test.sh), else upgrade/BASE.
fn base_commit(tallyd: &Path) -> String {
    let recorded = tallyd.with_file_name("COMMIT");
    let repo_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../upgrade/BASE");
    let text = std::fs::read_to_string(&recorded)
        .or_else(|_| std::fs::read_to_string(&repo_file))
        .expect("upgrade/BASE names the previous release");
    text.trim().to_string()
}

/// A seeded order (`TALLY_UPGRADE_SEED` replays one), printed.
fn shuffled(mut items: Vec<usize>) -> Vec<usize> {
    let seed = std::env::var("TALLY_UPGRADE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    eprintln!("upgrade order {items:?} (TALLY_UPGRADE_SEED={seed})");
    items
}

/// Creates the 4 validators + 1 full node + 1 joiner on fixed ports and starts the
/// validators and the full node on `base`. The genesis asks for a short upgrade window
/// if the old binary accepts it; otherwise the chain keeps the defaults.
async fn old_net(base: &Path) -> TestNet {
    for params in [true, false] {
        // A protocol-1 chain (today's formats) moving to protocol 2.
        let mut builder = TestNet::builder()
            .protocol(ledger::types::PROTOCOL_1)
            .validators(VALIDATORS)
            .full_nodes(1)
            .joiners(1)
            .timeout_commit_ms(TIMEOUT_COMMIT_MS)
            .fixed_ports();
        if params {
            builder = builder
                .genesis_param("upgrade_window", UPGRADE_WINDOW.into())
                .genesis_param("upgrade_lead", UPGRADE_LEAD.into());
        }
        let mut net = builder.create().unwrap();
        for i in 0..=FULL_NODE {
            net.set_node_binary(i, Some(base.to_path_buf()));
        }
        net.start_node(0).unwrap();
        match net.wait_addresses(0, WAIT).await {
            Ok(_) => {}
            Err(e) if params && e.to_string().contains("unknown field") => {
                eprintln!(
                    "the old tallyd does not know upgrade_window/upgrade_lead: genesis keeps \
                     the defaults"
                );
                continue;
            }
            Err(e) => panic!("the old tallyd did not start: {e:#}"),
        }
        net.bootstrap_from(0);
        for i in 1..=FULL_NODE {
            net.start_node(i).unwrap();
        }
        for i in 1..=FULL_NODE {
            net.wait_addresses(i, WAIT).await.unwrap();
        }
        return net;
    }
    unreachable!("the second attempt returns or panics")
}

/// When each height was first reported by any node, polled every 50 ms in the
/// background: the gaps between consecutive heights are the commit times.
struct Heights {
    seen: Arc<Mutex<Vec<(u64, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heights {
    fn watch(net: &TestNet, nodes: &[usize]) -> Self {
        let rpcs: Vec<String> = nodes.iter().map(|&i| net.rpc(i)).collect();
        let http = tally_tests::http_client(Duration::from_millis(500)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut top = None;
                for rpc in &rpcs {
                    top = top.max(height_at(&http, rpc).await);
                }
                let now = Instant::now();
                if let Some(h) = top {
                    let mut seen = out.lock().unwrap();
                    let last = seen.last().map_or(0, |(h, _)| *h);
                    // A jump of several heights in one poll is several commits in one
                    // gap; they all count from the time the first of them was seen.
                    for height in last + 1..=h {
                        seen.push((height, now));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Heights { seen, task }
    }

    fn height(&self) -> u64 {
        self.seen.lock().unwrap().last().map_or(0, |(h, _)| *h)
    }

    /// The longest gap between consecutive heights seen after `from`, and its height.
    fn longest_gap_since(&self, from: u64) -> (Duration, u64) {
        let seen = self.seen.lock().unwrap();
        seen.windows(2)
            .filter(|w| w[0].0 >= from)
            .map(|w| (w[1].1 - w[0].1, w[1].0))
            .max()
            .unwrap_or_default()
    }

    /// The mean commit time over heights `from..to`.
    fn mean_interval(&self, from: u64, to: u64) -> Duration {
        let seen = self.seen.lock().unwrap();
        let at = |h: u64| seen.iter().find(|(x, _)| *x == h).map(|(_, t)| *t);
        let (a, b) = (at(from).unwrap(), at(to).unwrap());
        (b - a) / (to - from) as u32
    }
}

impl Drop for Heights {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn height_at(http: &reqwest::Client, rpc: &str) -> Option<u64> {
    let r = http.get(format!("{rpc}/v1/status")).send().await.ok()?;
    r.json::<Value>().await.ok()?["height"].as_u64()
}

async fn status(net: &TestNet, i: usize) -> Result<Value, String> {
    net.get(i, "/v1/status").await.map_err(|e| e.to_string())
}

/// Stops node `i`, switches it to `binary` (`None`: this tree's) and starts it again;
/// returns once it is back at the others' tip (`tip_of`: nodes that kept running).
async fn restart_onto(net: &mut TestNet, i: usize, binary: Option<PathBuf>, tip_of: &[usize]) {
    let began = Instant::now();
    if net.is_running(i) {
        net.stop(i).await.unwrap();
    }
    net.set_node_binary(i, binary);
    net.start_node(i).unwrap();
    net.wait_addresses(i, WAIT).await.unwrap();
    let net = &*net;
    eventually(WAIT, &format!("node {i} back at the tip"), || async move {
        let mut tip = 0;
        for &j in tip_of {
            tip = tip.max(status(net, j).await?["height"].as_u64().unwrap_or(0));
        }
        let s = status(net, i).await?;
        let h = s["height"].as_u64().unwrap_or(0);
        if h >= tip && s["catching_up"] != true {
            Ok(())
        } else {
            Err(format!("at {h}, tip {tip}"))
        }
    })
    .await;
    signing_again(net, i, tip_of).await;
    eprintln!(
        "node {i} restarted onto {} and back at the tip in {:.1} s",
        net.node_binary(i).display(),
        began.elapsed().as_secs_f64()
    );
}

/// Waits until a validator's precommit is in a commit again (the latest block's
/// `last_commit` as a running node serves it): at its tip with its peers connected but
/// not yet in the gossip mesh, its votes do not count, and restarting the next validator
/// then would leave 2 of 4 voting (a stall of several block intervals, not a rolling
/// upgrade's gap). Full nodes have no key and return at once.
async fn signing_again(net: &TestNet, i: usize, running: &[usize]) {
    let Some(addr) = status(net, i)
        .await
        .ok()
        .and_then(|s| s["validator_address"].as_str().map(str::to_owned))
    else {
        return;
    };
    let Some(&j) = running.first() else { return };
    // A commit of a height after the restart: the tip's own may still hold its old vote.
    let after = status(net, j)
        .await
        .ok()
        .and_then(|s| s["height"].as_u64())
        .unwrap_or(0);
    let addr = &addr;
    eventually(
        WAIT,
        &format!("node {i}'s precommit in a commit"),
        || async move {
            let b = net
                .get(j, "/v1/blocks/latest")
                .await
                .map_err(|e| e.to_string())?;
            let signed = b["last_commit"]["height"]
                .as_u64()
                .is_some_and(|h| h > after)
                && b["last_commit"]["signatures"]
                    .as_array()
                    .is_some_and(|sigs| sigs.iter().any(|s| s["validator"].as_str() == Some(addr)));
            if signed {
                Ok(())
            } else {
                Err(format!("not in height {}'s last commit", b["height"]))
            }
        },
    )
    .await;
}

/// `upgrade` of node `i`'s status, if its tallyd has the activation machinery.
async fn upgrade_field(net: &TestNet, i: usize) -> Option<Value> {
    let s = status(net, i).await.ok()?;
    s.get("upgrade").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_from_the_previous_release() {
    let Some(base) = base_tallyd() else {
        return;
    };
    eprintln!("BASE {} ({})", base_commit(&base), base.display());
    let mut net = old_net(&base).await;
    let all: Vec<usize> = (0..=FULL_NODE).collect();
    let rpcs: Vec<String> = all.iter().map(|&i| net.rpc(i)).collect();
    let keys: Vec<_> = (0..WORKLOAD_ACCOUNTS).map(account_key).collect();
    let work = Workload::over(rpcs, &keys, net.http.clone());
    let heights = Heights::watch(&net, &all);

    // The block interval of the old network under the workload.
    net.wait_for_height(3, WAIT).await.unwrap();
    let from = heights.height();
    eventually(WAIT, "15 blocks of the old network", || async {
        let h = heights.height();
        (h >= from + 15).then_some(()).ok_or(format!("at {h}"))
    })
    .await;
    let interval = heights.mean_interval(from, from + 15);
    eprintln!(
        "block interval before the upgrade: {:.3} s",
        interval.as_secs_f64()
    );

    let order = shuffled((0..VALIDATORS).collect());
    // Three of the four validators: > 2/3 of the power on the new binary.
    for (k, &v) in order[..3].iter().enumerate() {
        let others: Vec<usize> = all.iter().copied().filter(|&j| j != v).collect();
        restart_onto(&mut net, v, None, &others).await;
        if k == 0 {
            peers_show_versions(&net, v).await;
        }
    }
    let third_at = Instant::now();

    if upgrade_field(&net, order[0]).await.is_some() {
        activation(&mut net, &order, third_at, &heights).await;
    } else {
        eprintln!(
            "note: this tree's /v1/status has no `upgrade`: the activation checks are \
             skipped, the rolling restart alone is checked"
        );
        for i in [order[3], FULL_NODE] {
            let others: Vec<usize> = all.iter().copied().filter(|&j| j != i).collect();
            restart_onto(&mut net, i, None, &others).await;
        }
    }

    // Everyone on the new binary: every peer announces this tree's protocols.
    let everyone = net.get(0, "/v1/peers").await.unwrap();
    for p in everyone["peers"].as_array().unwrap() {
        assert_eq!(
            p["max_protocol"],
            ledger::types::MAX_PROTOCOL,
            "node 0 sees a peer still announcing something else: {p}"
        );
    }

    let (gap, at) = heights.longest_gap_since(from);
    let observed = work.stop().await;
    eprintln!(
        "longest gap between commits: {:.2} s before height {at} = {:.2} block intervals \
         ({} txs seen committed)",
        gap.as_secs_f64(),
        gap.as_secs_f64() / interval.as_secs_f64(),
        observed.len()
    );
    assert!(!observed.is_empty(), "the workload committed nothing");
    assert!(
        gap <= interval * 3,
        "height {at} took {:.2} s to commit, more than 3 block intervals ({:.3} s)",
        gap.as_secs_f64(),
        interval.as_secs_f64()
    );
    let checked: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| net.is_running(i))
        .collect();
    let (v, history) = net
        .check(&checked, observed.clone(), &BTreeMap::new())
        .await
        .unwrap();
    assert_no_violations(&v, history.nodes[0].blocks.len() as u64, observed.len());
}

/// After the first upgrade, node `new` sees the old peers announce a version and no
/// protocols (releases before announcements) in `/v1/peers` and in
/// `tally_p2p_peer_versions`, and the metric counts them.
async fn peers_show_versions(net: &TestNet, new: usize) {
    let version = env!("CARGO_PKG_VERSION");
    eventually(WAIT, "the new node reads every peer's software", || async {
        let peers: tally_api::Peers = net
            .get_as(new, "/v1/peers")
            .await
            .map_err(|e| e.to_string())?;
        let connected: Vec<_> = peers.peers.iter().filter(|p| p.connected).collect();
        let known = connected
            .iter()
            .filter(|p| p.version.as_deref() == Some(version))
            .count();
        (connected.len() >= FULL_NODE && known == connected.len())
            .then_some(())
            .ok_or(format!("{connected:?}"))
    })
    .await;
    // Sampled every 10 s.
    let url = net.metrics_url(new);
    let http = &net.http;
    eventually(WAIT, "tally_p2p_peer_versions counts the peers", || {
        let get = http.get(url.clone()).send();
        async move {
            let text = get
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let label = format!("version=\"{version}\"");
            let n: f64 = metric_samples(&text, "tally_p2p_peer_versions", Some(&label)).sum();
            (n >= FULL_NODE as f64).then_some(()).ok_or(format!("{n}"))
        }
    })
    .await;
}

/// Protocol 2 activates on its own once 3 of 4 validators run the new binary; the old
/// full node stops at the activation height with the message to upgrade; upgraded, it
/// syncs past it; a bond adds the joiner to the set.
async fn activation(net: &mut TestNet, order: &[usize], third_at: Instant, heights: &Heights) {
    let new = order[0];
    let a = eventually(
        WAIT * 2,
        "protocol 2 recorded with its activation height",
        || async {
            let up = upgrade_field(net, new).await.unwrap_or(Value::Null);
            up["activation_height"]
                .as_u64()
                .ok_or(format!("upgrade: {up}"))
        },
    )
    .await;
    let recorded = third_at.elapsed();
    eprintln!(
        "protocol 2 recorded {:.1} s after the third validator's upgrade, from height {a}",
        recorded.as_secs_f64()
    );
    net.wait_nodes_height(&order[..3], a, WAIT).await.unwrap();
    eprintln!(
        "activation height {a} reached {:.1} s after the third validator's upgrade",
        third_at.elapsed().as_secs_f64()
    );
    for &v in &order[..3] {
        let s = status(net, v).await.unwrap();
        assert_eq!(s["protocol"], 2, "node {v} after the activation: {s}");
    }

    // The old full node stops at A with the message and its own exit code.
    let (code, log) = net.wait_exit(FULL_NODE, WAIT).await.unwrap();
    let says = format!("this network runs protocol 2 from height {a}");
    assert!(
        log.contains(&says) && log.contains("upgrade it"),
        "the old full node's log lacks \"{says} ... upgrade it\":\n{log}"
    );
    assert!(
        code != 0 && code != 1,
        "the old full node exited with {code}, not an exit code of its own:\n{log}"
    );

    // The last validator (stopped at A too if it got there) and the full node onto the
    // new binary: both continue from their stores past A and agree.
    let running: Vec<usize> = order[..3].to_vec();
    restart_onto(net, order[3], None, &running).await;
    restart_onto(net, FULL_NODE, None, &running).await;
    let past = heights.height() + 2;
    net.wait_nodes_height(&[order[3], FULL_NODE], past, WAIT)
        .await
        .unwrap();
    let everyone: Vec<usize> = (0..=FULL_NODE).collect();
    net.assert_no_fork(&everyone, a.saturating_sub(2)..=past)
        .await;

    // A protocol-2 feature: a bond adds the joiner as a validator.
    net.start_node(JOINER).unwrap();
    net.wait_addresses(JOINER, WAIT).await.unwrap();
    let joiner = net
        .validator_key(JOINER)
        .expect("the joiner holds a validator key");
    let bonder = account_key(BONDER);
    let bond = bonder.sign_tx(ledger::types::Tx {
        chain_id: tally_tests::CHAIN_ID.into(),
        from: bonder.public_key(),
        nonce: 0,
        fee: 1,
        payload: ledger::types::Payload::Bond {
            validator: joiner.public_key(),
            amount: 20_000,
        },
    });
    let id = net.submit_accepted(order[0], &bond).await.unwrap();
    net.wait_committed(order[0], &id, WAIT).await.unwrap();
    let me = ledger::hash::to_hex(&joiner.address());
    let net = &*net;
    eventually(WAIT, "the bonded joiner signs commits", || async {
        let h = net.height(order[0]).await.map_err(|e| e.to_string())?;
        let b: tally_api::Block = net
            .get_as(order[0], &format!("/v1/blocks/{}", h.saturating_sub(1)))
            .await
            .map_err(|e| e.to_string())?;
        let who: Vec<String> = b
            .commit
            .map(|c| c.signatures.into_iter().map(|s| s.validator).collect())
            .unwrap_or_default();
        who.contains(&me).then_some(()).ok_or(format!("{who:?}"))
    })
    .await;
}

/// Negative control: with 2 of 4 validators upgraded, readiness stays below 2/3 and
/// protocol 2 is never recorded over more than 2 windows, and the chain keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_upgraded_never_activates() {
    let Some(base) = base_tallyd() else {
        return;
    };
    let mut net = old_net(&base).await;
    net.wait_for_height(3, WAIT).await.unwrap();
    let order = shuffled((0..VALIDATORS).collect());
    let all: Vec<usize> = (0..=FULL_NODE).collect();
    for &v in &order[..2] {
        let others: Vec<usize> = all.iter().copied().filter(|&j| j != v).collect();
        restart_onto(&mut net, v, None, &others).await;
    }
    let Some(up) = upgrade_field(&net, order[0]).await else {
        eprintln!(
            "skipped: this tree's /v1/status has no `upgrade` (no activation machinery yet); \
             the mixed network itself is checked by rolling_upgrade_from_the_previous_release"
        );
        return;
    };
    let window = up["window"]
        .as_u64()
        .expect("upgrade.window before activation");
    let start = net.height(order[0]).await.unwrap();
    let until = start + 2 * window + 5;
    let heights = Heights::watch(&net, &all);
    let net = &net;
    eventually(WAIT * 4, "more than 2 windows of blocks", || async {
        let up = upgrade_field(net, order[0]).await.unwrap_or(Value::Null);
        assert!(
            up["activation_height"].is_null(),
            "protocol 2 recorded with only 2 of 4 validators upgraded: {up}"
        );
        assert!(
            up["readiness"].as_f64().is_some_and(|r| r < 2.0 / 3.0),
            "readiness at or above 2/3 with 2 of 4 validators upgraded: {up}"
        );
        let h = heights.height();
        (h >= until)
            .then_some(())
            .ok_or(format!("at {h} of {until}"))
    })
    .await;
    for i in all {
        let s = status(net, i).await.unwrap();
        assert!(s["halted"].is_null(), "node {i} halted: {s}");
        // BASE's /v1/status predates the `protocol` field: absent there, 1 on this tree's.
        assert!(
            s["protocol"] == 1 || (s["protocol"].is_null() && !order[..2].contains(&i)),
            "node {i}: {s}"
        );
    }
}

/// The old binary opening a store this tree's binary wrote: refused, naming both schema
/// versions, when they differ; opened and continued when they are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_binary_on_a_new_store() {
    let Some(base) = base_tallyd() else {
        return;
    };
    let commit = base_commit(&base);
    let old_schema = base_schema_version(&commit);
    let new_schema = ledger::store::SCHEMA_VERSION;
    let mut net = TestNet::builder().validators(1).start().await.unwrap();
    net.wait_for_height(3, WAIT).await.unwrap();
    net.stop(0).await.unwrap();
    net.set_node_binary(0, Some(base));
    net.start_node(0).unwrap();
    if old_schema == new_schema {
        eprintln!(
            "schema version {new_schema} at BASE {commit} and here: the old binary must \
             open the store and go on"
        );
        net.wait_addresses(0, WAIT).await.unwrap();
        net.wait_for_height(5, WAIT).await.unwrap();
    } else {
        let (code, log) = net.wait_exit(0, WAIT).await.unwrap();
        assert_ne!(code, 0, "the old binary accepted a newer store:\n{log}");
        let says = format!(
            "database schema version {new_schema} is newer than this tallyd understands ({old_schema})"
        );
        assert!(log.contains(&says), "expected \"{says}\" in:\n{log}");
    }
}

/// `SCHEMA_VERSION` in the source of `commit` (git show).
fn base_schema_version(commit: &str) -> u32 {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["show", &format!("{commit}:ledger/src/store/mod.rs")])
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git show {commit}:ledger/src/store/mod.rs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("pub const SCHEMA_VERSION: u32 = "))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no SCHEMA_VERSION in ledger/src/store/mod.rs at {commit}"))
}
