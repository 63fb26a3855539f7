//! Fetching blocks from peers and answering their requests, over `/tally/sync/1`: the
//! parts of sync that need no state of ours. A fetched chunk is checked in parallel over
//! every core (heights, linkage, > 2/3 precommits, every tx signature) before the sync
//! actor sees it; what needs our state (linkage to our tip, execution, the state root)
//! is the chain host's.

use std::sync::Arc;

use ledger::codec::{decode, encode};
use ledger::genesis::Genesis;
use ledger::store::ChainReader;
use ledger::types::{Block, Commit};
use ledger::validators::ValidatorSet;
use ledger::Hash;
use rayon::prelude::*;
use tally_p2p::{NetworkHandle, PeerId, PenaltyReason};

use crate::wire::{SyncRequest, SyncResponse, SyncStatus, MAX_SYNC_BLOCKS};

/// The size of a status answer, `SyncResponse::Status` (variant tag, height, tip hash):
/// anything larger is not a status answer.
pub const STATUS_BYTES: usize = 1 + 8 + 32;

/// A block that passed every check that does not need our state.
#[derive(Debug)]
pub struct Verified {
    pub block: Block,
    pub commit: Commit,
    pub hash: Hash,
    /// The height is proven to exist: its commit verified (protocol 1), or (protocol 2,
    /// whose commits the host checks when it applies them) more than 1/3 of the latest set
    /// we know signed it ([`crate::sets::vouches`]).
    pub proven: bool,
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum Fault {
    /// Timeout, disconnect, refusal: not provably the peer's fault, ask someone else.
    Unavailable(String),
    /// The peer answered that it has none of the blocks asked for: its fault only if it
    /// claimed them (see [`SyncState::served_nothing`]).
    Missing(String),
    /// The peer served something invalid.
    Bad(PenaltyReason, String),
}

/// An answer to a sync request, checked off the engine task.
#[derive(Debug)]
pub enum Fetched {
    /// Blocks asked for from `from` on.
    Blocks {
        peer: PeerId,
        from: u64,
        result: Result<Vec<Verified>, Fault>,
    },
    /// A status answer: the peer states that its tip is `height`.
    Status { peer: PeerId, height: u64 },
}

/// Requests `count` blocks from `from` and checks them (see [`verify_chunk`]) on the
/// blocking pool.
/// `trusted` (protocol 2): the latest validator set we know, for [`Verified::proven`].
pub async fn fetch(
    net: &NetworkHandle,
    genesis: &Arc<Genesis>,
    trusted: Option<ValidatorSet>,
    peer: PeerId,
    from: u64,
    count: u32,
) -> Result<Vec<Verified>, Fault> {
    let request = encode(&SyncRequest::Blocks { from, count });
    let bytes = net
        .request(peer, request)
        .await
        .map_err(|e| Fault::Unavailable(e.to_string()))?;
    let genesis = genesis.clone();
    tokio::task::spawn_blocking(move || {
        verify_response(&genesis, trusted.as_ref(), from, count, &bytes)
    })
    .await
    .map_err(|e| Fault::Unavailable(e.to_string()))?
}

/// Decodes a sync response and checks it with [`verify_chunk`].
pub fn verify_response(
    genesis: &Genesis,
    trusted: Option<&ValidatorSet>,
    from: u64,
    count: u32,
    bytes: &[u8],
) -> Result<Vec<Verified>, Fault> {
    let blocks = match decode::<SyncResponse>("sync response", bytes, usize::MAX) {
        Ok(SyncResponse::Blocks(b)) => b,
        Ok(other) => {
            return Err(Fault::Bad(
                PenaltyReason::BadResponse,
                format!("unexpected response {other:?}"),
            ))
        }
        Err(e) => return Err(Fault::Bad(PenaltyReason::Undecodable, e.to_string())),
    };
    if blocks.is_empty() {
        return Err(Fault::Missing(format!("peer has no block {from}")));
    }
    if blocks.len() > count as usize {
        return Err(Fault::Bad(
            PenaltyReason::BadResponse,
            format!("asked for {count} blocks, got {}", blocks.len()),
        ));
    }
    verify_chunk_trusting(genesis, trusted, from, blocks)
}

/// Decodes a status answer: one `SyncResponse::Status` of [`STATUS_BYTES`]. A larger or
/// undecodable answer is the peer's fault; an empty one is what a peer that cannot read
/// its own tip sends.
pub fn read_status(bytes: &[u8]) -> Result<SyncStatus, Fault> {
    if bytes.is_empty() {
        return Err(Fault::Unavailable("empty status answer".into()));
    }
    match decode::<SyncResponse>("status answer", bytes, STATUS_BYTES) {
        Ok(SyncResponse::Status(s)) => Ok(s),
        Ok(SyncResponse::Blocks(_) | SyncResponse::Txs(_)) => Err(Fault::Bad(
            PenaltyReason::BadResponse,
            "blocks or txs in answer to a status request".into(),
        )),
        Err(e @ ledger::codec::DecodeError::TooLarge { .. }) => {
            Err(Fault::Bad(PenaltyReason::Oversized, e.to_string()))
        }
        Err(e) => Err(Fault::Bad(PenaltyReason::Undecodable, e.to_string())),
    }
}

/// Checks what can be checked without our state, in parallel over every core: heights
/// `from, from+1, ..`, each block's `prev_hash` is the previous block's hash, each
/// commit has > 2/3 of the power with valid signatures for its block, every tx
/// signature is valid. On protocol 2 the commits are not checked here: the set of a
/// height is known only once the block two below it is applied, so the chain host
/// verifies each commit with its height's set when it applies the block, in order.
pub fn verify_chunk(
    genesis: &Genesis,
    from: u64,
    blocks: Vec<(Block, Commit)>,
) -> Result<Vec<Verified>, Fault> {
    verify_chunk_trusting(genesis, None, from, blocks)
}

/// [`verify_chunk`], and on protocol 2 each block is [`Verified::proven`] when more than
/// 1/3 of `trusted` signed its commit.
pub fn verify_chunk_trusting(
    genesis: &Genesis,
    trusted: Option<&ValidatorSet>,
    from: u64,
    blocks: Vec<(Block, Commit)>,
) -> Result<Vec<Verified>, Fault> {
    let bad = |e: String| Fault::Bad(PenaltyReason::InvalidBlock, e);
    let mut out: Vec<Verified> = Vec::with_capacity(blocks.len());
    for (i, (block, commit)) in blocks.into_iter().enumerate() {
        let h = from + i as u64;
        if block.header.height != h {
            return Err(bad(format!(
                "expected block {h}, got {}",
                block.header.height
            )));
        }
        if let Some(prev) = out.last() {
            if block.header.prev_hash != prev.hash {
                return Err(bad(format!("block {h} does not link to block {}", h - 1)));
            }
        }
        let hash = block.hash();
        out.push(Verified {
            block,
            commit,
            hash,
            proven: false,
        });
    }
    let fixed_set = genesis.params.protocol_version < ledger::types::PROTOCOL_2;
    out.par_iter_mut().try_for_each(|v| {
        let h = v.block.header.height;
        // A protocol-1 block's commit is the genesis set's; a protocol-2 block of a chain
        // that switched (issue 21) is checked like any protocol-2 block, by the host.
        if fixed_set && v.block.header.protocol() < ledger::types::PROTOCOL_2 {
            genesis
                .validators
                .verify_commit(&genesis.chain_id, h, &v.hash, &v.commit)
                .map_err(|e| bad(format!("commit {h}: {e}")))?;
            v.proven = true;
        } else if let Some(trusted) = trusted {
            v.proven = crate::sets::vouches(trusted, &genesis.chain_id, h, &v.hash, &v.commit);
        }
        v.block.txs.par_iter().enumerate().try_for_each(|(i, tx)| {
            tx.verify_signature()
                .map_err(|e| bad(format!("block {h} tx {i}: {e}")))
        })
    })?;
    Ok(out)
}

/// An encoded answer to a peer's sync request, and how many blocks it carries (for
/// `tally_sync_blocks_served_total`).
pub struct Served {
    pub bytes: Vec<u8>,
    pub blocks: u64,
}

/// Answers a peer's sync request from the store, within the response size cap.
pub fn serve(store: &impl ChainReader, request: &[u8], max_bytes: usize) -> Option<Served> {
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
                // A record we cannot read (missing, or failing its checksum) ends the
                // answer: we never serve what we cannot vouch for.
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
        // The router answers these from the mempool before calling this.
        SyncRequest::Txs { .. } => return None,
    };
    let blocks = match &response {
        SyncResponse::Blocks(b) => b.len() as u64,
        SyncResponse::Status(_) | SyncResponse::Txs(_) => 0,
    };
    Some(Served {
        bytes: encode(&response),
        blocks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{chain, key};

    fn commit_for(v: &ledger::crypto::Keypair, height: u64, hash: Hash) -> Commit {
        ledger::block::sign_commit(crate::testing::CHAIN, height, 0, hash, &[v])
    }

    fn is_bad(r: Result<Vec<Verified>, Fault>) -> bool {
        matches!(r, Err(Fault::Bad(PenaltyReason::InvalidBlock, _)))
    }

    #[test]
    fn a_valid_chunk_passes_and_every_kind_of_tampering_is_caught() {
        let (g, _, blocks) = chain(5);
        assert_eq!(verify_chunk(&g, 1, blocks.clone()).unwrap().len(), 5);
        assert_eq!(verify_chunk(&g, 3, blocks[2..].to_vec()).unwrap().len(), 3);
        // Not the heights asked for.
        assert!(is_bad(verify_chunk(&g, 2, blocks.clone())));
        // A gap: block 3 missing.
        let mut gap = blocks.clone();
        gap.remove(2);
        assert!(is_bad(verify_chunk(&g, 1, gap)));
        // A commit for another block.
        let mut wrong = blocks.clone();
        wrong[1].1 = blocks[2].1.clone();
        assert!(is_bad(verify_chunk(&g, 1, wrong)));
        // A commit signed by someone outside the validator set.
        let mut forged = blocks.clone();
        forged[4].1 = commit_for(&key("mallory"), 5, blocks[4].0.hash());
        assert!(is_bad(verify_chunk(&g, 1, forged)));
        // A tx signature flipped (same header: the commit still matches the header).
        let mut tampered = blocks.clone();
        tampered[3].0.txs[1].signature[10] ^= 1;
        assert!(is_bad(verify_chunk(&g, 1, tampered)));
    }

    #[test]
    fn serve_answers_within_the_cap_and_the_answer_verifies() {
        let (g, store, _) = chain(6);
        let request = encode(&SyncRequest::Blocks { from: 2, count: 64 });
        let served = serve(&store, &request, 1 << 20).unwrap();
        assert_eq!(served.blocks, 5);
        let all = served.bytes;
        assert_eq!(verify_response(&g, None, 2, 64, &all).unwrap().len(), 5);
        // A tiny cap still returns one block, never zero.
        let one = serve(&store, &request, 10).unwrap();
        assert_eq!(one.blocks, 1);
        assert_eq!(
            verify_response(&g, None, 2, 64, &one.bytes).unwrap().len(),
            1
        );
        // More than asked for is a bad response; nothing is "unavailable".
        assert!(matches!(
            verify_response(&g, None, 2, 3, &all),
            Err(Fault::Bad(PenaltyReason::BadResponse, _))
        ));
        let none = serve(
            &store,
            &encode(&SyncRequest::Blocks { from: 9, count: 4 }),
            1 << 20,
        )
        .unwrap();
        assert_eq!(none.blocks, 0);
        let status = serve(&store, &encode(&SyncRequest::Status), 1 << 20).unwrap();
        assert_eq!(status.blocks, 0);
        assert!(matches!(
            verify_response(&g, None, 9, 4, &none.bytes),
            Err(Fault::Missing(_))
        ));
        assert!(matches!(
            verify_response(&g, None, 2, 4, b"garbage"),
            Err(Fault::Bad(PenaltyReason::Undecodable, _))
        ));
    }

    #[test]
    fn status_bytes_is_the_size_of_a_status_answer() {
        let answer = SyncResponse::Status(SyncStatus {
            height: u64::MAX,
            tip_hash: [0xff; 32],
        });
        assert_eq!(encode(&answer).len(), STATUS_BYTES);
        assert_eq!(read_status(&encode(&answer)).unwrap().height, u64::MAX);
    }

    /// Item 12 of issue 17: a 32 MiB answer to a status poll is refused and penalised.
    #[test]
    fn an_oversized_or_garbled_status_answer_is_penalised() {
        let huge = vec![0u8; 32 << 20];
        assert!(
            matches!(
                read_status(&huge),
                Err(Fault::Bad(PenaltyReason::Oversized, _))
            ),
            "{:?}",
            read_status(&huge).map(|s| s.height)
        );
        assert!(matches!(
            read_status(b"garbage"),
            Err(Fault::Bad(PenaltyReason::Undecodable, _))
        ));
        let blocks = encode(&SyncResponse::Blocks(vec![]));
        assert!(matches!(
            read_status(&blocks),
            Err(Fault::Bad(PenaltyReason::BadResponse, _))
        ));
        assert!(matches!(read_status(&[]), Err(Fault::Unavailable(_))));
    }
}
