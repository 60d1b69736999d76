//! Per-pod records from every node in one place: the collector server and the forwarder that
//! feeds it.
//!
//! Thousands of node pods each append their records to a local results file. A
//! [`forward::Forwarder`] in every `netready serve` tails that file and POSTs complete lines
//! in batches to one [`server::Collector`] (`netready collect`), which appends them to one
//! file per run and drops a record it already has (same run, node and sandbox), so a node may
//! always send again what it is not sure arrived: nothing is lost across collector outages
//! or netready restarts, and nothing is kept twice.

pub mod batch;
mod error;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod store;

pub use error::{Error, Result};
pub use forward::{ForwardConfig, Forwarder};
pub use server::{serve, Collector, DEFAULT_MAX_BODY};
