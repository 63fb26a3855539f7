//! The one path a transaction takes into the mempool, from the RPC or from gossip:
//! decode, cheap checks, signature (outside the mempool lock), insert.

use std::sync::Mutex;
use std::time::Instant;

use ledger::check::TxError;
use ledger::codec::decode;
use ledger::sha256;
use ledger::store::ChainReader;
use ledger::types::SignedTx;
use ledger::Hash;

use super::metrics::MempoolMetrics;
use super::{AddError, Mempool};

/// Decodes `bytes` as a SignedTx (at most `max` bytes) and admits it. Returns its id.
///
/// A tx committed lately is refused from its id alone, before it is decoded or the store
/// is read: under load most such arrivals are gossip copies and re-announcements that
/// crossed the block committing them, and the full path (decode, two RocksDB reads, two
/// pool locks) cost every node ~10 µs for each, about one per committed tx past the
/// chain's capacity. The id is the SHA-256 of these very bytes, so the answer is the one
/// the full path gives (`already_committed`), only cheaper.
pub fn admit_bytes(
    store: &impl ChainReader,
    mempool: &Mutex<Mempool>,
    metrics: &MempoolMetrics,
    bytes: &[u8],
    max: usize,
) -> Result<(Hash, SignedTx), AddError> {
    let admitted = || {
        if bytes.len() > max {
            let size = bytes.len();
            return Err(AddError::from(TxError::TooLarge { size, max }));
        }
        let id = sha256(bytes);
        let seen = {
            let pool = mempool.lock().map_err(|_| AddError::Poisoned)?;
            if pool.committed_lately(&id) {
                return Err(AddError::AlreadyCommitted);
            }
            pool.commits()
        };
        let tx = decode::<SignedTx>("transaction", bytes, max)
            .map_err(|e| AddError::from(TxError::Malformed(e.to_string())))?;
        admit(store, mempool, metrics, &tx, id, seen, bytes.len())?;
        Ok((id, tx))
    };
    let result = admitted();
    match &result {
        Ok(_) => {
            metrics.admitted.inc();
        }
        Err(e) => {
            metrics.reject(e.code());
        }
    };
    result
}

