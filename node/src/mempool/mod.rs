//! The mempool (DESIGN.md section 5): pending transactions, bounded by count and bytes,
//! deduplicated by id, ordered per sender by nonce with a bounded gap of future nonces,
//! replace-by-fee for the same (sender, nonce), lowest-fee eviction when full, a TTL, and
//! re-checking against the new state after every commit.
//!
//! Signatures are verified once, on admission; block execution asks [`Mempool::contains`]
//! so a transaction that came through the mempool is not verified again.
//!
//! The pool is plain synchronous data; the node shares it behind a mutex and never holds
//! the lock across I/O or signature checks.

pub mod admission;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::check::{check_static_at, TxError};
use ledger::genesis::Params;
use ledger::types::{Account, Address, SignedTx};
use ledger::Hash;
use tally_api::ErrorCode;

#[derive(Clone, Debug)]
pub struct MempoolConfig {
    pub max_txs: usize,
    pub max_bytes: usize,
    /// How far past the account's next nonce, after its pending txs, a tx may be (future
    /// nonces wait).
    pub max_nonce_gap: u64,
    /// Most pending txs from one sender (stops one key from filling the pool).
    pub max_per_sender: usize,
    pub ttl: Duration,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self {
            max_txs: 50_000,
            max_bytes: 32 << 20,
            max_nonce_gap: 64,
            max_per_sender: 256,
            ttl: Duration::from_secs(600),
        }
    }
}

/// Why a transaction was not admitted. `code()` is the RPC error code and metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error(transparent)]
    Invalid(#[from] TxError),
    #[error("transaction is already pending")]
    Duplicate,
    #[error("transaction is already committed")]
    AlreadyCommitted,
    #[error("nonce {got} is more than {max_gap} ahead of the account's next nonce {expected}")]
    NonceGap {
        expected: u64,
        got: u64,
        max_gap: u64,
    },
    #[error("a pending transaction has the same nonce and a fee >= {existing_fee}; raise the fee to replace it")]
    ReplacementUnderpriced { existing_fee: u64 },
    #[error("sender has {0} pending transactions, the most allowed")]
    SenderLimit(usize),
    #[error("mempool is full and this fee does not beat the cheapest pending transaction")]
    Full,
    /// This node's own store failed while checking the tx: not the sender's or a relay's
    /// fault (see `crate::metrics::StorageHealth`).
    #[error("this node cannot read its state right now ({0}); try again or another node")]
    Storage(String),
    /// The pool's lock was poisoned by a panic elsewhere in the node: a bug of ours, not a
    /// full pool (it used to be reported as `mempool_full`).
    #[error("internal error: the mempool is unusable after a panic; see the node's log")]
    Poisoned,
}

impl AddError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AddError::Invalid(e) => tx_error_code(e),
            AddError::Duplicate => ErrorCode::Duplicate,
            AddError::AlreadyCommitted => ErrorCode::AlreadyCommitted,
            AddError::NonceGap { .. } => ErrorCode::NonceGap,
            AddError::ReplacementUnderpriced { .. } => ErrorCode::ReplacementUnderpriced,
            AddError::SenderLimit(_) => ErrorCode::SenderLimit,
            AddError::Full => ErrorCode::MempoolFull,
            AddError::Storage(_) => ErrorCode::StorageError,
            AddError::Poisoned => ErrorCode::Internal,
        }
    }

    /// Every code [`AddError::code`] can give (the metric's reason labels).
    pub fn codes() -> impl Iterator<Item = ErrorCode> {
        ErrorCode::ALL.iter().copied().filter(|c| {
            c.is_tx_rejection() || matches!(c, ErrorCode::StorageError | ErrorCode::Internal)
        })
    }

    /// Whether a peer that relayed this tx could have known it was bad.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, AddError::Invalid(e) if e.is_peer_fault())
    }
}

