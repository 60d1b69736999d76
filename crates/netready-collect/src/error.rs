//! Errors of the collector and the forwarder.

use std::path::PathBuf;

/// What can go wrong opening the collector's directory, writing a run's file, or starting a
/// forwarder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The collector's directory cannot be made or listed.
    #[error("collector directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A run's file cannot be read (at start) or opened.
    #[error("run file {path}: {source}")]
    RunFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Appending a batch failed; what was written of it is cut off again (`rollback` says
    /// if that failed too).
    #[error("appending to {path}: {source}{}", rollback.as_ref().map(|e| format!(" (and cutting the partial batch off failed: {e})")).unwrap_or_default())]
    Append {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
        /// The error truncating the file back to its length before the batch, if any.
        rollback: Option<std::io::Error>,
    },
    /// The collector URL a forwarder was given is not one it can use.
    #[error("results collector URL {url:?}: {why}")]
    Url {
        /// The URL as configured.
        url: String,
        /// Why it cannot be used.
        why: String,
    },
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
