//! Network configuration: every knob, its default and why (see also README.md).

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::Multiaddr;

/// Configuration of the network task. `Default` gives production-leaning values; tests and
/// the local testnet shorten the time-based knobs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Chain id: namespaces the gossip topics (`tally/<chain_id>/tx/1`,
    /// `tally/<chain_id>/consensus/1`), the Kademlia protocol and the identify protocol
    /// version, so nodes of different chains do not mix.
    pub chain_id: String,
    /// Ed25519 secret key (32 bytes) of the node's libp2p identity. The node persists it so
    /// its `PeerId` is stable across restarts.
    pub keypair_ed25519_secret: [u8; 32],
    /// Addresses to listen on, e.g. `/ip4/127.0.0.2/tcp/0` and `/ip4/127.0.0.2/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up; with a `/p2p/<peer-id>` suffix they also seed Kademlia.
    pub bootstrap: Vec<Multiaddr>,
    /// Kademlia discovery. Off for a validator hidden behind sentry nodes that must only
    /// talk to its bootstrap peers.
    pub discovery: bool,

    /// Largest gossip message (gossipsub `max_transmit_size`): must fit the largest block
    /// plus its proposal envelope.
    pub max_message_bytes: usize,
    /// Largest message accepted on the tx topic; a larger one is rejected and penalised
    /// before it reaches the node.
    pub max_tx_message_bytes: usize,
    /// Largest message accepted on the tx batch topic (same treatment).
    pub max_tx_batch_bytes: usize,
    /// Largest message accepted on the compact proposal topic (same treatment): the
    /// block's header and last commit plus 32 bytes per tx id of a full block.
    pub max_proposal_message_bytes: usize,

    /// Established inbound connections, all peers together.
    pub max_inbound_connections: u32,
    /// Established connections with one peer (TCP and QUIC at once, plus a redial overlap).
    pub max_connections_per_peer: u32,
    /// Established inbound connections from one IP address (one IPv6 /64).
    pub max_connections_per_ip: u32,
    /// Inbound connections still in their handshake (Noise/TLS and multiplexer
    /// negotiation), all IPs together. Outbound dials are not counted: a flood of
    /// half-open inbound connections cannot take the slots of the peers we dial.
    pub max_pending_inbound: u32,
    /// Inbound connections still in their handshake from one IP (one IPv6 /64). An honest
    /// node has one or two (TCP and QUIC) in flight; 64 silent TCP connections from one IP
    /// used to take every pending slot and lock all new peers out (issue 17, item 8).
    pub max_pending_inbound_per_ip: u32,
    /// A connection that has not finished its handshake within this is closed (libp2p's
    /// default is 10 s). It bounds how long a half-open connection holds its slot.
    pub handshake_timeout: Duration,
    /// Eclipse resistance: while fewer than this many peers are connected through
    /// connections we dialled ourselves, the bootstrap peers we are not connected to are
    /// redialled (every `bootstrap_redial_interval`), however many inbound peers we have.
    pub min_outbound_peers: usize,
    /// Least time between two rounds of bootstrap redials.
    pub bootstrap_redial_interval: Duration,

    /// Gossip messages per second a peer may forward us on each tx topic (token bucket, the
    /// burst is one second's worth). Excess messages are ignored and cost `GossipFlood`.
    pub max_tx_msgs_per_sec_per_peer: u32,
    /// Transactions per second a peer may forward us, both tx topics together: a message on
    /// the tx topic is one tx, a batch counts the txs in it (the u32 little-endian length
    /// prefix of `borsh(Vec<SignedTx>)`). Token bucket, burst one second's worth; a message
    /// over the budget is ignored and costs `GossipFlood`. Without it a peer could send
    /// `max_tx_msgs_per_sec_per_peer` batches of 1,024 txs a second.
    pub max_txs_per_sec_per_peer: u32,
    /// Bytes per second a peer may forward us on the tx topics together (same treatment).
    pub max_tx_bytes_per_sec_per_peer: u32,
    /// As `max_tx_msgs_per_sec_per_peer` for the consensus topic.
    pub max_consensus_msgs_per_sec_per_peer: u32,
    /// As `max_tx_msgs_per_sec_per_peer` for the compact proposal topic: one proposal per
    /// round, relayed by each peer once.
    pub max_proposal_msgs_per_sec_per_peer: u32,
    /// Sync requests per second a peer may send us. Excess requests are refused with a
    /// `RateLimited` error frame and cost `RequestFlood`.
    pub max_sync_requests_per_sec_per_peer: u32,
    /// Inbound sync requests awaiting the node's `Respond`, all peers together.
    pub max_pending_inbound_requests: usize,

    /// Application score below which a peer is disconnected and banned (negative).
    pub ban_threshold: f64,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// Half-life of the application score's decay toward zero.
    pub score_half_life: Duration,
    /// Peers at or above this many distinct peers per IP are penalised by gossipsub's
    /// IP-colocation factor (P6).
    pub ip_colocation_threshold: f64,
    /// Per-IP accounting (IPv4 address, IPv6 /64): every penalty a peer gets is also
    /// charged to the IP it connects from, decaying with `score_half_life`. Below this
    /// (negative) sum the IP is banned for `ip_ban_duration`: its peers are disconnected
    /// and its connections refused before the handshake. Fresh identities cost nothing to
    /// make, so without it an attacker starts over with a new key after each ban. Three
    /// peer bans' worth by default, so one misbehaving node does not take its honest
    /// neighbours behind the same NAT down with it.
    pub ip_ban_threshold: f64,
    /// How long an IP ban lasts.
    pub ip_ban_duration: Duration,

    /// Largest sync request accepted or sent.
    pub sync_max_request_bytes: usize,
    /// Largest sync response accepted or sent.
    pub sync_max_response_bytes: usize,
    /// Outbound and inbound sync request timeout.
    pub request_timeout: Duration,

    /// Gossipsub heartbeat (mesh maintenance, IHAVE gossip).
    pub heartbeat_interval: Duration,
    /// Capacity of the command channel into the task.
    pub command_buffer: usize,
    /// Events waiting for the node on the tx queue (tx and tx batch messages); when full,
    /// tx messages are dropped and counted (`tx_channel_full`) rather than buffered.
    pub event_buffer: usize,
    /// Events waiting for the node on the consensus queue (consensus messages and peer
    /// events). The node reads it before the sync-request and tx queues (strict
    /// priority), so a tx flood can neither fill it nor delay it behind txs.
    pub consensus_event_buffer: usize,
    /// Payload bytes each of those queues may hold (gossip and request data). A queue
    /// always takes one message when empty, whatever its size.
    pub event_buffer_bytes: usize,
    /// Idle connections are closed after this long.
    pub idle_connection_timeout: Duration,
    /// Sign every gossip message with the libp2p identity (gossipsub `Signed` + `Strict`)
    /// instead of publishing anonymously. Off by default: every Tally message already carries
    /// its own secp256k1 signature, message ids are content hashes and peers are scored by
    /// who forwarded a message, so the author signature only cost an Ed25519 sign per
    /// publish and a verify per receipt (~16% of a loaded validator's CPU). All nodes of a
    /// network must agree: an anonymous node rejects signed messages and vice versa.
    pub gossip_author_signatures: bool,
    /// Gossipsub mesh degree D of the transaction topics (the consensus topic's is 6).
    /// Every node already receives a new transaction straight from the node that published
    /// it (flood publish), so on a densely connected network the mesh mostly adds duplicate
    /// copies; lowering D cuts them. Measured on the 5-node loopback testnet with batched tx
    /// gossip, D = 2 gained nothing over 6 (bench/network.md), so the default stays 6.
    pub tx_mesh_n: usize,
    /// The chain protocols this binary runs, announced to peers in identify's agent
    /// (`tally/<version> protocols 1-2`; see `src/software.rs`). The node passes 1 to
    /// `ledger::types::MAX_PROTOCOL`; this crate does not know `ledger`.
    pub protocols: RangeInclusive<u32>,
}

