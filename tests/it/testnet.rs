//! `tallyd testnet up` end to end, the way the README tells a user to run it: the real
//! `tallyd` supervisor and the real `tally` wallet as child processes, on an unusual
//! loopback range (127.0.77.x) so its fixed ports never meet another test's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_tests::{assert_no_fork, bin, block_id, eventually};

const BASE: &str = "127.0.77";
const NODES: usize = 5;

fn rpc(i: usize) -> String {
    format!("http://{BASE}.{}:26657", 2 + i)
}

fn metrics(i: usize) -> String {
    format!("http://{BASE}.{}:26660/metrics", 2 + i)
}

/// Kills whatever the test started if it fails half-way (supervisor first, then nodes
/// by their pid files), so a failed run leaves no process behind either.
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
        for pid in node_pids(&self.dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if std::thread::panicking() {
            eprintln!("up output:\n{}", read(&self.dir.join("up.out")));
            for i in 0..NODES {
                let log = read(&self.dir.join(format!("node{i}/node.log")));
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "node{i} log tail:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn node_pids(dir: &Path) -> Vec<u32> {
    (0..NODES)
        .filter_map(|i| read(&dir.join(format!("node{i}/pid"))).trim().parse().ok())
        .collect()
}

/// A live (not zombie) process whose command line mentions `dir`.
fn alive_in(pid: u32, dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().to_string());
    if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(dir.to_str().unwrap())
}

/// Every live process whose command line mentions `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && alive_in(*pid, dir))
        .collect()
}

