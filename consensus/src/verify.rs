//! Signature verification behind a trait, so a simulator can swap real ECDSA for a cheap
//! stand-in and run thousands of seeds. Production uses [`K256Verifier`].

use ledger::types::{PublicKeyBytes, SignedProposal, SignedVote};

pub trait SignatureVerifier {
    /// True when `vote` is signed by the key `pubkey` (whose address is `vote.validator`).
    fn verify_vote(&self, vote: &SignedVote, pubkey: &PublicKeyBytes) -> bool;
    /// True when `proposal` is signed by the key `pubkey`.
    fn verify_proposal(&self, proposal: &SignedProposal, pubkey: &PublicKeyBytes) -> bool;
}

/// secp256k1 ECDSA exactly as `ledger::crypto` defines it (low S, domain-tagged).
#[derive(Clone, Copy, Debug, Default)]
pub struct K256Verifier;

impl SignatureVerifier for K256Verifier {
    fn verify_vote(&self, vote: &SignedVote, pubkey: &PublicKeyBytes) -> bool {
        vote.verify_signature(pubkey).is_ok()
    }

    fn verify_proposal(&self, proposal: &SignedProposal, pubkey: &PublicKeyBytes) -> bool {
        proposal.verify_signature(pubkey).is_ok()
    }
}

/// For a caller that verified every signed message before handing it to the core (the
/// node's router checks each vote and proposal once, on arrival, and scores the sender
/// for a bad one): the core does not verify them a second time. Our own messages are
/// signed by us. Evidence is checked where it is kept, not here.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreVerified;

impl SignatureVerifier for PreVerified {
    fn verify_vote(&self, _: &SignedVote, _: &PublicKeyBytes) -> bool {
        true
    }

    fn verify_proposal(&self, _: &SignedProposal, _: &PublicKeyBytes) -> bool {
        true
    }
}
