//! Transaction validity (DESIGN.md section 2). Every rejection is a typed reason with a
//! stable string code: the RPC returns it, metrics label by it, wallets match on it.

use crate::crypto::CryptoError;
use crate::genesis::Params;
use crate::types::{Account, Payload, SignedTx};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transaction does not decode: {0}")]
    Malformed(String),
    #[error("transaction is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("transaction is for chain \"{got}\", this is \"{expected}\"")]
    WrongChain { expected: String, got: String },
    #[error("signature has a high S value; sign with a low-S (normalised) signature")]
    HighS,
    #[error("signature does not verify for the sender's public key")]
    BadSignature,
    #[error("nonce {got} was already used; the account's next nonce is {expected}")]
    NonceTooLow { expected: u64, got: u64 },
    #[error("nonce {got} is ahead of the account's next nonce {expected}")]
    NonceTooHigh { expected: u64, got: u64 },
    #[error("fee {got} is below the minimum fee {min}")]
    FeeTooLow { min: u64, got: u64 },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("balance {balance} is less than amount + fee = {needed}")]
    InsufficientFunds { balance: u64, needed: u128 },
    #[error("amount + fee or a resulting balance overflows u64")]
    Overflow,
    #[error("{}", unsupported_payload_message(.payload, *.needs, *.runs))]
    UnsupportedPayload {
        payload: &'static str,
        needs: u32,
        runs: u32,
    },
    #[error("validator {0} is not a compressed secp256k1 key (33 bytes starting 02 or 03)")]
    BadValidatorKey(String),
    #[error("the sender has no bond to validator {0}; nothing to unbond")]
    NoBond(String),
    #[error("the sender has no bond to validator {0}; only its operators may unjail it")]
    NotOperator(String),
    #[error("validator {0} is not jailed")]
    NotJailed(String),
    #[error("validator {validator} is jailed until height {until}; this block is {height}")]
    StillJailed {
        validator: String,
        until: u64,
        height: u64,
    },
}

impl TxError {
    /// Stable machine-readable code (RPC `error.code`, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            TxError::Malformed(_) => "malformed",
            TxError::TooLarge { .. } => "too_large",
            TxError::WrongChain { .. } => "wrong_chain",
            TxError::HighS => "high_s_signature",
            TxError::BadSignature => "bad_signature",
            TxError::NonceTooLow { .. } => "nonce_too_low",
            TxError::NonceTooHigh { .. } => "nonce_too_high",
            TxError::FeeTooLow { .. } => "fee_too_low",
            TxError::ZeroAmount => "zero_amount",
            TxError::InsufficientFunds { .. } => "insufficient_funds",
            TxError::Overflow => "overflow",
            TxError::UnsupportedPayload { .. } => "unsupported_payload",
            TxError::BadValidatorKey(_) => "bad_validator_key",
            TxError::NoBond(_) => "no_bond",
            TxError::NotOperator(_) => "not_operator",
            TxError::NotJailed(_) => "not_jailed",
            TxError::StillJailed { .. } => "still_jailed",
        }
    }

    /// All codes, for pre-registering metric label values and documentation.
    pub const CODES: &'static [&'static str] = &[
        "malformed",
        "too_large",
        "wrong_chain",
        "high_s_signature",
        "bad_signature",
        "nonce_too_low",
        "nonce_too_high",
        "fee_too_low",
        "zero_amount",
        "insufficient_funds",
        "overflow",
        "unsupported_payload",
        "bad_validator_key",
        "no_bond",
        "not_operator",
        "not_jailed",
        "still_jailed",
    ];

    /// A peer that relays a tx with this fault sent us something it could have checked
    /// itself (undecodable, wrong chain, forged signature). State-dependent faults
    /// (nonce, funds) are not the relayer's fault: state differs between nodes.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            TxError::Malformed(_)
                | TxError::TooLarge { .. }
                | TxError::WrongChain { .. }
                | TxError::HighS
                | TxError::BadSignature
                | TxError::ZeroAmount
                | TxError::UnsupportedPayload { .. }
                | TxError::BadValidatorKey(_)
        )
    }
}

