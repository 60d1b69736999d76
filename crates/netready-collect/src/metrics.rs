//! The metric families of `netready collect`, the central collector of per-pod records.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// `{reason}` labels of batches the collector refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// One of [`REJECT_REASONS`].
    pub reason: &'static str,
}

/// Why a batch is refused: `invalid` (400: a line is not a record), `too_large` (413: over
/// the body limit), `write_failed` (500: the disk refused; nothing of the batch is kept).
pub const REJECT_REASONS: [&str; 3] = ["invalid", "too_large", "write_failed"];

/// Every metric `netready collect` exports, under the `netready_collector` prefix.
pub struct CollectorMetrics {
    registry: Mutex<Registry>,
    /// Batches whose records were all kept (new ones appended, duplicates dropped).
    pub batches: Counter,
    /// Records appended to a run's file.
    pub records: Counter,
    /// Records dropped because their run, node and sandbox id were already kept (a node that
    /// retried after a lost reply).
    pub duplicate_records: Counter,
    /// Batches refused, by reason; nothing of them is kept.
    pub rejected_batches: Family<RejectLabels, Counter>,
    /// Bytes of request bodies read on `POST /v1/records`.
    pub received_bytes: Counter,
}

impl std::fmt::Debug for CollectorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorMetrics").finish_non_exhaustive()
    }
}

// === impl CollectorMetrics ===

impl CollectorMetrics {
    /// Registers every family; every reason exists from the start at zero.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("netready_collector");
        let m = CollectorMetrics {
            registry: Mutex::new(Registry::default()),
            batches: Counter::default(),
            records: Counter::default(),
            duplicate_records: Counter::default(),
            rejected_batches: Family::default(),
            received_bytes: Counter::default(),
        };
        root.register(
            "batches",
            "Batches of records accepted (204): new records appended, duplicates dropped",
            m.batches.clone(),
        );
        root.register(
            "records",
            "Records appended to their run's file",
            m.records.clone(),
        );
        root.register(
            "duplicate_records",
            "Records dropped because their run_id, node and sandbox_id were already kept (a node retrying after a lost reply)",
            m.duplicate_records.clone(),
        );
        root.register(
            "rejected_batches",
            "Batches refused, by reason (invalid: 400, too_large: 413, write_failed: 500); nothing of them is kept",
            m.rejected_batches.clone(),
        );
        root.register_with_unit(
            "received",
            "Bytes of request bodies read on POST /v1/records",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        for reason in REJECT_REASONS {
            let _ = m.rejected_batches.get_or_create(&RejectLabels { reason });
        }
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = root;
        m
    }

    /// The answer to a scrape (Prometheus text, or OpenMetrics when `Accept` asks).
    pub fn scrape<B>(
        &self,
        req: &http::Request<B>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        crate::scrape(
            &self.registry.lock().unwrap_or_else(|p| p.into_inner()),
            req,
        )
    }

    /// The metrics in Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        crate::encode_prometheus(&self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = CollectorMetrics::new();
        m.records.inc_by(3);
        m.received_bytes.inc_by(100);
        let text = m.encode_prometheus();
        for line in [
            "# TYPE netready_collector_records_total counter",
            "netready_collector_records_total 3",
            "netready_collector_received_bytes_total 100",
            "netready_collector_duplicate_records_total 0",
            "netready_collector_batches_total 0",
            "netready_collector_rejected_batches_total{reason=\"too_large\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
