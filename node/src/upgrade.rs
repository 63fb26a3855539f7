//! Old binaries stop cleanly (issue 21). The ledger records "protocol N+1 from height A"
//! in the state once enough voting power signals it ([`ledger::upgrade`]); a tallyd whose
//! highest runnable protocol ([`max_protocol`]) is below the protocol of
//! the next height stops before committing or voting on it, with [`UpgradeRequired`]'s
//! message and the exit code [`EXIT_UPGRADE_REQUIRED`]. Started again with the same
//! binary it refuses at once (the check reads the committed state, so it never writes
//! past A - 1); started with a binary that runs the new protocol it continues.

use ledger::genesis::Params;
use ledger::state::StateReader;
use ledger::store::StoreError;
use ledger::upgrade::ProtocolSchedule;

/// The exit code of a tallyd that stopped, or refused to start, because the network runs
/// a protocol it does not support (1 is any other error, 2 a failed `tallyd fsck`).
pub const EXIT_UPGRADE_REQUIRED: i32 = 3;

/// The network activated a protocol this binary cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this network runs protocol {protocol} from height {height}; this tallyd supports up to \
     {max}: upgrade it"
)]
pub struct UpgradeRequired {
    pub protocol: u32,
    /// The activation height: the first height of `protocol`.
    pub height: u64,
    /// The highest protocol this binary runs on this chain.
    pub max: u32,
}

/// The highest protocol this tallyd runs on a chain whose genesis runs
/// `genesis_protocol`: the ledger's ([`ledger::upgrade::max_runnable`]); the node follows
/// a protocol-1 chain through its switch to protocol 2 (the host takes the sets from the
/// store from the activation height on).
pub fn max_protocol(genesis_protocol: u32) -> u32 {
    ledger::upgrade::max_runnable(genesis_protocol)
}

/// The protocol of `height` as the committed state of `store` schedules it.
pub fn protocol_at<R: StateReader + ?Sized>(
    store: &R,
    params: &Params,
    height: u64,
) -> Result<u32, StoreError> {
    Ok(ProtocolSchedule::read(store, params)?.at(height))
}

/// Whether a binary that runs protocols up to `max` may commit the height after `tip`.
pub fn check_next_height<R: StateReader + ?Sized>(
    store: &R,
    params: &Params,
    tip: u64,
    max: u32,
) -> Result<Result<(), UpgradeRequired>, StoreError> {
    let schedule = ProtocolSchedule::read(store, params)?;
    let next = tip.saturating_add(1);
    let protocol = schedule.at(next);
    if protocol <= max {
        return Ok(Ok(()));
    }
    Ok(Err(UpgradeRequired {
        protocol,
        height: schedule.activation_of(protocol).unwrap_or(next),
        max,
    }))
}

/// The exit code for a failed run: [`EXIT_UPGRADE_REQUIRED`] if the cause is an
/// [`UpgradeRequired`], else 1.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.chain().any(|e| e.is::<UpgradeRequired>()) {
        EXIT_UPGRADE_REQUIRED
    } else {
        1
    }
}
