//! The `tallyd` subcommands.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::{sha256, to_hex};
use tally_node::config::{Home, NodeConfig, RuntimeSection};
use tally_node::keys;
use tokio_util::sync::CancellationToken;

pub use tally_node::config::expand;

#[derive(Args)]
pub struct InitArgs {
    /// Node home directory to create.
    #[arg(long, env = "TALLY_HOME", default_value = "~/.tally/node")]
    pub home: PathBuf,
    #[arg(long, default_value = "tally-node")]
    pub moniker: String,
    /// Chain id for a new genesis.
    #[arg(long, default_value = "tally-local")]
    pub chain_id: String,
    /// Use this genesis.json (e.g. one shared by a network) instead of creating one.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Do not create a validator key (run as a full node).
    #[arg(long)]
    pub full_node: bool,
    /// Fund an account in a new genesis: ADDRESS=BALANCE (repeatable).
    #[arg(long = "account", value_name = "ADDRESS=BALANCE")]
    pub accounts: Vec<String>,
    /// RPC listen address.
    #[arg(long)]
    pub rpc: Option<String>,
    /// p2p listen multiaddrs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub p2p: Vec<String>,
    /// Bootstrap peers (comma-separated multiaddrs with /p2p/<peer id>).
    #[arg(long, value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Overwrite an existing home.
    #[arg(long)]
    pub force: bool,
    /// The new genesis's protocol (params.protocol_version): 2, validators that bond,
    /// unbond and are jailed on chain, or 1, a validator set fixed in genesis.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub protocol: u32,
    /// On protocol 2, the address (40 hex chars) that owns the validator's initial bond
    /// and may unbond it; by default the validator key's own address.
    #[arg(long, value_name = "ADDRESS")]
    pub operator: Option<String>,
}

pub fn init(a: InitArgs) -> anyhow::Result<()> {
    let home = Home(expand(&a.home));
    if home.config_file().exists() && !a.force {
        anyhow::bail!(
            "{} already exists; pass --force to overwrite it or choose another --home",
            home.config_file().display()
        );
    }
    let mut config = NodeConfig {
        moniker: a.moniker.clone(),
        ..NodeConfig::default()
    };
    if let Some(rpc) = a.rpc {
        config.rpc.listen = rpc;
    }
    if !a.p2p.is_empty() {
        config.p2p.listen = a.p2p;
    }
    config.p2p.bootstrap = a.bootstrap;
    let validator = if a.full_node {
        None
    } else {
        let key = Keypair::generate();
        keys::write_validator_key(&home.0.join("config/validator_key.json"), &key)?;
        config.consensus.validator_key = "config/validator_key.json".into();
        Some(key)
    };
    keys::write_node_key(&home.node_key_file(), keys::random_secret())?;
    match a.genesis {
        Some(path) => {
            Genesis::load(&path)?;
            std::fs::copy(&path, home.genesis_file())
                .with_context(|| format!("cannot copy {} into the home", path.display()))?;
        }
        None => {
            let Some(v) = &validator else {
                std::fs::write(home.config_file(), config.to_toml())?;
                println!(
                    "initialised full node {}; copy the network's genesis.json to {} before the first start",
                    home.0.display(),
                    home.genesis_file().display()
                );
                return Ok(());
            };
            let mut accounts = Vec::new();
            for spec in &a.accounts {
                let (addr, bal) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--account {spec}: expected ADDRESS=BALANCE"))?;
                accounts.push(GenesisAccount {
                    address: addr.to_string(),
                    balance: bal.parse().map_err(|_| {
                        anyhow::anyhow!("--account {spec}: balance must be an integer")
                    })?,
                });
            }
            let protocol_2 = a.protocol >= ledger::types::PROTOCOL_2;
            let file = GenesisFile {
                chain_id: a.chain_id,
                genesis_time_ms: 0,
                params: Params {
                    protocol_version: a.protocol,
                    ..Params::default()
                },
                validators: vec![GenesisValidator {
                    name: a.moniker,
                    pubkey: to_hex(&v.public_key()),
                    power: 10,
                    operator: protocol_2
                        .then(|| a.operator.clone().unwrap_or_else(|| to_hex(&v.address()))),
                }],
                accounts,
            };
            write_genesis(&home.genesis_file(), &file)?;
        }
    }
    std::fs::write(home.config_file(), config.to_toml())?;
    println!("initialised {}", home.0.display());
    if let Some(v) = validator {
        println!("validator address {}", to_hex(&v.address()));
    }
    Ok(())
}

pub fn write_genesis(path: &Path, file: &GenesisFile) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(file)?;
    Genesis::from_bytes(&path.display().to_string(), text.as_bytes())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The node's thread pools, sized by `[runtime]`: the tokio runtime, and rayon's global
