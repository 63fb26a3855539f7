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
pub fn admit_bytes(
    store: &impl ChainReader,
    mempool: &Mutex<Mempool>,
    metrics: &MempoolMetrics,
    bytes: &[u8],
    max: usize,
) -> Result<(Hash, SignedTx), AddError> {
    let result = decode::<SignedTx>("transaction", bytes, max)
        .map_err(|e| match e {
            ledger::codec::DecodeError::TooLarge { size, max, .. } => {
                TxError::TooLarge { size, max }
            }
            other => TxError::Malformed(other.to_string()),
        })
        .map_err(AddError::from)
        .and_then(|tx| {
            let id = sha256(bytes);
            admit(store, mempool, &tx, id, bytes.len()).map(|_| (id, tx))
        });
    match &result {
        Ok(_) => {
            metrics.admitted.inc();
        }
        Err(e) => {
            metrics.reject(e.code());
        }
    };
    if let Ok(m) = mempool.lock() {
        metrics.txs.set(m.len() as i64);
        metrics.bytes.set(m.bytes() as i64);
    }
    result
}

fn admit(
    store: &impl ChainReader,
    mempool: &Mutex<Mempool>,
    tx: &SignedTx,
    id: Hash,
    size: usize,
) -> Result<(), AddError> {
    let storage = |e: ledger::store::StoreError| {
        AddError::Invalid(TxError::Malformed(format!("storage: {e}")))
    };
    let account = store
        .account(&tx.sender())
        .map_err(storage)?
        .unwrap_or_default();
    let checked = mempool
        .lock()
        .map_err(|_| AddError::Full)?
        .precheck(tx, &id, size, &account);
    // A committed tx has a nonce below its sender's next one, so the tx index is only
    // consulted to explain a used nonce (one RocksDB read less per admitted tx).
    if let Err(AddError::Invalid(TxError::NonceTooLow { .. })) = &checked {
        if store.tx_location(&id).map_err(storage)?.is_some() {
            return Err(AddError::AlreadyCommitted);
        }
    }
    checked?;
    // The expensive check runs without the lock so admissions verify in parallel.
    tx.verify_signature().map_err(TxError::from)?;
    mempool.lock().map_err(|_| AddError::Full)?.insert_verified(
        tx.clone(),
        id,
        size,
        &account,
        Instant::now(),
    )
}
