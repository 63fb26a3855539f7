//! Transaction gossip out of this node, and the batch format in.
//!
//! Transactions accepted over RPC are published in batches on the `txs` topic: the
//! [`Batcher`] collects them for up to `p2p.tx_batch_ms` (or until a batch is full) and
//! publishes one message, `borsh(Vec<SignedTx>)`, built by concatenating the bytes the
//! client sent (nothing is re-encoded). With `tx_batch_ms = 0` every transaction is published
//! alone on the `tx` topic, as a node without batching (or another implementation) does; the
//! router accepts both.
//!
//! Gossip is best effort: a message can be dropped under load, or published while we have
//! no peers. So [`spawn_reannouncer`] gossips again, through the same path, every pending
//! transaction that has waited [`REANNOUNCE_AFTER`] without being committed (at most
//! [`REANNOUNCE_MAX`] every [`REANNOUNCE_EVERY`]), as CometBFT's mempool reactor keeps
//! sending its pending txs to peers. Peers that already hold them drop them as duplicates
//! before any signature work and do not forward them.
//!
//! Under a backlog a long wait is not lost gossip: every node holds the same pending txs
//! and the chain commits them as fast as it can. Re-announcing them then only costs the
//! peers work (and arrives after the commit, as `already_committed` refusals). So the quiet
//! period grows with the backlog: [`reannounce_after`] waits at least twice the time the
//! chain, at the rate it committed over the last [`COMMIT_RATE_WINDOW`], needs to commit
//! what the pool holds. A chain that committed no block for a whole window is stalled:
//! re-announcing cannot help it (each node re-announced 2,048 txs a second into a 30 s
//! stall), so the quiet period is the longest until it moves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borsh::BorshDeserialize;
use ledger::types::SignedTx;
use tally_p2p::{NetworkHandle, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most transactions in one batch message.
pub const MAX_BATCH_TXS: usize = 1024;
/// A pending tx is gossiped again once it has waited this long since it was last gossiped.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(3);
/// How often the mempool is searched for such txs.
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Most txs gossiped again per search (bounds the extra traffic under overload).
pub const REANNOUNCE_MAX: usize = 2048;
/// The longest quiet period a backlog makes (a lost tx still gets out this soon).
pub const REANNOUNCE_AFTER_MAX: Duration = Duration::from_secs(30);
/// The window over which the chain's commit rate is measured.
pub const COMMIT_RATE_WINDOW: Duration = Duration::from_secs(10);

/// How the chain has been committing lately, as the re-announcer sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    /// Transactions committed per second over the window.
    pub txs_per_s: f64,
    /// No block at all was committed over a whole window.
    pub stalled: bool,
}

impl Pace {
    /// Blocks, no transactions (an idle chain, or one just started).
    pub const IDLE: Pace = Pace {
        txs_per_s: 0.0,
        stalled: false,
    };

    pub fn committing(txs_per_s: f64) -> Pace {
        Pace {
            txs_per_s,
            stalled: false,
        }
    }
}

/// How long a pending tx stays quiet before it is gossiped again, with `pending` txs in
/// the pool and the chain going at `pace`: [`REANNOUNCE_AFTER`], or twice the time the
/// chain needs to commit the pool when that is longer (at most [`REANNOUNCE_AFTER_MAX`]).
/// An idle chain (blocks without txs) gets the base period: a tx pending there was lost.
/// A stalled chain (no block for a whole window) gets the longest: nothing commits
/// anything until consensus moves again, and every node already holds what it was sent.
pub fn reannounce_after(pending: usize, pace: Pace) -> Duration {
    if pace.stalled {
        return REANNOUNCE_AFTER_MAX;
    }
    let rate = pace.txs_per_s;
    if rate.is_nan() || rate <= 0.0 {
        return REANNOUNCE_AFTER;
    }
    let drain = pending as f64 / rate;
    Duration::from_secs_f64((2.0 * drain).min(REANNOUNCE_AFTER_MAX.as_secs_f64()))
        .max(REANNOUNCE_AFTER)
}

