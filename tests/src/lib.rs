//! A harness for real-stack Tally tests: `tallyd` child processes on their own loopback
//! addresses (127.0.0.x, ports chosen by the OS), temp dirs, real RocksDB, libp2p and HTTP.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let net = tally_tests::TestNet::builder().validators(4).full_nodes(1).start().await?;
//! net.wait_for_height(3, std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ledger::crypto::Keypair;
use ledger::genesis::{GenesisAccount, GenesisFile, GenesisValidator, Params, StakingParams};
use ledger::hash::{sha256, to_hex};
use ledger::types::{Address, Payload, SignedTx, Tx};
use serde_json::Value;
use tally_node::config::NodeConfig;
use tally_node::node::Addresses;
use tally_node::testnet::init::{self, NodeHome, Ports};

pub mod checker;
pub mod netns;
pub mod workload;

/// `tally-attacker --mode <mode> --ip <ip> --chain-id <CHAIN_ID> --duration-secs <secs>`
/// with a `--target` for each of `targets`, run inside network namespace `ns` (through
/// `ip netns exec`) when given; the caller adds the mode's own options and the output.
pub fn attacker_command(
    ns: Option<&str>,
    mode: &str,
    ip: &str,
    secs: f64,
    targets: &[String],
) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("tally-attacker"));
            c
        }
        None => Command::new(bin("tally-attacker")),
    };
    cmd.args(["--mode", mode, "--ip", ip, "--chain-id", CHAIN_ID])
        .args(["--duration-secs", &secs.to_string()]);
    for t in targets {
        cmd.args(["--target", t]);
    }
    cmd
}

/// The values of the samples of `name` on a `/metrics` page (Prometheus or OpenMetrics
/// text: `name{labels} value`), keeping those whose labels contain `label` if given.
pub fn metric_samples<'a>(
    text: &'a str,
    name: &'a str,
    label: Option<&'a str>,
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (key, rest) = match l.rfind('}') {
                Some(i) => l.split_at(i + 1),
                None => l.split_once(' ')?,
            };
            let base = key.split('{').next()?;
            if base != name || label.is_some_and(|lb| !key.contains(lb)) {
                return None;
            }
            rest.split_whitespace().next()?.parse().ok()
        })
}

pub const CHAIN_ID: &str = "tally-test";

/// Each test net takes a block of loopback addresses so concurrent tests never share one.
static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// Path of a workspace binary (`tallyd`, `tally`) next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    // `cargo test` / `cargo nextest run` build a package's binaries only for that package's
    // own integration tests, and tally-node has none: they never build `tallyd`.
    assert!(
        path.exists(),
        "{} not found: run `make test`, or `cargo build --workspace --bins` first \
         (cargo test and cargo nextest run do not build it)",
        path.display()
    );
    path
}

/// An HTTP client for the nodes' RPC: `timeout` per request, and idle connections dropped
/// after 2 s, before the node's header-read timeout (5 s) closes them under a request.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(2))
        .build()?)
}

/// Polls `cond` every 100 ms until it returns `Ok`, and returns its value; panics after
/// `timeout` with "`what` not within `timeout`" and the last `Err` (what was seen instead).
/// A condition that does blocking work (`Child::try_wait`, reading a file) does it in the
/// closure and hands the result to an `async move` block.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match cond().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} not within {timeout:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// (hash, state root) of the block at `height` as the node at `rpc` (`http://ip:port`)
/// serves it.
pub async fn block_id(
    http: &reqwest::Client,
    rpc: &str,
    height: u64,
) -> anyhow::Result<(String, String)> {
    let b: Value = http
        .get(format!("{rpc}/v1/blocks/{height}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((
        b["hash"].as_str().context("block hash")?.to_string(),
        b["header"]["state_root"]
            .as_str()
            .context("state root")?
            .to_string(),
    ))
}

/// No fork: panics unless every node in `rpcs` serves the same block (hash and state root)
/// as the first one at each of `heights`, or if one cannot answer.
pub async fn assert_no_fork(
    http: &reqwest::Client,
    rpcs: &[String],
    heights: impl IntoIterator<Item = u64>,
) {
    let Some((first, others)) = rpcs.split_first() else {
        return;
    };
    for h in heights {
        let reference = block_id(http, first, h)
            .await
            .unwrap_or_else(|e| panic!("block {h} from {first}: {e:#}"));
        for rpc in others {
            let got = block_id(http, rpc, h)
                .await
                .unwrap_or_else(|e| panic!("block {h} from {rpc}: {e:#}"));
            assert_eq!(
                got, reference,
                "fork at height {h}: {rpc} differs from {first}"
            );
        }
    }
}