/// pool (signature verification in parallel).
fn runtime(config: &RuntimeSection) -> anyhow::Result<tokio::runtime::Runtime> {
    // Fails only if something used rayon before (the pool then has one thread per core).
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(config.verifiers())
        .thread_name(|i| format!("tally-verify-{i}"))
        .build_global()
    {
        tracing::warn!(error = %e, "runtime.verify_threads not applied");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn watch_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}

pub fn start(home: PathBuf) -> anyhow::Result<()> {
    let config = NodeConfig::load(&Home(home.clone()).config_file(), std::env::vars())?;
    init_logging(&config.log.level, config.log.format == "json");
    let genesis = Genesis::load(&Home(home.clone()).genesis_file())?;
    runtime(&config.runtime)?.block_on(async move {
        let token = CancellationToken::new();
        watch_signals(token.clone());
        tally_node::node::run_with(Home(home), config, genesis, token).await
    })
}

#[derive(Args)]
pub struct DevArgs {
    /// Keep the chain here instead of a temporary directory (deleted on exit).
    #[arg(long)]
    pub home: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:26657")]
    pub rpc: String,
    #[arg(long, default_value = "127.0.0.1:26660")]
    pub metrics: String,
    /// Block time in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub block_time_ms: u64,
}

/// The dev chain's funded key: derived from a public seed, so it is INSECURE by design.
pub fn dev_key() -> Keypair {
    Keypair::from_secret_bytes(&sha256(b"tally-dev-key")).expect("a fixed valid key")
}

pub fn dev(a: DevArgs) -> anyhow::Result<()> {
    let temp;
    let home = match a.home {
        Some(h) => expand(&h),
        None => {
            temp = tempfile::Builder::new().prefix("tally-dev-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let home = Home(home);
    let dev = dev_key();
    if !home.config_file().exists() {
        let validator = Keypair::generate();
        keys::write_validator_key(&home.0.join("config/validator_key.json"), &validator)?;
        keys::write_node_key(&home.node_key_file(), keys::random_secret())?;
        let file = GenesisFile {
            chain_id: "tally-dev".into(),
            genesis_time_ms: 0,
            params: Params {
                timeout_commit_ms: a.block_time_ms,
                ..Params::default()
            },
            validators: vec![GenesisValidator {
                name: "dev-validator".into(),
                pubkey: to_hex(&validator.public_key()),
                power: 1,
                operator: None,
            }],
            accounts: vec![GenesisAccount {
                address: to_hex(&dev.address()),
                balance: 1_000_000_000_000,
            }],
        };
        write_genesis(&home.genesis_file(), &file)?;
        let mut config = NodeConfig {
            moniker: "dev".into(),
            ..NodeConfig::default()
        };
        config.rpc.listen = a.rpc.clone();
        config.metrics.listen = a.metrics.clone();
        config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.consensus.validator_key = "config/validator_key.json".into();
        config.log.level = "info,libp2p=warn".into();
        std::fs::write(home.config_file(), config.to_toml())?;
        keys::write_private(
            &home.0.join("dev.secret"),
            to_hex(&dev.secret_bytes()).as_bytes(),
        )?;
    }
    let config = NodeConfig::load(&home.config_file(), std::env::vars())?;
    init_logging(&config.log.level, config.log.format == "json");
    let genesis = Genesis::load(&home.genesis_file())?;
    let example = dev.sign_tx(ledger::types::Tx {
        chain_id: genesis.chain_id.clone(),
        from: dev.public_key(),
        nonce: 0,
        fee: genesis.params.min_fee,
        payload: ledger::types::Payload::Transfer {
            to: [0x11; 20],
            amount: 1000,
        },
    });
    let rpc = &config.rpc.listen;
    println!(
        r#"
Tally dev chain "{chain}" starting in {home}
  RPC      http://{rpc}
  metrics  http://{metrics}/metrics
  dev key  address {addr}, balance 1000000000000
           secret in {home}/dev.secret (INSECURE: a public test key, never use it elsewhere)

Send a transfer from another terminal, with the wallet:
  tally --node http://{rpc} keys import dev --secret-file {home}/dev.secret --insecure-plaintext
  tally --node http://{rpc} send --from dev --to 1111111111111111111111111111111111111111 --amount 1000 --wait committed

or with curl (a pre-signed transfer of 1000 from the dev key, nonce 0):
  curl -s -X POST http://{rpc}/v1/txs -H 'content-type: application/json' -d '{{"tx":"{tx}"}}'
  curl -s http://{rpc}/v1/txs/{id}
Stop with Ctrl-C.
"#,
        chain = genesis.chain_id,
        home = home.0.display(),
        metrics = config.metrics.listen,
        addr = to_hex(&dev.address()),
        tx = to_hex(&ledger::codec::encode(&example)),
        id = to_hex(&example.id()),
    );
    runtime(&config.runtime)?.block_on(async move {
        let token = CancellationToken::new();
        watch_signals(token.clone());
        tally_node::node::run_with(home, config, genesis, token).await
    })
}

pub fn fsck(home: PathBuf) -> anyhow::Result<()> {
    let home = Home(home);
    let genesis = Genesis::load(&home.genesis_file())?;
    let report = tally_node::fsck::check(&home.db_dir(), &genesis)?;
    println!("{report}");
    if !report.ok() {
        std::process::exit(2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(home: &Path, protocol: u32) -> InitArgs {
        InitArgs {
            home: home.to_path_buf(),
            moniker: "solo".into(),
            chain_id: "tally-local".into(),
            genesis: None,
            full_node: false,
            accounts: Vec::new(),
            rpc: None,
            p2p: Vec::new(),
            bootstrap: Vec::new(),
            force: false,
            protocol,
            operator: None,
        }
    }

    /// A new chain runs protocol 2 unless told otherwise: its one validator is bonded by
    /// its own key's address (the genesis validates, so the bond meets the minimum stake);
    /// `--protocol 1` writes the old format, with no operator.
    #[test]
    fn init_makes_protocol_2_chains_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p2");
        init(args(&home, ledger::types::PROTOCOL_2)).unwrap();
        let g = Genesis::load(&Home(home.clone()).genesis_file()).unwrap();
        assert_eq!(g.params.protocol_version, ledger::types::PROTOCOL_2);
        let key = keys::read_validator_key(&home.join("config/validator_key.json")).unwrap();
        assert_eq!(g.operators, vec![key.address()]);

        let home = dir.path().join("p1");
        init(args(&home, ledger::types::PROTOCOL_1)).unwrap();
        let g = Genesis::load(&Home(home).genesis_file()).unwrap();
        assert_eq!(g.params.protocol_version, ledger::types::PROTOCOL_1);
        assert!(g.operators.is_empty());
    }
}
