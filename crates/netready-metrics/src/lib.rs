//! netready's Prometheus metrics: the families, their buckets, and the `/metrics` server.
//!
//! Names follow Prometheus conventions (`netready_<what>_<unit>`, base units, `_total` on
//! counters); labels are typed and bounded (a result, a check kind, a CRI method), never a
//! pod name, UID, sandbox id, address or error text.
//!
//! Every node of a 5,000-node kubemark cluster exports these, so one node's series are a
//! budget: [`SERIES_BUDGET`]. A histogram costs one series per bucket plus `_sum` and
//! `_count`, per label set; that is where the series go, so each family's buckets are chosen
//! for what its dashboard panel reads, and per-pod records (not metrics) carry the exact
//! timings that `netready report` computes percentiles from.

mod collector;
mod server;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use collector::{CollectorMetrics, RejectLabels, REJECT_REASONS};
pub use server::{scrape, serve};

/// Series one netready may export. Assuming one Prometheus holds about 3 M active series
/// comfortably (4–8 KiB each with head chunks, index and query headroom: 12–24 GiB),
/// 5,000 nodes × 300 = 1.5 M is half of it, and the other half is left to the rest of the
/// cluster (API servers, etcd, kube-state-metrics...). `tests/testkit/tests/series.rs`
/// measures a node against it.
pub const SERIES_BUDGET: usize = 300;

/// Buckets of the pod timings whose percentiles the dashboards show (network ready, CNI ADD,
/// first ADD attempt to success), seconds: 10 ms to 10 s in 1-2.5-5 steps, then 30 s and 1,
/// 2, 5 and 10 min. A bridge chain's ADD takes 18–33 ms; network ready is sub-second to
/// seconds; a stuck IPAM takes minutes and netready's ADD retries give up after 2 min.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of the operations read as p50/p99 only (each check, CNI DEL, CRI calls), seconds:
/// 5 ms to 1 min, the default check deadline and plugin exec timeout; a CRI call beyond it
/// lands in `+Inf`. Coarser than [`LATENCY_BUCKETS`]: the checks alone are six histograms.
pub const OPERATION_BUCKETS: [f64; 9] = [0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// Buckets of ADD attempts until success: retries beyond 10 are all "many".
pub const ATTEMPT_BUCKETS: [f64; 5] = [1.0, 2.0, 3.0, 5.0, 10.0];

/// Buckets of traffic throughput, bytes per second: 125 kB/s (1 Mbit/s) to 8 GB/s
/// (64 Gbit/s), ×4 apart. Records keep each pod's exact throughput.
pub const THROUGHPUT_BUCKETS: [f64; 9] =
    [125e3, 500e3, 2e6, 8e6, 32e6, 128e6, 512e6, 2.048e9, 8.192e9];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

/// The check kinds (the `check` label's values; also failure reasons).
pub const CHECKS: [&str; 6] = [
    "same_node_pod",
    "other_node_pods",
    "service_ping",
    "service_http",
    "external_ping",
    "external_http",
];

/// Success or failure of an operation.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Outcome {
    success,
    failure,
}

/// `{result}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// success or failure.
    pub result: Outcome,
}

/// `{check}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The check kind (`same_node_pod`, ...): six values.
    pub check: &'static str,
}

/// `{reason}` labels: a bounded failure class (`cni_add`, a check kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The failure class.
    pub reason: &'static str,
}

/// `{method,route,code}` labels of CRI calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CriLabels {
    /// The CRI method (known names only; others are `unknown`).
    pub method: &'static str,
    /// `netperf` or `upstream`.
    pub route: &'static str,
    /// The gRPC code name (`OK`, `NotFound`, ...).
    pub code: &'static str,
}

/// `{route}` labels of CRI call durations. The method is left out: a latency histogram per
/// method and route would be 30-odd × 12 series on every node; calls per method are counted
/// in [`CriLabels`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CriRouteLabels {
    /// `netperf` or `upstream`.
    pub route: &'static str,
}

/// The values of the `route` label.
pub const ROUTES: [&str; 2] = ["netperf", "upstream"];

