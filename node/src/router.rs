//! The router: the node side of the network task. It decodes every gossip message and
//! sync request, checks what can be checked without consensus state (encoding, sizes,
//! signatures, membership), reports the verdict to gossipsub (Accept forwards, Reject
//! scores the sender down), and hands valid messages to the mempool or the engine.

use std::sync::{Arc, Mutex};

use ledger::check::TxError;
use ledger::codec::decode;
use ledger::genesis::Genesis;
use ledger::store::rocks::RocksStore;
use tally_p2p::{Event, NetworkHandle, PenaltyReason, Topic, Verdict};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{valid_evidence, EngineMsg};
use crate::mempool::admission::admit_bytes;
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{AddError, Mempool};
use crate::wire::ConsensusMessage;

pub struct Router {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub net: NetworkHandle,
    pub engine: mpsc::Sender<EngineMsg>,
    pub max_block_bytes: usize,
    pub sync_max_response_bytes: usize,
    /// Our active listen addresses, as the network task reports them.
    pub listening: tokio::sync::watch::Sender<Vec<tally_p2p::Multiaddr>>,
}

/// The penalty for a gossiped tx that no honest node would have forwarded; None for txs
/// that are only stale or unwelcome here (full pool, nonce used, already committed).
fn tx_fault(e: &AddError) -> Option<PenaltyReason> {
    if !e.is_peer_fault() {
        return None;
    }
    Some(match e {
        AddError::Invalid(TxError::BadSignature | TxError::HighS) => {
            PenaltyReason::InvalidSignature
        }
        AddError::Invalid(TxError::Malformed(_)) => PenaltyReason::Undecodable,
        AddError::Invalid(TxError::TooLarge { .. }) => PenaltyReason::Oversized,
        _ => PenaltyReason::InvalidMessage,
    })
}

