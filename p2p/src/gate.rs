//! Connection gate: refuses connections from banned peers and banned IPs, and caps inbound
//! connections per IP, both established and still in their handshake. (libp2p's
//! `connection-limits` caps totals and per peer, not per IP.) "Per IP" is per IPv4 address
//! and per IPv6 /64 ([`IpKey`]).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fmt,
    task::{Context, Poll},
    time::Instant,
};

use libp2p::{
    core::{transport::PortUse, ConnectedPoint, Endpoint},
    swarm::{
        behaviour::ConnectionEstablished, dummy, ConnectionClosed, ConnectionDenied, ConnectionId,
        FromSwarm, ListenFailure, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
    Multiaddr, PeerId,
};

use crate::addrs::{ip_key, IpKey};

/// Why the gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Banned,
    IpBanned,
    TooManyFromIp { limit: u32 },
    TooManyPendingFromIp { limit: u32 },
}

impl Denied {
    /// Metric label (`tally_p2p_connections_denied_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Banned => "banned",
            Denied::IpBanned => "ip_banned",
            Denied::TooManyFromIp { .. } => "per_ip_limit",
            Denied::TooManyPendingFromIp { .. } => "per_ip_pending_limit",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Banned => f.write_str("peer is banned"),
            Denied::IpBanned => f.write_str("IP is banned"),
            Denied::TooManyFromIp { limit } => {
                write!(f, "more than {limit} inbound connections from one IP")
            }
            Denied::TooManyPendingFromIp { limit } => {
                write!(f, "more than {limit} inbound handshakes from one IP")
            }
        }
    }
}

impl std::error::Error for Denied {}

pub struct Gate {
    max_per_ip: u32,
    max_pending_per_ip: u32,
    banned: HashMap<PeerId, Instant>,
    banned_ips: HashMap<IpKey, Instant>,
    /// Established inbound connections.
    inbound_ip: HashMap<ConnectionId, IpKey>,
    per_ip: HashMap<IpKey, HashSet<ConnectionId>>,
    /// Inbound connections in their handshake.
    pending_ip: HashMap<ConnectionId, IpKey>,
    pending_per_ip: HashMap<IpKey, u32>,
}

fn deny(d: Denied) -> ConnectionDenied {
    ConnectionDenied::new(d)
}

impl Gate {
    pub fn new(max_per_ip: u32, max_pending_per_ip: u32) -> Self {
        Gate {
            max_per_ip,
            max_pending_per_ip,
            banned: HashMap::new(),
            banned_ips: HashMap::new(),
            inbound_ip: HashMap::new(),
            per_ip: HashMap::new(),
            pending_ip: HashMap::new(),
            pending_per_ip: HashMap::new(),
        }
    }

    pub fn ban(&mut self, peer: PeerId, until: Instant) {
        self.banned.insert(peer, until);
    }

    pub fn unban(&mut self, peer: &PeerId) {
        self.banned.remove(peer);
    }

    pub fn ban_ip(&mut self, ip: IpKey, until: Instant) {
        self.banned_ips.insert(ip, until);
    }

