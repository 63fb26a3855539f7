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
