//! `tallyd testnet add-validator` and `remove-validator` on a protocol-2 testnet: a new
//! node joins the validator set by a bond from a funded testnet account, and a validator
//! leaves it by unbonding, then stops once the set no longer holds it. Both talk to the
//! running nodes over their RPC, as the wallet does; nothing is changed behind the chain's
//! back.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::hash::to_hex;
use ledger::types::{Address, Payload, SignedTx, Tx, PROTOCOL_2};
use serde::de::DeserializeOwned;

use super::init::{node_config, wallet_key, write_home, write_prometheus, NodeHome, Ports};
use super::manifest::{check_index, home, load_manifest, save_manifest, Manifest, NodeEntry};
use super::manifest::{Hosts, Role, P2P_PORT};
use super::processes::{node_pid, stop_pids, SUPERVISOR_PID};
use super::{processes, read_pid, runtime};
use crate::keys;
use crate::netns;

/// How long a bond or unbond may take to commit, and the set to follow it (H+2).
const CHAIN_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Clone)]
pub struct AddValidatorArgs {
    /// The funded testnet account (a wallet key in <dir>/wallet/keys) that bonds and
    /// becomes the new validator's operator.
    #[arg(long, default_value = "account0")]
    pub from: String,
    /// Stake to bond [default: what each genesis validator has: its power x
    /// params.staking.stake_per_power].
    #[arg(long)]
    pub stake: Option<u64>,
    #[arg(long, default_value = "./testnet")]
    pub dir: std::path::PathBuf,
}

/// `tallyd testnet add-validator`: node N (the next index) with a fresh validator key,
/// started next to the others, then bonded; returns once the set of the next height
/// holds it.
pub fn add_validator(dir: &Path, a: &AddValidatorArgs) -> anyhow::Result<()> {
    let mut m = load_manifest(dir)?;
    let genesis = protocol_2_genesis(dir)?;
    let rpc = live_rpc(dir, &m)?;
    let operator = wallet_key(dir, &a.from)?;
    let stake = match a.stake {
        Some(s) => s,
        None => genesis_stake(&genesis)?,
    };
    let staking = genesis.params.staking();
    if stake < staking.min_validator_stake {
        bail!(
            "--stake {stake} is below params.staking.min_validator_stake ({}): such a validator never enters the set",
            staking.min_validator_stake
        );
    }

    let i = m.nodes.len();
    let first: Ipv4Addr = m.nodes[0]
        .ip
        .parse()
        .with_context(|| format!("testnet.json: node0.ip {:?} is not IPv4", m.nodes[0].ip))?;
    if (u32::from(first) & 0xff) as usize + i > 254 {
        bail!("the testnet's /24 has no address left for node{i}");
    }
    let ip = Ipv4Addr::from(u32::from(first) + i as u32);
    if m.hosts == Hosts::Netns {
        if read_pid(&dir.join(SUPERVISOR_PID)).is_none() {
            bail!(
                "a netns testnet's new node needs the running supervisor's bridge: start it with `tallyd testnet start --dir {}` first",
                dir.display()
            );
        }
        netns::add_host(&netns::Names::for_dir(dir), i, ip)?;
    }

    // The node's home and manifest entry, like `init` lays out the others.
    let key = Keypair::generate();
    let secret = keys::random_secret();
    let peer_id = tally_p2p::peer_id_from_secret(secret)
        .map_err(|e| anyhow::anyhow!("cannot derive a peer id: {e}"))?
        .to_string();
    let name = format!("node{i}");
    let mut config = node_config(&name, &ip.to_string(), Ports::FIXED);
    config.p2p.bootstrap = m.nodes.iter().map(|n| n.p2p.clone()).collect();
    write_home(
        &home(dir, i),
        NodeHome {
            genesis: &dir.join("genesis.json"),
            node_secret: secret,
            validator_key: Some(&key),
            config,
        },
    )?;
    m.nodes.push(NodeEntry {
        name: name.clone(),
        role: Role::Validator,
        rpc: format!("{ip}:{}", super::RPC_PORT),
        metrics: format!("{ip}:{}", super::METRICS_PORT),
        p2p: format!("/ip4/{ip}/tcp/{P2P_PORT}/p2p/{peer_id}"),
        ip: ip.to_string(),
        peer_id,
        validator_address: Some(to_hex(&key.address())),
        operator: Some(a.from.clone()),
    });
    save_manifest(dir, &m)?;
    write_prometheus(dir, &m.nodes)?;
    let pid = processes::start_and_wait(dir, &m, i)?;
    println!("{name} started (pid {pid}), bootstrapped from the testnet's nodes");

    let client = Client::new(&rpc)?;
    runtime()?.block_on(async {
        println!(
            "{name}: bonding {stake} from {} to its key {}",
            a.from,
            to_hex(&key.public_key())
        );
        let payload = Payload::Bond {
            validator: key.public_key(),
            amount: stake,
        };
        let height = client.send(&genesis, &operator, payload).await?;
        println!("{name}: bond committed at height {height}; waiting for the set to hold it (from height {})", height + 2);
        let joined = client
            .wait_set(&key.address(), true)
            .await
            .with_context(|| format!("{name} bonded but did not enter the validator set"))?;
        println!(
            "{name} is a validator from height {joined} (RPC http://{}, log {})",
            m.nodes[i].rpc,
            home(dir, i).join("node.log").display()
        );
        Ok(())
    })
}