/// The chain's recent pace, from samples of the pool's cumulative counts of committed
/// blocks and transactions.
#[derive(Debug, Default)]
pub struct CommitRate {
    /// (when, blocks, txs), oldest first, spanning about one window.
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
}

impl CommitRate {
    /// Records the counts at `now` and returns the pace over the samples of the last
    /// [`COMMIT_RATE_WINDOW`] (idle until two samples span some time).
    pub fn sample(&mut self, now: Instant, blocks: u64, txs: u64) -> Pace {
        self.samples.push_back((now, blocks, txs));
        // Drop samples older than the window, keeping one at or beyond its start.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) >= COMMIT_RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(first_at, first_blocks, first_txs)) = self.samples.front() else {
            return Pace::IDLE;
        };
        let span = now.saturating_duration_since(first_at);
        if span.is_zero() {
            return Pace::IDLE;
        }
        Pace {
            txs_per_s: txs.saturating_sub(first_txs) as f64 / span.as_secs_f64(),
            stalled: span >= COMMIT_RATE_WINDOW && blocks == first_blocks,
        }
    }
}

/// Starts the task that gossips long-pending transactions again (see the module docs).
pub fn spawn_reannouncer(
    gossip: TxGossip,
    mempool: Arc<Mutex<crate::mempool::Mempool>>,
    metrics: crate::mempool::metrics::MempoolMetrics,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rate = CommitRate::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let due = match mempool.lock() {
                Ok(mut m) => {
                    let pace = rate.sample(now, m.commits(), m.committed_txs());
                    let quiet = reannounce_after(m.len(), pace);
                    m.take_unannounced(now, quiet, REANNOUNCE_MAX)
                }
                Err(_) => return,
            };
            metrics.reannounced.inc_by(due.len() as u64);
            for tx in due {
                gossip.publish(ledger::codec::encode(&*tx)).await;
            }
        }
    });
}

/// Where the RPC hands an accepted transaction (its borsh bytes) for gossip.
#[derive(Clone)]
pub enum TxGossip {
    /// Publish each transaction alone on the `tx` topic.
    Single(NetworkHandle),
    /// Hand it to the batcher (or, when the batcher is backed up, publish it alone).
    Batched {
        net: NetworkHandle,
        batcher: mpsc::Sender<Vec<u8>>,
    },
}

impl TxGossip {
    /// Starts the batcher task when `window` is non-zero.
    pub fn start(
        net: NetworkHandle,
        window: Duration,
        max_batch_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        if window.is_zero() {
            return TxGossip::Single(net);
        }
        let (batcher, rx) = mpsc::channel(4 * MAX_BATCH_TXS);
        let b = Batcher {
            net: net.clone(),
            window,
            max_bytes: max_batch_bytes,
        };
        tokio::spawn(b.run(rx, shutdown));
        TxGossip::Batched { net, batcher }
    }

    pub async fn publish(&self, bytes: Vec<u8>) {
        let single = |net: &NetworkHandle, bytes| {
            let net = net.clone();
            async move {
                if let Err(e) = net.publish(Topic::Tx, bytes).await {
                    tracing::debug!(error = %e, "tx gossip publish failed (no peers?)");
                }
            }
        };
        match self {
            TxGossip::Single(net) => single(net, bytes).await,
            TxGossip::Batched { net, batcher } => {
                if let Err(e) = batcher.try_send(bytes) {
                    single(net, e.into_inner()).await;
                }
            }
        }
    }
}

