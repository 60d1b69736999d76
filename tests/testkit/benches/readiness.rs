//! Benchmark: time from the end of a pod's successful CNI ADD to network ready, when every
//! target answers at once, for many pods checking concurrently.
//!
//! Two routed test nodes (real bridge + host-local), control pods on both, a VIP, an external
//! host; all six checks required (3 HTTP GETs to the service). NETREADY_BENCH_PODS pods
//! (default 200) are created at once through CRI on node A; for each, `network_ready − ADD end`,
//! netready's own lag (ADD end to the last required check's first probe) and every check's
//! time are read from netready's records. Then the same checks alone, every pod's at once after
//! the ADDs, with this process's CPU time per probe sent. Prints p50/p90/p99/max and writes
//! `bench/results/readiness-<unix time>.json`. `cargo bench -p netready-testkit --bench
//! readiness` as root.

use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::PodSpec;
use netready_testkit::stats::{ms, percentile};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    ms(percentile(sorted, p))
}
use netready_testkit::topology::TwoNodes;
use serde_json::json;

fn summary(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    json!({"n": v.len(), "p50_ms": pct(&v, 50.0), "p90_ms": pct(&v, 90.0), "p99_ms": pct(&v, 99.0), "max_ms": pct(&v, 100.0)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = netready_testkit::bench::env_or("NETREADY_BENCH_PODS", 200);
    let t = TwoNodes::start(Some(Duration::ZERO)).await?;
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required = [
        "same_node_pod",
        "other_node_pods",
        "service_ping",
        "service_http",
        "external_ping",
        "external_http",
    ]
    .map(String::from)
    .to_vec();
    cfg.checks.optional.clear();
    cfg.checks.retry_interval = Duration::from_millis(20);
    cfg.checks.deadline = Duration::from_secs(60);
    cfg.targets.node_name = Some("node-a".into());
    cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[])?);
    let nr_cfg = cfg.clone();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock"))?;
    let (rt, _) = client::connect(nr.socket()).await?;
    let pods: Vec<PodSpec> = (0..n)
        .map(|i| {
            let mut p = PodSpec::new(&format!("r{i}"), &t.a.path("pods"), "");
            p.labels.insert("netperf".into(), "true".into());
            p
        })
        .collect();
    let host = netready_record::host_load::Sample::now();
    let ids: Vec<String> = futures::future::join_all(pods.iter().map(|p| {
        let mut rt = rt.clone();
        async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    }))
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let mut ready = Vec::new();
    let mut lag = Vec::new();
    let mut per_check: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    let mut not_ready = 0;
    for id in &ids {
        let rec = loop {
            let rec = nr.runtime().sandbox(id).expect("sandbox");
            if rec.readiness.as_ref().is_some_and(|r| r.finished.is_some()) {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let r = rec.readiness.unwrap();
        match r.ready_at {
            Some(at) => ready.push(at.since(&r.origin)),
            None => not_ready += 1,
        }
        lag.extend(
            r.checks
                .iter()
                .filter(|c| c.required)
                .filter_map(|c| c.first_probe_after)
                .max(),
        );
        for c in &r.checks {
            if let Some(d) = c.passed_after {
                per_check
                    .entry(c.check.as_str().to_owned())
                    .or_default()
                    .push(d);
            }
        }
    }
    let (mut rt2, _) = client::connect(nr.socket()).await?;
    for id in &ids {
        rt2.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt2.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
    }
    let storm_drops = host.until_now().backlog_drops;
    let overall = summary(ready);
    println!(
        "{n} pods checking concurrently on {} cores, all six checks required",
        std::thread::available_parallelism()?.get()
    );
    println!(
        "ADD storm, ADD end -> network ready: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (not ready: {not_ready}; goal p99 <= 100 ms)",
        overall["p50_ms"].as_f64().unwrap_or(f64::NAN), overall["p90_ms"].as_f64().unwrap_or(f64::NAN),
        overall["p99_ms"].as_f64().unwrap_or(f64::NAN), overall["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let backlog = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!(
        "  host: {storm_drops} packets dropped at full input backlogs during the storm (net.core.netdev_max_backlog {backlog})"
    );
    let lag = summary(lag);
    println!(
        "  netready's lag, ADD end -> last required check's first probe: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lag["p50_ms"].as_f64().unwrap_or(f64::NAN),
        lag["p99_ms"].as_f64().unwrap_or(f64::NAN),
        lag["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let mut checks = serde_json::Map::new();
    for (k, v) in per_check {
        let s = summary(v);
        println!(
            "  {k:<16} p50 {:>7.2} ms  p99 {:>7.2} ms",
            s["p50_ms"].as_f64().unwrap(),
            s["p99_ms"].as_f64().unwrap()
        );
        checks.insert(k, s);
    }

    // Checks only: the same number of pods, ADDed first with checks off, then every pod's
    // plan run at once from one origin, on the same code path netready uses.
    let (mut rt3, _) = client::connect(nr.socket()).await?;
    let mut quiet = Vec::new();
    for i in 0..n {
        let mut p = PodSpec::new(&format!("q{i}"), &t.a.path("pods"), "");
        p.labels.insert("netperf".into(), "true".into());
        p.annotations
            .insert("netready.io/checks-required".into(), String::new());
        p.annotations
            .insert("netready.io/checks-optional".into(), String::new());
        quiet.push(
            rt3.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id,
        );
    }
    let plan = netready_cri::netperf::checks::plan_for(&nr_cfg.checks, &Default::default())
        .map_err(anyhow::Error::msg)?;
    let file =
        netready_cri::netperf::checks::read_targets_file(nr_cfg.targets.file.as_ref().unwrap())
            .map_err(anyhow::Error::msg)?;
    let targets = netready_cri::netperf::checks::resolve(
        &nr_cfg.targets,
        "node-a",
        netready_cri::netperf::checks::Sources {
            file: &file,
            learned: &Default::default(),
            discovered: None,
            service: "",
        },
    );
    let netns: Vec<_> = quiet
        .iter()
        .map(|id| nr.runtime().sandbox(id).unwrap().netns)
        .collect();
    let host = netready_record::host_load::Sample::now();
    let origin = std::time::Instant::now();
    let cpu_before = netready_testkit::bench::cpu_seconds();
    let outcomes = futures::future::join_all(
        netns
            .iter()
            .map(|ns| netready_probe::plan::run(ns, &plan, &targets, origin)),
    )
    .await;
    let cpu = netready_testkit::bench::cpu_seconds() - cpu_before;
    let checks_drops = host.until_now().backlog_drops;
    let probes: u32 = outcomes.iter().flatten().map(|c| c.probes).sum();
    let cpu_per_probe_us = cpu * 1e6 / f64::from(probes.max(1));
    let checks_only: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.iter().all(|c| c.passed()))
        .map(|o| {
            o.iter()
                .filter_map(|c| c.passed_after)
                .max()
                .unwrap_or_default()
        })
        .collect();
    for id in &quiet {
        rt3.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt3.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
    }
    let only = summary(checks_only);
    println!(
        "checks only ({n} pods at once, ADDs done before): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        only["p50_ms"].as_f64().unwrap_or(f64::NAN), only["p90_ms"].as_f64().unwrap_or(f64::NAN),
        only["p99_ms"].as_f64().unwrap_or(f64::NAN), only["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!("  host: {checks_drops} packets dropped at full input backlogs during the checks");
    println!(
        "  CPU per probe: {cpu_per_probe_us:.1} us ({probes} probes, {cpu:.3} CPU-s of this process: sockets made in the pod netns, sends, answers; goal <= 50 us)"
    );

    let out = json!({
        "params": {"pods": n, "checks": "all six required, http_count 3", "retry_interval_ms": 20},
        "add_end_to_network_ready": overall, "checks": checks, "not_ready": not_ready,
        "lag_add_end_to_checks_started": lag,
        "checks_only_after_adds": only,
        "cpu_per_probe_us": cpu_per_probe_us, "probes": probes,
        "backlog_drops": {"storm": storm_drops, "checks_only": checks_drops, "netdev_max_backlog": backlog},
        "goals": {"add_end_to_ready_p99_le_100ms": overall["p99_ms"].as_f64().unwrap_or(f64::MAX) <= 100.0,
                  "cpu_per_probe_le_50us": cpu_per_probe_us <= 50.0},
    });
    let file = netready_testkit::bench::write("readiness", out)?;
    println!("results: {}", file.display());
    drop(nr);
    Ok(())
}