/// A funded test account key, the same in every run.
pub fn account_key(i: usize) -> Keypair {
    Keypair::from_secret_bytes(&sha256(format!("tally-test-account-{i}").as_bytes()))
        .expect("valid key")
}

pub fn transfer(key: &Keypair, nonce: u64, to: Address, amount: u64, fee: u64) -> SignedTx {
    key.sign_tx(Tx {
        chain_id: CHAIN_ID.into(),
        from: key.public_key(),
        nonce,
        fee,
        payload: Payload::Transfer { to, amount },
    })
}

pub struct Builder {
    validators: usize,
    full_nodes: usize,
    accounts: usize,
    timeout_commit_ms: u64,
    timeout_propose_ms: u64,
    extra_env: Vec<(String, String)>,
    node_env: Vec<(usize, String, String)>,
    protocol: u32,
    joiners: usize,
    staking: Option<StakingParams>,
    /// Genesis `params.upgrade_window` and `params.upgrade_lead` (issue 21).
    upgrade: Option<(u64, u64)>,
    ports: Ports,
    genesis_params: serde_json::Map<String, Value>,
}

impl Builder {
    /// Genesis `params.upgrade_window` and `params.upgrade_lead` (issue 21; absent: the
    /// defaults, 100 and 20).
    pub fn upgrade(mut self, window: u64, lead: u64) -> Self {
        self.upgrade = Some((window, lead));
        self
    }
    /// The chain's protocol (genesis `params.protocol_version`, 2 by default, as `tallyd
    /// init` and `tallyd testnet init` create). On protocol
    /// 2 genesis validator i is bonded by the funded account i (modulo the accounts).
    pub fn protocol(mut self, version: u32) -> Self {
        self.protocol = version;
        self
    }
    /// Genesis `params.staking` (protocol 2; absent by default: the ledger's defaults),
    /// e.g. a short `downtime_jail_after` and `jail_blocks` for a jailing test.
    pub fn staking(mut self, params: StakingParams) -> Self {
        self.staking = Some(params);
        self
    }
    /// Nodes after the validators and full nodes that hold a validator key not in genesis
    /// (on protocol 2 they sign once bonded; [`TestNet::validator_key`] gives the key).
    pub fn joiners(mut self, n: usize) -> Self {
        self.joiners = n;
        self
    }
    /// Every node on the testnet's fixed ports (26656 p2p, 26657 RPC, 26660 metrics) of
    /// its own loopback address, instead of ports the OS picks: its URLs stay the same
    /// across restarts (for a workload that runs through them).
    pub fn fixed_ports(mut self) -> Self {
        self.ports = Ports::FIXED;
        self
    }
    /// A key of genesis `params` written into genesis.json as given, past the typed
    /// [`Params`] (for a parameter this tree's ledger may not know yet; the nodes judge it
    /// when they start).
    pub fn genesis_param(mut self, key: &str, value: Value) -> Self {
        self.genesis_params.insert(key.into(), value);
        self
    }
    pub fn validators(mut self, n: usize) -> Self {
        self.validators = n;
        self
    }
    pub fn full_nodes(mut self, n: usize) -> Self {
        self.full_nodes = n;
        self
    }
    pub fn accounts(mut self, n: usize) -> Self {
        self.accounts = n;
        self
    }
    pub fn timeout_commit_ms(mut self, ms: u64) -> Self {
        self.timeout_commit_ms = ms;
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }
    /// An environment variable for node `i` only (after the net-wide ones).
    pub fn node_env(mut self, i: usize, key: &str, value: &str) -> Self {
        self.node_env.push((i, key.into(), value.into()));
        self
    }

    /// Writes homes for every node and starts them all; returns once every RPC answers.
    pub async fn start(self) -> anyhow::Result<TestNet> {
        let total = self.validators + self.full_nodes + self.joiners;
        let all: Vec<usize> = (0..total).collect();
        self.start_only(&all).await
    }

    /// Writes homes for every node and starts only `which` (the first one is the others'
    /// bootstrap peer); the rest keep their homes and keys, e.g. for a byzantine process
    /// that holds a validator key in place of its node.
    pub async fn start_only(self, which: &[usize]) -> anyhow::Result<TestNet> {
        let mut net = self.create()?;
        for (k, &i) in which.iter().enumerate() {
            net.start_node(i)?;
            if k == 0 {
                // Everyone else bootstraps from the first node.
                let a = net.wait_addresses(i, Duration::from_secs(30)).await?;
                net.bootstrap = a.p2p.clone();
            }
        }
        for &i in which {
            net.wait_addresses(i, Duration::from_secs(30)).await?;
        }
        Ok(net)
    }

