//! The runtime side of CNI: load a conflist, run the plugin chain like libcni, retry and time
//! ADD.
//!
//! Any CNI provider works: plugin configs are passed through as written, with only what libcni
//! injects (`name`, `cniVersion`, `runtimeConfig` for declared capabilities, `prevResult`).

pub mod chain;
pub mod clock;
pub mod conflist;
pub mod error;
pub mod exec;
pub mod gate;
pub mod quantity;
pub mod retry;
pub mod runtime_config;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use chain::{Added, Attachment, Network};
pub use clock::Stamp;
pub use conflist::Conflist;
pub use error::{Error, Result};
pub use exec::{Exec, PluginExec};
pub use gate::{Gate, Work};
pub use retry::{AttemptRecord, Failure, RetryPolicy};
