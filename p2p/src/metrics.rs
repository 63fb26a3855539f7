//! The network task's metrics, registered on the node's one registry (names `tally_*`), plus
//! libp2p's own (`libp2p_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicDirection {
    pub topic: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub direction: &'static str,
    pub outcome: &'static str,
}

/// A peer's software as identify announces it (`tally/<version> protocols 1-<max>`):
/// `version` is `<version>` or `other`, `max_protocol` the highest protocol its binary
/// runs or `unknown` (not announced, as by releases before protocol announcements).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerVersion {
    pub version: String,
    pub max_protocol: String,
}

impl PeerVersion {
    pub fn of(software: Option<&crate::software::Software>) -> Self {
        let software = software.filter(|s| s.version.is_some());
        PeerVersion {
            version: software
                .and_then(|s| s.version.clone())
                .unwrap_or_else(|| "other".into()),
            max_protocol: software
                .and_then(|s| s.max_protocol)
                .map_or_else(|| "unknown".into(), |p| p.to_string()),
        }
    }

    /// The labels of whatever is past [`MAX_VERSION_LABELS`].
    pub fn other() -> Self {
        Self::of(None)
    }
}

/// Distinct (version, max protocol) label pairs ever exported; past this, new ones count
/// as `other` (a peer chooses what it announces, and each pair is a series kept for the
/// process's life).
pub const MAX_VERSION_LABELS: usize = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

pub struct Metrics {
    pub peers: Gauge,
    pub gossip_messages: Family<TopicDirection, Counter>,
    pub gossip_bytes: Family<TopicDirection, Counter>,
    pub invalid_messages: Family<Reason, Counter>,
    pub penalties: Family<Reason, Counter>,
    pub peer_bans: Family<Reason, Counter>,
    pub sync_requests: Family<SyncLabels, Counter>,
    /// Lowest application score among connected peers (0 with no peer).
    pub peer_score_min: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Connected peers whose application score is below zero.
    pub peers_penalized: Gauge,
    pub dropped_events: Family<Kind, Counter>,
    pub connections_denied: Family<Reason, Counter>,
    /// IPs banned by the per-IP accounting, by the reason of the penalty that crossed it.
    pub ip_bans: Family<Reason, Counter>,
    /// IPs banned now.
    pub banned_ips: Gauge,
    /// Connected peers by the software they announce.
    pub peer_versions: Family<PeerVersion, Gauge>,
    pub libp2p: libp2p::metrics::Metrics,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            peers: Gauge::default(),
            gossip_messages: Family::default(),
            gossip_bytes: Family::default(),
            invalid_messages: Family::default(),
            penalties: Family::default(),
            peer_bans: Family::default(),
            sync_requests: Family::default(),
            peer_score_min: Gauge::default(),
            peers_penalized: Gauge::default(),
            dropped_events: Family::default(),
            connections_denied: Family::default(),
            ip_bans: Family::default(),
            banned_ips: Gauge::default(),
            peer_versions: Family::default(),
            // libp2p-metrics prefixes its families with `libp2p_` itself.
            libp2p: libp2p::metrics::Metrics::new(registry),
        };
        let r = registry.sub_registry_with_prefix("tally");
        r.register("peers", "Connected peers", m.peers.clone());
        r.register(
            "gossip_messages",
            "Gossip messages by topic and direction (in = received, out = published)",
            m.gossip_messages.clone(),
        );
        r.register(
            "gossip_bytes",
            "Gossip payload bytes by topic and direction",
            m.gossip_bytes.clone(),
        );
        r.register(
            "invalid_messages",
            "Invalid gossip messages and sync frames by reason (Reject verdicts and local checks)",
            m.invalid_messages.clone(),
        );
        r.register(
            "peer_penalties",
            "Application-score penalties by reason",
            m.penalties.clone(),
        );
        r.register(
            "peer_bans",
            "Peers banned, by the reason of the last penalty",
            m.peer_bans.clone(),
        );
        r.register(
            "sync_requests",
            "Sync requests by direction and outcome",
            m.sync_requests.clone(),
        );
        r.register(
            "peer_score_min",
            "Lowest application score of the connected peers (0 = none penalised), sampled every 10 s",
            m.peer_score_min.clone(),
        );
        r.register(
            "peers_penalized",
            "Connected peers with a negative application score, sampled every 10 s",
            m.peers_penalized.clone(),
        );
        r.register(
            "p2p_dropped",
            "Gossip messages, sync requests and peer events dropped before reaching the node, by cause (kind: tx_rate_limited, consensus_rate_limited, tx_channel_full, consensus_channel_full, request_channel_full, ...)",
            m.dropped_events.clone(),
        );
        r.register(
            "p2p_connections_denied",
            "Connections refused by the gate (banned peer or IP, per-IP caps) or the connection limits",
            m.connections_denied.clone(),
        );
        r.register(
            "p2p_ip_bans",
            "IPs (IPv6: /64s) banned because the penalties of their peers added up, by the reason of the last one",
            m.ip_bans.clone(),
        );
        r.register(
            "p2p_banned_ips",
            "IPs (IPv6: /64s) banned now",
            m.banned_ips.clone(),
        );
        r.register(
            "p2p_peer_versions",
            "Connected peers by the software version and highest protocol they announce (identify's agent: tally/<version> protocols 1-<max>; other/unknown when not announced), sampled every 10 s",
            m.peer_versions.clone(),
        );
        m
    }

    pub fn gossip(&self, topic: &'static str, direction: &'static str, bytes: usize) {
        let l = TopicDirection { topic, direction };
        self.gossip_messages.get_or_create(&l).inc();
        self.gossip_bytes.get_or_create(&l).inc_by(bytes as u64);
    }

    pub fn sync(&self, direction: &'static str, outcome: &'static str) {
        self.sync_requests
            .get_or_create(&SyncLabels { direction, outcome })
            .inc();
    }

    pub fn invalid(&self, reason: &'static str) {
        self.invalid_messages
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn dropped(&self, kind: &'static str) {
        self.dropped_events.get_or_create(&Kind { kind }).inc();
    }
}
