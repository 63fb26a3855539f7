//! Mempool metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct MempoolMetrics {
    pub txs: Gauge,
    pub bytes: Gauge,
    pub admitted: Counter,
    pub rejections: Family<ReasonLabel, Counter>,
    pub evicted: Counter,
    pub reannounced: Counter,
    /// Where admission reports failures of the node's own store; the node shares the one
    /// of its `ChainMetrics` (registered there).
    pub storage: crate::metrics::StorageHealth,
    /// Where admission counts the signatures it verifies; the node shares the one of its
    /// `ChainMetrics` (registered there).
    pub tx_signatures: crate::metrics::TxSignatureMetrics,
}

impl MempoolMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tally_mempool_txs",
            "Transactions pending in the mempool",
            m.txs.clone(),
        );
        registry.register(
            "tally_mempool_bytes",
            "Bytes of transactions pending in the mempool",
            m.bytes.clone(),
        );
        registry.register(
            "tally_mempool_admitted",
            "Transactions admitted to the mempool",
            m.admitted.clone(),
        );
        registry.register(
            "tally_mempool_rejections",
            "Transactions refused by the mempool, by reason code",
            m.rejections.clone(),
        );
        registry.register(
            "tally_mempool_dropped",
            "Pending transactions dropped after a commit (stale nonce, unpayable) or by TTL",
            m.evicted.clone(),
        );
        registry.register(
            "tally_mempool_reannounced",
            "Pending transactions gossiped again after waiting without being committed",
            m.reannounced.clone(),
        );
        // Pre-create every reason so dashboards see zeros, not gaps.
        for code in super::AddError::codes() {
            let _ = m.rejections.get_or_create(&ReasonLabel {
                reason: code.as_str().to_string(),
            });
        }
        m
    }

    pub fn reject(&self, code: tally_api::ErrorCode) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: code.as_str().to_string(),
            })
            .inc();
    }
}
