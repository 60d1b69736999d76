//! netperf pods through netready vs the same pods as real containerd sandboxes, side by side
//! on one node: pods/s and memory per pod.
//!
//! One private containerd + runc (pause sandbox, busybox container) and one netready in front of
//! it, in the same node netns, each with its own bridge + host-local network (the same plugins).
//! `netready drive` logic runs burst lifecycles (NETREADY_BENCH_PODS per arm per round, 10 in
//! flight, ready when started) alternating arms over 2 rounds after a warm-up; then
//! NETREADY_BENCH_HELD pods of each kind are held alive and the memory they add is read as PSS
//! (shared pages split fairly): containerd + shims + pause + containers against netready. The
//! netperf pods' reachability checks are off here (both arms do the same work: sandbox, CNI,
//! one container); their cost is the readiness bench's. Goal: ≥ 5× on both.
//! `cargo bench -p netready --bench vs_containerd` (root); writes
//! `bench/results/vs_containerd-<unix time>.json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netready_drive::{Client, Mode, Plan};
use netready_testkit::bench::{pss_bytes, write};
use netready_testkit::netready::Netready;
use netready_testkit::{images, Containerd};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

fn plan(
    socket: &std::path::Path,
    netperf: bool,
    pods: usize,
    lifetime: Duration,
    ctd: &Containerd,
    logs: &std::path::Path,
) -> Plan {
    let mut labels = HashMap::new();
    if netperf {
        labels.insert("netperf".into(), "true".into());
    } else {
        labels.insert("app".into(), "plain".into());
    }
    Plan {
        endpoint: socket.to_owned(),
        mode: Mode::Burst,
        pods,
        concurrency: 10,
        labels,
        annotations: HashMap::new(),
        image: images::BUSYBOX.into(),
        log_root: logs.to_owned(),
        lifetime,
        probe: false,
        probe_period: Duration::from_secs(1),
        ready_timeout: Duration::from_secs(120),
        sandbox_backoff: Duration::from_secs(2),
        sandbox_attempts: 3,
        stop_grace: 0,
        run_id: "vs-containerd".into(),
        cgroup_parent: ctd.cgroup_parent().to_owned(),
        max_pods: 0,
        seed: 1,
        command: if netperf {
            vec!["sleep".into(), "infinity".into()]
        } else {
            Vec::new()
        },
    }
}

/// Runs a plan to the end; returns (pods/s, records).
async fn burst(client: &Client, plan: Plan) -> (f64, Vec<serde_json::Value>) {
    let n = plan.pods;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t = Instant::now();
    let run = tokio::spawn(netready_drive::run(Arc::new(plan), client.clone(), tx));
    let mut recs = Vec::new();
    while let Some(r) = rx.recv().await {
        recs.push(r);
    }
    let _ = run.await;
    (n as f64 / t.elapsed().as_secs_f64(), recs)
}

fn ready(recs: &[serde_json::Value]) -> usize {
    recs.iter()
        .filter(|r| r["verdict"]["network_ready"] == true)
        .count()
}

fn pss_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| pss_bytes(p)).sum()
}

