//! `testnet init`: the testnet directory (genesis, keys, node.toml per node, wallet keys,
//! Prometheus targets), written once.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::NodeConfig;
use crate::keys;
use crate::netns;
use anyhow::{bail, Context};
use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::to_hex;
use serde_json::Value;

use super::manifest::{
    home, load_manifest, save_manifest, AccountEntry, Hosts, Manifest, NodeEntry, Role, MANIFEST,
    METRICS_PORT, P2P_PORT, RPC_PORT,
};
use super::{absolute, InitArgs};
use crate::config::expand;

/// Every account starts with this balance.
const ACCOUNT_BALANCE: u64 = 1_000_000_000_000;
/// Most bulk genesis accounts `--genesis-accounts` takes (about 60 MB of genesis.json per
/// million).
pub const MAX_GENESIS_ACCOUNTS: u64 = 5_000_000;

/// Creates the testnet unless `<dir>/testnet.json` exists; returns the canonical dir.
pub fn init(a: &InitArgs) -> anyhow::Result<PathBuf> {
    let requested = expand(&a.dir);
    if requested.join(MANIFEST).exists() {
        let dir = absolute(&requested)?;
        let m = load_manifest(&dir)?;
        let v = m.nodes.iter().filter(|n| n.role == Role::Validator).count();
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
                Role::Validator
            } else {
                Role::FullNode
            },
            rpc: format!("{ip}:{RPC_PORT}"),
            metrics: format!("{ip}:{METRICS_PORT}"),
            p2p: format!("/ip4/{ip}/tcp/{P2P_PORT}/p2p/{peer_id}"),
            ip,
            peer_id,
            validator_address: validator_keys.get(i).map(|k| to_hex(&k.address())),
            operator: None,
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
            protocol_version: a.protocol,
            ..Params::default()
        },
        validators: validator_keys
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                name: format!("node{i}"),
                pubkey: to_hex(&k.public_key()),
                power: 10,
                operator: (a.protocol >= ledger::types::PROTOCOL_2)
                    .then(|| genesis_operator(&accounts, i, k)),
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
        let mut config = node_config(&node.name, &node.ip, Ports::FIXED);
        config.p2p.bootstrap = nodes
            .iter()
            .filter(|o| o.name != node.name)
            .map(|o| o.p2p.clone())
            .collect();
        write_home(
            &home(&dir, i),
            NodeHome {
                genesis: &genesis_path,
                node_secret: node_secrets[i],
                validator_key: validator_keys.get(i),
                config,
            },
        )?;
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
    save_manifest(&dir, &manifest)?;
    println!(
        "created a testnet in {} ({hosts} hosts from {base_ip}): {} validators, {} full nodes, {} funded accounts, {} bulk genesis accounts, chain {}, protocol {}{}",
        dir.display(),
        a.validators,
        a.full_nodes,
        a.accounts,
        a.genesis_accounts,
        a.chain_id,
        a.protocol,
        if a.protocol >= 2 {
            " (validators join and leave: `tallyd testnet add-validator`, `remove-validator N`)"
        } else {
            ""
        }
    );
    Ok(dir)
}

/// Protocol 2: the operator that owns genesis validator `i`'s bond: funded account i
/// (round robin when there are fewer accounts than validators), whose wallet key can
/// unbond it; the validator's own address when the testnet has no accounts.
fn genesis_operator(accounts: &[AccountEntry], i: usize, validator: &Keypair) -> String {
    match accounts.len() {
        0 => to_hex(&validator.address()),
        n => accounts[i % n].address.clone(),
    }
}

/// The ports a node listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub p2p: u16,
    pub rpc: u16,
    pub metrics: u16,
}

impl Ports {
    /// The testnet's fixed ports, so its URLs are predictable.
    pub const FIXED: Ports = Ports {
        p2p: P2P_PORT,
        rpc: RPC_PORT,
        metrics: METRICS_PORT,
    };
    /// Ports the OS picks at start (the node writes them to `<home>/addresses.json`).
    pub const ANY: Ports = Ports {
        p2p: 0,
        rpc: 0,
        metrics: 0,
    };
}