impl Router {
    pub async fn run(self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = events.recv() => match e { Some(e) => e, None => break },
            };
            match event {
                Event::Message {
                    topic,
                    msg_id,
                    source,
                    data,
                    ..
                } => {
                    let verdict = match topic {
                        Topic::Tx => self.on_tx(&data),
                        Topic::TxBatch => self.on_tx_batch(&data),
                        Topic::Consensus => self.on_consensus(&data, source).await,
                    };
                    let _ = self.net.validated(msg_id, source, verdict).await;
                }
                Event::Request { data, channel, .. } => {
                    let store = self.store.clone();
                    let net = self.net.clone();
                    let cap = self.sync_max_response_bytes;
                    tokio::task::spawn_blocking(move || {
                        let response = crate::engine::serve_sync(store.as_ref(), &data, cap);
                        let handle = tokio::runtime::Handle::current();
                        handle.block_on(async move {
                            match response {
                                Some(bytes) => {
                                    let _ = net.respond(channel, bytes).await;
                                }
                                None => {
                                    let _ = net.respond(channel, Vec::new()).await;
                                }
                            }
                        });
                    });
                }
                Event::PeerDisconnected(peer) => {
                    let _ = self.engine.send(EngineMsg::PeerGone(peer)).await;
                }
                Event::PeerConnected(peer) => {
                    // Ask the newcomer where it is, so a node that is behind starts
                    // syncing without waiting for consensus traffic.
                    let net = self.net.clone();
                    let engine = self.engine.clone();
                    tokio::spawn(async move {
                        let req = ledger::codec::encode(&crate::wire::SyncRequest::Status);
                        if let Ok(bytes) = net.request(peer, req).await {
                            if let Ok(crate::wire::SyncResponse::Status(s)) =
                                decode::<crate::wire::SyncResponse>("status", &bytes, 1024)
                            {
                                let _ = engine
                                    .send(EngineMsg::PeerHeight {
                                        peer,
                                        height: s.height,
                                    })
                                    .await;
                            }
                        }
                    });
                }
                Event::Listening(addr) => {
                    self.listening.send_modify(|l| l.push(addr));
                }
                Event::PeerBanned {
                    peer,
                    reason,
                    duration,
                } => {
                    tracing::warn!(%peer, %reason, secs = duration.as_secs(), "peer banned");
                }
            }
        }
    }

    fn on_tx(&self, data: &[u8]) -> Verdict {
        let max = self.genesis.params.max_tx_bytes as usize;
        match admit_bytes(
            self.store.as_ref(),
            &self.mempool,
            &self.mempool_metrics,
            data,
            max,
        ) {
            Ok(_) => Verdict::Accept,
            Err(e) => tx_fault(&e).map_or(Verdict::Ignore, Verdict::Reject),
        }
    }

    /// A batch is admitted tx by tx, signatures verified in parallel. One tx that no honest
    /// node would have forwarded (bad signature, undecodable, ...) rejects the batch and
    /// stops the work on it (a batch of forgeries costs about one verification per core
    /// before the sender is scored); txs that are merely stale here (already committed,
    /// nonce used) do not. Forwarded only if it brought at least one new transaction.
    fn on_tx_batch(&self, data: &[u8]) -> Verdict {
        use rayon::prelude::*;
        use std::sync::atomic::{AtomicBool, Ordering};
        let max = self.genesis.params.max_tx_bytes as usize;
        let txs = match crate::txgossip::split_batch(data, max) {
            Ok(txs) => txs,
            Err(_) => return Verdict::Reject(PenaltyReason::Undecodable),
        };
        let admitted = AtomicBool::new(false);
        let checked = txs.par_iter().try_for_each(|bytes| {
            match admit_bytes(
                self.store.as_ref(),
                &self.mempool,
                &self.mempool_metrics,
                bytes,
                max,
            ) {
                Ok(_) => {
                    admitted.store(true, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => tx_fault(&e).map_or(Ok(()), Err),
            }
        });
        match checked {
            Err(fault) => Verdict::Reject(fault),
            Ok(()) if admitted.load(Ordering::Relaxed) => Verdict::Accept,
            Ok(()) => Verdict::Ignore,
        }
    }

    async fn on_consensus(&self, data: &[u8], source: tally_p2p::PeerId) -> Verdict {
        let msg: ConsensusMessage = match decode("consensus message", data, self.max_block_bytes) {
            Ok(m) => m,
            Err(_) => return Verdict::Reject(PenaltyReason::Undecodable),
        };
        let g = &self.genesis;
        let tip = ledger::store::ChainReader::tip(self.store.as_ref()).map_or(0, |t| t.height);
        let verdict = match &msg {
            ConsensusMessage::Vote(v) => match g.validators.get(&v.validator) {
                None => Verdict::Reject(PenaltyReason::InvalidMessage),
                Some(_) if v.vote.chain_id != g.chain_id => {
                    Verdict::Reject(PenaltyReason::InvalidMessage)
                }
                // A vote for a committed height is useless to everyone: ignore it before
                // paying for a signature check (a replay of old votes is otherwise a cheap
                // way to make us verify signatures all day).
                Some(_) if v.vote.height <= tip => return Verdict::Ignore,
                Some(val) => match v.verify_signature(&val.pubkey) {
                    Ok(()) => Verdict::Accept,
                    Err(_) => Verdict::Reject(PenaltyReason::InvalidSignature),
                },
            },
            ConsensusMessage::Proposal { proposal, block } => {
                let p = &proposal.proposal;
                let proposer = g.validators.proposer(p.height, p.round);
                if p.chain_id != g.chain_id
                    || block.hash() != p.block_hash
                    || block.header.height != p.height
                {
                    Verdict::Reject(PenaltyReason::InvalidBlock)
                } else if proposal.verify_signature(&proposer.pubkey).is_err() {
                    Verdict::Reject(PenaltyReason::InvalidSignature)
                } else {
                    Verdict::Accept
                }
            }
            ConsensusMessage::Evidence(e) => {
                if valid_evidence(g, e) {
                    Verdict::Accept
                } else {
                    Verdict::Reject(PenaltyReason::InvalidMessage)
                }
            }
            ConsensusMessage::Rebroadcast {
                votes, proposal, ..
            } => {
                let stale = votes.iter().all(|v| v.vote.height <= tip)
                    && proposal
                        .as_ref()
                        .is_none_or(|(p, _)| p.proposal.height <= tip);
                if votes.len() > crate::wire::MAX_REBROADCAST_VOTES {
                    Verdict::Reject(PenaltyReason::InvalidMessage)
                } else if stale {
                    // As for votes: up to 64 signature checks for nothing.
                    return Verdict::Ignore;
                } else {
                    let mut verdict = Verdict::Accept;
                    for v in votes {
                        let ok = v.vote.chain_id == g.chain_id
                            && g.validators
                                .get(&v.validator)
                                .is_some_and(|val| v.verify_signature(&val.pubkey).is_ok());
                        if !ok {
                            verdict = Verdict::Reject(PenaltyReason::InvalidSignature);
                            break;
                        }
                    }
                    if let (Verdict::Accept, Some((p, block))) = (&verdict, proposal) {
                        let proposer = g.validators.proposer(p.proposal.height, p.proposal.round);
                        if block.hash() != p.proposal.block_hash
                            || p.verify_signature(&proposer.pubkey).is_err()
                        {
                            verdict = Verdict::Reject(PenaltyReason::InvalidBlock);
                        }
                    }
                    verdict
                }
            }
        };
        if matches!(verdict, Verdict::Accept) {
            // Old heights are valid but useless: do not forward them.
            let height = match &msg {
                ConsensusMessage::Vote(v) => v.vote.height,
                ConsensusMessage::Proposal { proposal, .. } => proposal.proposal.height,
                ConsensusMessage::Evidence(_) => u64::MAX,
                ConsensusMessage::Rebroadcast {
                    votes, proposal, ..
                } => votes
                    .iter()
                    .map(|v| v.vote.height)
                    .chain(proposal.iter().map(|(p, _)| p.proposal.height))
                    .max()
                    .unwrap_or(0),
            };
            let _ = self
                .engine
                .send(EngineMsg::Consensus {
                    msg: Box::new(msg),
                    from: Some(source),
                })
                .await;
            if height <= tip {
                return Verdict::Ignore;
            }
        }
        verdict
    }
}