impl NetworkConfig {
    /// A configuration with defaults for everything but the identity and chain.
    pub fn new(chain_id: impl Into<String>, keypair_ed25519_secret: [u8; 32]) -> Self {
        NetworkConfig {
            chain_id: chain_id.into(),
            keypair_ed25519_secret,
            ..NetworkConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::NetworkError> {
        let bad = |key: &'static str, why: &'static str| {
            Err(crate::NetworkError::Config { key, reason: why })
        };
        if self.chain_id.is_empty() || self.chain_id.contains('/') {
            return bad("chain_id", "must be non-empty and contain no '/'");
        }
        if self.max_message_bytes < 1024 {
            return bad("max_message_bytes", "must be at least 1024");
        }
        if self.max_tx_message_bytes == 0 || self.max_tx_message_bytes > self.max_message_bytes {
            return bad("max_tx_message_bytes", "must be in 1..=max_message_bytes");
        }
        if self.max_tx_batch_bytes == 0 || self.max_tx_batch_bytes > self.max_message_bytes {
            return bad("max_tx_batch_bytes", "must be in 1..=max_message_bytes");
        }
        if self.max_proposal_message_bytes == 0
            || self.max_proposal_message_bytes > self.max_message_bytes
        {
            return bad(
                "max_proposal_message_bytes",
                "must be in 1..=max_message_bytes",
            );
        }
        if self.ban_threshold >= 0.0 || !self.ban_threshold.is_finite() {
            return bad("ban_threshold", "must be a negative number");
        }
        if self.score_half_life.is_zero() {
            return bad("score_half_life", "must be positive");
        }
        if self.ip_colocation_threshold < 1.0 {
            return bad("ip_colocation_threshold", "must be at least 1");
        }
        if self.max_tx_msgs_per_sec_per_peer == 0
            || self.max_consensus_msgs_per_sec_per_peer == 0
            || self.max_proposal_msgs_per_sec_per_peer == 0
            || self.max_sync_requests_per_sec_per_peer == 0
        {
            return bad("max_*_per_sec_per_peer", "rate limits must be at least 1");
        }
        if self.sync_max_request_bytes == 0 || self.sync_max_response_bytes == 0 {
            return bad("sync_max_*_bytes", "must be positive");
        }
        if self.sync_max_request_bytes > u32::MAX as usize
            || self.sync_max_response_bytes > u32::MAX as usize
        {
            return bad("sync_max_*_bytes", "must fit the u32 length prefix");
        }
        if self.command_buffer == 0 || self.event_buffer == 0 || self.consensus_event_buffer == 0 {
            return bad(
                "command_buffer/event_buffer/consensus_event_buffer",
                "must be positive",
            );
        }
        if self.event_buffer_bytes == 0 {
            return bad("event_buffer_bytes", "must be positive");
        }
        if self.max_txs_per_sec_per_peer == 0 || self.max_tx_bytes_per_sec_per_peer == 0 {
            return bad(
                "max_txs_per_sec_per_peer/max_tx_bytes_per_sec_per_peer",
                "rate limits must be at least 1",
            );
        }
        if self.max_pending_inbound == 0 || self.max_pending_inbound_per_ip == 0 {
            return bad(
                "max_pending_inbound/max_pending_inbound_per_ip",
                "must be at least 1",
            );
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            return bad("handshake_timeout", "must be at least 100ms");
        }
        if self.bootstrap_redial_interval < Duration::from_millis(100) {
            return bad("bootstrap_redial_interval", "must be at least 100ms");
        }
        if self.ip_ban_threshold >= 0.0 || !self.ip_ban_threshold.is_finite() {
            return bad("ip_ban_threshold", "must be a negative number");
        }
        if !(1..=12).contains(&self.tx_mesh_n) {
            return bad("tx_mesh_n", "must be in 1..=12");
        }
        if self.heartbeat_interval < Duration::from_millis(50) {
            return bad("heartbeat_interval", "must be at least 50ms");
        }
        Ok(())
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            chain_id: "tally-local".to_string(),
            keypair_ed25519_secret: [0; 32],
            listen: Vec::new(),
            bootstrap: Vec::new(),
            discovery: true,
            max_message_bytes: 4 * 1024 * 1024,
            max_tx_message_bytes: 64 * 1024,
            max_tx_batch_bytes: 256 * 1024,
            max_proposal_message_bytes: 1024 * 1024,
            max_inbound_connections: 64,
            max_connections_per_peer: 2,
            max_connections_per_ip: 8,
            max_pending_inbound: 32,
            max_pending_inbound_per_ip: 4,
            handshake_timeout: Duration::from_secs(5),
            min_outbound_peers: 2,
            bootstrap_redial_interval: Duration::from_secs(10),
            max_tx_msgs_per_sec_per_peer: 1000,
            max_txs_per_sec_per_peer: 20_000,
            max_tx_bytes_per_sec_per_peer: 16 * 1024 * 1024,
            max_consensus_msgs_per_sec_per_peer: 200,
            max_proposal_msgs_per_sec_per_peer: 20,
            max_sync_requests_per_sec_per_peer: 20,
            max_pending_inbound_requests: 256,
            ban_threshold: -100.0,
            ban_duration: Duration::from_secs(600),
            score_half_life: Duration::from_secs(600),
            ip_colocation_threshold: 3.0,
            ip_ban_threshold: -300.0,
            ip_ban_duration: Duration::from_secs(600),
            sync_max_request_bytes: 40 * 1024,
            sync_max_response_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
            command_buffer: 1024,
            event_buffer: 4096,
            consensus_event_buffer: 4096,
            event_buffer_bytes: 64 * 1024 * 1024,
            idle_connection_timeout: Duration::from_secs(60),
            gossip_author_signatures: false,
            tx_mesh_n: 6,
            protocols: 1..=1,
        }
    }
}