/// A node.toml for node `moniker` of a local net: p2p, RPC and metrics on `ip` with
/// `ports`, libp2p's chatter out of the log; the rest defaults (the caller adds bootstrap
/// peers and its own knobs).
pub fn node_config(moniker: &str, ip: &str, ports: Ports) -> NodeConfig {
    let mut config = NodeConfig {
        moniker: moniker.to_string(),
        ..NodeConfig::default()
    };
    config.rpc.listen = format!("{ip}:{}", ports.rpc);
    config.metrics.listen = format!("{ip}:{}", ports.metrics);
    config.p2p.listen = vec![format!("/ip4/{ip}/tcp/{}", ports.p2p)];
    config.log.level = "info,libp2p=warn,libp2p_gossipsub=error".into();
    config
}

/// What [`write_home`] lays out in one node's home.
pub struct NodeHome<'a> {
    /// The chain's genesis.json, copied in: every node of a chain has the same bytes.
    pub genesis: &'a Path,
    /// The node's libp2p identity; the caller chooses it, so it knows the peer id
    /// (`tally_p2p::peer_id_from_secret`) for the others' bootstrap lists.
    pub node_secret: [u8; 32],
    /// A validator's key, or `None` for a full node.
    pub validator_key: Option<&'a Keypair>,
    /// Written as node.toml, with `consensus.validator_key` pointing at the key if any.
    pub config: NodeConfig,
}

/// Writes a node's home: `config/genesis.json`, `config/node_key.json`,
/// `config/validator_key.json` (validators only) and `config/node.toml`, so that
/// `tallyd start --home <home>` runs it. The supervisor, the test harness and the fault
/// suite's joiners all lay out their nodes with it.
pub fn write_home(home: &Path, node: NodeHome<'_>) -> anyhow::Result<()> {
    let config_dir = home.join("config");
    std::fs::create_dir_all(&config_dir)
        .with_context(|| format!("cannot create {}", config_dir.display()))?;
    std::fs::copy(node.genesis, config_dir.join("genesis.json")).with_context(|| {
        format!(
            "cannot copy {} into {}",
            node.genesis.display(),
            config_dir.display()
        )
    })?;
    keys::write_node_key(&config_dir.join("node_key.json"), node.node_secret)?;
    let mut config = node.config;
    if let Some(k) = node.validator_key {
        keys::write_validator_key(&config_dir.join("validator_key.json"), k)?;
        config.consensus.validator_key = "config/validator_key.json".into();
    }
    let toml = config_dir.join("node.toml");
    std::fs::write(&toml, config.to_toml())
        .with_context(|| format!("cannot write {}", toml.display()))?;
    Ok(())
}

