//! Errors of discovery.

/// What stops discovery from starting or a client from being made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The kubeconfig or service account could not make a client.
    #[error("discovery client from {origin}: {reason}")]
    Config {
        /// The kubeconfig path or "the pod's service account".
        origin: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
