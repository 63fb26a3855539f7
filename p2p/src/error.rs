//! Errors of the network task's API.

/// Failures of `spawn` and of `NetworkHandle` calls.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A configuration value is unusable.
    #[error("network config: `{key}` {reason}")]
    Config {
        key: &'static str,
        reason: &'static str,
    },
    /// `keypair_ed25519_secret` is not a valid Ed25519 secret key.
    #[error("network config: keypair_ed25519_secret is not a valid ed25519 secret key: {0}")]
    Identity(String),
    /// Building the transport or a behaviour failed.
    #[error("building the libp2p swarm failed: {0}")]
    Build(String),
    /// Could not listen on an address from `listen`.
    #[error("cannot listen on {addr}: {reason} (is the address local and the port free?)")]
    Listen { addr: String, reason: String },
    /// Publishing failed (e.g. no peer subscribed yet, duplicate content, too large).
    #[error("publish failed: {0}")]
    Publish(String),
    /// Dialling failed immediately.
    #[error("dial failed: {0}")]
    Dial(String),
    /// A response over `sync_max_response_bytes` was not sent (the requester gets a
    /// `ResponseTooLarge` error frame instead).
    #[error("response of {size} bytes exceeds the {limit}-byte sync cap")]
    ResponseTooLarge { size: usize, limit: usize },
    /// The network task has stopped (shutdown or crash).
    #[error("network task stopped")]
    Shutdown,
}
