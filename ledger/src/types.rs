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

/// The header version of protocol 1 (`block::assemble`, `block::check_header`); protocol 2's
/// is [`PROTOCOL_2`] (`block::assemble_v2`, `block::check_header_v2`).
pub const HEADER_VERSION: u32 = 1;

/// Protocol 1: transfers only, a validator set fixed in genesis.
pub const PROTOCOL_1: u32 = 1;
/// Protocol 2 (issue 20): bond, unbond and unjail payloads, `next_validators_hash` in the
/// header, evidence in the block, validator sets computed from on-chain stake. The
/// node runs it when genesis chooses it.
pub const PROTOCOL_2: u32 = 2;

/// The highest protocol this tallyd can run. A chain that activates a higher one (see the
/// upgrade machinery) stops this node at the activation height with a message to upgrade it;
/// peers announce theirs in identify.
pub const MAX_PROTOCOL: u32 = PROTOCOL_2;

/// Where a header's `version` keeps the protocol its proposer signals readiness for (issue
/// 21, BIP9-like): `version = protocol | (signalled << 16)`. The low 16 bits are the
/// protocol the block runs ([`Header::protocol`]), the high 16 bits the next protocol its
/// proposer's binary can run, or 0 (no signal). A header that signals nothing has the
/// same `version`, bytes and hash as before signalling existed.
pub const SIGNAL_SHIFT: u32 = 16;
const PROTOCOL_MASK: u32 = (1 << SIGNAL_SHIFT) - 1;

/// The `version` of a header running `protocol` whose proposer signals `signal` (or
/// nothing).
pub fn header_version(protocol: u32, signal: Option<u32>) -> u32 {
    (protocol & PROTOCOL_MASK) | (signal.unwrap_or(0) << SIGNAL_SHIFT)
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Tx {
    pub chain_id: String,
    pub from: PublicKeyBytes,
    pub nonce: u64,
    pub fee: u64,
    pub payload: Payload,
}

/// Variant indices are the wire format: Transfer 0 (protocol 1), the rest protocol 2.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Payload {
    /// 0: move `amount` from the sender to `to`.
    Transfer { to: Address, amount: u64 },
    /// 1 (protocol 2): move `amount` from the sender's balance into its bond to the
    /// consensus key `validator`.
    Bond {
        validator: PublicKeyBytes,
        amount: u64,
    },
    /// 2 (protocol 2): start returning up to `amount` of the sender's bond to `validator`.
    Unbond {
        validator: PublicKeyBytes,
        amount: u64,
    },
    /// 3 (protocol 2): release the jailed `validator` once its jail time is over; sent by
    /// an operator bonded to it.
    Unjail { validator: PublicKeyBytes },
}

impl Payload {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Transfer { .. } => "Transfer",
            Payload::Bond { .. } => "Bond",
            Payload::Unbond { .. } => "Unbond",
            Payload::Unjail { .. } => "Unjail",
        }
    }

    /// The first protocol whose blocks may carry this payload.
    pub fn min_protocol(&self) -> u32 {
        match self {
            Payload::Transfer { .. } => PROTOCOL_1,
            Payload::Bond { .. } | Payload::Unbond { .. } | Payload::Unjail { .. } => PROTOCOL_2,
        }
    }

    /// The amount that leaves the sender's balance besides the fee: the transfer's or the
    /// bond's amount. Unbond and Unjail move nothing out of the balance.
    pub fn debit(&self) -> u64 {
        match self {
            Payload::Transfer { amount, .. } | Payload::Bond { amount, .. } => *amount,
            Payload::Unbond { .. } | Payload::Unjail { .. } => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: SignatureBytes,
}

/// A block header. Encoding (hand-written, keyed on the protocol, [`Header::protocol`]):
/// the protocol-1 fields in declaration order, then, iff the protocol is 2 or later, the
/// 32 bytes of `next_validators_hash`.
/// A version-1 header therefore encodes exactly as before protocol 2 existed.
///
/// `next_validators_hash` must be `Some` iff the protocol is 2 or later; [`Header::is_well_formed`]
/// checks it. Encoding writes what is there, so an ill-formed header's bytes never decode
/// (a v1 header with the hash has trailing bytes, a v2 header without it is truncated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The protocol, and in the high 16 bits the protocol the proposer signals readiness
    /// for ([`SIGNAL_SHIFT`]); read it with [`Header::protocol`] and [`Header::signal`].
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
    /// Protocol 2: SHA-256(borsh(Vec<Validator>)) of the set for height + 1.
    pub next_validators_hash: Option<Hash>,
}