/// Admits a decoded `tx`; `seen` is the pool's [`Mempool::commits`] read before the
/// account is.
fn admit(
    store: &impl ChainReader,
    mempool: &Mutex<Mempool>,
    metrics: &MempoolMetrics,
    tx: &SignedTx,
    id: Hash,
    seen: u64,
    size: usize,
) -> Result<(), AddError> {
    // Our own store failing is nobody else's fault: never `Malformed` (which scores the
    // relay), and the node reports it.
    let storage = |e: ledger::store::StoreError| {
        metrics.storage.report("admitting a transaction", &e);
        AddError::Storage(e.to_string())
    };
    let account = store
        .account(&tx.sender())
        .map_err(storage)?
        .unwrap_or_default();
    let (checked, verified) = {
        let pool = mempool.lock().map_err(|_| AddError::Poisoned)?;
        (
            pool.precheck(tx, &id, size, &account),
            pool.verified_in_block(&id),
        )
    };
    // A committed tx has a nonce below its sender's next one, so the tx index is only
    // consulted to explain a used nonce (one RocksDB read less per admitted tx).
    if let Err(AddError::Invalid(TxError::NonceTooLow { .. })) = &checked {
        if store.tx_location(&id).map_err(storage)?.is_some() {
            return Err(AddError::AlreadyCommitted);
        }
    }
    checked?;
    // The expensive check runs without the lock so admissions verify in parallel; a tx a
    // block's execution verified already (the same bytes) is not verified again.
    if !verified {
        metrics
            .tx_signatures
            .count(crate::metrics::VerifyPath::Admission, 1);
        tx.verify_signature().map_err(TxError::from)?;
    }
    let mut pool = mempool.lock().map_err(|_| AddError::Poisoned)?;
    // The account again, under the lock, if a post-commit update ran since the read above:
    // inserting with the stale nonce would set the sender's queue to a nonce it has passed,
    // and the tx would never be reaped. (A commit writes the store before it takes this
    // lock, so what we read here is at least as new as every update the pool has seen.)
    // Without such an update the first read is as new as the pool's view, and a commit
    // whose update is still to come corrects the queue as for any pending tx: one RocksDB
    // read per admitted tx less.
    let account = if pool.commits() == seen {
        account
    } else {
        store
            .account(&tx.sender())
            .map_err(storage)?
            .unwrap_or_default()
    };
    pool.insert_verified(tx.clone(), id, size, &account, Instant::now())?;
    // Only an insert changes the pool's size here (evictions included): update the gauges
    // while we hold the lock anyway.
    metrics.txs.set(pool.len() as i64);
    metrics.bytes.set(pool.bytes() as i64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use ledger::crypto::Keypair;
    use ledger::genesis::Params;
    use ledger::state::{AccountReader, StateReader};
    use ledger::store::{StoreError, Tip, TxLocation};
    use ledger::types::{Account, Address, Block, Commit};

    use super::*;
    use crate::mempool::MempoolConfig;
    use crate::testing::transfer;
    use tally_api::ErrorCode;

    type Hook = Box<dyn FnOnce(&Mutex<HashMap<Address, Account>>) + Send>;

    /// A store whose first account read returns the value from before a block commit and
    /// then runs the commit (store write, then the pool's post-commit update), as the
    /// chain host can between an admission's first read and its insert.
    struct RacingStore {
        accounts: Mutex<HashMap<Address, Account>>,
        on_first_read: Mutex<Option<Hook>>,
    }

    impl AccountReader for RacingStore {
        fn account_by_key(&self, _: &Hash) -> Result<Option<Account>, StoreError> {
            Ok(None)
        }
        fn account(&self, address: &Address) -> Result<Option<Account>, StoreError> {
            let read = self.accounts.lock().unwrap().get(address).copied();
            if let Some(commit) = self.on_first_read.lock().unwrap().take() {
                commit(&self.accounts);
            }
            Ok(read)
        }
    }

    impl StateReader for RacingStore {
        fn tree_node(
            &self,
            _: &jmt::storage::NodeKey,
        ) -> Result<Option<jmt::storage::Node>, StoreError> {
            Ok(None)
        }
        fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
            Ok(None)
        }
    }

    impl ChainReader for RacingStore {
        fn tip(&self) -> Result<Tip, StoreError> {
            Err(StoreError::Db("not in this test".into()))
        }
        fn block(&self, _: u64) -> Result<Option<Block>, StoreError> {
            Ok(None)
        }
        fn commit(&self, _: u64) -> Result<Option<Commit>, StoreError> {
            Ok(None)
        }
        fn height_of(&self, _: &Hash) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
        fn tx_location(&self, _: &Hash) -> Result<Option<TxLocation>, StoreError> {
            Ok(None)
        }
        fn genesis_hash(&self) -> Result<Hash, StoreError> {
            Ok([0; 32])
        }
    }

    fn empty_pool(chain: &str) -> Mempool {
        Mempool::new(MempoolConfig::default(), chain.into(), Params::default())
    }

    #[test]
    fn a_commit_between_the_account_read_and_the_insert_does_not_strand_the_tx() {
        let key = Keypair::generate();
        let sender = key.address();
        let tx = |nonce| {
            let stx = transfer(&key, "race", nonce);
            let bytes = ledger::codec::encode(&stx);
            (stx, ledger::sha256(&bytes), bytes.len())
        };
        let pool = Arc::new(Mutex::new(empty_pool("race")));
        let funded = |nonce| Account {
            balance: 1_000,
            nonce,
        };
        // Nonce 0 is pending; nonce 1 arrives while the block with nonce 0 commits.
        let (tx0, id0, size0) = tx(0);
        pool.lock()
            .unwrap()
            .insert_verified(tx0, id0, size0, &funded(0), Instant::now())
            .unwrap();
        let commit_pool = pool.clone();
        let store = RacingStore {
            accounts: Mutex::new(HashMap::from([(sender, funded(0))])),
            on_first_read: Mutex::new(Some(Box::new(move |accounts| {
                accounts.lock().unwrap().insert(sender, funded(1));
                commit_pool
                    .lock()
                    .unwrap()
                    .update_after_commit(&[id0], [(sender, funded(1))]);
            }))),
        };
        let (tx1, id1, _) = tx(1);
        let metrics = MempoolMetrics::default();
        admit_bytes(&store, &pool, &metrics, &ledger::codec::encode(&tx1), 1024).unwrap();
        // Nonce 1 is the sender's next: the next block must get it.
        let reaped = pool.lock().unwrap().reap(10, 1 << 20);
        let ids: Vec<Hash> = reaped
            .iter()
            .map(|t| ledger::sha256(&ledger::codec::encode(&**t)))
            .collect();
        assert_eq!(
            ids,
            vec![id1],
            "the tx was stranded behind a nonce already used"
        );
    }

    /// A tx whose signature a block's execution verified (the pool did not hold it when the
    /// proposal came) is admitted from gossip without a second k256 verification; the
    /// shortcut is keyed by the id, the hash of the whole signed tx, so a forgery of the
    /// same sender and nonce is still verified and refused.
    #[test]
    fn a_tx_a_block_verified_is_not_verified_again_but_a_forgery_of_it_is() {
        use crate::metrics::VerifyPath::Admission;
        let key = Keypair::generate();
        let store = RacingStore {
            accounts: Mutex::new(HashMap::from([(
                key.address(),
                Account {
                    balance: 1_000,
                    nonce: 0,
                },
            )])),
            on_first_read: Mutex::new(None),
        };
        let pool = Arc::new(Mutex::new(empty_pool("seen")));
        let metrics = MempoolMetrics::default();
        let good = transfer(&key, "seen", 0);
        let bytes = ledger::codec::encode(&good);
        pool.lock().unwrap().note_verified([ledger::sha256(&bytes)]);
        let mut forged = good.clone();
        forged.signature[10] ^= 1;
        let e = admit_bytes(
            &store,
            &pool,
            &metrics,
            &ledger::codec::encode(&forged),
            1024,
        )
        .unwrap_err();
        assert!(
            matches!(e, AddError::Invalid(TxError::BadSignature)),
            "{e:?}"
        );
        assert_eq!(
            metrics.tx_signatures.get(Admission),
            1,
            "the forgery was verified"
        );
        admit_bytes(&store, &pool, &metrics, &bytes, 1024).unwrap();
        assert_eq!(
            metrics.tx_signatures.get(Admission),
            1,
            "the tx the block verified was verified again"
        );
        assert_eq!(pool.lock().unwrap().len(), 1);
    }

    /// Item 5 of issue 17: our own store fails the account read while a gossiped (or
    /// submitted) tx is admitted. The verdict is not a peer fault (the router then ignores
    /// the message instead of scoring the relay), and the node reports the error.
    #[test]
    fn a_storage_error_during_admission_is_not_a_peer_fault_and_is_reported() {
        use crate::testing::FailingStore;
        use ledger::store::memory::MemStore;

        let key = Keypair::generate();
        let genesis = crate::testing::genesis("disk", &[&Keypair::generate()], &[(&key, 1_000)]);
        let store = FailingStore::new(MemStore::new(&genesis).unwrap());
        store.fail_account_reads(true);
        let pool = Mutex::new(empty_pool("disk"));
        let metrics = MempoolMetrics::default();
        let tx = transfer(&key, "disk", 0);
        let bytes = ledger::codec::encode(&tx);
        let e = admit_bytes(&store, &pool, &metrics, &bytes, 1024).unwrap_err();
        assert!(
            !e.is_peer_fault(),
            "our disk error was blamed on the peer: {e:?}"
        );
        assert_eq!(e.code(), ErrorCode::StorageError);
        assert_eq!(metrics.storage.count(), 1, "the error is counted");
        let last = metrics.storage.last().unwrap_or_default();
        assert!(last.contains("injected"), "{last}");
        // The disk recovers: the same tx is admitted.
        store.fail_account_reads(false);
        admit_bytes(&store, &pool, &metrics, &bytes, 1024).unwrap();
    }

    /// A gossip copy of a tx the chain committed lately is refused from its id, before
    /// the store is read: the account read fails here, and the committed tx still gets
    /// `already_committed` (a tx not committed lately does read it, and gets the error).
    #[test]
    fn a_tx_committed_lately_is_refused_without_reading_the_store() {
        use crate::testing::FailingStore;
        use ledger::store::memory::MemStore;

        let key = Keypair::generate();
        let genesis = crate::testing::genesis("lately", &[&Keypair::generate()], &[(&key, 1_000)]);
        let store = FailingStore::new(MemStore::new(&genesis).unwrap());
        let pool = Mutex::new(empty_pool("lately"));
        let metrics = MempoolMetrics::default();
        let committed = ledger::codec::encode(&transfer(&key, "lately", 0));
        let id = ledger::sha256(&committed);
        let funded = Account {
            balance: 1_000,
            nonce: 1,
        };
        pool.lock()
            .unwrap()
            .update_after_commit(&[id], [(key.address(), funded)]);
        store.fail_account_reads(true);
        let e = admit_bytes(&store, &pool, &metrics, &committed, 1024).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AlreadyCommitted, "{e:?}");
        assert_eq!(metrics.storage.count(), 0, "the store was read");
        let next = ledger::codec::encode(&transfer(&key, "lately", 1));
        let e = admit_bytes(&store, &pool, &metrics, &next, 1024).unwrap_err();
        assert_eq!(e.code(), ErrorCode::StorageError, "{e:?}");
    }

    /// A pool whose lock a panic poisoned answers `internal` (HTTP 500), not `mempool_full`
    /// (which tells a client to retry with a higher fee), and is no peer's fault.
    #[test]
    fn a_poisoned_pool_is_an_internal_error_not_a_full_one() {
        use ledger::store::memory::MemStore;

        let key = Keypair::generate();
        let genesis = crate::testing::genesis("poison", &[&Keypair::generate()], &[(&key, 1_000)]);
        let store = MemStore::new(&genesis).unwrap();
        let pool = Arc::new(Mutex::new(empty_pool("poison")));
        let holder = pool.clone();
        let _ = std::thread::spawn(move || {
            let _guard = holder.lock().unwrap();
            panic!("a bug while holding the pool");
        })
        .join();
        assert!(pool.is_poisoned());
        let tx = transfer(&key, "poison", 0);
        let metrics = MempoolMetrics::default();
        let e =
            admit_bytes(&store, &pool, &metrics, &ledger::codec::encode(&tx), 1024).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Internal, "{e}");
        assert!(!e.is_peer_fault());
    }
}
