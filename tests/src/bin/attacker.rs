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

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ledger::crypto::Keypair;
use ledger::hash::sha256;
use ledger::types::{Block, Header, Payload, Proposal, SignedTx, Tx, Vote, VoteKind};
use rand::{Rng, RngCore};
use serde_json::json;
use tally_node::wire::{ConsensusMessage, SyncRequest};
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
}

#[derive(Parser, Debug)]
#[command(name = "tally-attacker", about = "A byzantine Tally peer for tests")]
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
}

#[derive(Default)]
struct Stats {
    sent_tx: AtomicU64,
    sent_consensus: AtomicU64,
    publish_errors: AtomicU64,
    requests_sent: AtomicU64,
    requests_refused: AtomicU64,
    requests_failed: AtomicU64,
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
    {
        let net = net.clone();
        let connected = connected.clone();
        let timeline = timeline.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Message { msg_id, source, .. } => {
                        let _ = net.validated(msg_id, source, Verdict::Ignore).await;
                    }
                    Event::Request { channel, .. } => {
                        let _ = net.respond(channel, Vec::new()).await;
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
    let stats = Arc::new(Stats::default());
    let first_connect = wait_connected(&connected, &target_ids, deadline).await;

    let mut gen = Generator::new(&args);
    if args.mode == Mode::SyncFlood {
        let targets: Vec<PeerId> = target_ids.iter().copied().collect();
        spawn_request_flood(net.clone(), targets, stats.clone(), deadline);
    }
    // Sends in 10 ms batches: timers are too coarse for one message per period at high
    // rates.
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = (f64::from(args.rate) * TICK.as_secs_f64()).max(1.0);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    let mut credit = 0.0f64;
    let gossip = args.mode != Mode::SyncFlood;
    while gossip && Instant::now() < deadline && sent < args.max_messages {
        tick.tick().await;
        credit += per_tick;
        while credit >= 1.0 && sent < args.max_messages {
            credit -= 1.0;
            let (topic, data) = gen.next();
            match net.publish(topic, data).await {
                Ok(_) => match topic {
                    Topic::Tx | Topic::TxBatch => stats.sent_tx.fetch_add(1, Ordering::Relaxed),
                    Topic::Consensus => stats.sent_consensus.fetch_add(1, Ordering::Relaxed),
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
}

impl Generator {
    fn new(args: &Args) -> Self {
        Generator {
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
                    },
                    txs: Vec::new(),
                    last_commit: None,
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
            Mode::Flood | Mode::SyncFlood => {
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
