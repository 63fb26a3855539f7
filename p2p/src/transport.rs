//! TCP whose dials leave from the IP the node listens on.
//!
//! libp2p's TCP transport binds a dial socket at most to `0.0.0.0:<listen port>`, so the
//! kernel picks the source address. On a loopback testnet, where every node listens on
//! its own 127.x address, every TCP connection then came from 127.0.0.1, and everything
//! that works per IP (the gate's per-IP caps, per-IP accounting and IP bans, gossipsub's
//! P6) saw all nodes as one host: banning one attacker's IP would have dropped every peer
//! that had dialled us. A node that listens on a specific IP now dials from it, so its
//! connections come from the address it is known by (on loopback and on multi-homed hosts
//! alike). Listening, and dials for which no listen IP fits (a node listening on 0.0.0.0,
//! a loopback listener dialling another host), are plain libp2p TCP. QUIC already sends
//! from its listening socket.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use futures::FutureExt;
use libp2p::{
    core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent},
    multiaddr::Protocol,
    tcp, Multiaddr,
};

pub struct SourceBoundTcp {
    inner: tcp::tokio::Transport,
    /// The first specific IPv4 / IPv6 address the node listens on over TCP.
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl SourceBoundTcp {
    pub fn new(config: tcp::Config, listen: &[Multiaddr]) -> Self {
        let specific = |v4: bool| {
            listen.iter().find_map(|a| {
                let (ip, _) = tcp_socket_addr(a)?;
                (ip.is_ipv4() == v4 && !ip.is_unspecified()).then_some(ip)
            })
        };
        SourceBoundTcp {
            inner: tcp::tokio::Transport::new(config),
            v4: specific(true),
            v6: specific(false),
        }
    }

    /// The remote socket address and the local IP to dial it from, if one fits.
    fn source_for(&self, addr: &Multiaddr) -> Option<(SocketAddr, IpAddr)> {
        let (ip, port) = tcp_socket_addr(addr)?;
        if port == 0 || ip.is_unspecified() {
            return None;
        }
        let local = if ip.is_ipv4() { self.v4? } else { self.v6? };
        // A loopback source cannot reach another host, nor another host a loopback one.
        (local.is_loopback() == ip.is_loopback()).then_some((SocketAddr::new(ip, port), local))
    }
}

/// `/ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]` as an IP and a port.
fn tcp_socket_addr(addr: &Multiaddr) -> Option<(IpAddr, u16)> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Tcp(port) = it.next()? else {
        return None;
    };
    match it.next() {
        None | Some(Protocol::P2p(_)) if it.next().is_none() => Some((ip, port)),
        _ => None,
    }
}

impl Transport for SourceBoundTcp {
    type Output = tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = <tcp::tokio::Transport as Transport>::ListenerUpgrade;
    type Dial = <tcp::tokio::Transport as Transport>::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((remote, local)) = self.source_for(&addr) else {
            return self.inner.dial(addr, opts);
        };
        Ok(async move {
            let socket = if remote.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_nodelay(true)?;
            socket.bind(SocketAddr::new(local, 0))?;
            let stream = socket.connect(remote).await?;
            Ok(tcp::tokio::TcpStream(stream))
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn dials_from_the_matching_listen_ip() {
        let t = SourceBoundTcp::new(
            tcp::Config::default(),
            &[
                ma("/ip4/127.0.0.2/udp/0/quic-v1"),
                ma("/ip4/127.0.0.2/tcp/0"),
                ma("/ip6/::/tcp/0"),
            ],
        );
        let (remote, local) = t
            .source_for(&ma(
                "/ip4/127.0.0.3/tcp/7/p2p/12D3KooWEMUo3kg9gs4R42SfBMyb2bU9kVaNyDDcPjVTB9VA82D7",
            ))
            .unwrap();
        assert_eq!(remote, "127.0.0.3:7".parse().unwrap());
        assert_eq!(local, "127.0.0.2".parse::<IpAddr>().unwrap());
        // Another host, IPv6 (listening on ::), QUIC, port 0: plain libp2p TCP.
        for other in [
            "/ip4/10.0.0.1/tcp/7",
            "/ip6/::1/tcp/7",
            "/ip4/127.0.0.3/udp/7/quic-v1",
            "/ip4/127.0.0.3/tcp/0",
        ] {
            assert_eq!(t.source_for(&ma(other)), None, "{other}");
        }
        let any = SourceBoundTcp::new(tcp::Config::default(), &[ma("/ip4/0.0.0.0/tcp/1")]);
        assert_eq!(any.source_for(&ma("/ip4/127.0.0.3/tcp/7")), None);
    }
}