    /// [`Builder::start`], then waits until node 0 has committed `height` blocks.
    pub async fn start_at_height(self, height: u64, timeout: Duration) -> anyhow::Result<TestNet> {
        let net = self.start().await?;
        net.wait_for_height(height, timeout).await?;
        Ok(net)
    }

    pub fn create(self) -> anyhow::Result<TestNet> {
        let dir = tempfile::Builder::new()
            .prefix("tally-testnet-")
            .tempdir()?;
        let block = NEXT_NET.fetch_add(1, Ordering::SeqCst) % 20;
        let total = self.validators + self.full_nodes + self.joiners;
        let vkeys: Vec<Keypair> = (0..self.validators).map(|_| Keypair::generate()).collect();
        let joiner_keys: Vec<Keypair> = (0..self.joiners).map(|_| Keypair::generate()).collect();
        let v2 = self.protocol >= ledger::types::PROTOCOL_2;
        let accounts = self.accounts;
        let genesis = GenesisFile {
            chain_id: CHAIN_ID.into(),
            genesis_time_ms: 0,
            params: Params {
                timeout_commit_ms: self.timeout_commit_ms,
                timeout_propose_ms: self.timeout_propose_ms,
                timeout_prevote_ms: 500,
                timeout_precommit_ms: 500,
                timeout_propose_delta_ms: 250,
                timeout_prevote_delta_ms: 250,
                timeout_precommit_delta_ms: 250,
                protocol_version: self.protocol,
                staking: self.staking,
                upgrade_window: self
                    .upgrade
                    .map_or(Params::default().upgrade_window, |u| u.0),
                upgrade_lead: self.upgrade.map_or(Params::default().upgrade_lead, |u| u.1),
                ..Params::default()
            },
            validators: vkeys
                .iter()
                .enumerate()
                .map(|(i, k)| GenesisValidator {
                    name: format!("validator-{i}"),
                    pubkey: to_hex(&k.public_key()),
                    power: 10,
                    operator: v2.then(|| to_hex(&account_key(i % accounts.max(1)).address())),
                })
                .collect(),
            accounts: (0..self.accounts)
                .map(|i| GenesisAccount {
                    address: to_hex(&account_key(i).address()),
                    balance: 1_000_000_000,
                })
                .collect(),
        };
        let genesis_path = dir.path().join("genesis.json");
        init::write_genesis(&genesis_path, &genesis, 0)?;
        if !self.genesis_params.is_empty() {
            let mut file: Value = serde_json::from_slice(&std::fs::read(&genesis_path)?)?;
            let params = file["params"]
                .as_object_mut()
                .context("genesis.json has no params object")?;
            params.extend(self.genesis_params);
            std::fs::write(&genesis_path, serde_json::to_vec_pretty(&file)?)?;
        }
        let mut nodes = Vec::new();
        let joiners_from = self.validators + self.full_nodes;
        for i in 0..total {
            let vkey = if i >= joiners_from {
                joiner_keys.get(i - joiners_from)
            } else {
                vkeys.get(i)
            };
            let home = dir.path().join(format!("node{i}"));
            let ip = format!("127.0.{}.{}", 100 + block, 2 + i);
            init::write_home(
                &home,
                NodeHome {
                    genesis: &genesis_path,
                    node_secret: tally_node::keys::random_secret(),
                    validator_key: vkey,
                    config: node_config(i, &ip, self.ports),
                },
            )?;
            nodes.push(NodeProc {
                home,
                ip,
                child: None,
                addresses: None,
                validator: vkey.map(Keypair::address),
                binary: None,
            });
        }
        Ok(TestNet {
            dir,
            nodes,
            bootstrap: Vec::new(),
            http: http_client(Duration::from_secs(10))?,
            env: self.extra_env,
            node_env: self.node_env,
        })
    }
}

/// Node `i`'s node.toml: listening on `ip` with `ports` (0: the OS picks them, and each
/// node writes them to its addresses.json), and bans short enough for a test to outlast.
fn node_config(i: usize, ip: &str, ports: Ports) -> NodeConfig {
    let mut config = init::node_config(&format!("node{i}"), ip, ports);
    config.p2p.ban_duration_secs = 30;
    config
}

