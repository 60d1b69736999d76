//! Reading netready's per-pod records: exact statistics, reports (table, JSON, ClusterLoader2
//! perfdata, plots) and release-to-release comparisons with a rank test.

pub mod compare;
pub mod plot;
pub mod records;
pub mod report;
pub mod stats;

pub use records::{Record, Run};
