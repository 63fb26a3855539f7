//! The error body every failing route answers, `{"error": {"code": "...", "message": "..."}}`,
//! and the one list of its codes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares [`ErrorCode`] once: each variant with its wire string, its HTTP status and its
/// doc line, so the three cannot drift apart.
macro_rules! error_codes {
    ($( #[doc = $doc:literal] $variant:ident = $code:literal, $status:literal; )*) => {
        /// A stable error code of the API. On the wire it is a snake_case string; each code
        /// is always answered with the same HTTP status ([`ErrorCode::status`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of the RPC reference's table.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $code, )*
                }
            }

            /// The HTTP status every answer with this code has.
            pub const fn status(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $status, )*
                }
            }

            /// What the code means (its doc line; the RPC reference says the same).
            pub const fn doc(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $doc.trim_ascii(), )*
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownCode;

            fn from_str(s: &str) -> Result<Self, UnknownCode> {
                match s {
                    $( $code => Ok(ErrorCode::$variant), )*
                    _ => Err(UnknownCode(s.to_string())),
                }
            }
        }
    };
}

error_codes! {
    // A transaction the ledger's checks refuse (`ledger::check::TxError`).
    /// The tx is not hex or not a decodable borsh `SignedTx` (also a batch body that is not borsh).
    Malformed = "malformed", 400;
    /// The tx is larger than the chain's `max_tx_bytes`.
    TooLarge = "too_large", 413;
    /// The tx is signed for another chain id.
    WrongChain = "wrong_chain", 400;
    /// The signature's s is in the upper half of the curve order (malleable); sign with low s.
    HighSSignature = "high_s_signature", 400;
    /// The signature does not verify against the sender's key.
    BadSignature = "bad_signature", 400;
    /// The nonce was already used by a committed tx of the sender.
    NonceTooLow = "nonce_too_low", 409;
    /// The nonce is ahead of the sender's next one (a block's check; the mempool says `nonce_gap`).
    NonceTooHigh = "nonce_too_high", 422;
    /// The fee is below the chain's `min_fee`.
    FeeTooLow = "fee_too_low", 422;
    /// A transfer of 0.
    ZeroAmount = "zero_amount", 400;
    /// The sender cannot pay amount + fee (after its pending txs).
    InsufficientFunds = "insufficient_funds", 422;
    /// Amount + fee, or the receiver's balance, would overflow.
    Overflow = "overflow", 422;
    /// A protocol-2 payload (Bond, Unbond, Unjail) on a chain that runs protocol 1.
    UnsupportedPayload = "unsupported_payload", 400;
    /// A Bond to a validator key that is not a compressed secp256k1 point.
    BadValidatorKey = "bad_validator_key", 400;
    /// An Unbond from a validator the sender has no bond to.
    NoBond = "no_bond", 422;
    /// An Unjail by a sender that has no bond to the validator (only its operators may).
    NotOperator = "not_operator", 422;
    /// An Unjail of a validator that is not jailed.
    NotJailed = "not_jailed", 422;
    /// An Unjail before the validator's jail time is over.
    StillJailed = "still_jailed", 422;
    // A transaction the mempool refuses.
    /// The same tx is already pending.
    Duplicate = "duplicate", 409;
    /// The same tx is already in a block.
    AlreadyCommitted = "already_committed", 409;
    /// The nonce is too far past the sender's next one, after its pending txs.
    NonceGap = "nonce_gap", 422;
    /// A pending tx has the same nonce and at least this fee; raise the fee to replace it.
    ReplacementUnderpriced = "replacement_underpriced", 409;
    /// The sender has as many pending txs as one sender may.
    SenderLimit = "sender_limit", 429;
    /// The pool is full and the fee does not beat its cheapest tx.
    MempoolFull = "mempool_full", 503;
    /// This node's own store failed (not the client's fault); retry or use another node.
    StorageError = "storage_error", 503;
    /// A bug or broken state of this node (e.g. a lock poisoned by a panic); see its log.
    Internal = "internal", 500;
    // The node's own answers.
    /// Consensus stopped (this node's store refused a block): the node takes no txs.
    Halted = "halted", 503;
    /// The chain moved while an account and its proof were read; retry.
    Busy = "busy", 503;
    /// The request is malformed (not the documented JSON shape, a bad query string).
    BadRequest = "bad_request", 400;
    /// The request body is larger than the route's limit.
    PayloadTooLarge = "payload_too_large", 413;
    /// A batch holds no tx or more than 1,024.
    BadBatchSize = "bad_batch_size", 400;
    /// A tx id that is not 64 hex characters.
    BadTxId = "bad_tx_id", 400;
    /// An address that is not 40 hex characters.
    BadAddress = "bad_address", 400;
    /// A validator key that is not 66 hex characters (a 33-byte compressed secp256k1 key).
    BadKey = "bad_key", 400;
    /// A block height that is not an integer, or one a route does not take (0).
    BadHeight = "bad_height", 400;
    /// No such route, block or validator, or a validator set not known yet.
    NotFound = "not_found", 404;
    /// The route does not take this method (its `Allow` header lists those it does).
    MethodNotAllowed = "method_not_allowed", 405;
    /// The request did not complete within `rpc.timeout_ms`; retry.
    Timeout = "timeout", 408;
    /// The body is not sent as `Content-Type: application/json`.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// The body is JSON of the wrong shape.
    Unprocessable = "unprocessable", 422;
    /// As many event streams are open as the node allows; retry later.
    TooManyStreams = "too_many_streams", 429;
    /// Too many requests (a 429 the node's middleware answers without a code of its own).
    TooManyRequests = "too_many_requests", 429;
    /// The server has as many connections open as `max_connections(_per_ip)` allows.
    TooManyConnections = "too_many_connections", 503;
    /// Unavailable (a 503 the node's middleware answers without a code of its own).
    Unavailable = "unavailable", 503;
}

