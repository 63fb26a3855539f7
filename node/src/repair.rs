//! Start-up integrity check and repair.
//!
//! Before the actors start, [`check_tip`] checks the last [`CHECK_DEPTH`] blocks: each
//! block and commit record decodes (checksum), the hash chain runs from the tip down, each
//! commit is for its block (the tip's commit, and any block whose successor is damaged,
//! with full > 2/3 signature checks), the hash index points back, and the state tree's
//! root is the tip's state root.
//!
//! Damaged block records are fetched again from peers by [`repair_from_peers`], verified
//! (commit signatures, and the hash the chain above them expects) and rewritten with
//! [`RocksStore::repair_block`]. A state whose root is not the tip's is rebuilt by
//! replaying every stored block from genesis ([`rebuild_state`]). Damage that cannot be
//! repaired (no peer serving the blocks in time, a block that does not replay) makes the
//! node refuse to start with a message saying what is wrong and what to run. Nothing is
//! skipped silently.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::exec::{execute_block, tx_ids_and_sizes, ExecContext, Signatures};
use ledger::genesis::Genesis;
use ledger::state::StateReader;
use ledger::store::rocks::RocksStore;
use ledger::store::ChainReader;
use ledger::Hash;
use tally_p2p::NetworkHandle;

use crate::sync::{fetch, Fault, Verified};
use crate::wire::MAX_SYNC_BLOCKS;

/// Blocks below the tip checked at every start (`tallyd fsck` checks them all).
pub const CHECK_DEPTH: u64 = 1000;
/// Overrides [`CHECK_DEPTH`] for one start; `0` checks (and repairs) the whole chain.
pub const CHECK_DEPTH_ENV: &str = "TALLY_STARTUP_CHECK_DEPTH";

/// The start-up check depth: [`CHECK_DEPTH_ENV`] if set (0 = every block), else
/// [`CHECK_DEPTH`].
pub fn check_depth() -> u64 {
    match std::env::var(CHECK_DEPTH_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(0) => u64::MAX,
        Some(n) => n,
        None => CHECK_DEPTH,
    }
}
/// How long start-up waits for peers to serve damaged blocks before refusing.
pub const REPAIR_WAIT: Duration = Duration::from_secs(60);
/// Overrides [`REPAIR_WAIT`], in seconds.
pub const REPAIR_WAIT_ENV: &str = "TALLY_REPAIR_WAIT_SECS";

/// [`REPAIR_WAIT`], or [`REPAIR_WAIT_ENV`] if set.
pub fn repair_wait() -> Duration {
    std::env::var(REPAIR_WAIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(REPAIR_WAIT, Duration::from_secs)
}

/// What the start-up check found wrong with the block records.
#[derive(Debug, Default)]
pub struct Damage {
    /// Heights whose block or commit record must be fetched again, highest first.
    pub heights: Vec<u64>,
    /// One line per finding.
    pub findings: Vec<String>,
    /// The state does not match the tip: rebuild it by replaying the blocks.
    pub state: Option<String>,
    pub checked: u64,
}

impl Damage {
    pub fn is_empty(&self) -> bool {
        self.heights.is_empty() && self.state.is_none()
    }
}

/// The set whose precommits make the commit of height `h`: the genesis set on protocol 1,
/// on protocol 2 the set the store holds for `h` (a store whose tip is `tip`).
pub(crate) fn commit_set<'g>(
    store: &RocksStore,
    genesis: &'g Genesis,
    tip: u64,
    h: u64,
) -> Result<std::borrow::Cow<'g, ledger::validators::ValidatorSet>, String> {
    let protocol = crate::upgrade::protocol_at(store, &genesis.params, h)
        .map_err(|e| format!("cannot read the protocol schedule ({e})"))?;
    if protocol < ledger::types::PROTOCOL_2 {
        return Ok(std::borrow::Cow::Borrowed(&genesis.validators));
    }
    match crate::sets::stored_set_at(store, tip, h) {
        Ok(Some(set)) => Ok(std::borrow::Cow::Owned(set)),
        Ok(None) => Err(format!("no validator set is known for height {h}")),
        Err(e) => Err(format!("cannot read the validator set of height {h} ({e})")),
    }
}

fn advice(db: &Path) -> String {
    format!(
        "Run `tallyd fsck --home <home>` for a full report. To recover, start the node while \
         peers holding the chain are reachable (damaged blocks are fetched from them), or move \
         {} away and restart: the node then resyncs the whole chain from peers.",
        db.display()
    )
}

