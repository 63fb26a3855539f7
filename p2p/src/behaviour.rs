//! The composed libp2p behaviour and the gossipsub configuration and score parameters.

use std::{collections::HashSet, time::Duration};

use libp2p::{
    connection_limits, gossipsub, identify,
    identity::Keypair,
    kad, ping, request_response,
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour},
    StreamProtocol,
};
use sha2::{Digest, Sha256};

use crate::{
    gate::Gate,
    sync_codec::{SyncCodec, SYNC_PROTOCOL},
    NetworkConfig, NetworkError, Topic,
};

pub type Gossipsub =
    gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::WhitelistSubscriptionFilter>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    // The gates come first so a refused connection never reaches the other behaviours.
    pub gate: Gate,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub gossipsub: Gossipsub,
    pub sync: request_response::Behaviour<SyncCodec>,
}

/// The gossipsub topic of `topic` on chain `chain_id`.
pub fn topic_hash(topic: Topic, chain_id: &str) -> gossipsub::TopicHash {
    gossipsub::IdentTopic::new(topic.topic_string(chain_id)).hash()
}

pub fn content_id(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn kad_protocol(chain_id: &str) -> Result<StreamProtocol, NetworkError> {
    StreamProtocol::try_from_owned(format!("/tally/{chain_id}/kad/1"))
        .map_err(|e| NetworkError::Build(format!("kad protocol name: {e}")))
}

pub fn identify_version(chain_id: &str) -> String {
    format!("/tally/{chain_id}/1")
}

impl Behaviour {
    pub fn new(key: &Keypair, cfg: &NetworkConfig) -> Result<Self, NetworkError> {
        let peer_id = key.public().to_peer_id();
        let build = |e: String| NetworkError::Build(e);

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_incoming(Some(cfg.max_inbound_connections))
                .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
                // Handshakes in flight, all IPs together: bounds the crypto work an accept
                // flood can cause (the gate caps them per IP). Outbound dials have no
                // pending cap here, so a flood of inbound handshakes cannot take their slots.
                .with_max_pending_incoming(Some(cfg.max_pending_inbound)),
        );

        let identify = identify::Behaviour::new(
            identify::Config::new(identify_version(&cfg.chain_id), key.public())
                .with_agent_version(crate::software::announce(
                    env!("CARGO_PKG_VERSION"),
                    &cfg.protocols,
                ))
                .with_push_listen_addr_updates(true),
        );

        let kad = if cfg.discovery {
            let mut kcfg = kad::Config::new(kad_protocol(&cfg.chain_id)?);
            kcfg.set_query_timeout(Duration::from_secs(30));
            let mut k =
                kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kcfg);
            // Serve queries even without a confirmed external address: every Tally node can
            // bootstrap a newcomer, including on a loopback testnet.
            k.set_mode(Some(kad::Mode::Server));
            Some(k)
        } else {
            None
        };

        // Anonymous by default: see `NetworkConfig::gossip_author_signatures`.
        let authenticity = if cfg.gossip_author_signatures {
            gossipsub::MessageAuthenticity::Signed(key.clone())
        } else {
            gossipsub::MessageAuthenticity::Anonymous
        };
        let mut gossipsub = Gossipsub::new_with_subscription_filter(
            authenticity,
            gossipsub_config(cfg)?,
            gossipsub::WhitelistSubscriptionFilter(
                Topic::ALL
                    .iter()
                    .map(|t| topic_hash(*t, &cfg.chain_id))
                    .collect::<HashSet<_>>(),
            ),
        )
        .map_err(|e| build(format!("gossipsub: {e}")))?;
        let (params, thresholds) = score_params(cfg);
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| build(format!("gossipsub score params: {e}")))?;
        for t in Topic::ALL {
            gossipsub
                .subscribe(&gossipsub::IdentTopic::new(t.topic_string(&cfg.chain_id)))
                .map_err(|e| build(format!("gossipsub subscribe: {e}")))?;
        }

        let sync = request_response::Behaviour::with_codec(
            SyncCodec {
                max_request_bytes: cfg.sync_max_request_bytes,
                max_response_bytes: cfg.sync_max_response_bytes,
            },
            [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(cfg.request_timeout)
                .with_max_concurrent_streams(32),
        );

        Ok(Behaviour {
            gate: Gate::new(cfg.max_connections_per_ip, cfg.max_pending_inbound_per_ip),
            limits,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad: Toggle::from(kad),
            gossipsub,
            sync,
        })
    }
}

