//! Probe errors: short, bounded kinds for metric labels and the message for records.

use std::time::Duration;

/// Why a probe did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No answer within the probe timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The socket could not be made inside the pod's netns.
    #[error("socket in pod netns: {0}")]
    Socket(String),
    /// The network said no (unreachable, refused, reset...).
    #[error("{0}")]
    Network(String),
    /// An HTTP answer with a status that is not 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The HTTP exchange broke.
    #[error("HTTP: {0}")]
    Http(String),
}

impl Error {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Timeout(_) => "timeout",
            Error::Socket(_) => "socket",
            Error::Network(_) => "network",
            Error::Status(_) => "http_status",
            Error::Http(_) => "http",
        }
    }
}

/// Result of a probe.
pub type Result<T, E = Error> = std::result::Result<T, E>;
