//! secp256k1 keys and ECDSA exactly as DESIGN.md section 2 fixes them: SHA-256 digest of
//! `domain || borsh(message)`, RFC 6979 nonces, 64-byte compact `r || s`, low S only.

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};

use crate::hash::{sha256, Hash};
use crate::types::{
    Address, Proposal, PublicKeyBytes, SignatureBytes, SignedProposal, SignedTx, SignedVote, Tx,
    Vote,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("public key is not a compressed secp256k1 point")]
    BadPublicKey,
    #[error("secret key is not a valid secp256k1 scalar")]
    BadSecretKey,
    #[error("signature is not a valid (r, s) pair")]
    MalformedSignature,
    #[error("signature has a high S value (only low-S signatures are accepted)")]
    HighS,
    #[error("signature does not verify")]
    Invalid,
}

/// Address = first 20 bytes of SHA-256(compressed public key).
pub fn address_of(pubkey: &PublicKeyBytes) -> Address {
    let digest = sha256(pubkey);
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest[..20]);
    out
}

/// SHA-256 of `domain || bytes`: the ECDSA message digest.
pub fn signing_digest(signing_bytes: &[u8]) -> Hash {
    sha256(signing_bytes)
}

/// A secp256k1 key pair with its derived public key and address cached.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
    public: PublicKeyBytes,
    address: Address,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Keypair")
            .field("address", &hex::encode(self.address))
            .finish_non_exhaustive()
    }
}

impl Keypair {
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, CryptoError> {
        let signing =
            SigningKey::from_bytes(&(*secret).into()).map_err(|_| CryptoError::BadSecretKey)?;
        let point = signing.verifying_key().to_encoded_point(true);
        let mut public = [0u8; 33];
        public.copy_from_slice(point.as_bytes());
        Ok(Self {
            address: address_of(&public),
            signing,
            public,
        })
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let signing = SigningKey::random(&mut k256::elliptic_curve::rand_core::OsRng);
        let secret: [u8; 32] = signing.to_bytes().into();
        Self::from_secret_bytes(&secret).expect("a randomly generated key is valid")
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    pub fn public_key(&self) -> PublicKeyBytes {
        self.public
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs `signing_bytes` (domain tag already prepended): RFC 6979, low S.
    pub fn sign(&self, signing_bytes: &[u8]) -> SignatureBytes {
        let digest = signing_digest(signing_bytes);
        let sig: Signature = self
            .signing
            .sign_prehash(&digest)
            .expect("signing a 32-byte digest with a valid key cannot fail");
        let sig = sig.normalize_s().unwrap_or(sig);
        sig.to_bytes().into()
    }

    pub fn sign_tx(&self, tx: Tx) -> SignedTx {
        let signature = self.sign(&tx.signing_bytes());
        SignedTx { tx, signature }
    }

    pub fn sign_vote(&self, vote: Vote) -> SignedVote {
        let signature = self.sign(&vote.signing_bytes());
        SignedVote {
            vote,
            validator: self.address,
            signature,
        }
    }

    pub fn sign_proposal(&self, proposal: Proposal) -> SignedProposal {
        let signature = self.sign(&proposal.signing_bytes());
        SignedProposal {
            proposal,
            signature,
        }
    }
}

/// Checks that `pubkey` is a valid compressed point.
pub fn parse_public_key(pubkey: &PublicKeyBytes) -> Result<VerifyingKey, CryptoError> {
    if pubkey[0] != 0x02 && pubkey[0] != 0x03 {
        return Err(CryptoError::BadPublicKey);
    }
    VerifyingKey::from_sec1_bytes(pubkey).map_err(|_| CryptoError::BadPublicKey)
}

/// Verifies a signature over `signing_bytes` (domain tag included). High-S signatures are
/// rejected: accepting both `s` and `n - s` would give every transaction two ids.
pub fn verify(
    pubkey: &PublicKeyBytes,
    signing_bytes: &[u8],
    signature: &SignatureBytes,
) -> Result<(), CryptoError> {
    let key = parse_public_key(pubkey)?;
    verify_with_key(&key, signing_bytes, signature)
}

pub fn verify_with_key(
    key: &VerifyingKey,
    signing_bytes: &[u8],
    signature: &SignatureBytes,
) -> Result<(), CryptoError> {
    let sig = Signature::from_slice(signature).map_err(|_| CryptoError::MalformedSignature)?;
    if sig.normalize_s().is_some() {
        return Err(CryptoError::HighS);
    }
    let digest = signing_digest(signing_bytes);
    key.verify_prehash(&digest, &sig)
        .map_err(|_| CryptoError::Invalid)
}

impl SignedTx {
    pub fn verify_signature(&self) -> Result<(), CryptoError> {
        verify(&self.tx.from, &self.tx.signing_bytes(), &self.signature)
    }
}

impl SignedVote {
    /// Verifies against the validator's key; the caller maps `validator` to `pubkey` and
    /// checks that [`address_of`] of it matches.
    pub fn verify_signature(&self, pubkey: &PublicKeyBytes) -> Result<(), CryptoError> {
        if address_of(pubkey) != self.validator {
            return Err(CryptoError::Invalid);
        }
        verify(pubkey, &self.vote.signing_bytes(), &self.signature)
    }
}

impl SignedProposal {
    pub fn verify_signature(&self, pubkey: &PublicKeyBytes) -> Result<(), CryptoError> {
        verify(pubkey, &self.proposal.signing_bytes(), &self.signature)
    }
}
