//! The state transition: `apply(state, block) -> (new root, receipts)`.
//!
//! Execution works on an overlay over a [`StateReader`]: nothing is written until the
//! caller commits the returned [`StateUpdate`], so a proposer can build and a validator can
//! check a block without touching the store.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::check::{check_against_account, check_static, TxError};
use crate::codec::encode;
use crate::genesis::Params;
use crate::hash::Hash;
use crate::merkle::merkle_root;
use crate::state::{account_key, compute_update_after, StateReader, StateUpdate};
use crate::store::StoreError;
use crate::types::{Account, Address, Block, Payload, SignedTx};

/// Chain constants execution needs.
#[derive(Clone, Copy, Debug)]
pub struct ExecContext<'a> {
    pub chain_id: &'a str,
    pub params: &'a Params,
}

/// How signatures are checked during execution.
pub enum Signatures<'a> {
    /// Verify every signature.
    Verify,
    /// Signatures of txs for which this returns true were verified before (the mempool's
    /// cache); the others are verified now.
    Cached(&'a (dyn Fn(&Hash) -> bool + Sync)),
}

impl Signatures<'_> {
    fn known(&self, id: &Hash) -> bool {
        matches!(self, Signatures::Cached(known) if known(id))
    }

    fn check(&self, id: &Hash, stx: &SignedTx) -> Result<(), TxError> {
        match self {
            Signatures::Cached(known) if known(id) => Ok(()),
            _ => stx.verify_signature().map_err(TxError::from),
        }
    }
}

/// What one applied transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxReceipt {
    pub id: Hash,
    pub sender: Address,
    pub fee: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block has {count} transactions; the limit is {max}")]
    TooManyTxs { count: usize, max: u32 },
    #[error("block transactions take {size} bytes; the limit is {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("transaction {index} ({id}) is invalid: {error}")]
    InvalidTx {
        index: usize,
        id: String,
        error: TxError,
    },
    #[error("block header version {got} is not this chain's protocol {protocol}")]
    Version { protocol: u32, got: u32 },
    #[error(
        "block is ill-formed: next_validators_hash or evidence present where its header \
         version does not have them"
    )]
    IllFormed,
    #[error("tx_root {got} does not match the transactions ({expected})")]
    TxRoot { expected: String, got: String },
    #[error("state_root {got} does not match the executed state ({expected})")]
    StateRoot { expected: String, got: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BlockError {
    /// Whether the block's author (or the peer relaying it) is at fault.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, BlockError::Store(_))
    }
}

/// The outcome of executing a whole block.
#[derive(Debug, Clone)]
pub struct BlockOutcome {
    pub update: StateUpdate,
    pub receipts: Vec<TxReceipt>,
}

/// Accumulates account changes over a base state.
pub struct Executor<'a, R: StateReader + ?Sized> {
    base: &'a R,
    ctx: ExecContext<'a>,
    proposer: Address,
    overlay: HashMap<Address, Account>,
    /// Accounts read from `base` that exist there: their previous values let the tree
    /// writer skip reading the leaves it replaces.
    read: RefCell<HashMap<Address, Account>>,
}

impl<'a, R: StateReader + ?Sized> Executor<'a, R> {
    pub fn new(base: &'a R, ctx: ExecContext<'a>, proposer: Address) -> Self {
        Self {
            base,
            ctx,
            proposer,
            overlay: HashMap::new(),
            read: RefCell::new(HashMap::new()),
        }
    }

    /// Current value of an account in this execution (absent = zero account).
    pub fn account(&self, address: &Address) -> Result<Account, StoreError> {
        if let Some(a) = self.overlay.get(address) {
            return Ok(*a);
        }
        let account = self.base.account(address)?;
        if let Some(a) = account {
            self.read.borrow_mut().insert(*address, a);
        }
        Ok(account.unwrap_or_default())
    }

