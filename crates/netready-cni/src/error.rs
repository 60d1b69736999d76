//! Errors of CNI operations. Plugin failures keep the plugin's own code and message: they are
//! what a user reads in kubelet's events and what metrics count failures by.

use std::path::PathBuf;
use std::time::Duration;

/// A CNI operation that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The configuration directory or file could not be used.
    #[error("cni config {path}: {reason}")]
    Config {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No plugin binary of that type in any CNI path directory.
    #[error("plugin type={plugin:?} not found in {paths:?}")]
    NotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched.
        paths: Vec<PathBuf>,
    },
    /// A file of that plugin type is in a CNI path directory, but may not be executed.
    #[error("plugin type={plugin:?} at {path:?} is not executable")]
    NotExecutable {
        /// The plugin type.
        plugin: String,
        /// The file found.
        path: PathBuf,
    },
    /// The plugin ran and reported an error (CNI error JSON, or a failure without one).
    #[error("plugin type={plugin:?} failed ({command}): code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL, CHECK or STATUS, lowercase as libcni prints it.
        command: &'static str,
        /// The CNI error code (0–99 spec-defined, 100+ plugin-defined; 999 when the plugin
        /// failed without printing an error).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details.
        details: String,
    },
    /// The plugin did not finish within the exec timeout and was killed.
    #[error("plugin type={plugin:?} failed ({command}): timed out after {after:?} and was killed")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The plugin was killed by a signal.
    #[error("plugin type={plugin:?} failed ({command}): killed by signal {signal}")]
    Killed {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: &'static str,
        /// The signal number.
        signal: i32,
    },
    /// The plugin exited 0 but its output is not a result of the configured version.
    #[error("plugin type={plugin:?} failed ({command}): invalid result: {reason}: {excerpt:?}")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: &'static str,
        /// Why the output was rejected.
        reason: String,
        /// The start of the output.
        excerpt: String,
    },
    /// Starting the plugin or talking to it failed.
    #[error("plugin type={plugin:?} failed ({command}): exec: {reason}")]
    Exec {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: &'static str,
        /// The system error.
        reason: String,
    },
    /// Several plugins failed during a teardown that went on past the first failure.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    /// The CNI error code for reports and metric labels: the plugin's own code, or a
    /// netready-side class for failures that never produced one.
    pub fn code(&self) -> u32 {
        match self {
            Error::Plugin { code, .. } => *code,
            Error::Many(errs) => errs.first().map_or(999, Error::code),
            _ => 999,
        }
    }

    /// A short, bounded reason for metric labels (never ids or free text).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::NotFound { .. } => "plugin_not_found",
            Error::NotExecutable { .. } => "plugin_not_executable",
            Error::Plugin { .. } => "plugin_error",
            Error::Timeout { .. } => "timeout",
            Error::Killed { .. } => "killed",
            Error::BadResult { .. } => "bad_result",
            Error::Exec { .. } => "exec",
            Error::Many(errs) => errs.first().map_or("plugin_error", Error::reason),
        }
    }
}

/// Every value of [`Error::reason`]: metric labels stay within these.
pub const REASONS: &[&str] = &[
    "config",
    "plugin_not_found",
    "plugin_not_executable",
    "plugin_error",
    "timeout",
    "killed",
    "bad_result",
    "exec",
];

/// `reason` as one of [`REASONS`] (a reason read back from a record may be anything):
/// `other` when it is none of them.
pub fn bounded_reason(reason: &str) -> &'static str {
    REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("other")
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
