//! `<dir>/testnet.json` (the manifest), the fixed ports and the directory layout.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub const P2P_PORT: u16 = 26656;
pub const RPC_PORT: u16 = 26657;
pub const METRICS_PORT: u16 = 26660;
pub(super) const MANIFEST: &str = "testnet.json";

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
    pub role: Role,
    pub ip: String,
    /// host:port
    pub rpc: String,
    /// host:port
    pub metrics: String,
    /// Multiaddr with /p2p/<peer id>.
    pub p2p: String,
    pub peer_id: String,
    pub validator_address: Option<String>,
    /// The wallet account that bonded this validator (`testnet add-validator`); genesis
    /// validators' operators are in genesis.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

/// What a node of the testnet is; `testnet.json` and the Prometheus labels spell it
/// `validator` / `full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds a validator key of genesis: votes and proposes.
    Validator,
    /// No validator key: follows the chain, serves RPC.
    #[serde(rename = "full")]
    FullNode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Validator => "validator",
            Role::FullNode => "full",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: the table and the banner align it with `{:<10}`.
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountEntry {
    pub name: String,
    pub address: String,
    pub balance: u64,
}

pub(super) fn load_manifest(dir: &Path) -> anyhow::Result<Manifest> {
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

/// Writes `<dir>/testnet.json` whole (a temporary file renamed over it: a reader never
/// sees half a manifest).
pub(super) fn save_manifest(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(m)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

pub(super) fn home(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}"))
}

pub(super) fn check_index(m: &Manifest, i: usize) -> anyhow::Result<()> {
    if i >= m.nodes.len() {
        bail!(
            "no node{i}: this testnet has node0..node{}",
            m.nodes.len().saturating_sub(1)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn roles_keep_the_manifest_spelling() {
        // Written by earlier versions and read by Prometheus relabelling and the fault suite.
        assert_eq!(serde_json::to_value(Role::Validator).unwrap(), "validator");
        assert_eq!(serde_json::to_value(Role::FullNode).unwrap(), "full");
        let r: Role = serde_json::from_str("\"full\"").unwrap();
        assert_eq!(r, Role::FullNode);
        assert_eq!(format!("[{:<10}]", Role::FullNode), "[full      ]");
    }
}
