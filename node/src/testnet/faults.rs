//! Live fault injection beyond `kill` / `restart`: network partitions, one-way links and
//! frozen processes. The state lives in `<dir>/faults.json` so the supervisor's table (a
//! different process) shows it, and so every verb rewrites each node's whole filter from
//! it instead of patching rules.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::netns::{self, Names};
use super::{check_index, load_manifest, node_pid, signal, Hosts, Manifest};

const FAULTS: &str = "faults.json";

/// What is currently broken in a testnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Directed links that drop every packet: (from node, to node).
    #[serde(default)]
    pub blocked: BTreeSet<(usize, usize)>,
    /// The verbs that made `blocked`, for people reading the table.
    #[serde(default)]
    pub network: Vec<String>,
    /// Nodes stopped with SIGSTOP.
    #[serde(default)]
    pub paused: BTreeSet<usize>,
}

impl Faults {
    /// What node `i` shows in the FAULT column: "paused", "cut 2,3" (both directions),
    /// "->4 dropped" (its packets to 4 dropped), "<-1 dropped" (1's packets to it).
    pub fn describe(&self, i: usize) -> String {
        let mut parts = Vec::new();
        if self.paused.contains(&i) {
            parts.push("paused".to_string());
        }
        let out: BTreeSet<usize> = self
            .blocked
            .iter()
            .filter(|(a, _)| *a == i)
            .map(|(_, b)| *b)
            .collect();
        let inn: BTreeSet<usize> = self
            .blocked
            .iter()
            .filter(|(_, b)| *b == i)
            .map(|(a, _)| *a)
            .collect();
        let join = |s: Vec<&usize>| {
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let both: Vec<&usize> = out.intersection(&inn).collect();
        let only_out: Vec<&usize> = out.difference(&inn).collect();
        let only_in: Vec<&usize> = inn.difference(&out).collect();
        if !both.is_empty() {
            parts.push(format!("cut {}", join(both)));
        }
        if !only_out.is_empty() {
            parts.push(format!("->{} dropped", join(only_out)));
        }
        if !only_in.is_empty() {
            parts.push(format!("<-{} dropped", join(only_in)));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join("; ")
        }
    }

    /// Node `i`'s filter: the addresses whose packets to it are dropped, and those its
    /// packets to are dropped.
    fn filter_of(&self, i: usize, ips: &[Ipv4Addr]) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) {
        let deny_in = self
            .blocked
            .iter()
            .filter(|(_, to)| *to == i)
            .filter_map(|(from, _)| ips.get(*from).copied())
            .collect();
        let deny_out = self
            .blocked
            .iter()
            .filter(|(from, _)| *from == i)
            .filter_map(|(_, to)| ips.get(*to).copied())
            .collect();
        (deny_in, deny_out)
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FAULTS)
}

