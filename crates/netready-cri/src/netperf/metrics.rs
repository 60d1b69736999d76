//! The netperf runtime's metric families: CNI ADD/DEL, checks, network ready, pod flux and
//! states, traffic. Registered by the runtime itself, with its own vocabulary (the check kinds
//! are netready-probe's, the pod states this runtime's).

use std::sync::{Arc, Weak};

use netready_metrics::prometheus_client::collector::Collector;
use netready_metrics::prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use netready_metrics::prometheus_client::metrics::counter::Counter;
use netready_metrics::prometheus_client::metrics::family::Family;
use netready_metrics::prometheus_client::metrics::gauge::ConstGauge;
use netready_metrics::prometheus_client::metrics::histogram::Histogram;
use netready_metrics::prometheus_client::metrics::MetricType;
use netready_metrics::prometheus_client::registry::Unit;
use netready_metrics::{
    latency_histogram, operation_histogram, Metrics, Outcome, ReasonLabels, ResultLabels,
    ATTEMPT_BUCKETS, JITTER_BUCKETS, LOAD_LATENCY_BUCKETS, THROUGHPUT_BUCKETS,
};
use netready_probe::plan::CheckKind;

use super::Inner;

/// `{check}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The check kind (`same_node_pod`, ...): six values.
    pub check: &'static str,
}

/// `{command, reason}` labels of a failed plugin chain run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniFailureLabels {
    /// `add` or `del`.
    pub command: &'static str,
    /// One of `netready_cni::error::REASONS`, or `other`.
    pub reason: &'static str,
}

/// The reason of a pod whose ADD never succeeded (the others are check kinds).
pub const CNI_ADD: &str = "cni_add";

/// The netperf runtime's families.
#[derive(Debug)]
pub struct NetperfMetrics {
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
    /// Failed ADD attempts and DELs of the chain, by command and fault class.
    pub cni_failures: Family<CniFailureLabels, Counter>,
    /// Throughput of each pod's traffic run (iperf3 to a control pod), bytes per second
    /// (Prometheus' base unit; iperf3 reports bits).
    pub traffic_throughput: Histogram,
    /// TCP retransmits of the pods' iperf3 commands.
    pub traffic_retransmits: Counter,
    /// UDP datagrams the pods' iperf3 commands sent, and those lost.
    pub traffic_udp_packets: Counter,
    /// See [`NetperfMetrics::traffic_udp_packets`].
    pub traffic_udp_lost: Counter,
    /// UDP jitter each pod's iperf3 command saw at the receiver, seconds.
    pub traffic_udp_jitter: Histogram,
    /// Requests of the pods' built-in HTTP load, by result.
    pub http_load_requests: Family<LoadLabels, Counter>,
    /// Latency of each answered request of the built-in HTTP load, from its intended send.
    pub http_load_latency: Histogram,
}

/// `result` of an HTTP load request: `success` or `failure`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// `netready_pods{state}`, counted from the runtime at each scrape. It holds the runtime
/// weakly: the registry must not keep a stopped runtime alive.
#[derive(Clone)]
struct PodStates(Arc<std::sync::OnceLock<Weak<Inner>>>);

impl std::fmt::Debug for PodStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodStates")
    }
}

