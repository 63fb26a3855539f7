//! The network task: owns the swarm, turns commands into swarm calls and swarm events into
//! `Event`s, scores peers and enforces bans and rate limits.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    connection_limits, gossipsub, identify,
    metrics::Recorder,
    multiaddr::Protocol,
    request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel},
    swarm::{dial_opts::DialOpts, ConnectionId, DialError, ListenError, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    addrs::{self, IpKey},
    behaviour::{content_id, identify_version, kad_protocol, Behaviour, BehaviourEvent},
    gate::Denied,
    lanes::Lanes,
    metrics::{Metrics, PeerVersion, Reason},
    score::{IpScores, Outcome, Scores, TokenBucket},
    software::Software,
    sync_codec::{frame_too_large, SyncRequest, SyncResponse},
    Command, Event, MessageId, NetworkConfig, NetworkError, PeerInfo, PenaltyReason, RemoteError,
    RequestError, ResponseChannelId, Topic, Verdict,
};

const TICK: Duration = Duration::from_millis(250);
const SAMPLE_EVERY_TICKS: u64 = 40; // 10 s
const KAD_BOOTSTRAP_MIN_INTERVAL: Duration = Duration::from_secs(10);
const MAX_PENDING_OUTBOUND: usize = 1024;
const GRAYLIST_THRESHOLD: f64 = crate::behaviour::GRAYLIST_THRESHOLD;

/// One established connection.
pub struct Conn {
    pub remote: Multiaddr,
    /// We dialled it (it counts toward `min_outbound_peers`).
    pub outbound: bool,
}

/// Per-peer budgets of the two tx topics together: txs and bytes.
pub struct TxBudget {
    pub txs: TokenBucket,
    pub bytes: TokenBucket,
}

pub struct Task {
    pub swarm: Swarm<Behaviour>,
    pub cfg: NetworkConfig,
    pub commands: mpsc::Receiver<Command>,
    /// The node's end: short (`lanes::HANDOFF`); `lanes` feed it by priority.
    pub events: mpsc::Sender<Event>,
    pub lanes: Lanes,
    pub metrics: Metrics,
    pub scores: Scores,
    pub ip_scores: IpScores,
    /// The IP each peer was last seen connecting from (connected peers and scored ones).
    pub peer_ips: HashMap<PeerId, IpKey>,
    pub topics: HashMap<gossipsub::TopicHash, Topic>,
    /// Message buckets per peer and topic, tx budgets per peer. They outlive a
    /// disconnection (a peer does not get a fresh budget by reconnecting) and are
    /// forgotten once refilled.
    pub gossip_buckets: HashMap<(PeerId, Topic), TokenBucket>,
    pub tx_budgets: HashMap<PeerId, TxBudget>,
    pub request_buckets: HashMap<PeerId, TokenBucket>,
    pub pending_inbound: HashMap<u64, (PeerId, InboundRequestId, ResponseChannel<SyncResponse>)>,
    pub inbound_ids: HashMap<InboundRequestId, u64>,
    pub next_channel: u64,
    pub pending_outbound:
        HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, RequestError>>>,
    pub connections: HashMap<PeerId, HashMap<ConnectionId, Conn>>,
    /// What connected peers announce as their software (identify's agent version).
    pub agents: HashMap<PeerId, Software>,
    /// (version, max protocol) labels exported so far (each stays a series).
    pub version_labels: std::collections::BTreeSet<PeerVersion>,
    pub last_kad_bootstrap: Option<Instant>,
    pub last_bootstrap_dial: Option<Instant>,
}

