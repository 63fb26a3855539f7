//! `tallyd testnet`: a local multi-node network in one directory.
//!
//! Every node is a child process `tallyd start --home <dir>/nodeN` on its own loopback
//! address (node i on base-ip + i, 127.0.0.2 by default) with the fixed ports 26656 (p2p),
//! 26657 (RPC) and 26660 (metrics), so URLs are predictable and per-IP limits behave as
//! across machines. The supervisor (`up` / `start`) never trusts its child handles for
//! status: it reads `/v1/status` over RPC and finds processes through `<home>/pid`
//! files, so `testnet kill N` / `testnet restart N` from another terminal (live fault
//! injection) show up in its table and are stopped with the rest on Ctrl-C / SIGTERM.
//!
//! ```text
//! <dir>/testnet.json               manifest: chain id, nodes (role, ip, urls, peer id), accounts
//!                                  (wallet keys; bulk genesis accounts only by count)
//! <dir>/genesis.json               the shared genesis (copied into every node's config/)
//! <dir>/supervisor.pid             pid of the running `up` / `start`
//! <dir>/nodeN/config/...           node.toml, genesis.json, node_key.json, validator_key.json
//! <dir>/nodeN/data/db              the node's RocksDB
//! <dir>/nodeN/node.log             stdout + stderr of every run (appended)
//! <dir>/nodeN/pid                  pid of the running tallyd
//! <dir>/wallet/keys/accountK.json  funded wallet keys (plaintext: INSECURE testnet keys)
//! <dir>/prometheus-targets.json    file_sd targets; <dir>/prometheus.yml uses it
//! <dir>/faults.json                partitions and paused nodes in force (testnet/faults.rs)
//! ```
//!
//! With `--hosts netns` each node runs in its own network namespace on an address of
//! 198.18.0.0/15 behind a bridge (src/netns.rs, which the fault suite also uses to add
//! joiners), so whole links can be cut.

use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::to_hex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_node::config::NodeConfig;
use tally_node::keys;

use crate::cli::expand;

mod faults;
use tally_node::netns::{self, signal};

pub const P2P_PORT: u16 = 26656;
pub const RPC_PORT: u16 = 26657;
pub const METRICS_PORT: u16 = 26660;
const MANIFEST: &str = "testnet.json";
const SUPERVISOR_PID: &str = "supervisor.pid";
/// Every account starts with this balance.
const ACCOUNT_BALANCE: u64 = 1_000_000_000_000;
/// Most bulk genesis accounts `--genesis-accounts` takes (about 60 MB of genesis.json per
/// million).
pub const MAX_GENESIS_ACCOUNTS: u64 = 5_000_000;
/// How long a node gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct TestnetArgs {
    #[command(subcommand)]
    pub command: TestnetCommand,
}

#[derive(Subcommand)]
pub enum TestnetCommand {
    /// Create the testnet directory (genesis, keys, configs, wallet keys) unless it exists.
    Init(InitArgs),
    /// Start every node of an existing testnet and supervise them (status table, Ctrl-C).
    Start(StartArgs),
    /// `init` (when needed) then `start`: the one command for a local testnet.
    Up {
        #[command(flatten)]
        init: InitArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// SIGKILL one node of a running testnet (a crash, for fault injection).
    Kill(NodeArgs),
    /// Start one node again (stopping it first if it runs); its log is appended.
    Restart(NodeArgs),
    /// Stop a running testnet from another terminal (SIGTERM the supervisor and nodes).
    Stop(DirArgs),
    /// Print the status table once.
    Status(DirArgs),
    /// Drop everything between groups of nodes, both ways (--hosts netns only): `partition
    /// 0,1 2,3,4`. Replaces the partition or isolation in force; nodes in no group keep
    /// every link.
    Partition(PartitionArgs),
    /// Cut one node off from every other node, both ways (--hosts netns only).
    Isolate(NodeArgs),
    /// Drop the packets from node FROM to node TO only (--hosts netns only); adds to the
    /// cuts in force.
    Oneway(OnewayArgs),
    /// Remove every partition, isolation and one-way cut.
    Heal(DirArgs),
    /// Freeze one node with SIGSTOP (it holds its connections but answers nothing).
    Pause(NodeArgs),
    /// Thaw a paused node with SIGCONT.
    Resume(NodeArgs),
    /// `stop`, then remove the testnet's namespaces, veths, bridge and filters.
    Down(DirArgs),
    /// Remove leftover namespaces, veths and bridges (and the nodes still inside them)
    /// after a supervisor crash, found by name: this testnet's with --dir, else every
    /// `tly*` one on the machine.
    Cleanup(CleanupArgs),
}

/// How nodes are laid out on this machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hosts {
    /// Every node on its own loopback address of the one network stack.
    #[default]
    Loopback,
    /// Every node in its own network namespace (a host of its own) on 198.18.0.0/15,
    /// behind a bridge: partitions and one-way links become possible. Needs root.
    Netns,
}

impl std::fmt::Display for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hosts::Loopback => "loopback",
            Hosts::Netns => "netns",
        })
    }
}