/// A block. Encoding (hand-written, keyed on `header.protocol()`): header, txs,
/// last_commit, then, iff the protocol is 2 or later, `evidence` (u32 count then entries). A version-1 block
/// encodes exactly as before protocol 2 existed. A version-1 block must carry no evidence
/// ([`Block::is_well_formed`]); if it does, its evidence is still written, so its bytes do
/// not decode rather than silently losing the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<SignedTx>,
    pub last_commit: Option<Commit>,
    /// Protocol 2: double-sign evidence committed by this block.
    pub evidence: Vec<Equivocation>,
}

/// Protocol 2: two votes of one validator for the same (height, round, kind) and
/// different block hashes. (The consensus crate's `Equivocation { first, second }` is its
/// in-memory report; this is the wire form committed in blocks.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Equivocation {
    pub a: SignedVote,
    pub b: SignedVote,
}

impl Header {
    /// The protocol this block runs: the low 16 bits of `version`. Every rule that depends
    /// on the protocol reads it here, never `version` itself.
    pub fn protocol(&self) -> u32 {
        self.version & PROTOCOL_MASK
    }

    /// The protocol the proposer signals readiness for (the high 16 bits of `version`),
    /// None when it signals nothing.
    pub fn signal(&self) -> Option<u32> {
        Some(self.version >> SIGNAL_SHIFT).filter(|s| *s != 0)
    }

    /// `next_validators_hash` is present iff the protocol is 2 or later.
    pub fn is_well_formed(&self) -> bool {
        self.next_validators_hash.is_some() == (self.protocol() >= PROTOCOL_2)
    }
}

impl Block {
    /// The header is well formed and a version-1 block carries no evidence.
    pub fn is_well_formed(&self) -> bool {
        self.header.is_well_formed()
            && (self.header.protocol() >= PROTOCOL_2 || self.evidence.is_empty())
    }
}

impl BorshSerialize for Header {
    fn serialize<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        self.version.serialize(w)?;
        self.chain_id.serialize(w)?;
        self.height.serialize(w)?;
        self.round.serialize(w)?;
        self.time_ms.serialize(w)?;
        self.prev_hash.serialize(w)?;
        self.tx_root.serialize(w)?;
        self.state_root.serialize(w)?;
        self.validators_hash.serialize(w)?;
        self.proposer.serialize(w)?;
        self.last_commit_hash.serialize(w)?;
        // No Option tag: presence is implied by the version.
        if let Some(next) = &self.next_validators_hash {
            next.serialize(w)?;
        }
        Ok(())
    }
}

impl BorshDeserialize for Header {
    fn deserialize_reader<R: std::io::Read>(r: &mut R) -> std::io::Result<Self> {
        let version = u32::deserialize_reader(r)?;
        Ok(Header {
            version,
            chain_id: String::deserialize_reader(r)?,
            height: u64::deserialize_reader(r)?,
            round: u32::deserialize_reader(r)?,
            time_ms: u64::deserialize_reader(r)?,
            prev_hash: Hash::deserialize_reader(r)?,
            tx_root: Hash::deserialize_reader(r)?,
            state_root: Hash::deserialize_reader(r)?,
            validators_hash: Hash::deserialize_reader(r)?,
            proposer: Address::deserialize_reader(r)?,
            last_commit_hash: Hash::deserialize_reader(r)?,
            next_validators_hash: if version & PROTOCOL_MASK >= PROTOCOL_2 {
                Some(Hash::deserialize_reader(r)?)
            } else {
                None
            },
        })
    }
}

impl BorshSerialize for Block {
    fn serialize<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        self.header.serialize(w)?;
        self.txs.serialize(w)?;
        self.last_commit.serialize(w)?;
        if self.header.protocol() >= PROTOCOL_2 || !self.evidence.is_empty() {
            self.evidence.serialize(w)?;
        }
        Ok(())
    }
}

impl BorshDeserialize for Block {
    fn deserialize_reader<R: std::io::Read>(r: &mut R) -> std::io::Result<Self> {
        let header = Header::deserialize_reader(r)?;
        let txs = Vec::<SignedTx>::deserialize_reader(r)?;
        let last_commit = Option::<Commit>::deserialize_reader(r)?;
        let evidence = if header.protocol() >= PROTOCOL_2 {
            Vec::<Equivocation>::deserialize_reader(r)?
        } else {
            Vec::new()
        };
        Ok(Block {
            header,
            txs,
            last_commit,
            evidence,
        })
    }
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
    /// Block hash = SHA-256(borsh(Header)) (version 2: including `next_validators_hash`).
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
