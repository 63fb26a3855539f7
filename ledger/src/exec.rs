//! The state transition: `apply(state, block) -> (new root, receipts)`.
//!
//! Execution works on an overlay over a [`StateReader`]: nothing is written until the
//! caller commits the returned [`StateUpdate`], so a proposer can build and a validator can
//! check a block without touching the store.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::check::{check_against_account, check_static_at, TxError};
use crate::codec::encode;
use crate::genesis::Params;
use crate::hash::{sha256, Hash};
use crate::merkle::merkle_root;
use crate::staking::{
    self, bond_key_bytes, evidence_key_bytes, split_bond_key, split_unbonding_key,
    split_validator_key, unbonding_key_bytes, unbonding_prefix, validator_key_bytes, BondRecord,
    EvidenceError, UnbondingEntry, ValidatorRecord, BOND_KEY_TAG, BURNED_KEY, UNBONDING_KEY_TAG,
    VALIDATOR_KEY_TAG,
};
use crate::state::{
    account_key, compute_update_with, tree_writer, Entries, StateReader, StateUpdate,
};
use crate::store::StoreError;
use crate::types::{
    validators_hash, Account, Address, Block, Commit, Equivocation, Payload, PublicKeyBytes,
    SignedTx, Validator, PROTOCOL_2,
};
use crate::upgrade::{self, ProtocolSchedule};
use crate::validators::ValidatorSet;

mod ahead;
use ahead::Ahead;
pub use ahead::{set_signature_checks, SignatureChecks};

/// Chain constants execution needs.
#[derive(Clone, Copy, Debug)]
pub struct ExecContext<'a> {
    pub chain_id: &'a str,
    pub params: &'a Params,
    /// The genesis validator set: the set of every protocol-1 height, whose powers weigh
    /// the upgrade signals ([`crate::upgrade`]) on a protocol-1 chain.
    pub validators: &'a ValidatorSet,
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

    /// Verifies `stx`'s signature unless it is known good; counts a verification in
    /// `count`.
    fn check_counted(&self, id: &Hash, stx: &SignedTx, count: &mut u32) -> Result<(), TxError> {
        if self.known(id) {
            return Ok(());
        }
        *count += 1;
        stx.verify_signature().map_err(TxError::from)
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
    #[error("block header runs protocol {got}; this chain runs protocol {protocol} at its height")]
    Version { protocol: u32, got: u32 },
    #[error(
        "block header signals protocol {got}; a block of protocol {protocol} may signal only \
         protocol {next} or nothing",
        next = protocol + 1
    )]
    Signal { protocol: u32, got: u32 },
    #[error(
        "this network runs protocol {protocol} from height {height}; this tallyd supports up \
         to {max}: upgrade it"
    )]
    Unsupported {
        protocol: u32,
        height: u64,
        max: u32,
    },
    #[error(
        "block is ill-formed: next_validators_hash or evidence present where its header \
         version does not have them"
    )]
    IllFormed,
    #[error("tx_root {got} does not match the transactions ({expected})")]
    TxRoot { expected: String, got: String },
    #[error("state_root {got} does not match the executed state ({expected})")]
    StateRoot { expected: String, got: String },
    #[error("evidence {index} is invalid: {error}")]
    InvalidEvidence { index: usize, error: EvidenceError },
    #[error(
        "{which} {got} does not match the hash of the stored validator set of height \
         {height} ({expected})"
    )]
    SetHash {
        which: &'static str,
        height: u64,
        expected: String,
        got: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BlockError {
    /// Whether the block's author (or the peer relaying it) is at fault.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, BlockError::Store(_) | BlockError::Unsupported { .. })
    }
}

/// The outcome of executing a whole block.
#[derive(Debug, Clone)]
pub struct BlockOutcome {
    pub update: StateUpdate,
    pub receipts: Vec<TxReceipt>,
    /// Transaction signatures this execution verified (those not known good through
    /// [`Signatures::Cached`]): the node counts them in
    /// `tally_tx_signature_verifications_total`.
    pub signatures_verified: u32,
}

/// Accumulates account (and, on protocol 2, staking) changes over a base state.
pub struct Executor<'a, R: StateReader + ?Sized> {
    base: &'a R,
    ctx: ExecContext<'a>,
    proposer: Address,
    /// The height of the block being executed (0 when built with [`Executor::new`]).
    height: u64,
    /// The protocol of that block: the genesis's unless set by [`Executor::at_protocol`].
    protocol: u32,
    overlay: HashMap<Address, Account>,
    /// Protocol 2: changed entries by preimage (None: deleted).
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Protocol 2: the set computed by [`Executor::end_block`] when it differs from the
    /// set of the next height, with the height it applies to.
    new_set: Option<(u64, Vec<Validator>)>,
    /// Accounts read from `base` that exist there: their previous values let the tree
    /// writer skip reading the leaves it replaces.
    read: RefCell<HashMap<Address, Account>>,
    /// Transaction signatures verified so far ([`BlockOutcome::signatures_verified`]).
    signatures_verified: u32,
}