    /// Checks and applies one transaction whose size and signature are checked here;
    /// a rejected transaction changes nothing. The outer `Result` is a storage failure.
    pub fn apply_tx(
        &mut self,
        stx: &SignedTx,
        id: Hash,
        encoded_len: usize,
        signatures: &Signatures<'_>,
    ) -> Result<Result<TxReceipt, TxError>, StoreError> {
        if let Err(e) = check_static(stx, encoded_len, self.ctx.chain_id, self.ctx.params) {
            return Ok(Err(e));
        }
        let sender_addr = stx.sender();
        let sender = self.account(&sender_addr)?;
        if let Err(e) = check_against_account(stx, &sender) {
            return Ok(Err(e));
        }
        // Signature last: it is the expensive check, and most cheap failures come first.
        if let Err(e) = signatures.check(&id, stx) {
            return Ok(Err(e));
        }
        // check_static refused every other payload (protocol 2 is not executed yet).
        let Payload::Transfer { to, amount } = stx.tx.payload else {
            return Ok(Err(TxError::UnsupportedPayload {
                payload: stx.tx.payload.kind(),
                needs: stx.tx.payload.min_protocol(),
                runs: self.ctx.params.protocol_version,
            }));
        };
        let fee = stx.tx.fee;

        // Compute every new value before writing any, so a failure leaves no trace.
        // Self-transfers and a proposer paying itself read the already-updated values.
        let proposer = self.proposer;
        let mut staged: Vec<(Address, Account)> = Vec::with_capacity(3);
        let debit = amount + fee; // cannot overflow: check_against_account proved it fits
        let mut s = sender;
        s.balance -= debit;
        s.nonce += 1;
        staged.push((sender_addr, s));
        let credit = |addr: Address, value: u64, staged: &mut Vec<(Address, Account)>| {
            let mut acct = match staged.iter().rev().find(|(a, _)| *a == addr) {
                Some((_, a)) => *a,
                None => self.account(&addr)?,
            };
            match acct.balance.checked_add(value) {
                Some(b) => acct.balance = b,
                None => return Ok(Err(TxError::Overflow)),
            }
            staged.push((addr, acct));
            Ok::<_, StoreError>(Ok(()))
        };
        if let Err(e) = credit(to, amount, &mut staged)? {
            return Ok(Err(e));
        }
        if let Err(e) = credit(proposer, fee, &mut staged)? {
            return Ok(Err(e));
        }
        for (addr, acct) in staged {
            self.overlay.insert(addr, acct);
        }
        Ok(Ok(TxReceipt {
            id,
            sender: sender_addr,
            fee,
        }))
    }

    /// The state changes so far, with the new root.
    pub fn finish(self) -> Result<StateUpdate, StoreError> {
        let read = self.read.into_inner();
        let mut previous = HashMap::with_capacity(self.overlay.len());
        let mut changes = BTreeMap::new();
        for (addr, acct) in self.overlay {
            let key = account_key(&addr);
            if let Some(old) = read.get(&addr) {
                previous.insert(key, *old);
            }
            changes.insert(key, (addr, acct));
        }
        compute_update_after(self.base, changes, &previous)
    }
}

/// Ids and encoded sizes of a block's transactions.
pub fn tx_ids_and_sizes(txs: &[SignedTx]) -> Vec<(Hash, usize)> {
    txs.iter()
        .map(|t| {
            let bytes = encode(t);
            (crate::hash::sha256(&bytes), bytes.len())
        })
        .collect()
}

/// Executes every transaction of `block` (all must be valid) and checks that its header
/// version is the chain's protocol (`params.protocol_version`), `tx_root` and
/// `state_root`. Header linkage and the commit are checked by the caller.
pub fn execute_block<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    block: &Block,
    signatures: &Signatures<'_>,
) -> Result<BlockOutcome, BlockError> {
    if block.header.version != ctx.params.protocol_version {
        return Err(BlockError::Version {
            protocol: ctx.params.protocol_version,
            got: block.header.version,
        });
    }
    if !block.is_well_formed() {
        return Err(BlockError::IllFormed);
    }
    let outcome = execute_txs(base, ctx, block.header.proposer, &block.txs, signatures)?;
    let ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
    let tx_root = merkle_root(&ids);
    if tx_root != block.header.tx_root {
        return Err(BlockError::TxRoot {
            expected: hex::encode(tx_root),
            got: hex::encode(block.header.tx_root),
        });
    }
    if outcome.update.root != block.header.state_root {
        return Err(BlockError::StateRoot {
            expected: hex::encode(outcome.update.root),
            got: hex::encode(block.header.state_root),
        });
    }
    Ok(outcome)
}