#[derive(Args, Clone)]
pub struct PartitionArgs {
    /// Two or more groups of node indices, e.g. `0,1 2,3,4`.
    #[arg(required = true, num_args = 2..)]
    pub groups: Vec<String>,
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct OnewayArgs {
    /// The node whose packets are dropped.
    pub from: usize,
    /// The node they were going to.
    pub to: usize,
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct CleanupArgs {
    /// Only this testnet's leftovers (default: every `tly*` namespace, veth and bridge).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DirArgs {
    /// Testnet directory.
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct InitArgs {
    /// Testnet directory (reused, not regenerated, when it already holds a testnet).
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
    /// Number of validators (equal voting power).
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Number of full nodes (no validator key).
    #[arg(long, default_value_t = 1)]
    pub full_nodes: usize,
    /// Number of funded wallet keys (account0, account1, ...).
    #[arg(long, default_value_t = 4)]
    pub accounts: usize,
    /// Extra funded accounts in genesis, as state-size ballast for benchmarks: account i
    /// (0 <= i < N) has the address SHA-256("tally-genesis-account" || i as u64
    /// little-endian)[..20] and a balance of 1000000. Nobody has their keys, so they never
    /// send; they only make the state big. At most 5000000.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub genesis_accounts: u64,
    /// Block time: the genesis timeout_commit in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_commit_ms: u64,
    /// Address of node 0; node i listens on this address + i. With --hosts netns a
    /// loopback address here means "pick a free /24 of 198.18.0.0/15".
    #[arg(long, default_value = "127.0.0.2")]
    pub base_ip: Ipv4Addr,
    /// loopback (default) or netns: one network namespace per node, so the partition
    /// verbs can cut links (root only). Fixed when the testnet is created.
    #[arg(long, value_enum)]
    pub hosts: Option<Hosts>,
    #[arg(long, default_value = "tally-testnet")]
    pub chain_id: String,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// No live table: print one status line per node every few seconds (CI, tests).
    #[arg(long)]
    pub non_interactive: bool,
}

#[derive(Args, Clone)]
pub struct StartArgs {
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
    /// Refuse to start unless the testnet was created with these hosts.
    #[arg(long, value_enum)]
    pub hosts: Option<Hosts>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Node index (node0 is the first validator).
    pub node: usize,
    #[arg(long, default_value = "./testnet")]
    pub dir: PathBuf,
}

/// `<dir>/testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub chain_id: String,
    pub nodes: Vec<NodeEntry>,
    /// The wallet keys' accounts.
    pub accounts: Vec<AccountEntry>,
    /// How many bulk accounts (`--genesis-accounts`) genesis.json funds after them.
    #[serde(default)]
    pub genesis_accounts: u64,
    /// Loopback addresses, or one network namespace per node.
    #[serde(default)]
    pub hosts: Hosts,
}

impl Manifest {
    /// Every node's address, in node order.
    pub fn ips(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        self.nodes
            .iter()
            .map(|n| {
                n.ip.parse().with_context(|| {
                    format!(
                        "testnet.json: {}.ip {:?} is not an IPv4 address",
                        n.name, n.ip
                    )
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    /// "validator" or "full".
    pub role: String,
    pub ip: String,
    /// host:port
    pub rpc: String,
    /// host:port
    pub metrics: String,
    /// Multiaddr with /p2p/<peer id>.
    pub p2p: String,
    pub peer_id: String,
    pub validator_address: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountEntry {
    pub name: String,
    pub address: String,
    pub balance: u64,
}

pub fn run(args: TestnetArgs) -> anyhow::Result<()> {
    match args.command {
        TestnetCommand::Init(a) => init(&a).map(|_| ()),
        TestnetCommand::Start(a) => start(&absolute(&a.dir)?, a.hosts, &a.run),
        TestnetCommand::Up { init: a, run } => {
            let dir = init(&a)?;
            start(&dir, a.hosts, &run)
        }
        TestnetCommand::Partition(a) => faults::partition(&absolute(&a.dir)?, &a.groups),
        TestnetCommand::Isolate(a) => faults::isolate(&absolute(&a.dir)?, a.node),
        TestnetCommand::Oneway(a) => faults::oneway(&absolute(&a.dir)?, a.from, a.to),
        TestnetCommand::Heal(a) => faults::heal(&absolute(&a.dir)?),
        TestnetCommand::Pause(a) => faults::pause(&absolute(&a.dir)?, a.node),
        TestnetCommand::Resume(a) => faults::resume(&absolute(&a.dir)?, a.node),
        TestnetCommand::Down(a) => down(&absolute(&a.dir)?),
        TestnetCommand::Cleanup(a) => cleanup(a.dir.as_deref()),
        TestnetCommand::Kill(a) => kill(&absolute(&a.dir)?, a.node),
        TestnetCommand::Restart(a) => restart(&absolute(&a.dir)?, a.node),
        TestnetCommand::Stop(a) => stop(&absolute(&a.dir)?),
        TestnetCommand::Status(a) => {
            let dir = absolute(&a.dir)?;
            let m = load_manifest(&dir)?;
            let rows = runtime()?.block_on(poll_all(&dir, &m));
            for line in table(&rows, std::io::stdout().is_terminal()) {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// The canonical path, so pid checks can match `--home <path>` in a process's arguments.
fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = expand(dir);
    std::fs::canonicalize(&dir).with_context(|| {
        format!(
            "{} does not exist; create a testnet with `tallyd testnet up --dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

fn load_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} not found: {} is not a testnet directory; create one with `tallyd testnet init --dir {}`",
            path.display(),
            dir.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a testnet manifest", path.display()))
}

fn home(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}"))
}

/// Creates the testnet unless `<dir>/testnet.json` exists; returns the canonical dir.
pub fn init(a: &InitArgs) -> anyhow::Result<PathBuf> {
    let requested = expand(&a.dir);
    if requested.join(MANIFEST).exists() {
        let dir = absolute(&requested)?;
        let m = load_manifest(&dir)?;
        let v = m.nodes.iter().filter(|n| n.role == "validator").count();
        println!(
            "resuming the testnet in {} ({v} validators, {} full nodes, {} bulk genesis accounts, chain {}); delete the directory for a new chain",
            dir.display(),
            m.nodes.len() - v,
            m.genesis_accounts,
            m.chain_id
        );
        if let Some(h) = a.hosts.filter(|h| *h != m.hosts) {
            bail!(
                "--hosts {h}: this testnet was created with --hosts {} (its addresses are in its configs); create another with `tallyd testnet up --hosts {h} --dir <new dir>`",
                m.hosts
            );
        }
        if a.genesis_accounts != m.genesis_accounts {
            println!(
                "note: --genesis-accounts {} is ignored: this chain's genesis has {}",
                a.genesis_accounts, m.genesis_accounts
            );
        }
        return Ok(dir);
    }
    let total = a.validators + a.full_nodes;
    if a.validators == 0 {
        bail!("--validators must be at least 1");
    }
    let hosts = a.hosts.unwrap_or_default();
    if hosts == Hosts::Netns && !a.base_ip.is_loopback() && !netns::in_range(a.base_ip) {
        bail!(
            "--base-ip {} with --hosts netns: the nodes' addresses must be in 198.18.0.0/15 (RFC 2544), e.g. 198.18.7.2, or leave --base-ip out to pick a free /24",
            a.base_ip
        );
    }
    if hosts == Hosts::Netns && netns::in_range(a.base_ip) && u32::from(a.base_ip) & 0xff < 2 {
        bail!(
            "--base-ip {} with --hosts netns: .1 is the bridge's address; start at .2 or higher",
            a.base_ip
        );
    }
    if u32::from(a.base_ip) & 0xff < 1 || (u32::from(a.base_ip) & 0xff) as usize + total > 255 {
        bail!(
            "--base-ip {} with {total} nodes runs past the end of the /24; choose a lower last byte",
            a.base_ip
        );
    }
    if a.accounts > 10_000 {
        bail!("--accounts {} is too many (at most 10000)", a.accounts);
    }
    if a.genesis_accounts > MAX_GENESIS_ACCOUNTS {
        bail!(
            "--genesis-accounts {} is too many (at most {MAX_GENESIS_ACCOUNTS})",
            a.genesis_accounts
        );
    }
    std::fs::create_dir_all(&requested)
        .with_context(|| format!("cannot create {}", requested.display()))?;
    let dir = absolute(&requested)?;
    for i in 0..total {
        if home(&dir, i).join("data").exists() {
            bail!(
                "{} has chain data but {} has no {MANIFEST}; delete the directory or pick another --dir",
                home(&dir, i).display(),
                dir.display()
            );
        }
    }

    let base_ip = if hosts == Hosts::Netns && a.base_ip.is_loopback() {
        netns::pick_base_ip(&netns::Names::for_dir(&dir))?
    } else {
        a.base_ip
    };

    let validator_keys: Vec<Keypair> = (0..a.validators).map(|_| Keypair::generate()).collect();
    let node_secrets: Vec<[u8; 32]> = (0..total).map(|_| keys::random_secret()).collect();
    let account_keys: Vec<Keypair> = (0..a.accounts).map(|_| Keypair::generate()).collect();

    let mut nodes = Vec::with_capacity(total);
    for (i, secret) in node_secrets.iter().enumerate() {
        let ip = Ipv4Addr::from(u32::from(base_ip) + i as u32).to_string();
        let peer_id = tally_p2p::peer_id_from_secret(*secret)
            .map_err(|e| anyhow::anyhow!("cannot derive a peer id: {e}"))?
            .to_string();
        nodes.push(NodeEntry {
            name: format!("node{i}"),
            role: if i < a.validators {
                "validator"
            } else {
                "full"
            }
            .into(),
            rpc: format!("{ip}:{RPC_PORT}"),
            metrics: format!("{ip}:{METRICS_PORT}"),
            p2p: format!("/ip4/{ip}/tcp/{P2P_PORT}/p2p/{peer_id}"),
            ip,
            peer_id,
            validator_address: validator_keys.get(i).map(|k| to_hex(&k.address())),
        });
    }
    let accounts: Vec<AccountEntry> = account_keys
        .iter()
        .enumerate()
        .map(|(i, k)| AccountEntry {
            name: format!("account{i}"),
            address: to_hex(&k.address()),
            balance: ACCOUNT_BALANCE,
        })
        .collect();

    let genesis = GenesisFile {
        chain_id: a.chain_id.clone(),
        genesis_time_ms: 0,
        params: Params {
            timeout_commit_ms: a.timeout_commit_ms,
            // A crashed validator's turn to propose costs this long: keep fault demos brisk.
            timeout_propose_ms: 2000,
            ..Params::default()
        },
        validators: validator_keys
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                name: format!("node{i}"),
                pubkey: to_hex(&k.public_key()),
                power: 10,
            })
            .collect(),
        accounts: accounts
            .iter()
            .map(|acc| GenesisAccount {
                address: acc.address.clone(),
                balance: acc.balance,
            })
            .collect(),
    };
    let genesis_path = dir.join("genesis.json");
    write_genesis(&genesis_path, &genesis, a.genesis_accounts)?;

    for (i, node) in nodes.iter().enumerate() {
        let h = home(&dir, i);
        std::fs::create_dir_all(h.join("config"))
            .with_context(|| format!("cannot create {}", h.join("config").display()))?;
        std::fs::copy(&genesis_path, h.join("config/genesis.json")).with_context(|| {
            format!(
                "cannot copy genesis.json into {}",
                h.join("config").display()
            )
        })?;
        keys::write_node_key(&h.join("config/node_key.json"), node_secrets[i])?;
        let mut config = NodeConfig {
            moniker: node.name.clone(),
            ..NodeConfig::default()
        };
        config.rpc.listen = node.rpc.clone();
        config.metrics.listen = node.metrics.clone();
        config.p2p.listen = vec![format!("/ip4/{}/tcp/{P2P_PORT}", node.ip)];
        config.p2p.bootstrap = nodes
            .iter()
            .filter(|o| o.name != node.name)
            .map(|o| o.p2p.clone())
            .collect();
        config.log.level = "info,libp2p=warn,libp2p_gossipsub=error".into();
        if let Some(k) = validator_keys.get(i) {
            keys::write_validator_key(&h.join("config/validator_key.json"), k)?;
            config.consensus.validator_key = "config/validator_key.json".into();
        }
        std::fs::write(h.join("config/node.toml"), config.to_toml())
            .with_context(|| format!("cannot write {}", h.join("config/node.toml").display()))?;
    }

    write_wallet_keys(&dir.join("wallet/keys"), &accounts, &account_keys)?;
    write_prometheus(&dir, &nodes)?;

    let manifest = Manifest {
        chain_id: a.chain_id.clone(),
        nodes,
        accounts,
        genesis_accounts: a.genesis_accounts,
        hosts,
    };
    // Written last: its presence means the directory is complete.
    std::fs::write(dir.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    println!(
        "created a testnet in {} ({hosts} hosts from {base_ip}): {} validators, {} full nodes, {} funded accounts, {} bulk genesis accounts, chain {}",
        dir.display(),
        a.validators,
        a.full_nodes,
        a.accounts,
        a.genesis_accounts,
        a.chain_id
    );
    Ok(dir)
}

/// Writes `file` plus `bulk` bulk accounts to `path`, streamed (a million accounts take
/// about 60 MB and a couple of seconds), then loads it back as a node will: a testnet
/// never gets a genesis its nodes refuse.
fn write_genesis(path: &Path, file: &GenesisFile, bulk: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let big = bulk >= 100_000;
    if big {
        println!("writing {} with {bulk} bulk accounts ...", path.display());
    }
    let out =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    ledger::genesis::write_json(std::io::BufWriter::new(out), file, bulk, |done| {
        if started.elapsed() > Duration::from_secs(2) {
            println!(
                "  {done} of {bulk} bulk accounts written ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    })
    .with_context(|| format!("cannot write {}", path.display()))?;
    Genesis::load(path)?;
    if big {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({:.1} MB) and checked it in {:.1} s",
            path.display(),
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Plaintext key files in the `tally` wallet's keystore format (version 1, `"insecure":
/// true`, `secret_key`), so `tally --keys-dir <dir>/wallet/keys` uses them directly.
fn write_wallet_keys(
    keys_dir: &Path,
    accounts: &[AccountEntry],
    account_keys: &[Keypair],
) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(keys_dir)
        .with_context(|| format!("cannot create {}", keys_dir.display()))?;
    for (acc, key) in accounts.iter().zip(account_keys) {
        let file = serde_json::json!({
            "version": 1,
            "name": acc.name,
            "address": acc.address,
            "public_key": to_hex(&key.public_key()),
            "insecure": true,
            "secret_key": to_hex(&key.secret_bytes()),
        });
        keys::write_private(
            &keys_dir.join(format!("{}.json", acc.name)),
            serde_json::to_string_pretty(&file)?.as_bytes(),
        )?;
    }
    Ok(())
}

fn write_prometheus(dir: &Path, nodes: &[NodeEntry]) -> anyhow::Result<()> {
    // One group per node with the labels configs/prometheus.yml and the Grafana
    // dashboard use (`node`, `role`).
    let targets: Vec<Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "targets": [n.metrics],
                "labels": {"node": n.name, "role": n.role},
            })
        })
        .collect();
    std::fs::write(
        dir.join("prometheus-targets.json"),
        serde_json::to_string_pretty(&targets)?,
    )?;
    let yml = format!(
        "# prometheus --config.file={}/prometheus.yml\nglobal:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: tally-testnet\n    file_sd_configs:\n      - files: [\"{}/prometheus-targets.json\"]\n",
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("prometheus.yml"), yml)?;
    Ok(())
}

// ---- processes -----------------------------------------------------------------------

fn pid_file(dir: &Path, i: usize) -> PathBuf {
    home(dir, i).join("pid")
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process of this testnet, so a recycled pid is
/// never mistaken for one: a node whose arguments contain `needle` (its canonical home, as
/// the supervisor spawns it), or a supervisor whose directory is `needle` (the canonical
/// testnet dir), however its `--dir` was spelled.
fn process_alive(pid: u32, needle: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").exists() {
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        // State is the first field after the parenthesised command name.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmdline
            .strip_suffix(&[0])
            .unwrap_or(&cmdline)
            .split(|b| *b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let text = needle.to_string_lossy();
        return args.iter().any(|arg| arg.contains(text.as_ref()))
            || supervisor_dir(pid, &args).is_some_and(|dir| dir == needle);
    }
    // No procfs: fall back to "a process with this pid exists".
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The canonical testnet directory of a supervisor, from its arguments `args` (`tallyd
/// testnet up|start [--dir DIR]`, DIR defaulting to ./testnet as in the CLI) resolved
/// against its working directory; `None` for any other command. Its command line holds
/// the directory as typed -- `make testnet` passes `--dir ./testnet` -- so a comparison
/// of text with the canonical path would miss it (issue 16).
fn supervisor_dir(pid: u32, args: &[String]) -> Option<PathBuf> {
    let at = args
        .windows(2)
        .position(|w| w[0] == "testnet" && (w[1] == "up" || w[1] == "start"))?;
    let mut dir = PathBuf::from("./testnet");
    let mut rest = args[at + 2..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        } else if arg == "--dir" {
            dir = PathBuf::from(rest.next()?);
        } else if let Some(d) = arg.strip_prefix("--dir=") {
            dir = PathBuf::from(d);
        }
    }
    let dir = expand(&dir);
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(dir)
    };
    std::fs::canonicalize(dir).ok()
}

fn node_pid(dir: &Path, i: usize) -> Option<u32> {
    read_pid(&pid_file(dir, i)).filter(|pid| process_alive(*pid, &home(dir, i)))
}

/// Starts `tallyd start --home <dir>/nodeI` in its own process group (a Ctrl-C reaches
/// only the supervisor, which stops the nodes in order), output appended to node.log.
/// With netns hosts through `ip netns exec`, which execs tallyd: the pid is the node's.
fn spawn_node(dir: &Path, m: &Manifest, i: usize) -> anyhow::Result<Child> {
    let h = home(dir, i);
    let _ = std::fs::remove_file(tally_node::node::addresses_file(&h));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.join("node.log"))
        .with_context(|| format!("cannot open {}", h.join("node.log").display()))?;
    let exe = std::env::current_exe().context("cannot find the tallyd executable")?;
    let mut cmd = match m.hosts {
        Hosts::Loopback => Command::new(exe),
        Hosts::Netns => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &netns::Names::for_dir(dir).ns(i)])
                .arg(exe);
            c
        }
    };
    cmd.arg("start")
        .arg("--home")
        .arg(&h)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start node{i}"))?;
    std::fs::write(pid_file(dir, i), format!("{}\n", child.id()))?;
    Ok(child)
}

/// SIGTERM every pid, wait up to `STOP_TIMEOUT`, SIGKILL what is left. `children` are
/// reaped as they exit so they do not linger as zombies.
fn stop_pids(pids: &[(u32, PathBuf)], children: &mut [Option<Child>], hard: bool) {
    for (pid, _) in pids {
        signal(*pid, if hard { "KILL" } else { "TERM" });
        // A paused node (`testnet pause`) holds a SIGTERM until it runs again.
        signal(*pid, "CONT");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        for c in children.iter_mut() {
            if let Some(ch) = c {
                if matches!(ch.try_wait(), Ok(Some(_))) {
                    *c = None;
                }
            }
        }
        let left: Vec<&(u32, PathBuf)> = pids
            .iter()
            .filter(|(pid, needle)| process_alive(*pid, needle))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for (pid, _) in &left {
                eprintln!("pid {pid} did not stop within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                signal(*pid, "KILL");
            }
            for ch in children.iter_mut().flatten() {
                let _ = ch.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_index(m: &Manifest, i: usize) -> anyhow::Result<()> {
    if i >= m.nodes.len() {
        bail!(
            "no node{i}: this testnet has node0..node{}",
            m.nodes.len().saturating_sub(1)
        );
    }
    Ok(())
}

pub fn kill(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let Some(pid) = node_pid(dir, i) else {
        println!("node{i} is not running");
        return Ok(());
    };
    stop_pids(&[(pid, home(dir, i))], &mut [], true);
    faults::forget_paused(dir, i);
    let _ = std::fs::remove_file(pid_file(dir, i));
    let _ = std::fs::remove_file(tally_node::node::addresses_file(&home(dir, i)));
    println!(
        "node{i} (pid {pid}) killed with SIGKILL; start it again with `tallyd testnet restart {i} --dir {}`",
        dir.display()
    );
    Ok(())
}

pub fn restart(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    if let Some(pid) = node_pid(dir, i) {
        println!("node{i} is running (pid {pid}): stopping it first");
        stop_pids(&[(pid, home(dir, i))], &mut [], false);
    }
    faults::forget_paused(dir, i);
    if m.hosts == Hosts::Netns {
        let ns = netns::Names::for_dir(dir).ns(i);
        if !netns::leftovers(Some(&netns::Names::for_dir(dir).tag))
            .0
            .contains(&ns)
        {
            bail!(
                "namespace {ns} does not exist: start the testnet with `tallyd testnet start --dir {}` (it makes the namespaces)",
                dir.display()
            );
        }
    }
    let mut child = spawn_node(dir, &m, i)?;
    let pid = child.id();
    let addresses = tally_node::node::addresses_file(&home(dir, i));
    // A node with a big genesis and no database yet builds its state first.
    let wait = Duration::from_secs(30 + m.genesis_accounts / 50_000);
    let deadline = Instant::now() + wait;
    loop {
        let up = std::fs::read_to_string(&addresses)
            .ok()
            .and_then(|t| serde_json::from_str::<tally_node::node::Addresses>(&t).ok())
            .is_some_and(|a| a.pid == pid);
        if up {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "node{i} exited with {status}; see {}",
                home(dir, i).join("node.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "node{i} (pid {pid}) did not come up within {} s; see {}",
                wait.as_secs(),
                home(dir, i).join("node.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node keeps running after we exit; the supervisor finds it by its pid file.
    println!(
        "node{i} restarted (pid {pid}), RPC http://{}, log {}",
        m.nodes[i].rpc,
        home(dir, i).join("node.log").display()
    );
    Ok(())
}

pub fn stop(dir: &Path) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    let mut pids = Vec::new();
    if let Some(pid) = read_pid(&dir.join(SUPERVISOR_PID)).filter(|p| process_alive(*p, dir)) {
        println!("stopping the supervisor (pid {pid})");
        pids.push((pid, dir.to_path_buf()));
    }
    for i in 0..m.nodes.len() {
        if let Some(pid) = node_pid(dir, i) {
            pids.push((pid, home(dir, i)));
        }
    }
    if pids.is_empty() {
        println!("nothing is running in {}", dir.display());
        return Ok(());
    }
    stop_pids(&pids, &mut [], false);
    for i in 0..m.nodes.len() {
        let _ = std::fs::remove_file(pid_file(dir, i));
    }
    println!("stopped {} process(es)", pids.len());
    Ok(())
}

// ---- supervisor ----------------------------------------------------------------------

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `stop`, then remove every namespace, veth, bridge and filter of this testnet.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    stop(dir)?;
    let removed = netns::teardown(&netns::Names::for_dir(dir));
    faults::clear(dir);
    if !removed.is_empty() {
        println!("removed {} leftover network object(s)", removed.len());
    } else if m.hosts == Hosts::Netns {
        println!("no namespace, veth or bridge of this testnet is left");
    }
    Ok(())
}

/// Finds our namespaces, veths and bridges by name and removes them (after stopping the
/// processes inside): one testnet's with `dir`, else all of them.
pub fn cleanup(dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(problem) = netns::capability_problem() {
        bail!("`testnet cleanup` {problem}");
    }
    let tag = match dir {
        Some(d) => {
            let d = absolute(d)?;
            if d.join(MANIFEST).exists() {
                stop(&d)?;
            }
            faults::clear(&d);
            Some(netns::Names::for_dir(&d).tag)
        }
        None => None,
    };
    let removed = netns::remove(tag.as_deref());
    for r in &removed {
        println!("removed {r}");
    }
    let (namespaces, links) = netns::leftovers(tag.as_deref());
    if !namespaces.is_empty() || !links.is_empty() {
        bail!(
            "could not remove {}; see `ip netns list` and `ip link`",
            namespaces
                .iter()
                .chain(&links)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("no namespace, veth or bridge of ours is left");
    Ok(())
}

/// Tears down the namespaces when the supervisor returns, errors or panics.
struct NetGuard {
    names: Option<netns::Names>,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        if let Some(names) = self.names.take() {
            netns::teardown(&names);
        }
    }
}

pub fn start(dir: &Path, hosts: Option<Hosts>, run: &RunArgs) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    if let Some(h) = hosts.filter(|h| *h != m.hosts) {
        bail!(
            "--hosts {h}: this testnet was created with --hosts {} (its addresses are in its configs); create another with `tallyd testnet up --hosts {h} --dir <new dir>`",
            m.hosts
        );
    }
    if let Some(pid) = read_pid(&dir.join(SUPERVISOR_PID)).filter(|p| process_alive(*p, dir)) {
        bail!(
            "this testnet is already running (supervisor pid {pid}); stop it with Ctrl-C there or `tallyd testnet stop --dir {}`",
            dir.display()
        );
    }
    let running: Vec<String> = (0..m.nodes.len())
        .filter_map(|i| node_pid(dir, i).map(|p| format!("node{i} (pid {p})")))
        .collect();
    if !running.is_empty() {
        bail!(
            "{} still running from an earlier run; stop them with `tallyd testnet stop --dir {}`",
            running.join(", "),
            dir.display()
        );
    }
    if m.hosts == Hosts::Netns {
        if let Some(problem) = netns::capability_problem() {
            bail!("--hosts netns {problem}");
        }
    }
    std::fs::write(
        dir.join(SUPERVISOR_PID),
        format!("{}\n", std::process::id()),
    )?;
    // Signal handlers go in before the first node starts: the nodes run in their own
    // process groups, so a Ctrl-C that killed us half-way would leave them orphaned.
    let rt = runtime()?;
    let signals = rt.block_on(async { Signals::install() })?;
    // Faults of an earlier run died with its namespaces and processes.
    faults::clear(dir);
    let mut net = NetGuard { names: None };
    if m.hosts == Hosts::Netns {
        let names = netns::Names::for_dir(dir);
        net.names = Some(names.clone());
        if let Err(e) = netns::setup(&names, &m.ips()?) {
            let _ = std::fs::remove_file(dir.join(SUPERVISOR_PID));
            return Err(e.context("cannot create the nodes' network namespaces"));
        }
    }
    let mut children: Vec<Option<Child>> = Vec::with_capacity(m.nodes.len());
    for i in 0..m.nodes.len() {
        match spawn_node(dir, &m, i) {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                shutdown(dir, &m, &mut children, false);
                return Err(e);
            }
        }
    }
    print_banner(dir, &m);
    let interactive = !run.non_interactive && std::io::stdout().is_terminal();
    let result = rt.block_on(supervise(dir, &m, &mut children, interactive, signals));
    println!("\nstopping {} nodes ...", m.nodes.len());
    shutdown(dir, &m, &mut children, false);
    if let Some(names) = net.names.take() {
        let removed = netns::teardown(&names);
        println!(
            "removed {} network object(s) ({}-*)",
            removed.len(),
            names.tag
        );
    }
    faults::clear(dir);
    let _ = std::fs::remove_file(dir.join(SUPERVISOR_PID));
    println!(
        "all nodes stopped; run `tallyd testnet up --dir {}` again to resume this chain",
        dir.display()
    );
    result
}

/// Stops our children and any node started by `testnet restart` (found by pid file).
fn shutdown(dir: &Path, m: &Manifest, children: &mut [Option<Child>], hard: bool) {
    let mut pids: Vec<(u32, PathBuf)> = Vec::new();
    for i in 0..m.nodes.len() {
        if let Some(pid) = node_pid(dir, i) {
            pids.push((pid, home(dir, i)));
        }
    }
    for (i, c) in children.iter_mut().enumerate() {
        if let Some(ch) = c {
            if matches!(ch.try_wait(), Ok(None)) && !pids.iter().any(|(p, _)| *p == ch.id()) {
                pids.push((ch.id(), home(dir, i)));
            }
        }
    }
    stop_pids(&pids, children, hard);
    for i in 0..m.nodes.len() {
        let _ = std::fs::remove_file(pid_file(dir, i));
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal). Registered once: a signal that arrives
/// while a status poll is in flight (or before supervision starts) is kept, not lost.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Redraws the status until a signal in [`Signals`].
async fn supervise(
    dir: &Path,
    m: &Manifest,
    children: &mut [Option<Child>],
    interactive: bool,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let period = if interactive {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let mut ticker = tokio::time::interval(period);
    let mut drawn = 0usize;
    let mut events: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = signals.int.recv() => return Ok(()),
            _ = signals.term.recv() => return Ok(()),
            _ = signals.hup.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // Reap children that exited (killed from another terminal, or crashed) and say
        // so: a node that cannot start (port taken, bad config) must not just show "down".
        for (i, c) in children.iter_mut().enumerate() {
            if let Some(ch) = c {
                if let Ok(Some(status)) = ch.try_wait() {
                    events.push(format!(
                        "node{i} (pid {}) exited: {status}; see {}",
                        ch.id(),
                        home(dir, i).join("node.log").display()
                    ));
                    *c = None;
                }
            }
        }
        let rows = poll_all(dir, m).await;
        let mut out = std::io::stdout().lock();
        if interactive {
            let mut lines = vec![format!(
                "\x1b[1m{} — {} nodes on {} hosts — up {}s — {}\x1b[0m",
                m.chain_id,
                m.nodes.len(),
                m.hosts,
                started.elapsed().as_secs(),
                "Ctrl-C stops all nodes"
            )];
            lines.extend(table(&rows, true));
            // The last few events stay under the table.
            lines.extend(events.iter().rev().take(3).rev().cloned());
            if drawn > 0 {
                let _ = write!(out, "\x1b[{drawn}F");
            }
            for l in &lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            drawn = lines.len();
        } else {
            let t = started.elapsed().as_secs_f64();
            for e in events.drain(..) {
                let _ = writeln!(out, "[{t:6.1}s] {e}");
            }
            for r in &rows {
                let _ = writeln!(out, "[{t:6.1}s] {}", status_line(r));
            }
        }
        let _ = out.flush();
    }
}

// ---- status --------------------------------------------------------------------------

struct Row {
    name: String,
    role: String,
    rpc: String,
    pid: Option<u32>,
    status: Option<Value>,
    /// Partitions and pauses in force ("-" for none), from `<dir>/faults.json`.
    fault: String,
    paused: bool,
}

async fn poll_all(dir: &Path, m: &Manifest) -> Vec<Row> {
    let faults = faults::load(dir);
    let faults = &faults;
    let polls = m.nodes.iter().enumerate().map(|(i, n)| async move {
        let status = http_get_json(&n.rpc, "/v1/status", Duration::from_millis(800))
            .await
            .ok();
        Row {
            name: n.name.clone(),
            role: n.role.clone(),
            rpc: n.rpc.clone(),
            pid: node_pid(dir, i),
            status,
            fault: faults.describe(i),
            paused: faults.paused.contains(&i),
        }
    });
    futures::future::join_all(polls).await
}

fn state_of(r: &Row) -> &'static str {
    match (&r.status, r.pid) {
        (_, Some(_)) if r.paused => "paused",
        (Some(s), _) if !s["halted"].is_null() => "HALTED",
        (Some(s), _) if s["catching_up"].as_bool() == Some(true) => "syncing",
        (Some(_), _) => "up",
        (None, Some(_)) => "starting",
        (None, None) => "down",
    }
}

fn field(r: &Row, key: &str) -> String {
    r.status
        .as_ref()
        .map(|s| match &s[key] {
            Value::Null => "-".to_string(),
            v => v.to_string(),
        })
        .unwrap_or_else(|| "-".into())
}

fn since_block(r: &Row) -> String {
    r.status
        .as_ref()
        .and_then(|s| s["seconds_since_last_block"].as_f64())
        .map_or("-".into(), |x| format!("{x:.1}s ago"))
}

fn mempool(r: &Row) -> String {
    r.status
        .as_ref()
        .and_then(|s| s["mempool"]["txs"].as_u64())
        .map_or("-".into(), |x| x.to_string())
}

fn table(rows: &[Row], colour: bool) -> Vec<String> {
    let mut out = vec![format!(
        "{:<7} {:<10} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {:<8} {:>7}  {}",
        "NODE",
        "ROLE",
        "RPC",
        "HEIGHT",
        "ROUND",
        "PEERS",
        "MEMPOOL",
        "LAST BLOCK",
        "STATE",
        "PID",
        "FAULT"
    )];
    for r in rows {
        let state = state_of(r);
        let (on, off) = match (colour, state) {
            (false, _) => ("", ""),
            (true, "up") => ("\x1b[32m", "\x1b[0m"),
            (true, "syncing" | "starting") => ("\x1b[33m", "\x1b[0m"),
            (true, _) => ("\x1b[31m", "\x1b[0m"),
        };
        out.push(format!(
            "{:<7} {:<10} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {on}{:<8}{off} {:>7}  {}",
            r.name,
            r.role,
            r.rpc,
            field(r, "height"),
            field(r, "round"),
            field(r, "peers"),
            mempool(r),
            since_block(r),
            state,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.fault,
        ));
    }
    out
}

fn status_line(r: &Row) -> String {
    format!(
        "{} {} height={} round={} peers={} mempool={} last_block={} state={} pid={} fault={}",
        r.name,
        r.role,
        field(r, "height"),
        field(r, "round"),
        field(r, "peers"),
        mempool(r),
        since_block(r),
        state_of(r),
        r.pid.map_or("-".into(), |p| p.to_string()),
        r.fault,
    )
}

/// A minimal HTTP/1.1 GET (the node's own status endpoint on loopback): enough for a
/// status table without pulling an HTTP client into the node binary.
async fn http_get_json(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(4 << 20).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("HTTP {}", head.lines().next().unwrap_or_default());
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(serde_json::from_str(&body)?)
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("malformed chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?;
        out.push_str(chunk);
        body = rest.get(size + 2..).unwrap_or("");
    }
}

// ---- banner --------------------------------------------------------------------------

fn print_banner(dir: &Path, m: &Manifest) {
    let keys_dir = dir.join("wallet/keys");
    // Paste-ready even when `tally` is not on PATH: use the one built next to tallyd.
    let tally = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("tally")))
        .filter(|p| p.exists())
        .map_or_else(|| "tally".to_string(), |p| p.display().to_string());
    let rpc0 = m.nodes.first().map_or(String::new(), |n| n.rpc.clone());
    let mut s = format!("\nTally testnet \"{}\" in {}\n", m.chain_id, dir.display());
    match m.hosts {
        Hosts::Loopback => {
            s.push_str("  hosts: loopback (one network stack, an address per node)\n")
        }
        Hosts::Netns => {
            let names = netns::Names::for_dir(dir);
            let bridge = m
                .ips()
                .ok()
                .and_then(|ips| ips.first().map(|ip| netns::bridge_ip(*ip).to_string()))
                .unwrap_or_default();
            s.push_str(&format!(
                "  hosts: netns (node i in namespace {t}-n<i>, bridge {t}-br {bridge}/24; `ip netns exec {t}-n0 ss -tnp` shows node0's links)\n",
                t = names.tag
            ));
        }
    }
    s.push_str("  node      role       RPC                          metrics                              log\n");
    for (i, n) in m.nodes.iter().enumerate() {
        s.push_str(&format!(
            "  {:<9} {:<10} http://{:<21} http://{}/metrics  {}\n",
            n.name,
            n.role,
            n.rpc,
            n.metrics,
            home(dir, i).join("node.log").display()
        ));
    }
    s.push_str(&format!(
        "  prometheus targets {}\n  wallet keys        {} (INSECURE plaintext testnet keys: ",
        dir.join("prometheus-targets.json").display(),
        keys_dir.display()
    ));
    let names: Vec<&str> = m.accounts.iter().map(|a| a.name.as_str()).collect();
    s.push_str(&format!("{})\n", names.join(", ")));
    if let (Some(a0), Some(a1)) = (m.accounts.first(), m.accounts.get(1)) {
        s.push_str(&format!(
            "\nSend a transfer from another terminal:\n  TALLY_KEYS_DIR={} {tally} --node http://{rpc0} send --from {} --to {} --amount 1000 --wait committed\n",
            keys_dir.display(),
            a0.name,
            a1.address
        ));
        s.push_str(&format!(
            "  TALLY_KEYS_DIR={} {tally} --node http://{rpc0} balance {}\n",
            keys_dir.display(),
            a1.name
        ));
    }
    s.push_str(&format!(
        "Fault injection: tallyd testnet kill 2 --dir {d}   /   tallyd testnet restart 2 --dir {d}\n                 tallyd testnet pause 2 --dir {d}  /   tallyd testnet resume 2 --dir {d}\n",
        d = dir.display()
    ));
    if m.hosts == Hosts::Netns {
        s.push_str(&format!(
            "                 tallyd testnet partition 0,1 2,3,4 --dir {d}   isolate 2   oneway 0 1   heal\n",
            d = dir.display()
        ));
    }
    s.push_str("Ctrl-C stops every node.\n");
    println!("{s}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A process whose command line is `sh -c 'read _' <args...>` (a shell blocked on its
    /// stdin, so the arguments are its own) in `cwd`: it looks like `tallyd <args...>` to
    /// `process_alive`.
    struct Lookalike(Child);

    impl Lookalike {
        fn spawn(cwd: &Path, args: &[&str]) -> Self {
            let child = Command::new("sh")
                .args(["-c", "read _", "tallyd"])
                .args(args)
                .current_dir(cwd)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            // spawn returns once the exec has begun, possibly before the new command line
            // is in place (an empty /proc/<pid>/cmdline).
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sh\0-c\0read _\0")) {
                assert!(Instant::now() < deadline, "sh did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
            Self(child)
        }
    }

    impl Drop for Lookalike {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_supervisor_is_found_by_any_spelling_of_its_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let dir = root.join("testnet");
        let other = root.join("other");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&dir, root.join("link")).unwrap();
        let abs = dir.to_str().unwrap();
        let cases: [(&Path, &[&str]); 8] = [
            (&root, &["testnet", "up", "--dir", "testnet"]),
            (
                &root,
                &["testnet", "up", "--validators", "4", "--dir", "./testnet"],
            ),
            (&root, &["testnet", "start", "--dir=testnet/"]),
            (&root, &["testnet", "start", "--dir", abs]),
            (&dir, &["testnet", "start", "--dir", "."]),
            (&other, &["testnet", "start", "--dir", "../link"]),
            (&root, &["testnet", "start", "--non-interactive"]),
            (&root, &["testnet", "up"]),
        ];
        for (cwd, args) in cases {
            let p = Lookalike::spawn(cwd, args);
            assert!(
                process_alive(p.0.id(), &dir),
                "{args:?} in {} not seen as the supervisor of {}",
                cwd.display(),
                dir.display()
            );
            assert!(
                !process_alive(p.0.id(), &other),
                "{args:?} in {} taken for the supervisor of {}",
                cwd.display(),
                other.display()
            );
        }
        // The same spellings from a directory where they name another testnet.
        for (cwd, args) in [
            (&other, &["testnet", "up", "--dir", "testnet"][..]),
            (&other, &["testnet", "start"][..]),
        ] {
            let p = Lookalike::spawn(cwd, args);
            assert!(
                !process_alive(p.0.id(), &dir),
                "{args:?} in {} taken for the supervisor of {}",
                cwd.display(),
                dir.display()
            );
        }
    }
}
