//! netready's Prometheus plumbing: one registry per process, the bucket sets, the encodings
//! and the `/metrics` server. Each subsystem defines and registers its own families (the
//! netperf runtime, the CRI server, discovery, the results forwarder, the collector) with
//! [`Metrics::register`]; nothing here knows their vocabulary.
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

mod server;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client;
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
/// (64 Gbit/s), ×16 apart: coarse, because the series budget is spent on the HTTP load's
/// latency too, and what a dashboard asks of it is which decade a datapath runs in. Records
/// keep each pod's exact throughput.
pub const THROUGHPUT_BUCKETS: [f64; 5] = [125e3, 2e6, 32e6, 512e6, 8.192e9];

/// Buckets of the built-in HTTP load's request latency (from each request's intended send),
/// seconds: 1 ms, 10 ms, 100 ms, 1 s. Decades, for SLO-style shares ("requests answered
/// within 100 ms"); each pod's exact percentiles are in its record.
pub const LOAD_LATENCY_BUCKETS: [f64; 4] = [1e-3, 1e-2, 1e-1, 1.0];

/// Buckets of UDP jitter (RFC 3550's smoothed interarrival jitter, as iperf3 reports it),
/// seconds: 0.1 ms, 1 ms, 10 ms, 100 ms. A veth pair on one host is well under 0.1 ms, a
/// healthy overlay under 1 ms; 10 ms and more is a datapath in trouble. Four buckets: the
/// series budget is nearly spent, and records keep each pod's exact jitter.
pub const JITTER_BUCKETS: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];

/// A histogram of [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A histogram of [`OPERATION_BUCKETS`].
pub fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

/// Success or failure of an operation.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Outcome {
    success,
    failure,
}

impl Outcome {
    /// `success` when `ok`.
    pub fn of(ok: bool) -> Self {
        if ok {
            Outcome::success
        } else {
            Outcome::failure
        }
    }
}

/// `{result}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// success or failure.
    pub result: Outcome,
}

/// `{reason}` labels: a bounded failure class, its values the owner's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The failure class.
    pub reason: &'static str,
}

/// A process's metrics: one registry under one prefix, that subsystems register into.
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

// === impl Metrics ===

impl Metrics {
    /// An empty registry whose families are named `<prefix>_<name>`.
    pub fn new(prefix: &str) -> Arc<Self> {
        Arc::new(Metrics {
            registry: Mutex::new(Registry::with_prefix(prefix)),
        })
    }

    /// Lets a subsystem register its families; returns what `f` returns (its handles).
    pub fn register<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The metrics in OpenMetrics text (with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        encode_openmetrics(&self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The metrics in Prometheus text format 0.0.4 (see [`encode_prometheus`]).
    pub fn encode_prometheus(&self) -> String {
        encode_prometheus(&self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The answer to a scrape (Prometheus text, or OpenMetrics when `Accept` asks).
    pub fn scrape<B>(
        &self,
        req: &http::Request<B>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        scrape(
            &self.registry.lock().unwrap_or_else(|p| p.into_inner()),
            req,
        )
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
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    #[test]
    fn buckets_rise_and_span_what_they_measure() {
        for b in [
            &LATENCY_BUCKETS[..],
            &OPERATION_BUCKETS,
            &ATTEMPT_BUCKETS,
            &THROUGHPUT_BUCKETS,
            &JITTER_BUCKETS,
            &LOAD_LATENCY_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        assert_eq!((LATENCY_BUCKETS[0], LATENCY_BUCKETS[14]), (0.01, 600.0));
        assert_eq!((OPERATION_BUCKETS[0], OPERATION_BUCKETS[8]), (0.005, 60.0));
    }

    #[test]
    fn both_formats_carry_what_subsystems_registered() {
        let m = Metrics::new("netready");
        let (h, c, f) = m.register(|r| {
            let h: Family<ResultLabels, Histogram> =
                Family::new_with_constructor(latency_histogram);
            let c = Counter::<u64>::default();
            let f: Family<ReasonLabels, Counter> = Family::default();
            r.register_with_unit(
                "cni_add_duration",
                "ADD",
                prometheus_client::registry::Unit::Seconds,
                h.clone(),
            );
            r.register("pods_created", "created", c.clone());
            r.register("failures", "failed", f.clone());
            (h, c, f)
        });
        h.get_or_create(&ResultLabels {
            result: Outcome::of(true),
        })
        .observe(0.02);
        c.inc();
        f.get_or_create(&ReasonLabels { reason: "cni_add" }).inc();
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
        let text = m.encode_prometheus();
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        assert!(
            text.contains("# TYPE netready_pods_created_total counter"),
            "{text}"
        );
        assert!(text.contains("netready_pods_created_total 1"), "{text}");
        assert!(
            text.contains("netready_failures_total{reason=\"cni_add\"} 1"),
            "{text}"
        );
    }
}
