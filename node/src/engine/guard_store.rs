//! The signing guard's durable store: one synced RocksDB write in the `consensus` column
//! family, done before any signature leaves the node.

use std::sync::Arc;

use consensus::{GuardState, GuardStore};
use ledger::codec::{decode, encode};
use ledger::store::rocks::RocksStore;
use ledger::store::{ChainReader, ChainWriter, StoreError};

const GUARD_KEY: &[u8] = b"signing_guard";

pub struct RocksGuardStore {
    store: Arc<RocksStore>,
}

impl RocksGuardStore {
    pub fn new(store: Arc<RocksStore>) -> Self {
        Self { store }
    }
}

impl GuardStore for RocksGuardStore {
    type Error = StoreError;

    fn load(&self) -> Result<Option<GuardState>, StoreError> {
        match self.store.consensus_get(GUARD_KEY)? {
            None => Ok(None),
            Some(bytes) => decode("signing guard state", &bytes, 4096)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "signing guard state".into(),
                    detail: e.to_string(),
                }),
        }
    }

    fn save(&mut self, state: &GuardState) -> Result<(), StoreError> {
        self.store.consensus_put(GUARD_KEY, &encode(state))
    }
}