fn gossipsub_config(cfg: &NetworkConfig) -> Result<gossipsub::Config, NetworkError> {
    let (validation, allow_self_origin) = if cfg.gossip_author_signatures {
        (gossipsub::ValidationMode::Strict, false)
    } else {
        // Anonymous messages have no author, so gossipsub cannot tell "my own message
        // echoed back by an honest peer" from "a forgery claiming to be mine": without
        // `allow_self_origin` every echo of a message we published (a race between flood
        // publish and mesh forwarding) counts as an invalid delivery against the honest
        // peer that forwarded it. With it, an echo is just a duplicate.
        (gossipsub::ValidationMode::Anonymous, true)
    };
    let mut builder = gossipsub::ConfigBuilder::default();
    // The tx topic's own mesh degree (see `NetworkConfig::tx_mesh_n`).
    let d = cfg.tx_mesh_n;
    for t in [Topic::Tx, Topic::TxBatch] {
        let hash = topic_hash(t, &cfg.chain_id);
        builder
            .mesh_n_for_topic(d, hash.clone())
            .mesh_n_low_for_topic(d.div_ceil(2), hash.clone())
            .mesh_n_high_for_topic(d * 2, hash.clone())
            .mesh_outbound_min_for_topic(d / 2, hash);
    }
    builder
        .heartbeat_interval(cfg.heartbeat_interval)
        // Default is 5 s: far too long for 1 s blocks, the mesh would form late.
        .heartbeat_initial_delay(Duration::from_millis(100))
        .max_transmit_size(cfg.max_message_bytes)
        .validation_mode(validation)
        .allow_self_origin(allow_self_origin)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::new(&content_id(&m.data)))
        // Publish to every subscribed peer above the publish threshold, not only the mesh:
        // proposals and votes must reach all validators within one block time, and small
        // nets (2-6 nodes) are below the mesh target anyway.
        .flood_publish(true)
        // Mesh targets: small nets graft every peer (heartbeat grafts up to mesh_n when below
        // mesh_n_low), large nets keep the fan-out bounded.
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        .gossip_lazy(6)
        // Remember seen ids for 2 minutes: content-addressed ids make this the window in
        // which a replayed message is dropped without validation.
        .duplicate_cache_time(Duration::from_secs(120))
        .history_length(6)
        .history_gossip(3)
        .max_messages_per_rpc(Some(1024))
        .max_ihave_length(5000)
        .build()
        .map_err(|e| NetworkError::Build(format!("gossipsub config: {e}")))
}

/// Below this gossipsub score all of a peer's RPCs are ignored (and the task bans it).
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Gossipsub v1.1 peer-score parameters for Tally's topics. Each weight is explained in
/// README.md ("Scoring").
pub fn score_params(
    cfg: &NetworkConfig,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let decay = gossipsub::score_parameter_decay;
    let topic = |weight: f64, first_cap: f64| gossipsub::TopicScoreParams {
        topic_weight: weight,
        // P1: +0.01 per second in the mesh, capped at 100 s (+1): a small reward for stable
        // mesh members, so a newcomer does not displace them.
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        // P2: first deliveries are the useful work a peer does for us.
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: decay(Duration::from_secs(60)),
        first_message_deliveries_cap: first_cap,
        // P3/P3b off: an idle chain or a quiet tx topic would make honest mesh peers look
        // like they under-deliver. Invalid data is what we punish, not silence.
        mesh_message_deliveries_weight: 0.0,
        mesh_message_deliveries_decay: 0.5,
        mesh_message_deliveries_cap: 100.0,
        mesh_message_deliveries_threshold: 1.0,
        mesh_message_deliveries_window: Duration::from_millis(10),
        mesh_message_deliveries_activation: Duration::from_secs(5),
        mesh_failure_penalty_weight: 0.0,
        mesh_failure_penalty_decay: 0.5,
        // P4: squared count of invalid messages. One invalid message costs -20 x topic
        // weight (below the gossip threshold), two on the consensus topic -80 (graylisted).
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: decay(Duration::from_secs(300)),
    };
    let mut params = gossipsub::PeerScoreParams {
        // Positive topic contributions are capped so a peer cannot bank good behaviour to
        // offset invalid messages or application penalties.
        topic_score_cap: 20.0,
        // P5: our application score enters gossipsub 1:1, so a peer halfway to a ban is
        // already below the publish threshold.
        app_specific_weight: 1.0,
        // P6: more than `ip_colocation_threshold` peers from one IP looks like a Sybil
        // cluster; the surplus costs -5 x surplus^2. The threshold allows a validator and a
        // full node on one host plus a restart overlap. Loopback is not whitelisted: the
        // local testnet binds one 127.0.0.x per node, so each node is alone on its IP and
        // the rule is exercised as it would be across machines.
        ip_colocation_factor_weight: -5.0,
        ip_colocation_factor_threshold: cfg.ip_colocation_threshold,
        ip_colocation_factor_whitelist: HashSet::new(),
        // P7: protocol misbehaviour (GRAFT during backoff, broken IWANT promises) beyond a
        // few incidents (network hiccups happen).
        behaviour_penalty_weight: -1.0,
        behaviour_penalty_threshold: 6.0,
        behaviour_penalty_decay: decay(Duration::from_secs(60)),
        decay_interval: Duration::from_secs(1),
        decay_to_zero: 0.01,
        retain_score: Duration::from_secs(600),
        ..Default::default()
    };
    let hash = |t: Topic| topic_hash(t, &cfg.chain_id);
    // Consensus messages matter most: full weight. Txs are cheap and plentiful: half.
    params
        .topics
        .insert(hash(Topic::Consensus), topic(1.0, 20.0));
    params
        .topics
        .insert(hash(Topic::Proposal), topic(1.0, 20.0));
    params.topics.insert(hash(Topic::Tx), topic(0.5, 20.0));
    params.topics.insert(hash(Topic::TxBatch), topic(0.5, 20.0));
    let thresholds = gossipsub::PeerScoreThresholds {
        // Below -10 (one invalid consensus message): no IHAVE/IWANT gossip with the peer.
        gossip_threshold: -10.0,
        // Below -50: we do not publish to it (it would not forward honestly).
        publish_threshold: -50.0,
        // Below -80: all its RPCs are ignored. The ban (-100 app score) follows shortly.
        graylist_threshold: GRAYLIST_THRESHOLD,
        // We do not use peer exchange; only well-behaved peers' PX would be accepted.
        accept_px_threshold: 10.0,
        // Opportunistic grafting when the mesh median drops below +5.
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}