/// The API's code of a ledger check's refusal. The match is exhaustive, so a new
/// `TxError` needs its code (and so its HTTP status) before the node compiles.
fn tx_error_code(e: &TxError) -> ErrorCode {
    match e {
        TxError::Malformed(_) => ErrorCode::Malformed,
        TxError::TooLarge { .. } => ErrorCode::TooLarge,
        TxError::WrongChain { .. } => ErrorCode::WrongChain,
        TxError::HighS => ErrorCode::HighSSignature,
        TxError::BadSignature => ErrorCode::BadSignature,
        TxError::NonceTooLow { .. } => ErrorCode::NonceTooLow,
        TxError::NonceTooHigh { .. } => ErrorCode::NonceTooHigh,
        TxError::FeeTooLow { .. } => ErrorCode::FeeTooLow,
        TxError::ZeroAmount => ErrorCode::ZeroAmount,
        TxError::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
        TxError::Overflow => ErrorCode::Overflow,
        TxError::UnsupportedPayload { .. } => ErrorCode::UnsupportedPayload,
        TxError::BadValidatorKey(_) => ErrorCode::BadValidatorKey,
        TxError::NoBond(_) => ErrorCode::NoBond,
        TxError::NotOperator(_) => ErrorCode::NotOperator,
        TxError::NotJailed(_) => ErrorCode::NotJailed,
        TxError::StillJailed { .. } => ErrorCode::StillJailed,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    tx: Arc<SignedTx>,
    id: Hash,
    size: usize,
    fee: u64,
    debit: u128,
    added: Instant,
    /// When this node last gossiped it (arrival counts: it was gossiped then).
    announced: Instant,
}

#[derive(Default, Debug)]
struct SenderQueue {
    /// Committed nonce of the account as last seen.
    next_nonce: u64,
    balance: u64,
    txs: BTreeMap<u64, Entry>,
}

pub struct Mempool {
    config: MempoolConfig,
    chain_id: String,
    params: Params,
    /// The protocol of the next block (genesis's until an upgrade; the chain host sets it).
    protocol: u32,
    senders: HashMap<Address, SenderQueue>,
    by_id: HashMap<Hash, (Address, u64)>,
    /// (fee, sender) of every sender's highest-nonce tx: the eviction candidates, cheapest
    /// first, so a full pool finds its victim in O(log n) instead of scanning all senders.
    tails: BTreeSet<(u64, Address)>,
    bytes: usize,
    /// Post-commit updates applied so far ([`Mempool::commits`]).
    commits: u64,
    /// Transactions in the blocks of those updates ([`Mempool::committed_txs`]).
    committed_txs: u64,
    /// Ids of txs whose signatures a block's execution verified (txs this pool did not
    /// hold), oldest first, at most [`VERIFIED_IN_BLOCKS_MAX`] ([`Mempool::note_verified`]).
    verified_in_blocks: crate::recent::RecentIds<VERIFIED_IN_BLOCKS_MAX>,
    /// Ids of the txs of the latest committed blocks, at most [`COMMITTED_LATELY_MAX`]
    /// ([`Mempool::committed_lately`]).
    committed_lately: crate::recent::RecentIds<COMMITTED_LATELY_MAX>,
}

/// Most ids of committed txs [`Mempool::committed_lately`] remembers (1 MiB of ids: about
/// 16 s of the chain at 2,000 TPS, longer than gossip copies and re-announcements take to
/// arrive after the commit; an older one is refused by the full path, as before).
pub const COMMITTED_LATELY_MAX: usize = 32_768;

/// A transaction handed to a proposer.
pub type Candidate = Arc<SignedTx>;

/// Most ids [`Mempool::note_verified`] remembers (1 MiB of ids; a few blocks' worth).
pub const VERIFIED_IN_BLOCKS_MAX: usize = 32_768;

impl Mempool {
    pub fn new(config: MempoolConfig, chain_id: String, params: Params) -> Self {
        Self {
            config,
            chain_id,
            protocol: params.protocol_version,
            params,
            senders: HashMap::new(),
            by_id: HashMap::new(),
            tails: BTreeSet::new(),
            bytes: 0,
            commits: 0,
            committed_txs: 0,
            verified_in_blocks: Default::default(),
            committed_lately: Default::default(),
        }
    }

    /// How many post-commit updates ([`Mempool::update_after_commit`]) the pool has
    /// applied: an account read after this was read is at least as new as the pool's view
    /// while it has not changed.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Transactions the committed blocks of [`Mempool::commits`] held (ours or not): the
    /// chain's throughput, sampled by the re-announcer to tell a backlog from lost gossip.
    pub fn committed_txs(&self) -> u64 {
        self.committed_txs
    }

    /// Remembers that block execution verified the signatures of the txs `ids` (the
    /// oldest are forgotten past [`VERIFIED_IN_BLOCKS_MAX`]). Under load a proposal often
    /// carries txs whose gossip has not reached us yet: the block verifies them, and the
    /// gossip copy, if it arrives before the block commits, is admitted without verifying
    /// the same bytes again (an id is the SHA-256 of the whole signed tx).
    pub fn note_verified(&mut self, ids: impl IntoIterator<Item = Hash>) {
        for id in ids {
            self.verified_in_blocks.insert(id);
        }
    }

    /// Whether a block's execution verified the tx with this id ([`Mempool::note_verified`]).
    pub fn verified_in_block(&self, id: &Hash) -> bool {
        self.verified_in_blocks.contains(id)
    }

    /// Whether the tx with this id is in one of the latest committed blocks (the last
    /// [`COMMITTED_LATELY_MAX`] txs [`Mempool::update_after_commit`] was given): admission
    /// refuses it before decoding it or reading the store.
    pub fn committed_lately(&self, id: &Hash) -> bool {
        self.committed_lately.contains(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, id: &Hash) -> bool {
        self.by_id.contains_key(id)
    }

    /// The pending tx with this id (verified on admission).
    pub fn get(&self, id: &Hash) -> Option<Candidate> {
        let (sender, nonce) = self.by_id.get(id)?;
        let entry = self.senders.get(sender)?.txs.get(nonce)?;
        Some(entry.tx.clone())
    }

    /// Cheap checks before the signature: run them first so junk costs no EC work.
    /// `account` is the sender's committed account.
    pub fn precheck(
        &self,
        tx: &SignedTx,
        id: &Hash,
        size: usize,
        account: &Account,
    ) -> Result<(), AddError> {
        check_static_at(tx, size, &self.chain_id, &self.params, self.protocol)?;
        if self.by_id.contains_key(id) {
            return Err(AddError::Duplicate);
        }
        let nonce = tx.tx.nonce;
        if nonce < account.nonce {
            return Err(TxError::NonceTooLow {
                expected: account.nonce,
                got: nonce,
            }
            .into());
        }
        // The gap counts from the sender's next nonce with its pending txs, not from the
        // committed one: a sender with 100 txs in flight (a batch, a backlog) is not gapped.
        // (From the committed nonce, its 65th pending tx was refused, and every later one
        // waited for a nonce the client had been told was refused.)
        let expected = if nonce > account.nonce.saturating_add(self.config.max_nonce_gap) {
            self.pending_nonce(&tx.sender(), account.nonce)
        } else {
            account.nonce
        };
        if nonce > expected.saturating_add(self.config.max_nonce_gap) {
            return Err(AddError::NonceGap {
                expected,
                got: nonce,
                max_gap: self.config.max_nonce_gap,
            });
        }
        // This tx alone must be payable (the pending ones before it are added on insert):
        // a flood of txs from empty accounts is refused before any signature work.
        let amount = tx.tx.payload.debit();
        let needed = u128::from(amount) + u128::from(tx.tx.fee);
        if needed > u128::from(account.balance) {
            return Err(TxError::InsufficientFunds {
                balance: account.balance,
                needed,
            }
            .into());
        }
        Ok(())
    }

    /// Admits a transaction whose signature the caller has verified (outside the lock).
    /// Re-runs the cheap checks, since the pool may have changed in between.
    pub fn insert_verified(
        &mut self,
        tx: SignedTx,
        id: Hash,
        size: usize,
        account: &Account,
        now: Instant,
    ) -> Result<(), AddError> {
        self.precheck(&tx, &id, size, account)?;
        let sender = tx.sender();
        let nonce = tx.tx.nonce;
        let amount = tx.tx.payload.debit();
        let fee = tx.tx.fee;
        let debit = u128::from(amount) + u128::from(fee);
        // Funds: this tx plus every pending tx of the sender before it must be payable.
        let queue = self.senders.get(&sender);
        let before: u128 = queue.map_or(0, |q| {
            q.txs.range(..nonce).map(|(_, e)| e.debit).sum::<u128>()
        });
        if before + debit > u128::from(account.balance) {
            return Err(TxError::InsufficientFunds {
                balance: account.balance,
                needed: before + debit,
            }
            .into());
        }
        let replacing = queue.and_then(|q| q.txs.get(&nonce)).map(|e| (e.fee, e.id));
        if let Some((existing_fee, _)) = replacing {
            if fee <= existing_fee {
                return Err(AddError::ReplacementUnderpriced { existing_fee });
            }
        } else if queue.is_some_and(|q| q.txs.len() >= self.config.max_per_sender) {
            return Err(AddError::SenderLimit(self.config.max_per_sender));
        }
        // Make room: evict the cheapest tail txs (a sender's highest nonce, so no gaps
        // open) while the pool is over its bounds, but only ones cheaper than this.
        let extra_count = usize::from(replacing.is_none());
        while self.by_id.len() + extra_count > self.config.max_txs
            || self.bytes + size > self.config.max_bytes
        {
            match self.cheapest_tail(&sender) {
                Some((victim, victim_fee)) if victim_fee < fee => self.remove(&victim),
                _ => return Err(AddError::Full),
            };
        }
        if let Some((_, old_id)) = replacing {
            self.remove(&old_id);
        }
        let entry = Entry {
            tx: Arc::new(tx),
            id,
            size,
            fee,
            debit,
            added: now,
            announced: now,
        };
        self.untrack_tail(&sender);
        let q = self.senders.entry(sender).or_default();
        q.next_nonce = account.nonce;
        q.balance = account.balance;
        q.txs.insert(nonce, entry);
        self.track_tail(&sender);
        self.by_id.insert(id, (sender, nonce));
        self.bytes += size;
        Ok(())
    }

    fn cheapest_tail(&self, except: &Address) -> Option<(Hash, u64)> {
        let (fee, sender) = self.tails.iter().find(|(_, a)| a != except)?;
        let e = self.senders.get(sender)?.txs.values().next_back()?;
        Some((e.id, *fee))
    }

    fn tail_of(&self, sender: &Address) -> Option<(u64, Address)> {
        let e = self.senders.get(sender)?.txs.values().next_back()?;
        Some((e.fee, *sender))
    }

    /// Call before changing a sender's queue ...
    fn untrack_tail(&mut self, sender: &Address) {
        if let Some(t) = self.tail_of(sender) {
            self.tails.remove(&t);
        }
    }

    /// ... and after.
    fn track_tail(&mut self, sender: &Address) {
        if let Some(t) = self.tail_of(sender) {
            self.tails.insert(t);
        }
    }

    fn remove(&mut self, id: &Hash) -> Option<Entry> {
        let (sender, nonce) = *self.by_id.get(id)?;
        self.untrack_tail(&sender);
        self.by_id.remove(id);
        let q = self.senders.get_mut(&sender)?;
        let e = q.txs.remove(&nonce);
        if let Some(e) = &e {
            self.bytes -= e.size;
        }
        if q.txs.is_empty() {
            self.senders.remove(&sender);
        }
        self.track_tail(&sender);
        e
    }

    /// The tail index agrees with the queues (tests).
    #[cfg(test)]
    fn check_tails(&self) {
        let expected: BTreeSet<(u64, Address)> = self
            .senders
            .keys()
            .filter_map(|a| self.tail_of(a))
            .collect();
        assert_eq!(self.tails, expected, "tail index out of step");
    }

    /// Next nonce a wallet should use: the committed nonce plus this sender's consecutive
    /// pending txs.
    pub fn pending_nonce(&self, sender: &Address, committed_nonce: u64) -> u64 {
        let mut n = committed_nonce;
        if let Some(q) = self.senders.get(sender) {
            while q.txs.contains_key(&n) {
                n += 1;
            }
        }
        n
    }

    /// Executable txs for a block, highest fee first across senders, nonce order within
    /// one sender, within `max_txs` / `max_bytes`.
    pub fn reap(&self, max_txs: usize, max_bytes: usize) -> Vec<Candidate> {
        // Heap of each sender's next executable tx: (fee, earliest arrival wins ties).
        let mut heap = BinaryHeap::new();
        for (addr, q) in &self.senders {
            if let Some(e) = q.txs.get(&q.next_nonce) {
                heap.push((e.fee, std::cmp::Reverse(e.added), *addr, q.next_nonce));
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some((_, _, addr, nonce)) = heap.pop() {
            if out.len() >= max_txs {
                break;
            }
            let q = &self.senders[&addr];
            let e = &q.txs[&nonce];
            if bytes + e.size > max_bytes {
                continue;
            }
            bytes += e.size;
            out.push(e.tx.clone());
            if let Some(next) = q.txs.get(&(nonce + 1)) {
                heap.push((next.fee, std::cmp::Reverse(next.added), addr, nonce + 1));
            }
        }
        out
    }

    /// After a commit: drops included and now-stale txs of the touched senders and
    /// re-checks their funds against the new state. `account_of` reads committed state.
    /// Returns how many txs were dropped (other than the committed ones).
    /// The protocol of the next block, whose payloads the pool admits (issue 21: the chain
    /// host moves it at an upgrade).
    pub fn set_protocol(&mut self, protocol: u32) {
        self.protocol = protocol;
    }

    pub fn update_after_commit(
        &mut self,
        committed: &[Hash],
        touched: impl IntoIterator<Item = (Address, Account)>,
    ) -> usize {
        self.commits += 1;
        self.committed_txs += committed.len() as u64;
        for id in committed {
            self.remove(id);
            self.committed_lately.insert(*id);
        }
        let mut dropped = 0;
        for (addr, account) in touched {
            let Some(q) = self.senders.get_mut(&addr) else {
                continue;
            };
            q.next_nonce = account.nonce;
            q.balance = account.balance;
            let stale: Vec<Hash> = q.txs.range(..account.nonce).map(|(_, e)| e.id).collect();
            // Funds re-check: keep the longest nonce-ordered prefix the balance pays for.
            let mut spent: u128 = 0;
            let mut unpayable = Vec::new();
            for e in q.txs.range(account.nonce..).map(|(_, e)| e) {
                spent += e.debit;
                if spent > u128::from(account.balance) {
                    unpayable.push(e.id);
                }
            }
            for id in stale.iter().chain(&unpayable) {
                self.remove(id);
                dropped += 1;
            }
        }
        dropped
    }

    /// Pending txs not gossiped for `quiet` (since they arrived or were last returned
    /// here), at most `limit`, longest-quiet first; they count as gossiped at `now`. A tx
    /// whose gossip was lost (dropped under load, no peers at the time) would otherwise
    /// stay in this pool only — for good on a full node, which never proposes.
    pub fn take_unannounced(
        &mut self,
        now: Instant,
        quiet: Duration,
        limit: usize,
    ) -> Vec<Arc<SignedTx>> {
        let mut due: Vec<(Instant, Address, u64)> = self
            .senders
            .iter()
            .flat_map(|(addr, q)| q.txs.iter().map(move |(n, e)| (e.announced, *addr, *n)))
            .filter(|(at, _, _)| now.saturating_duration_since(*at) >= quiet)
            .collect();
        due.sort_unstable_by_key(|(at, _, n)| (*at, *n));
        due.truncate(limit);
        due.into_iter()
            .filter_map(|(_, addr, nonce)| {
                let e = self.senders.get_mut(&addr)?.txs.get_mut(&nonce)?;
                e.announced = now;
                Some(e.tx.clone())
            })
            .collect()
    }

    /// Drops txs older than the TTL. Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.config.ttl;
        let old: Vec<Hash> = self
            .senders
            .values()
            .flat_map(|q| q.txs.values())
            .filter(|e| now.duration_since(e.added) > ttl)
            .map(|e| e.id)
            .collect();
        for id in &old {
            self.remove(id);
        }
        old.len()
    }
}

#[cfg(test)]
mod tests;
