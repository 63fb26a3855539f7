//! Connection gate: refuses connections from banned peers and caps inbound connections
//! per IP address. (libp2p's `connection-limits` caps totals and per peer, not per IP.)

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fmt,
    net::IpAddr,
    task::{Context, Poll},
    time::Instant,
};

use libp2p::{
    core::{multiaddr::Protocol, transport::PortUse, ConnectedPoint, Endpoint},
    swarm::{
        behaviour::ConnectionEstablished, dummy, ConnectionClosed, ConnectionDenied, ConnectionId,
        FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

/// Why the gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Banned,
    TooManyFromIp { limit: u32 },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Banned => f.write_str("peer is banned"),
            Denied::TooManyFromIp { limit } => {
                write!(f, "more than {limit} inbound connections from one IP")
            }
        }
    }
}

impl std::error::Error for Denied {}

pub struct Gate {
    max_per_ip: u32,
    banned: HashMap<PeerId, Instant>,
    inbound_ip: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, HashSet<ConnectionId>>,
}

pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Gate {
    pub fn new(max_per_ip: u32) -> Self {
        Gate {
            max_per_ip,
            banned: HashMap::new(),
            inbound_ip: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    pub fn ban(&mut self, peer: PeerId, until: Instant) {
        self.banned.insert(peer, until);
    }

    pub fn unban(&mut self, peer: &PeerId) {
        self.banned.remove(peer);
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned
            .get(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    fn check_peer(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.is_banned(peer) {
            return Err(ConnectionDenied::new(Denied::Banned));
        }
        Ok(())
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), ConnectionDenied> {
        let established = self.per_ip.get(&ip).map_or(0, HashSet::len);
        if established >= self.max_per_ip as usize {
            return Err(ConnectionDenied::new(Denied::TooManyFromIp {
                limit: self.max_per_ip,
            }));
        }
        Ok(())
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        // Refused before the handshake: a flood from one IP costs us no crypto.
        if let Some(ip) = ip_of(remote) {
            self.check_ip(ip)?;
        }
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
        if let Some(ip) = ip_of(remote) {
            self.check_ip(ip)?;
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
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => {
                if let Some(ip) = ip_of(send_back_addr) {
                    self.inbound_ip.insert(connection_id, ip);
                    self.per_ip.entry(ip).or_default().insert(connection_id);
                }
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
