//! `netready report`: exact percentiles of every timing, counts, failures by reason and
//! network-ready throughput over time, as a table, JSON, or ClusterLoader2's PerfData.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::records::Run;
use crate::stats::{summarize, Summary};

/// A run's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Fingerprints of the runs the records came from.
    pub fingerprints: Vec<Value>,
    /// Run ids seen.
    pub run_ids: Vec<String>,
    /// Nodes seen.
    pub nodes: usize,
    /// Pods recorded.
    pub pods: usize,
    /// Pods that became network-ready.
    pub ready: usize,
    /// `ready / pods`.
    pub success_ratio: f64,
    /// Not-ready pods by reason (the failing check, or `cni_add`).
    pub failures_by_reason: BTreeMap<String, usize>,
    /// Every timing, seconds.
    pub timings: Vec<(String, Summary)>,
    /// ADD attempts until success.
    pub attempts: Summary,
    /// Network-ready pods per second, by whole second since the first one.
    pub throughput: Vec<(u64, usize)>,
    /// Why the run measured netready's own queueing rather than the network, if it did.
    pub lag_problem: Option<String>,
    /// The host's load over each node's run: (run id, node, load).
    pub host_loads: Vec<(String, String, netready_record::host_load::HostLoad)>,
}

/// Builds the report of `run`, flagging a lag p99 above [`crate::records::DEFAULT_MAX_LAG`].
pub fn build(run: &Run) -> Report {
    build_with(run, crate::records::DEFAULT_MAX_LAG)
}

/// Builds the report of `run`, flagging a lag p99 above `max_lag`.
pub fn build_with(run: &Run, max_lag: std::time::Duration) -> Report {
    let mut failures = BTreeMap::new();
    for r in run.records.iter().filter(|r| !r.ready) {
        *failures
            .entry(r.reason.clone().unwrap_or_else(|| "unknown".into()))
            .or_insert(0) += 1;
    }
    let ready_at: Vec<f64> = run.records.iter().filter_map(|r| r.ready_at).collect();
    let start = ready_at.iter().copied().fold(f64::INFINITY, f64::min);
    let mut per_sec: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &ready_at {
        *per_sec.entry((t - start).floor() as u64).or_insert(0) += 1;
    }
    let last = per_sec.keys().last().copied().unwrap_or(0);
    let throughput = (0..=last)
        .map(|s| (s, per_sec.get(&s).copied().unwrap_or(0)))
        .collect::<Vec<_>>();
    let mut run_ids: Vec<String> = run.records.iter().map(|r| r.run_id.clone()).collect();
    run_ids.sort();
    run_ids.dedup();
    let mut nodes: Vec<&str> = run.records.iter().map(|r| r.node.as_str()).collect();
    nodes.sort();
    nodes.dedup();
    let ready = run.records.iter().filter(|r| r.ready).count();
    Report {
        fingerprints: run.fingerprints.clone(),
        run_ids,
        nodes: nodes.len(),
        pods: run.records.len(),
        ready,
        success_ratio: if run.records.is_empty() {
            0.0
        } else {
            ready as f64 / run.records.len() as f64
        },
        failures_by_reason: failures,
        timings: run
            .timing_names()
            .into_iter()
            .map(|n| {
                let s = summarize(&run.samples(&n));
                (n, s)
            })
            .collect(),
        // Only netready's records count ADD attempts; a driver's have none to count.
        attempts: summarize(
            &run.records
                .iter()
                .filter_map(|r| r.attempts.map(f64::from))
                .collect::<Vec<_>>(),
        ),
        throughput: if ready_at.is_empty() {
            Vec::new()
        } else {
            throughput
        },
        lag_problem: run.lag_problem(max_lag),
        host_loads: run.host_loads.clone(),
    }
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", x * 1e3)
    }
}

/// A table for people.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "runs {}  nodes {}  pods {}  network-ready {} ({:.1}%)\n",
        r.run_ids.join(","),
        r.nodes,
        r.pods,
        r.ready,
        r.success_ratio * 100.0
    ));
    for fp in &r.fingerprints {
        out.push_str(&format!("fingerprint {fp}\n"));
    }
    for (run, node, l) in &r.host_loads {
        let throttled = match &l.cgroup {
            Some(c) if c.nr_periods == 0 => "; its cgroup has no CPU limit".to_string(),
            Some(c) => format!(
                "; cgroup throttled in {} of {} periods ({:.2} s)",
                c.nr_throttled, c.nr_periods, c.throttled_s
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "host load {run}/{node}: CPU steal {:.2}% of {:.1} CPU-s over {:.1} s{throttled}; {} packets dropped at full input backlogs\n",
            l.steal_share * 100.0,
            l.cpu_s,
            l.seconds,
            l.backlog_drops
        ));
        if l.backlog_drops > 0 {
            out.push_str(&format!(
                "HOST DROPS {run}/{node}: the kernel dropped {} packets at full input backlogs (net.core.netdev_max_backlog): checks may have waited for probes the host, not the CNI, lost\n",
                l.backlog_drops
            ));
        }
    }
    if let Some(p) = &r.lag_problem {
        out.push_str(&format!("INSTRUMENT LAG: {p}\n"));
    }
    out.push_str(&format!(
        "\n{:<30} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "timing (ms)", "n", "p50", "p90", "p99", "p99.9", "max", "mean"
    ));
    for (name, s) in &r.timings {
        out.push_str(&format!(
            "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            name,
            s.n,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max),
            ms(s.mean)
        ));
    }
    let a = &r.attempts;
    if a.n > 0 {
        out.push_str(&format!(
            "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10.2}\n",
            "cni_add_attempts (count)", a.n, a.p50, a.p90, a.p99, a.p999, a.max, a.mean
        ));
    }
    if !r.failures_by_reason.is_empty() {
        out.push_str("\nnot network-ready, by reason\n");
        for (k, v) in &r.failures_by_reason {
            out.push_str(&format!("  {k:<28} {v}\n"));
        }
    }
    if !r.throughput.is_empty() {
        let peak = r.throughput.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let secs = r.throughput.len().max(1);
        out.push_str(&format!(
            "\nnetwork-ready throughput: mean {:.1} pods/s over {secs} s, peak {peak} pods/s\n",
            r.ready as f64 / secs as f64
        ));
    }
    out
}

/// The report as JSON.
pub fn json(r: &Report) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// ClusterLoader2's PerfData (what perfdash reads): one data item per timing, milliseconds.
pub fn perfdata(r: &Report) -> Value {
    let items: Vec<Value> = r
        .timings
        .iter()
        .map(|(name, s)| {
            json!({
                "data": {"Perc50": s.p50 * 1e3, "Perc90": s.p90 * 1e3, "Perc99": s.p99 * 1e3},
                "unit": "ms",
                "labels": {"Metric": name},
            })
        })
        .collect();
    json!({"version": "v1", "dataItems": items})
}
