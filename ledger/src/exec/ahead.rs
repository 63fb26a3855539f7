//! A block's signature checks running ahead of its execution.
//!
//! A follower applies a block's txs in order on one thread; the k256 checks of the
//! signatures it does not already know good are independent of each other and of the
//! state, so rayon's pool runs them meanwhile, in block order, while the applying thread
//! follows behind and only reads each tx's result. Before, the pool verified the whole
//! block first and the applying thread waited for it: on two cores verification ran at
//! two cores' speed and then apply at one, never both at once.
//!
//! Every check is claimed before it runs (one atomic state per tx), by a pool worker or
//! by the applying thread itself when it reaches a tx nobody has taken yet. So a pool
//! that is busy, or has a single thread that is the caller itself, costs speed but never
//! blocks the block: the applying thread does what the pool did not. It stops the pool
//! once the block fails, so an invalid block costs no more checks than it reached.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::hash::Hash;
use crate::types::SignedTx;

use super::Signatures;

/// When a block's signature checks run ([`set_signature_checks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureChecks {
    /// On rayon's pool while the txs are applied (what nodes run).
    Ahead,
    /// All of them on the pool first, then the txs applied: the code before, kept so
    /// `make bench` can measure both in one run.
    First,
}

static CHECKS_FIRST: AtomicBool = AtomicBool::new(false);

/// Process-wide choice of when a block's signatures are checked: `make bench` measures
/// both in one run. Nodes leave it at `Ahead`.
pub fn set_signature_checks(checks: SignatureChecks) {
    CHECKS_FIRST.store(checks == SignatureChecks::First, Ordering::Relaxed);
}

/// The signature needs no check: the caller's cache knows it good.
const KNOWN: u8 = 0;
/// To be checked; nobody has taken it yet.
const PENDING: u8 = 1;
/// Being checked by whoever claimed it.
const CLAIMED: u8 = 2;
const GOOD: u8 = 3;
const BAD: u8 = 4;

/// The signature checks of one block's txs.
pub(super) struct Ahead<'a> {
    txs: &'a [SignedTx],
    state: Vec<AtomicU8>,
    /// The next tx a pool worker looks at: workers go in block order, as the applying
    /// thread does.
    next: AtomicUsize,
    pending: usize,
    stop: AtomicBool,
    verified: AtomicU32,
}

impl<'a> Ahead<'a> {
    /// `ids[i]` is `txs[i]`'s id; the txs `signatures` knows good are not checked.
    pub(super) fn new(txs: &'a [SignedTx], ids: &[(Hash, usize)], signatures: &Signatures) -> Self {
        let state: Vec<AtomicU8> = ids
            .iter()
            .map(|(id, _)| AtomicU8::new(if signatures.known(id) { KNOWN } else { PENDING }))
            .collect();
        let pending = state
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == PENDING)
            .count();
        Ahead {
            txs,
            state,
            next: AtomicUsize::new(0),
            pending,
            stop: AtomicBool::new(false),
            verified: AtomicU32::new(0),
        }
    }

    /// Sets the checks going on the pool of `scope`: one worker per pool thread (none
    /// for fewer than two checks: the applying thread does those); under
    /// [`SignatureChecks::First`], every check done before this returns.
    pub(super) fn start<'s>(&'s self, scope: &rayon::Scope<'s>) {
        if CHECKS_FIRST.load(Ordering::Relaxed) {
            use rayon::prelude::*;
            (0..self.txs.len()).into_par_iter().for_each(|i| {
                if self.claim(i) {
                    self.check(i);
                }
            });
            return;
        }
        if self.pending < 2 {
            return;
        }
        for _ in 0..rayon::current_num_threads().min(self.pending) {
            scope.spawn(|_| self.work());
        }
    }

    /// A pool worker: checks unclaimed txs in block order until none is left or the
    /// block has failed.
    fn work(&self) {
        // Each `help` is one verification (~150 µs), not a spin.
        loop {
            if self.stop.load(Ordering::Relaxed) || !self.help() {
                return;
            }
        }
    }

    /// Whether `txs[i]`'s signature is good (or known good): checks it here if nobody has
    /// claimed it; while a worker is in the middle of it, checks a later one meanwhile (so
    /// the applying thread verifies instead of spinning on a core the workers need), and
    /// yields once none is left.
    pub(super) fn good(&self, i: usize) -> bool {
        loop {
            match self.state[i].load(Ordering::Acquire) {
                KNOWN | GOOD => return true,
                BAD => return false,
                PENDING => {
                    if self.claim(i) {
                        self.check(i);
                    }
                }
                _ => {
                    if !self.help() {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// Checks the next unclaimed tx, if there is one left.
    fn help(&self) -> bool {
        loop {
            let j = self.next.fetch_add(1, Ordering::Relaxed);
            if j >= self.txs.len() {
                return false;
            }
            if self.claim(j) {
                self.check(j);
                return true;
            }
        }
    }

    /// The applying thread is done (the block applied, or failed): workers stop at their
    /// next tx.
    pub(super) fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Signatures checked so far.
    pub(super) fn verified(&self) -> u32 {
        self.verified.load(Ordering::Relaxed)
    }

    fn claim(&self, i: usize) -> bool {
        self.state[i]
            .compare_exchange(PENDING, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn check(&self, i: usize) {
        let good = self.txs[i].verify_signature().is_ok();
        self.verified.fetch_add(1, Ordering::Relaxed);
        self.state[i].store(if good { GOOD } else { BAD }, Ordering::Release);
    }
}