/// `{kind}` labels of discovered targets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetKindLabels {
    /// `other_node_pod` or `service`.
    pub kind: &'static str,
}

/// `{resource,type}` labels of watch events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchEventLabels {
    /// `service` or `endpointslice`.
    pub resource: &'static str,
    /// The watcher's event: `init`, `init_apply`, `init_done`, `apply`, `delete`, `error`.
    pub r#type: &'static str,
}

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

/// Pod counts by state, computed at scrape time by whoever owns the pods.
pub type PodStates = Arc<dyn Fn() -> Vec<(&'static str, i64)> + Send + Sync>;

/// Every metric netready exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// One ADD attempt of the whole chain, by result.
    pub cni_add_duration: Family<ResultLabels, Histogram>,
    /// First ADD attempt of a pod UID to its first success.
    pub cni_add_first_to_success: Histogram,
    /// Attempts until the first success.
    pub cni_add_attempts: Histogram,
    /// DEL of the whole chain, by result.
    pub cni_del_duration: Family<ResultLabels, Histogram>,
    /// ADD end to a check's first success, by check.
    pub check_duration: Family<CheckLabels, Histogram>,
    /// First ADD attempt to network ready.
    pub network_ready: Histogram,
    /// netperf sandboxes created (RunPodSandbox succeeded).
    pub pods_created: Counter,
    /// netperf sandboxes removed.
    pub pods_deleted: Counter,
    /// Pods that did not become network-ready, by reason.
    pub network_ready_failures: Family<ReasonLabels, Counter>,
    /// CRI calls by method, route and code.
    pub cri_requests: Family<CriLabels, Counter>,
    /// CRI call durations by route.
    pub cri_request_duration: Family<CriRouteLabels, Histogram>,
    /// Throughput of each pod's traffic run (iperf3 to a control pod), bytes per second
    /// (Prometheus' base unit; iperf3 reports bits).
    pub traffic_throughput: Histogram,
    /// Targets known from the API, by kind.
    pub discovery_targets: Family<TargetKindLabels, Gauge>,
    /// 1 once discovery's initial lists completed (its targets are the API's).
    pub discovery_synced: Gauge,
    /// Watch events received, by resource and type.
    pub discovery_events: Family<WatchEventLabels, Counter>,
    /// Unix time since which the API has been unreachable or refusing; 0 while it answers.
    pub discovery_unreachable_since: Gauge,
    /// Records of the results file the collector accepted (new or duplicate).
    pub results_forward_records: Counter,
    /// Failed POSTs to the collector, by reason.
    pub results_forward_errors: Family<ForwardErrorLabels, Counter>,
    /// Records the collector refused one by one (4xx) and that were skipped.
    pub results_forward_rejected_records: Counter,
    /// Bytes of the results file not yet accepted by the collector.
    pub results_forward_backlog: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct PodStateCollector(PodStates);

impl std::fmt::Debug for PodStateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodStateCollector")
    }
}