/// Checks the tip, the state root and the last `depth` blocks. `Err` is a refusal
/// message: the tip record itself is unreadable.
pub fn check_tip(
    store: &RocksStore,
    genesis: &Genesis,
    db: &Path,
    depth: u64,
) -> Result<Damage, String> {
    let refuse = |what: String| format!("the database is damaged: {what}. {}", advice(db));
    let tip = store
        .tip()
        .map_err(|e| refuse(format!("cannot read the chain tip ({e})")))?;
    let state = match store.tree_version() {
        Ok(Some((_, root))) if root == tip.state_root => None,
        Ok(Some((_, root))) => Some(format!(
            "the state tree root {} is not the tip's state root {} (height {})",
            ledger::to_hex(&root),
            ledger::to_hex(&tip.state_root),
            tip.height
        )),
        Ok(None) => Some("the state tree has no version".into()),
        Err(e) => Some(format!("cannot read the state tree version ({e})")),
    };
    let mut damage = Damage {
        state,
        ..Damage::default()
    };
    if tip.height == 0 {
        return Ok(damage);
    }
    let chain_id = &genesis.chain_id;
    // The hash the chain above expects at the current height (`None` below damage: the
    // block must then prove itself with its commit's signatures).
    let mut expected: Option<Hash> = Some(tip.block_hash);
    let lowest = tip.height.saturating_sub(depth.saturating_sub(1)).max(1);
    for h in (lowest..=tip.height).rev() {
        damage.checked += 1;
        let commit = store.commit(h);
        let block = match store.block(h) {
            Ok(Some(b)) if b.header.height == h => Some(b),
            Ok(Some(b)) => {
                damage.findings.push(format!(
                    "block {h}: the record holds block {}",
                    b.header.height
                ));
                None
            }
            Ok(None) => {
                damage.findings.push(format!("block {h} is missing"));
                None
            }
            Err(e) => {
                damage.findings.push(format!("block {h}: {e}"));
                None
            }
        };
        let mut bad = block.is_none();
        let mut next_expected = None;
        if let Some(b) = &block {
            let hash = b.hash();
            let chained = expected.is_none_or(|e| e == hash);
            if !chained {
                damage.findings.push(format!(
                    "block {h}: hash {} is not the one the chain above it expects",
                    ledger::to_hex(&hash)
                ));
                bad = true;
            }
            match &commit {
                Ok(Some(c)) => {
                    // Full signature checks where the chain does not vouch for the block.
                    let full = h == tip.height || expected.is_none();
                    let ok = if full {
                        commit_set(store, genesis, tip.height, h).and_then(|v| {
                            v.verify_commit(chain_id, h, &hash, c)
                                .map_err(|e| e.to_string())
                        })
                    } else if c.height == h && c.block_hash == hash {
                        Ok(())
                    } else {
                        Err("it is for another block".into())
                    };
                    if let Err(e) = ok {
                        damage.findings.push(format!("commit {h}: {e}"));
                        bad = true;
                    }
                }
                Ok(None) => {
                    damage.findings.push(format!("commit {h} is missing"));
                    bad = true;
                }
                Err(e) => {
                    damage.findings.push(format!("commit {h}: {e}"));
                    bad = true;
                }
            }
            if !bad && store.height_of(&hash).ok().flatten() != Some(h) {
                damage
                    .findings
                    .push(format!("block {h}: the hash index does not point back"));
                bad = true;
            }
            if chained {
                next_expected = Some(b.header.prev_hash);
            }
        }
        if bad {
            damage.heights.push(h);
        }
        expected = next_expected;
    }
    Ok(damage)
}

/// Fetches every damaged height from peers, checks it and rewrites it. Blocks are
/// verified top-down: each must carry a valid commit and have the hash the (intact or
/// already repaired) block above it names as `prev_hash` (the tip's hash at the tip).
pub async fn repair_from_peers(
    store: &RocksStore,
    genesis: &Arc<Genesis>,
    net: &NetworkHandle,
    damage: &Damage,
    db: &Path,
    wait: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let tip = store.tip().map_err(|e| e.to_string())?;
    let mut remaining: Vec<u64> = damage.heights.clone();
    remaining.sort_unstable_by(|a, b| b.cmp(a));
    let mut repaired = 0usize;
    while let Some(&hi) = remaining.first() {
        // The contiguous damaged run [lo, hi].
        let mut lo = hi;
        while remaining.contains(&(lo - 1)) && lo > 1 {
            lo -= 1;
        }
        let blocks = fetch_range(net, genesis, lo, hi, deadline)
            .await
            .map_err(|e| {
                format!(
                    "the database is damaged ({}) and {e}. {}",
                    damage.findings.join("; "),
                    advice(db)
                )
            })?;
        let mut expected = if hi == tip.height {
            tip.block_hash
        } else {
            match store.block(hi + 1) {
                Ok(Some(b)) => b.header.prev_hash,
                other => {
                    return Err(format!(
                        "block {} above the damaged run cannot be read ({other:?}). {}",
                        hi + 1,
                        advice(db)
                    ))
                }
            }
        };
        for v in blocks.iter().rev() {
            let h = v.block.header.height;
            if v.hash != expected {
                return Err(format!(
                    "peers served block {h} with hash {}, but our chain expects {}: this \
                     database is not on the peers' chain. {}",
                    ledger::to_hex(&v.hash),
                    ledger::to_hex(&expected),
                    advice(db)
                ));
            }
            // Protocol 2: sync left the commits to the chain host; here the block is vouched
            // for by the chain above it, and its commit is checked with its height's set.
            if v.block.header.protocol() >= ledger::types::PROTOCOL_2 {
                commit_set(store, genesis, tip.height, h)
                    .and_then(|set| {
                        set.verify_commit(&genesis.chain_id, h, &v.hash, &v.commit)
                            .map_err(|e| e.to_string())
                    })
                    .map_err(|e| {
                        format!(
                            "peers served block {h} with a commit that does not verify: {e}. {}",
                            advice(db)
                        )
                    })?;
            }
            let ids: Vec<Hash> = tx_ids_and_sizes(&v.block.txs)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            store
                .repair_block(&v.block, &v.commit, &ids)
                .map_err(|e| format!("cannot rewrite block {h}: {e}. {}", advice(db)))?;
            tracing::warn!(height = h, "repaired block from peers");
            repaired += 1;
            expected = v.block.header.prev_hash;
        }
        remaining.retain(|h| *h < lo);
    }
    if repaired > 0 {
        tracing::warn!(blocks = repaired, "block repair done");
    }
    if let Some(what) = &damage.state {
        tracing::warn!(problem = %what, "the state is damaged; rebuilding it by replaying every block");
        rebuild_state(store, genesis).map_err(|e| {
            format!(
                "the database is damaged ({what}) and the state cannot be rebuilt: {e}. {}",
                advice(db)
            )
        })?;
    }
    Ok(())
}

