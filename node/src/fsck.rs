//! `tallyd fsck`: checks every stored block (checksum, hash index, header linkage, commit
//! signatures, tx index) and replays the whole chain from genesis in memory, comparing
//! every state root and, at the end, every account the chain touched.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use ledger::block::{block_sets, check_header, check_header_v2};
use ledger::exec::{execute_block, ExecContext, Signatures};
use ledger::genesis::Genesis;
use ledger::state::{AccountReader, StateReader};
use ledger::store::memory::MemStore;
use ledger::store::rocks::RocksStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::Address;

#[derive(Debug, Default)]
pub struct Report {
    pub tip: u64,
    pub blocks_checked: u64,
    pub txs_checked: u64,
    pub accounts_checked: u64,
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fsck: tip {}, {} blocks, {} txs, {} accounts checked in {:.1}s",
            self.tip, self.blocks_checked, self.txs_checked, self.accounts_checked, self.seconds
        )?;
        if self.ok() {
            write!(f, "fsck: OK")
        } else {
            for p in &self.problems {
                writeln!(f, "fsck: PROBLEM: {p}")?;
            }
            write!(
                f,
                "fsck: {} problem(s). To repair damaged blocks, start the node with \
                 {}=0 while peers are reachable: it checks the whole chain and fetches damaged \
                 blocks from peers (by default it checks the last {} blocks); a state whose \
                 root is not the tip's is rebuilt by replaying the blocks. Otherwise move \
                 data/db away and start the node to resync from peers.",
                self.problems.len(),
                crate::repair::CHECK_DEPTH_ENV,
                crate::repair::CHECK_DEPTH
            )
        }
    }
}

/// Opens the database read-write (RocksDB needs it) and checks everything.
pub fn check(db: &Path, genesis: &Genesis) -> anyhow::Result<Report> {
    let store =
        RocksStore::open(db, genesis).map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
    Ok(check_store(&store, genesis))
}

pub fn check_store(store: &RocksStore, genesis: &Genesis) -> Report {
    let start = Instant::now();
    let mut r = Report::default();
    let tip = match store.tip() {
        Ok(t) => t,
        Err(e) => {
            r.problems.push(format!("cannot read the tip: {e}"));
            return r;
        }
    };
    r.tip = tip.height;
    let replay = match MemStore::new(genesis) {
        Ok(m) => m,
        Err(e) => {
            r.problems
                .push(format!("cannot build the genesis state: {e}"));
            return r;
        }
    };
    let ctx = ExecContext {
        chain_id: &genesis.chain_id,
        params: &genesis.params,
        validators: &genesis.validators,
    };
    let mut touched: HashSet<Address> = genesis.accounts.iter().map(|(a, _)| *a).collect();
    for h in 1..=tip.height {
        let block = match store.block(h) {
            Ok(Some(b)) => b,
            Ok(None) => {
                r.problems.push(format!("block {h} is missing"));
                break;
            }
            Err(e) => {
                r.problems.push(format!("block {h}: {e}"));
                break;
            }
        };
        let commit = match store.commit(h) {
            Ok(Some(c)) => c,
            Ok(None) => {
                r.problems.push(format!("commit {h} is missing"));
                break;
            }
            Err(e) => {
                r.problems.push(format!("commit {h}: {e}"));
                break;
            }
        };
        let hash = block.hash();
        if block.header.height != h {
            r.problems.push(format!(
                "block stored at {h} says height {}",
                block.header.height
            ));
            break;
        }
        if store.height_of(&hash).ok().flatten() != Some(h) {
            r.problems
                .push(format!("block {h}: hash index does not point back to it"));
        }
        let parent = match replay.tip() {
            Ok(t) => t,
            Err(e) => {
                r.problems.push(format!("replay: {e}"));
                break;
            }
        };
        // Protocol 2: the sets of h - 1, h and h + 1, as the replay (at h - 1) stored them.
        let protocol = crate::upgrade::protocol_at(&replay, &genesis.params, h).unwrap_or(0);
        let sets = if protocol >= ledger::types::PROTOCOL_2 {
            match block_sets(&replay, h) {
                Ok(sets) => Some(sets),
                Err(e) => {
                    r.problems.push(format!("validator sets of block {h}: {e}"));
                    break;
                }
            }
        } else {
            None
        };
        let (header, validators) = match &sets {
            Some(sets) => (
                check_header_v2(&genesis.chain_id, sets, &parent, &block),
                &sets.current,
            ),
            None => (
                check_header(&genesis.chain_id, &genesis.validators, &parent, &block),
                &genesis.validators,
            ),
        };
        if let Err(e) = header {
            r.problems.push(format!("block {h}: {e}"));
            break;
        }
        if let Err(e) = validators.verify_commit(&genesis.chain_id, h, &hash, &commit) {
            r.problems.push(format!("commit {h}: {e}"));
            break;
        }
        let outcome = match execute_block(&replay, ctx, &block, &Signatures::Verify) {
            Ok(o) => o,
            Err(e) => {
                r.problems.push(format!("block {h} does not replay: {e}"));
                break;
            }
        };
        for (i, rec) in outcome.receipts.iter().enumerate() {
            match store.tx_location(&rec.id) {
                Ok(Some(loc)) if loc.height == h && loc.index as usize == i => {}
                other => r.problems.push(format!(
                    "tx {} of block {h}: index says {other:?}",
                    ledger::to_hex(&rec.id)
                )),
            }
        }
        touched.extend(outcome.update.accounts.iter().map(|(_, a, _)| *a));
        let ids: Vec<_> = outcome.receipts.iter().map(|x| x.id).collect();
        r.txs_checked += ids.len() as u64;
        if let Err(e) = replay.commit_block(&block, &commit, &outcome.update, &ids) {
            r.problems.push(format!("replay of block {h}: {e}"));
            break;
        }
        r.blocks_checked += 1;
    }
    if r.ok() {
        match (store.tree_version(), replay.tree_version()) {
            (Ok(Some((_, a))), Ok(Some((_, b)))) if a == b && a == tip.state_root => {}
            (a, b) => r.problems.push(format!(
                "state root: stored tree {:?}, tip {}, replayed {:?}",
                a.map(|x| x.map(|y| ledger::to_hex(&y.1))),
                ledger::to_hex(&tip.state_root),
                b.map(|x| x.map(|y| ledger::to_hex(&y.1)))
            )),
        }
        for addr in &touched {
            let (stored, replayed) = (store.account(addr), replay.account(addr));
            match (stored, replayed) {
                (Ok(a), Ok(b)) if a == b => {}
                (a, b) => r.problems.push(format!(
                    "account {}: stored {a:?}, replayed {b:?}",
                    ledger::to_hex(addr)
                )),
            }
            r.accounts_checked += 1;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r
}
