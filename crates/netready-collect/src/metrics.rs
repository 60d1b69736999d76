//! The metric families of the results' journey: the forwarder's in every `netready serve`
//! (`netready_results_forward_*`), and the collector's (`netready_collector_*`).

use std::sync::Arc;

use netready_metrics::prometheus_client::encoding::EncodeLabelSet;
use netready_metrics::prometheus_client::metrics::counter::Counter;
use netready_metrics::prometheus_client::metrics::family::Family;
use netready_metrics::prometheus_client::metrics::gauge::Gauge;
use netready_metrics::prometheus_client::registry::Unit;
use netready_metrics::Metrics;

/// `{reason}` labels of failed forwards of the results file to the collector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardErrorLabels {
    /// `unreachable` (connect, timeout, broken connection), `server_error` (5xx, 408, 429),
    /// `wrong_endpoint` (404, 405: the URL is not a collector's), all three retried with
    /// backoff; or `rejected` (another 4xx: the batch is split, a single refused record skipped).
    pub reason: &'static str,
}

/// The `reason` values of [`ForwardErrorLabels`].
pub const FORWARD_ERRORS: [&str; 4] = ["unreachable", "server_error", "wrong_endpoint", "rejected"];

/// The forwarder's families, in `netready serve`'s registry.
#[derive(Debug)]
pub struct ForwardMetrics {
    /// Records of the results file the collector accepted (new or duplicate).
    pub records: Counter,
    /// Failed POSTs to the collector, by reason.
    pub errors: Family<ForwardErrorLabels, Counter>,
    /// Records the collector refused one by one (4xx) and that were skipped.
    pub rejected_records: Counter,
    /// Bytes of the results file not yet accepted by the collector.
    pub backlog: Gauge,
}

impl ForwardMetrics {
    /// Registers the forwarder's families in `m`; every reason exists from the start.
    pub fn register(m: &Metrics) -> Arc<Self> {
        let f = ForwardMetrics {
            records: Counter::default(),
            errors: Family::default(),
            rejected_records: Counter::default(),
            backlog: Gauge::default(),
        };
        m.register(|r| {
            r.register(
                "results_forward_records",
                "Records of the results file the collector accepted (new or duplicate)",
                f.records.clone(),
            );
            r.register(
                "results_forward_errors",
                "Failed POSTs of results to the collector, by reason (unreachable, server_error, wrong_endpoint: retried with backoff; rejected: a 4xx about the batch)",
                f.errors.clone(),
            );
            r.register(
                "results_forward_rejected_records",
                "Records the collector refused (4xx) on their own and that were skipped; they stay in the local results file",
                f.rejected_records.clone(),
            );
            r.register_with_unit(
                "results_forward_backlog",
                "Bytes of the local results file the collector has not accepted yet",
                Unit::Bytes,
                f.backlog.clone(),
            );
        });
        for reason in FORWARD_ERRORS {
            let _ = f.errors.get_or_create(&ForwardErrorLabels { reason });
        }
        Arc::new(f)
    }
}

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
#[derive(Debug)]
pub struct CollectorMetrics {
    registry: Arc<Metrics>,
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

// === impl CollectorMetrics ===

impl CollectorMetrics {
    /// Registers every family; every reason exists from the start at zero.
    pub fn new() -> Self {
        let m = CollectorMetrics {
            registry: Metrics::new("netready_collector"),
            batches: Counter::default(),
            records: Counter::default(),
            duplicate_records: Counter::default(),
            rejected_batches: Family::default(),
            received_bytes: Counter::default(),
        };
        m.registry.register(|root| {
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
        });
        for reason in REJECT_REASONS {
            let _ = m.rejected_batches.get_or_create(&RejectLabels { reason });
        }
        m
    }

    /// The answer to a scrape (Prometheus text, or OpenMetrics when `Accept` asks).
    pub fn scrape<B>(
        &self,
        req: &http::Request<B>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        self.registry.scrape(req)
    }

    /// The metrics in Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        self.registry.encode_prometheus()
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
