//! (d) NETREADY_BENCH_LIFECYCLES (10,000) pod lifecycles through one node's netready in one
//! run, sampling its RSS, open fds and the node's netns count once a second: their slopes per
//! 1000 pods after a warm-up (the first 10%) must be about zero, or netready leaks.
//!
//! `netready local --nodes 1 --mode burst --concurrency 20 --lifetime 0s` with the real
//! bridge, host-local and portmap plugins and all checks. `cargo bench -p netready --bench local_soak`
//! (root); writes `bench/results/local_soak-<unix time>.json`.

#[path = "common/local.rs"]
mod local;

use std::time::{Duration, Instant};

use serde_json::json;

fn status_kb(pid: u32, key: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The node's `netready serve`, found by its config path.
fn serve_pid(root: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("serve") && cmd.contains(root)).then_some(pid)
    })
}

/// Least-squares slope of y over x.
/// One sample: (seconds, pods done, RSS KiB, fds, netns).
type Sample = (f64, f64, f64, f64, f64);

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    cov / var
}

fn main() -> anyhow::Result<()> {
    let n: usize = netready_testkit::bench::env_or("NETREADY_BENCH_LIFECYCLES", 10_000);
    let out = tempfile::tempdir()?;
    let args: Vec<String> = [
        "--nodes",
        "1",
        "--mode",
        "burst",
        "--concurrency",
        "20",
        "--lifetime",
        "0s",
        "--pods",
        &n.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = local::start(out.path(), "soak", &args)?;
    let root = format!("/run/netready-local/{}/node-0", child.id());
    let t0 = Instant::now();
    // (pods done, rss KiB, fds, netns) once a second.
    let mut samples: Vec<Sample> = Vec::new();
    let mut pid = None;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(
                matches!(status.code(), Some(0 | 1)),
                "netready local: {status}"
            );
            break;
        }
        if pid.is_none() {
            pid = serve_pid(&root);
        }
        if let Some(p) = pid {
            let done = std::fs::read_to_string(format!("{root}/results.jsonl"))
                .map(|s| s.lines().count())
                .unwrap_or(0) as f64;
            let rss = status_kb(p, "VmRSS:");
            let fds = std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.count() as f64);
            let netns = std::fs::read_dir(format!("{root}/netns")).map(|d| d.count() as f64);
            if let (Some(rss), Ok(fds), Ok(netns)) = (rss, fds, netns) {
                samples.push((t0.elapsed().as_secs_f64(), done, rss, fds, netns));
                if samples.len().is_multiple_of(10) {
                    println!(
                        "{:>5.0} s  {done:>6} pods  rss {rss:>7.0} KiB  fds {fds:>4}  netns {netns:>3}",
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let o = child.wait_with_output()?;
    let recs = local::lines(&out.path().join("soak/records.jsonl"));
    let ready = recs
        .iter()
        .filter(|r| r["verdict"]["network_ready"] == true)
        .count();
    let steady: Vec<_> = samples
        .iter()
        .filter(|s| s.1 >= 0.1 * n as f64 && s.1 < n as f64)
        .collect();
    let per_1000 = |f: &dyn Fn(&Sample) -> f64| {
        slope(&steady.iter().map(|s| (s.1, f(s))).collect::<Vec<_>>()) * 1000.0
    };
    let (rss_s, fds_s, ns_s) = (per_1000(&|s| s.2), per_1000(&|s| s.3), per_1000(&|s| s.4));
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} lifecycles ({ready} network-ready) in {secs:.0} s ({:.1}/s); slopes per 1000 pods after warm-up: rss {rss_s:+.1} KiB, fds {fds_s:+.2}, netns {ns_s:+.2}",
        recs.len(),
        recs.len() as f64 / secs
    );
    // About zero: under 64 KiB of RSS per 1000 pods (6 bytes a pod), under 1 fd or netns.
    let goals = json!({
        "rss_flat": rss_s.abs() < 16.0, "fds_flat": fds_s.abs() < 1.0, "netns_flat": ns_s.abs() < 1.0,
        "all_recorded": recs.len() == n,
    });
    println!("goals: {goals}");
    if recs.len() != n {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    }
    let file = netready_testkit::bench::write(
        "local_soak",
        json!({
            "params": {"lifecycles": n, "nodes": 1, "mode": "burst", "concurrency": 20,
                       "plugins": "bridge+host-local+portmap", "checks": "netready defaults",
                       "warm_up": "first 10% of pods excluded from slopes"},
            "recorded": recs.len(), "network_ready": ready, "seconds": secs,
            "slopes_per_1000_pods": {"rss_kib": rss_s, "fds": fds_s, "netns": ns_s},
            "samples": samples.iter().map(|s| json!({"t_s": s.0, "pods_done": s.1, "rss_kib": s.2, "fds": s.3, "netns": s.4})).collect::<Vec<_>>(),
            "goals": goals,
        }),
    )?;
    println!("results: {}", file.display());
    Ok(())
}