struct Batcher {
    net: NetworkHandle,
    window: Duration,
    max_bytes: usize,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::Receiver<Vec<u8>>, shutdown: CancellationToken) {
        let mut pending: Option<Vec<u8>> = None;
        loop {
            // The first transaction of a batch opens the window.
            let first = match pending.take() {
                Some(tx) => tx,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    tx = rx.recv() => match tx { Some(tx) => tx, None => return },
                },
            };
            let deadline = tokio::time::Instant::now() + self.window;
            let mut batch = Vec::with_capacity(self.max_bytes.min(64 * 1024));
            batch.extend_from_slice(&[0; 4]);
            batch.extend_from_slice(&first);
            let mut count: u32 = 1;
            while (count as usize) < MAX_BATCH_TXS {
                let next = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    tx = rx.recv() => match tx { Some(tx) => tx, None => break },
                };
                if batch.len() + next.len() > self.max_bytes {
                    pending = Some(next);
                    break;
                }
                batch.extend_from_slice(&next);
                count += 1;
            }
            batch[..4].copy_from_slice(&count.to_le_bytes());
            if let Err(e) = self.net.publish(Topic::TxBatch, batch).await {
                tracing::debug!(error = %e, txs = count, "tx batch publish failed (no peers?)");
            }
        }
    }
}

