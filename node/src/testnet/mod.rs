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
//!
//! This file holds the verbs; `manifest.rs` the manifest, the ports and the layout;
//! `init.rs` the directory writer, whose `write_home` the test harness also uses for its
//! nodes; `processes.rs` spawning, finding and stopping nodes; `table.rs` the live status
//! table; `faults.rs` partitions and pauses.

use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::netns::{self, signal};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::config::expand;

mod faults;
pub mod init;
mod manifest;
mod processes;
mod staking;
mod table;

pub use init::init;
use manifest::{check_index, home, load_manifest, MANIFEST};
pub use manifest::{
    AccountEntry, Hosts, Manifest, NodeEntry, Role, METRICS_PORT, P2P_PORT, RPC_PORT,
};
pub use processes::{kill, restart, stop};
use processes::{node_pid, process_alive, read_pid, shutdown, spawn_node, SUPERVISOR_PID};
use table::{status_line, table, Poller};

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
    /// Protocol-2 testnets: start a new node with a fresh validator key and bond stake to
    /// it from a funded account; returns once the set of the next height holds it.
    AddValidator(staking::AddValidatorArgs),
    /// Protocol-2 testnets: unbond all of node N's stake, wait until the set no longer
    /// holds it, then stop the node.
    RemoveValidator(NodeArgs),
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
    /// The chain's protocol (genesis params.protocol_version): 2 (the default), validators
    /// that bond, unbond and are jailed on chain (issue 20; each genesis
    /// validator is bonded by a funded account, account i for node i, so the wallet keys
    /// can unbond it), or 1, a validator set fixed in genesis.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub protocol: u32,
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
        TestnetCommand::AddValidator(a) => staking::add_validator(&absolute(&a.dir)?, &a),
        TestnetCommand::RemoveValidator(a) => staking::remove_validator(&absolute(&a.dir)?, a.node),
        TestnetCommand::Stop(a) => stop(&absolute(&a.dir)?),
        TestnetCommand::Status(a) => {
            let dir = absolute(&a.dir)?;
            let m = load_manifest(&dir)?;
            let poller = Poller::new()?;
            let rows = runtime()?.block_on(poller.poll_all(&dir, &m));
            let mut out = std::io::stdout().lock();
            for line in table(&rows, out.is_terminal()) {
                // `| head` closing the pipe ends the listing, not in a panic.
                if writeln!(out, "{line}").is_err() {
                    break;
                }
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
    // `add-validator` may have added nodes since.
    let m = load_manifest(dir).unwrap_or(m);
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
    let poller = Poller::new()?;
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
        // Re-read: `add-validator` appends nodes while we run.
        let now = load_manifest(dir).unwrap_or_else(|_| m.clone());
        let rows = poller.poll_all(dir, &now).await;
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
