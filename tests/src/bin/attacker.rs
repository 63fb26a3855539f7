//! `tally-attacker`: a byzantine peer for tests. It joins a Tally network through the
//! real network stack (`tally-p2p`: libp2p, gossipsub, request-response) from its own
//! loopback address, dials the given targets and sends garbage of one kind for a bounded
//! time and message count, then prints one JSON object of statistics on stdout.
//!
//! Test tooling only: it never runs inside a node.
//!
//! ```text
//! tally-attacker --mode garbage --ip 127.0.100.200 --target /ip4/127.0.100.2/tcp/4000/p2p/12D3.. \
//!     --duration-secs 5
//! ```
//!
//! Modes: `garbage` (random bytes on both topics), `bad-sig-txs` (well-formed txs whose
//! signature does not verify), `invalid-blocks` (proposals whose block hash does not match,
//! or signed by a key that is not the proposer), `unknown-validator-votes` (votes signed by
//! a key outside the validator set), `oversized` (tx-topic messages above the tx cap),
//! `flood` (well-formed but useless txs and consensus messages far above the per-peer
//! rate), `sync-flood` (`/tally/sync/1` status requests far above the per-peer rate).
//! Exact duplicates are not sent: gossipsub drops them from its seen-cache on both sides
//! before any validation, so distinct but useless messages are the costlier flood.
//!
//! Relay modes, which need live traffic: `replay-votes` re-wraps the live votes it hears
//! into `Rebroadcast` messages (a new gossip id each time) at `--rate`; `swap-bodies`
//! republishes every proposal it hears with three other bodies (last tx removed, first tx
//! removed, order changed; the signed header untouched), a compact proposal with the same
//! three changes to its tx ids. Validator mode (`--validator-key-file`, `--genesis`):
//! `future-time` follows the chain over `/tally/sync/1` and, at each of its turns to
//! propose, proposes an empty block timed `u64::MAX` or one hour ahead (alternately), and
//! prevotes and precommits it; `committed-txs` (keyless) re-sends the txs of the blocks
//! the chain committed last, as batches of up to 1,024 (a different subset each time) at
//! `--rate`; `padded-batches` does the same with one new, valid transfer (from `--account`,
//! nonces from 0) at the head of each batch, so that the batch is not all stale; `equivocate` signs, for every (height, round) it hears
//! votes of, a prevote for a made-up block (run it next to the real validator with the same
//! key: the two prevotes are a double sign); `flood-rounds` signs, at `--rate`, a stream of
//! distinct but well-signed messages no honest validator sends: votes for rounds far past
//! the live one, extra prevotes with made-up hashes in the live rounds, and proposals at
//! every round it is the proposer of (in and past the live window), each with a new body
//! of about `--oversized-bytes` bytes of made-up txs.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ledger::crypto::Keypair;
use ledger::hash::sha256;
use ledger::types::{Block, Commit, Header, Payload, Proposal, SignedTx, Tx, Vote, VoteKind};
use rand::{Rng, RngCore};
use serde_json::json;
use tally_node::wire::{CompactProposal, ConsensusMessage, SyncRequest, SyncResponse, SyncStatus};
use tally_p2p::{
    CancellationToken, Event, Multiaddr, NetworkConfig, NetworkHandle, PeerId, Registry, Topic,
    Verdict,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Garbage,
    BadSigTxs,
    InvalidBlocks,
    UnknownValidatorVotes,
    Oversized,
    Flood,
    SyncFlood,
    ReplayVotes,
    SwapBodies,
    FutureTime,
    Equivocate,
    CommittedTxs,
    PaddedBatches,
    FloodRounds,
}

