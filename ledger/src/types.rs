//! The normative types of DESIGN.md section 2. Field order is the wire format: borsh
//! encodes fields in declaration order, so never reorder them.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::hash::{sha256, Hash};

/// First 20 bytes of SHA-256 of the compressed public key.
pub type Address = [u8; 20];
/// SEC1 compressed secp256k1 point.
pub type PublicKeyBytes = [u8; 33];
/// Compact `r || s`, big-endian, low S.
pub type SignatureBytes = [u8; 64];

/// Domain tags: a signature made for one kind of message never verifies as another.
pub const TX_DOMAIN: &[u8] = b"TALLY-TX-V1";
pub const VOTE_DOMAIN: &[u8] = b"TALLY-VOTE-V1";
pub const PROPOSAL_DOMAIN: &[u8] = b"TALLY-PROPOSAL-V1";

/// The header version this code produces and accepts.
pub const HEADER_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Tx {
    pub chain_id: String,
    pub from: PublicKeyBytes,
    pub nonce: u64,
    pub fee: u64,
    pub payload: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Payload {
    Transfer { to: Address, amount: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: SignatureBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Header {
    pub version: u32,
    pub chain_id: String,
    pub height: u64,
    pub round: u32,
    pub time_ms: u64,
    pub prev_hash: Hash,
    pub tx_root: Hash,
    pub state_root: Hash,
    pub validators_hash: Hash,
    pub proposer: Address,
    pub last_commit_hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<SignedTx>,
    pub last_commit: Option<Commit>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Validator {
    pub address: Address,
    pub pubkey: PublicKeyBytes,
    pub power: u64,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, BorshSerialize, BorshDeserialize,
)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Vote {
    pub chain_id: String,
    pub height: u64,
    pub round: u32,
    pub kind: VoteKind,
    /// `None` is a vote for nil.
    pub block_hash: Option<Hash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SignedVote {
    pub vote: Vote,
    pub validator: Address,
    pub signature: SignatureBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Proposal {
    pub chain_id: String,
    pub height: u64,
    pub round: u32,
    pub pol_round: Option<u32>,
    pub block_hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SignedProposal {
    pub proposal: Proposal,
    pub signature: SignatureBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Commit {
    pub height: u64,
    pub round: u32,
    pub block_hash: Hash,
    /// Sorted by validator address, no duplicates.
    pub signatures: Vec<CommitSig>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CommitSig {
    pub validator: Address,
    pub signature: SignatureBytes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Account {
    pub balance: u64,
    pub nonce: u64,
}

fn borsh_hash<T: BorshSerialize>(value: &T) -> Hash {
    sha256(&borsh::to_vec(value).expect("borsh encoding into a Vec cannot fail"))
}

impl Tx {
    /// The exact bytes the signature covers: domain tag then borsh(tx).
    pub fn signing_bytes(&self) -> Vec<u8> {
        domain_bytes(TX_DOMAIN, self)
    }
}

impl SignedTx {
    /// Transaction id = SHA-256(borsh(SignedTx)).
    pub fn id(&self) -> Hash {
        borsh_hash(self)
    }

    pub fn sender(&self) -> Address {
        crate::crypto::address_of(&self.tx.from)
    }
}

impl Header {
    /// Block hash = SHA-256(borsh(Header)).
    pub fn hash(&self) -> Hash {
        borsh_hash(self)
    }
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }
}

impl Vote {
    pub fn signing_bytes(&self) -> Vec<u8> {
        domain_bytes(VOTE_DOMAIN, self)
    }
}

impl Proposal {
    pub fn signing_bytes(&self) -> Vec<u8> {
        domain_bytes(PROPOSAL_DOMAIN, self)
    }
}

impl Commit {
    /// SHA-256(borsh(commit)); the next header's `last_commit_hash`.
    pub fn hash(&self) -> Hash {
        borsh_hash(self)
    }
}

/// `validators_hash` = SHA-256(borsh(Vec<Validator>)).
pub fn validators_hash(validators: &[Validator]) -> Hash {
    // borsh of a slice equals borsh of the Vec: u32 length then items.
    borsh_hash(&validators)
}

fn domain_bytes<T: BorshSerialize>(domain: &[u8], value: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    value
        .serialize(&mut out)
        .expect("borsh encoding into a Vec cannot fail");
    out
}
