//! `--hosts netns`: every node of a testnet on its own host, i.e. in its own network
//! namespace, so a filter on a node's address cuts whole links (loopback nodes share one
//! network stack: libp2p dials leave from 127.0.0.1 and a filter sees half of each link).
//!
//! ```text
//!  root namespace                         namespace tlyHHHHHH-nI (one per node)
//!  bridge tlyHHHHHH-br  198.18.X.1/24 ──┬── veth tlyHHHHHH-vI ═══ tlyHHHHHH-pI 198.18.X.(2+I)/24
//!  (RPC clients, wallet, Prometheus)    └── ...                   lo; table inet tally_fault
//! ```
//!
//! Every name starts with `tly` and six hex digits of SHA-256 of the canonical testnet
//! directory, so `tallyd testnet cleanup` finds a crashed supervisor's leftovers by name.
//! Partitions are nftables rules in one table of ours ([`FAULT_TABLE`]) inside the nodes'
//! namespaces; the root namespace's rules are never touched. The bridge does not hand its
//! traffic to the root namespace's iptables (`nf_call_iptables 0`): a host firewall with a
//! FORWARD policy of DROP would otherwise cut the nodes apart.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The nftables table we own in each node's namespace.
pub const FAULT_TABLE: &str = "tally_fault";
/// Every name we give a namespace, veth or bridge starts with this.
pub const PREFIX: &str = "tly";
/// RFC 2544's benchmarking range 198.18.0.0/15: 512 /24 subnets, one per testnet.
const RANGE_BASE: u32 = 0xC612_0000;
const SUBNETS: u32 = 512;

/// The kernel object names of one testnet: `tly` + 6 hex digits of its directory's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub tag: String,
}

impl Names {
    pub fn for_dir(dir: &Path) -> Self {
        let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
        Self {
            tag: format!("{PREFIX}{}", hex::encode(&digest[..3])),
        }
    }
    /// At most 15 characters (IFNAMSIZ - 1) for up to 1000 nodes.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.tag)
    }
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }
    /// The root namespace's end of node `i`'s veth pair (a port of the bridge).
    pub fn veth_host(&self, i: usize) -> String {
        format!("{}-v{i}", self.tag)
    }
    /// The end inside node `i`'s namespace, which carries its address.
    pub fn veth_node(&self, i: usize) -> String {
        format!("{}-p{i}", self.tag)
    }
    /// The first subnet to try for this testnet (spread by the hash, so two testnets in
    /// different directories rarely even try the same one).
    fn preferred_subnet(&self) -> u32 {
        let n = u32::from_str_radix(&self.tag[PREFIX.len()..], 16).unwrap_or(0);
        n % SUBNETS
    }
}

/// Whether `name` is one of ours: `tly` + 6 lowercase hex digits + `-`.
pub fn is_ours(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    rest.len() > 7
        && rest.as_bytes()[6] == b'-'
        && rest[..6]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn in_range(ip: Ipv4Addr) -> bool {
    u32::from(ip) & 0xFFFE_0000 == RANGE_BASE
}

/// The bridge address of a testnet whose node 0 is `base`: the subnet's `.1`.
pub fn bridge_ip(base: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(base) & 0xFFFF_FF00) | 1)
}

/// Address of node 0 in a /24 of 198.18.0.0/15 that no interface of the root namespace
/// uses yet (another netns testnet's bridge), trying this testnet's preferred one first.
pub fn pick_base_ip(names: &Names) -> anyhow::Result<Ipv4Addr> {
    let used = root_addresses().unwrap_or_default();
    let start = names.preferred_subnet();
    for k in 0..SUBNETS {
        let subnet = RANGE_BASE + (((start + k) % SUBNETS) << 8);
        if !used.iter().any(|ip| u32::from(*ip) & 0xFFFF_FF00 == subnet) {
            return Ok(Ipv4Addr::from(subnet | 2));
        }
    }
    bail!("every /24 of 198.18.0.0/15 is in use by an interface; run `tallyd testnet cleanup`")
}

/// IPv4 addresses on the root namespace's interfaces.
fn root_addresses() -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = ip(&["-4", "-o", "addr", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Why this process cannot make namespaces, if it cannot.
pub fn capability_problem() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, veths and nftables); run it as root".into());
    }
    if !command_exists("ip") {
        return Some("needs `ip` (iproute2); install it (make bootstrap does, as root)".into());
    }
    None
}