/// Rebuilds the state from genesis by re-executing every stored block (signatures
/// verified again), checking each block's state root, then the tip's.
pub fn rebuild_state(store: &RocksStore, genesis: &Genesis) -> Result<(), String> {
    let started = Instant::now();
    let tip = store.tip().map_err(|e| e.to_string())?;
    store.reset_state(genesis).map_err(|e| e.to_string())?;
    let ctx = ExecContext {
        chain_id: &genesis.chain_id,
        params: &genesis.params,
        validators: &genesis.validators,
    };
    for h in 1..=tip.height {
        let block = match store.block(h) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(format!("block {h} is missing")),
            Err(e) => return Err(format!("block {h}: {e}")),
        };
        let outcome = execute_block(store, ctx, &block, &Signatures::Verify)
            .map_err(|e| format!("block {h} does not replay: {e}"))?;
        store
            .replay_state(&outcome.update, h == tip.height)
            .map_err(|e| format!("cannot write the state of block {h}: {e}"))?;
    }
    match store.tree_version() {
        Ok(Some((_, root))) if root == tip.state_root => {}
        other => {
            return Err(format!(
                "the replayed state root {other:?} is not the tip's {}",
                ledger::to_hex(&tip.state_root)
            ))
        }
    }
    tracing::warn!(
        blocks = tip.height,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "state rebuilt by replay; its root matches the tip"
    );
    Ok(())
}

/// Blocks `lo..=hi` (verified chunk by chunk) from whichever connected peer serves them.
async fn fetch_range(
    net: &NetworkHandle,
    genesis: &Arc<Genesis>,
    lo: u64,
    hi: u64,
    deadline: Instant,
) -> Result<Vec<Verified>, String> {
    let mut out: Vec<Verified> = Vec::new();
    let mut last_error = String::from("no peer connected");
    while out.len() < (hi - lo + 1) as usize {
        if Instant::now() > deadline {
            return Err(format!(
                "no peer served blocks {lo}..={hi} in time (last error: {last_error})"
            ));
        }
        let from = lo + out.len() as u64;
        let count = (hi - from + 1).min(u64::from(MAX_SYNC_BLOCKS)) as u32;
        let peers = net.peers().await.unwrap_or_default();
        let mut progressed = false;
        for p in peers.iter().filter(|p| p.connected && !p.banned) {
            match fetch(net, genesis, None, p.peer_id, from, count).await {
                Ok(blocks) => {
                    // Keep only the linked continuation of what we already have.
                    for v in blocks {
                        if out
                            .last()
                            .is_some_and(|prev| v.block.header.prev_hash != prev.hash)
                        {
                            break;
                        }
                        out.push(v);
                    }
                    progressed = true;
                    break;
                }
                Err(Fault::Bad(reason, e)) => {
                    last_error = format!("peer {} served invalid blocks: {e}", p.peer_id);
                    let _ = net
                        .penalize(p.peer_id, reason, reason.default_points())
                        .await;
                }
                Err(Fault::Unavailable(e) | Fault::Missing(e)) => {
                    last_error = format!("peer {}: {e}", p.peer_id);
                }
            }
        }
        if !progressed {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    out.truncate((hi - lo + 1) as usize);
    Ok(out)
}