impl prometheus_client::collector::Collector for PodStateCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut family = encoder.encode_descriptor(
            "pods",
            "netperf pods by state (adding, checking, network_ready, not_network_ready, stopped)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in (self.0)() {
            let g = prometheus_client::metrics::gauge::ConstGauge::new(n);
            g.encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

// === impl Metrics ===

impl Metrics {
    /// Registers every family under the `netready` prefix; `pod_states` is called at each
    /// scrape for `netready_pods{state}`.
    pub fn new(pod_states: PodStates) -> Arc<Self> {
        let mut root = Registry::with_prefix("netready");
        let r = &mut root;
        let m = Metrics {
            cni_add_duration: Family::new_with_constructor(latency_histogram),
            cni_add_first_to_success: latency_histogram(),
            cni_add_attempts: Histogram::new(ATTEMPT_BUCKETS),
            cni_del_duration: Family::new_with_constructor(operation_histogram),
            check_duration: Family::new_with_constructor(operation_histogram),
            network_ready: latency_histogram(),
            pods_created: Counter::default(),
            pods_deleted: Counter::default(),
            network_ready_failures: Family::default(),
            cri_requests: Family::default(),
            cri_request_duration: Family::new_with_constructor(operation_histogram),
            traffic_throughput: Histogram::new(THROUGHPUT_BUCKETS),
            discovery_targets: Family::default(),
            discovery_synced: Gauge::default(),
            discovery_events: Family::default(),
            discovery_unreachable_since: Gauge::default(),
            results_forward_records: Counter::default(),
            results_forward_errors: Family::default(),
            results_forward_rejected_records: Counter::default(),
            results_forward_backlog: Gauge::default(),
            registry: Mutex::new(Registry::default()),
        };
        r.register_with_unit(
            "cni_add_duration",
            "One CNI ADD attempt of the whole chain, start to end",
            Unit::Seconds,
            m.cni_add_duration.clone(),
        );
        r.register_with_unit("cni_add_first_to_success", "First ADD attempt of a pod UID (across netready's and kubelet's retries) to the end of its first successful ADD", Unit::Seconds, m.cni_add_first_to_success.clone());
        r.register(
            "cni_add_attempts",
            "ADD attempts of a pod UID until its first success",
            m.cni_add_attempts.clone(),
        );
        r.register_with_unit(
            "cni_del_duration",
            "CNI DEL of the whole chain at StopPodSandbox",
            Unit::Seconds,
            m.cni_del_duration.clone(),
        );
        r.register_with_unit(
            "check_duration",
            "End of the successful ADD to a reachability check's first success",
            Unit::Seconds,
            m.check_duration.clone(),
        );
        r.register_with_unit(
            "network_ready",
            "First ADD attempt of a pod UID to every required check passed",
            Unit::Seconds,
            m.network_ready.clone(),
        );
        r.register(
            "pods_created",
            "netperf sandboxes created (pod arrivals)",
            m.pods_created.clone(),
        );
        r.register(
            "pods_deleted",
            "netperf sandboxes removed (pod departures)",
            m.pods_deleted.clone(),
        );
        r.register("network_ready_failures", "netperf pods that did not become network-ready, by reason (cni_add or the failing check)", m.network_ready_failures.clone());
        r.register(
            "cri_requests",
            "CRI calls answered, by method, route (netperf or upstream) and gRPC code",
            m.cri_requests.clone(),
        );
        r.register_with_unit(
            "cri_request_duration",
            "CRI call duration as netready sees it, by route (netperf or upstream)",
            Unit::Seconds,
            m.cri_request_duration.clone(),
        );
        r.register(
            "traffic_throughput_bytes_per_second",
            "Throughput each netperf pod reached in its traffic run after network ready",
            m.traffic_throughput.clone(),
        );
        r.register(
            "discovery_targets",
            "Check targets known from the Kubernetes API, by kind (other_node_pod, service)",
            m.discovery_targets.clone(),
        );
        r.register(
            "discovery_synced",
            "1 once the control Service and its EndpointSlices were listed: targets are the API's",
            m.discovery_synced.clone(),
        );
        r.register(
            "discovery_events",
            "Watch events of the control Service and its EndpointSlices, by resource and type",
            m.discovery_events.clone(),
        );
        r.register_with_unit(
            "discovery_unreachable_since_timestamp",
            "Unix time since which the API server has been unreachable or refusing (0: answering); targets are the last known meanwhile",
            Unit::Seconds,
            m.discovery_unreachable_since.clone(),
        );
        r.register(
            "results_forward_records",
            "Records of the results file the collector accepted (new or duplicate)",
            m.results_forward_records.clone(),
        );
        r.register(
            "results_forward_errors",
            "Failed POSTs of results to the collector, by reason (unreachable, server_error, wrong_endpoint: retried with backoff; rejected: a 4xx about the batch)",
            m.results_forward_errors.clone(),
        );
        r.register(
            "results_forward_rejected_records",
            "Records the collector refused (4xx) on their own and that were skipped; they stay in the local results file",
            m.results_forward_rejected_records.clone(),
        );
        r.register_with_unit(
            "results_forward_backlog",
            "Bytes of the local results file the collector has not accepted yet",
            Unit::Bytes,
            m.results_forward_backlog.clone(),
        );
        root.register_collector(Box::new(PodStateCollector(pod_states)));
        // Series for every known label value exist from the start (at zero), so rates and
        // dashboards work before the first event of each kind.
        for result in [Outcome::success, Outcome::failure] {
            let _ = m.cni_add_duration.get_or_create(&ResultLabels { result });
            let _ = m.cni_del_duration.get_or_create(&ResultLabels { result });
        }
        for check in CHECKS {
            let _ = m.check_duration.get_or_create(&CheckLabels { check });
            let _ = m
                .network_ready_failures
                .get_or_create(&ReasonLabels { reason: check });
        }
        let _ = m
            .network_ready_failures
            .get_or_create(&ReasonLabels { reason: "cni_add" });
        for route in ROUTES {
            let _ = m
                .cri_request_duration
                .get_or_create(&CriRouteLabels { route });
        }
        for reason in FORWARD_ERRORS {
            let _ = m
                .results_forward_errors
                .get_or_create(&ForwardErrorLabels { reason });
        }
        for kind in ["other_node_pod", "service"] {
            let _ = m
                .discovery_targets
                .get_or_create(&TargetKindLabels { kind });
        }
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = root;
        Arc::new(m)
    }

    /// The metrics in OpenMetrics text (with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        encode_openmetrics(&self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The metrics in Prometheus text format 0.0.4 (see [`encode_prometheus`]).
    pub fn encode_prometheus(&self) -> String {
        encode_prometheus(&self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A registry in OpenMetrics text (with `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A registry in Prometheus text format 0.0.4: OpenMetrics without `# EOF` and `# UNIT`, and
/// counters' `# TYPE`/`# HELP` naming the `_total` series, as 0.0.4 parsers expect.
pub fn encode_prometheus(registry: &Registry) -> String {
    let om = encode_openmetrics(registry);
    let counters: std::collections::HashSet<String> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_owned)
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# TYPE ", "# HELP "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Metrics::new(Arc::new(|| vec![("ready", 3), ("adding", 1)]))
    }

    #[test]
    fn buckets_rise_and_span_what_they_measure() {
        for b in [
            &LATENCY_BUCKETS[..],
            &OPERATION_BUCKETS,
            &ATTEMPT_BUCKETS,
            &THROUGHPUT_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        assert_eq!((LATENCY_BUCKETS[0], LATENCY_BUCKETS[14]), (0.01, 600.0));
        assert_eq!((OPERATION_BUCKETS[0], OPERATION_BUCKETS[8]), (0.005, 60.0));
    }

    #[test]
    fn a_fresh_node_exports_well_within_the_budget() {
        let text = metrics().encode_prometheus();
        let series = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        // Every pre-created series; CRI call counters and watch events come on top.
        assert!(series <= SERIES_BUDGET - 60, "{series}\n{text}");
    }

    #[test]
    fn both_formats_carry_every_family() {
        let m = metrics();
        m.cni_add_duration
            .get_or_create(&ResultLabels {
                result: Outcome::success,
            })
            .observe(0.02);
        m.pods_created.inc();
        m.cri_requests
            .get_or_create(&CriLabels {
                method: "Version",
                route: "upstream",
                code: "OK",
            })
            .inc();
        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains(
                "netready_cni_add_duration_seconds_bucket{le=\"0.025\",result=\"success\"} 1"
            ) || om.contains(
                "netready_cni_add_duration_seconds_bucket{result=\"success\",le=\"0.025\"} 1"
            ),
            "{om}"
        );
        assert!(om.contains("netready_pods{state=\"ready\"} 3"), "{om}");
        let text = m.encode_prometheus();
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE netready_pods_created_total counter"),
            "{text}"
        );
        assert!(text.contains("netready_pods_created_total 1"), "{text}");
        assert!(
            text.contains(
                "netready_cri_requests_total{method=\"Version\",route=\"upstream\",code=\"OK\"} 1"
            ),
            "{text}"
        );
    }
}