impl ErrorCode {
    /// Whether the code refuses a transaction itself (the wallet's exit code 4), rather
    /// than the request or the node's state.
    pub const fn is_tx_rejection(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            Malformed
                | TooLarge
                | WrongChain
                | HighSSignature
                | BadSignature
                | NonceTooLow
                | NonceTooHigh
                | FeeTooLow
                | ZeroAmount
                | InsufficientFunds
                | Overflow
                | UnsupportedPayload
                | BadValidatorKey
                | NoBond
                | NotOperator
                | NotJailed
                | StillJailed
                | Duplicate
                | AlreadyCommitted
                | NonceGap
                | ReplacementUnderpriced
                | SenderLimit
                | MempoolFull
        )
    }

    /// The code an answer with this HTTP status gets when nothing gave it a code of its
    /// own (axum's rejections, tower-http's timeout): the code whose status it is, among
    /// the generic ones; `None` for a status no code has.
    pub fn for_status(status: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            BadRequest,
            NotFound,
            MethodNotAllowed,
            Timeout,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            TooManyRequests,
            Internal,
            Unavailable,
        ]
        .into_iter()
        .find(|c| c.status() == status)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A code string that is not an [`ErrorCode`] of this build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCode(pub String);

impl fmt::Display for UnknownCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown error code \"{}\"", self.0)
    }
}

impl std::error::Error for UnknownCode {}

/// The `code` of an error as a client reads it: one of this build's codes, or one a newer
/// node added. A node only sends [`ErrorCode`]s; an unknown one has no status this build
/// could know, which is why it is not an `ErrorCode` variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Known(ErrorCode),
    Unknown(String),
}

impl Code {
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            Code::Known(c) => Some(*c),
            Code::Unknown(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(c) => c.as_str(),
            Code::Unknown(s) => s,
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(c: ErrorCode) -> Self {
        Code::Known(c)
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.parse() {
            Ok(c) => Code::Known(c),
            Err(UnknownCode(s)) => Code::Unknown(s),
        })
    }
}

/// `{"error": {...}}`: the body of every error answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail::new(code, message),
        }
    }
}

/// `{"code", "message"}`: an error, also one entry's error in a batch answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: Code,
    /// What happened and what to do, for people.
    #[serde(default)]
    pub message: String,
}

impl ErrorDetail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: Code::Known(code),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip_as_their_strings() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(c));
            assert!(!c.doc().is_empty(), "{c} has no doc line");
            assert!((400..600).contains(&c.status()), "{c}");
        }
    }

    #[test]
    fn the_wire_strings_are_todays() {
        // Clients match on these strings: renaming a variant must not change them.
        let pairs = [
            (ErrorCode::HighSSignature, "high_s_signature", 400),
            (ErrorCode::MempoolFull, "mempool_full", 503),
            (ErrorCode::Internal, "internal", 500),
            (ErrorCode::BadTxId, "bad_tx_id", 400),
            (ErrorCode::NonceTooHigh, "nonce_too_high", 422),
            (ErrorCode::TooManyConnections, "too_many_connections", 503),
        ];
        for (c, s, status) in pairs {
            assert_eq!((c.as_str(), c.status()), (s, status));
        }
    }

    #[test]
    fn an_unknown_code_from_a_newer_node_still_reads() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"quota_exceeded","message":"m","x":1}}"#)
                .unwrap();
        assert_eq!(body.error.code, Code::Unknown("quota_exceeded".into()));
        assert_eq!(body.error.code.known(), None);
        assert_eq!(body.error.message, "m");
        let body: ErrorBody = serde_json::from_str(r#"{"error":{"code":"fee_too_low"}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::FeeTooLow);
        assert!(serde_json::from_str::<ErrorCode>("\"quota_exceeded\"").is_err());
    }

    #[test]
    fn the_error_body_is_the_documented_shape() {
        let v = serde_json::to_value(ErrorBody::new(ErrorCode::NotFound, "no block")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "not_found", "message": "no block"}})
        );
    }

    #[test]
    fn generic_statuses_map_to_their_codes() {
        assert_eq!(
            ErrorCode::for_status(405),
            Some(ErrorCode::MethodNotAllowed)
        );
        assert_eq!(ErrorCode::for_status(503), Some(ErrorCode::Unavailable));
        assert_eq!(ErrorCode::for_status(500), Some(ErrorCode::Internal));
        assert_eq!(ErrorCode::for_status(418), None);
    }
}
