//! Errors of the CRI server crate.

use std::path::PathBuf;

/// What can stop the server from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process is serving on the socket.
    #[error("socket {path} is in use by a running server; stop it or choose another --socket")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is at the socket path; netready will not delete it.
    #[error("{path} exists and is not a unix socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Preparing, binding or setting the mode of the socket failed.
    #[error("listen on {path}: {step}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The system error.
        source: std::io::Error,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