/// Why the partition verbs cannot run here, if they cannot.
pub fn nft_problem() -> Option<String> {
    if let Some(p) = capability_problem() {
        return Some(p);
    }
    if !command_exists("nft") {
        return Some("needs `nft` (nftables); install it (make bootstrap does, as root)".into());
    }
    None
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
}

/// Runs `ip <args>`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the bridge, one namespace and veth pair per node (`ips[i]` inside namespace
/// i), after removing whatever an earlier run of this testnet left behind.
pub fn setup(names: &Names, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
    let Some(first) = ips.first() else {
        bail!("no nodes");
    };
    teardown(names);
    let br = names.bridge();
    let bridge_addr = format!("{}/24", bridge_ip(*first));
    ip(&["link", "add", &br, "type", "bridge"])?;
    // Best effort: without br_netfilter the attribute is moot.
    let _ = ip(&[
        "link",
        "set",
        &br,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
    ]);
    ip(&["addr", "add", &bridge_addr, "dev", &br])?;
    ip(&["link", "set", &br, "up"])?;
    for (i, node_ip) in ips.iter().enumerate() {
        add_host(names, i, *node_ip)?;
    }
    // The bridge forwards only once its ports have left the listening state; wait until
    // the root namespace reaches node 0's address on the link layer (a few ms normally).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ip(&["-o", "link", "show", &br])
            .is_ok_and(|s| s.contains("state UP") || s.contains(",UP"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Host `i` of the testnet: namespace `names.ns(i)` with `node_ip` on its end of a veth pair
/// whose other end is a port of the (existing) bridge. Also for a node added to a running
/// testnet (the fault suite's joiners).
pub fn add_host(names: &Names, i: usize, node_ip: Ipv4Addr) -> anyhow::Result<()> {
    let ns = names.ns(i);
    let (host, node) = (names.veth_host(i), names.veth_node(i));
    ip(&["netns", "add", &ns])?;
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &node])?;
    ip(&["link", "set", &node, "netns", &ns])?;
    ip(&["link", "set", &host, "master", &names.bridge(), "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{node_ip}/24"),
        "dev",
        &node,
    ])?;
    ip(&["-n", &ns, "link", "set", &node, "up"])?;
    Ok(())
}

/// Undoes [`add_host`] for host `i` alone: stops what still runs in its namespace, deletes
/// the namespace (which takes its veth end) and the bridge's end if it is still there.
pub fn remove_host(names: &Names, i: usize) {
    let ns = names.ns(i);
    let pids = ns_pids(&ns);
    if !pids.is_empty() {
        stop_pids_by_signal(&pids);
    }
    let _ = ip(&["netns", "delete", &ns]);
    let host = names.veth_host(i);
    if ip(&["link", "show", &host]).is_ok() {
        let _ = ip(&["link", "delete", &host]);
    }
}

/// The names of our namespaces and links that exist now, restricted to `tag` when given.
pub fn leftovers(tag: Option<&str>) -> (Vec<String>, Vec<String>) {
    let matches = |n: &str| is_ours(n) && tag.is_none_or(|t| n.starts_with(&format!("{t}-")));
    let namespaces = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| matches(n))
        .map(str::to_string)
        .collect();
    let links = ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // "12: tly0a1b2c-v0@if11: <BROADCAST,...": the name is the second field.
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .filter(|n| matches(n))
        .collect();
    (namespaces, links)
}

/// Stops processes known only by pid (found in one of our namespaces after a crash):
/// SIGTERM (and SIGCONT, for a paused one), up to 10 s, then SIGKILL.
fn stop_pids_by_signal(pids: &[u32]) {
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
        })
    };
    for pid in pids {
        signal(*pid, "TERM");
        signal(*pid, "CONT");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids.iter().filter(|p| alive(**p)) {
        eprintln!("pid {pid} did not stop within 10 s of SIGTERM: SIGKILL");
        signal(*pid, "KILL");
    }
}