impl Task {
    fn topic_hash(&self, topic: Topic) -> gossipsub::TopicHash {
        crate::behaviour::topic_hash(topic, &self.cfg.chain_id)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        // A clone, so a pending `reserve` does not borrow `self` inside the select.
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every handle dropped: nobody can talk to us any more.
                    None => break,
                },
                // Before the swarm: under a flood the swarm always has an event ready, and
                // the node must still be fed.
                permit = events.reserve(), if !self.lanes.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.lanes.pop() {
                            permit.send(event);
                        }
                    }
                    // The node stopped reading for good.
                    Err(_) => self.lanes.clear(),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => {
                    ticks += 1;
                    self.on_tick(ticks % SAMPLE_EVERY_TICKS == 0);
                }
            }
        }
        info!("network task shutting down");
        // Pending requesters learn the task stopped.
        for (_, reply) in self.pending_outbound.drain() {
            let _ = reply.send(Err(RequestError::Shutdown));
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.metrics.peers.set(0);
    }

    // ---- commands ----

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.publish(topic, data));
            }
            Command::Validated {
                msg_id,
                source,
                verdict,
            } => self.validated(msg_id, source, verdict),
            Command::Request { peer, data, reply } => self.request(peer, data, reply),
            Command::Respond { channel, data } => self.respond(channel, data),
            Command::Penalize {
                peer,
                reason,
                points,
            } => self.penalize(peer, reason, points),
            Command::Peers { reply } => {
                self.lift_expired_bans(Instant::now());
                let _ = reply.send(self.peer_infos());
            }
            Command::Dial(addr) => {
                if let Err(e) = self.dial(addr.clone()) {
                    warn!(%addr, error = %e, "dial failed");
                }
            }
        }
    }

    fn publish(&mut self, topic: Topic, data: Vec<u8>) -> Result<MessageId, NetworkError> {
        let len = data.len();
        let id = MessageId(content_id(&data));
        let hash = self.topic_hash(topic);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(hash, data)
            .map_err(|e| NetworkError::Publish(e.to_string()))?;
        self.metrics.gossip(topic.as_str(), "out", len);
        Ok(id)
    }

    fn validated(&mut self, msg_id: MessageId, source: PeerId, verdict: Verdict) {
        let acceptance = match verdict {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
            Verdict::Reject(reason) => {
                self.metrics.invalid(reason.as_str());
                self.penalize(source, reason, reason.default_points());
                gossipsub::MessageAcceptance::Reject
            }
        };
        let id = gossipsub::MessageId::new(&msg_id.0);
        // False when the message already left the cache (validated too late): nothing to do.
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
    }

    fn request(
        &mut self,
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    ) {
        if data.len() > self.cfg.sync_max_request_bytes {
            self.metrics.sync("outbound", "request_too_large");
            let _ = reply.send(Err(RequestError::RequestTooLarge {
                size: data.len(),
                limit: self.cfg.sync_max_request_bytes,
            }));
            return;
        }
        if self.scores.is_banned(&peer, Instant::now()) {
            let _ = reply.send(Err(RequestError::Unreachable("peer is banned".into())));
            return;
        }
        if self.pending_outbound.len() >= MAX_PENDING_OUTBOUND {
            let _ = reply.send(Err(RequestError::Failed(
                "too many sync requests in flight".into(),
            )));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, SyncRequest::Data(data));
        self.pending_outbound.insert(id, reply);
    }

    fn respond(&mut self, channel: ResponseChannelId, data: Vec<u8>) {
        let Some((peer, inbound_id, ch)) = self.pending_inbound.remove(&channel.0) else {
            // Timed out or the connection closed meanwhile.
            self.metrics.sync("inbound", "expired");
            return;
        };
        self.inbound_ids.remove(&inbound_id);
        let response = if data.len() > self.cfg.sync_max_response_bytes {
            warn!(%peer, size = data.len(), "sync response over the cap not sent");
            self.metrics.sync("inbound", "response_too_large");
            SyncResponse::Error(RemoteError::ResponseTooLarge)
        } else {
            SyncResponse::Data(data)
        };
        if self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(ch, response)
            .is_err()
        {
            self.metrics.sync("inbound", "expired");
        }
    }

    fn penalize(&mut self, peer: PeerId, reason: PenaltyReason, points: f64) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let now = Instant::now();
        self.metrics
            .penalties
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
        let outcome = self.scores.penalize(peer, reason, points, now);
        let score = match outcome {
            Outcome::Scored(s) | Outcome::Ban { score: s, .. } => s,
        };
        debug!(%peer, %reason, points, score, "peer penalised");
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, score);
        if let Outcome::Ban { until, .. } = outcome {
            let duration = until.saturating_duration_since(now);
            warn!(%peer, %reason, score, ?duration, "banning peer");
            self.metrics
                .peer_bans
                .get_or_create(&Reason {
                    reason: reason.as_str(),
                })
                .inc();
            self.swarm.behaviour_mut().gate.ban(peer, until);
            let _ = self.swarm.disconnect_peer_id(peer);
            self.emit(
                Event::PeerBanned {
                    peer,
                    reason,
                    duration,
                },
                "peer_banned",
            );
        }
        if let Some(ip) = self.peer_ips.get(&peer).copied() {
            self.penalize_ip(ip, reason, points, now);
        }
    }

    /// Per-IP accounting: the penalty of any peer is also the penalty of its IP, so fresh
    /// identities from one IP add up. Past the IP threshold the IP is banned: every peer
    /// connected from it is dropped and the gate refuses it before the handshake.
    fn penalize_ip(&mut self, ip: IpKey, reason: PenaltyReason, points: f64, now: Instant) {
        let Some(until) = self.ip_scores.penalize(ip, points, now) else {
            return;
        };
        let duration = until.saturating_duration_since(now);
        let score = self.ip_scores.score(&ip, now);
        warn!(%ip, %reason, score, ?duration, "banning IP");
        self.metrics
            .ip_bans
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
        self.metrics
            .banned_ips
            .set(self.ip_scores.banned(now) as i64);
        self.swarm.behaviour_mut().gate.ban_ip(ip, until);
        let peers: Vec<PeerId> = self
            .connections
            .iter()
            .filter(|(_, conns)| conns.values().any(|c| addrs::ip_key(&c.remote) == Some(ip)))
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            info!(%peer, %ip, "disconnecting a peer of a banned IP");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    pub fn dial_bootstrap(&mut self, addr: Multiaddr) -> Result<(), DialError> {
        self.dial(addr)
    }

    fn dial(&mut self, addr: Multiaddr) -> Result<(), DialError> {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                let mut base = addr.clone();
                base.pop();
                kad.add_address(&peer, base);
            }
            self.swarm
                .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
        } else {
            self.swarm.dial(addr)
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let gs = &self.swarm.behaviour().gossipsub;
        let mut subscribed: HashMap<PeerId, Vec<Topic>> = HashMap::new();
        for (peer, hashes) in gs.all_peers() {
            let topics = hashes
                .into_iter()
                .filter_map(|h| self.topics.get(h).copied())
                .collect();
            subscribed.insert(*peer, topics);
        }
        let mut mesh: HashMap<PeerId, Vec<Topic>> = HashMap::new();
        for (hash, topic) in &self.topics {
            for peer in gs.mesh_peers(hash) {
                mesh.entry(*peer).or_default().push(*topic);
            }
        }
        let mut ids: Vec<PeerId> = self.connections.keys().copied().collect();
        ids.extend(
            self.scores
                .peers()
                .filter(|p| !self.connections.contains_key(p)),
        );
        ids.into_iter()
            .map(|peer_id| {
                let state = self.scores.get(&peer_id);
                let ban_until = state
                    .and_then(|s| s.banned_until)
                    .filter(|until| *until > now);
                let mut mesh_topics = mesh.remove(&peer_id).unwrap_or_default();
                mesh_topics.sort();
                PeerInfo {
                    peer_id,
                    connected: self.connections.contains_key(&peer_id),
                    addresses: self
                        .connections
                        .get(&peer_id)
                        .map(|c| c.values().map(|c| c.remote.clone()).collect())
                        .unwrap_or_default(),
                    app_score: self.scores.score(&peer_id, now),
                    gossipsub_score: gs.peer_score(&peer_id),
                    reasons: state.map(|s| s.reasons.clone()).unwrap_or_default(),
                    banned: ban_until.is_some(),
                    ban_remaining: ban_until.map(|u| u.saturating_duration_since(now)),
                    topics: subscribed.remove(&peer_id).unwrap_or_default(),
                    mesh_topics,
                    software: self.agents.get(&peer_id).cloned(),
                }
            })
            .collect()
    }

    // ---- periodic work ----

    fn on_tick(&mut self, sample: bool) {
        let now = Instant::now();
        self.lift_expired_bans(now);
        self.ban_graylisted(now);
        self.keep_outbound_peers(now);
        if sample {
            self.sample(now);
        }
    }

    /// Eclipse resistance: the peers we dial ourselves are the ones an attacker cannot
    /// choose for us, however many inbound connections it makes (inbound caps never count
    /// them). While fewer than `min_outbound_peers` are connected that way (or no peer at
    /// all), redial the bootstrap peers we are not connected to, every
    /// `bootstrap_redial_interval`.
    fn keep_outbound_peers(&mut self, now: Instant) {
        let outbound = self
            .connections
            .values()
            .filter(|conns| conns.values().any(|c| c.outbound))
            .count();
        let alone = self.connections.is_empty();
        if (outbound >= self.cfg.min_outbound_peers && !alone) || self.cfg.bootstrap.is_empty() {
            return;
        }
        if self
            .last_bootstrap_dial
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.bootstrap_redial_interval)
        {
            return;
        }
        for addr in self.cfg.bootstrap.clone() {
            let connected = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => {
                    self.connections.contains_key(&peer) || self.scores.is_banned(&peer, now)
                }
                _ => self
                    .connections
                    .values()
                    .any(|conns| conns.values().any(|c| c.remote == addr)),
            };
            if connected {
                continue;
            }
            debug!(%addr, outbound, "redialling bootstrap peer");
            self.last_bootstrap_dial = Some(now);
            if let Err(e) = self.dial(addr.clone()) {
                debug!(%addr, error = %e, "bootstrap redial failed");
            }
        }
        if outbound == 0 && !self.connections.is_empty() {
            self.kad_bootstrap(now);
        }
    }

    /// Gossipsub's P4 (squared count of invalid messages) graylists a peer after two or
    /// three invalid messages, before our application score reaches the ban threshold.
    /// A graylisted peer's RPCs are dropped unseen, so no further Reject could ever ban
    /// it: it would stay connected and silenced until P4 decayed, then resume. A peer
    /// that is graylisted and has application penalties on record is proven faulty:
    /// ban it now, for its last offence.
    fn ban_graylisted(&mut self, now: Instant) {
        let graylisted: Vec<(PeerId, PenaltyReason, f64)> = self
            .connections
            .keys()
            .filter(|p| !self.scores.is_banned(p, now))
            .filter(|p| {
                self.swarm
                    .behaviour()
                    .gossipsub
                    .peer_score(p)
                    .is_some_and(|s| s < GRAYLIST_THRESHOLD)
            })
            .filter_map(|p| {
                let reason = self.scores.get(p)?.last_reason?;
                Some((*p, reason, self.scores.score(p, now)))
            })
            .collect();
        for (peer, reason, score) in graylisted {
            let points = (score - self.cfg.ban_threshold).max(0.0) + 1.0;
            info!(%peer, %reason, score, "graylisted by gossipsub: banning");
            self.penalize(peer, reason, points);
        }
    }

    fn lift_expired_bans(&mut self, now: Instant) {
        let ips = self.ip_scores.expire_bans(now);
        if !ips.is_empty() {
            for ip in ips {
                info!(%ip, "IP ban expired");
                self.swarm.behaviour_mut().gate.unban_ip(&ip);
            }
            self.metrics
                .banned_ips
                .set(self.ip_scores.banned(now) as i64);
        }
        for peer in self.scores.expire_bans(now) {
            info!(%peer, "ban expired");
            self.swarm.behaviour_mut().gate.unban(&peer);
            let score = self.scores.score(&peer, now);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, score);
        }
    }

    /// `tally_p2p_peer_versions`: connected peers per announced (version, max protocol),
    /// at most [`crate::metrics::MAX_VERSION_LABELS`] distinct label pairs over the
    /// process's life (the peer chooses what it announces).
    fn sample_versions(&mut self) {
        use std::collections::BTreeMap;
        let mut counts: BTreeMap<PeerVersion, i64> = BTreeMap::new();
        for peer in self.connections.keys() {
            *counts
                .entry(PeerVersion::of(self.agents.get(peer)))
                .or_default() += 1;
        }
        let mut labeled: BTreeMap<PeerVersion, i64> = BTreeMap::new();
        for (labels, n) in counts {
            let labels = if self.version_labels.contains(&labels)
                || self.version_labels.len() < crate::metrics::MAX_VERSION_LABELS
            {
                labels
            } else {
                PeerVersion::other()
            };
            self.version_labels.insert(labels.clone());
            *labeled.entry(labels).or_default() += n;
        }
        for labels in &self.version_labels {
            let n = labeled.get(labels).copied().unwrap_or(0);
            self.metrics.peer_versions.get_or_create(labels).set(n);
        }
    }

    fn sample(&mut self, now: Instant) {
        {
            let peers: Vec<PeerId> = self.connections.keys().copied().collect();
            let (mut min, mut penalized) = (0.0f64, 0i64);
            for peer in peers {
                let score = self.scores.score(&peer, now);
                min = min.min(score);
                penalized += i64::from(score < 0.0);
                // Keep gossipsub's P5 in step with the decay.
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .set_application_score(&peer, score);
            }
            self.metrics.peer_score_min.set(min);
            self.metrics.peers_penalized.set(penalized);
            self.sample_versions();
            let connections = &self.connections;
            self.scores.prune(now, |p| connections.contains_key(p));
            self.ip_scores.prune(now);
            let scores = &self.scores;
            self.peer_ips
                .retain(|p, _| connections.contains_key(p) || scores.get(p).is_some());
            self.gossip_buckets
                .retain(|(p, _), b| connections.contains_key(p) || !b.is_full(now));
            self.tx_budgets.retain(|p, b| {
                connections.contains_key(p) || !(b.txs.is_full(now) && b.bytes.is_full(now))
            });
            self.request_buckets
                .retain(|p, b| connections.contains_key(p) || !b.is_full(now));
            if !self.connections.is_empty() && self.connections.len() < 4 {
                self.kad_bootstrap(now);
            }
        }
    }

    fn kad_bootstrap(&mut self, now: Instant) {
        if self
            .last_kad_bootstrap
            .is_some_and(|t| now.saturating_duration_since(t) < KAD_BOOTSTRAP_MIN_INTERVAL)
        {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            if kad.bootstrap().is_ok() {
                self.last_kad_bootstrap = Some(now);
            }
        }
    }

    /// Queue an event for the node without ever blocking the swarm: when its lane is full
    /// (the node is behind), the event is dropped and counted as `kind` (the lanes are the
    /// only queue; see `lanes.rs`).
    fn emit(&mut self, event: Event, kind: &'static str) -> bool {
        if self.events.is_closed() {
            return false;
        }
        let queued = self.lanes.push(event);
        if !queued {
            self.metrics.dropped(kind);
        }
        queued
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.emit(Event::Listening(address), "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                if let Some(ip) = addrs::ip_key(&remote) {
                    self.peer_ips.insert(peer_id, ip);
                }
                self.connections.entry(peer_id).or_default().insert(
                    connection_id,
                    Conn {
                        remote,
                        outbound: endpoint.is_dialer(),
                    },
                );
                self.metrics.peers.set(self.connections.len() as i64);
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.emit(Event::PeerConnected(peer_id), "peer_connected");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                }
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.agents.remove(&peer_id);
                    debug!(peer = %peer_id, "peer disconnected");
                    self.emit(Event::PeerDisconnected(peer_id), "peer_disconnected");
                }
                self.metrics.peers.set(self.connections.len() as i64);
            }
            SwarmEvent::IncomingConnectionError {
                error: ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                let reason = denied_reason(&cause);
                debug!(addr = %send_back_addr, reason, "inbound connection denied");
                self.metrics
                    .connections_denied
                    .get_or_create(&Reason { reason })
                    .inc();
            }
            SwarmEvent::OutgoingConnectionError {
                error: DialError::Denied { cause },
                peer_id,
                ..
            } => {
                let reason = denied_reason(&cause);
                debug!(peer = ?peer_id, reason, "outbound connection denied");
                self.metrics
                    .connections_denied
                    .get_or_create(&Reason { reason })
                    .inc();
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(ev) => {
                self.metrics.libp2p.record(&ev);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = ev
                {
                    self.on_gossip(propagation_source, message_id, message);
                }
            }
            BehaviourEvent::Identify(ev) => {
                self.metrics.libp2p.record(&ev);
                if let identify::Event::Received { peer_id, info, .. } = ev {
                    self.on_identify(peer_id, info);
                }
            }
            BehaviourEvent::Kad(ev) => self.metrics.libp2p.record(&ev),
            BehaviourEvent::Ping(ev) => self.metrics.libp2p.record(&ev),
            BehaviourEvent::Sync(ev) => self.on_sync(ev),
            BehaviourEvent::Gate(never) => match never {},
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != identify_version(&self.cfg.chain_id) {
            // Another chain (or another network altogether): not a peer for us.
            info!(%peer, version = %info.protocol_version, "disconnecting peer of another network");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if self.connections.contains_key(&peer) {
            self.agents
                .insert(peer, Software::parse(&info.agent_version));
        }
        let Ok(kad_proto) = kad_protocol(&self.cfg.chain_id) else {
            return;
        };
        if !info.protocols.contains(&kad_proto) {
            return;
        }
        // Any live peer can bootstrap a newcomer: what it says it listens on goes into the
        // routing table, so others' lookups find it. Only what is plausible, though, and a
        // bounded number per peer: the table is handed out to whoever asks, so junk
        // (unspecified, multicast, transports nobody speaks, someone else's loopback, or
        // the addresses of a victim to be flooded with dials) must not spread from it.
        let seen_from = self
            .connections
            .get(&peer)
            .and_then(|conns| conns.values().find_map(|c| addrs::ip_of(&c.remote)));
        let loopback_ok = self
            .cfg
            .listen
            .iter()
            .any(|a| addrs::ip_of(a).is_some_and(|ip| ip.is_loopback()));
        let announced = info.listen_addrs.len();
        let keep = addrs::for_kademlia(&peer, info.listen_addrs, seen_from, loopback_ok);
        if keep.len() < announced {
            debug!(%peer, announced, kept = keep.len(), "implausible or surplus addresses not stored");
        }
        if keep.is_empty() {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            for addr in &keep {
                kad.add_address(&peer, addr.clone());
            }
            // Earlier announcements stay in the table until replaced: drop the oldest of
            // those beyond the bound.
            let stored: Vec<Multiaddr> = kad
                .kbucket(peer)
                .and_then(|bucket| {
                    bucket
                        .iter()
                        .find(|e| *e.node.key.preimage() == peer)
                        .map(|e| e.node.value.iter().cloned().collect())
                })
                .unwrap_or_default();
            let mut excess = stored.len().saturating_sub(addrs::MAX_KAD_ADDRS_PER_PEER);
            for old in stored {
                if excess == 0 {
                    break;
                }
                let current = keep
                    .iter()
                    .any(|k| k == &old || k.clone().with_p2p(peer).is_ok_and(|k| k == old));
                if !current {
                    kad.remove_address(&peer, &old);
                    excess -= 1;
                }
            }
        }
        self.kad_bootstrap(Instant::now());
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let now = Instant::now();
        let ignore = |task: &mut Task, acceptance| {
            let _ = task
                .swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &source, acceptance);
        };
        let (Some(topic), Ok(digest)) = (
            self.topics.get(&message.topic).copied(),
            <[u8; 32]>::try_from(id.0.as_slice()),
        ) else {
            ignore(self, gossipsub::MessageAcceptance::Ignore);
            return;
        };
        let (rate, rate_limited) = match topic {
            Topic::Tx | Topic::TxBatch => {
                (self.cfg.max_tx_msgs_per_sec_per_peer, "tx_rate_limited")
            }
            Topic::Consensus => (
                self.cfg.max_consensus_msgs_per_sec_per_peer,
                "consensus_rate_limited",
            ),
            Topic::Proposal => (
                self.cfg.max_proposal_msgs_per_sec_per_peer,
                "proposal_rate_limited",
            ),
        };
        let flood = |task: &mut Task| {
            task.metrics.dropped(rate_limited);
            ignore(task, gossipsub::MessageAcceptance::Ignore);
            let reason = PenaltyReason::GossipFlood;
            task.penalize(source, reason, reason.default_points());
        };
        let bucket = self
            .gossip_buckets
            .entry((source, topic))
            .or_insert_with(|| TokenBucket::new(rate, now));
        if !bucket.try_take(now) {
            flood(self);
            return;
        }
        let len = message.data.len();
        let max = match topic {
            Topic::Tx => self.cfg.max_tx_message_bytes,
            Topic::TxBatch => self.cfg.max_tx_batch_bytes,
            Topic::Proposal => self.cfg.max_proposal_message_bytes,
            Topic::Consensus => usize::MAX,
        };
        if len > max {
            self.metrics.invalid("oversized");
            ignore(self, gossipsub::MessageAcceptance::Reject);
            let reason = PenaltyReason::Oversized;
            self.penalize(source, reason, reason.default_points());
            return;
        }
        // Txs are counted, not messages: a batch is as many txs as its length prefix says.
        let txs = match topic {
            Topic::Tx => Some(1),
            Topic::TxBatch => match batch_len(&message.data) {
                Some(n) => Some(n),
                None => {
                    self.metrics.invalid("undecodable");
                    ignore(self, gossipsub::MessageAcceptance::Reject);
                    let reason = PenaltyReason::Undecodable;
                    self.penalize(source, reason, reason.default_points());
                    return;
                }
            },
            Topic::Consensus | Topic::Proposal => None,
        };
        if let Some(txs) = txs {
            let (tx_rate, byte_rate) = (
                self.cfg.max_txs_per_sec_per_peer,
                self.cfg.max_tx_bytes_per_sec_per_peer,
            );
            let budget = self.tx_budgets.entry(source).or_insert_with(|| TxBudget {
                txs: TokenBucket::new(tx_rate, now),
                bytes: TokenBucket::new(byte_rate, now),
            });
            let (txs, bytes) = (f64::from(txs.max(1)), len as f64);
            if !(budget.txs.allows(txs, now) && budget.bytes.allows(bytes, now)) {
                flood(self);
                return;
            }
            budget.txs.take(txs);
            budget.bytes.take(bytes);
        }
        self.metrics.gossip(topic.as_str(), "in", len);
        let event = Event::Message {
            topic,
            msg_id: MessageId(digest),
            source,
            author: message.source,
            data: message.data,
        };
        let full = match topic {
            Topic::Consensus | Topic::Proposal => "consensus_channel_full",
            Topic::Tx | Topic::TxBatch => "tx_channel_full",
        };
        if !self.emit(event, full) {
            // Not validated means not forwarded; free the cache slot now.
            ignore(self, gossipsub::MessageAcceptance::Ignore);
        }
    }

    fn on_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event as E, Message as M};
        match event {
            E::Message {
                peer,
                message:
                    M::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => self.on_inbound_request(peer, request_id, request, channel),
            E::Message {
                message:
                    M::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(reply) = self.pending_outbound.remove(&request_id) else {
                    return;
                };
                let result = match response {
                    SyncResponse::Data(data) => {
                        self.metrics.sync("outbound", "ok");
                        Ok(data)
                    }
                    SyncResponse::Error(e) => {
                        self.metrics.sync("outbound", "refused");
                        Err(RequestError::Refused(e))
                    }
                };
                let _ = reply.send(result);
            }
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let (outcome, err) = match error {
                    request_response::OutboundFailure::Io(e) => match frame_too_large(&e) {
                        Some(_) => (
                            "response_too_large",
                            RequestError::ResponseTooLarge {
                                limit: self.cfg.sync_max_response_bytes,
                            },
                        ),
                        None => ("failed", RequestError::Failed(e.to_string())),
                    },
                    request_response::OutboundFailure::Timeout => {
                        ("timeout", RequestError::Timeout)
                    }
                    request_response::OutboundFailure::DialFailure => (
                        "unreachable",
                        RequestError::Unreachable("dial failed".into()),
                    ),
                    request_response::OutboundFailure::ConnectionClosed => (
                        "unreachable",
                        RequestError::Unreachable("connection closed".into()),
                    ),
                    request_response::OutboundFailure::UnsupportedProtocols => {
                        ("unsupported", RequestError::Unsupported)
                    }
                };
                self.metrics.sync("outbound", outcome);
                if err.is_peer_fault() {
                    self.metrics.invalid("oversized_response");
                    let reason = PenaltyReason::Oversized;
                    self.penalize(peer, reason, reason.default_points());
                }
                if let Some(reply) = self.pending_outbound.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            E::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(ch) = self.inbound_ids.remove(&request_id) {
                    self.pending_inbound.remove(&ch);
                }
                let outcome = match &error {
                    request_response::InboundFailure::Timeout => "timeout",
                    request_response::InboundFailure::ResponseOmission => "omitted",
                    _ => "failed",
                };
                debug!(%peer, %error, "inbound sync request failed");
                self.metrics.sync("inbound", outcome);
            }
            E::ResponseSent { .. } => self.metrics.sync("inbound", "ok"),
        }
    }

    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let now = Instant::now();
        let rate = self.cfg.max_sync_requests_per_sec_per_peer;
        let allowed = self
            .request_buckets
            .entry(peer)
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now);
        let refuse = |task: &mut Task, ch, e: RemoteError, outcome: &'static str| {
            task.metrics.sync("inbound", outcome);
            let _ = task
                .swarm
                .behaviour_mut()
                .sync
                .send_response(ch, SyncResponse::Error(e));
        };
        if !allowed {
            refuse(self, channel, RemoteError::RateLimited, "rate_limited");
            let reason = PenaltyReason::RequestFlood;
            self.penalize(peer, reason, reason.default_points());
            return;
        }
        let data = match request {
            SyncRequest::Data(data) => data,
            SyncRequest::TooLarge(size) => {
                debug!(%peer, size, "oversized sync request refused");
                refuse(
                    self,
                    channel,
                    RemoteError::RequestTooLarge,
                    "request_too_large",
                );
                self.metrics.invalid("oversized_request");
                let reason = PenaltyReason::Oversized;
                self.penalize(peer, reason, reason.default_points());
                return;
            }
        };
        if self.pending_inbound.len() >= self.cfg.max_pending_inbound_requests {
            refuse(self, channel, RemoteError::Busy, "busy");
            return;
        }
        let id = self.next_channel;
        self.next_channel = self.next_channel.wrapping_add(1);
        let event = Event::Request {
            peer,
            data,
            channel: ResponseChannelId(id),
        };
        if self.emit(event, "request_channel_full") {
            self.pending_inbound.insert(id, (peer, request_id, channel));
            self.inbound_ids.insert(request_id, id);
        } else {
            refuse(self, channel, RemoteError::Busy, "busy");
        }
    }
}