impl Collector for PodStates {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "pods",
            "netperf pods by state (adding, checking, network_ready, not_network_ready, stopped)",
            None,
            MetricType::Gauge,
        )?;
        let counts = self
            .0
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| super::NetperfRuntime { inner }.pod_state_counts())
            .unwrap_or_default();
        for (state, n) in counts {
            ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

/// Where the runtime hands its state to `netready_pods` once it exists.
pub(super) type RuntimeSlot = Arc<std::sync::OnceLock<Weak<Inner>>>;

impl NetperfMetrics {
    /// Registers the runtime's families in `m`; every known label value exists from the
    /// start (at zero), so rates and dashboards work before the first event of each kind.
    pub(super) fn register(m: &Metrics, runtime: RuntimeSlot) -> Arc<Self> {
        let n = NetperfMetrics {
            cni_add_duration: Family::new_with_constructor(latency_histogram),
            cni_add_first_to_success: latency_histogram(),
            cni_add_attempts: Histogram::new(ATTEMPT_BUCKETS),
            cni_del_duration: Family::new_with_constructor(operation_histogram),
            check_duration: Family::new_with_constructor(operation_histogram),
            network_ready: latency_histogram(),
            pods_created: Counter::default(),
            pods_deleted: Counter::default(),
            network_ready_failures: Family::default(),
            cni_failures: Family::default(),
            traffic_throughput: Histogram::new(THROUGHPUT_BUCKETS),
            traffic_retransmits: Counter::default(),
            traffic_udp_packets: Counter::default(),
            traffic_udp_lost: Counter::default(),
            traffic_udp_jitter: Histogram::new(JITTER_BUCKETS),
            http_load_requests: Family::default(),
            http_load_latency: Histogram::new(LOAD_LATENCY_BUCKETS),
        };
        m.register(|r| {
            r.register_with_unit(
                "cni_add_duration",
                "One CNI ADD attempt of the whole chain, start to end",
                Unit::Seconds,
                n.cni_add_duration.clone(),
            );
            r.register_with_unit("cni_add_first_to_success", "First ADD attempt of a pod UID (across netready's and kubelet's retries) to the end of its first successful ADD", Unit::Seconds, n.cni_add_first_to_success.clone());
            r.register(
                "cni_add_attempts",
                "ADD attempts of a pod UID until its first success",
                n.cni_add_attempts.clone(),
            );
            r.register_with_unit(
                "cni_del_duration",
                "CNI DEL of the whole chain at StopPodSandbox",
                Unit::Seconds,
                n.cni_del_duration.clone(),
            );
            r.register_with_unit(
                "check_duration",
                "End of the successful ADD to a reachability check's first success",
                Unit::Seconds,
                n.check_duration.clone(),
            );
            r.register_with_unit(
                "network_ready",
                "First ADD attempt of a pod UID to every required check passed",
                Unit::Seconds,
                n.network_ready.clone(),
            );
            r.register(
                "pods_created",
                "netperf sandboxes created (pod arrivals)",
                n.pods_created.clone(),
            );
            r.register(
                "pods_deleted",
                "netperf sandboxes removed (pod departures)",
                n.pods_deleted.clone(),
            );
            r.register("network_ready_failures", "netperf pods that did not become network-ready, by reason (cni_add or the failing check)", n.network_ready_failures.clone());
            r.register("cni_failures", "Failed ADD attempts and DELs of the netperf plugin chain, by command and fault class (plugin_not_found, plugin_not_executable, plugin_error, timeout, killed, bad_result, exec, config)", n.cni_failures.clone());
            r.register(
                "traffic_throughput_bytes_per_second",
                "Throughput each netperf pod reached in its traffic run after network ready",
                n.traffic_throughput.clone(),
            );
            r.register(
                "traffic_retransmits",
                "TCP retransmits of netperf pods' iperf3 commands",
                n.traffic_retransmits.clone(),
            );
            r.register(
                "traffic_udp_packets",
                "UDP datagrams netperf pods' iperf3 commands sent",
                n.traffic_udp_packets.clone(),
            );
            r.register(
                "traffic_udp_lost_packets",
                "UDP datagrams of netperf pods' iperf3 commands that the receiver never got",
                n.traffic_udp_lost.clone(),
            );
            r.register(
                "traffic_udp_jitter_seconds",
                "UDP jitter at the receiver of each netperf pod's iperf3 command (RFC 3550 interarrival jitter)",
                n.traffic_udp_jitter.clone(),
            );
            r.register(
                "http_load_requests",
                "Requests of netperf pods' built-in HTTP load after network ready, by result",
                n.http_load_requests.clone(),
            );
            r.register(
                "http_load_latency_seconds",
                "Latency of each answered request of netperf pods' built-in HTTP load, from its intended send (coordinated omission corrected)",
                n.http_load_latency.clone(),
            );
            r.register_collector(Box::new(PodStates(runtime)));
        });
        for result in ["success", "failure"] {
            let _ = n.http_load_requests.get_or_create(&LoadLabels { result });
        }
        for result in [Outcome::success, Outcome::failure] {
            let _ = n.cni_add_duration.get_or_create(&ResultLabels { result });
            let _ = n.cni_del_duration.get_or_create(&ResultLabels { result });
        }
        for kind in CheckKind::ALL {
            let check = kind.as_str();
            let _ = n.check_duration.get_or_create(&CheckLabels { check });
            let _ = n
                .network_ready_failures
                .get_or_create(&ReasonLabels { reason: check });
        }
        let _ = n
            .network_ready_failures
            .get_or_create(&ReasonLabels { reason: CNI_ADD });
        Arc::new(n)
    }
}
