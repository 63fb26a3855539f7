//! The three actors between the network and the store, and how they are wired: the
//! consensus driver ([`crate::driver`]), the chain host ([`crate::chain`]) and sync
//! ([`crate::sync`]). Each is one task with a bounded inbox; all run under the node's
//! supervisor (one `JoinSet`) and stop on its one cancellation token. See node/README.md,
//! "Architecture", for where a tx, a vote and a block go.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::store::{ChainWriter, ConsensusStore};
use tally_p2p::NetworkHandle;
use tokio::sync::{broadcast, mpsc, watch};

use crate::chain::{ChainHost, HostMsg, HostParts};
use crate::driver::{Driver, DriverMsg, DriverParts, Outbox};
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::Mempool;
use crate::metrics::ChainMetrics;
use crate::status::{NodeEvent, NodeStatus, NodeView};
use crate::sync::{SyncActor, SyncMsg, SyncParts};

/// Sync's inbox, at most (peer heights are dropped, not waited for, when it is full).
const SYNC_INBOX: usize = 1024;

/// What the actors need of a store: the chain (blocks, state, commits) and the consensus
/// side table (the signing guard, evidence). RocksDB in the node, MemStore in tests.
pub trait NodeStore: ChainWriter + ConsensusStore + 'static {}
impl<T: ChainWriter + ConsensusStore + 'static> NodeStore for T {}

/// What the actors are built from.
pub struct ActorParts<S> {
    pub genesis: Arc<Genesis>,
    pub store: Arc<S>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub metrics: ChainMetrics,
    pub net: NetworkHandle,
    pub key: Option<Keypair>,
    pub timeout_commit: Duration,
    /// `consensus.skip_timeout_commit_when_busy`.
    pub skip_timeout_commit_when_busy: bool,
    pub events: broadcast::Sender<NodeEvent>,
    /// `[mempool] reuse_verified_signatures`.
    pub reuse_mempool_signatures: bool,
    /// Our proposals also travel compact (`consensus.compact_proposals`).
    pub compact_proposals: bool,
}

/// The actors, built and connected but not yet running, with their inboxes.
pub struct Actors<S: NodeStore> {
    pub driver: Driver<S>,
    pub host: ChainHost<S>,
    pub sync: SyncActor,
    pub driver_rx: mpsc::Receiver<DriverMsg>,
    /// The host's answers to the driver (see [`crate::driver::Driver::run`]).
    pub answers_rx: mpsc::Receiver<DriverMsg>,
    pub host_rx: mpsc::Receiver<HostMsg>,
    pub sync_rx: mpsc::Receiver<SyncMsg>,
    /// Our own consensus messages, in signing order, for [`crate::driver::publish_in_order`].
    pub outbox_rx: mpsc::Receiver<crate::driver::Outgoing>,
    pub handles: Handles,
}

/// How the rest of the node talks to the actors.
#[derive(Clone)]
pub struct Handles {
    /// Verified consensus messages (the router).
    pub driver: mpsc::Sender<DriverMsg>,
    /// Peer heights and departures (the router).
    pub sync: mpsc::Sender<SyncMsg>,
    /// Status and evidence (the RPC, the router).
    pub view: NodeView,
    /// The validator sets of the next heights, as the host publishes them (the router).
    pub sets: crate::sets::SetsRx,
}

impl<S: NodeStore> Actors<S> {
    pub fn build(parts: ActorParts<S>) -> anyhow::Result<Self> {
        let (driver_tx, driver_rx) = mpsc::channel(crate::driver::INBOX);
        // The host's answers have a channel of their own, which the driver reads first, and
        // room for four inboxes of them (one answer per request at most): the host never
        // waits on the driver (it could deadlock with a driver waiting on the host), and a
        // `Committed` that still found it full is made up by the driver's tick, which
        // compares its height with the host's tip.
        let (answers_tx, answers_rx) = mpsc::channel(4 * crate::chain::INBOX);
        let (host_tx, host_rx) = mpsc::channel(crate::chain::INBOX);
        let (sync_tx, sync_rx) = mpsc::channel(SYNC_INBOX);
        let (outbox, outbox_rx) = Outbox::new(parts.compact_proposals);
        let (status, status_rx) = watch::channel(NodeStatus::default());
        let status = Arc::new(status);
        let evidence = Arc::new(RwLock::new(Vec::new()));
        // Protocol 1's one set; a protocol-2 host replaces it before anyone reads it.
        let (sets, sets_rx) = watch::channel(Arc::new(crate::sets::KnownSets::Fixed(
            parts.genesis.validators.clone(),
        )));
        let host = ChainHost::new(
            HostParts {
                genesis: parts.genesis.clone(),
                store: parts.store.clone(),
                mempool: parts.mempool,
                mempool_metrics: parts.mempool_metrics,
                metrics: parts.metrics.clone(),
                events: parts.events,
                status: status.clone(),
                evidence: evidence.clone(),
                outbox: outbox.clone(),
                reuse_mempool_signatures: parts.reuse_mempool_signatures,
                proposer: parts.key.as_ref().map(Keypair::address),
                sets,
            },
            answers_tx,
            sync_tx.clone(),
        )?;
        let driver = Driver::new(
            DriverParts {
                genesis: parts.genesis.clone(),
                store: parts.store,
                key: parts.key,
                metrics: parts.metrics.clone(),
                status: status.clone(),
                outbox,
                timeout_commit: parts.timeout_commit,
                skip_timeout_commit_when_busy: parts.skip_timeout_commit_when_busy,
                committed: host.tip().height,
                sets: sets_rx.clone(),
            },
            host_tx.clone(),
            sync_tx.clone(),
        )?;
        let sync = SyncActor::new(
            SyncParts {
                genesis: parts.genesis,
                sets: sets_rx.clone(),
                net: parts.net,
                metrics: parts.metrics,
                status,
            },
            host_tx,
        );
        Ok(Actors {
            driver,
            host,
            sync,
            driver_rx,
            answers_rx,
            host_rx,
            sync_rx,
            outbox_rx,
            handles: Handles {
                driver: driver_tx,
                sync: sync_tx,
                view: NodeView {
                    status: status_rx,
                    evidence,
                },
                sets: sets_rx,
            },
        })
    }

    /// Starts the actors and the publisher under `tasks`, stopped by `shutdown`.
    pub fn spawn(
        self,
        net: NetworkHandle,
        tasks: &mut crate::node::Supervisor,
        shutdown: &tally_p2p::CancellationToken,
    ) -> Handles {
        let Actors {
            driver,
            host,
            sync,
            driver_rx,
            answers_rx,
            host_rx,
            sync_rx,
            outbox_rx,
            handles,
        } = self;
        tasks.spawn(
            "consensus driver",
            driver.run(driver_rx, answers_rx, shutdown.clone()),
        );
        tasks.spawn("chain host", host.run(host_rx, shutdown.clone()));
        tasks.spawn("sync", sync.run(sync_rx, shutdown.clone()));
        // Ends once the driver and the host dropped their outboxes (what they signed last
        // still goes out).
        tasks.spawn("publisher", crate::driver::publish_in_order(net, outbox_rx));
        handles
    }
}