/// `tallyd testnet remove-validator N`: its operator unbonds all of its stake; once the
/// set of the next height no longer holds it, the node is stopped.
pub fn remove_validator(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let genesis = protocol_2_genesis(dir)?;
    let node = &m.nodes[i];
    let Some(address) = node.validator_address.as_deref() else {
        bail!("node{i} is a full node: it holds no validator key to unbond");
    };
    let address: Address = ledger::hash::from_hex_array(address)
        .map_err(|e| anyhow::anyhow!("testnet.json: node{i}.validator_address: {e}"))?;
    let key_path = home(dir, i).join("config/validator_key.json");
    let key = keys::read_validator_key(&key_path)?;
    let operator_name = operator_of(&m, &genesis, i, &address)?;
    let operator = wallet_key(dir, &operator_name)?;
    let rpc = live_rpc(dir, &m)?;
    let client = Client::new(&rpc)?;
    runtime()?.block_on(async {
        println!("node{i}: {operator_name} unbonds all of its stake");
        let payload = Payload::Unbond {
            validator: key.public_key(),
            // "Up to" the bond: more unbonds all of it.
            amount: u64::MAX,
        };
        let height = client.send(&genesis, &operator, payload).await?;
        println!("node{i}: unbond committed at height {height}; waiting for the set to drop it");
        let gone = client
            .wait_set(&address, false)
            .await
            .with_context(|| format!("node{i} unbonded but is still in the validator set"))?;
        println!("node{i} left the validator set at height {gone}; stopping it");
        Ok::<(), anyhow::Error>(())
    })?;
    if let Some(pid) = node_pid(dir, i) {
        stop_pids(&[(pid, home(dir, i))], &mut [], false);
    }
    println!(
        "node{i} stopped (its stake is paid back to {operator_name} after params.staking.unbonding_blocks = {} blocks)",
        genesis.params.staking().unbonding_blocks
    );
    Ok(())
}

fn protocol_2_genesis(dir: &Path) -> anyhow::Result<Genesis> {
    let genesis = Genesis::load(&dir.join("genesis.json"))?;
    if genesis.params.protocol_version != PROTOCOL_2 {
        bail!(
            "this testnet's chain runs protocol {}: validators join and leave on chain only on protocol 2; create one with `tallyd testnet init --protocol 2 --dir <new dir>`",
            genesis.params.protocol_version
        );
    }
    Ok(genesis)
}

/// Each genesis validator's stake: power x stake_per_power (they all have the same power).
fn genesis_stake(genesis: &Genesis) -> anyhow::Result<u64> {
    let power = genesis
        .validators
        .validators()
        .first()
        .map_or(1, |v| v.power);
    power
        .checked_mul(genesis.params.staking().stake_per_power)
        .context("genesis power x stake_per_power overflows; pass --stake")
}

/// The wallet account that operates validator `address` of node `i`: recorded by
/// add-validator, or the genesis operator's account.
fn operator_of(
    m: &Manifest,
    genesis: &Genesis,
    i: usize,
    address: &Address,
) -> anyhow::Result<String> {
    if let Some(name) = &m.nodes[i].operator {
        return Ok(name.clone());
    }
    let operator = genesis
        .validators
        .validators()
        .iter()
        .position(|v| &v.address == address)
        .and_then(|k| genesis.operators.get(k))
        .with_context(|| format!("node{i}'s validator has no operator in genesis"))?;
    let hex = to_hex(operator);
    m.accounts
        .iter()
        .find(|acc| acc.address == hex)
        .map(|acc| acc.name.clone())
        .with_context(|| {
            format!("node{i}'s operator {hex} is not one of this testnet's wallet accounts")
        })
}