/// Holds `held` pods alive (until all of them are READY), returns the PSS they add per pod
/// as read by `measure`.
async fn memory_per_pod(
    client: &Client,
    plan: Plan,
    measure: &dyn Fn() -> u64,
) -> anyhow::Result<f64> {
    let held = plan.pods;
    // Every held pod occupies a burst slot for its lifetime.
    let plan = Plan {
        concurrency: held,
        ..plan
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = measure();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(netready_drive::run(Arc::new(plan), client.clone(), tx));
    let deadline = Instant::now() + Duration::from_secs(300);
    while client.ready_sandboxes().await? < held {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{held} pods not up in 300 s ({} ready)",
            client.ready_sandboxes().await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Containers start after their sandbox: let the last ones come up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = measure();
    run.abort();
    let _ = run.await;
    while rx.try_recv().is_ok() {}
    client.remove_all_sandboxes().await?;
    Ok((after.saturating_sub(before)) as f64 / held as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = netready_testkit::bench::env_or("NETREADY_BENCH_PODS", 60);
    let held = netready_testkit::bench::env_or("NETREADY_BENCH_HELD", 30);
    let ctd = Containerd::start().await?;
    let dir = ctd.scratch("netready");
    std::fs::create_dir_all(dir.join("net.d"))?;
    std::fs::write(
        dir.join("net.d/10-bench.conflist"),
        serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "bench", "plugins": [
            {"type": "bridge", "bridge": "nrb1", "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.join("ipam")}}]}))?,
    )?;
    std::fs::write(
        dir.join("netready.toml"),
        "[netperf.checks]\nrequired = []\noptional = []\n",
    )?;
    let cfg = dir.join("netready.toml").display().to_string();
    let nr = Netready::start_in(
        Some(ctd.node().path()),
        BIN.as_ref(),
        &dir,
        &ctd.socket(),
        &["--config", &cfg],
    )
    .await?;
    let logs = ctd.scratch("logs");
    let via = Client::connect(nr.socket()).await?;
    let direct = Client::connect(&ctd.socket()).await?;

    // Warm-up: images, the first shim, page cache.
    burst(
        &direct,
        plan(&ctd.socket(), false, 5, Duration::ZERO, &ctd, &logs),
    )
    .await;
    burst(
        &via,
        plan(nr.socket(), true, 5, Duration::ZERO, &ctd, &logs),
    )
    .await;

    let (mut rates_ctd, mut rates_nr) = (Vec::new(), Vec::new());
    let (mut ok_ctd, mut ok_nr) = (0, 0);
    for round in 0..2 {
        let (r, recs) = burst(
            &direct,
            plan(&ctd.socket(), false, n, Duration::ZERO, &ctd, &logs),
        )
        .await;
        ok_ctd += ready(&recs);
        rates_ctd.push(r);
        let (r2, recs) = burst(
            &via,
            plan(nr.socket(), true, n, Duration::ZERO, &ctd, &logs),
        )
        .await;
        ok_nr += ready(&recs);
        rates_nr.push(r2);
        println!("round {round}: containerd {r:.1} pods/s, netready {r2:.1} pods/s");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (pps_ctd, pps_nr) = (mean(&rates_ctd), mean(&rates_nr));

    let ctd_mem = memory_per_pod(
        &direct,
        plan(
            &ctd.socket(),
            false,
            held,
            Duration::from_secs(600),
            &ctd,
            &logs,
        ),
        &|| pss_of(&ctd.processes()),
    )
    .await?;
    let nr_pid = nr.pid().unwrap_or(0);
    let nr_mem = memory_per_pod(
        &via,
        plan(
            nr.socket(),
            true,
            held,
            Duration::from_secs(600),
            &ctd,
            &logs,
        ),
        &|| pss_bytes(nr_pid),
    )
    .await?;

    let rate_ratio = pps_nr / pps_ctd;
    let mem_ratio = ctd_mem / nr_mem.max(1.0);
    println!(
        "pods/s (burst of {n}, 10 in flight, mean of 2 rounds): containerd {pps_ctd:.1}, netready {pps_nr:.1}, ratio {rate_ratio:.1}x"
    );
    println!(
        "memory per held pod ({held} held, PSS): containerd+shims+pause+container {:.0} KiB, netready {:.1} KiB, ratio {mem_ratio:.0}x",
        ctd_mem / 1024.0,
        nr_mem / 1024.0
    );
    println!(
        "pods started: containerd {ok_ctd}/{}, netready {ok_nr}/{}",
        2 * n,
        2 * n
    );
    let goals =
        json!({"pods_per_s_ratio_ge_5": rate_ratio >= 5.0, "memory_ratio_ge_5": mem_ratio >= 5.0});
    println!("goals: {goals}");
    let file = write(
        "vs_containerd",
        json!({
            "params": {"pods_per_round": n, "rounds": 2, "concurrency": 10, "held": held,
                       "order": "alternating containerd/netready rounds after a warm-up",
                       "netperf_checks": "off", "containerd_pod": "pause sandbox + busybox container"},
            "pods_per_s": {"containerd": rates_ctd, "netready": rates_nr, "ratio": rate_ratio},
            "memory_per_pod_bytes": {"containerd": ctd_mem, "netready": nr_mem, "ratio": mem_ratio},
            "started": {"containerd": ok_ctd, "netready": ok_nr, "of": 2 * n},
            "goals": goals,
        }),
    )?;
    println!("results: {}", file.display());
    drop(nr);
    Ok(())
}
