//! Catch-up: when peers are ahead, fetch committed blocks with their commits over
//! `/tally/sync/1`, check each like a follower (header linkage, > 2/3 precommits, full
//! re-execution with the state root), commit them, then rejoin consensus at the new
//! height. A peer that serves a bad block is penalised and not asked again for a while.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use consensus::Input;
use ledger::block::check_header;
use ledger::codec::{decode, encode};
use ledger::store::ChainReader;
use ledger::types::{Block, Commit};
use tally_p2p::{PeerId, PenaltyReason};

use super::{Engine, EngineMsg};
use crate::wire::{SyncRequest, SyncResponse, MAX_SYNC_BLOCKS};

/// A request unanswered for this long is given up (the p2p layer also times out).
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// How long a peer that served bad data is not asked again.
const BAD_PEER_PAUSE: Duration = Duration::from_secs(120);
/// If a peer is one block ahead and we committed nothing for this long, we missed the
/// decision: fetch the block instead of waiting.
const STALL: Duration = Duration::from_secs(3);

#[derive(Default)]
pub(super) struct SyncState {
    peers: HashMap<PeerId, u64>,
    target: u64,
    in_flight: Option<(PeerId, Instant)>,
    bad: HashMap<PeerId, Instant>,
    /// (when, height) of the first block of the current catch-up, for the rate log.
    started: Option<(Instant, u64)>,
    last_progress: Option<Instant>,
}

impl SyncState {
    pub(super) fn catching_up(&self, tip: u64) -> bool {
        self.target > tip + 1
    }

    pub(super) fn target(&self) -> u64 {
        self.target
    }

    pub(super) fn raise_target(&mut self, height: u64) {
        self.target = self.target.max(height);
    }

    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        if self.in_flight.is_some_and(|(p, _)| &p == peer) {
            self.in_flight = None;
        }
    }

    fn pick(&self, need: u64) -> Option<PeerId> {
        let now = Instant::now();
        self.peers
            .iter()
            .filter(|(p, h)| {
                **h >= need
                    && self
                        .bad
                        .get(*p)
                        .is_none_or(|t| now.duration_since(*t) > BAD_PEER_PAUSE)
            })
            .max_by_key(|(_, h)| **h)
            .map(|(p, _)| *p)
    }
}

impl Engine {
    pub(super) fn note_peer_height(&mut self, peer: PeerId, height: u64) {
        let known = self.sync.peers.entry(peer).or_insert(0);
        if height > *known {
            *known = height;
        }
        self.sync.raise_target(height);
        self.metrics.sync_target.set(self.sync.target as i64);
        let tip = self.tip().map_or(0, |t| t.height);
        if height > tip + 1 {
            self.maybe_request_sync();
        }
    }

    pub(super) fn maybe_request_sync(&mut self) {
        if let Some((_, since)) = self.sync.in_flight {
            if since.elapsed() < REQUEST_DEADLINE {
                return;
            }
            self.sync.in_flight = None;
        }
        let Some(tip) = self.tip() else { return };
        let behind = self.sync.target > tip.height + 1;
        let stalled = self.sync.target > tip.height
            && self
                .status
                .borrow()
                .last_block_at
                .or(self.sync.last_progress)
                .is_none_or(|t| t.elapsed() > STALL);
        self.metrics.catching_up.set(i64::from(behind));
        if !behind && !stalled {
            if self.sync.started.take().is_some() {
                tracing::info!(height = tip.height, "caught up with peers");
            }
            return;
        }
        let need = tip.height + 1;
        let Some(peer) = self.sync.pick(need) else {
            return;
        };
        if self.sync.started.is_none() {
            self.sync.started = Some((Instant::now(), tip.height));
            tracing::info!(from = need, target = self.sync.target, %peer, "catching up from peers");
        }
        self.sync.in_flight = Some((peer, Instant::now()));
        let net = self.net.clone();
        let me = self.me.clone();
        let count = MAX_SYNC_BLOCKS.min((self.sync.target - tip.height).max(1) as u32);
        tokio::spawn(async move {
            let request = encode(&SyncRequest::Blocks { from: need, count });
            let result = match net.request(peer, request).await {
                Ok(bytes) => match decode::<SyncResponse>("sync response", &bytes, usize::MAX) {
                    Ok(SyncResponse::Blocks(blocks)) => Ok(blocks),
                    Ok(other) => Err(format!("unexpected response {other:?}")),
                    Err(e) => {
                        let _ = net
                            .penalize(
                                peer,
                                PenaltyReason::Undecodable,
                                PenaltyReason::Undecodable.default_points(),
                            )
                            .await;
                        Err(e.to_string())
                    }
                },
                Err(e) => Err(e.to_string()),
            };
            let _ = me.send(EngineMsg::Synced { peer, result }).await;
        });
    }

