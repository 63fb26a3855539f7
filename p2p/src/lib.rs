//! Tally's network task: the libp2p swarm in one tokio task, behind a bounded `Command`
//! channel in and a bounded `Event` channel out. Nothing outside this crate touches libp2p
//! types except the re-exported `PeerId` and `Multiaddr`. See README.md for the data flow,
//! every knob and the scoring rationale.

mod addrs;
mod behaviour;
mod config;
mod error;
mod gate;
mod handle;
mod lanes;
mod metrics;
mod protocol;
mod score;
mod software;
mod sync_codec;
mod task;
mod transport;

use std::collections::HashMap;

pub use config::NetworkConfig;
pub use error::NetworkError;
pub use handle::NetworkHandle;
pub use libp2p::{multiaddr, Multiaddr, PeerId};
pub use prometheus_client::registry::Registry;
pub use protocol::{
    Command, Event, MessageId, PeerInfo, PenaltyReason, RemoteError, RequestError,
    ResponseChannelId, Topic, Verdict,
};
pub use score::TokenBucket;
pub use software::Software;
pub use tokio_util::sync::CancellationToken;

use libp2p::{core::upgrade, identity::Keypair, noise, tcp, yamux, Transport};
use tokio::sync::mpsc;

/// The peer id that a 32-byte Ed25519 secret gives (without starting anything).
pub fn peer_id_from_secret(secret: [u8; 32]) -> Result<PeerId, NetworkError> {
    keypair(secret).map(|k| k.public().to_peer_id())
}

fn keypair(mut secret: [u8; 32]) -> Result<Keypair, NetworkError> {
    // `ed25519_from_bytes` zeroes its input: hand it a copy.
    Keypair::ed25519_from_bytes(&mut secret).map_err(|e| NetworkError::Identity(e.to_string()))
}

/// Build the swarm, start listening and dialling, and spawn the network task on the current
/// tokio runtime. Metrics are registered on `registry` (`tally_*` and `libp2p_*`). The task
/// stops when `shutdown` is cancelled or every `NetworkHandle` is dropped.
pub fn spawn(
    config: NetworkConfig,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> Result<(NetworkHandle, mpsc::Receiver<Event>), NetworkError> {
    config.validate()?;
    let key = keypair(config.keypair_ed25519_secret)?;
    let local_peer_id = key.public().to_peer_id();

    let behaviour = behaviour::Behaviour::new(&key, &config)?;
    // TCP + noise + yamux as `with_tcp` builds it, but dialling from our listen IP
    // (`transport.rs`).
    let tcp = transport::SourceBoundTcp::new(tcp::Config::default().nodelay(true), &config.listen)
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(
            noise::Config::new(&key)
                .map_err(|e| NetworkError::Build(format!("tcp transport: {e}")))?,
        )
        .multiplex(yamux::Config::default());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic()
        .with_other_transport(|_| tcp)
        .map_err(|e| NetworkError::Build(format!("tcp transport: {e}")))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| NetworkError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        // Bounds how long a half-open connection (one that never finishes Noise/TLS and
        // multiplexer negotiation) holds a pending slot.
        .with_connection_timeout(config.handshake_timeout)
        .build();

    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }

    let metrics = metrics::Metrics::new(registry);
    let (command_tx, command_rx) = mpsc::channel(config.command_buffer);
    // The node's end is short: the task queues events by priority (`lanes`) and hands
    // them over as the node takes them.
    let (event_tx, event_rx) = mpsc::channel(lanes::HANDOFF);
    let topics = Topic::ALL
        .iter()
        .map(|t| (behaviour::topic_hash(*t, &config.chain_id), *t))
        .collect();
    let handle = NetworkHandle::new(
        command_tx,
        local_peer_id,
        config.sync_max_request_bytes,
        config.sync_max_response_bytes,
    );
    let mut task = task::Task {
        swarm,
        scores: score::Scores::new(
            config.score_half_life,
            config.ban_threshold,
            config.ban_duration,
        ),
        ip_scores: score::IpScores::new(
            config.score_half_life,
            config.ip_ban_threshold,
            config.ip_ban_duration,
        ),
        peer_ips: HashMap::new(),
        lanes: lanes::Lanes::new(&config),
        cfg: config,
        commands: command_rx,
        events: event_tx,
        metrics,
        topics,
        gossip_buckets: HashMap::new(),
        tx_budgets: HashMap::new(),
        request_buckets: HashMap::new(),
        pending_inbound: HashMap::new(),
        inbound_ids: HashMap::new(),
        next_channel: 0,
        pending_outbound: HashMap::new(),
        connections: HashMap::new(),
        agents: HashMap::new(),
        version_labels: Default::default(),
        last_kad_bootstrap: None,
        last_bootstrap_dial: Some(std::time::Instant::now()),
    };
    for addr in task.cfg.bootstrap.clone() {
        if let Err(e) = task.dial_bootstrap(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    tokio::spawn(task.run(shutdown));
    Ok((handle, event_rx))
}
