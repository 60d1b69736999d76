//! Benchmark: what discovery costs a node when the control Service's endpoints churn.
//!
//! A fake API server (the recorded v1.28.4 objects, re-addressed) lists a slice of
//! NETREADY_BENCH_ENDPOINTS control pods (default 250, the top of the spread Deployment's
//! range), then sends NETREADY_BENCH_CHANGES watch events (default 1,000) as fast as the
//! client reads them, each flipping one endpoint's readiness — the whole slice re-sent each
//! time, as the EndpointSlice controller does. Printed, not asserted: the time until the last
//! change is in the snapshot, the CPU time this process used, and its RSS before the list,
//! after the list and after the burst. Results go to `bench/results/discovery-<time>.json`.
//!
//! `cargo bench -p netready-testkit --bench discovery`

use std::time::{Duration, Instant};

use netready_discovery::{Discovery, DiscoveryConfig};
use netready_testkit::bench::{cpu_seconds, env_or, write};
use netready_testkit::fake_api::{self, Ep, FakeApi, Reply, Resource, Verb};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn endpoints(n: usize, not_ready: Option<usize>) -> Vec<Ep> {
    (0..n)
        .map(|i| Ep {
            ip: format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
            node: Some(format!("node-{i}")),
            ready: Some(Some(i) != not_ready),
            terminating: false,
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = env_or("NETREADY_BENCH_ENDPOINTS", 250);
    let changes: usize = env_or("NETREADY_BENCH_CHANGES", 1000);
    let api = FakeApi::start().await?;
    let list = fake_api::slice_with(&endpoints(n, None), 1000);
    api.fallback(
        Resource::EndpointSlices,
        Verb::List,
        Reply::ok(fake_api::slice_list(vec![list], 1000)),
    );
    // Change k makes endpoint k % n not ready; the last one leaves `last` not ready.
    let lines: Vec<_> = (0..changes)
        .map(|k| {
            let slice = fake_api::slice_with(&endpoints(n, Some(k % n)), 1001 + k as u64);
            (Duration::ZERO, fake_api::event("MODIFIED", slice))
        })
        .collect();
    let last = (changes - 1) % n;
    let dir = tempfile::tempdir()?;
    let cfg = DiscoveryConfig {
        enabled: true,
        kubeconfig: api.kubeconfig(dir.path(), "node-x", "t")?,
        node_name: "node-x".into(),
        ..Default::default()
    };
    let rss_start = rss_bytes();
    let d = Discovery::start(cfg, None)?;
    let mut rx = d.subscribe();
    while !rx.borrow_and_update().synced {
        rx.changed().await?;
    }
    let rss_listed = rss_bytes();
    let cpu0 = cpu_seconds();
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::Watch {
            lines,
            close: false,
        },
    );
    // The watch that is open now sends nothing; the burst comes on the next one. End it the
    // way the server does at its timeout: drop the connection.
    api.fallback(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::watch(Vec::new(), Duration::ZERO),
    );
    let mut api = api;
    api.restart().await?;
    let burst_started = Instant::now();
    let last_node = format!("node-{last}");
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if s.unreachable_since.is_none()
                    && s.synced
                    && !s.endpoints.contains_key(&last_node)
                    && s.endpoints.len() == n - 1
                {
                    break;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await?;
    let wall = burst_started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let rss_after = rss_bytes();
    println!("discovery under endpoint churn: {n} endpoints in one slice, {changes} changes");
    println!(
        "  burst applied in {:.2} s ({:.0} changes/s), CPU {:.2} s ({:.2} ms per change)",
        wall.as_secs_f64(),
        changes as f64 / wall.as_secs_f64(),
        cpu,
        cpu * 1000.0 / changes as f64
    );
    println!(
        "  RSS: start {:.1} MiB, after the list {:.1} MiB, after the burst {:.1} MiB",
        rss_start as f64 / 1048576.0,
        rss_listed as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    let file = write(
        "discovery",
        serde_json::json!({
            "endpoints": n, "changes": changes,
            "burst_seconds": wall.as_secs_f64(), "cpu_seconds": cpu,
            "rss_bytes": {"start": rss_start, "listed": rss_listed, "after_burst": rss_after},
            "note": "one process holds the fake API server and discovery: CPU and RSS include the server's share",
        }),
    )?;
    println!("results: {}", file.display());
    Ok(())
}