    pub fn unban_ip(&mut self, ip: &IpKey) {
        self.banned_ips.remove(ip);
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned
            .get(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    fn check_peer(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.is_banned(peer) {
            return Err(deny(Denied::Banned));
        }
        Ok(())
    }

    fn check_ip_ban(&self, ip: Option<IpKey>) -> Result<(), ConnectionDenied> {
        let banned = ip
            .and_then(|ip| self.banned_ips.get(&ip))
            .is_some_and(|until| *until > Instant::now());
        if banned {
            return Err(deny(Denied::IpBanned));
        }
        Ok(())
    }

    fn check_established(&self, ip: IpKey) -> Result<(), ConnectionDenied> {
        let established = self.per_ip.get(&ip).map_or(0, HashSet::len);
        if established >= self.max_per_ip as usize {
            return Err(deny(Denied::TooManyFromIp {
                limit: self.max_per_ip,
            }));
        }
        Ok(())
    }

    fn end_pending(&mut self, connection_id: ConnectionId) {
        if let Some(ip) = self.pending_ip.remove(&connection_id) {
            if let Some(n) = self.pending_per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending_per_ip.remove(&ip);
                }
            }
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        // Refused before the handshake: a flood from one IP costs us no crypto, and its
        // silent connections cannot take every handshake slot.
        let Some(ip) = ip_key(remote) else {
            return Ok(());
        };
        self.check_ip_ban(Some(ip))?;
        self.check_established(ip)?;
        let pending = self.pending_per_ip.get(&ip).copied().unwrap_or(0);
        if pending >= self.max_pending_per_ip {
            return Err(deny(Denied::TooManyPendingFromIp {
                limit: self.max_pending_per_ip,
            }));
        }
        // Counted until it is established or fails (`on_swarm_event`); a later behaviour
        // that refuses it also ends in a `ListenFailure`.
        self.pending_ip.insert(connection_id, ip);
        *self.pending_per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        let ip = ip_key(remote);
        self.check_ip_ban(ip)?;
        if let Some(ip) = ip {
            self.check_established(ip)?;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer {
            self.check_peer(&peer)?;
        }
        Ok(vec![])
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        self.check_ip_ban(ip_key(addr))?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => {
                self.end_pending(connection_id);
                if let Some(ip) = ip_key(send_back_addr) {
                    self.inbound_ip.insert(connection_id, ip);
                    self.per_ip.entry(ip).or_default().insert(connection_id);
                }
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.end_pending(connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                if let Some(ip) = self.inbound_ip.remove(&connection_id) {
                    if let Some(set) = self.per_ip.get_mut(&ip) {
                        set.remove(&connection_id);
                        if set.is_empty() {
                            self.per_ip.remove(&ip);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn pending_handshakes_are_capped_per_ip_and_released() {
        let mut gate = Gate::new(8, 2);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        let flood = addr("/ip4/127.0.9.9/tcp/5555");
        let mut next = 100;
        let mut id = || {
            next += 1;
            ConnectionId::new_unchecked(next)
        };
        let (c1, c2, c3) = (id(), id(), id());
        assert!(gate
            .handle_pending_inbound_connection(c1, &local, &flood)
            .is_ok());
        assert!(gate
            .handle_pending_inbound_connection(c2, &local, &flood)
            .is_ok());
        let refused = gate
            .handle_pending_inbound_connection(c3, &local, &flood)
            .unwrap_err();
        assert_eq!(
            refused.downcast_ref::<Denied>(),
            Some(&Denied::TooManyPendingFromIp { limit: 2 })
        );
        // Another IP is not affected.
        let other = addr("/ip4/127.0.9.10/tcp/1");
        assert!(gate
            .handle_pending_inbound_connection(id(), &local, &other)
            .is_ok());
        // A failed handshake frees its slot.
        gate.end_pending(c1);
        assert!(gate
            .handle_pending_inbound_connection(c3, &local, &flood)
            .is_ok());
    }

    #[test]
    fn banned_ip_is_refused_before_the_handshake() {
        let mut gate = Gate::new(8, 4);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        let remote = addr("/ip6/2001:db8:0:1::5/tcp/7");
        let sibling = addr("/ip6/2001:db8:0:1::6/tcp/7");
        let ip = ip_key(&remote).unwrap();
        gate.ban_ip(ip, Instant::now() + std::time::Duration::from_secs(60));
        let refused = gate
            .handle_pending_inbound_connection(ConnectionId::new_unchecked(1), &local, &sibling)
            .unwrap_err();
        assert_eq!(refused.downcast_ref::<Denied>(), Some(&Denied::IpBanned));
        gate.unban_ip(&ip);
        assert!(gate
            .handle_pending_inbound_connection(ConnectionId::new_unchecked(2), &local, &sibling)
            .is_ok());
    }
}