/// Sends `sig` (a `kill` signal name: TERM, KILL, STOP, CONT) to `pid`; errors ignored.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Pids of the processes running in namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes our namespaces (which takes their veth ends and nft tables with them), veths
/// and bridge for `names`. Processes still inside a namespace are killed first: the
/// caller stops nodes cleanly before; what is left here is a crashed run's.
pub fn teardown(names: &Names) -> Vec<String> {
    remove(Some(&names.tag))
}

/// [`teardown`] by name: `tag` for one testnet, `None` for every `tly*` object.
pub fn remove(tag: Option<&str>) -> Vec<String> {
    let (namespaces, links) = leftovers(tag);
    let mut pids: Vec<u32> = namespaces.iter().flat_map(|ns| ns_pids(ns)).collect();
    pids.sort_unstable();
    pids.dedup();
    if !pids.is_empty() {
        stop_pids_by_signal(&pids);
    }
    for ns in &namespaces {
        let _ = ip(&["netns", "delete", ns]);
    }
    // Veths go with their namespace (the kernel may take a moment); the bridge, and a
    // veth whose namespace vanished half-way through a setup, are deleted by hand.
    let (_, mut left) = leftovers(tag);
    left.sort_by_key(|l| l.ends_with("-br"));
    for l in &left {
        let _ = ip(&["link", "delete", l]);
    }
    let (ns_left, links_left) = leftovers(tag);
    let mut removed: Vec<String> = namespaces
        .iter()
        .filter(|n| !ns_left.contains(n))
        .map(|n| format!("namespace {n}"))
        .collect();
    removed.extend(
        links
            .iter()
            .filter(|l| !links_left.contains(l))
            .map(|l| format!("link {l}")),
    );
    removed
}

/// Sets node `i`'s filter to drop everything from `deny_in` and to `deny_out` (addresses
/// of other nodes), replacing what our table held; empty sets remove the table. One
/// `nft -f` transaction, so a node never runs with half a rule set.
pub fn set_filter(
    names: &Names,
    i: usize,
    deny_in: &BTreeSet<Ipv4Addr>,
    deny_out: &BTreeSet<Ipv4Addr>,
) -> anyhow::Result<()> {
    let ns = names.ns(i);
    let mut script = format!("table inet {FAULT_TABLE}\ndelete table inet {FAULT_TABLE}\n");
    if !deny_in.is_empty() || !deny_out.is_empty() {
        let set = |s: &BTreeSet<Ipv4Addr>| {
            s.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        script.push_str(&format!("table inet {FAULT_TABLE} {{\n"));
        script
            .push_str("  chain input {\n    type filter hook input priority -10; policy accept;\n");
        if !deny_in.is_empty() {
            script.push_str(&format!("    ip saddr {{ {} }} drop\n", set(deny_in)));
        }
        script.push_str(
            "  }\n  chain output {\n    type filter hook output priority -10; policy accept;\n",
        );
        if !deny_out.is_empty() {
            script.push_str(&format!("    ip daddr {{ {} }} drop\n", set(deny_out)));
        }
        script.push_str("  }\n}\n");
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ip netns exec ... nft`")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in namespace {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_fit_in_an_interface_name_and_are_recognised() {
        let n = Names::for_dir(Path::new("/tmp/some/testnet"));
        assert_eq!(n.tag.len(), 9);
        for name in [n.bridge(), n.ns(999), n.veth_host(999), n.veth_node(999)] {
            assert!(name.len() <= 15, "{name} is longer than IFNAMSIZ - 1");
            assert!(is_ours(&name), "{name} not recognised as ours");
        }
        assert_ne!(n, Names::for_dir(Path::new("/tmp/some/other")));
        for name in [
            "tly",
            "tlyzzzzzz-br",
            "tly0a1b2-br",
            "eth0",
            "tly0a1b2c3-br",
            "tly0a1b2c-",
        ] {
            assert!(!is_ours(name), "{name} taken for ours");
        }
    }

    #[test]
    fn subnets_stay_in_the_benchmarking_range() {
        for s in 0..SUBNETS {
            let base = Ipv4Addr::from(RANGE_BASE + (s << 8) + 2);
            assert!(in_range(base) && in_range(bridge_ip(base)), "{base}");
            assert_eq!(bridge_ip(base).octets()[3], 1);
        }
        assert!(!in_range("198.20.0.1".parse().unwrap()));
        assert!(!in_range("127.0.0.2".parse().unwrap()));
    }
}