pub struct NodeProc {
    pub home: PathBuf,
    pub ip: String,
    child: Option<Child>,
    pub addresses: Option<Addresses>,
    pub validator: Option<Address>,
    /// The `tallyd` this node runs; `None`: this tree's ([`bin`]).
    pub binary: Option<PathBuf>,
}

pub struct TestNet {
    dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    bootstrap: Vec<String>,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    node_env: Vec<(usize, String, String)>,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Keep the homes and logs of a failed test for a post-mortem.
        if std::thread::panicking() || std::env::var_os("TALLY_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a scratch dir"));
            eprintln!("test net kept in {}", dir.keep().display());
        }
    }
}

impl TestNet {
    pub fn builder() -> Builder {
        Builder {
            validators: 4,
            full_nodes: 0,
            accounts: 10,
            timeout_commit_ms: 200,
            timeout_propose_ms: 1500,
            extra_env: Vec::new(),
            node_env: Vec::new(),
            protocol: ledger::types::PROTOCOL_2,
            joiners: 0,
            staking: None,
            upgrade: None,
            ports: Ports::ANY,
            genesis_params: serde_json::Map::new(),
        }
    }

    /// Node `i`'s validator key, read from its home (None for a full node).
    pub fn validator_key(&self, i: usize) -> Option<Keypair> {
        let path = self.nodes[i].home.join("config/validator_key.json");
        tally_node::keys::read_validator_key(&path).ok()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].home.join("node.log")
    }

    /// The `tallyd` node `i` runs from its next start on (e.g. another release's, for an
    /// upgrade test); `None`: this tree's.
    pub fn set_node_binary(&mut self, i: usize, tallyd: Option<PathBuf>) {
        self.nodes[i].binary = tallyd;
    }

    /// The `tallyd` node `i` runs.
    pub fn node_binary(&self, i: usize) -> PathBuf {
        self.nodes[i]
            .binary
            .clone()
            .unwrap_or_else(|| bin("tallyd"))
    }

    /// Starts (or restarts) node `i` with its existing home.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(tally_node::node::addresses_file(&self.nodes[i].home));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let mut cmd = Command::new(self.node_binary(i));
        cmd.arg("start")
            .arg("--home")
            .arg(&self.nodes[i].home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Every node but the bootstrap peer itself dials the bootstrap peer.
        let own = format!("/ip4/{}/", self.nodes[i].ip);
        let bootstrap: Vec<&str> = self
            .bootstrap
            .iter()
            .map(String::as_str)
            .filter(|a| !a.starts_with(&own))
            .collect();
        if !bootstrap.is_empty() {
            cmd.env("TALLY_P2P_BOOTSTRAP", bootstrap.join(","));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (_, k, v) in self.node_env.iter().filter(|(n, _, _)| *n == i) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("cannot start tallyd")?;
        self.nodes[i].child = Some(child);
        self.nodes[i].addresses = None;
        Ok(())
    }

    /// Nodes started from now on bootstrap from running node `i` (node 0 by default):
    /// for adding nodes after node 0 stopped.
    pub fn bootstrap_from(&mut self, i: usize) {
        if let Some(a) = &self.nodes[i].addresses {
            self.bootstrap = a.p2p.clone();
        }
    }

    /// An environment variable for node `i`'s next start.
    pub fn set_node_env(&mut self, i: usize, key: &str, value: &str) {
        self.node_env.push((i, key.into(), value.into()));
    }

    /// SIGKILL: no shutdown code runs, like a power cut.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("node {i} did not stop within 15 s of SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub async fn wait_addresses(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<Addresses> {
        let path = tally_node::node::addresses_file(&self.nodes[i].home);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(a) = serde_json::from_str::<Addresses>(&text) {
                    if self.nodes[i]
                        .child
                        .as_ref()
                        .is_some_and(|c| c.id() == a.pid)
                    {
                        self.nodes[i].addresses = Some(a.clone());
                        return Ok(a);
                    }
                }
            }
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("node {i} exited with {status}; log:\n{}", self.tail_log(i));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {i} did not come up within {timeout:?}; log:\n{}",
                    self.tail_log(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn tail_log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn rpc(&self, i: usize) -> String {
        format!(
            "http://{}",
            self.nodes[i].addresses.as_ref().expect("node started").rpc
        )
    }

    pub fn metrics_url(&self, i: usize) -> String {
        format!(
            "http://{}/metrics",
            self.nodes[i]
                .addresses
                .as_ref()
                .and_then(|a| a.metrics.clone())
                .expect("metrics on")
        )
    }

    /// The sum of the samples of metric `name` on node `i` (those whose labels contain
    /// `label`, if given).
    pub async fn metric(&self, i: usize, name: &str, label: Option<&str>) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(self.metrics_url(i))
            .send()
            .await?
            .text()
            .await?;
        Ok(metric_samples(&text, name, label).sum())
    }

    /// Node `i` as the checker reads it (RPC and metrics).
    pub fn endpoint(&self, i: usize) -> checker::Endpoint {
        checker::Endpoint {
            name: format!("node{i}"),
            rpc: self.rpc(i),
            metrics: Some(self.metrics_url(i)),
        }
    }

    /// [`checker::check_nodes`] over `nodes` (by index), with this net's genesis; `earlier`
    /// reads by node index.
    pub async fn check(
        &self,
        nodes: &[usize],
        observed: Vec<checker::Observation>,
        earlier: &std::collections::BTreeMap<usize, checker::StateReads>,
    ) -> anyhow::Result<(Vec<checker::Violation>, checker::History)> {
        let genesis = ledger::genesis::Genesis::load(&self.dir().join("genesis.json"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let endpoints: Vec<checker::Endpoint> = nodes.iter().map(|&i| self.endpoint(i)).collect();
        let earlier = earlier
            .iter()
            .map(|(i, r)| (format!("node{i}"), r.clone()))
            .collect();
        checker::check_nodes(&self.http, &endpoints, &genesis, observed, &earlier).await
    }

    pub async fn get(&self, i: usize, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.rpc(i)))
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// `GET path` on node `i` as the API's type `T`, which must describe the answer
    /// exactly: a field the node sends that `T` lacks (or the other way round) fails.
    pub async fn get_as<T>(&self, i: usize, path: &str) -> anyhow::Result<T>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        let raw = self.get(i, path).await?;
        let typed: T = serde_json::from_value(raw.clone())
            .with_context(|| format!("{path} is not a {}: {raw}", std::any::type_name::<T>()))?;
        let again = serde_json::to_value(&typed)?;
        ensure!(
            again == raw,
            "{path}: the node's answer and tally-api's {} differ:\n node: {raw}\n type: {again}",
            std::any::type_name::<T>()
        );
        Ok(typed)
    }

    /// POST a signed tx; returns (HTTP status, body).
    pub async fn submit(&self, i: usize, tx: &SignedTx) -> anyhow::Result<(u16, Value)> {
        self.submit_hex(i, &to_hex(&ledger::codec::encode(tx)))
            .await
    }

    /// POST a signed tx that must be accepted (202); returns its id.
    pub async fn submit_accepted(&self, i: usize, tx: &SignedTx) -> anyhow::Result<String> {
        let (status, body) = self.submit(i, tx).await?;
        match serde_json::from_value::<tally_api::Submitted>(body.clone()) {
            Ok(s) if status == 202 => Ok(s.tx_id),
            _ => bail!("node {i} answered {status}: {body}"),
        }
    }

    pub async fn submit_hex(&self, i: usize, hex: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/v1/txs", self.rpc(i)))
            .json(&serde_json::json!({ "tx": hex }))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn height(&self, i: usize) -> anyhow::Result<u64> {
        let s: tally_api::Status =
            serde_json::from_value(self.get(i, "/v1/status").await?).context("not a status")?;
        Ok(s.height)
    }

    /// Waits until every running node reaches `height`.
    pub async fn wait_for_height(&self, height: u64, timeout: Duration) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.is_running(*i))
            .collect();
        self.wait_nodes_height(&running, height, timeout).await
    }

    pub async fn wait_nodes_height(
        &self,
        nodes: &[usize],
        height: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for &i in nodes {
                if self.height(i).await.unwrap_or(0) < height {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut heights = Vec::new();
                for &i in nodes {
                    heights.push(self.height(i).await.unwrap_or(0));
                }
                bail!(
                    "nodes {nodes:?} did not reach height {height} within {timeout:?} (at {heights:?}); node {} log:\n{}",
                    nodes[0],
                    self.tail_log(nodes[0])
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `GET /v1/txs/{id}` says committed on node `i`.
    pub async fn wait_committed(
        &self,
        i: usize,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.get(i, &format!("/v1/txs/{id}")).await?;
            if v["status"] == "committed" {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("tx {id} not committed on node {i} within {timeout:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (hash, state_root) of the block at `height` as node `i` reports it.
    pub async fn block_at(&self, i: usize, height: u64) -> anyhow::Result<(String, String)> {
        block_id(&self.http, &self.rpc(i), height).await
    }

    /// [`assert_no_fork`] over `nodes` (node `nodes[0]` is the reference).
    pub async fn assert_no_fork(&self, nodes: &[usize], heights: impl IntoIterator<Item = u64>) {
        let rpcs: Vec<String> = nodes.iter().map(|&i| self.rpc(i)).collect();
        assert_no_fork(&self.http, &rpcs, heights).await
    }

    /// Adds a full node (same genesis, next loopback address, bootstrapping from node 0)
    /// to a running net and starts it; returns its index. For late-joiner tests.
    pub async fn add_full_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let home = self.dir.path().join(format!("node{i}"));
        let prefix = self.nodes[0]
            .ip
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .context("node 0 has no IPv4 address")?;
        let ip = format!("{prefix}.{}", 2 + i);
        init::write_home(
            &home,
            NodeHome {
                genesis: &self.dir.path().join("genesis.json"),
                node_secret: tally_node::keys::random_secret(),
                validator_key: None,
                config: node_config(i, &ip, Ports::ANY),
            },
        )?;
        self.nodes.push(NodeProc {
            home,
            ip,
            child: None,
            addresses: None,
            validator: None,
            binary: None,
        });
        self.start_node(i)?;
        self.wait_addresses(i, Duration::from_secs(30)).await?;
        Ok(i)
    }

    /// Runs `tallyd <args> --home <node i's home>` (node `i`'s binary) to completion;
    /// (exit code, output).
    pub fn tallyd(&self, i: usize, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new(self.node_binary(i))
            .args(args)
            .arg("--home")
            .arg(&self.nodes[i].home)
            .output()
            .context("cannot run tallyd")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Waits for node `i`'s process to exit (e.g. a node that refuses to start); its
    /// exit code and the tail of its log.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<(i32, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.nodes[i].child = None;
                    return Ok((status.code().unwrap_or(-1), self.tail_log(i)));
                }
            } else {
                bail!("node {i} is not running");
            }
            if Instant::now() > deadline {
                bail!("node {i} still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn evidence_count(&self, i: usize) -> anyhow::Result<usize> {
        let v = self.get(i, "/v1/evidence").await?;
        Ok(v["evidence"].as_array().map_or(0, Vec::len))
    }
}

#[cfg(test)]
mod metric_tests {
    #[test]
    fn metric_samples_reads_plain_and_labelled_samples() {
        let page = "# TYPE a counter\na_total 12\nb{x=\"1 2\",y=\"z\"} 3.5\nb{x=\"3\"} 1\nab_total 7\n# EOF\n";
        let got: Vec<f64> = super::metric_samples(page, "a_total", None).collect();
        assert_eq!(got, vec![12.0]);
        let b: f64 = super::metric_samples(page, "b", None).sum();
        assert_eq!(b, 4.5);
        let labelled: Vec<f64> = super::metric_samples(page, "b", Some("y=\"z\"")).collect();
        assert_eq!(labelled, vec![3.5]);
        assert_eq!(super::metric_samples(page, "c", None).count(), 0);
    }
}

#[cfg(test)]
mod helper_tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let mut polls = 0;
        let got = eventually(Duration::from_secs(5), "three polls", || {
            polls += 1;
            let n = polls;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("{n} polls"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "the impossible not within 300ms; last: still false")]
    async fn eventually_panics_with_what_it_waited_for() {
        eventually(Duration::from_millis(300), "the impossible", || async {
            Err::<(), _>("still false".to_string())
        })
        .await;
    }

    /// A node that answers every request with the block whose hash is `hash`.
    async fn fake_node(hash: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let body = format!(r#"{{"hash":"{hash}","header":{{"state_root":"aa"}}}}"#);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn assert_no_fork_passes_on_agreement_and_panics_on_a_fork() {
        let http = http_client(Duration::from_secs(5)).unwrap();
        let (a, b, c) = (
            fake_node("01").await,
            fake_node("01").await,
            fake_node("02").await,
        );
        assert_no_fork(&http, &[a.clone(), b.clone()], 1..=3).await;
        let forked = tokio::spawn(async move { assert_no_fork(&http, &[a, b, c], [1]).await });
        let panic = forked.await.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("fork at height 1"), "{message}");
    }
}
