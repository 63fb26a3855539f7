//! A harness for the network-fault tests (issue 18): the real `tallyd testnet up --hosts
//! netns` supervisor, one network namespace per node on 198.18.0.0/15, faults injected
//! through the real `tallyd testnet partition|isolate|oneway|heal|pause|resume` verbs, a
//! transfer workload through random nodes, and the [`crate::checker`] at the end.
//!
//! Only root can make namespaces: [`skip_reason`] says why a test cannot run. Whatever
//! happens, [`NetnsTestnet`]'s `Drop` kills the supervisor and runs `tallyd testnet
//! cleanup --dir`, which stops the nodes and removes every namespace, veth, bridge and nft
//! table of the testnet, also when the test panics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::types::Address;
use ledger::validators::ValidatorSet;
use serde_json::Value;

use tally_node::netns::{add_host, remove_host, Names};
use tally_node::testnet::init::{self, NodeHome, Ports};

use crate::checker::{self, Observation, Violation};
pub use crate::workload::{assert_no_violations, Workload};
use crate::{bin, http_client};

/// Why this machine cannot run the netns tests (not root, `ip` or `nft` missing).
pub fn skip_reason() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not root: network namespaces need root (CI runs as root)".into());
    }
    for tool in ["ip", "nft", "ss"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` not found: run `make bootstrap` as root"));
        }
    }
    None
}

/// libfaketime's preload library (Debian's `faketime` package), if installed. The
/// `faketime` command itself is no use for a node that outlives it: it waits for every
/// process holding its pipe.
pub fn libfaketime() -> Option<PathBuf> {
    let lib = std::fs::read_dir("/usr/lib").ok()?.flatten().find_map(|d| {
        let p = d.path().join("faketime/libfaketime.so.1");
        p.is_file().then_some(p)
    });
    lib.or_else(|| {
        let p = PathBuf::from("/usr/lib/faketime/libfaketime.so.1");
        p.is_file().then_some(p)
    })
}

/// Serialises the netns tests across nextest's processes: their timing assertions (no
/// commit while split, resume within 10 s) need the CPU a lone testnet would get on two
/// cores. A pid file, taken over when its owner died.
pub struct NetLock(PathBuf);

impl NetLock {
    pub async fn take() -> Self {
        let path = std::env::temp_dir().join("tally-netns-tests.lock");
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Self(path);
                }
                Err(_) => {
                    let owner: Option<u32> = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse().ok());
                    let alive =
                        owner.is_some_and(|p| Path::new(&format!("/proc/{p}/stat")).exists());
                    // An empty file is one being written: give its owner a moment.
                    if owner.is_some() && !alive {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub struct NetnsTestnet {
    tmp: Option<tempfile::TempDir>,
    /// The testnet directory (canonical).
    pub dir: PathBuf,
    up: Option<Child>,
    pub ips: Vec<String>,
    pub rpcs: Vec<String>,
    /// Each node's metrics URL (the checker reads the burned total there on protocol 2).
    metrics: Vec<String>,
    pub validators: usize,
    pub keys: Vec<Keypair>,
    pub genesis: BTreeMap<Address, u64>,
    /// Genesis staking (protocol 2, `tallyd testnet init`'s default), for the checker.
    pub staking: Option<checker::StakingGenesis>,
    pub http: reqwest::Client,
    /// The genesis validator set (for the proposer schedule) and each validator's node.
    validator_set: Option<ValidatorSet>,
    validator_nodes: BTreeMap<Address, usize>,
}

impl NetnsTestnet {
    /// `tallyd testnet up --hosts netns` with `validators` + `full_nodes` nodes and 4
    /// funded accounts; returns once every node answers its RPC.
    pub async fn start(
        validators: usize,
        full_nodes: usize,
        timeout_commit_ms: u64,
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("tally-netns-").tempdir()?;
        let dir = tmp.path().canonicalize()?.join("testnet");
        let out = std::fs::File::create(tmp.path().join("up.out"))?;
        let up = Command::new(bin("tallyd"))
            .args(["testnet", "up", "--hosts", "netns", "--non-interactive"])
            .args(["--validators", &validators.to_string()])
            .args(["--full-nodes", &full_nodes.to_string()])
            .args(["--accounts", "4", "--chain-id", crate::CHAIN_ID])
            .args(["--timeout-commit-ms", &timeout_commit_ms.to_string()])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start tallyd testnet up")?;
        let mut net = Self {
            tmp: Some(tmp),
            dir,
            up: Some(up),
            ips: Vec::new(),
            rpcs: Vec::new(),
            metrics: Vec::new(),
            validators,
            keys: Vec::new(),
            genesis: BTreeMap::new(),
            staking: None,
            http: http_client(Duration::from_secs(2))?,
            validator_set: None,
            validator_nodes: BTreeMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let manifest: Value = loop {
            if let Some(m) = std::fs::read_to_string(net.dir.join("testnet.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                break m;
            }
            net.check_up()?;
            if Instant::now() > deadline {
                bail!("no testnet.json within 60 s:\n{}", net.up_output());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let genesis =
            Genesis::load(&net.dir.join("genesis.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
        net.staking = checker::StakingGenesis::of(&genesis);
        net.validator_set = Some(genesis.validators);
        for (i, n) in manifest["nodes"]
            .as_array()
            .context("manifest nodes")?
            .iter()
            .enumerate()
        {
            if let Some(v) = n["validator_address"].as_str() {
                let a: Address = hex::decode(v)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("node{i}: validator_address is not 20 bytes"))?;
                net.validator_nodes.insert(a, i);
            }
            net.ips
                .push(n["ip"].as_str().context("node ip")?.to_string());
            net.rpcs
                .push(format!("http://{}", n["rpc"].as_str().context("node rpc")?));
            net.metrics.push(format!(
                "http://{}/metrics",
                n["metrics"].as_str().context("node metrics")?
            ));
        }
        for a in manifest["accounts"]
            .as_array()
            .context("manifest accounts")?
        {
            let name = a["name"].as_str().context("account name")?;
            let file: Value = serde_json::from_str(&std::fs::read_to_string(
                net.dir.join(format!("wallet/keys/{name}.json")),
            )?)?;
            let secret: [u8; 32] = hex::decode(file["secret_key"].as_str().context("secret")?)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name}: secret_key is not 32 bytes"))?;
            net.keys.push(Keypair::from_secret_bytes(&secret)?);
            let address: Address = hex::decode(a["address"].as_str().context("address")?)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name}: address is not 20 bytes"))?;
            net.genesis
                .insert(address, a["balance"].as_u64().context("balance")?);
        }
        let all: Vec<usize> = (0..net.ips.len()).collect();
        net.wait_height(&all, 1, Duration::from_secs(60)).await?;
        Ok(net)
    }

    fn check_up(&mut self) -> anyhow::Result<()> {
        if let Some(up) = self.up.as_mut() {
            if let Some(status) = up.try_wait()? {
                self.up = None;
                bail!(
                    "tallyd testnet up exited with {status}:\n{}",
                    self.up_output()
                );
            }
        }
        Ok(())
    }

    pub fn up_output(&self) -> String {
        self.tmp
            .as_ref()
            .and_then(|t| std::fs::read_to_string(t.path().join("up.out")).ok())
            .unwrap_or_default()
    }

    /// The node whose validator proposes at (`height`, `round`).
    pub fn proposer_node(&self, height: u64, round: u32) -> Option<usize> {
        let set = self.validator_set.as_ref()?;
        self.validator_nodes
            .get(&set.proposer(height, round).address)
            .copied()
    }

    /// The validator address of node `i` (None for a full node).
    pub fn validator_address(&self, i: usize) -> Option<Address> {
        self.validator_nodes
            .iter()
            .find(|(_, n)| **n == i)
            .map(|(a, _)| *a)
    }

    /// `tallyd testnet restart i` with `env` set: the restarted node inherits it (e.g.
    /// libfaketime's `LD_PRELOAD` and `FAKETIME` for a skewed clock).
    pub fn restart_with_env(&self, i: usize, env: &[(&str, &str)]) {
        let out = Command::new(bin("tallyd"))
            .args(["testnet", "restart", &i.to_string(), "--dir"])
            .arg(&self.dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run tallyd");
        assert!(
            out.status.success(),
            "tallyd testnet restart {i} with {env:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The kernel object names `tallyd` gives this testnet (from its canonical directory).
    pub fn names(&self) -> Names {
        Names::for_dir(&self.dir)
    }

    pub fn tag(&self) -> String {
        self.names().tag
    }

    pub fn ns(&self, i: usize) -> String {
        self.names().ns(i)
    }

    /// `tallyd testnet <args> --dir <dir>`.
    pub fn verb(&self, args: &[&str]) -> Output {
        Command::new(bin("tallyd"))
            .arg("testnet")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tallyd")
    }

    /// [`NetnsTestnet::verb`], which must succeed.
    pub fn fault(&self, args: &[&str]) {
        let out = self.verb(args);
        assert!(
            out.status.success(),
            "tallyd testnet {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `cmd` inside node `i`'s namespace.
    pub fn in_ns(&self, i: usize, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL the supervisor (a crash): its nodes and namespaces stay behind.
    pub fn crash_supervisor(&mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = up.kill();
            let _ = up.wait();
        }
    }

    /// SIGTERM the supervisor (what Ctrl-C does) and wait for it to exit: it stops the
    /// nodes and removes the namespaces itself.
    pub async fn stop_supervisor(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut up) = self.up.take() else {
            bail!("the supervisor is not running");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while up.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = up.kill();
                bail!("the supervisor did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Our namespaces and links that exist now (`ip netns list`, `ip -o link show`).
    pub fn leftovers(&self) -> Vec<String> {
        let tag = self.tag();
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut out: Vec<String> = run(&["netns", "list"])
            .lines()
            .filter(|l| l.starts_with(&format!("{tag}-")))
            .map(str::to_string)
            .collect();
        out.extend(
            run(&["-o", "link", "show"])
                .lines()
                .filter(|l| l.contains(&format!(" {tag}-")))
                .map(str::to_string),
        );
        out
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v1/status", self.rpcs[i]))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    pub async fn height(&self, i: usize) -> Option<u64> {
        self.status(i).await?["height"].as_u64()
    }

    /// Every node's height (None for one that does not answer).
    pub async fn heights(&self, nodes: &[usize]) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for &i in nodes {
            out.push(self.height(i).await);
        }
        out
    }

    pub async fn wait_height(
        &self,
        nodes: &[usize],
        h: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let hs = self.heights(nodes).await;
            if hs.iter().all(|x| x.is_some_and(|x| x >= h)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes {nodes:?} did not reach height {h} within {timeout:?}: {hs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Heights committed by `node` per second over `window`.
    pub async fn rate(&self, node: usize, window: Duration) -> anyhow::Result<f64> {
        let h0 = self.height(node).await.context("no height")?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let h1 = self.height(node).await.context("no height")?;
        Ok((h1 - h0) as f64 / t0.elapsed().as_secs_f64())
    }

    pub async fn evidence_count(&self, i: usize) -> anyhow::Result<usize> {
        let v: Value = self
            .http
            .get(format!("{}/v1/evidence", self.rpcs[i]))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["evidence"].as_array().map_or(0, Vec::len))
    }

    /// After the workload stopped: waits until every node is at one height with an empty
    /// mempool, then runs the checker over every node's history. The violations (empty
    /// when the run was correct) and the height checked.
    pub async fn check(&self, observed: Vec<Observation>) -> anyhow::Result<(Vec<Violation>, u64)> {
        let (v, history) = self.check_history(observed).await?;
        let height = history.nodes.first().map_or(0, |n| n.blocks.len() as u64);
        Ok((v, height))
    }

    /// [`NetnsTestnet::check`], returning the fetched history with the violations.
    pub async fn check_history(
        &self,
        observed: Vec<Observation>,
    ) -> anyhow::Result<(Vec<Violation>, checker::History)> {
        let all: Vec<usize> = (0..self.ips.len()).collect();
        self.check_history_of(&all, observed).await
    }

    /// [`NetnsTestnet::check_history`] over the nodes `all` only (e.g. without a node
    /// whose process a byzantine one replaced).
    pub async fn check_history_of(
        &self,
        all: &[usize],
        observed: Vec<Observation>,
    ) -> anyhow::Result<(Vec<Violation>, checker::History)> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        // Empty mempools mean no tx can commit while the accounts are read. A tx that
        // stays in a pool for good does not stop the check: after 20 s it goes on (a tx
        // committing during the reads shows as an unsettled snapshot and is read again).
        let drain = Duration::from_secs(20);
        let mut noted = false;
        loop {
            let mut settled = true;
            let mut heights = Vec::new();
            let mut pools = Vec::new();
            for &i in all {
                let s = self.status(i).await;
                let h = s.as_ref().and_then(|s| s["height"].as_u64());
                let pool = s.as_ref().and_then(|s| s["mempool"]["txs"].as_u64());
                settled &= h.is_some() && (pool == Some(0) || started.elapsed() > drain);
                heights.push(h);
                pools.push(pool);
            }
            if !noted && started.elapsed() > drain && pools.iter().any(|p| *p != Some(0)) {
                noted = true;
                eprintln!(
                    "note: mempools not drained {} s after the workload stopped (txs per node): {pools:?}",
                    drain.as_secs()
                );
            }
            let hs: Vec<u64> = heights.iter().flatten().copied().collect();
            let min = hs.iter().min().copied().unwrap_or(0);
            let max = hs.iter().max().copied().unwrap_or(0);
            if settled && max - min <= 1 {
                let nodes: Vec<checker::Endpoint> = all
                    .iter()
                    .map(|&i| checker::Endpoint {
                        name: format!("node{i}"),
                        rpc: self.rpcs[i].clone(),
                        metrics: Some(self.metrics[i].clone()),
                    })
                    .collect();
                let history = checker::fetch_history(
                    &self.http,
                    &nodes,
                    &self.genesis,
                    self.staking.as_ref(),
                    min,
                    observed.clone(),
                )
                .await?;
                let v = checker::check(&history);
                // Txs committed while the accounts were read (a late gossip): read again.
                if v.iter()
                    .any(|x| matches!(x, Violation::UnsettledSnapshot { .. }))
                    && Instant::now() < deadline
                {
                    continue;
                }
                return Ok((v, history));
            }
            if Instant::now() > deadline {
                bail!("the nodes did not settle (same height, empty mempools) within 60 s: {heights:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NetnsTestnet {
    fn drop(&mut self) {
        self.crash_supervisor();
        // Stops the nodes (pid files and whatever runs in our namespaces) and removes
        // every namespace, veth, bridge and nft table of this testnet.
        let cleanup = Command::new(bin("tallyd"))
            .args(["testnet", "cleanup", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if !cleanup.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("tallyd testnet cleanup failed: {cleanup:?}");
        }
        if std::thread::panicking() || std::env::var_os("TALLY_TEST_KEEP").is_some() {
            eprintln!("supervisor output:\n{}", self.up_output());
            for i in 0..self.ips.len() {
                let log = std::fs::read_to_string(self.dir.join(format!("node{i}/node.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "node{i} log tail:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
            if let Some(t) = self.tmp.take() {
                eprintln!("testnet kept in {}", t.keep().display());
            }
        }
    }
}

impl Workload {
    /// The workload over every account and node of `net`.
    pub fn start(net: &NetnsTestnet) -> Self {
        Workload::over(net.rpcs.clone(), &net.keys, net.http.clone())
    }
}

/// The value of the counter or gauge sample `name` (e.g. `tally_sync_blocks_served_total`) on the
/// `/metrics` page at `url`; an error if the page has no such sample.
pub async fn scrape_counter(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<u64> {
    let text = http.get(url).send().await?.text().await?;
    let value = crate::metric_samples(&text, name, None)
        .next()
        .with_context(|| format!("no numeric sample {name} at {url}"))?;
    // Counters are encoded as integers ("12") or, for f64 counters, as "12.0".
    Ok(value as u64)
}

/// A fresh full node started next to a running [`NetnsTestnet`] (issue 18, scenario 8):
/// node `index` (past the testnet's own nodes) in a namespace of its own on the testnet's
/// bridge, named like the supervisor's (`<tag>-n<index>`, veth `<tag>-v<index>` /
/// `<tag>-p<index>`), so `tallyd testnet cleanup --dir` also finds it. Its `Drop` kills the
/// node and removes the namespace and veth, also when the test panics.
impl Joiner {
    /// What the checker reads of this node.
    pub fn endpoint(&self) -> checker::Endpoint {
        checker::Endpoint {
            name: self.name.clone(),
            rpc: self.rpc.clone(),
            metrics: Some(self.metrics.clone()),
        }
    }
}

pub struct Joiner {
    pub index: usize,
    pub name: String,
    pub ip: String,
    /// `http://<ip>:26657`
    pub rpc: String,
    /// `http://<ip>:26660/metrics`
    pub metrics: String,
    pub home: PathBuf,
    names: Names,
    child: Option<Child>,
}

