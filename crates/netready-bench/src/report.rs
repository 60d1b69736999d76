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
    /// The pods' built-in HTTP load, by target (a Service VIP: per-service latency).
    pub http_load: Vec<ServiceLoad>,
    /// The pods' container commands, by program (and for iperf3, protocol and target host).
    pub commands: Vec<CommandRuns>,
}

/// The container commands of one kind that ended, and what the iperf3 ones measured.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRuns {
    /// The program (`iperf3`, `curl`, ...), for iperf3 with its protocol and target host.
    pub command: String,
    /// Commands that ended.
    pub runs: usize,
    /// Of them, those that exited 0.
    pub succeeded: usize,
    /// The others, by exit code.
    pub exit_codes: BTreeMap<i32, usize>,
    /// Throughput of each iperf3 run, bits per second, over runs.
    pub bits_per_second: Summary,
    /// TCP retransmits, all runs.
    pub retransmits: u64,
    /// UDP datagrams sent and lost, all runs.
    pub udp_packets: u64,
    /// See [`CommandRuns::udp_packets`].
    pub udp_lost: u64,
    /// UDP jitter of each run, seconds, over runs.
    pub jitter: Summary,
}

fn command_runs(run: &Run) -> Vec<CommandRuns> {
    let mut by_kind: BTreeMap<String, Vec<&netready_record::CommandRecord>> = BTreeMap::new();
    for c in &run.commands {
        let program = c.argv[0].rsplit('/').next().unwrap_or_default().to_owned();
        let kind = match &c.iperf3 {
            Some(i) => {
                let host = i.target.rsplit_once(':').map_or(&*i.target, |(h, _)| h);
                format!("{program} {} to {host}", i.protocol)
            }
            None => program,
        };
        by_kind.entry(kind).or_default().push(c);
    }
    by_kind
        .into_iter()
        .map(|(command, runs)| {
            let iperf: Vec<&netready_record::Iperf3> =
                runs.iter().filter_map(|c| c.iperf3.as_ref()).collect();
            let mut exit_codes = BTreeMap::new();
            for c in runs.iter().filter(|c| c.exit_code != 0) {
                *exit_codes.entry(c.exit_code).or_insert(0) += 1;
            }
            CommandRuns {
                command,
                runs: runs.len(),
                succeeded: runs.iter().filter(|c| c.exit_code == 0).count(),
                exit_codes,
                bits_per_second: summarize(
                    &iperf.iter().map(|i| i.bits_per_second).collect::<Vec<_>>(),
                ),
                retransmits: iperf.iter().filter_map(|i| i.retransmits).sum(),
                udp_packets: iperf.iter().filter_map(|i| i.packets).sum(),
                udp_lost: iperf.iter().filter_map(|i| i.lost_packets).sum(),
                jitter: summarize(
                    &iperf
                        .iter()
                        .filter_map(|i| i.jitter_ms.map(|j| j / 1e3))
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect()
}

/// The HTTP load of every client pod that sent to one target.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceLoad {
    /// `ip:port`.
    pub target: String,
    /// Client pods whose load ran.
    pub clients: usize,
    /// Requests answered 2xx, all clients.
    pub ok: u64,
    /// Requests failed, all clients.
    pub failed: u64,
    /// Each client's p50 latency from intended send, seconds, summarized over clients.
    pub client_p50: Summary,
    /// Each client's p99, seconds, over clients.
    pub client_p99: Summary,
    /// Each client's max, seconds, over clients.
    pub client_max: Summary,
    /// Per backend pod, the earliest of the clients' first replies after its creation
    /// (`reachable_after_s`), summarized over backends: how long after creation a server pod
    /// was first reached through this target.
    pub reachable_after: Summary,
    /// Backends seen.
    pub backends: usize,
}

fn service_loads(run: &Run) -> Vec<ServiceLoad> {
    let mut by_target: BTreeMap<&str, Vec<&netready_record::HttpLoad>> = BTreeMap::new();
    for l in run.records.iter().filter_map(|r| r.http_load.as_ref()) {
        if l.error.is_none() {
            by_target.entry(l.target.as_str()).or_default().push(l);
        }
    }
    by_target
        .into_iter()
        .map(|(target, loads)| {
            let secs = |f: fn(&netready_record::HttpLoad) -> f64| {
                summarize(&loads.iter().map(|l| f(l) / 1e3).collect::<Vec<_>>())
            };
            let mut first: BTreeMap<&str, f64> = BTreeMap::new();
            for b in loads.iter().flat_map(|l| &l.backends) {
                let e = first.entry(b.pod.as_str()).or_insert(f64::INFINITY);
                *e = e.min(b.reachable_after_s);
            }
            ServiceLoad {
                target: target.to_owned(),
                clients: loads.len(),
                ok: loads.iter().map(|l| l.ok).sum(),
                failed: loads.iter().flat_map(|l| l.errors.values()).sum(),
                client_p50: secs(|l| l.latency_ms.p50),
                client_p99: secs(|l| l.latency_ms.p99),
                client_max: secs(|l| l.latency_ms.max),
                backends: first.len(),
                reachable_after: summarize(&first.into_values().collect::<Vec<_>>()),
            }
        })
        .collect()
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
        http_load: service_loads(run),
        commands: command_runs(run),
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
    if !r.http_load.is_empty() {
        out.push_str(&format!(
            "\n{:<24} {:>7} {:>9} {:>7} {:>16} {:>16} {:>16} {:>9} {:>24}\n",
            "HTTP load by target",
            "clients",
            "ok",
            "failed",
            "p50 ms (median)",
            "p99 ms (median)",
            "p99 ms (worst)",
            "backends",
            "reachable after ms p50/max"
        ));
        for l in &r.http_load {
            out.push_str(&format!(
                "{:<24} {:>7} {:>9} {:>7} {:>16} {:>16} {:>16} {:>9} {:>24}\n",
                l.target,
                l.clients,
                l.ok,
                l.failed,
                ms(l.client_p50.p50),
                ms(l.client_p99.p50),
                ms(l.client_p99.max),
                l.backends,
                format!(
                    "{}/{}",
                    ms(l.reachable_after.p50),
                    ms(l.reachable_after.max)
                ),
            ));
        }
        out.push_str("(latency from each request's intended send; reachable after: a backend's creation to its first reply through the target)\n");
    }
    if !r.commands.is_empty() {
        out.push_str(&format!(
            "\n{:<36} {:>6} {:>6} {:>14} {:>18} {:>8} {:>14} {:>22}\n",
            "container commands",
            "runs",
            "exit 0",
            "other exits",
            "Mbit/s p50 (min)",
            "retrans",
            "UDP lost",
            "jitter ms p50 (max)"
        ));
        for c in &r.commands {
            let exits: Vec<String> = c
                .exit_codes
                .iter()
                .map(|(code, n)| format!("{code}×{n}"))
                .collect();
            let mbit = |x: f64| {
                if x.is_nan() {
                    "-".to_string()
                } else {
                    format!("{:.1}", x / 1e6)
                }
            };
            let b = &c.bits_per_second;
            out.push_str(&format!(
                "{:<36} {:>6} {:>6} {:>14} {:>18} {:>8} {:>14} {:>22}\n",
                c.command,
                c.runs,
                c.succeeded,
                if exits.is_empty() {
                    "-".into()
                } else {
                    exits.join(" ")
                },
                if b.n == 0 {
                    "-".into()
                } else {
                    format!("{} ({})", mbit(b.p50), mbit(b.min))
                },
                c.retransmits,
                if c.udp_packets == 0 {
                    "-".into()
                } else {
                    format!("{}/{}", c.udp_lost, c.udp_packets)
                },
                if c.jitter.n == 0 {
                    "-".into()
                } else {
                    format!("{} ({})", ms(c.jitter.p50), ms(c.jitter.max))
                },
            ));
        }
        out.push_str("(exit 126: not on the allowlist, 127: missing on the node; throughput as the receiver counted it)\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, p50: f64, p99: f64, backends: &[(&str, f64)]) -> Value {
        let backends: Vec<Value> = backends
            .iter()
            .map(|(pod, after)| {
                json!({"pod": pod, "replies": 10, "first_reply": "2026-12-02T00:00:01.000000000Z",
                       "created": "2026-12-02T00:00:00.000000000Z", "clock_skew_s": 0.0,
                       "clock_skew_uncertainty_s": 0.0001, "reachable_after_s": after})
            })
            .collect();
        json!({"schema_version": 1, "run_id": "r", "node": "n", "netready_version": "0",
            "fingerprint": null,
            "pod": {"namespace": "ns", "name": name, "uid": name, "attempt": 0},
            "sandbox_id": name, "ips": [],
            "durations_s": {"cni_add": 0.01, "cni_add_first_to_success": 0.01,
                            "network_ready": 0.02, "sandbox_request_to_ready": 0.03},
            "cni_add_attempts": 1,
            "stamps": {"first_request": "2026-12-02T00:00:00.000000000Z", "first_attempt": null,
                       "cni_add_success_end": null, "network_ready": null},
            "attempts": [], "checks": [], "traffic": null,
            "http_load": {"target": "10.96.0.40:80", "rate": 10.0, "duration_s": 1.0,
                "connections": 1, "ok": 10, "errors": {"timeout": 1}, "achieved_rate": 10.0,
                "latency_ms": {"p50": p50, "p99": p99, "p999": p99, "max": p99},
                "uncorrected_latency_ms": {"p50": p50, "p99": p99, "p999": p99, "max": p99},
                "error": null, "backends": backends},
            "verdict": {"network_ready": true, "reason": null}})
    }

    #[test]
    fn http_load_is_reported_per_target_with_each_backends_earliest_reach() {
        let run = Run::from_values([
            client("c1", 1.0, 4.0, &[("s/a", 2.0), ("s/b", 5.0)]),
            client("c2", 3.0, 8.0, &[("s/a", 1.5)]),
        ])
        .unwrap();
        let r = build(&run);
        assert_eq!(r.http_load.len(), 1);
        let l = &r.http_load[0];
        assert_eq!((l.clients, l.ok, l.failed, l.backends), (2, 20, 2, 2));
        assert!(
            (l.client_p99.max - 0.008).abs() < 1e-12,
            "{:?}",
            l.client_p99
        );
        // s/a first reached 1.5 s after creation (by c2), s/b 5 s.
        assert_eq!(l.reachable_after.n, 2);
        assert!((l.reachable_after.max - 5.0).abs() < 1e-12);
        // The mean of 1.5 and 5: s/a counts its earliest reach, not c1's 2 s.
        assert!(
            (l.reachable_after.mean - 3.25).abs() < 1e-12,
            "{:?}",
            l.reachable_after
        );
        let t = table(&r);
        assert!(t.contains("HTTP load by target"), "{t}");
        assert!(t.contains("10.96.0.40:80"), "{t}");
    }

    fn command(container: &str, argv: &[&str], exit: i32, iperf3: Value) -> Value {
        json!({"schema_version": 1, "kind": "command", "run_id": "r", "node": "n",
            "netready_version": "0", "fingerprint": null,
            "pod": {"namespace": "ns", "name": "p", "uid": "u", "attempt": 0},
            "sandbox_id": "s", "container_id": container,
            "container": {"name": "c", "attempt": 0}, "argv": argv,
            "started": null, "finished": "2026-12-02T00:00:01.000000000Z", "duration_s": null,
            "exit_code": exit, "reason": if exit == 0 { "Completed" } else { "Error" },
            "message": "", "iperf3": iperf3, "iperf3_error": null})
    }

    #[test]
    fn commands_are_reported_by_program_protocol_and_target() {
        let tcp = |bps: f64, retr: u64| {
            json!({"protocol": "tcp", "target": "10.0.0.2:5203", "seconds": 1.0,
                   "bits_per_second": bps, "retransmits": retr})
        };
        let udp = json!({"protocol": "udp", "target": "10.0.0.2:5201", "seconds": 1.0,
            "bits_per_second": 1e6, "jitter_ms": 0.02, "lost_packets": 3, "packets": 90});
        let iperf = ["iperf3", "-c", "10.0.0.2"];
        let run = Run::from_values([
            command("c1", &iperf, 0, tcp(2e9, 4)),
            command("c2", &iperf, 0, tcp(1e9, 1)),
            command("c3", &["/usr/bin/iperf3", "-c", "10.0.0.2", "-u"], 0, udp),
            command("c4", &["sh", "-c", "id"], 126, Value::Null),
            // The same command's record sent twice (a collector retry) counts once.
            command("c4", &["sh", "-c", "id"], 126, Value::Null),
        ])
        .unwrap();
        assert_eq!(run.duplicates, 1);
        let r = build(&run);
        let names: Vec<&str> = r.commands.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(
            names,
            ["iperf3 tcp to 10.0.0.2", "iperf3 udp to 10.0.0.2", "sh"]
        );
        let tcp = &r.commands[0];
        assert_eq!((tcp.runs, tcp.succeeded, tcp.retransmits), (2, 2, 5));
        assert_eq!(
            (tcp.bits_per_second.min, tcp.bits_per_second.max),
            (1e9, 2e9)
        );
        let udp = &r.commands[1];
        assert_eq!((udp.udp_lost, udp.udp_packets), (3, 90));
        assert!((udp.jitter.p50 - 2e-5).abs() < 1e-12);
        assert_eq!(r.commands[2].exit_codes, BTreeMap::from([(126, 1)]));
        let t = table(&r);
        assert!(t.contains("iperf3 tcp to 10.0.0.2"), "{t}");
        assert!(t.contains("1000.0 (1000.0)"), "{t}");
        assert!(t.contains("126×1"), "{t}");
        assert!(t.contains("3/90"), "{t}");
    }
}
