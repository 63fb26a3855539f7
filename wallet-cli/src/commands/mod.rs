//! One module per command group; each returns the typed [`crate::error::Error`].

pub mod bench;
pub mod keys;
pub mod query;
pub mod stake;
pub mod transfer;
pub mod verify;