#[derive(Parser, Debug)]
#[command(
    name = "tally-attacker",
    about = "A byzantine Tally peer for tests",
    args_override_self = true
)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Peers to attack (`/ip4/../tcp/../p2p/<id>`), repeatable.
    #[arg(long = "target", required = true)]
    targets: Vec<Multiaddr>,
    /// Our own loopback address.
    #[arg(long, default_value = "127.0.0.250")]
    ip: String,
    #[arg(long, default_value = "tally-test")]
    chain_id: String,
    /// Hex Ed25519 secret of our libp2p identity (random when absent).
    #[arg(long)]
    key: Option<String>,
    /// Stop after this long.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Gossip messages per second (both topics together); sync requests for `flood` come
    /// on top.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Stop sending after this many gossip messages (then only redial, see `--redial`).
    #[arg(long, default_value_t = 100_000)]
    max_messages: u64,
    /// Size of an `oversized` message.
    #[arg(long, default_value_t = 16 * 1024)]
    oversized_bytes: usize,
    /// A funded account index (the test harness's keys) used as the sender of
    /// `bad-sig-txs`, so the tx passes the state checks and reaches signature checking.
    #[arg(long, default_value_t = 0)]
    account: usize,
    /// Keep redialling targets we are not connected to (every 250 ms), e.g. to probe a ban.
    #[arg(long)]
    redial: bool,
    /// Validator modes: the validator key we hold (`validator_key.json`).
    #[arg(long)]
    validator_key_file: Option<std::path::PathBuf>,
    /// Validator modes: the chain's genesis.json.
    #[arg(long)]
    genesis: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    sent_tx: AtomicU64,
    sent_consensus: AtomicU64,
    publish_errors: AtomicU64,
    requests_sent: AtomicU64,
    requests_refused: AtomicU64,
    requests_failed: AtomicU64,
    /// Relay and validator modes: live consensus messages heard, and attacks made from them.
    heard_consensus: AtomicU64,
    attacks: AtomicU64,
}

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret: [u8; 32] = match &args.key {
        Some(h) => hex::decode(h)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("--key must be 32 bytes of hex"))?,
        None => rand::thread_rng().gen(),
    };
    let mut cfg = NetworkConfig::new(args.chain_id.clone(), secret);
    cfg.listen = vec![format!("/ip4/{}/tcp/0", args.ip).parse()?];
    cfg.bootstrap = args.targets.clone();
    cfg.discovery = false;
    // We are the flooder: do not let our own stack refuse to send.
    cfg.max_tx_message_bytes = cfg.max_message_bytes;
    cfg.max_tx_batch_bytes = cfg.max_message_bytes;
    let mut registry = Registry::default();
    let shutdown = CancellationToken::new();
    let (net, mut events) = tally_p2p::spawn(cfg, &mut registry, shutdown.clone())?;
    let me = net.local_peer_id();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration_secs);
    let target_ids: HashSet<PeerId> = args
        .targets
        .iter()
        .filter_map(|a| match a.iter().last() {
            Some(tally_p2p::multiaddr::Protocol::P2p(p)) => Some(p),
            _ => None,
        })
        .collect();

    // Connection bookkeeping: every (dis)connection with its time.
    let connected = Arc::new(std::sync::Mutex::new(HashSet::<PeerId>::new()));
    let timeline = Arc::new(std::sync::Mutex::new(Timeline::default()));
    let stats = Arc::new(Stats::default());
    let live = Arc::new(Live::default());
    {
        let net = net.clone();
        let connected = connected.clone();
        let timeline = timeline.clone();
        let (live, stats, mode) = (live.clone(), stats.clone(), args.mode);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Message {
                        msg_id,
                        source,
                        topic,
                        data,
                        ..
                    } => {
                        let _ = net.validated(msg_id, source, Verdict::Ignore).await;
                        if topic == Topic::Proposal {
                            stats.heard_consensus.fetch_add(1, Ordering::Relaxed);
                            on_heard_compact(mode, &net, &stats, &data).await;
                        }
                        if topic == Topic::Consensus {
                            stats.heard_consensus.fetch_add(1, Ordering::Relaxed);
                            on_heard(mode, &net, &live, &stats, &data).await;
                        }
                    }
                    Event::Request { channel, .. } => {
                        // Answer status polls with the tip we follow, like an honest
                        // node, so that the victims keep us as a peer.
                        let answer = match *live.tip.lock().unwrap() {
                            Some((height, tip_hash)) => {
                                ledger::codec::encode(&SyncResponse::Status(SyncStatus {
                                    height,
                                    tip_hash,
                                }))
                            }
                            None => Vec::new(),
                        };
                        let _ = net.respond(channel, answer).await;
                    }
                    Event::PeerConnected(p) => {
                        connected.lock().unwrap().insert(p);
                        note(&timeline, start, "connected", p);
                    }
                    Event::PeerDisconnected(p) => {
                        connected.lock().unwrap().remove(&p);
                        note(&timeline, start, "disconnected", p);
                    }
                    _ => {}
                }
            }
        });
    }
    if args.redial {
        let net = net.clone();
        let connected = connected.clone();
        let targets = args.targets.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                for t in &targets {
                    let id = match t.iter().last() {
                        Some(tally_p2p::multiaddr::Protocol::P2p(p)) => Some(p),
                        _ => None,
                    };
                    if id.is_some_and(|p| !connected.lock().unwrap().contains(&p)) {
                        let _ = net.dial(t.clone()).await;
                    }
                }
            }
        });
    }

    // Wait (bounded) until a target is connected and subscribed, i.e. a publish succeeds.
    let first_connect = wait_connected(&connected, &target_ids, deadline).await;

    let mut gen = Generator::new(&args, live.clone());
    if args.mode == Mode::SyncFlood {
        let targets: Vec<PeerId> = target_ids.iter().copied().collect();
        spawn_request_flood(net.clone(), targets, stats.clone(), deadline);
    }
    if matches!(args.mode, Mode::CommittedTxs | Mode::PaddedBatches) {
        let targets: Vec<PeerId> = target_ids.iter().copied().collect();
        let fresh =
            (args.mode == Mode::PaddedBatches).then(|| tally_tests::account_key(args.account));
        tokio::spawn(replay_committed_txs(
            net.clone(),
            targets,
            stats.clone(),
            deadline,
            args.rate,
            fresh,
        ));
    }
    if matches!(
        args.mode,
        Mode::FutureTime | Mode::Equivocate | Mode::FloodRounds
    ) {
        let validator = Arc::new(Validator::load(&args)?);
        let targets: Vec<PeerId> = target_ids.iter().copied().collect();
        if args.mode == Mode::FloodRounds {
            tokio::spawn(validator.clone().flood_rounds(
                net.clone(),
                live.clone(),
                stats.clone(),
                deadline,
                args.rate,
                args.oversized_bytes,
            ));
        }
        tokio::spawn(validator.run(net.clone(), targets, live.clone(), stats.clone(), deadline));
    }
    // Sends in 10 ms batches: timers are too coarse for one message per period at high
    // rates.
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = (f64::from(args.rate) * TICK.as_secs_f64()).max(1.0);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    let mut credit = 0.0f64;
    // Modes driven by what they hear send from their own tasks.
    let gossip = !matches!(
        args.mode,
        Mode::SyncFlood
            | Mode::SwapBodies
            | Mode::FutureTime
            | Mode::Equivocate
            | Mode::CommittedTxs
            | Mode::PaddedBatches
            | Mode::FloodRounds
    );
    while gossip && Instant::now() < deadline && sent < args.max_messages {
        tick.tick().await;
        credit += per_tick;
        while credit >= 1.0 && sent < args.max_messages {
            credit -= 1.0;
            let (topic, data) = gen.next();
            match net.publish(topic, data).await {
                Ok(_) => match topic {
                    Topic::Tx | Topic::TxBatch => stats.sent_tx.fetch_add(1, Ordering::Relaxed),
                    Topic::Consensus | Topic::Proposal => {
                        stats.sent_consensus.fetch_add(1, Ordering::Relaxed)
                    }
                },
                Err(e) => {
                    if stats.publish_errors.load(Ordering::Relaxed) == 0 {
                        eprintln!("attacker: first publish error: {e}");
                    }
                    stats.publish_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
            sent += 1;
        }
    }
    let sending_ms = elapsed_ms(start);
    // With --redial (or a request flood), stay around until the deadline.
    if args.redial || !gossip {
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    }
    let connected_at_end: Vec<String> = connected
        .lock()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let out = json!({
        "mode": format!("{:?}", args.mode),
        "peer_id": me.to_string(),
        "first_connect_ms": first_connect,
        "sending_ms": sending_ms,
        "elapsed_ms": elapsed_ms(start),
        "sent_tx": stats.sent_tx.load(Ordering::Relaxed),
        "sent_consensus": stats.sent_consensus.load(Ordering::Relaxed),
        "publish_errors": stats.publish_errors.load(Ordering::Relaxed),
        "requests_sent": stats.requests_sent.load(Ordering::Relaxed),
        "requests_refused": stats.requests_refused.load(Ordering::Relaxed),
        "requests_failed": stats.requests_failed.load(Ordering::Relaxed),
        "heard_consensus": stats.heard_consensus.load(Ordering::Relaxed),
        "attacks": stats.attacks.load(Ordering::Relaxed),
        "connected_at_end": connected_at_end,
        "connects": timeline.lock().unwrap().connects,
        "disconnects": timeline.lock().unwrap().disconnects,
        "timeline": timeline.lock().unwrap().events,
    });
    println!("{out}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), net.closed())
        .await
        .ok();
    Ok(())
}

/// Connection events: counted, the first `MAX_EVENTS` kept with their times.
#[derive(Default)]
struct Timeline {
    connects: u64,
    disconnects: u64,
    events: Vec<serde_json::Value>,
}

const MAX_EVENTS: usize = 32;

fn note(timeline: &std::sync::Mutex<Timeline>, start: Instant, event: &str, peer: PeerId) {
    let mut t = timeline.lock().unwrap();
    if event == "connected" {
        t.connects += 1;
    } else {
        t.disconnects += 1;
    }
    if t.events.len() < MAX_EVENTS {
        t.events
            .push(json!({"t_ms": elapsed_ms(start), "event": event, "peer": peer.to_string()}));
    }
}

async fn wait_connected(
    connected: &std::sync::Mutex<HashSet<PeerId>>,
    targets: &HashSet<PeerId>,
    deadline: Instant,
) -> Option<u64> {
    let start = Instant::now();
    while Instant::now() < deadline {
        if connected
            .lock()
            .unwrap()
            .iter()
            .any(|p| targets.contains(p))
        {
            // Let gossipsub exchange subscriptions before the first publish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Some(elapsed_ms(start));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// `flood`: sync status requests to every target at ~10x the per-peer limit, bounded by the
/// deadline and by 64 in flight per target.
fn spawn_request_flood(
    net: NetworkHandle,
    targets: Vec<PeerId>,
    stats: Arc<Stats>,
    deadline: Instant,
) {
    let req = ledger::codec::encode(&SyncRequest::Status);
    for peer in targets {
        let net = net.clone();
        let stats = stats.clone();
        let req = req.clone();
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
            while Instant::now() < deadline {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let net = net.clone();
                let stats = stats.clone();
                let req = req.clone();
                stats.requests_sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    match net.request(peer, req).await {
                        Ok(_) => {}
                        Err(tally_p2p::RequestError::Refused(_)) => {
                            stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
}

/// Makes the messages of one mode.
struct Generator {
    mode: Mode,
    chain_id: String,
    n: u64,
    rng: rand::rngs::ThreadRng,
    /// A key outside the validator set (and an unfunded account).
    stranger: Keypair,
    /// A funded account's key (bad-sig-txs).
    funded: Keypair,
    oversized_bytes: usize,
    live: Arc<Live>,
}

impl Generator {
    fn new(args: &Args, live: Arc<Live>) -> Self {
        Generator {
            live,
            mode: args.mode,
            chain_id: args.chain_id.clone(),
            n: 0,
            rng: rand::thread_rng(),
            stranger: Keypair::generate(),
            funded: tally_tests::account_key(args.account),
            oversized_bytes: args.oversized_bytes,
        }
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        v
    }

    fn random_hash(&mut self) -> [u8; 32] {
        self.rng.gen()
    }

    fn next(&mut self) -> (Topic, Vec<u8>) {
        self.n += 1;
        let n = self.n;
        match self.mode {
            Mode::Garbage => {
                let len = self.rng.gen_range(1..512);
                let topic = match n % 3 {
                    0 => Topic::Tx,
                    1 => Topic::TxBatch,
                    _ => Topic::Consensus,
                };
                (topic, self.random_bytes(len))
            }
            Mode::BadSigTxs => {
                // Nonce 0 of a funded account the honest load does not use: the state
                // checks pass, the signature does not.
                let mut stx = self.funded.sign_tx(Tx {
                    chain_id: self.chain_id.clone(),
                    from: self.funded.public_key(),
                    nonce: 0,
                    fee: 1,
                    payload: Payload::Transfer {
                        to: [7; 20],
                        amount: n,
                    },
                });
                stx.signature[5] ^= 0x5a;
                stx.signature[40] ^= 0x01;
                // Alternately alone and as a one-tx batch: both paths must catch it.
                if n % 2 == 0 {
                    (Topic::TxBatch, ledger::codec::encode(&vec![stx]))
                } else {
                    (Topic::Tx, ledger::codec::encode(&stx))
                }
            }
            Mode::InvalidBlocks => {
                let block = Block {
                    header: Header {
                        version: 1,
                        chain_id: self.chain_id.clone(),
                        height: 1_000_000 + n,
                        round: 0,
                        time_ms: n,
                        prev_hash: self.random_hash(),
                        tx_root: [0; 32],
                        state_root: self.random_hash(),
                        validators_hash: [0; 32],
                        proposer: self.stranger.address(),
                        last_commit_hash: [0; 32],
                        next_validators_hash: None,
                    },
                    txs: Vec::new(),
                    last_commit: None,
                    evidence: Vec::new(),
                };
                // Odd: the proposal names another hash than its block's. Even: the hash
                // matches but the signer is not the proposer.
                let block_hash = if n % 2 == 1 {
                    self.random_hash()
                } else {
                    block.hash()
                };
                let proposal = self.stranger.sign_proposal(Proposal {
                    chain_id: self.chain_id.clone(),
                    height: block.header.height,
                    round: 0,
                    pol_round: None,
                    block_hash,
                });
                let msg = ConsensusMessage::Proposal { proposal, block };
                (Topic::Consensus, ledger::codec::encode(&msg))
            }
            Mode::UnknownValidatorVotes => {
                let hash = self.random_hash();
                let vote = self.stranger.sign_vote(Vote {
                    chain_id: self.chain_id.clone(),
                    height: 1_000_000 + n,
                    round: 0,
                    kind: if n % 2 == 0 {
                        VoteKind::Prevote
                    } else {
                        VoteKind::Precommit
                    },
                    block_hash: Some(hash),
                });
                (
                    Topic::Consensus,
                    ledger::codec::encode(&ConsensusMessage::Vote(vote)),
                )
            }
            Mode::Oversized => {
                let len = self.oversized_bytes;
                (Topic::Tx, self.random_bytes(len))
            }
            Mode::ReplayVotes => {
                // The live votes heard last, re-wrapped: nothing new, a new message id.
                let votes: Vec<_> = self.live.votes.lock().unwrap().iter().cloned().collect();
                let msg = ConsensusMessage::Rebroadcast {
                    sent_at_ms: n,
                    votes,
                    proposal: None,
                };
                (Topic::Consensus, ledger::codec::encode(&msg))
            }
            Mode::Flood
            | Mode::SyncFlood
            | Mode::SwapBodies
            | Mode::FutureTime
            | Mode::Equivocate
            | Mode::CommittedTxs
            | Mode::PaddedBatches
            | Mode::FloodRounds => {
                if n % 4 != 0 {
                    // An empty re-announcement: valid, useless, distinct bytes each time.
                    let msg = ConsensusMessage::Rebroadcast {
                        sent_at_ms: n,
                        votes: Vec::new(),
                        proposal: None,
                    };
                    (Topic::Consensus, ledger::codec::encode(&msg))
                } else {
                    // A well-signed tx from an account with no funds: ignored (state
                    // dependent, not provably malicious), so only the rate limit stops it.
                    let stx: SignedTx = self.stranger.sign_tx(Tx {
                        chain_id: self.chain_id.clone(),
                        from: self.stranger.public_key(),
                        nonce: n,
                        fee: 1,
                        payload: Payload::Transfer {
                            to: sha256(&n.to_le_bytes())[..20].try_into().unwrap(),
                            amount: 1,
                        },
                    });
                    (Topic::Tx, ledger::codec::encode(&stx))
                }
            }
        }
    }
}

/// Publishes one consensus message; counts it as an attack if it went out.
async fn publish_attack(net: &NetworkHandle, stats: &Stats, msg: &ConsensusMessage) -> bool {
    publish_attack_on(net, stats, Topic::Consensus, ledger::codec::encode(msg)).await
}

/// Publishes one message on `topic`; counts it as an attack if it went out.
async fn publish_attack_on(
    net: &NetworkHandle,
    stats: &Stats,
    topic: Topic,
    data: Vec<u8>,
) -> bool {
    let sent = net.publish(topic, data).await.is_ok();
    if sent {
        stats.attacks.fetch_add(1, Ordering::Relaxed);
        stats.sent_consensus.fetch_add(1, Ordering::Relaxed);
    }
    sent
}

/// What relay and validator modes know of the live chain.
#[derive(Default)]
struct Live {
    /// The latest votes heard (at most a rebroadcast's worth).
    votes: std::sync::Mutex<std::collections::VecDeque<ledger::types::SignedVote>>,
    /// The highest round seen in votes, per height (validator mode: whose turn it is).
    rounds: std::sync::Mutex<std::collections::BTreeMap<u64, u32>>,
    /// The tip we follow: (height, hash).
    tip: std::sync::Mutex<Option<(u64, [u8; 32])>>,
}

impl Live {
    fn heard_vote(&self, v: &ledger::types::SignedVote) {
        let mut votes = self.votes.lock().unwrap();
        votes.push_back(v.clone());
        while votes.len() > tally_node::wire::MAX_REBROADCAST_VOTES {
            votes.pop_front();
        }
        let mut rounds = self.rounds.lock().unwrap();
        let r = rounds.entry(v.vote.height).or_insert(0);
        *r = (*r).max(v.vote.round);
        while rounds.len() > 16 {
            rounds.pop_first();
        }
    }
}

/// A consensus message heard: remember its votes; `swap-bodies` republishes its proposal
/// with the last transaction removed.
async fn on_heard(mode: Mode, net: &NetworkHandle, live: &Live, stats: &Stats, data: &[u8]) {
    let Ok(msg) = ledger::codec::decode::<ConsensusMessage>("consensus", data, 64 << 20) else {
        return;
    };
    let proposal = match msg {
        ConsensusMessage::Vote(v) => {
            live.heard_vote(&v);
            None
        }
        ConsensusMessage::Rebroadcast {
            votes, proposal, ..
        } => {
            votes.iter().for_each(|v| live.heard_vote(v));
            proposal
        }
        ConsensusMessage::Proposal { proposal, block } => Some((proposal, block)),
        ConsensusMessage::Evidence(_) => None,
    };
    if mode != Mode::SwapBodies {
        return;
    }
    let Some((proposal, block)) = proposal else {
        return;
    };
    for txs in other_bodies(&block.txs) {
        let msg = ConsensusMessage::Proposal {
            proposal: proposal.clone(),
            block: Block {
                txs,
                ..block.clone()
            },
        };
        publish_attack(net, stats, &msg).await;
    }
}

/// Other bodies under one signed header: the last item removed, and with two or more
/// also the first removed and the order reversed. None for an empty body.
fn other_bodies<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    let mut variants = Vec::new();
    if items.is_empty() {
        return variants;
    }
    variants.push(items[..items.len() - 1].to_vec());
    if items.len() >= 2 {
        variants.push(items[1..].to_vec());
        variants.push(items.iter().rev().cloned().collect());
    }
    variants
}

/// A compact proposal heard: `swap-bodies` republishes it with other tx ids under the
/// signed header (ids that do not rebuild the signed block).
async fn on_heard_compact(mode: Mode, net: &NetworkHandle, stats: &Stats, data: &[u8]) {
    if mode != Mode::SwapBodies {
        return;
    }
    let Ok(compact) = ledger::codec::decode::<CompactProposal>("compact", data, 64 << 20) else {
        return;
    };
    for tx_ids in other_bodies(&compact.tx_ids) {
        let msg = CompactProposal {
            tx_ids,
            ..compact.clone()
        };
        publish_attack_on(net, stats, Topic::Proposal, ledger::codec::encode(&msg)).await;
    }
}

/// A byzantine validator: holds a real validator key and proposes blocks timed far in the
/// future at its turns (`future-time`), or double-signs prevotes (`equivocate`).
struct Validator {
    key: Keypair,
    genesis: ledger::genesis::Genesis,
    mode: Mode,
}

impl Validator {
    fn load(args: &Args) -> anyhow::Result<Self> {
        let key_file = args
            .validator_key_file
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--validator-key-file is required for this mode"))?;
        let genesis = args
            .genesis
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--genesis is required for this mode"))?;
        Ok(Validator {
            key: tally_node::keys::read_validator_key(key_file)?,
            genesis: ledger::genesis::Genesis::load(genesis)?,
            mode: args.mode,
        })
    }

    async fn status(net: &NetworkHandle, peer: PeerId) -> Option<SyncStatus> {
        let req = ledger::codec::encode(&SyncRequest::Status);
        let bytes = net.request(peer, req).await.ok()?;
        match ledger::codec::decode::<SyncResponse>("status", &bytes, 1024).ok()? {
            SyncResponse::Status(s) => Some(s),
            SyncResponse::Blocks(_) | SyncResponse::Txs(_) => None,
        }
    }

    async fn block(net: &NetworkHandle, peer: PeerId, height: u64) -> Option<(Block, Commit)> {
        let req = ledger::codec::encode(&SyncRequest::Blocks {
            from: height,
            count: 1,
        });
        let bytes = net.request(peer, req).await.ok()?;
        match ledger::codec::decode::<SyncResponse>("blocks", &bytes, 64 << 20).ok()? {
            SyncResponse::Blocks(mut b) if !b.is_empty() => Some(b.swap_remove(0)),
            _ => None,
        }
    }

    /// Follows the tip; at each (height, round) where we are the proposer, proposes an
    /// empty block with a far-future time and votes for it.
    async fn run(
        self: Arc<Self>,
        net: NetworkHandle,
        targets: Vec<PeerId>,
        live: Arc<Live>,
        stats: Arc<Stats>,
        deadline: Instant,
    ) {
        let me = self.key.address();
        let mut done: HashSet<(u64, u32)> = HashSet::new();
        let mut parent: Option<(Block, Commit)> = None;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut tip = None;
            for &peer in &targets {
                if let Some(s) = Self::status(&net, peer).await {
                    tip = Some((peer, s));
                    break;
                }
            }
            let Some((peer, status)) = tip else { continue };
            *live.tip.lock().unwrap() = Some((status.height, status.tip_hash));
            if status.height == 0 || self.mode == Mode::FloodRounds {
                continue;
            }
            if parent
                .as_ref()
                .is_none_or(|(b, _)| b.header.height != status.height)
            {
                parent = Self::block(&net, peer, status.height).await;
            }
            let Some((block, commit)) = parent.as_ref() else {
                continue;
            };
            let height = status.height + 1;
            let round = live
                .rounds
                .lock()
                .unwrap()
                .get(&height)
                .copied()
                .unwrap_or(0);
            let g = &self.genesis;
            if self.mode == Mode::Equivocate {
                if live.rounds.lock().unwrap().contains_key(&height) && done.insert((height, round))
                {
                    self.equivocate(&net, &stats, height, round).await;
                }
                continue;
            }
            if g.validators.proposer(height, round).address != me || !done.insert((height, round)) {
                continue;
            }
            let n = stats.attacks.fetch_add(1, Ordering::Relaxed);
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let time_ms = if n % 2 == 0 {
                u64::MAX
            } else {
                now + 3_600_000
            };
            let template = ledger::block::BlockTemplate {
                chain_id: g.chain_id.clone(),
                height,
                round,
                time_ms,
                prev_hash: block.hash(),
                validators_hash: g.validators.hash(),
                proposer: me,
                last_commit: Some(commit.clone()),
            };
            // An empty block leaves the state as it is.
            let forged = in_chain_protocol(
                g,
                ledger::block::assemble_empty(template, block.header.state_root),
            );
            let hash = forged.hash();
            eprintln!("attacker: proposing height {height} round {round} with time_ms {time_ms}");
            let proposal = self.key.sign_proposal(Proposal {
                chain_id: g.chain_id.clone(),
                height,
                round,
                pol_round: None,
                block_hash: hash,
            });
            let mut msgs = vec![ConsensusMessage::Proposal {
                proposal,
                block: forged,
            }];
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                msgs.push(ConsensusMessage::Vote(self.key.sign_vote(Vote {
                    chain_id: g.chain_id.clone(),
                    height,
                    round,
                    kind,
                    block_hash: Some(hash),
                })));
            }
            for msg in msgs {
                if net
                    .publish(Topic::Consensus, ledger::codec::encode(&msg))
                    .await
                    .is_ok()
                {
                    stats.sent_consensus.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Validator {
    /// `flood-rounds`: `rate` signed messages a second for the height after the tip we
    /// follow, in turn a vote for a far round, a prevote with a made-up hash in one of the
    /// live rounds, and a proposal (with a new body of ~`body_bytes`) at one of our rounds
    /// to propose, from round 0 to ~10,000.
    async fn flood_rounds(
        self: Arc<Self>,
        net: NetworkHandle,
        live: Arc<Live>,
        stats: Arc<Stats>,
        deadline: Instant,
        rate: u32,
        body_bytes: usize,
    ) {
        let g = &self.genesis;
        let me = self.key.address();
        let chain_id = g.chain_id.clone();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let stranger = Keypair::generate();
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut next = Instant::now();
        let mut n: u64 = 0;
        while Instant::now() < deadline {
            tokio::time::sleep_until(next.into()).await;
            next += period;
            let Some((tip, _)) = *live.tip.lock().unwrap() else {
                continue;
            };
            let height = tip + 1;
            n += 1;
            let msg = match n % 3 {
                0 => ConsensusMessage::Vote(self.key.sign_vote(Vote {
                    chain_id: chain_id.clone(),
                    height,
                    round: 1_000 + (n / 3) as u32,
                    kind: if n % 2 == 0 {
                        VoteKind::Prevote
                    } else {
                        VoteKind::Precommit
                    },
                    block_hash: None,
                })),
                1 => ConsensusMessage::Vote(self.key.sign_vote(Vote {
                    chain_id: chain_id.clone(),
                    height,
                    round: rng.gen_range(0..4),
                    kind: VoteKind::Prevote,
                    block_hash: Some(rng.gen()),
                })),
                _ => {
                    // Our k-th round to propose at this height.
                    let k = (n / 3) % 2_500;
                    let Some(round) = (0..u32::MAX)
                        .filter(|r| g.validators.proposer(height, *r).address == me)
                        .nth(k as usize)
                    else {
                        continue;
                    };
                    let mut txs = Vec::new();
                    let mut size = 0;
                    while size < body_bytes {
                        let tx = SignedTx {
                            tx: Tx {
                                chain_id: chain_id.clone(),
                                from: stranger.public_key(),
                                nonce: rng.gen(),
                                fee: 1,
                                payload: Payload::Transfer {
                                    to: rng.gen(),
                                    amount: 1,
                                },
                            },
                            signature: [7; 64],
                        };
                        size += ledger::codec::encode(&tx).len();
                        txs.push(tx);
                    }
                    let ids: Vec<_> = txs.iter().map(SignedTx::id).collect();
                    let block = Block {
                        header: Header {
                            version: ledger::types::HEADER_VERSION,
                            chain_id: chain_id.clone(),
                            height,
                            round,
                            time_ms: 0,
                            prev_hash: rng.gen(),
                            tx_root: ledger::merkle::merkle_root(&ids),
                            state_root: rng.gen(),
                            validators_hash: g.validators.hash(),
                            proposer: me,
                            last_commit_hash: ledger::hash::ZERO_HASH,
                            next_validators_hash: None,
                        },
                        txs,
                        last_commit: None,
                        evidence: Vec::new(),
                    };
                    let block = in_chain_protocol(g, block);
                    let proposal = self.key.sign_proposal(Proposal {
                        chain_id: chain_id.clone(),
                        height,
                        round,
                        pol_round: None,
                        block_hash: block.hash(),
                    });
                    ConsensusMessage::Proposal { proposal, block }
                }
            };
            publish_attack(&net, &stats, &msg).await;
        }
    }

    /// A prevote for a made-up block at (height, round): with the real validator's own
    /// prevote, a double sign.
    async fn equivocate(&self, net: &NetworkHandle, stats: &Stats, height: u64, round: u32) {
        let seed = format!("equivocate/{height}/{round}");
        let vote = self.key.sign_vote(Vote {
            chain_id: self.genesis.chain_id.clone(),
            height,
            round,
            kind: VoteKind::Prevote,
            block_hash: Some(sha256(seed.as_bytes())),
        });
        publish_attack(net, stats, &ConsensusMessage::Vote(vote)).await;
    }
}

/// `committed-txs`: keeps the txs of the last committed blocks (fetched over
/// `/tally/sync/1`) and publishes them again as batches, `rate` batches a second, each a
/// different rotation so gossipsub does not drop it as a duplicate.
async fn replay_committed_txs(
    net: NetworkHandle,
    targets: Vec<PeerId>,
    stats: Arc<Stats>,
    deadline: Instant,
    rate: u32,
    fresh: Option<Keypair>,
) {
    let mut txs: std::collections::VecDeque<SignedTx> = std::collections::VecDeque::new();
    let mut nonce = 0;
    let mut seen_height = 0;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next_refresh = Instant::now();
    let mut n: usize = 0;
    while Instant::now() < deadline {
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + Duration::from_millis(500);
            for &peer in &targets {
                let Some(status) = Validator::status(&net, peer).await else {
                    continue;
                };
                // Up to the last 256 blocks, 64 per request.
                let mut from = seen_height.max(status.height.saturating_sub(256)) + 1;
                while from <= status.height {
                    let req = ledger::codec::encode(&SyncRequest::Blocks { from, count: 64 });
                    let Ok(bytes) = net.request(peer, req).await else {
                        break;
                    };
                    let Ok(SyncResponse::Blocks(blocks)) =
                        ledger::codec::decode::<SyncResponse>("blocks", &bytes, 64 << 20)
                    else {
                        break;
                    };
                    if blocks.is_empty() {
                        break;
                    }
                    from += blocks.len() as u64;
                    txs.extend(blocks.into_iter().flat_map(|(b, _)| b.txs));
                }
                seen_height = seen_height.max(status.height);
                while txs.len() > 4096 {
                    txs.pop_front();
                }
                break;
            }
        }
        if txs.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        n += 1;
        let new_tx = fresh.as_ref().map(|key| {
            nonce += 1;
            tally_tests::transfer(key, nonce - 1, [9; 20], 1, 1)
        });
        let batch: Vec<&SignedTx> = new_tx
            .iter()
            .chain(
                txs.iter()
                    .cycle()
                    .skip(n % txs.len())
                    .take(txs.len().min(1024 - usize::from(new_tx.is_some()))),
            )
            .collect();
        if net
            .publish(Topic::TxBatch, ledger::codec::encode(&batch))
            .await
            .is_ok()
        {
            stats.attacks.fetch_add(1, Ordering::Relaxed);
            stats.sent_tx.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.publish_errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(period).await;
    }
}

/// Gives a forged block the header of the chain's protocol: on protocol 2 the header
/// carries `next_validators_hash` (the genesis set's: these attacks change no stake), so
/// honest nodes refuse the block for what the attack is about, not for its version.
fn in_chain_protocol(g: &ledger::genesis::Genesis, mut block: Block) -> Block {
    if g.params.protocol_version >= ledger::types::PROTOCOL_2 {
        block.header.version = ledger::types::PROTOCOL_2;
        block.header.next_validators_hash = Some(block.header.validators_hash);
    }
    block
}