/// The recorded faults; none when the file is missing or unreadable (a stale or damaged
/// file must never stop the table from drawing).
pub fn load(dir: &Path) -> Faults {
    std::fs::read_to_string(path(dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save(dir: &Path, f: &Faults) -> anyhow::Result<()> {
    if *f == Faults::default() {
        let _ = std::fs::remove_file(path(dir));
        return Ok(());
    }
    let tmp = dir.join(format!("{FAULTS}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(f)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path(dir))
        .with_context(|| format!("cannot write {}", path(dir).display()))
}

/// Forgets every fault (the namespaces and processes that carried them are gone).
pub fn clear(dir: &Path) {
    let _ = std::fs::remove_file(path(dir));
}

/// Node `i` was killed or restarted: it is no longer paused.
pub fn forget_paused(dir: &Path, i: usize) {
    let mut f = load(dir);
    if f.paused.remove(&i) {
        let _ = save(dir, &f);
    }
}

/// Parses "0,1,4" into node indices of `m`.
fn parse_group(m: &Manifest, text: &str) -> anyhow::Result<BTreeSet<usize>> {
    let mut group = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let i: usize = part.parse().with_context(|| {
            format!("partition group {text:?}: {part:?} is not a node index (e.g. 0,1 2,3,4)")
        })?;
        check_index(m, i)?;
        group.insert(i);
    }
    if group.is_empty() {
        bail!("partition group {text:?} names no node (write node indices like 0,1)");
    }
    Ok(group)
}

/// The directed links cut by a partition into `groups`: every pair in different groups,
/// both ways. Nodes in no group keep every link.
pub fn partition_links(groups: &[BTreeSet<usize>]) -> anyhow::Result<BTreeSet<(usize, usize)>> {
    if groups.len() < 2 {
        bail!("a partition needs at least two groups, e.g. `partition 0,1 2,3,4`");
    }
    let mut seen = BTreeSet::new();
    for g in groups {
        for i in g {
            if !seen.insert(*i) {
                bail!("node{i} is in two partition groups; each node may be in one");
            }
        }
    }
    let mut links = BTreeSet::new();
    for (ga, a) in groups.iter().enumerate() {
        for (gb, b) in groups.iter().enumerate() {
            if ga != gb {
                for i in a {
                    for j in b {
                        links.insert((*i, *j));
                    }
                }
            }
        }
    }
    Ok(links)
}

/// The network verbs work only on a running netns testnet, as root, with nft.
fn check_network_verb(dir: &Path, m: &Manifest, verb: &str) -> anyhow::Result<Names> {
    if m.hosts != Hosts::Netns {
        bail!(
            "`testnet {verb}` needs a testnet with one host per node (`tallyd testnet up --hosts netns`): {} runs its nodes on loopback addresses of one network stack, where a filter cuts only half of each link; nothing changed",
            dir.display()
        );
    }
    if let Some(problem) = netns::nft_problem() {
        bail!("`testnet {verb}` {problem}; nothing changed");
    }
    let names = Names::for_dir(dir);
    let (namespaces, _) = netns::leftovers(Some(&names.tag));
    if let Some(missing) = (0..m.nodes.len()).find(|i| !namespaces.contains(&names.ns(*i))) {
        bail!(
            "`testnet {verb}`: namespace {} of node{missing} does not exist: the testnet is not running; start it with `tallyd testnet start --dir {}`; nothing changed",
            names.ns(missing),
            dir.display()
        );
    }
    Ok(names)
}

/// Rewrites every node's filter from `f.blocked`, then records `f`.
fn apply_network(dir: &Path, m: &Manifest, names: &Names, f: &Faults) -> anyhow::Result<()> {
    let ips = m.ips()?;
    // The node with the most cuts first: an isolated node's own filter already cuts all
    // its links, so the fault starts with the first `nft` run, not the last (it matters
    // with 300 ms blocks: "isolate the proposer right after it proposed").
    let mut order: Vec<(usize, BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>)> = (0..m.nodes.len())
        .map(|i| {
            let (deny_in, deny_out) = f.filter_of(i, &ips);
            (i, deny_in, deny_out)
        })
        .collect();
    order.sort_by_key(|(i, a, b)| (std::cmp::Reverse(a.len() + b.len()), *i));
    for (i, deny_in, deny_out) in &order {
        netns::set_filter(names, *i, deny_in, deny_out)?;
    }
    save(dir, f)
}

pub fn partition(dir: &Path, groups: &[String]) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    let names = check_network_verb(dir, &m, "partition")?;
    let parsed = groups
        .iter()
        .map(|g| parse_group(&m, g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let links = partition_links(&parsed)?;
    let mut f = load(dir);
    f.blocked = links;
    f.network = vec![format!("partition {}", groups.join(" | "))];
    apply_network(dir, &m, &names, &f)?;
    println!(
        "partitioned {}: nothing passes between the groups (`tallyd testnet heal --dir {}` ends it)",
        groups.join(" | "),
        dir.display()
    );
    Ok(())
}

pub fn isolate(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let names = check_network_verb(dir, &m, "isolate")?;
    let rest: BTreeSet<usize> = (0..m.nodes.len()).filter(|j| *j != i).collect();
    let mut f = load(dir);
    f.blocked = partition_links(&[BTreeSet::from([i]), rest])?;
    f.network = vec![format!("isolate {i}")];
    apply_network(dir, &m, &names, &f)?;
    println!(
        "node{i} isolated from every other node (its RPC still answers); `tallyd testnet heal --dir {}` ends it",
        dir.display()
    );
    Ok(())
}

pub fn oneway(dir: &Path, from: usize, to: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, from)?;
    check_index(&m, to)?;
    if from == to {
        bail!("oneway {from} {to}: a node's link to itself cannot be cut; name two nodes");
    }
    let names = check_network_verb(dir, &m, "oneway")?;
    let mut f = load(dir);
    f.blocked.insert((from, to));
    f.network.push(format!("oneway {from}->{to}"));
    apply_network(dir, &m, &names, &f)?;
    println!(
        "packets from node{from} to node{to} are dropped (node{to} still reaches node{from}); `tallyd testnet heal --dir {}` ends it",
        dir.display()
    );
    Ok(())
}

pub fn heal(dir: &Path) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    let names = check_network_verb(dir, &m, "heal")?;
    let mut f = load(dir);
    f.blocked.clear();
    f.network.clear();
    apply_network(dir, &m, &names, &f)?;
    println!("every link healed (paused nodes stay paused: `tallyd testnet resume N`)");
    Ok(())
}

pub fn pause(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let Some(pid) = node_pid(dir, i) else {
        bail!("node{i} is not running; nothing to pause");
    };
    signal(pid, "STOP");
    let mut f = load(dir);
    f.paused.insert(i);
    save(dir, &f)?;
    println!(
        "node{i} (pid {pid}) frozen with SIGSTOP; `tallyd testnet resume {i} --dir {}` thaws it",
        dir.display()
    );
    Ok(())
}

pub fn resume(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let Some(pid) = node_pid(dir, i) else {
        forget_paused(dir, i);
        bail!("node{i} is not running; nothing to resume");
    };
    signal(pid, "CONT");
    forget_paused(dir, i);
    println!("node{i} (pid {pid}) resumed with SIGCONT");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_partition_cuts_every_link_between_groups_both_ways_and_no_other() {
        let links = partition_links(&[BTreeSet::from([0, 1]), BTreeSet::from([2, 3, 4])]).unwrap();
        assert_eq!(links.len(), 2 * 3 * 2);
        assert!(links.contains(&(0, 2)) && links.contains(&(4, 1)));
        assert!(!links.contains(&(0, 1)) && !links.contains(&(2, 3)));
        // A node in no group keeps every link.
        let links = partition_links(&[BTreeSet::from([0]), BTreeSet::from([1])]).unwrap();
        assert_eq!(links, BTreeSet::from([(0, 1), (1, 0)]));
        assert!(partition_links(&[BTreeSet::from([0, 1])]).is_err());
        assert!(partition_links(&[BTreeSet::from([0, 1]), BTreeSet::from([1, 2])]).is_err());
    }

    #[test]
    fn filters_and_descriptions_follow_the_blocked_links() {
        let ips: Vec<Ipv4Addr> = (2..7).map(|i| Ipv4Addr::new(198, 18, 3, i)).collect();
        let f = Faults {
            blocked: BTreeSet::from([(0, 1), (1, 0), (2, 3)]),
            network: vec![],
            paused: BTreeSet::from([4]),
        };
        let (inn, out) = f.filter_of(0, &ips);
        assert_eq!(inn, BTreeSet::from([ips[1]]));
        assert_eq!(out, BTreeSet::from([ips[1]]));
        let (inn, out) = f.filter_of(2, &ips);
        assert!(inn.is_empty());
        assert_eq!(out, BTreeSet::from([ips[3]]));
        assert_eq!(f.describe(0), "cut 1");
        assert_eq!(f.describe(2), "->3 dropped");
        assert_eq!(f.describe(3), "<-2 dropped");
        assert_eq!(f.describe(4), "paused");
        assert_eq!(Faults::default().describe(0), "-");
        // The file round-trips (tuples in a set as JSON arrays).
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Faults>(&text).unwrap(), f);
    }
}