/// Executes `txs` in order; any invalid tx makes the whole list invalid.
pub fn execute_txs<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    proposer: Address,
    txs: &[SignedTx],
    signatures: &Signatures<'_>,
) -> Result<BlockOutcome, BlockError> {
    if txs.len() > ctx.params.block_max_txs as usize {
        return Err(BlockError::TooManyTxs {
            count: txs.len(),
            max: ctx.params.block_max_txs,
        });
    }
    let ids = tx_ids_and_sizes(txs);
    let total: u64 = ids.iter().map(|(_, n)| *n as u64).sum();
    if total > ctx.params.block_max_bytes {
        return Err(BlockError::TooLarge {
            size: total,
            max: ctx.params.block_max_bytes,
        });
    }
    // Verify the signatures not known good in parallel across cores first; the sequential
    // pass then only re-checks (and reports, at its position) a signature that failed.
    let verified: HashSet<Hash> = {
        use rayon::prelude::*;
        txs.par_iter()
            .zip(ids.par_iter())
            .filter(|(stx, (id, _))| signatures.known(id) || stx.verify_signature().is_ok())
            .map(|(_, (id, _))| *id)
            .collect()
    };
    let known = |id: &Hash| verified.contains(id);
    let signatures = Signatures::Cached(&known);
    let mut exec = Executor::new(base, ctx, proposer);
    let mut receipts = Vec::with_capacity(txs.len());
    for (index, (stx, (id, len))) in txs.iter().zip(ids).enumerate() {
        match exec.apply_tx(stx, id, len, &signatures)? {
            Ok(r) => receipts.push(r),
            Err(error) => {
                return Err(BlockError::InvalidTx {
                    index,
                    id: hex::encode(id),
                    error,
                })
            }
        }
    }
    Ok(BlockOutcome {
        update: exec.finish()?,
        receipts,
    })
}

/// A proposer's block body: takes candidates in order while they fit the limits, skips the
/// invalid ones (returned with their reasons so the mempool can drop them).
pub struct BuiltBody {
    pub txs: Vec<SignedTx>,
    pub outcome: BlockOutcome,
    pub tx_root: Hash,
    pub rejected: Vec<(Hash, TxError)>,
}

pub fn build_body<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    proposer: Address,
    candidates: impl IntoIterator<Item = SignedTx>,
    signatures: &Signatures<'_>,
) -> Result<BuiltBody, StoreError> {
    let mut exec = Executor::new(base, ctx, proposer);
    let mut txs = Vec::new();
    let mut receipts = Vec::new();
    let mut rejected = Vec::new();
    let mut bytes: u64 = 0;
    for stx in candidates {
        if txs.len() >= ctx.params.block_max_txs as usize {
            break;
        }
        let enc = encode(&stx);
        if bytes + enc.len() as u64 > ctx.params.block_max_bytes {
            break;
        }
        let id = crate::hash::sha256(&enc);
        match exec.apply_tx(&stx, id, enc.len(), signatures)? {
            Ok(r) => {
                bytes += enc.len() as u64;
                receipts.push(r);
                txs.push(stx);
            }
            Err(e) => rejected.push((id, e)),
        }
    }
    let ids: Vec<Hash> = receipts.iter().map(|r| r.id).collect();
    Ok(BuiltBody {
        tx_root: merkle_root(&ids),
        txs,
        outcome: BlockOutcome {
            update: exec.finish()?,
            receipts,
        },
        rejected,
    })
}