impl<'a, R: StateReader + ?Sized> Executor<'a, R> {
    /// An executor for protocol-1 transactions, which do not depend on the height. A
    /// protocol-2 block needs [`Executor::at_height`]: Unbond and Unjail read the height.
    pub fn new(base: &'a R, ctx: ExecContext<'a>, proposer: Address) -> Self {
        Self::at_height(base, ctx, proposer, 0)
    }

    /// An executor for the block at `height` (protocol 2's Unbond and Unjail need it).
    pub fn at_height(base: &'a R, ctx: ExecContext<'a>, proposer: Address, height: u64) -> Self {
        Self {
            base,
            ctx,
            proposer,
            height,
            protocol: ctx.params.protocol_version,
            overlay: HashMap::new(),
            entries: BTreeMap::new(),
            new_set: None,
            read: RefCell::new(HashMap::new()),
            signatures_verified: 0,
        }
    }

    /// This executor for a block of `protocol` (after an upgrade, not the genesis's).
    pub fn at_protocol(mut self, protocol: u32) -> Self {
        self.protocol = protocol;
        self
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
        if let Err(e) = check_static_at(
            stx,
            encoded_len,
            self.ctx.chain_id,
            self.ctx.params,
            self.protocol,
        ) {
            return Ok(Err(e));
        }
        let sender_addr = stx.sender();
        let sender = self.account(&sender_addr)?;
        if let Err(e) = check_against_account(stx, &sender) {
            return Ok(Err(e));
        }
        // Signature last: it is the expensive check, and most cheap failures come first.
        if let Err(e) = signatures.check_counted(&id, stx, &mut self.signatures_verified) {
            return Ok(Err(e));
        }
        // check_static refused the staking payloads on protocol 1.
        let Payload::Transfer { to, amount } = stx.tx.payload else {
            return match self.apply_staking(stx, sender_addr, sender)? {
                Ok(()) => Ok(Ok(TxReceipt {
                    id,
                    sender: sender_addr,
                    fee: stx.tx.fee,
                })),
                Err(e) => Ok(Err(e)),
            };
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

    /// The state changes so far with the new root, the receipts, and how many signatures
    /// were verified.
    pub fn into_outcome(self, receipts: Vec<TxReceipt>) -> Result<BlockOutcome, StoreError> {
        let signatures_verified = self.signatures_verified;
        Ok(BlockOutcome {
            update: self.finish()?,
            receipts,
            signatures_verified,
        })
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
        let mut entries = BTreeMap::new();
        for (preimage, value) in self.entries {
            // An entry written back to its committed value (or made and deleted again in
            // this block) is no change.
            if self.base.entry(&preimage)? != value {
                entries.insert(sha256(&preimage), (preimage, value));
            }
        }
        let mut update =
            compute_update_with(self.base, changes, entries, &previous, tree_writer())?;
        update.validator_sets = self.new_set.into_iter().collect();
        Ok(update)
    }

    // ----- protocol 2: staking entries -----

    /// The current value of a protocol-2 entry in this execution.
    fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.entries.get(preimage) {
            Some(v) => Ok(v.clone()),
            None => self.base.entry(preimage),
        }
    }

    fn record<T: BorshDeserialize>(&self, preimage: &[u8]) -> Result<Option<T>, StoreError> {
        self.entry(preimage)?
            .map(|bytes| {
                borsh::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: format!("staking entry {}", hex::encode(preimage)),
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    fn put_record<T: BorshSerialize>(&mut self, preimage: &[u8], value: Option<&T>) {
        self.entries
            .insert(preimage.to_vec(), value.map(|v| encode(v)));
    }

    /// Every current entry whose preimage starts with `prefix`, in preimage order: the
    /// committed ones with this execution's changes over them.
    fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> =
            self.base.entries_with_prefix(prefix)?.into_iter().collect();
        for (k, v) in self
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            match v {
                Some(v) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        Ok(all.into_iter().collect())
    }

    fn bond(&self, operator: &Address, validator: &PublicKeyBytes) -> Result<u64, StoreError> {
        Ok(self
            .record::<BondRecord>(&bond_key_bytes(operator, validator))?
            .map_or(0, |b| b.amount))
    }

    fn set_bond(&mut self, operator: &Address, validator: &PublicKeyBytes, amount: u64) {
        let record = (amount > 0).then_some(BondRecord { amount });
        self.put_record(&bond_key_bytes(operator, validator), record.as_ref());
    }

    fn validator(&self, key: &PublicKeyBytes) -> Result<Option<ValidatorRecord>, StoreError> {
        self.record(&validator_key_bytes(key))
    }

    fn set_validator(&mut self, key: &PublicKeyBytes, record: &ValidatorRecord) {
        self.put_record(&validator_key_bytes(key), Some(record));
    }

    /// The total burned by slashing so far.
    pub fn burned(&self) -> Result<u64, StoreError> {
        Ok(self.record::<u64>(BURNED_KEY)?.unwrap_or(0))
    }

    /// Bond, Unbond or Unjail, after the checks every tx gets (static, nonce, funds for
    /// the bond's amount and the fee, signature). A refusal changes nothing.
    fn apply_staking(
        &mut self,
        stx: &SignedTx,
        sender_addr: Address,
        sender: Account,
    ) -> Result<Result<(), TxError>, StoreError> {
        let tx = &stx.tx;
        let mut s = sender;
        // Cannot underflow: check_against_account proved balance >= debit + fee.
        s.balance -= tx.payload.debit() + tx.fee;
        s.nonce += 1;
        let overflow = Ok(Err(TxError::Overflow));
        match tx.payload {
            Payload::Transfer { .. } => unreachable!("apply_tx handles transfers"),
            Payload::Bond { validator, amount } => {
                let bond = self.bond(&sender_addr, &validator)?;
                let mut record = self.validator(&validator)?.unwrap_or_default();
                let (Some(new_bond), Some(stake)) =
                    (bond.checked_add(amount), record.stake.checked_add(amount))
                else {
                    return overflow;
                };
                record.stake = stake;
                let proposer = match self.pay_fee(sender_addr, &mut s, tx.fee)? {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                self.set_bond(&sender_addr, &validator, new_bond);
                self.set_validator(&validator, &record);
                self.commit_accounts(sender_addr, s, proposer);
            }
            Payload::Unbond { validator, amount } => {
                let bond = self.bond(&sender_addr, &validator)?;
                if bond == 0 {
                    return Ok(Err(TxError::NoBond(hex::encode(validator))));
                }
                // "Up to" the bond: asking for more unbonds all of it.
                let amount = amount.min(bond);
                let mut record = self.validator(&validator)?.unwrap_or_default();
                record.stake =
                    record
                        .stake
                        .checked_sub(amount)
                        .ok_or_else(|| StoreError::Corrupt {
                            what: format!("validator record {}", hex::encode(validator)),
                            detail: "its stake is less than one of its bonds".into(),
                        })?;
                let Some(release) = self
                    .height
                    .checked_add(self.ctx.params.staking().unbonding_blocks)
                else {
                    return overflow;
                };
                let proposer = match self.pay_fee(sender_addr, &mut s, tx.fee)? {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                self.set_bond(&sender_addr, &validator, bond - amount);
                self.set_validator(&validator, &record);
                // The sequence is the tx's nonce: unique per operator.
                self.put_record(
                    &unbonding_key_bytes(release, &sender_addr, tx.nonce),
                    Some(&UnbondingEntry { amount, validator }),
                );
                self.commit_accounts(sender_addr, s, proposer);
            }
            Payload::Unjail { validator } => {
                if self.bond(&sender_addr, &validator)? == 0 {
                    return Ok(Err(TxError::NotOperator(hex::encode(validator))));
                }
                let mut record = self.validator(&validator)?.unwrap_or_default();
                if record.jailed_until_height == 0 {
                    return Ok(Err(TxError::NotJailed(hex::encode(validator))));
                }
                if self.height < record.jailed_until_height {
                    return Ok(Err(TxError::StillJailed {
                        validator: hex::encode(validator),
                        until: record.jailed_until_height,
                        height: self.height,
                    }));
                }
                let proposer = match self.pay_fee(sender_addr, &mut s, tx.fee)? {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                record.jailed_until_height = 0;
                record.consecutive_missed = 0;
                self.set_validator(&validator, &record);
                self.commit_accounts(sender_addr, s, proposer);
            }
        }
        Ok(Ok(()))
    }

    /// The proposer's account once paid `fee`; None when the proposer is the sender, whose
    /// fee then goes back into `s` (the balance it was just taken from).
    fn pay_fee(
        &self,
        sender: Address,
        s: &mut Account,
        fee: u64,
    ) -> Result<Result<Option<Account>, TxError>, StoreError> {
        if self.proposer == sender {
            s.balance += fee;
            return Ok(Ok(None));
        }
        let mut p = self.account(&self.proposer)?;
        match p.balance.checked_add(fee) {
            Some(b) => {
                p.balance = b;
                Ok(Ok(Some(p)))
            }
            None => Ok(Err(TxError::Overflow)),
        }
    }

    fn commit_accounts(&mut self, sender: Address, s: Account, proposer: Option<Account>) {
        self.overlay.insert(sender, s);
        if let Some(p) = proposer {
            self.overlay.insert(self.proposer, p);
        }
    }

    // ----- protocol 2: the end of the block -----

    /// Checks one piece of evidence against the state and, if it holds, punishes it: the
    /// validator's bonds and the unbonding entries from it each lose
    /// `slash_fraction_bps` (rounded down; the burned total grows by the sum) and it is
    /// jailed for `jail_blocks`. A refused piece changes nothing.
    pub fn apply_evidence(
        &mut self,
        e: &Equivocation,
    ) -> Result<Result<(), EvidenceError>, StoreError> {
        let params = self.ctx.params.staking();
        let height = e.a.vote.height;
        // The set of the votes' height: stored for every height up to this one.
        let set = match self.base.validator_set_record(height)? {
            Some(v) if height > 0 && height < self.height => {
                crate::validators::ValidatorSet::new(v).map_err(|detail| StoreError::Corrupt {
                    what: format!("validator set of height {height}"),
                    detail,
                })?
            }
            _ => {
                return Ok(Err(EvidenceError::Age {
                    height,
                    block: self.height,
                    max: params.evidence_max_age_blocks,
                }))
            }
        };
        let (key, height) = match staking::check_equivocation(
            self.ctx.chain_id,
            self.height,
            params.evidence_max_age_blocks,
            &set,
            e,
        ) {
            Ok(found) => found,
            Err(error) => return Ok(Err(error)),
        };
        let record_key = evidence_key_bytes(&key, height);
        if self.entry(&record_key)?.is_some() {
            return Ok(Err(EvidenceError::AlreadyPunished {
                validator: hex::encode(e.a.validator),
                height,
            }));
        }
        let bps = params.slash_fraction_bps;
        let mut burned_bonds: u64 = 0;
        let mut burned_unbonding: u64 = 0;
        for (preimage, bytes) in self.entries_with_prefix(BOND_KEY_TAG)? {
            let Some((operator, validator)) = split_bond_key(&preimage) else {
                continue;
            };
            if validator != key {
                continue;
            }
            let bond: BondRecord = decode_entry(&preimage, &bytes)?;
            let cut = staking::slash_amount(bond.amount, bps);
            burned_bonds += cut;
            self.set_bond(&operator, &validator, bond.amount - cut);
        }
        for (preimage, bytes) in self.entries_with_prefix(UNBONDING_KEY_TAG)? {
            let mut entry: UnbondingEntry = decode_entry(&preimage, &bytes)?;
            if entry.validator != key {
                continue;
            }
            let cut = staking::slash_amount(entry.amount, bps);
            burned_unbonding += cut;
            entry.amount -= cut;
            let value = (entry.amount > 0).then_some(entry);
            self.put_record(&preimage, value.as_ref());
        }
        let mut record = self.validator(&key)?.unwrap_or_default();
        record.stake = record.stake.saturating_sub(burned_bonds);
        let until = self.height.saturating_add(params.jail_blocks);
        record.jailed_until_height = record.jailed_until_height.max(until);
        self.set_validator(&key, &record);
        // Burned stake was part of the supply, so the total cannot overflow.
        let burned = self.burned()? + burned_bonds + burned_unbonding;
        self.put_record(BURNED_KEY, Some(&burned));
        let punished_at = self.height;
        self.put_record(&record_key, Some(&punished_at));
        Ok(Ok(()))
    }

    /// Downtime: each validator of the set that signed `last_commit` (the commit of the
    /// previous height) that the commit lacks has missed one more block; at
    /// `downtime_jail_after` in a row it is jailed for `jail_blocks` (no slash). A
    /// validator that signed starts counting again from 0.
    fn count_missed(&mut self, last_commit: &Commit) -> Result<(), StoreError> {
        let params = self.ctx.params.staking();
        let Some(set) = self.base.validator_set_record(last_commit.height)? else {
            return Err(StoreError::Db(format!(
                "no validator set is stored for height {}",
                last_commit.height
            )));
        };
        for v in set {
            let signed = last_commit
                .signatures
                .binary_search_by(|s| s.validator.cmp(&v.address))
                .is_ok();
            let Some(mut record) = self.validator(&v.pubkey)? else {
                continue;
            };
            if record.jailed_until_height != 0 {
                continue;
            }
            if signed {
                if record.consecutive_missed != 0 {
                    record.consecutive_missed = 0;
                    self.set_validator(&v.pubkey, &record);
                }
                continue;
            }
            record.consecutive_missed += 1;
            if record.consecutive_missed >= params.downtime_jail_after {
                record.consecutive_missed = 0;
                record.jailed_until_height = self.height.saturating_add(params.jail_blocks);
            }
            self.set_validator(&v.pubkey, &record);
        }
        Ok(())
    }

    // ----- issue 21: the upgrade machinery -----

    /// The validator set of this block's height at `protocol`: the genesis set on
    /// protocol 1, the stored set on protocol 2.
    fn set_of_height(&self, protocol: u32) -> Result<ValidatorSet, StoreError> {
        if protocol < PROTOCOL_2 {
            return Ok(self.ctx.validators.clone());
        }
        let height = self.height;
        match self.base.validator_set_record(height)? {
            Some(v) => ValidatorSet::new(v).map_err(|detail| StoreError::Corrupt {
                what: format!("validator set of height {height}"),
                detail,
            }),
            None => Err(StoreError::Db(format!(
                "no validator set is stored for height {height}"
            ))),
        }
    }

    /// The last step of every block: counts the upgrade signals if this block (its
    /// proposer's `signal`) signals the next protocol, and records its activation when
    /// they reach two thirds of the power ([`upgrade::activation_after`]).
    fn count_signals(
        &mut self,
        schedule: &ProtocolSchedule,
        signal: Option<u32>,
    ) -> Result<(), StoreError> {
        let protocol = schedule.at(self.height);
        if signal != Some(protocol + 1) {
            return Ok(());
        }
        let set = self.set_of_height(protocol)?;
        let block = upgrade::Signalled {
            height: self.height,
            proposer: self.proposer,
            signal,
        };
        if let Some((key, from)) =
            upgrade::activation_after(self.base, self.ctx.params, schedule, &set, block)?
        {
            self.put_record(&key, Some(&from));
        }
        Ok(())
    }

    /// The end of every block: [`Executor::count_signals`], then, if the next height is
    /// the first of protocol 2 on a chain that ran protocol 1, the protocol-1 set, in its
    /// order, is stored as the set of this height on (so of A and A + 1, whose headers
    /// announce it: consensus sees no change; A + 2 is the first set computed from
    /// stake). The stored sets are not in the state tree: block A - 1's state root is the
    /// one a binary without the switch computes too, so such a node commits A - 1 and
    /// stops cleanly before A instead of refusing A - 1.
    fn end_upgrade(
        &mut self,
        schedule: &ProtocolSchedule,
        signal: Option<u32>,
    ) -> Result<(), StoreError> {
        self.count_signals(schedule, signal)?;
        if schedule.at(self.height) == crate::types::PROTOCOL_1
            && self.record::<u64>(&upgrade::protocol_key_bytes(PROTOCOL_2))?
                == Some(self.height + 1)
        {
            self.new_set = Some((self.height, self.ctx.validators.validators().to_vec()));
        }
        Ok(())
    }

    /// The start of every block: at the activation height of protocol 2 on a chain that
    /// ran protocol 1, the switch ([`Executor::switch_to_protocol_2`]) before any tx.
    fn begin_upgrade(&mut self, schedule: &ProtocolSchedule) -> Result<(), StoreError> {
        if schedule.genesis() == crate::types::PROTOCOL_1
            && schedule.activation_of(PROTOCOL_2) == Some(self.height)
        {
            self.switch_to_protocol_2()?;
        }
        Ok(())
    }

    /// Issue 21: the start of the first protocol-2 block A creates protocol 2's state
    /// from the protocol-1 set (which has none): each validator is bonded by the address
    /// of its own consensus key with stake = power x `stake_per_power`, raised to
    /// `min_validator_stake` if below (so every protocol-1 validator stays in the sets
    /// computed from stake); the validator records follow; the stake is new money, added
    /// to the minted total ([`crate::staking::MINTED_KEY`]).
    fn switch_to_protocol_2(&mut self) -> Result<(), StoreError> {
        let params = self.ctx.params.staking();
        let mut minted = self.record::<u64>(staking::MINTED_KEY)?.unwrap_or(0);
        let activation = self.height;
        let overflow = |what: &str| StoreError::Corrupt {
            what: format!("the switch to protocol 2 at height {activation}"),
            detail: format!("{what} overflows a u64"),
        };
        let validators = self.ctx.validators.validators().to_vec();
        for v in &validators {
            let stake = v
                .power
                .checked_mul(params.stake_per_power)
                .ok_or_else(|| overflow("power x stake_per_power"))?
                .max(params.min_validator_stake);
            minted = minted
                .checked_add(stake)
                .ok_or_else(|| overflow("the minted total"))?;
            self.set_bond(&v.address, &v.pubkey, stake);
            self.set_validator(
                &v.pubkey,
                &ValidatorRecord {
                    stake,
                    jailed_until_height: 0,
                    consecutive_missed: 0,
                },
            );
        }
        self.put_record(staking::MINTED_KEY, Some(&minted));
        Ok(())
    }

    /// Pays the unbonding entries released at the end of this height to their operators.
    fn release_unbonding(&mut self) -> Result<(), StoreError> {
        for (preimage, bytes) in self.entries_with_prefix(&unbonding_prefix(self.height))? {
            let Some(operator) = split_unbonding_key(&preimage) else {
                continue;
            };
            let entry: UnbondingEntry = decode_entry(&preimage, &bytes)?;
            let mut account = self.account(&operator)?;
            account.balance =
                account
                    .balance
                    .checked_add(entry.amount)
                    .ok_or_else(|| StoreError::Corrupt {
                        what: format!("account {}", hex::encode(operator)),
                        detail: "balance plus its unbonding entry overflows: the supply is broken"
                            .into(),
                    })?;
            self.overlay.insert(operator, account);
            self.put_record::<UnbondingEntry>(&preimage, None);
        }
        Ok(())
    }

    /// The set of height + 2 from the current validator records ([`staking::compute_set`]);
    /// stored only when it differs from the set of height + 1. An empty result keeps the
    /// current set: a chain without validators could never commit again.
    fn next_set(&mut self) -> Result<(), StoreError> {
        let params = self.ctx.params.staking();
        let mut records = Vec::new();
        for (preimage, bytes) in self.entries_with_prefix(VALIDATOR_KEY_TAG)? {
            if let Some(key) = split_validator_key(&preimage) {
                records.push((key, decode_entry::<ValidatorRecord>(&preimage, &bytes)?));
            }
        }
        let set = staking::compute_set(&params, records);
        if set.is_empty() || crate::validators::ValidatorSet::new(set.clone()).is_err() {
            return Ok(());
        }
        let current = self.base.validator_set_record(self.height + 1)?;
        if current.as_deref() != Some(&set[..]) {
            self.new_set = Some((self.height + 2, set));
        }
        Ok(())
    }

    /// The end of a protocol-2 block, after its transactions and evidence: downtime from
    /// its `last_commit`, the unbonding entries due at this height, and the set of
    /// height + 2.
    pub fn end_block(&mut self, last_commit: Option<&Commit>) -> Result<(), StoreError> {
        if let Some(c) = last_commit {
            self.count_missed(c)?;
        }
        self.release_unbonding()?;
        self.next_set()
    }
}

fn decode_entry<T: BorshDeserialize>(preimage: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    borsh::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("staking entry {}", hex::encode(preimage)),
        detail: e.to_string(),
    })
}

/// Ids and encoded sizes of a block's transactions (in parallel across cores).
pub fn tx_ids_and_sizes(txs: &[SignedTx]) -> Vec<(Hash, usize)> {
    use rayon::prelude::*;
    txs.par_iter()
        .map(|t| {
            let bytes = encode(t);
            (crate::hash::sha256(&bytes), bytes.len())
        })
        .collect()
}

/// The protocol of the block at `height` for execution: the schedule's
/// ([`ProtocolSchedule`], read from `base`), or [`BlockError::Unsupported`] when this
/// binary cannot run it (the node stops before it gets here).
pub fn protocol_at<R: StateReader + ?Sized>(
    base: &R,
    params: &Params,
    height: u64,
) -> Result<(ProtocolSchedule, u32), BlockError> {
    let schedule = ProtocolSchedule::read(base, params)?;
    let protocol = schedule.at(height);
    let max = upgrade::max_runnable(schedule.genesis());
    if protocol > max {
        let from = schedule.activation_of(protocol).unwrap_or(height);
        return Err(BlockError::Unsupported {
            protocol,
            height: from,
            max,
        });
    }
    Ok((schedule, protocol))
}

/// Executes every transaction of `block` (all must be valid) and checks that its header
/// runs the chain's protocol at its height ([`protocol_at`]; a header may signal only the
/// protocol after it), `tx_root` and `state_root`. Every block ends by counting the
/// upgrade signals ([`crate::upgrade`]). On protocol 2 it also checks `validators_hash` and
/// `next_validators_hash` against the stored sets of the block's height and the next,
/// and runs the end of the block after the transactions, in the same state update: the
/// evidence (any invalid piece makes the block invalid), downtime, the unbonding entries
/// due, the set of height + 2 ([`Executor::end_block`]). Header linkage and the commit
/// are checked by the caller.
pub fn execute_block<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    block: &Block,
    signatures: &Signatures<'_>,
) -> Result<BlockOutcome, BlockError> {
    let ids = tx_ids_and_sizes(&block.txs);
    execute_block_with_ids(base, ctx, block, &ids, signatures)
}

/// [`execute_block`] with the block's tx ids and sizes already computed: `ids` must be
/// [`tx_ids_and_sizes`]`(&block.txs)` (a caller that needed the ids first, to look them up
/// in its mempool, hashes each tx once).
pub fn execute_block_with_ids<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    block: &Block,
    ids: &[(Hash, usize)],
    signatures: &Signatures<'_>,
) -> Result<BlockOutcome, BlockError> {
    if ids.len() != block.txs.len() {
        return Err(BlockError::Store(StoreError::Db(format!(
            "execute_block_with_ids: {} ids for {} txs (a caller's bug)",
            ids.len(),
            block.txs.len()
        ))));
    }
    let (schedule, protocol) = protocol_at(base, ctx.params, block.header.height)?;
    let h = &block.header;
    if block.header.protocol() != protocol {
        return Err(BlockError::Version {
            protocol,
            got: block.header.protocol(),
        });
    }
    if let Some(got) = block.header.signal().filter(|s| *s != protocol + 1) {
        return Err(BlockError::Signal { protocol, got });
    }
    if !block.is_well_formed() {
        return Err(BlockError::IllFormed);
    }
    let mut exec = Executor::at_height(base, ctx, h.proposer, h.height).at_protocol(protocol);
    exec.begin_upgrade(&schedule)?;
    let receipts = if protocol >= PROTOCOL_2 {
        execute_v2(&mut exec, block, ids, signatures)?
    } else {
        run_txs(&mut exec, &block.txs, ids, signatures)?
    };
    exec.end_upgrade(&schedule, h.signal())?;
    let outcome = exec.into_outcome(receipts)?;
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

/// Checks that `got` (a header's `which` field) is the hash of the stored set of `height`.
pub(crate) fn check_set_hash<R: StateReader + ?Sized>(
    base: &R,
    which: &'static str,
    height: u64,
    got: &Hash,
) -> Result<(), BlockError> {
    let expected = match base.validator_set_record(height)? {
        Some(set) => validators_hash(&set),
        None => {
            return Err(BlockError::Store(StoreError::Db(format!(
                "no validator set is stored for height {height}"
            ))))
        }
    };
    if &expected != got {
        return Err(BlockError::SetHash {
            which,
            height,
            expected: hex::encode(expected),
            got: hex::encode(got),
        });
    }
    Ok(())
}

/// A protocol-2 block's checks of its set hashes, its txs, evidence and end of block.
fn execute_v2<R: StateReader + ?Sized>(
    exec: &mut Executor<'_, R>,
    block: &Block,
    ids: &[(Hash, usize)],
    signatures: &Signatures<'_>,
) -> Result<Vec<TxReceipt>, BlockError> {
    let h = &block.header;
    check_set_hash(exec.base, "validators_hash", h.height, &h.validators_hash)?;
    let next = h.next_validators_hash.unwrap_or_default(); // well formed: present
    check_set_hash(exec.base, "next_validators_hash", h.height + 1, &next)?;
    let receipts = run_txs(exec, &block.txs, ids, signatures)?;
    for (index, e) in block.evidence.iter().enumerate() {
        if let Err(error) = exec.apply_evidence(e)? {
            return Err(BlockError::InvalidEvidence { index, error });
        }
    }
    exec.end_block(block.last_commit.as_ref())?;
    Ok(receipts)
}

/// Executes `txs` in order with [`Executor::new`] (no height, no end of block, no count of
/// upgrade signals): a protocol-1 block's transactions; any invalid tx makes the whole
/// list invalid.
pub fn execute_txs<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    proposer: Address,
    txs: &[SignedTx],
    signatures: &Signatures<'_>,
) -> Result<BlockOutcome, BlockError> {
    let mut exec = Executor::new(base, ctx, proposer);
    let receipts = run_txs(&mut exec, txs, &tx_ids_and_sizes(txs), signatures)?;
    Ok(exec.into_outcome(receipts)?)
}

/// `ids`: [`tx_ids_and_sizes`]`(txs)`.
fn run_txs<R: StateReader + ?Sized>(
    exec: &mut Executor<'_, R>,
    txs: &[SignedTx],
    ids: &[(Hash, usize)],
    signatures: &Signatures<'_>,
) -> Result<Vec<TxReceipt>, BlockError> {
    let params = exec.ctx.params;
    if txs.len() > params.block_max_txs as usize {
        return Err(BlockError::TooManyTxs {
            count: txs.len(),
            max: params.block_max_txs,
        });
    }
    let total: u64 = ids.iter().map(|(_, n)| *n as u64).sum();
    if total > params.block_max_bytes {
        return Err(BlockError::TooLarge {
            size: total,
            max: params.block_max_bytes,
        });
    }
    // The signatures not known good are checked on rayon's pool while this thread
    // applies the txs in order (`ahead`); a tx whose check failed is checked again by
    // `apply_tx`, which reports it at its position and after its cheaper checks.
    let ahead = Ahead::new(txs, ids, signatures);
    let applied = rayon::in_place_scope(|scope| {
        ahead.start(scope);
        let applied = apply_in_order(exec, txs, ids, &ahead);
        ahead.finish();
        applied
    });
    exec.signatures_verified += ahead.verified();
    applied
}

fn apply_in_order<R: StateReader + ?Sized>(
    exec: &mut Executor<'_, R>,
    txs: &[SignedTx],
    ids: &[(Hash, usize)],
    ahead: &Ahead<'_>,
) -> Result<Vec<TxReceipt>, BlockError> {
    let mut receipts = Vec::with_capacity(txs.len());
    for (index, (stx, &(id, len))) in txs.iter().zip(ids).enumerate() {
        let known = |_: &Hash| ahead.good(index);
        match exec.apply_tx(stx, id, len, &Signatures::Cached(&known))? {
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
    Ok(receipts)
}

/// A proposer's block body: takes candidates in order while they fit the limits, skips the
/// invalid ones (returned with their reasons so the mempool can drop them).
pub struct BuiltBody {
    pub txs: Vec<SignedTx>,
    pub outcome: BlockOutcome,
    pub tx_root: Hash,
    pub rejected: Vec<(Hash, TxError)>,
    /// Protocol 2: the evidence the block carries (the valid pieces offered, in order).
    pub evidence: Vec<Equivocation>,
    /// Protocol 2: the evidence offered and left out, with the reason.
    pub rejected_evidence: Vec<(Equivocation, EvidenceError)>,
    /// The protocol the body was built for, and the signal its header carries: the
    /// header's `version` ([`crate::block::assemble`]).
    pub protocol: u32,
    pub signal: Option<u32>,
}

/// What a protocol-2 proposer's block is built from besides its transactions.
#[derive(Clone, Copy, Debug)]
pub struct BlockEnv<'a> {
    pub height: u64,
    pub proposer: Address,
    /// The commit of `height - 1` the block will carry (None at height 1).
    pub last_commit: Option<&'a Commit>,
    /// Evidence to include (protocol 2); pieces that do not hold are left out.
    pub evidence: &'a [Equivocation],
    /// The protocol the proposer signals readiness for ([`upgrade::signal_for`]); a
    /// signal that is not the next protocol is dropped.
    pub signal: Option<u32>,
}

/// A protocol-1 proposer's body that signals nothing and counts no signals (tests and
/// benches). The node builds every body with [`build_body_at`] (a protocol-2 body, and
/// the end of every block, depend on the height); here protocol 2 is refused.
pub fn build_body<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    proposer: Address,
    candidates: impl IntoIterator<Item = SignedTx>,
    signatures: &Signatures<'_>,
) -> Result<BuiltBody, StoreError> {
    if ctx.params.protocol_version >= PROTOCOL_2 {
        return Err(StoreError::Db(
            "a protocol-2 block body is built with build_body_at (it needs the height)".into(),
        ));
    }
    let exec = Executor::new(base, ctx, proposer);
    fill_body(exec, ctx, candidates, signatures, None)
}

/// A proposer's body for the block at `env.height`, at the protocol of that height
/// ([`protocol_at`]): the candidates that fit and hold, then on protocol 2 the evidence
/// that holds and the end of the block, then the count of the upgrade signals.
pub fn build_body_at<R: StateReader + ?Sized>(
    base: &R,
    ctx: ExecContext<'_>,
    env: BlockEnv<'_>,
    candidates: impl IntoIterator<Item = SignedTx>,
    signatures: &Signatures<'_>,
) -> Result<BuiltBody, StoreError> {
    let (schedule, protocol) = protocol_at(base, ctx.params, env.height).map_err(|e| match e {
        BlockError::Store(e) => e,
        other => StoreError::Db(other.to_string()),
    })?;
    let mut exec = Executor::at_height(base, ctx, env.proposer, env.height).at_protocol(protocol);
    exec.begin_upgrade(&schedule)?;
    let env = BuildEnv {
        block: env,
        schedule,
        protocol,
    };
    fill_body(exec, ctx, candidates, signatures, Some(env))
}

/// [`build_body_at`]'s environment with the protocol of the height.
struct BuildEnv<'a> {
    block: BlockEnv<'a>,
    schedule: ProtocolSchedule,
    protocol: u32,
}

fn fill_body<R: StateReader + ?Sized>(
    mut exec: Executor<'_, R>,
    ctx: ExecContext<'_>,
    candidates: impl IntoIterator<Item = SignedTx>,
    signatures: &Signatures<'_>,
    env: Option<BuildEnv<'_>>,
) -> Result<BuiltBody, StoreError> {
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
    let mut evidence = Vec::new();
    let mut rejected_evidence = Vec::new();
    let (mut protocol, mut signal) = (crate::types::PROTOCOL_1, None);
    if let Some(env) = env {
        protocol = env.protocol;
        if protocol >= PROTOCOL_2 {
            for e in env.block.evidence {
                match exec.apply_evidence(e)? {
                    Ok(()) => evidence.push(e.clone()),
                    Err(why) => rejected_evidence.push((e.clone(), why)),
                }
            }
            exec.end_block(env.block.last_commit)?;
        }
        signal = env.block.signal.filter(|s| *s == protocol + 1);
        exec.end_upgrade(&env.schedule, signal)?;
    }
    let ids: Vec<Hash> = receipts.iter().map(|r| r.id).collect();
    Ok(BuiltBody {
        tx_root: merkle_root(&ids),
        txs,
        outcome: exec.into_outcome(receipts)?,
        rejected,
        evidence,
        rejected_evidence,
        protocol,
        signal,
    })
}