    pub(super) fn on_synced(&mut self, peer: PeerId, result: Result<Vec<(Block, Commit)>, String>) {
        self.sync.in_flight = None;
        let blocks = match result {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "sync request failed");
                self.sync.forget(&peer);
                return;
            }
        };
        let mut applied = 0u64;
        for (block, commit) in blocks {
            let Some(tip) = self.tip() else { return };
            let height = block.header.height;
            if height <= tip.height {
                continue;
            }
            if height != tip.height + 1 {
                break;
            }
            let hash = block.hash();
            let verdict = check_header(
                &self.genesis.chain_id,
                &self.genesis.validators,
                &tip,
                &block,
            )
            .map_err(|e| e.to_string())
            .and_then(|_| {
                self.genesis
                    .validators
                    .verify_commit(&self.genesis.chain_id, height, &hash, &commit)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = verdict {
                tracing::warn!(%peer, height, error = %e, "peer served an invalid block");
                self.punish(peer, PenaltyReason::InvalidBlock);
                break;
            }
            self.executed.remove(&hash);
            if self.commit(block, commit, false).is_err() {
                // Execution failed although > 2/3 signed it: the peer lied about the
                // block's contents (the header is authentic, the body is not).
                self.punish(peer, PenaltyReason::InvalidBlock);
                break;
            }
            applied += 1;
        }
        if applied > 0 {
            self.metrics.sync_blocks.inc_by(applied);
            self.sync.last_progress = Some(Instant::now());
            let tip = self.tip().map_or(0, |t| t.height);
            if let Some((since, from)) = self.sync.started {
                let secs = since.elapsed().as_secs_f64().max(1e-3);
                let done = tip.saturating_sub(from);
                if done % 500 < applied || tip + 1 >= self.sync.target {
                    tracing::info!(
                        height = tip,
                        target = self.sync.target,
                        rate = format!("{:.0} blocks/s", done as f64 / secs),
                        "sync progress"
                    );
                }
            }
            if tip + 1 > self.core.height() {
                self.drive(Input::StartHeight { height: tip + 1 });
            }
        }
        self.maybe_request_sync();
    }

    fn punish(&mut self, peer: PeerId, reason: PenaltyReason) {
        self.sync.bad.insert(peer, Instant::now());
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.penalize(peer, reason, reason.default_points()).await;
        });
    }
}

/// Answers a peer's sync request from the store, within the response size cap.
pub fn serve(store: &impl ChainReader, request: &[u8], max_bytes: usize) -> Option<Vec<u8>> {
    let request: SyncRequest = decode("sync request", request, 4096).ok()?;
    let response = match request {
        SyncRequest::Status => {
            let tip = store.tip().ok()?;
            SyncResponse::Status(crate::wire::SyncStatus {
                height: tip.height,
                tip_hash: tip.block_hash,
            })
        }
        SyncRequest::Blocks { from, count } => {
            let mut out = Vec::new();
            let mut size = 64usize;
            for h in from..from.saturating_add(u64::from(count.min(MAX_SYNC_BLOCKS))) {
                let (Ok(Some(block)), Ok(Some(commit))) = (store.block(h), store.commit(h)) else {
                    break;
                };
                let n = encode(&block).len() + encode(&commit).len();
                if size + n > max_bytes && !out.is_empty() {
                    break;
                }
                size += n;
                out.push((block, commit));
            }
            SyncResponse::Blocks(out)
        }
    };
    Some(encode(&response))
}
