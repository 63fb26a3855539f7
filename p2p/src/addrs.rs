//! Addresses: the per-IP key the gate and the per-IP accounting use, and which announced
//! addresses are plausible enough to go into Kademlia.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};

/// Most addresses Kademlia keeps (and hands out) for one peer. A node has a few listen
/// addresses (TCP and QUIC, IPv4 and IPv6); a peer announcing hundreds would make every
/// lookup that returns it hand out its list.
pub const MAX_KAD_ADDRS_PER_PEER: usize = 8;

/// Where a connection comes from, for per-IP limits and accounting: an IPv4 address, or
/// the /64 of an IPv6 address (one host or one subscriber: anyone with an IPv6 /64 can use
/// 2^64 addresses). IPv4-mapped IPv6 addresses count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4(Ipv4Addr),
    V6Net([u8; 8]),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => {
                    let mut net = [0; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    IpKey::V6Net(net)
                }
            },
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpKey::V4(ip) => write!(f, "{ip}"),
            IpKey::V6Net(net) => {
                let mut octets = [0; 16];
                octets[..8].copy_from_slice(net);
                write!(f, "{}/64", Ipv6Addr::from(octets))
            }
        }
    }
}

/// The IP an address starts with.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The per-IP key of an address.
pub fn ip_key(addr: &Multiaddr) -> Option<IpKey> {
    ip_of(addr).map(IpKey::of)
}

/// Whether `addr`, announced by `peer`, is worth storing and handing out: an IP we could
/// reach (not unspecified, multicast, broadcast or link-local; loopback only when
/// `loopback_ok`, i.e. we listen on loopback ourselves) over a transport we speak (TCP, or
/// UDP + QUIC v1, on a non-zero port), optionally ending in `/p2p/<peer>` (that peer).
pub fn plausible(addr: &Multiaddr, peer: &PeerId, loopback_ok: bool) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(ip)) => {
            !(ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_link_local()
                || (ip.is_loopback() && !loopback_ok))
        }
        Some(Protocol::Ip6(ip)) => match ip.to_ipv4_mapped() {
            // Dialled as the IPv4 address it maps: judge it as one.
            Some(v4) => plausible(
                &addr
                    .iter()
                    .skip(1)
                    .fold(Multiaddr::empty().with(Protocol::Ip4(v4)), |a, p| a.with(p)),
                peer,
                loopback_ok,
            ),
            None => {
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                !(ip.is_unspecified()
                    || ip.is_multicast()
                    || link_local
                    || (ip.is_loopback() && !loopback_ok))
            }
        },
        _ => false,
    };
    if !ip_ok {
        return false;
    }
    let transport_ok = match it.next() {
        Some(Protocol::Tcp(port)) => port != 0,
        Some(Protocol::Udp(port)) => port != 0 && matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    transport_ok
        && match it.next() {
            None => true,
            Some(Protocol::P2p(id)) => id == *peer && it.next().is_none(),
            Some(_) => false,
        }
}

/// Where an address can be reached from: 0 the host itself, 1 a private network, 2 anywhere.
fn scope(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                0
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                1 // RFC 1918 and carrier-grade NAT
            } else {
                2
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                0
            } else if v6.segments()[0] & 0xfe00 == 0xfc00 {
                1 // unique local
            } else {
                2
            }
        }
    }
}

