//! Request and response bodies of the routes, in the order of the RPC reference. Hashes,
//! addresses, keys and signatures are lowercase hex strings. Fields a client can do
//! without are `#[serde(default)]`, and unknown fields are ignored, so that a client
//! reads the answers of older and newer nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;

/// Most txs in one `POST /v1/txs/batch`.
pub const MAX_SUBMIT_BATCH: usize = 1024;

/// `POST /v1/txs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitTx {
    /// Hex of borsh(SignedTx).
    pub tx: String,
}

/// `202` to `POST /v1/txs`: the id the node computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub tx_id: String,
}

/// `POST /v1/txs/batch` in its JSON form (the other is raw borsh `Vec<SignedTx>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitBatch {
    /// Hex of borsh(SignedTx) each.
    pub txs: Vec<String>,
}

/// `200` to `POST /v1/txs/batch`: one result per tx, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub accepted: usize,
    pub refused: usize,
    pub results: Vec<BatchResult>,
}

/// One tx of a batch: accepted (`error` absent) or refused with the codes of `POST /v1/txs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// Null for a tx that is not hex (it has no bytes to hash).
    pub tx_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// Where a tx is, as far as the node knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    Pending,
    Committed,
    /// Not seen by this node (also any state a newer node adds).
    #[serde(other)]
    Unknown,
}

impl TxState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Pending => "pending",
            TxState::Committed => "committed",
            TxState::Unknown => "unknown",
        }
    }
}

/// `GET /v1/txs/{id}`; `height`, `index` and `block_hash` only when committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxStatus {
    pub tx_id: String,
    pub status: TxState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
}

/// The query of `GET /v1/accounts/{address}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    pub proof: bool,
}

/// `GET /v1/accounts/{address}[?proof=true]`: the account at `height` (all zero if it
/// does not exist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub address: String,
    pub balance: u64,
    pub nonce: u64,
    /// Next nonce to use (committed nonce + this sender's pending txs). Older nodes leave
    /// it out: then it reads 0 and [`Account::next_nonce`] falls back to `nonce`.
    #[serde(default)]
    pub pending_nonce: u64,
    pub height: u64,
    #[serde(default)]
    pub state_root: String,
    /// With `?proof=true`: hex of the account's proof against `state_root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// With `?proof=true`: whether the proof is of presence (else of absence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl Account {
    pub fn next_nonce(&self) -> u64 {
        self.pending_nonce.max(self.nonce)
    }
}

/// `GET /v1/blocks/latest`, `GET /v1/blocks/{height}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub height: u64,
    pub hash: String,
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub tx_ids: Vec<String>,
    /// The commit that finalised this block; null until the next block is built on it.
    #[serde(default)]
    pub commit: Option<Commit>,
    /// The commit of the previous block that this block carries.
    #[serde(default)]
    pub last_commit: Option<Commit>,
    /// Hex of borsh(Block): the authoritative bytes (what `tally balance --verify` checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
}

/// A block header's fields (the hash is over borsh(Header), see `block`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    pub version: u32,
    pub chain_id: String,
    pub height: u64,
    pub round: u32,
    pub time_ms: u64,
    pub prev_hash: String,
    pub tx_root: String,
    pub state_root: String,
    pub validators_hash: String,
    pub proposer: String,
    pub last_commit_hash: String,
    /// Protocol 2 (header version 2): the hash of the next height's set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_validators_hash: Option<String>,
}

/// > 2/3 of the power's precommits for a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub height: u64,
    pub round: u32,
    pub block_hash: String,
    pub signatures: Vec<CommitSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignature {
    pub validator: String,
    pub signature: String,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub chain_id: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub moniker: String,
    pub height: u64,
    #[serde(default)]
    pub tip_hash: String,
    #[serde(default)]
    pub state_root: String,
    #[serde(default)]
    pub round: u32,
    #[serde(default)]
    pub catching_up: bool,
    /// The height a catching-up node syncs toward.
    #[serde(default)]
    pub sync_target: u64,
    /// Whether this node's consensus key is in the set of the next height (protocol 1:
    /// the genesis set).
    #[serde(default)]
    pub validator: bool,
    #[serde(default)]
    pub validator_address: Option<String>,
    /// Connected peers.
    #[serde(default)]
    pub peers: u64,
    #[serde(default)]
    pub mempool: MempoolSize,
    pub min_fee: u64,
    #[serde(default)]
    pub seconds_since_last_block: Option<f64>,
    /// The last failure of this node's own store, or null.
    #[serde(default)]
    pub storage_error: Option<String>,
    /// Set when the node's consensus stopped (its store refused a block): why.
    #[serde(default)]
    pub halted: Option<String>,
    /// The protocol of the committed tip (issue 21; 1 or 2).
    #[serde(default = "protocol_1")]
    pub protocol: u32,
    /// The next protocol: its activation height once the chain recorded it, else the
    /// readiness counted over the signal window; null when no later protocol exists.
    #[serde(default)]
    pub upgrade: Option<Upgrade>,
    /// This node's software version (`0.1.0`); null from releases before it was shown.
    #[serde(default)]
    pub version: Option<String>,
    /// The highest chain protocol this node's binary runs (what it announces to peers).
    #[serde(default)]
    pub max_protocol: Option<u32>,
}