fn start_up(dir: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("up.out"))
        .unwrap();
    Command::new(bin("tallyd"))
        .args(["testnet", "up", "--validators", "4", "--full-nodes", "1"])
        .args(["--accounts", "4", "--timeout-commit-ms", "300"])
        .args([
            "--base-ip",
            &format!("{BASE}.2"),
            "--non-interactive",
            "--dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn tallyd(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin("tallyd"))
        .args(["testnet"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tallyd testnet {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tally(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("tally"))
        .env("TALLY_KEYS_DIR", dir.join("testnet/wallet/keys"))
        .args(args)
        .output()
        .unwrap()
}

async fn status(http: &reqwest::Client, i: usize) -> Option<Value> {
    let r = http
        .get(format!("{}/v1/status", rpc(i)))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn height(http: &reqwest::Client, i: usize) -> Option<u64> {
    status(http, i).await?["height"].as_u64()
}

/// Waits until every node in `nodes` answers with a height of at least `h`.
async fn wait_height(http: &reqwest::Client, nodes: &[usize], h: u64, timeout: Duration) {
    let what = format!("nodes {nodes:?} at height {h}");
    eventually(timeout, &what, || async move {
        let mut heights = Vec::new();
        for &i in nodes {
            heights.push(height(http, i).await);
        }
        if heights.iter().all(|x| x.is_some_and(|x| x >= h)) {
            Ok(())
        } else {
            Err(format!("heights {heights:?}"))
        }
    })
    .await
}

async fn block(http: &reqwest::Client, i: usize, h: u64) -> (String, String) {
    block_id(http, &rpc(i), h)
        .await
        .unwrap_or_else(|e| panic!("node{i} block {h}: {e:#}"))
}

/// SIGTERM the supervisor; it must exit and take every node with it.
async fn stop_up(guard: &mut Guard, timeout: Duration) {
    let mut up = guard.up.take().unwrap();
    let pids = node_pids(&guard.dir);
    assert_eq!(pids.len(), NODES, "a pid file per node");
    Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    eventually(timeout, "up to exit after SIGTERM", || {
        let exited = up.try_wait().unwrap();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await;
    let dir = guard.dir.clone();
    for pid in pids {
        assert!(
            !alive_in(pid, &dir),
            "node pid {pid} survived the supervisor"
        );
    }
    assert_eq!(
        processes_in(&dir),
        Vec::<u32>::new(),
        "processes left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn testnet_up_wallet_faults_shutdown_and_resume() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("tally-testnet-up-")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let dir = root.join("testnet");
    std::fs::create_dir_all(&dir).unwrap();
    let http = tally_tests::http_client(Duration::from_secs(5)).unwrap();
    let all: Vec<usize> = (0..NODES).collect();

    let mut guard = Guard {
        dir: dir.clone(),
        up: Some(start_up(&dir)),
    };
    wait_height(&http, &all, 2, Duration::from_secs(60)).await;
    for i in 0..NODES {
        let s = status(&http, i).await.unwrap();
        assert_eq!(s["validator"].as_bool(), Some(i < 4), "node{i} role");
    }
    let manifest: Value = serde_json::from_str(&read(&dir.join("testnet.json"))).unwrap();
    let targets: Value = serde_json::from_str(&read(&dir.join("prometheus-targets.json"))).unwrap();
    assert_eq!(targets[4]["targets"][0], format!("{BASE}.6:26660"));
    assert_eq!(targets[4]["labels"]["role"], "full");

    // The wallet, with the testnet's keys, as printed by `up`.
    let keys = tally(&root, &["keys", "list"]);
    assert!(keys.status.success());
    let listed = String::from_utf8_lossy(&keys.stdout);
    for k in 0..4 {
        assert!(listed.contains(&format!("account{k}")), "{listed}");
    }
    let to = manifest["accounts"][1]["address"].as_str().unwrap();
    let send = tally(
        &root,
        &[
            "--node",
            &rpc(0),
            "send",
            "--from",
            "account0",
            "--to",
            to,
            "--amount",
            "1000",
            "--wait",
            "committed",
        ],
    );
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(String::from_utf8_lossy(&send.stdout).contains("final"));

    let nodes = all.iter().map(|i| rpc(*i)).collect::<Vec<_>>().join(",");
    // 100 transfers from the four funded keys, spread over all five nodes: one request per
    // tx, then the same through POST /v1/txs/batch, signed before the run.
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "--node",
            &nodes,
            "--output",
            "json",
            "bench",
            "--keys",
            "account0,account1,account2,account3",
            "--rate",
            "50",
            "--duration",
            "2s",
            "--drain-timeout",
            "30s",
        ];
        args.extend_from_slice(extra);
        let out = tally(&root, &args);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bench {extra:?} output ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(out.status.success(), "bench {extra:?}: {report}");
        assert_eq!(report["submitted"], 100, "{report}");
        assert_eq!(report["committed"], 100, "{report}");
        assert_eq!(report["ok"], true, "{report}");
    };
    bench(&[]);
    bench(&["--batch", "20"]);

    // Every node agrees on the block (hash and state root) at a common height.
    let tip = height(&http, 0).await.unwrap();
    wait_height(&http, &all, tip, Duration::from_secs(20)).await;
    let rpcs: Vec<String> = all.iter().map(|i| rpc(*i)).collect();
    assert_no_fork(&http, &rpcs, [tip]).await;
    for i in 0..NODES {
        let r = http.get(metrics(i)).send().await.unwrap();
        assert!(r.status().is_success(), "node{i} /metrics");
        assert!(!r.text().await.unwrap().is_empty());
    }

    // Fault injection from "another terminal": a crashed validator, the rest go on.
    let killed = tallyd(&dir, &["kill", "2"]);
    assert!(String::from_utf8_lossy(&killed.stdout).contains("killed"));
    assert!(status(&http, 2).await.is_none(), "node2 still answers");
    let h = height(&http, 0).await.unwrap();
    wait_height(&http, &[0, 1, 3, 4], h + 3, Duration::from_secs(30)).await;
    tallyd(&dir, &["restart", "2"]);
    let h = height(&http, 0).await.unwrap();
    wait_height(&http, &all, h + 1, Duration::from_secs(30)).await;

    // SIGTERM to `up` stops everything, the restarted node included.
    let before = height(&http, 0).await.unwrap();
    let first = block(&http, 0, 1).await;
    stop_up(&mut guard, Duration::from_secs(40)).await;
    assert!(!dir.join("supervisor.pid").exists());

    // A second `up` resumes the same chain.
    guard.up = Some(start_up(&dir));
    wait_height(&http, &all, before + 1, Duration::from_secs(60)).await;
    assert_eq!(
        block(&http, 0, 1).await,
        first,
        "same chain after a restart"
    );
    assert!(read(&dir.join("up.out")).contains("resuming the testnet"));
    stop_up(&mut guard, Duration::from_secs(40)).await;

    eprintln!("testnet e2e took {:?}", started.elapsed());
}

// ---- the supervisor found by any spelling of its directory (issue 16) -----------------

/// A one-validator testnet for the supervisor checks, on its own range: its fixed ports
/// must not meet the test above (127.0.77.x) or tests/it/genesis.rs (127.0.78.x).
const GUARD_IP: &str = "127.0.79.2";

/// `tallyd testnet <args>` run in `cwd`, whatever its exit status.
fn tallyd_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin("tallyd"))
        .current_dir(cwd)
        .arg("testnet")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts a supervisor (`args` after `tallyd testnet`) in `cwd` and waits until it has
/// written its pid file and every node runs (the banner is printed after the last spawn).
fn supervise_in(guard: &mut Guard, cwd: &Path, args: &[&str]) -> u32 {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(guard.dir.join("up.out"))
        .unwrap();
    let before = read(&guard.dir.join("up.out"))
        .matches("Ctrl-C stops every node.")
        .count();
    let child = Command::new(bin("tallyd"))
        .current_dir(cwd)
        .arg("testnet")
        .args(args)
        .arg("--non-interactive")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.up = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let banners = read(&guard.dir.join("up.out"))
            .matches("Ctrl-C stops every node.")
            .count();
        if banners > before {
            break;
        }
        if let Some(status) = guard.up.as_mut().unwrap().try_wait().unwrap() {
            panic!("tallyd testnet {args:?} exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "tallyd testnet {args:?} did not start its nodes within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        read(&guard.dir.join("supervisor.pid")).trim(),
        pid.to_string()
    );
    assert_eq!(node_pids(&guard.dir).len(), 1, "node0's pid file");
    pid
}

/// A second supervisor on the same directory is refused, naming the running one, for
/// every spelling of the directory in `spellings` (cwd, --dir).
fn assert_start_refused(guard: &Guard, pid: u32, spellings: &[(&Path, &str)]) {
    for (cwd, dir) in spellings {
        let out = tallyd_in(cwd, &["start", "--non-interactive", "--dir", dir]);
        assert!(
            !out.status.success(),
            "a second start --dir {dir} (cwd {}) ran",
            cwd.display()
        );
        assert!(
            text(&out).contains(&format!("already running (supervisor pid {pid})")),
            "start --dir {dir} (cwd {}) did not see supervisor {pid}: {}",
            cwd.display(),
            text(&out)
        );
    }
    assert_eq!(
        read(&guard.dir.join("supervisor.pid")).trim(),
        pid.to_string(),
        "a refused start must leave the pid file alone"
    );
}

/// `tallyd testnet stop --dir <dir>` from `cwd` stops the supervisor and its node.
fn assert_stops(guard: &mut Guard, pid: u32, cwd: &Path, dir: &str) {
    let nodes = node_pids(&guard.dir);
    let out = tallyd_in(cwd, &["stop", "--dir", dir]);
    assert!(out.status.success(), "stop --dir {dir}: {}", text(&out));
    assert!(
        text(&out).contains(&format!("stopping the supervisor (pid {pid})")),
        "stop --dir {dir} (cwd {}) did not find supervisor {pid}: {}",
        cwd.display(),
        text(&out)
    );
    let mut up = guard.up.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while up.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            guard.up = Some(up);
            panic!("supervisor {pid} still runs 40 s after stop --dir {dir}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in nodes {
        assert!(!alive_in(n, &guard.dir), "node pid {n} survived stop");
    }
    assert!(!guard.dir.join("supervisor.pid").exists());
}

#[test]
fn stop_and_second_start_find_the_supervisor_by_any_spelling_of_its_dir() {
    let tmp = tempfile::Builder::new()
        .prefix("tally-testnet-dir-")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let dir = root.join("testnet");
    let abs = dir.to_str().unwrap().to_string();
    let init = tallyd_in(
        &root,
        &[
            "init",
            "--validators",
            "1",
            "--full-nodes",
            "0",
            "--accounts",
            "1",
            "--timeout-commit-ms",
            "300",
            "--base-ip",
            GUARD_IP,
            "--dir",
            "testnet",
        ],
    );
    assert!(init.status.success(), "init: {}", text(&init));
    std::os::unix::fs::symlink(&dir, root.join("link")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let spellings: [(&Path, &str); 6] = [
        (&root, "testnet"),
        (&root, "./testnet/"),
        (&root, &abs),
        (&dir, "."),
        (&root, "link"),
        (elsewhere.path(), &abs),
    ];
    let mut guard = Guard {
        dir: dir.clone(),
        up: None,
    };

    // A relative --dir, as `make testnet` runs it (`up --dir ./testnet`).
    let pid = supervise_in(&mut guard, &root, &["up", "--dir", "./testnet"]);
    assert_start_refused(&guard, pid, &spellings);
    assert_stops(&mut guard, pid, &root, "testnet");

    // An absolute one, stopped with a relative spelling from inside the directory.
    let pid = supervise_in(&mut guard, &root, &["start", "--dir", &abs]);
    assert_start_refused(&guard, pid, &spellings);
    assert_stops(&mut guard, pid, &dir, ".");

    // No --dir at all: the default ./testnet of the supervisor's working directory.
    let pid = supervise_in(&mut guard, &root, &["start"]);
    assert_start_refused(&guard, pid, &spellings);
    assert_stops(&mut guard, pid, elsewhere.path(), &abs);
}