/// The announced addresses of `peer` that go into Kademlia: the plausible ones, at most
/// [`MAX_KAD_ADDRS_PER_PEER`], those most likely to work first: on the IP the peer reached
/// us from, then in the same scope (loopback, private, public) as that IP.
pub fn for_kademlia(
    peer: &PeerId,
    announced: impl IntoIterator<Item = Multiaddr>,
    seen_from: Option<IpAddr>,
    loopback_ok: bool,
) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = announced
        .into_iter()
        .filter(|a| plausible(a, peer, loopback_ok))
        .collect();
    addrs.sort();
    addrs.dedup();
    // Stable: by rank, otherwise the (sorted, so deterministic) order.
    addrs.sort_by_key(|a| match (seen_from, ip_of(a)) {
        (Some(seen), Some(ip)) if ip == seen => 0,
        (Some(seen), Some(ip)) if scope(ip) == scope(seen) => 1,
        _ => 2,
    });
    addrs.truncate(MAX_KAD_ADDRS_PER_PEER);
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_keys_group_ipv6_by_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        // Distinct loopback IPv4 addresses are distinct keys (one testnet node each).
        assert_ne!(
            IpKey::of("127.0.0.2".parse().unwrap()),
            IpKey::of("127.0.0.3".parse().unwrap())
        );
        assert_eq!(
            IpKey::of("::ffff:10.0.0.1".parse().unwrap()),
            IpKey::of("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn only_plausible_addresses_go_into_kademlia() {
        let peer = PeerId::random();
        let other = PeerId::random();
        for good in [
            "/ip4/10.1.2.3/tcp/26656",
            "/ip4/203.0.113.7/udp/26656/quic-v1",
            "/ip6/2001:db8::1/tcp/26656",
        ] {
            assert!(plausible(&ma(good), &peer, false), "{good}");
        }
        assert!(plausible(
            &ma(&format!("/ip4/10.1.2.3/tcp/1/p2p/{peer}")),
            &peer,
            false
        ));
        for bad in [
            "/ip4/0.0.0.0/tcp/26656".to_string(),
            "/ip6/::/tcp/26656".into(),
            "/ip4/224.0.0.251/tcp/26656".into(),
            "/ip4/255.255.255.255/tcp/26656".into(),
            "/ip4/169.254.1.1/tcp/26656".into(),
            "/ip6/fe80::1/tcp/26656".into(),
            "/ip6/ff02::1/tcp/26656".into(),
            "/ip4/127.0.0.1/tcp/26656".into(),
            "/ip6/::1/tcp/26656".into(),
            "/ip6/::ffff:127.0.0.1/tcp/26656".into(),
            "/ip4/10.1.2.3/tcp/0".into(),
            "/ip4/10.1.2.3/udp/26656".into(),
            "/ip4/10.1.2.3/udp/26656/quic".into(),
            "/ip4/10.1.2.3/tcp/26656/ws".into(),
            "/dns4/example.com/tcp/26656".into(),
            format!("/ip4/10.1.2.3/tcp/1/p2p/{other}"),
            format!("/ip4/10.1.2.3/tcp/1/p2p/{peer}/p2p-circuit"),
        ] {
            assert!(!plausible(&ma(&bad), &peer, false), "{bad}");
        }
        // Loopback is fine when we are on loopback ourselves (a local testnet).
        assert!(plausible(&ma("/ip4/127.0.0.5/tcp/1"), &peer, true));
    }

    #[test]
    fn kademlia_gets_a_bounded_list_seen_ip_first() {
        let peer = PeerId::random();
        let mut announced: Vec<Multiaddr> = (1..=30)
            .map(|i| ma(&format!("/ip4/10.0.0.{i}/tcp/4001")))
            .collect();
        announced.push(ma("/ip4/0.0.0.0/tcp/4001"));
        announced.push(ma("/ip4/192.0.2.9/tcp/4001"));
        announced.push(ma("/ip4/192.0.2.9/tcp/4001"));
        announced.push(ma("/ip4/198.51.100.3/tcp/4001"));
        let kept = for_kademlia(&peer, announced.clone(), "192.0.2.9".parse().ok(), false);
        assert_eq!(kept.len(), MAX_KAD_ADDRS_PER_PEER);
        assert_eq!(kept[0], ma("/ip4/192.0.2.9/tcp/4001"));
        assert_eq!(kept[1], ma("/ip4/198.51.100.3/tcp/4001"));
        assert!(kept[2..]
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/10.0.0.")));
        // Seen from a private address: the private ones first.
        let kept = for_kademlia(&peer, announced, "10.9.9.9".parse().ok(), false);
        assert!(kept
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/10.0.0.")));
    }
}
