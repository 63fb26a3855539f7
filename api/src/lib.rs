//! The contract of tallyd's JSON-over-HTTP API (DESIGN.md section 7): every request,
//! response, event and error body, and the one list of error codes with their HTTP
//! statuses. The node serves these types, and the wallet, its fake node and the
//! integration tests read them, so a change to the wire shows up in all of them at once.
//!
//! Plain serde types: no HTTP client or server, no ledger, no storage.

mod error;
mod events;
mod types;

pub use error::{Code, ErrorBody, ErrorCode, ErrorDetail, UnknownCode};
pub use events::{BlockEvent, Event, LaggedEvent, TxEvent};
pub use types::*;