/// The number of txs in a tx batch, `borsh(Vec<SignedTx>)`: its u32 little-endian length
/// prefix. `None` when the message cannot be one: shorter than the prefix, or claiming more
/// txs than it has bytes left (every tx takes at least one).
fn batch_len(data: &[u8]) -> Option<u32> {
    let prefix: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let n = u32::from_le_bytes(prefix);
    (n as usize <= data.len() - 4).then_some(n)
}

fn denied_reason(cause: &libp2p::swarm::ConnectionDenied) -> &'static str {
    if let Some(d) = cause.downcast_ref::<Denied>() {
        d.as_str()
    } else if cause
        .downcast_ref::<connection_limits::Exceeded>()
        .is_some()
    {
        "connection_limit"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::batch_len;

    #[test]
    fn batch_length_prefix() {
        let mut batch = 3u32.to_le_bytes().to_vec();
        batch.extend_from_slice(&[7; 300]);
        assert_eq!(batch_len(&batch), Some(3));
        assert_eq!(batch_len(&0u32.to_le_bytes()), Some(0));
        assert_eq!(batch_len(&[1, 0]), None);
        // Claims more txs than it has bytes.
        let mut lie = 1000u32.to_le_bytes().to_vec();
        lie.extend_from_slice(&[0; 999]);
        assert_eq!(batch_len(&lie), None);
        assert_eq!(batch_len(&u32::MAX.to_le_bytes()), None);
    }
}