/// The RPC address of a running node of the testnet.
fn live_rpc(dir: &Path, m: &Manifest) -> anyhow::Result<String> {
    (0..m.nodes.len())
        .find(|&i| node_pid(dir, i).is_some())
        .map(|i| format!("http://{}", m.nodes[i].rpc))
        .with_context(|| {
            format!(
                "no node of this testnet is running: start it with `tallyd testnet start --dir {}`",
                dir.display()
            )
        })
}

/// Just enough of the wallet's RPC client to send one staking tx and follow the set.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {url}: unexpected answer"))
    }

    /// Signs `payload` from `from` with the next nonce and the chain's min fee, submits it
    /// and waits until it is committed; the height it was committed at.
    async fn send(
        &self,
        genesis: &Genesis,
        from: &Keypair,
        payload: Payload,
    ) -> anyhow::Result<u64> {
        let account: tally_api::Account = self
            .get(&format!("/v1/accounts/{}", to_hex(&from.address())))
            .await?;
        let stx: SignedTx = from.sign_tx(Tx {
            chain_id: genesis.chain_id.clone(),
            from: from.public_key(),
            nonce: account.next_nonce(),
            fee: genesis.params.min_fee,
            payload,
        });
        let url = format!("{}/v1/txs", self.base);
        let resp = self
            .http
            .post(&url)
            .json(&tally_api::SubmitTx {
                tx: hex::encode(ledger::codec::encode(&stx)),
            })
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("the node refused the tx: {status}: {text}");
        }
        let id = to_hex(&stx.id());
        let deadline = Instant::now() + CHAIN_WAIT;
        loop {
            let st: tally_api::TxStatus = self.get(&format!("/v1/txs/{id}")).await?;
            if let (tally_api::TxState::Committed, Some(h)) = (st.status, st.height) {
                return Ok(h);
            }
            if Instant::now() > deadline {
                bail!(
                    "tx {id} was not committed within {CHAIN_WAIT:?} (status {})",
                    st.status.as_str()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the set of the next height holds `address` (`present`) or not; that
    /// height.
    async fn wait_set(&self, address: &Address, present: bool) -> anyhow::Result<u64> {
        let hex = to_hex(address);
        let deadline = Instant::now() + CHAIN_WAIT;
        loop {
            let tip: tally_api::Status = self.get("/v1/status").await?;
            let next = tip.height + 1;
            let set: tally_api::Validators =
                self.get(&format!("/v1/validators?height={next}")).await?;
            if set.validators.iter().any(|v| v.address == hex) == present {
                return Ok(next);
            }
            if Instant::now() > deadline {
                bail!(
                    "the set of height {next} still {} it after {CHAIN_WAIT:?}",
                    if present { "lacks" } else { "holds" }
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::InitArgs;
    use super::*;

    fn init_args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_path_buf(),
            validators: 2,
            full_nodes: 0,
            accounts: 2,
            genesis_accounts: 0,
            timeout_commit_ms: 500,
            base_ip: Ipv4Addr::new(127, 0, 0, 2),
            hosts: None,
            chain_id: "staking-verbs".into(),
            protocol: 1,
        }
    }

    #[test]
    fn the_verbs_refuse_a_protocol_1_testnet_and_say_how_to_make_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::init(&init_args(tmp.path())).unwrap();
        let args = AddValidatorArgs {
            from: "account0".into(),
            stake: None,
            dir: dir.clone(),
        };
        for e in [
            add_validator(&dir, &args).unwrap_err(),
            remove_validator(&dir, 0).unwrap_err(),
        ] {
            let e = format!("{e:#}");
            assert!(
                e.contains("protocol 1") && e.contains("--protocol 2"),
                "{e}"
            );
        }
        // Nothing was added.
        assert_eq!(load_manifest(&dir).unwrap().nodes.len(), 2);
        assert!(!home(&dir, 2).exists());
    }

    #[test]
    fn testnet_wallet_keys_are_read_back_and_a_missing_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::init(&init_args(tmp.path())).unwrap();
        let m = load_manifest(&dir).unwrap();
        let key = wallet_key(&dir, "account1").unwrap();
        assert_eq!(to_hex(&key.address()), m.accounts[1].address);
        let e = format!("{:#}", wallet_key(&dir, "account9").unwrap_err());
        assert!(e.contains("account9") && e.contains("--from"), "{e}");
    }
}