/// Writes `file` plus `bulk` bulk accounts to `path`, streamed (a million accounts take
/// about 60 MB and a couple of seconds), then loads it back as a node will: a testnet
/// never gets a genesis its nodes refuse.
pub fn write_genesis(path: &Path, file: &GenesisFile, bulk: u64) -> anyhow::Result<()> {
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

/// The secret key of testnet wallet account `name` (plaintext: testnet keys only).
pub(super) fn wallet_key(dir: &Path, name: &str) -> anyhow::Result<Keypair> {
    let path = dir.join("wallet/keys").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no wallet key {name} in {}: pass --from with one of the testnet's accounts",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a wallet key file", path.display()))?;
    let Some(secret) = v["secret_key"].as_str() else {
        bail!(
            "{}: no plaintext secret_key (an encrypted key: use `tally stake` with its password instead)",
            path.display()
        );
    };
    let secret: [u8; 32] = ledger::hash::from_hex_array(secret)
        .map_err(|e| anyhow::anyhow!("{}: secret_key: {e}", path.display()))?;
    Keypair::from_secret_bytes(&secret)
        .map_err(|e| anyhow::anyhow!("{}: secret_key: {e}", path.display()))
}

pub(super) fn write_prometheus(dir: &Path, nodes: &[NodeEntry]) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::config::Home;

    use super::*;

    fn args(dir: &Path, protocol: u32) -> InitArgs {
        InitArgs {
            dir: dir.to_path_buf(),
            validators: 3,
            full_nodes: 0,
            accounts: 2,
            genesis_accounts: 0,
            timeout_commit_ms: 500,
            base_ip: Ipv4Addr::new(127, 0, 0, 2),
            hosts: None,
            chain_id: "init-test".into(),
            protocol,
        }
    }

    /// `--protocol 2` writes a protocol-2 genesis whose validators are bonded by the funded
    /// accounts (round robin), so the wallet keys can unbond them; the default stays a
    /// protocol-1 genesis without operators.
    #[test]
    fn protocol_2_testnets_bond_each_validator_from_a_funded_account() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(&args(&tmp.path().join("v2"), 2)).unwrap();
        let g = Genesis::load(&dir.join("genesis.json")).unwrap();
        assert_eq!(g.params.protocol_version, ledger::types::PROTOCOL_2);
        let m = load_manifest(&dir).unwrap();
        let funded: Vec<String> = m.accounts.iter().map(|a| a.address.clone()).collect();
        assert_eq!(g.operators.len(), 3);
        for op in &g.operators {
            assert!(
                funded.contains(&to_hex(op)),
                "operator {} is not funded",
                to_hex(op)
            );
        }
        let dir = init(&args(&tmp.path().join("v1"), 1)).unwrap();
        let g = Genesis::load(&dir.join("genesis.json")).unwrap();
        assert_eq!(g.params.protocol_version, ledger::types::PROTOCOL_1);
        assert!(g.operators.is_empty());
    }

    #[test]
    fn write_home_lays_out_a_home_the_node_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let key = Keypair::generate();
        let genesis = tmp.path().join("genesis.json");
        let file = GenesisFile {
            chain_id: "home-test".into(),
            genesis_time_ms: 0,
            params: Params::default(),
            validators: vec![GenesisValidator {
                name: "v".into(),
                pubkey: to_hex(&key.public_key()),
                power: 10,
                operator: None,
            }],
            accounts: Vec::new(),
        };
        write_genesis(&genesis, &file, 0).unwrap();

        let secret = keys::random_secret();
        let validator = Home(tmp.path().join("v"));
        let mut config = node_config("v", "127.0.0.9", Ports::ANY);
        config.p2p.ban_duration_secs = 30;
        write_home(
            &validator.0,
            NodeHome {
                genesis: &genesis,
                node_secret: secret,
                validator_key: Some(&key),
                config,
            },
        )
        .unwrap();
        let loaded = NodeConfig::load(&validator.config_file(), []).unwrap();
        assert_eq!(loaded.moniker, "v");
        assert_eq!(loaded.rpc.listen, "127.0.0.9:0");
        assert_eq!(loaded.p2p.listen, vec!["/ip4/127.0.0.9/tcp/0".to_string()]);
        assert_eq!(loaded.p2p.ban_duration_secs, 30);
        assert_eq!(
            std::fs::read(validator.genesis_file()).unwrap(),
            std::fs::read(&genesis).unwrap()
        );
        assert_eq!(
            keys::read_node_key(&validator.node_key_file()).unwrap(),
            secret
        );
        let signing = keys::read_validator_key(&validator.resolve(&loaded.consensus.validator_key));
        assert_eq!(signing.unwrap().address(), key.address());

        let full = Home(tmp.path().join("f"));
        write_home(
            &full.0,
            NodeHome {
                genesis: &genesis,
                node_secret: keys::random_secret(),
                validator_key: None,
                config: node_config("f", "127.0.0.10", Ports::FIXED),
            },
        )
        .unwrap();
        let loaded = NodeConfig::load(&full.config_file(), []).unwrap();
        assert_eq!(loaded.rpc.listen, format!("127.0.0.10:{RPC_PORT}"));
        assert!(loaded.consensus.validator_key.is_empty());
        assert!(!full.0.join("config/validator_key.json").exists());
    }
}