/// Splits `borsh(Vec<SignedTx>)` into the bytes of each transaction (each at most
/// `max_tx_bytes`, at most [`MAX_BATCH_TXS`] of them, nothing left over), so every
/// transaction is admitted, and its id computed, from exactly the bytes its sender signed.
pub fn split_batch(data: &[u8], max_tx_bytes: usize) -> Result<Vec<&[u8]>, String> {
    let (count, mut rest) = data
        .split_first_chunk::<4>()
        .ok_or("batch shorter than its count")?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 || count > MAX_BATCH_TXS {
        return Err(format!("batch of {count} txs (1..={MAX_BATCH_TXS})"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let before = rest;
        SignedTx::deserialize(&mut rest).map_err(|e| format!("tx {i}: {e}"))?;
        let len = before.len() - rest.len();
        if len > max_tx_bytes {
            return Err(format!("tx {i} is {len} bytes (max {max_tx_bytes})"));
        }
        out.push(&before[..len]);
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last tx", rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::codec::encode;

    fn txs(n: usize) -> Vec<SignedTx> {
        let key = ledger::crypto::Keypair::generate();
        (0..n as u64)
            .map(|nonce| crate::testing::transfer(&key, "t", nonce))
            .collect()
    }

    /// A backlog (more pending than the chain commits in the base period) waits twice its
    /// drain time, up to the cap; a draining-fast or idle chain gets the base period, a
    /// stalled one the cap.
    #[test]
    fn the_quiet_period_grows_with_the_backlog_the_chain_is_draining() {
        let s = Duration::from_secs;
        let at = |rate| reannounce_after(9_000, Pace::committing(rate));
        assert_eq!(
            reannounce_after(100, Pace::committing(1_500.0)),
            REANNOUNCE_AFTER,
            "no backlog"
        );
        assert_eq!(
            reannounce_after(9_000, Pace::IDLE),
            REANNOUNCE_AFTER,
            "idle"
        );
        assert_eq!(at(f64::NAN), REANNOUNCE_AFTER);
        // 9,000 pending at 1,500/s: 6 s to drain, so 12 s without a word is a loss.
        assert_eq!(at(1_500.0), s(12));
        assert_eq!(at(10.0), REANNOUNCE_AFTER_MAX);
        let stalled = Pace {
            txs_per_s: 0.0,
            stalled: true,
        };
        assert_eq!(
            reannounce_after(10, stalled),
            REANNOUNCE_AFTER_MAX,
            "stalled"
        );
    }

    #[test]
    fn the_pace_is_measured_over_the_recent_window() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut rate = CommitRate::default();
        assert_eq!(
            rate.sample(at(0), 0, 0),
            Pace::IDLE,
            "one sample has no span"
        );
        assert_eq!(rate.sample(at(1), 2, 1_000), Pace::committing(1_000.0));
        for i in 2..=20 {
            rate.sample(at(i), 2 * i, 1_000 * i);
        }
        assert_eq!(rate.sample(at(21), 42, 21_000), Pace::committing(1_000.0));
        // Empty blocks: idle, not stalled.
        for i in 22..=40 {
            rate.sample(at(i), 2 * i, 21_000);
        }
        assert_eq!(rate.sample(at(41), 82, 21_000), Pace::IDLE);
        // No block from 41 s on: stalled once a whole window has passed without one.
        assert!(
            !rate.sample(at(45), 82, 21_000).stalled,
            "4 s is no stall yet"
        );
        for i in 46..=50 {
            rate.sample(at(i), 82, 21_000);
        }
        assert!(rate.sample(at(51), 82, 21_000).stalled);
        assert!(!rate.sample(at(52), 83, 21_000).stalled, "a block ends it");
    }

    /// The waste this avoids, on a pool of the bench's size: under a 6 s backlog every
    /// tx quiet for 3 s was gossiped again (2,048 a second from each node, refused by every
    /// peer as a duplicate or, arriving late, as already committed); now none is until it
    /// has waited twice the drain time, while a tx lost on an idle chain still goes out
    /// after the base period.
    #[test]
    fn a_backlog_is_not_re_announced_but_a_lost_tx_on_an_idle_chain_is() {
        use crate::mempool::{Mempool, MempoolConfig};
        let params = ledger::genesis::Params::default();
        let mut pool = Mempool::new(MempoolConfig::default(), "t".into(), params);
        let t0 = Instant::now();
        let funded = ledger::types::Account {
            balance: u64::MAX / 2,
            nonce: 0,
        };
        // One tx per sender (a sender may hold only a few pending).
        for tx in (0..3_000).flat_map(|_| txs(1)) {
            let bytes = encode(&tx);
            let id = ledger::sha256(&bytes);
            pool.insert_verified(tx, id, bytes.len(), &funded, t0)
                .expect("insert");
        }
        let later = t0 + Duration::from_millis(3_500);
        // The chain commits 500 txs a second: 3,000 pending take 6 s to drain.
        let quiet = reannounce_after(pool.len(), Pace::committing(500.0));
        assert!(pool
            .take_unannounced(later, quiet, REANNOUNCE_MAX)
            .is_empty());
        assert_eq!(
            pool.take_unannounced(t0 + Duration::from_secs(12), quiet, REANNOUNCE_MAX)
                .len(),
            REANNOUNCE_MAX,
            "after twice the drain time they are due"
        );
        // An idle chain (no commits): the base period, as before.
        let idle = reannounce_after(pool.len(), Pace::IDLE);
        assert_eq!(
            pool.take_unannounced(t0 + Duration::from_secs(14), idle, 10_000)
                .len(),
            3_000 - REANNOUNCE_MAX,
            "the rest, quiet for 14 s (the others went out 2 s ago)"
        );
    }

    #[test]
    fn a_concatenated_batch_is_borsh_of_the_vec_and_splits_back_into_the_same_bytes() {
        let txs = txs(3);
        let parts: Vec<Vec<u8>> = txs.iter().map(encode).collect();
        let mut batch = 3u32.to_le_bytes().to_vec();
        parts.iter().for_each(|p| batch.extend_from_slice(p));
        assert_eq!(
            batch,
            encode(&txs),
            "the batch format is borsh(Vec<SignedTx>)"
        );
        let split = split_batch(&batch, 1024).unwrap();
        assert_eq!(split, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let one = encode(&txs(1)[0]);
        let batch = |count: u32, body: &[u8]| {
            let mut b = count.to_le_bytes().to_vec();
            b.extend_from_slice(body);
            b
        };
        assert!(split_batch(&[1, 0], 1024).is_err(), "short count");
        assert!(split_batch(&batch(0, &[]), 1024).is_err(), "empty batch");
        assert!(
            split_batch(&batch(2, &one), 1024).is_err(),
            "count beyond the data"
        );
        let mut trailing = batch(1, &one);
        trailing.push(0);
        assert!(split_batch(&trailing, 1024).is_err(), "trailing bytes");
        assert!(
            split_batch(&batch(1, &one), one.len() - 1).is_err(),
            "tx too large"
        );
        assert!(
            split_batch(&batch(MAX_BATCH_TXS as u32 + 1, &one), 1024).is_err(),
            "too many txs"
        );
        assert!(
            split_batch(&batch(1, &one[..one.len() - 3]), 1024).is_err(),
            "cut tx"
        );
    }
}