/// The testnet supervisor's ports (a joiner's node.toml gets `Ports::FIXED`); every node
/// has its own address.
const JOINER_RPC_PORT: u16 = tally_node::testnet::RPC_PORT;
const JOINER_METRICS_PORT: u16 = tally_node::testnet::METRICS_PORT;

impl NetnsTestnet {
    /// Node `i`'s `/metrics` URL, from the testnet's manifest.
    pub fn metrics_url(&self, i: usize) -> anyhow::Result<String> {
        let m = self.manifest()?;
        let addr = m["nodes"][i]["metrics"]
            .as_str()
            .with_context(|| format!("testnet.json: node{i} has no metrics address"))?;
        Ok(format!("http://{addr}/metrics"))
    }

    fn manifest(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.dir.join("testnet.json"),
        )?)?)
    }

    /// Makes node `index` (>= the testnet's node count, < 250) a fresh full node with the
    /// testnet's genesis and a new node key, bootstrapped only from the testnet's nodes
    /// `bootstrap`, in a new namespace on the bridge at the subnet's address for `index`.
    /// Not started: [`Joiner::start`].
    pub fn add_joiner(&self, index: usize, bootstrap: &[usize]) -> anyhow::Result<Joiner> {
        if index < self.ips.len() || index >= 250 {
            bail!(
                "joiner index {index}: must be past the testnet's {} nodes and below 250",
                self.ips.len()
            );
        }
        let m = self.manifest()?;
        let base: std::net::Ipv4Addr = self.ips[0].parse()?;
        let addr = std::net::Ipv4Addr::from(u32::from(base) + index as u32);
        let ip = addr.to_string();
        let joiner = Joiner {
            index,
            name: format!("node{index}"),
            rpc: format!("http://{ip}:{JOINER_RPC_PORT}"),
            metrics: format!("http://{ip}:{JOINER_METRICS_PORT}/metrics"),
            home: self.dir.join(format!("node{index}")),
            names: self.names(),
            child: None,
            ip,
        };
        // From here on the joiner's Drop removes whatever was made, on error too.
        add_host(&joiner.names, index, addr)?;

        let mut config = init::node_config(&joiner.name, &joiner.ip, Ports::FIXED);
        config.p2p.bootstrap = bootstrap
            .iter()
            .map(|b| {
                m["nodes"][*b]["p2p"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("testnet.json: node{b} has no p2p address"))
            })
            .collect::<anyhow::Result<_>>()?;
        init::write_home(
            &joiner.home,
            NodeHome {
                genesis: &self.dir.join("genesis.json"),
                node_secret: tally_node::keys::random_secret(),
                validator_key: None,
                config,
            },
        )?;
        Ok(joiner)
    }
}

impl Joiner {
    /// `ip netns exec <ns> tallyd start --home <home>` (which execs tallyd: the child is the
    /// node), output appended to `<home>/node.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already started", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("node.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names.ns(self.index)])
            .arg(bin("tallyd"))
            .arg("start")
            .arg("--home")
            .arg(&self.home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        self.child = Some(cmd.spawn().context("cannot start a joiner")?);
        Ok(())
    }

    /// Its height (`/v1/status`), None while it does not answer.
    pub async fn height(&self, http: &reqwest::Client) -> Option<u64> {
        let r = http
            .get(format!("{}/v1/status", self.rpc))
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()?["height"].as_u64()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.home.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else left in the namespace, the namespace (which takes the veth pair
        // with it) and the bridge's end of the veth if it is still there.
        remove_host(&self.names, self.index);
    }
}