fn unsupported_payload_message(payload: &str, needs: u32, runs: u32) -> String {
    format!("payload {payload} needs protocol {needs}; this chain runs protocol {runs}")
}

impl From<CryptoError> for TxError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::HighS => TxError::HighS,
            _ => TxError::BadSignature,
        }
    }
}

/// Checks that need no state: size, chain, fee floor, amount, and (unless the caller
/// already verified it) the signature. `encoded_len` is the borsh length of the SignedTx.
pub fn check_stateless(
    stx: &SignedTx,
    encoded_len: usize,
    chain_id: &str,
    params: &Params,
) -> Result<(), TxError> {
    check_static(stx, encoded_len, chain_id, params)?;
    stx.verify_signature()?;
    Ok(())
}

/// The cheap part of [`check_stateless`]: everything but the signature. Run it first so
/// an obviously bad transaction costs no elliptic-curve work.
///
/// Protocol 1 executes transfers only: a protocol-2 payload (Bond, Unbond, Unjail) is
/// refused with [`TxError::UnsupportedPayload`]. On protocol 2, a Bond or Unbond of 0 is
/// [`TxError::ZeroAmount`] and a Bond to a key that is not a curve point is
/// [`TxError::BadValidatorKey`] (it could never sign, so the stake would be stuck).
pub fn check_static(
    stx: &SignedTx,
    encoded_len: usize,
    chain_id: &str,
    params: &Params,
) -> Result<(), TxError> {
    check_static_at(stx, encoded_len, chain_id, params, params.protocol_version)
}

/// [`check_static`] at `protocol`, the protocol of the block the tx goes into (a chain's
/// protocol changes when an upgrade activates, [`crate::upgrade`]).
pub fn check_static_at(
    stx: &SignedTx,
    encoded_len: usize,
    chain_id: &str,
    params: &Params,
    protocol: u32,
) -> Result<(), TxError> {
    let max = params.max_tx_bytes as usize;
    if encoded_len > max {
        return Err(TxError::TooLarge {
            size: encoded_len,
            max,
        });
    }
    if stx.tx.chain_id != chain_id {
        return Err(TxError::WrongChain {
            expected: chain_id.to_string(),
            got: stx.tx.chain_id.clone(),
        });
    }
    if stx.tx.fee < params.min_fee {
        return Err(TxError::FeeTooLow {
            min: params.min_fee,
            got: stx.tx.fee,
        });
    }
    if stx.tx.payload.min_protocol() > protocol {
        return Err(TxError::UnsupportedPayload {
            payload: stx.tx.payload.kind(),
            needs: stx.tx.payload.min_protocol(),
            runs: protocol,
        });
    }
    match &stx.tx.payload {
        Payload::Transfer { amount, .. } | Payload::Unbond { amount, .. } if *amount == 0 => {
            Err(TxError::ZeroAmount)
        }
        Payload::Bond { validator, amount } => {
            if *amount == 0 {
                return Err(TxError::ZeroAmount);
            }
            crate::crypto::parse_public_key(validator)
                .map_err(|_| TxError::BadValidatorKey(hex::encode(validator)))?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks against the sender's account: exact nonce, funds for amount + fee (the amount
/// is [`Payload::debit`]). Returns the total debit.
pub fn check_against_account(stx: &SignedTx, sender: &Account) -> Result<u64, TxError> {
    let tx = &stx.tx;
    if tx.nonce < sender.nonce {
        return Err(TxError::NonceTooLow {
            expected: sender.nonce,
            got: tx.nonce,
        });
    }
    if tx.nonce > sender.nonce {
        return Err(TxError::NonceTooHigh {
            expected: sender.nonce,
            got: tx.nonce,
        });
    }
    let amount = tx.payload.debit();
    let debit = amount.checked_add(tx.fee);
    let needed = u128::from(amount) + u128::from(tx.fee);
    if u128::from(sender.balance) < needed {
        return Err(TxError::InsufficientFunds {
            balance: sender.balance,
            needed,
        });
    }
    // Funds suffice, so amount + fee <= balance <= u64::MAX: no overflow here.
    debit.ok_or(TxError::Overflow)
}