fn protocol_1() -> u32 {
    1
}

/// `/v1/status`'s `upgrade`: `{"next": 2, "activation_height": A}` once recorded, or
/// `{"next": 2, "readiness": 0.75, "window": W}` while signals are counted (`readiness`
/// is the share of the voting power whose last block in the last W signals `next`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upgrade {
    pub next: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MempoolSize {
    #[serde(default)]
    pub txs: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub peer_id: String,
    pub connected: bool,
    /// Remote addresses of the established connections (multiaddrs).
    pub addresses: Vec<String>,
    /// The application score bans are based on (0 = neutral, decays toward 0).
    pub score: f64,
    pub score_components: ScoreComponents,
    /// Penalties received, by reason, with counts.
    pub reasons: BTreeMap<String, u64>,
    pub banned: bool,
    pub ban_remaining_secs: Option<f64>,
    /// The software the peer announces (identify's agent, e.g. `tally/0.1.0 protocols
    /// 1-2`), printable ASCII, at most 64 characters; null until identify has run.
    pub agent: Option<String>,
    /// The software version read from `agent` (`0.1.0`); null for an agent of another form.
    #[serde(default)]
    pub version: Option<String>,
    /// The highest chain protocol the peer's binary runs, from `agent`; null when not
    /// announced (releases before protocol announcements say `tally/<version>` only).
    #[serde(default)]
    pub max_protocol: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreComponents {
    pub application: f64,
    /// Null if gossipsub does not track the peer.
    pub gossipsub: Option<f64>,
}

/// The query of `GET /v1/validators`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorsQuery {
    /// The height whose set is asked for; absent: the next height (the tip's + 1).
    #[serde(default)]
    pub height: Option<u64>,
}

/// `GET /v1/validators[?height=H]`: the validator set of `height` (protocol 1: always the
/// genesis set; protocol 2: the set the chain computed for that height).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The height this set runs (older nodes leave it out: 0).
    #[serde(default)]
    pub height: u64,
    /// The chain's `params.protocol_version` (older nodes leave it out: 0).
    #[serde(default)]
    pub protocol_version: u32,
    pub total_power: u64,
    pub validators_hash: String,
    /// Sorted as the set is hashed (protocol 2: by address).
    pub validators: Vec<Validator>,
    /// The proposer's address of rounds 0, 1, ... at `height`, one round per validator.
    #[serde(default)]
    pub proposers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    /// The genesis name, or empty for a validator that bonded in later.
    #[serde(default)]
    pub name: String,
    pub address: String,
    pub pubkey: String,
    pub power: u64,
}

/// `GET /v1/validators/{pubkey}`: one consensus key's standing, read at `height` (the
/// tip). Protocol 1 has no stake: `stake` and `consecutive_missed` are null there and
/// only genesis validators are known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorInfo {
    pub pubkey: String,
    pub address: String,
    #[serde(default)]
    pub name: String,
    /// The tip the record was read at.
    pub height: u64,
    /// Sum of the bonds to this key (null on protocol 1).
    #[serde(default)]
    pub stake: Option<u64>,
    /// 0: not jailed; otherwise out of the set until an operator's Unjail in a block at
    /// this height or later.
    pub jailed_until_height: u64,
    /// Blocks in a row whose commit lacked this validator (null on protocol 1).
    #[serde(default)]
    pub consecutive_missed: Option<u64>,
    /// Whether the key is in the set of the next height (`height` + 1).
    pub in_set: bool,
    /// Its power in that set (0 when out).
    pub power: u64,
}

/// `GET /v1/staking/{address}`: an operator's bonds and the stake on its way back, read
/// at `height` (the tip). Empty on protocol 1, which has no bonds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staking {
    pub address: String,
    pub height: u64,
    /// Sorted by validator key.
    pub bonds: Vec<Bond>,
    /// Sorted by release height.
    pub unbonding: Vec<Unbonding>,
    pub total_bonded: u64,
    pub total_unbonding: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bond {
    /// The consensus key bonded to (hex, 33 bytes).
    pub validator: String,
    pub amount: u64,
}

/// Stake paid back to the operator's balance at the end of `release_height`; evidence
/// against `validator` still slashes it until then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unbonding {
    pub release_height: u64,
    pub amount: u64,
    pub validator: String,
}

/// `GET /v1/evidence`: double votes this node has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceList {
    pub evidence: Vec<Evidence>,
}

/// Two conflicting votes of one validator for the same (height, round, kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub validator: String,
    pub height: u64,
    pub round: u32,
    pub first: EvidenceVote,
    pub second: EvidenceVote,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceVote {
    pub height: u64,
    pub round: u32,
    /// `prevote` or `precommit`.
    pub kind: String,
    /// Null for a nil vote.
    pub block_hash: Option<String>,
    pub signature: String,
}
